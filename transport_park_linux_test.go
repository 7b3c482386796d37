package herald

import (
	"bytes"
	"context"
	"fmt"
	"net/http"
	"net/http/httptest"
	"runtime"
	"strings"
	"testing"
	"time"

	"github.com/gorilla/websocket"
	"github.com/heraldhq/herald/protocol"
)

// readers counts the goroutines that are a connection's reader.
func readers() int {
	buf := make([]byte, 1<<20)
	for {
		n := runtime.Stack(buf, true)
		if n < len(buf) {
			return bytes.Count(buf[:n], []byte("herald.(*conn).readLoop("))
		}
		buf = make([]byte, 2*len(buf))
	}
}

// Idle readers park in the node's poller: idle connections keep no
// goroutine, and a parked connection still reads what comes, answers, sees
// its peer leave and is closed by Shutdown. Not parallel: it counts every
// reader goroutine of the process.
func TestIdleReadersPark(t *testing.T) {
	ts := newTestServer(t, Config{})
	const n = 100
	clients := make([]*testClient, n)
	for i := range clients {
		clients[i] = ts.client(t)
		clients[i].subscribe(fmt.Sprintf("room%d", i%10))
	}
	// Each reader handled a subscribe and found nothing more to read.
	waitFor(t, "every reader parked", func() bool { return readers() == 0 })

	// A parked reader wakes for a command, and parks again.
	for _, c := range clients[1:10] { // none of them in room0
		c.mustOK(protocol.Command{Cmd: "publish", Channel: "room0", Data: []byte(`1`)})
	}
	for i := 0; i < n; i += 10 { // room0's ten subscribers got all nine
		for range 9 {
			if m := clients[i].readJSON(); m.Push != "pub" || m.Channel != "room0" {
				t.Fatalf("client %d got %+v", i, m)
			}
		}
	}
	waitFor(t, "readers parked again", func() bool { return readers() == 0 })

	// A peer that leaves wakes its parked reader, which tears it down.
	for _, c := range clients[n/2:] {
		c.ws.Close()
	}
	waitFor(t, "departed clients gone", func() bool { return ts.node.Stats().Connections == n/2 })

	// Shutdown's close reaches parked readers: each client gets 1001 (and
	// the test server's Shutdown, at cleanup, returns within its deadline).
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	done := make(chan error, 1)
	go func() { done <- ts.node.Shutdown(ctx) }()
	for _, c := range clients[:n/2] {
		if ce := c.expectClose(); CloseCode(ce.Code) != CloseGoingAway {
			t.Fatalf("close %v", ce)
		}
	}
	if err := <-done; err != nil {
		t.Fatalf("Shutdown: %v", err)
	}
}

// A parked reader whose client goes silent still wakes for its deadline:
// no pong in time closes it with 4002.
func TestParkedReaderDeadline(t *testing.T) {
	ts := newTestServer(t, Config{PingInterval: 100 * time.Millisecond, PongTimeout: 200 * time.Millisecond})
	c := ts.client(t)
	c.subscribe("x")
	c.ws.SetPingHandler(func(string) error { return nil }) // never pong
	start := time.Now()
	if ce := c.expectClose(); CloseCode(ce.Code) != CloseNoPong {
		t.Fatalf("close %v after %v", ce, time.Since(start))
	}
}

// mute makes a client that reads but never answers the server's close
// frame (nor its pings), as a client that has stopped caring would.
func mute(c *testClient) {
	c.ws.SetCloseHandler(func(int, string) error { return nil })
	c.ws.SetPingHandler(func(string) error { return nil })
}

