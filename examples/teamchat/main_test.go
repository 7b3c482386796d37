package main

import (
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"io"
	"net/http"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/gorilla/websocket"
	"go.uber.org/goleak"

	"github.com/heraldhq/herald"
	jsclient "github.com/heraldhq/herald/clients/js"
	"github.com/heraldhq/herald/protocol"
)

// goleak proves run leaves nothing behind: node.Run, the HTTP server, every
// connection goroutine and the webhook delivery end before run returns.
func TestMain(m *testing.M) { goleak.VerifyTestMain(m) }

// server is the example running on a free loopback port.
type server struct {
	addr string
	http *http.Client

	mu     sync.Mutex
	events []herald.Event // every webhook event delivered, duplicates included
}

// start runs the example with the given grace; run's error is checked at
// the end of the test.
func start(t *testing.T, grace time.Duration) *server {
	t.Helper()
	s := &server{http: &http.Client{Timeout: 5 * time.Second, Transport: &http.Transport{DisableKeepAlives: true}}}
	ctx, cancel := context.WithCancel(context.Background())
	addrc := make(chan string, 1)
	done := make(chan error, 1)
	cfg := config{addr: "127.0.0.1:0", grace: grace, observe: func(events []herald.Event) {
		s.mu.Lock()
		defer s.mu.Unlock()
		s.events = append(s.events, events...)
	}}
	go func() { done <- run(ctx, cfg, func(a string) { addrc <- a }) }()
	t.Cleanup(func() {
		cancel()
		select {
		case err := <-done:
			if err != nil {
				t.Errorf("run returned %v, want nil", err)
			}
		case <-time.After(10 * time.Second):
			t.Error("run did not return within 10s of cancel")
		}
	})
	select {
	case s.addr = <-addrc:
		return s
	case err := <-done:
		t.Fatalf("run returned before it was ready: %v", err)
	case <-time.After(5 * time.Second):
		t.Fatal("run not ready within 5s")
	}
	return nil
}

// count returns how many events of kind about user were delivered.
func (s *server) count(kind, user string) int {
	s.mu.Lock()
	defer s.mu.Unlock()
	n := 0
	for _, e := range s.events {
		if e.Kind == kind && e.User == user {
			n++
		}
	}
	return n
}

func (s *server) post(t *testing.T, path, contentType, body string, cookie *http.Cookie) *http.Response {
	t.Helper()
	req, err := http.NewRequest(http.MethodPost, "http://"+s.addr+path, strings.NewReader(body))
	if err != nil {
		t.Fatal(err)
	}
	req.Header.Set("Content-Type", contentType)
	if cookie != nil {
		req.AddCookie(cookie)
	}
	resp, err := s.http.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { resp.Body.Close() })
	return resp
}

// login logs name in and returns the session cookie.
func (s *server) login(t *testing.T, name string) *http.Cookie {
	t.Helper()
	resp := s.post(t, "/login", "application/json", `{"name":"`+name+`"}`, nil)
	if resp.StatusCode != http.StatusOK {
		b, _ := io.ReadAll(resp.Body)
		t.Fatalf("login %s: %d %s", name, resp.StatusCode, b)
	}
	for _, c := range resp.Cookies() {
		if c.Name == sessionCookie {
			if !c.HttpOnly || c.Path != "/" || c.SameSite != http.SameSiteLaxMode {
				t.Errorf("session cookie %+v: want HttpOnly, Path /, SameSite Lax", c)
			}
			return &http.Cookie{Name: c.Name, Value: c.Value}
		}
	}
	t.Fatalf("login %s set no %s cookie", name, sessionCookie)
	return nil
}

func (s *server) me(t *testing.T, cookie *http.Cookie) (int, string) {
	t.Helper()
	req, _ := http.NewRequest(http.MethodGet, "http://"+s.addr+"/me", nil)
	if cookie != nil {
		req.AddCookie(cookie)
	}
	resp, err := s.http.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	var body struct{ Name string }
	_ = json.NewDecoder(resp.Body).Decode(&body)
	return resp.StatusCode, body.Name
}

