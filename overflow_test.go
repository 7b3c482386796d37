package herald

import (
	"fmt"
	"slices"
	"strings"
	"testing"
)

// The overflow policies on the queue alone (no socket): what a full queue
// keeps, replaces and drops, and what the client is told.

// testQueue is an outbound queue whose dropped pushes are readable text.
func testQueue(frames, bytes int) *outbound {
	o := newOutbound(frames, bytes, []byte("slow"))
	o.note = func(channel string, count int, ranges [][2]uint64) []byte {
		return fmt.Appendf(nil, "dropped %s %d %v", channel, count, ranges)
	}
	return &o
}

// pushPub queues a publication of channel ch with key and offset, its frame
// "ch/key=v@offset", under policy pol.
func pushPub(t *testing.T, o *outbound, st *overflowStats, pol OverflowPolicy, ch, key, v string, offset uint64) (ok bool, cut int) {
	t.Helper()
	pub := &Publication{Channel: ch, Key: key, Offset: offset, Data: []byte(v)}
	m := qmeta{pub: pub, st: st, pol: pol, sub: &subEntry{}}
	if pol == OverflowDisconnect {
		m = qmeta{}
	}
	ok, _, cut = o.pushMeta(fmt.Appendf(nil, "%s/%s=%s@%d", ch, key, v, offset), m)
	return ok, cut
}

// drain takes everything queued, as a writer would, and returns it as text.
func drain(o *outbound) []string {
	var out []string
	for {
		batch, _ := o.take()
		if batch == nil {
			return out
		}
		for _, f := range batch {
			out = append(out, string(f))
		}
		clear(batch)
		if !o.done(batch) {
			return out
		}
	}
}

// checkAccounting verifies that the queue's counts match what it holds.
func checkAccounting(t *testing.T, o *outbound) {
	t.Helper()
	o.mu.Lock()
	defer o.mu.Unlock()
	bytes, frames, holes := 0, 0, 0
	for i, f := range o.queue {
		bytes += len(f)
		switch {
		case f == nil:
			holes++
		case o.meta == nil || !o.meta[i].tail:
			frames++
		}
	}
	if bytes != o.bytes || frames != o.frames || holes != o.holes {
		t.Fatalf("accounting: queue holds %d bytes, %d frames, %d holes; counted %d, %d, %d", bytes, frames, holes, o.bytes, o.frames, o.holes)
	}
	if o.meta != nil && len(o.meta) != len(o.queue) {
		t.Fatalf("meta has %d entries for %d queued", len(o.meta), len(o.queue))
	}
	if o.bytes > o.maxBytes || o.frames > o.maxFrames {
		t.Fatalf("queue past its limits: %d bytes, %d frames", o.bytes, o.frames)
	}
}

