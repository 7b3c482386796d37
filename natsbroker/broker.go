package natsbroker

import (
	"context"
	crand "crypto/rand"
	"encoding/base64"
	"errors"
	"fmt"
	"hash/maphash"
	"log/slog"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"

	"github.com/heraldhq/herald"
	"github.com/heraldhq/herald/internal/pubcodec"
)

var (
	// ErrNoJetStream is returned by History, by Publish with history or an
	// idempotency key, and by the presence methods when the broker runs
	// live-only: the server has no JetStream, or Options.LiveOnly is set.
	ErrNoJetStream = errors.New("natsbroker: JetStream not available: history, idempotency and presence are off (live-only)")
	// ErrNotConnected is what Healthy reports while the connection is down.
	ErrNotConnected = errors.New("natsbroker: not connected")
	// ErrNotReady is what Healthy reports after a reconnect until the
	// stream and buckets are set up again (a server that restarted empty
	// has none): Run does that, retrying with backoff.
	ErrNotReady = errors.New("natsbroker: JetStream stream and buckets not set up again yet")
)

// Options configure a Broker. The zero value connects to
// nats://127.0.0.1:4222 with the defaults written next to each field.
type Options struct {
	// URL of the NATS server(s), comma-separated. Empty means
	// nats://127.0.0.1:4222. Ignored when Conn is set.
	URL string
	// NATSOptions are added to the connection's options (credentials, TLS,
	// reconnect settings). Ignored when Conn is set.
	NATSOptions []nats.Option
	// Conn, when not nil, is the connection to use; Close does not close
	// it. The broker then sets no handler on it, so it does not notice an
	// outage or a reconnect by itself: nothing closes the node's
	// subscribers when the link is lost, and the stream and buckets are not
	// set up again after a reconnect. Prefer URL and NATSOptions.
	Conn *nats.Conn

	// Prefix starts every subject, and names the stream (Prefix_history)
	// and KV buckets (Prefix_presence, Prefix_idem), so several clusters
	// or parallel tests share one NATS. Letters, digits, '_' and '-' only.
	// Empty means "herald".
	Prefix string

	// LiveOnly skips JetStream: publications and control messages only.
	// The broker is live-only as well when the server has no JetStream.
	LiveOnly bool
	// Storage is the storage of the stream and buckets. Zero means file.
	Storage jetstream.StorageType
	// Replicas of the stream and buckets. Zero means 1.
	Replicas int

	// MaxHistorySize caps the publications kept per channel in the stream
	// (its MaxMsgsPerSubject): a namespace's HistorySize above it gets only
	// this many. Zero means 1000.
	MaxHistorySize int
	// HistoryRetention is the stream's MaxAge: how long a channel's last
	// publication, and with it the channel's position (offset and epoch),
	// is kept after its last publish. Each publication leaves history
	// after its own HistoryTTL, checked on read; HistoryRetention only has
	// to be longer. Zero means 24 hours.
	HistoryRetention time.Duration
	// IdempotencyWindow is how long idempotency keys are remembered (the
	// stream's duplicate window and the idem bucket's TTL):
	// PublishOptions.IdempotencyWindow cannot be honoured per publish
	// here. Zero means 2 minutes, herald.Config's default.
	IdempotencyWindow time.Duration
	// PresenceTTL is the presence bucket's TTL: an entry not refreshed
	// within it disappears. The node that added it refreshes it every
	// PresenceTTL/3 while its Run runs. Zero means 60 seconds.
	PresenceTTL time.Duration

	// PingInterval and MaxPingsOutstanding set how fast a dead link is
	// noticed, one that stays open but carries nothing (a hung server, a
	// blackholed path) included: the client pings every PingInterval, and
	// a connection with more than MaxPingsOutstanding pings unanswered is
	// closed and reconnected; Healthy fails and the node closes its
	// subscribers meanwhile (see herald.BrokerHandler). nats.go's own
	// defaults (2 minutes, 2) left a blackholed link unnoticed for minutes.
	// Zero means 2 seconds and 2: noticed within about 4 to 6 seconds.
	// Ignored when Conn is set.
	PingInterval        time.Duration
	MaxPingsOutstanding int

	// Logger receives disconnects, reconnects and refresh failures. Nil logs
	// nothing.
	Logger *slog.Logger
}

func (o Options) withDefaults() Options {
	if o.URL == "" {
		o.URL = nats.DefaultURL
	}
	if o.Prefix == "" {
		o.Prefix = "herald"
	}
	if o.Replicas <= 0 {
		o.Replicas = 1
	}
	if o.MaxHistorySize <= 0 {
		o.MaxHistorySize = 1000
	}
	if o.HistoryRetention <= 0 {
		o.HistoryRetention = 24 * time.Hour
	}
	if o.IdempotencyWindow <= 0 {
		o.IdempotencyWindow = 2 * time.Minute
	}
	if o.PresenceTTL <= 0 {
		o.PresenceTTL = time.Minute
	}
	if o.PingInterval <= 0 {
		o.PingInterval = 2 * time.Second
	}
	if o.MaxPingsOutstanding <= 0 {
		o.MaxPingsOutstanding = 2
	}
	if o.Logger == nil {
		o.Logger = slog.New(slog.DiscardHandler)
	}
	return o
}

// Headers of history messages.
const (
	hdrOffset  = "Herald-Offset"
	hdrEpoch   = "Herald-Epoch"
	hdrExpires = "Herald-Expires" // unix ms
	hdrSize    = "Herald-Size"
	hdrMeta    = "Herald-Meta" // a position-only message: no publication
)

