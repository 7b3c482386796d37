package wsframe

import (
	"bytes"
	"compress/flate"
	"encoding/binary"
	"io"
	"strings"
	"sync"
	"unicode/utf8"

	"github.com/heraldhq/herald/protocol"
)

// OpContinuation is the opcode of a data message's second and later frames.
const OpContinuation = 0x0

// ProtocolError fails the connection with Code (1002, 1007 or 1009).
type ProtocolError struct {
	Code   protocol.CloseCode
	Reason string
}

func (e *ProtocolError) Error() string { return "websocket: " + e.Reason }

func protocolError(code protocol.CloseCode, reason string) *ProtocolError {
	return &ProtocolError{Code: code, Reason: reason}
}

// Event is what Decoder.Feed stopped at.
type Event uint8

const (
	// NeedMore: every byte given was consumed and no frame or message ended.
	NeedMore Event = iota
	// Message: a data message is complete; its payload is the message buffer.
	Message
	// Control: a control frame is complete; see Decoder.Control.
	Control
)

// Decoder parses the frames a client sends a server (RFC 6455 section 5)
// as they arrive, in pieces of any size: it keeps no more than a partial
// header of its own (14 bytes), unmasks data payloads straight into the
// caller's message buffer and control payloads into a 125-byte array.
// With FromServer set it parses what a server sends a client instead.
// It enforces what a server must: every frame masked (with FromServer:
// none masked, which is what a client must enforce), known opcodes,
// reserved bits clear (RSV1 only on the first frame of a compressed message
// when Deflate is set), control frames final and at most 125 bytes,
// continuation frames only inside a fragmented message, a message of at
// most MaxMessage wire bytes, and a well-formed close payload (section
// 5.5.1: no 1-byte payload, a code a peer may send, a UTF-8 reason).
// UTF-8 of text messages is the caller's to check once a message is whole.
//
// A Decoder is used by one goroutine at a time. Its zero value, with
// MaxMessage set, is ready.
type Decoder struct {
	// MaxMessage caps a data message's payload on the wire, over all its
	// frames (zero: no cap).
	MaxMessage int64
	// Deflate is set when permessage-deflate was negotiated.
	Deflate bool
	// FromServer makes this a client's decoder: frames come from a server,
	// and a masked one fails the stream (section 5.1).
	FromServer bool

	hdr  [14]byte // a header split across Feed calls
	nhdr uint8
	// The frame being read: its opcode, whether it is final, payload bytes
	// still to come, its masking key and the key's position.
	op        byte
	fin       bool
	inFrame   bool
	key       [4]byte
	keyPos    uint8
	remaining int64
	// The data message being read (msgOp is 0 between messages).
	msgOp      byte
	compressed bool
	msgLen     int64
	// The message the last Message event completed.
	lastOp         byte
	lastCompressed bool
	// The control frame being read.
	ctrl  [125]byte
	nctrl uint8
}

// Idle reports that the decoder is between messages and frames: the last
// Feed ended on a frame boundary outside a fragmented message, so the caller
// holds no partial message.
func (d *Decoder) Idle() bool { return !d.inFrame && d.nhdr == 0 && d.msgOp == 0 }

// MessageOp returns the opcode (OpText or OpBinary) of the message a Message
// event completed, and whether its payload is compressed (permessage-deflate:
// see Inflate).
func (d *Decoder) MessageOp() (op byte, compressed bool) { return d.lastOp, d.lastCompressed }

// Control returns the opcode and payload of the control frame a Control
// event completed. The payload is valid until the next Feed.
func (d *Decoder) Control() (op byte, payload []byte) { return d.op, d.ctrl[:d.nctrl] }

