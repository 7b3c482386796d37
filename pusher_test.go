package herald

import (
	"context"
	"encoding/json"
	"errors"
	"io"
	"net"
	"runtime"
	"strconv"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"github.com/gorilla/websocket"

	"github.com/heraldhq/herald/protocol"
)

var testApp = PusherApp{ID: "123", Key: "app-key", Secret: "app-secret", ClientEvents: true}

// pusherClient is a Pusher protocol client on a real WebSocket (gorilla).
type pusherClient struct {
	t        testing.TB
	ws       *websocket.Conn
	socketID string
}

type pusherFrame struct {
	Event   string          `json:"event"`
	Channel string          `json:"channel"`
	Data    json.RawMessage `json:"data"`
	UserID  string          `json:"user_id"`
	Offset  uint64          `json:"offset"`
	Epoch   string          `json:"epoch"`
}

// str is the frame's data as Pusher sends it, a JSON string.
func (f pusherFrame) str(t testing.TB) string {
	t.Helper()
	var s string
	if err := json.Unmarshal(f.Data, &s); err != nil {
		t.Fatalf("%s: data is not a string: %s", f.Event, f.Data)
	}
	return s
}

func (ts *testServer) pusherDial(t testing.TB, path string) *pusherClient {
	t.Helper()
	d := websocket.Dialer{HandshakeTimeout: 5 * time.Second}
	ws, _, err := d.Dial(ts.url+path, nil)
	if err != nil {
		t.Fatalf("dial %s: %v", path, err)
	}
	t.Cleanup(func() { ws.Close() })
	return &pusherClient{t: t, ws: ws}
}

// pusher connects to testApp and reads connection_established.
func (ts *testServer) pusher(t testing.TB) *pusherClient {
	t.Helper()
	c := ts.pusherDial(t, "/app/"+testApp.Key+"?protocol=7&client=go&version=1")
	f := c.read()
	if f.Event != "pusher:connection_established" {
		t.Fatalf("want connection_established, got %+v", f)
	}
	var d struct {
		SocketID        string `json:"socket_id"`
		ActivityTimeout int    `json:"activity_timeout"`
	}
	if err := json.Unmarshal([]byte(f.str(t)), &d); err != nil || !validSocketID(d.SocketID) || d.ActivityTimeout != 120 {
		t.Fatalf("bad connection_established %s (%v)", f.Data, err)
	}
	c.socketID = d.SocketID
	return c
}

func (c *pusherClient) send(event, channel string, data any) {
	c.t.Helper()
	m := map[string]any{"event": event, "data": data}
	if channel != "" {
		m["channel"] = channel
	}
	b, _ := json.Marshal(m)
	if err := c.ws.WriteMessage(websocket.TextMessage, b); err != nil {
		c.t.Fatalf("write: %v", err)
	}
}

func (c *pusherClient) read() pusherFrame {
	c.t.Helper()
	_ = c.ws.SetReadDeadline(time.Now().Add(5 * time.Second))
	_, b, err := c.ws.ReadMessage()
	if err != nil {
		c.t.Fatalf("read: %v", err)
	}
	var f pusherFrame
	if err := json.Unmarshal(b, &f); err != nil {
		c.t.Fatalf("bad JSON %q: %v", b, err)
	}
	return f
}

// expect reads frames until one of event comes (skipping others).
func (c *pusherClient) expect(event string) pusherFrame {
	c.t.Helper()
	for {
		if f := c.read(); f.Event == event {
			return f
		}
	}
}

// quiet checks that nothing but what skip allows arrives before a
// pusher:pong: the server answers in order, so what was sent before the
// ping has arrived by then.
func (c *pusherClient) quiet() {
	c.t.Helper()
	c.send("pusher:ping", "", map[string]any{})
	if f := c.read(); f.Event != "pusher:pong" {
		c.t.Fatalf("want nothing before the pong, got %+v", f)
	}
}

func (c *pusherClient) subscribe(channel, channelData string) pusherFrame {
	c.t.Helper()
	d := map[string]any{"channel": channel}
	switch pusherKind(channel) {
	case pusherPrivate, pusherPresence, pusherPrivateCache, pusherPresenceCache:
		d["auth"] = PusherChannelAuth(testApp, c.socketID, channel, channelData)
		if channelData != "" {
			d["channel_data"] = channelData
		}
	}
	c.send("pusher:subscribe", "", d)
	return c.expect("pusher_internal:subscription_succeeded")
}

func (c *pusherClient) expectClose() *websocket.CloseError {
	c.t.Helper()
	_ = c.ws.SetReadDeadline(time.Now().Add(10 * time.Second))
	for {
		if _, _, err := c.ws.ReadMessage(); err != nil {
			var ce *websocket.CloseError
			if !errors.As(err, &ce) {
				c.t.Fatalf("want a close frame, got %v", err)
			}
			return ce
		}
	}
}

func pusherServer(t *testing.T, apps ...PusherApp) *testServer {
	if len(apps) == 0 {
		apps = []PusherApp{testApp}
	}
	return newTestServer(t, Config{PusherApps: apps})
}

