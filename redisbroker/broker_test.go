package redisbroker_test

import (
	"context"
	"crypto/rand"
	"encoding/hex"
	"fmt"
	"log/slog"
	"net/url"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/redis/rueidis"
	"go.uber.org/goleak"

	"github.com/heraldhq/herald"
	"github.com/heraldhq/herald/brokertest"
	"github.com/heraldhq/herald/internal/testenv"
	"github.com/heraldhq/herald/redisbroker"
)

// rueidis' cluster client refreshes its slot map after an error in a
// goroutine that first sleeps up to a second and that Close does not stop;
// it ends by itself (TestCluster/Outage leaves one).
func TestMain(m *testing.M) {
	goleak.VerifyTestMain(m, goleak.IgnoreAnyFunction("github.com/redis/rueidis.(*call).DelayDo.func1"))
}

// redisURL returns the test server's URL, or skips the test when there is
// none (internal/testenv: HERALD_TEST_REDIS, else 127.0.0.1:6379).
func redisURL(t testing.TB) string {
	t.Helper()
	return testenv.RedisURL(t)
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

// prefix returns t's key prefix, unique in the Redis server; its keys are
// deleted when the test ends.
func prefix(t testing.TB) string {
	if p, ok := prefixes.Load(t); ok {
		return p.(string)
	}
	p := fmt.Sprintf("hrt-%s-%d", runID, seq.Add(1))
	prefixes.Store(t, p)
	u := redisURL(t)
	t.Cleanup(func() {
		prefixes.Delete(t)
		deleteKeys(t, u, p)
	})
	return p
}

func deleteKeys(t testing.TB, u, p string) {
	opt, err := rueidis.ParseURL(u)
	if err != nil {
		t.Error(err)
		return
	}
	opt.DisableCache = true
	c, err := rueidis.NewClient(opt)
	if err != nil {
		t.Error(err)
		return
	}
	defer c.Close()
	ctx := context.Background()
	var cursor uint64
	for {
		e, err := c.Do(ctx, c.B().Scan().Cursor(cursor).Match(p+":*").Count(1000).Build()).AsScanEntry()
		if err != nil {
			t.Errorf("cleanup scan: %v", err)
			return
		}
		if len(e.Elements) > 0 {
			c.Do(ctx, c.B().Del().Key(e.Elements...).Build())
		}
		if cursor = e.Cursor; cursor == 0 {
			return
		}
	}
}

type testOpts struct {
	quiet       bool // no logs (benchmarks)
	presenceTTL time.Duration
	clientName  string
}

func newBroker(t testing.TB, o testOpts) *redisbroker.Broker {
	t.Helper()
	u := redisURL(t)
	if o.clientName != "" {
		pu, _ := url.Parse(u)
		q := pu.Query()
		q.Set("client_name", o.clientName)
		pu.RawQuery = q.Encode()
		u = pu.String()
	}
	b, err := redisbroker.New(redisbroker.Options{
		URL:         u,
		Prefix:      prefix(t),
		PresenceTTL: o.presenceTTL,
		Logger:      logger(t, o.quiet),
	})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(b.Close)
	return b
}

// tWriter sends logs to t.Log, and drops them once the test has ended.
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
	redisURL(t)
	brokertest.Run(t, func(t *testing.T) herald.Broker { return newBroker(t, testOpts{}) }, brokertest.MultiNode())
}

func TestPresenceConformance(t *testing.T) {
	redisURL(t)
	const ttl = 2 * time.Second // short for the test, long enough for a loaded machine
	brokertest.RunPresence(t, func(t *testing.T) herald.PresenceManager {
		return newBroker(t, testOpts{presenceTTL: ttl})
	}, brokertest.PresenceTTL(ttl))
}

// TestCrossNode: two herald nodes joined by Redis, real WebSocket clients.
func TestCrossNode(t *testing.T) {
	redisURL(t)
	t.Parallel()
	brokertest.RunCrossNode(t, func(t *testing.T) herald.Broker { return newBroker(t, testOpts{}) })
}

// TestPipelinedPublish: publishes sent back to back go to Redis in
// batches, with replies and deliveries in order.
func TestPipelinedPublish(t *testing.T) {
	redisURL(t)
	t.Parallel()
	brokertest.RunPipelinedPublish(t, func(t *testing.T) herald.Broker { return newBroker(t, testOpts{}) })
}

