package main

import (
	"bufio"
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"io"
	"net"
	"net/http"
	"os"
	"runtime"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/gorilla/websocket"
	"go.uber.org/goleak"
)

func TestMain(m *testing.M) { goleak.VerifyTestMain(m) }

// syncBuffer is a bytes.Buffer that the server's logger and the test may use
// at the same time.
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

// waitFor polls cond until it holds, failing the test after 10s.
func waitFor(t *testing.T, what string, cond func() bool) {
	t.Helper()
	deadline := time.Now().Add(10 * time.Second)
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatalf("timed out waiting for %s", what)
		}
		time.Sleep(5 * time.Millisecond)
	}
}

// server is `herald serve` running in-process, as main runs it.
type server struct {
	addr   string // host:port actually bound
	logs   *syncBuffer
	cancel context.CancelFunc // what SIGINT/SIGTERM does
	done   chan error         // receives run's result
}

// startServer runs `herald serve` with args (plus a loopback port, JSON
// logs and a short drain window, which args may override) and env, and
// waits until it logs its listening address. Cleanup stops it if the test
// has not.
func startServer(t *testing.T, env []string, args ...string) *server {
	t.Helper()
	return startServerReload(t, nil, env, args...)
}

// startServerReload is startServer with a channel that stands for SIGHUP.
func startServerReload(t *testing.T, reload <-chan os.Signal, env []string, args ...string) *server {
	t.Helper()
	ctx, cancel := context.WithCancel(context.Background())
	s := &server{logs: &syncBuffer{}, cancel: cancel, done: make(chan error, 1)}
	args = append([]string{"serve", "--addr", "127.0.0.1:0", "--log-format", "json", "--drain-window", "100ms"}, args...)
	go func() { s.done <- executeWith(ctx, args, env, io.Discard, s.logs, reload) }()
	t.Cleanup(func() {
		cancel()
		select {
		case <-s.done:
		case <-time.After(15 * time.Second):
			t.Errorf("server did not stop; logs:\n%s", s.logs)
		}
	})
	waitFor(t, "the listening log line", func() bool {
		select {
		case err := <-s.done:
			t.Fatalf("run returned before listening: %v\nlogs:\n%s", err, s.logs)
		default:
		}
		s.addr = listeningAddr(s.logs.String())
		return s.addr != ""
	})
	return s
}

// listeningAddr finds the address in the "listening" log line.
func listeningAddr(logs string) string {
	sc := bufio.NewScanner(strings.NewReader(logs))
	for sc.Scan() {
		var line struct{ Msg, Addr string }
		if json.Unmarshal(sc.Bytes(), &line) == nil && line.Msg == "listening" {
			return line.Addr
		}
	}
	return ""
}

// stop is SIGTERM: it cancels run's context and returns run's result.
func (s *server) stop(t *testing.T) error {
	t.Helper()
	s.cancel()
	select {
	case err := <-s.done:
		s.done <- err // for Cleanup
		return err
	case <-time.After(15 * time.Second):
		t.Fatalf("run did not return after cancel; logs:\n%s", s.logs)
		return nil
	}
}

// httpGet fetches a URL without keeping the connection alive, so that no
// transport goroutine outlives the test (goleak).
func httpGet(t *testing.T, url string) (*http.Response, string) {
	t.Helper()
	c := &http.Client{Transport: &http.Transport{DisableKeepAlives: true}, Timeout: 5 * time.Second}
	resp, err := c.Get(url)
	if err != nil {
		t.Fatalf("GET %s: %v", url, err)
	}
	defer resp.Body.Close()
	body, err := io.ReadAll(resp.Body)
	if err != nil {
		t.Fatalf("GET %s: read body: %v", url, err)
	}
	return resp, string(body)
}

func dialWS(t *testing.T, url string, hdr http.Header) (*websocket.Conn, *http.Response, error) {
	t.Helper()
	d := websocket.Dialer{Subprotocols: []string{"herald.v1"}, HandshakeTimeout: 5 * time.Second}
	ws, resp, err := d.Dial(url, hdr)
	if resp != nil && resp.Body != nil {
		resp.Body.Close()
	}
	if ws != nil {
		t.Cleanup(func() { ws.Close() })
	}
	return ws, resp, err
}

func mustDialWS(t *testing.T, url string, hdr http.Header) *websocket.Conn {
	t.Helper()
	ws, resp, err := dialWS(t, url, hdr)
	if err != nil {
		status := 0
		if resp != nil {
			status = resp.StatusCode
		}
		t.Fatalf("dial %s: %v (HTTP %d)", url, err, status)
	}
	return ws
}

