package brokertest

import (
	"context"
	"encoding/json"
	"fmt"
	"reflect"
	"slices"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/heraldhq/herald"
)

// Run runs the broker conformance suite against the brokers newBroker makes.
// Every subtest is parallel and uses its own channels.
func Run(t *testing.T, newBroker func(t *testing.T) herald.Broker, opts ...Option) {
	cfg := newConfig(opts)
	tests := []struct {
		name string
		f    func(t *testing.T, newBroker func(t *testing.T) herald.Broker, cfg config)
	}{
		{"Deliver", testDeliver},
		{"OrderingConcurrentPublishers", testOrdering},
		{"Unsubscribe", testUnsubscribe},
		{"ContextDone", testContextDone},
		{"History", testHistory},
		{"HistorySince", testHistorySince},
		{"Epoch", testEpoch},
		{"HistorySize", testHistorySize},
		{"HistoryTTL", testHistoryTTL},
		{"Idempotency", testIdempotency},
		{"IdempotencyWindow", testIdempotencyWindow},
		{"Control", testControl},
		{"FanOutTwoNodes", testFanOut},
		{"SubscribeThenPublishOtherNode", testSubscribeSeam},
		{"OrderingTwoNodes", testOrderingTwoNodes},
		{"ControlTwoNodes", testControlTwoNodes},
		{"PublishBatch", testPublishBatch},
		{"PublishBatchTwoNodes", testPublishBatchTwoNodes},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			t.Parallel()
			cfg.skipped(t, tc.name)
			tc.f(t, newBroker, cfg)
		})
	}
}

// testDeliver: a subscribed node gets publications and presence events with
// every field intact; no history means offset 0 and a zero result.
func testDeliver(t *testing.T, newBroker func(*testing.T) herald.Broker, _ config) {
	b := newBroker(t)
	rec, _ := Start(t, b)
	ch := chanName(t, "c")
	subscribe(t, b, ch)

	want := []*herald.Publication{
		{Channel: ch, Data: []byte(`{"text":"hi"}`), Origin: "client-1"},
		{Channel: ch, Data: []byte{0, 1, 0xfe, 0xff}, Binary: true},
		{Channel: ch, Kind: herald.KindJoin, Presence: &herald.ClientPresence{Client: "c1", User: "u1", Info: json.RawMessage(`{"name":"Ann"}`)}},
		{Channel: ch, Kind: herald.KindLeave, Presence: &herald.ClientPresence{Client: "c1", User: "u1"}},
		{Channel: ch, Data: []byte("after events")},
	}
	for _, p := range want {
		cp := *p
		res, err := b.Publish(ctxT(t), &cp, herald.PublishOptions{})
		if err != nil {
			t.Fatal(err)
		}
		if res != (herald.PublishResult{}) {
			t.Errorf("Publish without history returned %+v, want a zero result", res)
		}
	}
	got := rec.WaitPubs(t, ch, len(want))
	if len(got) != len(want) {
		t.Fatalf("got %d publications, want %d", len(got), len(want))
	}
	for i := range want {
		if !reflect.DeepEqual(got[i], want[i]) {
			t.Errorf("publication %d: got %+v, want %+v", i, got[i], want[i])
		}
	}
	// Events keep no history even when the options ask for it.
	cp := &herald.Publication{Channel: ch, Kind: herald.KindJoin, Presence: &herald.ClientPresence{Client: "c2"}}
	if res, err := b.Publish(ctxT(t), cp, hist); err != nil || res.Offset != 0 {
		t.Errorf("presence event with history options: %+v, %v; want offset 0", res, err)
	}
}

// testOrdering: concurrent publishers on one node; every publisher's
// publications arrive in its order and offsets arrive consecutive.
func testOrdering(t *testing.T, newBroker func(*testing.T) herald.Broker, _ config) {
	const publishers, each = 4, 50
	b := newBroker(t)
	rec, _ := Start(t, b)
	for _, withHistory := range []bool{false, true} {
		ch := chanName(t, fmt.Sprintf("h%v", withHistory))
		subscribe(t, b, ch)
		opts := herald.PublishOptions{}
		if withHistory {
			opts = herald.PublishOptions{HistorySize: publishers * each, HistoryTTL: time.Minute}
		}
		var wg sync.WaitGroup
		for g := range publishers {
			wg.Go(func() {
				for i := range each {
					publish(t, b, ch, fmt.Sprintf("%d:%d", g, i), opts)
				}
			})
		}
		wg.Wait()
		got := rec.WaitPubs(t, ch, publishers*each)
		checkPerPublisherOrder(t, got, publishers)
		if withHistory {
			if o := offsets(got); !slices.Equal(o, seq(1, publishers*each)) {
				t.Errorf("offsets delivered: %v, want 1..%d in order", o, publishers*each)
			}
		}
	}
}

