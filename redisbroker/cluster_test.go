package redisbroker_test

import (
	"context"
	"fmt"
	"slices"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/heraldhq/herald"
	"github.com/heraldhq/herald/brokertest"
	"github.com/heraldhq/herald/internal/testserver"
	"github.com/heraldhq/herald/redisbroker"
)

// Servers of this package's own, on the ports its tests were given: a
// Cluster in 17000-17049 (bus ports +10000), shards in 17050-17079
// (cmd/herald's tests take 17080-17099).
const (
	clusterPorts, shardPorts, portsEnd = 17000, 17050, 17080
)

// ownPrefix is t's key prefix on servers the test started itself (no
// cleanup needed: they die with the test). Instances of one test share it.
var ownPrefixes sync.Map

func ownPrefix(t testing.TB) string {
	if p, ok := ownPrefixes.Load(t); ok {
		return p.(string)
	}
	p := fmt.Sprintf("hrt-%s-%d", runID, seq.Add(1))
	ownPrefixes.Store(t, p)
	t.Cleanup(func() { ownPrefixes.Delete(t) })
	return p
}

func urls(srvs []*testserver.Server) []string {
	out := make([]string, len(srvs))
	for i, s := range srvs {
		out[i] = "redis://" + s.Addr() + "/0"
	}
	return out
}

// shardSuite runs the conformance suites on brokers made by mk.
func shardSuite(t *testing.T, mk func(t *testing.T, o redisbroker.Options) *redisbroker.Broker) {
	newB := func(t *testing.T) herald.Broker { return mk(t, redisbroker.Options{}) }
	t.Run("Conformance", func(t *testing.T) { brokertest.Run(t, newB, brokertest.MultiNode()) })
	t.Run("Presence", func(t *testing.T) {
		const ttl = 4 * time.Second
		brokertest.RunPresence(t, func(t *testing.T) herald.PresenceManager {
			return mk(t, redisbroker.Options{PresenceTTL: ttl})
		}, brokertest.PresenceTTL(ttl))
	})
	t.Run("EventStore", func(t *testing.T) {
		brokertest.RunEventStore(t, func(t *testing.T) (herald.EventStore, herald.EventStore) {
			return mk(t, redisbroker.Options{}).EventStore(), mk(t, redisbroker.Options{}).EventStore()
		})
	})
	t.Run("CrossNode", func(t *testing.T) { brokertest.RunCrossNode(t, newB) })
}

// TestShards: the suites against three standalone servers sharing the
// channels (Options.Shards), and one server killed: only its channels'
// subscribers are told.
func TestShards(t *testing.T) {
	t.Parallel()
	base := testserver.PortBlock(t, shardPorts, portsEnd, 3, 0)
	var srvs []*testserver.Server
	for i := range 3 {
		srvs = append(srvs, testserver.RedisAt(t, base+i))
	}
	mk := func(t *testing.T, o redisbroker.Options) *redisbroker.Broker {
		o.Shards, o.Prefix, o.Logger = urls(srvs), ownPrefix(t), logger(t, false)
		b, err := redisbroker.New(o)
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(b.Close)
		return b
	}
	shardSuite(t, mk)
	t.Run("Spread", func(t *testing.T) {
		b := mk(t, redisbroker.Options{})
		counts := map[string]int{}
		for i := range 3000 {
			counts[b.ShardOf(fmt.Sprintf("room:%d", i))]++
		}
		for _, s := range srvs {
			if n := counts[s.Addr()+"/0"]; n < 800 || n > 1200 {
				t.Errorf("shard %s carries %d of 3000 channels, want about 1000 (%v)", s.Addr(), n, counts)
			}
		}
	})
	t.Run("DownAtStart", func(t *testing.T) {
		// A shard whose server is down does not stop New nor the others.
		dead := "redis://127.0.0.1:" + strconv.Itoa(testserver.PortBlock(t, shardPorts+20, portsEnd, 1, 0)) + "/0"
		b, err := redisbroker.New(redisbroker.Options{Shards: append(urls(srvs[:2]), dead), Prefix: ownPrefix(t), Logger: logger(t, false)})
		if err != nil {
			t.Fatalf("New with a shard down: %v", err)
		}
		t.Cleanup(b.Close)
		brokertest.Start(t, b)
		brokertest.Eventually(t, func() bool { return b.Healthy() == nil },
			func() string { return fmt.Sprintf("not healthy with two of three shards up: %v", b.ShardsHealth()) })
		ctx := context.Background()
		for i := 0; i < 50; i++ {
			ch := "chat:" + strconv.Itoa(i)
			_, err := b.Publish(ctx, &herald.Publication{Channel: ch, Data: []byte("x")}, herald.PublishOptions{HistorySize: 10, HistoryTTL: time.Minute})
			if onDead := strings.HasSuffix(dead, b.ShardOf(ch)); onDead != (err != nil) {
				t.Fatalf("publish to %s (on the dead shard: %v): %v", ch, onDead, err)
			}
		}
	})
	t.Run("ControlWithoutFirstShard", func(t *testing.T) {
		b := mk(t, redisbroker.Options{})
		rec, _ := brokertest.Start(t, b)
		controlWithout(t, b, rec, srvs[0], srvs[0].Addr()+"/0")
	})
	t.Run("Outage", func(t *testing.T) {
		b := mk(t, redisbroker.Options{})
		victim := srvs[1]
		brokertest.RunShardOutage(t, func(t *testing.T) herald.Broker { return b }, victim,
			func(ch string) bool { return b.ShardOf(ch) == victim.Addr()+"/0" })
	})
}

