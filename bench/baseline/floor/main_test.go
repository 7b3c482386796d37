//go:build unix

package main

import (
	"context"
	"net/http"
	"net/http/httptest"
	"strings"
	"testing"
	"time"

	"go.uber.org/goleak"

	"github.com/heraldhq/herald/bench"
)

func TestMain(m *testing.M) { goleak.VerifyTestMain(m) }

// herald-bench drives the floor probe like herald: at a low rate nothing is
// lost, with one writer and with more writers than subscribers' chunks.
func TestBench(t *testing.T) {
	for _, writers := range []int{1, 3} {
		s := newServer(writers)
		mux := http.NewServeMux()
		mux.HandleFunc("/ws", s.serveWS)
		ts := httptest.NewServer(mux)
		res, err := bench.Run(context.Background(), bench.Config{
			URL: "ws" + strings.TrimPrefix(ts.URL, "http") + "/ws", Label: "floor",
			Channels: 2, Subscribers: 10, Rates: []bench.Rate{{PerSecond: 50}, {PerSecond: 100}},
			StepDuration: time.Second, Drain: 2 * time.Second, OnTime: 5 * time.Second,
		})
		ts.Close()
		s.close()
		if err != nil {
			t.Fatal(err)
		}
		if len(res.Steps) != 2 {
			t.Fatalf("%d steps", len(res.Steps))
		}
		for _, st := range res.Steps {
			if st.Lost != 0 || st.Dups != 0 || st.SubscribersCut != 0 || st.Delivered != st.Expected || st.Expected == 0 || st.Published < st.Target*8/10 {
				t.Errorf("writers %d, step %d: %+v", writers, st.Step, st)
			}
		}
		if n := s.failed.Load(); n != 0 {
			t.Errorf("writers %d: %d failed writes", writers, n)
		}
	}
}
