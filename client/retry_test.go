package client_test

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"net/http"
	"slices"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/gorilla/websocket"

	"github.com/heraldhq/herald"
	"github.com/heraldhq/herald/client"
	"github.com/heraldhq/herald/protocol"
)

// rateLimited is a node that allows 5 messages a second per connection in
// bursts of 2, and closes with 4007 a client that sends at over twice that.
func rateLimited(t *testing.T, cfg herald.Config) *testServer {
	cfg.Namespaces = namespaces
	cfg.MessageRate, cfg.MessageBurst = 5, 2
	cfg.Logger = testLogger(t)
	return newServer(t, cfg)
}

// disconnects returns the StateDisconnected changes recorded.
func (r *recorder) disconnects() []client.StateChange {
	var out []client.StateChange
	for _, s := range r.stateList() {
		if s.State == client.StateDisconnected {
			out = append(out, s)
		}
	}
	return out
}

// subscribers returns how many subscribers channel has on the node.
func subscribers(n *herald.Node, channel string) int { return n.Stats().Channels[channel] }

// Ten subscribes in a row to a node that allows 5 messages a second in
// bursts of 2: some are refused with rate_limited, and the client sends
// them again, at a pace the server accepts, so that every one succeeds and
// the connection is never closed for flooding. The same holds for the ten
// resubscribes after a reconnect, a few publishes, and ten unsubscribes.
func TestRateLimitedRequestsSucceed(t *testing.T) {
	t.Parallel()
	ts := rateLimited(t, herald.Config{})
	var rec, pubs recorder
	c := connect(t, ts.url, client.Options{OnState: rec.onState})
	const n = 10
	channel := func(i int) string { return fmt.Sprintf("live:c%d", i) }
	subs := make([]*client.Subscription, n)
	for i := range n {
		sub, err := c.Subscribe(ctxT(t), channel(i), pubs.sub())
		if err != nil {
			t.Fatalf("Subscribe %d: %v", i, err)
		}
		subs[i] = sub
	}
	for i := range 3 {
		if _, err := c.Publish(ctxT(t), channel(i), []byte(`{}`)); err != nil {
			t.Fatalf("Publish %d: %v", i, err)
		}
	}
	if d := rec.disconnects(); len(d) > 0 {
		t.Fatalf("disconnected while rate limited: %+v", d)
	}
	for i := range n {
		if got := subscribers(ts.node(), channel(i)); got != 1 {
			t.Fatalf("%s has %d subscribers on the node, want 1", channel(i), got)
		}
	}

	// A reconnect resubscribes all ten, at the same pace.
	first := c.ID()
	if err := ts.node().Disconnect(ctxT(t), first, herald.CloseDisconnected, "move along"); err != nil {
		t.Fatal(err)
	}
	waitFor(t, "the ten resubscribes", func() bool {
		if c.ID() == first {
			return false
		}
		for i := range n {
			if subscribers(ts.node(), channel(i)) != 1 {
				return false
			}
		}
		return true
	})
	for i := range n {
		if err := ts.node().Send(ctxT(t), c.ID(), fmt.Appendf(nil, `%d`, i)); err != nil {
			t.Fatal(err)
		}
	}
	for _, d := range rec.disconnects() {
		if d.Code == herald.CloseRateLimited {
			t.Errorf("closed for flooding: %+v", d)
		}
	}

	for i, sub := range subs {
		if err := sub.Unsubscribe(ctxT(t)); err != nil {
			t.Fatalf("Unsubscribe %d: %v", i, err)
		}
	}
	for i := range n {
		if got := subscribers(ts.node(), channel(i)); got != 0 {
			t.Errorf("%s still has %d subscribers after Unsubscribe", channel(i), got)
		}
	}
	if d := rec.disconnects(); len(d) != 1 {
		t.Errorf("disconnects %+v, want only the one the test asked for", d)
	}
}

// readGate wraps the client's sockets: while held, data read from the
// server is kept from the client (the read returns only on release), and
// it counts the client's writes. So a test can make the client send many
// commands before it sees any reply.
type readGate struct {
	writes atomic.Int32
	mu     sync.Mutex
	gate   chan struct{} // nil: open
}

func (g *readGate) dialer() *websocket.Dialer {
	return &websocket.Dialer{HandshakeTimeout: 5 * time.Second, NetDialContext: func(ctx context.Context, network, addr string) (net.Conn, error) {
		var d net.Dialer
		nc, err := d.DialContext(ctx, network, addr)
		if err != nil {
			return nil, err
		}
		return &gatedConn{Conn: nc, g: g}, nil
	}}
}

