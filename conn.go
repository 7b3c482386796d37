package herald

import (
	"encoding/json"
	"sync"
	"sync/atomic"
	"time"

	"golang.org/x/time/rate"

	"github.com/heraldhq/herald/internal/wsframe"
	"github.com/heraldhq/herald/protocol"
)

// Wire forms: every publication is encoded at most once per form, and each
// connection reads one of them. form = raw<<1 | deflate for WebSocket
// connections; formSSE is a Server-Sent Events stream's (sse.go), never
// deflated; formPusher (| deflate) a Pusher client's (session_pusher.go).
// The low bit is the deflate bit in every WebSocket form.
const (
	formProtocol        = 0
	formProtocolDeflate = 1
	formRaw             = 2
	formRawDeflate      = 3
	formSSE             = 4
	formPusher          = 6
	formPusherDeflate   = 7
	numForms            = 8
)

// conn is one client connection: who the client is, and the three parts
// that serve it —
//
//   - out, its outbound queue and writer role (outbound.go): everything
//     sent to the client is pushed there, from any goroutine, without
//     blocking;
//   - the transport (transport.go): the socket, its one reader and, for
//     whoever holds the writer role, its writes;
//   - sess, the wire protocol's session (session.go): herald.v1
//     commands, raw relay, Pusher's protocol or an SSE stream; each
//     protocol is one session type.
//
// Goroutines: exactly one reader at a time (readLoop, started by the HTTP
// handler, handing itself to a fresh goroutine after each read that handled
// a message) runs the session and owns the connection's teardown. The
// writer role's holder — a writer-pool worker, or the connection's own
// writeLoop — writes. Everything else (fan-out, replies, the heartbeat,
// closes) pushes frames and never blocks.
type conn struct {
	node   *Node
	id     string
	ip     string
	remote string // the client's address (Node.ClientAddr), for hooks
	// form is the wire form of the publications it reads; raw and echo are
	// the raw session's (fan-out skips a raw client's own frames without
	// echo, and presence events). All three are fixed at creation.
	form uint8
	raw  bool
	echo bool
	// sse is the session of a Server-Sent Events connection (sse.go), nil
	// for a WebSocket one: its publications carry per-connection event
	// ids (enqueuePub). Fixed at creation.
	sse *sseSession
	// pusher: a Pusher client (session_pusher.go): fan-out skips its own
	// client events and presence events, and Herald's close codes are
	// sent as Pusher's (pusherCloseCode). Fixed at creation.
	pusher bool

	// Identity. mu guards user, info and channels: user and info change
	// only on the reader (connect, refresh), others read them under mu.
	// grants, the channels granted by tokens, is the reader's alone.
	mu       sync.Mutex
	user     string
	info     json.RawMessage
	channels map[string]struct{}
	grants   map[string]struct{}
	// admitted: the connection is in — raw, or herald.v1 past what it
	// must pass (connect, with token checks or a connect hook). Until
	// then the server subscribes it to nothing and webhooks do not count
	// its user.
	admitted atomic.Bool
	// endCode and endReason: how it ended (setEnded), under mu.
	endCode   CloseCode
	endReason string

	// subMu serialises the changes of the connection's subscriptions:
	// its own commands (on the reader) and the server's (SubscribeUser
	// and the like, on goroutines of their own), so that each sees the
	// other's result. Held across a subscribe's hook and history calls,
	// which are bounded; taken before mu and the node's subLocks.
	subMu sync.Mutex
	// ops are the server-side subscription changes waiting for this
	// connection, run in order by one goroutine while opsRunning
	// (Node.serverOp); guarded by opsMu.
	opsMu      sync.Mutex
	ops        []func()
	opsRunning bool

	// limiter paces incoming messages at the rate in force at admission
	// (nil with no MessageRate); refusals paces the refused ones (see
	// limit). Reader goroutine only.
	limiter, refusals *rate.Limiter

	out outbound
	transport
	sess session
}

var (
	pingFrame      = wsframe.Append(nil, wsframe.OpPing, nil, false)
	closeSlowFrame = wsframe.Close(CloseSlowConsumer, "slow consumer")
)

// enqueue pushes a frame to the client without blocking. A frame that would
// take the queue past its limits makes the connection a slow consumer: its
// queue is dropped and it is closed with CloseSlowConsumer, and nobody else
// waits. It reports whether the frame was queued. Safe from any goroutine.
func (c *conn) enqueue(frame []byte) bool {
	ok, start, cut := c.out.push(frame)
	c.pushed(start, cut)
	return ok
}

// enqueueWrite is enqueue for the reader's replies: a push that takes the
// writer role where the writer pool would write is written at once, by the
// calling goroutine, without blocking, as a pool worker would (flushNow).
// A reply answers one client's command, so that client's reader is the
// one goroutine that has to be running anyway; handing the write to a pool
// worker started a goroutine on the other core for one write(2).
func (c *conn) enqueueWrite(frame []byte) bool {
	ok, start, cut := c.out.push(frame)
	if start && cut == 0 && c.pooled() {
		w := nbWriters.Get().(*nbWriter)
		c.flushNow(w)
		nbWriters.Put(w)
		return ok
	}
	c.pushed(start, cut)
	return ok
}

// enqueueHeld is enqueue for a frame that more will follow at once: a
// push that takes the writer role where the writer pool would write is
// left to fl, whose flush writes everything queued by then in one write
// (inlineFlush). The caller flushes fl before it does anything that may
// wait.
func (c *conn) enqueueHeld(frame []byte, fl *inlineFlush) bool {
	ok, start, cut := c.out.push(frame)
	if start && cut == 0 && c.pooled() {
		fl.add(c)
		return ok
	}
	c.pushed(start, cut)
	return ok
}