func TestPusherMapping(t *testing.T) {
	t.Parallel()
	for _, tc := range []struct{ pusher, herald string }{
		{"orders", "pusher-123:orders"},
		{"private-orders", "pusher-123.private:private-orders"},
		{"private-encrypted-x", "pusher-123.private:private-encrypted-x"},
		{"presence-room", "pusher-123.presence:presence-room"},
		{"cache-x", "pusher-123.cache:cache-x"},
		{"private-cache-x", "pusher-123.private-cache:private-cache-x"},
		{"private-encrypted-cache-x", "pusher-123.private-cache:private-encrypted-cache-x"},
		{"presence-cache-x", "pusher-123.presence-cache:presence-cache-x"},
		{"#server-to-user-alice", "pusher-123.user:#alice"},
		{"a;b=c@d,e.f_g-h", "pusher-123:a!b=c@d,e.f_g-h"},
		{"bad:name", ""},
		{"bad name", ""},
		{"", ""},
		{strings.Repeat("x", 165), ""},
		{"#server-to-user-", ""},
		{"#server-to-user-a,b", ""},
	} {
		got := testApp.HeraldChannel(tc.pusher)
		if got != tc.herald {
			t.Errorf("HeraldChannel(%q) = %q, want %q", tc.pusher, got, tc.herald)
			continue
		}
		if got == "" {
			continue
		}
		if !protocol.ValidChannel(got) {
			t.Errorf("HeraldChannel(%q) = %q: not a valid Herald channel", tc.pusher, got)
		}
		if back, ok := testApp.PusherChannel(got); !ok || back != tc.pusher {
			t.Errorf("PusherChannel(%q) = %q, %v; want %q", got, back, ok, tc.pusher)
		}
		if back := pusherNameOf(got); back != tc.pusher {
			t.Errorf("pusherNameOf(%q) = %q, want %q", got, back, tc.pusher)
		}
	}
	other := PusherApp{ID: "1234", Key: "k", Secret: "s"}
	for _, ch := range []string{"pusher-123:x", "pusher-123.private:x", "chat:x", "pusher-1234:orders"} {
		if back, ok := testApp.PusherChannel(ch); ok && other.HeraldChannel(back) == ch {
			t.Errorf("PusherChannel(%q) = %q: another app's channel", ch, back)
		}
	}
	if _, ok := testApp.PusherChannel("pusher-1234:orders"); ok {
		t.Error("app 123 claims app 1234's channel")
	}
}

func TestPusherSignatures(t *testing.T) {
	t.Parallel()
	// Pusher's documented example (pusher.com/docs/channels/library_auth_reference/auth-signatures).
	app := PusherApp{ID: "1", Key: "278d425bdf160c739803", Secret: "7ad3773142a6692b25b8"}
	want := "278d425bdf160c739803:58df8b0c36d6982b82c3ecf6b4662e34fe8c25bba48f5369f135bf843651c3a4"
	if got := PusherChannelAuth(app, "1234.1234", "private-foobar", ""); got != want {
		t.Fatalf("PusherChannelAuth = %s, want %s", got, want)
	}
	if !checkPusherAuth(&app, want, "1234.1234:private-foobar") {
		t.Fatal("a valid signature refused")
	}
	for _, bad := range []string{
		"", want[:len(want)-1], "wrongkey" + want[strings.IndexByte(want, ':'):], strings.Replace(want, ":58", ":59", 1),
		want + "00", "278d425bdf160c739803:zz", "278d425bdf160c739803",
	} {
		if checkPusherAuth(&app, bad, "1234.1234:private-foobar") {
			t.Errorf("signature %q accepted", bad)
		}
	}
	if checkPusherAuth(&app, want, "1234.1235:private-foobar") {
		t.Error("a signature for another socket accepted")
	}
	for id, ok := range map[string]bool{"1.2": true, "123456.7890": true, "1": false, "a.b": false, "1.": false, ".1": false, "1.2.3": false} {
		if validSocketID(id) != ok {
			t.Errorf("validSocketID(%q) = %v", id, !ok)
		}
	}
	for range 100 {
		if id := newSocketID(); !validSocketID(id) {
			t.Fatalf("newSocketID() = %q", id)
		}
	}
}

func TestPusherAppsConfig(t *testing.T) {
	t.Parallel()
	for name, apps := range map[string][]PusherApp{
		"no secret":      {{ID: "1", Key: "k"}},
		"bad id":         {{ID: "a:b", Key: "k", Secret: "s"}},
		"same id":        {{ID: "1", Key: "k", Secret: "s"}, {ID: "1", Key: "k2", Secret: "s"}},
		"same key":       {{ID: "1", Key: "k", Secret: "s"}, {ID: "2", Key: "k", Secret: "s"}},
		"same namespace": {{ID: "1", Key: "k", Secret: "s", Namespace: "x"}, {ID: "2", Key: "k2", Secret: "s", Namespace: "x"}},
		"bad namespace":  {{ID: "1", Key: "k", Secret: "s", Namespace: "a:b"}},
	} {
		if _, err := New(Config{PusherApps: apps}); err == nil {
			t.Errorf("%s: New accepted %+v", name, apps)
		}
	}
}

// An app's MaxConnections follows the one rule for limits: NoLimit (any
// negative value) is no cap, as zero is.
func TestPusherMaxConnectionsNoLimit(t *testing.T) {
	t.Parallel()
	ts := pusherServer(t, PusherApp{ID: "1", Key: "one", Secret: "s", MaxConnections: NoLimit})
	for i := range 3 {
		if f := ts.pusherDial(t, "/app/one?protocol=7").read(); f.Event != "pusher:connection_established" {
			t.Fatalf("connection %d: got %+v", i+1, f)
		}
	}
}

