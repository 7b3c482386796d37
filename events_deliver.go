package herald

import (
	"context"
	"errors"
	"fmt"
	"sync"
	"time"
)

// deliverer sends the outbox to Webhooks.Deliver, from the node that
// leads (EventStore.Lead): in order, in batches, each event removed from
// the outbox (Ack) only once a Deliver call that carried it returned nil.
// After a failure it sends the first event alone, with exponential
// backoff, until it passes (or is older than RetryFor and dropped), then
// batches again.
//
// Ownership: run is one goroutine (the node's Run); drain runs in the
// node's stop after run ended... or concurrently with it: mu makes them
// take turns.
type deliverer struct {
	t    *eventTracker
	wake chan struct{}

	mu        sync.Mutex // one delivery at a time
	leadUntil time.Time  // this node leads until then (under mu)
	failures  int        // consecutive failures (under mu)
	retryAt   time.Time  // no attempt before (under mu)
	lastReap  time.Time  // (under mu)

	statsMu sync.Mutex
	stats   WebhookStats
}

// WebhookStats is what the webhooks did on this node, for the dashboard
// and Node.WebhookStats.
type WebhookStats struct {
	Enabled bool `json:"enabled"`
	// Leading: this node delivers (one node of the cluster at a time).
	Leading bool `json:"leading"`
	// Pending is the outbox's length as this node last saw it, up to
	// BatchSize (only the leader reads it).
	Pending   int    `json:"pending"`
	Delivered uint64 `json:"delivered"`
	Dropped   uint64 `json:"dropped"`
	// Failures counts failed Deliver calls; Retrying is set while the
	// last one failed.
	Failures    uint64    `json:"failures"`
	Retrying    bool      `json:"retrying"`
	LastError   string    `json:"last_error,omitempty"`
	LastErrorAt time.Time `json:"last_error_at,omitzero"`
	LastOK      time.Time `json:"last_ok,omitzero"`
}

func (d *deliverer) init(t *eventTracker) {
	d.t = t
	d.wake = make(chan struct{}, 1)
	d.stats.Enabled = true
}

func (d *deliverer) poke() {
	select {
	case d.wake <- struct{}{}:
	default:
	}
}

// run delivers until ctx ends: when poked (the tracker recorded
// something), and every 250ms for events other nodes recorded.
func (d *deliverer) run(ctx context.Context) {
	tick := time.NewTicker(250 * time.Millisecond)
	defer tick.Stop()
	for {
		select {
		case <-ctx.Done():
			return
		case <-tick.C:
		case <-d.wake:
		}
		for d.step(ctx) {
		}
	}
}

// drain delivers what it can before ctx ends, if this node leads: the
// final flush of a stopping node.
func (d *deliverer) drain(ctx context.Context) {
	for ctx.Err() == nil && d.step(ctx) {
	}
}

