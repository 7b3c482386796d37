package herald

import (
	"bufio"
	"bytes"
	"encoding/json"
	"errors"
	"net"
	"net/http"
	"sync"
	"sync/atomic"
	"syscall"
	"time"

	"github.com/gorilla/websocket"
	"golang.org/x/time/rate"

	"github.com/heraldhq/herald/internal/wsframe"
	"github.com/heraldhq/herald/protocol"
)

// Wire forms: every publication is encoded at most once per form, and each
// connection reads one of them. form = raw<<1 | deflate.
const (
	formProtocol        = 0
	formProtocolDeflate = 1
	formRaw             = 2
	formRawDeflate      = 3
	numForms            = 4
)

// conn is one WebSocket connection.
//
// Goroutines: exactly one reader at a time (readLoop, started by the HTTP
// handler, handing itself to a fresh goroutine after each read that handled
// a message) owns the connection's teardown. Writing is a role (writing,
// under mu), taken when a frame is queued with no writer and given back
// once the queue is empty and nothing is in flight; only its holder writes
// to nc. On Linux sockets with a descriptor the holder is a writer-pool
// worker, which writes without blocking (writer.go), until the socket is
// full or a close is queued: then the connection's own writeLoop goroutine
// takes over. Elsewhere (TLS, other systems) it is always writeLoop.
// Everything else — fan-out, replies, pings, pongs, close frames — enqueues
// ready-to-send frames and never blocks.
type conn struct {
	node *Node
	id   string
	// user and info change only on the reader (connect), under mu; other
	// goroutines read them under mu.
	user string
	info json.RawMessage
	form uint8
	raw  bool
	// rawChannel and echo apply to raw-mode connections only.
	rawChannel string
	echo       bool

	ip string
	// Authentication state, reader goroutine only (and serve, before it
	// starts): grants are channels granted by tokens; connected is set by
	// the connect command; timers close the connection when it does not
	// authenticate in time or its token expires.
	grants    map[string]struct{}
	connected bool
	authTimer *time.Timer
	expTimer  *time.Timer
	// authed is set once the client may send commands (read by the timer).
	authed atomic.Bool
	// limiter paces incoming messages at the rate in force at admission (nil
	// with no MessageRate);
	// refusals paces the refused ones: a client that exhausts it too, by
	// sending over twice the rate for a while, is closed.
	limiter, refusals *rate.Limiter

	// wdeadline is the write deadline last set on nc (writeLoop only;
	// a slow-consumer cut may shorten the real one behind its back, which
	// only makes writes end sooner).
	wdeadline time.Time
	bufs      net.Buffers // the batch being written (writeLoop only)
	// writeLoopFn and readLoopFn are c.writeLoop and c.readLoop, made once:
	// `go c.readLoop()` allocates a closure each time, and a reader starts
	// after every message it handles (writeLoop starts less often, but on
	// the same terms).
	writeLoopFn, readLoopFn func()

	// The read side, reader goroutine only (see conn_read.go).
	dec       wsframe.Decoder
	msg       *[]byte         // the message being read (pooled); nil between messages
	rc        syscall.RawConn // nc's descriptor, set before c is shared; nil if nc has none (TLS): then rbuf
	rbuf      []byte          // the read buffer of a connection without rc
	chunk     *[]byte         // tryRead's result: a pooled buffer holding nread bytes
	nread     int
	rerr      error
	tryReadFn func(fd uintptr) bool
	rdeadline time.Time // the read deadline last set

	nc net.Conn // the socket; written only by the writer role's holder (Close and deadlines excepted)

	mu sync.Mutex // guards the fields below
	// queue holds complete frames, FIFO; spare is a drained queue kept for reuse.
	queue, spare [][]byte
	queuedBytes  int
	// handoff is the unwritten rest of a pool write that found the socket
	// full, the first batch of the writeLoop that takes over.
	handoff [][]byte
	writing bool // the writer role is held: by a pool worker or by writeLoop
	// closing: a close frame is queued (or the socket failed); no data frame
	// is accepted any more.
	closing bool
	// flushed is closed once closing is set and no writer runs any more.
	flushed     chan struct{}
	flushedDone bool
	channels    map[string]struct{}
	expiresUnix int64
	// sentSincePing: a frame other than a ping was queued since the last
	// heartbeat ping (see ping).
	sentSincePing bool
}

var pingFrame = wsframe.Append(nil, wsframe.OpPing, nil, false)

