package herald

import (
	"cmp"
	"context"
	"encoding/json"
	"slices"
	"strings"
	"sync"
	"time"
)

// eventTracker is a node's side of the webhooks (events.go): it counts
// what this node holds — users, channels, members — and turns the
// changes into store calls (Hold, Release, Append) on one goroutine of its
// own, so that the paths that connect, subscribe and publish only update
// a map under a mutex and never wait for the store.
//
// Ownership: the edge methods (userMoved, channelUp, …) run on any
// goroutine, under mu. sync runs on the tracker's loop, and in the final
// flush of the node's stop, one at a time under syncMu.
type eventTracker struct {
	n     *Node
	cfg   Webhooks
	store EventStore

	mu    sync.Mutex
	keys  map[string]*holding // store key -> what this node holds
	edges uint64              // counts the edges (0->1, 1->0) of every key, for sync's order
	queue []*Event            // appends waiting (publications)
	// dropped counts the appends dropped because the queue was full.
	wake chan struct{} // cap 1: a sync is wanted

	syncMu sync.Mutex

	deliverer
}

// holding is one key's state on this node. Under eventTracker.mu.
type holding struct {
	count int
	// came: count rose above 0 since the last sync; a visit shorter than
	// a sync still holds, and then releases.
	came  bool
	held  bool      // the store has this node as a holder
	since time.Time // when count last rose from 0
	gone  time.Time // when count last fell to 0
	grace bool      // users and channels wait Grace before releasing
	// edge is the tracker's edges count at this key's last edge: sync
	// makes its store calls in this order, so that the events of one
	// store key that change together (a channel occupied, then its first
	// member added) leave in the order they happened, not the map's.
	edge uint64
	ev   Event // the on-event's fields (kind, key, user, channel, client, info)
}

// maxQueuedEvents bounds the appends waiting for the store; past it (the
// store is down for long) publication events are dropped and counted.
const maxQueuedEvents = 100000

func newEventTracker(n *Node, cfg Webhooks) *eventTracker {
	if cfg.Grace <= 0 {
		cfg.Grace = 5 * time.Second
	}
	if cfg.RetryFor <= 0 {
		cfg.RetryFor = 24 * time.Hour
	}
	if cfg.NodeTTL <= 0 {
		cfg.NodeTTL = 15 * time.Second
	}
	if cfg.Timeout <= 0 {
		cfg.Timeout = 10 * time.Second
	}
	if cfg.BatchSize <= 0 {
		cfg.BatchSize = 100
	}
	store := cfg.Store
	if store == nil {
		if p, ok := n.broker.(EventStoreProvider); ok {
			store = p.EventStore()
		} else {
			store = NewMemoryEventStore()
		}
	}
	t := &eventTracker{n: n, cfg: cfg, store: store, keys: make(map[string]*holding), wake: make(chan struct{}, 1)}
	t.deliverer.init(t)
	return t
}

// Store keys. A member's key names its channel, client and user (last:
// a user id may hold spaces, channel names and client ids do not), so that
// the off-event of a reaped member can be made from the key alone.
func userKey(user string) string       { return "user:" + user }
func channelKey(channel string) string { return "channel:" + channel }
func memberKey(channel, client, user string) string {
	return "member:" + channel + " " + client + " " + user
}

// offEvent makes the off-event of a store key, for Release and Reap.
func offEvent(key string, at time.Time) *Event {
	e := &Event{ID: newID(), Time: at.UTC().Truncate(time.Millisecond)}
	switch {
	case strings.HasPrefix(key, "user:"):
		e.Kind, e.Key, e.User = EventUserOffline, key, key[len("user:"):]
	case strings.HasPrefix(key, "channel:"):
		e.Kind, e.Key, e.Channel = EventChannelVacated, key, key[len("channel:"):]
	case strings.HasPrefix(key, "member:"):
		parts := strings.SplitN(key[len("member:"):], " ", 3)
		if len(parts) != 3 {
			return nil
		}
		e.Kind, e.Key, e.Channel, e.Client, e.User = EventMemberRemoved, channelKey(parts[0]), parts[0], parts[1], parts[2]
	default:
		return nil
	}
	return e
}

