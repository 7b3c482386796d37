// Package herald is a real-time messaging server over WebSocket, as a library
// that any net/http server mounts.
//
// A Node accepts WebSocket connections (Handler for the Herald protocol,
// RawHandler for raw relay mode), keeps the registry of channels and
// subscribers, and fans publications out to them. Publications go through a
// Broker: in memory by default, or Redis/NATS (packages redisbroker and
// natsbroker) to join several nodes.
//
// Delivery guarantees: a channel's publications reach each subscriber in one
// order, the order the broker hands them to the node, so messages of one
// publisher arrive in the order they were published. Live delivery is at most
// once: a client that is cut as a slow consumer or loses its connection misses
// what was published meanwhile (and is told so by its close code).
package herald

import (
	"context"
	"crypto/rand"
	"encoding/base64"
	"encoding/json"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"net/http"
	"runtime"
	"slices"
	"sync"
	"sync/atomic"
	"time"

	"golang.org/x/time/rate"

	"github.com/heraldhq/herald/internal/wsframe"
	"github.com/heraldhq/herald/protocol"
)

// Node is one Herald server. All its methods are safe for concurrent use.
//
// Lifecycle: New, then Run (heartbeats and the broker's delivery) in a
// goroutine; serve Handler and RawHandler; Shutdown (or cancel Run's context)
// to stop. A Node is not reusable after Shutdown.
//
// Its connection limits, allowed origins, trusted proxies and namespaces can
// change while it runs (SetLimits, SetAllowedOrigins, SetTrustedProxies,
// SetNamespaces, SetSettings); the rest
// of its Config is fixed by New.
type Node struct {
	cfg    Config
	log    *slog.Logger
	broker Broker
	// batcher is broker when it is a BatchPublisher (else nil): the
	// herald.v1 session then batches a client's back-to-back publishes
	// (session_v1.go).
	batcher  BatchPublisher
	hub      *hub
	metrics  nodeMetrics
	overflow overflowRegistry // conflated and dropped counts, by namespace
	presence PresenceManager
	writers  *writerPool // writes for connections whose sockets keep up (writer.go)

	// pollMu guards poll and pollErr: the poller where idle readers park
	// (transport_park_linux.go), started by the first reader to park and
	// stopped by stop once every connection is gone; pollErr is why there
	// is none (it could not start, or the node stopped).
	pollMu  sync.Mutex
	poll    *poller
	pollErr error
	// linger is how long a reader waits in Go's netpoller after a data
	// message before it parks, once its connection has been open
	// lingerAfter (lingerFor, lingerAfter; a test sets them before any
	// connection).
	linger, lingerAfter time.Duration

	originWarned *originWarnings

	// The settings a running node can change (reload.go): each is an
	// immutable value, swapped whole and loaded once per operation. The
	// matching fields of cfg keep the values the node started with.
	origins atomic.Pointer[originChecker]
	ns      nsRef
	limits  atomic.Pointer[nodeLimits]
	proxies atomic.Pointer[proxyTrust]
	// pusher are the Pusher apps (pusher.go); their namespaces are in ns,
	// beside nsOwn, the namespaces set by Config, SetNamespaces or
	// SetSettings. nsMu serialises the changes of ns, nsOwn and pusher.
	pusher      atomic.Pointer[pusherApps]
	pusherConns pusherConns
	nsMu        sync.Mutex
	nsOwn       []Namespace

	// subLocks serialise subscribe/unsubscribe per channel (striped), so the
	// broker sees Subscribe and Unsubscribe of one channel in the order the
	// hub changed. They are held across broker calls, never on the fan-out path.
	subLocks [64]sync.Mutex

	// ctx lives until Shutdown; broker calls made for clients use it.
	ctx    context.Context
	cancel context.CancelFunc

	// streams: channel -> *stream, the continuity of each channel with
	// history and local subscribers (track.go). Entries are added and
	// removed under the channel's subLock.
	streams sync.Map
	// delta: the channels whose previous publication is kept for delta
	// subscribers, and the namespaces' delta counters (delta.go).
	delta deltaNode

	id      string // random, for logs and the API's info
	started time.Time

	mu       sync.Mutex // guards closing, conns and wg.Add
	closing  bool
	draining bool           // Drain began: late connections get 1012 too, not 1001
	conns    int            // connections admitted and not yet finished
	users    map[string]int // of those, per user id
	ips      *ipLimits
	wg       sync.WaitGroup // one per live connection (its reader)
	bg       sync.WaitGroup // goBackground's goroutines
	// events is the webhooks' tracker and deliverer; nil when webhooks
	// are off.
	events *eventTracker
	// notifying and notifyingDisc hold a token per notification hook
	// call in flight (notify): at most maxNotifying of each. notifyWG
	// counts those calls; notifyCtx bounds them (waitNotifications).
	notifying, notifyingDisc chan struct{}
	notifyWG                 sync.WaitGroup
	notifyCtx                context.Context
	notifyCancel             context.CancelFunc
	runMu                    sync.Mutex
	runDone                  chan struct{} // closed when Run returns; nil until Run starts
	// The stop (shutdown): shutDone is closed when it is over; shutCut
	// cuts it short. Guarded by shutMu.
	shutMu   sync.Mutex
	shutDone chan struct{}
	shutCut  context.CancelFunc
}

