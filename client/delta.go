package client

import (
	"bytes"

	"github.com/centrifugal/fdelta"

	"github.com/heraldhq/herald/protocol"
)

// Delta delivery (SubscribeOptions.Delta, PROTOCOL.md "Delta delivery").
//
// A subscription that got deltas keeps the payload of the last publication
// it received (its base). A delta push at offset N is applied only when the
// base is the publication at N-1 and fossil's checksum of the result holds;
// the handlers then see the full payload, as if no delta had been sent.
// Otherwise the base is broken (a publication was dropped on the way, or
// the server's state is not the client's): the client resynchronises that
// one subscription on the same connection — unsubscribe, then subscribe
// from its last good position with since — ignoring the channel's pushes
// until the new subscribe's reply. Recovery then sends full publications,
// so nothing is lost while the channel's history holds what was missed
// (else OnRecoveryFailed says so, as after a reconnect).
//
// All of it runs on the connection goroutine; the fields are guarded by
// the client's mu like the subscription's position.

// deltaPayload returns the payload of a pub push for the handlers: data
// itself, or the delta applied to sub's base. ok is false when the push
// must be ignored: sub is resynchronising, or this push broke its base (then
// resync is true: the caller starts the resynchronisation).
func (c *Client) deltaPayload(sub *Subscription, f *inFrame, data []byte, binary bool) (out []byte, isBinary, ok, resync bool) {
	c.mu.Lock()
	defer c.mu.Unlock()
	if sub.resyncing {
		return nil, false, false, false
	}
	if f.Delta {
		if !sub.delta || sub.base == nil || f.Offset == 0 || sub.pos.Offset != f.Offset-1 {
			c.log.Info("delta on a broken base: resubscribing from the last position", "channel", sub.channel, "offset", f.Offset, "held", sub.pos.Offset)
			return nil, false, false, c.startResyncLocked(sub)
		}
		full, err := fdelta.Apply(sub.base, data)
		if err != nil {
			c.log.Warn("delta does not apply: resubscribing from the last position", "channel", sub.channel, "offset", f.Offset, "err", err)
			return nil, false, false, c.startResyncLocked(sub)
		}
		data, binary = full, sub.baseBinary
	}
	if sub.delta {
		// A copy: the handlers own the Publication's Data.
		sub.base, sub.baseBinary = bytes.Clone(data), binary
	}
	return data, binary, true, false
}

// startResyncLocked marks sub resynchronising; the caller then sends
// resyncCommand. c.mu must be held.
func (c *Client) startResyncLocked(sub *Subscription) bool {
	if sub.state != subActive || sub.server {
		return false // a server-side subscription never asked for deltas: the push is dropped
	}
	sub.resyncing, sub.base = true, nil
	sub.inflight++ // the unsubscribe, until its last reply
	return true
}

// resyncCommand is the unsubscribe that starts a resynchronisation; its
// reply queues the resubscribe (unsubscribeReplied), so the two never
// cross, even when the unsubscribe is refused with rate_limited and retried.
func resyncCommand(sub *Subscription) bgCommand {
	return bgCommand{sub: sub, unsub: true, resync: true}
}

// subscribeDelta is the delta field of sub's subscribe commands.
func subscribeDelta(sub *Subscription) string {
	if sub.opts.Delta {
		return protocol.DeltaFossil
	}
	return ""
}

// deltaSubscribedLocked records a subscribe reply's delta grant: a new
// subscription on the server, which sends full publications first.
func deltaSubscribedLocked(sub *Subscription, res protocol.SubscribeResult) {
	sub.delta, sub.base, sub.resyncing = res.Delta, nil, false
}
