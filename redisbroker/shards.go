package redisbroker

import (
	"context"
	"errors"
	"fmt"
	"maps"
	"net"
	"slices"
	"strconv"

	"github.com/redis/rueidis"

	"github.com/heraldhq/herald"
)

// Client-side sharding (Options.Shards): each channel lives on the server
// whose rendezvous score for it is highest. A score is a hash of the
// server's identity (host:port/db, not its place in the list) mixed with a
// hash of the channel, so adding a server takes from each of the others
// only the channels it now scores highest on: about 1/(N+1) of them move,
// all to the new server, and reordering the list moves none.

// ringNode is one server's identity, hashed once.
type ringNode struct{ seed uint64 }

// rendezvous returns the index of the node with the highest score for
// channel.
func rendezvous(ring []ringNode, channel string) int {
	hc := fnv64(channel)
	best, bestScore := 0, uint64(0)
	for i, n := range ring {
		if s := mix64(n.seed ^ hc); i == 0 || s > bestScore {
			best, bestScore = i, s
		}
	}
	return best
}

// fnv64 is FNV-1a, 64 bits.
func fnv64(s string) uint64 {
	h := uint64(14695981039346656037)
	for i := 0; i < len(s); i++ {
		h ^= uint64(s[i])
		h *= 1099511628211
	}
	return h
}

// mix64 is MurmurHash3's finalizer: every input bit affects every output
// bit, so the scores of one channel on different servers are independent
// enough for rendezvous hashing.
func mix64(h uint64) uint64 {
	h ^= h >> 33
	h *= 0xff51afd7ed558ccd
	h ^= h >> 33
	h *= 0xc4ceb9fe1a85ec53
	h ^= h >> 33
	return h
}

// shardID names a server by what makes it the same server: its address
// and database, not its place in the list nor its password.
func shardID(co rueidis.ClientOption) string {
	addr := ""
	if len(co.InitAddress) > 0 {
		addr = co.InitAddress[0]
	}
	return addr + "/" + strconv.Itoa(co.SelectDB)
}

func (b *Broker) setUpShards() error {
	var shards []*shard
	defer func() { b.shardList.Store(&shards) }()
	seen := make(map[string]bool)
	for i, u := range b.opts.Shards {
		co, err := b.clientOption(u)
		if err != nil {
			return fmt.Errorf("%w (shard %d)", err, i)
		}
		id := shardID(co)
		if seen[id] {
			return fmt.Errorf("redisbroker: shard %s listed twice", id)
		}
		seen[id] = true
		// A standalone client of this one server (no Cluster or Sentinel
		// guessing), made even when the server is down now: a shard that is
		// down at start fails only its channels, and its pub/sub link
		// comes up when the server does.
		co.ForceSingleClient = true
		c, err := rueidis.NewClient(co)
		if c == nil {
			return fmt.Errorf("redisbroker: failed to create client of shard %s: %w", id, err)
		}
		b.closers = append(b.closers, c.Close)
		if err != nil {
			b.log.Warn("redis shard unreachable at start", "shard", id, "err", err)
		}
		shards = append(shards, newShard(b, id, c))
		b.ring = append(b.ring, ringNode{seed: mix64(fnv64(id))})
	}
	return nil
}

// Redis Cluster (Options.Cluster). Commands and scripts go through one
// rueidis cluster client, which routes each by the slot of its keys (a
// channel's keys share the slot of its hash tag, so every script touches
// one slot). Sharded pub/sub needs a connection to the master that owns a
// channel's slot, so each master is a shard with a pub/sub connection of
// its own: those found at New, and those that get slots later (found by
// applyRanges). A shard finds its master again (CLUSTER SLOTS) at each
// reconnect, so a failover to a replica is followed.

const clusterSlots = 16384

// slotOf is the Cluster slot of channel's keys and shard channel: CRC16
// (XMODEM) of the hash tag, which is the channel (channel names have no
// braces, nor has the prefix).
func slotOf(channel string) uint16 {
	var crc uint16
	for i := 0; i < len(channel); i++ {
		crc ^= uint16(channel[i]) << 8
		for range 8 {
			if crc&0x8000 != 0 {
				crc = crc<<1 ^ 0x1021
			} else {
				crc <<= 1
			}
		}
	}
	return crc % clusterSlots
}

// slotRange is a range of slots a master owns, from CLUSTER SLOTS.
type slotRange struct {
	first, last int
	addr, id    string
}

