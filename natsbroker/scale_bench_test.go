package natsbroker_test

import (
	"context"
	"strconv"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"github.com/nats-io/nats.go/jetstream"

	"github.com/heraldhq/herald"
	"github.com/heraldhq/herald/brokertest"
	"github.com/heraldhq/herald/internal/testserver"
	"github.com/heraldhq/herald/natsbroker"
)

// BenchmarkPublishThrough measures publications with history (100 kept a
// minute, 64 bytes, file storage) per second through one nats-server
// (stream R1) and a three-server cluster (R3), of the benchmark's own:
// 16*GOMAXPROCS publishers over 1024 channels, each Publish waited for,
// the broker subscribed to every channel. It reports pubs/s, nats-cores
// (the CPU of the nats-server processes together, CPU seconds per second)
// and node-cores (this process, the publishing node). Ratios within one
// run on a shared machine:
//
//	go test -run '^$' -bench BenchmarkPublishThrough -benchtime 2s ./natsbroker
func BenchmarkPublishThrough(b *testing.B) {
	one := testserver.NATSAt(b, testserver.PortBlock(b, clientPorts+10, clientPorts+portsSpan, 1, 0))
	base := testserver.PortBlock(b, clientPorts+20, clientPorts+portsSpan, 3, routePorts-clientPorts)
	cluster := testserver.NATSCluster(b, base, base+routePorts-clientPorts, 3)
	var urls []string
	for _, s := range cluster {
		urls = append(urls, "nats://"+s.Addr())
	}
	for _, c := range []struct {
		name     string
		srvs     []*testserver.Server
		url      string
		replicas int
	}{
		{"one", []*testserver.Server{one}, "nats://" + one.Addr(), 1},
		{"cluster3-R3", cluster, strings.Join(urls, ","), 3},
	} {
		b.Run(c.name, func(b *testing.B) { benchThrough(b, c.srvs, c.url, c.replicas) })
	}
}

func benchThrough(b *testing.B, srvs []*testserver.Server, url string, replicas int) {
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
	defer cancel()
	br, err := natsbroker.New(ctx, natsbroker.Options{URL: url, Prefix: prefixOwn(b), Storage: jetstream.FileStorage, Replicas: replicas})
	if err != nil {
		b.Fatal(err)
	}
	b.Cleanup(br.Close)
	brokertest.Start(b, br)
	channels := make([]string, 1024)
	for i := range channels {
		channels[i] = "bench:" + strconv.Itoa(i)
		if err := br.Subscribe(ctx, channels[i]); err != nil {
			b.Fatal(err)
		}
	}
	data := make([]byte, 64)
	hist := herald.PublishOptions{HistorySize: 100, HistoryTTL: time.Minute}
	var next atomic.Int64
	srv0, _ := testserver.CPUSeconds(srvs...)
	self0, start := testserver.SelfCPU(), time.Now()
	b.ReportAllocs()
	b.SetParallelism(16)
	b.ResetTimer()
	b.RunParallel(func(pb *testing.PB) {
		i := int(next.Add(1))
		for pb.Next() {
			i += 17
			if _, err := br.Publish(context.Background(), &herald.Publication{Channel: channels[i%len(channels)], Data: data}, hist); err != nil {
				b.Error(err)
				return
			}
		}
	})
	b.StopTimer()
	sec := time.Since(start).Seconds()
	srv1, err := testserver.CPUSeconds(srvs...)
	if err != nil {
		b.Skipf("no CPU figures for the servers: %v", err)
	}
	b.ReportMetric(float64(b.N)/sec, "pubs/s")
	b.ReportMetric((srv1-srv0)/sec, "nats-cores")
	b.ReportMetric((testserver.SelfCPU()-self0)/sec, "node-cores")
}
