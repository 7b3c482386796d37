package herald

import (
	"context"
	"fmt"
	"io"
	"runtime"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"github.com/heraldhq/herald/protocol"
)

// countingReader counts the bytes a client socket receives, without parsing.
type countingReader struct{ n *atomic.Int64 }

func (r countingReader) Write(p []byte) (int, error) {
	r.n.Add(int64(len(p)))
	return len(p), nil
}

// waitBytes waits until n reaches want (for at most a minute).
func waitBytes(b *testing.B, n *atomic.Int64, want int64) {
	deadline := time.Now().Add(time.Minute)
	for n.Load() < want {
		if time.Now().After(deadline) {
			b.Fatalf("delivered %d bytes, want %d", n.Load(), want)
		}
		runtime.Gosched()
	}
}

// BenchmarkBroadcast measures one publication of a 128-byte payload to S
// subscribers on real loopback WebSocket connections, until every byte has
// reached every client socket. It reports deliveries per second; allocs/op
// are per publication (they must not grow with S), and allocs/delivery is
// the same count divided by S. (10,000 subscribers would need 20,000
// sockets in this one process, past this machine's file limit: the load
// generator's S4 covers 10,000.)
//
// Unpaced, publications come as fast as Publish returns, faster than the
// sockets drain: backlogs of hundreds of frames build up and queues grow to
// hold them. Paced, the next publication waits until the previous one has
// reached every client: the steady state of a server keeping up, where a
// broadcast allocates nothing per subscriber.
func BenchmarkBroadcast(b *testing.B) {
	for _, mode := range []struct {
		subs            int
		paced, webhooks bool
		overflow        OverflowPolicy
	}{{100, false, false, 0}, {1000, false, false, 0}, {100, true, false, 0}, {1000, true, false, 0}, {1000, true, true, 0},
		{1000, true, false, OverflowConflate}} {
		subs := mode.subs
		name := fmt.Sprintf("subs=%d", subs)
		if mode.paced {
			name += "/paced"
		}
		if mode.webhooks {
			name += "/webhooks"
		}
		if mode.overflow != OverflowDisconnect {
			// Queue metadata on every connection: the publication's
			// entry carries it, still nothing allocated per subscriber.
			name += "/" + mode.overflow.String()
		}
		b.Run(name, func(b *testing.B) {
			cfg := Config{Logger: nopLogger(), MaxQueueMessages: 1 << 20, MaxQueueBytes: 1 << 30, Limits: Limits{ConnectRatePerIP: -1}}
			if mode.webhooks {
				// Every kind of event on: the channel, its members and
				// its publications. What Publish sends out must cost
				// the same.
				cfg.Namespaces = []Namespace{{Name: "", Presence: true, ChannelEvents: true, MemberEvents: true, PublishEvents: true}}
				cfg.Webhooks = Webhooks{Users: true, Deliver: func(context.Context, []Event) error { return nil }}
			}
			if mode.overflow != OverflowDisconnect {
				cfg.Namespaces = []Namespace{{Name: "", Overflow: mode.overflow}}
			}
			ts := newTestServer(b, cfg)
			var got atomic.Int64
			for range subs {
				c := ts.client(b)
				c.subscribe("bench")
				// subscribe read with a deadline; the counting reader has none.
				_ = c.ws.NetConn().SetReadDeadline(time.Time{})
				go func() { _, _ = io.Copy(countingReader{&got}, c.ws.NetConn()) }()
			}
			payload := []byte(`"` + strings.Repeat("p", 126) + `"`)
			frameLen := int64(len(ts.node.encode(protocol.PushPub, "bench", 0, payload, false, formProtocol)))
			ctx := context.Background()
			start := got.Load()
			b.ReportAllocs()
			var ms runtime.MemStats
			runtime.ReadMemStats(&ms)
			mallocs := ms.Mallocs
			b.ResetTimer()
			sent := int64(0)
			for b.Loop() {
				if _, err := ts.node.Publish(ctx, "bench", payload); err != nil {
					b.Fatal(err)
				}
				sent++
				if mode.paced {
					waitBytes(b, &got, start+sent*int64(subs)*frameLen)
				}
			}
			want := start + int64(b.N)*int64(subs)*frameLen
			deadline := time.Now().Add(time.Minute)
			for got.Load() < want && time.Now().Before(deadline) {
				time.Sleep(100 * time.Microsecond)
			}
			b.StopTimer()
			runtime.ReadMemStats(&ms)
			b.ReportMetric(float64(ms.Mallocs-mallocs)/float64(b.N)/float64(subs), "allocs/delivery")
			if got.Load() < want {
				b.Fatalf("delivered %d of %d bytes", got.Load()-start, want-start)
			}
			b.ReportMetric(float64(b.N)*float64(subs)/b.Elapsed().Seconds(), "deliveries/s")
		})
	}
}
