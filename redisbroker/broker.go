package redisbroker

import (
	"context"
	crand "crypto/rand"
	"encoding/base64"
	"errors"
	"fmt"
	"log/slog"
	"slices"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"time"
	"unsafe"

	"github.com/redis/rueidis"

	"github.com/heraldhq/herald"
	"github.com/heraldhq/herald/internal/pubcodec"
)

var (
	// ErrUnavailable reports that the pub/sub connection to Redis is down
	// (or not up yet) and did not come up within Options.ConnectWait.
	ErrUnavailable = errors.New("redisbroker: pub/sub connection unavailable")
	// ErrClosed is returned by Run after Close.
	ErrClosed = errors.New("redisbroker: broker closed")
)

// Options configure a Broker. The zero value connects to
// redis://127.0.0.1:6379/0 with the defaults written next to each field.
type Options struct {
	// URL is the Redis server: redis://[user:password@]host:port/db, or
	// rediss:// for TLS (see rueidis.ParseURL for the query options).
	// Empty means redis://127.0.0.1:6379/0, unless Shards or Cluster is
	// set. Ignored when ClientOption is set.
	URL string
	// Shards, when set, are the URLs (as URL) of several standalone Redis
	// servers that share the channels: each channel lives on one of them,
	// chosen by rendezvous hashing of its name over the servers' addresses,
	// so that adding a server moves about 1/N of the channels (and changing
	// the order moves none). Each server gets a pub/sub connection; one
	// that is down fails only its channels. The webhooks' event store
	// lives on the first. See the package documentation, "Sharding", for
	// what happens to history when the list changes. At most one of URL,
	// Shards and Cluster.
	Shards []string
	// Cluster, when set, are the URLs of some nodes of a Redis Cluster
	// (7.0 or later): each channel's keys share a slot (hash tags), its
	// publications travel by sharded pub/sub (SPUBLISH and SSUBSCRIBE, one
	// pub/sub connection per master). See the package documentation,
	// "Redis Cluster". The user, password and TLS settings of the first
	// URL apply to every node.
	Cluster []string
	// ClientOption, when not nil, configures the client instead of URL:
	// Sentinel, TLS, timeouts (see doc.go on Sentinel and Cluster).
	// ClientOption.DisableCache is forced on.
	ClientOption *rueidis.ClientOption

	// Prefix starts every key and pub/sub channel name, so that several
	// Herald clusters (or parallel tests) share one Redis. It must not
	// contain '{' or '}'. Empty means "herald".
	Prefix string

	// PresenceTTL is how long a presence entry lives without a refresh. The
	// node that added it refreshes it every PresenceTTL/3 while its Run
	// runs; a node that dies without removing its entries loses them after
	// at most PresenceTTL. Zero means 60 seconds.
	PresenceTTL time.Duration

	// HistoryMetaTTL is how long a channel's position (top offset and
	// epoch) is kept after its last publish or history read; past it, the
	// channel starts over with a new epoch, which clients see as lost
	// continuity. It is at least every publication's HistoryTTL. Zero
	// means 30 days.
	HistoryMetaTTL time.Duration

	// ConnectWait bounds how long Subscribe waits for the pub/sub
	// connection when it is down (at startup, or reconnecting), and how
	// long a new pub/sub connection may take to subscribe everything.
	// Zero means 5 seconds.
	ConnectWait time.Duration

	// PingTimeout is how long a connection to Redis may leave a command
	// or a heartbeat PING unanswered before it is deemed dead, closed and
	// reconnected. rueidis PINGs a connection after each second without
	// traffic, so a link that stays open but carries nothing (a hung
	// server, a blackholed path) is noticed within about PingTimeout plus
	// a second: the pub/sub connection then counts as lost (Healthy fails,
	// the node closes its subscribers, see herald.BrokerHandler). It also
	// bounds every command's round trip: a script that runs longer on the
	// server fails. Zero means 3 seconds; ignored when ClientOption sets
	// ConnWriteTimeout (rueidis' name for it).
	PingTimeout time.Duration

	// Logger receives connection losses and reconnects. Nil logs nothing.
	Logger *slog.Logger
}

