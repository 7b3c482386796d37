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
	queue []queued            // appends waiting (publications), in order
	// seq numbers the edges and appends in the order they happened, so
	// that sync sends them to the store in that order.
	seq  uint64
	wake chan struct{} // cap 1: a sync is wanted
	// lastBeat is when the last Beat that succeeded was begun: the store
	// keeps this node alive until NodeTTL after that, at the latest (the
	// answer may come much later). Beat's goroutine only.
	lastBeat time.Time

	syncMu sync.Mutex

	// shared: the store is shared with other nodes (the Broker's, or
	// Webhooks.Store), not one made in-process for this node alone.
	shared bool

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
	// upSeq and downSeq are the seq of those two moments.
	upSeq, downSeq uint64
	grace          bool  // users and channels wait Grace before releasing
	ev             Event // the on-event's fields (kind, key, user, channel, client, info)
}

// queued is an append waiting for the store, with its seq.
type queued struct {
	seq uint64
	ev  *Event
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
		cfg.NodeTTL = 20 * time.Second
	}
	if cfg.Timeout <= 0 {
		cfg.Timeout = 10 * time.Second
	}
	if cfg.BatchSize <= 0 {
		cfg.BatchSize = 100
	}
	if cfg.Timeout+n.cfg.BrokerTimeout >= cfg.NodeTTL {
		n.log.Warn("webhooks: Timeout plus BrokerTimeout reach NodeTTL: a delivery may outlast the lease, and another node deliver the same events (at least once still holds)",
			"timeout", cfg.Timeout, "broker_timeout", n.cfg.BrokerTimeout, "node_ttl", cfg.NodeTTL)
	}
	store, shared := cfg.Store, true
	if store == nil {
		if p, ok := n.broker.(EventStoreProvider); ok {
			store = p.EventStore()
		} else {
			store, shared = NewMemoryEventStore(), false
		}
	}
	t := &eventTracker{n: n, cfg: cfg, store: store, shared: shared, keys: make(map[string]*holding), wake: make(chan struct{}, 1)}
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
		t.seq++
		h.came, h.since, h.upSeq = true, time.Now(), t.seq
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
			t.seq++
			h.gone, h.downSeq = time.Now(), t.seq
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

// cacheMiss queues the cache_miss event of a Pusher cache channel.
func (t *eventTracker) cacheMiss(channel string) {
	t.append(&Event{ID: newID(), Kind: EventCacheMiss, Key: channelKey(channel), Time: time.Now().UTC().Truncate(time.Millisecond), Channel: channel})
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
	t.append(e)
}

// append queues e for the outbox, or drops it (counted, logged) when the
// queue is full.
func (t *eventTracker) append(e *Event) {
	t.mu.Lock()
	full := len(t.queue) >= maxQueuedEvents
	if !full {
		t.seq++
		t.queue = append(t.queue, queued{t.seq, e})
	}
	t.mu.Unlock()
	if full {
		t.n.metrics.webhookEvents.WithLabelValues("dropped").Inc()
		t.n.log.Warn("webhook event dropped: the store is not keeping up", "channel", e.Channel)
		return
	}
	t.poke()
}

// storeOp is one store call sync decided on: a Hold, a Release or an
// Append, at its seq.
type storeOp struct {
	seq  uint64
	kind byte // 'h', 'r', 'a'
	key  string
	h    *holding
	ev   *Event
}

// sync brings the store up to date with this node's holdings and queued
// appends, in the order they happened (seq), so that the events of one
// key keep their order. final: the node stops; releases are left to the
// Reap of itself that follows. A failed store call ends the round; what
// it and the calls after it were to do is left for the next one, so
// nothing overtakes it.
func (t *eventTracker) sync(ctx context.Context, final bool) {
	t.syncMu.Lock()
	defer t.syncMu.Unlock()
	ops := t.plan(final)
	for i, op := range ops {
		if err := t.exec(ctx, op); err != nil {
			t.storeFailed(map[byte]string{'h': "hold", 'r': "release", 'a': "append"}[op.kind], err)
			t.requeue(ops[i:])
			return
		}
	}
}

// plan decides the round's store calls, sorted by seq.
func (t *eventTracker) plan(final bool) []storeOp {
	now := time.Now()
	var ops []storeOp
	t.mu.Lock()
	defer t.mu.Unlock()
	for key, h := range t.keys {
		if h.held {
			h.came = false // a return within the grace: nothing to tell
		}
		switch {
		case !h.held && (h.count > 0 || h.came):
			on := h.ev
			on.ID, on.Time = newID(), h.since.UTC().Truncate(time.Millisecond)
			ops = append(ops, storeOp{seq: h.upSeq, kind: 'h', key: key, h: h, ev: &on})
			h.came = false
			if h.count == 0 && !h.grace && !final {
				// A member already gone: its release follows its hold.
				ops = append(ops, storeOp{seq: h.downSeq, kind: 'r', key: key, h: h, ev: offEvent(key, h.gone)})
			}
		case h.held && h.count == 0 && !final && (!h.grace || now.Sub(h.gone) >= t.cfg.Grace):
			seq := h.downSeq
			if h.grace { // released now, after everything queued before
				t.seq++
				seq = t.seq
			}
			ops = append(ops, storeOp{seq: seq, kind: 'r', key: key, h: h, ev: offEvent(key, h.gone)})
		case !h.held && h.count == 0:
			delete(t.keys, key)
		}
	}
	for _, q := range t.queue {
		ops = append(ops, storeOp{seq: q.seq, kind: 'a', ev: q.ev})
	}
	t.queue = nil
	slices.SortFunc(ops, func(a, b storeOp) int { return cmp.Compare(a.seq, b.seq) })
	return ops
}