func TestOverflowConflate(t *testing.T) {
	t.Parallel()
	t.Run("replaces the newest of its key in place", func(t *testing.T) {
		t.Parallel()
		o, st := testQueue(4, 1<<20), &overflowStats{}
		o.writing = true // a writer holds the role and is stuck on the socket
		for i, k := range []string{"a", "b", "a", "b", "a", "c"} {
			if ok, cut := pushPub(t, o, st, OverflowConflate, "p", k, fmt.Sprint(i), 0); !ok || cut != 0 {
				t.Fatalf("push %d refused (cut %d)", i, cut)
			}
			checkAccounting(t, o)
		}
		o.writing = false
		got := drain(o)
		// a=4 took the slot of a=2; c found no slot of its own, so the
		// superseded a=0 and b=1 went to make room.
		want := []string{"p/a=4@0", "p/b=3@0", "p/c=5@0"}
		if !slices.Equal(got, want) {
			t.Fatalf("delivered %q, want %q", got, want)
		}
		if st.conflated.Load() != 3 || st.dropped.Load() != 0 {
			t.Fatalf("counted %d conflated, %d dropped; want 3, 0", st.conflated.Load(), st.dropped.Load())
		}
	})
	t.Run("keeps the latest of every key", func(t *testing.T) {
		t.Parallel()
		o, st := testQueue(10, 1<<20), &overflowStats{}
		o.writing = true
		latest := map[string]int{}
		for i := range 1000 {
			k := fmt.Sprint("k", i*7%10)
			latest[k] = i
			if ok, cut := pushPub(t, o, st, OverflowConflate, "p", k, fmt.Sprint(i), 0); !ok || cut != 0 {
				t.Fatalf("push %d refused", i)
			}
		}
		checkAccounting(t, o)
		o.writing = false
		last := map[string]int{}
		for _, f := range drain(o) {
			var k string
			var v int
			if _, err := fmt.Sscanf(strings.ReplaceAll(f[2:], "=", " "), "%s %d@0", &k, &v); err != nil {
				t.Fatalf("frame %q: %v", f, err)
			}
			if prev, ok := last[k]; ok && prev > v {
				t.Fatalf("key %s went back from %d to %d", k, prev, v)
			}
			last[k] = v
		}
		for k, v := range latest {
			if last[k] != v {
				t.Errorf("key %s ended at %d, want %d", k, last[k], v)
			}
		}
	})
	t.Run("more keys than the queue holds cut", func(t *testing.T) {
		t.Parallel()
		o, st := testQueue(3, 1<<20), &overflowStats{}
		o.writing = true
		for i := range 3 {
			pushPub(t, o, st, OverflowConflate, "p", fmt.Sprint(i), "v", 0)
		}
		if ok, cut := pushPub(t, o, st, OverflowConflate, "p", "new", "v", 0); ok || cut != 4 {
			t.Fatalf("a fourth key in a queue of 3: ok %v, cut %d; want a cut of 4", ok, cut)
		}
	})
	t.Run("bytes stay bounded", func(t *testing.T) {
		t.Parallel()
		o := testQueue(100, 60)
		o.writing = true
		for i := range 50 {
			v := strings.Repeat("x", i%7)
			if ok, _ := pushPub(t, o, &overflowStats{}, OverflowConflate, "p", fmt.Sprint(i%3), v, 0); !ok {
				t.Fatalf("push %d refused", i)
			}
			checkAccounting(t, o)
		}
	})
}