func (g *readGate) hold() {
	g.mu.Lock()
	g.gate = make(chan struct{})
	g.mu.Unlock()
}

func (g *readGate) release() {
	g.mu.Lock()
	if g.gate != nil {
		close(g.gate)
		g.gate = nil
	}
	g.mu.Unlock()
}

type gatedConn struct {
	net.Conn
	g *readGate
}

func (c *gatedConn) Read(p []byte) (int, error) {
	n, err := c.Conn.Read(p)
	c.g.mu.Lock()
	gate := c.g.gate
	c.g.mu.Unlock()
	if gate != nil {
		<-gate
	}
	return n, err
}

func (c *gatedConn) Write(p []byte) (int, error) {
	c.g.writes.Add(1) // gorilla writes a small frame in one call
	return c.Conn.Write(p)
}

// A client that floods the server is closed with 4007, and reconnects: the
// close is not final, and its subscription comes back. (The client paces
// itself once it sees a rate_limited reply, so to flood, the test keeps the
// replies from it until twenty commands are out.)
func TestRateLimitCloseReconnects(t *testing.T) {
	t.Parallel()
	ts := rateLimited(t, herald.Config{})
	var (
		rec recorder
		g   readGate
	)
	t.Cleanup(g.release) // before the client's Close (cleanups run last first)
	c := connect(t, ts.url, client.Options{Dialer: g.dialer(), OnState: rec.onState})
	if _, err := c.Subscribe(ctxT(t), "chat", client.SubscribeOptions{}); err != nil {
		t.Fatal(err)
	}
	first := c.ID()

	// Twenty pings at once: the server answers one, refuses two with
	// rate_limited, and closes at the third refusal in the same instant.
	g.hold()
	sent := g.writes.Load()
	var wg sync.WaitGroup
	for range 20 {
		wg.Go(func() { _ = c.Ping(ctxT(t)) }) // some fail with ErrDisconnected
	}
	waitFor(t, "the twenty pings to be sent", func() bool { return g.writes.Load() >= sent+20 })
	g.release()
	wg.Wait()
	waitFor(t, "the close for flooding", func() bool {
		return slices.ContainsFunc(rec.stateList(), func(s client.StateChange) bool { return s.Code == herald.CloseRateLimited })
	})
	waitFor(t, "the reconnect and resubscribe", func() bool {
		return c.State() == client.StateConnected && c.ID() != first && subscribers(ts.node(), "chat") == 1
	})
	if err := c.Err(); err != nil {
		t.Fatalf("Err() = %v: a 4007 close must not stop the client", err)
	}
	select {
	case <-c.Done():
		t.Fatal("Done closed after a 4007 close")
	default:
	}
	if err := c.Ping(ctxT(t)); err != nil {
		t.Fatal(err)
	}
}