func readMessage(t *testing.T, ws *websocket.Conn) (int, []byte) {
	t.Helper()
	_ = ws.SetReadDeadline(time.Now().Add(5 * time.Second))
	op, b, err := ws.ReadMessage()
	if err != nil {
		t.Fatalf("read: %v", err)
	}
	return op, b
}

type wireMsg struct {
	ID      uint64          `json:"id"`
	Result  json.RawMessage `json:"result"`
	Error   json.RawMessage `json:"error"`
	Push    string          `json:"push"`
	Channel string          `json:"channel"`
	Data    json.RawMessage `json:"data"`
}

// errorCode is the code of a failed reply's error, "" for a success.
func (m wireMsg) errorCode() string {
	var e struct{ Code string }
	_ = json.Unmarshal(m.Error, &e)
	return e.Code
}

// request sends a protocol command and returns the reply, which must come
// next, whether it succeeded or not.
func request(t *testing.T, ws *websocket.Conn, cmd string) wireMsg {
	t.Helper()
	if err := ws.WriteMessage(websocket.TextMessage, []byte(cmd)); err != nil {
		t.Fatalf("write: %v", err)
	}
	var m wireMsg
	_, b := readMessage(t, ws)
	if err := json.Unmarshal(b, &m); err != nil || m.ID == 0 {
		t.Fatalf("want a reply to %s, got %s", cmd, b)
	}
	return m
}

// call sends a protocol command and returns the reply, which must succeed.
func call(t *testing.T, ws *websocket.Conn, cmd string) wireMsg {
	t.Helper()
	m := request(t, ws, cmd)
	if m.Error != nil {
		t.Fatalf("%s failed: %s", cmd, m.Error)
	}
	return m
}

// expectClose reads until the server closes the connection and returns
// the close code.
func expectClose(t *testing.T, ws *websocket.Conn) int {
	t.Helper()
	_ = ws.SetReadDeadline(time.Now().Add(10 * time.Second))
	for {
		_, _, err := ws.ReadMessage()
		if err != nil {
			var ce *websocket.CloseError
			if !errors.As(err, &ce) {
				t.Fatalf("want a close frame, got %v", err)
			}
			return ce.Code
		}
	}
}