// TestCluster: the suites against a Redis Cluster of three masters.
func TestCluster(t *testing.T) {
	t.Parallel()
	// Five ports: three masters, a replica for Failover and a master
	// added by AddMaster.
	base := testserver.PortBlock(t, clusterPorts, shardPorts, 5, 10000)
	nodes := testserver.RedisCluster(t, base, 3)
	mk := func(t *testing.T, o redisbroker.Options) *redisbroker.Broker {
		o.Cluster, o.Prefix, o.Logger = urls(nodes[:1]), ownPrefix(t), logger(t, false)
		b, err := redisbroker.New(o)
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(b.Close)
		return b
	}
	shardSuite(t, mk)
	t.Run("Masters", func(t *testing.T) {
		b := mk(t, redisbroker.Options{})
		if n := len(b.ShardsHealth()); n != 3 {
			t.Fatalf("%d shards, want one per master (3)", n)
		}
	})
	t.Run("Reshard", func(t *testing.T) { testReshard(t, nodes, mk(t, redisbroker.Options{})) })
	t.Run("Outage", func(t *testing.T) {
		b := mk(t, redisbroker.Options{})
		victim := nodes[1]
		name := fmt.Sprintf("slot %d", testserver.FirstSlot(t, victim))
		brokertest.RunShardOutage(t, func(t *testing.T) herald.Broker { return b }, victim,
			func(ch string) bool { return b.ShardOf(ch) == name })
	})
	// Control messages keep coming while the first master (whose link
	// hands them on while it is up) is down.
	t.Run("ControlWithoutFirstMaster", func(t *testing.T) {
		b := mk(t, redisbroker.Options{})
		rec, _ := brokertest.Start(t, b)
		var first *testserver.Server
		for _, n := range nodes {
			if testserver.FirstSlot(t, n) == 0 {
				first = n
			}
		}
		controlWithout(t, b, rec, first, "slot 0")
	})
	t.Run("Failover", func(t *testing.T) { testFailover(t, nodes, base+3, mk(t, redisbroker.Options{})) })
	// Last: it leaves a fourth master with a slot, killed when it ends.
	t.Run("AddMaster", func(t *testing.T) {
		testAddMaster(t, nodes, base+4, mk(t, redisbroker.Options{}), mk(t, redisbroker.Options{}))
	})
}

// controlWithout kills srv, whose shard is named name, and checks that
// control messages still reach the node through the other shards.
func controlWithout(t *testing.T, b *redisbroker.Broker, rec *brokertest.Recorder, srv *testserver.Server, name string) {
	brokertest.Eventually(t, func() bool { return b.ShardsHealth()[name] == nil },
		func() string { return fmt.Sprintf("shards: %v", b.ShardsHealth()) })
	srv.Kill()
	t.Cleanup(func() { srv.Start(true) })
	brokertest.Eventually(t, func() bool { return b.ShardsHealth()[name] != nil },
		func() string { return "the loss of " + name + " not noticed" })
	msg := []byte("control-" + randHex(4))
	brokertest.Eventually(t, func() bool {
		ctx, cancel := context.WithTimeout(context.Background(), time.Second)
		defer cancel()
		_ = b.PublishControl(ctx, msg) // may go to the dead server first: retried
		time.Sleep(20 * time.Millisecond)
		for _, c := range rec.Controls() {
			if string(c) == string(msg) {
				return true
			}
		}
		return false
	}, func() string { return "no control message delivered while " + name + " is down" })
}

