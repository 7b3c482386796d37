package herald

import (
	"context"

	"github.com/heraldhq/herald/internal/wsframe"
	"github.com/heraldhq/herald/protocol"
)

// Server-side subscriptions: the application subscribes connections to
// channels (and takes them away). A herald.v1 client is told by a
// subscribe push, which carries the channel's position, and treats the
// subscription as its own, except that it never resubscribes by itself:
// after a reconnect it names it, with its position, in connect's subs
// (see v1Session.connectSubs). Raw connections have one channel, fixed
// at the handshake: these calls leave them alone.

// SubscribeUser subscribes every herald.v1 connection of userID, on every
// node, to channel. A connection already subscribed keeps its
// subscription. It returns once the broker carried the request; each
// node subscribes its connections in the background, and a connection
// it fails for (a broker error) gets an unsub push saying why.
func (n *Node) SubscribeUser(ctx context.Context, userID, channel string) error {
	if err := n.serverSideCheck(userID, channel); err != nil {
		return err
	}
	return n.publishControl(ctx, control{Op: "subscribe_user", User: userID, Channel: channel})
}

// SubscribeClient subscribes one connection, on whichever node holds it,
// to channel, as SubscribeUser does. Naming a client no node holds is not
// an error.
func (n *Node) SubscribeClient(ctx context.Context, clientID, channel string) error {
	if err := n.serverSideCheck(clientID, channel); err != nil {
		return err
	}
	return n.publishControl(ctx, control{Op: "subscribe_client", Client: clientID, Channel: channel})
}

// UnsubscribeClient ends one connection's subscription to channel, as
// UnsubscribeUser does for a user's: a herald.v1 client gets an unsub
// push (server_unsubscribe) and does not resubscribe; a raw client of
// that channel is closed with 4500.
func (n *Node) UnsubscribeClient(ctx context.Context, clientID, channel string) error {
	if err := n.serverSideCheck(clientID, channel); err != nil {
		return err
	}
	return n.publishControl(ctx, control{Op: "unsubscribe_client", Client: clientID, Channel: channel, Reason: "unsubscribed by the server"})
}

// admitConn marks c as in (conn.admitted): from now on the server may
// subscribe it, and webhooks count its user.
func (n *Node) admitConn(c *conn) {
	if n.admitQuietly(c) {
		n.countUser(c)
	}
}

// admitQuietly marks c as in without counting its user for webhooks yet,
// and reports whether it was not in before: then the caller counts the
// user (countUser) later on c's reader goroutine, where unregister, which
// counts it gone, runs after it.
func (n *Node) admitQuietly(c *conn) bool { return !c.admitted.Swap(true) }

// countUser counts c's user online for webhooks (see eventTracker).
func (n *Node) countUser(c *conn) {
	c.mu.Lock()
	user := c.user
	c.mu.Unlock()
	n.events.userMoved("", user)
}

func (n *Node) serverSideCheck(who, channel string) error {
	if who == "" {
		return errorf(protocol.CodeBadRequest, "a user or client id is required")
	}
	return n.CheckChannel(channel)
}

// serverSubscribe subscribes c to channel for the server and sends the
// subscribe push, then what the subscription recovered and received
// meanwhile. check: c subscribes as if it asked itself (permissions and
// the subscribe hook), for a subscription the application did not name
// (connect's subs); reader goroutine only then. A closing connection is
// left alone.
func (n *Node) serverSubscribe(c *conn, channel string, since *protocol.Position, check bool) *Error {
	c.subMu.Lock()
	defer c.subMu.Unlock()
	if c.isClosing() || !c.admitted.Load() {
		return nil // not (or no longer) in: nothing to subscribe
	}
	var (
		res    *protocol.SubscribeResult
		finish func()
		perr   *Error
	)
	if check {
		res, finish, perr = n.subscribeConn(c, channel, since, "", nil, "")
	} else {
		ns, err := n.channelNamespace(channel)
		if err != nil {
			return err
		}
		if subscribed(c, channel) {
			return errorf(protocol.CodeAlreadySub, "already subscribed to %q", channel)
		}
		res, finish, perr = n.subscribeChecked(c, ns, channel, since, nil, "")
	}
	if perr != nil {
		return perr
	}
	c.enqueue(c.frame(wsframe.OpText, protocol.AppendSubscribePush(nil, channel, *res)))
	finish()
	return nil
}

// serverOp queues f, a server-side subscription change of c, to run on
// a goroutine of the node's (goBackground) after every change queued for
// c before it: changes apply to each connection in the order the broker
// delivered them, off its delivery goroutine, and a connection slow to
// change (its subscribe hook, say) holds up only its own. Past
// maxServerOps waiting, a change is dropped and logged.
func (n *Node) serverOp(c *conn, f func()) {
	c.opsMu.Lock()
	defer c.opsMu.Unlock()
	if len(c.ops) >= maxServerOps {
		n.log.Warn("server-side subscription change dropped: too many waiting for this connection", "client", c.id)
		return
	}
	c.ops = append(c.ops, f)
	if c.opsRunning {
		return
	}
	c.opsRunning = n.goBackground(func() {
		for {
			c.opsMu.Lock()
			if len(c.ops) == 0 {
				c.opsRunning = false
				c.opsMu.Unlock()
				return
			}
			f := c.ops[0]
			c.ops = c.ops[1:]
			c.opsMu.Unlock()
			f()
		}
	})
	if !c.opsRunning {
		c.ops = nil // shut down: nothing more runs
	}
}

// maxServerOps bounds the server-side subscription changes waiting for
// one connection.
const maxServerOps = 1024

// subscribeHere makes the server-side subscription of a control message
// for c. Off the broker's delivery goroutine (see HandleControl).
func (n *Node) subscribeHere(c *conn, channel string) {
	if c.raw || c.sse != nil {
		return // their channels are fixed by the request
	}
	if err := n.serverSubscribe(c, channel, nil, false); err != nil && err.Code != protocol.CodeAlreadySub {
		n.log.Warn("server-side subscription failed", "client", c.id, "channel", channel, "err", err)
		c.enqueue(c.frame(wsframe.OpText, protocol.AppendUnsubPush(nil, channel, protocol.UnsubNotRestored, err.Message)))
	}
}

// unsubscribeHere ends c's subscription to channel: a protocol client
// gets an unsub push, a raw one is closed.
func (n *Node) unsubscribeHere(c *conn, channel, reason string) {
	// Once removeSubscription returns no fan-out queues c anything more
	// of the channel, so the push comes after its last pub.
	c.subMu.Lock()
	removed := n.removeSubscription(c, channel)
	c.subMu.Unlock()
	switch {
	case !removed:
		return
	case c.raw: // its one channel is gone: nothing left to serve
		c.close(CloseForbidden, reason)
	case c.sse != nil:
		c.sse.unsubscribed(channel, appendSSEEvent(nil, protocol.PushUnsub, protocol.AppendUnsubPush(nil, channel, protocol.UnsubServer, reason)))
	default:
		c.enqueue(c.frame(wsframe.OpText, protocol.AppendUnsubPush(nil, channel, protocol.UnsubServer, reason)))
	}
	n.unsubscribed(c, channel, "server")
}

// connsOf returns this node's connections of a control message's user or
// client.
func (n *Node) connsOf(m control) []*conn {
	var conns []*conn
	if m.User != "" {
		n.hub.forEachUserConn(m.User, func(c *conn) { conns = append(conns, c) })
	} else if c := n.hub.conn(m.Client); c != nil {
		conns = append(conns, c)
	}
	return conns
}