func TestPusherConnectRefusals(t *testing.T) {
	t.Parallel()
	ts := pusherServer(t, PusherApp{ID: "1", Key: "one", Secret: "s", MaxConnections: 1})
	for _, tc := range []struct {
		path string
		code CloseCode
	}{
		{"/app/nokey?protocol=7", PusherAppNotFound},
		{"/app/one?protocol=6", PusherBadProtocol},
		{"/app/?protocol=7", PusherPathNotFound},
		{"/app/" + strings.Repeat("%C3%A9", 100) + "?protocol=7", PusherAppNotFound}, // a long key, not ASCII
	} {
		c := ts.pusherDial(t, tc.path)
		f := c.read()
		var d struct {
			Code int `json:"code"`
		}
		if f.Event != "pusher:error" || json.Unmarshal(f.Data, &d) != nil || d.Code != int(tc.code) {
			t.Errorf("%s: want pusher:error %d, got %+v", tc.path, tc.code, f)
		}
		if ce := c.expectClose(); ce.Code != int(tc.code) {
			t.Errorf("%s: close %d, want %d", tc.path, ce.Code, tc.code)
		}
	}
	first := ts.pusherDial(t, "/app/one?protocol=7")
	if f := first.read(); f.Event != "pusher:connection_established" {
		t.Fatalf("got %+v", f)
	}
	over := ts.pusherDial(t, "/app/one?protocol=7")
	if f := over.read(); f.Event != "pusher:error" {
		t.Fatalf("over quota: got %+v", f)
	}
	if ce := over.expectClose(); ce.Code != int(PusherOverQuota) {
		t.Fatalf("over quota: close %d", ce.Code)
	}
	first.ws.Close()
	waitFor(t, "the quota freed", func() bool { return ts.node.pusherConns.of("1").Load() == 0 })
	again := ts.pusherDial(t, "/app/one?protocol=7")
	if f := again.read(); f.Event != "pusher:connection_established" {
		t.Fatalf("after a close: got %+v", f)
	}
}

func TestPusherPublicAndTrigger(t *testing.T) {
	t.Parallel()
	ts := pusherServer(t)
	a, b := ts.pusher(t), ts.pusher(t)
	a.send("pusher:ping", "", map[string]any{})
	if f := a.read(); f.Event != "pusher:pong" {
		t.Fatalf("ping: got %+v", f)
	}
	a.subscribe("orders", "")
	b.subscribe("orders", "")
	h := ts.client(t)
	h.subscribe("pusher-123:orders")

	ctx := context.Background()
	if err := ts.node.PusherTrigger(ctx, testApp, []string{"orders"}, "new-order", `{"id":1}`, ""); err != nil {
		t.Fatal(err)
	}
	for _, c := range []*pusherClient{a, b} {
		f := c.expect("new-order")
		if f.Channel != "orders" || f.str(t) != `{"id":1}` {
			t.Fatalf("got %+v", f)
		}
	}
	m := h.readJSON()
	if e, ok := DecodePusherEvent(m.Data); m.Push != "pub" || !ok || e.Event != "new-order" || e.Data != `{"id":1}` {
		t.Fatalf("herald client got %+v", m)
	}
	// Excluding a socket: a does not get it, b does.
	if err := ts.node.PusherTrigger(ctx, testApp, []string{"orders"}, "second", "x", a.socketID); err != nil {
		t.Fatal(err)
	}
	if f := b.expect("second"); f.str(t) != "x" {
		t.Fatalf("got %+v", f)
	}
	a.quiet()
	// Herald's own publish reaches Pusher clients.
	if _, err := ts.node.Publish(ctx, "pusher-123:orders", []byte(`{"from":"herald"}`)); err != nil {
		t.Fatal(err)
	}
	if f := a.expect(PusherEventPublication); f.str(t) != `{"from":"herald"}` || f.Channel != "orders" {
		t.Fatalf("got %+v", f)
	}
	// Bad input to the Go API.
	if err := ts.node.PusherTrigger(ctx, testApp, []string{"bad:name"}, "e", "", ""); !errors.Is(err, ErrPusherChannel) {
		t.Fatalf("bad channel: %v", err)
	}
	if err := ts.node.PusherTrigger(ctx, testApp, []string{"orders"}, "e", "", "abc"); !errors.Is(err, ErrPusherSocketID) {
		t.Fatalf("bad socket id: %v", err)
	}
	// Unsubscribed, nothing more comes.
	a.send("pusher:unsubscribe", "", map[string]string{"channel": "orders"})
	a.quiet()
	if err := ts.node.PusherTrigger(ctx, testApp, []string{"orders"}, "third", "", ""); err != nil {
		t.Fatal(err)
	}
	b.expect("third")
	a.quiet()
}

func TestPusherPrivateAuth(t *testing.T) {
	t.Parallel()
	ts := pusherServer(t)
	c := ts.pusher(t)
	c.subscribe("private-x", "")
	// Refused: another socket's signature, a wrong key, none.
	for _, auth := range []string{
		PusherChannelAuth(testApp, "1.2", "private-y", ""),
		"other:" + PusherSign(testApp.Secret, c.socketID+":private-y"),
		"",
	} {
		c.send("pusher:subscribe", "", map[string]string{"channel": "private-y", "auth": auth})
		f := c.expect("pusher:subscription_error")
		var d struct {
			Type   string `json:"type"`
			Status int    `json:"status"`
		}
		if f.Channel != "private-y" || json.Unmarshal(f.Data, &d) != nil || d.Type != "AuthError" || d.Status != 401 {
			t.Fatalf("auth %q: got %+v", auth, f)
		}
	}
	if subscribed(ts.node.hub.conn(c.socketID), "pusher-123.private:private-y") {
		t.Fatal("subscribed without a valid signature")
	}
	// A Herald client without a grant may not read a private channel.
	h := ts.client(t)
	if m := h.call(protocol.Command{Cmd: "subscribe", Channel: "pusher-123.private:private-x"}); m.Error == nil {
		t.Fatal("a herald client without a grant subscribed to a private pusher channel")
	}
	// A user channel needs the sign-in.
	c.send("pusher:subscribe", "", map[string]string{"channel": "#server-to-user-bob"})
	if f := c.expect("pusher:subscription_error"); f.Channel != "#server-to-user-bob" {
		t.Fatalf("got %+v", f)
	}
}