// Broker is a herald.Broker and herald.PresenceManager over NATS, with
// history, idempotency and presence in JetStream. See the package
// documentation for the design.
//
// Goroutines: nats.go runs each subscription's handler in that
// subscription's own goroutine, one message at a time, so a channel's
// deliveries are sequential and in arrival order. Run owns the presence
// refresher. All methods are safe for concurrent use.
//
// Locks: mu guards subs; deliverMu (by channel hash, taken before mu) is
// held by a delivery and by Unsubscribe; each stripe's mu serialises this node's history
// publishes of the channels hashing to it (held across the JetStream round
// trips, never across a handler call); pmu guards the local presence
// entries; refreshMu is taken before pmu.
type Broker struct {
	opts    Options
	log     *slog.Logger
	nc      *nats.Conn
	ownConn bool
	h       herald.BrokerHandler

	js     jetstream.JetStream
	stream jetstream.Stream   // nil when live-only
	idemKV jetstream.KeyValue // nil when live-only
	presKV jetstream.KeyValue // nil when live-only
	// presStream is presKV's stream (KV_<bucket>): Presence checks its
	// watch against the stream's list of keys, and reads there a key the
	// watch skipped.
	presStream jetstream.Stream
	ctrl       *nats.Subscription

	subjDeliver string // prefix of delivery subjects
	subjHistory string // prefix of history subjects
	subjControl string

	epochSeed string
	epochSeq  atomic.Uint64

	mu   sync.Mutex
	subs map[string]*chanSub

	// serving is set while the connection is up and the stream and buckets
	// exist: cleared at a disconnect, a reconnect and when Run finds them
	// gone, set again by Run's repair. repairC wakes Run for a repair or a
	// check.
	serving        atomic.Bool
	linkUp         atomic.Bool // the connection is up (the disconnect and reconnect callbacks)
	afterReconnect atomic.Bool // a reconnect awaits Run's repair
	repairC        chan struct{}
	closing        atomic.Bool

	seed        maphash.Seed
	reorderWait time.Duration // zero: the const (order.go); tests set it
	stripes     [64]stripe
	deliverMu   [64]sync.Mutex // by channel hash; taken before mu

	pmu       sync.Mutex
	local     map[string]map[string]herald.ClientPresence
	refreshMu sync.RWMutex

	// The webhooks' event store (events.go), set up at its first use.
	evOnce  sync.Once
	evStore *eventStore
	evOn    atomic.Bool // set up once: ensure sets it up again
	evMu    sync.Mutex  // guards evStream, evKV
	// evSetupMu serialises the events stream's setup at its first use;
	// taken before evMu.
	evSetupMu sync.Mutex
	evStream  jetstream.Stream
	evKV      jetstream.KeyValue
}

// stripe caches the last history message this node knows of each channel,
// so that a node publishing alone to a channel needs one round trip.
type stripe struct {
	mu   sync.Mutex
	last map[string]lastMsg
}

type lastMsg struct {
	seq    uint64 // stream sequence of the channel's last message
	offset uint64
	epoch  string
}

var (
	_ herald.Broker          = (*Broker)(nil)
	_ herald.PresenceManager = (*Broker)(nil)
)

// New connects to NATS (unless Options.Conn is given), creates or updates
// the history stream and the KV buckets, and subscribes to the control
// subject. When the server has no JetStream the broker is live-only (see
// ErrNoJetStream).
func New(ctx context.Context, opts Options) (*Broker, error) {
	opts = opts.withDefaults()
	for _, r := range opts.Prefix {
		if !(r >= 'a' && r <= 'z' || r >= 'A' && r <= 'Z' || r >= '0' && r <= '9' || r == '_' || r == '-') {
			return nil, fmt.Errorf("natsbroker: prefix %q: use letters, digits, '_' and '-'", opts.Prefix)
		}
	}
	b := &Broker{
		opts:        opts,
		log:         opts.Logger,
		nc:          opts.Conn,
		subjDeliver: opts.Prefix + ".d.",
		subjHistory: opts.Prefix + ".h.",
		subjControl: opts.Prefix + ".control",
		subs:        make(map[string]*chanSub),
		repairC:     make(chan struct{}, 1),
		seed:        maphash.MakeSeed(),
		local:       make(map[string]map[string]herald.ClientPresence),
	}
	var seed [6]byte
	_, _ = crand.Read(seed[:])
	b.epochSeed = base64.RawURLEncoding.EncodeToString(seed[:])
	if b.nc == nil {
		nopts := append([]nats.Option{
			nats.Name("herald " + opts.Prefix),
			nats.MaxReconnects(-1),
			nats.PingInterval(opts.PingInterval),
			nats.MaxPingsOutstanding(opts.MaxPingsOutstanding),
			nats.DisconnectErrHandler(func(_ *nats.Conn, err error) { b.disconnected(err) }),
			nats.ReconnectHandler(func(c *nats.Conn) {
				b.log.Info("nats reconnected", "url", c.ConnectedUrl())
				b.reconnected()
			}),
		}, opts.NATSOptions...)
		nc, err := nats.Connect(opts.URL, nopts...)
		if err != nil {
			return nil, fmt.Errorf("natsbroker: failed to connect: %w", err)
		}
		b.nc, b.ownConn = nc, true
	}
	if err := b.setup(ctx); err != nil {
		b.Close()
		return nil, err
	}
	b.serving.Store(true)
	b.linkUp.Store(true)
	return b, nil
}

