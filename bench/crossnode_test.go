package bench

import (
	"bytes"
	"context"
	"crypto/rand"
	"encoding/hex"
	"encoding/json"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"github.com/nats-io/nats.go/jetstream"

	"github.com/heraldhq/herald"
	"github.com/heraldhq/herald/bench/internal/brokerclean"
	"github.com/heraldhq/herald/internal/testenv"
	"github.com/heraldhq/herald/natsbroker"
	"github.com/heraldhq/herald/redisbroker"
)

// crossBrokers are the brokers the cross-node test runs through. Like the
// broker packages' own tests, it skips a broker that neither answers at its
// usual local address nor is named by its variable (internal/testenv);
// .ci/run sets both, so there a server that does not answer fails the test.
var crossBrokers = []struct {
	name      string
	url       func(t testing.TB) string
	newBroker func(t *testing.T, url, prefix string) herald.Broker
	clean     func(ctx context.Context, url, prefix string) (int, error)
}{
	{
		name: "redis", url: testenv.RedisURL,
		newBroker: func(t *testing.T, url, prefix string) herald.Broker {
			b, err := redisbroker.New(redisbroker.Options{URL: url, Prefix: prefix})
			if err != nil {
				t.Fatalf("redis broker at %s: %v", url, err)
			}
			t.Cleanup(b.Close)
			return b
		},
		clean: brokerclean.Redis,
	},
	{
		name: "nats", url: testenv.NATSURL,
		newBroker: func(t *testing.T, url, prefix string) herald.Broker {
			ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
			defer cancel()
			b, err := natsbroker.New(ctx, natsbroker.Options{URL: url, Prefix: prefix, Storage: jetstream.MemoryStorage})
			if err != nil {
				t.Fatalf("nats broker at %s: %v", url, err)
			}
			t.Cleanup(b.Close)
			return b
		},
		clean: brokerclean.NATS,
	},
}

// Two in-process nodes joined by a real broker: with every subscriber on
// node B and the publisher on node A, every delivery crosses the broker,
// and a low-rate run loses, repeats and reorders nothing; with -url
// listing both nodes the subscribers are spread over them.
func TestCrossNode(t *testing.T) {
	for _, bk := range crossBrokers {
		t.Run(bk.name, func(t *testing.T) {
			url := bk.url(t)
			rnd := make([]byte, 4)
			_, _ = rand.Read(rnd)
			prefix := "hbt_" + hex.EncodeToString(rnd) + "_" + bk.name
			t.Cleanup(func() {
				ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
				defer cancel()
				if _, err := bk.clean(ctx, url, prefix); err != nil {
					t.Errorf("cleanup: %v", err)
				}
			})
			var conns [2]atomic.Int64 // connections registered per node
			var urls [2]string
			for i := range urls {
				urls[i] = startNode(t, herald.Config{
					Broker:    bk.newBroker(t, url, prefix),
					OnConnect: func(herald.ClientInfo) { conns[i].Add(1) },
				})
			}
			a, b := urls[0], urls[1]
			ctx := context.Background()

			res, err := Run(ctx, Config{
				URL: b, PubURL: a, Channels: 2, Subscribers: 10, Label: "cross",
				Rates: []Rate{{PerSecond: 50}, {PerSecond: 100}}, StepDuration: time.Second, Drain: 3 * time.Second, OnTime: 5 * time.Second,
			})
			checkClean(t, res, err, 2)
			if res.Plan.Nodes != 2 || res.Plan.PubURL != a {
				t.Errorf("plan: nodes %d, pub_url %q; want 2 and %s", res.Plan.Nodes, res.Plan.PubURL, a)
			}
			if na, nb := conns[0].Load(), conns[1].Load(); na != 1 || nb != 20 {
				t.Errorf("connections: node A %d, node B %d; want 1 (the publisher) and 20 (the subscribers)", na, nb)
			}
			if s := res.Steps[1]; s.Expected != s.Published*10 || s.Target != 100 {
				t.Errorf("step 1: published %d of %d, expected %d deliveries", s.Published, s.Target, s.Expected)
			}

			// Subscribers spread over both nodes, each channel over both.
			res, err = Run(ctx, Config{
				URL: b + "," + a, PubURL: a, Channels: 2, Subscribers: 10, Label: "spread",
				Rates: []Rate{{PerSecond: 100}}, StepDuration: time.Second, Drain: 3 * time.Second, OnTime: 5 * time.Second,
			})
			checkClean(t, res, err, 1)
			if na, nb := conns[0].Load()-1, conns[1].Load()-20; na != 11 || nb != 10 {
				t.Errorf("connections of the spread run: node A %d, node B %d; want 11 (10 subscribers and the publisher) and 10", na, nb)
			}
		})
	}
}

