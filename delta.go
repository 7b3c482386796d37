package herald

import (
	"encoding/json"
	"errors"
	"fmt"
	"sync"
	"sync/atomic"

	"github.com/centrifugal/fdelta"
	"github.com/prometheus/client_golang/prometheus"

	"github.com/heraldhq/herald/internal/wsframe"
	"github.com/heraldhq/herald/protocol"
)

// Delta delivery (Namespace.Delta, PROTOCOL.md "Delta delivery").
//
// A subscriber that asked for deltas gets publication N of a channel as a
// fossil delta against publication N-1 when, and only when, the previous
// publication frame the fan-out queued to it was N-1 (subEntry.deltaLast)
// and this node handled N-1 just before N (deltaState.prev). Anything else —
// the first publication after subscribing or recovering, a gap or an epoch
// change, a switch between text and binary, every deltaFullEvery-th
// publication, a delta no smaller than the full frame — goes full. So a
// delta is only ever sent on its exact base, as this node delivered it:
// brokers carry full publications, and each node computes its own deltas.
//
// Cost: the delta is computed once per publication and framed once per
// wire form (deflated or not), like the full frame; per subscriber the
// fan-out only compares two offsets and picks which shared frame to queue.

// DeltaType is a namespace's delta delivery.
type DeltaType string

// Delta types.
const (
	// DeltaNone sends full publications only (the default).
	DeltaNone DeltaType = ""
	// DeltaFossil sends fossil deltas to subscribers that ask for them.
	DeltaFossil DeltaType = protocol.DeltaFossil
)

func (d DeltaType) check(historySize int) error {
	switch d {
	case DeltaNone:
		return nil
	case DeltaFossil:
		if historySize <= 0 {
			return errors.New("delta needs history (HistorySize; history_size in the config file): a delta's base is named by its offset")
		}
		return nil
	}
	return fmt.Errorf("unknown delta type %q (want %q)", string(d), DeltaFossil)
}

// deltaFullEvery: every deltaFullEvery-th publication of a channel on a
// node is sent full to every subscriber, so that a client that somehow
// holds a wrong base (and whose checksum did not catch it) is put right
// within a bounded number of publications. 32 costs about 3% of the savings
// on a stream of small changes.
const deltaFullEvery = 32

// DeltaStats counts a namespace's publications sent as deltas on this node.
type DeltaStats struct {
	// Deliveries counts the publications queued to a subscriber as a
	// delta instead of in full.
	Deliveries uint64 `json:"deliveries"`
	// BytesSaved sums, over those deliveries, the full frame's size minus
	// the delta frame's (both as sent: deflated when the connection
	// negotiated compression).
	BytesSaved uint64 `json:"bytes_saved"`
}

type deltaCounters struct{ deliveries, saved atomic.Uint64 }

// deltaNode is the node's delta state.
type deltaNode struct {
	// states: channel -> *deltaState, for each channel that got a local
	// subscriber that negotiated deltas since it last had no local
	// subscriber. Added (subscribeChecked) and removed (removeSubscription,
	// last local subscriber) under the channel's subLock; nstates counts
	// them, so that channels without any pay no map lookup per publication.
	states  sync.Map
	nstates atomic.Int64
	// stats: namespace name -> *deltaCounters, never removed (one per
	// configured namespace with deltas).
	stats sync.Map
}

// deltaState is what the node remembers of a channel for its deltas: the
// publication it handled last. Only HandlePublication uses it, and a
// broker hands a channel's publications over one at a time; mu makes that
// independent of the broker.
type deltaState struct {
	mu     sync.Mutex
	prev   *Publication // immutable once handed to the node
	prevOK bool         // prev can be a base (deltable)
	count  uint64       // publications handled
	stats  *deltaCounters
}

// deltaPub is the delta side of one publication's fan-out, on the stack of
// HandlePublication: the delta is computed the first time a subscriber can
// take it, and framed once per wire form.
type deltaPub struct {
	pub, base *Publication // base nil: no delta for this publication
	tried     bool
	delta     []byte
	frames    [2][]byte // by form (formProtocol, formProtocolDeflate); noFrame: not worth it
	sent      uint64
	saved     uint64
	stats     *deltaCounters
}

// noFrame marks a form whose delta frame is no smaller than the full one.
var noFrame = []byte{}

// wantDelta reports whether c's subscription to a channel of ns, which
// asked for deltas of type asked, gets them: only herald.v1 WebSocket
// connections (raw and SSE connections have no delta frames).
func wantDelta(c *conn, ns *Namespace, asked string) bool {
	return asked != "" && DeltaType(asked) == ns.Delta && ns.Delta != DeltaNone && c.form <= formProtocolDeflate && c.sse == nil
}

// trackDelta makes the node keep the channel's previous publication, for a
// delta subscription about to join the hub. The channel's subLock is held
// (addSub).
func (n *Node) trackDelta(channel string, ns *Namespace) {
	v, ok := n.delta.stats.Load(ns.Name)
	if !ok {
		v, _ = n.delta.stats.LoadOrStore(ns.Name, new(deltaCounters))
	}
	if _, loaded := n.delta.states.LoadOrStore(channel, &deltaState{stats: v.(*deltaCounters)}); !loaded {
		n.delta.nstates.Add(1)
	}
}

// untrackDelta forgets the channel's delta state: its last local
// subscriber left. The channel's subLock is held.
func (n *Node) untrackDelta(channel string) {
	if _, ok := n.delta.states.LoadAndDelete(channel); ok {
		n.delta.nstates.Add(-1)
	}
}

