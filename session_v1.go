package herald

import (
	"bytes"
	"encoding/json"
	"errors"
	"net/http"
	"slices"
	"sync"
	"sync/atomic"
	"time"

	"github.com/heraldhq/herald/internal/wsframe"
	"github.com/heraldhq/herald/protocol"
)

// v1Session is the herald.v1 protocol (PROTOCOL.md) on one connection:
// commands in, replies and pushes out, in command order.
//
// Its methods run on the connection's reader goroutine; the two timers
// (connect timeout, token expiry) only close the connection. mu guards
// authTimer.
type v1Session struct {
	c *conn

	connected bool // a connect command succeeded (reader only)
	// authed is set once the client may send commands: no token checks,
	// a valid token at the handshake, or connect.
	authed atomic.Bool

	mu        sync.Mutex
	authTimer *time.Timer // closes a connection that does not connect in time
	exp       expiry      // closes it when its token expires unrefreshed

	// header and url are the handshake's, kept for the connect hook until
	// connect (reader only).
	header http.Header
	url    string

	// batch is the state of publish batches (reader only; see flushPubs),
	// made at the connection's first publish through a BatchPublisher:
	// the many connections that only subscribe do not carry it (it would
	// more than triple the session's size, 96 bytes to 320).
	batch *pubBatch
}

// pubBatch is a session's publish batches.
type pubBatch struct {
	// pend holds publishes read but not yet handed to the broker.
	pend pendingPubs
	// held, while flushPubs replies to a batch, takes the write of the
	// replies so that they go out in one write, not one each.
	held    inlineFlush
	holding bool
}

// pendingPubs are a client's publishes waiting to go to the broker
// together: the i-th of each slice belongs to the i-th publish.
type pendingPubs struct {
	ids    []uint64
	pubs   []*Publication
	opts   []PublishOptions
	events []bool // its namespace sends publication webhooks
	res    []PublishResult
	errs   []error
}

// maxPublishBatch bounds the publishes one batch hands to the broker.
const maxPublishBatch = 64

var _ session = (*v1Session)(nil)

// newV1Session starts a session for a connection the handshake identified
// as id: with a connect timeout if it must still authenticate (it must,
// with a connect hook: the hook runs on connect), and the handshake
// token's expiry if it had one.
func newV1Session(c *conn, id identity, r *http.Request) *v1Session {
	s := &v1Session{c: c}
	if c.node.cfg.Hooks.Connect != nil {
		s.header, s.url = r.Header, r.URL.String()
	}
	if id.authed && c.node.cfg.Hooks.Connect == nil {
		s.authed.Store(true)
	} else {
		s.authTimer = time.AfterFunc(c.node.cfg.ConnectTimeout, func() {
			if !s.authed.Load() {
				c.close(CloseConnectTimeout, "no connect within the timeout")
			}
		})
	}
	s.exp.set(c, id.expires, false)
	return s
}

func (s *v1Session) stop() {
	s.mu.Lock()
	if s.authTimer != nil {
		s.authTimer.Stop()
		s.authTimer = nil
	}
	s.mu.Unlock()
	s.exp.stop()
}

// reply queues the reply to command id: an error, or a result (encoded
// with encoding/json, unless it is a json.RawMessage, which is sent byte
// for byte), and writes it at once if nothing else was being written
// (enqueueWrite). Reader goroutine only, as every command is handled there.
func (s *v1Session) reply(id uint64, result any, perr *protocol.Error) {
	// Replies go in the order of the commands: those of batched publishes
	// read before this command first.
	s.flushPubs()
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
	frame := s.c.frame(wsframe.OpText, protocol.AppendReply(nil, r))
	if b := s.batch; b != nil && b.holding {
		s.c.enqueueHeld(frame, &b.held)
		return
	}
	s.c.enqueueWrite(frame)
}

// fail replies to command id with a refusal (see toProto).
func (s *v1Session) fail(id uint64, err error) { s.reply(id, nil, toProto(err)) }