// The server application unsubscribes the client's user: the client gets
// the publications sent before, then OnUnsubscribed, and never resubscribes
// the channel, not even after a reconnect.
func TestServerUnsubscribe(t *testing.T) {
	t.Parallel()
	ts := newServer(t, herald.Config{Namespaces: namespaces, Logger: testLogger(t),
		Authenticate: func(*http.Request) (herald.Credentials, error) { return herald.Credentials{UserID: "ada"}, nil }})
	var (
		mu     sync.Mutex
		events []string // "pub <offset>", "unsub <code> <reason>", "msg <data>"
	)
	note := func(e string) { mu.Lock(); events = append(events, e); mu.Unlock() }
	list := func() []string { mu.Lock(); defer mu.Unlock(); return slices.Clone(events) }
	var logs logCapture
	c := connect(t, ts.url, client.Options{
		Logger:    slog.New(&logs),
		OnMessage: func(m client.Message) { note("msg " + string(m.Data)) },
	})
	if _, err := c.Subscribe(ctxT(t), "chat", client.SubscribeOptions{
		OnPublication:  func(p client.Publication) { note(fmt.Sprintf("pub %d", p.Offset)) },
		OnUnsubscribed: func(code, reason string) { note("unsub " + code + " " + reason) },
	}); err != nil {
		t.Fatal(err)
	}
	if _, err := c.Subscribe(ctxT(t), "other", client.SubscribeOptions{}); err != nil {
		t.Fatal(err)
	}
	nodePublish(t, ts.node(), "chat", 1, 3)
	if err := ts.node().UnsubscribeUser(ctxT(t), "ada", "chat"); err != nil {
		t.Fatal(err)
	}
	waitFor(t, "OnUnsubscribed", func() bool { return len(list()) == 4 })
	want := []string{"pub 1", "pub 2", "pub 3", "unsub " + protocol.UnsubServer + " unsubscribed by the server"}
	if got := list(); !slices.Equal(got, want) {
		t.Fatalf("events %q, want %q", got, want)
	}

	// Nothing more of the channel, and no resubscribe after a reconnect.
	first := c.ID()
	if err := ts.node().Disconnect(ctxT(t), first, herald.CloseDisconnected, "move along"); err != nil {
		t.Fatal(err)
	}
	waitFor(t, "the reconnect", func() bool {
		return c.ID() != first && c.State() == client.StateConnected && subscribers(ts.node(), "other") == 1
	})
	if got := logs.ints("connected", "resubscribing"); !slices.Equal(got, []int64{0, 1}) {
		t.Errorf("resubscribing %v at the connects, want [0 1]: only \"other\" after the reconnect", got)
	}
	nodePublish(t, ts.node(), "chat", 4, 4)
	if err := ts.node().Send(ctxT(t), c.ID(), []byte(`"sentinel"`)); err != nil {
		t.Fatal(err)
	}
	waitFor(t, "the sentinel", func() bool { return len(list()) == 5 })
	if got := list()[4]; got != `msg "sentinel"` {
		t.Fatalf("event %q after OnUnsubscribed, want only the sentinel", got)
	}
	if n := subscribers(ts.node(), "chat"); n != 0 {
		t.Fatalf("chat has %d subscribers after the reconnect, want 0", n)
	}
	// The channel is free: the app may subscribe again if it decides to.
	if _, err := c.Subscribe(ctxT(t), "chat", client.SubscribeOptions{}); err != nil {
		t.Fatalf("Subscribe again: %v", err)
	}
}

// ints returns the integer attribute key of the records whose message is
// msg, in order.
func (l *logCapture) ints(msg, key string) []int64 {
	l.mu.Lock()
	defer l.mu.Unlock()
	var out []int64
	for _, r := range l.recs {
		if r.Message != msg {
			continue
		}
		r.Attrs(func(a slog.Attr) bool {
			if a.Key == key {
				out = append(out, a.Value.Int64())
			}
			return true
		})
	}
	return out
}

// publishLog records the publish commands a fake server receives.
type publishLog struct {
	mu   sync.Mutex
	cmds []protocol.Command
	conn []int32 // the connection of each
}

// add records cmd and returns how many publishes came before it.
func (l *publishLog) add(n int32, cmd protocol.Command) int {
	l.mu.Lock()
	defer l.mu.Unlock()
	l.cmds = append(l.cmds, cmd)
	l.conn = append(l.conn, n)
	return len(l.cmds) - 1
}

func (l *publishLog) keys() []string {
	l.mu.Lock()
	defer l.mu.Unlock()
	var out []string
	for _, c := range l.cmds {
		out = append(out, c.IdempotencyKey)
	}
	return out
}

func fakeError(ws *websocket.Conn, id uint64, code protocol.Code) {
	_ = ws.WriteJSON(protocol.Reply{ID: id, Error: &protocol.Error{Code: code, Message: "test"}})
}

// fastRetry makes retries quick, for fake servers with no rate limit.
var fastRetry = client.Backoff{Min: 5 * time.Millisecond, Max: 20 * time.Millisecond}

