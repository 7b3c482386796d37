package protocol_test

import (
	"bytes"
	"strings"
	"testing"

	"github.com/heraldhq/herald/protocol"
)

// payload128 is a 128-byte JSON object, a typical chat-sized message.
var payload128 = func() []byte {
	const head, tail = `{"user":"alice","text":"`, `"}`
	p := []byte(head + strings.Repeat("x", 128-len(head)-len(tail)) + tail)
	if len(p) != 128 {
		panic("payload128 is not 128 bytes")
	}
	return p
}()

// BenchmarkDecodeCommand measures the per-message cost of every text publish
// a client sends: one JSON decode of the command.
func BenchmarkDecodeCommand(b *testing.B) {
	frame := []byte(`{"id":12345,"cmd":"publish","channel":"chat:room-1","data":` + string(payload128) + `}`)
	b.ReportAllocs()
	b.SetBytes(int64(len(frame)))
	for b.Loop() {
		cmd, payload, err := protocol.DecodeCommand(frame, false)
		if err != nil || cmd.ID != 12345 || len(payload) != len(payload128) {
			b.Fatalf("decode: %+v %q %v", cmd, payload, err)
		}
	}
}

// BenchmarkDecodeCommandBinary is the same publish as a binary frame, where
// only the short header is JSON and the payload is sliced, not copied.
func BenchmarkDecodeCommandBinary(b *testing.B) {
	frame := append([]byte(`{"id":12345,"cmd":"publish","channel":"chat:room-1"}`+"\n"), payload128...)
	b.ReportAllocs()
	b.SetBytes(int64(len(frame)))
	for b.Loop() {
		cmd, payload, err := protocol.DecodeCommand(frame, true)
		if err != nil || cmd.ID != 12345 || len(payload) != len(payload128) {
			b.Fatalf("decode: %+v %q %v", cmd, payload, err)
		}
	}
}

// BenchmarkAppendTextPush measures encoding one publication for fan-out. The
// node encodes each publication once per wire form, so this is per message,
// not per subscriber; reusing dst shows the encoder itself allocates nothing.
func BenchmarkAppendTextPush(b *testing.B) {
	dst := make([]byte, 0, 512)
	b.ReportAllocs()
	b.SetBytes(int64(len(payload128)))
	for b.Loop() {
		dst = protocol.AppendTextPush(dst[:0], protocol.PushPub, "chat:room-1", 123456789, payload128)
	}
	if !bytes.HasSuffix(dst, append(payload128, '}')) {
		b.Fatalf("bad push %s", dst)
	}
}
