package redisbroker_test

import (
	"context"
	"net/http/httptest"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/redis/rueidis"

	"github.com/heraldhq/herald"
	"github.com/heraldhq/herald/client"
	"github.com/heraldhq/herald/redisbroker"
)

// killByName kills the pub/sub connection of the broker whose client name
// is name (CLIENT KILL by id: other tests' connections are left alone).
func killByName(t *testing.T, admin rueidis.Client, name string) {
	t.Helper()
	ctx := context.Background()
	list, err := admin.Do(ctx, admin.B().ClientList().TypePubsub().Build()).ToString()
	if err != nil {
		t.Fatal(err)
	}
	for _, line := range strings.Split(list, "\n") {
		fields := map[string]string{}
		for _, f := range strings.Fields(line) {
			k, v, _ := strings.Cut(f, "=")
			fields[strings.TrimPrefix(k, "txt:")] = v // RESP3 verbatim strings start with "txt:"
		}
		if fields["name"] == name {
			if err := admin.Do(ctx, admin.B().Arbitrary("CLIENT", "KILL", "ID", fields["id"]).Build()).Error(); err != nil {
				t.Fatal(err)
			}
			return
		}
	}
	// Not connected at this instant (reconnecting after the last kill): fine.
}

func startGapNode(t *testing.T, b herald.Broker) (*herald.Node, string) {
	t.Helper()
	n, err := herald.New(herald.Config{Broker: b, Logger: logger(t, false), Namespaces: []herald.Namespace{
		{Name: "chat", HistorySize: 10000, HistoryTTL: time.Minute, Presence: true},
	}})
	if err != nil {
		t.Fatal(err)
	}
	srv := httptest.NewServer(n.Handler())
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan struct{})
	go func() { defer close(done); _ = n.Run(ctx) }()
	t.Cleanup(func() {
		sctx, scancel := context.WithTimeout(context.Background(), 5*time.Second)
		defer scancel()
		_ = n.Shutdown(sctx)
		cancel()
		<-done
		srv.Close()
	})
	return n, "ws" + strings.TrimPrefix(srv.URL, "http")
}

// TestNoSilentLossAcrossPubSubReconnect: node A's pub/sub connection to
// Redis is killed while node B keeps publishing. A subscriber on node A
// (the Go client, which resubscribes with since) must end with every
// publication exactly once, in order: what node A missed while its
// connection was down is recovered from history, never skipped.
func TestNoSilentLossAcrossPubSubReconnect(t *testing.T) {
	u := redisURL(t)
	t.Parallel()
	name := "herald-gap-" + randHex(4)
	p := prefix(t)
	mk := func(clientName string) *redisbroker.Broker {
		o := redisbroker.Options{URL: u, Prefix: p, Logger: logger(t, false)}
		if clientName != "" {
			o.URL += "?client_name=" + clientName
		}
		b, err := redisbroker.New(o)
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(b.Close)
		return b
	}
	_, urlA := startGapNode(t, mk(name))
	nodeB, _ := startGapNode(t, mk(""))

	var mu sync.Mutex
	var offsets []uint64
	var failures []string
	c := client.New(urlA+"/ws", client.Options{Logger: logger(t, false), Backoff: client.Backoff{Min: 10 * time.Millisecond, Max: 100 * time.Millisecond}})
	defer c.Close()
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	if err := c.Connect(ctx); err != nil {
		t.Fatal(err)
	}
	if _, err := c.Subscribe(ctx, "chat:gap", client.SubscribeOptions{
		OnPublication:    func(p client.Publication) { mu.Lock(); offsets = append(offsets, p.Offset); mu.Unlock() },
		OnRecoveryFailed: func(r string) { mu.Lock(); failures = append(failures, r); mu.Unlock() },
	}); err != nil {
		t.Fatal(err)
	}

	opt, _ := rueidis.ParseURL(u)
	opt.DisableCache = true
	admin, err := rueidis.NewClient(opt)
	if err != nil {
		t.Fatal(err)
	}
	defer admin.Close()
	const total = 400
	for i := 1; i <= total; i++ {
		if _, err := nodeB.Publish(ctx, "chat:gap", []byte(`1`)); err != nil {
			t.Fatal(err)
		}
		if i%100 == 50 { // three outages, mid-stream
			killByName(t, admin, name)
		}
	}
	deadline := time.Now().Add(20 * time.Second)
	for {
		mu.Lock()
		n := len(offsets)
		mu.Unlock()
		if n >= total || time.Now().After(deadline) {
			break
		}
		time.Sleep(10 * time.Millisecond)
	}
	mu.Lock()
	defer mu.Unlock()
	if len(failures) > 0 {
		t.Fatalf("recovery failed: %v", failures)
	}
	for i, off := range offsets {
		if off != uint64(i+1) {
			t.Fatalf("publication %d has offset %d: gap or duplicate (%v)", i, off, offsets[max(0, i-5):min(len(offsets), i+5)])
		}
	}
	if len(offsets) != total {
		t.Fatalf("got %d publications, want %d", len(offsets), total)
	}
}

