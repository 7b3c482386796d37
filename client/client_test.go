package client_test

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"net/http"
	"net/http/httptest"
	"slices"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/gorilla/websocket"
	"go.uber.org/goleak"

	"github.com/heraldhq/herald"
	"github.com/heraldhq/herald/client"
	"github.com/heraldhq/herald/protocol"
)

func TestMain(m *testing.M) { goleak.VerifyTestMain(m) }

// namespaces: channels without ':' keep history, presence and join/leave;
// "live:…" keeps nothing.
var namespaces = []herald.Namespace{
	{Name: "", HistorySize: 100, HistoryTTL: time.Minute, Presence: true, JoinLeave: true},
	{Name: "live"},
}

// ---- servers ----

// testServer is an httptest server on 127.0.0.1:0 serving the Herald
// endpoint of its current node, which a test may replace (a "restart" on
// the same listener).
type testServer struct {
	t   *testing.T
	srv *httptest.Server
	url string
	cur atomic.Pointer[herald.Node]
}

func newServer(t *testing.T, cfg herald.Config) *testServer {
	t.Helper()
	ts := &testServer{t: t}
	ts.srv = httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		ts.cur.Load().Handler().ServeHTTP(w, r)
	}))
	t.Cleanup(ts.srv.Close)
	ts.url = "ws" + strings.TrimPrefix(ts.srv.URL, "http") + "/ws"
	ts.startNode(cfg)
	return ts
}

// startNode runs a fresh node (a fresh history epoch) and routes new
// connections to it.
func (ts *testServer) startNode(cfg herald.Config) *herald.Node {
	ts.t.Helper()
	n, err := herald.New(cfg)
	if err != nil {
		ts.t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan struct{})
	go func() { defer close(done); _ = n.Run(ctx) }()
	ts.t.Cleanup(func() {
		shutdown(ts.t, n)
		cancel()
		<-done
	})
	ts.cur.Store(n)
	return n
}

func (ts *testServer) node() *herald.Node { return ts.cur.Load() }

func shutdown(t *testing.T, n *herald.Node) {
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	if err := n.Shutdown(ctx); err != nil {
		t.Errorf("Shutdown: %v", err)
	}
}

// fakeServer speaks just enough herald.v1 to provoke faults a real server
// does not produce on demand. handle runs for every command, on the
// connection's goroutine, which is the only writer of ws.
type fakeServer struct {
	srv *httptest.Server
	url string

	wg     sync.WaitGroup
	mu     sync.Mutex
	conns  map[*websocket.Conn]struct{}
	closed bool
	nconns atomic.Int32
}

func newFakeServer(t *testing.T, handle func(ws *websocket.Conn, n int32, cmd protocol.Command)) *fakeServer {
	t.Helper()
	fs := &fakeServer{conns: make(map[*websocket.Conn]struct{})}
	up := websocket.Upgrader{Subprotocols: []string{protocol.Subprotocol}}
	fs.srv = httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		fs.wg.Add(1) // before the hijack, so httptest's Close orders it before our Wait
		defer fs.wg.Done()
		ws, err := up.Upgrade(w, r, nil)
		if err != nil {
			return
		}
		defer ws.Close()
		fs.mu.Lock()
		if fs.closed {
			fs.mu.Unlock()
			return
		}
		fs.conns[ws] = struct{}{}
		fs.mu.Unlock()
		n := fs.nconns.Add(1)
		for {
			_, b, err := ws.ReadMessage()
			if err != nil {
				return
			}
			cmd, _, err := protocol.DecodeCommand(b, false)
			if err != nil {
				continue
			}
			handle(ws, n, cmd)
		}
	}))
	fs.url = "ws" + strings.TrimPrefix(fs.srv.URL, "http") + "/ws"
	t.Cleanup(func() {
		fs.srv.Close()
		fs.mu.Lock()
		fs.closed = true
		for ws := range fs.conns {
			ws.Close()
		}
		fs.mu.Unlock()
		fs.wg.Wait()
	})
	return fs
}

func fakeReply(ws *websocket.Conn, id uint64, result any) {
	r := protocol.Reply{ID: id}
	if result != nil {
		r.Result, _ = json.Marshal(result)
	}
	_ = ws.WriteJSON(r)
}

// answerConnect answers a connect command with a client id per connection.
func answerConnect(ws *websocket.Conn, n int32, cmd protocol.Command) bool {
	if cmd.Cmd != protocol.CmdConnect {
		return false
	}
	fakeReply(ws, cmd.ID, protocol.ConnectResult{Client: fmt.Sprintf("fake-%d", n)})
	return true
}

// ---- clients ----

type tLogWriter struct{ t *testing.T }

func (w tLogWriter) Write(p []byte) (int, error) {
	w.t.Log(strings.TrimSpace(string(p)))
	return len(p), nil
}

func testLogger(t *testing.T) *slog.Logger {
	return slog.New(slog.NewTextHandler(tLogWriter{t}, &slog.HandlerOptions{Level: slog.LevelDebug}))
}

// newClient makes a client closed at the test's end, with quick backoff.
func newClient(t *testing.T, url string, opts client.Options) *client.Client {
	t.Helper()
	if opts.Logger == nil {
		opts.Logger = testLogger(t)
	}
	if opts.Backoff == (client.Backoff{}) {
		opts.Backoff = client.Backoff{Min: 10 * time.Millisecond, Max: 100 * time.Millisecond}
	}
	c := client.New(url, opts)
	t.Cleanup(func() { c.Close() })
	return c
}

func connect(t *testing.T, url string, opts client.Options) *client.Client {
	t.Helper()
	c := newClient(t, url, opts)
	if err := c.Connect(ctxT(t)); err != nil {
		t.Fatalf("Connect: %v", err)
	}
	return c
}

// ctxT is a context for one call, ended with the test.
func ctxT(t *testing.T) context.Context {
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	t.Cleanup(cancel)
	return ctx
}