// testReshard moves the slot of a subscribed channel with history from the
// last master to the first one while the broker runs: its publications
// reach the node again from the new master, and its history moved with
// its keys (same epoch, consecutive offsets).
func testReshard(t *testing.T, nodes []*testserver.Server, b *redisbroker.Broker) {
	rec, _ := brokertest.Start(t, b)
	var first, last *testserver.Server
	for _, n := range nodes {
		switch fs := testserver.FirstSlot(t, n); {
		case fs == 0:
			first = n
		case last == nil || fs > testserver.FirstSlot(t, last):
			last = n
		}
	}
	lastName := fmt.Sprintf("slot %d", testserver.FirstSlot(t, last))
	ch := ""
	for i := 0; ch == ""; i++ {
		c := "chat:reshard-" + strconv.Itoa(i)
		if b.ShardOf(c) == lastName && redisbroker.SlotOf(c) != testserver.FirstSlot(t, last) {
			ch = c
		}
	}
	ctx := context.Background()
	hist := herald.PublishOptions{HistorySize: 1000, HistoryTTL: time.Minute}
	if err := b.Subscribe(ctx, ch); err != nil {
		t.Fatal(err)
	}
	res, err := b.Publish(ctx, &herald.Publication{Channel: ch, Data: []byte("before")}, hist)
	if err != nil {
		t.Fatal(err)
	}
	rec.WaitPubs(t, ch, 1)

	testserver.MoveSlot(t, nodes, redisbroker.SlotOf(ch), last, first)
	publishUntilDelivered(t, b, rec, ch)
	if got, want := b.ShardOf(ch), "slot 0"; got != want {
		t.Errorf("channel on shard %q after the move, want %q", got, want)
	}
	checkHistoryMoved(t, b, ch, res)
}

// lastMaster returns the master with the highest first slot, and a channel
// it serves whose slot is not that first one.
func lastMaster(t *testing.T, nodes []*testserver.Server, b *redisbroker.Broker) (*testserver.Server, string) {
	var last *testserver.Server
	for _, n := range nodes {
		if fs := testserver.FirstSlot(t, n); fs > 0 && (last == nil || fs > testserver.FirstSlot(t, last)) {
			last = n
		}
	}
	name := fmt.Sprintf("slot %d", testserver.FirstSlot(t, last))
	for i := 0; ; i++ {
		c := "chat:" + randHex(3) + "-" + strconv.Itoa(i)
		if b.ShardOf(c) == name && redisbroker.SlotOf(c) != testserver.FirstSlot(t, last) {
			return last, c
		}
	}
}

// channelInSlot returns a new channel name whose slot is slot.
func channelInSlot(slot int) string {
	for i := 0; ; i++ {
		if c := "chat:same-slot-" + strconv.Itoa(i); redisbroker.SlotOf(c) == slot {
			return c
		}
	}
}

// publishUntilDelivered publishes "after-N" to ch through b until one of
// them reaches rec (a channel that just moved is delivered again once its
// shard has subscribed it where it is now).
func publishUntilDelivered(t *testing.T, b *redisbroker.Broker, rec *brokertest.Recorder, ch string) {
	t.Helper()
	ctx := context.Background()
	hist := herald.PublishOptions{HistorySize: 1000, HistoryTTL: time.Minute}
	i := 0
	brokertest.Eventually(t, func() bool {
		i++
		if _, err := b.Publish(ctx, &herald.Publication{Channel: ch, Data: []byte("after-" + strconv.Itoa(i))}, hist); err != nil {
			t.Logf("publish after the move: %v", err)
		}
		time.Sleep(20 * time.Millisecond)
		for _, p := range rec.Pubs(ch) {
			if strings.HasPrefix(string(p.Data), "after-") {
				return true
			}
		}
		return false
	}, func() string { return "nothing of " + ch + " delivered from its new master" })
}

// checkHistoryMoved checks that ch's history, whose first publication was
// first, moved with its slot: same epoch, consecutive offsets.
func checkHistoryMoved(t *testing.T, b *redisbroker.Broker, ch string, first herald.PublishResult) {
	t.Helper()
	res := first
	h, err := b.History(context.Background(), ch, herald.HistoryOptions{Limit: -1})
	if err != nil {
		t.Fatal(err)
	}
	if h.Position.Epoch != res.Epoch || len(h.Publications) < 2 || string(h.Publications[0].Data) != "before" {
		t.Fatalf("history after the move: epoch %q (want %q), %d publications, first %q", h.Position.Epoch, res.Epoch, len(h.Publications), h.Publications[0].Data)
	}
	for k, p := range h.Publications {
		if p.Offset != res.Offset+uint64(k) {
			t.Fatalf("offset %d at %d, want consecutive from %d", p.Offset, k, res.Offset)
		}
	}
}