func checkPerPublisherOrder(t *testing.T, got []*herald.Publication, publishers int) {
	t.Helper()
	next := make([]int, publishers)
	for _, p := range got {
		g, i, _ := strings.Cut(string(p.Data), ":")
		gi, _ := strconv.Atoi(g)
		ii, _ := strconv.Atoi(i)
		if ii != next[gi] {
			t.Fatalf("publisher %d: got publication %d, want %d (out of order or duplicated)", gi, ii, next[gi])
		}
		next[gi]++
	}
}

// testUnsubscribe: nothing is delivered after Unsubscribe returns, and again
// after Subscribe returns. A marker on a still-subscribed channel, published
// after, bounds the wait without sleeping.
func testUnsubscribe(t *testing.T, newBroker func(*testing.T) herald.Broker, cfg config) {
	b := newBroker(t)
	rec, _ := Start(t, b)
	ch, marker := chanName(t, "c"), chanName(t, "marker")
	subscribe(t, b, ch)
	subscribe(t, b, marker)
	publish(t, b, ch, `1`, herald.PublishOptions{})
	rec.WaitPubs(t, ch, 1)

	if err := b.Unsubscribe(ctxT(t), ch); err != nil {
		t.Fatal(err)
	}
	publish(t, b, ch, `2`, herald.PublishOptions{})
	publish(t, b, marker, `m`, herald.PublishOptions{})
	rec.WaitPubs(t, marker, 1)
	want := []string{"1", "3"}
	if cfg.multiNode {
		if got := rec.Pubs(ch); len(got) != 1 {
			t.Fatalf("after Unsubscribe: %d publications delivered, want 1", len(got))
		}
	} else {
		// A single-node broker may hand every channel to its only node,
		// which filters by its own subscribers (the memory broker does).
		want = []string{"1", "2", "3"}
	}

	subscribe(t, b, ch)
	publish(t, b, ch, `3`, herald.PublishOptions{})
	if got := datas(rec.WaitPubs(t, ch, len(want))); !slices.Equal(got, want) {
		t.Fatalf("delivered %q, want %q", got, want)
	}
}

// testContextDone: blocking methods honour a context that is done.
func testContextDone(t *testing.T, newBroker func(*testing.T) herald.Broker, _ config) {
	b := newBroker(t)
	Start(t, b)
	ctx, cancel := context.WithCancel(context.Background())
	cancel()
	ch := chanName(t, "c")
	if _, err := b.Publish(ctx, &herald.Publication{Channel: ch, Data: []byte("1")}, hist); err == nil {
		t.Error("Publish with a cancelled context: no error")
	}
	if _, err := b.History(ctx, ch, herald.HistoryOptions{Limit: -1}); err == nil {
		t.Error("History with a cancelled context: no error")
	}
	if err := b.PublishControl(ctx, []byte("x")); err == nil {
		t.Error("PublishControl with a cancelled context: no error")
	}
}