// maxIdleSpare is the largest drained queue (in frames) a connection keeps
// for reuse across a heartbeat round in which it sent nothing but the ping:
// a busy connection keeps its queues (dropping them at every writer exit
// made 41 bytes of garbage per delivery at 1M deliveries/s), while one idle
// after a large burst holds at most a few hundred bytes for it.
const maxIdleSpare = 16

// ping queues a heartbeat ping. A connection that sent nothing since the
// previous ping and holds a large drained queue gives it up first. Called
// by the heartbeat once per PingInterval.
func (c *conn) ping() {
	c.mu.Lock()
	if !c.writing && !c.sentSincePing {
		if cap(c.spare) > maxIdleSpare {
			c.spare = nil
		}
		if len(c.queue) == 0 && cap(c.queue) > maxIdleSpare {
			c.queue = nil
		}
	}
	c.mu.Unlock()
	c.enqueue(pingFrame)
	c.mu.Lock()
	c.sentSincePing = false // the ping itself does not count
	c.mu.Unlock()
}

// enqueue appends a frame to the outbound queue without blocking. A frame
// that would take the queue past its limits makes the connection a slow
// consumer: its queue is dropped and it is closed with CloseSlowConsumer.
// It reports whether the frame was queued. Safe from any goroutine.
func (c *conn) enqueue(frame []byte) bool {
	cfg := &c.node.cfg
	c.mu.Lock()
	if c.closing {
		c.mu.Unlock()
		return false
	}
	if len(c.queue) >= cfg.MaxQueueMessages || c.queuedBytes+len(frame) > cfg.MaxQueueBytes {
		dropped := len(c.queue) + 1
		start := c.closeLocked(wsframe.Close(CloseSlowConsumer, "slow consumer"), true)
		c.mu.Unlock()
		c.node.metrics.slowConsumers.Add(1)
		c.node.metrics.dropped.Add(uint64(dropped))
		c.node.log.Warn("slow consumer disconnected", "client", c.id)
		// A write in flight may be stuck on the client's full TCP window:
		// give it only the close grace, not the full write timeout.
		_ = c.nc.SetWriteDeadline(time.Now().Add(cfg.CloseGrace))
		if start {
			go c.writeLoopFn()
		}
		return false
	}
	if c.queue == nil {
		// Reuse the drained batch rather than allocate a new queue per burst.
		c.queue, c.spare = c.spare, nil
	}
	c.queue = append(c.queue, frame)
	c.queuedBytes += len(frame)
	c.sentSincePing = true
	start := !c.writing
	c.writing = true
	c.mu.Unlock()
	if start {
		if poolWrites && c.rc != nil {
			c.node.writers.add(c)
		} else {
			go c.writeLoopFn()
		}
	}
	return true
}

// close queues a close frame after whatever is already queued, so the client
// receives everything sent before it. A no-op on a closing connection; it
// reports whether this call began the close.
func (c *conn) close(code int, reason string) bool {
	return c.closeFrame(wsframe.Close(code, reason), false)
}

func (c *conn) closeFrame(frame []byte, drop bool) (began bool) {
	c.mu.Lock()
	began = !c.closing
	start := c.closeLocked(frame, drop)
	c.mu.Unlock()
	if start {
		go c.writeLoopFn()
	}
	return began
}

// closeLocked marks the connection closing and queues frame (if not nil),
// dropping the queue first if drop is set. It reports whether the caller must
// start a writer. c.mu must be held.
func (c *conn) closeLocked(frame []byte, drop bool) (startWriter bool) {
	if c.closing {
		return false
	}
	c.closing = true
	if drop {
		clear(c.queue)
		c.queue = c.queue[:0]
		c.queuedBytes = 0
	}
	if frame != nil {
		c.queue = append(c.queue, frame)
		c.queuedBytes += len(frame)
	}
	if c.writing {
		return false
	}
	if len(c.queue) == 0 {
		c.markFlushedLocked()
		return false
	}
	c.writing = true
	return true
}

func (c *conn) markFlushedLocked() {
	if !c.flushedDone {
		c.flushedDone = true
		close(c.flushed)
	}
}

