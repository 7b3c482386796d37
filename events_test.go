package herald

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"net/http"
	"slices"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/gorilla/websocket"

	"github.com/heraldhq/herald/protocol"
)

// backend collects delivered webhook events, as an app would: it can be
// told to fail, and it de-duplicates on the event id.
type backend struct {
	mu      sync.Mutex
	fail    int // fail this many calls
	calls   int
	batches [][]Event
	seen    map[string]bool
	events  []Event // de-duplicated, in arrival order
}

func (b *backend) deliver(ctx context.Context, events []Event) error {
	b.mu.Lock()
	defer b.mu.Unlock()
	b.calls++
	if b.fail > 0 {
		b.fail--
		return errors.New("HTTP 500")
	}
	b.batches = append(b.batches, events)
	if b.seen == nil {
		b.seen = map[string]bool{}
	}
	for _, e := range events {
		if !b.seen[e.ID] {
			b.seen[e.ID] = true
			b.events = append(b.events, e)
		}
	}
	return nil
}

// got returns the events so far as "kind subject" lines.
func (b *backend) got() []string {
	b.mu.Lock()
	defer b.mu.Unlock()
	var out []string
	for _, e := range b.events {
		s := e.Kind + " " + strings.TrimPrefix(strings.TrimPrefix(e.Key, "user:"), "channel:")
		if e.Client != "" && e.Kind != EventPublication {
			s += " " + e.User
		}
		if e.Data != nil {
			s += " " + string(e.Data)
		}
		out = append(out, s)
	}
	return out
}

func (b *backend) waitFor(t *testing.T, want ...string) {
	t.Helper()
	deadline := time.Now().Add(10 * time.Second)
	for {
		got := b.got()
		if slices.Equal(got, want) {
			return
		}
		if len(got) > len(want) || time.Now().After(deadline) {
			t.Fatalf("events:\n got %q\nwant %q", got, want)
		}
		time.Sleep(10 * time.Millisecond)
	}
}

// quiet checks that nothing more arrives for d.
func (b *backend) quiet(t *testing.T, d time.Duration, want ...string) {
	t.Helper()
	time.Sleep(d)
	if got := b.got(); !slices.Equal(got, want) {
		t.Fatalf("events:\n got %q\nwant %q", got, want)
	}
}

func webhookConfig(b *backend, store EventStore) Config {
	return Config{
		Authenticate: func(r *http.Request) (Credentials, error) {
			return Credentials{UserID: r.Header.Get("X-User")}, nil
		},
		Namespaces: []Namespace{
			{Name: ""},
			{Name: "room", Presence: true, ChannelEvents: true, MemberEvents: true, PublishEvents: true},
		},
		Webhooks: Webhooks{Deliver: b.deliver, Store: store, Users: true, Grace: 300 * time.Millisecond, NodeTTL: 600 * time.Millisecond},
	}
}

func as(user string) http.Header { return http.Header{"X-User": {user}} }

// Two nodes, one store: a user online on both is one online event, and
// one offline event once the last connection anywhere is gone (after the
// grace). A reload within the grace makes none.
func TestWebhookUsersOncePerCluster(t *testing.T) {
	t.Parallel()
	b := &backend{}
	store := NewMemoryEventStore()
	n1 := newTestServer(t, webhookConfig(b, store))
	n2 := newTestServer(t, webhookConfig(b, store))

	a1 := n1.dial(t, "/ws", as("ann"))
	b.waitFor(t, "user.online ann")
	a2 := n2.dial(t, "/ws", as("ann"))
	a1.ws.Close()
	b.quiet(t, time.Second, "user.online ann")

	a2.ws.Close() // a reload: back within the grace, on the other node
	time.Sleep(100 * time.Millisecond)
	a3 := n1.dial(t, "/ws", as("ann"))
	b.quiet(t, time.Second, "user.online ann")
	a3.ws.Close()
	b.waitFor(t, "user.online ann", "user.offline ann")
	// A visit shorter than anything still counts, once each way.
	n2.dial(t, "/ws", as("bob")).ws.Close()
	b.waitFor(t, "user.online ann", "user.offline ann", "user.online bob", "user.offline bob")
	// Anonymous connections are nobody.
	n1.client(t).ws.Close()
	b.quiet(t, 500*time.Millisecond, "user.online ann", "user.offline ann", "user.online bob", "user.offline bob")
}