// disconnected runs when the connection is lost (nats.go's disconnect
// callback). It is called once per lost connection, not for Close.
func (b *Broker) disconnected(err error) {
	if err == nil || b.closing.Load() {
		return // Close, or a disconnect nats.go reports without a cause
	}
	b.serving.Store(false)
	if !b.linkUp.Swap(false) {
		return // already down: a failed reconnect attempt
	}
	b.log.Warn("nats disconnected", "err", err)
	if h := b.handler(); h != nil {
		h.HandleOutage(err)
	}
}

// reconnected runs when nats.go has reconnected (and re-subscribed): the
// broker serves again once Run has set the stream and buckets up again.
func (b *Broker) reconnected() {
	b.linkUp.Store(true)
	b.serving.Store(false)
	b.afterReconnect.Store(true)
	b.wakeRepair()
}

func (b *Broker) wakeRepair() {
	select {
	case b.repairC <- struct{}{}:
	default: // one is pending already
	}
}

// storeLost checks an error of a JetStream call for a sign that the stream
// or a bucket is gone (a server restarted without its data while this
// node's connection survived), and asks Run to check; a transient error
// (a JetStream leader election answers "no responders" for a moment) then
// changes nothing.
func (b *Broker) storeLost(err error) {
	if errors.Is(err, jetstream.ErrStreamNotFound) || errors.Is(err, jetstream.ErrNoStreamResponse) ||
		errors.Is(err, nats.ErrNoResponders) || errors.Is(err, jetstream.ErrBucketNotFound) {
		b.wakeRepair()
	}
}

// storeGone reports whether the stream or a bucket is really missing (an
// error that says so, not a timeout).
func (b *Broker) storeGone(ctx context.Context) bool {
	ctx, cancel := context.WithTimeout(ctx, flushTimeout)
	defer cancel()
	p := b.opts.Prefix
	names := []string{p + "_history", "KV_" + p + "_idem", "KV_" + p + "_presence"}
	if b.evOn.Load() {
		names = append(names, p+"_events", "KV_"+p+"_eventstate")
	}
	for _, name := range names {
		if _, err := b.js.Stream(ctx, name); errors.Is(err, jetstream.ErrStreamNotFound) {
			return true
		}
	}
	return false
}

// repair sets up the stream and buckets again after a reconnect, or when
// one of them turned out to be gone, retrying with backoff until it
// succeeds, the connection drops again (the next reconnect asks anew) or
// ctx ends; then it forgets the cached channel positions (a server that
// restarted empty starts every channel over) and tells the node, which
// checks what its channels missed. Run's goroutine only.
func (b *Broker) repair(ctx context.Context) {
	if !b.afterReconnect.Swap(false) {
		if b.js == nil || !b.storeGone(ctx) {
			return // a transient error: nothing is missing
		}
		b.log.Warn("nats: the history stream or a bucket is gone: setting them up again")
		b.serving.Store(false)
	}
	backoff := 100 * time.Millisecond
	for {
		if b.nc.Status() != nats.CONNECTED {
			return
		}
		err := b.ensure(ctx)
		if err == nil {
			break
		}
		b.log.Warn("nats: failed to set up the stream and buckets again; retrying", "err", err, "in", backoff.String())
		select {
		case <-ctx.Done():
			return
		case <-time.After(backoff):
		}
		backoff = min(2*backoff, 5*time.Second)
	}
	for i := range b.stripes {
		st := &b.stripes[i]
		st.mu.Lock()
		st.last = nil
		st.mu.Unlock()
	}
	b.serving.Store(true)
	b.log.Info("nats: serving again")
	if h := b.handler(); h != nil {
		h.HandleReconnect()
	}
}

func (b *Broker) setup(ctx context.Context) error {
	var err error
	b.ctrl, err = b.nc.Subscribe(b.subjControl, func(m *nats.Msg) {
		if h := b.handler(); h != nil {
			h.HandleControl(m.Data)
		}
	})
	if err != nil {
		return fmt.Errorf("natsbroker: failed to subscribe to control: %w", err)
	}
	if err := b.flush(ctx); err != nil {
		return fmt.Errorf("natsbroker: failed to flush: %w", err)
	}
	if b.opts.LiveOnly {
		return nil
	}
	// An asynchronous publish (PublishBatch) whose caller gave up waiting
	// stays pending in nats.go until its acknowledgement comes; the
	// timeout bounds how long, should none ever come.
	if b.js, err = jetstream.New(b.nc, jetstream.WithPublishAsyncTimeout(asyncAckTimeout)); err != nil {
		return fmt.Errorf("natsbroker: %w", err)
	}
	if _, err := b.js.AccountInfo(ctx); err != nil {
		if errors.Is(err, jetstream.ErrJetStreamNotEnabled) || errors.Is(err, jetstream.ErrJetStreamNotEnabledForAccount) {
			b.log.Warn("JetStream not enabled: live-only, no history, idempotency or presence")
			b.js = nil
			return nil
		}
		return fmt.Errorf("natsbroker: failed to query JetStream: %w", err)
	}
	return b.ensure(ctx)
}

