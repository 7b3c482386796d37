package herald

import (
	"context"
	"encoding/json"
	"time"
)

// Webhooks tell the application's backend what happened: a user came
// online or went offline, a channel became occupied or vacated, a member
// joined or left a channel's presence, a client published. Hooks ask;
// webhooks tell, after the fact, and can be trusted:
//
//   - One event per happening, however many nodes there are: the nodes
//     agree through the EventStore which of them holds a user or a
//     channel, and only the change of the cluster-wide state is an event.
//   - Ordered: events leave from one outbox, in the order the store
//     recorded them, so the events of one user or channel arrive in the
//     order they happened.
//   - At least once: an event leaves the outbox only once Deliver
//     returned nil for it; failures are retried with exponential backoff
//     (1s doubling to 10 minutes) for RetryFor. Each event has an ID to
//     de-duplicate on: a delivery that succeeded but was not recorded
//     (the delivering node crashed) is sent again.
//   - Durable as the store: with the Redis or NATS broker the outbox is in
//     Redis or JetStream, and survives any node; with the in-memory store
//     it is in the process, and a crash loses what was not delivered.
//   - Crashes noticed: every node beats in the store; the users, channels
//     and members of a node that stopped beating for NodeTTL are released
//     by another node, so an "offline" event is not lost with its node.
//
// Grace: a user or channel whose last connection here went away is
// released only after Grace, so a page reload or a drain that moves
// connections to another node does not make it flap offline and online.
// A node that stops waits out those graces before its final release (with
// a store shared with other nodes; within half of what is left of its
// Shutdown's deadline). Members and publications are not delayed.
//
// One node at a time delivers (a lease in the store, renewed before each
// call); the others record. Events are in Event; the batch order is
// the outbox's.
type Webhooks struct {
	// Deliver sends a batch of events, in order, and returns nil once the
	// backend has them all; an error means it has none (the batch is
	// retried, the first event alone until it passes, so that one event
	// the backend refuses holds up the rest only until RetryFor). Nil
	// turns webhooks off. It is called by one goroutine at a time, with a
	// context that ends at Timeout.
	Deliver func(ctx context.Context, events []Event) error

	// Store is the outbox and the nodes' shared state. Nil means the
	// Broker's (see EventStoreProvider: redisbroker and natsbroker have
	// one), or an in-process one (NewMemoryEventStore) for the in-memory
	// broker: then a crash loses the events not yet delivered.
	Store EventStore

	// Users turns on user.online and user.offline: the first connection
	// of a user anywhere in the cluster, and the last one gone. Channel,
	// member and publication events are per namespace (Namespace's
	// ChannelEvents, MemberEvents, PublishEvents).
	Users bool

	// Grace is how long a user or a channel stays held after its last
	// connection or subscriber here went away. Zero means 5s.
	Grace time.Duration
	// RetryFor is how long an event is retried before it is dropped (and
	// counted in herald_webhook_events_total{result="dropped"}, logged).
	// Zero means 24 hours.
	RetryFor time.Duration
	// NodeTTL is how long a node that stopped beating is taken for alive;
	// past it another node releases what it held. It is also the
	// delivery lease, renewed before each Deliver call: keep it above
	// Timeout plus Config.BrokerTimeout. Zero means 20s.
	NodeTTL time.Duration
	// Timeout bounds each Deliver call. Zero means 10s.
	Timeout time.Duration
	// BatchSize caps the events of one Deliver call. Zero means 100.
	BatchSize int
}

// Event kinds.
const (
	EventUserOnline      = "user.online"
	EventUserOffline     = "user.offline"
	EventChannelOccupied = "channel.occupied"
	EventChannelVacated  = "channel.vacated"
	EventMemberAdded     = "member.added"
	EventMemberRemoved   = "member.removed"
	EventPublication     = "publication"
	// EventCacheMiss: a client subscribed to a Pusher cache channel
	// (PusherHandler) that had no event to give it. Sent for every such
	// subscription, on the channel's key.
	EventCacheMiss = "cache_miss"
)

// Event is one thing that happened, as a webhook tells it.
type Event struct {
	// ID is unique: de-duplicate on it.
	ID   string `json:"id"`
	Kind string `json:"kind"`
	// Key orders events: the events of one key arrive in the order they
	// happened. "user:<id>" for user events, "channel:<name>" for the
	// others.
	Key  string    `json:"key"`
	Time time.Time `json:"time"`
	// User is the user of user and member events, and the publisher of a
	// publication (empty for anonymous clients).
	User    string `json:"user,omitempty"`
	Channel string `json:"channel,omitempty"`
	// Client is the connection of member and publication events.
	Client string `json:"client,omitempty"`
	// Info is a member's info (member.added).
	Info json.RawMessage `json:"info,omitempty"`
	// Data is a text publication's JSON; Binary a binary one's bytes
	// (base64 in JSON).
	Data   json.RawMessage `json:"data,omitempty"`
	Binary []byte          `json:"binary,omitempty"`
	// Offset is a publication's offset in a channel with history.
	Offset uint64 `json:"offset,omitempty"`
}

// EventStore is the webhooks' outbox and the state the nodes share: who
// holds each key, which nodes are alive, who delivers. Each method is one
// atomic step in the store (Reap: one per key), safe for concurrent use
// by many nodes. The
// public conformance suite brokertest.RunEventStore states the contract
// each implementation must pass.
type EventStore interface {
	// Hold records that node holds key (a user's connection, a channel's
	// subscriber, a member); if no node held it, it appends on to the
	// outbox, in the same step. Holding a key node holds already changes
	// nothing.
	Hold(ctx context.Context, node, key string, on *Event) error
	// Release records that node no longer holds key; if no node holds it
	// now, it appends off, in the same step. Releasing a key node does
	// not hold changes nothing.
	Release(ctx context.Context, node, key string, off *Event) error
	// Append appends events to the outbox, in order.
	Append(ctx context.Context, events ...*Event) error
	// Beat records that node is alive for ttl more.
	Beat(ctx context.Context, node string, ttl time.Duration) error
	// Reap releases every key of node (when not empty), or else of every
	// node whose last beat has expired, as Release does: for a key no node
	// holds then it appends off(key). A reaped node's beat is forgotten.
	// It returns the nodes reaped. Each key is released atomically, but
	// not the node as a whole: off may be called for a key that then gets
	// no event (a live node held it meanwhile).
	Reap(ctx context.Context, node string, off func(key string) *Event) ([]string, error)
	// Lead makes node the deliverer for ttl if no other node is, or
	// extends its lead, and reports whether node leads. A node that stops
	// leading must call Lead again before it delivers.
	Lead(ctx context.Context, node string, ttl time.Duration) (bool, error)
	// Pending returns up to max events of the outbox, oldest first, each
	// with its position.
	Pending(ctx context.Context, max int) ([]EventRecord, error)
	// Ack removes from the outbox every event up to and including pos.
	// Acking a position already removed changes nothing.
	Ack(ctx context.Context, pos string) error
}

// EventRecord is an event in the outbox, at Pos (the store's own format).
type EventRecord struct {
	Pos   string
	Event Event
}

// EventStoreProvider is a Broker with a shared EventStore: a node using
// the broker uses it for webhooks unless Webhooks.Store is set.
type EventStoreProvider interface {
	EventStore() EventStore
}
