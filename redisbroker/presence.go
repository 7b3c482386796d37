package redisbroker

import (
	"context"
	"fmt"
	"strconv"
	"strings"
	"time"

	"github.com/redis/rueidis"

	"github.com/heraldhq/herald"
)

func (b *Broker) presenceKeys(channel string) []string {
	return []string{b.key(channel, "pz"), b.key(channel, "pi"), b.key(channel, "pu")}
}

// presenceValue is the info hash's value: "<len(user)>:<user><info>".
func presenceValue(p herald.ClientPresence) string {
	return strconv.Itoa(len(p.User)) + ":" + p.User + string(p.Info)
}

func parsePresenceValue(client, v string) (herald.ClientPresence, bool) {
	n, rest, ok := strings.Cut(v, ":")
	l, err := strconv.Atoi(n)
	if !ok || err != nil || l < 0 || l > len(rest) {
		return herald.ClientPresence{}, false
	}
	p := herald.ClientPresence{Client: client, User: rest[:l]}
	if info := rest[l:]; info != "" {
		p.Info = []byte(info)
	}
	return p, true
}

func (b *Broker) addExec(channel string, p herald.ClientPresence) rueidis.LuaExec {
	return rueidis.LuaExec{
		Keys: b.presenceKeys(channel),
		Args: []string{p.Client, p.User, presenceValue(p), ms(b.opts.PresenceTTL)},
	}
}

// AddPresence implements herald.PresenceManager. The entry expires after
// Options.PresenceTTL unless refreshed; this Broker's Run refreshes the
// entries it added until they are removed.
func (b *Broker) AddPresence(ctx context.Context, channel string, p herald.ClientPresence) error {
	e := b.addExec(channel, p)
	if err := execIdempotent(ctx, func() rueidis.RedisResult { return presenceAddScript.Exec(ctx, b.cmd(channel), e.Keys, e.Args) }).Error(); err != nil {
		return fmt.Errorf("redisbroker: failed to add presence: %w", err)
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

// RemovePresence implements herald.PresenceManager.
func (b *Broker) RemovePresence(ctx context.Context, channel, clientID string) error {
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
	if err := execIdempotent(ctx, func() rueidis.RedisResult {
		return presenceRemoveScript.Exec(ctx, b.cmd(channel), b.presenceKeys(channel), []string{clientID})
	}).Error(); err != nil {
		return fmt.Errorf("redisbroker: failed to remove presence: %w", err)
	}
	return nil
}

// Presence implements herald.PresenceManager.
func (b *Broker) Presence(ctx context.Context, channel string) (map[string]herald.ClientPresence, error) {
	kv, err := execIdempotent(ctx, func() rueidis.RedisResult {
		return presenceGetScript.Exec(ctx, b.cmd(channel), b.presenceKeys(channel), nil)
	}).AsStrSlice()
	if err != nil {
		return nil, fmt.Errorf("redisbroker: failed to read presence: %w", err)
	}
	out := make(map[string]herald.ClientPresence, len(kv)/2)
	for i := 0; i+1 < len(kv); i += 2 {
		if p, ok := parsePresenceValue(kv[i], kv[i+1]); ok {
			out[p.Client] = p
		}
	}
	return out, nil
}

// PresenceStats implements herald.PresenceManager: two HLENs, since the
// scripts keep a count of each user's clients.
func (b *Broker) PresenceStats(ctx context.Context, channel string) (herald.PresenceStats, error) {
	arr, err := execIdempotent(ctx, func() rueidis.RedisResult {
		return presenceStatsScript.Exec(ctx, b.cmd(channel), b.presenceKeys(channel), nil)
	}).AsIntSlice()
	if err != nil || len(arr) != 2 {
		return herald.PresenceStats{}, fmt.Errorf("redisbroker: failed to read presence stats: %v", err)
	}
	return herald.PresenceStats{Clients: int(arr[0]), Users: int(arr[1])}, nil
}

// refreshPresence re-adds this node's entries every PresenceTTL/3 until ctx
// is done, pipelined. A failed round is retried at the next tick; an entry
// survives up to two failed rounds.
func (b *Broker) refreshPresence(ctx context.Context) {
	t := time.NewTicker(b.opts.PresenceTTL / 3)
	defer t.Stop()
	for {
		select {
		case <-ctx.Done():
			return
		case <-t.C:
		}
		b.refreshRound(ctx)
	}
}

func (b *Broker) refreshRound(ctx context.Context) {
	b.refreshMu.Lock()
	defer b.refreshMu.Unlock()
	b.pmu.Lock()
	// Grouped by shard: a pipeline goes to one client. (A Cluster's
	// client splits it by slot itself.)
	execs := make(map[*shard][]rueidis.LuaExec)
	for ch, m := range b.local {
		s := b.shardOf(ch)
		for _, p := range m {
			execs[s] = append(execs[s], b.addExec(ch, p))
		}
	}
	b.pmu.Unlock()
	for s, list := range execs {
		b.refreshShard(ctx, s.cmd, list)
	}
}

func (b *Broker) refreshShard(ctx context.Context, client rueidis.Client, execs []rueidis.LuaExec) {
	for len(execs) > 0 {
		n := min(len(execs), 1000)
		for _, r := range presenceAddScript.ExecMulti(ctx, client, execs[:n]...) {
			if err := r.Error(); err != nil && ctx.Err() == nil {
				b.log.Warn("presence refresh failed", "err", err)
				break
			}
		}
		execs = execs[n:]
	}
}
