package herald

import (
	"context"
	"encoding/json"
	"hash/maphash"
	"sync"
)

// ClientPresence is one client's entry in a channel's presence set.
type ClientPresence struct {
	Client string `json:"client"`
	User   string `json:"user,omitempty"`
	// Info is the public user info from the connection's credentials.
	Info json.RawMessage `json:"info,omitempty"`
}

// PresenceStats counts a channel's presence set.
type PresenceStats struct {
	// Clients is the number of connections present.
	Clients int `json:"clients"`
	// Users is the number of distinct non-empty user ids among them: a user
	// with several tabs counts once. Anonymous clients count in Clients only.
	Users int `json:"users"`
}

// PresenceManager keeps the set of clients present in each channel, across
// nodes. The node adds a client when it subscribes to a channel whose
// namespace has presence, and removes it when it unsubscribes or its
// connection ends (a connection that dies without a close frame ends at the
// heartbeat timeout). Managers shared by several nodes must also expire the
// entries of a node that stops without removing them: such a manager keeps
// the entries added through it alive (redisbroker and natsbroker refresh
// them from their Run) and lets them expire when that stops. AddPresence is
// idempotent.
//
// Consistency: Presence reflects every Add and Remove that returned before it
// was called.
type PresenceManager interface {
	AddPresence(ctx context.Context, channel string, p ClientPresence) error
	RemovePresence(ctx context.Context, channel, clientID string) error
	Presence(ctx context.Context, channel string) (map[string]ClientPresence, error)
	PresenceStats(ctx context.Context, channel string) (PresenceStats, error)
}

// MemoryPresence is the single-node PresenceManager, the default.
type MemoryPresence struct {
	seed   maphash.Seed
	shards [64]presenceShard
}

type presenceShard struct {
	mu       sync.RWMutex
	channels map[string]*presenceSet
}

type presenceSet struct {
	clients map[string]ClientPresence
	users   map[string]int // user id -> number of its clients present
}

var _ PresenceManager = (*MemoryPresence)(nil)

// NewMemoryPresence returns an empty in-memory presence manager.
func NewMemoryPresence() *MemoryPresence { return &MemoryPresence{seed: maphash.MakeSeed()} }

func (m *MemoryPresence) shard(channel string) *presenceShard {
	return &m.shards[maphash.String(m.seed, channel)%uint64(len(m.shards))]
}

// AddPresence implements PresenceManager.
func (m *MemoryPresence) AddPresence(ctx context.Context, channel string, p ClientPresence) error {
	s := m.shard(channel)
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.channels == nil {
		s.channels = make(map[string]*presenceSet)
	}
	set := s.channels[channel]
	if set == nil {
		set = &presenceSet{clients: make(map[string]ClientPresence), users: make(map[string]int)}
		s.channels[channel] = set
	}
	if _, ok := set.clients[p.Client]; !ok && p.User != "" {
		set.users[p.User]++
	}
	set.clients[p.Client] = p
	return nil
}

// RemovePresence implements PresenceManager.
func (m *MemoryPresence) RemovePresence(ctx context.Context, channel, clientID string) error {
	s := m.shard(channel)
	s.mu.Lock()
	defer s.mu.Unlock()
	set := s.channels[channel]
	if set == nil {
		return nil
	}
	p, ok := set.clients[clientID]
	if !ok {
		return nil
	}
	delete(set.clients, clientID)
	if p.User != "" {
		if set.users[p.User]--; set.users[p.User] == 0 {
			delete(set.users, p.User)
		}
	}
	if len(set.clients) == 0 {
		delete(s.channels, channel)
	}
	return nil
}

// Presence implements PresenceManager. The map is a copy.
func (m *MemoryPresence) Presence(ctx context.Context, channel string) (map[string]ClientPresence, error) {
	s := m.shard(channel)
	s.mu.RLock()
	defer s.mu.RUnlock()
	set := s.channels[channel]
	out := make(map[string]ClientPresence, lenOr0(set))
	if set != nil {
		for k, v := range set.clients {
			out[k] = v
		}
	}
	return out, nil
}

func lenOr0(set *presenceSet) int {
	if set == nil {
		return 0
	}
	return len(set.clients)
}

// PresenceStats implements PresenceManager.
func (m *MemoryPresence) PresenceStats(ctx context.Context, channel string) (PresenceStats, error) {
	s := m.shard(channel)
	s.mu.RLock()
	defer s.mu.RUnlock()
	set := s.channels[channel]
	if set == nil {
		return PresenceStats{}, nil
	}
	return PresenceStats{Clients: len(set.clients), Users: len(set.users)}, nil
}