// recorder records what handlers receive; safe for concurrent use.
type recorder struct {
	mu       sync.Mutex
	pubs     []client.Publication
	joins    []client.ClientInfo
	leaves   []client.ClientInfo
	failures []string
	errs     []error
	states   []client.StateChange
	msgs     []client.Message
}

func (r *recorder) sub() client.SubscribeOptions {
	return client.SubscribeOptions{
		OnPublication:    func(p client.Publication) { r.mu.Lock(); r.pubs = append(r.pubs, p); r.mu.Unlock() },
		OnJoin:           func(i client.ClientInfo) { r.mu.Lock(); r.joins = append(r.joins, i); r.mu.Unlock() },
		OnLeave:          func(i client.ClientInfo) { r.mu.Lock(); r.leaves = append(r.leaves, i); r.mu.Unlock() },
		OnRecoveryFailed: func(reason string) { r.mu.Lock(); r.failures = append(r.failures, reason); r.mu.Unlock() },
		OnError:          func(err error) { r.mu.Lock(); r.errs = append(r.errs, err); r.mu.Unlock() },
	}
}

func (r *recorder) onState(s client.StateChange) {
	r.mu.Lock()
	r.states = append(r.states, s)
	r.mu.Unlock()
}
func (r *recorder) onMessage(m client.Message) {
	r.mu.Lock()
	r.msgs = append(r.msgs, m)
	r.mu.Unlock()
}

func (r *recorder) publications() []client.Publication {
	r.mu.Lock()
	defer r.mu.Unlock()
	return slices.Clone(r.pubs)
}

func (r *recorder) get(f func(r *recorder) int) int {
	r.mu.Lock()
	defer r.mu.Unlock()
	return f(r)
}

func (r *recorder) numPubs() int { return r.get(func(r *recorder) int { return len(r.pubs) }) }

func (r *recorder) failureList() []string {
	r.mu.Lock()
	defer r.mu.Unlock()
	return slices.Clone(r.failures)
}

func (r *recorder) stateList() []client.StateChange {
	r.mu.Lock()
	defer r.mu.Unlock()
	return slices.Clone(r.states)
}

func hasClient(list []client.ClientInfo, id string) bool {
	return slices.ContainsFunc(list, func(i client.ClientInfo) bool { return i.Client == id })
}

// waitFor polls cond until it holds, failing after 10s.
func waitFor(t *testing.T, what string, cond func() bool) {
	t.Helper()
	deadline := time.Now().Add(10 * time.Second)
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatalf("timed out waiting for %s", what)
		}
		time.Sleep(time.Millisecond)
	}
}

// checkOffsets fails unless pubs are exactly offsets 1..n, each carrying
// {"n":offset}.
func checkOffsets(t *testing.T, pubs []client.Publication, n int) {
	t.Helper()
	if len(pubs) != n {
		t.Fatalf("got %d publications, want %d: %v", len(pubs), n, pubs)
	}
	for i, p := range pubs {
		if p.Offset != uint64(i+1) || string(p.Data) != fmt.Sprintf(`{"n":%d}`, i+1) {
			t.Fatalf("publication %d: offset %d data %s, want offset %d (gap or duplicate)", i, p.Offset, p.Data, i+1)
		}
	}
}

func nodePublish(t *testing.T, n *herald.Node, channel string, from, to int) {
	t.Helper()
	for i := from; i <= to; i++ {
		if _, err := n.Publish(ctxT(t), channel, fmt.Appendf(nil, `{"n":%d}`, i)); err != nil {
			t.Fatalf("node publish %d: %v", i, err)
		}
	}
}

// dialRecorder wraps the TCP dial: it counts and timestamps attempts, and
// can hold them at a gate.
type dialRecorder struct {
	mu    sync.Mutex
	times []time.Time
	gate  chan struct{} // nil: open
}

func (d *dialRecorder) dialer() *websocket.Dialer {
	return &websocket.Dialer{HandshakeTimeout: 5 * time.Second, NetDialContext: d.dial}
}

func (d *dialRecorder) dial(ctx context.Context, network, addr string) (net.Conn, error) {
	d.mu.Lock()
	d.times = append(d.times, time.Now())
	gate := d.gate
	d.mu.Unlock()
	if gate != nil {
		select {
		case <-gate:
		case <-ctx.Done():
			return nil, ctx.Err()
		}
	}
	var nd net.Dialer
	return nd.DialContext(ctx, network, addr)
}

func (d *dialRecorder) count() int {
	d.mu.Lock()
	defer d.mu.Unlock()
	return len(d.times)
}

func (d *dialRecorder) hold() {
	d.mu.Lock()
	d.gate = make(chan struct{})
	d.mu.Unlock()
}

func (d *dialRecorder) release() {
	d.mu.Lock()
	close(d.gate)
	d.gate = nil
	d.mu.Unlock()
}

// ---- tests ----

func TestPublishSubscribeJSON(t *testing.T) {
	ts := newServer(t, herald.Config{Namespaces: namespaces})
	pubc := connect(t, ts.url, client.Options{})
	subc := connect(t, ts.url, client.Options{})
	var rec recorder
	sub, err := subc.Subscribe(ctxT(t), "chat", rec.sub())
	if err != nil {
		t.Fatal(err)
	}
	// Whitespace included: the payload must arrive byte for byte.
	values := [][]byte{[]byte(`{"text": "hi",  "n": [1, 2]}`), []byte(`"plain string"`), []byte(`42`)}
	var last client.PublishResult
	for i, v := range values {
		res, err := pubc.Publish(ctxT(t), "chat", v)
		if err != nil {
			t.Fatalf("Publish: %v", err)
		}
		if res.Offset != uint64(i+1) || res.Epoch == "" || res.Duplicate {
			t.Fatalf("publish result %+v, want offset %d with an epoch", res, i+1)
		}
		last = res
	}
	waitFor(t, "3 publications", func() bool { return rec.numPubs() == 3 })
	for i, p := range rec.publications() {
		if p.Channel != "chat" || p.Offset != uint64(i+1) || p.Binary || !bytes.Equal(p.Data, values[i]) {
			t.Errorf("publication %d = %+v (data %s), want %s at offset %d", i, p, p.Data, values[i], i+1)
		}
	}
	if pos := sub.Position(); pos != (client.Position{Offset: 3, Epoch: last.Epoch}) {
		t.Errorf("Position() = %+v, want offset 3 epoch %q", pos, last.Epoch)
	}
	if sub.Channel() != "chat" {
		t.Errorf("Channel() = %q", sub.Channel())
	}
	if _, err := pubc.Publish(ctxT(t), "chat", []byte(`{"unterminated":`)); err == nil {
		t.Error("Publish of invalid JSON succeeded")
	}
}

