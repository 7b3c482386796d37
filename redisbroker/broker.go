package redisbroker

import (
	"context"
	crand "crypto/rand"
	"encoding/base64"
	"errors"
	"fmt"
	"log/slog"
	"math/rand/v2"
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
	// Empty means redis://127.0.0.1:6379/0. Ignored when ClientOption is set.
	URL string
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
	if o.URL == "" {
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
// Goroutines: Run owns the pub/sub connection (one per Broker) and the
// presence refresher; rueidis calls onMessage from that connection's reader
// goroutine, one message at a time, so delivery for a channel is sequential
// and in PUBLISH order. Every other method is safe for concurrent use.
//
// Locks: mu guards subs and the connection state, and is held (read)
// across a HandlePublication call; pmu guards the local presence entries.
// Neither is held across a Redis call, and they are never held together. refreshMu is taken before pmu and held across the
// presence scripts.
type Broker struct {
	opts   Options
	log    *slog.Logger
	client rueidis.Client
	h      herald.BrokerHandler
	// sessions counts pub/sub connections made (Run's goroutine only).
	sessions int

	pubPrefix string // pub/sub channel name of herald channel c: pubPrefix + c
	ctrlChan  string

	epochSeed string
	epochSeq  atomic.Uint64
	closed    atomic.Bool

	mu      sync.RWMutex
	subs    map[string]struct{} // herald channels this node is subscribed to
	conn    *pubsubConn         // nil while down
	up      chan struct{}       // closed when conn goes up; replaced when it goes down
	lastErr error               // why the connection is down

	pmu   sync.Mutex
	local map[string]map[string]herald.ClientPresence // channel -> client -> entry added here
	// refreshMu is held (write) by a presence refresh round and (read) by
	// RemovePresence, so that a round cannot re-add an entry just removed.
	refreshMu sync.RWMutex
}

// pubsubConn is one live pub/sub connection; down is closed when it is lost.
type pubsubConn struct {
	dc   rueidis.DedicatedClient
	down chan struct{}
}

var (
	_ herald.Broker          = (*Broker)(nil)
	_ herald.PresenceManager = (*Broker)(nil)
)

// New returns a Broker for opts. It connects lazily: Run opens the pub/sub
// connection, and the first command opens the command connection.
func New(opts Options) (*Broker, error) {
	opts = opts.withDefaults()
	if strings.ContainsAny(opts.Prefix, "{}") {
		return nil, fmt.Errorf("redisbroker: prefix %q contains '{' or '}'", opts.Prefix)
	}
	var co rueidis.ClientOption
	if opts.ClientOption != nil {
		co = *opts.ClientOption
	} else {
		var err error
		if co, err = rueidis.ParseURL(opts.URL); err != nil {
			return nil, fmt.Errorf("redisbroker: failed to parse URL: %w", err)
		}
	}
	co.DisableCache = true
	if co.ConnWriteTimeout == 0 {
		co.ConnWriteTimeout = opts.PingTimeout
	}
	client, err := rueidis.NewClient(co)
	if err != nil {
		return nil, fmt.Errorf("redisbroker: failed to create client: %w", err)
	}
	var seed [6]byte
	_, _ = cryptoRead(seed[:])
	b := &Broker{
		opts:      opts,
		log:       opts.Logger,
		client:    client,
		pubPrefix: opts.Prefix + ":p:",
		ctrlChan:  opts.Prefix + ":control",
		epochSeed: base64.RawURLEncoding.EncodeToString(seed[:]),
		subs:      make(map[string]struct{}),
		up:        make(chan struct{}),
		lastErr:   errors.New("not connected yet"),
		local:     make(map[string]map[string]herald.ClientPresence),
	}
	return b, nil
}

var cryptoRead = crand.Read

// Close closes the connections to Redis. Call it after Run has returned;
// a running Run returns ErrClosed.
func (b *Broker) Close() {
	if b.closed.CompareAndSwap(false, true) {
		b.client.Close()
	}
}

// Register implements herald.Broker.
func (b *Broker) Register(h herald.BrokerHandler) { b.h = h }

// Healthy reports nil while the pub/sub connection is up with every
// channel subscribed, and why not otherwise (for a readiness probe).
// Commands (Publish, History, presence) use other connections and fail on
// their own when Redis is unreachable.
func (b *Broker) Healthy() error {
	b.mu.RLock()
	defer b.mu.RUnlock()
	if b.conn != nil {
		return nil
	}
	return fmt.Errorf("%w: %v", ErrUnavailable, b.lastErr)
}

const (
	minBackoff = 50 * time.Millisecond
	maxBackoff = 5 * time.Second
)

// Run keeps the pub/sub connection up and delivers to the handler until ctx
// is done: when the connection drops it tells the handler (HandleOutage),
// reconnects with exponential backoff (50ms to 5s, jittered),
// re-SUBSCRIBEs every channel and tells the handler again
// (HandleReconnect). It also refreshes the presence entries this node
// added. It returns ctx's error.
func (b *Broker) Run(ctx context.Context) error {
	var wg sync.WaitGroup
	defer wg.Wait()
	wg.Go(func() { b.refreshPresence(ctx) })

	backoff := minBackoff
	for {
		if b.closed.Load() {
			return ErrClosed
		}
		start := time.Now()
		wasUp, err := b.session(ctx)
		if ctx.Err() != nil {
			return ctx.Err()
		}
		if wasUp {
			// Logged once per outage; the attempts that follow are Debug.
			b.log.Warn("redis pub/sub connection lost", "err", err)
			b.h.HandleOutage(err)
		} else {
			b.log.Debug("redis pub/sub connection failed", "err", err)
		}
		if time.Since(start) > maxBackoff {
			backoff = minBackoff // it was up for a while: retry soon
		}
		d := backoff/2 + rand.N(backoff/2+1)
		backoff = min(2*backoff, maxBackoff)
		select {
		case <-ctx.Done():
			return ctx.Err()
		case <-time.After(d):
		}
	}
}

// session opens a pub/sub connection, subscribes to the control channel and
// every channel in subs, marks the broker up and waits until the
// connection is lost (returning why) or ctx is done. wasUp reports that
// the connection got that far.
func (b *Broker) session(ctx context.Context) (wasUp bool, err error) {
	dc, release := b.client.Dedicate()
	lost := dc.SetPubSubHooks(rueidis.PubSubHooks{OnMessage: b.onMessage})
	pc := &pubsubConn{dc: dc, down: make(chan struct{})}
	defer func() {
		b.setDown(pc, err)
		dc.Close()
		release()
		for range lost { // hooks are not called once lost is closed
		}
	}()

	b.mu.RLock()
	names := make([]string, 0, len(b.subs)+1)
	names = append(names, b.ctrlChan)
	for ch := range b.subs {
		names = append(names, b.pubPrefix+ch)
	}
	b.mu.RUnlock()
	for chunk := range slices.Chunk(names, 1000) {
		// Each chunk its own ConnectWait: many channels over a slow link
		// must not fail every session (and never come back).
		sctx, cancel := context.WithTimeout(ctx, b.opts.ConnectWait)
		err := dc.Do(sctx, dc.B().Subscribe().Channel(chunk...).Build()).Error()
		cancel()
		if err != nil {
			return false, fmt.Errorf("failed to subscribe: %w", err)
		}
	}

	b.mu.Lock()
	b.conn = pc
	close(b.up)
	b.mu.Unlock()
	b.log.Info("redis pub/sub connected", "channels", len(names)-1)
	if b.sessions++; b.sessions > 1 {
		// A reconnect: what was published while the connection was down
		// was not delivered here. The node finds the gaps (it reads
		// history on the command connection, not this one).
		b.h.HandleReconnect()
	}

	select {
	case <-ctx.Done():
		return true, ctx.Err()
	case err, ok := <-lost:
		if !ok || err == nil {
			err = errors.New("connection closed")
		}
		return true, err
	}
}

func (b *Broker) setDown(pc *pubsubConn, err error) {
	b.mu.Lock()
	defer b.mu.Unlock()
	if b.conn == pc {
		b.conn = nil
		b.up = make(chan struct{})
	}
	b.lastErr = err
	close(pc.down)
}

// onMessage runs in the pub/sub connection's reader goroutine.
func (b *Broker) onMessage(m rueidis.PubSubMessage) {
	if m.Channel == b.ctrlChan {
		b.h.HandleControl([]byte(m.Message))
		return
	}
	ch, ok := strings.CutPrefix(m.Channel, b.pubPrefix)
	if !ok {
		return
	}
	off, body, ok := strings.Cut(m.Message, " ")
	offset, err := strconv.ParseUint(off, 10, 64)
	var epoch string
	if ok && err == nil && offset != 0 {
		epoch, body, ok = strings.Cut(body, " ")
	}
	if !ok || err != nil {
		b.log.Warn("malformed publication from redis", "channel", ch)
		return
	}
	pub, err := pubcodec.Decode(ch, offset, unsafe.Slice(unsafe.StringData(body), len(body))) // Decode copies
	if err != nil {
		b.log.Warn("malformed publication from redis", "channel", ch, "err", err)
		return
	}
	pub.Epoch = epoch
	// Holding mu (read) across the handler makes Unsubscribe wait for a
	// delivery in progress: nothing of a channel is delivered after
	// Unsubscribe returns. The handler never calls the broker.
	b.mu.RLock()
	defer b.mu.RUnlock()
	if _, subscribed := b.subs[ch]; subscribed { // else an UNSUBSCRIBE is in flight
		b.h.HandlePublication(pub)
	}
}

// withConn calls f with the live pub/sub connection, waiting up to
// ConnectWait for one, and again on the next connection if f fails because
// the current one was lost.
func (b *Broker) withConn(ctx context.Context, f func(dc rueidis.DedicatedClient) error) error {
	timer := time.NewTimer(b.opts.ConnectWait)
	defer timer.Stop()
	var lastErr error
	for {
		b.mu.RLock()
		pc, up := b.conn, b.up
		b.mu.RUnlock()
		var wait <-chan struct{} = up
		if pc != nil {
			err := f(pc.dc)
			if err == nil || ctx.Err() != nil {
				return err
			}
			if _, redisErr := rueidis.IsRedisErr(err); redisErr {
				return err // Redis refused the command: retrying will not help
			}
			lastErr = err
			wait = pc.down // the connection broke: wait for the next one
		}
		select {
		case <-wait:
		case <-ctx.Done():
			return ctx.Err()
		case <-timer.C:
			if err := b.Healthy(); err != nil {
				return err
			}
			return fmt.Errorf("%w: %w", ErrUnavailable, lastErr)
		}
	}
}

// Subscribe implements herald.Broker. It returns once Redis has confirmed
// the SUBSCRIBE, so every publication made after it returns is delivered
// (while the connection holds). It waits up to Options.ConnectWait for the
// pub/sub connection, failing with ErrUnavailable.
func (b *Broker) Subscribe(ctx context.Context, channel string) error {
	b.mu.Lock()
	b.subs[channel] = struct{}{}
	b.mu.Unlock()
	err := b.withConn(ctx, func(dc rueidis.DedicatedClient) error {
		return dc.Do(ctx, dc.B().Subscribe().Channel(b.pubPrefix+channel).Build()).Error()
	})
	if err != nil {
		b.mu.Lock()
		delete(b.subs, channel)
		b.mu.Unlock()
		return fmt.Errorf("redisbroker: failed to subscribe to %q: %w", channel, err)
	}
	return nil
}

// Unsubscribe implements herald.Broker. Nothing of the channel is delivered
// once it returns, even if the UNSUBSCRIBE itself fails.
func (b *Broker) Unsubscribe(ctx context.Context, channel string) error {
	b.mu.Lock()
	delete(b.subs, channel)
	pc := b.conn
	b.mu.Unlock()
	if pc == nil {
		return nil // the next connection will not subscribe it
	}
	if err := pc.dc.Do(ctx, pc.dc.B().Unsubscribe().Channel(b.pubPrefix+channel).Build()).Error(); err != nil {
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
	size := opts.HistorySize
	if pub.Kind != herald.KindPublication || size < 0 {
		size = 0
	}
	var win time.Duration
	if opts.IdempotencyKey != "" && opts.IdempotencyWindow >= time.Millisecond {
		win = opts.IdempotencyWindow
	}
	body := pubcodec.Append(make([]byte, 0, pubcodec.Size(pub)), pub)
	keys := []string{b.key(pub.Channel, "m"), b.key(pub.Channel, "h"), b.key(pub.Channel, "i:"+opts.IdempotencyKey)}
	args := []string{
		unsafe.String(unsafe.SliceData(body), len(body)), // body is not modified again
		strconv.Itoa(size),
		ms(max(opts.HistoryTTL, 0)),
		ms(max(b.opts.HistoryMetaTTL, opts.HistoryTTL)),
		ms(win),
		b.pubPrefix + pub.Channel,
		b.newEpoch(),
	}
	exec := func() rueidis.RedisResult { return publishScript.Exec(ctx, b.client, keys, args) }
	var rr rueidis.RedisResult
	if win > 0 {
		rr = execIdempotent(ctx, exec) // the key makes a second run publish nothing
	} else {
		rr = exec()
	}
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
	arr, err := execIdempotent(ctx, func() rueidis.RedisResult { return historyScript.Exec(ctx, b.client, keys, args) }).ToArray()
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
// channel, which every node's pub/sub connection subscribes first.
func (b *Broker) PublishControl(ctx context.Context, data []byte) error {
	if err := ctx.Err(); err != nil {
		return err
	}
	cmd := b.client.B().Publish().Channel(b.ctrlChan).Message(unsafe.String(unsafe.SliceData(data), len(data))).Build()
	if err := b.client.Do(ctx, cmd).Error(); err != nil {
		return fmt.Errorf("redisbroker: failed to publish control message: %w", err)
	}
	return nil
}
