package herald

import "sync"

// outbound is a connection's outbound queue and its writer role.
//
// Everything sent to a client — pushes, replies, pings, pongs, the close
// frame — is queued here as complete, ready-to-send frames, FIFO, without
// blocking: fan-out, replies and the heartbeat only ever push. Writing is a
// role (writing): the push that finds no writer takes it and must start
// one; the holder takes batches (take) until the queue is empty, then gives
// the role back — inside take, so that a push racing with the end of a
// batch either lands in the batch or starts the next writer. Only the
// role's holder writes to the socket, so there is one writer per socket
// whoever it is (a writer-pool worker or the connection's own writeLoop,
// see writer.go and transport.go).
//
// The queue is bounded in frames and bytes: a push past either cuts the
// client as a slow consumer, in the same step — the queue is dropped and
// the slow-consumer close frame (slow) queued alone. Once
// closing (a close frame queued, or the socket failed) no data frame is
// accepted; flushed is closed when closing and no writer runs any more.
//
// Every field is guarded by mu. Lock order: mu may be taken while holding a
// hub shard's lock (fan-out pushes under the shard's read lock); nothing
// else is locked while holding it.
type outbound struct {
	maxFrames, maxBytes int    // set at creation
	slow                []byte // the close frame of a slow consumer

	mu sync.Mutex
	// queue holds the frames not yet taken; spare is a drained batch kept
	// for reuse (allocating a queue per burst costs a collection per
	// million deliveries at high rates).
	queue, spare [][]byte
	bytes        int // of queue
	// frames counts the messages in queue, against maxFrames: one per
	// push, one per pushPair (two entries of queue, one SSE event).
	frames int
	// handoff is the unwritten rest of a batch that a writer-pool worker
	// could not finish (the socket was full): the next batch taken, ahead
	// of anything queued meanwhile. Like a batch being written it no longer
	// counts against the limits.
	handoff [][]byte
	writing bool // the writer role is held
	closing bool
	flushed chan struct{}
	// flushedDone: flushed is closed.
	flushedDone bool
	// active: a frame other than a ping was pushed since the last
	// heartbeat.
	active bool

	// Overflow policies (overflow.go). meta, when not nil, describes
	// queue's entries one for one; nil until a droppable publication is
	// queued. holes counts the nil entries of queue (messages dropped);
	// dropFrom is where the search for the oldest drop_oldest entry
	// resumes; conflatable counts the conflate entries; notes are the
	// dropped pushes in queue. All describe queue and are reset with it.
	meta        []qmeta
	notes       []*dropNote
	holes       int
	dropFrom    int
	conflatable int
	// superseded: a conflate entry was appended since the last
	// conflateLocked, so the queue may hold entries a newer one of their
	// key supersedes (a replacement in place never makes one).
	superseded bool
	// note builds a dropped push in the connection's wire form; nil for a
	// raw connection (nothing to tell it: drops are only counted). Set at
	// creation.
	note func(channel string, count int, ranges [][2]uint64) []byte
}

func newOutbound(maxFrames, maxBytes int, slow []byte) outbound {
	return outbound{maxFrames: maxFrames, maxBytes: maxBytes, slow: slow, flushed: make(chan struct{})}
}

// push queues frame. start reports that the caller took the writer role and
// must start a writer. ok is false for a closing queue (the frame is
// dropped: the client is going). cut, when not 0, says that frame would
// have taken the queue past its limits: the queue was dropped and the
// slow-consumer close queued instead (cut counts the frames dropped, this
// one included), and a writer to start must be writeLoop, which sends
// closes.
func (o *outbound) push(frame []byte) (ok, start bool, cut int) {
	return o.pushMeta(frame, qmeta{})
}

// pushMeta is push for an entry described by m: a publication that the
// overflow policy of its namespace may drop or replace (overflow.go).
func (o *outbound) pushMeta(frame []byte, m qmeta) (ok, start bool, cut int) {
	o.mu.Lock()
	defer o.mu.Unlock()
	ok, start, cut = o.pushLocked(frame, m)
	if ok {
		o.active = true
	}
	return ok, start, cut
}

