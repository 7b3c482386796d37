package redisbroker

import "github.com/heraldhq/herald"

// EventStoreForTest returns b's event store releasing chunk keys per reap
// script and calling hook (if not nil) between reading a reaped node's
// keys and releasing them.
func EventStoreForTest(b *Broker, chunk int, hook func(node string)) herald.EventStore {
	return &eventStore{b: b, chunk: chunk, testHookReap: hook}
}

// SlotOf is the Cluster slot of a channel's keys and shard channel.
func SlotOf(channel string) int { return int(slotOf(channel)) }