func (s *v1Session) message(msg []byte, binary bool) {
	c, n := s.c, s.c.node
	cmd, payload, err := protocol.DecodeCommand(msg, binary)
	if err != nil || cmd.Cmd != protocol.CmdPublish {
		// Batched publishes take effect before any other command.
		s.flushPubs()
	}
	// The rate first, so that floods of garbage are paced too.
	switch c.limit() {
	case refused:
		s.reply(cmd.ID, nil, protocol.Errorf(protocol.CodeRateLimited, "more than %g messages per second; slow down", float64(c.limiter.Limit())))
		return
	case flooding:
		s.flushPubs()
		c.close(CloseRateLimited, "message rate limit exceeded")
		return
	}
	if err != nil {
		var perr *protocol.Error
		errors.As(err, &perr)
		s.reply(cmd.ID, nil, perr)
		return
	}
	if !s.authed.Load() && cmd.Cmd != protocol.CmdConnect && cmd.Cmd != protocol.CmdPing {
		s.reply(cmd.ID, nil, protocol.Errorf(protocol.CodeUnauthorized, "send connect (with your token) first"))
		return
	}
	switch cmd.Cmd {
	case protocol.CmdPing:
		s.reply(cmd.ID, nil, nil)
	case protocol.CmdConnect, protocol.CmdRefresh:
		s.connect(cmd)
	case protocol.CmdSubscribe:
		s.subscribe(cmd)
	case protocol.CmdUnsubscribe:
		c.subMu.Lock()
		err := n.unsubscribeConn(c, cmd.Channel)
		c.subMu.Unlock()
		if err != nil {
			s.fail(cmd.ID, err)
			return
		}
		s.reply(cmd.ID, nil, nil)
		n.unsubscribed(c, cmd.Channel, "client")
	case protocol.CmdRPC:
		s.rpc(cmd, binary)
	case protocol.CmdPublish:
		s.publish(cmd, payload, binary)
	case protocol.CmdHistory:
		s.history(cmd)
	case protocol.CmdPresence, protocol.CmdPresenceStats:
		s.presence(cmd)
	default:
		s.reply(cmd.ID, nil, protocol.Errorf(protocol.CodeUnknownCommand, "unknown command %q", cmd.Cmd))
	}
}

func (s *v1Session) subscribe(cmd protocol.Command) {
	s.c.subMu.Lock()
	defer s.c.subMu.Unlock()
	res, finish, err := s.c.node.subscribeConn(s.c, cmd.Channel, cmd.Since, cmd.Token, cmd.Data, cmd.Delta)
	if err != nil {
		s.fail(cmd.ID, err)
		return
	}
	if res.Epoch == "" && res.Recovered == nil {
		s.reply(cmd.ID, nil, nil)
	} else {
		s.reply(cmd.ID, res, nil)
	}
	finish()
}

func (s *v1Session) publish(cmd protocol.Command, payload []byte, binary bool) {
	c, n := s.c, s.c.node
	ns, perr := n.channelNamespace(cmd.Channel)
	if perr == nil {
		perr = n.permit(c.user, c.grants, cmd.Channel, ns.AllowPublish)
	}
	if perr != nil {
		s.fail(cmd.ID, perr)
		return
	}
	if !binary && len(payload) == 0 {
		s.reply(cmd.ID, nil, protocol.Errorf(protocol.CodeBadRequest, `publish needs "data" (or a binary frame)`))
		return
	}
	pub := &Publication{Channel: cmd.Channel, Data: bytes.Clone(payload), Binary: binary, Origin: c.id, Key: cmd.Key}
	if n.cfg.Hooks.Publish != nil && hookOn(n.cfg.Hooks.PublishNamespaces, pub.Channel) {
		// The hook waits for the backend: the publishes read before this
		// one are not held back with it.
		s.flushPubs()
	}
	if perr := n.publishHook(c, pub, true); perr != nil {
		s.fail(cmd.ID, perr)
		return
	}
	n.metrics.pubClient.Add(1)
	opts := ns.publishOptions(cmd.IdempotencyKey, n.cfg.IdempotencyWindow)
	if n.batcher != nil {
		if s.batch == nil {
			s.batch = new(pubBatch)
		}
		p := &s.batch.pend
		p.ids = append(p.ids, cmd.ID)
		p.pubs = append(p.pubs, pub)
		p.opts = append(p.opts, opts)
		p.events = append(p.events, ns.PublishEvents)
		if len(p.pubs) == maxPublishBatch {
			s.flushPubs()
		}
		return
	}
	ctx, cancel := n.opCtx()
	defer cancel()
	res, err := n.publish(ctx, pub, opts)
	s.published(cmd.ID, pub, ns.PublishEvents, res, err)
}