// ensure creates the history stream and the KV buckets, or updates them
// to this configuration: at start, and again after a reconnect (a server
// that restarted on an empty store has none). The handles are made once;
// they name the stream and buckets, so they stay valid across a
// re-creation.
func (b *Broker) ensure(ctx context.Context) error {
	if b.js == nil {
		return nil // live-only
	}
	update := b.stream == nil // at start, before the broker is shared
	timeout := flushTimeout
	if !update {
		// In a cluster a JetStream request made while a stream elects a
		// new leader (a server was lost) gets no answer at all: a short
		// attempt, retried by repair, serves again seconds sooner.
		timeout = repairAttemptTimeout
	}
	ctx, cancel := context.WithTimeout(ctx, timeout)
	defer cancel()
	p := b.opts.Prefix
	stream, err := b.ensureStream(ctx, update, jetstream.StreamConfig{
		Name:              p + "_history",
		Description:       "Herald channel history",
		Subjects:          []string{b.subjHistory + ">"},
		MaxMsgsPerSubject: int64(b.opts.MaxHistorySize),
		MaxAge:            b.opts.HistoryRetention,
		Duplicates:        min(b.opts.IdempotencyWindow, b.opts.HistoryRetention),
		Discard:           jetstream.DiscardOld,
		Storage:           b.opts.Storage,
		Replicas:          b.opts.Replicas,
		// Direct gets are answered by any replica, which may lag the
		// leader: with replicas, reads go to the leader, so that a read
		// sees every publish that returned (TestClusterConformance).
		AllowDirect: b.opts.Replicas == 1,
		// Stored messages only, in stream order: delivery order is offset order.
		RePublish: &jetstream.RePublish{Source: b.subjHistory + ">", Destination: b.subjDeliver + ">"},
	})
	if err != nil {
		return fmt.Errorf("natsbroker: failed to create the history stream: %w", err)
	}
	kv := func(name string, ttl time.Duration) (jetstream.KeyValue, error) {
		return b.ensureKV(ctx, update, jetstream.KeyValueConfig{
			Bucket: p + "_" + name, History: 1, TTL: ttl, Storage: b.opts.Storage, Replicas: b.opts.Replicas,
		})
	}
	idemKV, err := kv("idem", b.opts.IdempotencyWindow)
	if err != nil {
		return fmt.Errorf("natsbroker: failed to create the idempotency bucket: %w", err)
	}
	presKV, err := kv("presence", b.opts.PresenceTTL)
	if err != nil {
		return fmt.Errorf("natsbroker: failed to create the presence bucket: %w", err)
	}
	presStream, err := b.js.Stream(ctx, "KV_"+p+"_presence")
	if err != nil {
		return fmt.Errorf("natsbroker: failed to look up the presence bucket's stream: %w", err)
	}
	if update {
		b.stream, b.idemKV, b.presKV, b.presStream = stream, idemKV, presKV, presStream
	}
	if b.evOn.Load() {
		return b.ensureEvents(ctx)
	}
	return nil
}

// ensureStream creates the stream, or updates it to cfg when update is set
// (at start). After a reconnect (update false) it only creates a missing
// one (a server that restarted on an empty store has none): updating a
// replicated stream whose peer is down waited out its whole timeout on
// nats-server 2.9 (TestClusterServerKilled), though the stream served.
func (b *Broker) ensureStream(ctx context.Context, update bool, cfg jetstream.StreamConfig) (jetstream.Stream, error) {
	if update && b.opts.Replicas > 1 {
		return upsertReplicated(b, ctx, cfg.Name,
			func() (jetstream.Stream, error) { return b.js.CreateStream(ctx, cfg) },
			func() (jetstream.Stream, error) { return b.js.CreateOrUpdateStream(ctx, cfg) })
	}
	if update {
		return b.js.CreateOrUpdateStream(ctx, cfg)
	}
	s, err := b.js.Stream(ctx, cfg.Name)
	if !errors.Is(err, jetstream.ErrStreamNotFound) {
		return s, err
	}
	s, err = b.js.CreateStream(ctx, cfg)
	if errors.Is(err, jetstream.ErrStreamNameAlreadyInUse) { // another node made it meanwhile
		return b.js.Stream(ctx, cfg.Name)
	}
	return s, err
}

// ensureKV is ensureStream for a KV bucket. With replicas, the bucket's
// reads go to its leader (see leaderReads).
func (b *Broker) ensureKV(ctx context.Context, update bool, cfg jetstream.KeyValueConfig) (jetstream.KeyValue, error) {
	kv, err := b.createKV(ctx, update, cfg)
	if err != nil || b.opts.Replicas == 1 {
		return kv, err
	}
	return b.leaderReads(ctx, cfg.Bucket)
}

// leaderReads turns direct gets off on a replicated bucket's stream, which
// nats.go creates with them on: a direct get is answered by any replica,
// which may lag, so a presence entry just added was missing from a read
// (TestClusterConformance/Presence). It returns the bucket bound anew, so
// that its reads go to the leader.
func (b *Broker) leaderReads(ctx context.Context, bucket string) (jetstream.KeyValue, error) {
	st, err := b.js.Stream(ctx, "KV_"+bucket)
	if err != nil {
		return nil, err
	}
	if cfg := st.CachedInfo().Config; cfg.AllowDirect {
		if st, err = b.waitLeader(ctx, "KV_"+bucket); err != nil {
			return nil, err
		}
		cfg.AllowDirect = false
		if _, err := b.js.UpdateStream(ctx, cfg); err != nil {
			return nil, err
		}
	}
	return b.js.KeyValue(ctx, bucket)
}