// A publish answered unavailable (its outcome unknown) is sent again with
// the same idempotency key, and a duplicate answer comes back as Duplicate.
func TestPublishRetriedWithSameKey(t *testing.T) {
	t.Parallel()
	var log publishLog
	fs := newFakeServer(t, func(ws *websocket.Conn, n int32, cmd protocol.Command) {
		if answerConnect(ws, n, cmd) || cmd.Cmd != protocol.CmdPublish {
			return
		}
		switch log.add(n, cmd) {
		case 0:
			fakeError(ws, cmd.ID, protocol.CodeUnavailable)
		case 1:
			fakeError(ws, cmd.ID, protocol.CodeRateLimited)
		default:
			fakeReply(ws, cmd.ID, protocol.PublishResult{Offset: 7, Epoch: "e", Duplicate: true})
		}
	})
	c := connect(t, fs.url, client.Options{RetryBackoff: fastRetry})
	res, err := c.Publish(ctxT(t), "chat", []byte(`{"n":1}`))
	if err != nil {
		t.Fatal(err)
	}
	if res != (client.PublishResult{Offset: 7, Epoch: "e", Duplicate: true}) {
		t.Errorf("result %+v, want the first publish's, Duplicate", res)
	}
	keys := log.keys()
	if len(keys) != 3 || keys[0] == "" || keys[1] != keys[0] || keys[2] != keys[0] {
		t.Fatalf("idempotency keys %q: want three attempts with one key", keys)
	}
	// Every publish gets a key of its own.
	if _, err := c.Publish(ctxT(t), "chat", []byte(`2`)); err != nil {
		t.Fatal(err)
	}
	if keys := log.keys(); len(keys) != 4 || keys[3] == "" || keys[3] == keys[0] {
		t.Errorf("keys %q: want a fresh key for the next publish", keys)
	}
	// A caller's key is used as it is.
	if _, err := c.Publish(ctxT(t), "chat", []byte(`1`), client.WithIdempotencyKey("order-1")); err != nil {
		t.Fatal(err)
	}
	if keys := log.keys(); keys[len(keys)-1] != "order-1" {
		t.Errorf("keys %q: want the caller's", keys)
	}
}

// A publish whose connection is lost before the reply is sent again, with
// the same key, on the next connection.
func TestPublishRetriedAfterLostConnection(t *testing.T) {
	t.Parallel()
	var log publishLog
	fs := newFakeServer(t, func(ws *websocket.Conn, n int32, cmd protocol.Command) {
		if answerConnect(ws, n, cmd) || cmd.Cmd != protocol.CmdPublish {
			return
		}
		if log.add(n, cmd) == 0 {
			ws.NetConn().Close() // as if the server died after publishing
			return
		}
		fakeReply(ws, cmd.ID, protocol.PublishResult{Offset: 1, Epoch: "e", Duplicate: true})
	})
	c := connect(t, fs.url, client.Options{RetryBackoff: fastRetry})
	res, err := c.Publish(ctxT(t), "chat", []byte(`{}`))
	if err != nil {
		t.Fatal(err)
	}
	if !res.Duplicate || res.Offset != 1 {
		t.Errorf("result %+v, want the first publish's, Duplicate", res)
	}
	log.mu.Lock()
	defer log.mu.Unlock()
	if len(log.cmds) != 2 || log.cmds[0].IdempotencyKey == "" || log.cmds[1].IdempotencyKey != log.cmds[0].IdempotencyKey {
		t.Fatalf("publishes %+v: want two with one key", log.cmds)
	}
	if !slices.Equal(log.conn, []int32{1, 2}) {
		t.Errorf("publishes on connections %v, want [1 2]: the retry after the reconnect", log.conn)
	}
}

