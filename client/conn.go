package client

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"net"
	"net/http"
	"strings"
	"sync"
	"time"
	"unicode/utf8"

	"github.com/gorilla/websocket"

	"github.com/heraldhq/herald/protocol"
)

// session is one WebSocket connection. Its socket is read only by the
// client's connection goroutine; data frames are written by any goroutine
// under wmu (gorilla allows one writer at a time), control frames with
// gorilla's WriteControl, which is safe alongside them.
type session struct {
	c   *Client
	ws  *websocket.Conn
	wmu sync.Mutex // serialises data writes

	mu      sync.Mutex
	pending map[uint64]*pending // requests awaiting their reply, by id
	dead    bool                // the connection ended: no new requests

	// dmu guards the read deadline against the race between the reader
	// extending it and Close shortening it: once closing, only Close's stands.
	dmu     sync.Mutex
	closing bool

	// gone is closed by teardown: the session's helpers (the token
	// refresher) stop on it. ctx ends with it, or with the client.
	gone   chan struct{}
	ctx    context.Context
	cancel context.CancelFunc

	// Background commands (see sendLoop), guarded by mu.
	bg        []bgCommand
	bgRunning bool          // a sendLoop goroutine exists
	bgWake    chan struct{} // 1-buffered: bg changed

	// Connection goroutine only.
	live       bool      // the connect reply came: frames extend the read deadline
	lastExtend time.Time // when the read deadline was last pushed back
}

// pending is a request awaiting its reply.
type pending struct {
	// done receives the reply, or ErrDisconnected if the connection ends
	// first. 1-buffered, so the reader never blocks on a caller that gave
	// up; nil when nobody waits (fire-and-forget commands).
	done chan result
	// onReply, if set, runs on the connection goroutine when the reply is
	// read, before any later frame is handled: state that must be in step
	// with the stream (a subscription's position) is updated there, not by
	// the waiting caller, which may run later.
	onReply func(protocol.Reply) error
}

type result struct {
	reply protocol.Reply
	err   error
}

// command is a protocol command as the client sends it.
type command struct {
	protocol.Command
}

// establish makes one connection attempt: token, dial, connect command and
// reply, then the resubscription of every active subscription. On success
// the session is live and requests go to it.
func (c *Client) establish(ctx context.Context) (*session, error) {
	token := c.opts.Token
	if c.opts.GetToken != nil {
		t, err := c.opts.GetToken(ctx)
		if err != nil {
			return nil, fmt.Errorf("failed to get a token: %w", err)
		}
		token = t
	}
	data, err := c.connectData(ctx)
	if err != nil {
		return nil, err
	}
	ws, err := c.dial(ctx)
	if err != nil {
		return nil, err
	}
	s := &session{c: c, ws: ws, pending: make(map[uint64]*pending), gone: make(chan struct{}), bgWake: make(chan struct{}, 1)}
	s.ctx, s.cancel = context.WithCancel(c.ctx)
	ws.SetPingHandler(s.onPing)
	c.mu.Lock()
	if c.closed {
		c.mu.Unlock()
		_ = ws.Close()
		return nil, ErrClosed
	}
	c.cur = s
	cmd := &command{Command: protocol.Command{Cmd: protocol.CmdConnect, Token: token, Data: data, Subs: c.serverSubsLocked()}}
	c.mu.Unlock()

	res, err := s.handshake(ctx, cmd)
	if err != nil {
		c.teardown(s)
		return nil, err
	}
	id := res.Client

	c.mu.Lock()
	c.live = s
	c.id = id
	c.replyData = res.Data
	if !c.closed {
		c.state = StateConnected
	}
	c.notifyLocked()
	// Resubscribe every active subscription of the client's own (never one
	// the server ended, nor a server-side one: the connect command carried
	// those), from the last position seen, on the session's sender
	// goroutine.
	var resubs []bgCommand
	for _, sub := range c.subs {
		if sub.state == subActive && !sub.server {
			resubs = append(resubs, bgCommand{sub: sub})
		}
	}
	c.mu.Unlock()
	c.log.Info("connected", "client", id, "resubscribing", len(resubs), "restoring", len(cmd.Subs))
	c.emit(StateChange{State: StateConnected, ClientID: id, Data: res.Data})

	if res.Expires != 0 && c.opts.GetToken != nil {
		c.wg.Add(1)
		go c.refreshToken(s, res.Expires)
	}
	s.enqueue(resubs...)
	return s, nil
}

