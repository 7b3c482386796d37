// Package natsbroker is a herald.Broker, herald.PresenceManager and
// herald.EventStoreProvider over NATS, with history, idempotency, presence
// and the webhooks' outbox in JetStream (nats-server 2.9 or later, started
// with -js):
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
//	               IdempotencyWindow, AllowDirect (with Replicas 1),
//	               RePublish P.h.> -> P.d.>
//	P_idem         KV bucket, TTL IdempotencyWindow: keys of idempotent
//	               publishes without history
//	P_presence     KV bucket, TTL PresenceTTL: key base64url(C).base64url(client),
//	               value the ClientPresence as JSON
//	P_events       stream (created at the EventStore's first use): subjects
//	               P.ev.>, no limits, Duplicates 2 minutes, AllowDirect
//	               (with Replicas 1)
//	P_eventstate   KV bucket, no TTL: the outbox cursor, the lead, the nodes'
//	               beats and the keys each node holds (see Webhooks)
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
// A batch (PublishBatch: the publishes one client pipelined) sends the
// next publish of each of its channels at once, asynchronously, and waits
// for their acknowledgements before the next round, so it costs as many
// round trips as its busiest channel has publishes, not one each.
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
// PresenceTTL/3; RemovePresence deletes the key (a marker, until the TTL).
// Presence and PresenceStats watch the channel's keys (an ordered consumer
// per call, reading the current values and markers), then check them
// against the stream's list of the channel's keys (one stream info
// request), reading on its own any key the watch gave neither as a value
// nor as a marker: a watch ends when a message says nothing more is pending,
// and while a key was being re-put nats-server 2.9.10 said so early
// (brokertest's ReadWhileRefreshed failed in two runs of three without the
// check). PresenceStats counts distinct users: O(clients in the channel)
// per call.
//
// # Webhooks
//
// Broker.EventStore is the webhooks' herald.EventStore, shared by every
// node on the same NATS and Prefix. Each method is one atomic step in
// JetStream, whatever the number of nodes. For a key K (a user or a
// channel) and node N, E(x) being base64url(x) without padding:
//
//	P.ev.k.E(K)     the key's state: its last message holds the holder set
//	                (JSON) and, when the change was an edge (the first holder
//	                came, the last went), the on or off event
//	P.ev.a          Append: one message per call, a JSON array of events
//	P_eventstate    cursor (the acked position), lead ({node, until}),
//	                beat.E(N) (expiry, unix ms), held.E(N).E(K) (empty)
//
// Hold and Release read the last message of P.ev.k.E(K) (a direct get),
// compute the new set and publish it with Nats-Expected-Last-Subject-
// Sequence set to that message's sequence: the server stores it only if
// no other node changed the key meanwhile, else the node reads again and
// retries. So the holder set and the event of an edge are written in one
// message, and an edge gets exactly one event. A key whose state is
// unchanged (a second Hold, a Release by a non-holder) costs one read.
//
// The outbox is the stream itself, in stream order: the appended messages
// and the state messages that carry an event. Pending reads from the
// cursor on, one direct get per message, skipping states without an
// event; a position is the stream sequence ("seq", or "seq.i" inside an
// Append message that Pending returned in part). Ack moves the cursor
// forward only (a KV update by revision). Delivered events therefore keep
// the order in which the server stored them, and the events of one key
// the order of its changes.
//
// Nothing is lost to the stream's limits, because it has none: a key's
// last message is its state, and every message after the cursor may be
// an event not yet delivered. A per-subject limit of one would have kept
// the states small but let a later state replace an edge not yet
// delivered. Instead the store removes exactly what is neither:
//
//   - a superseded state without an event, at once, by the node that
//     superseded it;
//   - after an Ack: appended messages up to the cursor (one purge), and,
//     for each state that the acking node's last Pending read at or
//     before the cursor, the older messages of its key (all acked), and
//     the state itself when it has no holders (a key with no message has
//     no holders; a node that read it and publishes after the purge is
//     refused and reads again).
//
// So a delivered outbox holds one message per key held somewhere; what
// this misses (an Ack by a node other than the one that read, a failure)
// is removed at the key's next change. Pending steps the cursor over
// states without events by itself, so they are not read again on every
// call. Append is atomic per call unless the events exceed the server's
// max payload together (then several messages, in order); its message id
// is the first event's ID, so an Append retried within two minutes is
// stored once.
//
// Reap: Hold writes held.E(N).E(K) before the state (Release removes it
// after), so a node that crashed between the two leaves at most an entry
// for a key it does not hold, which Reap's release ignores. Reap lists
// the beats, claims an expired node by replacing its beat (by revision)
// with a 30-second lease of its own, releases each of the node's keys as
// Release does, then deletes the beat by revision: concurrent reapers do
// not both report a node, and one that dies midway leaves it to the next
// Reap after the lease. Lead is one KV key changed by revision. Beats and
// leads compare the nodes' wall clocks, which must be close (as for
// history expiry). The cost: Hold and Release are three or four round
// trips (entry, read, publish, maybe a delete); Pending is one round trip
// per message read, fine for the outbox's batches of a hundred; Ack is
// three (cursor read, cursor update, appends purge) plus one purge per
// key compacted.
//
// # Without JetStream
//
// When the server has no JetStream, or with Options.LiveOnly, the broker
// is live-only: publications and control messages flow, and History,
// Publish with history or an idempotency key, the presence methods and
// the EventStore's methods return ErrNoJetStream. Give the node
// Config.Presence = herald.NewMemoryPresence() then (presence per node
// only), and configure no namespace with history. Webhooks need
// JetStream with several nodes: herald.NewMemoryEventStore sees only its
// own node's holders, so it fits a single node only.
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
// After every reconnect, Run sets the stream and buckets up again (it
// creates what is missing: a server that restarted on an empty store has
// none, and every history publish and read would fail forever; it does
// not update what exists, see below), forgets the
// cached channel positions, and only then tells the node (HandleReconnect:
// it checks each channel's position and epoch, so a history that started
// over is told to every client as epoch_changed). Until then Healthy fails
// (ErrNotConnected, then ErrNotReady) and every method fails at once
// instead of queueing behind requests nobody answers. A JetStream error
// that says the stream or a bucket is gone while connected asks for the
// same repair. TestRestartEmpty and TestRestartKeepsData kill a nats-server
// of the test's own and start it again, on an empty store and on its own.
//
// # NATS cluster
//
// Give the URLs of several servers of one cluster (comma-separated; each
// node may list its nearest first with nats.DontRandomize) and
// Options.Replicas 3, so that the stream and buckets survive the loss of
// one server. When a node's server dies, nats.go reconnects to another;
// the node is told of the outage at once (its subscribers are closed with
// 4006), and the repair after the reconnect waits until JetStream answers
// again: a request made while a replicated stream elects a new leader
// gets no answer at all, so each attempt is bounded by 2 s and retried
// (an update of a replicated stream with a peer down was seen to wait
// out its whole timeout, so after a reconnect existing streams are only
// looked up). Measured on this machine (TestClusterServerKilled, loaded):
// node A served again 2 to 7 s after its server was killed.
//
// nats-server before 2.9.21 (Debian's is 2.9.10) does not serialise
// Nats-Expected-Last-Subject-Sequence on a replicated stream
// (nats-io/nats-server#4320): two nodes publishing to one channel at once
// could both be stored at one offset (TestClusterServerKilled saw it).
// With Replicas above 1, a publication with history that has no
// idempotency key therefore also carries a message id for its place,
// base64url(C) and the stream sequence it expects to follow; the stream's
// duplicate check is serialised, so the second is refused as a duplicate
// and its node takes the next offset. A publication with an idempotency key keeps that key
// as its message id, and the rare race remains for it on those versions.
// A channel's first (position-only) message is guarded the same way, by
// a message id per subject. The duplicate window (IdempotencyWindow) then also keeps one
// id per publication: memory on the servers grows with the publish rate.
//
// Reads on a replicated stream go to its leader: a direct get is answered
// by any replica, which may lag, so a history read missed a publish that
// had returned, and a presence read an entry just added. So with Replicas
// above 1 the stream and buckets have AllowDirect off (nats.go makes
// buckets with it on: Herald turns it off after making them). And an
// update of a replicated stream that has no leader yet, just made or
// electing one, got no answer: Herald waits for a leader first.
//
// Tested on a cluster (cluster_test.go): the conformance suite and the
// cross-node test (TestClusterConformance, each broker on another server),
// and the kill below. Two guarantees are weaker on a cluster, each seen in
// about one full test run in three on the loaded machine, so the test
// skips them: a publication made on another node right after Subscribe
// returned can be missed, since a subscription's interest reaches the
// other servers over routes asynchronously (for a channel with history
// the node then finds the gap at the next publication and has its
// subscribers recover; and since a subscriber's history read follows the
// subscription over the same route to the stream's leader, which
// republishes, the window should close before that read returns — by
// reasoning, and TestClusterConformance/CrossNode, which publishes right
// after a client's subscribe, has not failed; a channel without history
// is at most once anyway); and a
// presence read can miss an entry just added, since the watcher's consumer
// may sit on a replica that lags (Presence now checks its watch against
// the list of keys the stream's leader gives, which should close this by
// reasoning; the presence suite, which runs on the cluster too, does not
// catch it either way). The webhooks' event store runs its whole suite on
// the cluster (TestClusterConformance/EventStore). In its test of eight
// nodes holding and releasing one key at once, the first reads of the
// key's state by one broker, right after the events stream was made, got
// no answer at all: without a retry, in two runs of four, each waited out
// the 5 s request timeout and failed; asked again a second later, each
// was answered. So each read of a key's state waits at most a second and
// is asked again while the caller's context lasts (see reread); why the
// servers stay silent was not found. The state updates carry the
// same message-id guard as publications (without it that test saw two
// "on" events in a row). A key's first state's id, "k.<subject>.0",
// would repeat when the key is held again after its state was compacted
// away (released, delivered): within the stream's 2-minute duplicate
// window every attempt was then refused as a duplicate, and the key could
// not be held (TestClusterConformance/EventStore/HoldAgain); the id now
// follows a chain of the gone messages' sequences (see update).
//
// TestClusterServerKilled (cluster_test.go) starts three nats-servers of
// its own joined by routes, two nodes on different servers, both
// publishing to one channel with history while the server of one is
// killed (or, in a second run, the server no node uses): every publication whose Publish returned without error reaches
// the subscriber on each node, live or recovered after its 4006, in
// offset order, with no recovered:false.
package natsbroker
