package herald

import (
	"context"
	"encoding/json"
	"net/http"
	"testing"
	"time"

	"github.com/heraldhq/herald/protocol"
)

type subPush struct {
	Push      string `json:"push"`
	Channel   string `json:"channel"`
	Offset    uint64 `json:"offset"`
	Epoch     string `json:"epoch"`
	Recovered *bool  `json:"recovered"`
	Reason    string `json:"reason"`
	Code      string `json:"code"`
	Data      json.RawMessage
}

func (c *testClient) readPush() subPush {
	c.t.Helper()
	_, b := c.read()
	var p subPush
	if err := json.Unmarshal(b, &p); err != nil || p.Push == "" {
		c.t.Fatalf("want a push, got %s", b)
	}
	return p
}

// The connect hook's channels are subscribed server-side: a subscribe
// push, then the channel's publications. A reconnecting client names them
// with its position in subs, and gets what it missed; one the hook no
// longer grants and the client may not take by itself is not restored.
func TestServerSideSubscriptionsAcrossReconnect(t *testing.T) {
	t.Parallel()
	grant := []string{"h:feed", "locked:alerts"}
	ts := newTestServer(t, Config{Namespaces: hookNamespaces, Hooks: Hooks{
		Connect: func(ctx context.Context, e *ConnectEvent) (*ConnectReply, error) {
			return &ConnectReply{UserID: "ann", Channels: grant}, nil
		},
	}})
	ctx := context.Background()
	publish := func(ch, data string) {
		t.Helper()
		if _, err := ts.node.Publish(ctx, ch, []byte(data)); err != nil {
			t.Fatal(err)
		}
	}
	publish("h:feed", `"before"`)

	c := ts.client(t)
	c.mustOK(protocol.Command{Cmd: "connect"})
	pos := map[string]protocol.Position{}
	for range grant {
		p := c.readPush()
		if p.Push != protocol.PushSubscribe {
			t.Fatalf("want subscribe pushes, got %+v", p)
		}
		pos[p.Channel] = protocol.Position{Offset: p.Offset, Epoch: p.Epoch}
	}
	if pos["h:feed"].Offset != 1 || pos["h:feed"].Epoch == "" {
		t.Fatalf("positions %+v", pos)
	}
	// The client may not subscribe to locked:* itself, but holds it.
	publish("locked:alerts", `"alert"`)
	if p := c.readPush(); p.Push != "pub" || p.Channel != "locked:alerts" {
		t.Fatalf("%+v", p)
	}
	c.ws.Close()

	publish("h:feed", `"missed 1"`)
	publish("h:feed", `"missed 2"`)
	grant = []string{"h:feed"} // the app no longer grants locked:alerts
	c2 := ts.client(t)
	c2.mustOK(protocol.Command{Cmd: "connect", Subs: pos})
	p := c2.readPush()
	if p.Push != protocol.PushSubscribe || p.Channel != "h:feed" || p.Recovered == nil || !*p.Recovered || p.Offset != 3 {
		t.Fatalf("resubscribe push %+v", p)
	}
	for _, want := range []string{`"missed 1"`, `"missed 2"`} {
		var m anyMsg
		if m = c2.readJSON(); m.Push != "pub" || string(m.Data) != want {
			t.Fatalf("recovered %+v, want %s", m, want)
		}
	}
	if p := c2.readPush(); p.Push != protocol.PushUnsub || p.Channel != "locked:alerts" || p.Code != protocol.UnsubNotRestored {
		t.Fatalf("locked:alerts: %+v", p)
	}
	publish("h:feed", `"live"`)
	if m := c2.readJSON(); string(m.Data) != `"live"` {
		t.Fatalf("%+v", m)
	}
}