// Opting out, per call or per client: no key, and an unknown outcome is
// returned, not retried. A rate_limited refusal is still retried: nothing
// was published.
func TestPublishWithoutRetry(t *testing.T) {
	t.Parallel()
	var log publishLog
	var limited atomic.Int32
	fs := newFakeServer(t, func(ws *websocket.Conn, n int32, cmd protocol.Command) {
		if answerConnect(ws, n, cmd) || cmd.Cmd != protocol.CmdPublish {
			return
		}
		log.add(n, cmd)
		// The first "limited" publish is refused; everything else is
		// answered unavailable.
		if string(cmd.Data) == `"limited"` && limited.Add(1) == 1 {
			fakeError(ws, cmd.ID, protocol.CodeRateLimited)
			return
		}
		fakeError(ws, cmd.ID, protocol.CodeUnavailable)
	})
	check := func(name string, c *client.Client, opts ...client.PublishOption) {
		t.Helper()
		before := len(log.keys())
		_, err := c.Publish(ctxT(t), "chat", []byte(`{}`), opts...)
		var herr *client.Error
		if !errors.As(err, &herr) || herr.Code != protocol.CodeUnavailable {
			t.Errorf("%s: Publish = %v, want the unavailable error", name, err)
		}
		var perr *client.PublishError
		if errors.As(err, &perr) {
			t.Errorf("%s: a publish without a key returned a PublishError: %v", name, err)
		}
		if keys := log.keys()[before:]; !slices.Equal(keys, []string{""}) {
			t.Errorf("%s: %d publishes, the first with key %q; want one, without a key", name, len(keys), keys[0])
		}
	}
	c := connect(t, fs.url, client.Options{RetryBackoff: fastRetry})
	check("WithRetry(false)", c, client.WithRetry(false))
	off := connect(t, fs.url, client.Options{RetryBackoff: fastRetry, DisablePublishRetry: true})
	check("DisablePublishRetry", off)

	// WithRetry(true) overrides DisablePublishRetry: the publish carries a
	// key and, answered unavailable every time, fails with a PublishError
	// once RetryTimeout has passed.
	short := connect(t, fs.url, client.Options{RetryBackoff: fastRetry, DisablePublishRetry: true, RetryTimeout: 100 * time.Millisecond})
	before := len(log.keys())
	_, err := short.Publish(ctxT(t), "chat", []byte(`{}`), client.WithRetry(true))
	var perr *client.PublishError
	if !errors.As(err, &perr) || perr.IdempotencyKey == "" || perr.Attempts < 2 || !errors.Is(err, context.DeadlineExceeded) {
		t.Fatalf("Publish = %v, want a PublishError with the key, after attempts, past RetryTimeout", err)
	}
	// The last attempt was sent as the deadline passed: the fake server may
	// log it only after Publish has returned.
	waitFor(t, "every attempt at the fake server", func() bool { return len(log.keys())-before >= perr.Attempts })
	if keys := log.keys()[before:]; len(keys) != perr.Attempts || slices.ContainsFunc(keys, func(k string) bool { return k != perr.IdempotencyKey }) {
		t.Errorf("keys %q for %d attempts of key %q", keys, perr.Attempts, perr.IdempotencyKey)
	}

	// rate_limited: retried even without retries, and without a key.
	before = len(log.keys())
	_, err = c.Publish(ctxT(t), "chat", []byte(`"limited"`), client.WithRetry(false))
	if keys := log.keys()[before:]; !slices.Equal(keys, []string{"", ""}) {
		t.Errorf("keys %q, want two publishes without a key (the refused one, then the retry)", keys)
	}
	if !errors.As(err, new(*client.Error)) {
		t.Errorf("Publish = %v, want the retry's unavailable", err)
	}
}

// A resubscribe refused with rate_limited (the server did nothing) is sent
// again after a backoff, and the subscription lives on.
func TestResubscribeRetriedWhenRateLimited(t *testing.T) {
	t.Parallel()
	var (
		mu   sync.Mutex
		subs []int32 // the connection of each subscribe
	)
	fs := newFakeServer(t, func(ws *websocket.Conn, n int32, cmd protocol.Command) {
		switch {
		case answerConnect(ws, n, cmd):
		case cmd.Cmd == protocol.CmdSubscribe:
			mu.Lock()
			subs = append(subs, n)
			k := len(subs)
			mu.Unlock()
			switch k {
			case 1:
				fakeReply(ws, cmd.ID, protocol.SubscribeResult{Epoch: "e"})
			case 2:
				fakeError(ws, cmd.ID, protocol.CodeRateLimited)
			default:
				recovered := true
				fakeReply(ws, cmd.ID, protocol.SubscribeResult{Epoch: "e", Recovered: &recovered})
			}
		case cmd.Cmd == protocol.CmdPing && n == 1:
			ws.NetConn().Close() // the reconnect
		default:
			fakeReply(ws, cmd.ID, nil)
		}
	})
	var rec recorder
	c := connect(t, fs.url, client.Options{RetryBackoff: fastRetry})
	if _, err := c.Subscribe(ctxT(t), "chat", rec.sub()); err != nil {
		t.Fatal(err)
	}
	_ = c.Ping(ctxT(t)) // fails: the server drops the connection
	waitFor(t, "the retried resubscribe", func() bool {
		mu.Lock()
		defer mu.Unlock()
		return len(subs) == 3
	})
	mu.Lock()
	if !slices.Equal(subs, []int32{1, 2, 2}) {
		t.Errorf("subscribes on connections %v, want [1 2 2]", subs)
	}
	mu.Unlock()
	if err := c.Ping(ctxT(t)); err != nil { // the third reply has been handled
		t.Fatal(err)
	}
	if n := rec.get(func(r *recorder) int { return len(r.errs) + len(r.failures) }); n != 0 {
		t.Errorf("%d OnError or OnRecoveryFailed calls: the subscription should have lived on", n)
	}
	var herr *client.Error
	if _, err := c.Subscribe(ctxT(t), "chat", client.SubscribeOptions{}); !errors.As(err, &herr) || herr.Code != protocol.CodeAlreadySub {
		t.Errorf("Subscribe again = %v, want already_subscribed: the subscription is still held", err)
	}
}