// readDone implements session: the publishes of this read go to the broker.
func (s *v1Session) readDone() { s.flushPubs() }

// flushPubs hands the batched publishes to the broker in one call and
// replies to each. Publishes are batched only with a broker that is a
// BatchPublisher, and only while the reader handles what one read from the
// socket completed: the batch goes before any other command takes effect,
// before any other reply, and before the reader waits for more (readDone),
// so a client sees no difference but the time saved, and a client that
// waits for each reply sends batches of one.
func (s *v1Session) flushPubs() {
	b := s.batch
	if b == nil || len(b.pend.pubs) == 0 {
		return
	}
	p := &b.pend
	k := len(p.pubs)
	n := s.c.node
	p.res = slices.Grow(p.res[:0], k)[:k]
	clear(p.res)
	p.errs = slices.Grow(p.errs[:0], k)[:k]
	ctx, cancel := n.opCtx()
	n.publishBatch(ctx, p.pubs, p.opts, p.res, p.errs)
	cancel()
	ids, pubs, events, res, errs := p.ids, p.pubs, p.events, p.res, p.errs
	// Emptied before the replies, which flush first: this batch is done.
	p.ids, p.pubs, p.opts, p.events = p.ids[:0], p.pubs[:0], p.opts[:0], p.events[:0]
	// The replies go out together, in one write: nothing between them
	// waits (published only queues, and webhook events are appended to
	// the outbox).
	b.holding = true
	for i := range k {
		s.published(ids[i], pubs[i], events[i], res[i], errs[i])
	}
	b.holding = false
	b.held.flush()
	clear(pubs[:k])
	clear(p.opts[:k])
	clear(errs)
}

// published replies to the publish command id of pub, whose broker
// publish gave res or err, and sends its webhook event where its namespace
// (events) asks for one.
func (s *v1Session) published(id uint64, pub *Publication, events bool, res PublishResult, err error) {
	n := s.c.node
	if err != nil {
		n.log.Warn("publish failed", "channel", pub.Channel, "err", err)
		s.fail(id, err)
		return
	}
	if events && n.events != nil && !res.Duplicate {
		pub.Offset = res.Offset
		n.events.published(s.c, pub)
	}
	if res.Offset == 0 && !res.Duplicate {
		s.reply(id, nil, nil)
		return
	}
	s.reply(id, protocol.PublishResult{Offset: res.Offset, Epoch: res.Epoch, Duplicate: res.Duplicate}, nil)
}

func (s *v1Session) history(cmd protocol.Command) {
	c, n := s.c, s.c.node
	opts := HistoryOptions{Limit: -1, Reverse: cmd.Reverse}
	if cmd.Limit != nil {
		if *cmd.Limit < 0 {
			s.reply(cmd.ID, nil, protocol.Errorf(protocol.CodeBadRequest, `"limit" must be 0 or more`))
			return
		}
		opts.Limit = *cmd.Limit
	}
	if cmd.Since != nil {
		opts.Since = &StreamPosition{Offset: cmd.Since.Offset, Epoch: cmd.Since.Epoch}
	}
	if err := n.permitOn(c, cmd.Channel, func(ns *Namespace) Permission { return ns.AllowHistory }); err != nil {
		s.fail(cmd.ID, err)
		return
	}
	ctx, cancel := n.opCtx()
	defer cancel()
	h, err := n.History(ctx, cmd.Channel, opts)
	if err != nil {
		s.fail(cmd.ID, err)
		return
	}
	s.reply(cmd.ID, json.RawMessage(protocol.AppendHistoryResult(nil, h.Wire())), nil)
}