func TestPusherPresenceAndClientEvents(t *testing.T) {
	t.Parallel()
	ts := pusherServer(t)
	a, b := ts.pusher(t), ts.pusher(t)
	f := a.subscribe("presence-room", `{"user_id":"alice","user_info":{"name":"Alice"}}`)
	var d struct {
		Presence struct {
			IDs   []string                   `json:"ids"`
			Hash  map[string]json.RawMessage `json:"hash"`
			Count int                        `json:"count"`
		} `json:"presence"`
	}
	if err := json.Unmarshal([]byte(f.str(t)), &d); err != nil || d.Presence.Count != 1 || d.Presence.IDs[0] != "alice" || string(d.Presence.Hash["alice"]) != `{"name":"Alice"}` {
		t.Fatalf("subscription_succeeded %s (%v)", f.Data, err)
	}
	f = b.subscribe("presence-room", `{"user_id":7,"user_info":null}`)
	if err := json.Unmarshal([]byte(f.str(t)), &d); err != nil || d.Presence.Count != 2 {
		t.Fatalf("second member: %s", f.Data)
	}
	added := a.expect("pusher_internal:member_added")
	if added.Channel != "presence-room" || added.str(t) != `{"user_id":"7","user_info":null}` {
		t.Fatalf("member_added %+v", added)
	}
	// A client event reaches the other member with the sender's user_id,
	// and not the sender.
	b.send("client-typing", "presence-room", map[string]any{"on": true})
	ev := a.expect("client-typing")
	if ev.UserID != "7" || ev.str(t) != `{"on":true}` {
		t.Fatalf("client event %+v", ev)
	}
	b.quiet()
	// Refused: public channel, a channel not subscribed.
	b.send("client-x", "orders", "x")
	if f := b.expect("pusher:error"); !strings.Contains(string(f.Data), "private and presence") {
		t.Fatalf("got %+v", f)
	}
	b.send("client-x", "private-nope", "x")
	if f := b.expect("pusher:error"); !strings.Contains(string(f.Data), "not subscribed") {
		t.Fatalf("got %+v", f)
	}
	// The member leaves: member_removed.
	b.ws.Close()
	removed := a.expect("pusher_internal:member_removed")
	if removed.str(t) != `{"user_id":"7"}` {
		t.Fatalf("member_removed %+v", removed)
	}
	// Bad channel_data.
	a.send("pusher:subscribe", "", map[string]any{"channel": "presence-x", "channel_data": `{"name":1}`,
		"auth": PusherChannelAuth(testApp, a.socketID, "presence-x", `{"name":1}`)})
	if f := a.expect("pusher:subscription_error"); f.Channel != "presence-x" {
		t.Fatalf("got %+v", f)
	}
}

func TestPusherClientEventsOff(t *testing.T) {
	t.Parallel()
	app := testApp
	app.ClientEvents = false
	ts := pusherServer(t, app)
	c := ts.pusher(t)
	c.subscribe("private-x", "")
	c.send("client-x", "private-x", "hi")
	if f := c.expect("pusher:error"); !strings.Contains(string(f.Data), "enable client events") {
		t.Fatalf("got %+v", f)
	}
}

func TestPusherCacheChannels(t *testing.T) {
	t.Parallel()
	ts := pusherServer(t)
	c := ts.pusher(t)
	c.subscribe("cache-x", "")
	if f := c.read(); f.Event != "pusher:cache_miss" || f.Channel != "cache-x" {
		t.Fatalf("want cache_miss, got %+v", f)
	}
	ctx := context.Background()
	for _, v := range []string{"1", "2"} {
		if err := ts.node.PusherTrigger(ctx, testApp, []string{"cache-x"}, "price", v, ""); err != nil {
			t.Fatal(err)
		}
	}
	c.expect("price")
	c.expect("price")
	d := ts.pusher(t)
	d.subscribe("cache-x", "")
	if f := d.read(); f.Event != "price" || f.str(t) != "2" || f.Offset != 2 {
		t.Fatalf("want the last event, got %+v", f)
	}
	d.quiet()
}

func TestPusherRecovery(t *testing.T) {
	t.Parallel()
	app := testApp
	app.HistorySize = 100
	ts := pusherServer(t, app)
	ctx := context.Background()
	c := ts.pusher(t)
	f := c.subscribe("orders", "")
	if f.Epoch == "" {
		t.Fatalf("no position in %+v", f)
	}
	if err := ts.node.PusherTrigger(ctx, app, []string{"orders"}, "e", "1", ""); err != nil {
		t.Fatal(err)
	}
	last := c.expect("e")
	c.ws.Close()
	for _, v := range []string{"2", "3"} {
		if err := ts.node.PusherTrigger(ctx, app, []string{"orders"}, "e", v, ""); err != nil {
			t.Fatal(err)
		}
	}
	c = ts.pusher(t)
	c.send("pusher:subscribe", "", map[string]any{"channel": "orders", "herald_since": map[string]any{"offset": last.Offset, "epoch": f.Epoch}})
	c.expect("pusher_internal:subscription_succeeded")
	for _, v := range []string{"2", "3"} {
		if g := c.read(); g.Event != "e" || g.str(t) != v {
			t.Fatalf("want recovered %s, got %+v", v, g)
		}
	}
	// An unknown epoch: told so.
	c.send("pusher:unsubscribe", "", map[string]string{"channel": "orders"})
	c.send("pusher:subscribe", "", map[string]any{"channel": "orders", "herald_since": map[string]any{"offset": 1, "epoch": "nope"}})
	c.expect("pusher_internal:subscription_succeeded")
	if g := c.read(); g.Event != "herald:unrecovered" {
		t.Fatalf("want herald:unrecovered, got %+v", g)
	}
}