// SubscribeUser reaches every connection of the user and no one else's;
// UnsubscribeClient takes one connection's away.
func TestSubscribeUserAndUnsubscribeClient(t *testing.T) {
	t.Parallel()
	ts := newTestServer(t, Config{Namespaces: hookNamespaces, Hooks: Hooks{Connect: cookieConnect}})
	ctx := context.Background()
	connect := func(user string) (*testClient, string) {
		c := ts.dial(t, "/ws", sessionHeader(user))
		var res protocol.ConnectResult
		if m := c.call(protocol.Command{Cmd: "connect"}); m.Error != nil || json.Unmarshal(m.Result, &res) != nil {
			t.Fatalf("%+v", m)
		}
		return c, res.Client
	}
	ann1, ann1ID := connect("ann")
	ann2, _ := connect("ann")
	bob, _ := connect("bob")
	raw := ts.dial(t, "/ws/raw?channel=h:other", sessionHeader("ann"))
	_ = raw

	if err := ts.node.SubscribeUser(ctx, "ann", "locked:team"); err != nil {
		t.Fatal(err)
	}
	for _, c := range []*testClient{ann1, ann2} {
		if p := c.readPush(); p.Push != protocol.PushSubscribe || p.Channel != "locked:team" {
			t.Fatalf("%+v", p)
		}
	}
	// Asking again changes nothing.
	if err := ts.node.SubscribeUser(ctx, "ann", "locked:team"); err != nil {
		t.Fatal(err)
	}
	waitFor(t, "two subscribers", func() bool { return ts.node.Stats().Channels["locked:team"] == 2 })
	if err := ts.node.UnsubscribeClient(ctx, ann1ID, "locked:team"); err != nil {
		t.Fatal(err)
	}
	if p := ann1.readPush(); p.Push != protocol.PushUnsub || p.Code != protocol.UnsubServer {
		t.Fatalf("%+v", p)
	}
	if _, err := ts.node.Publish(ctx, "locked:team", []byte(`"standup"`)); err != nil {
		t.Fatal(err)
	}
	if m := ann2.readJSON(); string(m.Data) != `"standup"` {
		t.Fatalf("%+v", m)
	}
	// Neither ann1 (unsubscribed) nor bob got it: the next thing each
	// reads is the reply to a ping.
	for _, c := range []*testClient{ann1, bob} {
		c.mustOK(protocol.Command{Cmd: "ping"})
	}
	for _, bad := range []error{
		ts.node.SubscribeUser(ctx, "", "x"),
		ts.node.SubscribeClient(ctx, "c1", "bad channel!"),
		ts.node.UnsubscribeClient(ctx, "c1", ""),
	} {
		var e *Error
		if !errorsAs(bad, &e) {
			t.Errorf("want an *Error, got %v", bad)
		}
	}
}

// A connection that has not passed the connect hook yet is not in: the
// server subscribes it to nothing (it could be one the hook refuses).
func TestServerSideWaitsForConnect(t *testing.T) {
	t.Parallel()
	ts := newTestServer(t, Config{
		Authenticate: func(r *http.Request) (Credentials, error) { return Credentials{UserID: "mallory"}, nil },
		Hooks: Hooks{Connect: func(context.Context, *ConnectEvent) (*ConnectReply, error) {
			return nil, Refuse("banned", "go away")
		}},
	})
	c := ts.client(t)
	waitFor(t, "the connection", func() bool { return ts.node.Stats().Connections == 1 })
	if err := ts.node.SubscribeUser(context.Background(), "mallory", "secret"); err != nil {
		t.Fatal(err)
	}
	time.Sleep(100 * time.Millisecond) // the control message's round trip
	if _, err := ts.node.Publish(context.Background(), "secret", []byte(`"psst"`)); err != nil {
		t.Fatal(err)
	}
	if m := c.call(protocol.Command{Cmd: "ping"}); m.Error != nil {
		t.Fatalf("the first thing the client reads must be its ping's reply: %+v", m)
	}
	if ts.node.Stats().Channels["secret"] != 0 {
		t.Fatal("subscribed before connect")
	}
}
