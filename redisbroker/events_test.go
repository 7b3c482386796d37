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

	"github.com/redis/rueidis"

	"github.com/heraldhq/herald"
	"github.com/heraldhq/herald/brokertest"
	"github.com/heraldhq/herald/redisbroker"
)

// TestEventStoreConformance: two Brokers (two Redis clients, as two nodes
// have) on one prefix per subtest.
func TestEventStoreConformance(t *testing.T) {
	redisURL(t)
	brokertest.RunEventStore(t, func(t *testing.T) (herald.EventStore, herald.EventStore) {
		return newBroker(t, testOpts{}).EventStore(), newBroker(t, testOpts{}).EventStore()
	})
}

// rawClient is a plain client on the test server, to look at the keys the
// package documents.
func rawClient(t *testing.T) rueidis.Client {
	t.Helper()
	opt, err := rueidis.ParseURL(redisURL(t))
	if err != nil {
		t.Fatal(err)
	}
	opt.DisableCache = true
	c, err := rueidis.NewClient(opt)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(c.Close)
	return c
}

func offEvent(key string) *herald.Event {
	return &herald.Event{ID: "off/" + key + "/" + strconv.FormatInt(time.Now().UnixNano(), 36), Kind: "off", Key: key}
}

func onEvent(key string) *herald.Event {
	return &herald.Event{ID: "on/" + key + "/" + strconv.FormatInt(time.Now().UnixNano(), 36), Kind: "on", Key: key}
}

// outbox returns the outbox as "kind key" strings.
func outbox(t *testing.T, s herald.EventStore) []string {
	t.Helper()
	recs, err := s.Pending(context.Background(), 100000)
	if err != nil {
		t.Fatal(err)
	}
	out := make([]string, len(recs))
	for i, r := range recs {
		out[i] = r.Event.Kind + " " + r.Event.Key
	}
	return out
}

// waitExpired polls until node's beat has expired by Redis' clock (the
// documented beats zset), so that Reap takes it.
func waitExpired(t *testing.T, c rueidis.Client, p, node string) {
	t.Helper()
	ctx := context.Background()
	brokertest.Eventually(t, func() bool {
		score, err := c.Do(ctx, c.B().Zscore().Key(p+":{webhooks}:beats").Member(node).Build()).AsFloat64()
		if err != nil {
			t.Fatalf("beat of %s: %v", node, err)
		}
		tm, err := c.Do(ctx, c.B().Time().Build()).AsStrSlice()
		if err != nil {
			t.Fatal(err)
		}
		sec, _ := strconv.ParseInt(tm[0], 10, 64)
		usec, _ := strconv.ParseInt(tm[1], 10, 64)
		return float64(sec*1000+usec/1000) > score
	}, func() string { return node + "'s beat did not expire" })
}

func mustDo(t *testing.T, err error) {
	t.Helper()
	if err != nil {
		t.Fatal(err)
	}
}

// TestEventStoreReapConcurrentHold: while a dead node is reaped, another
// node holds one of its keys (so that key gets no off event) and the dead
// node holds a new one (so Reap must pick it up). Reaping is in chunks of
// two keys, so the changes land between scripts.
func TestEventStoreReapConcurrentHold(t *testing.T) {
	ctx := context.Background()
	b := newBroker(t, testOpts{})
	other := newBroker(t, testOpts{}).EventStore()
	var once sync.Once
	var hookErr error
	s := redisbroker.EventStoreForTest(b, 2, func(node string) {
		once.Do(func() {
			hookErr = other.Hold(ctx, "alive", "user:k1", onEvent("user:k1"))
			if hookErr == nil {
				hookErr = other.Hold(ctx, "dead", "user:k6", onEvent("user:k6"))
			}
		})
	})
	mustDo(t, s.Beat(ctx, "dead", time.Millisecond))
	for i := 1; i <= 5; i++ {
		k := fmt.Sprint("user:k", i)
		mustDo(t, s.Hold(ctx, "dead", k, onEvent(k)))
	}
	waitExpired(t, rawClient(t), prefix(t), "dead")

	nodes, err := s.Reap(ctx, "", offEvent)
	mustDo(t, err)
	mustDo(t, hookErr)
	if !slices.Equal(nodes, []string{"dead"}) {
		t.Fatalf("reaped %q, want [dead]", nodes)
	}
	got := outbox(t, s)
	wantOn := []string{"on user:k1", "on user:k2", "on user:k3", "on user:k4", "on user:k5", "on user:k6"}
	if len(got) != 11 || !slices.Equal(got[:6], wantOn) {
		t.Fatalf("outbox %q", got)
	}
	offs := slices.Sorted(slices.Values(got[6:]))
	if want := []string{"off user:k2", "off user:k3", "off user:k4", "off user:k5", "off user:k6"}; !slices.Equal(offs, want) {
		t.Fatalf("off events %q, want %q (none for user:k1, held by alive)", offs, want)
	}
	// alive holds user:k1 alone now: its release is the off edge.
	mustDo(t, other.Release(ctx, "alive", "user:k1", offEvent("user:k1")))
	if got := outbox(t, s); got[len(got)-1] != "off user:k1" {
		t.Fatalf("outbox %q", got)
	}
	if nodes, err := s.Reap(ctx, "", offEvent); err != nil || len(nodes) != 0 {
		t.Fatalf("second Reap: %q %v", nodes, err)
	}
}