func TestPusherSigninAndUserEvents(t *testing.T) {
	t.Parallel()
	ts := pusherServer(t)
	c := ts.pusher(t)
	ud := `{"id":"alice","name":"Alice"}`
	c.send("pusher:signin", "", map[string]string{"auth": PusherUserAuth(testApp, c.socketID, ud), "user_data": ud})
	f := c.expect("pusher:signin_success")
	var d struct {
		UserData string `json:"user_data"`
	}
	if json.Unmarshal([]byte(f.str(t)), &d) != nil || d.UserData != ud {
		t.Fatalf("signin_success %+v", f)
	}
	c.subscribe("#server-to-user-alice", "")
	if err := ts.node.PusherSendToUser(context.Background(), testApp, "alice", "hello", "hi"); err != nil {
		t.Fatal(err)
	}
	if f := c.expect("hello"); f.Channel != "#server-to-user-alice" || f.str(t) != "hi" {
		t.Fatalf("got %+v", f)
	}
	// Terminating the user's connections: 4009, no reconnect.
	if err := ts.node.DisconnectUser(context.Background(), "alice", CloseDisconnected, "terminated"); err != nil {
		t.Fatal(err)
	}
	if ce := c.expectClose(); ce.Code != int(PusherUnauthorized) {
		t.Fatalf("close %d", ce.Code)
	}
	// A bad signature: pusher:error 4009 and the close.
	b := ts.pusher(t)
	b.send("pusher:signin", "", map[string]string{"auth": PusherUserAuth(testApp, "1.1", ud), "user_data": ud})
	b.expect("pusher:error")
	if ce := b.expectClose(); ce.Code != int(PusherUnauthorized) {
		t.Fatalf("close %d", ce.Code)
	}
}

func TestPusherCloseCodes(t *testing.T) {
	t.Parallel()
	ts := pusherServer(t)
	c := ts.pusher(t)
	if err := ts.node.Disconnect(context.Background(), c.socketID, CloseResubscribe, "resubscribe"); err != nil {
		t.Fatal(err)
	}
	if ce := c.expectClose(); ce.Code != int(PusherReconnect) {
		t.Fatalf("close %d, want %d", ce.Code, PusherReconnect)
	}
	for herald, pusher := range map[CloseCode]CloseCode{
		CloseSlowConsumer: PusherOverCapacity, CloseNoPong: PusherPongNotReceived, CloseGoingAway: PusherReconnect,
		CloseServiceRestart: PusherReconnect, CloseRateLimited: PusherOverCapacity, CloseUnauthorized: PusherUnauthorized,
	} {
		if got := pusherCloseCode(herald); got != pusher {
			t.Errorf("pusherCloseCode(%d) = %d, want %d", herald, got, pusher)
		}
	}
	// Garbage gets pusher:error and harms nothing.
	d := ts.pusher(t)
	_ = d.ws.WriteMessage(websocket.TextMessage, []byte("not json"))
	if f := d.read(); f.Event != "pusher:error" {
		t.Fatalf("got %+v", f)
	}
	d.quiet()
}

func TestPusherAppsIsolated(t *testing.T) {
	t.Parallel()
	other := PusherApp{ID: "456", Key: "other-key", Secret: "other-secret"}
	ts := pusherServer(t, testApp, other)
	a := ts.pusher(t)
	a.subscribe("orders", "")
	if err := ts.node.PusherTrigger(context.Background(), other, []string{"orders"}, "e", "", ""); err != nil {
		t.Fatal(err)
	}
	a.quiet()
	if _, ok := ts.node.PusherAppByKey("other-key"); !ok {
		t.Fatal("PusherAppByKey")
	}
	if app, ch, ok := ts.node.PusherChannelOf("pusher-456.presence:presence-x"); !ok || app.ID != "456" || ch != "presence-x" {
		t.Fatalf("PusherChannelOf: %v %q %v", app.ID, ch, ok)
	}
}

// TestPusherMembersPerUser: a user with two connections is one member, as
// in Pusher: the second joins without member_added, the first leaving
// sends no member_removed, the last does.
func TestPusherMembersPerUser(t *testing.T) {
	t.Parallel()
	ts := pusherServer(t)
	watcher, tab1, tab2 := ts.pusher(t), ts.pusher(t), ts.pusher(t)
	watcher.subscribe("presence-room", `{"user_id":"w"}`)
	tab1.subscribe("presence-room", `{"user_id":"u"}`)
	if f := watcher.expect("pusher_internal:member_added"); f.str(t) != `{"user_id":"u","user_info":null}` {
		t.Fatalf("got %+v", f)
	}
	f := tab2.subscribe("presence-room", `{"user_id":"u"}`)
	if !strings.Contains(f.str(t), `"count":2`) {
		t.Fatalf("two users, one of them twice: %s", f.Data)
	}
	watcher.quiet() // no member_added for the second tab
	tab1.ws.Close()
	waitFor(t, "tab 1 gone", func() bool { return ts.node.hub.conn(tab1.socketID) == nil })
	watcher.quiet() // no member_removed while tab 2 is in
	tab2.ws.Close()
	if f := watcher.expect("pusher_internal:member_removed"); f.str(t) != `{"user_id":"u"}` {
		t.Fatalf("got %+v", f)
	}
}

