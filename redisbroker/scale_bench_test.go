package redisbroker_test

import (
	"context"
	"strconv"
	"sync/atomic"
	"testing"
	"time"

	"github.com/heraldhq/herald"
	"github.com/heraldhq/herald/brokertest"
	"github.com/heraldhq/herald/internal/testserver"
	"github.com/heraldhq/herald/redisbroker"
)

// BenchmarkPublishThrough measures publications with history (100 kept a
// minute, 64 bytes) per second through one Redis, three standalone Redis
// servers as shards, and a Redis Cluster of three masters, all of the
// benchmark's own: 16*GOMAXPROCS publishers over 1024 channels, each
// Publish waited for, the broker subscribed to every channel (so Redis
// also delivers each publication once). Besides ns/op it reports pubs/s,
// the CPU the Redis processes used (redis-cores: CPU seconds per second,
// all of them together) and the CPU of this process, which is the
// publishing node (node-cores). Figures are ratios within one run on a
// shared machine:
//
//	go test -run '^$' -bench BenchmarkPublishThrough -benchtime 3s ./redisbroker
func BenchmarkPublishThrough(b *testing.B) {
	one := testserver.RedisAt(b, testserver.PortBlock(b, shardPorts, portsEnd, 1, 0))
	base := testserver.PortBlock(b, shardPorts+10, portsEnd, 3, 0)
	var shards []*testserver.Server
	for i := range 3 {
		shards = append(shards, testserver.RedisAt(b, base+i))
	}
	cluster := testserver.RedisCluster(b, testserver.PortBlock(b, clusterPorts, shardPorts, 3, 10000), 3)
	for _, c := range []struct {
		name string
		srvs []*testserver.Server
		opts redisbroker.Options
	}{
		{"one", []*testserver.Server{one}, redisbroker.Options{URL: "redis://" + one.Addr() + "/0"}},
		{"shards3", shards, redisbroker.Options{Shards: urls(shards)}},
		{"cluster3", cluster, redisbroker.Options{Cluster: urls(cluster[:1])}},
	} {
		b.Run(c.name, func(b *testing.B) { benchThrough(b, c.srvs, c.opts) })
	}
}

func benchThrough(b *testing.B, srvs []*testserver.Server, o redisbroker.Options) {
	o.Prefix = ownPrefix(b)
	br, err := redisbroker.New(o)
	if err != nil {
		b.Fatal(err)
	}
	b.Cleanup(br.Close)
	brokertest.Start(b, br)
	ctx := context.Background()
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
	redis0, self0, start := procCPU(b, srvs), testserver.SelfCPU(), time.Now()
	b.ReportAllocs()
	b.SetParallelism(16)
	b.ResetTimer()
	b.RunParallel(func(pb *testing.PB) {
		i := int(next.Add(1))
		for pb.Next() {
			i += 17
			if _, err := br.Publish(ctx, &herald.Publication{Channel: channels[i%len(channels)], Data: data}, hist); err != nil {
				b.Error(err)
				return
			}
		}
	})
	b.StopTimer()
	sec := time.Since(start).Seconds()
	b.ReportMetric(float64(b.N)/sec, "pubs/s")
	b.ReportMetric((procCPU(b, srvs)-redis0)/sec, "redis-cores")
	b.ReportMetric((testserver.SelfCPU()-self0)/sec, "node-cores")
}

func procCPU(b *testing.B, srvs []*testserver.Server) float64 {
	sec, err := testserver.CPUSeconds(srvs...)
	if err != nil {
		b.Skipf("no CPU figures for the servers: %v", err)
	}
	return sec
}