// testHistory: offsets are consecutive from 1; Limit and Reverse select as
// documented; publications come back with every field.
func testHistory(t *testing.T, newBroker func(*testing.T) herald.Broker, _ config) {
	b := newBroker(t)
	rec, _ := Start(t, b)
	ch := chanName(t, "c")
	subscribe(t, b, ch)
	var epoch string
	for i := 1; i <= 5; i++ {
		pub := &herald.Publication{Channel: ch, Data: []byte(strconv.Itoa(i)), Binary: i == 2, Origin: "o" + strconv.Itoa(i)}
		res, err := b.Publish(ctxT(t), pub, hist)
		if err != nil {
			t.Fatal(err)
		}
		if res.Offset != uint64(i) || res.Epoch == "" || res.Duplicate {
			t.Fatalf("publish %d: result %+v, want offset %d and an epoch", i, res, i)
		}
		if epoch == "" {
			epoch = res.Epoch
		} else if res.Epoch != epoch {
			t.Fatalf("epoch changed between publishes: %q then %q", epoch, res.Epoch)
		}
	}
	delivered := rec.WaitPubs(t, ch, 5)
	if o := offsets(delivered); !slices.Equal(o, seq(1, 5)) {
		t.Errorf("delivered offsets %v, want 1..5", o)
	}
	for _, p := range delivered {
		if p.Epoch != epoch {
			t.Errorf("delivered publication %d has epoch %q, want %q: a node tells a history reset by it", p.Offset, p.Epoch, epoch)
		}
	}
	pos := herald.StreamPosition{Offset: 5, Epoch: epoch}

	all := history(t, b, ch, herald.HistoryOptions{Limit: -1})
	if all.Position != pos || all.Oldest != 1 {
		t.Errorf("History: position %+v oldest %d, want %+v oldest 1", all.Position, all.Oldest, pos)
	}
	if o := offsets(all.Publications); !slices.Equal(o, seq(1, 5)) {
		t.Errorf("History(all) offsets %v, want 1..5", o)
	}
	for i, p := range all.Publications {
		want := &herald.Publication{Channel: ch, Data: []byte(strconv.Itoa(i + 1)), Binary: i == 1, Origin: "o" + strconv.Itoa(i+1), Offset: uint64(i + 1), Epoch: epoch}
		if !reflect.DeepEqual(p, want) {
			t.Errorf("History publication %d: %+v, want %+v", i, p, want)
		}
	}

	cases := []struct {
		opts herald.HistoryOptions
		want []uint64
	}{
		{herald.HistoryOptions{Limit: 0}, nil},
		{herald.HistoryOptions{Limit: 2}, seq(1, 2)},
		{herald.HistoryOptions{Limit: 9}, seq(1, 5)},
		{herald.HistoryOptions{Limit: -1, Reverse: true}, seq(5, 1)},
		{herald.HistoryOptions{Limit: 2, Reverse: true}, seq(5, 4)},
		{herald.HistoryOptions{Limit: 0, Reverse: true}, nil},
	}
	for _, c := range cases {
		res := history(t, b, ch, c.opts)
		if o := offsets(res.Publications); !slices.Equal(o, c.want) {
			t.Errorf("History(%+v) offsets %v, want %v", c.opts, o, c.want)
		}
		if res.Position != pos || res.Oldest != 1 {
			t.Errorf("History(%+v): position %+v oldest %d, want %+v oldest 1", c.opts, res.Position, res.Oldest, pos)
		}
	}
}

// testHistorySince: Since selects publications after an offset of the same
// epoch, and none for another epoch.
func testHistorySince(t *testing.T, newBroker func(*testing.T) herald.Broker, _ config) {
	b := newBroker(t)
	Start(t, b)
	ch := chanName(t, "c")
	var epoch string
	for i := 1; i <= 5; i++ {
		epoch = publish(t, b, ch, strconv.Itoa(i), hist).Epoch
	}
	since := func(off uint64, ep string) *herald.StreamPosition {
		return &herald.StreamPosition{Offset: off, Epoch: ep}
	}
	cases := []struct {
		opts herald.HistoryOptions
		want []uint64
	}{
		{herald.HistoryOptions{Since: since(2, epoch), Limit: -1}, seq(3, 5)},
		{herald.HistoryOptions{Since: since(0, epoch), Limit: -1}, seq(1, 5)},
		{herald.HistoryOptions{Since: since(2, epoch), Limit: 1}, seq(3, 3)},
		{herald.HistoryOptions{Since: since(2, epoch), Limit: 2, Reverse: true}, seq(5, 4)},
		{herald.HistoryOptions{Since: since(1, epoch), Limit: -1, Reverse: true}, seq(5, 2)},
		{herald.HistoryOptions{Since: since(5, epoch), Limit: -1}, nil},
		{herald.HistoryOptions{Since: since(9, epoch), Limit: -1}, nil},
		{herald.HistoryOptions{Since: since(2, epoch), Limit: 0}, nil},
		{herald.HistoryOptions{Since: since(2, epoch+"x"), Limit: -1}, nil},
		{herald.HistoryOptions{Since: since(0, ""), Limit: -1}, nil},
	}
	pos := herald.StreamPosition{Offset: 5, Epoch: epoch}
	for _, c := range cases {
		res := history(t, b, ch, c.opts)
		if o := offsets(res.Publications); !slices.Equal(o, c.want) {
			t.Errorf("History(since %+v, limit %d, reverse %v) offsets %v, want %v", *c.opts.Since, c.opts.Limit, c.opts.Reverse, o, c.want)
		}
		if res.Position != pos {
			t.Errorf("History(since %+v): position %+v, want %+v", *c.opts.Since, res.Position, pos)
		}
	}
}