// New returns a Node for cfg. It starts no goroutine; see Run.
func New(cfg Config) (*Node, error) {
	cfg = cfg.withDefaults()
	if int64(cfg.MaxQueueBytes) < 2*cfg.MaxMessageSize {
		// Each message over half the queue would cut all its receivers as
		// slow consumers (4001): a setting that cannot work.
		return nil, fmt.Errorf("herald: MaxQueueBytes (%d) must be at least twice MaxMessageSize (%d), so that a connection's queue holds a message being written and one more waiting", cfg.MaxQueueBytes, cfg.MaxMessageSize)
	}
	oc, err := newOriginChecker(cfg.AllowedOrigins, cfg.AllowAnyOrigin)
	if err != nil {
		return nil, err
	}
	apps, err := newPusherApps(cfg.PusherApps)
	if err != nil {
		return nil, err
	}
	ns, err := newNamespaces(apps.withPusher(cfg.Namespaces))
	if err != nil {
		return nil, err
	}
	if err := checkHookNamespaces(&cfg.Hooks); err != nil {
		return nil, err
	}
	lim, err := newNodeLimits(cfg.Limits)
	if err != nil {
		return nil, err
	}
	pt, err := newProxyTrust(cfg.TrustedProxies, cfg.ForwardedHeader)
	if err != nil {
		return nil, err
	}
	n := &Node{cfg: cfg, log: cfg.Logger, broker: cfg.Broker, hub: newHub(cfg.Shards), presence: cfg.Presence, ips: newIPLimits(),
		writers: newWriterPool(runtime.GOMAXPROCS(0)), originWarned: newOriginWarnings(),
		notifying: make(chan struct{}, maxNotifying), notifyingDisc: make(chan struct{}, maxNotifying)}
	n.notifyCtx, n.notifyCancel = context.WithCancel(context.Background())
	n.origins.Store(oc)
	n.ns.p.Store(ns)
	n.pusher.Store(apps)
	n.nsOwn = cfg.Namespaces
	n.limits.Store(lim)
	n.setProxies(pt)
	if n.broker == nil {
		n.broker = NewMemoryBroker()
	}
	n.batcher, _ = n.broker.(BatchPublisher)
	n.linger, n.lingerAfter = lingerFor, lingerAfter
	if n.presence == nil {
		if pm, ok := n.broker.(PresenceManager); ok {
			n.presence = pm
		} else {
			n.presence = NewMemoryPresence()
		}
	}
	n.ctx, n.cancel = context.WithCancel(context.Background())
	n.id, n.started = newID(), time.Now()
	n.initMetrics()
	if cfg.Webhooks.Deliver != nil {
		n.events = newEventTracker(n, cfg.Webhooks)
	}
	if cfg.AllowAnyOrigin {
		n.log.Warn("origin check disabled (AllowAnyOrigin): any web site can open connections with your users' cookies")
	}
	n.broker.Register(n)
	return n, nil
}

// Run runs the node's background work — heartbeats and the broker's
// delivery — until the node has stopped. A node stops one way, Shutdown;
// Run calls it too when ctx ends first (with a deadline of
// Config.DrainWindow plus Config.CloseGrace), and when the broker fails
// for good (then Run returns the broker's error). The heartbeats and the
// broker run until the shutdown is over, so that clients are drained and
// closed by a node that still works. Call Run once.
func (n *Node) Run(ctx context.Context) error {
	n.runMu.Lock()
	if n.runDone != nil {
		n.runMu.Unlock()
		return errors.New("herald: Run called twice")
	}
	done := make(chan struct{})
	n.runDone = done
	n.runMu.Unlock()
	defer close(done)

	// Not ctx: the broker and heartbeats must outlive it until the stop is
	// over. Its values (tracing, say) still reach the broker.
	bctx, stopBackground := context.WithCancel(context.WithoutCancel(ctx))
	defer stopBackground()
	brokerErr := make(chan error, 1)
	go func() { brokerErr <- n.broker.Run(bctx) }()
	beats := make(chan struct{})
	go func() { defer close(beats); n.heartbeat(bctx) }()
	hooks := make(chan struct{}, 2)
	if n.events != nil {
		go func() { defer func() { hooks <- struct{}{} }(); n.events.run(bctx) }()
		go func() { defer func() { hooks <- struct{}{} }(); n.events.deliverer.run(bctx) }()
	} else {
		hooks <- struct{}{}
		hooks <- struct{}{}
	}

	var err error
	brokerDone := false
	select {
	case <-n.ctx.Done(): // Shutdown
	case <-ctx.Done():
		n.shutdownBounded()
	case err = <-brokerErr:
		brokerDone = true
		n.log.Error("broker stopped; shutting the node down", "err", err)
		n.shutdownBounded()
	}
	n.shutMu.Lock()
	stopped := n.shutDone
	n.shutMu.Unlock()
	<-stopped // the stop is over, whoever began it
	stopBackground()
	<-beats
	<-hooks
	<-hooks
	if !brokerDone {
		err = <-brokerErr
	}
	if errors.Is(err, context.Canceled) {
		err = nil
	}
	return err
}