func TestOverflowDropOldest(t *testing.T) {
	t.Parallel()
	t.Run("tells exactly which offsets", func(t *testing.T) {
		t.Parallel()
		o, st := testQueue(4, 1<<20), &overflowStats{}
		o.writing = true
		for off := uint64(1); off <= 9; off++ {
			if ok, cut := pushPub(t, o, st, OverflowDropOldest, "c", "", "v", off); !ok || cut != 0 {
				t.Fatalf("push %d refused", off)
			}
			checkAccounting(t, o)
		}
		o.writing = false
		got := drain(o)
		want := []string{"dropped c 6 [[1 6]]", "c/=v@7", "c/=v@8", "c/=v@9"}
		if !slices.Equal(got, want) {
			t.Fatalf("delivered %q, want %q", got, want)
		}
		if st.dropped.Load() != 6 {
			t.Fatalf("counted %d dropped, want 6", st.dropped.Load())
		}
	})
	t.Run("channels and other policies", func(t *testing.T) {
		t.Parallel()
		o, st := testQueue(5, 1<<20), &overflowStats{}
		o.writing = true
		pushPub(t, o, st, OverflowDropOldest, "a", "", "v", 1)
		pushPub(t, o, st, OverflowDisconnect, "chat", "", "v", 0) // never dropped
		pushPub(t, o, st, OverflowDropOldest, "b", "", "v", 0)    // no history: a count
		pushPub(t, o, st, OverflowDropOldest, "a", "", "v", 2)
		pushPub(t, o, st, OverflowDropOldest, "a", "", "v", 3)
		o.push([]byte("reply")) // a reply makes room too
		pushPub(t, o, st, OverflowDropOldest, "b", "", "v", 0)
		pushPub(t, o, st, OverflowDropOldest, "a", "", "v", 5)
		checkAccounting(t, o)
		o.writing = false
		got := drain(o)
		// The reply needed room: a@1 and b gave their slots to dropped
		// pushes, a@2 made the room; b's second push dropped a@3, a@5 the
		// second b.
		want := []string{"dropped a 3 [[1 3]]", "chat/=v@0", "dropped b 2 []", "reply", "a/=v@5"}
		if !slices.Equal(got, want) {
			t.Fatalf("delivered %q, want %q", got, want)
		}
	})
	t.Run("nothing droppable left cuts", func(t *testing.T) {
		t.Parallel()
		o, st := testQueue(2, 1<<20), &overflowStats{}
		o.writing = true
		pushPub(t, o, st, OverflowDropOldest, "a", "", "v", 1)
		o.push([]byte("reply"))
		// The drop of a@1 leaves its dropped push: no room gained.
		if ok, cut := pushPub(t, o, st, OverflowDropOldest, "a", "", "v", 2); ok || cut == 0 {
			t.Fatalf("push into a queue of undroppable frames: ok %v, cut %d; want a cut", ok, cut)
		}
	})
	t.Run("raw: counted only", func(t *testing.T) {
		t.Parallel()
		o, st := testQueue(2, 1<<20), &overflowStats{}
		o.note = nil
		o.writing = true
		for off := uint64(1); off <= 5; off++ {
			pushPub(t, o, st, OverflowDropOldest, "a", "", "v", off)
			checkAccounting(t, o)
		}
		o.writing = false
		if got, want := drain(o), []string{"a/=v@4", "a/=v@5"}; !slices.Equal(got, want) {
			t.Fatalf("delivered %q, want %q", got, want)
		}
		if st.dropped.Load() != 3 {
			t.Fatalf("counted %d dropped, want 3", st.dropped.Load())
		}
	})
	t.Run("holes stay bounded", func(t *testing.T) {
		t.Parallel()
		o, st := testQueue(8, 1<<20), &overflowStats{}
		o.writing = true
		for off := uint64(1); off <= 10000; off++ {
			pushPub(t, o, st, OverflowDropOldest, "a", "", "v", off)
		}
		checkAccounting(t, o)
		if len(o.queue) > 2*o.maxFrames+1 {
			t.Fatalf("%d entries queued for a limit of %d frames", len(o.queue), o.maxFrames)
		}
		o.writing = false
		got := drain(o)
		if got[0] != "dropped a 9993 [[1 9993]]" || len(got) != 8 || got[7] != "a/=v@10000" {
			t.Fatalf("delivered %q", got)
		}
	})
}

// SSE events are pairs (id line and body): dropped and replaced whole.
func TestOverflowPairs(t *testing.T) {
	t.Parallel()
	o, st := testQueue(2, 1<<20), &overflowStats{}
	o.writing = true
	push := func(pol OverflowPolicy, key string, off uint64) {
		pub := &Publication{Channel: "c", Key: key, Offset: off}
		o.pushPair(fmt.Appendf(nil, "id:%d|", off), fmt.Appendf(nil, "%s@%d", key, off), qmeta{pub: pub, st: st, pol: pol})
		checkAccounting(t, o)
	}
	push(OverflowConflate, "x", 1)
	push(OverflowConflate, "y", 2)
	push(OverflowConflate, "x", 3)
	o.writing = false
	if got, want := strings.Join(drain(o), ""), "id:3|x@3id:2|y@2"; got != want {
		t.Fatalf("conflate delivered %q, want %q", got, want)
	}
	o.writing = true
	push(OverflowDropOldest, "", 4)
	push(OverflowDropOldest, "", 5)
	push(OverflowDropOldest, "", 6)
	push(OverflowDropOldest, "", 7)
	o.writing = false
	if got, want := strings.Join(drain(o), "|"), "dropped c 3 [[4 6]]|id:7||@7"; got != want {
		t.Fatalf("drop_oldest delivered %q, want %q", got, want)
	}
}