// TestServe runs the real server: demo page, health check, protocol and raw
// endpoints, the origin check configured from the environment, and a
// graceful shutdown on cancel that sends clients close 1001.
func TestServe(t *testing.T) {
	t.Parallel()
	s := startServer(t, []string{"HERALD_ALLOWED_ORIGINS=http://app.example"})
	base := "http://" + s.addr

	for _, path := range []string{"/healthz", "/readyz"} {
		resp, body := httpGet(t, base+path)
		if resp.StatusCode != http.StatusOK || body != "ok" {
			t.Fatalf("%s: %d %q", path, resp.StatusCode, body)
		}
	}
	resp, body := httpGet(t, base+"/")
	if resp.StatusCode != http.StatusOK || !strings.Contains(body, `id="messages"`) {
		t.Fatalf("/: %d, want the chat page, got %.200q", resp.StatusCode, body)
	}
	if csp := resp.Header.Get("Content-Security-Policy"); !strings.Contains(csp, "script-src 'self'") {
		t.Errorf("/: Content-Security-Policy %q", csp)
	}
	if resp, _ = httpGet(t, base+"/app.js"); !strings.HasPrefix(resp.Header.Get("Content-Type"), "text/javascript") {
		t.Errorf("/app.js: Content-Type %q", resp.Header.Get("Content-Type"))
	}

	// "lobby": a channel of no namespace, with neither history nor join
	// pushes by default (those of the demo's chat namespace are
	// TestDefaultNamespaces'), so every frame here is exactly as written.
	wsURL := "ws://" + s.addr
	sub := mustDialWS(t, wsURL+"/ws", nil)
	call(t, sub, `{"id":1,"cmd":"subscribe","channel":"lobby"}`)
	raw := mustDialWS(t, wsURL+"/ws/raw?channel=lobby", nil)
	// A raw client's message reaches protocol subscribers. It also proves
	// the raw connection is subscribed: its reader starts only after that.
	if err := raw.WriteMessage(websocket.TextMessage, []byte(`{"hello":"raw"}`)); err != nil {
		t.Fatal(err)
	}
	if _, b := readMessage(t, sub); string(b) != `{"push":"pub","channel":"lobby","data":{"hello":"raw"}}` {
		t.Fatalf("subscriber got %s", b)
	}

	// A browser page from an allowed origin (set by HERALD_ALLOWED_ORIGINS).
	pub := mustDialWS(t, wsURL+"/ws", http.Header{"Origin": {"http://app.example"}})
	call(t, pub, `{"id":1,"cmd":"publish","channel":"lobby","data":{"name":"bob","text":"hi"}}`)

	var push wireMsg
	_, b := readMessage(t, sub)
	if err := json.Unmarshal(b, &push); err != nil || push.Push != "pub" || push.Channel != "lobby" ||
		string(push.Data) != `{"name":"bob","text":"hi"}` {
		t.Fatalf("subscriber got %s", b)
	}
	if op, b := readMessage(t, raw); op != websocket.TextMessage || string(b) != `{"name":"bob","text":"hi"}` {
		t.Fatalf("raw subscriber got opcode %d %s", op, b)
	}

	// Another web site may not connect on its visitors' behalf.
	_, resp, err := dialWS(t, wsURL+"/ws", http.Header{"Origin": {"http://evil.example"}})
	if err == nil || resp == nil || resp.StatusCode != http.StatusForbidden {
		t.Fatalf("dial from a foreign origin: err %v, response %v; want 403", err, resp)
	}
	if !strings.Contains(s.logs.String(), `"level":"WARN","msg":"refused a browser connection from an origin that is not allowed; if the page is yours, add its origin to allowed_origins`) ||
		!strings.Contains(s.logs.String(), `"origin":"http://evil.example"`) {
		t.Errorf("the refused origin is not logged:\n%s", s.logs)
	}

	// SIGTERM: every client is told 1012 service restart (the drain,
	// whose spread TestServeDrainSpread measures); run returns nil.
	s.cancel()
	for _, ws := range []*websocket.Conn{sub, raw, pub} {
		_ = ws.SetReadDeadline(time.Now().Add(10 * time.Second))
		_, _, err := ws.ReadMessage()
		var ce *websocket.CloseError
		if !errors.As(err, &ce) || ce.Code != websocket.CloseServiceRestart {
			t.Errorf("want close 1012, got %v", err)
		}
	}
	if err := s.stop(t); err != nil {
		t.Fatalf("run after a clean shutdown: %v\nlogs:\n%s", err, s.logs)
	}
	if !strings.Contains(s.logs.String(), `"msg":"stopped"`) {
		t.Errorf("no stopped log line:\n%s", s.logs)
	}
}

// TestServeShutdownTimeout: while the server shuts down, /readyz answers
// 503 so that load balancers move on (and /healthz stays 200: the process
// is alive); a client that never answers the close handshake holds the
// shutdown until shutdown_timeout cuts it, and run then reports the unclean
// shutdown instead of hanging. With drain_window off it is sent 1001 at once.
func TestServeShutdownTimeout(t *testing.T) {
	t.Parallel()
	s := startServer(t, nil, "--shutdown-timeout", "1s", "--close-grace", "30s", "--drain-window", "off")
	mustDialWS(t, "ws://"+s.addr+"/ws", nil) // never reads: never answers the close frame
	start := time.Now()
	s.cancel()

	client := &http.Client{Transport: &http.Transport{DisableKeepAlives: true}, Timeout: 5 * time.Second}
	waitFor(t, "/readyz to answer 503 while shutting down", func() bool {
		resp, err := client.Get("http://" + s.addr + "/readyz")
		if err != nil {
			t.Fatalf("GET /readyz while shutting down: %v", err)
		}
		resp.Body.Close()
		return resp.StatusCode == http.StatusServiceUnavailable
	})
	resp, err := client.Get("http://" + s.addr + "/healthz")
	if err != nil {
		t.Fatalf("GET /healthz while shutting down: %v", err)
	}
	resp.Body.Close()
	if resp.StatusCode != http.StatusOK {
		t.Errorf("/healthz while shutting down: %d, want 200 (alive)", resp.StatusCode)
	}

	err = s.stop(t)
	if err == nil || !strings.Contains(err.Error(), "failed to drain WebSocket connections within 1s") ||
		!errors.Is(err, context.DeadlineExceeded) {
		t.Fatalf("want a drain timeout error, got %v", err)
	}
	if d := time.Since(start); d > 6*time.Second {
		t.Fatalf("shutdown took %v despite shutdown_timeout 1s", d)
	}
}