// dial opens the WebSocket within ctx and RequestTimeout.
func (c *Client) dial(ctx context.Context) (*websocket.Conn, error) {
	dctx, cancel := context.WithTimeout(ctx, c.opts.RequestTimeout)
	defer cancel()

	// gorilla honours ctx while connecting but not while it waits for the
	// HTTP response (only the deadline bounds that). Closing the socket when
	// ctx ends keeps Close prompt even against a server that accepted the
	// TCP connection and went silent.
	d := c.dialer
	inner := d.NetDialContext
	if inner == nil {
		if nd := d.NetDial; nd != nil {
			inner = func(_ context.Context, network, addr string) (net.Conn, error) { return nd(network, addr) }
		} else {
			inner = (&net.Dialer{}).DialContext
		}
	}
	var (
		mu     sync.Mutex
		nc     net.Conn
		killed bool
	)
	d.NetDialContext = func(ctx context.Context, network, addr string) (net.Conn, error) {
		conn, err := inner(ctx, network, addr)
		mu.Lock()
		nc = conn
		mu.Unlock()
		return conn, err
	}
	stop := onCancel(dctx, func() {
		mu.Lock()
		defer mu.Unlock()
		killed = true
		if nc != nil {
			_ = nc.Close()
		}
	})
	ws, resp, err := d.DialContext(dctx, c.url, c.opts.Header)
	stop()
	if err == nil && killed {
		_ = ws.Close()
		err = context.Cause(dctx)
	}
	if err != nil {
		if resp != nil && resp.StatusCode != http.StatusSwitchingProtocols {
			return nil, &HandshakeError{StatusCode: resp.StatusCode, Err: err}
		}
		if ctx.Err() != nil {
			err = fmt.Errorf("%w (%w)", context.Cause(ctx), err)
		}
		return nil, fmt.Errorf("failed to dial: %w", err)
	}
	if p := ws.Subprotocol(); p != protocol.Subprotocol {
		_ = ws.Close()
		return nil, fmt.Errorf("failed to dial: the server chose subprotocol %q, not %q", p, protocol.Subprotocol)
	}
	return ws, nil
}

// connectData returns the data of the next connect command.
func (c *Client) connectData(ctx context.Context) (json.RawMessage, error) {
	data := c.opts.ConnectData
	if c.opts.GetConnectData != nil {
		d, err := c.opts.GetConnectData(ctx)
		if err != nil {
			return nil, fmt.Errorf("failed to get the connect data: %w", err)
		}
		data = d
	}
	if data != nil && (!utf8.Valid(data) || !json.Valid(data)) {
		return nil, fmt.Errorf("failed to send the connect data: %q is not a valid UTF-8 JSON value", data)
	}
	return data, nil
}

