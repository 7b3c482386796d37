package redisbroker

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"math"
	"strconv"
	"strings"
	"time"

	"github.com/redis/rueidis"

	"github.com/heraldhq/herald"
)

// EventStore returns the webhooks' outbox and shared state in Redis, under
// the broker's prefix: with it, undelivered events survive any node, for as
// long as Redis keeps its data (see the package documentation, "Webhooks").
// It uses the broker's command connection and needs no Run. Every call
// returns a handle on the same store. With Options.Shards it lives on the
// first server; in a Cluster, in the slot of the hash tag {webhooks}.
func (b *Broker) EventStore() herald.EventStore { return &eventStore{b: b, chunk: reapChunk} }

var (
	_ herald.EventStoreProvider = (*Broker)(nil)
	_ herald.EventStore         = (*eventStore)(nil)
)

// reapChunk is how many keys of a reaped node one script releases: a node
// that held 100,000 users blocks Redis for 100 short scripts, not one
// long one.
const reapChunk = 1000

// eventStore implements herald.EventStore with the keys listed in doc.go.
// Its fields are set once; it is safe for concurrent use.
type eventStore struct {
	b     *Broker
	chunk int // keys per reap script (reapChunk; tests set less)
	// testHookReap, when set (by tests), runs between reading a node's
	// keys and the script that releases them: the window in which other
	// nodes may hold or release those keys.
	testHookReap func(node string)
}

// ekey returns the key of one of the store's structures. The hash tag
// {webhooks} puts them all in one Cluster slot. No channel's key can be
// one of them: channel names have no braces (protocol.ValidChannel), so a
// channel key P:{webhooks}:... is channel "webhooks"'s, and those end in
// m, h, i:*, pz, pi or pu.
func (s *eventStore) ekey(kind string) string {
	return s.b.opts.Prefix + ":{webhooks}:" + kind
}

// client runs the store's commands: the first shard's (a Cluster's client
// routes them to the slot of {webhooks}).
func (s *eventStore) client() rueidis.Client { return s.b.allShards()[0].cmd }

func (s *eventStore) holdersKey(key string) string { return s.ekey("k:" + key) }
func (s *eventStore) nodeKey(node string) string   { return s.ekey("n:" + node) }

func encodeEvent(e *herald.Event) (string, error) {
	if e == nil {
		return "", errors.New("no event")
	}
	data, err := json.Marshal(e)
	if err != nil {
		return "", fmt.Errorf("failed to encode event %q: %w", e.ID, err)
	}
	return string(data), nil
}

func checkNodeKey(node, key string) error {
	if node == "" {
		return errors.New("empty node")
	}
	if key == "" {
		return errors.New("empty key")
	}
	return nil
}

// Hold implements herald.EventStore: one script (SADD to the key's
// holders and the node's keys, XADD on if the holders were empty).
func (s *eventStore) Hold(ctx context.Context, node, key string, on *herald.Event) error {
	if err := s.holdRelease(ctx, eventsHoldScript, node, key, on); err != nil {
		return fmt.Errorf("redisbroker: failed to hold %q: %w", key, err)
	}
	return nil
}

// Release implements herald.EventStore: one script (SREM from the key's
// holders and the node's keys, XADD off if no holder is left).
func (s *eventStore) Release(ctx context.Context, node, key string, off *herald.Event) error {
	if err := s.holdRelease(ctx, eventsReleaseScript, node, key, off); err != nil {
		return fmt.Errorf("redisbroker: failed to release %q: %w", key, err)
	}
	return nil
}

func (s *eventStore) holdRelease(ctx context.Context, script *rueidis.Lua, node, key string, e *herald.Event) error {
	if err := checkNodeKey(node, key); err != nil {
		return err
	}
	data, err := encodeEvent(e)
	if err != nil {
		return err
	}
	keys := []string{s.holdersKey(key), s.nodeKey(node), s.ekey("out")}
	args := []string{node, key, data}
	// Safe to run twice: the second run finds the first one's holder
	// change and appends nothing.
	return execIdempotent(ctx, func() rueidis.RedisResult { return script.Exec(ctx, s.client(), keys, args) }).Error()
}