func (o Options) withDefaults() Options {
	if o.URL == "" && len(o.Shards) == 0 && len(o.Cluster) == 0 {
		o.URL = "redis://127.0.0.1:6379/0"
	}
	if o.Prefix == "" {
		o.Prefix = "herald"
	}
	if o.PresenceTTL <= 0 {
		o.PresenceTTL = time.Minute
	}
	if o.HistoryMetaTTL <= 0 {
		o.HistoryMetaTTL = 30 * 24 * time.Hour
	}
	if o.ConnectWait <= 0 {
		o.ConnectWait = 5 * time.Second
	}
	if o.PingTimeout <= 0 {
		o.PingTimeout = 3 * time.Second
	}
	if o.Logger == nil {
		o.Logger = slog.New(slog.DiscardHandler)
	}
	return o
}

// Broker is a herald.Broker and herald.PresenceManager backed by Redis,
// and provides the webhooks' herald.EventStore (EventStore). See the
// package documentation for the design.
//
// Goroutines: Run owns one pub/sub connection per shard (see shard) and
// the presence refresher. Every method is safe for concurrent use.
//
// Locks: each shard's mu (see shard); pmu guards the local presence
// entries. None is held across a Redis call, and no two are held
// together. refreshMu is taken before pmu and held across the presence
// scripts.
type Broker struct {
	opts Options
	log  *slog.Logger
	h    herald.BrokerHandler

	// shardList holds the shards, read with allShards. With one Redis
	// there is one; with Options.Shards, one per server, in the order
	// given, set by New and never changed; with a Cluster, one per master,
	// and applyRanges appends one for a master added later (never removes
	// one: shard indexes in slots stay valid).
	shardList atomic.Pointer[[]*shard]
	// slots maps a Cluster slot to the index of its master's shard (nil
	// unless cluster); ring picks a shard for Options.Shards.
	cluster bool
	slots   atomic.Pointer[[]uint16] // replaced whole by applyRanges
	ring    []ringNode
	closers []func() // clients to close
	// Cluster only: clusterCO is the cluster client's options, from which
	// a shard's pub/sub client of one master is made; defaultHost is the
	// host of a master that CLUSTER SLOTS lists without one; remapMu
	// serialises applyRanges; moved holds the channels that moved to
	// another master until reportMoves (Run's) hands them to the node,
	// woken by movedSignal; addedSignal tells Run that applyRanges added
	// a shard, which Run starts.
	clusterCO   rueidis.ClientOption
	defaultHost string
	remapMu     sync.Mutex
	movedMu     sync.Mutex
	moved       map[string]bool
	movedSignal chan struct{}
	addedSignal chan struct{}

	pubPrefix string // pub/sub channel name of herald channel c: pubPrefix + c (+ "}" in a Cluster)
	ctrlChan  string

	epochSeed string
	epochSeq  atomic.Uint64
	closed    atomic.Bool

	pmu   sync.Mutex
	local map[string]map[string]herald.ClientPresence // channel -> client -> entry added here
	// refreshMu is held (write) by a presence refresh round and (read) by
	// RemovePresence, so that a round cannot re-add an entry just removed.
	refreshMu sync.RWMutex
}

var (
	_ herald.Broker          = (*Broker)(nil)
	_ herald.PresenceManager = (*Broker)(nil)
)

// New returns a Broker for opts. With one Redis or Options.Shards it
// connects lazily: Run opens the pub/sub connections, and the first
// command opens a command connection. With Options.Cluster it asks the
// cluster for its masters (CLUSTER SLOTS, within ConnectWait), since each
// master gets a pub/sub connection of its own.
func New(opts Options) (*Broker, error) {
	opts = opts.withDefaults()
	if strings.ContainsAny(opts.Prefix, "{}") {
		return nil, fmt.Errorf("redisbroker: prefix %q contains '{' or '}'", opts.Prefix)
	}
	if err := opts.check(); err != nil {
		return nil, err
	}
	var seed [6]byte
	_, _ = cryptoRead(seed[:])
	b := &Broker{
		opts:      opts,
		log:       opts.Logger,
		pubPrefix: opts.Prefix + ":p:",
		ctrlChan:  opts.Prefix + ":control",
		epochSeed: base64.RawURLEncoding.EncodeToString(seed[:]),
		local:     make(map[string]map[string]herald.ClientPresence),
	}
	var err error
	switch {
	case len(opts.Cluster) > 0:
		b.cluster, b.pubPrefix = true, opts.Prefix+":s:{"
		b.movedSignal, b.addedSignal = make(chan struct{}, 1), make(chan struct{}, 1)
		err = b.setUpCluster()
	case len(opts.Shards) > 0:
		err = b.setUpShards()
	default:
		err = b.setUpSingle()
	}
	if err != nil {
		b.Close()
		return nil, err
	}
	return b, nil
}

