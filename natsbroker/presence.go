package natsbroker

import (
	"context"
	"encoding/base64"
	"encoding/json"
	"errors"
	"fmt"

	"github.com/nats-io/nats.go/jetstream"

	"github.com/heraldhq/herald"
)

// Presence lives in the KV bucket Prefix_presence, one key per client and
// channel: base64url(channel) "." base64url(client), value the JSON of the
// herald.ClientPresence. The bucket's TTL expires entries not refreshed.

func presenceKey(channel, client string) string {
	return presenceFilter(channel) + base64.RawURLEncoding.EncodeToString([]byte(client))
}

func presenceFilter(channel string) string {
	return base64.RawURLEncoding.EncodeToString([]byte(channel)) + "."
}

// AddPresence implements herald.PresenceManager: a KV Put, refreshed by
// this Broker's Run every PresenceTTL/3 until removed.
func (b *Broker) AddPresence(ctx context.Context, channel string, p herald.ClientPresence) error {
	if b.presKV == nil {
		return ErrNoJetStream
	}
	if err := b.Healthy(); err != nil {
		return fmt.Errorf("natsbroker: failed to add presence: %w", err)
	}
	v, err := json.Marshal(p)
	if err != nil {
		return fmt.Errorf("natsbroker: failed to encode presence: %w", err)
	}
	if _, err := b.presKV.Put(ctx, presenceKey(channel, p.Client), v); err != nil {
		b.storeLost(err)
		return fmt.Errorf("natsbroker: failed to add presence: %w", err)
	}
	b.pmu.Lock()
	m := b.local[channel]
	if m == nil {
		m = make(map[string]herald.ClientPresence)
		b.local[channel] = m
	}
	m[p.Client] = p
	b.pmu.Unlock()
	return nil
}

// RemovePresence implements herald.PresenceManager: a KV Delete, which
// leaves a marker until the bucket's TTL. (A purge of the key would leave
// none, but it is a JetStream API request, which a replicated stream
// electing a leader does not answer; tried, a node's shutdown in
// TestClusterServerKilled then outlasted its 5 s once. A delete is a
// publish, which nats.go retries.)
func (b *Broker) RemovePresence(ctx context.Context, channel, clientID string) error {
	if b.presKV == nil {
		return ErrNoJetStream
	}
	b.refreshMu.RLock()
	defer b.refreshMu.RUnlock()
	b.pmu.Lock()
	if m := b.local[channel]; m != nil {
		delete(m, clientID)
		if len(m) == 0 {
			delete(b.local, channel)
		}
	}
	b.pmu.Unlock()
	if err := b.Healthy(); err != nil {
		// Forgotten here, so no refresh brings it back; the bucket's TTL
		// removes it from NATS.
		return fmt.Errorf("natsbroker: failed to remove presence: %w", err)
	}
	if err := b.presKV.Delete(ctx, presenceKey(channel, clientID)); err != nil {
		b.storeLost(err)
		return fmt.Errorf("natsbroker: failed to remove presence: %w", err)
	}
	return nil
}

// presSubject is the subject of a presence key in the bucket's stream.
func (b *Broker) presSubject(key string) string {
	return "$KV." + b.opts.Prefix + "_presence." + key
}

