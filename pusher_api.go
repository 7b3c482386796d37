package herald

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