// pushPair queues head and body as one message: both or neither, with
// nothing pushed in between, counted as one frame against the limits (an
// SSE event's per-connection id line and its shared body), described by m
// as pushMeta's. Results as push.
func (o *outbound) pushPair(head, body []byte, m qmeta) (ok, start bool, cut int) {
	o.mu.Lock()
	defer o.mu.Unlock()
	if o.closing {
		return false, false, 0
	}
	m.pair = true
	if !o.fitsLocked(len(head) + len(body)) {
		slot, room := o.makeRoomLocked(len(head)+len(body), m)
		if slot >= 0 {
			o.replaceLocked(slot, head, body, m)
			o.active = true
			return true, false, 0
		}
		if !room {
			cut, _, start = o.closeLocked(o.slow, true)
			return false, start, cut
		}
	}
	o.appendLocked(head, m)
	o.appendLocked(body, qmeta{tail: true})
	o.bytes += len(head) + len(body)
	o.frames++
	start = !o.writing
	o.writing, o.active = true, true
	return true, start, 0
}

// appendLocked appends one entry to queue, and its metadata if the queue
// keeps any or m is the first droppable one.
func (o *outbound) appendLocked(frame []byte, m qmeta) {
	if o.holes > o.maxFrames {
		o.squeezeLocked() // holes are bounded too
	}
	if o.queue == nil {
		// Reuse the drained batch rather than allocate a queue per burst.
		o.queue, o.spare = o.spare, nil
	}
	if o.meta == nil && m.droppable() {
		o.meta = make([]qmeta, len(o.queue), max(len(o.queue)+1, 16))
	}
	if o.meta != nil {
		o.meta = append(o.meta, m)
		if m.droppable() && m.pol == OverflowConflate {
			o.conflatable++
			o.superseded = true
		}
	}
	o.queue = append(o.queue, frame)
}

// pushPing pushes the heartbeat's ping. A queue that pushed nothing since
// the previous ping first gives up a large drained batch; the ping itself
// does not count as activity. In a queue that an overflow policy acts on
// the ping goes first (pingFirstLocked).
func (o *outbound) pushPing(frame []byte) (ok, start bool, cut int) {
	o.mu.Lock()
	defer o.mu.Unlock()
	if !o.writing && !o.active {
		if cap(o.spare) > maxIdleSpare {
			o.spare = nil
		}
		if len(o.queue) == 0 && cap(o.queue) > maxIdleSpare {
			o.queue = nil
		}
		if len(o.queue) == 0 {
			o.meta = nil // describes nothing; a droppable push makes it again
		}
	}
	o.active = false
	ok, start, cut = o.pushLocked(frame, qmeta{})
	if ok && o.meta != nil {
		o.pingFirstLocked()
	}
	return ok, start, cut
}

func (o *outbound) pushLocked(frame []byte, m qmeta) (ok, start bool, cut int) {
	if o.closing {
		return false, false, 0
	}
	if !o.fitsLocked(len(frame)) {
		slot, room := o.makeRoomLocked(len(frame), m)
		if slot >= 0 {
			o.replaceLocked(slot, nil, frame, m)
			return true, false, 0 // a writer holds the role: the queue is not empty
		}
		if !room {
			cut, _, start = o.closeLocked(o.slow, true)
			return false, start, cut
		}
	}
	o.appendLocked(frame, m)
	o.bytes += len(frame)
	o.frames++
	start = !o.writing
	o.writing = true
	return true, start, 0
}

// close marks the queue closing and queues frame after what is queued
// (none if nil), dropping what is queued first if drop. began reports that
// this call began the close (it is a no-op on a closing queue); start, that
// the caller took the writer role and must start a writer.
func (o *outbound) close(frame []byte, drop bool) (began, start bool) {
	o.mu.Lock()
	defer o.mu.Unlock()
	_, began, start = o.closeLocked(frame, drop)
	return began, start
}

func (o *outbound) closeLocked(frame []byte, drop bool) (dropped int, began, start bool) {
	if o.closing {
		return 0, false, false
	}
	o.closing = true
	if drop {
		dropped = o.frames + 1
		clear(o.queue)
		o.queue, o.bytes, o.frames = o.queue[:0], 0, 0
		o.resetMetaLocked()
	}
	if frame != nil {
		o.appendLocked(frame, qmeta{})
		o.bytes += len(frame)
		o.frames++
	}
	switch {
	case o.writing:
		return dropped, true, false
	case len(o.queue) == 0:
		o.markFlushedLocked()
		return dropped, true, false
	}
	o.writing = true
	return dropped, true, true
}

