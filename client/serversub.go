package client

// Server-side subscriptions. The server subscribes the client by itself
// (a subscribe push) and the client holds the subscription as one of its
// own, with two differences: it is announced through
// Options.OnServerSubscribe, which gives its handlers, and after a
// reconnect it is not resubscribed: the connect command names it with its
// position ("subs"), and the server either makes it again, recovering
// from there (a subscribe push with "recovered"), or ends it (an unsub
// push, not_restored). Everything else — position tracking, delivery,
// Unsubscribe, unsub pushes — is the code of the client's own.

// ServerSide reports whether the server made the subscription (a
// server-side subscription, announced by Options.OnServerSubscribe)
// rather than Subscribe.
func (sub *Subscription) ServerSide() bool { return sub.server }

// serverSubsLocked returns the server-side subscriptions to name in the
// next connect command, with their positions, and marks them restoring.
// c.mu must be held.
func (c *Client) serverSubsLocked() map[string]Position {
	var subs map[string]Position
	for ch, sub := range c.subs {
		if !sub.server || sub.state != subActive {
			continue
		}
		if subs == nil {
			subs = make(map[string]Position)
		}
		subs[ch] = sub.pos
		sub.restoring = true
	}
	return subs
}

// serverSubscribed handles a subscribe push, on the connection goroutine:
// a new server-side subscription is registered (before any publication of
// it is read) and announced; one carried across the reconnect takes up the
// position the server recovered from, or reports why it could not.
func (c *Client) serverSubscribed(f *inFrame) {
	pos := Position{Offset: f.Offset, Epoch: f.Epoch}
	var ev *event
	c.mu.Lock()
	sub := c.subs[f.Channel]
	switch {
	case sub == nil:
		sub = &Subscription{c: c, channel: f.Channel, server: true, state: subActive, pos: pos, gone: make(chan struct{})}
		c.subs[f.Channel] = sub
		ev = &event{kind: evServerSubscribe, sub: sub}
	case !sub.server || sub.state != subActive:
		// The client's own subscription holds the channel, or one that is
		// going away (the app's unsubscribe is on its way, and ends the
		// server's too): one subscription per channel.
		c.mu.Unlock()
		c.log.Warn("ignoring a server-side subscription to a channel the client holds or is leaving", "channel", f.Channel)
		return
	case !sub.restoring:
		// Already made on this connection: nothing to take up.
		c.mu.Unlock()
		c.log.Debug("repeated subscribe push", "channel", f.Channel)
		return
	case f.Recovered != nil && *f.Recovered:
		// The missed publications follow; the position moves with them.
		sub.restoring = false
		sub.pos.Epoch = f.Epoch
	case f.Recovered == nil && f.Epoch == "" && sub.pos.Epoch == "":
		// A channel without history: nothing to recover, as for the
		// client's own subscriptions (delivery there is at most once).
		sub.restoring = false
	default:
		// Not recovered, or made again without the position the connect
		// command carried: publications may have been missed.
		sub.restoring = false
		sub.pos = pos
		ev = &event{kind: evRecoveryFailed, sub: sub, reason: f.Reason}
		c.log.Info("recovery failed", "channel", sub.channel, "reason", f.Reason, "server_side", true)
	}
	c.mu.Unlock()
	if ev != nil {
		// A control event: never lost, and never makes the reader wait.
		_ = c.q.push(*ev, false, 0, nil)
	}
}

// handles reports whether sub's events of kind may have a handler
// (connection goroutine). A server-side subscription's handlers are set by
// the dispatcher, which announces it after this goroutine queued the
// announcement, so they cannot be read here: its events are queued
// whenever the app takes server-side subscriptions, and the dispatcher
// skips those without a handler.
func (c *Client) handles(sub *Subscription, kind eventKind) bool {
	if sub.server {
		return c.opts.OnServerSubscribe != nil
	}
	switch kind {
	case evPub:
		return sub.opts.OnPublication != nil
	case evJoin:
		return sub.opts.OnJoin != nil
	case evLeave:
		return sub.opts.OnLeave != nil
	case evDropped:
		return sub.opts.OnDropped != nil
	}
	return true
}

// announce calls OnServerSubscribe for a new server-side subscription and
// keeps the handlers it returns (dispatcher goroutine).
func (c *Client) announce(sub *Subscription) {
	f := c.opts.OnServerSubscribe
	if f == nil {
		return
	}
	h := f(sub)
	sub.opts = SubscribeOptions{
		OnPublication:    h.OnPublication,
		OnJoin:           h.OnJoin,
		OnLeave:          h.OnLeave,
		OnRecoveryFailed: h.OnRecoveryFailed,
		OnError:          h.OnError,
		OnUnsubscribed:   h.OnUnsubscribed,
	}
}
