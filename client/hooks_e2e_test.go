package client_test

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"log/slog"
	"slices"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/heraldhq/herald"
	"github.com/heraldhq/herald/client"
	"github.com/heraldhq/herald/protocol"
)

// End to end against a real node with hooks: the client's side of RPC,
// connect data and server-side subscriptions.

func TestRPCHook(t *testing.T) {
	t.Parallel()
	var seen atomic.Pointer[herald.RPCEvent]
	ts := newServer(t, herald.Config{Namespaces: namespaces, Logger: testLogger(t), Hooks: herald.Hooks{
		RPC: func(_ context.Context, e *herald.RPCEvent) (*herald.RPCReply, error) {
			seen.Store(e)
			switch e.Method {
			case "messages.older":
				return &herald.RPCReply{Data: json.RawMessage(`{"messages":[1,2]}`)}, nil
			case "void":
				return nil, nil
			case "refuse":
				return nil, herald.Refuse("quota_exceeded", "too many calls")
			}
			return nil, errors.New("the backend is down")
		},
	}})
	c := connect(t, ts.url, client.Options{})
	got, err := c.RPC(ctxT(t), "messages.older", map[string]int{"before": 42})
	if err != nil || string(got) != `{"messages":[1,2]}` {
		t.Fatalf("RPC = %s, %v", got, err)
	}
	if e := seen.Load(); e.Method != "messages.older" || string(e.Data) != `{"before":42}` || e.Client.ID != c.ID() {
		t.Errorf("the hook saw method %q data %s client %q, want messages.older {\"before\":42} %q", e.Method, e.Data, e.Client.ID, c.ID())
	}
	if got, err := c.RPC(ctxT(t), "void", nil); err != nil || got != nil {
		t.Errorf("RPC(void) = %q, %v; want nil, nil", got, err)
	}
	if e := seen.Load(); e.Data != nil {
		t.Errorf("the hook saw data %s for a call without, want nil", e.Data)
	}
	var herr *client.Error
	if _, err := c.RPC(ctxT(t), "refuse", nil); !errors.As(err, &herr) || herr.Code != "quota_exceeded" || herr.Message != "too many calls" {
		t.Errorf("RPC(refuse) = %v, want the app's code quota_exceeded", err)
	}
	if _, err := c.RPC(ctxT(t), "fail", nil); !isCodeErr(err, protocol.CodeUnavailable) {
		t.Errorf("RPC(fail) = %v, want unavailable", err)
	}
	if c.State() != client.StateConnected {
		t.Errorf("state %s after refusals, want connected", c.State())
	}

	plain := newServer(t, herald.Config{Namespaces: namespaces})
	pc := connect(t, plain.url, client.Options{})
	if _, err := pc.RPC(ctxT(t), "messages.older", nil); !isCodeErr(err, protocol.CodeNotEnabled) {
		t.Errorf("RPC without a hook = %v, want not_enabled", err)
	}
}