// Channel, member and publication events of a namespace that has them,
// in order per channel; none for a namespace without.
func TestWebhookChannelEvents(t *testing.T) {
	t.Parallel()
	b := &backend{}
	ts := newTestServer(t, webhookConfig(b, nil))
	ann := ts.dial(t, "/ws", as("ann"))
	b.waitFor(t, "user.online ann")
	ann.subscribe("room:1")
	bob := ts.dial(t, "/ws", as("bob"))
	ann.subscribe("plain") // no events in this namespace
	bob.mustOK(protocol.Command{Cmd: "publish", Channel: "room:1", Data: json.RawMessage(`{"text":"hi"}`)})
	bob.mustOK(protocol.Command{Cmd: "publish", Channel: "plain", Data: json.RawMessage(`1`)})
	if _, err := ts.node.Publish(context.Background(), "room:1", []byte(`"from the server"`)); err != nil {
		t.Fatal(err)
	}
	for range 3 {
		if m := ann.readJSON(); m.Push != "pub" {
			t.Fatalf("%+v", m)
		}
	}
	ann.mustOK(protocol.Command{Cmd: "unsubscribe", Channel: "room:1"})
	b.waitFor(t, "user.online ann", "channel.occupied room:1", "member.added room:1 ann", "user.online bob", `publication room:1 {"text":"hi"}`,
		"member.removed room:1 ann", "channel.vacated room:1")
	b.mu.Lock()
	e := b.events[4]
	b.mu.Unlock()
	if e.User != "bob" || e.Client == "" || e.Channel != "room:1" || e.ID == "" || time.Since(e.Time) > time.Minute {
		t.Fatalf("publication event %+v", e)
	}
}

// A backend that fails gets the same events again, in order, the first
// one alone until it passes; each event arrives (after de-duplication)
// once.
func TestWebhookRetries(t *testing.T) {
	t.Parallel()
	b := &backend{fail: 2}
	ts := newTestServer(t, webhookConfig(b, nil))
	for i := range 5 {
		ts.dial(t, "/ws", as(fmt.Sprint("u", i)))
	}
	want := []string{"user.online u0", "user.online u1", "user.online u2", "user.online u3", "user.online u4"}
	deadline := time.Now().Add(15 * time.Second)
	for {
		got := b.got()
		slices.Sort(got) // the five connect concurrently
		if slices.Equal(got, want) {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("got %q", got)
		}
		time.Sleep(20 * time.Millisecond)
	}
	b.mu.Lock()
	defer b.mu.Unlock()
	if b.calls < 3 || len(b.batches[0]) != 1 {
		t.Fatalf("%d calls, first batch after the failures %d events: want the head alone", b.calls, len(b.batches[0]))
	}
	if st := ts.node.WebhookStats(); st.Failures != 2 || !st.Leading || st.Retrying {
		t.Fatalf("stats %+v", st)
	}
}

// An event the backend never takes is dropped after RetryFor, counted,
// and the next ones go through.
func TestWebhookRetryForDrops(t *testing.T) {
	t.Parallel()
	b := &backend{fail: 1 << 30}
	cfg := webhookConfig(b, nil)
	cfg.Webhooks.RetryFor = 500 * time.Millisecond
	ts := newTestServer(t, cfg)
	ts.dial(t, "/ws", as("ann"))
	waitFor(t, "the event dropped", func() bool { return ts.node.WebhookStats().Dropped == 1 })
	b.mu.Lock()
	b.fail = 0
	b.mu.Unlock()
	ts.dial(t, "/ws", as("bob"))
	b.waitFor(t, "user.online bob")
}