// shutdownBounded is the shutdown Run makes when it must stop the node
// itself: a drain, then time for the close handshakes.
func (n *Node) shutdownBounded() {
	sctx, cancel := context.WithTimeout(context.Background(), n.cfg.DrainWindow+n.cfg.CloseGrace)
	defer cancel()
	_ = n.shutdown(sctx)
}

// heartbeat pings every connection once per PingInterval. Instead of a timer
// per connection, one ticker walks 1/16 of the connection shards per tick.
// Once per round it also sweeps the per-IP table.
func (n *Node) heartbeat(ctx context.Context) {
	const slices = 16
	t := time.NewTicker(max(n.cfg.PingInterval/slices, time.Millisecond))
	defer t.Stop()
	shards := len(n.hub.conns)
	per := (shards + slices - 1) / slices
	next := 0
	for {
		select {
		case <-ctx.Done():
			return
		case <-t.C:
		}
		for range per {
			n.hub.forEachConnInShard(next, func(c *conn) { c.ping() })
			next = (next + 1) % shards
		}
		if next == 0 { // a round of pings is done
			n.ips.sweep(time.Now())
		}
	}
}

// Shutdown stops the node, the one way it stops: new connections are
// refused with 503 (and Ready fails); with Config.DrainWindow the
// connections are first closed with 1012 spread over that window (see
// Drain); every connection left is sent close 1001 after what is already
// queued for it; and Shutdown waits until every connection has ended, or
// ctx is done — then it cuts the remaining sockets and still waits for
// their goroutines, which end at once. It returns ctx's error if the
// deadline cut it short.
func (n *Node) Shutdown(ctx context.Context) error {
	err := n.shutdown(ctx)
	n.runMu.Lock()
	done := n.runDone
	n.runMu.Unlock()
	if done != nil {
		<-done
	}
	return err
}

// shutdown runs the stop once; a caller that comes while it runs waits for
// it, and if its own ctx ends first it cuts the stop short (every deadline
// given is honoured, the earliest wins) and returns its ctx's error.
func (n *Node) shutdown(ctx context.Context) error {
	n.shutMu.Lock()
	if n.shutDone == nil {
		n.shutDone = make(chan struct{})
		sctx, cancel := context.WithCancel(ctx)
		n.shutCut = cancel
		n.shutMu.Unlock()
		cut := n.stop(sctx)
		cancel()
		close(n.shutDone)
		if cut {
			return ctx.Err() // nil when another caller's deadline cut it
		}
		return nil
	}
	done, cut := n.shutDone, n.shutCut
	n.shutMu.Unlock()
	select {
	case <-done:
		return nil
	case <-ctx.Done():
		cut()
		<-done
		return ctx.Err()
	}
}

// stop is the stop itself: refuse new connections, drain with
// DrainWindow, close the rest with 1001, wait for every connection until
// ctx ends (then cut their sockets), then end the node's background work.
// It reports whether ctx cut it short.
func (n *Node) stop(ctx context.Context) (cut bool) {
	n.mu.Lock()
	begun := n.draining
	n.mu.Unlock()
	if w := n.cfg.DrainWindow; w > 0 && !begun {
		_ = n.Drain(ctx, w) // cut short by ctx: the rest below cuts at once
	}
	n.mu.Lock()
	n.closing = true
	n.mu.Unlock()
	n.forEachConn(func(c *conn) { c.close(CloseGoingAway, "server shutting down") })
	drained := make(chan struct{})
	go func() { n.wg.Wait(); close(drained) }()
	select {
	case <-drained:
	case <-ctx.Done():
		cut = true
		n.forEachConn(func(c *conn) { c.cut() })
		<-drained
	}
	n.stopPoller()
	n.waitNotifications(ctx)
	if n.events != nil {
		// Every connection is gone: release what this node held, and
		// deliver what it can, within what is left of ctx.
		n.events.finish(ctx)
	}
	n.mu.Lock() // orders the cancel with goBackground's Add
	n.cancel()
	n.mu.Unlock()
	n.bg.Wait()
	return cut
}

func (n *Node) forEachConn(f func(c *conn)) {
	for i := range n.hub.conns {
		n.hub.forEachConnInShard(i, f)
	}
}

func (n *Node) isClosing() bool {
	n.mu.Lock()
	defer n.mu.Unlock()
	return n.closing
}

// Handler returns the http.Handler of the Herald protocol endpoint
// (subprotocol herald.v1, documented in PROTOCOL.md).
func (n *Node) Handler() http.Handler {
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) { n.serve(w, r, false) })
}