// frame is any server message: a reply (ID set) or a push (Push set).
type frame struct {
	ID      uint64          `json:"id"`
	Result  json.RawMessage `json:"result"`
	Error   *protocol.Error `json:"error"`
	Push    string          `json:"push"`
	Channel string          `json:"channel"`
	Data    json.RawMessage `json:"data"`
	// subscribe pushes
	Offset    uint64 `json:"offset"`
	Epoch     string `json:"epoch"`
	Recovered *bool  `json:"recovered"`
}

// client is a herald.v1 connection, spoken by hand.
type client struct {
	t      *testing.T
	ws     *websocket.Conn
	nextID uint64
	queued []frame // read before the socket
}

// dial opens a WebSocket with cookie (nil: none) and the given Origin ("":
// none, as non-browser clients send).
func (s *server) dial(t *testing.T, cookie *http.Cookie, origin string) (*client, *http.Response, error) {
	t.Helper()
	h := http.Header{}
	if cookie != nil {
		h.Set("Cookie", cookie.String())
	}
	if origin != "" {
		h.Set("Origin", origin)
	}
	d := websocket.Dialer{Subprotocols: []string{protocol.Subprotocol}, HandshakeTimeout: 5 * time.Second}
	ws, resp, err := d.Dial("ws://"+s.addr+"/ws", h)
	if err != nil {
		return nil, resp, err
	}
	t.Cleanup(func() { ws.Close() })
	return &client{t: t, ws: ws}, resp, nil
}

// connect dials as the owner of cookie, sends connect, and waits for the
// reply and the subscribe pushes of both channels (in whatever order).
func (s *server) connect(t *testing.T, cookie *http.Cookie) *client {
	c, _ := s.connectWith(t, cookie, nil)
	return c
}

// connectWith is connect with fields for the connect command (subs, say);
// it returns the subscribe pushes by channel.
func (s *server) connectWith(t *testing.T, cookie *http.Cookie, fields map[string]any) (*client, map[string]frame) {
	t.Helper()
	c, _, err := s.dial(t, cookie, "http://"+s.addr)
	if err != nil {
		t.Fatalf("dial: %v", err)
	}
	id := c.send("connect", fields)
	pushes := map[string]frame{}
	var later []frame
	replied := false
	for !replied || len(pushes) < 2 {
		m := c.read()
		switch {
		case m.ID == id && m.Error == nil:
			replied = true
		case m.Push == protocol.PushSubscribe && (m.Channel == generalChannel || m.Channel == onlineChannel):
			pushes[m.Channel] = m
		case m.Push == protocol.PushPub:
			// recovered messages follow their subscribe push; the online
			// list may change meanwhile: kept for the test to read
			later = append(later, m)
		default:
			t.Fatalf("connecting: unexpected %+v", m)
		}
	}
	c.queued = later
	return c, pushes
}

// send sends a command with fields merged in and returns its id.
func (c *client) send(cmd string, fields map[string]any) uint64 {
	c.t.Helper()
	c.nextID++
	m := map[string]any{"id": c.nextID, "cmd": cmd}
	for k, v := range fields {
		m[k] = v
	}
	b, _ := json.Marshal(m)
	if err := c.ws.WriteMessage(websocket.TextMessage, b); err != nil {
		c.t.Fatalf("write: %v", err)
	}
	return c.nextID
}

func (c *client) read() frame {
	c.t.Helper()
	if len(c.queued) > 0 {
		m := c.queued[0]
		c.queued = c.queued[1:]
		return m
	}
	_ = c.ws.SetReadDeadline(time.Now().Add(5 * time.Second))
	op, b, err := c.ws.ReadMessage()
	if err != nil {
		c.t.Fatalf("read: %v", err)
	}
	var m frame
	if err := json.Unmarshal(b, &m); op != websocket.TextMessage || err != nil {
		c.t.Fatalf("want a JSON text message, got opcode %d %q (%v)", op, b, err)
	}
	return m
}

// reply sends a command and returns its reply, skipping pushes.
func (c *client) reply(cmd string, fields map[string]any) frame {
	c.t.Helper()
	id := c.send(cmd, fields)
	for {
		if m := c.read(); m.ID == id {
			return m
		}
	}
}

// pub waits for a publication on channel, skipping everything else.
func (c *client) pub(channel string) json.RawMessage {
	c.t.Helper()
	for {
		if m := c.read(); m.Push == protocol.PushPub && m.Channel == channel {
			return m.Data
		}
	}
}

