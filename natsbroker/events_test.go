package natsbroker_test

import (
	"context"
	"errors"
	"fmt"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"

	"github.com/heraldhq/herald"
	"github.com/heraldhq/herald/brokertest"
	"github.com/heraldhq/herald/natsbroker"
)

// TestEventStoreConformance: two brokers (two connections, as two nodes)
// on one prefix share one store.
func TestEventStoreConformance(t *testing.T) {
	natsURL(t)
	brokertest.RunEventStore(t, func(t *testing.T) (herald.EventStore, herald.EventStore) {
		return newBroker(t, testOpts{}).EventStore(), newBroker(t, testOpts{}).EventStore()
	})
}

func evt(kind, key string) *herald.Event {
	return &herald.Event{ID: fmt.Sprint(kind, "/", key, "/", time.Now().UnixNano()), Kind: kind, Key: key, Time: time.Now().UTC()}
}

// streamMsgs returns the number of messages in the events stream.
func streamMsgs(t *testing.T, prefix string) uint64 {
	t.Helper()
	nc, err := nats.Connect(natsURL(t))
	if err != nil {
		t.Fatal(err)
	}
	defer nc.Close()
	js, _ := jetstream.New(nc)
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	s, err := js.Stream(ctx, prefix+"_events")
	if err != nil {
		t.Fatal(err)
	}
	info, err := s.Info(ctx)
	if err != nil {
		t.Fatal(err)
	}
	return info.State.Msgs
}

// drain delivers the whole outbox as the deliverer does: Pending, then Ack
// of the last position, until empty.
func drain(t *testing.T, s herald.EventStore) []herald.EventRecord {
	t.Helper()
	ctx := context.Background()
	var all []herald.EventRecord
	for {
		recs, err := s.Pending(ctx, 7)
		if err != nil {
			t.Fatal(err)
		}
		if len(recs) == 0 {
			return all
		}
		all = append(all, recs...)
		if err := s.Ack(ctx, recs[len(recs)-1].Pos); err != nil {
			t.Fatal(err)
		}
	}
}

// TestEventStoreCompaction: once delivered, the stream keeps only the
// current state of held keys: a key nobody holds, superseded states and
// delivered appends are removed, an undelivered edge is never.
func TestEventStoreCompaction(t *testing.T) {
	natsURL(t)
	t.Parallel()
	a, b := newBroker(t, testOpts{}), newBroker(t, testOpts{})
	sa, sb := a.EventStore(), b.EventStore()
	ctx := context.Background()
	must := func(err error) {
		t.Helper()
		if err != nil {
			t.Fatal(err)
		}
	}
	// k1: held by two nodes, then by one; k2: on and off before delivery.
	must(sa.Hold(ctx, "n1", "user:k1", evt("on", "user:k1")))
	must(sb.Hold(ctx, "n2", "user:k1", evt("on", "user:k1")))
	must(sa.Release(ctx, "n1", "user:k1", evt("off", "user:k1")))
	must(sa.Hold(ctx, "n1", "user:k2", evt("on", "user:k2")))
	must(sb.Hold(ctx, "n2", "user:k2", evt("on", "user:k2")))
	must(sa.Release(ctx, "n1", "user:k2", evt("off", "user:k2")))
	must(sb.Release(ctx, "n2", "user:k2", evt("off", "user:k2")))
	must(sb.Append(ctx, evt("p", "channel:x"), evt("p", "channel:x")))
	got := drain(t, sa)
	var kinds []string
	for _, r := range got {
		kinds = append(kinds, r.Event.Kind+" "+r.Event.Key)
	}
	want := fmt.Sprint([]string{"on user:k1", "on user:k2", "off user:k2", "p channel:x", "p channel:x"})
	if fmt.Sprint(kinds) != want {
		t.Fatalf("delivered %q, want %s", kinds, want)
	}
	// Left: k1's state only (held by n2).
	if n := streamMsgs(t, prefix(t)); n != 1 {
		t.Fatalf("%d messages left in the stream, want 1 (k1's state)", n)
	}
	// The kept state is right: n2's release is an edge.
	must(sb.Release(ctx, "n2", "user:k1", evt("off", "user:k1")))
	if got := drain(t, sb); len(got) != 1 || got[0].Event.Kind != "off" {
		t.Fatalf("after the last release: %+v", got)
	}
	if n := streamMsgs(t, prefix(t)); n != 0 {
		t.Fatalf("%d messages left in the stream, want 0", n)
	}
	// Nothing pending, nothing walked again.
	if recs, err := sa.Pending(ctx, 10); err != nil || len(recs) != 0 {
		t.Fatalf("pending %v %v", recs, err)
	}
}

