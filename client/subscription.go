package client

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"sync/atomic"

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
	// OnError is called when the server refuses to resubscribe after a
	// reconnect (say, the channel's namespace was removed): the
	// subscription has then ended, as after Unsubscribe. err wraps an
	// *Error. (A temporary refusal, CodeUnavailable, makes the client
	// reconnect and retry instead.)
	OnError func(err error)
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
}

type subState uint8

const (
	subSubscribing subState = iota // the first subscribe is in flight
	subActive                      // confirmed; resubscribed after each reconnect
	subClosing                     // unsubscribed, abandoned or failed: going away
)

// Subscription is a client's subscription to one channel. It lives across
// reconnects until Unsubscribe, Close, or OnError.
type Subscription struct {
	c       *Client
	channel string
	opts    SubscribeOptions
	// closed is set once no handler of the subscription may start any more
	// (read by the dispatcher without the client's lock).
	closed atomic.Bool

	// Guarded by c.mu.
	state subState
	pos   Position
	// inflight counts this subscription's subscribe and unsubscribe
	// commands awaiting a reply on the live connection; the subscription
	// leaves the client's map only when none is left, so that a late reply
	// always finds it.
	inflight int
}

// Subscribe subscribes to channel and returns once the server confirmed it.
// On a channel with history, the publications after the subscription's
// start follow; on one without, a publication may reach OnPublication just
// before Subscribe returns (the subscription is live as soon as the server
// registers it). A client holds one subscription per channel: a second
// Subscribe to the same channel fails with an *Error of code
// protocol.CodeAlreadySub.
//
// If ctx ends before the reply, Subscribe fails, and if the server
// subscribes after all, the client unsubscribes right away; until the
// server's late answer comes, the channel still counts as held.
func (c *Client) Subscribe(ctx context.Context, channel string, opts SubscribeOptions) (*Subscription, error) {
	fail := func(err error) (*Subscription, error) {
		return nil, fmt.Errorf("failed to subscribe to %q: %w", channel, err)
	}
	c.mu.Lock()
	s, err := c.sessionLocked()
	if err != nil {
		c.mu.Unlock()
		return fail(err)
	}
	if c.subs[channel] != nil {
		c.mu.Unlock()
		return fail(&Error{Code: protocol.CodeAlreadySub, Message: "this client already holds a subscription to this channel"})
	}
	sub := &Subscription{c: c, channel: channel, opts: opts, state: subSubscribing, inflight: 1}
	// Registered before sending: pushes may precede the reply.
	c.subs[channel] = sub
	c.mu.Unlock()

	p := &pending{done: make(chan result, 1)}
	p.onReply = func(r protocol.Reply) error { return c.subscribeReplied(s, sub, r) }
	token, err := sub.token(ctx)
	if err != nil {
		c.mu.Lock()
		sub.inflight--
		c.endLocked(sub)
		c.mu.Unlock()
		return fail(fmt.Errorf("failed to get a subscription token: %w", err))
	}
	id, err := s.start(&command{Command: protocol.Command{Cmd: protocol.CmdSubscribe, Channel: channel, Since: opts.Since, Token: token}}, nil, false, p)
	if err != nil {
		c.mu.Lock()
		if sub.state == subSubscribing {
			sub.inflight--
			c.endLocked(sub)
		}
		c.mu.Unlock()
		return fail(err)
	}
	r, err := c.wait(ctx, s, id, p)
	if gu := (*gaveUp)(nil); errors.As(err, &gu) {
		c.mu.Lock()
		if sub.state == subSubscribing {
			// Abandoned: if the server subscribes after all,
			// subscribeReplied unsubscribes.
			sub.state = subClosing
			sub.closed.Store(true)
			c.mu.Unlock()
			return fail(err)
		}
		c.mu.Unlock()
		// The reply was handled as the deadline passed: take its outcome
		// (it is in p.done, or about to be).
		res := <-p.done
		r, err = res.reply, res.err
	}
	if err != nil {
		return fail(err) // the connection dropped: teardown removed sub
	}
	if r.Error != nil {
		return fail(replyError(r.Error)) // subscribeReplied removed sub
	}
	return sub, nil
}

// subscribeReplied handles the reply to a subscribe, first or after a
// reconnect, on the connection goroutine. A non-nil error ends the
// connection (to retry after a temporary refusal).
func (c *Client) subscribeReplied(s *session, sub *Subscription, r protocol.Reply) error {
	var res protocol.SubscribeResult
	if r.Error == nil && len(r.Result) > 0 {
		if err := json.Unmarshal(r.Result, &res); err != nil {
			c.log.Warn("malformed subscribe result", "channel", sub.channel, "result", string(r.Result), "err", err)
		}
	}
	var (
		ev          *event
		unsubscribe bool
		dropErr     error
	)
	c.mu.Lock()
	sub.inflight--
	switch {
	case sub.state == subClosing:
		// Unsubscribed or abandoned while the command was on its way: if
		// the server did subscribe, undo it.
		if r.Error == nil {
			unsubscribe = true
			sub.inflight++
		}
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
		cmd := &command{Command: protocol.Command{Cmd: protocol.CmdUnsubscribe, Channel: sub.channel}}
		p := &pending{onReply: func(protocol.Reply) error { c.unsubscribeReplied(sub); return nil }}
		if _, err := s.start(cmd, nil, false, p); err != nil {
			c.log.Debug("could not undo an abandoned subscribe", "channel", sub.channel, "err", err)
		}
	}
	return dropErr
}

func (c *Client) unsubscribeReplied(sub *Subscription) {
	c.mu.Lock()
	sub.inflight--
	c.endLocked(sub)
	c.mu.Unlock()
}

// endLocked removes a closing subscription from the client once no reply
// concerning it is awaited. c.mu must be held.
func (c *Client) endLocked(sub *Subscription) {
	if sub.state == subSubscribing {
		sub.state = subClosing
		sub.closed.Store(true)
	}
	if sub.state == subClosing && sub.inflight <= 0 && c.subs[sub.channel] == sub {
		delete(c.subs, sub.channel)
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
// client is disconnected there is nothing to tell the server: the
// subscription ended with the connection. Calling it again is a no-op.
func (sub *Subscription) Unsubscribe(ctx context.Context) error {
	c := sub.c
	c.mu.Lock()
	if sub.state == subClosing {
		c.mu.Unlock()
		return nil
	}
	sub.state = subClosing
	sub.closed.Store(true)
	s := c.live
	if s == nil {
		c.endLocked(sub)
		c.mu.Unlock()
		return nil
	}
	sub.inflight++
	c.mu.Unlock()

	p := &pending{done: make(chan result, 1), onReply: func(protocol.Reply) error { c.unsubscribeReplied(sub); return nil }}
	id, err := s.start(&command{Command: protocol.Command{Cmd: protocol.CmdUnsubscribe, Channel: sub.channel}}, nil, false, p)
	if err == nil {
		var r protocol.Reply
		if r, err = c.wait(ctx, s, id, p); err == nil && r.Error != nil && r.Error.Code != protocol.CodeNotSubscribed {
			err = replyError(r.Error)
		}
	}
	if err == nil || errors.Is(err, ErrDisconnected) {
		return nil // a lost connection took the server's subscription with it
	}
	return fmt.Errorf("failed to unsubscribe from %q: %w", sub.channel, err)
}