// writeLoop writes queued frames until the queue is empty, taking everything
// queued at once and writing it with one vectored write, each with the
// write deadline. It runs holding the writer role, on a goroutine of its
// own: it may wait for a slow client.
func (c *conn) writeLoop() {
	cfg := &c.node.cfg
	for {
		c.mu.Lock()
		batch := c.handoff
		c.handoff = nil
		if batch == nil {
			if len(c.queue) == 0 {
				c.writing = false
				if c.closing {
					c.markFlushedLocked()
				}
				c.mu.Unlock()
				return
			}
			batch = c.queue
			c.queue, c.spare = c.spare, nil
			c.queuedBytes = 0
		}
		closing := c.closing
		c.mu.Unlock()

		// Every write has a deadline between half the write timeout and the
		// whole of it: re-arming the socket's timer for each batch cost 7%
		// of server CPU at high fan-out rates (docs/benchmarks.md), so it is
		// re-armed only when less than half is left.
		now := time.Now()
		switch {
		case closing:
			c.wdeadline = now.Add(min(cfg.WriteTimeout, cfg.CloseGrace))
			_ = c.nc.SetWriteDeadline(c.wdeadline)
		case c.wdeadline.Sub(now) < cfg.WriteTimeout/2:
			c.wdeadline = now.Add(cfg.WriteTimeout)
			_ = c.nc.SetWriteDeadline(c.wdeadline)
		}
		written, err := c.writeFrames(batch)
		c.node.metrics.framesOut.Add(uint64(len(batch)))
		c.node.metrics.bytesOut.Add(uint64(written))
		clear(batch)
		if err != nil {
			c.writeFailed()
			return
		}
		if closing {
			// Our close frame is out: wait a little for the client's reply.
			_ = c.nc.SetReadDeadline(time.Now().Add(cfg.CloseGrace))
		}
		c.mu.Lock()
		if cap(batch) <= 256 && c.spare == nil {
			c.spare = batch[:0]
		}
		c.mu.Unlock()
	}
}

// writeFailed ends the writer role after a failed write: nothing more is
// sent, and closing the socket wakes the reader, which tears the
// connection down.
func (c *conn) writeFailed() {
	c.mu.Lock()
	c.closing = true
	clear(c.queue)
	c.queue, c.queuedBytes = nil, 0
	c.writing = false
	c.markFlushedLocked()
	c.mu.Unlock()
	c.nc.Close()
}

var writeBufs = sync.Pool{New: func() any { return new(bytes.Buffer) }}

// writeFrames writes all frames in one call: writev on a TCP socket, or one
// coalesced Write elsewhere (TLS, which would otherwise write per buffer).
func (c *conn) writeFrames(frames [][]byte) (int64, error) {
	nc := c.nc
	if _, ok := nc.(*net.TCPConn); ok {
		// c.bufs, not a local: WriteTo's receiver would escape, an
		// allocation per write.
		c.bufs = frames
		n, err := c.bufs.WriteTo(nc)
		c.bufs = nil
		return n, err
	}
	buf := writeBufs.Get().(*bytes.Buffer)
	buf.Reset()
	for _, f := range frames {
		buf.Write(f)
	}
	n, err := nc.Write(buf.Bytes())
	if buf.Cap() <= 64<<10 {
		writeBufs.Put(buf)
	}
	return int64(n), err
}

// finish tears the connection down: unregister, let the writer flush the
// close frame (bounded by CloseGrace), close the socket, and wait for the
// writer. Reader goroutine only.
func (c *conn) finish() {
	c.closeFrame(nil, false) // no-op if already closing; marks flushed when idle
	c.stopAuthTimers()
	c.node.unregister(c)
	t := time.NewTimer(c.node.cfg.CloseGrace)
	select {
	case <-c.flushed:
	case <-t.C:
	}
	t.Stop()
	c.nc.Close()
	<-c.flushed // the writer, if any, exits now that its socket is closed
	c.node.release(c.ip, c.user)
}

// frame builds the frame of a reply for this connection.
func (c *conn) frame(op byte, payload []byte) []byte {
	return c.node.buildFrame(op, payload, c.form&1 == 1)
}

// reply queues the reply to command id: an error, or a result (encoded
// with encoding/json, unless it is a json.RawMessage, which is sent byte
// for byte).
func (c *conn) reply(id uint64, result any, perr *protocol.Error) {
	r := protocol.Reply{ID: id, Error: perr}
	if raw, ok := result.(json.RawMessage); ok && perr == nil {
		r.Result = raw
	} else if result != nil && perr == nil {
		b, err := json.Marshal(result)
		if err != nil {
			r.Error = protocol.Errorf(protocol.CodeInternal, "cannot encode result")
		} else {
			r.Result = b
		}
	}
	c.enqueue(c.frame(wsframe.OpText, protocol.AppendReply(nil, r)))
}

