package herald

import (
	"errors"
	"sync/atomic"
	"time"
)

// Parking: where a plain socket's reader waits when there is nothing to
// read (Linux; transport_park_linux.go has the poller and the reasons).
//
// The read side is owned by at most one goroutine at a time, and rstate
// says which: a running reader owns it; a parked one is owned by nobody
// until a wake-up (the socket became readable, the park timer fired, or the
// socket was closed: conn.wake) turns it back into running and starts a
// goroutine for it. A wake-up that finds the reader running marks it woken,
// and the reader then reads again instead of parking, so no wake-up is lost
// between its last read and its parking.

// Reader states (conn.rstate).
const (
	readerRunning int32 = iota // a goroutine owns the read side
	readerParked               // nobody does: a wake-up starts a reader
	readerWoken                // running, and woken since its last read: do not park
)

// errPollerStopped: the poller has stopped (the node is stopping).
var errPollerStopped = errors.New("poller stopped")

// errWouldBlock: fill found nothing to read and the reader may park.
var errWouldBlock = errors.New("would block")

// parkState is the read side's parking state, in the transport.
type parkState struct {
	rstate     atomic.Int32
	parkBroken atomic.Bool // the poller failed this connection: wait in Go's netpoller
	// closeBy is the close handshake's read deadline, nil before. A
	// time.Time, not UnixNano: it keeps the monotonic reading the socket's
	// deadline is measured by, so a step of the wall clock moves neither.
	closeBy    atomic.Pointer[time.Time]
	timerFired atomic.Bool // ptimer fired since it was last set

	// Reader goroutine only.
	mayPark    bool      // set by fill for tryRead: park rather than wait
	wouldBlock bool      // tryRead's result: nothing to read, and mayPark
	lingerDL   bool      // the socket's read deadline is lingerTill's, not the real one
	lingerTill time.Time // after a data message: wait in the netpoller until then
	lingerFrom time.Time // data messages before it do not make the reader linger
	poll       *poller   // the poller pfd was armed in, nil before
	pfd        int32
	ptimer     *time.Timer // wakes the parked reader to see its deadline pass
	ptimerAt   time.Time   // when ptimer fires
}

// wake starts the reader of a parked connection, or marks a running one
// woken. Any goroutine.
func (c *conn) wake() {
	for {
		switch c.rstate.Load() {
		case readerParked:
			if c.rstate.CompareAndSwap(readerParked, readerRunning) {
				go c.readLoopFn()
				return
			}
		case readerRunning:
			if c.rstate.CompareAndSwap(readerRunning, readerWoken) {
				return
			}
		default:
			return
		}
	}
}

// parkDeadline is the read deadline the reader must wake for: the
// heartbeat's, or the close handshake's if that is sooner. Reader only.
func (c *conn) parkDeadline() time.Time {
	d := c.rdeadline
	if cb := c.closeBy.Load(); cb != nil && (d.IsZero() || cb.Before(d)) {
		d = *cb
	}
	return d
}

// canPark reports whether the reader may park rather than wait in Go's
// netpoller: a plain socket, a working poller, and a deadline still ahead
// (once it has passed, the netpoller reports the timeout). Reader only.
func (c *conn) canPark() bool {
	return parkable && c.rc != nil && !c.parkBroken.Load() && time.Now().Before(c.parkDeadline())
}

// lingerFor is how long (Node.linger) a reader that has just handled a data message
// waits for the next one in Go's netpoller, in its goroutine, before it
// parks. A connection that sent one message often sends another soon (a
// publisher, a game, a cursor); parking and waking cost an epoll_ctl, a
// wake-up of the poller, a new goroutine and the regrowth of its stack:
// lingering took 19–23% off the node's CPU per delivery in the many-rooms
// benchmark at 2,000–10,000 publications/s and 4% at 20,000 (where the
// publishers' reads hold more each), four publishers having parked after
// every read (docs/benchmarks.md). A lingering reader keeps its
// goroutine meanwhile, so it is for connections that sent a message in the
// last lingerFor only, and only once they have been open lingerAfter: the
// messages of a connection's first second are mostly its handshake (connect,
// subscribes), after which most connections fall silent, and a reader that
// lingered then would only hold a grown stack a little longer (S1, churn).
const (
	lingerFor   = 50 * time.Millisecond
	lingerAfter = time.Second
)

