package pusherapi_test

import (
	"context"
	"encoding/json"
	"errors"
	"io"
	"net/http"
	"net/http/httptest"
	"net/url"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/gorilla/websocket"
	"go.uber.org/goleak"

	"github.com/heraldhq/herald"
	"github.com/heraldhq/herald/internal/wstest"
	"github.com/heraldhq/herald/protocol"
	"github.com/heraldhq/herald/pusherapi"
)

func TestMain(m *testing.M) { goleak.VerifyTestMain(m) }

// Two apps, as a config file would give them.
var (
	appA = herald.PusherApp{ID: "101", Key: "key-a", Secret: "secret-a-0123456789", ClientEvents: true}
	appB = herald.PusherApp{ID: "202", Key: "key-b", Secret: "secret-b-0123456789"}
)

// server is a running node with Herald's WebSocket endpoint (/ws), the
// Pusher endpoint (/app/{key}) and the Pusher API (/apps/), on loopback.
type server struct {
	node      *herald.Node
	srv       *httptest.Server
	socketIDs sync.Map // *websocket.Conn -> its socket id (pusherConn)
}

// socketIDOf returns the socket id of a pusherConn.
func (s *server) socketIDOf(t *testing.T, ws *websocket.Conn) string {
	id, ok := s.socketIDs.Load(ws)
	if !ok {
		t.Fatal("not a pusherConn")
	}
	return id.(string)
}

func newServer(t *testing.T, cfg herald.Config) *server {
	t.Helper()
	if cfg.PusherApps == nil {
		cfg.PusherApps = []herald.PusherApp{appA, appB}
	}
	if cfg.Authenticate == nil {
		cfg.Authenticate = func(r *http.Request) (herald.Credentials, error) {
			return herald.Credentials{UserID: r.Header.Get("X-Test-User")}, nil
		}
	}
	n, err := herald.New(cfg)
	if err != nil {
		t.Fatal(err)
	}
	mux := http.NewServeMux()
	mux.Handle("/ws", n.Handler())
	mux.Handle("GET /app/{key}", n.PusherHandler())
	mux.Handle("/apps/", pusherapi.Handler(n, pusherapi.Config{Logger: nil}))
	s := &server{node: n, srv: httptest.NewServer(mux)}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan struct{})
	go func() { defer close(done); _ = n.Run(ctx) }()
	t.Cleanup(func() {
		_ = n.Shutdown(context.Background())
		cancel()
		<-done
		s.srv.Close()
	})
	return s
}

// herald dials Herald's own protocol as user.
func (s *server) herald(t *testing.T, user string) *wstest.Client {
	return wstest.Dial(t, "ws"+strings.TrimPrefix(s.srv.URL, "http")+"/ws", http.Header{"X-Test-User": {user}})
}

// signed makes an API request of app signed as the Pusher SDKs sign it,
// with query's own parameters, and returns the status and body.
func (s *server) signed(t *testing.T, app herald.PusherApp, method, path string, query url.Values, body string) (int, string) {
	t.Helper()
	if query == nil {
		query = url.Values{}
	}
	pusherapi.SignQuery(method, path, query, []byte(body), app.Key, app.Secret, time.Now())
	return s.do(t, method, path+"?"+query.Encode(), body)
}

func (s *server) do(t *testing.T, method, pathQuery, body string) (int, string) {
	t.Helper()
	req, err := http.NewRequest(method, s.srv.URL+pathQuery, strings.NewReader(body))
	if err != nil {
		t.Fatal(err)
	}
	if body != "" {
		req.Header.Set("Content-Type", "application/json")
	}
	res, err := http.DefaultClient.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	defer res.Body.Close()
	b, _ := io.ReadAll(res.Body)
	return res.StatusCode, string(b)
}

