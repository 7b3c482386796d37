package dashboard

import (
	"context"
	"slices"
	"time"

	"github.com/heraldhq/herald"
)

// The charts' samples.

const (
	sampleEvery = time.Second
	maxSamples  = 300 // five minutes of history on the charts
)

// sample is one point of the charts: rates are per second over the
// interval before T.
type sample struct {
	T           int64   `json:"t"` // Unix milliseconds
	Connections int     `json:"connections"`
	InRate      float64 `json:"in_per_sec"`
	OutRate     float64 `json:"out_per_sec"`
	PubRate     float64 `json:"published_per_sec"`
	Slow        uint64  `json:"slow_disconnects"` // in the interval
}

// Run samples the node's counters for the charts once a second while the
// dashboard is on, keeping the last five minutes, so that a page opened
// now shows the last minutes, not an empty chart. It returns when ctx is
// done. Call it once, on a goroutine of its own, for as long as the
// dashboard is mounted; without it the charts stay empty (the figures
// above them still show).
func (d *Dashboard) Run(ctx context.Context) {
	t := time.NewTicker(sampleEvery)
	defer t.Stop()
	var prev herald.Stats
	var prevAt time.Time
	for {
		select {
		case <-ctx.Done():
			return
		case now := <-t.C:
			if !d.Enabled() {
				d.mu.Lock()
				d.samples = nil
				d.mu.Unlock()
				prevAt = time.Time{}
				continue
			}
			st := d.node.Stats()
			if !prevAt.IsZero() {
				d.addSample(newSample(prev, st, now.Sub(prevAt), now))
			}
			prev, prevAt = st, now
		}
	}
}

// newSample is the sample at now of the counters that went from prev to
// st over dt.
func newSample(prev, st herald.Stats, dt time.Duration, now time.Time) sample {
	secs := dt.Seconds()
	return sample{
		T:           now.UnixMilli(),
		Connections: st.Connections,
		InRate:      float64(st.MessagesIn-prev.MessagesIn) / secs,
		OutRate:     float64(st.FramesOut-prev.FramesOut) / secs,
		PubRate:     float64(st.Published-prev.Published) / secs,
		Slow:        st.SlowConsumers - prev.SlowConsumers,
	}
}

func (d *Dashboard) addSample(s sample) {
	d.mu.Lock()
	defer d.mu.Unlock()
	if len(d.samples) == maxSamples {
		d.samples = slices.Delete(d.samples, 0, 1)
	}
	d.samples = append(d.samples, s)
}
