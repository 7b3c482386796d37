package client

import (
	"errors"
	"sync"
	"time"
)

// Handlers run on one goroutine per client, the dispatcher, fed by a FIFO
// queue that the reader fills. Why one goroutine per client rather than one
// per subscription: it keeps a client at two goroutines (reader and
// dispatcher) whatever its channel count, which matters to the load
// generator, and it gives a single order across everything a client sees
// (state changes, recovery failures, publications of every channel). The
// price: a slow handler delays every handler of its client.
//
// Why a bounded queue that the reader may wait on, and not an unbounded one
// or dropping: unbounded hides a stuck handler until memory runs out, and
// dropping would lose publications silently. When the queue is full the
// reader waits (the server then sees a slow reader, TCP backs up, and it may
// cut the connection with 4001), and if the queue stays full for
// QueueTimeout the client drops the connection itself. Either way the
// publications not queued are recovered after the reconnect, or reported
// with OnRecoveryFailed: the reader is never blocked forever, and nothing is
// lost silently.

type eventKind uint8

const (
	evPub eventKind = iota
	evJoin
	evLeave
	evMessage
	evState
	evRecoveryFailed
	evSubError
	evUnsubscribed
	evServerSubscribe
	evDropped
)

// event is one handler call waiting in the queue.
type event struct {
	kind   eventKind
	sub    *Subscription
	pub    Publication
	info   ClientInfo
	msg    Message
	drop   Dropped
	state  StateChange
	code   string // evUnsubscribed
	reason string
	err    error
	// bounded: the event counts toward the queue's bound (set by push).
	bounded bool
}

var (
	errQueueFull    = errors.New("event queue full")
	errQueueStopped = errors.New("event queue stopped")
)

// queue is the dispatcher's input: a ring buffer that grows on demand (an
// idle client holds no buffer) up to max events that count toward the bound.
// Control events (state changes, recovery failures, subscription errors) do
// not count: they are few, and must never be lost or make the reader wait.
type queue struct {
	max int

	mu       sync.Mutex
	buf      []event
	head, n  int
	counted  int  // events in buf that count toward max
	finished bool // no more pushes: the dispatcher drains and exits
	aborted  bool // the dispatcher exits after the call in progress

	wake chan struct{} // 1-buffered: the dispatcher has work or must stop
	room chan struct{} // 1-buffered: a counted event left the queue
	done chan struct{} // closed when the dispatcher goroutine returns
}

func newQueue(max int) *queue {
	return &queue{
		max:  max,
		wake: make(chan struct{}, 1),
		room: make(chan struct{}, 1),
		done: make(chan struct{}),
	}
}

func signal(ch chan struct{}) {
	select {
	case ch <- struct{}{}:
	default:
	}
}

// push appends ev. A bounded push into a full queue waits for room up to
// timeout (then errQueueFull) or until stop is closed (errQueueStopped). An
// unbounded push never waits. Only the client's run goroutine pushes bounded
// events, so one waiter at most listens on room.
func (q *queue) push(ev event, bounded bool, timeout time.Duration, stop <-chan struct{}) error {
	var timer *time.Timer
	defer func() {
		if timer != nil {
			timer.Stop()
		}
	}()
	for {
		q.mu.Lock()
		if q.finished || q.aborted {
			q.mu.Unlock()
			return errQueueStopped
		}
		if !bounded || q.counted < q.max {
			ev.bounded = bounded
			q.appendLocked(ev)
			if bounded {
				q.counted++
			}
			q.mu.Unlock()
			signal(q.wake)
			return nil
		}
		q.mu.Unlock()
		if timer == nil {
			timer = time.NewTimer(timeout)
		}
		select {
		case <-q.room:
		case <-timer.C:
			return errQueueFull
		case <-stop:
			return errQueueStopped
		}
	}
}

func (q *queue) appendLocked(ev event) {
	if q.n == len(q.buf) {
		nb := make([]event, max(16, 2*len(q.buf)))
		k := copy(nb, q.buf[q.head:])
		copy(nb[k:], q.buf[:q.head])
		q.buf, q.head = nb, 0
	}
	q.buf[(q.head+q.n)%len(q.buf)] = ev
	q.n++
}

// pop takes the oldest event; ok is false when the dispatcher must exit.
// It blocks while the queue is empty.
func (q *queue) pop() (ev event, ok bool) {
	for {
		q.mu.Lock()
		if q.aborted {
			q.mu.Unlock()
			return event{}, false
		}
		if q.n > 0 {
			ev = q.buf[q.head]
			q.buf[q.head] = event{} // drop references for the GC
			q.head = (q.head + 1) % len(q.buf)
			q.n--
			if q.n == 0 && len(q.buf) > 1024 {
				q.buf, q.head = nil, 0 // give a burst's memory back
			}
			if ev.bounded {
				q.counted--
				q.mu.Unlock()
				signal(q.room)
				return ev, true
			}
			q.mu.Unlock()
			return ev, true
		}
		if q.finished {
			q.mu.Unlock()
			return event{}, false
		}
		q.mu.Unlock()
		<-q.wake
	}
}

// finish lets the dispatcher deliver what is queued, then exit.
func (q *queue) finish() {
	q.mu.Lock()
	q.finished = true
	q.mu.Unlock()
	signal(q.wake)
}

// abort makes the dispatcher exit after the handler call in progress;
// queued events are dropped.
func (q *queue) abort() {
	q.mu.Lock()
	q.aborted = true
	q.buf, q.head, q.n, q.counted = nil, 0, 0, 0
	q.mu.Unlock()
	signal(q.wake)
}

// dispatch is the dispatcher goroutine: it calls the handlers, one event at
// a time, in queue order. Started by the first Connect, it ends on Close
// (abort) or after the client stopped for good (finish, once drained).
func (c *Client) dispatch() {
	defer c.wg.Done()
	defer close(c.q.done)
	for {
		ev, ok := c.q.pop()
		if !ok {
			return
		}
		c.deliver(ev)
	}
}

func (c *Client) deliver(ev event) {
	switch ev.kind {
	case evState:
		if f := c.opts.OnState; f != nil {
			f(ev.state)
		}
	case evMessage:
		if f := c.opts.OnMessage; f != nil {
			f(ev.msg)
		}
	case evServerSubscribe:
		// Announced even if the server ended it since: OnUnsubscribed,
		// queued after, then says so.
		c.announce(ev.sub)
	case evSubError:
		// Delivered even though the subscription has ended: that is the news.
		if f := ev.sub.opts.OnError; f != nil {
			f(ev.err)
		}
	case evUnsubscribed:
		// The subscription's last event: it closes it, unless the app
		// unsubscribed first (then no handler of it may start).
		if ev.sub.closed.Swap(true) {
			return
		}
		if f := ev.sub.opts.OnUnsubscribed; f != nil {
			f(ev.code, ev.reason)
		}
	default:
		s := ev.sub
		if s.closed.Load() {
			return // unsubscribed after the event was queued
		}
		switch ev.kind {
		case evPub:
			if f := s.opts.OnPublication; f != nil {
				f(ev.pub)
			}
		case evJoin:
			if f := s.opts.OnJoin; f != nil {
				f(ev.info)
			}
		case evLeave:
			if f := s.opts.OnLeave; f != nil {
				f(ev.info)
			}
		case evRecoveryFailed:
			if f := s.opts.OnRecoveryFailed; f != nil {
				f(ev.reason)
			}
		case evDropped:
			if f := s.opts.OnDropped; f != nil {
				f(ev.drop)
			}
		}
	}
}