// RawHandler returns the http.Handler of raw relay mode: GET ?channel=NAME
// upgrades, and every text or binary message the client sends is relayed
// verbatim, with its opcode, to every other connection on that channel (and
// back to the sender too with &echo=1).
func (n *Node) RawHandler() http.Handler {
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) { n.serve(w, r, true) })
}

// v1Subprotocols are the subprotocols the protocol endpoint selects from.
var v1Subprotocols = []string{protocol.Subprotocol}

// serve runs one WebSocket connection: it checks the handshake, who the
// client is and whether it is admitted — each refusal an HTTP error before
// the upgrade — then accepts it and hands the connection to its reader.
func (n *Node) serve(w http.ResponseWriter, r *http.Request, raw bool) {
	subprotocols := v1Subprotocols
	var rawCh string
	if raw {
		subprotocols, rawCh = nil, r.URL.Query().Get("channel")
	}
	hs, no := n.checkHandshake(w, r, subprotocols)
	ip, remote := n.clientAddr(r)
	id := identity{client: newID(), remote: remote}
	if no == nil {
		no = n.identify(r, raw, rawCh, &id)
	}
	if no == nil {
		no = n.admit(w, ip, id.user)
		if no == nil && raw && n.cfg.Hooks.Connect != nil {
			no = n.rawConnectAdmitted(r, rawCh, ip, &id)
		}
	}
	if no != nil {
		http.Error(w, no.msg, no.status)
		return
	}
	lim := n.limits.Load() // before the 101: see newConn
	nc, resp, err := n.hijack(w, hs)
	if err != nil {
		n.log.Info("websocket handshake failed", "remote", remote, "err", err)
		n.release(ip, id.user)
		return
	}
	c := n.newConn(nc, hs, id, ip, raw, lim)
	c.remote = remote
	// A raw connection is subscribed before its client has the 101: a
	// publication made once the client is connected reaches it. What is
	// delivered meanwhile waits in its queue, held until the 101 is out.
	c.out.hold()
	n.hub.addConn(c)
	if raw {
		s := &rawSession{c: c, channel: rawCh}
		s.exp.set(c, id.expires, id.hookExpiry)
		c.sess = s
		c.subMu.Lock() // the hub holds c already: the server may unsubscribe it
		_, finish, err := n.subscribeConn(c, rawCh, nil, "", nil, "")
		if err != nil {
			code := CloseTryAgainLater
			if err.Code != protocol.CodeUnavailable {
				code = ClosePolicyViolation // the subscribe hook refused
			}
			c.close(code, err.Message)
		} else {
			finish()
		}
		c.subMu.Unlock()
	} else {
		c.sess = newV1Session(c, id, r)
	}
	if err := n.switchProtocols(nc, resp); err != nil {
		// The client is gone. The reader and writer fail on the closed
		// socket and take the connection down the usual way: OnConnect
		// and then OnDisconnect run for it, as for a client that left
		// at once.
		n.log.Info("websocket handshake failed", "remote", remote, "err", err)
		nc.Close()
	}
	if c.out.resume() {
		c.startWriter()
	}
	if raw || (id.authed && n.cfg.Hooks.Connect == nil) {
		n.admitConn(c)
	}
	n.connected(c, ClientInfo{ID: c.id, UserID: c.user, Info: c.info, Raw: raw, RawChannel: rawCh, RemoteAddr: remote})
	n.log.Debug("connected", "client", c.id, "user", c.user, "raw", raw, "remote", remote)
	c.startReader(hs.deflate)
}

// connected is the last step of every endpoint's admission (WebSocket,
// Pusher, SSE), once c is in the hub with its session set: a Drain or
// Shutdown that began after c was admitted may have missed it, so c gets
// the close they give the rest; then Config.OnConnect is told, with info.
func (n *Node) connected(c *conn, info ClientInfo) {
	n.mu.Lock()
	closing, draining := n.closing, n.draining
	n.mu.Unlock()
	switch {
	case draining:
		c.close(CloseServiceRestart, "server restarting, reconnect")
	case closing:
		c.close(CloseGoingAway, "server shutting down")
	}
	if n.cfg.OnConnect != nil {
		n.cfg.OnConnect(info)
	}
}

// newConn makes the connection of an accepted handshake; its session is
// the caller's to set, before the connection is shared. lim are the limits
// it is admitted with (its message rate), loaded before the client could
// see its 101: a SetLimits that returns after the client has its
// connection never applies to that connection.
func (n *Node) newConn(nc net.Conn, hs handshake, id identity, ip string, raw bool, lim *nodeLimits) *conn {
	c := &conn{
		node:   n,
		id:     id.client,
		ip:     ip,
		raw:    raw,
		echo:   false,
		user:   id.user,
		info:   id.info,
		grants: id.grants,
		out:    newOutbound(n.cfg.MaxQueueMessages, n.cfg.MaxQueueBytes, closeSlowFrame),
	}
	c.nc, c.rc = nc, rawConn(nc)
	if size := n.cfg.SocketSendBuffer; size > 0 {
		setSendBuffer(nc, size)
	}
	c.writeLoopFn, c.readLoopFn = c.writeLoop, c.readLoop
	if raw {
		c.form = formRaw
		c.echo = id.echo
	}
	if !raw {
		c.out.note = c.droppedFrame
	}
	if hs.deflate {
		c.form |= 1
	}
	if lim.MessageRate > 0 {
		c.limiter = rate.NewLimiter(rate.Limit(lim.MessageRate), lim.MessageBurst)
		c.refusals = rate.NewLimiter(rate.Limit(lim.MessageRate), lim.MessageBurst)
	}
	return c
}

