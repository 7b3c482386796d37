package herald

import (
	"slices"
	"sync"
	"sync/atomic"

	"github.com/heraldhq/herald/internal/wsframe"
	"github.com/heraldhq/herald/protocol"
)

// Overflow policies in the outbound queue (see OverflowPolicy).
//
// A queue that only ever held frames of OverflowDisconnect namespaces and
// non-publications works as before and keeps no metadata: the first
// droppable publication (drop_oldest or conflate) queued makes the queue
// keep a qmeta per entry, parallel to queue, until the connection ends. So
// the common path allocates nothing more, and on the others a qmeta is a
// value appended to a reused slice: still nothing per subscriber.
//
// Only a push that would take the queue past its limits looks at the
// metadata (makeRoomLocked). It makes room, in this order, from the
// entries whose policies allow it: conflate entries that a newer queued
// one of the same channel and key supersedes go; a conflate publication
// then takes the slot of its key's queued one, if any; then the oldest drop_oldest
// entries go, each channel's first one replaced by a dropped push that the
// later drops of the channel extend. An entry that goes becomes a hole
// (a nil frame), so that nothing is moved on the common overflow; take
// squeezes the holes out, and so does a push once they outnumber the limit.

// qmeta describes one queued entry of an outbound queue that keeps
// metadata. The zero value is an entry no policy may drop: a reply, a
// ping, a join or leave, a publication of an OverflowDisconnect namespace.
type qmeta struct {
	pub *Publication // a droppable publication (pol is not disconnect)
	sub *subEntry    // its subscription, told when it loses a frame; may be nil
	st  *overflowStats
	// full is, for a delta frame (O2's delta delivery), the full frame of
	// the same publication in the same wire form: swapped in when the
	// delta's base is dropped or replaced. nil for a full frame.
	full []byte
	note *dropNote // this entry is the dropped push of note.channel
	pol  OverflowPolicy
	// pair: this entry and the next are one message (an SSE event's id
	// line and its body); tail marks the second.
	pair, tail bool
}

// droppable reports whether a policy may drop or replace the entry.
func (m *qmeta) droppable() bool { return m.pub != nil && m.pol != OverflowDisconnect && !m.tail }

// dropNote is the dropped push queued for one channel, which later drops of
// the channel's publications extend while it is still queued.
type dropNote struct {
	channel string
	count   int
	ranges  [][2]uint64 // offsets dropped, inclusive ranges; none without history
}

// add records a dropped publication at offset (0 for a channel without
// history).
func (d *dropNote) add(offset uint64) {
	d.count++
	if offset == 0 {
		return
	}
	if k := len(d.ranges) - 1; k >= 0 && d.ranges[k][1]+1 == offset {
		d.ranges[k][1] = offset
		return
	}
	d.ranges = append(d.ranges, [2]uint64{offset, offset})
}

// overflowStats counts one namespace's publications that overflow policies
// conflated away or dropped, for the metrics (by namespace name, across
// reloads).
type overflowStats struct {
	conflated, dropped atomic.Uint64
}

// overflowRegistry holds the overflowStats of every namespace that has had
// a policy other than OverflowDisconnect.
type overflowRegistry struct {
	m sync.Map // namespace name → *overflowStats
}

func (r *overflowRegistry) of(name string) *overflowStats {
	if st, ok := r.m.Load(name); ok {
		return st.(*overflowStats)
	}
	st, _ := r.m.LoadOrStore(name, &overflowStats{})
	return st.(*overflowStats)
}

// each calls f for every namespace's counters.
func (r *overflowRegistry) each(f func(name string, st *overflowStats)) {
	r.m.Range(func(k, v any) bool {
		f(k.(string), v.(*overflowStats))
		return true
	})
}

// overflowMeta returns the metadata of pub's entries in the queues of its
// channel's subscribers: once per publication, not per subscriber. The
// zero qmeta (not droppable) for OverflowDisconnect and for presence
// events.
func (n *Node) overflowMeta(pub *Publication) qmeta {
	if pub.Kind != KindPublication {
		return qmeta{}
	}
	ns := n.ns.load().lookup(pub.Channel)
	if ns == nil || ns.Overflow == OverflowDisconnect {
		return qmeta{}
	}
	return qmeta{pub: pub, st: n.overflow.of(ns.Name), pol: ns.Overflow}
}

// subMeta is overflowMeta for one subscription's entry.
func (n *Node) subMeta(pub *Publication, e *subEntry) qmeta {
	m := n.overflowMeta(pub)
	if m.pub != nil {
		m.sub = e
	}
	return m
}

// droppedFrame builds a dropped push for c's wire form (outbound.note).
func (c *conn) droppedFrame(channel string, count int, ranges [][2]uint64) []byte {
	push := protocol.AppendDroppedPush(nil, channel, count, ranges)
	if c.sse != nil {
		return appendSSEEvent(nil, protocol.PushDropped, push)
	}
	return c.frame(wsframe.OpText, push)
}