// handshake sends the connect command and reads until its reply, handling
// any push that comes first. It returns the connect result.
func (s *session) handshake(ctx context.Context, cmd *command) (protocol.ConnectResult, error) {
	var none protocol.ConnectResult
	c := s.c
	_ = s.ws.SetReadDeadline(time.Now().Add(c.opts.RequestTimeout))
	stop := onCancel(ctx, func() { s.interrupt(time.Now()) })
	reply, err := s.awaitConnect(cmd)
	if err == nil && reply.Error != nil {
		err = s.refused(reply.Error)
	}
	stop()
	// Checked after stop: once ctx has fired, the session is interrupted
	// and unusable even if the reply made it in.
	if ctx.Err() != nil {
		return none, fmt.Errorf("failed to connect: %w", context.Cause(ctx))
	}
	if err != nil {
		var ne net.Error
		if errors.As(err, &ne) && ne.Timeout() {
			return none, fmt.Errorf("failed to connect: no connect reply: %w", ErrTimeout)
		}
		if ch := lostChange(err); ch.Code != 0 && ch.Code != protocol.CloseAbnormal {
			// A close frame (a *CloseError): 4500 here stops reconnecting too.
			return none, fmt.Errorf("failed to connect: %w", ch.Err)
		}
		return none, fmt.Errorf("failed to connect: %w", err)
	}
	var res protocol.ConnectResult
	if err := json.Unmarshal(reply.Result, &res); err != nil {
		return none, fmt.Errorf("failed to decode the connect result %q: %w", reply.Result, err)
	}
	s.live = true
	s.lastExtend = time.Time{}
	s.extendDeadline()
	return res, nil
}

// refused returns the error of a connect the server refused. A server
// closes the connection right after such a reply, and its close code says
// whether to come back (1013: the backend failed, retry with backoff) or
// not (4500, 4501: refused): the close frame is awaited, up to closeGrace,
// so that the error carries both the reply's *Error and the *CloseError.
func (s *session) refused(pe *protocol.Error) error {
	refusal := replyError(pe)
	s.dmu.Lock()
	if !s.closing {
		_ = s.ws.SetReadDeadline(time.Now().Add(closeGrace))
	}
	s.dmu.Unlock()
	for {
		err := s.readOne()
		if err == nil {
			continue // a push the server sent before closing
		}
		var we *websocket.CloseError
		if errors.As(err, &we) && we.Code != websocket.CloseAbnormalClosure {
			return fmt.Errorf("%w (%w)", refusal, &CloseError{Code: protocol.CloseCode(we.Code), Reason: we.Text})
		}
		return refusal // no close frame in time: the reply says all there is
	}
}

func (s *session) awaitConnect(cmd *command) (*protocol.Reply, error) {
	var reply *protocol.Reply
	p := &pending{onReply: func(r protocol.Reply) error { reply = &r; return nil }}
	if _, err := s.start(cmd, nil, false, p); err != nil {
		return nil, err
	}
	for reply == nil {
		if err := s.readOne(); err != nil {
			return nil, err
		}
	}
	return reply, nil
}

// refreshToken renews the session's token before it expires: when four
// fifths of its remaining life have passed it asks GetToken for a fresh one
// and sends refresh. It runs until the session ends or the client closes
// (owned by c.wg). A refused refresh makes the server close the connection
// (4501), which the connection goroutine handles.
func (c *Client) refreshToken(s *session, expires int64) {
	defer c.wg.Done()
	for {
		wait := max(time.Second, time.Until(time.Unix(expires, 0))*4/5)
		t := time.NewTimer(wait)
		select {
		case <-s.gone:
			t.Stop()
			return
		case <-c.ctx.Done():
			t.Stop()
			return
		case <-t.C:
		}
		ctx, cancel := context.WithTimeout(c.ctx, c.opts.RequestTimeout)
		token, err := c.opts.GetToken(ctx)
		if err != nil {
			cancel()
			c.log.Warn("token not refreshed: GetToken failed", "err", err)
			return // the server closes at expiry (4004); the reconnect tries again
		}
		raw, err := c.call(ctx, &command{Command: protocol.Command{Cmd: protocol.CmdRefresh, Token: token}}, nil, false)
		cancel()
		var res protocol.ConnectResult
		if err == nil {
			err = json.Unmarshal(raw, &res)
		}
		if err != nil || res.Expires == 0 {
			c.log.Warn("token refresh failed", "err", err)
			return
		}
		expires = res.Expires
	}
}

// serve reads and handles frames until the connection fails.
func (c *Client) serve(s *session) error {
	for {
		if err := s.readOne(); err != nil {
			return err
		}
	}
}

