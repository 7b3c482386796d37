package herald

import (
	"bytes"
	"context"
	"encoding/json"
	"sync"
	"sync/atomic"
	"time"
	"unicode/utf8"

	"github.com/heraldhq/herald/internal/wsframe"
	"github.com/heraldhq/herald/protocol"
)

// subEntry is one connection's subscription to one channel, the value of
// the hub's channel -> subscribers map.
type subEntry struct {
	// rec is set while a subscription to a channel with history is being
	// set up: what the fan-out delivers meanwhile is buffered here instead of
	// queued, so that the subscriber gets its reply, then the history it
	// missed, then the live stream — with no gap and no duplicate at the seam.
	rec atomic.Pointer[recoverBuf]
	// after is the last offset the subscriber got from history. A
	// networked broker can deliver a publication after a history read has
	// already returned it (Redis publishes inside the script that stores
	// it, but the subscriber connection receives it later), so the live
	// path drops offsets up to after. Written before rec is cleared, read
	// only after rec is seen nil: the atomic orders the two.
	after uint64
	// presence and joinLeave are the namespace's settings when the
	// subscription was made: it leaves as it joined, whatever SetNamespaces
	// did meanwhile.
	presence, joinLeave bool
	// info is the subscriber's info in this channel, from the subscribe
	// hook; nil means the connection's.
	info json.RawMessage
	// chEvents and memberEvents: the namespace sent channel and member
	// webhook events when the subscription was made.
	chEvents, memberEvents bool
	user                   string // the member's user, for memberDown
	// asUser, when not "", is the user the subscriber is in this channel's
	// presence instead of its connection's (a Pusher presence user_id).
	asUser string
	// members, for a subscription made as a user (Pusher presence), is
	// what the subscriber was told of the channel's members: the fan-out
	// sends it only the joins and leaves that change that.
	members *pusherMembers
	// delta: the subscriber asked for deltas and its namespace sends them
	// (fixed at creation). deltaLast is the offset of the last publication
	// the fan-out queued to it, 0 before the first live one: a delta goes
	// only on that base (delta.go). Written by the fan-out only.
	delta     bool
	deltaLast atomic.Uint64
	// overflowed is set when an overflow policy dropped or replaced a
	// queued publication of this subscription (overflow.go): the frame
	// last queued may never reach the client. Delta delivery reads and
	// clears it to send the next publication full.
	overflowed atomic.Bool
}

type recoverBuf struct {
	mu   sync.Mutex
	pubs []*Publication
}

// buffer adds pub to e's recovery buffer and reports true, or reports false
// if the subscription has gone live (then the caller queues pub itself).
func (e *subEntry) buffer(rb *recoverBuf, pub *Publication) bool {
	rb.mu.Lock()
	defer rb.mu.Unlock()
	if e.rec.Load() != rb {
		return false
	}
	rb.pubs = append(rb.pubs, pub)
	return true
}

// channelNamespace validates a channel name and returns its namespace.
func (n *Node) channelNamespace(channel string) (*Namespace, *Error) {
	if !protocol.ValidChannel(channel) {
		return nil, badChannel(channel)
	}
	nss := n.ns.load()
	ns := nss.lookup(channel)
	if ns == nil {
		return nil, errorf(protocol.CodeBadChannel, "channel %q is in no configured namespace", channel)
	}
	if ns == nss.other {
		if name, first, last := nss.firstFallback(channel); first {
			// A name a letter or two from a configured one is likely
			// its typo, with "*"'s permissions instead of its own: that
			// is worth a warning. Others ("lobby" beside "chat") are
			// what "*" is for.
			if like := nss.near(name); like != "" {
				n.log.Warn(`a channel's namespace is not configured, so "*" configures it: if it is a typo of the configured one, the channel has "*"'s permissions, not its own`,
					"namespace", name, "configured", like, "channel", channel)
			} else {
				n.log.Debug(`a channel's namespace is not configured: "*" configures it`, "namespace", name, "channel", channel)
			}
			if last {
				n.log.Info(`namespaces falling to "*": no more are logged`, "logged", maxFallbackWarnings)
			}
		}
	}
	return ns, nil
}

