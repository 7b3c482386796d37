package natsbroker

import (
	"hash/maphash"
	"log/slog"
	"slices"
	"sync"
	"testing"
	"time"

	"github.com/heraldhq/herald"
)

type orderRecorder struct {
	mu   sync.Mutex
	offs []uint64
}

func (r *orderRecorder) HandlePublication(p *herald.Publication) {
	r.mu.Lock()
	r.offs = append(r.offs, p.Offset)
	r.mu.Unlock()
}
func (r *orderRecorder) HandleControl([]byte) {}
func (r *orderRecorder) HandleReconnect()     {}
func (r *orderRecorder) HandleOutage(error)   {}
func (r *orderRecorder) got() []uint64 {
	r.mu.Lock()
	defer r.mu.Unlock()
	return slices.Clone(r.offs)
}

// TestInOrder: history deliveries that arrive swapped are put back in
// offset order; one that stays missing is given up after reorderWait, so
// the node sees the gap; older ones are dropped; an epoch change starts
// the count over.
func TestInOrder(t *testing.T) {
	rec := &orderRecorder{}
	b := &Broker{h: rec, log: slog.New(slog.DiscardHandler), subs: make(map[string]*chanSub), seed: maphash.MakeSeed()}
	cs := &chanSub{}
	b.subs["c"] = cs
	feed := func(offs ...uint64) {
		for _, o := range offs {
			l := b.deliverLock("c")
			l.Lock()
			b.inOrder("c", cs, &herald.Publication{Channel: "c", Offset: o, Epoch: "e1"})
			l.Unlock()
		}
	}
	// Before the base is read everything is held, then sorted out.
	feed(12, 11)
	l := b.deliverLock("c")
	l.Lock()
	cs.based, cs.next = true, 11
	held := cs.held
	cs.held = nil
	for _, p := range held {
		b.inOrder("c", cs, p)
	}
	l.Unlock()
	feed(14, 13, 10, 15)
	if got := rec.got(); !slices.Equal(got, []uint64{11, 12, 13, 14, 15}) {
		t.Fatalf("delivered %v, want 11..15", got)
	}
	feed(17) // 16 never comes
	if got := rec.got(); len(got) != 5 {
		t.Fatalf("17 delivered before 16 was given up: %v", got)
	}
	deadline := time.Now().Add(10 * reorderWait)
	for len(rec.got()) < 6 && time.Now().Before(deadline) {
		time.Sleep(10 * time.Millisecond)
	}
	if got := rec.got(); !slices.Equal(got[5:], []uint64{17}) {
		t.Fatalf("after the wait: %v, want 17 delivered", got)
	}
	l.Lock()
	b.inOrder("c", cs, &herald.Publication{Channel: "c", Offset: 1, Epoch: "e2"})
	b.inOrder("c", cs, &herald.Publication{Channel: "c", Offset: 2, Epoch: "e2"})
	l.Unlock()
	if got := rec.got(); !slices.Equal(got[6:], []uint64{1, 2}) {
		t.Fatalf("after a new epoch: %v, want 1, 2", got)
	}
}

// TestInOrderWaitPerFirst: a publication that becomes the first held one
// gets a full wait of its own, not what was left of its predecessor's (13
// and 15 held, 12 comes late: 15 waits its own reorderWait for 14).
func TestInOrderWaitPerFirst(t *testing.T) {
	rec := &orderRecorder{}
	const wait = time.Second // generous margins for a loaded machine
	b := &Broker{h: rec, log: slog.New(slog.DiscardHandler), subs: make(map[string]*chanSub), seed: maphash.MakeSeed(), reorderWait: wait}
	cs := &chanSub{based: true, next: 12}
	b.subs["c"] = cs
	feed := func(o uint64) {
		l := b.deliverLock("c")
		l.Lock()
		b.inOrder("c", cs, &herald.Publication{Channel: "c", Offset: o, Epoch: "e"})
		l.Unlock()
	}
	feed(13)
	feed(15)
	time.Sleep(wait * 6 / 10)
	feed(12) // 12, 13 go out; 15 is now first, with a full wait
	time.Sleep(wait * 6 / 10)
	feed(14) // past the first wait's end, inside 15's own
	deadline := time.Now().Add(5 * wait)
	for len(rec.got()) < 4 && time.Now().Before(deadline) {
		time.Sleep(10 * time.Millisecond)
	}
	if got := rec.got(); !slices.Equal(got, []uint64{12, 13, 14, 15}) {
		t.Fatalf("delivered %v, want 12..15", got)
	}
}
