// Package wsframe builds complete, unmasked server-to-client WebSocket frames
// (RFC 6455 section 5.2), so that one encoding of a message can be written to
// any number of connections, and parses the masked frames clients send
// (Decoder) without holding a buffer of its own between reads.
package wsframe

import (
	"bytes"
	"compress/flate"
	"encoding/binary"
	"sync"
	"unicode/utf8"

	"github.com/heraldhq/herald/protocol"
)

// Opcodes (RFC 6455 section 5.2).
const (
	OpText   = 0x1
	OpBinary = 0x2
	OpClose  = 0x8
	OpPing   = 0x9
	OpPong   = 0xA
)

const (
	finBit  = 0x80
	rsv1Bit = 0x40
)

// Append appends one final (unfragmented) frame with the given opcode and
// payload to dst. compressed sets RSV1, marking a permessage-deflate payload.
func Append(dst []byte, opcode byte, payload []byte, compressed bool) []byte {
	b0 := finBit | opcode
	if compressed {
		b0 |= rsv1Bit
	}
	n := len(payload)
	switch {
	case n <= 125:
		dst = append(dst, b0, byte(n))
	case n <= 0xFFFF:
		dst = append(dst, b0, 126, 0, 0)
		binary.BigEndian.PutUint16(dst[len(dst)-2:], uint16(n))
	default:
		dst = append(dst, b0, 127, 0, 0, 0, 0, 0, 0, 0, 0)
		binary.BigEndian.PutUint64(dst[len(dst)-8:], uint64(n))
	}
	return append(dst, payload...)
}

// HeaderLen is the size of the frame header Append writes for a payload of n bytes.
func HeaderLen(n int) int {
	switch {
	case n <= 125:
		return 2
	case n <= 0xFFFF:
		return 4
	default:
		return 10
	}
}

// Close returns a close frame with the code and reason. The reason is cut to
// fit the 125-byte control frame limit (without splitting a UTF-8 sequence).
func Close(code protocol.CloseCode, reason string) []byte {
	if len(reason) > 123 {
		reason = reason[:123]
		for !utf8.ValidString(reason) {
			reason = reason[:len(reason)-1]
		}
	}
	p := make([]byte, 2, 2+len(reason))
	binary.BigEndian.PutUint16(p, uint16(code))
	p = append(p, reason...)
	return Append(make([]byte, 0, 2+len(p)), OpClose, p, false)
}

var flaters = sync.Pool{New: func() any {
	w, _ := flate.NewWriter(nil, flate.BestSpeed)
	return w
}}

// Deflate compresses payload for permessage-deflate with no context takeover
// (the only mode the server negotiates), appending to dst: a raw DEFLATE
// stream, sync-flushed, with the final 0x00 0x00 0xff 0xff removed
// (RFC 7692 section 7.2.1).
func Deflate(dst, payload []byte) []byte {
	buf := bytes.NewBuffer(dst)
	w := flaters.Get().(*flate.Writer)
	w.Reset(buf)
	_, _ = w.Write(payload) // writes to a bytes.Buffer cannot fail
	_ = w.Flush()
	flaters.Put(w)
	out := buf.Bytes()
	return out[:len(out)-4]
}