// onlineUntil reads online lists until one is want.
func (c *client) onlineUntil(want ...string) {
	c.t.Helper()
	for {
		var l onlineList
		if err := json.Unmarshal(c.pub(onlineChannel), &l); err != nil {
			c.t.Fatal(err)
		}
		if slices.Equal(l.Users, want) {
			return
		}
	}
}

func TestLogin(t *testing.T) {
	t.Parallel()
	s := start(t, time.Second)
	for _, c := range []struct{ contentType, body string }{
		{"text/plain", `{"name":"alice"}`}, // what another site's form can send
		{"application/json", `{"name":""}`},
		{"application/json", `{"name":"a,b"}`},
		{"application/json", `{"name":"` + strings.Repeat("a", 25) + `"}`},
		{"application/json", `not json`},
	} {
		if resp := s.post(t, "/login", c.contentType, c.body, nil); resp.StatusCode < 400 {
			t.Errorf("login %s %s: %d, want refused", c.contentType, c.body, resp.StatusCode)
		}
	}
	if code, name := s.me(t, nil); code != http.StatusOK || name != "" {
		t.Errorf("/me without a cookie: %d %q, want 200 nobody", code, name)
	}
	cookie := s.login(t, "alice")
	if code, name := s.me(t, cookie); code != http.StatusOK || name != "alice" {
		t.Errorf("/me: %d %q, want 200 alice", code, name)
	}
	if resp := s.post(t, "/logout", "", "", cookie); resp.StatusCode != http.StatusNoContent {
		t.Errorf("logout: %d", resp.StatusCode)
	}
	if code, name := s.me(t, cookie); code != http.StatusOK || name != "" {
		t.Errorf("/me after logout: %d %q, want 200 nobody", code, name)
	}
}

func TestConnectNeedsSession(t *testing.T) {
	t.Parallel()
	s := start(t, time.Second)
	for name, cookie := range map[string]*http.Cookie{
		"no cookie":       nil,
		"unknown session": {Name: sessionCookie, Value: "forged"},
	} {
		t.Run(name, func(t *testing.T) {
			c, _, err := s.dial(t, cookie, "")
			if err != nil {
				t.Fatalf("dial: %v", err)
			}
			if m := c.reply("connect", nil); m.Error == nil || m.Error.Code != protocol.CodeUnauthorized {
				t.Fatalf("connect: %+v, want error unauthorized", m)
			}
			_ = c.ws.SetReadDeadline(time.Now().Add(5 * time.Second))
			_, _, err = c.ws.ReadMessage()
			if !websocket.IsCloseError(err, int(protocol.CloseUnauthorized)) {
				t.Fatalf("want close 4501, got %v", err)
			}
		})
	}
	// The origin check is on: another site cannot ride the cookie.
	cookie := s.login(t, "alice")
	_, resp, err := s.dial(t, cookie, "http://evil.example")
	if err == nil || resp == nil || resp.StatusCode != http.StatusForbidden {
		t.Fatalf("dial from another origin: %v, %v; want 403", resp, err)
	}
}

func TestPublish(t *testing.T) {
	t.Parallel()
	s := start(t, time.Second)
	alice := s.connect(t, s.login(t, "alice"))
	bob := s.connect(t, s.login(t, "bob"))

	for _, data := range []any{
		map[string]string{"text": "  "},
		map[string]string{"text": strings.Repeat("é", maxText+1)},
		"just a string",
	} {
		m := alice.reply("publish", map[string]any{"channel": generalChannel, "data": data})
		if m.Error == nil || m.Error.Code != "bad_message" {
			t.Errorf("publish %v: %+v, want error bad_message", data, m)
		}
	}
	// The online list is the backend's alone.
	if m := alice.reply("publish", map[string]any{"channel": onlineChannel, "data": map[string]any{"users": []string{"mallory"}}}); m.Error == nil {
		t.Errorf("publish to %s: %+v, want refused", onlineChannel, m)
	}

	// The page cannot say who wrote: the stored form replaces what it sent.
	longest := strings.Repeat("é", maxText)
	for _, text := range []string{" hi bob ", longest} {
		if m := alice.reply("publish", map[string]any{"channel": generalChannel, "data": map[string]string{"text": text, "user": "mallory"}}); m.Error != nil {
			t.Fatalf("publish: %+v", m.Error)
		}
	}
	for i, want := range []message{{ID: 1, Text: "hi bob"}, {ID: 2, Text: longest}} {
		var got message
		if err := json.Unmarshal(bob.pub(generalChannel), &got); err != nil {
			t.Fatal(err)
		}
		if got.ID != want.ID || got.User != "alice" || got.Text != want.Text || time.Since(got.At) > time.Minute {
			t.Errorf("publication %d: %+v, want id %d by alice, %q, now", i, got, want.ID, want.Text)
		}
	}
}