// One system: an event triggered through the Pusher API reaches a Herald
// client of the app's channel, as the documented envelope; another app's
// channel of the same name gets nothing.
func TestTriggerReachesHeraldClients(t *testing.T) {
	t.Parallel()
	s := newServer(t, herald.Config{})
	subA := s.herald(t, "ann")
	subA.OK(protocol.Command{Cmd: "subscribe", Channel: appA.HeraldChannel("news")})
	subB := s.herald(t, "bob")
	subB.OK(protocol.Command{Cmd: "subscribe", Channel: appB.HeraldChannel("news")})

	st, body := s.signed(t, appA, "POST", "/apps/101/events", nil, `{"name":"flash","channels":["news"],"data":"{\"n\":1}"}`)
	if st != 200 || strings.TrimSpace(body) != "{}" {
		t.Fatalf("trigger: %d %s", st, body)
	}
	m := subA.ReadJSON()
	ev, ok := herald.DecodePusherEvent(m.Data)
	if m.Channel != appA.HeraldChannel("news") || !ok || ev.Event != "flash" || ev.Data != `{"n":1}` {
		t.Fatalf("Herald client got %+v (%+v)", m, ev)
	}
	// App B's client gets B's event, and never A's.
	if st, body := s.signed(t, appB, "POST", "/apps/202/events", nil, `{"name":"b-only","channel":"news","data":"x"}`); st != 200 {
		t.Fatalf("trigger B: %d %s", st, body)
	}
	if ev, _ := herald.DecodePusherEvent(subB.ReadJSON().Data); ev.Event != "b-only" {
		t.Fatalf("app B's client got %+v first", ev)
	}
}

func TestBatchAndInfo(t *testing.T) {
	t.Parallel()
	s := newServer(t, herald.Config{})
	sub := s.herald(t, "ann")
	sub.OK(protocol.Command{Cmd: "subscribe", Channel: appA.HeraldChannel("a")})
	sub.OK(protocol.Command{Cmd: "subscribe", Channel: appA.HeraldChannel("b")})
	ctx := context.Background()
	if err := s.node.SubscribeUser(ctx, "ann", appA.HeraldChannel("presence-room")); err != nil {
		t.Fatal(err)
	}
	sub.ReadJSON() // the server-side subscription's push
	// Presence is recorded after the push goes: wait for it.
	wstest.WaitFor(t, "ann in presence-room's presence", func() bool {
		st, err := s.node.PresenceStats(ctx, appA.HeraldChannel("presence-room"))
		return err == nil && st.Users == 1
	})
	st, body := s.signed(t, appA, "POST", "/apps/101/batch_events", nil,
		`{"batch":[{"channel":"a","name":"e1","data":"1"},{"channel":"b","name":"e2","data":"2","info":"subscription_count"},{"channel":"presence-room","name":"e3","data":"3","info":"user_count,subscription_count"}]}`)
	if st != 200 {
		t.Fatalf("batch: %d %s", st, body)
	}
	var res struct {
		Batch []map[string]int `json:"batch"`
	}
	if err := json.Unmarshal([]byte(body), &res); err != nil || len(res.Batch) != 3 {
		t.Fatalf("batch answer %s: %v", body, err)
	}
	if len(res.Batch[0]) != 0 || res.Batch[1]["subscription_count"] != 1 || res.Batch[2]["user_count"] != 1 || res.Batch[2]["subscription_count"] != 1 {
		t.Fatalf("batch info: %+v", res.Batch)
	}
	// The events arrive in the batch's order (one publisher, in order).
	var got []string
	for len(got) < 3 {
		m := sub.ReadJSON()
		if ev, ok := herald.DecodePusherEvent(m.Data); ok {
			got = append(got, ev.Event)
		}
	}
	if strings.Join(got, ",") != "e1,e2,e3" {
		t.Fatalf("got %v", got)
	}

	// Channel queries.
	st, body = s.signed(t, appA, "GET", "/apps/101/channels", nil, "")
	var list struct {
		Channels map[string]map[string]int `json:"channels"`
	}
	if err := json.Unmarshal([]byte(body), &list); st != 200 || err != nil || len(list.Channels) != 3 || list.Channels["presence-room"] == nil {
		t.Fatalf("channels: %d %s", st, body)
	}
	st, body = s.signed(t, appA, "GET", "/apps/101/channels", url.Values{"filter_by_prefix": {"presence-"}, "info": {"user_count"}}, "")
	if st != 200 || strings.TrimSpace(body) != `{"channels":{"presence-room":{"user_count":1}}}` {
		t.Fatalf("presence channels: %d %s", st, body)
	}
	if st, body = s.signed(t, appA, "GET", "/apps/101/channels", url.Values{"info": {"user_count"}}, ""); st != 400 {
		t.Fatalf("user_count without the presence- filter: %d %s", st, body)
	}
	st, body = s.signed(t, appA, "GET", "/apps/101/channels/presence-room", url.Values{"info": {"user_count,subscription_count"}}, "")
	if st != 200 || strings.TrimSpace(body) != `{"occupied":true,"subscription_count":1,"user_count":1}` {
		t.Fatalf("channel: %d %s", st, body)
	}
	st, body = s.signed(t, appA, "GET", "/apps/101/channels/empty", nil, "")
	if st != 200 || strings.TrimSpace(body) != `{"occupied":false}` {
		t.Fatalf("empty channel: %d %s", st, body)
	}
	st, body = s.signed(t, appA, "GET", "/apps/101/channels/presence-room/users", nil, "")
	if st != 200 || strings.TrimSpace(body) != `{"users":[{"id":"ann"}]}` {
		t.Fatalf("users: %d %s", st, body)
	}
	if st, body = s.signed(t, appA, "GET", "/apps/101/channels/a/users", nil, ""); st != 400 {
		t.Fatalf("users of a public channel: %d %s", st, body)
	}
	// App B sees none of A's channels.
	if st, body = s.signed(t, appB, "GET", "/apps/202/channels", nil, ""); st != 200 || strings.TrimSpace(body) != `{"channels":{}}` {
		t.Fatalf("app B's channels: %d %s", st, body)
	}
}

