package client

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"slices"
	"sync/atomic"
	"time"

	"github.com/heraldhq/herald/protocol"
)

// SubscribeOptions are a subscription's handlers. All are optional, and all
// are called on the client's dispatcher goroutine, one at a time, in the
// order of the events: a subscription's handlers never run concurrently,
// and its publications arrive in offset order.
type SubscribeOptions struct {
	// OnPublication receives the channel's publications.
	OnPublication func(Publication)
	// OnJoin and OnLeave receive the clients that subscribe to and leave the
	// channel, in a namespace with join/leave events (including this
	// client's own join).
	OnJoin  func(ClientInfo)
	OnLeave func(ClientInfo)
	// OnRecoveryFailed is called after a reconnect when the server could
	// not deliver every publication missed while disconnected: some may be
	// lost. reason is protocol.ReasonEpochChanged (history reset, e.g. a
	// server restart), ReasonTooOld (they left the history) or
	// ReasonNoHistory (the channel keeps none: after every reconnect). The
	// app should reload its state from its source of truth; publications
	// after the new Position follow. When recovery succeeds, nothing is
	// called: the missed publications simply arrive, in order, no gap, no
	// duplicate.
	OnRecoveryFailed func(reason string)
	// OnDropped is called when the server dropped publications of the
	// channel because this client read too slowly (a namespace with the
	// drop_oldest overflow policy), in their place in the order of the
	// publications: it says exactly which offsets were lost, to be read
	// from history if they matter. Without it they are skipped silently
	// (the client's position moves past them).
	OnDropped func(Dropped)
	// OnError is called when the server refuses to resubscribe after a
	// reconnect (say, the channel's namespace was removed): the
	// subscription has then ended, as after Unsubscribe. err wraps an
	// *Error. (A temporary refusal makes the client retry instead:
	// CodeRateLimited after a backoff, CodeUnavailable by reconnecting.)
	OnError func(err error)
	// OnUnsubscribed is called when the server ends the subscription (an
	// unsub push): code says why — protocol.UnsubServer, the server
	// application unsubscribed this client's user (the HTTP API's
	// unsubscribe_user, Node.UnsubscribeUser); protocol.UnsubNotRestored,
	// a server-side subscription the server did not make again after a
	// reconnect; later versions may add codes — and reason says it in
	// words. It is the subscription's last handler
	// call: the publications the server sent before ending it are delivered
	// first, and nothing after. The client never resubscribes the channel
	// by itself, on this connection or after a reconnect; a new Subscribe
	// may, if the app decides to. Not called if the app called Unsubscribe
	// first.
	OnUnsubscribed func(code, reason string)
	// Token is a subscription token, for channels that need one (see
	// PROTOCOL.md, Authentication). GetToken, when set, replaces it: it is
	// called before the subscribe and before every resubscribe after a
	// reconnect, so it can fetch a fresh one.
	Token    string
	GetToken func(ctx context.Context) (string, error)
	// Since, if set, makes the first subscribe recover from this position
	// (one saved by the app, or read from another client's
	// Subscription.Position): the publications after it arrive first, or
	// OnRecoveryFailed says they cannot.
	Since *Position
	// Delta asks for the channel's publications as deltas against the
	// previous one, where the channel's namespace sends them (the server's
	// Namespace.Delta): fewer bytes on the wire for a state that changes a
	// little at a time. The client applies them: OnPublication sees full
	// payloads either way. A delta whose base the client does not hold
	// makes it resubscribe that channel from its position (client/delta.go).
	Delta bool
}

type subState uint8

const (
	subSubscribing  subState = iota // the first subscribe is in flight (or waits to be retried)
	subActive                       // confirmed; resubscribed after each reconnect
	subClosing                      // unsubscribed, abandoned or failed: going away
	subUnsubscribed                 // ended by the server (unsub push): going away, OnUnsubscribed due
)