// TestReconnect: a page that reconnects names its position in the room
// (connect's subs, as @heraldhq/client does) and gets what it missed from the
// room's history, though it may not subscribe by itself.
func TestReconnect(t *testing.T) {
	t.Parallel()
	s := start(t, time.Second)
	aliceCookie := s.login(t, "alice")
	alice, pushes := s.connectWith(t, aliceCookie, nil)
	bob := s.connect(t, s.login(t, "bob"))
	pos := pushes[generalChannel]
	if pos.Epoch == "" {
		t.Fatalf("subscribe push %+v: want a position (the room keeps history)", pos)
	}
	alice.ws.Close()
	for _, text := range []string{"missed 1", "missed 2"} {
		if m := bob.reply("publish", map[string]any{"channel": generalChannel, "data": map[string]string{"text": text}}); m.Error != nil {
			t.Fatalf("publish: %+v", m.Error)
		}
	}
	subs := map[string]any{generalChannel: map[string]any{"offset": pos.Offset, "epoch": pos.Epoch}}
	alice, pushes = s.connectWith(t, aliceCookie, map[string]any{"subs": subs})
	if p := pushes[generalChannel]; p.Recovered == nil || !*p.Recovered {
		t.Fatalf("subscribe push after reconnect %+v: want recovered", p)
	}
	for _, want := range []string{"missed 1", "missed 2"} {
		var got message
		if err := json.Unmarshal(alice.pub(generalChannel), &got); err != nil || got.Text != want {
			t.Fatalf("recovered %+v (%v), want %q", got, err, want)
		}
	}
}

func TestRPC(t *testing.T) {
	t.Parallel()
	s := start(t, time.Second)
	alice := s.connect(t, s.login(t, "alice"))
	for i := 1; i <= 25; i++ {
		if m := alice.reply("publish", map[string]any{"channel": generalChannel, "data": map[string]string{"text": fmt.Sprint(i)}}); m.Error != nil {
			t.Fatalf("publish %d: %+v", i, m.Error)
		}
	}
	call := func(data any) (ids []int64, more bool) {
		t.Helper()
		m := alice.reply("rpc", map[string]any{"method": "messages.before", "data": data})
		if m.Error != nil {
			t.Fatalf("rpc %v: %+v", data, m.Error)
		}
		var res struct {
			Data struct {
				Messages []message
				More     bool
			}
		}
		if err := json.Unmarshal(m.Result, &res); err != nil {
			t.Fatalf("rpc result %s: %v", m.Result, err)
		}
		for _, msg := range res.Data.Messages {
			if msg.Text != fmt.Sprint(msg.ID) || msg.User != "alice" {
				t.Errorf("message %+v: want text %d by alice", msg, msg.ID)
			}
			ids = append(ids, msg.ID)
		}
		return ids, res.Data.More
	}
	seq := func(from, to int64) (s []int64) {
		for i := from; i <= to; i++ {
			s = append(s, i)
		}
		return s
	}
	for _, c := range []struct {
		data any
		ids  []int64
		more bool
	}{
		{nil, seq(6, 25), true},
		{map[string]int{"before": 6}, seq(1, 5), false},
		{map[string]int{"before": 20, "limit": 3}, seq(17, 19), true},
		{map[string]int{"limit": 500}, seq(1, 25), false}, // capped at 50
		{map[string]int{"before": 1}, nil, false},
	} {
		ids, more := call(c.data)
		if !slices.Equal(ids, c.ids) || more != c.more {
			t.Errorf("messages.before %v: %v more=%v, want %v more=%v", c.data, ids, more, c.ids, c.more)
		}
	}

	for _, c := range []struct {
		method string
		data   any
		code   protocol.Code
	}{
		{"messages.delete", nil, "unknown_method"},
		{"messages.before", map[string]any{"before": "yesterday"}, protocol.CodeBadRequest},
		{"messages.before", map[string]any{"limit": -1}, protocol.CodeBadRequest},
	} {
		m := alice.reply("rpc", map[string]any{"method": c.method, "data": c.data})
		if m.Error == nil || m.Error.Code != c.code {
			t.Errorf("rpc %s %v: %+v, want error %s", c.method, c.data, m, c.code)
		}
	}
}

