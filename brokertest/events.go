package brokertest

import (
	"context"
	"encoding/json"
	"fmt"
	"reflect"
	"strconv"
	"sync"
	"testing"
	"time"

	"github.com/heraldhq/herald"
)

// RunEventStore runs the conformance suite of a herald.EventStore, the
// webhooks' outbox. newStores returns two handles on one fresh, empty
// store, as two nodes of a cluster would have (for a networked store: two
// clients of one server, with keys no other test uses). Of the options,
// Skip applies (by the test's name, such as "OneEventPerEdge").
func RunEventStore(t *testing.T, newStores func(t *testing.T) (a, b herald.EventStore), opts ...Option) {
	var c config
	for _, o := range opts {
		o(&c)
	}
	tests := []struct {
		name string
		f    func(t *testing.T, a, b herald.EventStore)
	}{
		{"HoldRelease", testHoldRelease},
		{"EventFields", testEventFields},
		{"AppendAck", testAppendAck},
		{"Reap", testReap},
		{"Lead", testLead},
		{"OneEventPerEdge", testOneEventPerEdge},
		{"HoldAgain", testHoldAgain},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			c.skipped(t, tc.name)
			t.Parallel()
			a, b := newStores(t)
			tc.f(t, a, b)
		})
	}
}

func ev(kind, key string) *herald.Event {
	return &herald.Event{ID: kind + "/" + key + "/" + strconv.FormatInt(time.Now().UnixNano(), 36), Kind: kind, Key: key, Time: time.Now().UTC().Truncate(time.Millisecond)}
}

func pending(t *testing.T, s herald.EventStore) []herald.EventRecord {
	t.Helper()
	recs, err := s.Pending(context.Background(), 10000)
	if err != nil {
		t.Fatal(err)
	}
	return recs
}

func kinds(recs []herald.EventRecord) []string {
	out := make([]string, len(recs))
	for i, r := range recs {
		out[i] = r.Event.Kind + " " + r.Event.Key
	}
	return out
}

func must(t *testing.T, err error) {
	t.Helper()
	if err != nil {
		t.Fatal(err)
	}
}

// testHoldRelease: only the first holder's Hold and the last holder's
// Release append; repeats change nothing.
func testHoldRelease(t *testing.T, a, b herald.EventStore) {
	ctx := context.Background()
	k := "user:ann"
	must(t, a.Hold(ctx, "n1", k, ev("on", k)))
	must(t, b.Hold(ctx, "n2", k, ev("on", k)))
	must(t, a.Hold(ctx, "n1", k, ev("on", k)))
	must(t, a.Release(ctx, "n1", k, ev("off", k)))
	must(t, a.Release(ctx, "n1", k, ev("off", k)))
	must(t, b.Release(ctx, "n3", k, ev("off", k))) // never held
	must(t, b.Release(ctx, "n2", k, ev("off", k)))
	must(t, b.Hold(ctx, "n2", k, ev("on", k)))
	got := kinds(pending(t, b))
	want := []string{"on user:ann", "off user:ann", "on user:ann"}
	if !reflect.DeepEqual(got, want) {
		t.Fatalf("outbox %q, want %q", got, want)
	}
}

// testEventFields: an event comes out as it went in.
func testEventFields(t *testing.T, a, b herald.EventStore) {
	ctx := context.Background()
	in := []*herald.Event{
		{ID: "e1", Kind: herald.EventMemberAdded, Key: "channel:chat:1", Time: time.Now().UTC().Truncate(time.Millisecond),
			User: "ann", Channel: "chat:1", Client: "c1", Info: json.RawMessage(`{"name":"Ann"}`)},
		{ID: "e2", Kind: herald.EventPublication, Key: "channel:chat:1", Time: time.Unix(1700000000, 123e6).UTC(),
			Channel: "chat:1", Client: "c1", Data: json.RawMessage(`{"text":"hi"}`), Offset: 42},
		{ID: "e3", Kind: herald.EventPublication, Key: "channel:bin", Time: time.Unix(1700000001, 0).UTC(),
			Channel: "bin", Binary: []byte{0, 1, 2, 255}},
	}
	must(t, a.Append(ctx, in...))
	recs := pending(t, b)
	if len(recs) != len(in) {
		t.Fatalf("%d events, want %d", len(recs), len(in))
	}
	for i, r := range recs {
		got, want := r.Event, *in[i]
		if !got.Time.Equal(want.Time) {
			t.Errorf("event %d time %v, want %v", i, got.Time, want.Time)
		}
		got.Time = want.Time
		if !reflect.DeepEqual(got, want) {
			t.Errorf("event %d:\n got %+v\nwant %+v", i, got, want)
		}
		if r.Pos == "" {
			t.Errorf("event %d has no position", i)
		}
	}
}

