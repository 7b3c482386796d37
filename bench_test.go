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

// BenchmarkBroadcast measures one publication of a 128-byte payload to S
// subscribers on real loopback WebSocket connections, until every byte has
// reached every client socket. It reports deliveries per second; allocs/op
// are per publication (they must not grow with S), and allocs/delivery is
// the same count divided by S. (10,000 subscribers would need 20,000
// sockets in this one process, past this machine's file limit: the load
// generator's S4 covers 10,000.)
func BenchmarkBroadcast(b *testing.B) {
	for _, subs := range []int{100, 1000} {
		b.Run(fmt.Sprintf("subs=%d", subs), func(b *testing.B) {
			ts := newTestServer(b, Config{Logger: nopLogger(), MaxQueueMessages: 1 << 20, MaxQueueBytes: 1 << 30, ConnectRatePerIP: -1})
			var got atomic.Int64
			for range subs {
				c := ts.client(b)
				c.subscribe("bench")
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
			for b.Loop() {
				if _, err := ts.node.Publish(ctx, "bench", payload); err != nil {
					b.Fatal(err)
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