// identity is who a handshake says the client is.
type identity struct {
	client string // the connection's id, chosen before the hooks see it
	user   string
	info   json.RawMessage
	grants map[string]struct{}
	// authed: no connect command is needed (no token checks, or a valid
	// token came with the handshake).
	authed  bool
	expires time.Time
	// hookExpiry: expires was set by the connect hook, and the refresh
	// hook extends it (a token's expiry is the client's to refresh).
	hookExpiry bool
	echo       bool // raw mode's echo=1
	// remote is the client's address (Node.ClientAddr), for logs and hooks.
	remote string
}

// identify says who a handshake's client is: Config.Authenticate's user,
// and with token checks on, a token sent with the handshake (an
// Authorization: Bearer header, or for raw mode the token query
// parameter). For raw mode it also checks the channel and that the client
// may subscribe to it (after the connect hook, when there is one:
// rawConnectAdmitted).
func (n *Node) identify(r *http.Request, raw bool, rawCh string, id *identity) (no *handshakeRefusal) {
	var rawNS *Namespace
	if raw {
		ns, err := n.channelNamespace(rawCh)
		if err != nil {
			return &handshakeRefusal{http.StatusBadRequest, "Bad Request: " + err.Message}
		}
		rawNS, id.echo = ns, r.URL.Query().Get("echo") == "1"
	}
	if no := n.identifyUser(r, raw, id); no != nil {
		return no
	}
	if raw && n.cfg.Hooks.Connect == nil { // else: after the hook (rawConnectAdmitted)
		if err := n.permit(id.user, id.grants, rawCh, rawNS.AllowSubscribe); err != nil {
			return &handshakeRefusal{http.StatusForbidden, "Forbidden: " + err.Message}
		}
	}
	return nil
}

// identifyUser says who a handshake's user is: Config.Authenticate's,
// then with token checks on, a token's (Authorization: Bearer, or with
// queryToken the token query parameter).
func (n *Node) identifyUser(r *http.Request, queryToken bool, id *identity) *handshakeRefusal {
	if n.cfg.Authenticate != nil {
		creds, err := n.cfg.Authenticate(r)
		if err == nil {
			err = validUserID(creds.UserID)
		}
		if err != nil {
			n.metrics.authFailures.Add(1)
			n.log.Info("connection refused by Authenticate", "remote", id.remote, "err", err)
			return &handshakeRefusal{http.StatusUnauthorized, "Unauthorized"}
		}
		id.user, id.info = creds.UserID, creds.Info
	}
	if n.cfg.Tokens == nil {
		id.authed = true
	} else if no := n.handshakeToken(r, queryToken, id); no != nil {
		return no
	}
	return nil
}

// handshakeToken verifies the token sent with a handshake, if any, into id.
func (n *Node) handshakeToken(r *http.Request, raw bool, id *identity) *handshakeRefusal {
	chk := tokenCheck{use: forConnection, user: id.user, anyUser: id.user == "", via: "header", remote: id.remote}
	token := bearerToken(r.Header.Get("Authorization"))
	if token == "" && raw {
		token, chk.via = r.URL.Query().Get("token"), "query"
	}
	if token == "" {
		// Protocol clients send their token in connect; raw clients
		// without one are anonymous, and namespaces decide what they may do.
		id.authed = raw
		return nil
	}
	claims, err := n.verifyToken(r.Context(), token, chk)
	if err != nil {
		return &handshakeRefusal{http.StatusUnauthorized, "Unauthorized: " + tokenRefusal(err)}
	}
	id.user, id.authed, id.expires = claims.UserID, true, claims.ExpiresAt
	if claims.Info != nil {
		id.info = claims.Info
	}
	id.grants = grantSet(claims.Channels)
	return nil
}

func grantSet(chans []string) map[string]struct{} {
	if len(chans) == 0 {
		return nil
	}
	m := make(map[string]struct{}, len(chans))
	for _, ch := range chans {
		m[ch] = struct{}{}
	}
	return m
}