func TestSetPusherApps(t *testing.T) {
	t.Parallel()
	ts := newTestServer(t, Config{Namespaces: []Namespace{{Name: "chat"}}})
	dial := func(key string) pusherFrame {
		c := ts.pusherDial(t, "/app/"+key+"?protocol=7")
		return c.read()
	}
	if f := dial(testApp.Key); f.Event != "pusher:error" {
		t.Fatalf("no apps yet: got %+v", f)
	}
	if err := ts.node.SetPusherApps([]PusherApp{{ID: "x"}}); err == nil {
		t.Fatal("an invalid app accepted")
	}
	if err := ts.node.SetPusherApps([]PusherApp{testApp}); err != nil {
		t.Fatal(err)
	}
	if f := dial(testApp.Key); f.Event != "pusher:connection_established" {
		t.Fatalf("after SetPusherApps: got %+v", f)
	}
	// The node's own namespaces stay, and survive a SetNamespaces with the apps'.
	if err := ts.node.CheckChannel("chat:x"); err != nil {
		t.Fatal(err)
	}
	if err := ts.node.SetNamespaces([]Namespace{{Name: "room"}}); err != nil {
		t.Fatal(err)
	}
	for ch, ok := range map[string]bool{"room:x": true, "chat:x": false, testApp.HeraldChannel("presence-a"): true} {
		if err := ts.node.CheckChannel(ch); (err == nil) != ok {
			t.Errorf("CheckChannel(%q) = %v", ch, err)
		}
	}
	if err := ts.node.SetPusherApps(nil); err != nil {
		t.Fatal(err)
	}
	if err := ts.node.CheckChannel(testApp.HeraldChannel("orders")); err == nil {
		t.Error("a removed app's channel is still accepted")
	}
}

// BenchmarkBroadcastPusher is BenchmarkBroadcast's fan-out of one
// 128-byte payload to 1,000 subscribers on loopback WebSockets, through
// Herald's protocol and through the Pusher endpoint (a PusherTrigger to
// pusher clients) side by side, paced (each publication reaches every
// socket before the next) and unpaced. Compare deliveries/s and
// allocs/delivery within one run: the figures are ratios, not absolutes.
//
//	go test -run '^$' -bench BroadcastPusher -benchtime 500x .
func BenchmarkBroadcastPusher(b *testing.B) {
	for _, proto := range []string{"herald", "pusher"} {
		for _, paced := range []bool{false, true} {
			name := "proto=" + proto
			if paced {
				name += "/paced"
			}
			b.Run(name, func(b *testing.B) { benchFanout(b, proto == "pusher", paced, 1000) })
		}
	}
}

func benchFanout(b *testing.B, pusher, paced bool, subs int) {
	ts := newTestServer(b, Config{Logger: nopLogger(), MaxQueueMessages: 1 << 20, MaxQueueBytes: 1 << 30, PingInterval: time.Hour,
		Limits: Limits{ConnectRatePerIP: -1}, PusherApps: []PusherApp{testApp}})
	var got atomic.Int64
	for range subs {
		var nc net.Conn
		if pusher {
			c := ts.pusher(b)
			c.subscribe("bench", "")
			nc = c.ws.NetConn()
		} else {
			c := ts.client(b)
			c.subscribe("bench")
			nc = c.ws.NetConn()
		}
		_ = nc.SetReadDeadline(time.Time{})
		go func() { _, _ = io.Copy(countingReader{&got}, nc) }()
	}
	text := strings.Repeat("p", 126)
	payload := []byte(`"` + text + `"`)
	frameLen := int64(len(ts.node.encode(protocol.PushPub, "bench", 0, payload, false, formProtocol)))
	if pusher {
		pub := &Publication{Channel: testApp.HeraldChannel("bench"), Data: PusherEvent{Event: "ev", Data: text}.Encode()}
		frameLen = int64(len(ts.node.encodePub(pub, formPusher)))
	}
	ctx := context.Background()
	publish := func() error {
		if pusher {
			return ts.node.PusherTrigger(ctx, testApp, []string{"bench"}, "ev", text, "")
		}
		_, err := ts.node.Publish(ctx, "bench", payload)
		return err
	}
	start := got.Load()
	b.ReportAllocs()
	var ms runtime.MemStats
	runtime.ReadMemStats(&ms)
	mallocs := ms.Mallocs
	b.ResetTimer()
	sent := int64(0)
	for b.Loop() {
		if err := publish(); err != nil {
			b.Fatal(err)
		}
		sent++
		if paced {
			waitBytes(b, &got, start+sent*int64(subs)*frameLen)
		}
	}
	want := start + int64(b.N)*int64(subs)*frameLen
	deadline := time.Now().Add(time.Minute)
	for got.Load() < want && time.Now().Before(deadline) {
		time.Sleep(100 * time.Microsecond)
	}
	b.StopTimer()
	runtime.ReadMemStats(&ms)
	b.ReportMetric(float64(ms.Mallocs-mallocs)/float64(b.N)/float64(subs), "allocs/delivery")
	if got.Load() != want {
		b.Fatalf("delivered %d of %d bytes", got.Load()-start, want-start)
	}
	b.ReportMetric(float64(b.N)*float64(subs)/b.Elapsed().Seconds(), "deliveries/s")
}

// TestPusherWebhookEvents: what Pusher's webhooks are made from reaches
// Herald's webhook delivery — channel occupied, member added (with the
// Pusher user), a client event (its envelope), a cache miss.
func TestPusherWebhookEvents(t *testing.T) {
	t.Parallel()
	b := &backend{}
	ts := newTestServer(t, Config{PusherApps: []PusherApp{testApp},
		Webhooks: Webhooks{Deliver: b.deliver, Grace: 100 * time.Millisecond}})
	a, c := ts.pusher(t), ts.pusher(t)
	a.subscribe("presence-room", `{"user_id":"ann"}`)
	c.subscribe("presence-room", `{"user_id":"cy"}`)
	ts.pusher(t).subscribe("presence-room", `{"user_id":"ann"}`) // ann's second tab: no second member
	a.send("client-hi", "presence-room", map[string]int{"n": 1})
	c.expect("client-hi")
	d := ts.pusher(t)
	d.subscribe("cache-empty", "")
	d.expect("pusher:cache_miss")
	room := testApp.HeraldChannel("presence-room")
	want := map[string]bool{
		EventChannelOccupied + " " + room:                           false,
		EventMemberAdded + " " + room + " ann":                      false,
		EventMemberAdded + " " + room + " cy":                       false,
		EventPublication + " " + room + " client-hi {\"n\":1} ann":  false,
		EventCacheMiss + " " + testApp.HeraldChannel("cache-empty"): false,
	}
	waitFor(t, "the webhook events", func() bool {
		b.mu.Lock()
		defer b.mu.Unlock()
		for _, e := range b.events {
			k := e.Kind + " " + e.Channel
			switch e.Kind {
			case EventMemberAdded:
				k += " " + e.User
			case EventPublication:
				ev, ok := DecodePusherEvent(e.Data)
				if !ok || e.Client != a.socketID {
					continue
				}
				k += " " + ev.Event + " " + ev.Data + " " + ev.UserID
			}
			if _, ok := want[k]; ok {
				want[k] = true
			}
		}
		for _, ok := range want {
			if !ok {
				return false
			}
		}
		return true
	})
	// Events of one channel come in order: ann's second tab subscribed
	// before the client event, so its member.added would be in by now.
	b.mu.Lock()
	defer b.mu.Unlock()
	n := 0
	for _, e := range b.events {
		if e.Kind == EventMemberAdded && e.User == "ann" {
			n++
		}
	}
	if n != 1 {
		t.Fatalf("%d member.added events for ann's two connections, want 1", n)
	}
}