// testAppendAck: Pending is oldest first and capped; Ack removes up to a
// position and never goes back.
func testAppendAck(t *testing.T, a, b herald.EventStore) {
	ctx := context.Background()
	for i := range 30 {
		s := a
		if i%2 == 1 {
			s = b
		}
		must(t, s.Append(ctx, ev("p", fmt.Sprint("k", i))))
	}
	first, err := a.Pending(ctx, 10)
	must(t, err)
	if len(first) != 10 || first[0].Event.Key != "k0" || first[9].Event.Key != "k9" {
		t.Fatalf("first page %q", kinds(first))
	}
	must(t, b.Ack(ctx, first[9].Pos))
	must(t, a.Ack(ctx, first[3].Pos)) // behind: no change
	rest := pending(t, a)
	if len(rest) != 20 || rest[0].Event.Key != "k10" || rest[19].Event.Key != "k29" {
		t.Fatalf("after ack %q", kinds(rest))
	}
	must(t, a.Ack(ctx, rest[19].Pos))
	if left := pending(t, b); len(left) != 0 {
		t.Fatalf("after acking all: %q", kinds(left))
	}
	must(t, a.Append(ctx, ev("p", "later")))
	if left := pending(t, b); len(left) != 1 || left[0].Event.Key != "later" {
		t.Fatalf("%q", kinds(left))
	}
}

// testReap: a node whose beat expired is released; a key another node
// still holds gets no event; a named node is reaped at once.
func testReap(t *testing.T, a, b herald.EventStore) {
	ctx := context.Background()
	// The beats' ttls are a minute while the test checks that no live
	// node is reaped (however slow the store's calls are), then "dead"
	// beats once more for 100ms, which it outlives.
	must(t, a.Beat(ctx, "dead", time.Minute))
	must(t, b.Beat(ctx, "alive", time.Minute))
	must(t, a.Hold(ctx, "dead", "user:shared", ev("on", "user:shared")))
	must(t, b.Hold(ctx, "alive", "user:shared", ev("on", "user:shared")))
	must(t, a.Hold(ctx, "dead", "user:alone", ev("on", "user:alone")))
	must(t, b.Hold(ctx, "alive", "user:mine", ev("on", "user:mine")))
	off := func(key string) *herald.Event { return ev("off", key) }
	if nodes, err := b.Reap(ctx, "", off); err != nil || len(nodes) != 0 {
		t.Fatalf("reaped %v %v before the ttl", nodes, err)
	}
	must(t, a.Beat(ctx, "dead", 100*time.Millisecond))
	time.Sleep(400 * time.Millisecond)
	nodes, err := b.Reap(ctx, "", off)
	if err != nil || !reflect.DeepEqual(nodes, []string{"dead"}) {
		t.Fatalf("reaped %v %v, want [dead]", nodes, err)
	}
	if nodes, err := a.Reap(ctx, "", off); err != nil || len(nodes) != 0 {
		t.Fatalf("reaped %v %v twice", nodes, err)
	}
	nodes, err = a.Reap(ctx, "alive", off)
	if err != nil || !reflect.DeepEqual(nodes, []string{"alive"}) {
		t.Fatalf("reaped %v %v, want [alive]", nodes, err)
	}
	got := kinds(pending(t, a))
	want := []string{"on user:shared", "on user:alone", "on user:mine", "off user:alone"}
	// The alive node's two keys go in either order.
	if len(got) != 6 || !reflect.DeepEqual(got[:4], want) || !sameSet(got[4:], []string{"off user:shared", "off user:mine"}) {
		t.Fatalf("outbox %q", got)
	}
	// A reaped node that comes back holds afresh.
	must(t, a.Hold(ctx, "dead", "user:alone", ev("on", "user:alone")))
	if got := kinds(pending(t, a)); got[len(got)-1] != "on user:alone" {
		t.Fatalf("outbox %q", got)
	}
}

