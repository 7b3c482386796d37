package redisbroker

import (
	"context"
	"errors"
	"fmt"
	"math/rand/v2"
	"slices"
	"strconv"
	"strings"
	"sync"
	"time"
	"unsafe"

	"github.com/redis/rueidis"

	"github.com/heraldhq/herald/internal/pubcodec"
)

// A shard is one pub/sub link of a Broker and the channels it carries: the
// only one with a single Redis, one per server with Options.Shards, one per
// master with Options.Cluster. Each shard connects, fails and reconnects on
// its own, and its outages concern only its channels.
//
// Goroutines: run (started by Broker.Run) owns the pub/sub connection;
// rueidis calls onMessage and onSubscription from that connection's reader
// goroutine, one message at a time, so delivery for a channel is
// sequential and in publish order. Every other method is safe for
// concurrent use.
//
// Locks: mu guards subs, unsubs, nodeID and the connection state, and is held
// (read) across a HandlePublication call. It is never held across a Redis
// call.
type shard struct {
	b    *Broker
	name string // for logs and errors: the server's address, or the master's first slot
	// cmd runs this shard's channels' commands and scripts: the server's
	// client, or with a Cluster the cluster client (which routes by slot).
	cmd rueidis.Client
	// firstSlot is the first slot the shard had at New (Cluster only; see
	// masterDialer).
	firstSlot int
	// dial returns the client whose Dedicate gives a pub/sub connection,
	// and a function to release it once the connection is done with.
	dial func(ctx context.Context) (rueidis.Client, func(), error)
	// sessions counts pub/sub connections made (run's goroutine only,
	// once run has started).
	sessions int

	mu      sync.RWMutex
	subs    map[string]struct{} // herald channels subscribed on this shard
	unsubs  map[string]int      // SUNSUBSCRIBEs sent and not yet confirmed (Cluster)
	conn    *pubsubConn         // nil while down
	up      chan struct{}       // closed when conn goes up; replaced when it goes down
	lastErr error               // why the connection is down
	nodeID  string              // the Cluster master the shard follows (see masterDialer)
}

// pubsubConn is one live pub/sub connection; down is closed when it is lost.
type pubsubConn struct {
	dc    rueidis.DedicatedClient
	down  chan struct{}
	moved chan struct{} // closed when Redis unsubscribed a channel by itself (a slot moved)
	once  sync.Once
}

func newShard(b *Broker, name string, cmd rueidis.Client) *shard {
	s := &shard{
		b: b, name: name, cmd: cmd,
		subs:    make(map[string]struct{}),
		unsubs:  make(map[string]int),
		up:      make(chan struct{}),
		lastErr: errors.New("not connected yet"),
	}
	s.dial = func(context.Context) (rueidis.Client, func(), error) { return cmd, func() {}, nil }
	return s
}

// followed returns the id of the Cluster master s follows.
func (s *shard) followed() string {
	s.mu.RLock()
	defer s.mu.RUnlock()
	return s.nodeID
}

// follow makes s follow the Cluster master id from its next connection.
func (s *shard) follow(id string) {
	s.mu.Lock()
	s.nodeID = id
	s.mu.Unlock()
}

// owns reports whether channel travels on s (for the handler's partial
// outage calls).
func (s *shard) owns(channel string) bool { return s.b.shardOf(channel) == s }

func (s *shard) healthy() error {
	s.mu.RLock()
	defer s.mu.RUnlock()
	if s.conn != nil {
		return nil
	}
	return fmt.Errorf("%w: %s: %v", ErrUnavailable, s.name, s.lastErr)
}

const (
	minBackoff = 50 * time.Millisecond
	maxBackoff = 5 * time.Second
)

// run keeps the shard's pub/sub connection up until ctx is done: when it
// drops it tells the handler (an outage), reconnects with exponential
// backoff (50ms to 5s, jittered), re-subscribes every channel and tells the
// handler again (a reconnect).
func (s *shard) run(ctx context.Context) error {
	backoff := minBackoff
	for {
		if s.b.closed.Load() {
			return ErrClosed
		}
		start := time.Now()
		wasUp, err := s.session(ctx)
		if ctx.Err() != nil {
			return ctx.Err()
		}
		if wasUp {
			// Logged once per outage; the attempts that follow are Debug.
			s.b.log.Warn("redis pub/sub connection lost", "shard", s.name, "err", err)
			s.b.outage(s, err)
		} else {
			s.b.log.Debug("redis pub/sub connection failed", "shard", s.name, "err", err)
		}
		if time.Since(start) > maxBackoff {
			backoff = minBackoff // it was up for a while: retry soon
		}
		d := backoff/2 + rand.N(backoff/2+1)
		backoff = min(2*backoff, maxBackoff)
		select {
		case <-ctx.Done():
			return ctx.Err()
		case <-time.After(d):
		}
	}
}

