// Package natsbroker is a herald.Broker and herald.PresenceManager over
// NATS, with history, idempotency and presence in JetStream (nats-server
// 2.9 or later, started with -js):
//
//	b, err := natsbroker.New(ctx, natsbroker.Options{URL: "nats://127.0.0.1:4222"})
//	defer b.Close()
//	node, err := herald.New(herald.Config{Broker: b}) // presence too: b implements it
//	go node.Run(ctx)                                  // runs b.Run
//
// # Subjects, stream and buckets
//
// For Options.Prefix P (default "herald") and channel C, whose subject
// token T is C with '.', '*', '>', '%' and non-printable bytes written %XX:
//
//	P.d.T          delivery: every node subscribed to C subscribes here
//	P.h.T          history: stored in the stream P_history
//	P.control      control messages, to every node
//	P_history      stream: subjects P.h.>, MaxMsgsPerSubject = MaxHistorySize
//	               (1000), MaxAge = HistoryRetention (24h), Duplicates =
//	               IdempotencyWindow, AllowDirect, RePublish P.h.> -> P.d.>
//	P_idem         KV bucket, TTL IdempotencyWindow: keys of idempotent
//	               publishes without history
//	P_presence     KV bucket, TTL PresenceTTL: key base64url(C).base64url(client),
//	               value the ClientPresence as JSON
//
// # Publications and offsets
//
// A publication without history is one core NATS publish on P.d.T.
//
// With history, offsets must be consecutive per channel, but JetStream
// sequences are per stream. So each history message carries its channel's
// offset and epoch in headers (Herald-Offset, Herald-Epoch, with
// Herald-Expires and Herald-Size), and a publish to P.h.T is made with
// Nats-Expected-Last-Subject-Sequence set to the sequence of the channel's
// last message as the publishing node knows it: the server stores the
// message only if no other message reached that subject meanwhile
// (optimistic concurrency, atomic in the stream). On a conflict the node
// reads the subject's last message (a direct get) and retries with the
// next offset. A node caches each channel's last sequence after its own
// publishes and serialises its own publishes per channel, so a channel
// that one node publishes to costs one round trip per publish; channels
// written by several nodes at once cost an extra read per conflict, and
// their throughput is bounded by about one publish per round trip.
//
// Delivery: the stream republishes every stored message, in stream order,
// on P.d.T (RePublish). Only stored messages are republished, so a refused
// attempt is never delivered. The stream stores a channel's messages in
// offset order, but the republished copies of two nodes' concurrent
// publishes can reach a subscriber swapped (the server republishes each
// in the context of its publisher's connection): each node therefore puts
// a channel's deliveries back in offset order, holding one that comes
// early for up to 500 ms (order.go), so the delivery order of a channel is
// its offset order on every node. Presence events (join/leave) and
// publications without history go straight to P.d.T.
//
// Idempotency: with history, the message id (Nats-Msg-Id) is
// base64url(C).base64url(key), and the stream's duplicate window makes the
// store and the check one atomic step; a duplicate's result is read from
// the first message (its sequence comes with the duplicate ack). Without
// history, a KV Create in P_idem claims the key before the core publish
// (if the node fails between the two, the publication is lost: at most
// once). The window is Options.IdempotencyWindow for every publish:
// PublishOptions.IdempotencyWindow cannot be honoured per publish.
//
// # History reads
//
// History reads the subject's last message (one round trip), which gives
// the position. On a channel without any message it first stores a
// position-only message (Herald-Meta) with a new epoch, expecting the
// subject to be empty, so the first read fixes the epoch as MemoryBroker's
// does. It then walks the channel's messages from the oldest stored, one
// direct get ("next message of subject from sequence") per message, and
// applies MemoryBroker's rules: the last HistorySize offsets, minus the
// expired prefix (each message's Herald-Expires; clocks of the nodes are
// assumed close). With Limit 0 it stops at the first kept message. So a
// read costs 1 + (messages walked) round trips: fine for recovery and for
// histories of tens to hundreds of messages; a large history read is
// better done with an ordered consumer (not done here).
//
// Per-publication TTL and size are enforced on read; the stream's MaxAge
// and MaxMsgsPerSubject only bound storage. HistoryRetention must exceed
// every namespace's HistoryTTL: a channel's position lives as long as its
// last message, so a channel silent for HistoryRetention starts over with
// a new epoch (clients are told continuity was lost). MemoryBroker keeps
// positions for the life of the process.
//
// # Presence
//
// One KV key per channel and client; the bucket's TTL removes a key not
// Put again within PresenceTTL. Run re-puts this node's entries every
// PresenceTTL/3. Presence and PresenceStats watch the channel's keys (an
// ordered consumer per call, reading the current values), and
// PresenceStats counts distinct users while reading: O(clients in the
// channel) per call.
//
// # Without JetStream
//
// When the server has no JetStream, or with Options.LiveOnly, the broker
// is live-only: publications and control messages flow, and History,
// Publish with history or an idempotency key, and the presence methods
// return ErrNoJetStream. Give the node Config.Presence =
// herald.NewMemoryPresence() then (presence per node only), and configure
// no namespace with history.
//
// # Reconnects, dead links and restarts
//
// nats.go reconnects by itself (New sets MaxReconnects(-1): forever, with
// its default 2s wait and jitter) and re-sends every subscription on the
// new connection, this broker's channel and control subscriptions
// included; Subscribe returns after a flush, so the server has the
// subscription. What is published while a node is disconnected is not
// delivered to it (at most once).
//
// A lost connection is reported to the node at once
// (herald.BrokerHandler.HandleOutage: it closes its subscribers so that
// they recover elsewhere). A connection that stays open and carries
// nothing is found by the client's pings: every Options.PingInterval (2 s),
// given up after MaxPingsOutstanding (2) unanswered, so a blackholed link
// is noticed in 4 to 6 seconds (6 s measured, TestDeadLink); nats.go's
// defaults (2 minutes) let one go unnoticed for minutes.
//
// After every reconnect, Run sets the stream and buckets up again
// (CreateOrUpdate: a server that restarted on an empty store has none,
// and every history publish and read would fail forever), forgets the
// cached channel positions, and only then tells the node (HandleReconnect:
// it checks each channel's position and epoch, so a history that started
// over is told to every client as epoch_changed). Until then Healthy fails
// (ErrNotConnected, then ErrNotReady) and every method fails at once
// instead of queueing behind requests nobody answers. A JetStream error
// that says the stream or a bucket is gone while connected asks for the
// same repair. TestRestartEmpty and TestRestartKeepsData kill a nats-server
// of the test's own and start it again, on an empty store and on its own.
package natsbroker
