package natsbroker_test

import (
	"context"
	"fmt"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"

	"github.com/heraldhq/herald"
	"github.com/heraldhq/herald/brokertest"
	"github.com/heraldhq/herald/internal/testserver"
	"github.com/heraldhq/herald/natsbroker"
)

// Servers of this package's own, on the ports its tests were given:
// clients 14200-14249, routes 16200-16249 (cmd/herald's tests take
// 14250-14299 and 16250-16299).
const (
	clientPorts, routePorts, portsSpan = 14200, 16200, 50
)

// TestClusterServerKilled: two nodes connected to different servers of a
// three-server NATS cluster, JetStream replicated three times; a server
// (node A's, or the one no node uses) is killed while both nodes publish. Nothing acknowledged is
// lost: each subscriber gets it live or recovers it after being told.
func TestClusterServerKilled(t *testing.T) {
	t.Parallel()
	// The server of node A, or the third one, which no node is connected
	// to (only stream leaders, perhaps, are lost).
	for _, victim := range []int{0, 2} {
		t.Run(fmt.Sprintf("server%d", victim), func(t *testing.T) { t.Parallel(); testServerKilled(t, victim) })
	}
}

func testServerKilled(t *testing.T, victim int) {
	base := testserver.PortBlock(t, clientPorts, clientPorts+portsSpan, 3, routePorts-clientPorts)
	srvs := testserver.NATSCluster(t, base, routePorts+(base-clientPorts), 3)
	p := prefixOwn(t)
	// Each node prefers its own server (no shuffling) and fails over to
	// the others.
	newAt := func(first int) func(t *testing.T) herald.Broker {
		return func(t *testing.T) herald.Broker {
			var urls []string
			for i := range srvs {
				urls = append(urls, "nats://"+srvs[(first+i)%len(srvs)].Addr())
			}
			return clusterBroker(t, strings.Join(urls, ","), p, 0)
		}
	}
	brokertest.RunServerKilled(t, newAt(0), newAt(1), srvs[victim].Kill)
}

// TestClusterConformance: the conformance suite on a three-server cluster,
// R3, each broker on another server: offsets stay unique and consecutive
// when two nodes publish to one channel at once (nats-server#4320), and
// history reads see every publish that returned.
func TestClusterConformance(t *testing.T) {
	base := testserver.PortBlock(t, clientPorts, clientPorts+portsSpan, 3, routePorts-clientPorts)
	srvs := testserver.NATSCluster(t, base, routePorts+(base-clientPorts), 3)
	var n atomic.Int64
	newB := func(t *testing.T) herald.Broker {
		first := int(n.Add(1))
		var urls []string
		for i := range srvs {
			urls = append(urls, "nats://"+srvs[(first+i)%len(srvs)].Addr())
		}
		return clusterBroker(t, strings.Join(urls, ","), prefixOwn(t), 0)
	}
	// Known weaknesses on a cluster (see the package documentation, "NATS
	// cluster"), seen in about one full package run in three under load:
	// a publication made on another node right after Subscribe returned
	// can be missed (the subscription's interest reaches the other servers
	// over routes asynchronously), and a presence read can miss an entry
	// just added (the watcher's consumer may sit on a lagging replica).
	const seam = "SubscribeThenPublishOtherNode"
	// The webhooks' outbox and presence first, each suite on its own (its
	// tests in parallel among themselves): run beside the others under
	// -race, the cluster once took more than 10 s to make the outbox's
	// stream and OneEventPerEdge failed on it.
	//
	// The webhooks' outbox, two nodes on two servers sharing it, the whole
	// suite: OneEventPerEdge (eight writers on one key) failed in 2 of 4
	// runs before a key state's read was asked again when it got no
	// answer (see reread).
	t.Run("EventStore", func(t *testing.T) {
		brokertest.RunEventStore(t, func(t *testing.T) (herald.EventStore, herald.EventStore) {
			p := prefixOwn(t)
			return clusterStore(t, srvs, 0, p), clusterStore(t, srvs, 1, p)
		})
	})
	// Presence, each manager on another server: ReadWhileRefreshed failed
	// in one run of three before Presence checked its watch against the
	// stream's list of keys.
	t.Run("Presence", func(t *testing.T) {
		const ttl = 4 * time.Second
		brokertest.RunPresence(t, func(t *testing.T) herald.PresenceManager {
			first := int(n.Add(1))
			var urls []string
			for i := range srvs {
				urls = append(urls, "nats://"+srvs[(first+i)%len(srvs)].Addr())
			}
			return clusterBroker(t, strings.Join(urls, ","), prefixOwn(t), ttl)
		}, brokertest.PresenceTTL(ttl))
	})
	t.Run("Broker", func(t *testing.T) {
		t.Parallel()
		brokertest.Run(t, newB, brokertest.MultiNode(),
			brokertest.Skip(seam, "interest propagates between NATS servers asynchronously"))
	})
	t.Run("CrossNode", func(t *testing.T) { t.Parallel(); brokertest.RunCrossNode(t, newB) })
}

// clusterStore is the event store of a broker on prefix p whose first
// server is srvs[first].
func clusterStore(t *testing.T, srvs []*testserver.Server, first int, p string) herald.EventStore {
	var urls []string
	for i := range srvs {
		urls = append(urls, "nats://"+srvs[(first+i)%len(srvs)].Addr())
	}
	return clusterBroker(t, strings.Join(urls, ","), p, 0).EventStore()
}

// clusterBroker makes a broker with replicated (R3) storage, retrying New
// while the cluster elects the stream's leader.
func clusterBroker(t *testing.T, url, p string, presenceTTL time.Duration) *natsbroker.Broker {
	t.Helper()
	deadline := time.Now().Add(30 * time.Second)
	for {
		ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
		b, err := natsbroker.New(ctx, natsbroker.Options{
			URL:         url,
			NATSOptions: []nats.Option{nats.DontRandomize()},
			Prefix:      p,
			Storage:     jetstream.FileStorage,
			Replicas:    3,
			PresenceTTL: presenceTTL,
			// Room for all that is published while node A is cut off
			// (seconds, while the streams elect new leaders), so that its
			// subscriber must recover it all.
			MaxHistorySize:    100000,
			IdempotencyWindow: 500 * time.Millisecond, // brokertest's IdempotencyWindow test uses 500ms
			Logger:            logger(t, false),
		})
		cancel()
		if err == nil {
			t.Cleanup(b.Close)
			return b
		}
		if time.Now().After(deadline) {
			t.Fatalf("natsbroker.New on the cluster: %v", err)
		}
		t.Logf("natsbroker.New on the cluster: %v; retrying", err)
		time.Sleep(200 * time.Millisecond)
	}
}

// prefixOwn is a prefix for servers the test started itself (they die
// with the test: nothing to delete).
func prefixOwn(t testing.TB) string {
	return "hrt_" + runID + "_c" + strings.ReplaceAll(t.Name(), "/", "_")
}