// session opens a pub/sub connection, subscribes to the control channel
// and every channel in subs, marks the shard up and
// waits until the connection is lost (returning why) or ctx is done.
// wasUp reports that the connection got that far.
func (s *shard) session(ctx context.Context) (wasUp bool, err error) {
	client, releaseClient, err := s.dial(ctx)
	if err != nil {
		return false, err
	}
	defer releaseClient()
	dc, release := client.Dedicate()
	pc := &pubsubConn{dc: dc, down: make(chan struct{}), moved: make(chan struct{})}
	lost := dc.SetPubSubHooks(rueidis.PubSubHooks{
		OnMessage:      s.onMessage,
		OnSubscription: func(sub rueidis.PubSubSubscription) { s.onSubscription(pc, sub) },
	})
	defer func() {
		s.setDown(pc, err)
		dc.Close()
		release()
		for range lost { // hooks are not called once lost is closed
		}
	}()
	n, err := s.subscribeAll(ctx, dc)
	if err != nil {
		return false, err
	}
	s.mu.Lock()
	s.conn = pc
	close(s.up)
	s.mu.Unlock()
	s.b.log.Info("redis pub/sub connected", "shard", s.name, "channels", n)
	if s.sessions++; s.sessions > 1 {
		// A reconnect: what was published while the connection was down
		// was not delivered here. The node finds the gaps (it reads
		// history on the command connection, not this one).
		s.b.reconnect(s)
	}
	select {
	case <-ctx.Done():
		return true, ctx.Err()
	case <-pc.moved:
		return true, errors.New("redis unsubscribed a channel by itself (its cluster slot moved)")
	case err, ok := <-lost:
		if !ok || err == nil {
			err = errors.New("connection closed")
		}
		return true, err
	}
}

// subscribeAll subscribes the control channel and every channel in subs
// on dc, and returns how many channels.
func (s *shard) subscribeAll(ctx context.Context, dc rueidis.DedicatedClient) (int, error) {
	s.mu.RLock()
	chans := make([]string, 0, len(s.subs))
	for ch := range s.subs {
		chans = append(chans, ch)
	}
	s.mu.RUnlock()
	// Every shard's connection subscribes the control channel: see
	// Broker.PublishControl.
	cmds := rueidis.Commands{dc.B().Subscribe().Channel(s.b.ctrlChan).Build()}
	if s.b.cluster {
		// SSUBSCRIBE takes channels of one slot.
		bySlot := make(map[uint16][]string)
		for _, ch := range chans {
			bySlot[slotOf(ch)] = append(bySlot[slotOf(ch)], s.b.pubChan(ch))
		}
		for _, names := range bySlot {
			cmds = append(cmds, dc.B().Ssubscribe().Channel(names...).Build())
		}
	} else {
		for chunk := range slices.Chunk(chans, 1000) {
			names := make([]string, len(chunk))
			for i, ch := range chunk {
				names[i] = s.b.pubChan(ch)
			}
			cmds = append(cmds, dc.B().Subscribe().Channel(names...).Build())
		}
	}
	// One command at a time: rueidis returns from Do(SUBSCRIBE) on Redis'
	// confirmation (DoMulti was seen to return early on a dead server).
	for _, cmd := range cmds {
		// Each command its own ConnectWait: many channels over a slow
		// link must not fail every session (and never come back).
		sctx, cancel := context.WithTimeout(ctx, s.b.opts.ConnectWait)
		err := dc.Do(sctx, cmd).Error()
		cancel()
		if err != nil {
			return 0, fmt.Errorf("failed to subscribe: %w", err)
		}
	}
	return len(chans), nil
}

func (s *shard) setDown(pc *pubsubConn, err error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.conn == pc {
		s.conn = nil
		s.up = make(chan struct{})
	}
	s.lastErr = err
	clear(s.unsubs) // a new connection starts with nothing pending
	close(pc.down)
}

// onSubscription runs in the pub/sub connection's reader goroutine. In a
// Cluster, Redis unsubscribes a shard channel by itself when its slot moves
// to another master: that ends the session (an outage of this shard) unless
// the SUNSUBSCRIBE was ours.
func (s *shard) onSubscription(pc *pubsubConn, sub rueidis.PubSubSubscription) {
	if sub.Kind != "sunsubscribe" {
		return
	}
	ch, ok := s.b.chanOf(sub.Channel)
	if !ok {
		return
	}
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.unsubs[ch] > 0 {
		if s.unsubs[ch]--; s.unsubs[ch] == 0 {
			delete(s.unsubs, ch)
		}
		return
	}
	if _, subscribed := s.subs[ch]; subscribed {
		pc.once.Do(func() { close(pc.moved) })
	}
}