// crashable is an EventStore that stops answering once crashed, as the
// store looks from a node that died: the fault no real node can make on
// demand inside one test process.
type crashable struct {
	EventStore
	mu      sync.Mutex
	crashed bool
}

var errCrashed = errors.New("node crashed")

func (c *crashable) down() bool { c.mu.Lock(); defer c.mu.Unlock(); return c.crashed }

func (c *crashable) Hold(ctx context.Context, node, key string, on *Event) error {
	if c.down() {
		return errCrashed
	}
	return c.EventStore.Hold(ctx, node, key, on)
}

func (c *crashable) Release(ctx context.Context, node, key string, off *Event) error {
	if c.down() {
		return errCrashed
	}
	return c.EventStore.Release(ctx, node, key, off)
}

func (c *crashable) Beat(ctx context.Context, node string, ttl time.Duration) error {
	if c.down() {
		return errCrashed
	}
	return c.EventStore.Beat(ctx, node, ttl)
}

func (c *crashable) Reap(ctx context.Context, node string, off func(string) *Event) ([]string, error) {
	if c.down() {
		return nil, errCrashed
	}
	return c.EventStore.Reap(ctx, node, off)
}

func (c *crashable) Lead(ctx context.Context, node string, ttl time.Duration) (bool, error) {
	if c.down() {
		return false, errCrashed
	}
	return c.EventStore.Lead(ctx, node, ttl)
}

// A node that dies holding users: another node notices (NodeTTL) and
// sends their offline events; a user also on a live node stays online.
func TestWebhookNodeCrash(t *testing.T) {
	t.Parallel()
	b := &backend{}
	shared := NewMemoryEventStore()
	doomed := &crashable{EventStore: shared}
	n1 := newTestServer(t, webhookConfig(b, doomed))
	n1.dial(t, "/ws", as("ann"))
	// One at a time: a dial returns with the 101, before the node admits
	// the connection, so two dials' online events may come in either order.
	b.waitFor(t, "user.online ann")
	n1.dial(t, "/ws", as("bob"))
	b.waitFor(t, "user.online ann", "user.online bob")
	n2 := newTestServer(t, webhookConfig(b, shared))
	n2.dial(t, "/ws", as("bob"))
	time.Sleep(300 * time.Millisecond) // n2 holds bob in the store
	doomed.mu.Lock()
	doomed.crashed = true
	doomed.mu.Unlock()
	b.waitFor(t, "user.online ann", "user.online bob", "user.offline ann")
	b.quiet(t, time.Second, "user.online ann", "user.online bob", "user.offline ann")
}

// nodeToShutDown runs a node of cfg, which the test shuts down itself
// (shutdown: within 5s, and Run has returned), with ann connected.
func nodeToShutDown(t *testing.T, cfg Config) (ann *websocket.Conn, shutdown func()) {
	t.Helper()
	n, err := New(cfg)
	if err != nil {
		t.Fatal(err)
	}
	srv := newHTTPTestServer(n)
	t.Cleanup(srv.Close)
	done := make(chan error, 1)
	go func() { done <- n.Run(context.Background()) }()
	ws, _, err := websocket.DefaultDialer.Dial("ws"+strings.TrimPrefix(srv.URL, "http")+"/ws", as("ann"))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { ws.Close() })
	return ws, func() {
		t.Helper()
		ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
		defer cancel()
		if err := n.Shutdown(ctx); err != nil {
			t.Fatal(err)
		}
		<-done
	}
}

// A node that shuts down releases what it held and delivers the
// offline events before it stops.
func TestWebhookShutdownFlushes(t *testing.T) {
	t.Parallel()
	b := &backend{}
	cfg := webhookConfig(b, nil)
	cfg.Webhooks.Grace = time.Hour // only the final flush can release
	_, shutdown := nodeToShutDown(t, cfg)
	b.waitFor(t, "user.online ann")
	shutdown()
	b.waitFor(t, "user.online ann", "user.offline ann")
}