// check reports options that contradict each other.
func (o Options) check() error {
	n := 0
	for _, set := range []bool{o.URL != "", len(o.Shards) > 0, len(o.Cluster) > 0} {
		if set {
			n++
		}
	}
	if n > 1 {
		return errors.New("redisbroker: set one of URL, Shards and Cluster")
	}
	if o.ClientOption != nil && (len(o.Shards) > 0 || len(o.Cluster) > 0) {
		return errors.New("redisbroker: ClientOption configures one server: use it without Shards and Cluster")
	}
	return nil
}

// clientOption parses u and applies what every client of the broker needs.
func (b *Broker) clientOption(u string) (rueidis.ClientOption, error) {
	co, err := rueidis.ParseURL(u)
	if err != nil {
		return co, fmt.Errorf("redisbroker: failed to parse URL: %w", err)
	}
	return b.withTimeouts(co), nil
}

func (b *Broker) withTimeouts(co rueidis.ClientOption) rueidis.ClientOption {
	co.DisableCache = true
	if co.ConnWriteTimeout == 0 {
		co.ConnWriteTimeout = b.opts.PingTimeout
	}
	return co
}

func (b *Broker) newClient(co rueidis.ClientOption) (rueidis.Client, error) {
	c, err := rueidis.NewClient(co)
	if err != nil {
		return nil, fmt.Errorf("redisbroker: failed to create client: %w", err)
	}
	b.closers = append(b.closers, c.Close)
	return c, nil
}

func (b *Broker) setUpSingle() error {
	var co rueidis.ClientOption
	if b.opts.ClientOption != nil {
		co = b.withTimeouts(*b.opts.ClientOption)
	} else {
		var err error
		if co, err = b.clientOption(b.opts.URL); err != nil {
			return err
		}
	}
	c, err := b.newClient(co)
	if err != nil {
		return err
	}
	b.shardList.Store(&[]*shard{newShard(b, strings.Join(co.InitAddress, ","), c)})
	return nil
}

var cryptoRead = crand.Read

// Close closes the connections to Redis. Call it after Run has returned;
// a running Run returns ErrClosed.
func (b *Broker) Close() {
	if b.closed.CompareAndSwap(false, true) {
		for _, c := range b.closers {
			c()
		}
	}
}

// Register implements herald.Broker.
func (b *Broker) Register(h herald.BrokerHandler) { b.h = h }

// Healthy reports nil while at least one shard's pub/sub connection is up
// with every channel subscribed (with one Redis: while it is), and why
// not otherwise (for a readiness probe). A shard that is down fails only
// its channels (their Subscribe and Publish fail, their subscribers were
// closed with 4006); the node stays ready for the others, since every
// node sees the same shard. ShardsHealth tells each shard's state.
// Commands use other connections and fail on their own when Redis is
// unreachable.
func (b *Broker) Healthy() error {
	var errs []error
	for _, s := range b.allShards() {
		err := s.healthy()
		if err == nil {
			return nil
		}
		errs = append(errs, err)
	}
	return errors.Join(errs...)
}

// ShardsHealth reports each shard's pub/sub state, keyed by its name (the
// server's address, or a Cluster master's first slot): nil while up.
func (b *Broker) ShardsHealth() map[string]error {
	shards := b.allShards()
	out := make(map[string]error, len(shards))
	for _, s := range shards {
		out[s.name] = s.healthy()
	}
	return out
}