// deltaBegin records pub as the channel's latest and says whether it can
// go as a delta against the one before.
func (n *Node) deltaBegin(pub *Publication) deltaPub {
	if n.delta.nstates.Load() == 0 || pub.Kind != KindPublication || pub.Offset == 0 {
		return deltaPub{}
	}
	v, ok := n.delta.states.Load(pub.Channel)
	if !ok {
		return deltaPub{}
	}
	ds := v.(*deltaState)
	ok = deltable(pub)
	ds.mu.Lock()
	prev, prevOK := ds.prev, ds.prevOK
	ds.prev, ds.prevOK = pub, ok
	ds.count++
	periodic := ds.count%deltaFullEvery == 0
	ds.mu.Unlock()
	dx := deltaPub{pub: pub, stats: ds.stats}
	if ok && prevOK && !periodic && prev.Offset+1 == pub.Offset && prev.Epoch == pub.Epoch && prev.Binary == pub.Binary && prev.Key == pub.Key {
		dx.base = prev
	}
	return dx
}

// deltable reports whether pub's payload can be a delta's base or result:
// binary, or JSON text that a client holds byte for byte (the push carries
// it as is: no surrounding whitespace, which the JSON decoders drop).
func deltable(pub *Publication) bool {
	if pub.Binary {
		return true
	}
	d := pub.Data
	return len(d) > 0 && !jsonSpace(d[0]) && !jsonSpace(d[len(d)-1]) && json.Valid(d)
}

func jsonSpace(b byte) bool { return b == ' ' || b == '\t' || b == '\n' || b == '\r' }

// sendDelta queues pub to the delta subscriber e of c as a delta, if e's
// previous publication is the delta's base and the delta is worth it, and
// reports whether it did; otherwise the caller queues full. Fan-out only
// (it writes e.deltaLast).
func (n *Node) sendDelta(dx *deltaPub, c *conn, e *subEntry, full []byte, m qmeta, fl *inlineFlush) bool {
	if dx.pub == nil {
		// A join or leave (deltaBegin takes only publications): it goes
		// full and leaves the chain of publications as it is.
		return false
	}
	last := e.deltaLast.Swap(dx.pub.Offset)
	// An overflow policy dropped or replaced a publication queued to it:
	// the one it last queued may never arrive, so this one goes full.
	overflowed := e.overflowed.Swap(false)
	if overflowed || dx.base == nil || last != dx.base.Offset {
		return false
	}
	f := dx.frame(n, c.form, full)
	if f == nil {
		return false
	}
	c.enqueuePubFull(dx.pub, f, full, m, fl)
	dx.sent++
	dx.saved += uint64(len(full) - len(f))
	return true
}

// enqueuePubFull queues frame, the delta of pub, as enqueuePub does;
// full is pub's full frame. It travels in the entry's metadata: a queue
// policy that drops or replaces a queued publication of the channel
// (conflate, drop_oldest) swaps every delta queued after it for its full
// frame, so that a delta is only ever applied on its exact base.
func (c *conn) enqueuePubFull(pub *Publication, frame, full []byte, m qmeta, fl *inlineFlush) {
	m.full = full
	c.enqueuePub(pub, frame, m, fl)
}

// frame returns the delta frame for form, nil when the delta is not
// smaller than full.
func (dx *deltaPub) frame(n *Node, form uint8, full []byte) []byte {
	if !dx.tried {
		dx.tried = true
		dx.delta = fdelta.Create(dx.base.Data, dx.pub.Data)
	}
	f := dx.frames[form]
	if f == nil {
		payload := protocol.AppendDeltaPush(nil, dx.pub.Channel, dx.pub.Offset, dx.delta)
		f = n.buildFrame(wsframe.OpBinary, payload, form == formProtocolDeflate)
		if len(f) >= len(full) {
			f = noFrame
		}
		dx.frames[form] = f
	}
	if len(f) == 0 {
		return nil
	}
	return f
}

// end adds the publication's deltas to its namespace's counters.
func (dx *deltaPub) end() {
	if dx.sent > 0 {
		dx.stats.deliveries.Add(dx.sent)
		dx.stats.saved.Add(dx.saved)
	}
}

// DeltaStats returns, for each namespace with deltas, its publications
// sent as deltas on this node since it started. Safe from any goroutine.
func (n *Node) DeltaStats() map[string]DeltaStats {
	out := make(map[string]DeltaStats)
	n.delta.stats.Range(func(k, v any) bool {
		c := v.(*deltaCounters)
		out[k.(string)] = DeltaStats{Deliveries: c.deliveries.Load(), BytesSaved: c.saved.Load()}
		return true
	})
	return out
}

// deltaCollector exports DeltaStats to Prometheus, by namespace.
type deltaCollector struct{ n *Node }

var (
	deltaDeliveriesDesc = prometheus.NewDesc("herald_delta_deliveries_total",
		"Publications queued to a subscriber as a delta instead of in full, by namespace.", []string{"namespace"}, nil)
	deltaSavedDesc = prometheus.NewDesc("herald_delta_bytes_saved_total",
		"Bytes not sent thanks to deltas (full frame minus delta frame, summed over delta deliveries), by namespace.", []string{"namespace"}, nil)
)

// Describe implements prometheus.Collector.
func (deltaCollector) Describe(ch chan<- *prometheus.Desc) {
	ch <- deltaDeliveriesDesc
	ch <- deltaSavedDesc
}

// Collect implements prometheus.Collector.
func (d deltaCollector) Collect(ch chan<- prometheus.Metric) {
	for ns, st := range d.n.DeltaStats() {
		ch <- prometheus.MustNewConstMetric(deltaDeliveriesDesc, prometheus.CounterValue, float64(st.Deliveries), ns)
		ch <- prometheus.MustNewConstMetric(deltaSavedDesc, prometheus.CounterValue, float64(st.BytesSaved), ns)
	}
}