func (c *conn) handleCommand(msg []byte, binary bool) {
	cmd, payload, err := protocol.DecodeCommand(msg, binary)
	if c.rateLimited(cmd.ID) { // before anything else, so garbage floods are paced too
		return
	}
	if err != nil {
		var perr *protocol.Error
		errors.As(err, &perr)
		c.reply(cmd.ID, nil, perr)
		return
	}
	n := c.node
	if !c.authed.Load() && cmd.Cmd != protocol.CmdConnect && cmd.Cmd != protocol.CmdPing {
		c.reply(cmd.ID, nil, protocol.Errorf(protocol.CodeUnauthorized, "send connect (with your token) first"))
		return
	}
	switch cmd.Cmd {
	case protocol.CmdPing:
		c.reply(cmd.ID, nil, nil)
	case protocol.CmdConnect, protocol.CmdRefresh:
		c.handleConnect(cmd)
	case protocol.CmdSubscribe:
		res, finish, perr := n.subscribeConn(c, cmd.Channel, cmd.Since, cmd.Token)
		if perr != nil {
			c.reply(cmd.ID, nil, perr)
			return
		}
		if res.Epoch == "" && res.Recovered == nil {
			c.reply(cmd.ID, nil, nil)
		} else {
			c.reply(cmd.ID, res, nil)
		}
		finish()
	case protocol.CmdUnsubscribe:
		c.reply(cmd.ID, nil, n.unsubscribeConn(c, cmd.Channel))
	case protocol.CmdPublish:
		c.handlePublish(cmd, payload, binary)
	case protocol.CmdHistory:
		c.handleHistory(cmd)
	case protocol.CmdPresence, protocol.CmdPresenceStats:
		c.handlePresence(cmd)
	default:
		c.reply(cmd.ID, nil, protocol.Errorf(protocol.CodeUnknownCommand, "unknown command %q", cmd.Cmd))
	}
}

func (c *conn) handlePublish(cmd protocol.Command, payload []byte, binary bool) {
	n := c.node
	ns, perr := n.channelNamespace(cmd.Channel)
	if perr == nil {
		perr = n.permit(c.user, c.grants, cmd.Channel, ns.AllowPublish)
	}
	if perr != nil {
		c.reply(cmd.ID, nil, perr)
		return
	}
	if !binary && len(payload) == 0 {
		c.reply(cmd.ID, nil, protocol.Errorf(protocol.CodeBadRequest, `publish needs "data" (or a binary frame)`))
		return
	}
	pub := &Publication{Channel: cmd.Channel, Data: bytes.Clone(payload), Binary: binary, Origin: c.id}
	n.metrics.pubClient.Add(1)
	ctx, cancel := n.opCtx()
	defer cancel()
	res, err := n.publish(ctx, pub, ns.publishOptions(cmd.IdempotencyKey, n.cfg.IdempotencyWindow))
	if err != nil {
		n.log.Warn("publish failed", "channel", cmd.Channel, "err", err)
		c.reply(cmd.ID, nil, protocol.Errorf(protocol.CodeUnavailable, "publish failed: broker unavailable"))
		return
	}
	if res.Offset == 0 && !res.Duplicate {
		c.reply(cmd.ID, nil, nil)
		return
	}
	c.reply(cmd.ID, protocol.PublishResult{Offset: res.Offset, Epoch: res.Epoch, Duplicate: res.Duplicate}, nil)
}

func (c *conn) handleHistory(cmd protocol.Command) {
	opts := HistoryOptions{Limit: -1, Reverse: cmd.Reverse}
	if cmd.Limit != nil {
		if *cmd.Limit < 0 {
			c.reply(cmd.ID, nil, protocol.Errorf(protocol.CodeBadRequest, `"limit" must be 0 or more`))
			return
		}
		opts.Limit = *cmd.Limit
	}
	if cmd.Since != nil {
		opts.Since = &StreamPosition{Offset: cmd.Since.Offset, Epoch: cmd.Since.Epoch}
	}
	if perr := c.node.permitOn(c, cmd.Channel, func(ns *Namespace) Permission { return ns.AllowHistory }); perr != nil {
		c.reply(cmd.ID, nil, perr)
		return
	}
	ctx, cancel := c.node.opCtx()
	defer cancel()
	h, err := c.node.History(ctx, cmd.Channel, opts)
	if err != nil {
		c.reply(cmd.ID, nil, protoError(err))
		return
	}
	c.reply(cmd.ID, json.RawMessage(protocol.AppendHistoryResult(nil, historyResult(h))), nil)
}