// exec makes one store call and records its success.
func (t *eventTracker) exec(ctx context.Context, op storeOp) error {
	cctx, cancel := context.WithTimeout(ctx, t.n.cfg.BrokerTimeout)
	defer cancel()
	var err error
	switch op.kind {
	case 'h':
		err = t.store.Hold(cctx, t.n.id, op.key, op.ev)
	case 'r':
		if op.ev == nil {
			return nil // not a key of ours (cannot happen): nothing to tell
		}
		err = t.store.Release(cctx, t.n.id, op.key, op.ev)
	case 'a':
		err = t.store.Append(cctx, op.ev)
	}
	if err != nil || op.kind == 'a' {
		return err
	}
	t.mu.Lock()
	defer t.mu.Unlock()
	op.h.held = op.kind == 'h'
	if op.kind == 'r' && op.h.count == 0 && !op.h.came && t.keys[op.key] == op.h {
		delete(t.keys, op.key)
	}
	return nil
}

// requeue keeps the calls of a round cut short by a failure for the next
// one: holds are planned again (came), releases stay due, appends go back
// to the front of the queue, in order.
func (t *eventTracker) requeue(ops []storeOp) {
	t.mu.Lock()
	defer t.mu.Unlock()
	var back []queued
	for _, op := range ops {
		switch op.kind {
		case 'h':
			op.h.came = true
		case 'a':
			back = append(back, queued{op.seq, op.ev})
		}
	}
	t.queue = append(back, t.queue...)
}

func (t *eventTracker) storeFailed(op string, err error) {
	t.n.metrics.webhookStoreErrors.Inc()
	t.n.log.Warn("webhook store call failed; retrying", "op", op, "err", err)
}

// run is the tracker's loop: it syncs when poked (and at least every
// 100ms, for graces that end); a goroutine of its own beats every
// NodeTTL/3, so that a long sync never makes the node look dead. It ends
// with ctx; the node's stop makes the final flush (finish).
func (t *eventTracker) run(ctx context.Context) {
	beats := make(chan struct{})
	go func() { defer close(beats); t.beat(ctx) }()
	defer func() { <-beats }()
	tick := time.NewTicker(100 * time.Millisecond)
	defer tick.Stop()
	for {
		select {
		case <-ctx.Done():
			return
		case <-tick.C:
		case <-t.wake:
		}
		t.sync(ctx, false)
		t.deliverer.poke()
	}
}

// beat tells the store this node is alive, every NodeTTL/3. A node whose
// beats stopped reaching the store for NodeTTL may have been taken for
// dead and reaped by another (its keys released, their off-events sent):
// it then holds everything again, so that what it still holds is online
// again, and what leaves later is told. The gap is measured from the start
// of the last successful Beat, not its answer: a late answer does not
// move the store's expiry, so it must not hide a lapse.
func (t *eventTracker) beat(ctx context.Context) {
	tick := time.NewTicker(t.cfg.NodeTTL / 3)
	defer tick.Stop()
	for {
		begun := time.Now()
		cctx, cancel := context.WithTimeout(ctx, t.n.cfg.BrokerTimeout)
		err := t.store.Beat(cctx, t.n.id, t.cfg.NodeTTL)
		cancel()
		switch {
		case err != nil:
			t.storeFailed("beat", err)
		default:
			if !t.lastBeat.IsZero() && time.Since(t.lastBeat) >= t.cfg.NodeTTL {
				t.n.log.Warn("webhooks: this node's beats stopped for longer than the node TTL; holding everything again")
				t.mu.Lock()
				for _, h := range t.keys {
					if h.held {
						h.held, h.came = false, true
					}
				}
				t.mu.Unlock()
				t.poke()
			}
			t.lastBeat = begun
		}
		select {
		case <-ctx.Done():
			return
		case <-tick.C:
		}
	}
}

// finish is the final flush, once every connection has ended: it waits
// out the grace of what the last connections held (awaitGrace), records
// what is queued, releases everything this node holds (Reap of itself:
// the off-events of what no other node holds), and, if this node leads,
// delivers what it can before ctx ends.
func (t *eventTracker) finish(ctx context.Context) {
	t.awaitGrace(ctx)
	t.sync(ctx, true)
	cctx, cancel := context.WithTimeout(ctx, t.n.cfg.BrokerTimeout)
	_, err := t.store.Reap(cctx, t.n.id, func(key string) *Event { return offEvent(key, time.Now()) })
	cancel()
	if err != nil {
		t.storeFailed("reap", err)
	}
	t.deliverer.drain(ctx)
	t.deliverer.resign(ctx)
}

// awaitGrace waits, with a store shared with other nodes, until the grace
// of every user and channel whose last connection or subscriber here went
// away has passed, as it would on a node that keeps running: a drain or a
// restart sends clients to other nodes, which hold them again within the
// grace, so that this node's release then tells nothing (no offline and
// online again). Meanwhile the tracker's loop releases what comes due. It
// spends at most half of what is left of ctx, so that the flush keeps
// time. An in-process store has no other node to move to: no wait.
func (t *eventTracker) awaitGrace(ctx context.Context) {
	if !t.shared {
		return
	}
	var until time.Time
	t.mu.Lock()
	for _, h := range t.keys {
		if h.grace && h.count == 0 && !h.gone.IsZero() {
			if end := h.gone.Add(t.cfg.Grace); end.After(until) {
				until = end
			}
		}
	}
	t.mu.Unlock()
	if dl, ok := ctx.Deadline(); ok {
		if half := time.Now().Add(time.Until(dl) / 2); half.Before(until) {
			until = half
		}
	}
	d := time.Until(until)
	if d <= 0 {
		return
	}
	timer := time.NewTimer(d)
	defer timer.Stop()
	select {
	case <-ctx.Done():
	case <-timer.C:
	}
}
