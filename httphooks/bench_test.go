package httphooks_test

import (
	"context"
	"fmt"
	"io"
	"net/http"
	"net/http/httptest"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/gorilla/websocket"

	"github.com/heraldhq/herald"
	"github.com/heraldhq/herald/httphooks"
	"github.com/heraldhq/herald/protocol"
)

// The cost of a hook on the connect and publish paths, with a backend that
// answers at once: no hook, a Go hook (herald.Hooks), and an HTTP hook
// (this package, to a backend on loopback that verifies the signature and
// allows). docs/benchmarks.md has the figures and the command:
//
//	go test -run '^$' -bench 'ConnectHook|PublishHook' -benchtime 3s -count 3 ./httphooks

// hookModes makes the node config of each mode.
func hookModes(b *testing.B) []struct {
	name  string
	hooks func() herald.Hooks
} {
	backend := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if _, err := httphooks.VerifyRequest(r, secret, 0); err != nil {
			http.Error(w, err.Error(), http.StatusUnauthorized)
			return
		}
		w.Header().Set("Content-Type", "application/json")
		_, _ = io.WriteString(w, `{"result":{}}`)
	}))
	b.Cleanup(backend.Close)
	return []struct {
		name  string
		hooks func() herald.Hooks
	}{
		{"none", func() herald.Hooks { return herald.Hooks{} }},
		{"go", func() herald.Hooks {
			return herald.Hooks{
				Connect: func(context.Context, *herald.ConnectEvent) (*herald.ConnectReply, error) { return nil, nil },
				Publish: func(context.Context, *herald.PublishEvent) (*herald.PublishReply, error) { return nil, nil },
			}
		}},
		{"http", func() herald.Hooks {
			ep := httphooks.Endpoint{URL: backend.URL}
			be, err := httphooks.New(httphooks.Config{Connect: ep, Publish: ep, Secret: secret})
			if err != nil {
				b.Fatal(err)
			}
			b.Cleanup(be.Close)
			return be.Hooks()
		}},
	}
}

func benchNode(b *testing.B, hooks herald.Hooks) string {
	b.Helper()
	n, err := herald.New(herald.Config{Hooks: hooks, Limits: herald.Limits{ConnectRatePerIP: -1}})
	if err != nil {
		b.Fatal(err)
	}
	mux := http.NewServeMux()
	mux.Handle("/ws", n.Handler())
	srv := httptest.NewServer(mux)
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan struct{})
	go func() { defer close(done); _ = n.Run(ctx) }()
	b.Cleanup(func() {
		_ = n.Shutdown(context.Background())
		cancel()
		<-done
		srv.Close()
	})
	return "ws" + strings.TrimPrefix(srv.URL, "http") + "/ws"
}

// connectOnce opens a herald.v1 connection, connects and closes it.
func connectOnce(url string) error {
	d := websocket.Dialer{Subprotocols: []string{protocol.Subprotocol}, HandshakeTimeout: 5 * time.Second}
	ws, _, err := d.Dial(url, nil)
	if err != nil {
		return err
	}
	defer ws.Close()
	if err := ws.WriteMessage(websocket.TextMessage, []byte(`{"id":1,"cmd":"connect"}`)); err != nil {
		return err
	}
	_ = ws.SetReadDeadline(time.Now().Add(5 * time.Second))
	_, msg, err := ws.ReadMessage()
	if err != nil {
		return err
	}
	if !strings.Contains(string(msg), `"result"`) {
		return fmt.Errorf("connect: %s", msg)
	}
	// A close handshake, so that the server closes the TCP connection
	// first and keeps its TIME_WAIT: thousands of them on the dialers'
	// ephemeral ports would slow down every later run.
	_ = ws.WriteControl(websocket.CloseMessage, websocket.FormatCloseMessage(websocket.CloseNormalClosure, ""), time.Now().Add(time.Second))
	for {
		if _, _, err := ws.ReadMessage(); err != nil {
			return nil
		}
	}
}

// BenchmarkConnectHook: connects per second (handshake, connect command
// and its reply), from 4 × GOMAXPROCS concurrent dialers.
func BenchmarkConnectHook(b *testing.B) {
	for _, mode := range hookModes(b) {
		b.Run(mode.name, func(b *testing.B) {
			url := benchNode(b, mode.hooks())
			b.SetParallelism(4) // 4 × GOMAXPROCS dialers
			b.ResetTimer()
			b.RunParallel(func(pb *testing.PB) {
				for pb.Next() {
					if err := connectOnce(url); err != nil {
						b.Error(err)
						return
					}
				}
			})
			b.ReportMetric(float64(b.N)/b.Elapsed().Seconds(), "connects/s")
		})
	}
}

// BenchmarkPublishHook: the latency of a client's publish, from the
// command to its reply, one at a time (p50 and p99 over every iteration).
func BenchmarkPublishHook(b *testing.B) {
	for _, mode := range hookModes(b) {
		b.Run(mode.name, func(b *testing.B) {
			url := benchNode(b, mode.hooks())
			d := websocket.Dialer{Subprotocols: []string{protocol.Subprotocol}}
			ws, _, err := d.Dial(url, nil)
			if err != nil {
				b.Fatal(err)
			}
			defer ws.Close()
			call := func(id int, cmd string) {
				if err := ws.WriteMessage(websocket.TextMessage, []byte(cmd)); err != nil {
					b.Fatal(err)
				}
				var r struct {
					ID    int             `json:"id"`
					Error *protocol.Error `json:"error"`
				}
				if err := ws.ReadJSON(&r); err != nil || r.ID != id || r.Error != nil {
					b.Fatalf("reply %+v %v", r, err)
				}
			}
			call(1, `{"id":1,"cmd":"connect"}`)
			lat := make([]time.Duration, 0, 1<<16)
			b.ResetTimer()
			id := 1
			for b.Loop() {
				id++
				t0 := time.Now()
				call(id, fmt.Sprintf(`{"id":%d,"cmd":"publish","channel":"bench","data":{"n":%d}}`, id, id))
				lat = append(lat, time.Since(t0))
			}
			b.StopTimer()
			slices.Sort(lat)
			q := func(p float64) float64 { return float64(lat[int(p*float64(len(lat)-1))].Microseconds()) }
			b.ReportMetric(q(0.5), "p50-µs")
			b.ReportMetric(q(0.99), "p99-µs")
		})
	}
}