// Subscription is a client's subscription to one channel. It lives across
// reconnects until Unsubscribe, Close, or OnError; a server-side one
// (ServerSide) until Unsubscribe, Close, or the server ends it
// (OnUnsubscribed).
type Subscription struct {
	c       *Client
	channel string
	// server: made by the server (a subscribe push), not by Subscribe.
	server bool
	// opts is fixed at Subscribe for the client's own subscriptions. A
	// server-side one gets its handlers from OnServerSubscribe, on the
	// dispatcher, which alone reads them (see Client.handles).
	opts SubscribeOptions
	// closed is set once no handler of the subscription may start any more
	// (read by the dispatcher without the client's lock).
	closed atomic.Bool
	// gone is closed when the subscription leaves the client's map (see
	// removeLocked): the server no longer holds it, or the connection ended.
	gone chan struct{}

	// Guarded by c.mu.
	state subState
	pos   Position
	// inflight counts this subscription's subscribe and unsubscribe
	// commands awaiting a reply on the live connection; the subscription
	// leaves the client's map only when none is left, so that a late reply
	// always finds it.
	inflight int
	// restoring: a server-side subscription named in the connect command
	// of the current connection, whose subscribe push has not come yet.
	restoring bool
	// Delta state (client/delta.go): the server sends deltas (delta), the
	// payload of the last publication received (base) and its kind, and
	// resyncing: the base broke, pushes are ignored until the resubscribe's
	// reply.
	delta, baseBinary, resyncing bool
	base                         []byte
}

// Subscribe subscribes to channel and returns once the server confirmed it.
// On a channel with history, the publications after the subscription's
// start follow; on one without, a publication may reach OnPublication just
// before Subscribe returns (the subscription is live as soon as the server
// registers it). A client holds one subscription per channel: a second
// Subscribe to the same channel fails with an *Error of code
// protocol.CodeAlreadySub.
//
// A subscribe refused with rate_limited is sent again after
// Options.RetryBackoff, at the client's pace, within ctx and
// Options.RetryTimeout; the channel counts as held meanwhile. If the
// connection is lost before the server confirmed, Subscribe fails with
// ErrDisconnected (the subscription ended with the connection).
//
// If ctx ends before the reply, Subscribe fails, and if the server
// subscribes after all, the client unsubscribes right away; until the
// server's late answer comes, the channel still counts as held.
func (c *Client) Subscribe(ctx context.Context, channel string, opts SubscribeOptions) (*Subscription, error) {
	fail := func(err error) (*Subscription, error) {
		return nil, fmt.Errorf("failed to subscribe to %q: %w", channel, err)
	}
	c.mu.Lock()
	if _, err := c.sessionLocked(); err != nil {
		c.mu.Unlock()
		return fail(err)
	}
	if c.subs[channel] != nil {
		c.mu.Unlock()
		return fail(&Error{Code: protocol.CodeAlreadySub, Message: "this client already holds a subscription to this channel"})
	}
	sub := &Subscription{c: c, channel: channel, opts: opts, state: subSubscribing, gone: make(chan struct{})}
	// Registered before sending: pushes may precede the reply.
	c.subs[channel] = sub
	c.mu.Unlock()
	abandon := func() {
		c.mu.Lock()
		c.endLocked(sub)
		c.mu.Unlock()
	}

	token, err := sub.token(ctx)
	if err != nil {
		abandon()
		return fail(fmt.Errorf("failed to get a subscription token: %w", err))
	}
	budget := c.retryBudget(ctx)
	defer budget.stop()
	var last error
	for n := 0; ; n++ {
		if n > 0 {
			budget.retrying()
		}
		if err := c.pause(budget.ctx, n); err != nil {
			abandon()
			return fail(gaveUp(last, err))
		}
		c.mu.Lock()
		s, err := c.sessionLocked()
		switch {
		case sub.state != subSubscribing:
			err = ErrDisconnected // teardown ended it with the connection
		case err != nil:
			c.endLocked(sub)
		default:
			sub.inflight++
		}
		c.mu.Unlock()
		if err != nil {
			return fail(gaveUp(last, err))
		}
		r, err := c.subscribeOnce(budget.ctx, s, sub, token)
		if err != nil {
			return fail(err)
		}
		if r.Error == nil {
			return sub, nil
		}
		if r.Error.Code != protocol.CodeRateLimited {
			return fail(replyError(r.Error)) // subscribeReplied removed sub
		}
		last = replyError(r.Error) // subscribeReplied kept sub, subscribing
	}
}

// subscribeOnce sends one subscribe of sub, counted in sub.inflight, on s
// and waits for the reply, which subscribeReplied handles first.
func (c *Client) subscribeOnce(ctx context.Context, s *session, sub *Subscription, token string) (protocol.Reply, error) {
	p := &pending{done: make(chan result, 1)}
	p.onReply = func(r protocol.Reply) error { return c.subscribeReplied(s, sub, r, 0) }
	cmd := &command{Command: protocol.Command{Cmd: protocol.CmdSubscribe, Channel: sub.channel, Since: sub.opts.Since, Token: token, Delta: subscribeDelta(sub)}}
	id, err := s.start(cmd, nil, false, p)
	if err != nil {
		c.mu.Lock()
		if sub.state == subSubscribing {
			sub.inflight--
			c.endLocked(sub)
		}
		c.mu.Unlock()
		return protocol.Reply{}, err
	}
	r, err := c.wait(ctx, s, id, p)
	if gu := (*gaveUpWaiting)(nil); errors.As(err, &gu) {
		c.mu.Lock()
		if sub.state == subSubscribing {
			// Abandoned: if the server subscribes after all,
			// subscribeReplied unsubscribes. If a rate_limited reply
			// came meanwhile, nothing is in flight: sub goes now.
			c.endLocked(sub)
			c.mu.Unlock()
			return protocol.Reply{}, err
		}
		c.mu.Unlock()
		// The reply was handled as the deadline passed: take its outcome
		// (it is in p.done, or about to be).
		res := <-p.done
		r, err = res.reply, res.err
	}
	return r, err // on a lost connection, teardown removed sub
}

