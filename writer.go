package herald

import (
	"sync"
)

// writerPool writes for connections whose sockets take their frames at once,
// which on a healthy connection is nearly every time. A burst to a thousand
// connections then costs a thousand non-blocking writes on a few pool
// goroutines, not a thousand goroutines started and ended: on the S3 fan-out
// (docs/benchmarks.md) that took a fifth off the server's CPU per delivery
// and brought its p99 level with a bare loop of write(2) calls.
//
// The pool holds no connection's writer role for long: a worker takes a
// connection from the ready list, writes what it has queued without
// blocking (at most one queue's worth: a connection that queued more
// meanwhile goes to the back of the list), and moves on. What the socket
// does not take at once goes to the connection's own writeLoop goroutine,
// which may wait for the client (with the write deadline); so does every
// close. A slow client therefore holds a goroutine of its own, never a pool
// worker, and cannot stall any other connection's writes.
//
// Workers exist only while the ready list is not empty: one is started
// whenever a connection is added while fewer than max run, and each exits
// when it finds the list empty. Nothing has to stop them: they never block,
// and every connection they hold is released (its writer role handed back
// or passed on) before they exit.
type writerPool struct {
	max    int
	workFn func() // p.work, made once: `go p.work()` allocates a closure each time

	mu      sync.Mutex // guards the fields below
	ready   []*conn    // connections holding the writer role, waiting for a worker; FIFO from head
	head    int
	running int    // workers started and not yet exited
	started uint64 // workers ever started (tests read it)
}

func newWriterPool(workers int) *writerPool {
	p := &writerPool{max: max(workers, 1)}
	p.workFn = p.work
	return p
}

// add queues c, which holds the writer role and has frames queued, for a
// worker, and starts a worker if fewer than max run.
func (p *writerPool) add(c *conn) {
	p.mu.Lock()
	p.ready = append(p.ready, c)
	// Start a worker whenever fewer than max run: one that is busy with a
	// long queue must not hold up the next connection while a core is free.
	// A worker that finds nothing left exits at once.
	start := p.running < p.max
	if start {
		p.running++
		p.started++
	}
	p.mu.Unlock()
	if start {
		go p.workFn()
	}
}

// workersStarted returns how many workers the pool has started.
func (p *writerPool) workersStarted() uint64 {
	p.mu.Lock()
	defer p.mu.Unlock()
	return p.started
}

// maxIdleReady is the largest ready list (in connections) the pool keeps
// once it is empty, so that a burst to a large channel leaves at most this
// much behind.
const maxIdleReady = 4096

// next returns the next connection to write for, or nil after counting the
// calling worker out when there is none.
func (p *writerPool) next() *conn {
	p.mu.Lock()
	defer p.mu.Unlock()
	if p.head == len(p.ready) {
		p.running--
		p.head = 0
		if cap(p.ready) > maxIdleReady {
			p.ready = nil
		} else {
			p.ready = p.ready[:0]
		}
		return nil
	}
	c := p.ready[p.head]
	p.ready[p.head] = nil
	p.head++
	if p.head >= 1024 && p.head*2 >= len(p.ready) {
		// Under sustained load the list may never empty: drop the
		// consumed front so it does not grow without bound.
		n := copy(p.ready, p.ready[p.head:])
		p.ready, p.head = p.ready[:n], 0
	}
	return c
}

// work is a pool worker: it writes for ready connections until there is
// none left.
func (p *writerPool) work() {
	w := nbWriters.Get().(*nbWriter)
	defer nbWriters.Put(w)
	for c := p.next(); c != nil; c = p.next() {
		c.flushNow(w)
	}
}

var nbWriters = sync.Pool{New: func() any { return newNBWriter() }}