// admit applies the connection limits before an upgrade and counts the
// connection in; a zero status must be paired with release(ip).
func (n *Node) admit(w http.ResponseWriter, ip, user string) *handshakeRefusal {
	lim := n.limits.Load()
	n.mu.Lock()
	switch {
	case n.closing:
		n.mu.Unlock()
		return &handshakeRefusal{http.StatusServiceUnavailable, "Service Unavailable: server shutting down"}
	case !under(n.conns, lim.MaxConnections):
		n.mu.Unlock()
		n.metrics.limitHits.Add(1)
		return &handshakeRefusal{http.StatusServiceUnavailable, "Service Unavailable: too many connections"}
	}
	n.conns++
	n.wg.Add(1)
	n.mu.Unlock()
	if st, secs := n.ips.acquire(ip, time.Now(), lim); st != 0 {
		n.mu.Lock()
		n.conns--
		n.mu.Unlock()
		n.wg.Done()
		n.metrics.limitHits.Add(1)
		retryAfter(w, secs)
		return &handshakeRefusal{st, "Too Many Requests: too many connections from this address"}
	}
	if !n.moveUserMax("", user, lim.MaxConnectionsPerUser) {
		n.release(ip, "")
		n.metrics.limitHits.Add(1)
		return &handshakeRefusal{http.StatusTooManyRequests, "Too Many Requests: too many connections for this user"}
	}
	return nil
}

// release counts a connection of user (may be "") out, after admit.
func (n *Node) release(ip, user string) {
	n.ips.release(ip)
	n.mu.Lock()
	n.conns--
	n.moveUserLocked(user, "")
	n.mu.Unlock()
	n.wg.Done()
}

// moveUser moves one connection's slot from user from to user to (either
// may be "" for anonymous), unless to already has MaxConnectionsPerUser
// connections (the limit in force). Counting under n.mu, from admission on,
// means two handshakes of one user at the same instant cannot both pass
// the cap.
func (n *Node) moveUser(from, to string) bool {
	return n.moveUserMax(from, to, n.limits.Load().MaxConnectionsPerUser)
}

func (n *Node) moveUserMax(from, to string, maxPerUser int) bool {
	n.mu.Lock()
	defer n.mu.Unlock()
	if to != "" && !under(n.users[to], maxPerUser) {
		return false
	}
	n.moveUserLocked(from, to)
	return true
}

func (n *Node) moveUserLocked(from, to string) {
	if from == to {
		return
	}
	if from != "" {
		if n.users[from]--; n.users[from] <= 0 {
			delete(n.users, from)
		}
	}
	if to != "" {
		if n.users == nil {
			n.users = make(map[string]int)
		}
		n.users[to]++
	}
}

// permit checks a client's permission p on channel; see Namespace.
func (n *Node) permit(user string, grants map[string]struct{}, channel string, p Permission) *Error {
	if p == permNoNamespace { // the namespace was removed (SetNamespaces)
		return errorf(protocol.CodeBadChannel, "channel %q is in no configured namespace", channel)
	}
	if users, limited := userLimit(channel); limited {
		if user != "" && slices.Contains(users, user) {
			return nil
		}
		return errorf(protocol.CodePermission, "channel %q is limited to the users it names", channel)
	}
	if p == PermDefault {
		p = PermAnyone
		if n.cfg.Tokens != nil {
			p = PermAuthenticated
		}
	}
	switch p {
	case PermAnyone:
		return nil
	case PermAuthenticated:
		if user != "" {
			return nil
		}
		return errorf(protocol.CodePermission, "channel %q needs an authenticated user", channel)
	case PermGranted:
		if _, ok := grants[channel]; ok {
			return nil
		}
		return errorf(protocol.CodePermission, "channel %q needs a token that grants it", channel)
	}
	return errorf(protocol.CodePermission, "not allowed on channel %q", channel)
}

func newID() string {
	var b [12]byte
	_, _ = rand.Read(b[:])
	return base64.RawURLEncoding.EncodeToString(b[:])
}

// buildFrame frames payload, deflated when the connection negotiated
// compression and the payload is large enough to be worth it.
func (n *Node) buildFrame(op byte, payload []byte, deflate bool) []byte {
	if deflate && len(payload) >= n.cfg.CompressionMinSize {
		d := wsframe.Deflate(nil, payload)
		return wsframe.Append(make([]byte, 0, wsframe.HeaderLen(len(d))+len(d)), op, d, true)
	}
	return wsframe.Append(make([]byte, 0, wsframe.HeaderLen(len(payload))+len(payload)), op, payload, false)
}

// setSendBuffer sets a client socket's kernel send buffer
// (Config.SocketSendBuffer), under TLS that of the connection below; best
// effort: the OS may round it, and a socket without one is left alone.
func setSendBuffer(nc net.Conn, size int) {
	if t, ok := nc.(interface{ NetConn() net.Conn }); ok {
		nc = t.NetConn()
	}
	if b, ok := nc.(interface{ SetWriteBuffer(int) error }); ok {
		_ = b.SetWriteBuffer(size)
	}
}