// fitsLocked reports whether one more message of size bytes fits.
func (o *outbound) fitsLocked(size int) bool {
	return o.frames < o.maxFrames && o.bytes+size <= o.maxBytes
}

// msgBytes is the size of the message at i (both entries of a pair).
func (o *outbound) msgBytes(i int) int {
	n := len(o.queue[i])
	if o.meta[i].pair {
		n += len(o.queue[i+1])
	}
	return n
}

// makeRoomLocked is called when a message of size bytes described by m
// would take the queue past its limits. It returns slot >= 0 when the
// message is to replace the one queued there (conflation), room when it
// may be appended now; neither means the client must be cut.
func (o *outbound) makeRoomLocked(size int, m qmeta) (slot int, room bool) {
	if o.meta == nil {
		return -1, false // nothing droppable was ever queued
	}
	if o.conflatable > 0 && o.superseded {
		// All the superseded entries go at once: the queue shrinks to one
		// per key, so the next overflow is a queue's worth of pushes away
		// (the scan is paid once per that many), and a slow client's
		// backlog, its staleness, stays short.
		o.conflateLocked()
	}
	if m.pol == OverflowConflate && m.pub != nil {
		// The newest takes the slot of its key's queued one.
		if i := o.lastOfKey(m.pub); i >= 0 && o.meta[i].pair == m.pair && o.bytes-o.msgBytes(i)+size <= o.maxBytes {
			return i, false
		}
	}
	if o.fitsLocked(size) {
		return -1, true
	}
	for o.dropOldestLocked() {
		if o.fitsLocked(size) {
			return -1, true
		}
	}
	return -1, false
}

// lastOfKey returns the newest queued conflate entry of pub's channel and
// key, or -1.
func (o *outbound) lastOfKey(pub *Publication) int {
	for i := len(o.meta) - 1; i >= 0; i-- {
		if mt := &o.meta[i]; o.queue[i] != nil && mt.pol == OverflowConflate && mt.droppable() && mt.pub.Key == pub.Key && mt.pub.Channel == pub.Channel {
			return i
		}
	}
	return -1
}

// replaceLocked puts the message (head, when a pair, and frame) described
// by m in the place of the conflate entry at i, which it supersedes.
func (o *outbound) replaceLocked(i int, head, frame []byte, m qmeta) {
	old := o.meta[i]
	o.bytes -= o.msgBytes(i)
	o.lost(&old, true)
	if m.full != nil { // never a delta in place of another frame
		frame, m.full = m.full, nil
	}
	if m.pair {
		o.queue[i], o.queue[i+1] = head, frame
		o.bytes += len(head)
	} else {
		o.queue[i] = frame
	}
	o.bytes += len(frame)
	o.meta[i] = m
	o.conflatable++
	o.fullAfterLocked(i, m.pub.Channel)
}

// lost accounts for a publication entry that will not reach the client:
// its namespace's counter, and its subscription is told (a delta sent after
// it must not count on it as a base).
func (o *outbound) lost(m *qmeta, conflated bool) {
	if m.st != nil {
		if conflated {
			m.st.conflated.Add(1)
		} else {
			m.st.dropped.Add(1)
		}
	}
	if m.sub != nil {
		m.sub.overflowed.Store(true)
	}
	if m.pol == OverflowConflate {
		o.conflatable--
	}
}

// holeLocked removes the message at i, leaving holes.
func (o *outbound) holeLocked(i int) {
	o.bytes -= o.msgBytes(i)
	o.frames--
	o.queue[i] = nil
	if o.meta[i].pair {
		o.queue[i+1] = nil
		o.holes++
	}
	o.holes++
	o.meta[i] = qmeta{}
}

// fullAfterLocked swaps every delta frame of channel queued after i for its
// full frame: the delta's base may be what was just dropped or replaced.
func (o *outbound) fullAfterLocked(i int, channel string) {
	for j := i + 1; j < len(o.meta); j++ {
		if mt := &o.meta[j]; mt.full != nil && o.queue[j] != nil && mt.pub.Channel == channel {
			k := j
			if mt.pair {
				k = j + 1
			}
			o.bytes += len(mt.full) - len(o.queue[k])
			o.queue[k], mt.full = mt.full, nil
		}
	}
}

type conflateKey struct{ channel, key string }

// conflateLocked removes the conflate entries that a newer queued one of
// the same channel and key supersedes.
func (o *outbound) conflateLocked() {
	o.superseded = false
	seen := make(map[conflateKey]struct{}, o.conflatable)
	for i := len(o.meta) - 1; i >= 0; i-- {
		mt := &o.meta[i]
		if o.queue[i] == nil || mt.pol != OverflowConflate || !mt.droppable() {
			continue
		}
		k := conflateKey{mt.pub.Channel, mt.pub.Key}
		if _, ok := seen[k]; !ok {
			seen[k] = struct{}{}
			continue
		}
		old := *mt
		o.holeLocked(i)
		o.lost(&old, true)
		o.fullAfterLocked(i, old.pub.Channel)
	}
}

