package herald

import (
	"context"
	"encoding/json"
	"errors"
	"net/http"
	"net/http/httptest"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"github.com/gorilla/websocket"

	"github.com/heraldhq/herald/protocol"
)

// testServer is a running node behind an httptest server on a loopback port.
type testServer struct {
	t    testing.TB
	node *Node
	srv  *httptest.Server
	url  string // ws://127.0.0.1:port
}

func newTestServer(t testing.TB, cfg Config) *testServer {
	t.Helper()
	if cfg.Logger == nil {
		cfg.Logger = testLogger(t)
	}
	n, err := New(cfg)
	if err != nil {
		t.Fatal(err)
	}
	mux := http.NewServeMux()
	mux.Handle("/ws", n.Handler())
	mux.Handle("/ws/raw", n.RawHandler())
	mux.Handle("/sse", n.SSEHandler())
	mux.Handle("/app/", n.PusherHandler())
	srv := httptest.NewServer(mux)
	ctx, cancel := context.WithCancel(context.Background())
	runDone := make(chan struct{})
	go func() { defer close(runDone); _ = n.Run(ctx) }()
	ts := &testServer{t: t, node: n, srv: srv, url: "ws" + strings.TrimPrefix(srv.URL, "http")}
	t.Cleanup(func() {
		sctx, scancel := context.WithTimeout(context.Background(), 5*time.Second)
		defer scancel()
		if err := n.Shutdown(sctx); err != nil {
			t.Errorf("Shutdown: %v", err)
		}
		cancel()
		<-runDone
		srv.Close()
	})
	return ts
}

// testClient is a protocol client on a real WebSocket connection.
type testClient struct {
	t      testing.TB
	ws     *websocket.Conn
	nextID atomic.Uint64
}

func (ts *testServer) dial(t testing.TB, path string, hdr http.Header) *testClient {
	t.Helper()
	d := websocket.Dialer{Subprotocols: []string{protocol.Subprotocol}, HandshakeTimeout: 5 * time.Second}
	ws, resp, err := d.Dial(ts.url+path, hdr)
	if err != nil {
		status := 0
		if resp != nil {
			status = resp.StatusCode
		}
		t.Fatalf("dial %s: %v (status %d)", path, err, status)
	}
	c := &testClient{t: t, ws: ws}
	t.Cleanup(func() { ws.Close() })
	return c
}

func (ts *testServer) client(t testing.TB) *testClient { return ts.dial(t, "/ws", nil) }

// send writes a command and returns its id.
func (c *testClient) send(cmd protocol.Command) uint64 {
	c.t.Helper()
	if cmd.ID == 0 {
		cmd.ID = c.nextID.Add(1)
	}
	b, _ := json.Marshal(cmd)
	if err := c.ws.WriteMessage(websocket.TextMessage, b); err != nil {
		c.t.Fatalf("write: %v", err)
	}
	return cmd.ID
}

// read reads the next message with a deadline.
func (c *testClient) read() (int, []byte) {
	c.t.Helper()
	c.ws.SetReadDeadline(time.Now().Add(5 * time.Second))
	op, b, err := c.ws.ReadMessage()
	if err != nil {
		c.t.Fatalf("read: %v", err)
	}
	return op, b
}

type anyMsg struct {
	ID      uint64          `json:"id"`
	Result  json.RawMessage `json:"result"`
	Error   *protocol.Error `json:"error"`
	Push    string          `json:"push"`
	Channel string          `json:"channel"`
	Data    json.RawMessage `json:"data"`
}

func (c *testClient) readJSON() anyMsg {
	c.t.Helper()
	op, b := c.read()
	if op != websocket.TextMessage {
		c.t.Fatalf("want text message, got opcode %d: %q", op, b)
	}
	var m anyMsg
	if err := json.Unmarshal(b, &m); err != nil {
		c.t.Fatalf("bad JSON from server %q: %v", b, err)
	}
	return m
}

// call sends cmd and waits for its reply (failing on anything else first).
func (c *testClient) call(cmd protocol.Command) anyMsg {
	c.t.Helper()
	id := c.send(cmd)
	m := c.readJSON()
	if m.ID != id {
		c.t.Fatalf("want reply to %d, got %+v", id, m)
	}
	return m
}

func (c *testClient) mustOK(cmd protocol.Command) {
	c.t.Helper()
	if m := c.call(cmd); m.Error != nil {
		c.t.Fatalf("%s %s: %v", cmd.Cmd, cmd.Channel, m.Error)
	}
}

func (c *testClient) subscribe(ch string) {
	c.t.Helper()
	c.mustOK(protocol.Command{Cmd: "subscribe", Channel: ch})
}

// expectClose reads until the connection closes and returns the close error.
func (c *testClient) expectClose() *websocket.CloseError {
	c.t.Helper()
	c.ws.SetReadDeadline(time.Now().Add(10 * time.Second))
	for {
		_, _, err := c.ws.ReadMessage()
		if err != nil {
			ce, ok := err.(*websocket.CloseError)
			if !ok {
				c.t.Fatalf("want a close frame, got %v", err)
			}
			return ce
		}
	}
}

// waitFor polls cond until it holds or 10s pass.
func waitFor(t testing.TB, what string, cond func() bool) {
	t.Helper()
	deadline := time.Now().Add(10 * time.Second)
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatalf("timed out waiting for %s", what)
		}
		time.Sleep(time.Millisecond)
	}
}

func newHTTPTestServer(n *Node) *httptest.Server {
	mux := http.NewServeMux()
	mux.Handle("/ws", n.Handler())
	mux.Handle("/ws/raw", n.RawHandler())
	return httptest.NewServer(mux)
}

func errorsAs(err error, target any) bool { return errors.As(err, target) }