// TestUnsubscribeUser: unsubscribing a user does not stall the broker's
// delivery (the node does not call the broker back on its goroutine).
func TestUnsubscribeUser(t *testing.T) {
	redisURL(t)
	t.Parallel()
	brokertest.RunUnsubscribeUser(t, func(t *testing.T) herald.Broker { return newBroker(t, testOpts{}) }, 3*time.Second)
}

// TestLiveSubscribe: fresh subscribers of a busy history channel are never
// told of an outage that did not happen.
func TestLiveSubscribe(t *testing.T) {
	redisURL(t)
	t.Parallel()
	brokertest.RunLiveSubscribe(t, func(t *testing.T) herald.Broker { return newBroker(t, testOpts{}) })
}

// TestOverflow: the namespace overflow policies with a slow subscriber.
func TestOverflow(t *testing.T) {
	redisURL(t)
	t.Parallel()
	brokertest.RunOverflow(t, func(t *testing.T) herald.Broker { return newBroker(t, testOpts{}) })
}

// TestReconnect kills the broker's pub/sub connection from another
// connection (CLIENT KILL ID, found by the connection's name) and checks
// that Run reconnects, re-subscribes and delivers again.
func TestReconnect(t *testing.T) {
	u := redisURL(t)
	t.Parallel()
	name := "herald-reconnect-" + randHex(4)
	b := newBroker(t, testOpts{clientName: name})
	rec, _ := brokertest.Start(t, b)
	ch := "chat:reconnect"
	ctx := context.Background()
	if err := b.Subscribe(ctx, ch); err != nil {
		t.Fatal(err)
	}
	if err := b.Healthy(); err != nil {
		t.Fatalf("Healthy after Subscribe: %v", err)
	}

	opt, _ := rueidis.ParseURL(u)
	opt.DisableCache = true
	admin, err := rueidis.NewClient(opt)
	if err != nil {
		t.Fatal(err)
	}
	defer admin.Close()

	for round := range 3 {
		pubsubID := ""
		list, err := admin.Do(ctx, admin.B().ClientList().TypePubsub().Build()).ToString()
		if err != nil {
			t.Fatal(err)
		}
		for _, line := range strings.Split(list, "\n") {
			fields := map[string]string{}
			for _, f := range strings.Fields(line) {
				k, v, _ := strings.Cut(f, "=")
				fields[strings.TrimPrefix(k, "txt:")] = v
			}
			if fields["name"] == name {
				pubsubID = fields["id"]
			}
		}
		if pubsubID == "" {
			t.Fatalf("round %d: no pub/sub connection named %s in CLIENT LIST", round, name)
		}
		if err := admin.Do(ctx, admin.B().Arbitrary("CLIENT", "KILL", "ID", pubsubID).Build()).Error(); err != nil {
			t.Fatal(err)
		}
		// Publish until one arrives: those published while the connection
		// was down are lost (delivery is at most once), then it flows again.
		want := fmt.Sprintf("after-kill-%d", round)
		brokertest.Eventually(t, func() bool {
			if _, err := b.Publish(ctx, &herald.Publication{Channel: ch, Data: []byte(want)}, herald.PublishOptions{}); err != nil {
				t.Fatal(err)
			}
			time.Sleep(20 * time.Millisecond)
			for _, p := range rec.Pubs(ch) {
				if string(p.Data) == want {
					return true
				}
			}
			return false
		}, func() string { return "no publication delivered after the pub/sub connection was killed" })
		if err := b.Healthy(); err != nil {
			t.Errorf("Healthy after reconnect: %v", err)
		}
	}
}

// TestSubscribeWhileDown: Subscribe waits for the connection, and fails
// with ErrUnavailable when Run is not running at all.
func TestSubscribeWithoutRun(t *testing.T) {
	redisURL(t)
	t.Parallel()
	b, err := redisbroker.New(redisbroker.Options{URL: redisURL(t), Prefix: prefix(t), ConnectWait: 100 * time.Millisecond})
	if err != nil {
		t.Fatal(err)
	}
	defer b.Close()
	b.Register(brokertest.NewRecorder(t))
	if err := b.Subscribe(context.Background(), "x"); err == nil || !strings.Contains(err.Error(), redisbroker.ErrUnavailable.Error()) {
		t.Fatalf("Subscribe without Run: %v, want ErrUnavailable", err)
	}
	if b.Healthy() == nil {
		t.Fatal("Healthy without Run: nil")
	}
}

func TestBadPrefix(t *testing.T) {
	if _, err := redisbroker.New(redisbroker.Options{Prefix: "a{b}"}); err == nil {
		t.Fatal("New accepted a prefix with braces")
	}
}