func badChannel(ch string) *Error {
	if len(ch) > protocol.MaxChannelLen {
		return errorf(protocol.CodeBadChannel, "channel name longer than %d bytes", protocol.MaxChannelLen)
	}
	return errorf(protocol.CodeBadChannel, "invalid channel name %q: use 1-255 of A-Z a-z 0-9 _ - . : @ # , = / !", ch)
}

// subscribeConn subscribes c to channel and returns the reply's result and
// a finish function that the caller must call right after queueing the
// reply: it queues the recovered publications, then what arrived meanwhile,
// and makes the subscription live. since asks for recovery.
//
// subToken, when not empty, is a subscription token: verified, it grants
// the channel to c (see PermGranted). After Herald's own checks, the
// subscribe hook (if on for the channel) is asked, with data. Reader
// goroutine of c only (it reads c.grants).
func (n *Node) subscribeConn(c *conn, channel string, since *protocol.Position, subToken string, data json.RawMessage, delta string) (*protocol.SubscribeResult, func(), *Error) {
	ns, perr := n.channelNamespace(channel)
	if perr != nil {
		return nil, nil, perr
	}
	if subToken != "" {
		if perr := n.grantSubscription(c, channel, subToken); perr != nil {
			return nil, nil, perr
		}
	}
	if perr := n.permit(c.user, c.grants, channel, ns.AllowSubscribe); perr != nil {
		return nil, nil, perr
	}
	if subscribed(c, channel) {
		return nil, nil, errorf(protocol.CodeAlreadySub, "already subscribed to %q", channel)
	}
	var info json.RawMessage
	if hook := n.cfg.Hooks.Subscribe; hook != nil && hookOn(n.cfg.Hooks.SubscribeNamespaces, channel) {
		var reply *SubscribeReply
		ev := &SubscribeEvent{Client: c.clientInfo(), Channel: channel, Data: data}
		if v, perr := n.callHook(hookSubscribe, c.id, func(ctx context.Context) (err error) {
			reply, err = hook(ctx, ev)
			return err
		}); v != hookOK {
			return nil, nil, perr
		}
		if reply != nil && reply.Info != nil {
			if !json.Valid(reply.Info) {
				n.log.Warn("subscribe hook answered info that is not JSON", "channel", channel)
				return nil, nil, errorf(protocol.CodeUnavailable, "subscribe hook unavailable")
			}
			info = reply.Info
		}
	}
	return n.subscribeChecked(c, ns, channel, since, info, delta)
}

// subscribed reports whether c holds a subscription to channel.
func subscribed(c *conn, channel string) bool {
	c.mu.Lock()
	defer c.mu.Unlock()
	_, ok := c.channels[channel]
	return ok
}

// subscribeChecked subscribes c to channel of namespace ns, past every
// check of who may: as subscribeConn, for a subscription allowed by the
// client's rights or made by the server. info, when not nil, is c's info
// in this channel's presence. delta is the delta type the client asked
// for ("" for none): see wantDelta.
func (n *Node) subscribeChecked(c *conn, ns *Namespace, channel string, since *protocol.Position, info json.RawMessage, delta string) (*protocol.SubscribeResult, func(), *Error) {
	return n.subscribeCheckedAs(c, ns, channel, since, info, "", "", delta)
}

