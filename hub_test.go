package herald

import (
	"math/rand/v2"
	"testing"
)

// TestHubSubSet: random subscribes and unsubscribes keep a channel's
// subscriber list, positions and counts equal to a plain set's.
func TestHubSubSet(t *testing.T) {
	t.Parallel()
	h := newHub(4)
	conns := make([]*conn, 50)
	for i := range conns {
		conns[i] = &conn{id: string(rune('a' + i))}
	}
	want := map[*conn]*subEntry{}
	r := rand.New(rand.NewPCG(1, 2))
	for step := range 5000 {
		c := conns[r.IntN(len(conns))]
		if r.IntN(2) == 0 {
			e := &subEntry{}
			first := h.addSub("ch", c, e)
			if first != (len(want) == 0) {
				t.Fatalf("step %d: addSub first=%v with %d subscribers before", step, first, len(want))
			}
			want[c] = e
		} else {
			e, last := h.removeSub("ch", c)
			if e != want[c] {
				t.Fatalf("step %d: removeSub returned %p, want %p", step, e, want[c])
			}
			if e != nil {
				delete(want, c)
				if last != (len(want) == 0) {
					t.Fatalf("step %d: removeSub last=%v with %d left", step, last, len(want))
				}
			}
		}
		got := map[*conn]*subEntry{}
		h.forEachSub("ch", func(c *conn, e *subEntry) {
			if _, dup := got[c]; dup {
				t.Fatalf("step %d: %s visited twice", step, c.id)
			}
			got[c] = e
		})
		if len(got) != len(want) || h.numSubs("ch") != len(want) {
			t.Fatalf("step %d: visited %d, numSubs %d, want %d", step, len(got), h.numSubs("ch"), len(want))
		}
		for c, e := range want {
			if got[c] != e {
				t.Fatalf("step %d: %s has entry %p, want %p", step, c.id, got[c], e)
			}
		}
	}
}