// The connect data reaches the Connect hook on every connect, its answer
// reaches the app, and its refusal stops the client.
func TestConnectHookData(t *testing.T) {
	t.Parallel()
	var (
		mu   sync.Mutex
		seen []string
	)
	ts := newServer(t, herald.Config{Namespaces: namespaces, Hooks: herald.Hooks{
		Connect: func(_ context.Context, e *herald.ConnectEvent) (*herald.ConnectReply, error) {
			mu.Lock()
			seen = append(seen, string(e.Data))
			n := len(seen)
			mu.Unlock()
			if string(e.Data) == `{"device":"banned"}` {
				return nil, herald.Refuse("device_banned", "go away")
			}
			return &herald.ConnectReply{UserID: "ada", Data: json.RawMessage(fmt.Sprintf(`{"n":%d}`, n))}, nil
		},
	}})
	var states recorder
	var device atomic.Value
	device.Store(`{"device":"d1"}`)
	c := connect(t, ts.url, client.Options{
		OnState:        states.onState,
		GetConnectData: func(context.Context) (json.RawMessage, error) { return json.RawMessage(device.Load().(string)), nil },
	})
	if got := string(c.ConnectReplyData()); got != `{"n":1}` {
		t.Errorf("ConnectReplyData = %s, want {\"n\":1}", got)
	}
	device.Store(`{"device":"d2"}`)
	first := c.ID()
	if err := ts.node().Disconnect(ctxT(t), first, herald.CloseDisconnected, "again"); err != nil {
		t.Fatal(err)
	}
	waitFor(t, "the reconnect", func() bool { return c.ID() != first && c.State() == client.StateConnected })
	if got := string(c.ConnectReplyData()); got != `{"n":2}` {
		t.Errorf("ConnectReplyData after the reconnect = %s, want {\"n\":2}", got)
	}
	waitFor(t, "two StateConnected", func() bool {
		var data []string
		for _, s := range states.stateList() {
			if s.State == client.StateConnected {
				data = append(data, string(s.Data))
			}
		}
		return slices.Equal(data, []string{`{"n":1}`, `{"n":2}`})
	})

	device.Store(`{"device":"banned"}`)
	if err := ts.node().Disconnect(ctxT(t), c.ID(), herald.CloseDisconnected, "again"); err != nil {
		t.Fatal(err)
	}
	<-c.Done()
	if code, ok := client.CloseCodeOf(c.Err()); !isCodeErr(c.Err(), "device_banned") || !ok || code != protocol.CloseForbidden {
		t.Errorf("Err() = %v, want device_banned and close 4500", c.Err())
	}
	mu.Lock()
	defer mu.Unlock()
	if want := []string{`{"device":"d1"}`, `{"device":"d2"}`, `{"device":"banned"}`}; !slices.Equal(seen, want) {
		t.Errorf("the hook saw %q, want %q", seen, want)
	}
}

// grantServer is a node whose Connect hook makes user ada and subscribes
// her to the channels in grant: of namespaces, or of "vip", whose
// channels keep history and take no subscription from clients.
func grantServer(t *testing.T, grant *atomic.Value) *testServer {
	ns := append(slices.Clone(namespaces), herald.Namespace{Name: "vip", HistorySize: 100, HistoryTTL: time.Minute, AllowSubscribe: herald.PermNobody})
	return newServer(t, herald.Config{Namespaces: ns, Logger: testLogger(t), Hooks: herald.Hooks{
		Connect: func(context.Context, *herald.ConnectEvent) (*herald.ConnectReply, error) {
			return &herald.ConnectReply{UserID: "ada", Channels: grant.Load().([]string)}, nil
		},
	}})
}