// Run keeps each shard's pub/sub connection up and delivers to the
// handler until ctx is done: when a connection drops it tells the handler
// (HandleOutage; with several shards HandlePartialOutage for the shard's
// channels, if the handler has it), reconnects with exponential backoff
// (50ms to 5s, jittered), re-SUBSCRIBEs every channel and tells the
// handler again (HandleReconnect or HandlePartialReconnect). It also
// refreshes the presence entries this node added, and in a Cluster runs
// the shards of masters added while it runs. It returns ctx's error.
func (b *Broker) Run(ctx context.Context) error {
	if b.closed.Load() {
		return ErrClosed
	}
	ctx, cancel := context.WithCancel(ctx)
	defer cancel()
	var wg sync.WaitGroup
	defer wg.Wait()
	wg.Go(func() { b.refreshPresence(ctx) })
	if b.cluster {
		wg.Go(func() { b.reportMoves(ctx) })
	}
	// Every shard runs until ctx is done, or all return ErrClosed: the
	// first to return ends Run, and the others' errors are not needed.
	errs := make(chan error, 1)
	started := 0
	startNew := func() {
		shards := b.allShards()
		for _, s := range shards[started:] {
			wg.Go(func() {
				err := s.run(ctx)
				select {
				case errs <- err:
				default:
				}
			})
		}
		started = len(shards)
	}
	startNew()
	for {
		select {
		case err := <-errs:
			cancel()
			return err
		case <-b.addedSignal: // nil unless cluster
			startNew()
		}
	}
}

// outage and reconnect tell the handler about one shard's link.
func (b *Broker) outage(s *shard, err error) {
	if ph, ok := b.h.(herald.PartialBrokerHandler); ok && b.sharded() {
		ph.HandlePartialOutage(fmt.Errorf("shard %s: %w", s.name, err), s.owns)
		return
	}
	b.h.HandleOutage(err)
}

func (b *Broker) reconnect(s *shard) {
	if ph, ok := b.h.(herald.PartialBrokerHandler); ok && b.sharded() {
		ph.HandlePartialReconnect(s.owns)
		return
	}
	b.h.HandleReconnect()
}

// allShards returns the shards. The slice is never modified: a shard
// added to a Cluster's broker comes in a new one.
func (b *Broker) allShards() []*shard { return *b.shardList.Load() }

// sharded reports whether an outage may concern only some channels: with
// several shards, and in a Cluster (which may gain masters).
func (b *Broker) sharded() bool { return b.cluster || len(b.allShards()) > 1 }

// shardOf returns the shard that carries channel.
func (b *Broker) shardOf(channel string) *shard {
	if b.cluster {
		// The table first: applyRanges stores a new shard before the
		// table that refers to it, and the list only grows, so the
		// index is in the list loaded after.
		i := (*b.slots.Load())[slotOf(channel)]
		return b.allShards()[i]
	}
	shards := b.allShards()
	if len(shards) == 1 {
		return shards[0]
	}
	return shards[rendezvous(b.ring, channel)]
}

// ShardOf names the shard that carries channel, as ShardsHealth does: the
// server's host:port/db, or in a Cluster "slot N" of its master's first
// slot. With one Redis, its address.
func (b *Broker) ShardOf(channel string) string { return b.shardOf(channel).name }

// cmd returns the client that runs channel's commands.
func (b *Broker) cmd(channel string) rueidis.Client { return b.shardOf(channel).cmd }

// pubChan is the pub/sub channel of herald channel ch: P:p:C, or in a
// Cluster the shard channel P:s:{C}, whose hash tag puts it in the slot
// of the channel's keys (a script may SPUBLISH only there).
func (b *Broker) pubChan(ch string) string {
	if b.cluster {
		return b.pubPrefix + ch + "}"
	}
	return b.pubPrefix + ch
}

// chanOf is pubChan's inverse.
func (b *Broker) chanOf(name string) (string, bool) {
	ch, ok := strings.CutPrefix(name, b.pubPrefix)
	if ok && b.cluster {
		ch, ok = strings.CutSuffix(ch, "}")
	}
	return ch, ok
}

