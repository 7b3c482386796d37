package main

import (
	"errors"
	"fmt"
	"net/http"
	"os"
	"slices"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/gorilla/websocket"
)

// TestServeDrainSpread measures the drain: N real clients are connected,
// the server gets the equivalent of SIGTERM (run's context is cancelled),
// and each client records when its close frame arrives. Every client must
// get 1012, /readyz must fail from the start, and the closes must cover the
// window: every quarter of it gets some. The distribution is logged (go
// test -v), and docs/operations.md quotes it.
//
// HERALD_DRAIN_CLIENTS and HERALD_DRAIN_WINDOW change N (default 40) and
// the window (default 2s), for a bigger measurement by hand.
func TestServeDrainSpread(t *testing.T) {
	t.Parallel()
	n, window := 40, 2*time.Second
	if v, err := strconv.Atoi(os.Getenv("HERALD_DRAIN_CLIENTS")); err == nil && v > 0 {
		n = v
	}
	if v, err := time.ParseDuration(os.Getenv("HERALD_DRAIN_WINDOW")); err == nil && v > 0 {
		window = v
	}
	s := startServer(t, nil, "--drain-window", window.String(), "--shutdown-timeout", "10s")

	conns := make([]*websocket.Conn, n)
	for i := range conns {
		conns[i] = mustDialWS(t, "ws://"+s.addr+"/ws", nil)
		// A reply proves the node has registered the connection (its
		// reader runs): the handshake's response can reach the client
		// first, and a connection the drain does not know yet would be
		// closed by the shutdown instead, with 1001.
		call(t, conns[i], `{"id":1,"cmd":"ping"}`)
	}
	type closed struct {
		at   time.Duration
		code int
	}
	results := make([]closed, n)
	var wg sync.WaitGroup
	start := time.Now()
	for i, ws := range conns {
		wg.Go(func() {
			_ = ws.SetReadDeadline(time.Now().Add(window + 15*time.Second))
			for {
				if _, _, err := ws.ReadMessage(); err != nil {
					var ce *websocket.CloseError
					code := -1
					if errors.As(err, &ce) {
						code = ce.Code
					}
					results[i] = closed{time.Since(start), code}
					return
				}
			}
		})
	}
	s.cancel() // SIGTERM

	// Readiness fails at once, while the clients are still being told
	// (at once for the server: the test polls, as the signal is handled on
	// another goroutine).
	client := &http.Client{Transport: &http.Transport{DisableKeepAlives: true}, Timeout: 5 * time.Second}
	waitFor(t, "/readyz 503 while draining", func() bool {
		resp, err := client.Get("http://" + s.addr + "/readyz")
		if err != nil {
			t.Fatalf("GET /readyz while draining: %v", err)
		}
		resp.Body.Close()
		return resp.StatusCode == http.StatusServiceUnavailable
	})
	// A new client is refused while the others leave (once the node logs
	// that it drains, it refuses handshakes).
	waitFor(t, "the node to drain", func() bool { return strings.Contains(s.logs.String(), `"msg":"draining"`) })
	if _, resp, err := dialWS(t, "ws://"+s.addr+"/ws", nil); err == nil || resp == nil || resp.StatusCode != http.StatusServiceUnavailable {
		t.Errorf("dial while draining: %v, %v; want 503", err, resp)
	}

	wg.Wait()
	if err := s.stop(t); err != nil {
		t.Fatalf("run: %v\nlogs:\n%s", err, s.logs)
	}

	const bins = 8
	var hist [bins + 1]int // the last bin: after the window
	var first, last time.Duration = time.Hour, 0
	for i, r := range results {
		if r.code != websocket.CloseServiceRestart {
			t.Errorf("client %d: close code %d, want 1012", i, r.code)
		}
		first, last = min(first, r.at), max(last, r.at)
		b := min(int(r.at*bins/window), bins)
		hist[b]++
	}
	var quarters [4]int
	for b := range bins {
		quarters[b*4/bins] += hist[b]
	}
	var out strings.Builder
	fmt.Fprintf(&out, "drain of %d clients over %s: first close %s, last %s\n", n, window, first.Round(time.Millisecond), last.Round(time.Millisecond))
	widest := max(slices.Max(hist[:]), 1)
	for b := range bins {
		fmt.Fprintf(&out, "  %5s-%-5s %4d %s\n", (window * time.Duration(b) / bins).Round(time.Millisecond),
			(window * time.Duration(b+1) / bins).Round(time.Millisecond), hist[b], strings.Repeat("#", (hist[b]*40+widest-1)/widest))
	}
	// Closes are timed where the client reads them, so one told at the
	// very end of the window may land a few milliseconds after it.
	fmt.Fprintf(&out, "  after window %4d (up to %s late)\n", hist[bins], max(last-window, 0).Round(time.Millisecond))
	t.Log(out.String())
	for q, c := range quarters {
		if c == 0 {
			t.Errorf("no client was closed in quarter %d of the window", q+1)
		}
	}
	// Each client closes at a random time in its own slice of the window,
	// so the last one is late in the window, not at its start (a drain
	// that told everyone at once would end near 0).
	if last < window/2 {
		t.Errorf("last close at %s: the closes do not spread over the %s window", last, window)
	}
}
