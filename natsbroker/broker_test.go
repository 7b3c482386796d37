package natsbroker_test

import (
	"context"
	"crypto/rand"
	"encoding/hex"
	"fmt"
	"log/slog"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"
	"go.uber.org/goleak"

	"github.com/heraldhq/herald"
	"github.com/heraldhq/herald/brokertest"
	"github.com/heraldhq/herald/internal/testenv"
	"github.com/heraldhq/herald/natsbroker"
)

func TestMain(m *testing.M) { goleak.VerifyTestMain(m) }

// natsURL returns the test server's URL, or skips the test when there is
// none (internal/testenv: HERALD_TEST_NATS, else 127.0.0.1:4222 with
// JetStream).
func natsURL(t testing.TB) string {
	t.Helper()
	return testenv.NATSURL(t)
}

var (
	runID    = randHex(4)
	prefixes sync.Map // testing.TB -> prefix: instances of one test share it
	seq      atomic.Uint64
)

func randHex(n int) string {
	b := make([]byte, n)
	_, _ = rand.Read(b)
	return hex.EncodeToString(b)
}

// prefix returns t's prefix, unique in the server; its stream and buckets
// are deleted when the test ends.
func prefix(t testing.TB) string {
	if p, ok := prefixes.Load(t); ok {
		return p.(string)
	}
	p := fmt.Sprintf("hrt_%s_%d", runID, seq.Add(1))
	prefixes.Store(t, p)
	u := natsURL(t)
	t.Cleanup(func() {
		prefixes.Delete(t)
		nc, err := nats.Connect(u)
		if err != nil {
			t.Error(err)
			return
		}
		defer nc.Close()
		js, _ := jetstream.New(nc)
		ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
		defer cancel()
		for _, s := range []string{p + "_history", "KV_" + p + "_idem", "KV_" + p + "_presence", p + "_events", "KV_" + p + "_eventstate"} {
			if err := js.DeleteStream(ctx, s); err != nil && !strings.Contains(err.Error(), "not found") {
				t.Errorf("cleanup: delete stream %s: %v", s, err)
			}
		}
	})
	return p
}

type testOpts struct {
	quiet       bool // no logs (benchmarks)
	presenceTTL time.Duration
	liveOnly    bool
}

func newBroker(t testing.TB, o testOpts) *natsbroker.Broker {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	b, err := natsbroker.New(ctx, natsbroker.Options{
		URL:               natsURL(t),
		Prefix:            prefix(t),
		Storage:           jetstream.MemoryStorage,
		PresenceTTL:       o.presenceTTL,
		IdempotencyWindow: 500 * time.Millisecond, // brokertest's IdempotencyWindow test uses 500ms
		LiveOnly:          o.liveOnly,
		Logger:            logger(t, o.quiet),
	})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(b.Close)
	return b
}

func logger(t testing.TB, quiet bool) *slog.Logger {
	if quiet {
		return nil
	}
	return slog.New(slog.NewTextHandler(tWriter{t}, nil))
}

type tWriter struct{ t testing.TB }

func (w tWriter) Write(p []byte) (int, error) {
	w.t.Log(strings.TrimSuffix(string(p), "\n"))
	return len(p), nil
}

func TestConformance(t *testing.T) {
	natsURL(t)
	brokertest.Run(t, func(t *testing.T) herald.Broker { return newBroker(t, testOpts{}) }, brokertest.MultiNode())
}

func TestPresenceConformance(t *testing.T) {
	natsURL(t)
	// Short for the test, long enough for a machine loaded by the whole
	// suite under -race: at 2s a refresh (every ttl/3) came late once in
	// CI, and a live node's own entry expired for a moment.
	const ttl = 4 * time.Second
	brokertest.RunPresence(t, func(t *testing.T) herald.PresenceManager {
		return newBroker(t, testOpts{presenceTTL: ttl})
	}, brokertest.PresenceTTL(ttl))
}

// TestCrossNode: two herald nodes joined by NATS, real WebSocket clients.
func TestCrossNode(t *testing.T) {
	natsURL(t)
	t.Parallel()
	brokertest.RunCrossNode(t, func(t *testing.T) herald.Broker { return newBroker(t, testOpts{}) })
}

// TestPipelinedPublish: publishes sent back to back (one at a time here:
// the NATS broker publishes no batches) get their replies and deliveries
// in order.
func TestPipelinedPublish(t *testing.T) {
	natsURL(t)
	t.Parallel()
	brokertest.RunPipelinedPublish(t, func(t *testing.T) herald.Broker { return newBroker(t, testOpts{}) })
}

// TestUnsubscribeUser: unsubscribing a user does not stall the broker's
// delivery (the node does not call the broker back on its goroutine).
func TestUnsubscribeUser(t *testing.T) {
	natsURL(t)
	t.Parallel()
	brokertest.RunUnsubscribeUser(t, func(t *testing.T) herald.Broker { return newBroker(t, testOpts{}) }, 6*time.Second)
}

// TestLiveSubscribe: fresh subscribers of a busy history channel are never
// told of an outage that did not happen.
func TestLiveSubscribe(t *testing.T) {
	natsURL(t)
	t.Parallel()
	brokertest.RunLiveSubscribe(t, func(t *testing.T) herald.Broker { return newBroker(t, testOpts{}) })
}

// TestOverflow: the namespace overflow policies with a slow subscriber.
func TestOverflow(t *testing.T) {
	natsURL(t)
	t.Parallel()
	brokertest.RunOverflow(t, func(t *testing.T) herald.Broker { return newBroker(t, testOpts{}) })
}

// TestLiveOnly: without JetStream, publications flow and history says why
// it cannot.
func TestLiveOnly(t *testing.T) {
	natsURL(t)
	t.Parallel()
	b := newBroker(t, testOpts{liveOnly: true})
	rec, _ := brokertest.Start(t, b)
	ctx := context.Background()
	if err := b.Subscribe(ctx, "live"); err != nil {
		t.Fatal(err)
	}
	if _, err := b.Publish(ctx, &herald.Publication{Channel: "live", Data: []byte("1")}, herald.PublishOptions{}); err != nil {
		t.Fatal(err)
	}
	rec.WaitPubs(t, "live", 1)
	if _, err := b.History(ctx, "live", herald.HistoryOptions{}); err != natsbroker.ErrNoJetStream {
		t.Errorf("History live-only: %v, want ErrNoJetStream", err)
	}
	if _, err := b.Publish(ctx, &herald.Publication{Channel: "live"}, herald.PublishOptions{HistorySize: 1}); err != natsbroker.ErrNoJetStream {
		t.Errorf("Publish with history live-only: %v, want ErrNoJetStream", err)
	}
	if err := b.Healthy(); err != nil {
		t.Errorf("Healthy: %v", err)
	}
}

func TestBadPrefix(t *testing.T) {
	if _, err := natsbroker.New(context.Background(), natsbroker.Options{Prefix: "a.b"}); err == nil {
		t.Fatal("New accepted a prefix with a dot")
	}
}