// Subscribe implements herald.Broker. It returns once Redis has confirmed
// the SUBSCRIBE (SSUBSCRIBE in a Cluster), so every publication made after
// it returns is delivered (while the connection holds). It waits up to
// Options.ConnectWait for the channel's shard's pub/sub connection,
// failing with ErrUnavailable.
func (b *Broker) Subscribe(ctx context.Context, channel string) error {
	err := b.shardOf(channel).subscribe(ctx, channel)
	if ret, ok := rueidis.IsRedisErr(err); ok && b.cluster {
		if _, moved := ret.IsMoved(); moved {
			// The channel's slot moved to another master: read the slots
			// again, and subscribe where it is now.
			if err = b.refreshSlots(ctx); err == nil {
				err = b.shardOf(channel).subscribe(ctx, channel)
			}
		}
	}
	if err != nil {
		return fmt.Errorf("redisbroker: failed to subscribe to %q: %w", channel, err)
	}
	return nil
}

// Unsubscribe implements herald.Broker. Nothing of the channel is delivered
// once it returns, even if the UNSUBSCRIBE itself fails.
func (b *Broker) Unsubscribe(ctx context.Context, channel string) error {
	shards := []*shard{b.shardOf(channel)}
	if b.cluster {
		shards = b.allShards() // a channel moving between masters may still be on its old one
	}
	var errs []error
	for _, s := range shards {
		if err := s.unsubscribe(ctx, channel); err != nil {
			errs = append(errs, err)
		}
	}
	if err := errors.Join(errs...); err != nil {
		return fmt.Errorf("redisbroker: failed to unsubscribe from %q: %w", channel, err)
	}
	return nil
}

// key returns the key of one of channel's structures. The channel is the
// hash tag, so a channel's keys live in one Cluster slot.
func (b *Broker) key(channel, kind string) string {
	return b.opts.Prefix + ":{" + channel + "}:" + kind
}

func (b *Broker) newEpoch() string {
	return b.epochSeed + strconv.FormatUint(b.epochSeq.Add(1), 36)
}

func ms(d time.Duration) string { return strconv.FormatInt(d.Milliseconds(), 10) }

// execIdempotent runs a script call that is safe to run twice, again once
// if it failed with a network error. After Redis restarts, each of the
// client's pooled connections that has not yet noticed (an idle one pings
// after a second) fails its next command; rueidis retries read-only
// commands by itself, but a script is never read-only to it. A call that
// is not idempotent (a publish without an idempotency key) is not retried:
// it may have run before the reply was lost, and its error says so
// (PROTOCOL.md, "What a failed publish means").
func execIdempotent(ctx context.Context, exec func() rueidis.RedisResult) rueidis.RedisResult {
	res := exec()
	if err := res.NonRedisError(); err != nil && ctx.Err() == nil {
		return exec()
	}
	return res
}

// Publish implements herald.Broker: one script call (EVALSHA) that assigns
// the offset, appends to history, checks and records the idempotency key
// and PUBLISHes. It returns once Redis has run it.
func (b *Broker) Publish(ctx context.Context, pub *herald.Publication, opts herald.PublishOptions) (herald.PublishResult, error) {
	if err := ctx.Err(); err != nil {
		return herald.PublishResult{}, err
	}
	keys, args, idem := b.publishArgs(pub, opts)
	client := b.cmd(pub.Channel)
	exec := func() rueidis.RedisResult { return publishScript.Exec(ctx, client, keys, args) }
	var rr rueidis.RedisResult
	if idem {
		rr = execIdempotent(ctx, exec) // the key makes a second run publish nothing
	} else {
		rr = exec()
	}
	return publishResult(pub, rr)
}

