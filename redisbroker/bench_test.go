package redisbroker_test

import (
	"testing"

	"github.com/heraldhq/herald"
	"github.com/heraldhq/herald/brokertest"
)

// BenchmarkPublish: see brokertest.BenchmarkPublish. With Redis each
// Publish is one EVALSHA round trip; in parallel, rueidis pipelines the
// publishers' scripts on one connection.
func BenchmarkPublish(b *testing.B) {
	brokertest.BenchmarkPublish(b, func(b *testing.B) herald.Broker { return newBroker(b, testOpts{quiet: true}) })
}