// TestEventStoreReapRevived: a node that beats again while it is being
// reaped is left alone and reported as not reaped.
func TestEventStoreReapRevived(t *testing.T) {
	ctx := context.Background()
	b := newBroker(t, testOpts{})
	other := newBroker(t, testOpts{}).EventStore()
	var hookErr error
	s := redisbroker.EventStoreForTest(b, 2, func(node string) {
		hookErr = other.Beat(ctx, node, time.Minute)
	})
	mustDo(t, s.Beat(ctx, "slow", time.Millisecond))
	mustDo(t, s.Hold(ctx, "slow", "user:a", onEvent("user:a")))
	mustDo(t, s.Hold(ctx, "slow", "user:b", onEvent("user:b")))
	waitExpired(t, rawClient(t), prefix(t), "slow")
	nodes, err := s.Reap(ctx, "", offEvent)
	mustDo(t, err)
	mustDo(t, hookErr)
	if len(nodes) != 0 {
		t.Fatalf("reaped %q, want none: the node beat again", nodes)
	}
	if got := outbox(t, s); len(got) != 2 {
		t.Fatalf("outbox %q, want the two on events only", got)
	}
	// It still holds its keys.
	mustDo(t, s.Release(ctx, "slow", "user:a", offEvent("user:a")))
	if got := outbox(t, s); len(got) != 3 || got[2] != "off user:a" {
		t.Fatalf("outbox %q", got)
	}
}

// TestEventStoreTwoReapers: two nodes reap one dead node at once: one of
// them reports it, and each key gets exactly one off event.
func TestEventStoreTwoReapers(t *testing.T) {
	ctx := context.Background()
	a := redisbroker.EventStoreForTest(newBroker(t, testOpts{}), 5, nil)
	b := redisbroker.EventStoreForTest(newBroker(t, testOpts{}), 5, nil)
	mustDo(t, a.Beat(ctx, "dead", time.Millisecond))
	const n = 60
	for i := range n {
		k := fmt.Sprint("channel:c", i)
		mustDo(t, a.Hold(ctx, "dead", k, onEvent(k)))
	}
	waitExpired(t, rawClient(t), prefix(t), "dead")
	var wg sync.WaitGroup
	var results [2][]string
	var errs [2]error
	for i, s := range []herald.EventStore{a, b} {
		wg.Go(func() { results[i], errs[i] = s.Reap(ctx, "", offEvent) })
	}
	wg.Wait()
	mustDo(t, errs[0])
	mustDo(t, errs[1])
	if all := append(results[0], results[1]...); !slices.Equal(all, []string{"dead"}) {
		t.Fatalf("reapers reported %q and %q, want dead once", results[0], results[1])
	}
	got := outbox(t, a)
	offs := map[string]int{}
	for _, e := range got[n:] {
		offs[e]++
	}
	if len(got) != 2*n || len(offs) != n {
		t.Fatalf("%d events, %d distinct off events; want %d and %d: %q", len(got), len(offs), 2*n, n, got)
	}
}