func (s *session) readOne() error {
	mt, data, err := s.ws.ReadMessage()
	if err != nil {
		return err
	}
	s.extendDeadline()
	if err := s.c.handleFrame(s, mt, data); err != nil {
		if s.c.ctx.Err() == nil { // on Close, Close says goodbye
			s.goodbye(err)
		}
		return &localDrop{err}
	}
	return nil
}

// localDrop is a connection the client ends itself: its handlers did not
// keep up, or the server refused a resubscribe for now.
type localDrop struct{ err error }

func (e *localDrop) Error() string { return "dropped the connection: " + e.err.Error() }
func (e *localDrop) Unwrap() error { return e.err }

// goodbye tells the server why the client drops the connection (a close
// frame 1000 with the reason), best effort: the socket is closed right after.
func (s *session) goodbye(why error) {
	reason := why.Error()
	if len(reason) > 123 { // a close frame's payload is at most 125 bytes
		// Cut at a rune boundary: an invalid UTF-8 reason is a protocol error.
		reason = strings.ToValidUTF8(reason[:123], "")
	}
	_ = s.ws.WriteControl(websocket.CloseMessage, websocket.FormatCloseMessage(websocket.CloseNormalClosure, reason), time.Now().Add(closeGrace))
}

// extendDeadline gives the server another ReadTimeout to send something.
// It is throttled: resetting a timer per frame would cost more than it buys.
func (s *session) extendDeadline() {
	if !s.live {
		return // the handshake's own deadline stands
	}
	now := time.Now()
	if now.Sub(s.lastExtend) < s.c.opts.ReadTimeout/16 {
		return
	}
	s.lastExtend = now
	s.dmu.Lock()
	if !s.closing {
		_ = s.ws.SetReadDeadline(now.Add(s.c.opts.ReadTimeout))
	}
	s.dmu.Unlock()
}

// interrupt sets a final read deadline: the reader gives up by then.
func (s *session) interrupt(t time.Time) {
	s.dmu.Lock()
	s.closing = true
	_ = s.ws.SetReadDeadline(t)
	s.dmu.Unlock()
}

// onPing answers a server ping (from inside ReadMessage, on the connection
// goroutine) and counts as a sign of life.
func (s *session) onPing(data string) error {
	s.extendDeadline()
	err := s.ws.WriteControl(websocket.PongMessage, []byte(data), time.Now().Add(s.c.opts.RequestTimeout))
	var ne net.Error
	if err == nil || errors.Is(err, websocket.ErrCloseSent) || (errors.As(err, &ne) && ne.Timeout()) {
		return nil // as gorilla's default handler: a lost pong is not fatal
	}
	return err
}

// closeGracefully sends close 1000 and gives the server closeGrace to answer
// it, after which the reader gives up. Called by Close, on its goroutine.
func (s *session) closeGracefully() {
	deadline := time.Now().Add(closeGrace)
	_ = s.ws.WriteControl(websocket.CloseMessage, websocket.FormatCloseMessage(websocket.CloseNormalClosure, ""), deadline)
	s.interrupt(deadline)
}

// teardown ends a session: no new requests, the pending ones fail with
// ErrDisconnected, subscriptions not yet confirmed are dropped (the server
// lost them with the connection), and the socket is closed.
func (c *Client) teardown(s *session) {
	s.mu.Lock()
	if !s.dead {
		close(s.gone)
	}
	s.dead = true
	pend := s.pending
	s.pending = nil
	s.bg = nil
	s.mu.Unlock()
	s.cancel()

	c.mu.Lock()
	if c.cur == s {
		c.cur = nil
	}
	if c.live == s {
		c.live = nil
		if c.state == StateConnected {
			c.state = StateDisconnected
		}
	}
	for _, sub := range c.subs {
		sub.inflight = 0
		switch sub.state {
		case subActive:
			continue
		case subUnsubscribed:
			// Ended by the server: its handlers still get what was queued
			// before the unsub push, then OnUnsubscribed.
		default:
			sub.state = subClosing
			sub.closed.Store(true)
		}
		c.removeLocked(sub)
	}
	c.mu.Unlock()

	_ = s.ws.Close()
	fail := ErrDisconnected
	if c.ctx.Err() != nil {
		fail = errClosedPending // matches ErrClosed and ErrDisconnected
	}
	for _, p := range pend {
		if p.done != nil {
			p.done <- result{err: fail}
		}
	}
}

