package herald

import (
	"context"

	"github.com/heraldhq/herald/protocol"
)

// What the Pusher HTTP API and webhooks (package pusherapi, P2 of issue
// 17) need of the root package beyond pusher.go.

// pusherMember returns the client a member event of channel names: "" on
// a Pusher app's channel, whose members are users, not connections.
// Pusher's member_added is a user's first connection to the channel and
// member_removed its last one gone, cluster-wide; with no client in the
// store key, every connection of the user holds the same key, so the
// EventStore makes exactly those two events however many connections and
// nodes the user has.
func (t *eventTracker) pusherMember(channel, client string) string {
	if _, _, ok := t.n.PusherChannelOf(channel); ok {
		return ""
	}
	return client
}

// PusherTerminateUser closes every connection of app signed in as userID
// (pusher:signin), on every node: Pusher's terminate_connections. Pusher
// clients get close 4009, on which pusher-js does not reconnect by
// itself. The connections of other apps, and Herald clients, of the same
// user id stay: each app's users are its own. Like DisconnectUser it is
// at most once: a node that misses the control message (its broker link
// down) keeps the user's connections there.
func (n *Node) PusherTerminateUser(ctx context.Context, app PusherApp, userID string) error {
	if userID == "" {
		return errorf(protocol.CodeBadRequest, "a user id is required")
	}
	return n.publishControl(ctx, control{Op: "disconnect_pusher_user", App: app.ID, User: userID,
		Code: CloseDisconnected, Reason: "terminated by the app's server"})
}

// disconnectPusherUser closes the user's connections of the app m names,
// here.
func (n *Node) disconnectPusherUser(m control) {
	n.hub.forEachUserConn(m.User, func(c *conn) {
		if c.pusherAppID() == m.App {
			c.close(m.Code, m.Reason)
		}
	})
}

// pusherAppID is the ID of a Pusher connection's app, "" for another
// connection. Safe on any goroutine once the connection has a user: a
// Pusher connection's session is set before the hub has it (c.pusher and
// c.sess are then fixed; another connection's sess may change, so it is
// not read), and its app in start, before the reader signs the user in,
// which publishes the user through the hub's lock.
func (c *conn) pusherAppID() string {
	if !c.pusher {
		return ""
	}
	if s, ok := c.sess.(*pusherSession); ok && s.app != nil {
		return s.app.ID
	}
	return ""
}
