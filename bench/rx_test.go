package bench

import (
	"bytes"
	"context"
	"crypto/sha1"
	"encoding/base64"
	"io"
	"net"
	"net/http"
	"net/http/httptest"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/gorilla/websocket"

	"github.com/heraldhq/herald/internal/wsframe"
)

// readers are the subscriber readers of this platform.
func readers() []string {
	if epollReader {
		return []string{ReaderEpoll, ReaderGoroutine}
	}
	return []string{ReaderGoroutine}
}

// scriptedServer accepts WebSocket handshakes by hand and writes its 101
// response, the subscribe reply and a ping in a single write, so that a
// reader gets frames in the same read as the response. It then waits for
// the pong, writes then (a close frame, or a bad frame), and waits for the
// client's close frame or EOF. It counts the pongs, and the client close
// frames with code want.
type scriptedServer struct {
	*httptest.Server
	wg     sync.WaitGroup
	pongs  atomic.Int64
	closes atomic.Int64
}

func newScriptedServer(t *testing.T, then []byte, want int) *scriptedServer {
	s := &scriptedServer{}
	s.Server = httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		nc, brw, err := http.NewResponseController(w).Hijack()
		if err != nil {
			return
		}
		s.wg.Add(1)
		defer s.wg.Done()
		defer nc.Close()
		_ = nc.SetDeadline(time.Now().Add(10 * time.Second))
		sum := sha1.Sum([]byte(r.Header.Get("Sec-WebSocket-Key") + "258EAFA5-E914-47DA-95CA-C5AB0DC85B11"))
		out := []byte("HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n" +
			"Sec-WebSocket-Accept: " + base64.StdEncoding.EncodeToString(sum[:]) + "\r\nSec-WebSocket-Protocol: herald.v1\r\n\r\n")
		out = wsframe.Append(out, websocket.TextMessage, []byte(`{"id":2}`), false) // the subscribe's reply
		out = wsframe.Append(out, websocket.PingMessage, []byte("hb"), false)
		if _, err := nc.Write(out); err != nil {
			return
		}
		// Client frames: the subscribe command, the pong, then (after our
		// close) the client's close frame.
		dec := wsframe.Decoder{MaxMessage: 1 << 16}
		var msg []byte
		buf := make([]byte, 512)
		for {
			n, err := brw.Read(buf)
			if err != nil {
				return
			}
			for p := buf[:n]; len(p) > 0; {
				k, ev, err := dec.Feed(p, &msg)
				p = p[k:]
				if err != nil {
					t.Errorf("client frame: %v", err)
					return
				}
				msg = msg[:0]
				if ev != wsframe.Control {
					continue
				}
				switch op, payload := dec.Control(); op {
				case websocket.PongMessage:
					if string(payload) == "hb" {
						s.pongs.Add(1)
						if _, err := nc.Write(then); err != nil {
							return
						}
					}
				case websocket.CloseMessage:
					if int(wsframe.CloseCode(payload)) == want {
						s.closes.Add(1)
					}
					return
				}
			}
		}
	}))
	t.Cleanup(func() { s.Close(); s.wg.Wait() })
	return s
}

// Every reader subscribes with a reply that came in the same read as the
// handshake's response, answers the server's ping, counts the subscriber
// cut with the server's close code, and answers the close.
func TestReaderScriptedServer(t *testing.T) {
	for _, reader := range readers() {
		t.Run(reader, func(t *testing.T) {
			s := newScriptedServer(t, wsframe.Close(4002, "scripted"), 4002)
			res, err := Run(context.Background(), Config{
				URL: "ws" + strings.TrimPrefix(s.URL, "http") + "/ws", Channels: 1, Subscribers: 3,
				Idle: 500 * time.Millisecond, Reader: reader, Text: io.Discard,
			})
			if err != nil {
				t.Fatal(err)
			}
			if res.Plan.Reader != reader {
				t.Errorf("plan reader %q, want %q", res.Plan.Reader, reader)
			}
			c := res.Connect
			if c.Connections != 3 || c.Failed != 0 || c.CutWhileIdle != 3 || c.CloseCodes["4002"] != 3 {
				t.Errorf("connect: %+v", c)
			}
			s.Close()
			s.wg.Wait()
			if s.pongs.Load() != 3 || s.closes.Load() != 3 {
				t.Errorf("server saw %d pongs and %d close replies, want 3 and 3", s.pongs.Load(), s.closes.Load())
			}
		})
	}
}

