package herald

import (
	"encoding/binary"
	"testing"

	"github.com/gorilla/websocket"
)

// These cases follow the Autobahn|Testsuite fuzzingclient families against
// the raw echo endpoint (/ws/raw?channel=…&echo=1): frames are written by
// hand so that they can be fragmented, interleaved or malformed.

// rawFrame encodes one masked client frame.
func rawFrame(fin bool, rsv, opcode byte, payload []byte) []byte {
	b0 := rsv<<4 | opcode
	if fin {
		b0 |= 0x80
	}
	f := []byte{b0}
	switch n := len(payload); {
	case n <= 125:
		f = append(f, 0x80|byte(n))
	case n <= 0xffff:
		f = append(f, 0x80|126, 0, 0)
		binary.BigEndian.PutUint16(f[2:], uint16(n))
	default:
		f = append(f, 0x80|127, 0, 0, 0, 0, 0, 0, 0, 0)
		binary.BigEndian.PutUint64(f[2:], uint64(n))
	}
	key := [4]byte{0x12, 0x34, 0x56, 0x78}
	f = append(f, key[:]...)
	for i, c := range payload {
		f = append(f, c^key[i%4])
	}
	return f
}

func TestRFC6455Echo(t *testing.T) {
	t.Parallel()
	ts := newTestServer(t, Config{})
	echo := func(t *testing.T) *testClient {
		return ts.dial(t, "/ws/raw?channel=echo-"+t.Name()[len("TestRFC6455Echo/"):]+"&echo=1", nil)
	}
	write := func(t *testing.T, c *testClient, frames ...[]byte) {
		t.Helper()
		for _, f := range frames {
			if _, err := c.ws.NetConn().Write(f); err != nil {
				t.Fatal(err)
			}
		}
	}
	t.Run("fragmented text with ping between fragments", func(t *testing.T) {
		t.Parallel()
		c := echo(t)
		pong := make(chan string, 1)
		c.ws.SetPongHandler(func(s string) error { pong <- s; return nil })
		write(t, c,
			rawFrame(false, 0, websocket.TextMessage, []byte("frag")),
			rawFrame(true, 0, websocket.PingMessage, []byte("p")),
			rawFrame(false, 0, 0, []byte("ment")),
			rawFrame(true, 0, 0, []byte("ed \xe2\x82\xac")),
		)
		if op, b := c.read(); op != websocket.TextMessage || string(b) != "fragmented €" {
			t.Fatalf("got %d %q", op, b)
		}
		select {
		case s := <-pong:
			if s != "p" {
				t.Fatalf("pong %q", s)
			}
		default:
			t.Fatal("no pong for the ping sent between fragments")
		}
	})
	t.Run("utf8 split across fragments", func(t *testing.T) {
		t.Parallel()
		c := echo(t)
		write(t, c,
			rawFrame(false, 0, websocket.TextMessage, []byte("euro \xe2\x82")),
			rawFrame(true, 0, 0, []byte("\xac")),
		)
		if op, b := c.read(); op != websocket.TextMessage || string(b) != "euro €" {
			t.Fatalf("got %d %q", op, b)
		}
	})
	t.Run("binary fragments keep opcode", func(t *testing.T) {
		t.Parallel()
		c := echo(t)
		write(t, c, rawFrame(false, 0, websocket.BinaryMessage, []byte{0xff}), rawFrame(true, 0, 0, []byte{0x00}))
		if op, b := c.read(); op != websocket.BinaryMessage || string(b) != "\xff\x00" {
			t.Fatalf("got %d %q", op, b)
		}
	})
	protocolErrors := []struct {
		name   string
		frames [][]byte
		code   int
	}{
		{"unmasked client frame", [][]byte{{0x81, 0x01, 'x'}}, websocket.CloseProtocolError},
		{"continuation without start", [][]byte{rawFrame(true, 0, 0, []byte("x"))}, websocket.CloseProtocolError},
		{"reserved bits", [][]byte{rawFrame(true, 2, websocket.TextMessage, []byte("x"))}, websocket.CloseProtocolError},
		{"reserved opcode", [][]byte{rawFrame(true, 0, 3, []byte("x"))}, websocket.CloseProtocolError},
		{"control frame too long", [][]byte{rawFrame(true, 0, websocket.PingMessage, make([]byte, 126))}, websocket.CloseProtocolError},
		{"fragmented control frame", [][]byte{rawFrame(false, 0, websocket.PingMessage, []byte("x"))}, websocket.CloseProtocolError},
		{"new message inside fragmented one", [][]byte{rawFrame(false, 0, websocket.TextMessage, []byte("a")), rawFrame(true, 0, websocket.TextMessage, []byte("b"))}, websocket.CloseProtocolError},
		{"invalid utf8 in fragments", [][]byte{rawFrame(false, 0, websocket.TextMessage, []byte("a\xc3")), rawFrame(true, 0, 0, []byte("\x28"))}, websocket.CloseInvalidFramePayloadData},
		{"close reason not utf8", [][]byte{rawFrame(true, 0, websocket.CloseMessage, []byte{0x03, 0xe8, 0xff})}, websocket.CloseProtocolError},
	}
	for _, tc := range protocolErrors {
		t.Run(tc.name, func(t *testing.T) {
			t.Parallel()
			c := echo(t)
			write(t, c, tc.frames...)
			if ce := c.expectClose(); ce.Code != tc.code {
				t.Fatalf("close %v, want %d", ce, tc.code)
			}
		})
	}
}