func sameSet(a, b []string) bool {
	if len(a) != len(b) {
		return false
	}
	m := map[string]int{}
	for _, s := range a {
		m[s]++
	}
	for _, s := range b {
		m[s]--
	}
	for _, v := range m {
		if v != 0 {
			return false
		}
	}
	return true
}

// testLead: one leader at a time; the leader may shorten its lead (as a
// node that stops does); the lead passes when it expires. The leads that
// must hold are a minute long, so that no slowness of the store's calls
// lets one expire between two of them.
func testLead(t *testing.T, a, b herald.EventStore) {
	ctx := context.Background()
	lead := func(s herald.EventStore, node string, ttl time.Duration) bool {
		t.Helper()
		ok, err := s.Lead(ctx, node, ttl)
		must(t, err)
		return ok
	}
	if !lead(a, "n1", time.Minute) || lead(b, "n2", time.Minute) || !lead(a, "n1", time.Minute) {
		t.Fatal("n1 must lead, n2 not")
	}
	if !lead(a, "n1", 100*time.Millisecond) {
		t.Fatal("n1 must be able to shorten its lead")
	}
	time.Sleep(400 * time.Millisecond)
	if !lead(b, "n2", time.Minute) || lead(a, "n1", time.Minute) {
		t.Fatal("after n1's lead expired, n2 must lead, n1 not")
	}
}

// testHoldAgain: a key whose on and off events were delivered (Pending,
// then Ack, on one handle: a store may then drop the key's state) is held
// again at once, round after round, each time with a new on event.
func testHoldAgain(t *testing.T, a, b herald.EventStore) {
	ctx := context.Background()
	k := "user:back"
	deliver := func() []string {
		t.Helper()
		recs := pending(t, b)
		if len(recs) > 0 {
			must(t, b.Ack(ctx, recs[len(recs)-1].Pos))
		}
		return kinds(recs)
	}
	for round := range 3 {
		must(t, a.Hold(ctx, "n1", k, ev("on", k)))
		if got := deliver(); !reflect.DeepEqual(got, []string{"on " + k}) {
			t.Fatalf("round %d: delivered %q after the hold", round, got)
		}
		must(t, a.Release(ctx, "n1", k, ev("off", k)))
		if got := deliver(); !reflect.DeepEqual(got, []string{"off " + k}) {
			t.Fatalf("round %d: delivered %q after the release", round, got)
		}
	}
}

// testOneEventPerEdge: nodes holding and releasing one key concurrently
// make alternating on and off events, one per change of the cluster-wide
// state: never two ons or two offs in a row.
func testOneEventPerEdge(t *testing.T, a, b herald.EventStore) {
	ctx := context.Background()
	k := "channel:busy"
	var wg sync.WaitGroup
	for i := range 8 {
		s, node := a, fmt.Sprint("n", i)
		if i%2 == 1 {
			s = b
		}
		wg.Add(1)
		go func() {
			defer wg.Done()
			for range 25 {
				if err := s.Hold(ctx, node, k, ev("on", k)); err != nil {
					t.Error(err)
					return
				}
				if err := s.Release(ctx, node, k, ev("off", k)); err != nil {
					t.Error(err)
					return
				}
			}
		}()
	}
	wg.Wait()
	got := kinds(pending(t, a))
	if len(got) < 2 || len(got)%2 != 0 {
		t.Fatalf("%d events", len(got))
	}
	for i, g := range got {
		want := "on " + k
		if i%2 == 1 {
			want = "off " + k
		}
		if g != want {
			t.Fatalf("event %d is %q, want %q: %q", i, g, want, got)
		}
	}
}
