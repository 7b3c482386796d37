package herald

import "sync"

// pusherMembers is what one Pusher presence subscriber was told of its
// channel's members: the users of its subscription_succeeded snapshot,
// then of the member_added and member_removed it was sent. pusher-js
// keeps the same set and emits pusher:member_added for every one it gets,
// so the fan-out sends a subscriber only the events that change its set:
// a member's join published after the snapshot already listed it (it is
// published after its subscribe's presence add, and a snapshot read in
// between has it), and a leave of a user it never saw, are skipped.
//
// Until the snapshot is sent (ready), events are held in pending, not
// skipped: one made after the snapshot was read but delivered before the
// set is ready is replayed against it. Guarded by mu; admit runs on the
// fan-out, ready on the subscriber's reader, which enqueues the replayed
// events under mu so that no later event overtakes them.
type pusherMembers struct {
	mu      sync.Mutex
	known   map[string]struct{}
	isReady bool
	pending []pendingMember
}

type pendingMember struct {
	pub   *Publication
	frame []byte
}

// admit reports whether the fan-out sends pub (a join or leave) with its
// frame to the subscriber; false also when it was held until ready.
func (m *pusherMembers) admit(pub *Publication, frame []byte) bool {
	m.mu.Lock()
	defer m.mu.Unlock()
	if !m.isReady {
		m.pending = append(m.pending, pendingMember{pub, frame})
		return false
	}
	return m.changesLocked(pub)
}

// changesLocked applies pub to the set and reports whether it changed it.
func (m *pusherMembers) changesLocked(pub *Publication) bool {
	if pub.Presence == nil {
		return false
	}
	user := pub.Presence.User
	_, known := m.known[user]
	switch {
	case pub.Kind == KindJoin && !known:
		m.known[user] = struct{}{}
		return true
	case pub.Kind == KindLeave && known:
		delete(m.known, user)
		return true
	}
	return false
}

// ready records the snapshot's users, sent to the client just before,
// and sends the held events that change them.
func (m *pusherMembers) ready(c *conn, users []string) {
	m.mu.Lock()
	defer m.mu.Unlock()
	m.known = make(map[string]struct{}, len(users))
	for _, u := range users {
		m.known[u] = struct{}{}
	}
	for _, p := range m.pending {
		if m.changesLocked(p.pub) {
			c.enqueuePub(p.pub, p.frame, qmeta{}, nil)
		}
	}
	m.pending, m.isReady = nil, true
}