func (c *conn) handlePresence(cmd protocol.Command) {
	n := c.node
	if perr := n.permitOn(c, cmd.Channel, func(ns *Namespace) Permission { return ns.AllowPresence }); perr != nil {
		c.reply(cmd.ID, nil, perr)
		return
	}
	if cmd.Cmd == protocol.CmdPresenceStats {
		ctx, cancel := n.opCtx()
		defer cancel()
		st, err := n.PresenceStats(ctx, cmd.Channel)
		if err != nil {
			c.reply(cmd.ID, nil, protoError(err))
			return
		}
		c.reply(cmd.ID, protocol.PresenceStatsResult{Clients: st.Clients, Users: st.Users}, nil)
		return
	}
	ctx, cancel := n.opCtx()
	defer cancel()
	m, err := n.Presence(ctx, cmd.Channel)
	if err != nil {
		c.reply(cmd.ID, nil, protoError(err))
		return
	}
	out := protocol.PresenceResult{Clients: make(map[string]protocol.ClientInfo, len(m))}
	for id, p := range m {
		out.Clients[id] = protocol.ClientInfo{Client: p.Client, User: p.User, Info: p.Info}
	}
	c.reply(cmd.ID, out, nil)
}

// handleConnect authenticates the connection (connect) or renews its token
// (refresh). A token that fails verification closes the connection with
// CloseUnauthorized after the error reply.
func (c *conn) handleConnect(cmd protocol.Command) {
	n := c.node
	refresh := cmd.Cmd == protocol.CmdRefresh
	switch {
	case refresh && n.cfg.Tokens == nil:
		c.reply(cmd.ID, nil, protocol.Errorf(protocol.CodeBadRequest, "this server checks no tokens"))
		return
	case refresh && cmd.Token == "":
		c.reply(cmd.ID, nil, protocol.Errorf(protocol.CodeBadRequest, `refresh needs "token"`))
		return
	case !refresh && c.connected:
		c.reply(cmd.ID, nil, protocol.Errorf(protocol.CodeBadRequest, "already connected; use refresh to renew the token"))
		return
	}
	if cmd.Token != "" && n.cfg.Tokens != nil {
		ctx, cancel := n.opCtx()
		defer cancel()
		claims, err := n.verifyToken(ctx, cmd.Token, tokenCheck{
			use: forConnection, user: c.user, anyUser: !refresh && c.user == "", via: cmd.Cmd, client: c.id,
		})
		if err != nil {
			c.reply(cmd.ID, nil, protocol.Errorf(protocol.CodeUnauthorized, "%s", tokenRefusal(err)))
			c.close(CloseUnauthorized, "invalid token")
			return
		}
		if !n.moveUser(c.user, claims.UserID) {
			n.metrics.limitHits.Add(1)
			c.reply(cmd.ID, nil, protocol.Errorf(protocol.CodeLimitExceeded, "too many connections for this user"))
			c.close(websocket.ClosePolicyViolation, "too many connections for this user")
			return
		}
		n.hub.setUser(c, claims.UserID)
		if claims.Info != nil {
			c.mu.Lock()
			c.info = claims.Info
			c.mu.Unlock()
		}
		for ch := range grantSet(claims.Channels) {
			if c.grants == nil {
				c.grants = make(map[string]struct{})
			}
			c.grants[ch] = struct{}{}
		}
		c.setExpiry(claims.ExpiresAt)
	}
	c.connected = true
	if !c.authed.Load() {
		c.authed.Store(true)
		c.stopTimer(&c.authTimer)
	}
	res := protocol.ConnectResult{Client: c.id, User: c.user}
	c.mu.Lock()
	if c.expTimer != nil {
		res.Expires = c.expiresUnix
	}
	c.mu.Unlock()
	c.reply(cmd.ID, res, nil)
}

// startAuthTimers arms the connect timeout (when a connect is needed) and
// the token expiry (when the handshake's token has one).
func (c *conn) startAuthTimers(id identity) {
	if id.authed {
		c.authed.Store(true)
	} else {
		c.mu.Lock()
		c.authTimer = time.AfterFunc(c.node.cfg.ConnectTimeout, func() {
			if !c.authed.Load() {
				c.close(CloseConnectTimeout, "no connect within the timeout")
			}
		})
		c.mu.Unlock()
	}
	c.setExpiry(id.expires)
}