// subscribeCheckedAs is subscribeChecked with the user c is in this
// channel's presence, when not "" (a Pusher presence channel's user_id):
// else c's own. skipOrigin, when not "", is an origin whose publications
// the recovery (since) leaves out: a Pusher client's previous socket id,
// whose own client events and the triggers that excluded it that
// connection was never sent.
func (n *Node) subscribeCheckedAs(c *conn, ns *Namespace, channel string, since *protocol.Position, info json.RawMessage, user, skipOrigin, delta string) (*protocol.SubscribeResult, func(), *Error) {
	c.mu.Lock()
	_, dup := c.channels[channel]
	count := len(c.channels)
	c.mu.Unlock()
	if dup {
		return nil, nil, errorf(protocol.CodeAlreadySub, "already subscribed to %q", channel)
	}
	if maxChannels := n.limits.Load().MaxChannelsPerConnection; !under(count, maxChannels) {
		return nil, nil, errorf(protocol.CodeLimitExceeded, "a connection may hold at most %d channels", maxChannels)
	}

	e := &subEntry{presence: ns.Presence, joinLeave: ns.JoinLeave, info: info, chEvents: ns.ChannelEvents && n.events != nil, asUser: user}
	if user != "" {
		e.members = &pusherMembers{}
	}
	e.memberEvents = e.presence && ns.MemberEvents && n.events != nil
	e.delta = wantDelta(c, ns, delta)
	var rb *recoverBuf
	if ns.HistorySize > 0 {
		rb = &recoverBuf{}
		e.rec.Store(rb)
	}
	if perr := n.addSub(c, channel, e, ns, rb != nil); perr != nil {
		return nil, nil, perr
	}
	res := &protocol.SubscribeResult{Delta: e.delta}
	finish := func() {}
	if rb != nil {
		hopts := HistoryOptions{Limit: 0}
		if since != nil {
			hopts = HistoryOptions{Since: &StreamPosition{Offset: since.Offset, Epoch: since.Epoch}, Limit: -1}
		}
		ctx, cancel := n.opCtx()
		defer cancel()
		h, err := n.broker.History(ctx, channel, hopts)
		if err != nil {
			n.removeSubscription(c, channel)
			n.log.Warn("history read failed", "channel", channel, "err", err)
			return nil, nil, errorf(protocol.CodeUnavailable, "subscribe failed: history unavailable")
		}
		res.Offset, res.Epoch = h.Position.Offset, h.Position.Epoch
		n.streamOf(channel).establish(h.Position)
		var recovered []*Publication
		last := h.Position.Offset
		if since != nil {
			ok, reason := recoverable(since, h)
			res.Recovered = &ok
			res.Reason = reason
			if ok {
				recovered = h.Publications
			}
		}
		finish = func() {
			for _, p := range recovered {
				if skipOrigin == "" || p.Origin != skipOrigin {
					c.enqueuePub(p, n.encodePub(p, c.form), n.subMeta(p, e), nil)
				}
			}
			rb.mu.Lock()
			for _, p := range rb.pubs {
				if p.Offset != 0 && p.Offset <= last { // presence events carry no offset
					continue
				}
				if c.pusher && pusherSkips(c, p) {
					continue // as the live fan-out does
				}
				f := n.encodePub(p, c.form)
				if e.members != nil && p.Kind != KindPublication && !e.members.admit(p, f) {
					continue
				}
				c.enqueuePub(p, f, n.subMeta(p, e), nil)
				if e.delta && p.Kind == KindPublication {
					// Sent full, it is a base: the next live one may be its
					// delta. (The fan-out, which else writes deltaLast,
					// buffers until rec is cleared below.)
					e.deltaLast.Store(p.Offset)
				}
			}
			rb.pubs = nil
			e.after = last
			e.rec.Store(nil)
			rb.mu.Unlock()
		}
	} else if since != nil {
		f := false
		res.Recovered, res.Reason = &f, protocol.ReasonNoHistory
	}
	if e.presence {
		c.mu.Lock()
		p := ClientPresence{Client: c.id, User: c.user, Info: c.info}
		c.mu.Unlock()
		if e.info != nil {
			p.Info = e.info
		}
		if e.asUser != "" {
			p.User = e.asUser
		}
		if e.memberEvents {
			e.user = p.User
			n.events.memberUp(channel, memberOf(e, p))
		}
		ctx, cancel := n.opCtx()
		defer cancel()
		if err := n.presence.AddPresence(ctx, channel, p); err != nil {
			n.log.Warn("presence add failed", "channel", channel, "err", err)
		}
		c.mu.Lock()
		_, still := c.channels[channel]
		c.mu.Unlock()
		if !still {
			// Unsubscribed meanwhile (unsubscribe_user), and its presence
			// removed before this add: take it out again, or it would stay.
			if err := n.presence.RemovePresence(ctx, channel, c.id); err != nil {
				n.log.Warn("presence remove failed", "channel", channel, "err", err)
			}
		}
		if e.joinLeave && (e.asUser == "" || !n.userPresent(ctx, channel, p.User, c.id)) {
			join := finish
			finish = func() {
				join()
				n.publishEvent(channel, KindJoin, &p)
			}
		}
	}
	return res, finish, nil
}