func (s *v1Session) presence(cmd protocol.Command) {
	c, n := s.c, s.c.node
	if err := n.permitOn(c, cmd.Channel, func(ns *Namespace) Permission { return ns.AllowPresence }); err != nil {
		s.fail(cmd.ID, err)
		return
	}
	ctx, cancel := n.opCtx()
	defer cancel()
	if cmd.Cmd == protocol.CmdPresenceStats {
		st, err := n.PresenceStats(ctx, cmd.Channel)
		if err != nil {
			s.fail(cmd.ID, err)
			return
		}
		s.reply(cmd.ID, protocol.PresenceStatsResult{Clients: st.Clients, Users: st.Users}, nil)
		return
	}
	m, err := n.Presence(ctx, cmd.Channel)
	if err != nil {
		s.fail(cmd.ID, err)
		return
	}
	out := protocol.PresenceResult{Clients: make(map[string]protocol.ClientInfo, len(m))}
	for id, p := range m {
		out.Clients[id] = protocol.ClientInfo{Client: p.Client, User: p.User, Info: p.Info}
	}
	s.reply(cmd.ID, out, nil)
}

// connect authenticates the connection (connect) or renews its token
// (refresh). A token that fails verification closes the connection with
// CloseUnauthorized after the error reply.
func (s *v1Session) connect(cmd protocol.Command) {
	c, n := s.c, s.c.node
	refresh := cmd.Cmd == protocol.CmdRefresh
	switch {
	case refresh && n.cfg.Tokens == nil:
		s.reply(cmd.ID, nil, protocol.Errorf(protocol.CodeBadRequest, "this server checks no tokens"))
		return
	case refresh && cmd.Token == "":
		s.reply(cmd.ID, nil, protocol.Errorf(protocol.CodeBadRequest, `refresh needs "token"`))
		return
	case !refresh && s.connected:
		s.reply(cmd.ID, nil, protocol.Errorf(protocol.CodeBadRequest, "already connected; use refresh to renew the token"))
		return
	}
	if cmd.Token != "" && n.cfg.Tokens != nil {
		ctx, cancel := n.opCtx()
		defer cancel()
		claims, err := n.verifyToken(ctx, cmd.Token, tokenCheck{
			use: forConnection, user: c.user, anyUser: !refresh && c.user == "", via: cmd.Cmd, client: c.id,
		})
		if err != nil {
			s.reply(cmd.ID, nil, protocol.Errorf(protocol.CodeUnauthorized, "%s", tokenRefusal(err)))
			c.close(CloseUnauthorized, "invalid token")
			return
		}
		if !n.moveUser(c.user, claims.UserID) {
			n.metrics.limitHits.Add(1)
			s.reply(cmd.ID, nil, protocol.Errorf(protocol.CodeLimitExceeded, "too many connections for this user"))
			c.close(ClosePolicyViolation, "too many connections for this user")
			return
		}
		old := c.user
		n.hub.setUser(c, claims.UserID)
		if c.admitted.Load() {
			n.events.userMoved(old, claims.UserID)
		}
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
		if !s.exp.hooked() { // the backend's expiry stays the backend's
			s.exp.set(c, claims.ExpiresAt, false)
		}
	}
	var hooked *ConnectReply
	if !refresh && n.cfg.Hooks.Connect != nil {
		var ok bool
		if hooked, ok = s.connectHook(cmd); !ok {
			return
		}
		s.header = nil // not needed any more
	}
	s.connected = true
	if !s.authed.Load() {
		s.authed.Store(true)
		s.mu.Lock()
		if s.authTimer != nil {
			s.authTimer.Stop()
			s.authTimer = nil
		}
		s.mu.Unlock()
	}
	res := protocol.ConnectResult{Client: c.id, User: c.user}
	if unix, ok := s.exp.at(); ok {
		res.Expires = unix
	}
	if hooked != nil {
		res.Data = hooked.Data
	}
	// In before the reply goes: a client that acts on it (its backend
	// subscribing it server-side) must find the connection in.
	first := n.admitQuietly(c)
	s.reply(cmd.ID, res, nil)
	if !refresh && (hooked != nil && len(hooked.Channels) > 0 || len(cmd.Subs) > 0) {
		s.connectSubs(hooked, cmd.Subs)
	}
	if first {
		// The user counts as online (user.online) once the connection
		// has the channels its connect gave it: a backend that answers
		// user.online with a publication on one of them reaches it.
		n.countUser(c)
	}
}