// A delta frame (O2's delta delivery) is never left queued after the frame
// it is based on went: it is swapped for its full frame, and the
// subscription is told.
func TestOverflowDeltaBase(t *testing.T) {
	t.Parallel()
	o, st := testQueue(3, 1<<20), &overflowStats{}
	o.writing = true
	sub := &subEntry{}
	pub := func(off uint64) *Publication { return &Publication{Channel: "c", Offset: off} }
	o.pushMeta([]byte("full1"), qmeta{pub: pub(1), sub: sub, st: st, pol: OverflowDropOldest})
	o.pushMeta([]byte("delta2"), qmeta{pub: pub(2), sub: sub, st: st, pol: OverflowDropOldest, full: []byte("full2")})
	o.pushMeta([]byte("delta3"), qmeta{pub: pub(3), sub: sub, st: st, pol: OverflowDropOldest, full: []byte("full3")})
	o.pushMeta([]byte("delta4"), qmeta{pub: pub(4), sub: sub, st: st, pol: OverflowDropOldest, full: []byte("full4")})
	checkAccounting(t, o)
	if !sub.overflowed.Load() {
		t.Error("the subscription was not told of the drop")
	}
	o.writing = false
	// delta4 is based on 3, which is still queued (as full3): kept.
	if got, want := drain(o), []string{"dropped c 2 [[1 2]]", "full3", "delta4"}; !slices.Equal(got, want) {
		t.Fatalf("delivered %q, want %q", got, want)
	}
}

// A writer that may wait (writeLoop) takes a bounded batch from a queue
// the policies act on: the rest stays queued, where conflation still
// replaces it.
func TestOverflowTakeSome(t *testing.T) {
	t.Parallel()
	o, st := testQueue(8, 1<<20), &overflowStats{}
	o.writing = true
	for i := range 8 {
		pushPub(t, o, st, OverflowConflate, "p", fmt.Sprint(i%4), fmt.Sprint(i), 0)
	}
	batch, _ := o.takeSome(3)
	if got := len(batch); got != 3 {
		t.Fatalf("took %d, want 3", got)
	}
	checkAccounting(t, o)
	// The three taken are the writer's; the five left, and the three
	// pushed that fill the queue, are the policy's: the fourth push drops
	// every superseded entry and takes key 1's slot.
	pushPub(t, o, st, OverflowConflate, "p", "1", "8", 0)
	pushPub(t, o, st, OverflowConflate, "p", "1", "9", 0)
	pushPub(t, o, st, OverflowConflate, "p", "1", "10", 0)
	pushPub(t, o, st, OverflowConflate, "p", "1", "11", 0)
	checkAccounting(t, o)
	clear(batch)
	o.done(batch)
	o.writing = false
	got := drain(o)
	want := []string{"p/0=4@0", "p/2=6@0", "p/3=7@0", "p/1=11@0"}
	if !slices.Equal(got, want) {
		t.Fatalf("delivered %q, want %q", got, want)
	}
}

// In a queue the policies act on, the heartbeat's ping goes first: a slow
// client kept connected with a backlog still answers it in time.
func TestOverflowPingFirst(t *testing.T) {
	t.Parallel()
	o, st := testQueue(8, 1<<20), &overflowStats{}
	o.writing = true
	for i := range 3 {
		pushPub(t, o, st, OverflowDropOldest, "c", "", fmt.Sprint(i), uint64(i+1))
	}
	o.active = true
	if ok, _, _ := o.pushPing([]byte("ping")); !ok {
		t.Fatal("ping refused")
	}
	checkAccounting(t, o)
	for i := 3; i < 9; i++ {
		pushPub(t, o, st, OverflowDropOldest, "c", "", fmt.Sprint(i), uint64(i+1))
	}
	checkAccounting(t, o)
	o.writing = false
	want := []string{"ping", "dropped c 3 [[1 3]]", "c/=3@4", "c/=4@5", "c/=5@6", "c/=6@7", "c/=7@8", "c/=8@9"}
	if got := drain(o); !slices.Equal(got, want) {
		t.Fatalf("delivered %q, want %q", got, want)
	}
}