// memberOf is the member p of a subscription, for the member webhook
// events: per connection, or for a subscription made as a user (Pusher
// presence) per user — no client, so that the user's connections, on
// every node, are one member, as Pusher's member_added and
// member_removed are.
func memberOf(e *subEntry, p ClientPresence) ClientPresence {
	if e.asUser != "" {
		p.Client = ""
	}
	return p
}

// userPresent reports whether user has a client other than client in
// channel's presence, cluster-wide. A subscription made as a user
// (subscribeCheckedAs: Pusher presence) joins and leaves per user, as
// Pusher's member_added and member_removed do: a user's second tab is no
// new member, and closing it does not remove the user. Two tabs of one
// user joining on two nodes at the same moment may both be told joined
// (and both leaving, both left): each reads the set before the other's
// add. A failed read counts as absent.
func (n *Node) userPresent(ctx context.Context, channel, user, client string) bool {
	m, err := n.presence.Presence(ctx, channel)
	if err != nil {
		n.log.Warn("presence read failed", "channel", channel, "err", err)
		return false
	}
	for id, p := range m {
		if id != client && p.User == user {
			return true
		}
	}
	return false
}

// grantSubscription verifies a subscription token for channel and, if it is
// valid, for this channel and for c's user, grants the channel to c.
func (n *Node) grantSubscription(c *conn, channel, token string) *Error {
	if n.cfg.Tokens == nil {
		return errorf(protocol.CodeBadRequest, "this server checks no tokens")
	}
	ctx, cancel := n.opCtx()
	defer cancel()
	_, err := n.verifyToken(ctx, token, tokenCheck{use: forSubscription, user: c.user, channel: channel, via: "subscribe", client: c.id})
	if err != nil {
		return errorf(protocol.CodePermission, "subscription token refused: %s", tokenRefusal(err))
	}
	if c.grants == nil {
		c.grants = make(map[string]struct{})
	}
	c.grants[channel] = struct{}{}
	return nil
}

// permitOn checks c's permission on a channel for the namespace setting
// that perm selects.
func (n *Node) permitOn(c *conn, channel string, perm func(*Namespace) Permission) *Error {
	ns, perr := n.channelNamespace(channel)
	if perr != nil {
		return perr
	}
	return n.permit(c.user, c.grants, channel, perm(ns))
}

// recoverable decides whether a client at since can be given every
// publication it missed from h, a history read with Since.
func recoverable(since *protocol.Position, h HistoryResult) (bool, string) {
	pos := h.Position
	switch {
	case since.Epoch != pos.Epoch || since.Offset > pos.Offset:
		return false, protocol.ReasonEpochChanged
	case since.Offset == pos.Offset:
		return true, ""
	case len(h.Publications) == 0 || h.Publications[0].Offset != since.Offset+1:
		return false, protocol.ReasonTooOld
	}
	return true, ""
}