// testEpoch: the first History read fixes the epoch; it stays across reads,
// publishes and nodes, and differs in a fresh backend namespace.
func testEpoch(t *testing.T, newBroker func(*testing.T) herald.Broker, cfg config) {
	b := newBroker(t)
	Start(t, b)
	ch := chanName(t, "c")
	first := history(t, b, ch, herald.HistoryOptions{})
	if first.Position.Epoch == "" || first.Position.Offset != 0 || first.Oldest != 0 || len(first.Publications) != 0 {
		t.Fatalf("History of a new channel: %+v, want offset 0, an epoch, nothing else", first)
	}
	epoch := first.Position.Epoch
	if again := history(t, b, ch, herald.HistoryOptions{Limit: -1}); again.Position.Epoch != epoch {
		t.Fatalf("epoch changed between reads: %q then %q", epoch, again.Position.Epoch)
	}
	if res := publish(t, b, ch, "1", hist); res.Epoch != epoch || res.Offset != 1 {
		t.Fatalf("publish after the first read: %+v, want offset 1 epoch %q", res, epoch)
	}
	if cfg.multiNode {
		b2 := newBroker(t)
		Start(t, b2)
		if res := history(t, b2, ch, herald.HistoryOptions{}); res.Position != (herald.StreamPosition{Offset: 1, Epoch: epoch}) {
			t.Errorf("second node reads position %+v, want offset 1 epoch %q", res.Position, epoch)
		}
	}
	t.Run("fresh namespace", func(t *testing.T) {
		fresh := newBroker(t)
		Start(t, fresh)
		res := history(t, fresh, ch, herald.HistoryOptions{})
		if res.Position.Epoch == "" || res.Position.Epoch == epoch || res.Position.Offset != 0 {
			t.Errorf("fresh namespace: position %+v, want offset 0 and an epoch other than %q", res.Position, epoch)
		}
	})
}

// testHistorySize: history keeps the last HistorySize publications.
func testHistorySize(t *testing.T, newBroker func(*testing.T) herald.Broker, _ config) {
	b := newBroker(t)
	Start(t, b)
	ch := chanName(t, "c")
	opts := herald.PublishOptions{HistorySize: 3, HistoryTTL: time.Minute}
	var epoch string
	for i := 1; i <= 5; i++ {
		epoch = publish(t, b, ch, strconv.Itoa(i), opts).Epoch
	}
	res := history(t, b, ch, herald.HistoryOptions{Limit: -1})
	if o := offsets(res.Publications); !slices.Equal(o, seq(3, 5)) || res.Oldest != 3 || res.Position != (herald.StreamPosition{Offset: 5, Epoch: epoch}) {
		t.Errorf("History after 5 publishes with size 3: offsets %v oldest %d position %+v; want 3..5, oldest 3, offset 5", o, res.Oldest, res.Position)
	}
	if d := datas(res.Publications); !slices.Equal(d, []string{"3", "4", "5"}) {
		t.Errorf("History data %q, want [3 4 5]", d)
	}
	// Since before the oldest kept: what is kept, the caller sees the gap.
	res = history(t, b, ch, herald.HistoryOptions{Since: &herald.StreamPosition{Offset: 1, Epoch: epoch}, Limit: -1})
	if o := offsets(res.Publications); !slices.Equal(o, seq(3, 5)) {
		t.Errorf("History since 1 after trimming: offsets %v, want 3..5", o)
	}
}

