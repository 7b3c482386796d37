package herald

import (
	"context"
	"hash/maphash"
	"sync"
)

// MemoryBroker is the single-node Broker: Publish delivers to the node inline,
// in the publisher's goroutine. It is the default when Config.Broker is nil.
type MemoryBroker struct {
	h BrokerHandler
	// locks serialise delivery per channel (striped by hash), which gives
	// each channel one total order even with concurrent publishers.
	locks [256]sync.Mutex
	seed  maphash.Seed
}

var _ Broker = (*MemoryBroker)(nil)

// NewMemoryBroker returns an in-memory broker.
func NewMemoryBroker() *MemoryBroker {
	return &MemoryBroker{seed: maphash.MakeSeed()}
}

// Register implements Broker.
func (b *MemoryBroker) Register(h BrokerHandler) { b.h = h }

// Run implements Broker: the memory broker has nothing to run, so it waits for ctx.
func (b *MemoryBroker) Run(ctx context.Context) error {
	<-ctx.Done()
	return ctx.Err()
}

// Subscribe implements Broker. Every channel is always delivered locally.
func (b *MemoryBroker) Subscribe(ctx context.Context, channel string) error { return nil }

// Unsubscribe implements Broker.
func (b *MemoryBroker) Unsubscribe(ctx context.Context, channel string) error { return nil }

// Publish implements Broker. It returns once pub is in every local
// subscriber's queue (not once it is written to their sockets).
func (b *MemoryBroker) Publish(ctx context.Context, pub *Publication, opts PublishOptions) (StreamPosition, error) {
	if err := ctx.Err(); err != nil {
		return StreamPosition{}, err
	}
	mu := &b.locks[maphash.String(b.seed, pub.Channel)%uint64(len(b.locks))]
	mu.Lock()
	b.h.HandlePublication(pub)
	mu.Unlock()
	return StreamPosition{}, nil
}

// PublishControl implements Broker.
func (b *MemoryBroker) PublishControl(ctx context.Context, data []byte) error {
	if err := ctx.Err(); err != nil {
		return err
	}
	b.h.HandleControl(data)
	return nil
}
