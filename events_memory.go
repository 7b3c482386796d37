package herald

import (
	"context"
	"strconv"
	"sync"
	"time"
)

// NewMemoryEventStore returns an EventStore held in this process: for a
// single node, or nodes of one process. A crash loses it: the events not
// yet delivered, and who held what (so no offline event follows a crash).
func NewMemoryEventStore() EventStore {
	return &memoryEventStore{
		holders: make(map[string]map[string]struct{}),
		held:    make(map[string]map[string]struct{}),
		beats:   make(map[string]time.Time),
	}
}

type memoryEventStore struct {
	mu      sync.Mutex
	holders map[string]map[string]struct{} // key -> nodes
	held    map[string]map[string]struct{} // node -> keys
	beats   map[string]time.Time           // node -> alive until
	leader  string
	leadTo  time.Time
	outbox  []EventRecord
	next    uint64 // the position of the next event appended
}

func (s *memoryEventStore) appendLocked(e *Event) {
	s.next++
	s.outbox = append(s.outbox, EventRecord{Pos: strconv.FormatUint(s.next, 10), Event: *e})
}

func (s *memoryEventStore) Hold(ctx context.Context, node, key string, on *Event) error {
	s.mu.Lock()
	defer s.mu.Unlock()
	h := s.holders[key]
	if _, ok := h[node]; ok {
		return nil
	}
	if h == nil {
		h = make(map[string]struct{})
		s.holders[key] = h
	}
	if len(h) == 0 {
		s.appendLocked(on)
	}
	h[node] = struct{}{}
	if s.held[node] == nil {
		s.held[node] = make(map[string]struct{})
	}
	s.held[node][key] = struct{}{}
	return nil
}

func (s *memoryEventStore) Release(ctx context.Context, node, key string, off *Event) error {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.releaseLocked(node, key, func(string) *Event { return off })
	return nil
}

func (s *memoryEventStore) releaseLocked(node, key string, off func(string) *Event) {
	h := s.holders[key]
	if _, ok := h[node]; !ok {
		return
	}
	delete(h, node)
	delete(s.held[node], key)
	if len(h) == 0 {
		delete(s.holders, key)
		s.appendLocked(off(key))
	}
}

func (s *memoryEventStore) Append(ctx context.Context, events ...*Event) error {
	s.mu.Lock()
	defer s.mu.Unlock()
	for _, e := range events {
		s.appendLocked(e)
	}
	return nil
}

func (s *memoryEventStore) Beat(ctx context.Context, node string, ttl time.Duration) error {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.beats[node] = time.Now().Add(ttl)
	return nil
}

func (s *memoryEventStore) Reap(ctx context.Context, node string, off func(key string) *Event) ([]string, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	var dead []string
	if node != "" {
		dead = []string{node}
	} else {
		now := time.Now()
		for n, until := range s.beats {
			if now.After(until) {
				dead = append(dead, n)
			}
		}
	}
	for _, n := range dead {
		for key := range s.held[n] {
			s.releaseLocked(n, key, off)
		}
		delete(s.held, n)
		delete(s.beats, n)
	}
	return dead, nil
}

func (s *memoryEventStore) Lead(ctx context.Context, node string, ttl time.Duration) (bool, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	now := time.Now()
	if s.leader != node && s.leader != "" && now.Before(s.leadTo) {
		return false, nil
	}
	s.leader, s.leadTo = node, now.Add(ttl)
	return true, nil
}

func (s *memoryEventStore) Pending(ctx context.Context, max int) ([]EventRecord, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	n := min(max, len(s.outbox))
	return append([]EventRecord(nil), s.outbox[:n]...), nil
}

func (s *memoryEventStore) Ack(ctx context.Context, pos string) error {
	p, err := strconv.ParseUint(pos, 10, 64)
	if err != nil {
		return err
	}
	s.mu.Lock()
	defer s.mu.Unlock()
	i := 0
	for i < len(s.outbox) {
		q, _ := strconv.ParseUint(s.outbox[i].Pos, 10, 64)
		if q > p {
			break
		}
		i++
	}
	s.outbox = s.outbox[i:]
	return nil
}