// testHistoryTTL: publications leave history after their TTL; the position
// and epoch stay.
func testHistoryTTL(t *testing.T, newBroker func(*testing.T) herald.Broker, _ config) {
	b := newBroker(t)
	Start(t, b)
	ch := chanName(t, "c")
	short := herald.PublishOptions{HistorySize: 10, HistoryTTL: 300 * time.Millisecond}
	publish(t, b, ch, "1", short)
	res := publish(t, b, ch, "2", short)
	var h herald.HistoryResult
	Eventually(t, func() bool {
		h = history(t, b, ch, herald.HistoryOptions{Limit: -1})
		return len(h.Publications) == 0
	}, func() string {
		return fmt.Sprintf("publications past their TTL still in history: %v", offsets(h.Publications))
	})
	if h.Position != res.StreamPosition || h.Oldest != 0 {
		t.Errorf("after expiry: position %+v oldest %d, want %+v oldest 0", h.Position, h.Oldest, res.StreamPosition)
	}
	if next := publish(t, b, ch, "3", hist); next.Offset != 3 || next.Epoch != res.Epoch {
		t.Errorf("publish after expiry: %+v, want offset 3 epoch %q", next, res.Epoch)
	}
	h = history(t, b, ch, herald.HistoryOptions{Limit: -1})
	if o := offsets(h.Publications); !slices.Equal(o, seq(3, 3)) || h.Oldest != 3 {
		t.Errorf("history after expiry and a publish: offsets %v oldest %d, want [3] oldest 3", o, h.Oldest)
	}
}

// testIdempotency: a repeated key publishes once and returns the first
// result marked Duplicate; keys are per channel.
func testIdempotency(t *testing.T, newBroker func(*testing.T) herald.Broker, _ config) {
	b := newBroker(t)
	rec, _ := Start(t, b)
	ch, other, marker := chanName(t, "c"), chanName(t, "other"), chanName(t, "marker")
	subscribe(t, b, ch)
	subscribe(t, b, marker)
	withKey := hist
	withKey.IdempotencyKey, withKey.IdempotencyWindow = "key-1", time.Minute

	first := publish(t, b, ch, "a", withKey)
	second := publish(t, b, ch, "b", withKey)
	if first.Duplicate || !second.Duplicate || second.StreamPosition != first.StreamPosition || first.Offset != 1 {
		t.Errorf("same key twice: %+v then %+v; want offset 1, then the same position marked Duplicate", first, second)
	}
	if res := publish(t, b, other, "c", withKey); res.Duplicate || res.Offset != 1 {
		t.Errorf("same key on another channel: %+v, want a first publish", res)
	}
	if res := publish(t, b, ch, "d", hist); res.Offset != 2 {
		t.Errorf("publish without key after a duplicate: %+v, want offset 2", res)
	}
	noHist := herald.PublishOptions{IdempotencyKey: "key-2", IdempotencyWindow: time.Minute}
	if res := publish(t, b, ch, "e", noHist); res.Duplicate {
		t.Errorf("first publish without history: %+v, not a duplicate", res)
	}
	if res := publish(t, b, ch, "f", noHist); !res.Duplicate || res.Offset != 0 {
		t.Errorf("repeat without history: %+v, want a zero position marked Duplicate", res)
	}
	publish(t, b, marker, "m", herald.PublishOptions{})
	rec.WaitPubs(t, marker, 1)
	rec.WaitPubs(t, ch, 3)
	if got := datas(rec.Pubs(ch)); !slices.Equal(got, []string{"a", "d", "e"}) {
		t.Errorf("delivered %q, want [a d e]: duplicates must not be delivered", got)
	}
	if h := history(t, b, ch, herald.HistoryOptions{Limit: -1}); !slices.Equal(datas(h.Publications), []string{"a", "d"}) {
		t.Errorf("history %q, want [a d]", datas(h.Publications))
	}
}

// testIdempotencyWindow: a key is forgotten after its window.
func testIdempotencyWindow(t *testing.T, newBroker func(*testing.T) herald.Broker, _ config) {
	b := newBroker(t)
	Start(t, b)
	ch := chanName(t, "c")
	opts := hist
	opts.IdempotencyKey, opts.IdempotencyWindow = "k", 500*time.Millisecond
	first := publish(t, b, ch, "a", opts)
	if res := publish(t, b, ch, "a", opts); !res.Duplicate {
		t.Fatalf("repeat within the window: %+v, want Duplicate", res)
	}
	var res herald.PublishResult
	Eventually(t, func() bool {
		time.Sleep(100 * time.Millisecond)
		res = publish(t, b, ch, "a", opts)
		return !res.Duplicate
	}, func() string { return "the key was never forgotten" })
	if res.Offset <= first.Offset {
		t.Errorf("publish after the window: %+v, want a new offset", res)
	}
}