// clusterSlotRanges asks the cluster which master owns which slots. The
// cluster client sends the keyless CLUSTER SLOTS to any node it knows,
// replicas included, and one that is down (a dead replica stays listed
// until the cluster forgets it) fails the call: it is asked again, up to
// 8 times while ctx lasts, each time of a node picked anew.
func clusterSlotRanges(ctx context.Context, c rueidis.Client, defaultHost string) ([]slotRange, error) {
	var entries []rueidis.RedisMessage
	var err error
	for range 8 {
		entries, err = c.Do(ctx, c.B().ClusterSlots().Build()).ToArray()
		if _, redisErr := rueidis.IsRedisErr(err); err == nil || redisErr || ctx.Err() != nil {
			break
		}
	}
	if err != nil {
		return nil, fmt.Errorf("failed to read CLUSTER SLOTS: %w", err)
	}
	var out []slotRange
	for _, e := range entries {
		f, err := e.ToArray()
		if err != nil || len(f) < 3 {
			return nil, errors.New("unexpected CLUSTER SLOTS reply")
		}
		first, err1 := f[0].AsInt64()
		last, err2 := f[1].AsInt64()
		m, err3 := f[2].ToArray()
		if err := errors.Join(err1, err2, err3); err != nil || len(m) < 3 {
			return nil, fmt.Errorf("unexpected CLUSTER SLOTS reply: %v", err)
		}
		host, _ := m[0].ToString()
		port, _ := m[1].AsInt64()
		id, _ := m[2].ToString()
		if host == "" || host == "?" {
			host = defaultHost
		}
		out = append(out, slotRange{first: int(first), last: int(last), addr: net.JoinHostPort(host, strconv.FormatInt(port, 10)), id: id})
	}
	return out, nil
}

// controlShard is the shard whose connection hands control messages on in
// a Cluster: the first one that is up.
func (b *Broker) controlShard() *shard {
	for _, s := range b.allShards() {
		if s.healthy() == nil {
			return s
		}
	}
	return nil
}

func (b *Broker) setUpCluster() error {
	co, err := b.clientOption(b.opts.Cluster[0])
	if err != nil {
		return err
	}
	for _, u := range b.opts.Cluster[1:] {
		more, err := rueidis.ParseURL(u)
		if err != nil {
			return fmt.Errorf("redisbroker: failed to parse URL: %w", err)
		}
		co.InitAddress = append(co.InitAddress, more.InitAddress...)
	}
	client, err := b.newClient(co)
	if err != nil {
		return err
	}
	b.clusterCO = co
	b.defaultHost, _, _ = net.SplitHostPort(co.InitAddress[0])
	ctx, cancel := context.WithTimeout(context.Background(), b.opts.ConnectWait)
	defer cancel()
	ranges, err := clusterSlotRanges(ctx, client, b.defaultHost)
	if err != nil {
		return fmt.Errorf("redisbroker: %w", err)
	}
	table := make([]uint16, clusterSlots)
	covered := 0
	var shards []*shard
	byID := make(map[string]int) // master id -> index of its shard
	for _, r := range ranges {
		i, ok := byID[r.id]
		if !ok {
			i = len(shards)
			byID[r.id] = i
			shards = append(shards, b.newMasterShard(client, "slot "+strconv.Itoa(r.first), r))
		}
		for slot := max(r.first, 0); slot <= r.last && slot < clusterSlots; slot++ {
			table[slot] = uint16(i)
			covered++
		}
	}
	b.shardList.Store(&shards)
	if covered != clusterSlots {
		return fmt.Errorf("redisbroker: the cluster serves %d of %d slots (cluster_state is not ok)", covered, clusterSlots)
	}
	b.slots.Store(&table)
	return nil
}

// newMasterShard returns the shard of the master that serves r, named
// name, whose commands go through the cluster client cmd.
func (b *Broker) newMasterShard(cmd rueidis.Client, name string, r slotRange) *shard {
	s := newShard(b, name, cmd)
	s.nodeID, s.firstSlot = r.id, r.first
	s.dial = b.masterDialer(s, b.clusterCO)
	return s
}

// masterDialer returns a shard's dial: it reads the cluster's slots
// (updating the broker's slot table, see applyRanges), finds the master
// the shard follows, and returns a client of that master alone (the
// pub/sub connection is one server's), closed when the session ends. A
// shard follows its master by node id; when that id serves no slot any
// more (a replica took over, or its slots all moved), it follows the
// master of a slot it still has in the table, else of its first slot.
func (b *Broker) masterDialer(s *shard, co rueidis.ClientOption) func(context.Context) (rueidis.Client, func(), error) {
	return func(ctx context.Context) (rueidis.Client, func(), error) {
		cctx, cancel := context.WithTimeout(ctx, b.opts.ConnectWait)
		defer cancel()
		ranges, err := clusterSlotRanges(cctx, s.cmd, b.defaultHost)
		if err != nil {
			return nil, nil, err
		}
		addr := b.followMaster(s, ranges)
		if addr == "" {
			return nil, nil, fmt.Errorf("no master serves slot %d", s.firstSlot)
		}
		b.applyRanges(cctx, ranges)
		one := co
		one.InitAddress = []string{addr}
		one.ForceSingleClient = true
		c, err := rueidis.NewClient(one)
		if err != nil {
			if c != nil {
				c.Close()
			}
			return nil, nil, fmt.Errorf("failed to connect to the master at %s: %w", addr, err)
		}
		return c, c.Close, nil
	}
}