// TestEventStorePartialAppend: Pending may stop inside one Append's
// message; the rest follows after the Ack, once.
func TestEventStorePartialAppend(t *testing.T) {
	natsURL(t)
	t.Parallel()
	s := newBroker(t, testOpts{}).EventStore()
	ctx := context.Background()
	var in []*herald.Event
	for i := range 5 {
		in = append(in, evt("p", fmt.Sprint("k", i)))
	}
	if err := s.Append(ctx, in...); err != nil {
		t.Fatal(err)
	}
	var keys []string
	for {
		recs, err := s.Pending(ctx, 2)
		if err != nil {
			t.Fatal(err)
		}
		if len(recs) == 0 {
			break
		}
		for _, r := range recs {
			keys = append(keys, r.Event.Key)
		}
		if err := s.Ack(ctx, recs[len(recs)-1].Pos); err != nil {
			t.Fatal(err)
		}
	}
	if fmt.Sprint(keys) != "[k0 k1 k2 k3 k4]" {
		t.Fatalf("delivered %v", keys)
	}
}

// TestEventStoreBadInput: empty names, nil events and foreign positions
// are refused with an error.
func TestEventStoreBadInput(t *testing.T) {
	natsURL(t)
	t.Parallel()
	s := newBroker(t, testOpts{}).EventStore()
	ctx := context.Background()
	if err := s.Hold(ctx, "", "user:a", evt("on", "user:a")); err == nil {
		t.Error("Hold with an empty node")
	}
	if err := s.Hold(ctx, "n", "", evt("on", "")); err == nil {
		t.Error("Hold with an empty key")
	}
	if err := s.Hold(ctx, "n", "user:a", nil); err == nil {
		t.Error("Hold without an event")
	}
	if err := s.Append(ctx, nil); err == nil {
		t.Error("Append of nil")
	}
	for _, pos := range []string{"", "x", "0", "1.-1", "1.x"} {
		if err := s.Ack(ctx, pos); err == nil {
			t.Errorf("Ack(%q) accepted", pos)
		}
	}
}

// TestEventStoreLiveOnly: without JetStream the store says why it cannot.
func TestEventStoreLiveOnly(t *testing.T) {
	natsURL(t)
	t.Parallel()
	s := newBroker(t, testOpts{liveOnly: true}).EventStore()
	if err := s.Append(context.Background(), evt("p", "k")); !errors.Is(err, natsbroker.ErrNoJetStream) {
		t.Fatalf("Append live-only: %v, want ErrNoJetStream", err)
	}
}