// A reload on the same node, within the grace, is no event; leaving
// afterwards is one offline event, and nothing follows it.
func TestWebhookReloadSameNode(t *testing.T) {
	t.Parallel()
	b := &backend{}
	ts := newTestServer(t, webhookConfig(b, nil))
	ts.dial(t, "/ws", as("ann")).ws.Close()
	time.Sleep(50 * time.Millisecond)
	c := ts.dial(t, "/ws", as("ann"))
	b.waitFor(t, "user.online ann")
	time.Sleep(500 * time.Millisecond) // past the grace: still here
	c.ws.Close()
	b.waitFor(t, "user.online ann", "user.offline ann")
	b.quiet(t, time.Second, "user.online ann", "user.offline ann")
}

// What a client published just before the node stops is recorded and
// delivered by the final flush.
func TestWebhookShutdownKeepsPublications(t *testing.T) {
	t.Parallel()
	b := &backend{}
	cfg := webhookConfig(b, nil)
	cfg.Webhooks.Users = false
	ws, shutdown := nodeToShutDown(t, cfg)
	for i := range 20 {
		msg := fmt.Sprintf(`{"id":%d,"cmd":"publish","channel":"room:1","data":%d}`, i+1, i)
		if err := ws.WriteMessage(websocket.TextMessage, []byte(msg)); err != nil {
			t.Fatal(err)
		}
	}
	for range 20 { // every publish answered: all published
		if _, _, err := ws.ReadMessage(); err != nil {
			t.Fatal(err)
		}
	}
	shutdown()
	var want []string
	for i := range 20 {
		want = append(want, fmt.Sprintf("publication room:1 %d", i))
	}
	b.waitFor(t, want...)
}

// A node that stops while its users move to another node (a drain, a
// restart) keeps what they held for the grace before it releases: the
// user who reconnects elsewhere within the grace is no offline event and
// no second online one. Without the wait the stopping node released ann
// at once, before her new connection was held.
func TestWebhookShutdownWaitsGrace(t *testing.T) {
	t.Parallel()
	b := &backend{}
	shared := NewMemoryEventStore()
	cfg := webhookConfig(b, shared)
	cfg.Webhooks.Grace = 2 * time.Second
	cfg.Logger = testLogger(t)
	stopping, err := New(cfg)
	if err != nil {
		t.Fatal(err)
	}
	srv := newHTTPTestServer(stopping)
	t.Cleanup(srv.Close)
	runDone := make(chan error, 1)
	go func() { runDone <- stopping.Run(context.Background()) }()
	other := newTestServer(t, cfg)

	ws, _, err := websocket.DefaultDialer.Dial("ws"+strings.TrimPrefix(srv.URL, "http")+"/ws", as("ann"))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { ws.Close() })
	b.waitFor(t, "user.online ann")

	shut := make(chan error, 1)
	go func() {
		ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
		defer cancel()
		shut <- stopping.Shutdown(ctx)
	}()
	// ann is told to go, and comes back on the other node a little later
	// (within the grace, after the stopping node's connections are gone).
	_ = ws.SetReadDeadline(time.Now().Add(10 * time.Second))
	for {
		if _, _, err := ws.ReadMessage(); err != nil {
			break
		}
	}
	time.Sleep(500 * time.Millisecond)
	other.dial(t, "/ws", as("ann"))
	if err := <-shut; err != nil {
		t.Fatal(err)
	}
	if err := <-runDone; err != nil {
		t.Fatal(err)
	}
	b.quiet(t, time.Second, "user.online ann")
}