func TestPublishBinaryRoundTrip(t *testing.T) {
	ts := newServer(t, herald.Config{Namespaces: namespaces})
	pubc := connect(t, ts.url, client.Options{})
	subc := connect(t, ts.url, client.Options{})
	var rec recorder
	if _, err := subc.Subscribe(ctxT(t), "files", rec.sub()); err != nil {
		t.Fatal(err)
	}
	// Not UTF-8, with a '\n' (the header separator) and JSON-looking bytes.
	payload := []byte{0xff, 0xfe, 0x00, '\n', 0x80, '{', '"', 0xc3, '\n'}
	if _, err := pubc.PublishBinary(ctxT(t), "files", payload); err != nil {
		t.Fatal(err)
	}
	if _, err := pubc.PublishBinary(ctxT(t), "files", nil); err != nil {
		t.Fatal(err)
	}
	waitFor(t, "2 publications", func() bool { return rec.numPubs() == 2 })
	pubs := rec.publications()
	if p := pubs[0]; !p.Binary || !bytes.Equal(p.Data, payload) || p.Offset != 1 {
		t.Errorf("got %+v, want binary %x at offset 1", p, payload)
	}
	if p := pubs[1]; !p.Binary || len(p.Data) != 0 || p.Offset != 2 {
		t.Errorf("got %+v, want empty binary at offset 2", p)
	}
	h, err := subc.History(ctxT(t), "files", client.HistoryOptions{})
	if err != nil {
		t.Fatal(err)
	}
	if len(h.Publications) != 2 || !h.Publications[0].Binary || !bytes.Equal(h.Publications[0].Data, payload) ||
		!h.Publications[1].Binary || len(h.Publications[1].Data) != 0 {
		t.Errorf("history = %+v, want the two binary publications", h.Publications)
	}
}

func TestTypedErrors(t *testing.T) {
	ts := newServer(t, herald.Config{Namespaces: namespaces})
	c := connect(t, ts.url, client.Options{})

	var herr *client.Error
	_, err := c.Subscribe(ctxT(t), "a b", client.SubscribeOptions{})
	if !errors.As(err, &herr) || herr.Code != protocol.CodeBadChannel {
		t.Fatalf("Subscribe(bad name) = %v, want an *Error with code %s", err, protocol.CodeBadChannel)
	}
	if !strings.Contains(err.Error(), "failed to subscribe") {
		t.Errorf("error %q does not say what failed", err)
	}
	if _, err := c.Publish(ctxT(t), "a b", []byte(`1`)); !errors.As(err, &herr) || herr.Code != protocol.CodeBadChannel {
		t.Errorf("Publish(bad name) = %v, want %s", err, protocol.CodeBadChannel)
	}
	if _, err := c.History(ctxT(t), "live:x", client.HistoryOptions{}); !errors.As(err, &herr) || herr.Code != protocol.CodeNotEnabled {
		t.Errorf("History(no history) = %v, want %s", err, protocol.CodeNotEnabled)
	}
	if _, err := c.Subscribe(ctxT(t), "chat", client.SubscribeOptions{}); err != nil {
		t.Fatal(err)
	}
	if _, err := c.Subscribe(ctxT(t), "chat", client.SubscribeOptions{}); !errors.As(err, &herr) || herr.Code != protocol.CodeAlreadySub {
		t.Errorf("second Subscribe = %v, want %s", err, protocol.CodeAlreadySub)
	}
	// The failed subscribe left nothing behind: the name is free again.
	if _, err := c.Subscribe(ctxT(t), "a b", client.SubscribeOptions{}); !errors.As(err, &herr) || herr.Code != protocol.CodeBadChannel {
		t.Errorf("Subscribe(bad name) again = %v, want %s", err, protocol.CodeBadChannel)
	}
}

func TestHistory(t *testing.T) {
	ts := newServer(t, herald.Config{Namespaces: namespaces})
	c := connect(t, ts.url, client.Options{})
	var epoch string
	for i := 1; i <= 5; i++ {
		res, err := c.Publish(ctxT(t), "news", fmt.Appendf(nil, `{"n":%d}`, i))
		if err != nil {
			t.Fatal(err)
		}
		epoch = res.Epoch
	}
	h, err := c.History(ctxT(t), "news", client.HistoryOptions{})
	if err != nil {
		t.Fatal(err)
	}
	checkOffsets(t, h.Publications, 5)
	if h.Position != (client.Position{Offset: 5, Epoch: epoch}) {
		t.Errorf("position %+v, want 5 %q", h.Position, epoch)
	}
	offsets := func(o client.HistoryOptions) []uint64 {
		t.Helper()
		h, err := c.History(ctxT(t), "news", o)
		if err != nil {
			t.Fatal(err)
		}
		var out []uint64
		for _, p := range h.Publications {
			out = append(out, p.Offset)
		}
		return out
	}
	if got := offsets(client.HistoryOptions{Limit: 2, Reverse: true}); !slices.Equal(got, []uint64{5, 4}) {
		t.Errorf("newest 2 = %v, want [5 4]", got)
	}
	if got := offsets(client.HistoryOptions{Since: &client.Position{Offset: 2, Epoch: epoch}}); !slices.Equal(got, []uint64{3, 4, 5}) {
		t.Errorf("since 2 = %v, want [3 4 5]", got)
	}
	if got := offsets(client.HistoryOptions{Limit: -1}); len(got) != 0 {
		t.Errorf("Limit -1 = %v, want no publications", got)
	}
}

