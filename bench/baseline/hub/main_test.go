package main

import (
	"context"
	"net/http/httptest"
	"strings"
	"testing"
	"time"

	"go.uber.org/goleak"

	"github.com/heraldhq/herald/bench"
)

func TestMain(m *testing.M) { goleak.VerifyTestMain(m) }

// herald-bench drives the hub server like herald: at a low rate nothing is
// lost.
func TestBench(t *testing.T) {
	ctx, cancel := context.WithCancel(context.Background())
	h := newHub()
	go h.run(ctx)
	ts := httptest.NewServer(handler(h))
	defer func() {
		ts.Close()
		cancel()
		<-h.done
	}()
	res, err := bench.Run(context.Background(), bench.Config{
		URL: "ws" + strings.TrimPrefix(ts.URL, "http") + "/ws", Label: "hub",
		Channels: 2, Subscribers: 10, Rates: []bench.Rate{{PerSecond: 50}, {PerSecond: 100}},
		StepDuration: time.Second, Drain: 2 * time.Second, OnTime: 5 * time.Second,
	})
	if err != nil {
		t.Fatal(err)
	}
	if len(res.Steps) != 2 {
		t.Fatalf("%d steps", len(res.Steps))
	}
	for _, s := range res.Steps {
		if s.Lost != 0 || s.Dups != 0 || s.SubscribersCut != 0 || s.Delivered != s.Expected || s.Expected == 0 || s.Published < s.Target*8/10 {
			t.Errorf("step %d: %+v", s.Step, s)
		}
	}
}

// With a secret, the hub takes herald.v1's connect: churn with good tokens
// passes, with a wrong secret every cycle is refused.
func TestChurn(t *testing.T) {
	const secret = "hub-test-secret-0123456789abcdef-0123"
	ctx, cancel := context.WithCancel(context.Background())
	h := newHub()
	h.secret = []byte(secret)
	go h.run(ctx)
	ts := httptest.NewServer(handler(h))
	defer func() {
		ts.Close()
		cancel()
		<-h.done
	}()
	url := "ws" + strings.TrimPrefix(ts.URL, "http") + "/ws"
	for _, c := range []struct {
		secret string
		ok     bool
	}{{secret, true}, {secret + "x", false}} {
		res, err := bench.Run(context.Background(), bench.Config{
			URL: url, Churn: true, JWTSecret: c.secret, Channels: 5,
			Rates: []bench.Rate{{PerSecond: 20}}, StepDuration: time.Second, OnTime: 5 * time.Second,
		})
		if err != nil {
			t.Fatal(err)
		}
		s := res.Steps[0]
		if c.ok && (s.Cycles != s.Target || s.CyclesFailed != 0 || s.Target != 20) || !c.ok && (s.Cycles != 0 || s.CyclesFailed != s.Target) {
			t.Errorf("secret ok=%v: %+v", c.ok, s)
		}
	}
}