func TestCrossNodeConfig(t *testing.T) {
	cfg := Config{URL: "ws://127.0.0.1:1/ws, ws://127.0.0.1:2/ws", PubURL: "ws://127.0.0.1:3/ws", Channels: 2, Subscribers: 4, PubMode: PubRaw}
	if err := cfg.applyDefaults(); err != nil {
		t.Fatal(err)
	}
	if cfg.nodes() != 3 || cfg.pubURL != "ws://127.0.0.1:3/ws" || cfg.pubRawURL != "ws://127.0.0.1:3/ws/raw" ||
		cfg.APIURL != "http://127.0.0.1:3/api/v1/publish" || len(cfg.subRawURLs) != 2 || cfg.subRawURLs[1] != "ws://127.0.0.1:2/ws/raw" || len(cfg.Sources) != 8 {
		t.Errorf("endpoints: %d nodes, pub %s %s %s, sub raw %v, %d sources", cfg.nodes(), cfg.pubURL, cfg.pubRawURL, cfg.APIURL, cfg.subRawURLs, len(cfg.Sources))
	}
	// Every channel's subscribers alternate between the nodes.
	perNode := map[[2]int]int{} // {channel, node} -> subscribers
	for i := range cfg.Channels * cfg.Subscribers {
		perNode[[2]int{i % cfg.Channels, cfg.subscriberNode(i)}]++
	}
	for c := range 2 {
		for n := range 2 {
			if perNode[[2]int{c, n}] != 2 {
				t.Errorf("channel %d has %d subscribers on node %d, want 2 (%v)", c, perNode[[2]int{c, n}], n, perNode)
			}
		}
	}

	// One URL: as before.
	one := Config{URL: "ws://127.0.0.1:1/ws"}
	if err := one.applyDefaults(); err != nil || one.nodes() != 1 || one.pubURL != one.URL || one.RawURL != "ws://127.0.0.1:1/ws/raw" {
		t.Errorf("one URL: %v, nodes %d, pub %s, raw %s", err, one.nodes(), one.pubURL, one.RawURL)
	}
	for _, bad := range []Config{
		{URL: "ws://127.0.0.1:1/ws,http://x/"},
		{URL: "ws://127.0.0.1:1/ws", PubURL: "ws://a:1/ws,ws://b:1/ws"},
		{URL: "ws://127.0.0.1:1/ws,ws://127.0.0.1:2/ws", RawURL: "ws://127.0.0.1:1/ws/raw"},
	} {
		if err := bad.applyDefaults(); err == nil {
			t.Errorf("accepted URL %q pub %q raw %q", bad.URL, bad.PubURL, bad.RawURL)
		}
	}

	p, err := ParsePIDs("12, 34")
	if err != nil || len(p) != 2 || p[1] != 34 {
		t.Errorf("ParsePIDs: %v %v", p, err)
	}
	if _, err := ParsePIDs("12,x"); err == nil {
		t.Error("bad pid accepted")
	}
}