var errClosedPending = fmt.Errorf("%w while the request was pending (%w)", ErrClosed, ErrDisconnected)

// inFrame is any frame from the server: a reply (id) or a push (push).
type inFrame struct {
	ID      uint64               `json:"id"`
	Result  json.RawMessage      `json:"result"`
	Error   *protocol.Error      `json:"error"`
	Push    string               `json:"push"`
	Channel string               `json:"channel"`
	Offset  uint64               `json:"offset"`
	Data    json.RawMessage      `json:"data"`
	Info    *protocol.ClientInfo `json:"info"`
	Code    string               `json:"code"`   // of an unsub push
	Reason  string               `json:"reason"` // of an unsub or subscribe push
	// Of a subscribe push, with Offset: the channel's position.
	Epoch     string `json:"epoch"`
	Recovered *bool  `json:"recovered"`
	// Of a pub push: the payload is a delta (client/delta.go).
	Delta bool `json:"delta"`
	// Of a dropped push.
	Count   int         `json:"count"`
	Offsets [][2]uint64 `json:"offsets"`
}

// handleFrame handles one frame on the connection goroutine. A non-nil
// error ends the connection.
func (c *Client) handleFrame(s *session, mt int, frame []byte) error {
	header, payload := frame, []byte(nil)
	binary := mt == websocket.BinaryMessage
	if binary {
		var err error
		if header, payload, err = protocol.SplitBinary(frame); err != nil {
			c.log.Warn("ignoring a malformed binary frame from the server", "err", err)
			return nil
		}
	}
	var f inFrame
	if err := json.Unmarshal(header, &f); err != nil {
		c.log.Warn("ignoring a malformed frame from the server", "err", err)
		return nil
	}
	if f.Push != "" {
		data := []byte(f.Data)
		if binary {
			data = payload // ReadMessage allocates each frame: no copy needed
		}
		return c.handlePush(s, &f, data, binary)
	}
	return s.handleReply(protocol.Reply{ID: f.ID, Result: f.Result, Error: f.Error})
}

func (s *session) handleReply(r protocol.Reply) error {
	if r.ID == 0 {
		// The server could not read one of our commands: a client bug.
		s.c.log.Error("the server could not read a command", "err", r.Error)
		return nil
	}
	s.mu.Lock()
	p := s.pending[r.ID]
	delete(s.pending, r.ID)
	s.mu.Unlock()
	// Every reply tells the pace whether the client sends too fast, even
	// one nobody waits for any more.
	if rateLimited(r) {
		s.c.pace.refused()
	} else {
		s.c.pace.passed()
	}
	if p == nil {
		s.c.log.Debug("reply to a request nobody waits for any more", "id", r.ID)
		return nil
	}
	var err error
	if p.onReply != nil {
		err = p.onReply(r)
	}
	if p.done != nil {
		p.done <- result{reply: r}
	}
	return err
}

