package herald

import (
	"context"
	"crypto/rand"
	"encoding/base64"
	"hash/maphash"
	"sync"
	"time"
)

// MemoryBroker is the single-node Broker: Publish delivers to the node inline,
// in the publisher's goroutine, and history lives in this process. It is the
// default when Config.Broker is nil.
//
// A channel's history stream gets a random epoch when it is created (at its
// first publish or history read) and keeps it, with its top offset, for the
// life of the process, even after all its publications expired: so a new
// epoch means exactly a restart, and a client recovering across one is told
// that continuity was lost. (The cost is a few dozen bytes per channel that
// ever had history.)
type MemoryBroker struct {
	h    BrokerHandler
	seed maphash.Seed
	// stripes serialise publishes per channel (by hash): history append and
	// delivery of one channel happen in one total order, even with
	// concurrent publishers.
	stripes [256]memStripe
	now     func() time.Time
}

type memStripe struct {
	mu      sync.Mutex
	streams map[string]*memStream
	// idem maps channel + "\x00" + key to the first result of that publish.
	idem map[string]idemEntry
}

type memStream struct {
	epoch string
	top   uint64
	// pubs holds the retained publications in offset order, with the time
	// each was published; pubs[0] is the oldest.
	pubs  []*Publication
	times []time.Time
}

type idemEntry struct {
	res     PublishResult
	expires time.Time
}

var (
	_ Broker         = (*MemoryBroker)(nil)
	_ BatchPublisher = (*MemoryBroker)(nil)
)

// NewMemoryBroker returns an in-memory broker.
func NewMemoryBroker() *MemoryBroker {
	return &MemoryBroker{seed: maphash.MakeSeed(), now: time.Now}
}

// Register implements Broker.
func (b *MemoryBroker) Register(h BrokerHandler) { b.h = h }

// Run implements Broker. It drops expired history and idempotency keys once
// a second until ctx is done, so idle channels do not hold memory.
func (b *MemoryBroker) Run(ctx context.Context) error {
	t := time.NewTicker(time.Second)
	defer t.Stop()
	for {
		select {
		case <-ctx.Done():
			return ctx.Err()
		case <-t.C:
			b.sweep()
		}
	}
}

func (b *MemoryBroker) sweep() {
	now := b.now()
	for i := range b.stripes {
		st := &b.stripes[i]
		st.mu.Lock()
		for k, e := range st.idem {
			if now.After(e.expires) {
				delete(st.idem, k)
			}
		}
		for _, s := range st.streams {
			s.expire(now)
		}
		st.mu.Unlock()
	}
}

// Subscribe implements Broker. Every channel is always delivered locally.
func (b *MemoryBroker) Subscribe(ctx context.Context, channel string) error { return nil }

// Unsubscribe implements Broker.
func (b *MemoryBroker) Unsubscribe(ctx context.Context, channel string) error { return nil }

func (b *MemoryBroker) stripe(channel string) *memStripe {
	return &b.stripes[maphash.String(b.seed, channel)%uint64(len(b.stripes))]
}

// Publish implements Broker. It returns once pub is in history (if kept) and
// in every local subscriber's queue — not once it is written to their sockets.
func (b *MemoryBroker) Publish(ctx context.Context, pub *Publication, opts PublishOptions) (PublishResult, error) {
	if err := ctx.Err(); err != nil {
		return PublishResult{}, err
	}
	st := b.stripe(pub.Channel)
	st.mu.Lock()
	defer st.mu.Unlock()
	now := b.now()
	var idemKey string
	if opts.IdempotencyKey != "" {
		idemKey = pub.Channel + "\x00" + opts.IdempotencyKey
		if e, ok := st.idem[idemKey]; ok && now.Before(e.expires) {
			res := e.res
			res.Duplicate = true
			return res, nil
		}
	}
	var res PublishResult
	if opts.HistorySize > 0 && pub.Kind == KindPublication {
		s := st.stream(pub.Channel)
		s.top++
		pub.Offset, pub.Epoch = s.top, s.epoch
		s.pubs = append(s.pubs, pub)
		s.times = append(s.times, now.Add(opts.HistoryTTL))
		if n := len(s.pubs) - opts.HistorySize; n > 0 {
			clear(s.pubs[:n])
			s.pubs, s.times = s.pubs[n:], s.times[n:]
		}
		s.expire(now)
		res.StreamPosition = StreamPosition{Offset: s.top, Epoch: s.epoch}
	}
	if idemKey != "" {
		if st.idem == nil {
			st.idem = make(map[string]idemEntry)
		}
		st.idem[idemKey] = idemEntry{res: res, expires: now.Add(opts.IdempotencyWindow)}
	}
	b.h.HandlePublication(pub)
	return res, nil
}