// Several server pids: figures are sums, with each server's CPU.
func TestProbeSeveralServers(t *testing.T) {
	cfg := Config{ServerPID: os.Getpid(), ServerPIDs: []int{os.Getpid(), os.Getppid()}}
	pr := newServerProbe(&cfg)
	if pr.servers() != 2 {
		t.Fatalf("%d servers, want 2 (pids deduplicated)", pr.servers())
	}
	r, err := pr.sample(context.Background())
	if err != nil || !r.ok || len(r.cpuEach) != 2 || len(r.rssEach) != 2 || r.rss != r.rssEach[0]+r.rssEach[1] || r.rssEach[0] <= 0 {
		t.Errorf("sample: %+v %v", r, err)
	}
	one := newServerProbe(&Config{ServerPID: os.Getpid()})
	if r, err := one.sample(context.Background()); err != nil || !r.ok || r.cpuEach != nil {
		t.Errorf("one server: %+v %v", r, err)
	}
}

// summary -cross-only pairs each cross-node run with the single-node run
// of its pass and gives the p99 ratio per step.
func TestSummaryCross(t *testing.T) {
	dir := t.TempDir()
	t0 := time.Date(2026, 1, 2, 3, 4, 0, 0, time.UTC)
	write := func(name, label string, nodes int, started time.Duration, p99s ...float64) string {
		var b strings.Builder
		enc := json.NewEncoder(&b)
		_ = enc.Encode(PlanRecord{Type: "plan", Label: label, Scenario: "s3", Connections: 1001, Channels: 1, Subscribers: 1000, Nodes: nodes, Started: t0.Add(started).Format(time.RFC3339)})
		_ = enc.Encode(ConnectResult{Type: "connect", Connections: 1000})
		for i, p := range p99s {
			_ = enc.Encode(StepResult{Type: "step", Step: i, Rate: strconv.Itoa(100 * (i + 1)), Subscribers: 1000, Pass: true, DeliveredPerSec: 1e5, Latency: Latency{P99: p}})
		}
		_ = enc.Encode(SummaryRecord{Type: "summary", Label: label})
		path := filepath.Join(dir, name)
		if err := os.WriteFile(path, []byte(b.String()), 0o644); err != nil {
			t.Fatal(err)
		}
		return path
	}
	files := []string{
		write("a-ref-1.jsonl", "herald-1n", 1, 0, 10, 20),
		write("a-x-1.jsonl", "herald-redis-2n", 2, 40*time.Second, 15, 80),
		write("a-ref-2.jsonl", "herald-1n", 1, 100*time.Second, 20),
		write("a-x-2.jsonl", "herald-redis-2n", 2, 140*time.Second, 50, 90),
	}
	var out bytes.Buffer
	if err := Main(context.Background(), append([]string{"summary", "-cross-only"}, files...), &out); err != nil {
		t.Fatal(err)
	}
	s := out.String()
	for _, want := range []string{
		"| s3 | herald-redis-2n | herald-1n | 100 | 2/2 | 100000 (100000, 100000) | 0 (0, 0) | 32.5 (15.0, 50.0) | 15.0 (10.0, 20.0) | 2.00 (1.50, 2.50) |",
		"| s3 | herald-redis-2n | herald-1n | 200 | 2/2 | 100000 (100000, 100000) | 0 (0, 0) | 85.0 (80.0, 90.0) | 20.0 | 4.00 |",
	} {
		if !strings.Contains(s, want) {
			t.Errorf("summary lacks\n%s\n in:\n%s", want, s)
		}
	}
	if strings.Contains(s, "| scenario | server | runs |") {
		t.Errorf("-cross-only printed the other tables:\n%s", s)
	}
	out.Reset()
	if err := Main(context.Background(), append([]string{"summary"}, files...), &out); err != nil || !strings.Contains(out.String(), "p99 ratio") {
		t.Errorf("summary without -cross-only lacks the cross-node table: %v\n%s", err, out.String())
	}
}