// Feed consumes bytes of the stream from p. Data payload bytes are unmasked
// and appended to *msg. It returns after the first complete message or
// control frame, or once p is used up, with the bytes consumed and what it
// stopped at. After an error the stream is broken: close with the error's
// code.
func (d *Decoder) Feed(p []byte, msg *[]byte) (n int, ev Event, err error) {
	for n < len(p) {
		if !d.inFrame {
			k, perr := d.header(p[n:])
			n += k
			if perr != nil {
				return n, NeedMore, perr
			}
			if !d.inFrame {
				return n, NeedMore, nil // a partial header
			}
		}
		// Payload.
		k := int(min(d.remaining, int64(len(p)-n)))
		if d.op >= OpClose {
			if d.FromServer {
				copy(d.ctrl[d.nctrl:], p[n:n+k])
			} else {
				d.unmask(d.ctrl[d.nctrl:int(d.nctrl)+k], p[n:n+k])
			}
			d.nctrl += uint8(k)
		} else {
			start := len(*msg)
			*msg = append(*msg, p[n:n+k]...)
			if !d.FromServer {
				d.unmask((*msg)[start:], (*msg)[start:])
			}
		}
		n += k
		d.remaining -= int64(k)
		if d.remaining > 0 {
			return n, NeedMore, nil
		}
		// The frame is complete.
		d.inFrame = false
		if d.op >= OpClose {
			if d.op == OpClose {
				if perr := checkClose(d.ctrl[:d.nctrl]); perr != nil {
					return n, NeedMore, perr
				}
			}
			return n, Control, nil
		}
		if d.fin {
			d.lastOp, d.lastCompressed = d.msgOp, d.compressed
			d.msgOp, d.compressed, d.msgLen = 0, false, 0
			return n, Message, nil
		}
	}
	return n, NeedMore, nil
}

// header parses a frame header from the bytes kept from earlier calls and
// p, consuming what it uses. It sets inFrame when the header is whole.
func (d *Decoder) header(p []byte) (int, *ProtocolError) {
	used := 0
	need := 2
	for {
		for int(d.nhdr) < need && used < len(p) {
			d.hdr[d.nhdr] = p[used]
			d.nhdr++
			used++
		}
		if int(d.nhdr) < need {
			return used, nil
		}
		if need == 2 {
			if masked := d.hdr[1]&0x80 != 0; masked == d.FromServer {
				// Fail now, before waiting for a key or for more header.
				d.nhdr = 0
				if d.FromServer {
					return used, protocolError(protocol.CloseProtocolError, "server frame masked")
				}
				return used, protocolError(protocol.CloseProtocolError, "client frame not masked")
			}
			if !d.FromServer {
				need += 4 // masking key
			}
			switch d.hdr[1] & 0x7F {
			case 126:
				need += 2
			case 127:
				need += 8
			}
			if int(d.nhdr) < need {
				continue
			}
		}
		break
	}
	b0, b1 := d.hdr[0], d.hdr[1]
	d.nhdr = 0
	fin, rsv, op := b0&finBit != 0, b0&0x70, b0&0x0F
	length := int64(b1 & 0x7F)
	off := 2
	switch length {
	case 126:
		length = int64(binary.BigEndian.Uint16(d.hdr[2:]))
		off = 4
	case 127:
		u := binary.BigEndian.Uint64(d.hdr[2:])
		if u > 1<<63-1 {
			return used, protocolError(protocol.CloseProtocolError, "frame length has the most significant bit set")
		}
		length = int64(u)
		off = 10
	}
	if !d.FromServer {
		copy(d.key[:], d.hdr[off:off+4])
		d.keyPos = 0
	}

	switch op {
	case OpClose, OpPing, OpPong:
		if rsv != 0 {
			return used, protocolError(protocol.CloseProtocolError, "reserved bits set on a control frame")
		}
		if !fin {
			return used, protocolError(protocol.CloseProtocolError, "fragmented control frame")
		}
		if length > 125 {
			return used, protocolError(protocol.CloseProtocolError, "control frame longer than 125 bytes")
		}
		d.nctrl = 0
	case OpText, OpBinary:
		if d.msgOp != 0 {
			return used, protocolError(protocol.CloseProtocolError, "new message inside a fragmented message")
		}
		compressed := rsv == rsv1Bit && d.Deflate
		if rsv != 0 && !compressed {
			return used, protocolError(protocol.CloseProtocolError, "reserved bits set")
		}
		d.msgOp, d.compressed, d.msgLen = op, compressed, 0
	case OpContinuation:
		if d.msgOp == 0 {
			return used, protocolError(protocol.CloseProtocolError, "continuation frame without a message to continue")
		}
		if rsv != 0 {
			return used, protocolError(protocol.CloseProtocolError, "reserved bits set on a continuation frame")
		}
	default:
		return used, protocolError(protocol.CloseProtocolError, "reserved opcode")
	}
	if op < OpClose {
		d.msgLen += length
		if d.MaxMessage > 0 && d.msgLen > d.MaxMessage {
			return used, protocolError(protocol.CloseMessageTooBig, "message too big")
		}
	}
	d.op, d.fin, d.remaining, d.inFrame = op, fin, length, true
	return used, nil
}