// take returns the next batch for the writer role's holder: the handoff,
// else everything queued, which then no longer counts against the limits.
// With nothing to write it gives the role back and returns nil. closing
// reports that a close frame is queued (it is the batch's last frame when
// the batch holds it).
func (o *outbound) take() (batch [][]byte, closing bool) {
	o.mu.Lock()
	defer o.mu.Unlock()
	return o.takeLocked()
}

func (o *outbound) takeLocked() (batch [][]byte, closing bool) {
	batch, o.handoff = o.handoff, nil
	if batch == nil {
		if len(o.queue) == 0 {
			o.releaseLocked()
			return nil, o.closing
		}
		if o.holes > 0 {
			o.squeezeLocked()
		}
		batch = o.queue
		o.queue, o.spare = o.spare, nil
		o.bytes, o.frames = 0, 0
		o.resetMetaLocked()
	}
	return batch, o.closing
}

// resetMetaLocked empties the overflow metadata with the queue it
// describes, keeping meta's array (and so the policies in use).
func (o *outbound) resetMetaLocked() {
	if o.meta != nil {
		clear(o.meta)
		o.meta = o.meta[:0]
	}
	clear(o.notes)
	o.notes = o.notes[:0]
	o.holes, o.dropFrom, o.conflatable, o.superseded = 0, 0, 0, false
}

// handOff puts the unwritten rest of a batch back, to be taken first.
// The caller holds the writer role and passes it on.
func (o *outbound) handOff(rest [][]byte) {
	o.mu.Lock()
	o.handoff = rest
	o.mu.Unlock()
}

// done takes a written batch back for reuse, and reports whether more is
// queued: if not, the role is given back. The batch's frames are already
// cleared by the caller.
func (o *outbound) done(batch [][]byte) (more bool) {
	o.mu.Lock()
	defer o.mu.Unlock()
	if cap(batch) <= 256 && o.spare == nil {
		o.spare = batch[:0]
	}
	if len(o.queue) == 0 && o.handoff == nil {
		o.releaseLocked()
		return false
	}
	return true
}

// hold takes the writer role before anything is queued: frames pushed
// meanwhile wait, in order, until resume. (Node.serve holds a new
// connection's queue until its 101 is written: a raw connection is
// subscribed before that, and its deliveries must not precede the 101.)
func (o *outbound) hold() {
	o.mu.Lock()
	o.writing = true
	o.mu.Unlock()
}

// resume gives back the role taken by hold, unless frames were queued
// meanwhile: then it reports start, and the caller, who keeps the role,
// must start a writer.
func (o *outbound) resume() (start bool) { return o.done(nil) }

// fail ends the queue after the socket failed: nothing more is sent, and
// the role is given back.
func (o *outbound) fail() {
	o.mu.Lock()
	defer o.mu.Unlock()
	o.closing = true
	clear(o.queue)
	o.queue, o.bytes, o.frames, o.handoff = nil, 0, 0, nil
	o.resetMetaLocked()
	o.releaseLocked()
}

// releaseLocked gives the writer role back; a closing queue is then
// flushed. o.mu must be held.
func (o *outbound) releaseLocked() {
	o.writing = false
	if o.closing {
		o.markFlushedLocked()
	}
}

func (o *outbound) markFlushedLocked() {
	if !o.flushedDone {
		o.flushedDone = true
		close(o.flushed)
	}
}

// maxIdleSpare is the largest drained queue (in frames) kept across a
// heartbeat round in which nothing but the ping was sent: a busy connection
// keeps its queues (dropping them at every writer exit made 41 bytes of
// garbage per delivery at 1M deliveries/s), while one idle after a large
// burst holds at most a few hundred bytes for it.
const maxIdleSpare = 16

func (o *outbound) isClosing() bool {
	o.mu.Lock()
	defer o.mu.Unlock()
	return o.closing
}

// belowHalf reports whether the queue holds at most half its limits, in
// frames and in bytes, or is closing (nothing more will be queued).
func (o *outbound) belowHalf() bool {
	o.mu.Lock()
	defer o.mu.Unlock()
	return o.closing || (o.frames <= o.maxFrames/2 && o.bytes <= o.maxBytes/2)
}

// queued returns the bytes waiting to be taken.
func (o *outbound) queued() int {
	o.mu.Lock()
	defer o.mu.Unlock()
	return o.bytes
}
