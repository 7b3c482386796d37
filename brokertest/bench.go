package brokertest

import (
	"context"
	"strconv"
	"sync/atomic"
	"testing"
	"time"

	"github.com/heraldhq/herald"
)

// BenchmarkPublish measures Broker.Publish of a 64-byte publication to a
// channel the node subscribes to, until Publish returns (the backend has
// accepted it; delivery to the recording handler happens meanwhile and is
// not waited for), with allocations:
//   - NoHistory: one publisher, no history;
//   - History: one publisher, history of 100 kept a minute;
//   - HistoryParallel: 16*GOMAXPROCS publishers over 64 channels, history.
func BenchmarkPublish(b *testing.B, newBroker func(b *testing.B) herald.Broker) {
	data := make([]byte, 64)
	hist := herald.PublishOptions{HistorySize: 100, HistoryTTL: time.Minute}
	cases := []struct {
		name     string
		opts     herald.PublishOptions
		parallel bool
	}{
		{"NoHistory", herald.PublishOptions{}, false},
		{"History", hist, false},
		{"HistoryParallel", hist, true},
	}
	for _, c := range cases {
		b.Run(c.name, func(b *testing.B) {
			br := newBroker(b)
			Start(b, br)
			ctx := context.Background()
			channels := make([]string, 64)
			for i := range channels {
				channels[i] = "bench:" + strconv.Itoa(i)
				if err := br.Subscribe(ctx, channels[i]); err != nil {
					b.Fatal(err)
				}
			}
			b.ReportAllocs()
			b.SetBytes(int64(len(data)))
			if !c.parallel {
				for b.Loop() {
					if _, err := br.Publish(ctx, &herald.Publication{Channel: channels[0], Data: data}, c.opts); err != nil {
						b.Fatal(err)
					}
				}
				return
			}
			b.SetParallelism(16)
			var next atomic.Int64
			b.ResetTimer()
			b.RunParallel(func(pb *testing.PB) {
				ch := channels[int(next.Add(1))%len(channels)]
				for pb.Next() {
					if _, err := br.Publish(ctx, &herald.Publication{Channel: ch, Data: data}, c.opts); err != nil {
						b.Error(err)
						return
					}
				}
			})
		})
	}
}