// addSub registers the subscription in the hub, telling the broker when the
// channel gets its first local subscriber. For a channel with history it
// starts tracking the channel's continuity first (see stream), so that
// nothing the broker delivers goes unrecorded.
func (n *Node) addSub(c *conn, channel string, e *subEntry, ns *Namespace, history bool) *Error {
	l := &n.subLocks[n.hub.index(channel)%len(n.subLocks)]
	l.Lock()
	defer l.Unlock()
	if e.delta {
		// Before the hub has e: a publication fanned out to it from then
		// on is the channel's previous one for the next, its delta base.
		n.trackDelta(channel, ns)
	}
	if n.hub.addSub(channel, c, e) {
		if e.chEvents {
			n.events.channelUp(channel)
		}
		if history {
			n.streams.Store(channel, &stream{})
		}
		ctx, cancel := n.opCtx()
		defer cancel()
		if err := n.broker.Subscribe(ctx, channel); err != nil {
			n.streams.Delete(channel)
			n.hub.removeSub(channel, c)
			n.untrackDelta(channel) // e was its first subscriber
			if e.chEvents {
				n.events.channelDown(channel)
			}
			n.log.Warn("broker subscribe failed", "channel", channel, "err", err)
			return errorf(protocol.CodeUnavailable, "subscribe failed: broker unavailable")
		}
	}
	c.mu.Lock()
	if c.channels == nil {
		c.channels = make(map[string]struct{})
	}
	c.channels[channel] = struct{}{}
	c.mu.Unlock()
	return nil
}

func (n *Node) unsubscribeConn(c *conn, channel string) *Error {
	if !protocol.ValidChannel(channel) {
		return badChannel(channel)
	}
	if !n.removeSubscription(c, channel) {
		return errorf(protocol.CodeNotSubscribed, "not subscribed to %q", channel)
	}
	return nil
}

// removeSubscription ends c's subscription to channel: hub, broker, presence
// and leave event. It reports false if c was not subscribed.
func (n *Node) removeSubscription(c *conn, channel string) bool {
	c.mu.Lock()
	_, ok := c.channels[channel]
	delete(c.channels, channel)
	c.mu.Unlock()
	if !ok {
		return false
	}
	l := &n.subLocks[n.hub.index(channel)%len(n.subLocks)]
	l.Lock()
	e, last := n.hub.removeSub(channel, c)
	if last && n.events != nil {
		n.events.channelDown(channel) // changes nothing unless it was tracked
	}
	if last {
		n.streams.Delete(channel)
		n.untrackDelta(channel)
		ctx, cancel := n.opCtx()
		defer cancel()
		if err := n.broker.Unsubscribe(ctx, channel); err != nil && n.ctx.Err() == nil {
			n.log.Warn("broker unsubscribe failed", "channel", channel, "err", err)
		}
	}
	l.Unlock()
	// The subscription leaves as it joined (its namespace may have changed).
	if e != nil && e.memberEvents {
		n.events.memberDown(channel, memberOf(e, ClientPresence{Client: c.id, User: e.user}))
	}
	if e != nil && e.presence {
		ctx, cancel := n.opCtx()
		defer cancel()
		if err := n.presence.RemovePresence(ctx, channel, c.id); err != nil {
			n.log.Warn("presence remove failed", "channel", channel, "err", err)
		}
		if e.joinLeave {
			c.mu.Lock() // may run off c's reader goroutine (unsubscribe_user)
			p := &ClientPresence{Client: c.id, User: c.user, Info: c.info}
			c.mu.Unlock()
			if e.info != nil {
				p.Info = e.info
			}
			if e.asUser != "" {
				p.User = e.asUser
				if n.userPresent(ctx, channel, p.User, c.id) {
					return true // the user is still in: no leave
				}
			}
			n.publishEvent(channel, KindLeave, p)
		}
	}
	return true
}