// control is a node-to-node command carried by Broker.PublishControl.
type control struct {
	Op      string    `json:"op"` // "send", "user", "all", "disconnect", "disconnect_user", "pusher_terminate"
	Client  string    `json:"client,omitempty"`
	User    string    `json:"user,omitempty"`
	Data    []byte    `json:"data,omitempty"`
	Binary  bool      `json:"binary,omitempty"`
	Code    CloseCode `json:"code,omitempty"`
	Reason  string    `json:"reason,omitempty"`
	Channel string    `json:"channel,omitempty"`
	App     string    `json:"app,omitempty"` // pusher_terminate's app ID
}

func (n *Node) publishControl(ctx context.Context, m control) error {
	if n.ctx.Err() != nil {
		return errNodeClosed
	}
	b, err := json.Marshal(m)
	if err != nil {
		return &Error{Code: protocol.CodeInternal, Message: "failed to encode a control message", Err: err}
	}
	if err := n.broker.PublishControl(ctx, b); err != nil {
		return unavailable("control message failed", err)
	}
	return nil
}

// HandleControl implements BrokerHandler.
func (n *Node) HandleControl(data []byte) {
	var m control
	if err := json.Unmarshal(data, &m); err != nil {
		n.log.Warn("bad control message from broker", "err", err)
		return
	}
	var frames [numForms][]byte
	deliver := func(c *conn) {
		f := frames[c.form]
		if f == nil {
			f = n.encode(protocol.PushMessage, "", 0, m.Data, m.Binary, c.form)
			frames[c.form] = f
		}
		c.enqueue(f)
	}
	switch m.Op {
	case "send":
		if c := n.hub.conn(m.Client); c != nil {
			deliver(c)
		}
	case "user":
		n.hub.forEachUserConn(m.User, deliver)
	case "all":
		n.forEachConn(deliver)
	case "disconnect":
		if c := n.hub.conn(m.Client); c != nil {
			c.close(m.Code, m.Reason)
		}
	case "unsubscribe_user", "unsubscribe_client":
		// Not on this goroutine: ending a channel's last subscription calls
		// the broker (Unsubscribe), whose answer may need the very goroutine
		// that delivers this message (Redis reads its pub/sub connection
		// there): waiting for it stalled all delivery until the link was
		// deemed dead, and every subscriber got 4006. The same holds for
		// a first subscription (Subscribe).
		// In order with the subscribes: a subscribe then an unsubscribe
		// must leave the connection unsubscribed.
		for _, c := range n.connsOf(m) {
			n.serverOp(c, func() { n.unsubscribeHere(c, m.Channel, m.Reason) })
		}
	case "subscribe_user", "subscribe_client":
		for _, c := range n.connsOf(m) {
			n.serverOp(c, func() { n.subscribeHere(c, m.Channel) })
		}
	case "disconnect_user":
		n.hub.forEachUserConn(m.User, func(c *conn) { c.close(m.Code, m.Reason) })
	case "pusher_terminate":
		n.hub.forEachUserConn(m.User, func(c *conn) { pusherTerminate(c, m.App, m.Reason) })
	default:
		n.log.Warn("unknown control op from broker", "op", m.Op)
	}
}

// goBackground runs f on a goroutine the node owns: Shutdown waits for it
// (f's broker calls end with the node's context). Once the node is shut
// down it runs nothing, and reports false.
func (n *Node) goBackground(f func()) bool {
	n.mu.Lock()
	if n.ctx.Err() != nil {
		n.mu.Unlock()
		return false
	}
	n.bg.Add(1)
	n.mu.Unlock()
	go func() {
		defer n.bg.Done()
		f()
	}()
	return true
}

// Send sends data to one connection, on whichever node holds it, as a
// "message" push. Sending to a client id that no node holds is not an error:
// delivery is at most once.
func (n *Node) Send(ctx context.Context, clientID string, data []byte, opts ...PublishOption) error {
	s := settings(opts)
	return n.publishControl(ctx, control{Op: "send", Client: clientID, Data: data, Binary: s.binary})
}

// SendToUser sends data to every connection of a user, on every node.
func (n *Node) SendToUser(ctx context.Context, userID string, data []byte, opts ...PublishOption) error {
	if userID == "" {
		return errorf(protocol.CodeBadRequest, "SendToUser needs a user id")
	}
	s := settings(opts)
	return n.publishControl(ctx, control{Op: "user", User: userID, Data: data, Binary: s.binary})
}

// Broadcast sends data to every connection on every node.
func (n *Node) Broadcast(ctx context.Context, data []byte, opts ...PublishOption) error {
	s := settings(opts)
	return n.publishControl(ctx, control{Op: "all", Data: data, Binary: s.binary})
}

// Disconnect closes one connection with code and reason after what is
// already queued for it. Use CloseDisconnected to let the client reconnect,
// CloseForbidden to ask it not to.
func (n *Node) Disconnect(ctx context.Context, clientID string, code CloseCode, reason string) error {
	return n.publishControl(ctx, control{Op: "disconnect", Client: clientID, Code: code, Reason: reason})
}