// linger reports whether the reader should wait for readability in Go's
// netpoller rather than park, because it handled a data message less than
// Node.linger ago, and bounds that wait: the socket's read deadline becomes
// the linger's end (set once per linger, not per read: the end moves with
// every message, and a deadline that comes while the linger goes on is set
// again). Reader only.
func (c *conn) linger() bool {
	if c.lingerTill.IsZero() || !time.Now().Before(c.lingerTill) || !c.lingerTill.Before(c.parkDeadline()) {
		return false
	}
	if !c.lingerDL {
		c.lingerDL = true
		c.setReadDeadline(c.lingerTill)
	}
	return true
}

// endLinger gives the socket back its real read deadline (the heartbeat's,
// or the close handshake's). Reader only.
func (c *conn) endLinger() {
	c.lingerDL = false
	c.setReadDeadline(c.rdeadline)
}

// setReadDeadline sets the socket's read deadline to t, or to the close
// handshake's if that is sooner. The writer sets closeBy and then the
// socket's deadline (closeReadBy); the reader sets its own and then loads
// closeBy: whichever way they interleave, the close handshake's deadline
// is not lost. Reader only.
func (c *conn) setReadDeadline(t time.Time) {
	_ = c.nc.SetReadDeadline(t)
	if cb := c.closeBy.Load(); cb != nil && cb.Before(t) {
		_ = c.nc.SetReadDeadline(*cb)
	}
}

// park gives up the reader's goroutine until a wake-up. It reports false
// when the reader must go on reading instead: woken meanwhile, the socket
// closed, or parking failed (then never again for this connection).
// Reader goroutine only; after true it must not touch the connection.
func (c *conn) park() bool {
	p, err := c.node.poller()
	if err != nil {
		c.parkBroken.Store(true)
		return false
	}
	c.armParkTimer()
	var armErr error
	if err := c.rc.Control(func(fd uintptr) {
		c.pfd, c.poll = int32(fd), p
		armErr = p.arm(c, int(fd))
	}); err != nil {
		return false // closed: the next read says so
	}
	if armErr != nil {
		if !errors.Is(armErr, errPollerStopped) {
			c.node.log.Warn("cannot park an idle reader; it waits in a goroutine", "client", c.id, "err", armErr)
		}
		c.parkBroken.Store(true)
		return false
	}
	if c.rstate.CompareAndSwap(readerRunning, readerParked) {
		return true
	}
	c.rstate.Store(readerRunning) // woken since the last read: read again
	return false
}

// armParkTimer makes sure the park timer fires by the read deadline. It
// leaves a timer that fires sooner alone (the deadline only moves forward
// while the connection is open): waking early costs one read that finds
// nothing, re-arming on every park would cost a timer update each time.
func (c *conn) armParkTimer() {
	at := c.parkDeadline()
	if c.ptimer == nil {
		c.ptimerAt = at
		c.ptimer = time.AfterFunc(time.Until(at), c.parkTimeout)
		return
	}
	if c.timerFired.Load() || c.ptimerAt.After(at) {
		c.timerFired.Store(false)
		c.ptimerAt = at
		c.ptimer.Reset(time.Until(at))
	}
}

// parkTimeout is the park timer's function.
func (c *conn) parkTimeout() {
	c.timerFired.Store(true)
	c.wake()
}

// closeReadBy sets the read deadline of the close handshake, from the
// writer: a parked reader wakes to park again with it.
func (c *conn) closeReadBy(t time.Time) {
	// closeBy first, the socket's deadline second: a reader extending the
	// heartbeat's deadline meanwhile (it saw no close yet) sets it, then
	// loads closeBy, so whichever way they interleave the last deadline
	// set is this one (extendReadDeadline).
	c.closeBy.Store(&t)
	_ = c.nc.SetReadDeadline(t)
	if parkable && c.rc != nil {
		c.wake()
	}
}

// cut closes the socket from anywhere but the reader. A parked reader is
// woken to find it closed and tear the connection down: a socket that is
// closed leaves the poller's set without a word.
func (c *conn) cut() {
	c.nc.Close()
	c.wake()
}

// unpark releases what parking holds, before the socket is closed. Reader
// goroutine only (finish).
func (c *conn) unpark() {
	if c.ptimer != nil {
		c.ptimer.Stop()
	}
	if c.poll != nil {
		c.poll.forget(c, c.pfd)
	}
}