// subscribeReplied handles the reply to a subscribe, first or after a
// reconnect, on the connection goroutine. attempt counts the rate_limited
// replies to the resubscribes before this one. A non-nil error ends the
// connection (to retry after a temporary refusal).
func (c *Client) subscribeReplied(s *session, sub *Subscription, r protocol.Reply, attempt int) error {
	var res protocol.SubscribeResult
	if r.Error == nil && len(r.Result) > 0 {
		if err := json.Unmarshal(r.Result, &res); err != nil {
			c.log.Warn("malformed subscribe result", "channel", sub.channel, "result", string(r.Result), "err", err)
		}
	}
	var (
		ev          *event
		unsubscribe bool
		retry       bool
		dropErr     error
	)
	c.mu.Lock()
	sub.inflight--
	if r.Error == nil {
		deltaSubscribedLocked(sub, res)
	}
	switch {
	case sub.state == subClosing || sub.state == subUnsubscribed:
		// Unsubscribed, abandoned or ended by the server while the command
		// was on its way: if the server did subscribe, undo it.
		if r.Error == nil {
			unsubscribe = true
			sub.inflight++
		}
	case sub.state == subSubscribing && rateLimited(r):
		// Subscribe sends it again; the channel stays held meanwhile.
		c.mu.Unlock()
		return nil
	case sub.state == subSubscribing && r.Error != nil:
		sub.state = subClosing
		sub.closed.Store(true)
	case sub.state == subSubscribing && res.Recovered != nil && *res.Recovered:
		// Subscribed with Since and recovered: the missed publications
		// follow, and the position moves with them.
		sub.state = subActive
		sub.pos = Position{Offset: sub.opts.Since.Offset, Epoch: res.Epoch}
	case sub.state == subSubscribing:
		sub.state = subActive
		sub.pos = Position{Offset: res.Offset, Epoch: res.Epoch}
		if res.Recovered != nil { // Since was given and could not be honoured
			ev = &event{kind: evRecoveryFailed, sub: sub, reason: res.Reason}
		}
	case rateLimited(r):
		retry = true // the server did nothing: resubscribe again, later
	case r.Error != nil && r.Error.Code == protocol.CodeUnavailable:
		dropErr = fmt.Errorf("failed to resubscribe to %q: %w", sub.channel, replyError(r.Error))
	case r.Error != nil:
		sub.state = subClosing
		sub.closed.Store(true)
		err := fmt.Errorf("failed to resubscribe to %q: %w", sub.channel, replyError(r.Error))
		ev = &event{kind: evSubError, sub: sub, err: err}
		c.log.Warn("subscription ended", "channel", sub.channel, "err", err)
	case res.Recovered != nil && *res.Recovered:
		// The missed publications follow this reply; the position moves
		// with them as they are queued.
		sub.pos.Epoch = res.Epoch
	default:
		sub.pos = Position{Offset: res.Offset, Epoch: res.Epoch}
		ev = &event{kind: evRecoveryFailed, sub: sub, reason: res.Reason}
		c.log.Info("recovery failed", "channel", sub.channel, "reason", res.Reason)
	}
	c.endLocked(sub)
	c.mu.Unlock()

	if ev != nil {
		_ = c.q.push(*ev, false, 0, nil)
	}
	if unsubscribe {
		s.enqueue(bgCommand{sub: sub, unsub: true})
	}
	if retry {
		s.enqueue(c.later(bgCommand{sub: sub}, attempt))
	}
	return dropErr
}