// testControl: a control message reaches the sending node.
func testControl(t *testing.T, newBroker func(*testing.T) herald.Broker, _ config) {
	b := newBroker(t)
	rec, _ := Start(t, b)
	msg := []byte(`{"op":"all","data":"x"}`)
	publishControlUntil(t, b, msg, rec)
}

// publishControlUntil publishes msg from b until every recorder has it. Run
// may still be connecting when the test starts, and delivery is at most
// once, so the first messages may be lost.
func publishControlUntil(t *testing.T, b herald.Broker, msg []byte, recs ...*Recorder) {
	t.Helper()
	Eventually(t, func() bool {
		if err := b.PublishControl(ctxT(t), msg); err != nil {
			t.Fatal(err)
		}
		time.Sleep(20 * time.Millisecond)
		for _, rec := range recs {
			if !hasControl(rec, msg) {
				return false
			}
		}
		return true
	}, func() string { return fmt.Sprintf("control message %s not delivered to every node", msg) })
}

func hasControl(rec *Recorder, msg []byte) bool {
	for _, c := range rec.Controls() {
		if string(c) == string(msg) {
			return true
		}
	}
	return false
}

// testFanOut: a publication reaches every node subscribed to its channel,
// whichever node publishes it.
func testFanOut(t *testing.T, newBroker func(*testing.T) herald.Broker, cfg config) {
	cfg.needMultiNode(t)
	b1, b2 := newBroker(t), newBroker(t)
	rec1, _ := Start(t, b1)
	rec2, _ := Start(t, b2)
	ch := chanName(t, "c")
	subscribe(t, b1, ch)
	subscribe(t, b2, ch)
	publish(t, b1, ch, "from-1", hist)
	publish(t, b2, ch, "from-2", hist)
	for i, rec := range []*Recorder{rec1, rec2} {
		got := rec.WaitPubs(t, ch, 2)
		if d := datas(got); !slices.Equal(d, []string{"from-1", "from-2"}) || !slices.Equal(offsets(got), seq(1, 2)) {
			t.Errorf("node %d got %q offsets %v, want [from-1 from-2] at 1, 2", i+1, d, offsets(got))
		}
	}
}

// testSubscribeSeam: once Subscribe returns, a publish on another node
// reaches this one (the recovery seam in channel.go depends on it).
func testSubscribeSeam(t *testing.T, newBroker func(*testing.T) herald.Broker, cfg config) {
	cfg.needMultiNode(t)
	b1, b2 := newBroker(t), newBroker(t)
	Start(t, b1)
	rec2, _ := Start(t, b2)
	const n = 20
	for i := range n {
		ch := chanName(t, strconv.Itoa(i))
		subscribe(t, b2, ch)
		publish(t, b1, ch, "x", herald.PublishOptions{})
	}
	for i := range n {
		rec2.WaitPubs(t, chanName(t, strconv.Itoa(i)), 1)
	}
}

// testOrderingTwoNodes: publishers on two nodes into one channel; both nodes
// receive the same sequence, offsets consecutive and increasing.
func testOrderingTwoNodes(t *testing.T, newBroker func(*testing.T) herald.Broker, cfg config) {
	cfg.needMultiNode(t)
	const publishers, each = 4, 40 // publishers alternate between the nodes
	b1, b2 := newBroker(t), newBroker(t)
	rec1, _ := Start(t, b1)
	rec2, _ := Start(t, b2)
	ch := chanName(t, "c")
	subscribe(t, b1, ch)
	subscribe(t, b2, ch)
	opts := herald.PublishOptions{HistorySize: publishers * each, HistoryTTL: time.Minute}
	var wg sync.WaitGroup
	for g := range publishers {
		b := []herald.Broker{b1, b2}[g%2]
		wg.Go(func() {
			for i := range each {
				publish(t, b, ch, fmt.Sprintf("%d:%d", g, i), opts)
			}
		})
	}
	wg.Wait()
	got1, got2 := rec1.WaitPubs(t, ch, publishers*each), rec2.WaitPubs(t, ch, publishers*each)
	for _, got := range [][]*herald.Publication{got1, got2} {
		if o := offsets(got); !slices.Equal(o, seq(1, publishers*each)) {
			t.Fatalf("offsets delivered %v, want 1..%d in order", o, publishers*each)
		}
		checkPerPublisherOrder(t, got, publishers)
	}
	if !slices.Equal(datas(got1), datas(got2)) {
		t.Error("the two nodes received different sequences")
	}
	h := history(t, b2, ch, herald.HistoryOptions{Limit: -1})
	if !slices.Equal(datas(h.Publications), datas(got1)) {
		t.Error("history order differs from delivery order")
	}
}