// lateBeats is an EventStore whose Beats, once armed, go wrong twice in a
// row, as a slow network makes them: the first is stored but answered
// late (when the test says), the second is stored late (when the test
// says). Timing faults no real store makes on demand.
type lateBeats struct {
	EventStore
	mu      sync.Mutex
	phase   int            // 1: the next Beat answers late; 2: the next is stored late
	wrote   chan time.Time // phase 1 stored, at
	answer  chan struct{}  // phase 1 may answer
	entered chan struct{}  // phase 2 began
	store   chan struct{}  // phase 2 may store
}

func (s *lateBeats) Beat(ctx context.Context, node string, ttl time.Duration) error {
	s.mu.Lock()
	phase := s.phase
	if phase == 1 || phase == 2 {
		s.phase++
	}
	s.mu.Unlock()
	switch phase {
	case 1:
		err := s.EventStore.Beat(ctx, node, ttl)
		s.wrote <- time.Now()
		<-s.answer
		return err
	case 2:
		s.entered <- struct{}{}
		<-s.store
	}
	return s.EventStore.Beat(ctx, node, ttl)
}

// A beat stored at once but answered just before the node's beat expires,
// then one stored after the expiry: between them the node was taken for
// dead and its users released (here by itself, the leader). The gap
// between the two answers is under NodeTTL, but the store's gap was not:
// the node holds everything again, so ann, still connected, is online
// again. (Measured between answers, the lapse went unseen and ann stayed
// offline while connected.)
func TestWebhookLateBeatAnswer(t *testing.T) {
	t.Parallel()
	b := &backend{}
	store := &lateBeats{EventStore: NewMemoryEventStore(), wrote: make(chan time.Time, 1),
		answer: make(chan struct{}), entered: make(chan struct{}, 1), store: make(chan struct{})}
	cfg := webhookConfig(b, store)
	ttl := cfg.Webhooks.NodeTTL
	ts := newTestServer(t, cfg)
	ts.dial(t, "/ws", as("ann"))
	b.waitFor(t, "user.online ann")

	store.mu.Lock()
	store.phase = 1
	store.mu.Unlock()
	wrote := <-store.wrote
	// Answered a little before the stored beat expires.
	time.Sleep(time.Until(wrote.Add(ttl * 9 / 10)))
	close(store.answer)
	<-store.entered
	// The next beat is not stored yet: the node's beat expires, and its
	// own reap (it leads) releases ann.
	b.waitFor(t, "user.online ann", "user.offline ann")
	close(store.store)
	b.waitFor(t, "user.online ann", "user.offline ann", "user.online ann")
}

// A backend that answers user.online with a publication on a channel its
// connect hook gave the connection reaches that connection: the user
// counts as online only once the connect hook's channels are subscribed.
// Each user here connects once and waits for the publication its own
// user.online brings (when user.online was counted before the channels
// were subscribed, this test failed in three runs of three).
func TestWebhookOnlineAfterConnectChannels(t *testing.T) {
	t.Parallel()
	var ts *testServer
	ts = newTestServer(t, Config{
		Namespaces: []Namespace{{Name: "users", AllowSubscribe: PermNobody, AllowPublish: PermNobody}},
		Hooks: Hooks{Connect: func(_ context.Context, e *ConnectEvent) (*ConnectReply, error) {
			return &ConnectReply{UserID: e.Header.Get("X-User"), Channels: []string{"users:online"}}, nil
		}},
		Webhooks: Webhooks{Users: true, Deliver: func(ctx context.Context, events []Event) error {
			for _, e := range events {
				if e.Kind == EventUserOnline {
					if _, err := ts.node.Publish(ctx, "users:online", []byte(strconv.Quote(e.User))); err != nil {
						return err
					}
				}
			}
			return nil
		}},
	})
	for i := range 60 {
		user := "u" + strconv.Itoa(i)
		c := ts.dial(t, "/ws", as(user))
		c.mustOK(protocol.Command{Cmd: "connect"})
		for {
			m := c.readJSON() // fails after 5 s: the publication never came
			if m.Push == protocol.PushPub && string(m.Data) == strconv.Quote(user) {
				break
			}
		}
		c.ws.Close()
	}
}