// unregister removes c from every registry, and tells the notification
// hooks. Reader goroutine of c only; once it holds subMu, the connection
// is closing, so no server-side subscription is added after it.
func (n *Node) unregister(c *conn) {
	c.subMu.Lock()
	defer c.subMu.Unlock()
	c.mu.Lock()
	chans := make([]string, 0, len(c.channels))
	for ch := range c.channels {
		chans = append(chans, ch)
	}
	c.mu.Unlock()
	for _, ch := range chans {
		if n.removeSubscription(c, ch) {
			n.unsubscribed(c, ch, "disconnect")
		}
	}
	n.hub.removeConn(c)
	if c.admitted.Load() {
		n.events.userMoved(c.user, "")
	}
	n.disconnected(c)
	n.log.Debug("disconnected", "client", c.id, "user", c.user)
}

// publishEvent publishes a join or leave event. Events go through the
// broker like publications, so they keep their place in the channel's order
// on every node, but are not kept in history.
func (n *Node) publishEvent(channel string, kind PubKind, p *ClientPresence) {
	pub := &Publication{Channel: channel, Kind: kind, Presence: p}
	ctx, cancel := n.opCtx()
	defer cancel()
	if _, err := n.broker.Publish(ctx, pub, PublishOptions{}); err != nil && n.ctx.Err() == nil {
		n.log.Warn("presence event publish failed", "channel", channel, "err", err)
	}
}

// PublishOption modifies one Publish, Send, SendToUser or Broadcast call.
type PublishOption func(*publishSettings)

type publishSettings struct {
	binary  bool
	idemKey string
	key     string
}

// WithBinary marks the payload as binary: it travels in binary frames.
func WithBinary() PublishOption { return func(s *publishSettings) { s.binary = true } }

// WithIdempotencyKey makes Publish happen at most once per channel and key
// within Config.IdempotencyWindow; a repeat returns the first result with
// Duplicate set. Use it to retry a publish whose outcome is unknown (an
// error of code unavailable may still have published). Ignored by Send,
// SendToUser and Broadcast.
func WithIdempotencyKey(key string) PublishOption {
	return func(s *publishSettings) { s.idemKey = key }
}

// WithKey sets the publication's conflation key (Publication.Key): in a
// namespace with OverflowConflate, a slow subscriber keeps only the newest
// publication of each key of the channel (one key per instrument, per
// player). Ignored by Send, SendToUser and Broadcast.
func WithKey(key string) PublishOption { return func(s *publishSettings) { s.key = key } }

// Binary is WithBinary.
//
// Deprecated: use WithBinary, named like every option of the Go packages.
func Binary() PublishOption { return WithBinary() }

// IdempotencyKey is WithIdempotencyKey.
//
// Deprecated: use WithIdempotencyKey, named like the Go client's option.
func IdempotencyKey(key string) PublishOption { return WithIdempotencyKey(key) }

func settings(opts []PublishOption) publishSettings {
	var s publishSettings
	for _, o := range opts {
		o(&s)
	}
	return s
}

// Publish publishes data to channel on every node. Text data (the default)
// should be a JSON value: protocol clients receive it as the push's "data";
// text that is not valid JSON is delivered to them as a JSON string. Raw-mode
// clients receive the bytes verbatim. It returns once the broker has
// accepted the publication (on the in-memory broker: once it is in every
// local subscriber's queue) with its position in the channel's history, when
// the channel's namespace keeps history.
func (n *Node) Publish(ctx context.Context, channel string, data []byte, opts ...PublishOption) (PublishResult, error) {
	ns, perr := n.channelNamespace(channel)
	if perr != nil {
		return PublishResult{}, perr
	}
	s := settings(opts)
	if !s.binary && !utf8.Valid(data) {
		return PublishResult{}, errorf(protocol.CodeBadRequest, "text data is not valid UTF-8; publish bytes with WithBinary()")
	}
	pub := &Publication{Channel: channel, Data: bytes.Clone(data), Binary: s.binary, Key: s.key}
	n.metrics.pubServer.Add(1)
	return n.publish(ctx, pub, ns.publishOptions(s.idemKey, n.cfg.IdempotencyWindow))
}