// setExpiry (re)arms the token expiry timer: an expired token closes the
// connection with CloseTokenExpired unless refreshed before.
func (c *conn) setExpiry(exp time.Time) {
	c.mu.Lock()
	defer c.mu.Unlock()
	if c.expTimer != nil {
		c.expTimer.Stop()
		c.expTimer = nil
	}
	if exp.IsZero() {
		return
	}
	c.expiresUnix = exp.Unix()
	c.expTimer = time.AfterFunc(time.Until(exp), func() { c.close(CloseTokenExpired, "token expired") })
}

func (c *conn) stopTimer(t **time.Timer) {
	c.mu.Lock()
	if *t != nil {
		(*t).Stop()
		*t = nil
	}
	c.mu.Unlock()
}

func (c *conn) stopAuthTimers() {
	c.stopTimer(&c.authTimer)
	c.stopTimer(&c.expTimer)
}

// rateLimited applies Config.MessageRate to one incoming message (command
// id, 0 for raw) and reports whether it is refused. A refused command gets a
// rate_limited error reply. A client whose refused messages also go over
// the rate (more than twice the rate, sustained past a burst), and any raw
// client over the rate, is closed with CloseRateLimited. Reader goroutine only.
func (c *conn) rateLimited(id uint64) bool {
	if c.limiter == nil || c.limiter.Allow() {
		return false
	}
	c.node.metrics.rateLimited.Add(1)
	if c.raw || !c.refusals.Allow() {
		c.close(CloseRateLimited, "message rate limit exceeded")
		return true
	}
	c.reply(id, nil, protocol.Errorf(protocol.CodeRateLimited, "more than %g messages per second; slow down", float64(c.limiter.Limit())))
	return true
}

// protoError maps a Node method's error to the protocol's error.
func protoError(err error) *protocol.Error {
	switch {
	case errors.Is(err, ErrBadChannel):
		return &protocol.Error{Code: protocol.CodeBadChannel, Message: err.Error()}
	case errors.Is(err, ErrNotEnabled):
		return &protocol.Error{Code: protocol.CodeNotEnabled, Message: err.Error()}
	default:
		return protocol.Errorf(protocol.CodeUnavailable, "temporarily unavailable")
	}
}

// handleRaw relays a raw-mode message, verbatim and with its opcode, to the
// connection's channel.
func (c *conn) handleRaw(msg []byte, binary bool) {
	n := c.node
	if c.rateLimited(0) {
		return
	}
	ns := n.ns.lookup(c.rawChannel) // validated at the handshake
	if perr := n.permit(c.user, c.grants, c.rawChannel, ns.AllowPublish); perr != nil {
		c.close(websocket.ClosePolicyViolation, "not allowed to publish to this channel")
		return
	}
	pub := &Publication{Channel: c.rawChannel, Data: bytes.Clone(msg), Binary: binary, Origin: c.id}
	n.metrics.pubRaw.Add(1)
	ctx, cancel := n.opCtx()
	defer cancel()
	if _, err := n.publish(ctx, pub, ns.publishOptions("", 0)); err != nil {
		n.log.Warn("raw publish failed", "client", c.id, "channel", c.rawChannel, "err", err)
		c.close(websocket.CloseTryAgainLater, "publish failed")
	}
}

// hijackWriter wraps the ResponseWriter handed to gorilla's Upgrade so that
// the hijacked socket is a hijackedConn.
type hijackWriter struct {
	http.ResponseWriter
	hc *hijackedConn
}

func (w *hijackWriter) Hijack() (net.Conn, *bufio.ReadWriter, error) {
	nc, brw, err := http.NewResponseController(w.ResponseWriter).Hijack()
	if err != nil {
		return nil, nil, err
	}
	w.hc = &hijackedConn{Conn: nc}
	return w.hc, brw, nil
}

// hijackedConn is the socket as gorilla/websocket sees it during the
// handshake: it notes whether the response accepted permessage-deflate.
// gorilla only performs the handshake; the connection's frames are read by
// conn's own reader and written by its writer, so nothing else ever writes
// to the socket once the handshake is done.
type hijackedConn struct {
	net.Conn
	deflate bool // the handshake response accepted permessage-deflate
}

var deflateAccepted = []byte("\r\nSec-WebSocket-Extensions: permessage-deflate")

func (h *hijackedConn) Write(p []byte) (int, error) {
	if bytes.Contains(p, deflateAccepted) {
		h.deflate = true
	}
	return h.Conn.Write(p)
}
