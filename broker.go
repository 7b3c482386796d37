package herald

import (
	"context"
	"time"
)

// Publication is one message published to a channel.
//
// A publication is immutable once handed to a Broker: the node encodes it
// once per wire form and shares those bytes with every subscriber.
type Publication struct {
	// Channel the publication belongs to.
	Channel string
	// Data is the payload. For a text publication it is UTF-8 text, usually
	// a JSON value; for a binary one, any bytes.
	Data []byte
	// Binary marks Data as binary: it travels in binary frames.
	Binary bool
	// Offset is the publication's position in the channel's history, 1 for
	// the first; 0 when the channel keeps no history.
	Offset uint64
	// Epoch is the epoch of the channel's history that Offset belongs to
	// (see StreamPosition), set by the broker with Offset; empty when
	// Offset is 0. It tells a node that a broker restarted without its
	// data: offsets then start over under a new epoch.
	Epoch string
	// Kind tells a publication from a presence event (join or leave), which
	// travels the same path so that it keeps its place in the channel's order.
	Kind PubKind
	// Presence is the client that joined or left, for KindJoin and KindLeave.
	Presence *ClientPresence
	// Origin is the client id of the connection that published it, empty for
	// a server-side publish. Raw-mode connections use it to skip their own
	// frames unless they asked for echo.
	Origin string
	// Key is the conflation key (WithKey): in a namespace with
	// OverflowConflate, a slow subscriber's queue keeps only the newest
	// publication per channel and Key. Empty is a key like any other, so
	// a channel whose publications carry none conflates per channel.
	Key string
}

// PubKind is the kind of a Publication.
type PubKind uint8

// Publication kinds.
const (
	KindPublication PubKind = iota
	KindJoin
	KindLeave
)

// StreamPosition is a position in a channel's history: the offset of the last
// publication and the epoch, which changes whenever continuity is lost.
type StreamPosition struct {
	Offset uint64
	Epoch  string
}

// PublishOptions are per-publish settings a broker honours.
type PublishOptions struct {
	// HistorySize and HistoryTTL make the broker keep the publication in the
	// channel's history: at most HistorySize publications, each for at most
	// HistoryTTL. Zero size keeps no history and leaves Offset at 0.
	HistorySize int
	HistoryTTL  time.Duration
	// IdempotencyKey, when not empty, makes the publish happen at most once
	// per channel and key within IdempotencyWindow: a repeat publishes
	// nothing and returns the first publish's result, marked Duplicate.
	IdempotencyKey    string
	IdempotencyWindow time.Duration
}

// PublishResult is what Publish returns.
type PublishResult struct {
	// StreamPosition of the publication: its offset and the channel's epoch
	// (zero when the channel keeps no history).
	StreamPosition
	// Duplicate is true when the idempotency key was seen within the window
	// and nothing was published this time.
	Duplicate bool
}

// HistoryOptions select publications from a channel's history.
type HistoryOptions struct {
	// Since, when not nil, selects publications after Since.Offset (newer
	// than it). If Since.Epoch is not the channel's epoch the broker returns
	// no publications, only the current position, and the caller must treat
	// continuity as lost.
	Since *StreamPosition
	// Limit caps the number of publications returned; 0 means none (only
	// the position), a negative value means all.
	Limit int
	// Reverse returns the newest first (and, with Limit, the newest Limit).
	Reverse bool
}

// HistoryResult is the answer to a History call.
type HistoryResult struct {
	// Publications in offset order (descending with Reverse).
	Publications []*Publication
	// Position is the channel's current top offset and epoch.
	Position StreamPosition
	// Oldest is the smallest offset still in history (0 when empty).
	Oldest uint64
}

// BrokerHandler receives what a broker delivers. The Node implements it.
type BrokerHandler interface {
	// HandlePublication delivers a publication to this node's subscribers.
	// The broker calls it for one channel from one goroutine at a time, in
	// publish order (offset order when history is kept), and does not
	// retain or modify pub afterwards. A publication with an Offset carries
	// its Epoch.
	HandlePublication(pub *Publication)
	// HandleControl delivers a node-to-node control message (send to user,
	// disconnect, broadcast to all) published by any node, this one included.
	//
	// Neither HandleControl nor HandlePublication calls the broker from the
	// goroutine it is called on (work that needs the broker, such as
	// unsubscribing a user, goes to a goroutine of the node's): a broker may
	// deliver on the goroutine that reads its own replies.
	HandleControl(data []byte)
	// HandleReconnect tells the node that the broker's connection came back
	// after an outage, with every channel subscribed again: publications
	// made meanwhile were not delivered. The node then finds which of its
	// channels missed some and has their subscribers recover (see
	// Node.HandleReconnect). Brokers call it from any goroutine, once per
	// restored connection, once the broker can serve again (Publish and
	// History work); it may do broker I/O (History).
	HandleReconnect()
	// HandleOutage tells the node that the broker's link is lost: from now
	// until HandleReconnect nothing published reaches this node. Brokers
	// call it once per lost link, as soon as they notice (a dead link that
	// stays open included: brokers detect one with heartbeats within
	// seconds), from any goroutine, without holding a lock HandleReconnect
	// or delivery needs. It must not block on the broker.
	HandleOutage(err error)
}