// flushNow is a pool worker's turn at c, which holds the writer role: it
// writes one batch without blocking, then gives the role back, puts c at
// the back of the ready list if more was queued meanwhile, or hands what is
// left to c's own writeLoop.
func (c *conn) flushNow(w *nbWriter) {
	batch, closing := c.out.take()
	if batch == nil {
		return // the role is given back
	}
	if closing {
		// A close frame is queued: the writer that sends it waits for the
		// client's reply with a deadline, which is writeLoop's job.
		c.out.handOff(batch)
		go c.writeLoopFn()
		return
	}
	written, err := w.write(c.rc, batch)
	c.node.metrics.writes.Add(1)
	c.node.metrics.bytesOut.Add(uint64(written))
	done := 0 // frames written whole
	for done < len(batch) && written >= len(batch[done]) {
		written -= len(batch[done])
		done++
	}
	c.node.metrics.framesOut.Add(uint64(done))
	if err != nil {
		clear(batch)
		c.writeFailed()
		return
	}
	if done < len(batch) {
		// The socket is full: c's own writer takes over and waits for the
		// client, starting with what is left of this batch (the rest of a
		// frame cut short first), ahead of anything queued meanwhile.
		c.node.metrics.socketFull.Add(1)
		clear(batch[:done])
		batch[done] = batch[done][written:]
		c.out.handOff(batch[done:])
		go c.writeLoopFn()
		return
	}
	clear(batch)
	if c.out.done(batch) {
		c.node.writers.add(c)
	}
}

// maxInlineFlush is the most connections a fan-out writes on its own
// goroutine (inlineFlush); a larger one goes to the pool.
const maxInlineFlush = 8

// inlineFlush lets a fan-out write to a few subscribers itself instead of
// handing each to the writer pool. In rooms of two, or a channel's few
// subscribers on each node, waking a pool worker per delivery cost more
// than the write: a goroutine started, scheduled on the other core and
// ended for every one or two write(2) calls, which is where most of the
// context switches of the history profile (docs/benchmarks.md) came from.
// The goroutine that fans out (a publisher's reader on the in-memory
// broker, the broker's receiver otherwise) then makes those few
// non-blocking writes after the fan-out, outside the hub's lock.
//
// A connection goes on the list when a push of the fan-out took its writer
// role; it holds the role, with frames queued and no writer, until flush,
// so pushes of other goroutines meanwhile only queue behind. Past
// maxInlineFlush connections the list spills: they and every later one
// go to the pool at once, and a large fan-out is written as before, on
// both cores. The zero value is ready; the fan-out's goroutine owns it.
type inlineFlush struct {
	conns   [maxInlineFlush]*conn
	n       int
	spilled bool
}

// add takes c, which holds the writer role and has frames queued.
func (fl *inlineFlush) add(c *conn) {
	switch {
	case fl.spilled:
		c.node.writers.add(c)
	case fl.n < len(fl.conns):
		fl.conns[fl.n] = c
		fl.n++
	default:
		fl.spilled = true
		for _, q := range fl.conns[:fl.n] {
			q.node.writers.add(q)
		}
		clear(fl.conns[:])
		fl.n = 0
		c.node.writers.add(c)
	}
}

// flush writes for the connections taken, one batch each without
// blocking, as a pool worker would (flushNow): what a socket does not take
// goes to that connection's writeLoop, more queued meanwhile to the pool.
// No hub lock may be held. A broker's delivery lock may be: the memory
// broker's stripe lock, the Redis broker's shard read lock and the NATS
// broker's per-channel delivery lock are held across HandlePublication to
// keep a channel's order. That is why flush never blocks and writes to at
// most maxInlineFlush sockets: the lock is held a few non-blocking
// write(2) calls longer.
func (fl *inlineFlush) flush() {
	if fl.n == 0 {
		return
	}
	w := nbWriters.Get().(*nbWriter)
	for i, c := range fl.conns[:fl.n] {
		fl.conns[i] = nil
		c.flushNow(w)
	}
	nbWriters.Put(w)
	fl.n = 0
}