// A parked reader honours the close handshake's CloseGrace: a client that
// never answers Shutdown's close is let go after CloseGrace, long before
// its heartbeat deadline (25s+10s), so Shutdown returns in time.
func TestParkedReaderCloseGrace(t *testing.T) {
	ts := newTestServer(t, Config{CloseGrace: 200 * time.Millisecond})
	clients := make([]*testClient, 20)
	for i := range clients {
		clients[i] = ts.client(t)
		clients[i].subscribe("x")
		mute(clients[i])
	}
	waitFor(t, "every reader parked", func() bool { return readers() == 0 })
	ctx, cancel := context.WithTimeout(context.Background(), 15*time.Second)
	defer cancel()
	if err := ts.node.Shutdown(ctx); err != nil {
		t.Fatalf("Shutdown: %v (a parked reader missed its CloseGrace)", err)
	}
}

// Shutdown's cut reaches parked readers: with a CloseGrace longer than
// the test, the clients that never answer are cut when ctx ends, and
// Shutdown returns then (node.wg: every connection finished).
func TestParkedReaderShutdownCut(t *testing.T) {
	ts := newTestServer(t, Config{CloseGrace: time.Hour})
	for range 20 {
		c := ts.client(t)
		c.subscribe("x")
		mute(c)
	}
	waitFor(t, "every reader parked", func() bool { return readers() == 0 })
	ctx, cancel := context.WithTimeout(context.Background(), 300*time.Millisecond)
	defer cancel()
	done := make(chan error, 1)
	go func() { done <- ts.node.Shutdown(ctx) }()
	select {
	case err := <-done:
		if err != context.DeadlineExceeded {
			t.Fatalf("Shutdown: %v, want the deadline's error", err)
		}
	case <-time.After(20 * time.Second):
		t.Fatal("Shutdown hangs after its deadline: a cut reader never woke")
	}
}

// A TLS connection (crypto/tls: no descriptor to read from) cannot park:
// its reader waits in a goroutine, and it reads, answers and closes as a
// plain one does, alongside plain connections that park.
func TestTLSReaderDoesNotPark(t *testing.T) {
	ts := newTestServer(t, Config{})
	tsrv := httptest.NewUnstartedServer(ts.node.Handler())
	tsrv.StartTLS()
	defer tsrv.Close()
	d := websocket.Dialer{
		Subprotocols:    []string{protocol.Subprotocol},
		TLSClientConfig: tsrv.Client().Transport.(*http.Transport).TLSClientConfig,
	}
	ws, _, err := d.Dial("wss"+strings.TrimPrefix(tsrv.URL, "https"), nil)
	if err != nil {
		t.Fatal(err)
	}
	defer ws.Close()
	tc := &testClient{t: t, ws: ws}
	tc.subscribe("x")
	plain := ts.client(t)
	plain.subscribe("x")
	// The plain reader parks; the TLS one keeps its goroutine.
	waitFor(t, "the plain reader parked", func() bool { return readers() == 1 })
	if _, err := ts.node.Publish(t.Context(), "x", []byte(`7`)); err != nil {
		t.Fatal(err)
	}
	for _, c := range []*testClient{tc, plain} {
		if m := c.readJSON(); m.Push != "pub" || string(m.Data) != "7" {
			t.Fatalf("got %+v", m)
		}
	}
	// The TLS reader reads a command: its publication reaches both.
	tc.send(protocol.Command{Cmd: "publish", Channel: "x", Data: []byte(`8`)})
	for _, c := range []*testClient{tc, plain} {
		for {
			m := c.readJSON()
			if m.Push == "pub" && string(m.Data) == "8" {
				break
			}
			if m.Push != "" || m.Error != nil {
				t.Fatalf("got %+v", m)
			}
		}
	}
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	done := make(chan error, 1)
	go func() { done <- ts.node.Shutdown(ctx) }()
	for _, c := range []*testClient{tc, plain} {
		if ce := c.expectClose(); CloseCode(ce.Code) != CloseGoingAway {
			t.Fatalf("close %v", ce)
		}
	}
	if err := <-done; err != nil {
		t.Fatalf("Shutdown: %v", err)
	}
}