// PartialBrokerHandler is a BrokerHandler that can also be told of an
// outage that concerns only some channels. The Node implements it. A broker
// that spreads channels over links that fail on their own (the shards of a
// Redis Cluster, or several Redis servers) uses it when one link is lost or
// comes back, so that only the subscribers of that link's channels are
// closed and checked; a broker with one link, or a handler without these
// methods, uses HandleOutage and HandleReconnect.
//
// The calls follow HandleOutage's and HandleReconnect's rules (from any
// goroutine, once per lost or restored link, without holding a lock that
// delivery needs). affects reports whether a channel travels on the link;
// it must be safe to call from any goroutine and must not call the broker.
type PartialBrokerHandler interface {
	BrokerHandler
	// HandlePartialOutage is HandleOutage for the channels affects reports.
	HandlePartialOutage(err error, affects func(channel string) bool)
	// HandlePartialReconnect is HandleReconnect for the channels affects
	// reports.
	HandlePartialReconnect(affects func(channel string) bool)
}

// Broker moves publications and control messages between nodes. The
// in-memory broker serves a single node; the redisbroker and natsbroker
// packages join several.
//
// Guarantees a Broker must give:
//   - Ordering: publications of one channel reach HandlePublication in the
//     order Publish calls for that channel returned on the publishing node,
//     on every node subscribed to the channel.
//   - Delivery is at most once: a publication may be lost while a node is cut
//     off from the broker; the history (when kept) lets clients recover it.
//   - Every method that can block takes a context and honours it.
type Broker interface {
	// Register binds the broker to the node's handler. New calls it once,
	// before any other method.
	Register(h BrokerHandler)
	// Run connects and keeps delivering to the handler until ctx is done;
	// it returns ctx's error then, or an error that made it stop for good,
	// which stops the node (Node.Run shuts it down). It must not return
	// earlier for any other reason.
	Run(ctx context.Context) error
	// Subscribe makes the broker deliver the channel's publications to this
	// node. The node calls it when the channel gets its first local subscriber.
	Subscribe(ctx context.Context, channel string) error
	// Unsubscribe stops that, when the channel's last local subscriber leaves.
	Unsubscribe(ctx context.Context, channel string) error
	// Publish sends pub to every node subscribed to pub.Channel (this one
	// included). With history options it first appends pub to the channel's
	// history, assigning pub.Offset and pub.Epoch, atomically with respect
	// to other publishes of the channel on every node: offsets of a
	// channel's epoch are unique and delivered in increasing order.
	Publish(ctx context.Context, pub *Publication, opts PublishOptions) (PublishResult, error)
	// History reads a channel's history. It must be consistent with
	// delivery: a publication delivered to HandlePublication before History
	// was called is in the returned position. (The converse need not hold:
	// a networked broker may deliver a publication after History returned
	// it; the node drops such repeats by offset.)
	History(ctx context.Context, channel string, opts HistoryOptions) (HistoryResult, error)
	// PublishControl sends a control message to every node, this one included.
	PublishControl(ctx context.Context, data []byte) error
}

// BatchPublisher is a Broker that can publish several publications in one
// round trip. A client that sends publish commands back to back without
// waiting for the replies gets them published together: the node collects
// the publishes that one read from the client's socket completed and hands
// them over in one call, instead of one round trip each, which on a
// networked broker caps one connection at one publication per round trip
// (docs/benchmarks.md, "Publish batches"). Whatever the broker, the
// replies to a batch go out to the client in one write, not one each; the
// in-memory broker is a BatchPublisher for that alone.
//
// PublishBatch publishes pubs[i] with opts[i] as Publish would and stores
// its outcome in res[i] and errs[i] (the three slices have pubs' length).
// Publications of one channel take effect in the order of pubs, and the
// Broker's ordering guarantee holds as if Publish had been called for each
// in turn; publications of different channels may take effect in any
// order. An error for one publication says nothing of the others.
type BatchPublisher interface {
	PublishBatch(ctx context.Context, pubs []*Publication, opts []PublishOptions, res []PublishResult, errs []error)
}
