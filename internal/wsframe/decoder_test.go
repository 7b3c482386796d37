package wsframe

import (
	"bytes"
	"encoding/binary"
	"errors"
	"fmt"
	"strings"
	"testing"

	"github.com/heraldhq/herald/protocol"
)

// clientFrame encodes one masked client frame.
func clientFrame(fin bool, rsv, op byte, payload []byte, key [4]byte) []byte {
	b0 := rsv<<4 | op
	if fin {
		b0 |= finBit
	}
	f := []byte{b0}
	switch n := len(payload); {
	case n <= 125:
		f = append(f, 0x80|byte(n))
	case n <= 0xFFFF:
		f = append(f, 0x80|126, 0, 0)
		binary.BigEndian.PutUint16(f[2:], uint16(n))
	default:
		f = append(f, 0x80|127, 0, 0, 0, 0, 0, 0, 0, 0)
		binary.BigEndian.PutUint64(f[2:], uint64(n))
	}
	f = append(f, key[:]...)
	for i, c := range payload {
		f = append(f, c^key[i%4])
	}
	return f
}

// decodeAll feeds stream to a decoder in pieces of the given sizes (cycled)
// and describes every event and the error it ends with.
func decodeAll(d *Decoder, stream []byte, pieces []int) []string {
	var out []string
	var msg []byte
	i := 0
	for len(stream) > 0 {
		size := len(stream)
		if len(pieces) > 0 {
			size = min(max(pieces[i%len(pieces)], 1), len(stream))
			i++
		}
		p := stream[:size]
		stream = stream[size:]
		for len(p) > 0 {
			n, ev, err := d.Feed(p, &msg)
			p = p[n:]
			if err != nil {
				return append(out, "error: "+err.Error())
			}
			switch ev {
			case Message:
				op, compressed := d.MessageOp()
				out = append(out, fmt.Sprintf("message %d %v %q", op, compressed, msg))
				msg = msg[:0]
			case Control:
				op, payload := d.Control()
				out = append(out, fmt.Sprintf("control %d %q", op, payload))
			}
			if ev == NeedMore && len(p) > 0 {
				panic("NeedMore with input left")
			}
		}
	}
	if !d.Idle() {
		out = append(out, "not idle")
	}
	return out
}