// upsertReplicated creates a replicated stream (or bucket) named name, or
// updates it once it has a leader (see waitLeader): an update sent while
// another node had just created it waited out its timeout.
func upsertReplicated[T any](b *Broker, ctx context.Context, name string, create, update func() (T, error)) (T, error) {
	_, err := b.waitLeader(ctx, name)
	if errors.Is(err, jetstream.ErrStreamNotFound) {
		v, err := createWithPeers(ctx, create)
		if !errors.Is(err, jetstream.ErrStreamNameAlreadyInUse) && !errors.Is(err, jetstream.ErrBucketExists) {
			return v, err
		}
		_, err = b.waitLeader(ctx, name) // made meanwhile by another node, with another config
	}
	if err != nil {
		var zero T
		return zero, err
	}
	return update()
}

// errCodeNoPeers is JetStream's "no suitable peers for placement"
// (JSClusterNoPeersErr), which nats.go names no constant for.
const errCodeNoPeers jetstream.ErrorCode = 10005

// createWithPeers runs create until the cluster has the servers to place
// the replicas on: servers that have just started together know fewer
// peers than the replica count for a moment, and refuse the stream with
// "no suitable peers for placement" (TestServeCluster/nats-cluster, 1 CI
// run in 2). Any other answer, and ctx's end, are create's.
func createWithPeers[T any](ctx context.Context, create func() (T, error)) (T, error) {
	for {
		v, err := create()
		var apiErr *jetstream.APIError
		if !errors.As(err, &apiErr) || apiErr.ErrorCode != errCodeNoPeers {
			return v, err
		}
		if serr := sleepCtx(ctx, 100*time.Millisecond); serr != nil {
			return v, err
		}
	}
}

// waitLeader waits until a replicated stream has a leader, and returns it
// (ErrStreamNotFound when there is no such stream). An update of a stream
// that has none yet (just created by this node or another, or electing
// after a server was lost) got no answer on nats-server 2.9: it waited out
// its timeout (TestClusterConformance, TestClusterServerKilled). Each
// look is bounded by a second, so one that gets no answer is asked again.
func (b *Broker) waitLeader(ctx context.Context, name string) (jetstream.Stream, error) {
	for {
		lctx, cancel := context.WithTimeout(ctx, time.Second)
		st, err := b.js.Stream(lctx, name)
		cancel()
		if errors.Is(err, jetstream.ErrStreamNotFound) {
			return nil, err
		}
		if err == nil {
			if ci := st.CachedInfo().Cluster; ci == nil || ci.Leader != "" {
				return st, nil
			}
		}
		if err := sleepCtx(ctx, 50*time.Millisecond); err != nil {
			return nil, fmt.Errorf("no leader for stream %s: %w", name, err)
		}
	}
}

func (b *Broker) createKV(ctx context.Context, update bool, cfg jetstream.KeyValueConfig) (jetstream.KeyValue, error) {
	if update && b.opts.Replicas > 1 {
		return upsertReplicated(b, ctx, "KV_"+cfg.Bucket,
			func() (jetstream.KeyValue, error) { return b.js.CreateKeyValue(ctx, cfg) },
			func() (jetstream.KeyValue, error) { return b.js.CreateOrUpdateKeyValue(ctx, cfg) })
	}
	if update {
		return b.js.CreateOrUpdateKeyValue(ctx, cfg)
	}
	kv, err := b.js.KeyValue(ctx, cfg.Bucket)
	if !errors.Is(err, jetstream.ErrBucketNotFound) {
		return kv, err
	}
	kv, err = b.js.CreateKeyValue(ctx, cfg)
	if errors.Is(err, jetstream.ErrBucketExists) {
		return b.js.KeyValue(ctx, cfg.Bucket)
	}
	return kv, err
}

// Close unsubscribes and closes the connection if New opened it. Call it
// after Run has returned.
func (b *Broker) Close() {
	b.closing.Store(true)
	b.mu.Lock()
	chans := make([]string, 0, len(b.subs))
	for ch := range b.subs {
		chans = append(chans, ch)
	}
	b.mu.Unlock()
	for _, ch := range chans {
		_ = b.Unsubscribe(context.Background(), ch) // under the channel's deliverLock
	}
	if b.ctrl != nil {
		_ = b.ctrl.Unsubscribe()
	}
	if b.ownConn {
		b.nc.Close()
	}
}

// Register implements herald.Broker.
func (b *Broker) Register(h herald.BrokerHandler) {
	b.mu.Lock()
	b.h = h
	b.mu.Unlock()
}

func (b *Broker) handler() herald.BrokerHandler {
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.h
}

// Healthy reports nil while the broker can serve (for a readiness probe):
// the connection to NATS is up and, after a reconnect, the stream and
// buckets are set up again. nats.go reconnects and re-subscribes by itself.
func (b *Broker) Healthy() error {
	if s := b.nc.Status(); s != nats.CONNECTED {
		return fmt.Errorf("%w: %v", ErrNotConnected, s)
	}
	if !b.serving.Load() {
		return ErrNotReady
	}
	return nil
}

// Run refreshes this node's presence entries, and after each reconnect
// sets the stream and buckets up again before telling the node
// (HandleReconnect), until ctx is done; it returns ctx's error. The broker
// needs it running (Node.Run runs it): without it, it cannot serve again
// after its first reconnect. Delivery
// needs no goroutine of ours: nats.go's subscriptions deliver, and nats.go
// reconnects (with backoff, forever) and re-subscribes every subscription
// by itself after a connection loss; what is published while disconnected
// is not delivered (at most once).
func (b *Broker) Run(ctx context.Context) error {
	var refresh <-chan time.Time
	if b.presKV != nil {
		t := time.NewTicker(b.opts.PresenceTTL / 3)
		defer t.Stop()
		refresh = t.C
	}
	for {
		select {
		case <-ctx.Done():
			return ctx.Err()
		case <-refresh:
			b.refreshPresence(ctx)
		case <-b.repairC:
			b.repair(ctx)
		}
	}
}