// publish hands pub to the broker. A failure is an *Error of code
// unavailable: the broker may have published it all the same (PROTOCOL.md,
// "What a failed publish means").
func (n *Node) publish(ctx context.Context, pub *Publication, opts PublishOptions) (PublishResult, error) {
	if n.ctx.Err() != nil {
		return PublishResult{}, errNodeClosed
	}
	res, err := n.broker.Publish(ctx, pub, opts)
	if err != nil {
		return res, unavailable("publish failed", err)
	}
	return res, nil
}

// publishBatch publishes pubs[i] with opts[i] and stores the outcomes in
// res[i] and errs[i], as publish would one by one: in one call to a broker
// that is a BatchPublisher, else one Publish each, in turn.
func (n *Node) publishBatch(ctx context.Context, pubs []*Publication, opts []PublishOptions, res []PublishResult, errs []error) {
	if n.batcher == nil || len(pubs) == 1 || n.ctx.Err() != nil {
		for i, pub := range pubs {
			res[i], errs[i] = n.publish(ctx, pub, opts[i])
		}
		return
	}
	n.metrics.pubBatches.Add(1)
	n.batcher.PublishBatch(ctx, pubs, opts, res, errs)
	for i, err := range errs {
		if err != nil {
			errs[i] = unavailable("publish failed", err)
		}
	}
}

// HandlePublication implements BrokerHandler: it fans pub out to the local
// subscribers of its channel. Each wire form is encoded at most once and the
// same bytes are queued to every subscriber that reads that form; nothing is
// allocated per subscriber, and nothing blocks (a full queue cuts that
// subscriber alone). A subscriber that negotiated deltas gets the
// publication's delta frame instead, also made at most once per form, when
// the previous publication queued to it is the delta's base (delta.go).
func (n *Node) HandlePublication(pub *Publication) {
	start := time.Now()
	defer n.metrics.observeBroadcast(start)
	if pub.Offset != 0 {
		// Closed first, subscribers that must resubscribe are skipped by
		// the fan-out below: they never see this one as if nothing were
		// missing.
		n.checkContinuity(pub)
	}
	var frames [numForms][]byte
	dx := n.deltaBegin(pub)
	defer dx.end()
	m := n.overflowMeta(pub)
	var fl inlineFlush // the few subscribers this goroutine writes itself
	n.hub.forEachSub(pub.Channel, func(c *conn, e *subEntry) {
		if rb := e.rec.Load(); rb != nil && e.buffer(rb, pub) {
			return
		}
		if pub.Offset != 0 && pub.Offset <= e.after {
			return // already sent from history
		}
		if c.raw && ((!c.echo && pub.Origin != "" && c.id == pub.Origin) || pub.Kind != KindPublication) {
			return // raw clients get their own frames only with echo, and no presence events
		}
		if c.pusher && pusherSkips(c, pub) {
			return
		}
		f := frames[c.form]
		if f == nil {
			f = n.encodePub(pub, c.form)
			frames[c.form] = f
		}
		if e.members != nil && pub.Kind != KindPublication && !e.members.admit(pub, f) {
			return
		}
		if m.pub != nil {
			m.sub = e
		}
		if e.delta && n.sendDelta(&dx, c, e, f, m, &fl) {
			return
		}
		c.enqueuePub(pub, f, m, &fl)
	})
	fl.flush()
}

// encodePub builds the frame of a publication or presence event in one wire form.
func (n *Node) encodePub(pub *Publication, form uint8) []byte {
	if form >= formPusher {
		return n.buildFrame(wsframe.OpText, appendPusherPub(nil, pub), form&1 == 1)
	}
	if pub.Kind == KindPublication {
		return n.encode(protocol.PushPub, pub.Channel, pub.Offset, pub.Data, pub.Binary, form)
	}
	kind := protocol.PushJoin
	if pub.Kind == KindLeave {
		kind = protocol.PushLeave
	}
	info, _ := json.Marshal(protocol.ClientInfo{Client: pub.Presence.Client, User: pub.Presence.User, Info: pub.Presence.Info})
	if form == formSSE {
		return appendSSEEvent(nil, kind, protocol.AppendInfoPush(nil, kind, pub.Channel, info))
	}
	return n.buildFrame(wsframe.OpText, protocol.AppendInfoPush(nil, kind, pub.Channel, info), form&1 == 1)
}