// PublishBatch implements herald.BatchPublisher: the publish scripts of
// the publications that go to one Redis (one shard; a Cluster's client
// routes by slot itself) are sent together (DoMulti: one write, one round
// trip), in the order given, and Redis runs them in that order. A script
// Redis does not have yet (NOSCRIPT: a Redis that restarted) is loaded by
// running the publications that failed for it again one by one, in order;
// a connection error is retried once for publications with an idempotency
// key, as Publish does.
//
// One edge is left: Redis runs the commands of a pipeline that arrive in
// one read without running another client's in between, but a batch
// larger than one read (16 KiB) may have another node's SCRIPT LOAD run
// inside it after a script flush; a publication then published by the
// retry may take a later offset than one of its channel that followed it
// in the batch. Nothing is lost and offsets stay contiguous; only the two
// replies show the swap.
func (b *Broker) PublishBatch(ctx context.Context, pubs []*herald.Publication, opts []herald.PublishOptions, res []herald.PublishResult, errs []error) {
	if err := ctx.Err(); err != nil {
		for i := range errs {
			errs[i] = err
		}
		return
	}
	type call struct {
		i          int
		keys, args []string
		idem       bool
	}
	type group struct {
		client rueidis.Client
		calls  []call
	}
	var groups []group // by client, each in the order of pubs
	for i, pub := range pubs {
		client := b.cmd(pub.Channel)
		g := slices.IndexFunc(groups, func(g group) bool { return g.client == client })
		if g < 0 {
			groups = append(groups, group{client: client})
			g = len(groups) - 1
		}
		keys, args, idem := b.publishArgs(pub, opts[i])
		groups[g].calls = append(groups[g].calls, call{i, keys, args, idem})
	}
	for _, g := range groups {
		cmds := make(rueidis.Commands, len(g.calls))
		for j, c := range g.calls {
			cmds[j] = g.client.B().Evalsha().Sha1(publishSHA).Numkeys(int64(len(c.keys))).Key(c.keys...).Arg(c.args...).Build()
		}
		for j, rr := range g.client.DoMulti(ctx, cmds...) {
			c := g.calls[j]
			exec := func() rueidis.RedisResult { return publishScript.Exec(ctx, g.client, c.keys, c.args) }
			if rerr, ok := rueidis.IsRedisErr(rr.Error()); ok && rerr.IsNoScript() {
				rr = exec() // Exec loads the script
			} else if c.idem && rr.NonRedisError() != nil && ctx.Err() == nil {
				rr = exec()
			}
			res[c.i], errs[c.i] = publishResult(pubs[c.i], rr)
		}
	}
}

// publishArgs builds the publish script's keys and arguments for pub;
// idem says it has an idempotency key (a second run publishes nothing).
func (b *Broker) publishArgs(pub *herald.Publication, opts herald.PublishOptions) (keys, args []string, idem bool) {
	size := opts.HistorySize
	if pub.Kind != herald.KindPublication || size < 0 {
		size = 0
	}
	var win time.Duration
	if opts.IdempotencyKey != "" && opts.IdempotencyWindow >= time.Millisecond {
		win = opts.IdempotencyWindow
	}
	body := pubcodec.Append(make([]byte, 0, pubcodec.Size(pub)), pub)
	keys = []string{b.key(pub.Channel, "m"), b.key(pub.Channel, "h"), b.key(pub.Channel, "i:"+opts.IdempotencyKey)}
	args = []string{
		unsafe.String(unsafe.SliceData(body), len(body)), // body is not modified again
		strconv.Itoa(size),
		ms(max(opts.HistoryTTL, 0)),
		ms(max(b.opts.HistoryMetaTTL, opts.HistoryTTL)),
		ms(win),
		b.pubChan(pub.Channel),
		b.newEpoch(),
		b.publishCmd(),
	}
	return keys, args, win > 0
}

// publishResult reads the publish script's reply to pub, and gives pub
// its offset and epoch unless it was a duplicate.
func publishResult(pub *herald.Publication, rr rueidis.RedisResult) (herald.PublishResult, error) {
	arr, err := rr.ToArray()
	if err != nil {
		return herald.PublishResult{}, fmt.Errorf("redisbroker: failed to publish: %w", err)
	}
	if len(arr) != 2 {
		return herald.PublishResult{}, errors.New("redisbroker: unexpected reply from publish script")
	}
	dup, _ := arr[0].AsInt64()
	s, _ := arr[1].ToString()
	off, epoch, _ := strings.Cut(s, " ")
	offset, err := strconv.ParseUint(off, 10, 64)
	if err != nil {
		return herald.PublishResult{}, fmt.Errorf("redisbroker: unexpected reply from publish script: %q", s)
	}
	res := herald.PublishResult{StreamPosition: herald.StreamPosition{Offset: offset, Epoch: epoch}, Duplicate: dup == 1}
	if !res.Duplicate {
		pub.Offset = offset
		if offset != 0 {
			pub.Epoch = epoch
		}
	}
	return res, nil
}