// token turns a channel name into one subject token: bytes that NATS gives
// a meaning ('.', '*', '>', '%' itself, spaces, controls) become %XX.
// Channel names never contain '%', so the mapping is one-to-one.
func token(channel string) string {
	safe := true
	for i := 0; i < len(channel); i++ {
		if c := channel[i]; c <= ' ' || c == '.' || c == '*' || c == '>' || c == '%' || c >= 0x7f {
			safe = false
			break
		}
	}
	if safe && channel != "" {
		return channel
	}
	var sb strings.Builder
	for i := 0; i < len(channel); i++ {
		if c := channel[i]; c <= ' ' || c == '.' || c == '*' || c == '>' || c == '%' || c >= 0x7f {
			fmt.Fprintf(&sb, "%%%02X", c)
		} else {
			sb.WriteByte(c)
		}
	}
	if sb.Len() == 0 {
		return "%"
	}
	return sb.String()
}

// Subscribe implements herald.Broker. It returns once the server has the
// subscription (a flush round trip), so every later publication reaches it.
// While the broker cannot serve (see Healthy) it fails at once.
func (b *Broker) Subscribe(ctx context.Context, channel string) error {
	if err := b.Healthy(); err != nil {
		return fmt.Errorf("natsbroker: failed to subscribe to %q: %w", channel, err)
	}
	b.mu.Lock()
	if _, ok := b.subs[channel]; ok {
		b.mu.Unlock()
		return nil
	}
	sub, err := b.nc.Subscribe(b.subjDeliver+token(channel), func(m *nats.Msg) { b.deliver(channel, m) })
	if err != nil {
		b.mu.Unlock()
		return fmt.Errorf("natsbroker: failed to subscribe to %q: %w", channel, err)
	}
	_ = sub.SetPendingLimits(-1, 64<<20)
	if err := b.flush(ctx); err != nil {
		b.mu.Unlock()
		_ = sub.Unsubscribe()
		return fmt.Errorf("natsbroker: failed to subscribe to %q: %w", channel, err)
	}
	cs := &chanSub{sub: sub}
	b.subs[channel] = cs
	b.mu.Unlock()
	b.setBase(ctx, channel, cs)
	return nil
}

// flushTimeout bounds a flush when ctx has no deadline (the node's own
// context has none).
const flushTimeout = 10 * time.Second

// repairAttemptTimeout bounds one attempt to check the stream and buckets
// after a reconnect (see ensure).
const repairAttemptTimeout = 2 * time.Second

// flush waits until the server has processed everything sent so far.
func (b *Broker) flush(ctx context.Context) error {
	if _, ok := ctx.Deadline(); !ok {
		var cancel context.CancelFunc
		ctx, cancel = context.WithTimeout(ctx, flushTimeout)
		defer cancel()
	}
	return b.nc.FlushWithContext(ctx)
}

// Unsubscribe implements herald.Broker.
func (b *Broker) Unsubscribe(ctx context.Context, channel string) error {
	l := b.deliverLock(channel)
	l.Lock()
	b.mu.Lock()
	cs := b.subs[channel]
	delete(b.subs, channel)
	b.mu.Unlock()
	if cs != nil {
		cs.stop()
	}
	l.Unlock()
	if cs == nil {
		return nil
	}
	if err := cs.sub.Unsubscribe(); err != nil && !errors.Is(err, nats.ErrConnectionClosed) {
		return fmt.Errorf("natsbroker: failed to unsubscribe from %q: %w", channel, err)
	}
	return nil
}

// deliver runs in the channel subscription's goroutine.
func (b *Broker) deliver(channel string, m *nats.Msg) {
	var offset uint64
	var epoch string
	if m.Header != nil {
		if m.Header.Get(hdrMeta) != "" {
			return
		}
		if o := m.Header.Get(hdrOffset); o != "" {
			offset, _ = strconv.ParseUint(o, 10, 64)
			epoch = m.Header.Get(hdrEpoch)
		}
	}
	pub, err := pubcodec.Decode(channel, offset, m.Data)
	if err != nil {
		b.log.Warn("malformed publication from nats", "channel", channel, "err", err)
		return
	}
	pub.Epoch = epoch
	// The channel's delivery lock, also taken by Unsubscribe, makes
	// deliveries of one channel sequential even across an Unsubscribe and
	// Subscribe (two subscriptions, two goroutines), and ensures nothing
	// is delivered after Unsubscribe returns.
	l := b.deliverLock(channel)
	l.Lock()
	defer l.Unlock()
	b.mu.Lock()
	cs := b.subs[channel]
	b.mu.Unlock()
	if cs != nil && cs.sub == m.Sub {
		b.inOrder(channel, cs, pub)
	}
}

func (b *Broker) deliverLock(channel string) *sync.Mutex {
	return &b.deliverMu[maphash.String(b.seed, channel)%uint64(len(b.deliverMu))]
}

func (b *Broker) newEpoch() string {
	return b.epochSeed + strconv.FormatUint(b.epochSeq.Add(1), 36)
}

// idemID is the JetStream message id, or KV key, of an idempotency key.
func idemID(channel, key string) string {
	return base64.RawURLEncoding.EncodeToString([]byte(channel)) + "." + base64.RawURLEncoding.EncodeToString([]byte(key))
}

