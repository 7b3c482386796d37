package herald

import (
	"bytes"
	"context"
	"errors"
	"log/slog"
	"net"
	"net/http"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/gorilla/websocket"
	"github.com/heraldhq/herald/protocol"
)

// syncBuffer is a log sink tests read while the node writes.
type syncBuffer struct {
	mu  sync.Mutex
	buf bytes.Buffer
}

func (b *syncBuffer) Write(p []byte) (int, error) {
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.buf.Write(p)
}

func (b *syncBuffer) String() string {
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.buf.String()
}

// A page refused for its origin is logged once per origin, at Warn, naming
// the setting that would admit it; the refusals after it are Debug.
func TestOriginRefusalNamesTheSetting(t *testing.T) {
	t.Parallel()
	var logs syncBuffer
	ts := newTestServer(t, Config{Logger: slog.New(slog.NewTextHandler(&logs, nil))}) // Info and up
	d := websocket.Dialer{HandshakeTimeout: 5 * time.Second}
	for _, origin := range []string{"https://app.example.com", "https://app.example.com", "https://other.example.com"} {
		_, resp, err := d.Dial(ts.url+"/ws", http.Header{"Origin": {origin}})
		if err == nil || resp == nil || resp.StatusCode != http.StatusForbidden {
			t.Fatalf("origin %s: %v %v, want 403", origin, err, resp)
		}
	}
	got := logs.String()
	if n := strings.Count(got, "level=WARN"); n != 2 {
		t.Errorf("%d warnings, want one per origin (2):\n%s", n, got)
	}
	if !strings.Contains(got, "allowed_origins") || !strings.Contains(got, "origin=https://app.example.com") {
		t.Errorf("the warning does not name allowed_origins and the origin:\n%s", got)
	}
}

// A queue smaller than two of the largest messages cannot work: each such
// message would cut all its receivers. New refuses it.
func TestQueueMustHoldTwoMessages(t *testing.T) {
	t.Parallel()
	_, err := New(Config{MaxMessageSize: 20_000_000})
	if err == nil || !strings.Contains(err.Error(), "MaxQueueBytes (1048576) must be at least twice MaxMessageSize (20000000)") {
		t.Fatalf("New: %v", err)
	}
	n, err := New(Config{MaxMessageSize: 1 << 20, MaxQueueBytes: 2 << 20})
	if err != nil {
		t.Fatalf("New with a queue of exactly twice the message: %v", err)
	}
	_ = n.Shutdown(t.Context())
}

// smallReadBuffer dials with a small receive buffer, so that a client that
// stops reading fills its socket, then the server's queue, quickly.
func smallReadBuffer() *websocket.Dialer {
	return &websocket.Dialer{
		Subprotocols:     []string{"herald.v1"},
		HandshakeTimeout: 5 * time.Second,
		NetDialContext: func(ctx context.Context, network, addr string) (net.Conn, error) {
			c, err := (&net.Dialer{}).DialContext(ctx, network, addr)
			if tc, ok := c.(*net.TCPConn); ok {
				_ = tc.SetReadBuffer(4096)
			}
			return c, err
		},
	}
}

// A client that sends pings and never reads is a slow consumer like any
// other: each ping queues a pong (RFC 6455 asks for one), its queue fills
// and it is cut (4001), with nobody else affected. Since it does not read,
// it cannot see the close frame in time: its socket is cut after
// CloseGrace, and it sees 1006.
func TestPingFloodWithoutReading(t *testing.T) {
	t.Parallel()
	ts := newTestServer(t, Config{MaxQueueMessages: 100, CloseGrace: 200 * time.Millisecond})
	other := ts.client(t)
	other.subscribe("c")
	ws, _, err := smallReadBuffer().Dial(ts.url+"/ws", nil)
	if err != nil {
		t.Fatal(err)
	}
	defer ws.Close()
	payload := []byte(strings.Repeat("p", 100))
	for i := 0; ts.node.metrics.slowConsumers.Load() == 0; i++ {
		if i > 1_000_000 {
			t.Fatal("a million pings and the flooder is not cut")
		}
		if err := ws.WriteControl(websocket.PingMessage, payload, time.Now().Add(5*time.Second)); err != nil {
			break // cut: the server closed the socket
		}
	}
	waitFor(t, "the flooder cut", func() bool { return ts.node.metrics.slowConsumers.Load() == 1 })
	if code := readUntilClosed(t, ws); CloseCode(code) != CloseSlowConsumer && code != websocket.CloseAbnormalClosure {
		t.Fatalf("flooder saw close %d, want %d or %d", code, CloseSlowConsumer, websocket.CloseAbnormalClosure)
	}
	other.mustOK(protocolPing())
}