func TestRefusals(t *testing.T) {
	t.Parallel()
	s := newServer(t, herald.Config{})
	hundredOne := make([]string, 101)
	for i := range hundredOne {
		hundredOne[i] = `"c"`
	}
	batch11 := strings.Repeat(`{"channel":"c","name":"e","data":"d"},`, 11)
	cases := []struct {
		name, body string
		want       int
	}{
		{"no name", `{"channels":["c"],"data":"d"}`, 400},
		{"reserved name", `{"name":"pusher_internal:member_added","channels":["presence-x"],"data":"{}"}`, 400},
		{"no channel", `{"name":"e","data":"d"}`, 400},
		{"no data", `{"name":"e","channels":["c"]}`, 400},
		{"bad channel", `{"name":"e","channels":["a b"],"data":"d"}`, 400},
		{"101 channels", `{"name":"e","channels":[` + strings.Join(hundredOne, ",") + `],"data":"d"}`, 400},
		{"bad socket id", `{"name":"e","channels":["c"],"data":"d","socket_id":"abc"}`, 400},
		{"user_count of a public channel", `{"name":"e","channels":["c"],"data":"d","info":"user_count"}`, 400},
		{"data over 10 KiB", `{"name":"e","channels":["c"],"data":"` + strings.Repeat("x", 10<<10+1) + `"}`, 413},
		{"not JSON", `name=e`, 400},
	}
	for _, c := range cases {
		if st, body := s.signed(t, appA, "POST", "/apps/101/events", nil, c.body); st != c.want {
			t.Errorf("%s: %d %s, want %d", c.name, st, body, c.want)
		}
	}
	if st, body := s.signed(t, appA, "POST", "/apps/101/batch_events", nil, `{"batch":[`+strings.TrimSuffix(batch11, ",")+`]}`); st != 400 {
		t.Errorf("11 events: %d %s", st, body)
	}

	// Signatures: the app's key with another app's secret, the other app's
	// path, a changed body, an old timestamp, an unknown app, no auth.
	ev := `{"name":"e","channels":["c"],"data":"d"}`
	wrong := appA
	wrong.Secret = appB.Secret
	if st, _ := s.signed(t, wrong, "POST", "/apps/101/events", nil, ev); st != 401 {
		t.Errorf("wrong secret: %d", st)
	}
	if st, _ := s.signed(t, appA, "POST", "/apps/202/events", nil, ev); st != 401 {
		t.Errorf("app A's key on app B: %d", st)
	}
	q := url.Values{}
	pusherapi.SignQuery("POST", "/apps/101/events", q, []byte(ev), appA.Key, appA.Secret, time.Now())
	if st, body := s.do(t, "POST", "/apps/101/events?"+q.Encode(), strings.Replace(ev, `"d"`, `"D"`, 1)); st != 401 || !strings.Contains(body, "body_md5") {
		t.Errorf("changed body: %d %s", st, body)
	}
	old := url.Values{}
	pusherapi.SignQuery("POST", "/apps/101/events", old, []byte(ev), appA.Key, appA.Secret, time.Now().Add(-11*time.Minute))
	if st, body := s.do(t, "POST", "/apps/101/events?"+old.Encode(), ev); st != 401 || !strings.Contains(body, "Timestamp expired") {
		t.Errorf("old timestamp: %d %s", st, body)
	}
	if st, _ := s.signed(t, appA, "POST", "/apps/999/events", nil, ev); st != 404 {
		t.Errorf("unknown app: %d", st)
	}
	if st, _ := s.do(t, "POST", "/apps/101/events", ev); st != 401 {
		t.Errorf("unsigned: %d", st)
	}
	// The OpenAPI document needs no signature.
	if st, body := s.do(t, "GET", "/apps/openapi.json", ""); st != 200 || !strings.Contains(body, `"openapi": "3.1.0"`) {
		t.Errorf("openapi.json: %d %.80s", st, body)
	}
}