// offsetMsgID is the message id (Nats-Msg-Id) of the publication that
// follows stream sequence last on a channel's subject, set on publications
// with history when the stream is replicated (Options.Replicas > 1) and no
// idempotency key takes the id. Before nats-server 2.9.21, a replicated
// stream did not serialise Nats-Expected-Last-Subject-Sequence: two
// nodes' concurrent publishes expecting the same last message could both
// be stored, with one offset (nats-io/nats-server#4320;
// TestClusterServerKilled saw it on 2.9.10). Its duplicate check is
// serialised, and both carry the same id, so the second is refused as a
// duplicate and its node retries with the next offset. The id names the
// position, not the epoch: the first publications of a new channel, made
// by two nodes that each drew an epoch, collide as well.
func offsetMsgID(channel string, last uint64) string {
	return "o." + base64.RawURLEncoding.EncodeToString([]byte(channel)) + "." + strconv.FormatUint(last, 10)
}

// Publish implements herald.Broker.
//
// Without history: a core NATS publish on the delivery subject (after a KV
// Create of the idempotency key, if any). With history: a JetStream publish
// to the channel's history subject expecting the last sequence this node
// knows for that subject (optimistic concurrency): if another node
// published meanwhile, the server refuses it, and Publish reads the last
// message again and retries with the next offset. The stream republishes
// each stored message, in stream order, on the delivery subject. While
// the broker cannot serve (see Healthy) it fails at once, rather than
// queue behind requests that cannot be answered.
func (b *Broker) Publish(ctx context.Context, pub *herald.Publication, opts herald.PublishOptions) (herald.PublishResult, error) {
	if err := ctx.Err(); err != nil {
		return herald.PublishResult{}, err
	}
	if err := b.Healthy(); err != nil {
		return herald.PublishResult{}, fmt.Errorf("natsbroker: failed to publish: %w", err)
	}
	history := opts.HistorySize > 0 && pub.Kind == herald.KindPublication
	if (history || opts.IdempotencyKey != "") && b.stream == nil {
		return herald.PublishResult{}, ErrNoJetStream
	}
	body := pubcodec.Append(make([]byte, 0, pubcodec.Size(pub)), pub)
	if !history {
		if opts.IdempotencyKey != "" {
			if _, err := b.idemKV.Create(ctx, idemID(pub.Channel, opts.IdempotencyKey), nil); err != nil {
				if errors.Is(err, jetstream.ErrKeyExists) {
					return herald.PublishResult{Duplicate: true}, nil
				}
				b.storeLost(err)
				return herald.PublishResult{}, fmt.Errorf("natsbroker: failed to record idempotency key: %w", err)
			}
		}
		if err := b.nc.Publish(b.subjDeliver+token(pub.Channel), body); err != nil {
			return herald.PublishResult{}, fmt.Errorf("natsbroker: failed to publish: %w", err)
		}
		return herald.PublishResult{}, nil
	}
	return b.publishHistory(ctx, pub, body, opts)
}

const maxAttempts = 200

// asyncAckTimeout bounds the wait for an asynchronous publish's
// acknowledgement (PublishBatch), longer than any caller's context should be.
const asyncAckTimeout = 30 * time.Second

func (b *Broker) stripe(channel string) *stripe { return &b.stripes[b.stripeIndex(channel)] }

func (b *Broker) stripeIndex(channel string) int {
	return int(maphash.String(b.seed, channel) % uint64(len(b.stripes)))
}

func (b *Broker) publishHistory(ctx context.Context, pub *herald.Publication, body []byte, opts herald.PublishOptions) (herald.PublishResult, error) {
	st := b.stripe(pub.Channel)
	st.mu.Lock()
	defer st.mu.Unlock()
	return b.publishHistoryLocked(ctx, st, pub, body, opts)
}

// publishHistoryLocked is publishHistory with st, the channel's stripe,
// locked by the caller.
func (b *Broker) publishHistoryLocked(ctx context.Context, st *stripe, pub *herald.Publication, body []byte, opts herald.PublishOptions) (herald.PublishResult, error) {
	subj := b.subjHistory + token(pub.Channel)
	for attempt := 0; attempt < maxAttempts; attempt++ {
		last, ok := st.last[pub.Channel]
		if !ok {
			var err error
			if last, err = b.lastMsg(ctx, subj); err != nil {
				return herald.PublishResult{}, err
			}
		}
		msg, popts := b.historyMsg(subj, pub, body, opts, last)
		ack, err := b.js.PublishMsg(ctx, msg, popts...)
		if isWrongLastSeq(err) {
			delete(st.last, pub.Channel) // another node published: read again
			if attempt > 3 {
				time.Sleep(time.Duration(attempt) * time.Millisecond)
			}
			continue
		}
		if err != nil {
			delete(st.last, pub.Channel)
			b.storeLost(err)
			return herald.PublishResult{}, fmt.Errorf("natsbroker: failed to publish to history: %w", err)
		}
		if ack.Duplicate && b.offsetIDs(opts) {
			// Another node's publish took this offset (see offsetMsgID).
			delete(st.last, pub.Channel)
			continue
		}
		if ack.Duplicate && ack.Sequence == 0 && attempt < maxAttempts-1 {
			// A replicated stream answers a duplicate of a message it has
			// not applied yet without its sequence: ask again shortly,
			// once the first is stored, to return its position.
			if err := sleepCtx(ctx, 10*time.Millisecond); err != nil {
				return herald.PublishResult{}, err
			}
			continue
		}
		if ack.Duplicate {
			return b.duplicate(ctx, ack.Sequence)
		}
		return st.stored(pub, last, ack.Sequence), nil
	}
	return herald.PublishResult{}, fmt.Errorf("natsbroker: failed to publish to %q: %d conflicting attempts", pub.Channel, maxAttempts)
}