// TestNodeCrash: a node dies without a clean shutdown (its broker and its
// sockets cut, nothing unregistered). Its client moves to another node and
// recovers what was published meanwhile from the shared history, and its
// presence entry expires from the shared presence after PresenceTTL.
func TestNodeCrash(t *testing.T) {
	u := redisURL(t)
	t.Parallel()
	p := prefix(t)
	mk := func() *redisbroker.Broker {
		b, err := redisbroker.New(redisbroker.Options{URL: u, Prefix: p, PresenceTTL: time.Second, Logger: logger(t, false)})
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(b.Close)
		return b
	}
	cfg := func(b herald.Broker) herald.Config {
		return herald.Config{Broker: b, Logger: logger(t, false), Namespaces: []herald.Namespace{
			{Name: "chat", HistorySize: 1000, HistoryTTL: time.Minute, Presence: true},
		}}
	}
	// Node A, run by hand so that it can be killed rather than shut down.
	brokerA := mk()
	nodeA, err := herald.New(cfg(brokerA))
	if err != nil {
		t.Fatal(err)
	}
	srvA := httptest.NewServer(nodeA.Handler())
	runCtx, stopRun := context.WithCancel(context.Background())
	runDone := make(chan struct{})
	go func() { defer close(runDone); _ = nodeA.Run(runCtx) }()
	nodeB, urlB := startGapNode(t, mk())
	_ = nodeB

	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	var mu sync.Mutex
	var got []uint64
	onPub := func(p client.Publication) { mu.Lock(); got = append(got, p.Offset); mu.Unlock() }
	ca := client.New("ws"+strings.TrimPrefix(srvA.URL, "http")+"/ws", client.Options{Backoff: client.Backoff{Min: time.Hour, Max: time.Hour}})
	defer ca.Close()
	if err := ca.Connect(ctx); err != nil {
		t.Fatal(err)
	}
	subA, err := ca.Subscribe(ctx, "chat:crash", client.SubscribeOptions{OnPublication: onPub})
	if err != nil {
		t.Fatal(err)
	}
	publish := func(n int) {
		for range n {
			if _, err := nodeB.Publish(ctx, "chat:crash", []byte(`1`)); err != nil {
				t.Fatal(err)
			}
		}
	}
	publish(10)
	waitUntil(t, "10 publications on node A", func() bool { mu.Lock(); defer mu.Unlock(); return len(got) == 10 })
	if st, err := nodeB.PresenceStats(ctx, "chat:crash"); err != nil || st.Clients != 1 {
		t.Fatalf("presence seen from node B before the crash: %+v %v", st, err)
	}

	// The crash: the broker goes first (so nothing is removed from Redis),
	// then the sockets, with no close handshake; Run stops.
	brokerA.Close()
	srvA.CloseClientConnections()
	srvA.Close()
	stopRun()
	<-runDone
	publish(15) // published while the client is between nodes

	// The client moves to node B and resubscribes from where it was.
	pos := subA.Position()
	cb := client.New(urlB+"/ws", client.Options{})
	defer cb.Close()
	if err := cb.Connect(ctx); err != nil {
		t.Fatal(err)
	}
	var mu2 sync.Mutex
	var recovered []uint64
	var failed []string
	if _, err := cb.Subscribe(ctx, "chat:crash", client.SubscribeOptions{
		Since:            &pos,
		OnPublication:    func(p client.Publication) { mu2.Lock(); recovered = append(recovered, p.Offset); mu2.Unlock() },
		OnRecoveryFailed: func(r string) { mu2.Lock(); failed = append(failed, r); mu2.Unlock() },
	}); err != nil {
		t.Fatal(err)
	}
	waitUntil(t, "15 recovered publications on node B", func() bool { mu2.Lock(); defer mu2.Unlock(); return len(recovered) >= 15 })
	mu2.Lock()
	for i, off := range recovered {
		if off != pos.Offset+uint64(i)+1 {
			t.Fatalf("recovered offsets %v after %d", recovered, pos.Offset)
		}
	}
	if len(failed) > 0 {
		t.Fatalf("recovery failed: %v", failed)
	}
	mu2.Unlock()

	// Node A's presence entry was never removed: it expires.
	waitUntil(t, "the dead node's presence entry to expire", func() bool {
		st, err := nodeB.PresenceStats(ctx, "chat:crash")
		return err == nil && st.Clients == 1 // only the client on node B
	})
	// Shut node A's node down for the leak check; its sockets are gone already.
	sctx, scancel := context.WithTimeout(context.Background(), time.Second)
	defer scancel()
	_ = nodeA.Shutdown(sctx)
}

func waitUntil(t *testing.T, what string, cond func() bool) {
	t.Helper()
	deadline := time.Now().Add(15 * time.Second)
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatalf("timed out waiting for %s", what)
		}
		time.Sleep(10 * time.Millisecond)
	}
}
