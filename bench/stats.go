package bench

import (
	"sync"
	"sync/atomic"

	hdrhistogram "github.com/HdrHistogram/hdrhistogram-go"
)

// seqKind classifies one delivery of a stream's sequence number.
type seqKind uint8

const (
	seqNew       seqKind = iota // first delivery of a number above every number seen
	seqReordered                // first delivery of a number below the highest seen
	seqDup                      // a number delivered before
	seqTooOld                   // below the tracked window: new or repeated, cannot tell
)

// windowBits is how far below the highest number a tracker still tells a
// duplicate from a late first delivery.
const windowBits = 1024

// seqTracker follows the sequence numbers of one stream (one channel's
// publisher) as one subscriber receives them. Numbers start at 1. Herald
// delivers a channel in order, so every delivery should be seqNew; a gap
// shows up as loss (expected minus unique deliveries), a repeat as seqDup.
// Not safe for concurrent use: each subscriber owns its trackers.
type seqTracker struct {
	highest uint64
	// seen holds bit d for number highest-d, d < windowBits.
	seen [windowBits / 64]uint64
}

// observe records one delivery of seq and classifies it.
func (t *seqTracker) observe(seq uint64) seqKind {
	if seq > t.highest {
		t.shift(seq - t.highest)
		t.highest = seq
		t.seen[0] |= 1
		return seqNew
	}
	d := t.highest - seq
	if d >= windowBits {
		return seqTooOld
	}
	w, b := d/64, d%64
	if t.seen[w]&(1<<b) != 0 {
		return seqDup
	}
	t.seen[w] |= 1 << b
	return seqReordered
}

// shift moves the window up by n numbers: bit d becomes bit d+n.
func (t *seqTracker) shift(n uint64) {
	if n >= windowBits {
		t.seen = [windowBits / 64]uint64{}
		return
	}
	words, bits := int(n/64), n%64
	for i := len(t.seen) - 1; i >= 0; i-- {
		var v uint64
		if j := i - words; j >= 0 {
			v = t.seen[j] << bits
			if bits != 0 && j > 0 {
				v |= t.seen[j-1] >> (64 - bits)
			}
		}
		t.seen[i] = v
	}
}

// Latency histograms count microseconds, from 1 µs to 5 minutes, to three
// significant digits.
const (
	histMaxMicros = 300_000_000
	histShards    = 8
)

func newHist() *hdrhistogram.Histogram { return hdrhistogram.New(1, histMaxMicros, 3) }

// stepStats are the counters of one step, updated by every subscriber
// goroutine at once. Latencies go to one of a few locked histograms, picked
// by subscriber, so that two cores rarely contend.
type stepStats struct {
	unique    atomic.Int64 // first deliveries of this step's publications
	dups      atomic.Int64
	reordered atomic.Int64
	tooOld    atomic.Int64
	onTime    atomic.Int64 // unique deliveries within the on-time bound
	misrouted atomic.Int64 // publications of another channel
	late      atomic.Int64 // unique deliveries after the step was reported
	// mu is held shared by every delivery while it counts, and exclusively
	// by finalize, so that a finalized step's figures are complete and
	// consistent: nothing half-counted, nothing counted after.
	mu    sync.RWMutex
	final bool // reported: later deliveries count as late
	hist  [histShards]lockedHist
}

type lockedHist struct {
	mu sync.Mutex
	h  *hdrhistogram.Histogram
}

func newStepStats() *stepStats {
	s := &stepStats{}
	for i := range s.hist {
		s.hist[i].h = newHist()
	}
	return s
}

// deliver records one delivery classified by kind, with its latency in
// nanoseconds. shard picks the histogram (any int; the subscriber's id).
func (s *stepStats) deliver(kind seqKind, latencyNs, onTimeNs int64, shard int) {
	s.mu.RLock()
	defer s.mu.RUnlock()
	switch kind {
	case seqDup:
		s.dups.Add(1)
		return
	case seqTooOld:
		s.tooOld.Add(1)
		return
	}
	if s.final {
		s.late.Add(1)
		return
	}
	if kind == seqReordered {
		s.reordered.Add(1)
	}
	s.unique.Add(1)
	if latencyNs <= onTimeNs {
		s.onTime.Add(1)
	}
	us := max(latencyNs/1000, 1)
	h := &s.hist[shard%histShards]
	h.mu.Lock()
	if h.h.RecordValue(min(us, histMaxMicros)) != nil {
		// Out of range cannot happen after the clamp; keep the count anyway.
		_ = h.h.RecordValue(histMaxMicros)
	}
	h.mu.Unlock()
}

// finalize marks the step reported: deliveries of its publications that
// come later count as late, not as delivered. It waits for deliveries being
// counted.
func (s *stepStats) finalize() {
	s.mu.Lock()
	s.final = true
	s.mu.Unlock()
}

// merged returns one histogram of every shard.
func (s *stepStats) merged() *hdrhistogram.Histogram {
	out := newHist()
	for i := range s.hist {
		h := &s.hist[i]
		h.mu.Lock()
		out.Merge(h.h)
		h.mu.Unlock()
	}
	return out
}

// Latency is a latency distribution's summary, in milliseconds.
type Latency struct {
	Count int64   `json:"count"`
	P50   float64 `json:"p50_ms"`
	P90   float64 `json:"p90_ms"`
	P99   float64 `json:"p99_ms"`
	P999  float64 `json:"p999_ms"`
	Max   float64 `json:"max_ms"`
}

func summarize(h *hdrhistogram.Histogram) Latency {
	if h.TotalCount() == 0 {
		return Latency{}
	}
	ms := func(us int64) float64 { return float64(us) / 1000 }
	return Latency{
		Count: h.TotalCount(),
		P50:   ms(h.ValueAtQuantile(50)),
		P90:   ms(h.ValueAtQuantile(90)),
		P99:   ms(h.ValueAtQuantile(99)),
		P999:  ms(h.ValueAtQuantile(99.9)),
		Max:   ms(h.Max()),
	}
}