// DisconnectUser closes every connection of a user, on every node.
func (n *Node) DisconnectUser(ctx context.Context, userID string, code CloseCode, reason string) error {
	return n.publishControl(ctx, control{Op: "disconnect_user", User: userID, Code: code, Reason: reason})
}

// Stats is a snapshot of a node's local state.
type Stats struct {
	// Node is the node's id (random, made by New), for logs and the API.
	Node string `json:"node"`
	// Started is when New made the node.
	Started time.Time `json:"started"`
	// Draining: Drain or Shutdown has begun.
	Draining    bool `json:"draining"`
	Connections int  `json:"connections"`
	// Channels maps every channel with local subscribers to their number.
	Channels map[string]int `json:"channels"`
	// MessagesIn counts messages received from clients; FramesOut frames
	// written to sockets; Published publications made through this node;
	// SlowConsumers clients cut as slow.
	MessagesIn    uint64 `json:"messages_in"`
	FramesOut     uint64 `json:"frames_out"`
	Published     uint64 `json:"published"`
	SlowConsumers uint64 `json:"slow_consumers"`
	// Overflow counts, by namespace name, the publications that overflow
	// policies took out of slow subscribers' queues (see OverflowPolicy):
	// every namespace that has fanned out a publication under a policy
	// other than disconnect since the node started.
	Overflow map[string]OverflowCounts `json:"overflow,omitempty"`
}

// OverflowCounts are one namespace's publications that overflow policies
// took out of slow subscribers' queues, one per subscriber's copy.
type OverflowCounts struct {
	// Conflated: replaced by a newer one of the same channel and key.
	Conflated uint64 `json:"conflated"`
	// Dropped: dropped under drop_oldest (the client was told).
	Dropped uint64 `json:"dropped"`
}

// Stats returns a snapshot of the node's connections and channels.
func (n *Node) Stats() Stats {
	return Stats{
		Node:          n.id,
		Started:       n.started,
		Draining:      n.isClosing(),
		Connections:   n.hub.numConns(),
		Channels:      n.hub.channelCounts(),
		MessagesIn:    n.metrics.messagesIn.Load(),
		FramesOut:     n.metrics.framesOut.Load(),
		Published:     n.metrics.pubClient.Load() + n.metrics.pubRaw.Load() + n.metrics.pubServer.Load(),
		SlowConsumers: n.metrics.slowConsumers.Load(),
		Overflow:      n.overflowCounts(),
	}
}

func (n *Node) overflowCounts() map[string]OverflowCounts {
	var m map[string]OverflowCounts
	n.overflow.each(func(name string, st *overflowStats) {
		if m == nil {
			m = make(map[string]OverflowCounts)
		}
		m[name] = OverflowCounts{Conflated: st.conflated.Load(), Dropped: st.dropped.Load()}
	})
	return m
}

// CheckChannel reports whether channel is one this node serves: a valid
// name in a configured namespace (an *Error of code bad_channel if not).
func (n *Node) CheckChannel(channel string) error {
	if _, err := n.channelNamespace(channel); err != nil {
		return err
	}
	return nil
}

// ReportAuthFailure counts a refused credential in
// herald_auth_failures_total, for handlers built on the node (the HTTP
// API, the dashboard) that check credentials of their own.
func (n *Node) ReportAuthFailure() { n.metrics.authFailures.Add(1) }

// UnsubscribeUser unsubscribes every connection of a user from channel, on
// every node. Each protocol client gets an unsub push (code
// server_unsubscribe) after the channel's last publication it receives,
// and must not resubscribe by itself; a raw client of the channel is
// closed with CloseForbidden.
func (n *Node) UnsubscribeUser(ctx context.Context, userID, channel string) error {
	if err := n.CheckChannel(channel); err != nil {
		return err
	}
	return n.publishControl(ctx, control{Op: "unsubscribe_user", User: userID, Channel: channel, Reason: "unsubscribed by the server"})
}

// opCtx bounds one broker, presence or token operation made for a client:
// it ends at Config.BrokerTimeout or when the node shuts down.
func (n *Node) opCtx() (context.Context, context.CancelFunc) {
	return context.WithTimeout(n.ctx, n.cfg.BrokerTimeout)
}

// poller returns the node's poller, starting it with the first caller.
func (n *Node) poller() (*poller, error) {
	n.pollMu.Lock()
	defer n.pollMu.Unlock()
	if n.poll == nil && n.pollErr == nil {
		n.poll, n.pollErr = startPoller()
		if n.pollErr != nil {
			n.log.Warn("idle readers cannot park; each waits in a goroutine", "err", n.pollErr)
		}
	}
	return n.poll, n.pollErr
}

// errNodeStopped: the node has stopped; nothing may park any more.
var errNodeStopped = errors.New("herald: node stopped")

// stopPoller stops the poller, once every connection is gone (stop).
func (n *Node) stopPoller() {
	n.pollMu.Lock()
	p := n.poll
	n.poll, n.pollErr = nil, errNodeStopped
	n.pollMu.Unlock()
	if p != nil {
		p.stop()
	}
}
