package herald

import (
	"bytes"
	"fmt"
	"sync"
	"sync/atomic"
	"testing"
)

// A fake writer: takes batches until the role is given back, as the pool
// and writeLoop do, and appends what it "writes" to out. inRole counts the
// writers between a take and its done: more than one is a broken role.
type fakeWriter struct {
	t      *testing.T
	inRole atomic.Int32
	mu     sync.Mutex
	out    [][]byte
}

func (w *fakeWriter) run(o *outbound) {
	for {
		batch, _ := o.take()
		if batch == nil {
			return
		}
		if n := w.inRole.Add(1); n != 1 {
			w.t.Errorf("%d writers hold the role", n)
		}
		w.mu.Lock()
		for _, f := range batch {
			w.out = append(w.out, bytes.Clone(f))
		}
		w.mu.Unlock()
		clear(batch)
		w.inRole.Add(-1)
		if !o.done(batch) {
			return
		}
	}
}

// Pushes from many goroutines, each starting a writer when its push took
// the role: every frame is written exactly once, each pusher's in order,
// and never by two writers at once.
func TestOutboundOneWriter(t *testing.T) {
	t.Parallel()
	o := newOutbound(1<<20, 1<<30, []byte("slow"))
	w := &fakeWriter{t: t}
	start := func() { w.run(&o) }
	var wg sync.WaitGroup
	const pushers, each = 8, 2000
	for p := range pushers {
		wg.Go(func() {
			for i := range each {
				ok, st, cut := o.push(fmt.Appendf(nil, "%d:%d", p, i))
				if !ok || cut != 0 {
					t.Errorf("push %d:%d refused", p, i)
					return
				}
				if st {
					wg.Go(start)
				}
			}
		})
	}
	wg.Wait()
	if len(w.out) != pushers*each {
		t.Fatalf("%d frames written, want %d", len(w.out), pushers*each)
	}
	next := make([]int, pushers)
	for _, f := range w.out {
		var p, i int
		fmt.Sscanf(string(f), "%d:%d", &p, &i)
		if i != next[p] {
			t.Fatalf("pusher %d: frame %d written after %d", p, i, next[p]-1)
		}
		next[p]++
	}
	if o.writing || o.bytes != 0 {
		t.Errorf("after the writers: writing %v, %d bytes queued", o.writing, o.bytes)
	}
}

// The limits: a push past either cuts the client in the same step — the
// queue dropped, the slow-consumer close queued alone; a batch taken no
// longer counts.
func TestOutboundLimits(t *testing.T) {
	t.Parallel()
	o := newOutbound(3, 10, []byte("slow"))
	for _, f := range []string{"aaaa", "bbbb"} {
		if ok, _, _ := o.push([]byte(f)); !ok {
			t.Fatalf("push %s refused", f)
		}
	}
	if b, _ := o.take(); len(b) != 2 {
		t.Fatalf("took %d frames", len(b))
	}
	for range 3 {
		if ok, _, cut := o.push([]byte("d")); !ok || cut != 0 {
			t.Fatal("push refused after the take")
		}
	}
	ok, start, cut := o.push([]byte("e")) // a fourth frame
	if ok || start || cut != 4 {
		t.Fatalf("over the frame limit: ok %v start %v cut %d, want a cut of 4 (the writer holds the role)", ok, start, cut)
	}
	if ok, _, cut := o.push([]byte("f")); ok || cut != 0 {
		t.Fatal("a cut queue took data, or was cut twice")
	}
	if b, closing := o.take(); !closing || len(b) != 1 || string(b[0]) != "slow" {
		t.Fatalf("after the cut took %q, closing %v", b, closing)
	}

	idle := newOutbound(1, 10, []byte("slow"))
	if _, _, cut := idle.push([]byte("0123456789x")); cut != 1 {
		t.Fatalf("over the byte limit: cut %d", cut)
	}
}

// Closing: what is queued goes first, then the close frame; a closing
// queue refuses data and is flushed once its writer is done.
func TestOutboundClose(t *testing.T) {
	t.Parallel()
	o := newOutbound(100, 1000, []byte("slow"))
	o.push([]byte("a"))
	if began, start := o.close([]byte("close"), false); !began || start {
		t.Fatalf("close: began %v start %v (the push's writer holds the role)", began, start)
	}
	if began, _ := o.close([]byte("again"), false); began {
		t.Fatal("a second close began")
	}
	if ok, _, _ := o.push([]byte("late")); ok {
		t.Fatal("a closing queue took data")
	}
	b, closing := o.take()
	if !closing || len(b) != 2 || string(b[1]) != "close" {
		t.Fatalf("took %q closing %v", b, closing)
	}
	select {
	case <-o.flushed:
		t.Fatal("flushed while the writer still holds the role")
	default:
	}
	if o.done(b) {
		t.Fatal("more after the close")
	}
	<-o.flushed

}

// The heartbeat's ping drops a large drained queue only after a whole
// round with nothing else pushed; a busy queue keeps it (reallocating per
// burst was most of the fan-out's garbage), and a small one is always kept.
func TestOutboundPingTrimsIdleSpare(t *testing.T) {
	t.Parallel()
	o := newOutbound(100, 1000, []byte("slow"))
	o.closing = true // the ping queues nothing
	o.spare = make([][]byte, 0, 64)
	o.queue = make([][]byte, 0, 32)
	o.active = true
	o.pushPing(pingFrame)
	if cap(o.spare) != 64 || o.active {
		t.Fatalf("after a round with traffic: spare cap %d (want 64 kept), active %v", cap(o.spare), o.active)
	}
	o.pushPing(pingFrame)
	if o.spare != nil || o.queue != nil {
		t.Fatalf("after an idle round: spare cap %d, queue cap %d, want both dropped", cap(o.spare), cap(o.queue))
	}
	o.spare = make([][]byte, 0, maxIdleSpare)
	o.pushPing(pingFrame)
	if cap(o.spare) != maxIdleSpare {
		t.Fatal("a small spare was dropped")
	}
}

// TestOutboundPairIsOneFrame checks that an SSE event (its id line and
// its body, pushed as a pair) counts as one frame against the limit.
func TestOutboundPairIsOneFrame(t *testing.T) {
	o := newOutbound(2, 1<<20, []byte("slow"))
	for i := range 2 {
		if ok, _, cut := o.pushPair([]byte("id: 1\n"), []byte("data: x\n\n"), qmeta{}); !ok || cut != 0 {
			t.Fatalf("pair %d of 2 refused (cut %d): a pair counted as two frames", i+1, cut)
		}
	}
	if ok, _, cut := o.pushPair([]byte("id: 1\n"), []byte("data: x\n\n"), qmeta{}); ok || cut != 3 {
		t.Fatalf("a third pair: ok %v, cut %d; want a cut of 3 frames", ok, cut)
	}
}
