package main

import (
	"context"
	"crypto/rand"
	"encoding/hex"
	"net/http/httptest"
	"strings"
	"testing"
	"time"

	"go.uber.org/goleak"

	"github.com/heraldhq/herald/bench"
	"github.com/heraldhq/herald/bench/internal/brokerclean"
	"github.com/heraldhq/herald/internal/testenv"
)

// centrifuge unsubscribes a node from an emptied channel after a pause of
// about a second (time.Sleep in its dissolver's workers, which Shutdown does
// not interrupt): those, and only those, may outlive a test.
func TestMain(m *testing.M) {
	goleak.VerifyTestMain(m, goleak.IgnoreAnyFunction("github.com/centrifugal/centrifuge.(*Node).unsubscribeFromBrokerWhenEmpty.func1"))
}

// start serves a centrifuge node with o and returns its /ws URL.
func start(t *testing.T, o options) string {
	t.Helper()
	node, stop, err := newNode(o)
	if err != nil {
		t.Fatal(err)
	}
	ts := httptest.NewServer(handler(node))
	t.Cleanup(func() {
		ts.Close()
		ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
		defer cancel()
		stop(ctx)
	})
	return "ws" + strings.TrimPrefix(ts.URL, "http") + "/ws"
}

func checkSteps(t *testing.T, res *bench.Result, err error, steps int) {
	t.Helper()
	if err != nil {
		t.Fatal(err)
	}
	if len(res.Steps) != steps || res.Connect.Failed != 0 {
		t.Fatalf("%d steps, connect %+v", len(res.Steps), res.Connect)
	}
	for _, s := range res.Steps {
		if s.Lost != 0 || s.Dups != 0 || s.Reordered != 0 || s.SubscribersCut != 0 || s.PublishErrors != 0 ||
			s.Delivered != s.Expected || s.Expected == 0 || s.Published < s.Target*8/10 {
			t.Errorf("step %d: %+v", s.Step, s)
		}
	}
	if res.Summary.Malformed != 0 || res.Summary.Late != 0 {
		t.Errorf("summary: %+v", res.Summary)
	}
}

// herald-bench -proto centrifuge drives the memory engine: at a low rate
// nothing is lost, batched pushes included.
func TestBench(t *testing.T) {
	url := start(t, options{HistoryPrefix: "chat:"})
	res, err := bench.Run(context.Background(), bench.Config{
		URL: url, Protocol: bench.ProtoCentrifuge, Label: "centrifuge", Channels: 3, Subscribers: 10, Publishers: 2,
		Rates: []bench.Rate{{PerSecond: 50}, {PerSecond: 200}}, StepDuration: time.Second, Drain: 2 * time.Second, OnTime: 5 * time.Second,
	})
	checkSteps(t, res, err, 2)
}

// Churn with tokens: good ones connect, a wrong secret's are refused.
func TestChurn(t *testing.T) {
	const secret = "centrifuge-test-secret-0123456789abcdef"
	url := start(t, options{JWTSecret: []byte(secret)})
	res, err := bench.Run(context.Background(), bench.Config{
		URL: url, Protocol: bench.ProtoCentrifuge, Churn: true, JWTSecret: secret, Channels: 5,
		Rates: []bench.Rate{{PerSecond: 20}}, StepDuration: time.Second, OnTime: 5 * time.Second,
	})
	if err != nil {
		t.Fatal(err)
	}
	if s := res.Steps[0]; s.Cycles != s.Target || s.CyclesFailed != 0 || s.Target != 20 {
		t.Errorf("churn: %+v", s)
	}
	res, err = bench.Run(context.Background(), bench.Config{
		URL: url, Protocol: bench.ProtoCentrifuge, Churn: true, JWTSecret: secret + "x", Channels: 5,
		Rates: []bench.Rate{{PerSecond: 10}}, StepDuration: time.Second, OnTime: 5 * time.Second,
	})
	if err != nil {
		t.Fatal(err)
	}
	if s := res.Steps[0]; s.Cycles != 0 || s.CyclesFailed != s.Target || s.Pass {
		t.Errorf("wrong secret: %+v", s)
	}
}

// Two nodes on centrifuge's Redis engine (the real Redis): history
// channels, subscribers on both, publishers on one, nothing lost.
func TestRedisEngine(t *testing.T) {
	rurl := testenv.RedisURL(t)
	rnd := make([]byte, 4)
	_, _ = rand.Read(rnd)
	prefix := "hbt_" + hex.EncodeToString(rnd) + "_cf"
	t.Cleanup(func() {
		ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
		defer cancel()
		if _, err := brokerclean.Redis(ctx, rurl, prefix); err != nil {
			t.Errorf("cleanup: %v", err)
		}
	})
	o := options{RedisURL: rurl, RedisPrefix: prefix + ":", HistoryPrefix: "chat:"}
	a, b := start(t, o), start(t, o)
	res, err := bench.Run(context.Background(), bench.Config{
		URL: a + "," + b, PubURL: a, Protocol: bench.ProtoCentrifuge, ChannelPrefix: "chat:", Channels: 4, Subscribers: 6, Publishers: 2,
		Rates: []bench.Rate{{PerSecond: 50}, {PerSecond: 100}}, StepDuration: time.Second, Drain: 3 * time.Second, OnTime: 5 * time.Second,
	})
	checkSteps(t, res, err, 2)
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	if n, err := brokerclean.Redis(ctx, rurl, prefix); err != nil || n < 4 {
		t.Errorf("history keys in Redis: %d, %v; want one per channel at least", n, err)
	}
}
