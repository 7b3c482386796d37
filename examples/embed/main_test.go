package main

import (
	"context"
	"encoding/json"
	"errors"
	"io"
	"net/http"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/gorilla/websocket"
	"go.uber.org/goleak"

	"github.com/heraldhq/herald/protocol"
)

// goleak proves run leaves nothing behind: the clock ticker, node.Run, the
// HTTP server and every connection goroutine end before run returns.
func TestMain(m *testing.M) { goleak.VerifyTestMain(m) }

// start runs the example on a free loopback port and returns its address and
// a function that cancels run's context and returns run's error.
func start(t *testing.T, clockEvery time.Duration) (addr string, stop func() error) {
	t.Helper()
	ctx, cancel := context.WithCancel(context.Background())
	addrc := make(chan string, 1)
	done := make(chan error, 1)
	go func() { done <- run(ctx, "127.0.0.1:0", clockEvery, func(a string) { addrc <- a }) }()
	stop = sync.OnceValue(func() error {
		cancel()
		select {
		case err := <-done:
			return err
		case <-time.After(10 * time.Second):
			return errors.New("run did not return within 10s of cancel")
		}
	})
	t.Cleanup(func() { _ = stop() }) // also on a failed test, so goleak sees no stray run
	select {
	case addr = <-addrc:
		return addr, stop
	case err := <-done:
		t.Fatalf("run returned before it was ready: %v", err)
	case <-time.After(5 * time.Second):
		t.Fatal("run not ready within 5s")
	}
	return "", nil
}

func dial(t *testing.T, addr string) *websocket.Conn {
	t.Helper()
	d := websocket.Dialer{Subprotocols: []string{protocol.Subprotocol}, HandshakeTimeout: 5 * time.Second}
	ws, _, err := d.Dial("ws://"+addr+"/ws", nil)
	if err != nil {
		t.Fatalf("dial: %v", err)
	}
	t.Cleanup(func() { ws.Close() })
	if ws.Subprotocol() != protocol.Subprotocol {
		t.Fatalf("negotiated subprotocol %q, want %q", ws.Subprotocol(), protocol.Subprotocol)
	}
	return ws
}

// message is any server message: a reply (ID set) or a push (Push set).
type message struct {
	ID      uint64          `json:"id"`
	Error   *protocol.Error `json:"error"`
	Push    string          `json:"push"`
	Channel string          `json:"channel"`
	Data    json.RawMessage `json:"data"`
}

func read(t *testing.T, ws *websocket.Conn) message {
	t.Helper()
	_ = ws.SetReadDeadline(time.Now().Add(5 * time.Second))
	op, b, err := ws.ReadMessage()
	if err != nil {
		t.Fatalf("read: %v", err)
	}
	var m message
	if err := json.Unmarshal(b, &m); op != websocket.TextMessage || err != nil {
		t.Fatalf("want a JSON text message, got opcode %d %q (%v)", op, b, err)
	}
	return m
}

// subscribe subscribes and waits for the reply. A publication can be fanned
// out between the subscription taking effect and its reply being queued, so
// pushes of that channel may arrive first; they are skipped.
func subscribe(t *testing.T, ws *websocket.Conn, channel string) {
	t.Helper()
	cmd := `{"id":1,"cmd":"subscribe","channel":"` + channel + `"}`
	if err := ws.WriteMessage(websocket.TextMessage, []byte(cmd)); err != nil {
		t.Fatalf("write: %v", err)
	}
	for {
		m := read(t, ws)
		if m.Push == protocol.PushPub && m.Channel == channel {
			continue
		}
		if m.ID != 1 || m.Error != nil || m.Push != "" {
			t.Fatalf("want an ok reply to id 1, got %+v", m)
		}
		return
	}
}

func TestClock(t *testing.T) {
	addr, stop := start(t, 50*time.Millisecond)
	ws := dial(t, addr)
	subscribe(t, ws, "clock")

	m := read(t, ws)
	if m.Push != protocol.PushPub || m.Channel != "clock" {
		t.Fatalf("want a pub push on clock, got %+v", m)
	}
	var clock struct{ Time string }
	if err := json.Unmarshal(m.Data, &clock); err != nil {
		t.Fatalf("clock data %s: %v", m.Data, err)
	}
	if _, err := time.Parse(time.RFC3339Nano, clock.Time); err != nil {
		t.Fatalf("clock time %q: %v", clock.Time, err)
	}

	// Shut down while the client is connected: it must be told 1001 (going
	// away), and run must return nil once everything has ended.
	errc := make(chan error, 1)
	go func() { errc <- stop() }()
	_ = ws.SetReadDeadline(time.Now().Add(10 * time.Second))
	for {
		_, _, err := ws.ReadMessage()
		if err == nil {
			continue // clock pushes still queued before the close frame
		}
		if !websocket.IsCloseError(err, websocket.CloseGoingAway) {
			t.Fatalf("want close 1001, got %v", err)
		}
		break
	}
	if err := <-errc; err != nil {
		t.Fatalf("run returned %v, want nil", err)
	}
}

func TestOwnRoutes(t *testing.T) {
	// An hour-long clock period keeps clock pushes out of this test.
	addr, stop := start(t, time.Hour)
	client := &http.Client{Timeout: 5 * time.Second, Transport: &http.Transport{DisableKeepAlives: true}}

	resp, err := client.Get("http://" + addr + "/")
	if err != nil {
		t.Fatal(err)
	}
	page, _ := io.ReadAll(resp.Body)
	resp.Body.Close()
	if resp.StatusCode != http.StatusOK || !strings.Contains(string(page), protocol.Subprotocol) {
		t.Fatalf("GET /: %d %s", resp.StatusCode, page)
	}

	ws := dial(t, addr)
	subscribe(t, ws, "news")
	post := func(query, body string) int {
		t.Helper()
		resp, err := client.Post("http://"+addr+"/api/notify?"+query, "application/json", strings.NewReader(body))
		if err != nil {
			t.Fatal(err)
		}
		resp.Body.Close()
		return resp.StatusCode
	}
	if code := post("channel=news", `{"title":"hello"}`); code != http.StatusNoContent {
		t.Fatalf("notify: status %d, want 204", code)
	}
	if m := read(t, ws); m.Push != protocol.PushPub || m.Channel != "news" || string(m.Data) != `{"title":"hello"}` {
		t.Fatalf("want the notification as a push, got %+v (data %s)", m, m.Data)
	}
	if code := post("channel=bad%20name", `{}`); code != http.StatusBadRequest {
		t.Errorf("bad channel: status %d, want 400", code)
	}
	if code := post("channel=news", `not json`); code != http.StatusBadRequest {
		t.Errorf("bad body: status %d, want 400", code)
	}

	ws.Close() // leave nothing for the shutdown to wait on
	if err := stop(); err != nil {
		t.Fatalf("run returned %v, want nil", err)
	}
}