func TestIdempotentPublish(t *testing.T) {
	ts := newServer(t, herald.Config{Namespaces: namespaces})
	c := connect(t, ts.url, client.Options{})
	first, err := c.Publish(ctxT(t), "orders", []byte(`{"id":1}`), client.WithIdempotencyKey("order-1"))
	if err != nil {
		t.Fatal(err)
	}
	again, err := c.Publish(ctxT(t), "orders", []byte(`{"id":1}`), client.WithIdempotencyKey("order-1"))
	if err != nil {
		t.Fatal(err)
	}
	if first.Duplicate || !again.Duplicate || again.Offset != first.Offset || again.Epoch != first.Epoch {
		t.Errorf("first %+v, repeat %+v: want the repeat to be a duplicate of the first", first, again)
	}
}

func TestPresenceAndStats(t *testing.T) {
	ts := newServer(t, herald.Config{Namespaces: namespaces})
	a := connect(t, ts.url, client.Options{})
	b := connect(t, ts.url, client.Options{})
	if _, err := a.Subscribe(ctxT(t), "room", client.SubscribeOptions{}); err != nil {
		t.Fatal(err)
	}
	subB, err := b.Subscribe(ctxT(t), "room", client.SubscribeOptions{})
	if err != nil {
		t.Fatal(err)
	}
	p, err := a.Presence(ctxT(t), "room")
	if err != nil {
		t.Fatal(err)
	}
	if len(p) != 2 || p[a.ID()].Client != a.ID() || p[b.ID()].Client != b.ID() {
		t.Errorf("presence = %+v, want %s and %s", p, a.ID(), b.ID())
	}
	st, err := a.PresenceStats(ctxT(t), "room")
	if err != nil {
		t.Fatal(err)
	}
	if st != (client.PresenceStats{Clients: 2, Users: 0}) { // anonymous clients count no user
		t.Errorf("stats = %+v, want 2 clients 0 users", st)
	}
	if err := subB.Unsubscribe(ctxT(t)); err != nil {
		t.Fatal(err)
	}
	// Presence reflects every completed unsubscribe: no polling needed.
	if st, err := a.PresenceStats(ctxT(t), "room"); err != nil || st.Clients != 1 {
		t.Errorf("stats after unsubscribe = %+v, %v; want 1 client", st, err)
	}
	var herr *client.Error
	if _, err := a.Presence(ctxT(t), "live:x"); !errors.As(err, &herr) || herr.Code != protocol.CodeNotEnabled {
		t.Errorf("Presence(no presence) = %v, want %s", err, protocol.CodeNotEnabled)
	}
}

func TestJoinLeave(t *testing.T) {
	ts := newServer(t, herald.Config{Namespaces: namespaces})
	a := connect(t, ts.url, client.Options{})
	b := connect(t, ts.url, client.Options{})
	var rec recorder
	if _, err := a.Subscribe(ctxT(t), "room", rec.sub()); err != nil {
		t.Fatal(err)
	}
	joined := func(id string) bool {
		rec.mu.Lock()
		defer rec.mu.Unlock()
		return hasClient(rec.joins, id)
	}
	waitFor(t, "own join", func() bool { return joined(a.ID()) })
	subB, err := b.Subscribe(ctxT(t), "room", client.SubscribeOptions{})
	if err != nil {
		t.Fatal(err)
	}
	waitFor(t, "b's join", func() bool { return joined(b.ID()) })
	if err := subB.Unsubscribe(ctxT(t)); err != nil {
		t.Fatal(err)
	}
	waitFor(t, "b's leave", func() bool {
		rec.mu.Lock()
		defer rec.mu.Unlock()
		return hasClient(rec.leaves, b.ID())
	})
}

func TestMessagePush(t *testing.T) {
	ts := newServer(t, herald.Config{Namespaces: namespaces})
	var rec recorder
	c := connect(t, ts.url, client.Options{OnMessage: rec.onMessage})
	if err := ts.node().Send(ctxT(t), c.ID(), []byte(`{"x":1}`)); err != nil {
		t.Fatal(err)
	}
	if err := ts.node().Send(ctxT(t), c.ID(), []byte{0xff, 0x00}, herald.Binary()); err != nil {
		t.Fatal(err)
	}
	waitFor(t, "2 messages", func() bool { return rec.get(func(r *recorder) int { return len(r.msgs) }) == 2 })
	rec.mu.Lock()
	defer rec.mu.Unlock()
	if m := rec.msgs[0]; m.Binary || string(m.Data) != `{"x":1}` {
		t.Errorf("message 0 = %+v", m)
	}
	if m := rec.msgs[1]; !m.Binary || !bytes.Equal(m.Data, []byte{0xff, 0x00}) {
		t.Errorf("message 1 = %+v", m)
	}
}

