package client_test

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"slices"
	"sync"
	"testing"
	"time"

	"github.com/gorilla/websocket"

	"github.com/heraldhq/herald/client"
	"github.com/heraldhq/herald/protocol"
)

// serverSubs records what a client's server-side subscriptions show the
// app: announcements and every handler call, as strings, in order.
type serverSubs struct {
	mu     sync.Mutex
	subs   map[string]*client.Subscription
	events []string // "sub <ch>", "pub <ch> <offset> <data>", "failed <ch> <reason>", "unsub <ch> <code>"
}

func (r *serverSubs) note(e string) { r.mu.Lock(); r.events = append(r.events, e); r.mu.Unlock() }

func (r *serverSubs) onServerSubscribe(sub *client.Subscription) client.SubscribeOptions {
	ch := sub.Channel()
	r.mu.Lock()
	if r.subs == nil {
		r.subs = make(map[string]*client.Subscription)
	}
	r.subs[ch] = sub
	r.mu.Unlock()
	r.note("sub " + ch)
	return client.SubscribeOptions{
		OnPublication:    func(p client.Publication) { r.note(fmt.Sprintf("pub %s %d %s", ch, p.Offset, p.Data)) },
		OnRecoveryFailed: func(reason string) { r.note("failed " + ch + " " + reason) },
		OnUnsubscribed:   func(code, _ string) { r.note("unsub " + ch + " " + code) },
	}
}

func (r *serverSubs) list() []string {
	r.mu.Lock()
	defer r.mu.Unlock()
	return slices.Clone(r.events)
}

func (r *serverSubs) sub(ch string) *client.Subscription {
	r.mu.Lock()
	defer r.mu.Unlock()
	return r.subs[ch]
}

// waitEvents waits until the recorder holds exactly want.
func (r *serverSubs) waitEvents(t *testing.T, want ...string) {
	t.Helper()
	deadline := time.Now().Add(10 * time.Second)
	for !slices.Equal(r.list(), want) {
		if time.Now().After(deadline) || len(r.list()) > len(want) {
			t.Fatalf("events\n%q\nwant\n%q", r.list(), want)
		}
		time.Sleep(time.Millisecond)
	}
}

func pushJSON(ws *websocket.Conn, v string) { _ = ws.WriteMessage(websocket.TextMessage, []byte(v)) }