// A reader that has just handled a data message lingers in Go's netpoller,
// keeping its goroutine, instead of parking after every read (a publisher
// would pay a park and a wake-up per message); it parks once the linger
// has passed with nothing more to read. A subscriber that sends nothing,
// and a connection in its first lingerAfter, park at once. Not parallel:
// it counts every reader goroutine.
func TestReaderLingersAfterMessage(t *testing.T) {
	ts := newTestServer(t, Config{})
	ts.node.linger, ts.node.lingerAfter = 10*time.Second, 0 // before any connection: read by its readers
	idle := ts.client(t)
	mute(idle) // sends nothing after the handshake
	waitFor(t, "the idle reader parked", func() bool { return readers() == 0 })

	// A connection younger than lingerAfter (its handshake's messages)
	// parks at once, however long the linger would be.
	young := newTestServer(t, Config{})
	young.node.linger, young.node.lingerAfter = 20*time.Second, time.Hour
	y := young.client(t)
	y.subscribe("y")
	y.mustOK(protocol.Command{Cmd: "publish", Channel: "x", Data: []byte(`1`)})
	waitFor(t, "the young connection's reader parked", func() bool { return readers() == 0 })

	pub := ts.client(t)
	for i := range 20 {
		pub.mustOK(protocol.Command{Cmd: "publish", Channel: "x", Data: fmt.Appendf(nil, "%d", i)})
	}
	// Well inside the 10 s linger: the publisher's reader has not parked.
	time.Sleep(100 * time.Millisecond)
	if n := readers(); n != 1 {
		t.Fatalf("%d reader goroutines 100ms after the publisher's last message, want its one lingering", n)
	}
	// It still reads and answers while lingering.
	pub.mustOK(protocol.Command{Cmd: "ping"})

	short := newTestServer(t, Config{})
	short.node.lingerAfter = 0
	c := short.client(t)
	c.mustOK(protocol.Command{Cmd: "publish", Channel: "x", Data: []byte(`1`)})
	waitFor(t, "readers parked after the linger", func() bool { return readers() == 1 }) // pub's, still lingering
	// The linger's end is not the connection's: it parked, and still answers.
	c.mustOK(protocol.Command{Cmd: "ping"})
	if got := short.node.Stats().Connections; got != 1 {
		t.Fatalf("%d connections after the linger, want 1", got)
	}
}

// A lingering reader honours the close handshake's CloseGrace, as a parked
// one does: a client that published (its reader lingers for 10 s) and never
// answers Shutdown's close is let go after CloseGrace, and Shutdown returns.
func TestLingeringReaderCloseGrace(t *testing.T) {
	ts := newTestServer(t, Config{CloseGrace: 200 * time.Millisecond})
	ts.node.linger, ts.node.lingerAfter = 10*time.Second, 0
	c := ts.client(t)
	c.mustOK(protocol.Command{Cmd: "publish", Channel: "x", Data: []byte(`1`)})
	mute(c)
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	if err := ts.node.Shutdown(ctx); err != nil {
		t.Fatalf("Shutdown: %v (a lingering reader missed its CloseGrace)", err)
	}
}

// A lingering reader whose client goes silent still gets its heartbeat
// deadline: with a linger shorter than the deadline, no pong in time closes
// it with 4002, after the linger gave way to parking.
func TestLingeringReaderDeadline(t *testing.T) {
	ts := newTestServer(t, Config{PingInterval: 200 * time.Millisecond, PongTimeout: 300 * time.Millisecond})
	ts.node.linger, ts.node.lingerAfter = 100*time.Millisecond, 0
	c := ts.client(t)
	c.ws.SetPingHandler(func(string) error { return nil }) // never pong
	c.mustOK(protocol.Command{Cmd: "publish", Channel: "x", Data: []byte(`1`)})
	if ce := c.expectClose(); CloseCode(ce.Code) != CloseNoPong {
		t.Fatalf("close %v, want %d", ce, CloseNoPong)
	}
}