// onMessage runs in the pub/sub connection's reader goroutine.
func (s *shard) onMessage(m rueidis.PubSubMessage) {
	if m.Channel == s.b.ctrlChan {
		// In a Cluster a PUBLISH reaches every master, so each shard's
		// connection gets every control message: the first shard whose
		// link is up hands them on, so that they keep coming while any
		// master is reachable.
		if !s.b.cluster || s.b.controlShard() == s {
			s.b.h.HandleControl([]byte(m.Message))
		}
		return
	}
	ch, ok := s.b.chanOf(m.Channel)
	if !ok {
		return
	}
	off, body, ok := strings.Cut(m.Message, " ")
	offset, err := strconv.ParseUint(off, 10, 64)
	var epoch string
	if ok && err == nil && offset != 0 {
		epoch, body, ok = strings.Cut(body, " ")
	}
	if !ok || err != nil {
		s.b.log.Warn("malformed publication from redis", "channel", ch)
		return
	}
	pub, err := pubcodec.Decode(ch, offset, unsafe.Slice(unsafe.StringData(body), len(body))) // Decode copies
	if err != nil {
		s.b.log.Warn("malformed publication from redis", "channel", ch, "err", err)
		return
	}
	pub.Epoch = epoch
	// Holding mu (read) across the handler makes Unsubscribe wait for a
	// delivery in progress: nothing of a channel is delivered after
	// Unsubscribe returns. The handler never calls the broker.
	s.mu.RLock()
	defer s.mu.RUnlock()
	if _, subscribed := s.subs[ch]; subscribed { // else an UNSUBSCRIBE is in flight
		s.b.h.HandlePublication(pub)
	}
}

// withConn calls f with the live pub/sub connection, waiting up to
// ConnectWait for one, and again on the next connection if f fails because
// the current one was lost.
func (s *shard) withConn(ctx context.Context, f func(dc rueidis.DedicatedClient) error) error {
	timer := time.NewTimer(s.b.opts.ConnectWait)
	defer timer.Stop()
	var lastErr error
	for {
		s.mu.RLock()
		pc, up := s.conn, s.up
		s.mu.RUnlock()
		var wait <-chan struct{} = up
		if pc != nil {
			err := f(pc.dc)
			if err == nil || ctx.Err() != nil {
				return err
			}
			if _, redisErr := rueidis.IsRedisErr(err); redisErr {
				return err // Redis refused the command: retrying will not help
			}
			lastErr = err
			wait = pc.down // the connection broke: wait for the next one
		}
		select {
		case <-wait:
		case <-ctx.Done():
			return ctx.Err()
		case <-timer.C:
			if err := s.healthy(); err != nil {
				return err
			}
			return fmt.Errorf("%w: %w", ErrUnavailable, lastErr)
		}
	}
}

// subscribe: see Broker.Subscribe.
func (s *shard) subscribe(ctx context.Context, channel string) error {
	s.mu.Lock()
	s.subs[channel] = struct{}{}
	s.mu.Unlock()
	name := s.b.pubChan(channel)
	err := s.withConn(ctx, func(dc rueidis.DedicatedClient) error {
		if s.b.cluster {
			return dc.Do(ctx, dc.B().Ssubscribe().Channel(name).Build()).Error()
		}
		return dc.Do(ctx, dc.B().Subscribe().Channel(name).Build()).Error()
	})
	if err != nil {
		s.mu.Lock()
		delete(s.subs, channel)
		s.mu.Unlock()
		return err
	}
	return nil
}

// unsubscribe: see Broker.Unsubscribe. It does nothing if s does not have
// the channel.
func (s *shard) unsubscribe(ctx context.Context, channel string) error {
	s.mu.Lock()
	if _, ok := s.subs[channel]; !ok {
		s.mu.Unlock()
		return nil
	}
	delete(s.subs, channel)
	pc := s.conn
	if pc != nil && s.b.cluster {
		s.unsubs[channel]++
	}
	s.mu.Unlock()
	if pc == nil {
		return nil // the next connection will not subscribe it
	}
	name := s.b.pubChan(channel)
	if s.b.cluster {
		return pc.dc.Do(ctx, pc.dc.B().Sunsubscribe().Channel(name).Build()).Error()
	}
	return pc.dc.Do(ctx, pc.dc.B().Unsubscribe().Channel(name).Build()).Error()
}

// release takes out of s's subscriptions the channels that the slot table
// now gives to another shard, and returns them (see applyRanges). Their
// shard channels stay subscribed on s's connection until it ends, but
// their publications go to the other master, and onMessage drops what
// s no longer has.
func (s *shard) release() []string {
	s.mu.Lock()
	defer s.mu.Unlock()
	var out []string
	for ch := range s.subs {
		if s.b.shardOf(ch) != s {
			delete(s.subs, ch)
			out = append(out, ch)
		}
	}
	return out
}

// adopt adds channel to s's subscriptions, and subscribes it on s's
// connection if it is up (else the next connection does).
func (s *shard) adopt(ctx context.Context, channel string) {
	s.mu.Lock()
	s.subs[channel] = struct{}{}
	pc := s.conn
	s.mu.Unlock()
	if pc == nil {
		return
	}
	sctx, cancel := context.WithTimeout(ctx, s.b.opts.ConnectWait)
	defer cancel()
	if err := pc.dc.Do(sctx, pc.dc.B().Ssubscribe().Channel(s.b.pubChan(channel)).Build()).Error(); err != nil {
		// The connection is failing: its session ends, and the next one
		// subscribes everything in subs.
		s.b.log.Warn("redis cluster: failed to subscribe a moved channel", "shard", s.name, "channel", channel, "err", err)
	}
}