// TestEventStoreDeliverWhileWriting: a deliverer drains the outbox while
// four nodes on two connections hold and release three keys and append:
// every event comes out once, each key's events alternate on and off, and
// at the end (every key released, all delivered) the stream is empty.
func TestEventStoreDeliverWhileWriting(t *testing.T) {
	natsURL(t)
	t.Parallel()
	sa, sb := newBroker(t, testOpts{}).EventStore(), newBroker(t, testOpts{}).EventStore()
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	keys := []string{"channel:a", "channel:b", "user:c"}
	var wg sync.WaitGroup
	var appended atomic.Int64
	for i := range 4 {
		s, node := sa, fmt.Sprint("n", i)
		if i%2 == 1 {
			s = sb
		}
		wg.Add(1)
		go func() {
			defer wg.Done()
			for j := range 15 {
				k := keys[(i+j)%len(keys)]
				if err := s.Hold(ctx, node, k, evt("on", k)); err != nil {
					t.Error(err)
					return
				}
				if err := s.Append(ctx, evt("p", k)); err != nil {
					t.Error(err)
					return
				}
				appended.Add(1)
				if err := s.Release(ctx, node, k, evt("off", k)); err != nil {
					t.Error(err)
					return
				}
			}
		}()
	}
	var got []herald.EventRecord
	done := make(chan struct{})
	go func() {
		wg.Wait()
		close(done)
	}()
	for writing := true; writing; {
		select {
		case <-done:
			writing = false
		default:
		}
		recs, err := sa.Pending(ctx, 5)
		if err != nil {
			t.Fatal(err)
		}
		if len(recs) > 0 {
			got = append(got, recs...)
			if err := sa.Ack(ctx, recs[len(recs)-1].Pos); err != nil {
				t.Fatal(err)
			}
		}
	}
	got = append(got, drain(t, sa)...)
	seen := map[string]bool{}
	last := map[string]string{}
	pubs := 0
	for _, r := range got {
		if seen[r.Event.ID] {
			t.Fatalf("event %s delivered twice", r.Event.ID)
		}
		seen[r.Event.ID] = true
		switch r.Event.Kind {
		case "p":
			pubs++
		case "on", "off":
			if last[r.Event.Key] == r.Event.Kind {
				t.Fatalf("two %s in a row for %s", r.Event.Kind, r.Event.Key)
			}
			last[r.Event.Key] = r.Event.Kind
		}
	}
	if pubs != int(appended.Load()) {
		t.Fatalf("%d appended events delivered, %d appended", pubs, appended.Load())
	}
	for _, k := range keys {
		if last[k] != "off" {
			t.Errorf("%s: last event %q, want off", k, last[k])
		}
	}
	if n := streamMsgs(t, prefix(t)); n != 0 {
		t.Fatalf("%d messages left in the stream, want 0", n)
	}
}

// TestEventStoreConcurrentReap: two nodes reaping one expired node at once
// report it once between them, and each of its keys gets one off event.
func TestEventStoreConcurrentReap(t *testing.T) {
	natsURL(t)
	t.Parallel()
	sa, sb := newBroker(t, testOpts{}).EventStore(), newBroker(t, testOpts{}).EventStore()
	ctx := context.Background()
	if err := sa.Beat(ctx, "dead", 100*time.Millisecond); err != nil {
		t.Fatal(err)
	}
	for i := range 5 {
		k := fmt.Sprint("user:", i)
		if err := sa.Hold(ctx, "dead", k, evt("on", k)); err != nil {
			t.Fatal(err)
		}
	}
	time.Sleep(300 * time.Millisecond)
	off := func(k string) *herald.Event { return evt("off", k) }
	var wg sync.WaitGroup
	reaped := make([][]string, 2)
	for i, s := range []herald.EventStore{sa, sb} {
		wg.Add(1)
		go func() {
			defer wg.Done()
			n, err := s.Reap(ctx, "", off)
			if err != nil {
				t.Error(err)
			}
			reaped[i] = n
		}()
	}
	wg.Wait()
	if all := append(reaped[0], reaped[1]...); len(all) != 1 || all[0] != "dead" {
		t.Fatalf("reaped %q", reaped)
	}
	offs := map[string]int{}
	for _, r := range drain(t, sb) {
		if r.Event.Kind == "off" {
			offs[r.Event.Key]++
		}
	}
	if len(offs) != 5 {
		t.Fatalf("off events %v, want one for each of 5 keys", offs)
	}
	for k, n := range offs {
		if n != 1 {
			t.Errorf("%s: %d off events", k, n)
		}
	}
}