func TestDecoder(t *testing.T) {
	k := [4]byte{1, 2, 3, 4}
	long := strings.Repeat("x", 70_000)
	cat := func(frames ...[]byte) []byte { return bytes.Join(frames, nil) }
	cases := []struct {
		name   string
		stream []byte
		want   []string
	}{
		{"text", clientFrame(true, 0, OpText, []byte("hello"), k), []string{`message 1 false "hello"`}},
		{"empty binary", clientFrame(true, 0, OpBinary, nil, k), []string{`message 2 false ""`}},
		{"16-bit length", clientFrame(true, 0, OpBinary, []byte(long[:300]), k), []string{fmt.Sprintf("message 2 false %q", long[:300])}},
		{"64-bit length", clientFrame(true, 0, OpText, []byte(long), k), []string{fmt.Sprintf("message 1 false %q", long)}},
		{"fragments with a ping between", cat(
			clientFrame(false, 0, OpText, []byte("frag"), k),
			clientFrame(true, 0, OpPing, []byte("p"), k),
			clientFrame(false, 0, OpContinuation, []byte("men"), [4]byte{9, 8, 7, 6}),
			clientFrame(true, 0, OpContinuation, []byte("t"), k),
		), []string{`control 9 "p"`, `message 1 false "fragment"`}},
		{"close", clientFrame(true, 0, OpClose, []byte{0x03, 0xE8, 'b', 'y', 'e'}, k), []string{`control 8 "\x03\xe8bye"`}},
		{"empty close", clientFrame(true, 0, OpClose, nil, k), []string{`control 8 ""`}},
		{"two messages", cat(clientFrame(true, 0, OpText, []byte("a"), k), clientFrame(true, 0, OpText, []byte("b"), k)),
			[]string{`message 1 false "a"`, `message 1 false "b"`}},
		{"compressed without deflate", clientFrame(true, 4, OpText, []byte("a"), k), []string{"error: websocket: reserved bits set"}},
		{"unmasked", []byte{0x81, 0x01, 'a'}, []string{"error: websocket: client frame not masked"}},
		{"reserved opcode", clientFrame(true, 0, 3, nil, k), []string{"error: websocket: reserved opcode"}},
		{"continuation first", clientFrame(true, 0, OpContinuation, []byte("x"), k), []string{"error: websocket: continuation frame without a message to continue"}},
		{"message inside message", cat(clientFrame(false, 0, OpText, []byte("a"), k), clientFrame(true, 0, OpBinary, []byte("b"), k)),
			[]string{"error: websocket: new message inside a fragmented message"}},
		{"long ping", clientFrame(true, 0, OpPing, make([]byte, 126), k), []string{"error: websocket: control frame longer than 125 bytes"}},
		{"fragmented ping", clientFrame(false, 0, OpPing, nil, k), []string{"error: websocket: fragmented control frame"}},
		{"1-byte close", clientFrame(true, 0, OpClose, []byte{3}, k), []string{"error: websocket: close frame with a 1-byte payload"}},
		{"close 1005", clientFrame(true, 0, OpClose, []byte{0x03, 0xED}, k), []string{"error: websocket: invalid close code"}},
		{"close reason not utf8", clientFrame(true, 0, OpClose, []byte{0x03, 0xE8, 0xFF}, k), []string{"error: websocket: close reason is not UTF-8"}},
		{"too big over fragments", cat(clientFrame(false, 0, OpText, make([]byte, 60), k), clientFrame(true, 0, OpContinuation, make([]byte, 60), k)),
			[]string{"error: websocket: message too big"}},
		{"partial frame at the end", clientFrame(true, 0, OpText, []byte("hello"), k)[:8], []string{"not idle"}},
	}
	for _, tc := range cases {
		for _, pieces := range [][]int{nil, {1}, {2, 3}, {7}} {
			t.Run(fmt.Sprintf("%s/%v", tc.name, pieces), func(t *testing.T) {
				d := &Decoder{MaxMessage: 100_000}
				if strings.HasPrefix(tc.name, "too big") {
					d.MaxMessage = 100
				}
				got := decodeAll(d, tc.stream, pieces)
				if fmt.Sprint(got) != fmt.Sprint(tc.want) {
					t.Fatalf("got  %q\nwant %q", got, tc.want)
				}
			})
		}
	}
}

// TestDecoderFromServer reads what a server sends (Append's frames, unmasked)
// and refuses a masked frame, as a client must.
func TestDecoderFromServer(t *testing.T) {
	long := strings.Repeat("y", 70_000)
	cat := func(frames ...[]byte) []byte { return bytes.Join(frames, nil) }
	fragment := func(fin bool, op byte, payload string) []byte {
		f := Append(nil, op, []byte(payload), false)
		if !fin {
			f[0] &^= finBit
		}
		return f
	}
	cases := []struct {
		name   string
		stream []byte
		want   []string
	}{
		{"text", Append(nil, OpText, []byte("hello"), false), []string{`message 1 false "hello"`}},
		{"64-bit length", Append(nil, OpBinary, []byte(long), false), []string{fmt.Sprintf("message 2 false %q", long)}},
		{"ping then two messages", cat(Append(nil, OpPing, []byte("p"), false), Append(nil, OpText, []byte("a"), false), Append(nil, OpText, []byte("b"), false)),
			[]string{`control 9 "p"`, `message 1 false "a"`, `message 1 false "b"`}},
		{"fragments", cat(fragment(false, OpText, "frag"), fragment(true, OpContinuation, "ment")), []string{`message 1 false "fragment"`}},
		{"close", Close(1001, "going away"), []string{`control 8 "\x03\xe9going away"`}},
		{"masked", clientFrame(true, 0, OpText, []byte("a"), [4]byte{1, 2, 3, 4}), []string{"error: websocket: server frame masked"}},
		{"masked, zero key", clientFrame(true, 0, OpText, []byte("a"), [4]byte{}), []string{"error: websocket: server frame masked"}},
	}
	for _, tc := range cases {
		for _, pieces := range [][]int{nil, {1}, {2, 3}, {7}} {
			t.Run(fmt.Sprintf("%s/%v", tc.name, pieces), func(t *testing.T) {
				got := decodeAll(&Decoder{MaxMessage: 100_000, FromServer: true}, tc.stream, pieces)
				if fmt.Sprint(got) != fmt.Sprint(tc.want) {
					t.Fatalf("got  %q\nwant %q", got, tc.want)
				}
			})
		}
	}
}