// dropOldestLocked drops the oldest queued drop_oldest publication, and
// reports false if there is none. The client is told (note): the first
// drop of a channel puts its dropped push in the publication's place,
// later ones extend it.
func (o *outbound) dropOldestLocked() bool {
	for ; o.dropFrom < len(o.meta); o.dropFrom++ {
		i := o.dropFrom
		mt := o.meta[i]
		if o.queue[i] == nil || mt.pol != OverflowDropOldest || !mt.droppable() {
			continue
		}
		o.lost(&mt, false)
		nt := o.noteOf(mt.pub.Channel)
		if nt == nil && o.note != nil {
			// The channel's first drop: its dropped push takes the slot.
			nt = &dropNote{channel: mt.pub.Channel}
			nt.add(mt.pub.Offset)
			o.notes = append(o.notes, nt)
			o.bytes -= o.msgBytes(i)
			if mt.pair {
				o.queue[i+1] = nil
				o.holes++
			}
			o.queue[i] = o.note(nt.channel, nt.count, nt.ranges)
			o.bytes += len(o.queue[i])
			o.meta[i] = qmeta{note: nt}
		} else {
			o.holeLocked(i)
			if nt != nil {
				nt.add(mt.pub.Offset)
				o.rebuildNote(nt)
			}
		}
		o.fullAfterLocked(i, mt.pub.Channel)
		o.dropFrom++
		return true
	}
	return false
}

// noteOf returns the dropped push of channel still queued, or nil.
func (o *outbound) noteOf(channel string) *dropNote {
	for _, nt := range o.notes {
		if nt.channel == channel {
			return nt
		}
	}
	return nil
}

// rebuildNote re-encodes a queued dropped push after a drop extended it.
func (o *outbound) rebuildNote(nt *dropNote) {
	for i := range o.meta {
		if o.meta[i].note == nt {
			f := o.note(nt.channel, nt.count, nt.ranges)
			o.bytes += len(f) - len(o.queue[i])
			o.queue[i] = f
			return
		}
	}
}

// squeezeLocked removes the holes, keeping the order of the rest.
func (o *outbound) squeezeLocked() {
	k := 0
	for i, f := range o.queue {
		if f == nil {
			continue
		}
		o.queue[k] = f
		if o.meta != nil {
			o.meta[k] = o.meta[i]
		}
		k++
	}
	clear(o.queue[k:])
	o.queue = o.queue[:k]
	if o.meta != nil {
		clear(o.meta[k:])
		o.meta = o.meta[:k]
	}
	o.holes, o.dropFrom = 0, 0
}

// writeLoopBatch is the most a writeLoop takes at a time from a queue that
// an overflow policy may act on: what the writer holds is out of the
// policy's reach, so a slow client's writer holding the whole queue (up to
// MaxQueueMessages frames, seconds of a slow client's reading) would make
// conflation moot. 64 frames per write still batches well (DATAPATH.md).
const writeLoopBatch = 64

// takeSome is take for a writer that may wait on the socket (writeLoop):
// from a queue that keeps overflow metadata it takes at most n messages,
// leaving the rest queued, where the policies still apply.
func (o *outbound) takeSome(n int) (batch [][]byte, closing bool) {
	o.mu.Lock()
	defer o.mu.Unlock()
	if o.handoff != nil || o.meta == nil {
		return o.takeLocked()
	}
	if o.holes > 0 {
		o.squeezeLocked()
	}
	if n < len(o.queue) && o.meta[n-1].pair {
		n++ // never split an SSE event
	}
	if len(o.queue) <= n {
		return o.takeLocked()
	}
	batch = append(o.spare[:0], o.queue[:n]...)
	o.spare = nil
	for i := range n {
		mt := &o.meta[i]
		o.bytes -= len(o.queue[i])
		if !mt.tail {
			o.frames--
		}
		if mt.droppable() && mt.pol == OverflowConflate {
			o.conflatable--
		}
		if mt.note != nil {
			o.notes = slices.DeleteFunc(o.notes, func(nt *dropNote) bool { return nt == mt.note })
		}
	}
	k := copy(o.queue, o.queue[n:])
	clear(o.queue[k:])
	o.queue = o.queue[:k]
	copy(o.meta, o.meta[n:])
	clear(o.meta[k:])
	o.meta = o.meta[:k]
	o.dropFrom = max(0, o.dropFrom-n)
	return batch, o.closing
}

// pingFirstLocked moves the ping just appended to the front of the queue.
// A slow client under conflate or drop_oldest is kept connected with a
// backlog that may take longer to read than the pong timeout: behind it,
// the ping would make the heartbeat cut a client that is alive. A ping may
// go ahead of data frames (it is a control frame, and the queue's front is
// a message boundary); once per ping interval, the shift is cheap.
func (o *outbound) pingFirstLocked() {
	n := len(o.queue)
	if n < 2 {
		return
	}
	ping := o.queue[n-1]
	copy(o.queue[1:], o.queue[:n-1])
	o.queue[0] = ping
	copy(o.meta[1:], o.meta[:n-1])
	o.meta[0] = qmeta{}
	o.dropFrom++
}
