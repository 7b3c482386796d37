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

// herald-bench drives the naive server like herald: at a low rate nothing
// is lost.
func TestBench(t *testing.T) {
	ts := httptest.NewServer(handler())
	defer ts.Close()
	res, err := bench.Run(context.Background(), bench.Config{
		URL: "ws" + strings.TrimPrefix(ts.URL, "http") + "/ws", Label: "naive",
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