// Server-side subscriptions from the Connect hook: announced, delivered,
// and across a reconnect restored from their position (the publications
// made meanwhile recovered once, in order) without a subscribe command.
// One no longer granted is restored if the client may subscribe to it by
// itself (extra), and ends with not_restored if not (vip:extra).
func TestServerSubscriptionRestored(t *testing.T) {
	t.Parallel()
	var grant atomic.Value
	grant.Store([]string{"news", "extra", "vip:extra"})
	ts := grantServer(t, &grant)
	var (
		rec   serverSubs
		logs  logCapture
		dials dialRecorder
		pubs  recorder
	)
	c := connect(t, ts.url, client.Options{Logger: slog.New(&logs), Dialer: dials.dialer(),
		OnServerSubscribe: func(sub *client.Subscription) client.SubscribeOptions {
			h := rec.onServerSubscribe(sub)
			if sub.Channel() == "news" {
				h.OnPublication = pubs.sub().OnPublication
			}
			return h
		}})
	waitFor(t, "three announcements", func() bool { return len(rec.list()) == 3 })
	if got := rec.list(); !slices.Contains(got, "sub news") || !slices.Contains(got, "sub extra") || !slices.Contains(got, "sub vip:extra") {
		t.Fatalf("announcements %q, want news, extra and vip:extra", got)
	}
	news := rec.sub("news")
	if !news.ServerSide() {
		t.Error("ServerSide() = false for a subscription of the Connect hook")
	}
	node := ts.node()
	nodePublish(t, node, "news", 1, 3)
	waitFor(t, "3 publications", func() bool { return pubs.numPubs() == 3 })

	dials.hold()
	grant.Store([]string{"news"})
	first := c.ID()
	if err := node.Disconnect(ctxT(t), first, herald.CloseDisconnected, "test"); err != nil {
		t.Fatal(err)
	}
	waitFor(t, "the disconnect", func() bool { return c.State() != client.StateConnected })
	nodePublish(t, node, "news", 4, 8)
	dials.release()
	waitFor(t, "8 publications", func() bool { return pubs.numPubs() == 8 })
	checkOffsets(t, pubs.publications(), 8)
	waitFor(t, "not_restored", func() bool { return slices.Contains(rec.list(), "unsub vip:extra "+protocol.UnsubNotRestored) })
	if p := news.Position(); p.Offset != 8 {
		t.Errorf("news at %+v, want offset 8", p)
	}
	nodePublish(t, node, "news", 9, 9)
	waitFor(t, "publication 9", func() bool { return pubs.numPubs() == 9 })
	checkOffsets(t, pubs.publications(), 9)
	if n := countPrefix(rec.list(), "failed "); n != 0 {
		t.Errorf("recovery failures in %q, want none", rec.list())
	}
	if n := countPrefix(rec.list(), "sub "); n != 3 {
		t.Errorf("%d announcements in %q, want 3: a restored subscription is not announced again", n, rec.list())
	}
	if n := countPrefix(rec.list(), "unsub "); n != 1 {
		t.Errorf("unsubs in %q, want only vip:extra's", rec.list())
	}
	if got := logs.ints("connected", "resubscribing"); !slices.Equal(got, []int64{0, 0}) {
		t.Errorf("resubscribing %v at the connects, want [0 0]", got)
	}
	if got := logs.ints("connected", "restoring"); !slices.Equal(got, []int64{0, 3}) {
		t.Errorf("restoring %v at the connects, want [0 3]", got)
	}
	if n, m := subscribers(node, "extra"), subscribers(node, "vip:extra"); n != 1 || m != 0 {
		t.Errorf("extra has %d subscribers, vip:extra %d; want 1 and 0", n, m)
	}
	if !rec.sub("extra").ServerSide() || rec.sub("extra").Position().Epoch == "" {
		t.Errorf("extra after the reconnect: server side %v at %+v", rec.sub("extra").ServerSide(), rec.sub("extra").Position())
	}
}

func countPrefix(list []string, prefix string) int {
	n := 0
	for _, s := range list {
		if len(s) >= len(prefix) && s[:len(prefix)] == prefix {
			n++
		}
	}
	return n
}

// Node.SubscribeUser makes a server-side subscription on a live client;
// UnsubscribeUser ends it, and the client does not make it again after a
// reconnect.
func TestSubscribeUserThenUnsubscribe(t *testing.T) {
	t.Parallel()
	var grant atomic.Value
	grant.Store([]string(nil))
	ts := grantServer(t, &grant)
	var rec serverSubs
	c := connect(t, ts.url, client.Options{OnServerSubscribe: rec.onServerSubscribe})
	node := ts.node()
	if err := node.SubscribeUser(ctxT(t), "ada", "alerts"); err != nil {
		t.Fatal(err)
	}
	rec.waitEvents(t, "sub alerts")
	nodePublish(t, node, "alerts", 1, 2)
	rec.waitEvents(t, "sub alerts", `pub alerts 1 {"n":1}`, `pub alerts 2 {"n":2}`)
	if p := rec.sub("alerts").Position(); p.Offset != 2 || p.Epoch == "" {
		t.Errorf("alerts at %+v, want offset 2 with an epoch", p)
	}
	if err := node.UnsubscribeUser(ctxT(t), "ada", "alerts"); err != nil {
		t.Fatal(err)
	}
	rec.waitEvents(t, "sub alerts", `pub alerts 1 {"n":1}`, `pub alerts 2 {"n":2}`, "unsub alerts "+protocol.UnsubServer)

	first := c.ID()
	if err := node.Disconnect(ctxT(t), first, herald.CloseDisconnected, "test"); err != nil {
		t.Fatal(err)
	}
	waitFor(t, "the reconnect", func() bool { return c.ID() != first && c.State() == client.StateConnected })
	nodePublish(t, node, "alerts", 3, 3)
	if err := c.Ping(ctxT(t)); err != nil {
		t.Fatal(err)
	}
	if n := subscribers(node, "alerts"); n != 0 {
		t.Errorf("alerts has %d subscribers after the reconnect, want 0", n)
	}
	if got := rec.list(); len(got) != 4 {
		t.Errorf("events after the reconnect: %q", got[4:])
	}
	// The channel is free for a subscription of the client's own.
	if _, err := c.Subscribe(ctxT(t), "alerts", client.SubscribeOptions{}); err != nil {
		t.Errorf("Subscribe after the server ended it: %v", err)
	}
}