// A subscriber that stops reading is cut as a slow consumer (4001 in the
// server's metrics and log). The close frame waits behind what its full
// socket has not taken; if the client does not read within CloseGrace, the
// socket is cut and the client, reading later, sees 1006. (One that reads
// in time gets 4001: TestSlowConsumerIsolated.) Either way it should
// reconnect and recover.
func TestSlowConsumerLateReaderSees1006(t *testing.T) {
	t.Parallel()
	ts := newTestServer(t, Config{MaxQueueBytes: 256 << 10, CloseGrace: 200 * time.Millisecond})
	// Default socket buffers: with a tiny receive buffer on loopback (MSS
	// 64 KiB) the kernel hardly ever reopens the window, and reading what
	// is left behind the cut would take minutes.
	ws, _, err := websocket.DefaultDialer.Dial(ts.url+"/ws", nil)
	if err != nil {
		t.Fatal(err)
	}
	defer ws.Close()
	if err := ws.WriteMessage(websocket.TextMessage, []byte(`{"id":1,"cmd":"subscribe","channel":"c"}`)); err != nil {
		t.Fatal(err)
	}
	waitFor(t, "the subscription", func() bool { return ts.node.hub.numSubs("c") == 1 })
	payload := []byte(`"` + strings.Repeat("x", 8000) + `"`)
	m := &ts.node.metrics
	for i := 0; m.slowConsumers.Load() == 0; i++ {
		if i > 100_000 {
			t.Fatal("the subscriber is never cut")
		}
		if _, err := ts.node.Publish(t.Context(), "c", payload); err != nil {
			t.Fatal(err)
		}
		if m.socketFull.Load() == 0 {
			// Until its socket is full the writer keeps up: the cut must
			// come from a full socket, not from a burst outrunning it.
			waitFor(t, "the writer", func() bool { return ts.node.queuedBytes() == 0 || m.socketFull.Load() > 0 })
		}
	}
	waitFor(t, "the socket cut after CloseGrace", func() bool { return ts.node.hub.numConns() == 0 })
	if code := readUntilClosed(t, ws); code != websocket.CloseAbnormalClosure {
		t.Fatalf("late reader saw close %d, want %d", code, websocket.CloseAbnormalClosure)
	}
}

// readUntilClosed reads until the connection ends and returns its close code.
func readUntilClosed(t *testing.T, ws *websocket.Conn) int {
	t.Helper()
	_ = ws.SetReadDeadline(time.Now().Add(10 * time.Second))
	for {
		_, _, err := ws.ReadMessage()
		if err == nil {
			continue
		}
		var ce *websocket.CloseError
		if errors.As(err, &ce) {
			return ce.Code
		}
		t.Fatalf("read: %v", err)
	}
}

func protocolPing() protocol.Command { return protocol.Command{Cmd: "ping"} }

