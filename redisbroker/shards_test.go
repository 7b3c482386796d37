package redisbroker

import (
	"fmt"
	"testing"
)

// TestRendezvous: adding a fourth server to three moves about a quarter of
// the channels, all to the new server; reordering the list moves none.
func TestRendezvous(t *testing.T) {
	ring := func(ids ...string) []ringNode {
		var r []ringNode
		for _, id := range ids {
			r = append(r, ringNode{seed: mix64(fnv64(id))})
		}
		return r
	}
	ids := []string{"10.0.0.1:6379/0", "10.0.0.2:6379/0", "10.0.0.3:6379/0"}
	three, four := ring(ids...), ring(append(ids, "10.0.0.4:6379/0")...)
	reordered := ring(ids[2], ids[0], ids[1])
	const n = 20000
	moved := 0
	for i := range n {
		ch := fmt.Sprintf("room:%d", i)
		a, b := rendezvous(three, ch), rendezvous(four, ch)
		if a != b {
			moved++
			if b != 3 {
				t.Fatalf("%s moved from server %d to %d, not to the new one", ch, a, b)
			}
		}
		if ids[a] != []string{ids[2], ids[0], ids[1]}[rendezvous(reordered, ch)] {
			t.Fatalf("%s moved when the list was reordered", ch)
		}
	}
	if f := float64(moved) / n; f < 0.22 || f > 0.28 {
		t.Fatalf("%.3f of the channels moved, want about 1/4", f)
	}
}

// TestSlotOf: the values CLUSTER KEYSLOT gives (Redis Cluster
// specification: CRC16 of "123456789" is 0x31C3).
func TestSlotOf(t *testing.T) {
	for in, want := range map[string]uint16{"123456789": 0x31C3, "foo": 12182, "": 0} {
		if got := slotOf(in); got != want {
			t.Errorf("slotOf(%q) = %d, want %d", in, got, want)
		}
	}
}