// handlePush queues a push for the handlers, and moves the subscription's
// position past a publication once it is queued — so that after a
// reconnect, recovery starts right after the last publication the handlers
// will see.
func (c *Client) handlePush(s *session, f *inFrame, data []byte, binary bool) error {
	switch f.Push {
	case protocol.PushMessage:
		if c.opts.OnMessage == nil {
			return nil
		}
		return c.queueEvent(event{kind: evMessage, msg: Message{Data: data, Binary: binary}})
	case protocol.PushUnsub:
		c.serverUnsubscribed(f.Channel, f.Code, f.Reason)
		return nil
	case protocol.PushSubscribe:
		c.serverSubscribed(f)
		return nil
	case protocol.PushPub, protocol.PushJoin, protocol.PushLeave, protocol.PushDropped:
	default:
		return nil // unknown kinds are ignored: later versions add some
	}
	c.mu.Lock()
	sub := c.subs[f.Channel]
	ended := sub != nil && sub.state == subUnsubscribed
	c.mu.Unlock()
	if sub == nil {
		c.logUnknown(f)
		return nil
	}
	if ended || sub.closed.Load() {
		return nil // unsubscribing: pushes already on their way are expected
	}
	switch f.Push {
	case protocol.PushPub:
		data, binary, ok, resync := c.deltaPayload(sub, f, data, binary)
		if resync {
			s.enqueue(resyncCommand(sub))
		}
		if !ok {
			return nil
		}
		if c.handles(sub, evPub) {
			pub := Publication{Channel: f.Channel, Offset: f.Offset, Data: data, Binary: binary}
			if err := c.queueEvent(event{kind: evPub, sub: sub, pub: pub}); err != nil {
				return err
			}
		}
		if f.Offset > 0 {
			c.mu.Lock()
			sub.pos.Offset = f.Offset
			c.mu.Unlock()
		}
	case protocol.PushDropped:
		return c.dropped(sub, f)
	case protocol.PushJoin, protocol.PushLeave:
		kind := evJoin
		if f.Push == protocol.PushLeave {
			kind = evLeave
		}
		if !c.handles(sub, kind) || f.Info == nil {
			return nil
		}
		return c.queueEvent(event{kind: kind, sub: sub, info: *f.Info})
	}
	return nil
}

// dropped queues a dropped push's event and moves the subscription's
// position past the offsets it lists, so that a reconnect does not recover
// what the server dropped on purpose.
func (c *Client) dropped(sub *Subscription, f *inFrame) error {
	if k := len(f.Offsets); k > 0 {
		c.mu.Lock()
		if last := f.Offsets[k-1][1]; last > sub.pos.Offset {
			sub.pos.Offset = last
		}
		c.mu.Unlock()
	}
	if !c.handles(sub, evDropped) {
		return nil
	}
	return c.queueEvent(event{kind: evDropped, sub: sub, drop: Dropped{Channel: f.Channel, Count: f.Count, Offsets: f.Offsets}})
}

// queueEvent queues a push's event, waiting for room up to QueueTimeout.
func (c *Client) queueEvent(ev event) error {
	err := c.q.push(ev, true, c.opts.QueueTimeout, c.ctx.Done())
	if errors.Is(err, errQueueFull) {
		c.log.Warn("handlers too slow: dropping the connection to recover later", "queued", c.opts.QueueSize, "waited", c.opts.QueueTimeout)
		return ErrSlowHandler
	}
	return err
}

// logUnknown logs a push for a channel this client does not hold, once per
// channel (up to a bound, so a confused server cannot grow the set forever).
func (c *Client) logUnknown(f *inFrame) {
	if _, seen := c.unknown[f.Channel]; seen || len(c.unknown) >= 1024 {
		return
	}
	c.unknown[f.Channel] = struct{}{}
	c.log.Warn("ignoring pushes for a channel without subscription (logged once per channel)", "channel", f.Channel, "push", f.Push)
}

// start registers p under a fresh id and writes cmd. payload is the data of
// a publish: raw bytes after the header when binary, else a JSON value.
func (s *session) start(cmd *command, payload []byte, binary bool, p *pending) (uint64, error) {
	cmd.ID = s.c.nextID.Add(1)
	mt, frame, err := encodeCommand(cmd, payload, binary)
	if err != nil {
		return 0, err
	}
	s.mu.Lock()
	if s.dead {
		s.mu.Unlock()
		return 0, ErrDisconnected
	}
	s.pending[cmd.ID] = p
	s.mu.Unlock()
	if err := s.write(mt, frame); err != nil {
		s.forget(cmd.ID)
		return 0, fmt.Errorf("%w: %w", ErrDisconnected, err)
	}
	return cmd.ID, nil
}

func (s *session) forget(id uint64) {
	s.mu.Lock()
	delete(s.pending, id)
	s.mu.Unlock()
}