// encode builds the frame of a push in one wire form.
func (n *Node) encode(kind, channel string, offset uint64, data []byte, binary bool, form uint8) []byte {
	if form == formSSE {
		return sseEncode(kind, channel, offset, data, binary)
	}
	if form >= formPusher {
		if channel != "" {
			channel = pusherNameOf(channel)
		}
		return n.buildFrame(wsframe.OpText, appendPusherData(nil, channel, offset, data, binary), form&1 == 1)
	}
	op := byte(wsframe.OpText)
	if binary {
		op = wsframe.OpBinary
	}
	payload := data
	if form&formRaw == 0 {
		switch {
		case binary:
			payload = protocol.AppendBinaryPush(nil, kind, channel, offset, data)
		case json.Valid(data):
			payload = protocol.AppendTextPush(nil, kind, channel, offset, data)
		default:
			s, _ := json.Marshal(string(data))
			payload = protocol.AppendTextPush(nil, kind, channel, offset, s)
		}
	}
	return n.buildFrame(op, payload, form&1 == 1)
}

// History reads a channel's history; see HistoryOptions. It fails with
// ErrNotEnabled when the channel's namespace keeps no history.
func (n *Node) History(ctx context.Context, channel string, opts HistoryOptions) (HistoryResult, error) {
	ns, perr := n.channelNamespace(channel)
	if perr != nil {
		return HistoryResult{}, perr
	}
	if ns.HistorySize == 0 {
		return HistoryResult{}, errorf(protocol.CodeNotEnabled, "no history in channel %q", channel)
	}
	res, err := n.broker.History(ctx, channel, opts)
	if err != nil {
		return res, unavailable("history read failed", err)
	}
	return res, nil
}

// Wire is the history read's form in a history reply (shared by the
// protocol's history command and the HTTP API): a text publication that
// is not JSON (from a raw client) becomes a JSON string.
func (h HistoryResult) Wire() protocol.HistoryResult {
	out := protocol.HistoryResult{Publications: make([]protocol.HistoryPublication, len(h.Publications)), Offset: h.Position.Offset, Epoch: h.Position.Epoch}
	for i, p := range h.Publications {
		hp := protocol.HistoryPublication{Offset: p.Offset}
		switch {
		case p.Binary:
			hp.Binary, hp.IsBinary = p.Data, true
		case json.Valid(p.Data):
			hp.Data = p.Data
		default:
			hp.Data, _ = json.Marshal(string(p.Data))
		}
		out.Publications[i] = hp
	}
	return out
}

// Presence returns the clients present in a channel, by client id. It fails
// with ErrNotEnabled when the channel's namespace has no presence.
func (n *Node) Presence(ctx context.Context, channel string) (map[string]ClientPresence, error) {
	if err := n.presenceEnabled(channel); err != nil {
		return nil, err
	}
	m, err := n.presence.Presence(ctx, channel)
	if err != nil {
		return nil, unavailable("presence read failed", err)
	}
	return m, nil
}

// PresenceStats counts the clients and distinct users present in a channel.
func (n *Node) PresenceStats(ctx context.Context, channel string) (PresenceStats, error) {
	if err := n.presenceEnabled(channel); err != nil {
		return PresenceStats{}, err
	}
	st, err := n.presence.PresenceStats(ctx, channel)
	if err != nil {
		return PresenceStats{}, unavailable("presence read failed", err)
	}
	return st, nil
}

func (n *Node) presenceEnabled(channel string) error {
	ns, perr := n.channelNamespace(channel)
	if perr != nil {
		return perr
	}
	if !ns.Presence {
		return errorf(protocol.CodeNotEnabled, "no presence in channel %q", channel)
	}
	return nil
}