// A frame no server may send (a masked one) makes the epoll reader fail the
// connection with 1002, as RFC 6455 asks, and count the subscriber cut with
// that code.
func TestEpollReaderProtocolError(t *testing.T) {
	if !epollReader {
		t.Skip("the epoll reader needs Linux")
	}
	masked := []byte{0x81, 0x81, 1, 2, 3, 4, 'x' ^ 1}
	s := newScriptedServer(t, masked, websocket.CloseProtocolError)
	res, err := Run(context.Background(), Config{
		URL: "ws" + strings.TrimPrefix(s.URL, "http") + "/ws", Channels: 1, Subscribers: 3,
		Idle: 500 * time.Millisecond, Reader: ReaderEpoll, Text: io.Discard,
	})
	if err != nil {
		t.Fatal(err)
	}
	if c := res.Connect; c.Connections != 3 || c.CutWhileIdle != 3 || c.CloseCodes["1002"] != 3 {
		t.Errorf("connect: %+v", c)
	}
	s.Close()
	s.wg.Wait()
	if s.closes.Load() != 3 {
		t.Errorf("server saw %d close frames with 1002, want 3", s.closes.Load())
	}
}

// Both readers lose nothing against a real node, subscribing with the
// protocol and raw.
func TestReadersAgainstHerald(t *testing.T) {
	url := startHerald(t)
	for _, reader := range readers() {
		for _, sub := range []string{SubProtocol, SubRaw} {
			t.Run(reader+"-"+sub, func(t *testing.T) {
				res, err := Run(context.Background(), Config{
					URL: url, Channels: 2, Subscribers: 20, SubMode: sub, Reader: reader, Text: io.Discard,
					Rates: []Rate{{PerSecond: 100}}, StepDuration: time.Second, Drain: 2 * time.Second, OnTime: 5 * time.Second,
				})
				checkClean(t, res, err, 1)
			})
		}
	}
}

// A subscriber that is subscribed keeps reading past the subscribe
// timeout, in every reader and mode; one whose reply never comes fails
// after it.
func TestSubscribeTimeout(t *testing.T) {
	defer func(d time.Duration) { subscribeTimeout = d }(subscribeTimeout)
	subscribeTimeout = 300 * time.Millisecond
	url := startHerald(t)
	for _, reader := range readers() {
		for _, sub := range []string{SubProtocol, SubRaw} {
			t.Run(reader+"-"+sub, func(t *testing.T) {
				res, err := Run(context.Background(), Config{
					URL: url, Channels: 1, Subscribers: 5, SubMode: sub, Reader: reader, Text: io.Discard,
					Idle: 2 * subscribeTimeout, Rates: []Rate{{PerSecond: 20}}, StepDuration: 2 * subscribeTimeout,
					Drain: time.Second, OnTime: 5 * time.Second,
				})
				checkClean(t, res, err, 1)
				if res.Connect.CutWhileIdle != 0 {
					t.Errorf("connect: %+v", res.Connect)
				}
			})
		}
	}
	// A server that accepts the handshake and never replies.
	silent := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		up := websocket.Upgrader{Subprotocols: []string{"herald.v1"}}
		ws, err := up.Upgrade(w, r, nil)
		if err != nil {
			return
		}
		defer ws.Close()
		for {
			if _, _, err := ws.ReadMessage(); err != nil {
				return
			}
		}
	}))
	defer silent.Close()
	for _, reader := range readers() {
		t.Run("no reply/"+reader, func(t *testing.T) {
			res, err := Run(context.Background(), Config{
				URL: "ws" + strings.TrimPrefix(silent.URL, "http") + "/ws", Channels: 1, Subscribers: 2,
				Reader: reader, Idle: 100 * time.Millisecond, Text: io.Discard,
			})
			if err == nil || res.Connect.Failed != 2 || !strings.Contains(res.Connect.FirstError, "subscribe") {
				t.Errorf("err %v, connect %+v", err, res.Connect)
			}
		})
	}
}

// handshakeConn hands out the response up to its blank line, however the
// bytes arrive, and keeps what follows for take.
func TestHandshakeConn(t *testing.T) {
	resp := "HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\n\r\n"
	after := "\x81\x02hi\r\n\r\nmore"
	for _, chunk := range []int{1, 2, 3, 7, 1000} {
		a, b := net.Pipe()
		go func() {
			defer b.Close()
			all := resp + after
			for len(all) > 0 {
				n := min(chunk, len(all))
				if _, err := b.Write([]byte(all[:n])); err != nil {
					return
				}
				all = all[n:]
			}
		}()
		hc := &handshakeConn{Conn: a}
		var head []byte
		buf := make([]byte, 16)
		for !hc.head {
			n, err := hc.Read(buf)
			head = append(head, buf[:n]...)
			if err != nil {
				t.Fatalf("chunk %d: %v", chunk, err)
			}
		}
		rest := append([]byte(nil), hc.take()...)
		tail, _ := io.ReadAll(hc)
		if string(head) != resp || !bytes.Equal(append(rest, tail...), []byte(after)) {
			t.Errorf("chunk %d: head %q, then %q + %q", chunk, head, rest, tail)
		}
		a.Close()
	}
}