// write writes one data frame with a deadline.
func (s *session) write(mt int, frame []byte) error {
	s.wmu.Lock()
	defer s.wmu.Unlock()
	_ = s.ws.SetWriteDeadline(time.Now().Add(s.c.opts.RequestTimeout))
	if err := s.ws.WriteMessage(mt, frame); err != nil {
		// gorilla fails every write after a failed one: end the connection,
		// so the reader notices and the client reconnects.
		_ = s.ws.Close()
		return fmt.Errorf("failed to write to the server: %w", err)
	}
	return nil
}

// encodeCommand builds a command's frame. A text publish's data is spliced
// in as is — json.Marshal would re-encode (compact) it, and the protocol
// promises delivery byte for byte.
func encodeCommand(cmd *command, payload []byte, binary bool) (int, []byte, error) {
	header, err := json.Marshal(cmd)
	if err != nil {
		return 0, nil, fmt.Errorf("failed to encode %s command: %w", cmd.Cmd, err)
	}
	switch {
	case binary:
		// Compact JSON holds no raw newline: this '\n' ends the header.
		frame := make([]byte, 0, len(header)+1+len(payload))
		frame = append(append(append(frame, header...), '\n'), payload...)
		return websocket.BinaryMessage, frame, nil
	case payload != nil:
		frame := make([]byte, 0, len(header)+len(payload)+9)
		frame = append(frame, header[:len(header)-1]...) // drop the closing '}'
		frame = append(frame, `,"data":`...)
		frame = append(frame, bytes.TrimSpace(payload)...)
		return websocket.TextMessage, append(frame, '}'), nil
	}
	return websocket.TextMessage, header, nil
}

// session returns the live connection for a request.
func (c *Client) session() (*session, error) {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.sessionLocked()
}

func (c *Client) sessionLocked() (*session, error) {
	if err := c.stoppedLocked(); err != nil {
		return nil, err
	}
	if c.live == nil {
		return nil, ErrDisconnected
	}
	return c.live, nil
}

// call sends a command and returns its reply's result, or its error as an
// *Error. It retries after rate_limited (see do).
func (c *Client) call(ctx context.Context, cmd *command, payload []byte, binary bool) (json.RawMessage, error) {
	raw, _, err := c.do(ctx, cmd.Command, payload, binary, false)
	return raw, err
}

// callOn sends a command on s and waits for its reply: one attempt.
func (c *Client) callOn(ctx context.Context, s *session, cmd *command, payload []byte, binary bool) (json.RawMessage, error) {
	p := &pending{done: make(chan result, 1)}
	id, err := s.start(cmd, payload, binary, p)
	if err != nil {
		return nil, err
	}
	r, err := c.wait(ctx, s, id, p)
	if err != nil {
		return nil, err
	}
	if r.Error != nil {
		return nil, replyError(r.Error)
	}
	return r.Result, nil
}

// gaveUpWaiting is wait's error when the deadline or ctx came before any
// result: p.done has not been read, and will still receive one if
// p.onReply is set.
type gaveUpWaiting struct{ cause error }

func (e *gaveUpWaiting) Error() string { return e.cause.Error() }
func (e *gaveUpWaiting) Unwrap() error { return e.cause }

// wait waits for the reply to request id, up to ctx and RequestTimeout.
func (c *Client) wait(ctx context.Context, s *session, id uint64, p *pending) (protocol.Reply, error) {
	tctx, cancel := context.WithTimeoutCause(ctx, c.opts.RequestTimeout, ErrTimeout)
	defer cancel()
	select {
	case res := <-p.done:
		return res.reply, res.err
	case <-tctx.Done():
	}
	select {
	case res := <-p.done: // the reply won the race after all: it counts
		return res.reply, res.err
	default:
	}
	if p.onReply == nil {
		s.forget(id) // a late reply is then dropped; with onReply it must still run
	}
	return protocol.Reply{}, &gaveUpWaiting{context.Cause(tctx)}
}