// testAddMaster adds a fourth master to the running cluster and moves the
// slot of a subscribed channel with history to it. b, subscribed before,
// gets a shard for the new master and delivers the channel again from
// there; other, started before the move and subscribing only after it,
// is answered MOVED by the old master and subscribes on the new one. No
// node restarts, and the history moved with the slot.
func testAddMaster(t *testing.T, nodes []*testserver.Server, port int, b, other *redisbroker.Broker) {
	rec, _ := brokertest.Start(t, b)
	otherRec, _ := brokertest.Start(t, other)
	from, ch := lastMaster(t, nodes, b)
	ctx := context.Background()
	if err := b.Subscribe(ctx, ch); err != nil {
		t.Fatal(err)
	}
	res, err := b.Publish(ctx, &herald.Publication{Channel: ch, Data: []byte("before")}, herald.PublishOptions{HistorySize: 1000, HistoryTTL: time.Minute})
	if err != nil {
		t.Fatal(err)
	}
	rec.WaitPubs(t, ch, 1)
	if n := len(b.ShardsHealth()); n != 3 {
		t.Fatalf("%d shards before the master is added, want 3", n)
	}

	added := testserver.AddClusterMaster(t, nodes, port)
	slot := redisbroker.SlotOf(ch)
	testserver.MoveSlot(t, append(slices.Clone(nodes), added), slot, from, added)

	publishUntilDelivered(t, b, rec, ch)
	name := fmt.Sprintf("slot %d", slot) // the new master's first slot, which no shard had at New
	if got := b.ShardOf(ch); got != name {
		t.Errorf("channel on shard %q after the move, want %q (shards: %v)", got, name, b.ShardsHealth())
	}
	if h := b.ShardsHealth(); len(h) != 4 || h[name] != nil {
		t.Errorf("shards after the move: %v, want four, %q up", h, name)
	}
	checkHistoryMoved(t, b, ch, res)

	// A channel in the moved slot that other subscribes to only now: the
	// old master answers MOVED, and other subscribes on the new one.
	ch2 := channelInSlot(slot)
	if err := other.Subscribe(ctx, ch2); err != nil {
		t.Fatalf("subscribe to %s, whose slot moved to the added master: %v", ch2, err)
	}
	if got := other.ShardOf(ch2); got != name {
		t.Errorf("%s on shard %q of the other broker, want %q", ch2, got, name)
	}
	if _, err := b.Publish(ctx, &herald.Publication{Channel: ch2, Data: []byte("to-other")}, herald.PublishOptions{}); err != nil {
		t.Fatal(err)
	}
	otherRec.WaitPubs(t, ch2, 1)
}

// testFailover gives the last master a replica and fails over to it while
// a channel with history is subscribed: the master's shard follows the
// replica (no new shard), delivers the channel again from it, and the
// history is whole. Then it fails back, so that the cluster is as before.
func testFailover(t *testing.T, nodes []*testserver.Server, port int, b *redisbroker.Broker) {
	rec, _ := brokertest.Start(t, b)
	master, ch := lastMaster(t, nodes, b)
	name := b.ShardOf(ch)
	replica := testserver.AddClusterReplica(t, nodes, port, master)
	ctx := context.Background()
	if err := b.Subscribe(ctx, ch); err != nil {
		t.Fatal(err)
	}
	res, err := b.Publish(ctx, &herald.Publication{Channel: ch, Data: []byte("before")}, herald.PublishOptions{HistorySize: 1000, HistoryTTL: time.Minute})
	if err != nil {
		t.Fatal(err)
	}
	rec.WaitPubs(t, ch, 1)

	for i, to := range []*testserver.Server{replica, master} { // over, then back
		testserver.Failover(t, to)
		before := len(rec.Pubs(ch))
		brokertest.Eventually(t, func() bool {
			_, err := b.Publish(ctx, &herald.Publication{Channel: ch, Data: []byte("after-" + strconv.Itoa(i))}, herald.PublishOptions{HistorySize: 1000, HistoryTTL: time.Minute})
			if err != nil {
				t.Logf("publish after the failover to %s: %v", to, err)
			}
			time.Sleep(20 * time.Millisecond)
			return len(rec.Pubs(ch)) > before
		}, func() string { return "nothing delivered after the failover to " + to.String() })
		if got := b.ShardOf(ch); got != name {
			t.Errorf("channel on shard %q after the failover to %s, want %q", got, to, name)
		}
		if h := b.ShardsHealth(); len(h) != 3 {
			t.Errorf("shards after the failover to %s: %v, want the same three", to, h)
		}
	}
	checkHistoryMoved(t, b, ch, res)
}