// A node stops one way: cancelling Run's context is Shutdown, drain
// included. With Config.DrainWindow, every client gets 1012 (reconnect,
// elsewhere), not 1001, and Run returns once the node has stopped.
func TestRunContextIsShutdown(t *testing.T) {
	t.Parallel()
	n, err := New(Config{Logger: testLogger(t), DrainWindow: 300 * time.Millisecond})
	if err != nil {
		t.Fatal(err)
	}
	srv := newHTTPTestServer(n)
	defer srv.Close()
	ctx, cancel := context.WithCancel(context.Background())
	ran := make(chan error, 1)
	go func() { ran <- n.Run(ctx) }()
	ts := &testServer{t: t, node: n, srv: srv, url: "ws" + strings.TrimPrefix(srv.URL, "http")}
	clients := []*testClient{ts.client(t), ts.client(t), ts.client(t)}
	cancel()
	for _, c := range clients {
		if ce := c.expectClose(); CloseCode(ce.Code) != CloseServiceRestart {
			t.Fatalf("close %v, want %d", ce, CloseServiceRestart)
		}
	}
	if err := <-ran; err != nil {
		t.Fatalf("Run: %v", err)
	}
	if err := n.Ready(context.Background()); err != ErrDraining {
		t.Fatalf("Ready after Run returned: %v", err)
	}
}

// A connection admitted just before a Drain began, but joined to the node
// only after Drain listed the connections to close, is closed with 1012
// like the rest (Node.connected, the last step of every endpoint). The
// connect hook runs between the admission and the join, so a hook that
// drains the node makes that order certain; raw WebSocket and SSE are the
// endpoints whose hook runs there.
func TestDrainCatchesLateAdmission(t *testing.T) {
	t.Parallel()
	drainingHook := func(n *atomic.Pointer[Node]) Hooks {
		return Hooks{Connect: func(ctx context.Context, _ *ConnectEvent) (*ConnectReply, error) {
			// Drain lists no connection, so it returns at once; the
			// connection being admitted is not in the node yet.
			return nil, n.Load().Drain(ctx, 0)
		}}
	}
	t.Run("raw", func(t *testing.T) {
		t.Parallel()
		var n atomic.Pointer[Node]
		ts := newTestServer(t, Config{Hooks: drainingHook(&n)})
		n.Store(ts.node)
		c := ts.dial(t, "/ws/raw?channel=late", nil)
		if ce := c.expectClose(); CloseCode(ce.Code) != CloseServiceRestart {
			t.Fatalf("close %v, want %d", ce, CloseServiceRestart)
		}
	})
	t.Run("sse", func(t *testing.T) {
		t.Parallel()
		var n atomic.Pointer[Node]
		ts := newTestServer(t, Config{Hooks: drainingHook(&n)})
		n.Store(ts.node)
		if code := ts.sse(t, nil, "late").expectEnd(); code != CloseServiceRestart {
			t.Fatalf("the stream ended with %d, want %d", code, CloseServiceRestart)
		}
	})
}

// Shutdown honours its own deadline while a stop is already under way
// (Run's, after its context ended, drains for DrainWindow): the earliest
// deadline cuts the stop short, and Shutdown says so.
func TestShutdownDeadlineDuringRunsStop(t *testing.T) {
	t.Parallel()
	n, err := New(Config{Logger: testLogger(t), DrainWindow: time.Minute})
	if err != nil {
		t.Fatal(err)
	}
	srv := newHTTPTestServer(n)
	defer srv.Close()
	ctx, cancel := context.WithCancel(context.Background())
	ran := make(chan error, 1)
	go func() { ran <- n.Run(ctx) }()
	ts := &testServer{t: t, node: n, srv: srv, url: "ws" + strings.TrimPrefix(srv.URL, "http")}
	for range 3 {
		ts.client(t)
	}
	cancel() // Run starts a stop that would drain for a minute
	waitFor(t, "the drain", func() bool { return n.Ready(context.Background()) == ErrDraining })
	sctx, scancel := context.WithTimeout(context.Background(), 200*time.Millisecond)
	defer scancel()
	if err := n.Shutdown(sctx); err != context.DeadlineExceeded {
		t.Fatalf("Shutdown: %v, want its deadline's error", err)
	}
	if err := <-ran; err != nil {
		t.Fatalf("Run: %v", err)
	}
}