// testControlTwoNodes: PublishControl reaches every node, the sender included.
func testControlTwoNodes(t *testing.T, newBroker func(*testing.T) herald.Broker, cfg config) {
	cfg.needMultiNode(t)
	b1, b2 := newBroker(t), newBroker(t)
	rec1, _ := Start(t, b1)
	rec2, _ := Start(t, b2)
	for i, from := range []herald.Broker{b1, b2} {
		publishControlUntil(t, from, []byte(fmt.Sprintf(`{"op":"all","from":%d}`, i+1)), rec1, rec2)
	}
}

// testPublishBatch, for a broker that is a herald.BatchPublisher: a batch
// over three channels is published in order per channel, with contiguous
// offsets, a repeated idempotency key answered as a duplicate of the
// publication earlier in the same batch, and results as Publish gives.
func testPublishBatch(t *testing.T, newBroker func(*testing.T) herald.Broker, _ config) {
	b := newBroker(t)
	bp, ok := b.(herald.BatchPublisher)
	if !ok {
		t.Skip("the broker is not a herald.BatchPublisher")
	}
	rec, _ := Start(t, b)
	chans := []string{chanName(t, "a"), chanName(t, "b"), chanName(t, "c")}
	for _, ch := range chans {
		subscribe(t, b, ch)
	}
	publish(t, b, chans[0], "before", hist) // offset 1 of chans[0]
	var (
		pubs []*herald.Publication
		opts []herald.PublishOptions
	)
	for i := range 90 {
		o := hist
		if i%10 == 9 { // the same key as the publication before it, of the same channel
			o.IdempotencyKey, o.IdempotencyWindow = fmt.Sprint("k", i-3), time.Minute
		} else if i%10 == 6 {
			o.IdempotencyKey, o.IdempotencyWindow = fmt.Sprint("k", i), time.Minute
		}
		pubs = append(pubs, &herald.Publication{Channel: chans[i%3], Data: []byte(strconv.Itoa(i))})
		opts = append(opts, o)
	}
	res := make([]herald.PublishResult, len(pubs))
	errs := make([]error, len(pubs))
	bp.PublishBatch(ctxT(t), pubs, opts, res, errs)
	next := map[string]uint64{chans[0]: 2, chans[1]: 1, chans[2]: 1}
	want := map[string][]string{chans[0]: {"before"}}
	for i, pub := range pubs {
		if errs[i] != nil {
			t.Fatalf("publication %d: %v", i, errs[i])
		}
		if i%10 == 9 {
			if !res[i].Duplicate || res[i].StreamPosition != res[i-3].StreamPosition {
				t.Errorf("publication %d repeats the key of %d: %+v, want %+v marked Duplicate", i, i-3, res[i], res[i-3].StreamPosition)
			}
			continue
		}
		if res[i].Duplicate || res[i].Offset != next[pub.Channel] || res[i].Epoch == "" || pub.Offset != res[i].Offset {
			t.Errorf("publication %d: %+v (pub offset %d), want offset %d", i, res[i], pub.Offset, next[pub.Channel])
		}
		next[pub.Channel]++
		want[pub.Channel] = append(want[pub.Channel], string(pub.Data))
	}
	for _, ch := range chans {
		got := rec.WaitPubs(t, ch, len(want[ch]))
		if !slices.Equal(datas(got), want[ch]) {
			t.Errorf("%s: delivered %q, want %q", ch, datas(got), want[ch])
		}
		if o := offsets(got); !slices.Equal(o, seq(1, uint64(len(want[ch])))) {
			t.Errorf("%s: delivered offsets %v, want 1…%d", ch, o, len(want[ch]))
		}
	}
}