// followMaster finds the address of the master s follows in ranges, and
// adopts a new master id when its own serves nothing (see masterDialer).
func (b *Broker) followMaster(s *shard, ranges []slotRange) string {
	id := s.followed()
	for _, r := range ranges {
		if r.id == id {
			return r.addr
		}
	}
	slot := s.firstSlot
	table := *b.slots.Load()
	shards := b.allShards()
	for i, owner := range table {
		if shards[owner] == s {
			slot = i
			break
		}
	}
	for _, r := range ranges {
		if r.first <= slot && slot <= r.last {
			s.follow(r.id)
			b.log.Info("redis cluster: shard follows another master", "shard", s.name, "addr", r.addr)
			return r.addr
		}
	}
	return ""
}

// applyRanges brings the slot table up to date with ranges (CLUSTER
// SLOTS): each slot goes to the shard that follows its master. A master
// no shard follows takes the shard of its first slot's old master if that
// master serves nothing any more (a replica took over), else it gets a
// new shard (a master added to the cluster), which Run starts. The
// channels whose slot moved to another shard are moved there: taken out
// of the old shard's subscriptions, subscribed on the new one's
// connection (a new shard's first connection subscribes them), and handed
// to the node's reconnect check (their subscribers were closed when the
// old shard's link was lost; publications made while they moved are found
// as a gap). Called by each shard's dial, and by Subscribe when Redis says
// a channel's slot MOVED.
func (b *Broker) applyRanges(ctx context.Context, ranges []slotRange) {
	b.remapMu.Lock()
	defer b.remapMu.Unlock()
	shards := b.allShards()
	byID := make(map[string]uint16, len(shards))
	for i, s := range shards {
		s.mu.RLock()
		byID[s.nodeID] = uint16(i)
		s.mu.RUnlock()
	}
	serving := make(map[string]bool, len(ranges))
	for _, r := range ranges {
		serving[r.id] = true
	}
	table := slices.Clone(*b.slots.Load())
	added := false
	for _, r := range ranges {
		if _, ok := byID[r.id]; ok || r.first < 0 || r.first >= clusterSlots {
			continue
		}
		i := table[r.first]
		if old := shards[i]; !serving[old.followed()] {
			old.follow(r.id)
			b.log.Info("redis cluster: shard follows another master", "shard", old.name, "addr", r.addr)
		} else {
			i = uint16(len(shards))
			shards = append(shards, b.newMasterShard(shards[0].cmd, b.freeShardName(shards, r), r))
			added = true
			b.log.Info("redis cluster: a master got slots: new shard", "shard", shards[i].name, "addr", r.addr)
		}
		byID[r.id] = i
	}
	if added {
		// Before the table that refers to them (see shardOf); sessions
		// = 1: a new shard's first connection is a reconnect for the
		// channels that moved to it.
		for _, s := range shards[len(b.allShards()):] {
			s.sessions = 1
		}
		b.shardList.Store(&shards)
	}
	for _, r := range ranges {
		i := byID[r.id]
		for slot := max(r.first, 0); slot <= r.last && slot < clusterSlots; slot++ {
			table[slot] = i
		}
	}
	b.slots.Store(&table)
	if added {
		select {
		case b.addedSignal <- struct{}{}:
		default: // Run has a signal pending: it starts these too
		}
	}
	moved := make(map[string]bool)
	for _, s := range shards {
		for _, ch := range s.release() {
			moved[ch] = true
			b.shardOf(ch).adopt(ctx, ch)
		}
	}
	if len(moved) == 0 {
		return
	}
	b.log.Warn("redis cluster: channels moved to another master", "channels", len(moved))
	b.movedMu.Lock()
	if b.moved == nil {
		b.moved = make(map[string]bool)
	}
	maps.Copy(b.moved, moved)
	b.movedMu.Unlock()
	select {
	case b.movedSignal <- struct{}{}:
	default: // reportMoves has a signal pending: it takes these too
	}
}

// freeShardName names the new shard of the master that serves r: "slot
// N" of its first slot, unless a shard has that name (it had slot N at
// New), then with the master's id.
func (b *Broker) freeShardName(shards []*shard, r slotRange) string {
	name := "slot " + strconv.Itoa(r.first)
	for _, s := range shards {
		if s.name == name {
			return name + " (" + r.id + ")"
		}
	}
	return name
}

// reportMoves hands the channels that moved to another master to the
// node's reconnect check, from Run's goroutine (the check reads history,
// and applyRanges may run on a caller's goroutine, in Subscribe).
func (b *Broker) reportMoves(ctx context.Context) {
	for {
		select {
		case <-ctx.Done():
			return
		case <-b.movedSignal:
		}
		b.movedMu.Lock()
		moved := b.moved
		b.moved = nil
		b.movedMu.Unlock()
		if ph, ok := b.h.(herald.PartialBrokerHandler); ok {
			ph.HandlePartialReconnect(func(ch string) bool { return moved[ch] })
		} else {
			b.h.HandleReconnect()
		}
	}
}

// refreshSlots reads the cluster's slots and applies them (see
// applyRanges).
func (b *Broker) refreshSlots(ctx context.Context) error {
	ranges, err := clusterSlotRanges(ctx, b.allShards()[0].cmd, b.defaultHost)
	if err != nil {
		return err
	}
	b.applyRanges(ctx, ranges)
	return nil
}