// up counts one more of key here, with ev the fields of its on-event.
func (t *eventTracker) up(key string, grace bool, ev Event) {
	t.mu.Lock()
	h := t.keys[key]
	if h == nil {
		h = &holding{grace: grace, ev: ev}
		t.keys[key] = h
	}
	h.count++
	if h.count == 1 {
		h.came, h.since = true, time.Now()
		t.edges++
		h.edge = t.edges
	}
	t.mu.Unlock()
	t.poke()
}

// down counts one less of key here.
func (t *eventTracker) down(key string) {
	t.mu.Lock()
	h := t.keys[key]
	if h != nil && h.count > 0 {
		h.count--
		if h.count == 0 {
			h.gone = time.Now()
			t.edges++
			h.edge = t.edges
		}
	}
	t.mu.Unlock()
	t.poke()
}

func (t *eventTracker) poke() {
	select {
	case t.wake <- struct{}{}:
	default:
	}
}

// userMoved records that a connection's user changed from one to the
// other ("" for none: anonymous, or a connection opening or ending).
func (t *eventTracker) userMoved(from, to string) {
	if t == nil || !t.cfg.Users || from == to {
		return
	}
	if from != "" {
		t.down(userKey(from))
	}
	if to != "" {
		t.up(userKey(to), true, Event{Kind: EventUserOnline, Key: userKey(to), User: to})
	}
}

// channelUp and channelDown record a channel's first and last local
// subscriber, for a namespace with ChannelEvents.
func (t *eventTracker) channelUp(channel string) {
	t.up(channelKey(channel), true, Event{Kind: EventChannelOccupied, Key: channelKey(channel), Channel: channel})
}

func (t *eventTracker) channelDown(channel string) { t.down(channelKey(channel)) }

// memberUp and memberDown record a member of a channel's presence, for a
// namespace with MemberEvents.
func (t *eventTracker) memberUp(channel string, p ClientPresence) {
	t.up(memberKey(channel, p.Client, p.User), false, Event{
		Kind: EventMemberAdded, Key: channelKey(channel), Channel: channel, Client: p.Client, User: p.User, Info: p.Info,
	})
}

func (t *eventTracker) memberDown(channel string, p ClientPresence) {
	t.down(memberKey(channel, p.Client, p.User))
}

// published queues the publication event of a client's publication.
func (t *eventTracker) published(c *conn, pub *Publication) {
	e := &Event{
		ID: newID(), Kind: EventPublication, Key: channelKey(pub.Channel), Time: time.Now().UTC().Truncate(time.Millisecond),
		Channel: pub.Channel, Client: c.id, Offset: pub.Offset,
	}
	c.mu.Lock()
	e.User = c.user
	c.mu.Unlock()
	if pub.Binary {
		e.Binary = pub.Data
	} else if json.Valid(pub.Data) {
		e.Data = pub.Data
	} else { // a raw client's text that is not JSON: as a JSON string
		e.Data, _ = json.Marshal(string(pub.Data))
	}
	t.mu.Lock()
	full := len(t.queue) >= maxQueuedEvents
	if !full {
		t.queue = append(t.queue, e)
	}
	t.mu.Unlock()
	if full {
		t.n.metrics.webhookEvents.WithLabelValues("dropped").Inc()
		t.n.log.Warn("webhook event dropped: the store is not keeping up", "channel", pub.Channel)
		return
	}
	t.poke()
}

// storeOp is one store call sync decided on.
type storeOp struct {
	key     string
	h       *holding
	release bool
	ev      *Event
	edge    uint64 // h.edge when sync decided
}