// Presence implements herald.PresenceManager: a KV watch of the channel's
// keys, read up to the current state (an ordered consumer, one per call),
// then checked against the keys the bucket's stream holds now, one stream
// info request. The watch alone is not enough: it ends when a message
// says nothing is pending, and a key refreshed during the watch made
// nats-server 2.9.10 say so early (3 reads in 6,000 got one entry of
// three while one of them was put again and again; a live client then
// looked gone). A key the stream holds that the watch gave neither as an entry
// nor as deleted is read on its own; an entry the watch gave whose key is
// gone since is left out.
func (b *Broker) Presence(ctx context.Context, channel string) (map[string]herald.ClientPresence, error) {
	if b.presKV == nil {
		return nil, ErrNoJetStream
	}
	if err := b.Healthy(); err != nil {
		return nil, fmt.Errorf("natsbroker: failed to read presence: %w", err)
	}
	seen, deleted, err := b.watchPresence(ctx, channel)
	if err != nil {
		return nil, err
	}
	info, err := b.presStream.Info(ctx, jetstream.WithSubjectFilter(b.presSubject(presenceFilter(channel)+"*")))
	if err != nil {
		b.storeLost(err)
		return nil, fmt.Errorf("natsbroker: failed to read presence: %w", err)
	}
	out := make(map[string]herald.ClientPresence, len(info.State.Subjects))
	for subj := range info.State.Subjects {
		if p, ok := seen[subj]; ok {
			out[p.Client] = p
			continue
		}
		if deleted[subj] {
			continue
		}
		m, err := b.presStream.GetLastMsgForSubject(ctx, subj)
		switch {
		case errors.Is(err, jetstream.ErrMsgNotFound):
			continue // removed since
		case err != nil:
			b.storeLost(err)
			return nil, fmt.Errorf("natsbroker: failed to read presence: %w", err)
		case m.Header.Get("KV-Operation") != "":
			continue // a delete marker: removed since
		}
		var p herald.ClientPresence
		if json.Unmarshal(m.Data, &p) == nil {
			out[p.Client] = p
		}
	}
	return out, nil
}

// watchPresence reads the channel's presence keys with a KV watch, up to
// where it says it is caught up: the entries, and the keys whose last
// message is a delete marker (a client removed, whose marker stays until
// the bucket's TTL), both keyed by their stream subject.
func (b *Broker) watchPresence(ctx context.Context, channel string) (seen map[string]herald.ClientPresence, deleted map[string]bool, err error) {
	w, err := b.presKV.Watch(ctx, presenceFilter(channel)+"*")
	if err != nil {
		b.storeLost(err)
		return nil, nil, fmt.Errorf("natsbroker: failed to read presence: %w", err)
	}
	defer func() { _ = w.Stop() }()
	seen, deleted = make(map[string]herald.ClientPresence), make(map[string]bool)
	for {
		select {
		case <-ctx.Done():
			return nil, nil, ctx.Err()
		case e, ok := <-w.Updates():
			if !ok {
				return nil, nil, errors.New("natsbroker: presence watch ended early")
			}
			if e == nil { // caught up
				return seen, deleted, nil
			}
			subj := b.presSubject(e.Key())
			if e.Operation() != jetstream.KeyValuePut {
				deleted[subj] = true
				continue
			}
			var p herald.ClientPresence
			if err := json.Unmarshal(e.Value(), &p); err != nil {
				continue
			}
			seen[subj] = p
		}
	}
}

// PresenceStats implements herald.PresenceManager. It reads the whole set
// (as Presence does) and counts distinct users.
func (b *Broker) PresenceStats(ctx context.Context, channel string) (herald.PresenceStats, error) {
	set, err := b.Presence(ctx, channel)
	if err != nil {
		return herald.PresenceStats{}, err
	}
	users := make(map[string]struct{})
	for _, p := range set {
		if p.User != "" {
			users[p.User] = struct{}{}
		}
	}
	return herald.PresenceStats{Clients: len(set), Users: len(users)}, nil
}

// refreshPresence re-puts this node's entries, holding refreshMu so that a
// concurrent RemovePresence cannot be undone.
func (b *Broker) refreshPresence(ctx context.Context) {
	if b.Healthy() != nil {
		return // the next round, once serving again, puts them back
	}
	b.refreshMu.Lock()
	defer b.refreshMu.Unlock()
	b.pmu.Lock()
	type entry struct {
		key string
		p   herald.ClientPresence
	}
	var entries []entry
	for ch, m := range b.local {
		for _, p := range m {
			entries = append(entries, entry{presenceKey(ch, p.Client), p})
		}
	}
	b.pmu.Unlock()
	for _, e := range entries {
		v, _ := json.Marshal(e.p)
		if _, err := b.presKV.Put(ctx, e.key, v); err != nil {
			if ctx.Err() == nil {
				b.log.Warn("presence refresh failed", "err", err)
			}
			return
		}
	}
}