func TestUnsubscribeStopsDelivery(t *testing.T) {
	ts := newServer(t, herald.Config{Namespaces: namespaces})
	var rec recorder
	c := connect(t, ts.url, client.Options{OnMessage: rec.onMessage})
	sub, err := c.Subscribe(ctxT(t), "chat", rec.sub())
	if err != nil {
		t.Fatal(err)
	}
	nodePublish(t, ts.node(), "chat", 1, 1)
	waitFor(t, "publication 1", func() bool { return rec.numPubs() == 1 })
	if err := sub.Unsubscribe(ctxT(t)); err != nil {
		t.Fatal(err)
	}
	if err := sub.Unsubscribe(ctxT(t)); err != nil {
		t.Fatalf("second Unsubscribe: %v", err)
	}
	nodePublish(t, ts.node(), "chat", 2, 2)
	// Handlers run in order: once this message is handled, publication 2
	// would have been too.
	if err := ts.node().Send(ctxT(t), c.ID(), []byte(`"sentinel"`)); err != nil {
		t.Fatal(err)
	}
	waitFor(t, "sentinel", func() bool { return rec.get(func(r *recorder) int { return len(r.msgs) }) == 1 })
	if n := rec.numPubs(); n != 1 {
		t.Fatalf("%d publications after Unsubscribe, want 1", n)
	}
	// The channel can be subscribed again.
	if _, err := c.Subscribe(ctxT(t), "chat", rec.sub()); err != nil {
		t.Fatal(err)
	}
	nodePublish(t, ts.node(), "chat", 3, 3)
	waitFor(t, "publication 3", func() bool { return rec.numPubs() == 2 })
	if p := rec.publications()[1]; p.Offset != 3 {
		t.Errorf("got offset %d, want 3", p.Offset)
	}
}

func TestConcurrentPublishersKeepTheirOrder(t *testing.T) {
	ts := newServer(t, herald.Config{Namespaces: []herald.Namespace{{Name: "", HistorySize: 1000}}})
	c := connect(t, ts.url, client.Options{})
	var rec recorder
	if _, err := c.Subscribe(ctxT(t), "load", rec.sub()); err != nil {
		t.Fatal(err)
	}
	const publishers, each = 4, 50
	var wg sync.WaitGroup
	errs := make(chan error, publishers)
	for g := range publishers {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for i := range each {
				if _, err := c.Publish(context.Background(), "load", fmt.Appendf(nil, `{"g":%d,"i":%d}`, g, i)); err != nil {
					errs <- err
					return
				}
			}
		}()
	}
	wg.Wait()
	close(errs)
	for err := range errs {
		t.Fatal(err)
	}
	waitFor(t, "every publication", func() bool { return rec.numPubs() == publishers*each })
	next := make([]int, publishers)
	for i, p := range rec.publications() {
		var v struct{ G, I int }
		if err := json.Unmarshal(p.Data, &v); err != nil {
			t.Fatal(err)
		}
		if p.Offset != uint64(i+1) || v.I != next[v.G] {
			t.Fatalf("publication %d: offset %d %s, want offset %d and i=%d for g=%d", i, p.Offset, p.Data, i+1, next[v.G], v.G)
		}
		next[v.G]++
	}
}

// The server drops the connection (4003); publications made while the
// client is away are recovered after the reconnect: offsets continue, no
// gap, no duplicate. A channel without history reports no_history.
func TestReconnectRecoversMissedPublications(t *testing.T) {
	ts := newServer(t, herald.Config{Namespaces: namespaces})
	var dials dialRecorder
	var rec, live recorder
	c := connect(t, ts.url, client.Options{Dialer: dials.dialer(), OnState: rec.onState})
	if _, err := c.Subscribe(ctxT(t), "chat", rec.sub()); err != nil {
		t.Fatal(err)
	}
	if _, err := c.Subscribe(ctxT(t), "live:ticker", live.sub()); err != nil {
		t.Fatal(err)
	}
	node := ts.node()
	nodePublish(t, node, "chat", 1, 3)
	waitFor(t, "3 publications", func() bool { return rec.numPubs() == 3 })

	// Hold reconnects until the missed publications are made.
	dials.hold()
	firstID := c.ID()
	if err := node.Disconnect(ctxT(t), firstID, herald.CloseDisconnected, "test"); err != nil {
		t.Fatal(err)
	}
	waitFor(t, "the disconnect", func() bool { return c.State() != client.StateConnected })
	if _, err := c.Publish(ctxT(t), "chat", []byte(`1`)); !errors.Is(err, client.ErrDisconnected) {
		t.Errorf("Publish while disconnected = %v, want ErrDisconnected", err)
	}
	nodePublish(t, node, "chat", 4, 8)
	dials.release()

	waitFor(t, "8 publications", func() bool { return rec.numPubs() == 8 })
	checkOffsets(t, rec.publications(), 8)
	if c.ID() == firstID {
		t.Errorf("client id unchanged after reconnect: %s", c.ID())
	}
	waitFor(t, "no_history report", func() bool { return len(live.failureList()) == 1 })
	if got := live.failureList(); got[0] != protocol.ReasonNoHistory {
		t.Errorf("live channel recovery failure = %v, want %s", got, protocol.ReasonNoHistory)
	}
	if f := rec.failureList(); len(f) != 0 {
		t.Errorf("recovery failures on a channel with history: %v", f)
	}
	var sawDrop bool
	for _, s := range rec.stateList() {
		var ce *client.CloseError
		if s.State == client.StateDisconnected && s.Code == herald.CloseDisconnected && s.Reason == "test" &&
			errors.As(s.Err, &ce) && herald.CloseCode(ce.Code) == herald.CloseDisconnected {
			sawDrop = true
		}
	}
	if !sawDrop {
		t.Errorf("no disconnected state with code 4003 among %+v", rec.stateList())
	}
	// Live again: new publications follow with no gap.
	nodePublish(t, node, "chat", 9, 9)
	waitFor(t, "publication 9", func() bool { return rec.numPubs() == 9 })
	checkOffsets(t, rec.publications(), 9)
}