// pusherConn is a Pusher protocol client of app (gorilla, as pusher-js
// speaks it), signed in as user when user is not "".
func (s *server) pusherConn(t *testing.T, app herald.PusherApp, user string) *websocket.Conn {
	t.Helper()
	ws, _, err := websocket.DefaultDialer.Dial("ws"+strings.TrimPrefix(s.srv.URL, "http")+"/app/"+app.Key+"?protocol=7", nil)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { ws.Close() })
	var est struct{ Event, Data string }
	if err := ws.ReadJSON(&est); err != nil || est.Event != "pusher:connection_established" {
		t.Fatalf("connect: %+v %v", est, err)
	}
	var d struct {
		SocketID string `json:"socket_id"`
	}
	_ = json.Unmarshal([]byte(est.Data), &d)
	s.socketIDs.Store(ws, d.SocketID)
	if user != "" {
		ud := `{"id":"` + user + `"}`
		msg, _ := json.Marshal(map[string]any{"event": "pusher:signin", "data": map[string]string{"user_data": ud, "auth": herald.PusherUserAuth(app, d.SocketID, ud)}})
		if err := ws.WriteMessage(websocket.TextMessage, msg); err != nil {
			t.Fatal(err)
		}
		var ok struct{ Event string }
		if err := ws.ReadJSON(&ok); err != nil || ok.Event != "pusher:signin_success" {
			t.Fatalf("signin: %+v %v", ok, err)
		}
		// As pusher-js does after signing in: the user's channel.
		sub := `{"event":"pusher:subscribe","data":{"channel":"#server-to-user-` + user + `"}}`
		if err := ws.WriteMessage(websocket.TextMessage, []byte(sub)); err != nil {
			t.Fatal(err)
		}
		if err := ws.ReadJSON(&ok); err != nil || ok.Event != "pusher_internal:subscription_succeeded" {
			t.Fatalf("user channel: %+v %v", ok, err)
		}
	}
	return ws
}

// terminate_connections closes the app's connections of the user, not
// the same user id's connections of another app, nor Herald's.
func TestTerminateIsPerApp(t *testing.T) {
	t.Parallel()
	s := newServer(t, herald.Config{})
	a := s.pusherConn(t, appA, "u1")
	b := s.pusherConn(t, appB, "u1")
	h := s.herald(t, "u1")
	h.OK(protocol.Command{Cmd: "subscribe", Channel: "pusher-202:news"})
	if st, body := s.signed(t, appA, "POST", "/apps/101/users/u1/terminate_connections", nil, "{}"); st != 200 {
		t.Fatalf("terminate: %d %s", st, body)
	}
	_ = a.SetReadDeadline(time.Now().Add(10 * time.Second))
	for {
		if _, _, err := a.ReadMessage(); err != nil {
			var ce *websocket.CloseError
			if !errors.As(err, &ce) || ce.Code != 4009 {
				t.Fatalf("app A's connection: %v, want close 4009", err)
			}
			break
		}
	}
	// B's and the Herald client are still there: each gets an event sent
	// after the terminate.
	if st, body := s.signed(t, appB, "POST", "/apps/202/events", nil, `{"name":"still","channel":"#server-to-user-u1","data":"x"}`); st != 200 {
		t.Fatalf("send to B's user: %d %s", st, body)
	}
	var ev struct{ Event string }
	_ = b.SetReadDeadline(time.Now().Add(10 * time.Second))
	if err := b.ReadJSON(&ev); err != nil || ev.Event != "still" {
		t.Fatalf("app B's connection of the same user: %+v %v", ev, err)
	}
	if st, _ := s.signed(t, appB, "POST", "/apps/202/events", nil, `{"name":"herald","channel":"news","data":"x"}`); st != 200 {
		t.Fatal(st)
	}
	if m := h.ReadJSON(); m.Channel != "pusher-202:news" {
		t.Fatalf("the Herald client of the same user: %+v", m)
	}
}