// TestPusherCompressed: a client that negotiates permessage-deflate reads
// the Pusher frames, compressed ones included.
func TestPusherCompressed(t *testing.T) {
	t.Parallel()
	ts := newTestServer(t, Config{PusherApps: []PusherApp{testApp}, EnableCompression: true, CompressionMinSize: 16})
	d := websocket.Dialer{HandshakeTimeout: 5 * time.Second, EnableCompression: true}
	ws, resp, err := d.Dial(ts.url+"/app/"+testApp.Key+"?protocol=7", nil)
	if err != nil {
		t.Fatal(err)
	}
	defer ws.Close()
	if !strings.Contains(resp.Header.Get("Sec-WebSocket-Extensions"), "permessage-deflate") {
		t.Fatal("no permessage-deflate negotiated")
	}
	c := &pusherClient{t: t, ws: ws}
	f := c.read()
	var est struct {
		SocketID string `json:"socket_id"`
	}
	_ = json.Unmarshal([]byte(f.str(t)), &est)
	c.socketID = est.SocketID
	c.subscribe("orders", "")
	big := strings.Repeat("compressible ", 100)
	if err := ts.node.PusherTrigger(context.Background(), testApp, []string{"orders"}, "big", big, ""); err != nil {
		t.Fatal(err)
	}
	if f := c.expect("big"); f.str(t) != big {
		t.Fatalf("got %d bytes", len(f.str(t)))
	}
}

func FuzzPusherChannel(f *testing.F) {
	for _, s := range []string{"orders", "private-x", "presence-cache-y;z", "#server-to-user-bob", "a!b", "x:y", "#server-to-user-#a"} {
		f.Add(s)
	}
	f.Fuzz(func(t *testing.T, s string) {
		h := testApp.HeraldChannel(s)
		if h == "" {
			return
		}
		if !protocol.ValidChannel(h) {
			t.Fatalf("HeraldChannel(%q) = %q: invalid", s, h)
		}
		if back, ok := testApp.PusherChannel(h); !ok || back != s {
			t.Fatalf("PusherChannel(HeraldChannel(%q)) = %q, %v", s, back, ok)
		}
		if _, ok := DecodePusherEvent(PusherEvent{Event: s, Data: s}.Encode()); !ok {
			t.Fatalf("envelope of %q not decoded", s)
		}
	})
}

// TestPusherTerminateUser: the app's connections of the user are closed
// with 4009; the same user on another app, and Herald clients, stay.
func TestPusherTerminateUser(t *testing.T) {
	t.Parallel()
	other := PusherApp{ID: "456", Key: "other-key", Secret: "other-secret"}
	ts := pusherServer(t, testApp, other)
	signin := func(app PusherApp) *pusherClient {
		c := ts.pusherDial(t, "/app/"+app.Key+"?protocol=7")
		var est struct {
			SocketID string `json:"socket_id"`
		}
		_ = json.Unmarshal([]byte(c.expect("pusher:connection_established").str(t)), &est)
		c.socketID = est.SocketID
		ud := `{"id":"zoe"}`
		c.send("pusher:signin", "", map[string]string{"auth": PusherUserAuth(app, c.socketID, ud), "user_data": ud})
		c.expect("pusher:signin_success")
		return c
	}
	a1, a2, b := signin(testApp), signin(testApp), signin(other)
	if err := ts.node.PusherTerminateUser(context.Background(), testApp, ""); err == nil {
		t.Fatal("an empty user accepted")
	}
	if err := ts.node.PusherTerminateUser(context.Background(), testApp, "zoe"); err != nil {
		t.Fatal(err)
	}
	for _, c := range []*pusherClient{a1, a2} {
		if ce := c.expectClose(); ce.Code != int(PusherUnauthorized) {
			t.Fatalf("close %d", ce.Code)
		}
	}
	b.quiet()
}