// PublishBatch implements BatchPublisher: Publish for each in turn, in the
// order of pubs. There is no round trip to save; what a batch saves is on
// the client's side of the node: the replies to a client's pipelined
// publishes go out in one write instead of one each (v1Session.flushPubs),
// a write fewer per publication where each has few subscribers (in the
// many-rooms benchmark the highest passing rate went from 15,000 to 20,000
// a second: docs/benchmarks.md).
func (b *MemoryBroker) PublishBatch(ctx context.Context, pubs []*Publication, opts []PublishOptions, res []PublishResult, errs []error) {
	for i, pub := range pubs {
		res[i], errs[i] = b.Publish(ctx, pub, opts[i])
	}
}

// stream returns the channel's stream, creating it. st.mu must be held.
func (st *memStripe) stream(channel string) *memStream {
	if st.streams == nil {
		st.streams = make(map[string]*memStream)
	}
	s := st.streams[channel]
	if s == nil {
		s = &memStream{epoch: newEpoch()}
		st.streams[channel] = s
	}
	return s
}

// expire drops publications whose TTL has passed. times holds expiry times.
func (s *memStream) expire(now time.Time) {
	n := 0
	for n < len(s.times) && !now.Before(s.times[n]) {
		n++
	}
	if n > 0 {
		clear(s.pubs[:n])
		s.pubs, s.times = s.pubs[n:], s.times[n:]
	}
}

// History implements Broker.
func (b *MemoryBroker) History(ctx context.Context, channel string, opts HistoryOptions) (HistoryResult, error) {
	if err := ctx.Err(); err != nil {
		return HistoryResult{}, err
	}
	st := b.stripe(channel)
	st.mu.Lock()
	defer st.mu.Unlock()
	s := st.stream(channel) // fixes the epoch a subscriber will track
	s.expire(b.now())
	res := HistoryResult{Position: StreamPosition{Offset: s.top, Epoch: s.epoch}}
	if len(s.pubs) > 0 {
		res.Oldest = s.pubs[0].Offset
	}
	pubs := s.pubs
	if opts.Since != nil {
		if opts.Since.Epoch != s.epoch {
			return res, nil
		}
		// Offsets in pubs are consecutive: index by arithmetic.
		skip := 0
		if len(pubs) > 0 && opts.Since.Offset >= pubs[0].Offset {
			skip = int(min(opts.Since.Offset-pubs[0].Offset+1, uint64(len(pubs))))
		}
		pubs = pubs[skip:]
	}
	if opts.Limit >= 0 && len(pubs) > opts.Limit {
		if opts.Reverse {
			pubs = pubs[len(pubs)-opts.Limit:]
		} else {
			pubs = pubs[:opts.Limit]
		}
	}
	out := make([]*Publication, len(pubs))
	copy(out, pubs)
	if opts.Reverse {
		for i, j := 0, len(out)-1; i < j; i, j = i+1, j-1 {
			out[i], out[j] = out[j], out[i]
		}
	}
	res.Publications = out
	return res, nil
}

// PublishControl implements Broker.
func (b *MemoryBroker) PublishControl(ctx context.Context, data []byte) error {
	if err := ctx.Err(); err != nil {
		return err
	}
	b.h.HandleControl(data)
	return nil
}

func newEpoch() string {
	var e [6]byte
	_, _ = rand.Read(e[:])
	return base64.RawURLEncoding.EncodeToString(e[:])
}