// Append implements herald.EventStore: one script, so that the events are
// contiguous in the outbox. It is not run again after a network error (it
// may have run): the caller's retry may then append them twice, which
// the events' IDs let the backend notice.
func (s *eventStore) Append(ctx context.Context, events ...*herald.Event) error {
	if len(events) == 0 {
		return nil
	}
	args := make([]string, len(events))
	for i, e := range events {
		data, err := encodeEvent(e)
		if err != nil {
			return fmt.Errorf("redisbroker: failed to append event %d: %w", i, err)
		}
		args[i] = data
	}
	if err := eventsAppendScript.Exec(ctx, s.client(), []string{s.ekey("out")}, args).Error(); err != nil {
		return fmt.Errorf("redisbroker: failed to append events: %w", err)
	}
	return nil
}

// Beat implements herald.EventStore: the node's score in the beats zset
// becomes Redis' clock plus ttl, so that expiry does not depend on the
// nodes' clocks.
func (s *eventStore) Beat(ctx context.Context, node string, ttl time.Duration) error {
	if node == "" {
		return errors.New("redisbroker: failed to beat: empty node")
	}
	if ttl < time.Millisecond {
		return fmt.Errorf("redisbroker: failed to beat: ttl %v is under 1ms", ttl)
	}
	keys, args := []string{s.ekey("beats")}, []string{node, ms(ttl)}
	if err := execIdempotent(ctx, func() rueidis.RedisResult { return eventsBeatScript.Exec(ctx, s.client(), keys, args) }).Error(); err != nil {
		return fmt.Errorf("redisbroker: failed to beat: %w", err)
	}
	return nil
}

// Reap implements herald.EventStore. It is not one script: off is Go, so
// for each node Reap reads up to 1000 of its keys (SRANDMEMBER), calls off
// for each, and runs a script that releases them, appending the off event
// of each key that then has no holder (checked in the script, so a Hold by
// another node in between is honoured and its key gets no event). It
// repeats until the node holds nothing, then forgets its beat. Each key's
// release is atomic and makes at most one event; off may be called for
// keys that get none. When reaping expired nodes (node empty), a node that
// beats again is left alone from then on (it may have lost some keys
// already), and a node that another Reap finishes is not reported by this
// one.
func (s *eventStore) Reap(ctx context.Context, node string, off func(key string) *herald.Event) ([]string, error) {
	if off == nil {
		return nil, errors.New("redisbroker: failed to reap: nil off func")
	}
	nodes := []string{node}
	onlyExpired := node == ""
	if onlyExpired {
		var err error
		nodes, err = execIdempotent(ctx, func() rueidis.RedisResult {
			return eventsExpiredScript.Exec(ctx, s.client(), []string{s.ekey("beats")}, nil)
		}).AsStrSlice()
		if err != nil {
			return nil, fmt.Errorf("redisbroker: failed to list expired nodes: %w", err)
		}
	}
	var reaped []string
	for _, n := range nodes {
		done, err := s.reapNode(ctx, n, onlyExpired, off)
		if err != nil {
			return reaped, fmt.Errorf("redisbroker: failed to reap node %q: %w", n, err)
		}
		if done {
			reaped = append(reaped, n)
		}
	}
	return reaped, nil
}

// reapNode releases node's keys in chunks; it reports whether this call
// finished the node (false: the node beat again or another Reap finished
// it).
func (s *eventStore) reapNode(ctx context.Context, node string, onlyExpired bool, off func(string) *herald.Event) (bool, error) {
	mode := "0"
	if onlyExpired {
		mode = "1"
	}
	for {
		if err := ctx.Err(); err != nil {
			return false, err
		}
		held, err := s.client().Do(ctx, s.client().B().Srandmember().Key(s.nodeKey(node)).Count(int64(s.chunk)).Build()).AsStrSlice()
		if err != nil {
			return false, err
		}
		keys := make([]string, 3, 3+len(held))
		keys[0], keys[1], keys[2] = s.ekey("beats"), s.ekey("out"), s.nodeKey(node)
		args := make([]string, 2, 2+2*len(held))
		args[0], args[1] = node, mode
		for _, k := range held {
			data, err := encodeEvent(off(k))
			if err != nil {
				return false, fmt.Errorf("off event of %q: %w", k, err)
			}
			keys = append(keys, s.holdersKey(k))
			args = append(args, k, data)
		}
		if s.testHookReap != nil {
			s.testHookReap(node)
		}
		// Safe to run twice: keys already released make no event.
		r, err := execIdempotent(ctx, func() rueidis.RedisResult { return eventsReapScript.Exec(ctx, s.client(), keys, args) }).AsInt64()
		if err != nil {
			return false, err
		}
		switch r {
		case -1:
			return false, nil
		case 1:
			return true, nil
		}
	}
}