// offsetIDs reports whether a history publish with opts carries the
// offset's message ID (offsetMsgID): on a replicated stream, without an
// idempotency key of its own.
func (b *Broker) offsetIDs(opts herald.PublishOptions) bool {
	return opts.IdempotencyKey == "" && b.opts.Replicas > 1
}

// historyMsg is the JetStream message, and its publish options, that
// stores pub as the publication after last in its channel's history
// subject subj: accepted only if last is still the subject's last message.
func (b *Broker) historyMsg(subj string, pub *herald.Publication, body []byte, opts herald.PublishOptions, last lastMsg) (*nats.Msg, []jetstream.PublishOpt) {
	popts := make([]jetstream.PublishOpt, 0, 2)
	switch {
	case opts.IdempotencyKey != "":
		popts = append(popts, jetstream.WithMsgID(idemID(pub.Channel, opts.IdempotencyKey)))
	case b.offsetIDs(opts):
		popts = append(popts, jetstream.WithMsgID(offsetMsgID(pub.Channel, last.seq)))
	}
	popts = append(popts, jetstream.WithExpectLastSequencePerSubject(last.seq))
	hdr := nats.Header{}
	hdr.Set(hdrOffset, strconv.FormatUint(last.offset+1, 10))
	hdr.Set(hdrEpoch, last.epoch)
	hdr.Set(hdrExpires, strconv.FormatInt(time.Now().Add(max(opts.HistoryTTL, 0)).UnixMilli(), 10))
	hdr.Set(hdrSize, strconv.Itoa(opts.HistorySize))
	return &nats.Msg{Subject: subj, Header: hdr, Data: body}, popts
}

// stored records that pub was stored as the publication after last, at
// stream sequence seq, and returns its result. st.mu must be held.
func (st *stripe) stored(pub *herald.Publication, last lastMsg, seq uint64) herald.PublishResult {
	if st.last == nil || len(st.last) > 10000 {
		st.last = make(map[string]lastMsg)
	}
	st.last[pub.Channel] = lastMsg{seq: seq, offset: last.offset + 1, epoch: last.epoch}
	pub.Offset, pub.Epoch = last.offset+1, last.epoch
	return herald.PublishResult{StreamPosition: herald.StreamPosition{Offset: pub.Offset, Epoch: last.epoch}}
}

func sleepCtx(ctx context.Context, d time.Duration) error {
	t := time.NewTimer(d)
	defer t.Stop()
	select {
	case <-ctx.Done():
		return ctx.Err()
	case <-t.C:
		return nil
	}
}

func isWrongLastSeq(err error) bool {
	var apiErr *jetstream.APIError
	return errors.As(err, &apiErr) && (apiErr.ErrorCode == jetstream.JSErrCodeStreamWrongLastSequence || apiErr.ErrorCode == jetstream.JSErrCodeStreamWrongLastSequenceConstant)
}

// duplicate returns the result of the publication stored at seq.
func (b *Broker) duplicate(ctx context.Context, seq uint64) (herald.PublishResult, error) {
	m, err := b.stream.GetMsg(ctx, seq)
	if errors.Is(err, jetstream.ErrMsgNotFound) {
		// The first publish has left history already: its position is gone.
		return herald.PublishResult{Duplicate: true}, nil
	}
	if err != nil {
		b.storeLost(err)
		return herald.PublishResult{}, fmt.Errorf("natsbroker: failed to read the first publish of a duplicate: %w", err)
	}
	off, _ := strconv.ParseUint(m.Header.Get(hdrOffset), 10, 64)
	return herald.PublishResult{StreamPosition: herald.StreamPosition{Offset: off, Epoch: m.Header.Get(hdrEpoch)}, Duplicate: true}, nil
}

// lastMsg reads the last message of a history subject; for a subject
// without messages it returns offset 0 and a new epoch (not stored).
func (b *Broker) lastMsg(ctx context.Context, subj string) (lastMsg, error) {
	m, err := b.stream.GetLastMsgForSubject(ctx, subj)
	if errors.Is(err, jetstream.ErrMsgNotFound) {
		return lastMsg{epoch: b.newEpoch()}, nil
	}
	if err != nil {
		b.storeLost(err)
		return lastMsg{}, fmt.Errorf("natsbroker: failed to read the last history message: %w", err)
	}
	off, err := strconv.ParseUint(m.Header.Get(hdrOffset), 10, 64)
	if err != nil {
		return lastMsg{}, fmt.Errorf("natsbroker: history message without offset on %s", subj)
	}
	return lastMsg{seq: m.Sequence, offset: off, epoch: m.Header.Get(hdrEpoch)}, nil
}

// PublishControl implements herald.Broker: a core publish on the control
// subject, flushed so that it is on its way when PublishControl returns.
func (b *Broker) PublishControl(ctx context.Context, data []byte) error {
	if err := ctx.Err(); err != nil {
		return err
	}
	if s := b.nc.Status(); s != nats.CONNECTED {
		return fmt.Errorf("natsbroker: failed to publish control message: %w: %v", ErrNotConnected, s)
	}
	if err := b.nc.Publish(b.subjControl, data); err != nil {
		return fmt.Errorf("natsbroker: failed to publish control message: %w", err)
	}
	return nil
}
