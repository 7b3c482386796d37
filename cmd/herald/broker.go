package main

import (
	"context"
	"fmt"
	"log/slog"
	"strings"
	"time"

	"github.com/heraldhq/herald"
	"github.com/heraldhq/herald/natsbroker"
	"github.com/heraldhq/herald/redisbroker"
)

// brokerConnectTimeout bounds connecting to NATS and setting up its stream
// and buckets at start, so that a server that cannot reach NATS says so
// instead of hanging. (Redis connects lazily, /readyz tells; but a Redis
// Cluster is asked for its masters at start.)
const brokerConnectTimeout = 10 * time.Second

// newBroker builds the broker the configuration names, and the function
// that closes it once the node has stopped. For memory it returns nil: the
// node then makes its own in-memory broker.
//
// Both Redis and NATS brokers implement herald.PresenceManager (so presence
// spans the nodes) and herald.HealthChecker (so /readyz fails while the
// broker's connection is down); the node runs them from node.Run.
func (c *Config) newBroker(ctx context.Context, logger *slog.Logger) (herald.Broker, func(), error) {
	log := logger.With("broker", c.Broker)
	switch c.Broker {
	case "redis":
		o := redisbroker.Options{Prefix: c.BrokerPrefix, PingTimeout: c.RedisPingTimeout, Logger: log}
		urls := strings.Split(c.redisURL(), ",")
		for i := range urls {
			urls[i] = strings.TrimSpace(urls[i])
		}
		mode := "standalone"
		switch {
		case c.RedisCluster:
			o.Cluster, mode = urls, "cluster"
		case len(urls) > 1:
			o.Shards, mode = urls, "shards"
		default:
			o.URL = urls[0]
		}
		b, err := redisbroker.New(o)
		if err != nil {
			return nil, nil, fmt.Errorf("failed to set up the redis broker (%s): %w", redactURLs(c.redisURL()), err)
		}
		log.Info("broker", "url", redactURLs(c.redisURL()), "mode", mode, "shards", len(b.ShardsHealth()), "prefix", c.BrokerPrefix)
		return b, b.Close, nil
	case "nats":
		cctx, cancel := context.WithTimeout(ctx, brokerConnectTimeout)
		defer cancel()
		b, err := natsbroker.New(cctx, natsbroker.Options{URL: c.natsURL(), Prefix: c.BrokerPrefix, PingInterval: c.NATSPingInterval, Replicas: c.NATSReplicas, Logger: log})
		if err != nil {
			return nil, nil, fmt.Errorf("failed to set up the nats broker (%s): %w", redactURLs(c.natsURL()), err)
		}
		log.Info("broker", "url", redactURLs(c.natsURL()), "prefix", c.BrokerPrefix)
		return b, b.Close, nil
	}
	logger.Info("broker", "broker", "memory", "note", "this node alone: run several with broker redis or nats")
	return nil, func() {}, nil
}