// unsubscribeReplied handles the reply to an unsubscribe, on the connection
// goroutine. One refused with rate_limited is sent again later, the
// subscription still held (and counted in inflight) meanwhile.
func (c *Client) unsubscribeReplied(s *session, sub *Subscription, r protocol.Reply, attempt int, resync bool) {
	if rateLimited(r) {
		s.enqueue(c.later(bgCommand{sub: sub, unsub: true, resync: resync}, attempt))
		return
	}
	c.mu.Lock()
	sub.inflight--
	c.endLocked(sub)
	c.mu.Unlock()
	if resync {
		s.enqueue(bgCommand{sub: sub}) // skipped if the app unsubscribed meanwhile
	}
}

// serverUnsubscribed handles an unsub push, on the connection goroutine:
// the server ended the subscription to channel. It is not resubscribed,
// and OnUnsubscribed is queued after the publications that came before.
func (c *Client) serverUnsubscribed(channel, code, reason string) {
	c.mu.Lock()
	sub := c.subs[channel]
	if sub == nil || sub.state == subClosing || sub.state == subUnsubscribed {
		c.mu.Unlock()
		return // the app unsubscribed already: no handler is due
	}
	sub.state = subUnsubscribed
	c.endLocked(sub)
	c.mu.Unlock()
	c.log.Info("the server ended a subscription", "channel", channel, "code", code, "reason", reason)
	_ = c.q.push(event{kind: evUnsubscribed, sub: sub, code: code, reason: reason}, false, 0, nil)
}

// endLocked removes a subscription that is going away from the client once
// no reply concerning it is awaited. c.mu must be held.
func (c *Client) endLocked(sub *Subscription) {
	if sub.state == subSubscribing {
		sub.state = subClosing
		sub.closed.Store(true)
	}
	if (sub.state == subClosing || sub.state == subUnsubscribed) && sub.inflight <= 0 {
		c.removeLocked(sub)
	}
}

// removeLocked takes sub out of the client's map, once. c.mu must be held.
func (c *Client) removeLocked(sub *Subscription) {
	if c.subs[sub.channel] == sub {
		delete(c.subs, sub.channel)
		close(sub.gone)
	}
}

// bgCommand is a command the client sends on its own, on a session's
// sender goroutine: a resubscribe after a reconnect, an unsubscribe that
// undoes a subscribe nobody wants any more, and their retries after
// rate_limited.
type bgCommand struct {
	sub     *Subscription
	unsub   bool      // unsubscribe, else resubscribe from sub's position
	resync  bool      // an unsubscribe whose reply resubscribes (client/delta.go)
	attempt int       // rate_limited replies to it so far
	at      time.Time // not before
}

// later schedules b's retry after its attempt-th rate_limited reply.
func (c *Client) later(b bgCommand, attempt int) bgCommand {
	b.attempt = attempt + 1
	b.at = time.Now().Add(c.opts.RetryBackoff.delay(attempt))
	return b
}

// enqueue queues background commands on s, starting its sender goroutine
// if none runs. While s is not dead the connection goroutine has not
// finished teardown, so c.wg counts it and the sender's c.wg.Add cannot
// race with Close's Wait.
func (s *session) enqueue(cmds ...bgCommand) {
	if len(cmds) == 0 {
		return
	}
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.dead {
		return // teardown settles the subscriptions
	}
	s.bg = append(s.bg, cmds...)
	signal(s.bgWake)
	if !s.bgRunning {
		s.bgRunning = true
		s.c.wg.Add(1)
		go s.c.sendLoop(s)
	}
}

// sendLoop is a session's sender goroutine: it sends the background
// commands, each at its time and at the client's pace (so that after a
// reconnect a rate-limited client resubscribes one channel per gap instead
// of being closed for flooding), oldest first. It exits when none is left
// or the session ends. Pipelined: replies are handled by the reader.
func (c *Client) sendLoop(s *session) {
	defer c.wg.Done()
	for {
		s.mu.Lock()
		if s.dead || s.ctx.Err() != nil || len(s.bg) == 0 {
			s.bgRunning = false
			s.mu.Unlock()
			return
		}
		i := 0
		for j := range s.bg {
			if s.bg[j].at.Before(s.bg[i].at) {
				i = j
			}
		}
		b := s.bg[i]
		wait := time.Until(b.at)
		if wait <= 0 {
			s.bg = slices.Delete(s.bg, i, i+1)
		}
		s.mu.Unlock()
		if wait > 0 {
			t := time.NewTimer(wait)
			select {
			case <-t.C:
			case <-s.bgWake: // an earlier one may have come
			case <-s.ctx.Done():
			}
			t.Stop()
			continue
		}
		if c.pace.wait(s.ctx) != nil {
			continue // the session ended
		}
		c.sendBackground(s, b)
	}
}