// Lead implements herald.EventStore: one script on a string holding the
// leader's name, with a PX expiry by Redis' clock.
func (s *eventStore) Lead(ctx context.Context, node string, ttl time.Duration) (bool, error) {
	if node == "" {
		return false, errors.New("redisbroker: failed to lead: empty node")
	}
	if ttl < time.Millisecond {
		return false, fmt.Errorf("redisbroker: failed to lead: ttl %v is under 1ms", ttl)
	}
	keys, args := []string{s.ekey("lead")}, []string{node, ms(ttl)}
	r, err := execIdempotent(ctx, func() rueidis.RedisResult { return eventsLeadScript.Exec(ctx, s.client(), keys, args) }).AsInt64()
	if err != nil {
		return false, fmt.Errorf("redisbroker: failed to lead: %w", err)
	}
	return r == 1, nil
}

// Pending implements herald.EventStore: XRANGE - + COUNT max. Positions are
// the stream's entry IDs ("<ms>-<seq>"). An entry this package did not
// write (no valid JSON in field "e") is an error naming its ID: XDEL it to
// let the outbox move on.
func (s *eventStore) Pending(ctx context.Context, max int) ([]herald.EventRecord, error) {
	if max < 1 {
		return nil, fmt.Errorf("redisbroker: failed to read pending events: max %d is under 1", max)
	}
	cmd := s.client().B().Xrange().Key(s.ekey("out")).Start("-").End("+").Count(int64(max)).Build()
	entries, err := s.client().Do(ctx, cmd).AsXRange()
	if err != nil {
		return nil, fmt.Errorf("redisbroker: failed to read pending events: %w", err)
	}
	recs := make([]herald.EventRecord, len(entries))
	for i, e := range entries {
		recs[i].Pos = e.ID
		if err := json.Unmarshal([]byte(e.FieldValues["e"]), &recs[i].Event); err != nil {
			return nil, fmt.Errorf("redisbroker: malformed event at %s in %s: %w", e.ID, s.ekey("out"), err)
		}
	}
	return recs, nil
}

// Ack implements herald.EventStore: XTRIM MINID with the position just
// after pos, which removes every entry up to and including pos and nothing
// appended after it.
func (s *eventStore) Ack(ctx context.Context, pos string) error {
	next, err := nextStreamID(pos)
	if err != nil {
		return fmt.Errorf("redisbroker: failed to ack: %w", err)
	}
	out := s.ekey("out")
	cmd := s.client().B().Xtrim().Key(out).Minid().Threshold(next).Build()
	if next == "" { // pos is the last possible ID: nothing can follow it
		cmd = s.client().B().Xtrim().Key(out).Maxlen().Threshold("0").Build()
	}
	if err := s.client().Do(ctx, cmd).Error(); err != nil {
		return fmt.Errorf("redisbroker: failed to ack: %w", err)
	}
	return nil
}

// nextStreamID returns the stream entry ID just after id ("<ms>-<seq>"),
// or "" when id is the largest one.
func nextStreamID(id string) (string, error) {
	a, b, ok := strings.Cut(id, "-")
	ms, err1 := strconv.ParseUint(a, 10, 64)
	seq, err2 := strconv.ParseUint(b, 10, 64)
	if !ok || err1 != nil || err2 != nil {
		return "", fmt.Errorf("position %q is not a stream ID <ms>-<seq>", id)
	}
	switch {
	case seq < math.MaxUint64:
		seq++
	case ms < math.MaxUint64:
		ms, seq = ms+1, 0
	default:
		return "", nil
	}
	return strconv.FormatUint(ms, 10) + "-" + strconv.FormatUint(seq, 10), nil
}