// step makes one delivery attempt and reports whether another should
// follow at once (a batch went out and more may wait).
func (d *deliverer) step(ctx context.Context) bool {
	d.mu.Lock()
	defer d.mu.Unlock()
	t := d.t
	now := time.Now()
	if !now.Before(d.leadUntil.Add(-t.cfg.NodeTTL * 2 / 3)) { // renew every NodeTTL/3
		cctx, cancel := context.WithTimeout(ctx, t.n.cfg.BrokerTimeout)
		ok, err := t.store.Lead(cctx, t.n.id, t.cfg.NodeTTL)
		cancel()
		if err != nil {
			t.storeFailed("lead", err)
			ok = false
		}
		if ok {
			d.leadUntil = now.Add(t.cfg.NodeTTL)
		} else {
			d.leadUntil = time.Time{}
		}
		d.setStats(func(s *WebhookStats) { s.Leading = ok })
	}
	if d.leadUntil.IsZero() {
		return false
	}
	if now.Sub(d.lastReap) >= t.cfg.NodeTTL/3 {
		d.lastReap = now
		cctx, cancel := context.WithTimeout(ctx, t.n.cfg.BrokerTimeout)
		nodes, err := t.store.Reap(cctx, "", func(key string) *Event { return offEvent(key, time.Now()) })
		cancel()
		if err != nil {
			t.storeFailed("reap", err)
		} else if len(nodes) > 0 {
			t.n.log.Warn("webhooks: released what dead nodes held", "nodes", nodes)
		}
	}
	if now.Before(d.retryAt) {
		return false
	}
	size := t.cfg.BatchSize
	if d.failures > 0 {
		size = 1
	}
	cctx, cancel := context.WithTimeout(ctx, t.n.cfg.BrokerTimeout)
	recs, err := t.store.Pending(cctx, size)
	cancel()
	if err != nil {
		t.storeFailed("pending", err)
		return false
	}
	d.setStats(func(s *WebhookStats) { s.Pending = len(recs) })
	// Events past RetryFor leave the outbox undelivered, counted.
	expired := 0
	for expired < len(recs) && now.Sub(recs[expired].Event.Time) > t.cfg.RetryFor {
		expired++
	}
	if expired > 0 {
		if !d.ack(ctx, recs[expired-1].Pos) {
			return false
		}
		t.n.metrics.webhookEvents.WithLabelValues("dropped").Add(float64(expired))
		d.setStats(func(s *WebhookStats) { s.Dropped += uint64(expired) })
		t.n.log.Error("webhook events dropped: not delivered within RetryFor", "events", expired, "first", recs[0].Event.ID)
		d.failures, d.retryAt = 0, time.Time{}
		return true
	}
	if len(recs) == 0 {
		return false
	}
	events := make([]Event, len(recs))
	for i, r := range recs {
		events[i] = r.Event
	}
	err = d.deliver(ctx, events)
	if err != nil {
		d.failures++
		backoff := min(time.Second<<min(d.failures-1, 10), 10*time.Minute)
		d.retryAt = time.Now().Add(backoff)
		t.n.metrics.webhookDeliveries.WithLabelValues("failed").Inc()
		t.n.log.Warn("webhook delivery failed; retrying", "events", len(events), "retry_in", backoff, "err", err)
		d.setStats(func(s *WebhookStats) {
			s.Failures++
			s.Retrying, s.LastError, s.LastErrorAt = true, err.Error(), time.Now()
		})
		return false
	}
	t.n.metrics.webhookDeliveries.WithLabelValues("ok").Inc()
	if !d.ack(ctx, recs[len(recs)-1].Pos) {
		return false // delivered, not removed: sent again (de-duplicated by id)
	}
	t.n.metrics.webhookEvents.WithLabelValues("delivered").Add(float64(len(events)))
	d.failures, d.retryAt = 0, time.Time{}
	d.setStats(func(s *WebhookStats) {
		s.Delivered += uint64(len(events))
		s.Retrying, s.LastOK = false, time.Now()
	})
	return len(recs) == size
}

// deliver makes one Deliver call, bounded by Timeout; a panic is a
// failure.
func (d *deliverer) deliver(ctx context.Context, events []Event) (err error) {
	cctx, cancel := context.WithTimeout(ctx, d.t.cfg.Timeout)
	defer cancel()
	defer func() {
		if p := recover(); p != nil {
			err = fmt.Errorf("Deliver panicked: %v", p)
		}
	}()
	err = d.t.cfg.Deliver(cctx, events)
	if err != nil && cctx.Err() != nil && ctx.Err() == nil && !errors.Is(err, context.DeadlineExceeded) {
		err = fmt.Errorf("%w (no answer within %v)", err, d.t.cfg.Timeout)
	}
	return err
}

func (d *deliverer) ack(ctx context.Context, pos string) bool {
	cctx, cancel := context.WithTimeout(ctx, d.t.n.cfg.BrokerTimeout)
	defer cancel()
	if err := d.t.store.Ack(cctx, pos); err != nil {
		d.t.storeFailed("ack", err)
		return false
	}
	return true
}

func (d *deliverer) setStats(f func(*WebhookStats)) {
	d.statsMu.Lock()
	f(&d.stats)
	d.statsMu.Unlock()
}

// WebhookStats returns what the webhooks did on this node (Enabled false
// when they are off).
func (n *Node) WebhookStats() WebhookStats {
	if n.events == nil {
		return WebhookStats{}
	}
	d := &n.events.deliverer
	d.statsMu.Lock()
	defer d.statsMu.Unlock()
	return d.stats
}