// sendBackground sends one background command on s (sender goroutine).
func (c *Client) sendBackground(s *session, b bgCommand) {
	sub := b.sub
	cmd := &command{Command: protocol.Command{Cmd: protocol.CmdUnsubscribe, Channel: sub.channel}}
	var p *pending
	if b.unsub {
		// Counted in inflight when it was decided, until its last reply.
		p = &pending{onReply: func(r protocol.Reply) error { c.unsubscribeReplied(s, sub, r, b.attempt, b.resync); return nil }}
	} else {
		c.mu.Lock()
		if sub.state != subActive || c.subs[sub.channel] != sub {
			c.mu.Unlock()
			return // unsubscribed meanwhile
		}
		sub.inflight++
		// From the last position seen. A channel without history has no
		// epoch; since is sent anyway, and the server's no_history answer
		// tells the app what it may have missed.
		since := sub.pos
		c.mu.Unlock()
		token, err := sub.token(s.ctx)
		if err != nil {
			c.log.Warn("no subscription token for the resubscribe", "channel", sub.channel, "err", err)
		}
		cmd.Cmd, cmd.Since, cmd.Token, cmd.Delta = protocol.CmdSubscribe, &since, token, subscribeDelta(sub)
		p = &pending{onReply: func(r protocol.Reply) error { return c.subscribeReplied(s, sub, r, b.attempt) }}
	}
	if _, err := s.start(cmd, nil, false, p); err != nil {
		// The connection is failing: the reader sees it, and teardown
		// settles the subscription.
		c.log.Debug("background command not sent", "cmd", cmd.Cmd, "channel", sub.channel, "err", err)
	}
}

// Channel returns the subscription's channel.
func (sub *Subscription) Channel() string { return sub.channel }

// token returns the subscription token to send, if any.
func (sub *Subscription) token(ctx context.Context) (string, error) {
	if sub.opts.GetToken != nil {
		return sub.opts.GetToken(ctx)
	}
	return sub.opts.Token, nil
}

// Position returns the position the subscription has reached: the epoch of
// the channel's history and the offset of the last publication received
// (queued for OnPublication), or of the subscribe reply if none came since.
// After a reconnect the client resubscribes from it. Zero on a channel
// without history.
func (sub *Subscription) Position() Position {
	sub.c.mu.Lock()
	defer sub.c.mu.Unlock()
	return sub.pos
}

// Unsubscribe ends the subscription. Once it is called no handler of the
// subscription starts any more (one already running finishes), whatever
// the outcome; the error only says whether the server confirmed. When the
// client is disconnected, or the server ended the subscription already,
// there is nothing to tell the server. An unsubscribe refused with
// rate_limited is sent again in the background, at the client's pace, and
// Unsubscribe waits for the server's confirmation within ctx; the channel
// counts as held until then. Calling it again is a no-op.
//
// A server-side subscription is unsubscribed the same way; the server may
// make it again at a later connect (its Connect hook's Channels), and it
// is then announced as a new one.
func (sub *Subscription) Unsubscribe(ctx context.Context) error {
	c := sub.c
	c.mu.Lock()
	if sub.state == subClosing {
		c.mu.Unlock()
		return nil
	}
	ended := sub.state == subUnsubscribed
	sub.state = subClosing
	sub.closed.Store(true)
	s := c.live
	if s == nil || ended {
		c.endLocked(sub)
		c.mu.Unlock()
		return nil
	}
	sub.inflight++
	c.mu.Unlock()

	// At the client's pace; but if ctx ends first, the unsubscribe goes out
	// anyway, unawaited, so that the server does not keep the subscription.
	paced := c.pace.wait(ctx)
	p := &pending{onReply: func(r protocol.Reply) error { c.unsubscribeReplied(s, sub, r, 0, false); return nil }}
	if paced == nil {
		p.done = make(chan result, 1)
	}
	id, err := s.start(&command{Command: protocol.Command{Cmd: protocol.CmdUnsubscribe, Channel: sub.channel}}, nil, false, p)
	if err == nil && paced != nil {
		err = paced
	} else if err == nil {
		var r protocol.Reply
		r, err = c.wait(ctx, s, id, p)
		switch {
		case err != nil:
		case rateLimited(r):
			select { // retried by the sender goroutine
			case <-sub.gone:
			case <-ctx.Done():
				err = context.Cause(ctx)
			}
		case r.Error != nil && r.Error.Code != protocol.CodeNotSubscribed:
			err = replyError(r.Error)
		}
	}
	if err == nil || errors.Is(err, ErrDisconnected) {
		return nil // a lost connection took the server's subscription with it
	}
	return fmt.Errorf("failed to unsubscribe from %q: %w", sub.channel, err)
}
