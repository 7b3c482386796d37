package bench

import (
	"context"
	"crypto/tls"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/gorilla/websocket"
)

// The generator's connections are lean herald.v1 clients on gorilla/websocket,
// not the project's client package: that client runs two goroutines per
// connection, decodes every frame into structs, and reconnects on its own,
// while a load generator wants one goroutine per socket, no decoding beyond
// finding the payload, and a cut subscriber to stay cut (and be counted).

// dialer opens WebSocket connections spread over source addresses.
type dialer struct {
	ws      []websocket.Dialer // one per source address (or one, unbound)
	net     []*net.Dialer      // the TCP dialer of each
	next    atomic.Uint64
	retries atomic.Int64 // handshakes refused with 429/503 and tried again
}

// sharedWritePool lends gorilla a write buffer only while it writes (the
// subscribe command, pongs), so an idle connection holds none.
var sharedWritePool = &sync.Pool{}

func newDialer(sources []net.IP) *dialer {
	d := &dialer{}
	add := func(local net.Addr) {
		nd := &net.Dialer{Timeout: 10 * time.Second, LocalAddr: local}
		d.net = append(d.net, nd)
		d.ws = append(d.ws, websocket.Dialer{
			NetDialContext:   nd.DialContext,
			HandshakeTimeout: 10 * time.Second,
			ReadBufferSize:   4096, // a backlog of small pushes comes in with one read
			WriteBufferPool:  sharedWritePool,
		})
	}
	if len(sources) == 0 {
		add(nil)
	}
	for _, ip := range sources {
		add(&net.TCPAddr{IP: ip})
	}
	return d
}

// setTLS sets the TLS configuration of wss:// dials; before any dial.
func (d *dialer) setTLS(c *tls.Config) {
	for i := range d.ws {
		d.ws[i].TLSClientConfig = c
	}
}

// dial opens one connection, asking for herald.v1 when protocol is set. A
// handshake refused with 429 or 503 (connection rate or count limits) is
// tried again after Retry-After (or 200 ms), up to five times. For a ws://
// URL it also returns the socket under gorilla's connection, holding what
// was read past the handshake's response (see handshakeConn); nil for wss://.
func (d *dialer) dial(ctx context.Context, url string, protocol bool) (*websocket.Conn, *handshakeConn, error) {
	i := d.next.Add(1) % uint64(len(d.ws))
	wd := d.ws[i] // a copy
	if protocol {
		wd.Subprotocols = []string{"herald.v1"}
	}
	var hc *handshakeConn
	if strings.HasPrefix(url, "ws://") {
		nd := d.net[i]
		wd.NetDialContext = func(ctx context.Context, network, addr string) (net.Conn, error) {
			nc, err := nd.DialContext(ctx, network, addr)
			if err != nil {
				return nil, err
			}
			hc = &handshakeConn{Conn: nc}
			return hc, nil
		}
	}
	for attempt := 0; ; attempt++ {
		ws, resp, err := wd.DialContext(ctx, url, nil)
		if err == nil {
			return ws, hc, nil
		}
		if resp == nil || (resp.StatusCode != http.StatusTooManyRequests && resp.StatusCode != http.StatusServiceUnavailable) || attempt >= 5 {
			if resp != nil {
				return nil, nil, fmt.Errorf("handshake refused: %s", resp.Status)
			}
			return nil, nil, err
		}
		d.retries.Add(1)
		wait := 200 * time.Millisecond
		if s, e := strconv.Atoi(resp.Header.Get("Retry-After")); e == nil && s > 0 {
			wait = time.Duration(s) * time.Second
		}
		t := time.NewTimer(wait)
		select {
		case <-ctx.Done():
			t.Stop()
			return nil, nil, ctx.Err()
		case <-t.C:
		}
	}
}