// TestOnline: the webhooks tell the app each user's first connection and,
// the grace after, their last one gone, once each, however many tabs; the
// app publishes the list, and answers users.online.
func TestOnline(t *testing.T) {
	t.Parallel()
	const grace = 300 * time.Millisecond
	s := start(t, grace)
	bob := s.connect(t, s.login(t, "bob"))
	bob.onlineUntil("bob")

	aliceCookie := s.login(t, "alice")
	tab1 := s.connect(t, aliceCookie)
	tab2 := s.connect(t, aliceCookie)
	bob.onlineUntil("alice", "bob")
	m := tab2.reply("rpc", map[string]any{"method": "users.online"})
	var res struct{ Data onlineList }
	if err := json.Unmarshal(m.Result, &res); err != nil || !slices.Equal(res.Data.Users, []string{"alice", "bob"}) {
		t.Errorf("users.online: %s (%v), want alice and bob", m.Result, err)
	}

	// One tab closing, and the other closing within the grace, is no
	// change; the last one gone is, after the grace.
	tab1.ws.Close()
	time.Sleep(grace / 3)
	tab2.ws.Close()
	closed := time.Now()
	bob.onlineUntil("bob")
	if d := time.Since(closed); d < grace*2/3 {
		t.Errorf("alice went offline %v after her last tab closed; the grace is %v", d, grace)
	}
	// Let any duplicate delivery arrive before counting.
	time.Sleep(grace)
	if on, off := s.count(herald.EventUserOnline, "alice"), s.count(herald.EventUserOffline, "alice"); on != 1 || off != 1 {
		t.Errorf("alice: %d user.online, %d user.offline events; want 1 of each", on, off)
	}
}

// TestDeliverTwice: an event delivered again (webhooks are at least once)
// changes nothing.
func TestDeliverTwice(t *testing.T) {
	t.Parallel()
	var o online
	o.users, o.seen = map[string]bool{}, map[string]bool{}
	on := herald.Event{ID: "1", Kind: herald.EventUserOnline, User: "alice"}
	off := herald.Event{ID: "2", Kind: herald.EventUserOffline, User: "alice"}
	if !o.apply([]herald.Event{on}) {
		t.Fatal("the first user.online changed nothing")
	}
	o.published(o.list().Version)
	if o.apply([]herald.Event{on}) {
		t.Error("user.online delivered again changed the list")
	}
	o.apply([]herald.Event{off, on}) // on redelivered after off: alice stays offline
	if l := o.list(); len(l.Users) != 0 || l.Version != 2 {
		t.Errorf("list %+v, want nobody at version 2", l)
	}
}

func TestPage(t *testing.T) {
	t.Parallel()
	s := start(t, time.Second)
	get := func(path string) (*http.Response, []byte) {
		resp, err := s.http.Get("http://" + s.addr + path)
		if err != nil {
			t.Fatal(err)
		}
		defer resp.Body.Close()
		b, _ := io.ReadAll(resp.Body)
		return resp, b
	}
	resp, page := get("/")
	if resp.StatusCode != http.StatusOK || !bytes.Contains(page, []byte(`src="app.js"`)) {
		t.Fatalf("/: %d %.80q", resp.StatusCode, page)
	}
	if csp := resp.Header.Get("Content-Security-Policy"); !strings.Contains(csp, "script-src 'self'") {
		t.Errorf("/: Content-Security-Policy %q", csp)
	}
	// The page's client is clients/js itself (package jsclient), not a copy.
	resp, js := get("/herald-client.js")
	if resp.StatusCode != http.StatusOK || !bytes.Equal(js, jsclient.Source()) {
		t.Errorf("/herald-client.js: %d, %d bytes; want jsclient.Source()", resp.StatusCode, len(js))
	}
	if _, app := get("/app.js"); !bytes.Contains(app, []byte(`from './herald-client.js'`)) {
		t.Error("app.js does not import ./herald-client.js")
	}
}