// TestEventStoreKeys: the keys are the ones doc.go lists.
func TestEventStoreKeys(t *testing.T) {
	ctx := context.Background()
	s := newBroker(t, testOpts{}).EventStore()
	c, p := rawClient(t), prefix(t)
	mustDo(t, s.Hold(ctx, "n1", "user:ann", onEvent("user:ann")))
	mustDo(t, s.Beat(ctx, "n1", time.Minute))
	if ok, err := s.Lead(ctx, "n1", time.Minute); err != nil || !ok {
		t.Fatalf("Lead: %v %v", ok, err)
	}
	check := func(cmd rueidis.Completed, want string) {
		t.Helper()
		res := c.Do(ctx, cmd)
		var got string
		if arr, err := res.AsStrSlice(); err == nil {
			got = strings.Join(arr, ",")
		} else if got, err = res.ToString(); err != nil {
			t.Fatalf("%v: %v", cmd.Commands(), err)
		}
		if got != want {
			t.Errorf("%v: %q, want %q", cmd.Commands(), got, want)
		}
	}
	k := p + ":{webhooks}:"
	check(c.B().Smembers().Key(k+"k:user:ann").Build(), "n1")
	check(c.B().Smembers().Key(k+"n:n1").Build(), "user:ann")
	check(c.B().Zrange().Key(k+"beats").Min("0").Max("-1").Build(), "n1")
	check(c.B().Get().Key(k+"lead").Build(), "n1")
	entries, err := c.Do(ctx, c.B().Xrange().Key(k+"out").Start("-").End("+").Build()).AsXRange()
	if err != nil || len(entries) != 1 || !strings.Contains(entries[0].FieldValues["e"], `"key":"user:ann"`) {
		t.Fatalf("outbox stream: %v %+v", err, entries)
	}
}

// TestEventStoreBadInput: bad arguments and a foreign outbox entry get
// clear errors.
func TestEventStoreBadInput(t *testing.T) {
	ctx := context.Background()
	s := newBroker(t, testOpts{}).EventStore()
	errs := map[string]error{
		"Hold empty node":  s.Hold(ctx, "", "k", onEvent("k")),
		"Hold empty key":   s.Hold(ctx, "n", "", onEvent("k")),
		"Hold nil event":   s.Hold(ctx, "n", "k", nil),
		"Release nil":      s.Release(ctx, "n", "k", nil),
		"Append nil":       s.Append(ctx, onEvent("k"), nil),
		"Beat zero ttl":    s.Beat(ctx, "n", 0),
		"Ack bare number":  s.Ack(ctx, "12"),
		"Ack not an ID":    s.Ack(ctx, "x-1"),
		"Ack empty":        s.Ack(ctx, ""),
		"Ack negative seq": s.Ack(ctx, "1--1"),
	}
	_, errs["Lead zero ttl"] = s.Lead(ctx, "n", 0)
	_, errs["Lead empty node"] = s.Lead(ctx, "", time.Second)
	_, errs["Pending zero"] = s.Pending(ctx, 0)
	_, errs["Reap nil off"] = s.Reap(ctx, "", nil)
	for name, err := range errs {
		if err == nil {
			t.Errorf("%s: no error", name)
		} else if !strings.HasPrefix(err.Error(), "redisbroker: failed to") {
			t.Errorf("%s: %v", name, err)
		}
	}
	if got := outbox(t, s); len(got) != 0 {
		t.Fatalf("bad calls appended %q", got)
	}

	// The largest stream ID acks everything.
	mustDo(t, s.Append(ctx, onEvent("a"), onEvent("b")))
	mustDo(t, s.Ack(ctx, "18446744073709551615-18446744073709551615"))
	if got := outbox(t, s); len(got) != 0 {
		t.Fatalf("after acking the largest ID: %q", got)
	}

	c := rawClient(t)
	id, err := c.Do(ctx, c.B().Xadd().Key(prefix(t)+":{webhooks}:out").Id("*").FieldValue().FieldValue("e", "not json").Build()).ToString()
	mustDo(t, err)
	if _, err := s.Pending(ctx, 10); err == nil || !strings.Contains(err.Error(), id) {
		t.Fatalf("Pending with a foreign entry: %v, want an error naming %s", err, id)
	}
}