// A server restart (a fresh node behind the same listener) resets the
// history's epoch: recovery fails, and the app is told.
func TestRecoveryFailureAfterServerRestart(t *testing.T) {
	cfg := herald.Config{Namespaces: namespaces}
	ts := newServer(t, cfg)
	old := ts.node()
	var rec recorder
	c := connect(t, ts.url, client.Options{})
	sub, err := c.Subscribe(ctxT(t), "chat", rec.sub())
	if err != nil {
		t.Fatal(err)
	}
	nodePublish(t, old, "chat", 1, 1)
	waitFor(t, "publication 1", func() bool { return rec.numPubs() == 1 })
	oldEpoch := sub.Position().Epoch

	fresh := ts.startNode(cfg)
	shutdown(t, old) // closes the client with 1001: it reconnects, to fresh

	waitFor(t, "the recovery failure", func() bool { return len(rec.failureList()) == 1 })
	if got := rec.failureList()[0]; got != protocol.ReasonEpochChanged {
		t.Fatalf("reason %q, want %s", got, protocol.ReasonEpochChanged)
	}
	if pos := sub.Position(); pos.Epoch == oldEpoch || pos.Epoch == "" || pos.Offset != 0 {
		t.Errorf("position after failure %+v, want the new epoch at offset 0 (old epoch %q)", pos, oldEpoch)
	}
	nodePublish(t, fresh, "chat", 1, 1)
	waitFor(t, "the new publication", func() bool { return rec.numPubs() == 2 })
	if p := rec.publications()[1]; p.Offset != 1 {
		t.Errorf("first publication of the new epoch has offset %d, want 1", p.Offset)
	}
}

func TestForbiddenCloseStopsReconnecting(t *testing.T) {
	ts := newServer(t, herald.Config{Namespaces: namespaces})
	var dials dialRecorder
	var rec recorder
	c := connect(t, ts.url, client.Options{Dialer: dials.dialer(), OnState: rec.onState})
	if err := ts.node().Disconnect(ctxT(t), c.ID(), herald.CloseForbidden, "banned"); err != nil {
		t.Fatal(err)
	}
	select {
	case <-c.Done():
	case <-time.After(10 * time.Second):
		t.Fatal("client still running after close 4500")
	}
	var ce *client.CloseError
	if err := c.Err(); !errors.As(err, &ce) || herald.CloseCode(ce.Code) != herald.CloseForbidden || ce.Reason != "banned" {
		t.Fatalf("Err() = %v, want a CloseError 4500 banned", err)
	}
	if n := dials.count(); n != 1 {
		t.Errorf("%d dials, want 1: no reconnect after 4500", n)
	}
	if s := c.State(); s != client.StateClosed {
		t.Errorf("State() = %s, want closed", s)
	}
	if _, err := c.Publish(ctxT(t), "chat", []byte(`1`)); !errors.Is(err, client.ErrClosed) {
		t.Errorf("Publish after 4500 = %v, want ErrClosed", err)
	}
	// The dispatcher delivers StateClosed last, then exits by itself.
	waitFor(t, "StateClosed", func() bool {
		s := rec.stateList()
		return len(s) > 0 && s[len(s)-1].State == client.StateClosed
	})
}

func TestUnauthorizedHandshakeStopsReconnecting(t *testing.T) {
	var deny atomic.Bool
	ts := newServer(t, herald.Config{Namespaces: namespaces, Authenticate: func(*http.Request) (herald.Credentials, error) {
		if deny.Load() {
			return herald.Credentials{}, errors.New("token revoked")
		}
		return herald.Credentials{UserID: "u1"}, nil
	}})
	var dials dialRecorder
	c := connect(t, ts.url, client.Options{Dialer: dials.dialer()})
	deny.Store(true)
	if err := ts.node().Disconnect(ctxT(t), c.ID(), herald.CloseDisconnected, "re-auth"); err != nil {
		t.Fatal(err)
	}
	select {
	case <-c.Done():
	case <-time.After(10 * time.Second):
		t.Fatal("client still running after a 401 handshake")
	}
	var he *client.HandshakeError
	if err := c.Err(); !errors.As(err, &he) || he.StatusCode != http.StatusUnauthorized {
		t.Fatalf("Err() = %v, want a HandshakeError 401", err)
	}
	if n := dials.count(); n != 2 {
		t.Errorf("%d dials, want 2 (the connection and the refused reconnect)", n)
	}
}

// With the server gone, attempts are spaced by the backoff (never closer
// than Backoff.Min/4: no busy loop), and Close returns at once.
func TestBackoffWhenServerGone(t *testing.T) {
	ts := newServer(t, herald.Config{Namespaces: namespaces})
	var dials dialRecorder
	var rec recorder
	const minB = 20 * time.Millisecond
	c := connect(t, ts.url, client.Options{Dialer: dials.dialer(), Backoff: client.Backoff{Min: minB, Max: 80 * time.Millisecond}, OnState: rec.onState})
	shutdown(t, ts.node())
	ts.srv.Close() // the listener is gone: connections are refused

	const attempts = 8
	waitFor(t, "reconnect attempts", func() bool { return dials.count() >= 1+attempts })
	dials.mu.Lock()
	times := slices.Clone(dials.times)
	dials.mu.Unlock()
	for i := 2; i < len(times); i++ {
		if gap := times[i].Sub(times[i-1]); gap < minB/4 {
			t.Errorf("attempts %d and %d only %v apart, want at least %v", i-1, i, gap, minB/4)
		}
	}
	if total := times[len(times)-1].Sub(times[1]); total > 5*time.Second {
		t.Errorf("%d attempts took %v: backoff capped at 80ms should be far quicker", len(times)-1, total)
	}
	if s := c.State(); s == client.StateConnected {
		t.Errorf("State() = %s with no server", s)
	}
	start := time.Now()
	c.Close()
	if d := time.Since(start); d > time.Second {
		t.Errorf("Close took %v", d)
	}
	if err := c.Err(); !errors.Is(err, client.ErrClosed) {
		t.Errorf("Err() after Close = %v, want ErrClosed", err)
	}
}