// The wire of server-side subscriptions against a scripted server: a
// subscribe push makes a subscription, announced once, whose position
// moves with its publications; a reconnect sends the positions in
// connect's subs (and the connect data), never a subscribe command;
// recovered, not recovered and not_restored each reach the app.
func TestServerSideSubscriptionWire(t *testing.T) {
	t.Parallel()
	var (
		mu       sync.Mutex
		connects []protocol.Command
		others   []string // every command but connect and ping
	)
	fs := newFakeServer(t, func(ws *websocket.Conn, n int32, cmd protocol.Command) {
		switch cmd.Cmd {
		case protocol.CmdConnect:
			mu.Lock()
			connects = append(connects, cmd)
			mu.Unlock()
			fakeReply(ws, cmd.ID, protocol.ConnectResult{Client: fmt.Sprintf("fake-%d", n), Data: json.RawMessage(fmt.Sprintf(`{"conn":%d}`, n))})
			switch n {
			case 1:
				pushJSON(ws, `{"push":"subscribe","channel":"news","offset":5,"epoch":"e1"}`)
				pushJSON(ws, `{"push":"pub","channel":"news","offset":6,"data":{"n":6}}`)
				pushJSON(ws, `{"push":"subscribe","channel":"gone"}`)
			case 2:
				pushJSON(ws, `{"push":"subscribe","channel":"news","offset":7,"epoch":"e1","recovered":true}`)
				pushJSON(ws, `{"push":"pub","channel":"news","offset":7,"data":{"n":7}}`)
				pushJSON(ws, `{"push":"unsub","channel":"gone","code":"not_restored","reason":"no longer granted"}`)
				// Repeated on the same connection: nothing to take up.
				pushJSON(ws, `{"push":"subscribe","channel":"news","offset":9,"epoch":"e9"}`)
			case 3:
				pushJSON(ws, `{"push":"subscribe","channel":"news","offset":0,"epoch":"e2","recovered":false,"reason":"epoch_changed"}`)
			}
		case protocol.CmdPing:
			fakeReply(ws, cmd.ID, nil)
			_ = ws.WriteControl(websocket.CloseMessage, websocket.FormatCloseMessage(4003, "again"), time.Now().Add(time.Second))
		default:
			mu.Lock()
			others = append(others, cmd.Cmd+" "+cmd.Channel)
			mu.Unlock()
		}
	})
	var (
		rec    serverSubs
		states recorder
		calls  int
	)
	c := connect(t, fs.url, client.Options{
		OnServerSubscribe: rec.onServerSubscribe,
		OnState:           states.onState,
		GetConnectData: func(ctx context.Context) (json.RawMessage, error) {
			calls++ // the connection goroutine's alone
			return json.RawMessage(fmt.Sprintf(`{"attempt":%d}`, calls)), nil
		},
	})
	rec.waitEvents(t, "sub news", `pub news 6 {"n":6}`, "sub gone")
	news := rec.sub("news")
	if !news.ServerSide() || news.Position() != (client.Position{Offset: 6, Epoch: "e1"}) {
		t.Fatalf("news: server side %v at %+v, want true at 6/e1", news.ServerSide(), news.Position())
	}
	if _, err := c.Subscribe(ctxT(t), "news", client.SubscribeOptions{}); !isCodeErr(err, protocol.CodeAlreadySub) {
		t.Errorf("Subscribe to a server-side channel = %v, want already_subscribed", err)
	}
	if got := string(c.ConnectReplyData()); got != `{"conn":1}` {
		t.Errorf("ConnectReplyData = %s, want {\"conn\":1}", got)
	}

	_ = c.Ping(ctxT(t)) // closes the connection: reconnect 2
	rec.waitEvents(t, "sub news", `pub news 6 {"n":6}`, "sub gone", `pub news 7 {"n":7}`, "unsub gone not_restored")
	if err := c.Ping(ctxT(t)); err != nil { // after the repeated push: handled
		t.Fatal(err)
	}
	if p := news.Position(); p != (client.Position{Offset: 7, Epoch: "e1"}) {
		t.Errorf("news after recovery at %+v, want 7/e1 (a repeated push must not move it)", p)
	}
	_ = c.Ping(ctxT(t)) // reconnect 3
	rec.waitEvents(t, "sub news", `pub news 6 {"n":6}`, "sub gone", `pub news 7 {"n":7}`, "unsub gone not_restored",
		"failed news epoch_changed")
	if p := news.Position(); p != (client.Position{Offset: 0, Epoch: "e2"}) {
		t.Errorf("news after a failed recovery at %+v, want 0/e2", p)
	}

	mu.Lock()
	defer mu.Unlock()
	want := []struct {
		subs map[string]client.Position
		data string
	}{
		{nil, `{"attempt":1}`},
		{map[string]client.Position{"news": {Offset: 6, Epoch: "e1"}, "gone": {}}, `{"attempt":2}`},
		{map[string]client.Position{"news": {Offset: 7, Epoch: "e1"}}, `{"attempt":3}`},
	}
	if len(connects) != len(want) {
		t.Fatalf("%d connects, want %d", len(connects), len(want))
	}
	for i, w := range want {
		if got := connects[i]; !mapsEqual(got.Subs, w.subs) || string(got.Data) != w.data {
			t.Errorf("connect %d: subs %v data %s, want subs %v data %s", i+1, got.Subs, got.Data, w.subs, w.data)
		}
	}
	if len(others) != 0 {
		t.Errorf("commands sent for server-side subscriptions: %q, want none", others)
	}
	var data []string
	for _, s := range states.stateList() {
		if s.State == client.StateConnected {
			data = append(data, string(s.Data))
		}
	}
	if !slices.Equal(data, []string{`{"conn":1}`, `{"conn":2}`, `{"conn":3}`}) {
		t.Errorf("StateConnected data %q, want each connection's", data)
	}
}

func mapsEqual(a, b map[string]client.Position) bool {
	if len(a) != len(b) {
		return false
	}
	for k, v := range a {
		if w, ok := b[k]; !ok || w != v {
			return false
		}
	}
	return true
}

func isCodeErr(err error, code protocol.Code) bool {
	var e *client.Error
	return errors.As(err, &e) && e.Code == code
}