// TestServeReadHeaderTimeout: a client that starts a request and never
// finishes its headers (slowloris) is cut after read_header_timeout.
func TestServeReadHeaderTimeout(t *testing.T) {
	t.Parallel()
	s := startServer(t, nil, "--read-header-timeout", "200ms")

	// The clock starts before the dial: the server's starts when it
	// accepts, which may be before Dial returns here on a loaded machine.
	start := time.Now()
	nc, err := net.Dial("tcp", s.addr)
	if err != nil {
		t.Fatal(err)
	}
	defer nc.Close()
	if _, err := io.WriteString(nc, "GET /healthz HTTP/1.1\r\nHost: x\r\n"); err != nil {
		t.Fatal(err)
	}
	_ = nc.SetReadDeadline(time.Now().Add(5 * time.Second))
	n, err := nc.Read(make([]byte, 512))
	elapsed := time.Since(start)
	var ne net.Error
	if errors.As(err, &ne) && ne.Timeout() {
		t.Fatalf("the server kept a half-sent request open for %v", elapsed)
	}
	if err == nil {
		t.Fatalf("want the connection closed, read %d bytes", n)
	}
	if elapsed < 150*time.Millisecond {
		t.Fatalf("connection cut after %v, before read_header_timeout (200ms): %v", elapsed, err)
	}

	// A complete request is unaffected.
	if resp, body := httpGet(t, "http://"+s.addr+"/healthz"); resp.StatusCode != http.StatusOK || body != "ok" {
		t.Fatalf("/healthz: %d %q", resp.StatusCode, body)
	}
}

func TestServeListenError(t *testing.T) {
	t.Parallel()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	err = execute(context.Background(), []string{"serve", "--addr", ln.Addr().String()}, nil, io.Discard, io.Discard)
	if err == nil || !strings.Contains(err.Error(), "failed to listen on "+ln.Addr().String()) {
		t.Fatalf("want a listen error, got %v", err)
	}
}

func TestServeBadConfig(t *testing.T) {
	t.Parallel()
	err := run(context.Background(), []string{"serve", "--log-level", "loud"}, nil, io.Discard)
	want := `invalid log_level "loud" (from flag --log-level): want debug, info, warn or error`
	if err == nil || err.Error() != want {
		t.Fatalf("got %v\nwant %s", err, want)
	}
	err = run(context.Background(), []string{"serve"}, []string{"HERALD_ALLOWED_ORIGINS=https://ok.example,example.com"}, io.Discard)
	if err == nil || !strings.Contains(err.Error(), `allowed_origins`) || !strings.Contains(err.Error(), "env HERALD_ALLOWED_ORIGINS") ||
		!strings.Contains(err.Error(), `"example.com"`) {
		t.Fatalf("got %v", err)
	}
}

func TestVersion(t *testing.T) {
	t.Parallel()
	var out bytes.Buffer
	if err := run(context.Background(), []string{"version"}, nil, &out); err != nil {
		t.Fatal(err)
	}
	if got := out.String(); !strings.HasPrefix(got, "herald ") || !strings.Contains(got, runtime.Version()) {
		t.Fatalf("version printed %q", got)
	}
}

func TestHelp(t *testing.T) {
	t.Parallel()
	for _, args := range [][]string{{"help"}, {"--help"}, {"help", "serve"}, {"serve", "-h"}, {"help", "version"}} {
		var out bytes.Buffer
		if err := run(context.Background(), args, nil, &out); err != nil {
			t.Fatalf("%q: %v", args, err)
		}
		if !strings.Contains(out.String(), "Usage:") {
			t.Fatalf("%q printed %q", args, out.String())
		}
	}
	var out bytes.Buffer
	if err := run(context.Background(), []string{"help", "serve"}, nil, &out); err != nil {
		t.Fatal(err)
	}
	for _, s := range settings {
		if !strings.Contains(out.String(), "--"+s.flagName()) || !strings.Contains(out.String(), s.envName()) {
			t.Errorf("help serve does not document %s", s.name)
		}
	}
}

func TestUnknownCommand(t *testing.T) {
	t.Parallel()
	for _, args := range [][]string{nil, {"serv"}, {"help", "nope"}} {
		if err := run(context.Background(), args, nil, io.Discard); err == nil {
			t.Errorf("%q: want an error", args)
		}
	}
}

// TestNoBench: the load generator is not linked into the server; herald
// bench says where it went.
func TestNoBench(t *testing.T) {
	t.Parallel()
	err := run(context.Background(), []string{"bench", "-scenario", "s3"}, nil, io.Discard)
	if err == nil || !strings.Contains(err.Error(), "go run ./bench/cmd/herald-bench") {
		t.Fatalf("herald bench: %v, want the way to the load generator", err)
	}
}