func TestRequestTimeout(t *testing.T) {
	// Answers connect, then nothing: a fault no real server produces.
	fs := newFakeServer(t, func(ws *websocket.Conn, n int32, cmd protocol.Command) { answerConnect(ws, n, cmd) })
	c := connect(t, fs.url, client.Options{RequestTimeout: 100 * time.Millisecond})

	start := time.Now()
	_, err := c.Publish(ctxT(t), "chat", []byte(`{}`))
	if !errors.Is(err, client.ErrTimeout) || !errors.Is(err, context.DeadlineExceeded) {
		t.Fatalf("Publish = %v, want ErrTimeout matching context.DeadlineExceeded", err)
	}
	if d := time.Since(start); d < 100*time.Millisecond {
		t.Errorf("timed out after %v, before RequestTimeout", d)
	}
	// A context deadline shorter than RequestTimeout wins.
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Millisecond)
	defer cancel()
	if _, err := c.History(ctx, "chat", client.HistoryOptions{}); !errors.Is(err, context.DeadlineExceeded) || errors.Is(err, client.ErrTimeout) {
		t.Errorf("History with a short ctx = %v, want the context's DeadlineExceeded", err)
	}
	if _, err := c.Subscribe(ctxT(t), "chat", client.SubscribeOptions{}); !errors.Is(err, client.ErrTimeout) {
		t.Errorf("Subscribe = %v, want ErrTimeout", err)
	}
	if s := c.State(); s != client.StateConnected {
		t.Errorf("State() = %s: a timeout must not drop the connection", s)
	}
}

func TestConnectTimeout(t *testing.T) {
	fs := newFakeServer(t, func(*websocket.Conn, int32, protocol.Command) {}) // never answers connect
	c := newClient(t, fs.url, client.Options{RequestTimeout: 100 * time.Millisecond})
	if err := c.Connect(ctxT(t)); !errors.Is(err, client.ErrTimeout) {
		t.Fatalf("Connect = %v, want ErrTimeout", err)
	}
	// A cancelled context ends the attempt too.
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	c2 := newClient(t, fs.url, client.Options{})
	errc := make(chan error, 1)
	go func() { errc <- c2.Connect(ctx) }()
	waitFor(t, "the second connection", func() bool { return fs.nconns.Load() == 2 })
	cancel()
	if err := <-errc; !errors.Is(err, context.Canceled) {
		t.Fatalf("Connect = %v, want context.Canceled", err)
	}
}

// A subscribe that times out is abandoned; when the server's late reply
// says it did subscribe, the client unsubscribes at once and frees the
// channel.
func TestAbandonedSubscribeIsUndone(t *testing.T) {
	var mu sync.Mutex
	var held []protocol.Command // subscribe commands not answered yet
	var unsubscribed []string
	fs := newFakeServer(t, func(ws *websocket.Conn, n int32, cmd protocol.Command) {
		mu.Lock()
		defer mu.Unlock()
		switch {
		case answerConnect(ws, n, cmd):
		case cmd.Cmd == protocol.CmdSubscribe && len(unsubscribed) == 0:
			held = append(held, cmd) // answered late, with the next ping
		case cmd.Cmd == protocol.CmdPing:
			for _, h := range held {
				fakeReply(ws, h.ID, protocol.SubscribeResult{Offset: 0, Epoch: "e"})
			}
			held = nil
			fakeReply(ws, cmd.ID, nil)
		case cmd.Cmd == protocol.CmdUnsubscribe:
			unsubscribed = append(unsubscribed, cmd.Channel)
			fakeReply(ws, cmd.ID, nil)
		default:
			fakeReply(ws, cmd.ID, protocol.SubscribeResult{Offset: 0, Epoch: "e"})
		}
	})
	c := connect(t, fs.url, client.Options{RequestTimeout: 50 * time.Millisecond})
	if _, err := c.Subscribe(ctxT(t), "chat", client.SubscribeOptions{}); !errors.Is(err, client.ErrTimeout) {
		t.Fatalf("Subscribe = %v, want ErrTimeout", err)
	}
	if err := c.Ping(ctxT(t)); err != nil { // releases the late subscribe reply
		t.Fatal(err)
	}
	waitFor(t, "the undoing unsubscribe", func() bool {
		mu.Lock()
		defer mu.Unlock()
		return slices.Equal(unsubscribed, []string{"chat"})
	})
	// Once the server confirmed, the channel is free again.
	waitFor(t, "a new subscribe", func() bool {
		_, err := c.Subscribe(ctxT(t), "chat", client.SubscribeOptions{})
		return err == nil
	})
}

func TestCloseFailsPendingRequests(t *testing.T) {
	var got atomic.Int32
	fs := newFakeServer(t, func(ws *websocket.Conn, n int32, cmd protocol.Command) {
		if !answerConnect(ws, n, cmd) {
			got.Add(1) // and never answer
		}
	})
	c := connect(t, fs.url, client.Options{})
	errc := make(chan error, 1)
	go func() {
		_, err := c.Publish(context.Background(), "chat", []byte(`{}`))
		errc <- err
	}()
	waitFor(t, "the publish to reach the server", func() bool { return got.Load() == 1 })
	start := time.Now()
	c.Close()
	if d := time.Since(start); d > 2*time.Second {
		t.Errorf("Close took %v", d)
	}
	if err := <-errc; !errors.Is(err, client.ErrClosed) || !errors.Is(err, client.ErrDisconnected) {
		t.Errorf("pending Publish = %v, want ErrClosed (and ErrDisconnected)", err)
	}
}

func TestPendingRequestsFailOnDisconnect(t *testing.T) {
	// Drops the connection, without a close frame, on any publish.
	fs := newFakeServer(t, func(ws *websocket.Conn, n int32, cmd protocol.Command) {
		if !answerConnect(ws, n, cmd) && cmd.Cmd == protocol.CmdPublish {
			ws.NetConn().Close()
		}
	})
	var rec recorder
	c := connect(t, fs.url, client.Options{OnState: rec.onState})
	// Without retries: with them, the publish would be sent again after the
	// reconnect (TestPublishRetriedAfterLostConnection).
	if _, err := c.Publish(ctxT(t), "chat", []byte(`{}`), client.WithRetry(false)); !errors.Is(err, client.ErrDisconnected) {
		t.Fatalf("Publish = %v, want ErrDisconnected", err)
	}
	waitFor(t, "the reconnect", func() bool { return c.ID() == "fake-2" && c.State() == client.StateConnected })
}