// testPublishBatchTwoNodes, for a BatchPublisher on a multi-node backend:
// four publishers, two on each node, send batches to the same two channels
// at once, so that a batch's expectations of a channel's position are
// overtaken by the other node's publications. Every publication is
// published once, without an error; each channel's offsets are 1…N with no
// gap or repeat, each publisher's publications in its order, the same on
// both nodes and in history; and each result carries the offset its
// publication was delivered with.
func testPublishBatchTwoNodes(t *testing.T, newBroker func(*testing.T) herald.Broker, cfg config) {
	cfg.needMultiNode(t)
	b1, b2 := newBroker(t), newBroker(t)
	if _, ok := b1.(herald.BatchPublisher); !ok {
		t.Skip("the broker is not a herald.BatchPublisher")
	}
	rec1, _ := Start(t, b1)
	rec2, _ := Start(t, b2)
	chans := []string{chanName(t, "a"), chanName(t, "b")}
	for _, ch := range chans {
		subscribe(t, b1, ch)
		subscribe(t, b2, ch)
	}
	const publishers, batches, size = 4, 10, 8 // per batch, alternating channels
	opts := herald.PublishOptions{HistorySize: publishers * batches * size, HistoryTTL: time.Minute}
	offsetOf := make([]map[string]uint64, publishers) // per publisher: data -> result offset
	var wg sync.WaitGroup
	for g := range publishers {
		bp := []herald.Broker{b1, b2}[g%2].(herald.BatchPublisher)
		offsetOf[g] = make(map[string]uint64)
		wg.Go(func() {
			n := 0
			for range batches {
				pubs := make([]*herald.Publication, size)
				o := make([]herald.PublishOptions, size)
				for k := range pubs {
					pubs[k] = &herald.Publication{Channel: chans[k%2], Data: fmt.Appendf(nil, "%d:%d", g, n)}
					o[k] = opts
					n++
				}
				res, errs := make([]herald.PublishResult, size), make([]error, size)
				bp.PublishBatch(ctxT(t), pubs, o, res, errs)
				for k, err := range errs {
					if err != nil {
						t.Errorf("publisher %d, %s: %v", g, pubs[k].Data, err)
						return
					}
					if res[k].Duplicate || res[k].Offset == 0 {
						t.Errorf("publisher %d, %s: result %+v, want a fresh offset", g, pubs[k].Data, res[k])
					}
					offsetOf[g][string(pubs[k].Data)] = res[k].Offset
				}
			}
		})
	}
	wg.Wait()
	if t.Failed() {
		return
	}
	per := publishers * batches * size / 2
	for _, ch := range chans {
		got1, got2 := rec1.WaitPubs(t, ch, per), rec2.WaitPubs(t, ch, per)
		for _, got := range [][]*herald.Publication{got1, got2} {
			if o := offsets(got); !slices.Equal(o, seq(1, uint64(per))) {
				t.Fatalf("%s: offsets delivered %v, want 1..%d in order", ch, o, per)
			}
			checkPublisherOrder(t, got, publishers, 2)
		}
		if !slices.Equal(datas(got1), datas(got2)) {
			t.Errorf("%s: the two nodes received different sequences", ch)
		}
		for _, p := range got1 {
			g, _, _ := strings.Cut(string(p.Data), ":")
			gi, _ := strconv.Atoi(g)
			if r := offsetOf[gi][string(p.Data)]; r != p.Offset {
				t.Errorf("%s: %s was delivered with offset %d, its publisher was told %d", ch, p.Data, p.Offset, r)
			}
		}
		h := history(t, b2, ch, herald.HistoryOptions{Limit: -1})
		if !slices.Equal(datas(h.Publications), datas(got1)) {
			t.Errorf("%s: history order differs from delivery order", ch)
		}
	}
}

// checkPublisherOrder is checkPerPublisherOrder for one of stride channels
// that each publisher's numbered publications go to in turn: each
// publisher's numbers rise by stride.
func checkPublisherOrder(t *testing.T, got []*herald.Publication, publishers, stride int) {
	t.Helper()
	last := make([]int, publishers)
	for i := range last {
		last[i] = -1
	}
	for _, p := range got {
		g, i, _ := strings.Cut(string(p.Data), ":")
		gi, _ := strconv.Atoi(g)
		ii, _ := strconv.Atoi(i)
		if last[gi] >= 0 && ii != last[gi]+stride {
			t.Fatalf("publisher %d: got publication %d after %d (out of order, lost or duplicated)", gi, ii, last[gi])
		}
		last[gi] = ii
	}
}
