package natsbroker_test

import (
	"testing"

	"github.com/heraldhq/herald"
	"github.com/heraldhq/herald/brokertest"
)

// BenchmarkPublish: see brokertest.BenchmarkPublish. Without history a
// Publish is a buffered core NATS publish (no round trip); with history it
// is a JetStream publish awaiting its ack (one round trip: this node's
// cache of the channel's last sequence spares the read, since no other
// node publishes here), serialised per channel on the node.
func BenchmarkPublish(b *testing.B) {
	brokertest.BenchmarkPublish(b, func(b *testing.B) herald.Broker { return newBroker(b, testOpts{quiet: true}) })
}
