package brokertest_test

import (
	"testing"

	"go.uber.org/goleak"

	"github.com/heraldhq/herald"
	"github.com/heraldhq/herald/brokertest"
)

func TestMain(m *testing.M) { goleak.VerifyTestMain(m) }

// The reference implementations pass their own suite; the multi-node and
// expiry tests skip, since each memory broker is a cluster of one.
func TestMemoryBroker(t *testing.T) {
	brokertest.Run(t, func(t *testing.T) herald.Broker { return herald.NewMemoryBroker() })
}

func TestMemoryPresence(t *testing.T) {
	brokertest.RunPresence(t, func(t *testing.T) herald.PresenceManager { return herald.NewMemoryPresence() })
}

func TestMemoryLiveSubscribe(t *testing.T) {
	brokertest.RunLiveSubscribe(t, func(t *testing.T) herald.Broker { return herald.NewMemoryBroker() })
}

func TestMemoryEventStore(t *testing.T) {
	brokertest.RunEventStore(t, func(t *testing.T) (herald.EventStore, herald.EventStore) {
		s := herald.NewMemoryEventStore()
		return s, s
	})
}

// Pipelined publishes on one node: the memory broker is a BatchPublisher,
// and a batch's replies go out in one write.
func TestMemoryPipelinedPublish(t *testing.T) {
	// The suite counts batches and writes only for a BatchPublisher.
	if _, ok := herald.Broker(herald.NewMemoryBroker()).(herald.BatchPublisher); !ok {
		t.Fatal("herald.MemoryBroker is not a herald.BatchPublisher: pipelined publishes get a write per reply")
	}
	brokertest.RunPipelinedPublishOneNode(t, func(t *testing.T) herald.Broker { return herald.NewMemoryBroker() })
}

func TestMemoryOverflow(t *testing.T) {
	brokertest.RunOverflow(t, func(t *testing.T) herald.Broker { return herald.NewMemoryBroker() })
}