// A connect the server refuses, then closes: with 4500 or 4501 the client
// stops and its error carries both the app's code and the close code; with
// 1013 (the backend failed) it tries again.
func TestRefusedConnectClose(t *testing.T) {
	t.Parallel()
	refuse := func(ws *websocket.Conn, id uint64, code protocol.Code, close int) {
		_ = ws.WriteJSON(protocol.Reply{ID: id, Error: &protocol.Error{Code: code, Message: "no"}})
		_ = ws.WriteControl(websocket.CloseMessage, websocket.FormatCloseMessage(close, string(code)), time.Now().Add(time.Second))
	}
	t.Run("first connect", func(t *testing.T) {
		t.Parallel()
		fs := newFakeServer(t, func(ws *websocket.Conn, n int32, cmd protocol.Command) {
			refuse(ws, cmd.ID, "banned_user", 4500)
		})
		c := newClient(t, fs.url, client.Options{})
		err := c.Connect(ctxT(t))
		if code, ok := client.CloseCodeOf(err); !isCodeErr(err, "banned_user") || !ok || code != 4500 {
			t.Fatalf("Connect = %v, want banned_user and close 4500", err)
		}
	})
	t.Run("reconnect", func(t *testing.T) {
		t.Parallel()
		fs := newFakeServer(t, func(ws *websocket.Conn, n int32, cmd protocol.Command) {
			switch {
			case cmd.Cmd == protocol.CmdPing:
				_ = ws.WriteControl(websocket.CloseMessage, websocket.FormatCloseMessage(4003, ""), time.Now().Add(time.Second))
			case n == 2:
				refuse(ws, cmd.ID, protocol.CodeUnavailable, 1013)
			case n == 4:
				refuse(ws, cmd.ID, protocol.CodeUnauthorized, 4501)
			default:
				answerConnect(ws, n, cmd)
			}
		})
		var states recorder
		c := connect(t, fs.url, client.Options{OnState: states.onState})
		_ = c.Ping(ctxT(t))
		waitFor(t, "the reconnect after 1013", func() bool { return fs.nconns.Load() == 3 && c.State() == client.StateConnected })
		_ = c.Ping(ctxT(t))
		select {
		case <-c.Done():
		case <-time.After(10 * time.Second):
			t.Fatal("client still running after a refused connect closed with 4501")
		}
		if code, ok := client.CloseCodeOf(c.Err()); !isCodeErr(c.Err(), protocol.CodeUnauthorized) || !ok || code != 4501 {
			t.Fatalf("Err() = %v, want unauthorized and close 4501", c.Err())
		}
		time.Sleep(50 * time.Millisecond) // several backoffs: no further attempt
		if n := fs.nconns.Load(); n != 4 {
			t.Errorf("%d connections, want 4", n)
		}
		var saw1013 bool
		for _, s := range states.stateList() {
			saw1013 = saw1013 || (s.State == client.StateDisconnected && s.Code == protocol.CloseTryAgainLater)
		}
		if !saw1013 {
			t.Errorf("no disconnected state with code 1013 among %+v", states.stateList())
		}
	})
}

// RPC against a scripted server: what the call sends (method, data as
// given), what it returns, and the backend's own error codes.
func TestRPCWire(t *testing.T) {
	t.Parallel()
	fs := newFakeServer(t, func(ws *websocket.Conn, n int32, cmd protocol.Command) {
		if answerConnect(ws, n, cmd) || cmd.Cmd != protocol.CmdRPC {
			return
		}
		switch cmd.Method {
		case "echo": // the data as received, in an object
			_ = ws.WriteMessage(websocket.TextMessage, fmt.Appendf(nil, `{"id":%d,"result":{"data":{"got":%q}}}`, cmd.ID, cmd.Data))
		case "void":
			_ = ws.WriteMessage(websocket.TextMessage, fmt.Appendf(nil, `{"id":%d,"result":{}}`, cmd.ID))
		default:
			fakeError(ws, cmd.ID, "no_such_method")
		}
	})
	c := connect(t, fs.url, client.Options{})
	for _, tc := range []struct {
		data any
		sent string
	}{
		{nil, ""},
		{json.RawMessage(nil), ""},
		{json.RawMessage(` {"a": [1, 2]} `), `{"a": [1, 2]}`}, // as given, not re-encoded
		{map[string]int{"before": 42}, `{"before":42}`},
		{[]byte("hi"), `"aGk="`}, // encoding/json's []byte: only RawMessage is raw
	} {
		got, err := c.RPC(ctxT(t), "echo", tc.data)
		want := fmt.Sprintf(`{"got":%q}`, tc.sent)
		if err != nil || string(got) != want {
			t.Errorf("RPC(echo, %#v) = %s, %v; want %s", tc.data, got, err, want)
		}
	}
	if got, err := c.RPC(ctxT(t), "void", nil); err != nil || got != nil {
		t.Errorf("RPC(void) = %q, %v; want nil, nil", got, err)
	}
	if _, err := c.RPC(ctxT(t), "other", nil); !isCodeErr(err, "no_such_method") {
		t.Errorf("RPC(other) = %v, want the app's code no_such_method", err)
	}
	for _, bad := range []struct {
		method string
		data   any
	}{{"", nil}, {"echo", json.RawMessage(`{`)}, {"echo", func() {}}} {
		if _, err := c.RPC(ctxT(t), bad.method, bad.data); err == nil || isCodeErr(err, "no_such_method") {
			t.Errorf("RPC(%q, %T) = %v, want a client-side error", bad.method, bad.data, err)
		}
	}
}