// handshakeConn is the socket under a ws:// connection while gorilla's
// dialer reads the handshake: it hands gorilla the HTTP response and
// nothing after it, so that a reader taking the socket over afterwards (the
// epoll reader) also gets the frames that came in the same read as the
// response. After the response, reads return what was kept first, then
// read the socket: gorilla, if it goes on reading (an error response's
// body, or the goroutine reader), still sees every byte in order.
type handshakeConn struct {
	net.Conn
	head bool   // the response's blank line has been handed out
	seen int    // how much of "\r\n\r\n" the bytes so far end with
	rest []byte // read past the response, not handed out yet
}

func (c *handshakeConn) Read(p []byte) (int, error) {
	if len(c.rest) > 0 {
		n := copy(p, c.rest)
		c.rest = c.rest[n:]
		return n, nil
	}
	n, err := c.Conn.Read(p)
	if c.head {
		return n, err
	}
	for i, b := range p[:n] {
		switch {
		case b == "\r\n\r\n"[c.seen]:
			c.seen++
		case b == '\r':
			c.seen = 1
		default:
			c.seen = 0
		}
		if c.seen == 4 {
			c.head = true
			c.rest = append([]byte(nil), p[i+1:n]...)
			return i + 1, err
		}
	}
	return n, err
}

// take returns the bytes read past the response that nobody was handed,
// and forgets them.
func (c *handshakeConn) take() []byte {
	r := c.rest
	c.rest = nil
	return r
}

// readMessage reads the next data message into buf (grown as needed) and
// returns it; pings, pongs and close frames are handled by gorilla's handlers.
func readMessage(ws *websocket.Conn, buf []byte) ([]byte, error) {
	_, r, err := ws.NextReader()
	if err != nil {
		return buf, err
	}
	buf = buf[:0]
	for {
		if len(buf) == cap(buf) {
			buf = append(buf, 0)[:len(buf)]
		}
		n, err := r.Read(buf[len(buf):cap(buf)])
		buf = buf[:len(buf)+n]
		if err == io.EOF {
			return buf, nil
		}
		if err != nil {
			return buf, err
		}
	}
}

// closeCode is the close code of a read error: the server's close frame's
// code, or 1006 for a connection that ended without one.
func closeCode(err error) int {
	var ce *websocket.CloseError
	if errors.As(err, &ce) {
		return ce.Code
	}
	return websocket.CloseAbnormalClosure
}

// frameWriter writes client frames straight to the socket, under a lock:
// a publisher builds a whole batch of frames and writes it with one call,
// where gorilla would write each frame with its own syscall. The frames are
// masked with the all-zero key, which RFC 6455 allows (the key is meant to
// be unpredictable to defeat proxy cache poisoning, a non-issue on
// loopback) and which leaves the payload bytes as they are.
type frameWriter struct {
	mu  sync.Mutex
	nc  net.Conn
	buf []byte
}

// appendClientFrame appends one final, zero-masked client frame.
func appendClientFrame(dst []byte, op byte, payload []byte) []byte {
	n := len(payload)
	switch {
	case n <= 125:
		dst = append(dst, 0x80|op, 0x80|byte(n))
	case n <= 0xFFFF:
		dst = append(dst, 0x80|op, 0x80|126, byte(n>>8), byte(n))
	default:
		dst = append(dst, 0x80|op, 0x80|127, 0, 0, 0, 0, byte(n>>24), byte(n>>16), byte(n>>8), byte(n))
	}
	dst = append(dst, 0, 0, 0, 0) // the masking key
	return append(dst, payload...)
}

// write writes b (complete frames) with a deadline.
func (w *frameWriter) write(b []byte) error {
	w.mu.Lock()
	defer w.mu.Unlock()
	_ = w.nc.SetWriteDeadline(time.Now().Add(10 * time.Second))
	_, err := w.nc.Write(b)
	return err
}

// installHandlers routes gorilla's pong replies through w (so they never
// interleave with the publisher's frames) and stops gorilla from writing a
// close frame of its own.
func (w *frameWriter) installHandlers(ws *websocket.Conn) {
	ws.SetPingHandler(func(data string) error {
		_ = w.write(appendClientFrame(nil, websocket.PongMessage, []byte(data)))
		return nil
	})
	ws.SetCloseHandler(func(int, string) error { return nil })
}