// enqueuePub pushes the frame of pub (an encodePub of c.form), described
// by m for the overflow policy of its namespace (overflowMeta): as enqueue,
// except that a full queue may make room by that policy, and that on an SSE
// connection a publication with an offset goes with the event id that
// carries the connection's new position. With fl, a writer to start is
// left to fl where the writer pool would write (inlineFlush).
func (c *conn) enqueuePub(pub *Publication, frame []byte, m qmeta, fl *inlineFlush) {
	if c.sse != nil {
		c.sse.deliver(pub, frame, m)
		return
	}
	_, start, cut := c.out.pushMeta(frame, m)
	if fl != nil && start && cut == 0 && c.pooled() {
		fl.add(c)
		return
	}
	c.pushed(start, cut)
}

// ping pushes the heartbeat's ping. Called by the heartbeat once per
// PingInterval.
func (c *conn) ping() {
	frame := pingFrame
	if c.sse != nil {
		frame = ssePing
	}
	_, start, cut := c.out.pushPing(frame)
	c.pushed(start, cut)
}

// pushed acts on a push's outcome: it starts a writer for a push that took
// the writer role, and finishes cutting a slow consumer.
func (c *conn) pushed(start bool, cut int) {
	switch {
	case cut > 0:
		if start {
			go c.writeLoopFn() // it sends the close
		}
		c.cutSlow(cut)
	case start:
		c.startWriter()
	}
}

// cutSlow finishes cutting a slow consumer whose push dropped its queue
// and queued the close (outbound.push): counts it, logs it, and shortens a
// write stuck on the client's full window.
func (c *conn) cutSlow(dropped int) {
	c.setEnded(CloseSlowConsumer, "slow consumer")
	c.node.metrics.slowConsumers.Add(1)
	c.node.metrics.dropped.Add(uint64(dropped))
	c.node.log.Warn("slow consumer disconnected", "client", c.id)
	// A write in flight may be stuck on the client's full TCP window:
	// give it only the close grace, not the full write timeout.
	_ = c.nc.SetWriteDeadline(time.Now().Add(c.node.cfg.CloseGrace))
}

// close queues a close frame after whatever is already queued, so the client
// receives everything sent before it. A no-op on a closing connection; it
// reports whether this call began the close.
func (c *conn) close(code CloseCode, reason string) bool {
	frame := []byte(nil)
	if c.pusher {
		code = pusherCloseCode(code)
	}
	if c.sse != nil {
		frame = sseClose(code, reason)
	} else {
		frame = wsframe.Close(code, reason)
	}
	began := c.closeFrame(frame, false)
	if began {
		c.setEnded(code, reason)
	}
	return began
}

// setEnded records how the connection ended, for Hooks.Disconnected: the
// first close begun wins.
func (c *conn) setEnded(code CloseCode, reason string) {
	c.mu.Lock()
	if c.endCode == 0 {
		c.endCode, c.endReason = code, reason
	}
	c.mu.Unlock()
}

// ended returns how the connection ended: the close code sent (or the
// client's, echoed), 1006 if the socket was lost without one.
func (c *conn) ended() (CloseCode, string) {
	c.mu.Lock()
	defer c.mu.Unlock()
	if c.endCode == 0 {
		return protocol.CloseAbnormal, ""
	}
	return c.endCode, c.endReason
}

// closeFrame begins the close with frame (none if nil), dropping what is
// queued first if drop; it reports whether this call began it.
func (c *conn) closeFrame(frame []byte, drop bool) (began bool) {
	began, start := c.out.close(frame, drop)
	if start {
		// The close is sent by writeLoop, which then waits for the
		// client's reply with a deadline: never a pool worker.
		go c.writeLoopFn()
	}
	return began
}

// isClosing reports whether a close has begun.
func (c *conn) isClosing() bool { return c.out.isClosing() }

// finish tears the connection down: unregister, let the writer flush the
// close frame (bounded by CloseGrace), close the socket, and wait for the
// writer. Reader goroutine only.
func (c *conn) finish() {
	c.closeFrame(nil, false) // no-op if already closing; marks flushed when idle
	c.sess.stop()
	c.node.unregister(c)
	t := time.NewTimer(c.node.cfg.CloseGrace)
	select {
	case <-c.out.flushed:
	case <-t.C:
	}
	t.Stop()
	c.unpark()
	c.nc.Close()
	<-c.out.flushed // the writer, if any, exits now that its socket is closed
	c.node.release(c.ip, c.user)
}

// frame builds the frame of a message for this connection.
func (c *conn) frame(op byte, payload []byte) []byte {
	return c.node.buildFrame(op, payload, c.form&1 == 1)
}

// limit is the message rate's verdict on one incoming message.
type limit uint8

const (
	allowed  limit = iota
	refused        // over the rate: refuse the message
	flooding       // over twice the rate, sustained: cut the client
)

// limit applies the message rate in force at admission to one incoming
// message. A refused message that also goes over the rate of refusals —
// more than twice the rate, sustained past a burst — means flooding.
// Reader goroutine only.
func (c *conn) limit() limit {
	if c.limiter == nil || c.limiter.Allow() {
		return allowed
	}
	c.node.metrics.rateLimited.Add(1)
	if !c.refusals.Allow() {
		return flooding
	}
	return refused
}
