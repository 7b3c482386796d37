package main

import (
	"cmp"
	"net/http"
	"slices"
	"sync"
	"time"

	"github.com/heraldhq/herald"
)

// app is the application: its own state, which Herald knows nothing about,
// and the node it publishes through. Its methods are called from HTTP
// handlers and from Herald's hooks, on many goroutines at once: each piece
// of state has its own lock, and no lock is held while calling Herald.
type app struct {
	node     *herald.Node // set once, before the server starts
	sessions sessions
	messages messages
	online   online
}

func newApp() *app {
	return &app{
		sessions: sessions{byID: make(map[string]string)},
		online:   online{users: make(map[string]bool), seen: make(map[string]bool)},
	}
}

// sessions maps session ids (the cookie) to user names.
type sessions struct {
	mu   sync.Mutex
	byID map[string]string
}

func (s *sessions) put(id, name string) {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.byID[id] = name
}

func (s *sessions) delete(id string) {
	s.mu.Lock()
	defer s.mu.Unlock()
	delete(s.byID, id)
}

// fromHeader returns the user of the session cookie in h: the header of an
// HTTP request, or of the WebSocket handshake that Herald's connect hook
// gets.
func (s *sessions) fromHeader(h http.Header) (string, bool) {
	c, err := (&http.Request{Header: h}).Cookie(sessionCookie)
	if err != nil {
		return "", false
	}
	s.mu.Lock()
	defer s.mu.Unlock()
	name, ok := s.byID[c.Value]
	return name, ok
}

// message is a chat message as stored, and as published: the publish hook
// replaces what the page sent ({text}) with this.
type message struct {
	ID   int64     `json:"id"`
	User string    `json:"user"`
	Text string    `json:"text"`
	At   time.Time `json:"at"`
}

// maxStored bounds the store: past it the oldest messages are forgotten.
const maxStored = 10_000

// messages is the chat's log, oldest first, ids increasing from 1.
type messages struct {
	mu   sync.Mutex
	list []message
	last int64
}

func (m *messages) add(user, text string, at time.Time) message {
	m.mu.Lock()
	defer m.mu.Unlock()
	m.last++
	msg := message{ID: m.last, User: user, Text: text, At: at.UTC().Truncate(time.Millisecond)}
	if len(m.list) == maxStored {
		m.list = slices.Delete(m.list, 0, 1)
	}
	m.list = append(m.list, msg)
	return msg
}

// before returns up to limit messages with ids below before (0: the
// latest), oldest first, and whether older ones remain.
func (m *messages) before(before int64, limit int) (page []message, more bool) {
	m.mu.Lock()
	defer m.mu.Unlock()
	end := len(m.list)
	if before > 0 {
		end, _ = slices.BinarySearchFunc(m.list, before, func(msg message, id int64) int { return cmp.Compare(msg.ID, id) })
	}
	start := max(0, end-limit)
	return slices.Clone(m.list[start:end]), start > 0
}

// online is who is online, as the webhooks tell it. Version grows with
// each change, so that the page can tell a newer list from an older one
// however they reach it (the users.online rpc or a publication).
type online struct {
	mu      sync.Mutex
	users   map[string]bool
	version int64
	// seen holds the ids of the events applied: webhooks are delivered at
	// least once, so an event may come again. order bounds it.
	seen  map[string]bool
	order []string
	// unpublished: the list changed since it was last published.
	unpublished bool
}

// maxSeen is how many event ids online remembers; a redelivery comes
// right after the delivery it repeats, not thousands of events later.
const maxSeen = 4096

// apply applies events it has not seen, and reports whether the list
// needs publishing.
func (o *online) apply(events []herald.Event) bool {
	o.mu.Lock()
	defer o.mu.Unlock()
	for _, e := range events {
		if o.seen[e.ID] {
			continue
		}
		o.seen[e.ID] = true
		o.order = append(o.order, e.ID)
		if len(o.order) > maxSeen {
			delete(o.seen, o.order[0])
			o.order = o.order[1:]
		}
		switch e.Kind {
		case herald.EventUserOnline:
			o.users[e.User] = true
		case herald.EventUserOffline:
			delete(o.users, e.User)
		default:
			continue
		}
		o.version++
		o.unpublished = true
	}
	return o.unpublished
}

// onlineList is what the page is told: the users online, sorted, and the
// version of the list.
type onlineList struct {
	Version int64    `json:"version"`
	Users   []string `json:"users"`
}

func (o *online) list() onlineList {
	o.mu.Lock()
	defer o.mu.Unlock()
	users := make([]string, 0, len(o.users))
	for u := range o.users {
		users = append(users, u)
	}
	slices.Sort(users)
	return onlineList{Version: o.version, Users: users}
}

// published records that the list of this version went out.
func (o *online) published(version int64) {
	o.mu.Lock()
	defer o.mu.Unlock()
	if o.version == version {
		o.unpublished = false
	}
}