// History implements herald.Broker: one script call that fixes the epoch
// on first use, drops expired publications and selects by Since, Limit and
// Reverse on the Redis side.
func (b *Broker) History(ctx context.Context, channel string, opts herald.HistoryOptions) (herald.HistoryResult, error) {
	if err := ctx.Err(); err != nil {
		return herald.HistoryResult{}, err
	}
	sinceGiven, sinceOff, sinceEpoch := "0", "0", ""
	if opts.Since != nil {
		sinceGiven, sinceOff, sinceEpoch = "1", strconv.FormatUint(opts.Since.Offset, 10), opts.Since.Epoch
	}
	reverse := "0"
	if opts.Reverse {
		reverse = "1"
	}
	keys := []string{b.key(channel, "m"), b.key(channel, "h")}
	args := []string{b.newEpoch(), ms(b.opts.HistoryMetaTTL), sinceGiven, sinceOff, sinceEpoch, strconv.Itoa(opts.Limit), reverse}
	client := b.cmd(channel)
	arr, err := execIdempotent(ctx, func() rueidis.RedisResult { return historyScript.Exec(ctx, client, keys, args) }).ToArray()
	if err != nil {
		return herald.HistoryResult{}, fmt.Errorf("redisbroker: failed to read history: %w", err)
	}
	if len(arr) < 4 {
		return herald.HistoryResult{}, errors.New("redisbroker: unexpected reply from history script")
	}
	var head [4]string
	for i := range head {
		head[i], _ = arr[i].ToString()
	}
	top, err1 := strconv.ParseUint(head[0], 10, 64)
	oldest, err2 := strconv.ParseUint(head[2], 10, 64)
	first, err3 := strconv.ParseUint(head[3], 10, 64)
	if err := errors.Join(err1, err2, err3); err != nil {
		return herald.HistoryResult{}, fmt.Errorf("redisbroker: unexpected reply from history script: %w", err)
	}
	res := herald.HistoryResult{Position: herald.StreamPosition{Offset: top, Epoch: head[1]}, Oldest: oldest}
	items := arr[4:]
	res.Publications = make([]*herald.Publication, 0, len(items))
	for i := range items {
		s, _ := items[i].ToString()
		_, body, ok := strings.Cut(s, " ")
		if !ok {
			return res, errors.New("redisbroker: malformed history element")
		}
		pub, err := pubcodec.Decode(channel, first+uint64(i), unsafe.Slice(unsafe.StringData(body), len(body)))
		if err != nil {
			return res, fmt.Errorf("redisbroker: malformed history element: %w", err)
		}
		pub.Epoch = head[1]
		res.Publications = append(res.Publications, pub)
	}
	if opts.Reverse {
		slices.Reverse(res.Publications)
	}
	return res, nil
}

// PublishControl implements herald.Broker: a PUBLISH on the control
// channel, which every node's pub/sub connection subscribes first. With
// Options.Shards every shard's connection subscribes it, and it is
// published on the first shard whose link is up (so a shard that is down
// does not stop control messages), once: a failed publish is not tried on
// another shard, since it may have happened. In a Cluster a PUBLISH
// reaches every master; every master's connection subscribes it, and the
// first one that is up hands it on (so a master that is down does not stop
// control messages either; a message that arrives while the node has not
// yet noticed that master's loss may be missed: control messages are at
// most once).
func (b *Broker) PublishControl(ctx context.Context, data []byte) error {
	if err := ctx.Err(); err != nil {
		return err
	}
	shards := b.allShards()
	client := shards[0].cmd
	if !b.cluster {
		for _, s := range shards {
			if s.healthy() == nil {
				client = s.cmd
				break
			}
		}
	}
	cmd := client.B().Publish().Channel(b.ctrlChan).Message(unsafe.String(unsafe.SliceData(data), len(data))).Build()
	if err := client.Do(ctx, cmd).Error(); err != nil {
		return fmt.Errorf("redisbroker: failed to publish control message: %w", err)
	}
	return nil
}

// publishCmd is the command the publish script sends a publication with:
// SPUBLISH on a Cluster's shard channel, PUBLISH elsewhere.
func (b *Broker) publishCmd() string {
	if b.cluster {
		return "spublish"
	}
	return "publish"
}