func TestPushForUnknownChannelLoggedOnce(t *testing.T) {
	fs := newFakeServer(t, func(ws *websocket.Conn, n int32, cmd protocol.Command) {
		if answerConnect(ws, n, cmd) || cmd.Cmd != protocol.CmdPing {
			return
		}
		for _, ch := range []string{"ghost", "ghost", "ghost2", "ghost"} {
			_ = ws.WriteMessage(websocket.TextMessage, protocol.AppendTextPush(nil, protocol.PushPub, ch, 1, []byte(`1`)))
		}
		_ = ws.WriteMessage(websocket.TextMessage, []byte(`{"push":"from_the_future","channel":"ghost3"}`))
		fakeReply(ws, cmd.ID, nil)
	})
	var logs logCapture
	c := connect(t, fs.url, client.Options{Logger: slog.New(&logs)})
	// Replies come in order after the pushes, and the reader handles frames
	// in order: once Ping returns, every push has been handled.
	if err := c.Ping(ctxT(t)); err != nil {
		t.Fatal(err)
	}
	if got := logs.channels("without subscription"); !slices.Equal(got, []string{"ghost", "ghost2"}) {
		t.Errorf("logged channels %v, want [ghost ghost2], once each", got)
	}
}

// A handler that blocks: the queue fills, the client drops the connection
// after QueueTimeout and reconnects (again and again, spaced by backoff);
// once the handler moves on, every publication arrives exactly once, in
// order.
func TestSlowHandlerRecovers(t *testing.T) {
	ts := newServer(t, herald.Config{Namespaces: namespaces})
	var dials dialRecorder
	var rec recorder
	c := connect(t, ts.url, client.Options{
		Dialer: dials.dialer(), OnState: rec.onState,
		QueueSize: 4, QueueTimeout: 50 * time.Millisecond,
	})
	release := make(chan struct{})
	var releaseOnce sync.Once
	unblock := func() { releaseOnce.Do(func() { close(release) }) }
	t.Cleanup(unblock) // before Close, which waits for the handler
	opts := rec.sub()
	record := opts.OnPublication
	opts.OnPublication = func(p client.Publication) {
		if p.Offset == 1 {
			<-release
		}
		record(p)
	}
	if _, err := c.Subscribe(ctxT(t), "chat", opts); err != nil {
		t.Fatal(err)
	}
	nodePublish(t, ts.node(), "chat", 1, 30)
	// Two drops at least: the second one cuts a recovery short (its
	// publications cannot be queued either), so the next resubscribe must
	// start from the last publication queued, not from the recovery's reply.
	waitFor(t, "two reconnects", func() bool { return dials.count() >= 3 })
	unblock()
	waitFor(t, "30 publications", func() bool { return rec.numPubs() == 30 })
	checkOffsets(t, rec.publications(), 30)
	waitFor(t, "ErrSlowHandler reported", func() bool {
		return slices.ContainsFunc(rec.stateList(), func(s client.StateChange) bool { return errors.Is(s.Err, client.ErrSlowHandler) })
	})
	if f := rec.failureList(); len(f) != 0 {
		t.Errorf("recovery failures: %v", f)
	}
}

func TestLifecycleErrors(t *testing.T) {
	ts := newServer(t, herald.Config{Namespaces: namespaces})
	c := newClient(t, ts.url, client.Options{})
	if _, err := c.Publish(ctxT(t), "chat", []byte(`1`)); !errors.Is(err, client.ErrDisconnected) {
		t.Errorf("Publish before Connect = %v, want ErrDisconnected", err)
	}
	if err := c.Connect(ctxT(t)); err != nil {
		t.Fatal(err)
	}
	if err := c.Connect(ctxT(t)); err == nil {
		t.Error("second Connect succeeded")
	}
	c.Close()
	c.Close()
	if err := c.Connect(ctxT(t)); !errors.Is(err, client.ErrClosed) {
		t.Errorf("Connect after Close = %v, want ErrClosed", err)
	}
	if _, err := c.Subscribe(ctxT(t), "chat", client.SubscribeOptions{}); !errors.Is(err, client.ErrClosed) {
		t.Errorf("Subscribe after Close = %v, want ErrClosed", err)
	}
	select {
	case <-c.Done():
	default:
		t.Error("Done not closed after Close")
	}
	// A failed Connect leaves the client usable.
	bad := newClient(t, "ws://127.0.0.1:1/ws", client.Options{})
	if err := bad.Connect(ctxT(t)); err == nil {
		t.Fatal("Connect to a closed port succeeded")
	}
	if err := bad.Connect(ctxT(t)); err == nil || errors.Is(err, client.ErrClosed) {
		t.Errorf("second Connect = %v, want a dial error", err)
	}
}

// logCapture is a slog.Handler that keeps every record.
type logCapture struct {
	mu   sync.Mutex
	recs []slog.Record
}

func (l *logCapture) Enabled(context.Context, slog.Level) bool { return true }
func (l *logCapture) Handle(_ context.Context, r slog.Record) error {
	l.mu.Lock()
	l.recs = append(l.recs, r.Clone())
	l.mu.Unlock()
	return nil
}
func (l *logCapture) WithAttrs([]slog.Attr) slog.Handler { return l }
func (l *logCapture) WithGroup(string) slog.Handler      { return l }

// channels returns the "channel" attribute of the records whose message
// contains substr, in order.
func (l *logCapture) channels(substr string) []string {
	l.mu.Lock()
	defer l.mu.Unlock()
	var out []string
	for _, r := range l.recs {
		if !strings.Contains(r.Message, substr) {
			continue
		}
		r.Attrs(func(a slog.Attr) bool {
			if a.Key == "channel" {
				out = append(out, a.Value.String())
			}
			return true
		})
	}
	return out
}
