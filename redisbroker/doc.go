// Package redisbroker is a herald.Broker, herald.PresenceManager and
// herald.EventStoreProvider backed by Redis (7 or later), joining several
// Herald nodes:
//
//	b, err := redisbroker.New(redisbroker.Options{URL: "redis://127.0.0.1:6379/0"})
//	// or Options{Shards: []string{url1, url2, url3}}: channels spread over servers
//	// or Options{Cluster: []string{url1}}: a Redis Cluster
//	defer b.Close()
//	node, err := herald.New(herald.Config{Broker: b}) // presence too: b implements it
//	go node.Run(ctx)                                  // runs b.Run
//
// # Design
//
// Keys, for Options.Prefix P (default "herald") and channel C. The channel
// is a hash tag, so that one channel's keys share a Cluster slot:
//
//	P:{C}:m        HASH  {t: top offset, e: epoch}; PEXPIRE HistoryMetaTTL (30 days),
//	                     refreshed by every publish and history read
//	P:{C}:h        LIST  "<expiry unix ms> <encoded publication>", oldest first,
//	                     LTRIM to HistorySize, PEXPIRE HistoryTTL after each publish
//	P:{C}:i:<key>  STRING "<offset> <epoch>" of the first publish with that
//	                     idempotency key, PX IdempotencyWindow
//	P:{C}:pz       ZSET  client id -> expiry (unix ms, Redis clock)
//	P:{C}:pi       HASH  client id -> "<len(user)>:<user><info JSON>"
//	P:{C}:pu       HASH  user id -> number of its clients present
//
// Pub/sub channels: P:p:C (in a Redis Cluster the shard channel P:s:{C})
// carries "<offset> <epoch> <encoded publication>",
// or "0 <encoded publication>" without history (the epoch lets every node
// tell a Redis that restarted without its data: offsets then start over
// under a new epoch); P:control carries control messages verbatim. Nodes
// of this version and earlier ones (which published no epoch) cannot share
// a prefix: upgrade all nodes of a cluster together, or give the new ones
// another broker_prefix. The
// encoding (internal/pubcodec) is one flags byte, the origin, the presence
// fields for join/leave events, then the payload untouched: n+2 bytes for a
// server-side publication of n bytes.
//
// Scripts (scripts.go), each one atomic step that takes its time from Redis:
//   - publish: idempotency check; HINCRBY of the top offset (a new epoch is
//     set if the meta has none); RPUSH, LTRIM, drop the expired prefix;
//     PUBLISH; remember the key. Two nodes therefore never hand out the
//     same offset, and since the PUBLISH happens inside the same script,
//     every subscriber receives a channel's publications in offset order.
//   - history: create the meta if missing (so the first read fixes the
//     epoch; a history list left without its meta, say evicted alone under
//     maxmemory, is of a lost epoch and is dropped, by publish too), drop
//     the expired prefix, select by Since/Limit/Reverse with
//     index arithmetic (offsets are consecutive) and LRANGE.
//   - presence add/remove/get/stats: each first drops the entries whose
//     ZSET score has passed (keeping the user counts right), then acts.
//     PresenceStats is two HLENs.
//
// History semantics are MemoryBroker's, checked by brokertest,
// with one bound: MemoryBroker keeps a channel's position for the life of
// the process, Redis for HistoryMetaTTL after the last publish or read.
//
// # Webhooks
//
// Broker.EventStore is the webhooks' outbox and the state the nodes share
// for them (herald.Webhooks uses it when Webhooks.Store is nil). Its keys
// share the hash tag {webhooks}, so that a script may touch several of
// them in one Cluster slot (and no channel's key can be one of them):
//
//	P:{webhooks}:out     STREAM the outbox: one entry per event, field "e" = the
//	                            herald.Event as JSON; positions are entry IDs
//	P:{webhooks}:k:<key> SET    the nodes holding key (a user, channel or member)
//	P:{webhooks}:n:<node> SET   the keys node holds
//	P:{webhooks}:beats   ZSET   node -> alive until (unix ms, Redis clock)
//	P:{webhooks}:lead    STRING the delivering node, PX the lead's ttl
//
// Scripts (scripts.go), each one atomic step: hold (SADD to both sets,
// XADD the on event if the key had no holder), release (SREM, XADD the off
// event if none is left), append (XADD each event, so one Append's events
// are contiguous), beat, lead (SET NX PX, or PEXPIRE if the value is this
// node). Pending is XRANGE - + COUNT max; Ack(pos) is XTRIM MINID with the
// ID just after pos, exact, so it removes every entry up to and including
// pos, nothing newer, and nothing when pos is older than the oldest entry.
//
// Reap cannot be one script, since the off events are built by a Go
// callback: for each node whose beat has expired (by Redis' clock) it reads
// up to 1000 of the node's keys, builds their off events, and runs a
// script that first checks the node is still expired (not beating again,
// not finished by another node's Reap), then releases those keys, appending
// the off event of each key that has no holder left at that moment (so a
// Hold by a live node in between wins, and its key gets no event). It
// repeats until the node's key set is empty, then removes its beat: each
// key's release is atomic and makes at most one event, one reaper reports
// the node, and a big node blocks Redis for many short scripts rather than
// one long one.
//
// Durability: the outbox lives as long as Redis keeps its data. With no
// persistence, a Redis restart loses the events not yet delivered and who
// held what (so no offline events follow for users held before it);
// AOF (appendfsync everysec loses at most about a second) or RDB snapshots
// are the operator's choice. Replication to a Sentinel replica is
// asynchronous: a failover may lose the last events. The outbox grows
// while no node delivers (Webhooks.RetryFor bounds how long an event is
// retried, not how long Redis keeps it when no node runs); XLEN
// P:{webhooks}:out shows its length.
//
// # Pub/sub connection, reconnects and health
//
// Each Broker holds one dedicated pub/sub connection per shard (one with a
// single Redis), owned by Run. Run
// SUBSCRIBEs the control channel and every subscribed channel, then waits
// for the connection to fail; it then reconnects with jittered
// exponential backoff (50ms to 5s) and SUBSCRIBEs everything again.
// Subscribe sends SUBSCRIBE on the live connection and returns once Redis
// has confirmed it (rueidis returns from Do(SUBSCRIBE) on the
// confirmation), so a publish made after Subscribe returns is delivered;
// while the connection is down Subscribe waits up to Options.ConnectWait.
// What is published while a node's connection is down is not delivered to
// it (at most once); history lets clients recover it. Healthy reports the
// connection's state, for a readiness probe. Publish, History and presence
// use rueidis' auto-pipelined command connection, not the pub/sub one.
//
// A lost pub/sub connection is reported to the node at once
// (herald.BrokerHandler.HandleOutage: it closes its subscribers so that
// they recover elsewhere), and the reconnect after it too (HandleReconnect:
// the node checks each channel's position and epoch). A connection that
// stays open and carries nothing is found by rueidis' heartbeat: it PINGs a
// connection after each idle second and gives up after Options.PingTimeout
// (3 s), so a blackholed link is noticed in about 4 to 5 seconds (5 s
// measured, TestDeadLink). PingTimeout also bounds every command's round
// trip.
//
// After Redis restarts, each pooled command connection that has not noticed
// yet fails its next command. Scripts that are safe to run twice (history,
// presence, a publish with an idempotency key) are then run once more; a
// publish without a key is not, since it may have run before its reply was
// lost, and its error reaches the publisher (who retries with a key: the
// bundled clients do). TestRestartEmpty and TestRestartKeepsData kill a
// redis-server of the test's own and start it again.
//
// Presence entries expire after Options.PresenceTTL unless refreshed; Run
// refreshes the entries this Broker added every PresenceTTL/3 (pipelined),
// so a node that dies loses its entries within PresenceTTL.
//
// # Sentinel
//
// Tested: single Redis 7 servers, shards and a Cluster (below). Sentinel:
// Options.ClientOption (or URL ?master_set=NAME with sentinel addresses)
// makes rueidis follow the master; the code paths are the same as for a
// single server, but this is not tested here. After a failover the
// pub/sub connection breaks and Run reconnects to the new master; writes
// the old master had not replicated are lost, and offsets may then be
// handed out again under the same epoch (Redis replication is
// asynchronous), so clients may miss publications without being told.
//
// # Sharding over several servers (Options.Shards)
//
// Each channel lives on one server, chosen by rendezvous hashing: the
// server with the highest hash of (its host:port/db, the channel). All of
// a channel's keys (history, position, idempotency keys, presence) are on
// its server, so every script runs as with one Redis. Each server has its
// own command client and pub/sub connection (a shard: shard.go), which
// connects, fails and reconnects on its own. When one is lost the node is
// told through herald.PartialBrokerHandler, for that shard's channels
// only: their subscribers are closed with 4006 and recover, or are told,
// once the server is back; the other channels go on, and Healthy (the
// node's /readyz) fails only when every shard is down, since every node
// sees the same shards and taking all of them out of a load balancer
// would stop the channels that work. ShardsHealth reports each shard.
// Control messages (send to user, disconnect, broadcast) are PUBLISHed on
// the first shard whose link is up; every shard's connection subscribes
// them. The webhooks' event store lives on the first server in the list.
//
// Changing the list moves channels: adding a server moves about 1/(N+1)
// of them, all to the new server; removing one moves only its channels;
// reordering moves none (TestRendezvous). A moved channel's history and
// position stay behind on its old server (until they expire); on its new
// server it has none, so its first publish or history read there starts
// a new epoch, and a client that resubscribes with its position is told
// recovered:false, reason epoch_changed (a subscriber that stayed is
// closed with 4006 when the first publication of the new epoch reaches
// its node) — nothing is silently skipped, but the history of a moved
// channel is gone for its clients. Change the list on every node at once
// (stop all, start all): while nodes disagree, a moved channel's
// publications go to two servers, and each node's subscribers see only
// those of their node's choice.
//
// # Redis Cluster (Options.Cluster)
//
// Commands and scripts go through one rueidis cluster client, which sends
// each to the master of its keys' slot: every script touches one
// channel's keys, which share the slot of the hash tag {C}, or only the
// webhooks' keys, which share {webhooks}. Publications travel by sharded
// pub/sub: the publish script SPUBLISHes on the shard channel P:s:{C}
// (in the channel's slot, as a script may only touch its own slot), and a
// node SSUBSCRIBEs it on a connection to the slot's master. New asks the
// cluster for its masters (CLUSTER SLOTS); each is a shard as above, with
// a pub/sub connection of its own, which at every reconnect asks again
// which master serves its first slot (so it follows a failover to a
// replica). Control messages are a plain PUBLISH, which a Cluster sends to
// every node; every master's connection SUBSCRIBEs them, and the first one
// that is up hands them to the node. A master
// that is down fails only its slots' channels if the cluster is
// configured with cluster-require-full-coverage no (the default fails
// every slot, and so every channel). A shard follows its master by node
// id, and after a failover the master of a slot it had.
//
// Resharding a live cluster: when a slot moves to another master, Redis
// unsubscribes its shard channels on the old master's connection; that
// shard counts it as an outage (its channels' subscribers are closed with
// 4006 and recover), and before it reconnects it reads CLUSTER SLOTS
// again: each slot goes to the shard that follows its new master, and the
// channels that moved are subscribed on that shard's connection and
// handed to the node's reconnect check (HandlePartialReconnect), which
// finds what they missed meanwhile. A Subscribe answered MOVED does the
// same. The keys move with the slot (MIGRATE), so history, positions and
// epochs survive (TestCluster/Reshard). A master that gets slots after New
// (one added with redis-cli --cluster add-node) gets a shard then, named
// "slot N" after the first slot it was seen with, which Run starts
// (TestCluster/AddMaster; cmd/herald's TestServeRedisClusterAddMaster with
// WebSocket clients on two nodes); the shards list only grows, so a master
// that gives away all its slots keeps an idle shard until the node
// restarts. A master that no shard follows but whose slots belonged to a
// master that serves none any more is a replica that took over: the old
// master's shard follows it (TestCluster/Failover, a manual failover and
// back). A master failover loses what the old master had not replicated,
// as with Sentinel (a manual one, CLUSTER FAILOVER, first lets the
// replica catch up).
//
// Tests (cluster_test.go) start their own servers from Debian's binaries:
// three redis-server as shards, and three joined by redis-cli --cluster
// create; the conformance, presence and event store suites and the cross
// node test pass on both, TestShards/Outage and TestCluster/Outage kill
// one server and check that only its channels' subscribers are told,
// TestCluster/Reshard moves a subscribed channel's slot between masters,
// TestCluster/Failover fails a master over to a replica and back, and
// TestCluster/AddMaster moves one to a master added while the broker runs.
//
// # Why rueidis
//
// Measured on this 2-core machine (shared, so noisy) against the local
// Redis 7.0.15, go-redis v9.23.0 against rueidis v1.0.79, a 128-byte
// payload, go test -bench -benchtime 2s -count 2 (ns and allocs per
// command; the script is a stand-in for the publish script: HINCRBY,
// RPUSH, LTRIM, PUBLISH):
//
//	                                          go-redis              rueidis
//	PUBLISH, explicit pipeline of 100         2,402-2,542 ns  4 allocs   1,757-1,798 ns  0 allocs
//	EVALSHA, explicit pipeline of 100        12,964-13,812 ns 10 allocs  14,869-15,590 ns 0 allocs
//	EVALSHA, 64 concurrent callers           23,062-28,147 ns 13 allocs  14,030-17,526 ns 0 allocs
//
// Explicit pipelines are close (Redis executing the script is the
// bottleneck); with concurrent single calls, which is how nodes call
// Publish, rueidis' auto-pipelining on one connection is about 1.6x faster
// than go-redis' connection pool and allocates nothing per command. Its
// dedicated-connection pub/sub API also fits the design: Do(SUBSCRIBE)
// returns on the server's confirmation, and SetPubSubHooks reports the
// connection's loss on a channel, which gives Run an explicit reconnect
// loop and a health state (go-redis' PubSub reconnects and resubscribes
// inside Receive, out of sight). BenchmarkPublish in this package measures
// the whole Publish.
package redisbroker
