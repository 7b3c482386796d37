package bench

import (
	"bytes"
	"errors"
)

// A payload is a JSON string of exactly the configured size, quotes included:
//
//	"hB<stream:8><seq:12><sent:12><step:4>xxxx…"
//
// with every field in lowercase hex: stream is the channel's index, seq the
// publication's number on that channel (from 1), sent the time it was due
// to be sent in nanoseconds since the run began (the intended time, not the
// actual one, so a publisher held up by the server shows up as latency
// instead of hiding it: no coordinated omission), and step the step's index.
// A JSON string travels unchanged in a protocol push's "data" and in a raw
// frame, so subscribers of both modes find it by its marker without decoding
// any JSON.
const (
	payloadMarker = `"hB`
	payloadFields = 8 + 12 + 12 + 4
	// MinPayload is the smallest payload size: the quotes, marker and fields.
	MinPayload = len(payloadMarker) + payloadFields + 1
)

type payloadInfo struct {
	stream uint32
	seq    uint64
	sentNs int64
	step   int
}

const hexDigits = "0123456789abcdef"

func appendHex(dst []byte, v uint64, width int) []byte {
	for i := width - 1; i >= 0; i-- {
		dst = append(dst, hexDigits[(v>>(4*uint(i)))&0xf])
	}
	return dst
}

// appendPayload appends a payload of size bytes (at least MinPayload).
func appendPayload(dst []byte, size int, p payloadInfo) []byte {
	dst = append(dst, payloadMarker...)
	dst = appendHex(dst, uint64(p.stream), 8)
	dst = appendHex(dst, p.seq, 12)
	dst = appendHex(dst, uint64(p.sentNs), 12)
	dst = appendHex(dst, uint64(p.step), 4)
	for range size - MinPayload {
		dst = append(dst, 'x')
	}
	return append(dst, '"')
}

var errNoPayload = errors.New("no benchmark payload in message")

// findPayload locates a payload in a message (a push, or a raw frame) and
// decodes its fields.
func findPayload(msg []byte) (payloadInfo, error) {
	p, _, err := nextPayload(msg)
	return p, err
}

// nextPayload decodes the first payload in msg and returns what follows
// it, where the next one may be (centrifuge batches pushes in a frame).
func nextPayload(msg []byte) (payloadInfo, []byte, error) {
	i := bytes.Index(msg, []byte(payloadMarker))
	if i < 0 {
		return payloadInfo{}, nil, errNoPayload
	}
	f := msg[i+len(payloadMarker):]
	p, err := decodeFields(f)
	if err != nil {
		return p, nil, err
	}
	return p, f[payloadFields:], nil
}

// decodeFields decodes the fixed-width fields that follow the marker.
func decodeFields(f []byte) (payloadInfo, error) {
	if len(f) < payloadFields {
		return payloadInfo{}, errors.New("truncated benchmark payload")
	}
	var p payloadInfo
	var v [4]uint64
	widths := [4]int{8, 12, 12, 4}
	off := 0
	for k, w := range widths {
		x, ok := parseHex(f[off : off+w])
		if !ok {
			return payloadInfo{}, errors.New("malformed benchmark payload")
		}
		v[k] = x
		off += w
	}
	p.stream, p.seq, p.sentNs, p.step = uint32(v[0]), v[1], int64(v[2]), int(v[3])
	return p, nil
}

func parseHex(b []byte) (uint64, bool) {
	var v uint64
	for _, c := range b {
		switch {
		case c >= '0' && c <= '9':
			v = v<<4 | uint64(c-'0')
		case c >= 'a' && c <= 'f':
			v = v<<4 | uint64(c-'a'+10)
		default:
			return 0, false
		}
	}
	return v, true
}
