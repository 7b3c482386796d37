package herald

import (
	"testing"
	"unsafe"
)

// TestIdleConnectionSizes guards the memory of an idle connection (S1 in
// docs/benchmarks.md, at most 5 KB per idle connection): the structures
// every herald.v1 connection carries stay within the allocator's size
// class they fill today. A field that only some connections need (the
// publish batches of a publisher) belongs behind a pointer, made on first
// use: pubBatch in the session took it from 96 bytes to 320 when it was
// inline.
func TestIdleConnectionSizes(t *testing.T) {
	for _, c := range []struct {
		name      string
		size, max uintptr
	}{
		{"conn", unsafe.Sizeof(conn{}), 1024},
		{"v1Session", unsafe.Sizeof(v1Session{}), 96},
	} {
		if c.size > c.max {
			t.Errorf("%s is %d bytes, more than the %d of its size class: every idle connection pays for it", c.name, c.size, c.max)
		}
	}
}