// sync brings the store up to date with this node's holdings and queued
// appends. final: release everything now, without grace (the node stops).
// A failed store call leaves its change for the next sync.
func (t *eventTracker) sync(ctx context.Context, final bool) {
	t.syncMu.Lock()
	defer t.syncMu.Unlock()
	now := time.Now()
	var ops []storeOp
	t.mu.Lock()
	for key, h := range t.keys {
		switch {
		case !h.held && (h.count > 0 || h.came):
			on := h.ev
			on.ID, on.Time = newID(), h.since.UTC().Truncate(time.Millisecond)
			ops = append(ops, storeOp{key: key, h: h, ev: &on, edge: h.edge})
			h.came = false
		case h.held && h.count == 0 && (final || !h.grace || now.Sub(h.gone) >= t.cfg.Grace):
			ops = append(ops, storeOp{key: key, h: h, release: true, ev: offEvent(key, h.gone), edge: h.edge})
		case !h.held && h.count == 0:
			delete(t.keys, key)
		}
	}
	queue := t.queue
	t.queue = nil
	t.mu.Unlock()
	slices.SortFunc(ops, func(a, b storeOp) int { return cmp.Compare(a.edge, b.edge) })

	// Holds first, then releases: a visit shorter than a sync holds in
	// this round and releases in the next (or this one, when final).
	for _, op := range ops {
		if op.release {
			continue
		}
		cctx, cancel := context.WithTimeout(ctx, t.n.cfg.BrokerTimeout)
		err := t.store.Hold(cctx, t.n.id, op.key, op.ev)
		cancel()
		t.mu.Lock()
		if err != nil {
			op.h.came = true // try again
		} else {
			op.h.held = true
			if op.h.count == 0 && !op.h.grace {
				// A member already gone: release in this round.
				ops = append(ops, storeOp{key: op.key, h: op.h, release: true, ev: offEvent(op.key, op.h.gone), edge: op.h.edge})
			}
		}
		t.mu.Unlock()
		if err != nil {
			t.storeFailed("hold", err)
		}
	}
	if final {
		return // Reap(self) releases the rest, in one step per key
	}
	for _, op := range ops {
		if !op.release || op.ev == nil {
			continue
		}
		cctx, cancel := context.WithTimeout(ctx, t.n.cfg.BrokerTimeout)
		err := t.store.Release(cctx, t.n.id, op.key, op.ev)
		cancel()
		if err != nil {
			t.storeFailed("release", err)
			continue
		}
		t.mu.Lock()
		op.h.held = false
		if op.h.count == 0 && !op.h.came {
			delete(t.keys, op.key)
		}
		t.mu.Unlock()
	}
	if len(queue) > 0 {
		cctx, cancel := context.WithTimeout(ctx, t.n.cfg.BrokerTimeout)
		err := t.store.Append(cctx, queue...)
		cancel()
		if err != nil {
			t.storeFailed("append", err)
			t.mu.Lock()
			t.queue = append(queue, t.queue...) // in order, before the newer ones
			t.mu.Unlock()
		}
	}
}

func (t *eventTracker) storeFailed(op string, err error) {
	t.n.metrics.webhookStoreErrors.Inc()
	t.n.log.Warn("webhook store call failed; retrying", "op", op, "err", err)
}

// run is the tracker's loop: it syncs when poked (and at least every
// 100ms, for graces that end), and beats every NodeTTL/3. It ends with
// ctx; the node's stop makes the final flush (finish).
func (t *eventTracker) run(ctx context.Context) {
	tick := time.NewTicker(100 * time.Millisecond)
	defer tick.Stop()
	var lastBeat time.Time
	for {
		select {
		case <-ctx.Done():
			return
		case <-tick.C:
		case <-t.wake:
		}
		if time.Since(lastBeat) >= t.cfg.NodeTTL/3 {
			cctx, cancel := context.WithTimeout(ctx, t.n.cfg.BrokerTimeout)
			if err := t.store.Beat(cctx, t.n.id, t.cfg.NodeTTL); err != nil {
				t.storeFailed("beat", err)
			} else {
				lastBeat = time.Now()
			}
			cancel()
		}
		t.sync(ctx, false)
		t.deliverer.poke()
	}
}

// finish is the final flush, once every connection has ended: it records
// what is queued, releases everything this node holds (Reap of itself:
// the off-events of what no other node holds), and, if this node leads,
// delivers what it can before ctx ends.
func (t *eventTracker) finish(ctx context.Context) {
	t.sync(ctx, true)
	cctx, cancel := context.WithTimeout(ctx, t.n.cfg.BrokerTimeout)
	_, err := t.store.Reap(cctx, t.n.id, func(key string) *Event { return offEvent(key, time.Now()) })
	cancel()
	if err != nil {
		t.storeFailed("reap", err)
	}
	t.deliverer.drain(ctx)
}