// unmask XORs src with the frame's masking key into dst (which may be src).
func (d *Decoder) unmask(dst, src []byte) {
	pos := int(d.keyPos)
	for i, b := range src {
		dst[i] = b ^ d.key[(pos+i)&3]
	}
	d.keyPos = uint8((pos + len(src)) & 3)
}

// checkClose validates a close frame's payload (RFC 6455 sections 5.5.1
// and 7.4).
func checkClose(p []byte) *ProtocolError {
	switch {
	case len(p) == 0:
		return nil
	case len(p) == 1:
		return protocolError(protocol.CloseProtocolError, "close frame with a 1-byte payload")
	}
	if !ValidCloseCode(int(binary.BigEndian.Uint16(p))) {
		return protocolError(protocol.CloseProtocolError, "invalid close code")
	}
	if !utf8.Valid(p[2:]) {
		return protocolError(protocol.CloseProtocolError, "close reason is not UTF-8")
	}
	return nil
}

// ValidCloseCode reports whether a peer may send code in a close frame:
// 1000–1003, 1007–1011, 1012–1014 (registered since RFC 6455) and
// 3000–4999. 1004–1006 and 1015 are reserved, never sent.
func ValidCloseCode(code int) bool {
	switch {
	case code >= 1000 && code <= 1003, code >= 1007 && code <= 1014:
		return true
	case code >= 3000 && code <= 4999:
		return true
	}
	return false
}

// CloseCode returns the code of a validated close payload (1005 if it has
// none).
func CloseCode(p []byte) protocol.CloseCode {
	if len(p) < 2 {
		return protocol.CloseNoStatus
	}
	return protocol.CloseCode(binary.BigEndian.Uint16(p))
}

// deflateTail ends a message compressed with no context takeover: the
// 0x00 0x00 0xff 0xff the sender removed, then an empty final stored
// block, so that the DEFLATE reader sees a complete stream (RFC 7692
// section 7.2.2).
const deflateTail = "\x00\x00\xff\xff\x01\x00\x00\xff\xff"

var inflaters = sync.Pool{New: func() any { return flate.NewReader(strings.NewReader(deflateTail)) }}

// Inflate decompresses a permessage-deflate message payload into dst,
// reading at most limit+1 bytes of output so that the caller can tell an
// oversize message without inflating all of it. A corrupt payload fails
// with a 1007 ProtocolError.
func Inflate(dst *bytes.Buffer, payload []byte, limit int64) error {
	fr := inflaters.Get().(io.ReadCloser)
	defer inflaters.Put(fr)
	if err := fr.(flate.Resetter).Reset(io.MultiReader(bytes.NewReader(payload), strings.NewReader(deflateTail)), nil); err != nil {
		return protocolError(protocol.CloseInvalidPayload, "invalid compressed message")
	}
	if _, err := dst.ReadFrom(io.LimitReader(fr, limit+1)); err != nil {
		return protocolError(protocol.CloseInvalidPayload, "invalid compressed message")
	}
	return nil
}