// TestPusherLimits: Herald's limits and counters apply to Pusher clients:
// channels per connection, the message rate (pusher:error 4301, then the
// close 4100 for a flood), the node's connection count.
func TestPusherLimits(t *testing.T) {
	t.Parallel()
	ts := newTestServer(t, Config{PusherApps: []PusherApp{testApp},
		Limits: Limits{MaxChannelsPerConnection: 1, MessageRate: 1, MessageBurst: 3}})
	c := ts.pusher(t)
	if n := ts.node.Stats().Connections; n != 1 {
		t.Fatalf("Stats().Connections = %d", n)
	}
	c.subscribe("one", "")
	c.send("pusher:subscribe", "", map[string]string{"channel": "two"})
	f := c.expect("pusher:subscription_error")
	var d struct {
		Status int `json:"status"`
	}
	if json.Unmarshal(f.Data, &d) != nil || d.Status != 429 {
		t.Fatalf("over the channel limit: %+v", f)
	}
	// Past the burst of 3 (at one a second), a message is refused with
	// 4301: send until one is (a slow machine may refill a token or two).
	var e struct {
		Code int `json:"code"`
	}
	for i := 0; ; i++ {
		if i == 10 {
			t.Fatal("10 messages past a burst of 3 and none refused")
		}
		c.send("pusher:ping", "", map[string]any{})
		if f = c.read(); f.Event == "pusher:error" {
			if json.Unmarshal(f.Data, &e) != nil || e.Code != PusherClientEventLimit {
				t.Fatalf("over the rate: %+v", f)
			}
			break
		}
	}
	for range 20 {
		c.send("pusher:ping", "", map[string]any{})
	}
	if ce := c.expectClose(); ce.Code != int(PusherOverCapacity) {
		t.Fatalf("flooding: close %d, want %d", ce.Code, PusherOverCapacity)
	}
}

// TestPusherSigninNumericID: user data with an integer id ({"id":42}, as
// PHP's json_encode writes a Laravel user's id) signs in, as a presence
// channel's numeric user_id subscribes, instead of closing the connection
// with 4009, on which pusher-js gives up for good (every channel of the
// page lost). pusher-js itself wants a string id for its user channel and
// logs an error for a number; a client that subscribes to
// #server-to-user-42 gets the user's events. An id of another kind is
// refused.
func TestPusherSigninNumericID(t *testing.T) {
	t.Parallel()
	ts := pusherServer(t)
	c := ts.pusher(t)
	ud := `{"id":42,"name":"Ann"}`
	c.send("pusher:signin", "", map[string]string{"auth": PusherUserAuth(testApp, c.socketID, ud), "user_data": ud})
	c.expect("pusher:signin_success")
	c.subscribe("#server-to-user-42", "")
	if err := ts.node.PusherSendToUser(context.Background(), testApp, "42", "hello", "hi"); err != nil {
		t.Fatal(err)
	}
	if f := c.expect("hello"); f.Channel != "#server-to-user-42" || f.str(t) != "hi" {
		t.Fatalf("got %+v", f)
	}
	for _, bad := range []string{`{"id":{"a":1}}`, `{"id":null}`, `{"id":""}`, `{"name":"no id"}`} {
		b := ts.pusher(t)
		b.send("pusher:signin", "", map[string]string{"auth": PusherUserAuth(testApp, b.socketID, bad), "user_data": bad})
		b.expect("pusher:error")
		if ce := b.expectClose(); ce.Code != int(PusherUnauthorized) {
			t.Fatalf("%s: close %d", bad, ce.Code)
		}
	}
}

// TestPusherSubscribeOverRate: a pusher:subscribe over the message rate
// gets pusher:subscription_error 429 on its channel (pusher-js emits it on
// the channel, Echo's error callback fires), not a channel-less
// pusher:error that left the subscription pending for good.
func TestPusherSubscribeOverRate(t *testing.T) {
	t.Parallel()
	ts := newTestServer(t, Config{PusherApps: []PusherApp{testApp}, Limits: Limits{MessageRate: 1, MessageBurst: 2}})
	c := ts.pusher(t)
	for i := 0; ; i++ {
		if i == 8 {
			t.Fatal("8 subscribes past a burst of 2 and none refused")
		}
		ch := "news-" + strconv.Itoa(i)
		c.send("pusher:subscribe", "", map[string]string{"channel": ch})
		f := c.read()
		if f.Event == "pusher_internal:subscription_succeeded" {
			continue
		}
		var d struct {
			Type   string `json:"type"`
			Status int    `json:"status"`
		}
		if f.Event != "pusher:subscription_error" || f.Channel != ch || json.Unmarshal(f.Data, &d) != nil || d.Status != 429 {
			t.Fatalf("subscribe %s over the rate: got %+v", ch, f)
		}
		break
	}
}

// TestPusherRecoverySkipsWhatWasNotSent: a recovery that names the
// client's previous socket (herald_socket_id, as herald-recovery.js sends
// it) leaves out what that connection was never sent: a trigger that
// excluded it (Laravel's toOthers) and its own client events. They were
// recovered, so the page got its own action back after a reconnect.
func TestPusherRecoverySkipsWhatWasNotSent(t *testing.T) {
	t.Parallel()
	app := testApp
	app.HistorySize = 100
	ts := pusherServer(t, app)
	ctx := context.Background()
	c := ts.pusher(t)
	f := c.subscribe("private-orders", "")
	if err := ts.node.PusherTrigger(ctx, app, []string{"private-orders"}, "e", "1", ""); err != nil {
		t.Fatal(err)
	}
	last := c.expect("e")
	if err := ts.node.PusherTrigger(ctx, app, []string{"private-orders"}, "e", "not-for-c", c.socketID); err != nil {
		t.Fatal(err)
	}
	c.send("client-typing", "private-orders", map[string]any{"own": true})
	c.quiet() // the client event is in before the close
	old := c.socketID
	c.ws.Close()
	if err := ts.node.PusherTrigger(ctx, app, []string{"private-orders"}, "e", "2", ""); err != nil {
		t.Fatal(err)
	}
	c = ts.pusher(t)
	c.send("pusher:subscribe", "", map[string]any{"channel": "private-orders",
		"auth":         PusherChannelAuth(app, c.socketID, "private-orders", ""),
		"herald_since": map[string]any{"offset": last.Offset, "epoch": f.Epoch}, "herald_socket_id": old})
	c.expect("pusher_internal:subscription_succeeded")
	if g := c.read(); g.Event != "e" || g.str(t) != "2" {
		t.Fatalf("want only the recovered 2, got %+v", g)
	}
	c.quiet()
}