func TestDecoderCloseCodeOf(t *testing.T) {
	var pe *ProtocolError
	d := &Decoder{MaxMessage: 10}
	var msg []byte
	_, _, err := d.Feed(clientFrame(true, 0, OpText, make([]byte, 11), [4]byte{}), &msg)
	if !errors.As(err, &pe) || pe.Code != protocol.CloseMessageTooBig {
		t.Fatalf("got %v, want a 1009 ProtocolError", err)
	}
}

func TestInflate(t *testing.T) {
	payload := []byte(strings.Repeat("compress me ", 100))
	compressed := Deflate(nil, payload)
	d := &Decoder{MaxMessage: 1 << 20, Deflate: true}
	var msg []byte
	_, ev, err := d.Feed(clientFrame(true, 4, OpText, compressed, [4]byte{5, 6, 7, 8}), &msg)
	if err != nil || ev != Message {
		t.Fatalf("Feed: %v %v", ev, err)
	}
	if _, c := d.MessageOp(); !c {
		t.Fatal("message not marked compressed")
	}
	var out bytes.Buffer
	if err := Inflate(&out, msg, 1<<20); err != nil || !bytes.Equal(out.Bytes(), payload) {
		t.Fatalf("Inflate: %v, %d bytes", err, out.Len())
	}
	out.Reset()
	if err := Inflate(&out, msg, 10); err != nil || out.Len() != 11 {
		t.Fatalf("Inflate with a limit of 10: %v, %d bytes (want 11: limit+1)", err, out.Len())
	}
	out.Reset()
	if err := Inflate(&out, []byte{0xFF, 0xFF, 0xFF}, 100); err == nil {
		t.Fatal("Inflate of garbage: no error")
	}
}

// FuzzDecoder checks that a stream decodes to the same events whatever the
// pieces it arrives in, and that the decoder never panics.
func FuzzDecoder(f *testing.F) {
	k := [4]byte{1, 2, 3, 4}
	f.Add(clientFrame(true, 0, OpText, []byte("hello"), k), uint8(1), uint8(3))
	f.Add(append(clientFrame(false, 0, OpBinary, []byte("ab"), k), clientFrame(true, 0, OpContinuation, []byte("c"), k)...), uint8(2), uint8(5))
	f.Add(clientFrame(true, 0, OpClose, []byte{3, 232, 'x'}, k), uint8(4), uint8(1))
	f.Add(clientFrame(true, 0, OpText, make([]byte, 300), k), uint8(9), uint8(2))
	f.Add(Append(Append(nil, OpPing, []byte("p"), false), OpText, []byte("server"), false), uint8(2), uint8(3))
	f.Fuzz(func(t *testing.T, stream []byte, a, b uint8) {
		// a's low bit sets Deflate, the next one FromServer.
		mk := func() *Decoder { return &Decoder{MaxMessage: 4096, Deflate: a&1 == 1, FromServer: a&2 == 2} }
		whole := decodeAll(mk(), stream, nil)
		split := decodeAll(mk(), stream, []int{int(a), int(b)})
		if fmt.Sprint(whole) != fmt.Sprint(split) {
			t.Fatalf("whole: %q\nsplit %d,%d: %q", whole, a, b, split)
		}
	})
}