// A restored server-side subscription that cannot recover tells the app
// why: the restarted server's history has a new epoch (news). A channel
// that keeps no history (live:ticker) has nothing to recover, and is
// taken up silently, as the client's own subscriptions are. The position
// is the server's new one.
func TestServerSubscriptionRecoveryFailed(t *testing.T) {
	t.Parallel()
	cfg := herald.Config{Namespaces: namespaces, Hooks: herald.Hooks{
		Connect: func(context.Context, *herald.ConnectEvent) (*herald.ConnectReply, error) {
			return &herald.ConnectReply{UserID: "ada", Channels: []string{"news", "live:ticker"}}, nil
		},
	}}
	ts := newServer(t, cfg)
	old := ts.node()
	var rec serverSubs
	connect(t, ts.url, client.Options{OnServerSubscribe: rec.onServerSubscribe})
	waitFor(t, "two announcements", func() bool { return len(rec.list()) == 2 })
	nodePublish(t, old, "news", 1, 1)
	waitFor(t, "publication 1", func() bool { return len(rec.list()) == 3 })
	oldEpoch := rec.sub("news").Position().Epoch

	fresh := ts.startNode(cfg)
	shutdown(t, old) // closes the client with 1001: it reconnects, to fresh
	waitFor(t, "the recovery failure", func() bool { return countPrefix(rec.list(), "failed ") == 1 })
	got := rec.list()
	if !slices.Contains(got, "failed news "+protocol.ReasonEpochChanged) {
		t.Fatalf("events %q, want news epoch_changed only", got)
	}
	if p := rec.sub("news").Position(); p.Epoch == oldEpoch || p.Epoch == "" || p.Offset != 0 {
		t.Errorf("news after the failure at %+v, want the new epoch at offset 0 (old %q)", p, oldEpoch)
	}
	nodePublish(t, fresh, "news", 1, 1)
	waitFor(t, "the new publication", func() bool { return slices.Contains(rec.list()[len(got):], `pub news 1 {"n":1}`) })
	if n := countPrefix(rec.list(), "sub "); n != 2 {
		t.Errorf("announcements in %q, want 2", rec.list())
	}
	if n := countPrefix(rec.list(), "failed "); n != 1 {
		t.Errorf("recovery failures in %q, want news's alone", rec.list())
	}
}

// The app may unsubscribe a server-side subscription: the server drops it,
// and it is not named in the next connect (the hook grants none here).
func TestUnsubscribeServerSide(t *testing.T) {
	t.Parallel()
	var grant atomic.Value
	grant.Store([]string(nil))
	ts := grantServer(t, &grant)
	var (
		rec  serverSubs
		logs logCapture
	)
	c := connect(t, ts.url, client.Options{OnServerSubscribe: rec.onServerSubscribe, Logger: slog.New(&logs)})
	if err := ts.node().SubscribeClient(ctxT(t), c.ID(), "vip:alerts"); err != nil {
		t.Fatal(err)
	}
	rec.waitEvents(t, "sub vip:alerts")
	if err := rec.sub("vip:alerts").Unsubscribe(ctxT(t)); err != nil {
		t.Fatal(err)
	}
	if n := subscribers(ts.node(), "vip:alerts"); n != 0 {
		t.Fatalf("vip:alerts has %d subscribers after Unsubscribe, want 0", n)
	}
	first := c.ID()
	if err := ts.node().Disconnect(ctxT(t), first, herald.CloseDisconnected, "test"); err != nil {
		t.Fatal(err)
	}
	waitFor(t, "the reconnect", func() bool { return c.ID() != first && c.State() == client.StateConnected })
	if got := logs.ints("connected", "restoring"); !slices.Equal(got, []int64{0, 0}) {
		t.Errorf("restoring %v at the connects, want [0 0]", got)
	}
	if got := rec.list(); len(got) != 1 {
		t.Errorf("events %q, want the announcement only (no OnUnsubscribed after Unsubscribe)", got)
	}
}
