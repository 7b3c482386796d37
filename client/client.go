// Package client is the Go client of Herald's WebSocket protocol, herald.v1
// (PROTOCOL.md at the repository root): for Go programs and for the load
// generator.
//
//	c := client.New("ws://localhost:8080/ws", client.Options{})
//	if err := c.Connect(ctx); err != nil { … }
//	defer c.Close()
//	sub, err := c.Subscribe(ctx, "chat", client.SubscribeOptions{
//		OnPublication: func(p client.Publication) { … },
//		OnRecoveryFailed: func(reason string) { /* reload state */ },
//	})
//	_, err = c.Publish(ctx, "chat", []byte(`{"text":"hi"}`))
//
// # Connection
//
// Connect opens the first connection. From then on a background goroutine
// keeps one: when it is lost, the client reconnects with exponential backoff
// and jitter, and resubscribes every channel from the last position it saw,
// so that on channels with history no publication is missed or repeated, and
// anything it cannot recover is reported with OnRecoveryFailed. A close code
// from 4500 to 4999 or 1008, or a handshake refused with HTTP 401 or 403,
// means "do not reconnect": the client stops, Done is closed and Err says
// why. Every other close reconnects, 4007 (closed for sending too fast)
// included. A subscription the server ends (an unsub push, e.g. the server
// application's unsubscribe_user) is never resubscribed: OnUnsubscribed
// says so. Close stops everything and waits for the client's goroutines.
//
// A refused connect command (a token or the server's Connect hook said no)
// fails with an *Error carrying the server's code, which may be one of the
// application's own; the server then closes with 4500 or 4501 (the client
// stops: the error holds the *CloseError too) or, when its backend failed,
// with 1013 (the client retries with backoff). Options.ConnectData is
// sent with each connect for the Connect hook, whose answer is
// StateChange.Data.
//
// # Server-side subscriptions
//
// The server may subscribe the client by itself (its Connect hook, or the
// application's Node.SubscribeUser and SubscribeClient).
// Options.OnServerSubscribe announces each such *Subscription
// (ServerSide reports true) and gives its handlers; from then on it
// behaves as one of the client's own — publications in order, Position,
// OnUnsubscribed, Unsubscribe — except after a reconnect: the client does
// not resubscribe it but sends its position in the connect command, and
// the server makes it again (recovering what was missed, or saying it
// could not with OnRecoveryFailed) or ends it (OnUnsubscribed with
// protocol.UnsubNotRestored). It is never resubscribed by the client.
//
// # RPC
//
// RPC calls a method of the application's backend through the server and
// returns its JSON answer; a refusal is an *Error whose Code is the
// backend's (switch on it).
//
// # Goroutines and handlers
//
// A connected client runs two goroutines: the connection goroutine, which
// dials, reads every frame and is the only reader of the socket, and the
// dispatcher, which calls every handler — OnState, OnMessage and all the
// subscription handlers — one at a time, in the order the events arrived.
// So the handlers of one subscription (and of the whole client) never run
// concurrently, and publications reach OnPublication in offset order.
// Handlers may call the client's methods (Publish, Subscribe, Unsubscribe…),
// except Close, which waits for the dispatcher and so would wait for itself:
// call `go c.Close()` from a handler. A request made from a handler holds
// up every other handler for its round trip. Events wait for the dispatcher
// in a queue bounded by Options.QueueSize; see Options.QueueTimeout for what
// a handler that does not keep up causes.
//
// Two more come and go with a connection: the token refresher (with
// GetToken and an expiring token), and the sender, which sends the
// commands the client makes on its own — the resubscribes after a
// reconnect, at the client's pace, and their retries — and exits when none
// is left. Both end with the connection.
//
// Writes to the socket are serialised by a mutex and each has a deadline,
// so request methods are safe for concurrent use from any goroutine.
//
// # Requests
//
// Every request (Subscribe, Publish, History…) carries a fresh id and waits
// for its reply up to its context's deadline and Options.RequestTimeout,
// whichever comes first. Errors the server returns are *Error (use
// errors.As and switch on Code); a request made while disconnected, or whose
// connection drops before the reply, fails with ErrDisconnected (but a
// publish with retries on waits for the reconnect: see Retries); one without
// a reply in time fails with ErrTimeout (or the context's error).
//
// # Retries
//
// A request the server refuses with rate_limited (it did nothing) is sent
// again after Options.RetryBackoff, within its ctx and Options.RetryTimeout,
// so being rate limited slows requests down instead of failing them; and
// from then on the client paces all its commands, resubscribes included,
// to stay under the server's rate rather than be closed for flooding (see
// Options.RetryBackoff). If it is closed all the same (4007), it
// reconnects after a backoff, as after any close that allows it.
//
// Publish and PublishBinary also retry when the outcome is unknown — an
// unavailable reply, or a connection lost before the reply — because each
// carries an idempotency key (a random one unless the caller gives one), so
// that a retry of a publication that did happen publishes nothing and
// returns the first result with Duplicate set: the publication happens at
// most once, and exactly once when Publish returns no error; otherwise the
// error is a *PublishError that holds the key. WithRetry(false) and
// Options.DisablePublishRetry turn this off.
package client

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"log/slog"
	"math/rand/v2"
	"net/http"
	"sync"
	"sync/atomic"
	"time"

	"github.com/gorilla/websocket"

	"github.com/heraldhq/herald/protocol"
)

// Options configure a Client. The zero value works: every zero field means
// the default written next to it.
type Options struct {
	// Token is sent in the connect command as "token" (the server's
	// connection token). GetToken, when set, replaces it.
	Token string
	// GetToken is called before every connection attempt, the first and each
	// reconnect, on the connection goroutine, so it can fetch a fresh token;
	// and, while connected, to renew an expiring token: when four fifths of
	// its remaining life have passed, the client sends refresh with a fresh
	// one (from a goroutine of its own), so the server never closes with 4004.
	// It must return when ctx is done (Close cancels it). An error counts as
	// a failed attempt: Connect returns it, a reconnect retries after backoff.
	GetToken func(ctx context.Context) (string, error)
	// ConnectData is sent in every connect command as "data", for the
	// server's Connect hook (a backend's own credentials, a device id…):
	// any JSON value; nil sends none. GetConnectData, when set, replaces
	// it: it is called before every connection attempt, after GetToken, on
	// the connection goroutine, and must return when ctx is done. Data
	// that is not valid JSON, or an error, fails the attempt (Connect
	// returns it; a reconnect retries after backoff). The Connect hook's
	// answer is StateChange.Data and Client.ConnectReplyData.
	ConnectData    json.RawMessage
	GetConnectData func(ctx context.Context) (json.RawMessage, error)
	// Header is sent with every WebSocket handshake (cookies, Authorization).
	Header http.Header
	// Dialer dials the WebSocket; it is copied, never modified. Nil means
	// websocket.DefaultDialer. The client sets Subprotocols to herald.v1 if
	// it names none.
	Dialer *websocket.Dialer
	// Logger receives the client's logs. Nil means silent.
	Logger *slog.Logger

	// RequestTimeout bounds the wait for each reply (with the context's
	// deadline, whichever comes first), each connection attempt (dial,
	// handshake and connect reply), and each write. Zero means 10s.
	RequestTimeout time.Duration
	// ReadTimeout: a connection on which nothing at all arrives for this
	// long is presumed dead, and the client reconnects. The server pings
	// every 25 s by default, so keep it above the server's ping interval.
	// Zero means 60s.
	ReadTimeout time.Duration
	// Backoff spaces reconnection attempts.
	Backoff Backoff

	// RetryBackoff spaces the retries of a request: after rate_limited (any
	// request), and after unavailable (a publish). Before retry n (from 0)
	// the request waits a random time between Min/4 and min(Max, Min·2ⁿ),
	// like reconnection attempts. Once the server has answered rate_limited,
	// the client also spaces all its commands by a gap that starts at Min,
	// doubles (up to Max) at every further rate_limited reply and shrinks by
	// an eighth at every other reply (pacing stops below a millisecond), so
	// that it settles just under the server's rate instead of being closed
	// for flooding (4007). The zero value means Min 200ms and Max 10s; a Min
	// well below the server's interval between messages (200ms at 5
	// messages a second) with a small server burst risks 4007 closes.
	RetryBackoff Backoff
	// RetryTimeout bounds the time a request spends being retried, from
	// the call (the request's ctx bounds it too): past it, the last error
	// is returned. It must stay well inside the server's idempotency window
	// (2 minutes by default), or a late retry could publish a second time.
	// Zero means 60s.
	RetryTimeout time.Duration
	// DisablePublishRetry turns off, for every Publish and PublishBinary of
	// this client, the automatic idempotency key and the retries after an
	// unknown outcome (see WithRetry, which overrides it per call).
	DisablePublishRetry bool

	// QueueSize bounds the events — publications, join/leave and messages —
	// waiting for the handlers. Zero means 8192 (the server's per-connection
	// queue). The queue's memory grows with use, not with this bound.
	QueueSize int
	// QueueTimeout: when the queue is full, the connection goroutine stops
	// reading and waits for room. If none frees up within QueueTimeout, the
	// client drops the connection (StateChange.Err matches ErrSlowHandler) and
	// reconnects, recovering the publications it could not queue, as the
	// server does with a slow consumer. The reader is never blocked for
	// longer, and nothing is lost silently. Zero means 5s.
	QueueTimeout time.Duration

	// OnState is called, on the dispatcher goroutine, at every change of
	// the connection's state. It is not called for Close itself.
	OnState func(StateChange)
	// OnMessage is called, on the dispatcher goroutine, for every "message"
	// push: data the server sent to this connection, its user, or everyone.
	OnMessage func(Message)
	// OnServerSubscribe is called, on the dispatcher goroutine, when the
	// server subscribes the client to a channel by itself (a server-side
	// subscription: the Connect hook's Channels, Node.SubscribeUser,
	// Node.SubscribeClient). It returns the subscription's handlers, which
	// get its events as a Subscribe's would, from its first publication
	// on: only the handler fields count (Token, GetToken and Since do not).
	//
	// Unlike the client's own, a server-side subscription is not
	// resubscribed after a reconnect: the client sends its position in the
	// connect command, and the server makes it again and recovers from
	// there (OnRecoveryFailed when it cannot), or ends it with an unsub
	// push (OnUnsubscribed, code protocol.UnsubNotRestored) when the
	// application no longer grants it. A subscription carried across a
	// reconnect keeps its *Subscription and is announced once. Nil: the
	// client still holds and restores them, but their events are dropped.
	OnServerSubscribe func(sub *Subscription) SubscribeOptions
}

// Backoff configures the waits between reconnection attempts (Options.Backoff)
// or between the retries of a request (Options.RetryBackoff): before attempt
// n (from 0) the client waits a random time, uniform between Min/4 and
// min(Max, Min·2ⁿ) — "full jitter", so that clients cut at the same moment
// spread out, with a floor of Min/4, so that a server that refuses instantly
// is never hammered. The reconnection count restarts after a connection
// that lasted Max, unless it was closed for flooding (4007).
type Backoff struct {
	Min time.Duration // zero means 200ms
	Max time.Duration // zero means 10s; never below Min
}

// delay is the wait before attempt n.
func (b Backoff) delay(n int) time.Duration {
	ceil := b.Max
	if n < 32 {
		if d := b.Min << n; d > 0 && d < ceil {
			ceil = d
		}
	}
	floor := b.Min / 4
	if ceil <= floor {
		return floor
	}
	return floor + rand.N(ceil-floor)
}

// State is the state of a client's connection.
type State int

const (
	// StateDisconnected: no connection. Before Connect, between a lost
	// connection and the next attempt, and after a failed attempt.
	StateDisconnected State = iota
	// StateConnecting: an attempt (dial, handshake, connect command) is on.
	StateConnecting
	// StateConnected: the server answered the connect command; requests
	// can be made.
	StateConnected
	// StateClosed: for good. Close was called, or the server said not to
	// reconnect.
	StateClosed
)

func (s State) String() string {
	switch s {
	case StateDisconnected:
		return "disconnected"
	case StateConnecting:
		return "connecting"
	case StateConnected:
		return "connected"
	case StateClosed:
		return "closed"
	}
	return fmt.Sprintf("State(%d)", int(s))
}

// StateChange is what OnState receives.
type StateChange struct {
	State State
	// ClientID is the connection's id (StateConnected).
	ClientID string
	// Attempt counts the attempts since the connection was lost, from 1
	// (StateConnecting).
	Attempt int
	// Code and Reason are the server's close frame's, when it sent one
	// (StateDisconnected, StateClosed). Code is 1006 when a connection ended
	// without one (network error, ReadTimeout), and 0 when the client ended
	// it itself (Err says why) or an attempt failed before a close frame
	// could come (dial, HTTP refusal, GetToken).
	Code   protocol.CloseCode
	Reason string
	// Data is the server's Connect hook's data for this connection
	// (StateConnected), nil if it gave none.
	Data json.RawMessage
	// Err says why the connection ended or the attempt failed: a
	// *CloseError, *HandshakeError, ErrSlowHandler, a network error…
	Err error
}

// Publication is a publication of a subscribed channel, or of a history.
type Publication struct {
	Channel string
	// Offset is the publication's place in the channel's history (1, 2, …),
	// or 0 in a channel that keeps none.
	Offset uint64
	// Data is the JSON value as published (Binary false), or the raw bytes
	// (Binary true).
	Data   []byte
	Binary bool
}

// Dropped says which publications of a channel the server dropped from
// this client's queue because it read too slowly (a namespace whose
// overflow policy is drop_oldest). It comes in their place: the
// publications before it were delivered, the next one follows the last
// dropped.
type Dropped struct {
	Channel string
	// Count is how many were dropped.
	Count int
	// Offsets are the dropped offsets as inclusive ranges [from, to],
	// ascending; empty in a channel without history. Read them back with
	// History (Since: from-1) if they matter.
	Offsets [][2]uint64
}

// Message is a "message" push: data sent to this connection directly, not
// through a channel. Data is JSON, or raw bytes when Binary.
type Message struct {
	Data   []byte
	Binary bool
}

// Position is a place in a channel's history: an offset, meaningful only
// with its epoch.
type Position = protocol.Position

// ClientInfo describes a client in presence results and join/leave events.
type ClientInfo = protocol.ClientInfo

// closeGrace bounds Close's wait for the server to answer its close frame.
const closeGrace = time.Second

// Client is a Herald connection that reconnects by itself. Its methods are
// safe for concurrent use. Create it with New, start it with Connect, and
// always end it with Close.
type Client struct {
	url    string
	opts   Options
	log    *slog.Logger
	dialer websocket.Dialer
	q      *queue
	pace   *pacer
	nextID atomic.Uint64 // request ids: client-wide, never reused

	// ctx ends at Close (cause ErrClosed): it interrupts dials, GetToken,
	// backoff waits and the wait for room in the queue.
	ctx    context.Context
	cancel context.CancelCauseFunc
	wg     sync.WaitGroup // the connection goroutine and the dispatcher

	mu          sync.Mutex
	state       State
	id          string
	replyData   json.RawMessage // the connect result's data
	cur         *session        // the connection being set up or live, so Close can end it
	live        *session        // cur, once the connect reply came: requests go there
	subs        map[string]*Subscription
	running     bool // a connection goroutine exists
	dispatching bool // the dispatcher was started
	closed      bool // Close was called
	stopErr     error
	done        chan struct{}
	doneClosed  bool
	// liveCh is closed, and replaced, whenever live is set or the client
	// stops running: awaitLive waits on it.
	liveCh chan struct{}

	// unknown holds the channels whose stray pushes were logged (connection
	// goroutine only), so that each is logged once.
	unknown map[string]struct{}
}

// New returns a client of the Herald endpoint at url (ws:// or wss://,
// e.g. "ws://localhost:8080/ws"). It starts no goroutine; see Connect.
func New(url string, opts Options) *Client {
	if opts.RequestTimeout <= 0 {
		opts.RequestTimeout = 10 * time.Second
	}
	if opts.ReadTimeout <= 0 {
		opts.ReadTimeout = 60 * time.Second
	}
	if opts.Backoff.Min <= 0 {
		opts.Backoff.Min = 200 * time.Millisecond
	}
	if opts.Backoff.Max <= 0 {
		opts.Backoff.Max = 10 * time.Second
	}
	opts.Backoff.Max = max(opts.Backoff.Max, opts.Backoff.Min)
	if opts.RetryBackoff.Min <= 0 {
		opts.RetryBackoff.Min = 200 * time.Millisecond
	}
	if opts.RetryBackoff.Max <= 0 {
		opts.RetryBackoff.Max = 10 * time.Second
	}
	opts.RetryBackoff.Max = max(opts.RetryBackoff.Max, opts.RetryBackoff.Min)
	if opts.RetryTimeout <= 0 {
		opts.RetryTimeout = 60 * time.Second
	}
	if opts.QueueSize <= 0 {
		opts.QueueSize = 8192
	}
	if opts.QueueTimeout <= 0 {
		opts.QueueTimeout = 5 * time.Second
	}
	log := opts.Logger
	if log == nil {
		log = slog.New(slog.DiscardHandler)
	}
	d := websocket.DefaultDialer
	if opts.Dialer != nil {
		d = opts.Dialer
	}
	c := &Client{
		url:     url,
		opts:    opts,
		log:     log.With("url", url),
		dialer:  *d,
		q:       newQueue(opts.QueueSize),
		pace:    &pacer{min: opts.RetryBackoff.Min, max: opts.RetryBackoff.Max},
		subs:    make(map[string]*Subscription),
		liveCh:  make(chan struct{}),
		done:    make(chan struct{}),
		unknown: make(map[string]struct{}),
	}
	if len(c.dialer.Subprotocols) == 0 {
		c.dialer.Subprotocols = []string{protocol.Subprotocol}
	}
	c.ctx, c.cancel = context.WithCancelCause(context.Background())
	return c
}

// Connect opens the connection: it dials, sends the connect command and
// waits for its reply, within ctx and Options.RequestTimeout. On success the
// client keeps the connection from then on, reconnecting as needed, until
// Close. On failure nothing keeps running and Connect may be called again.
// Connect on a running client fails.
func (c *Client) Connect(ctx context.Context) error {
	c.mu.Lock()
	if err := c.stoppedLocked(); err != nil {
		c.mu.Unlock()
		return fmt.Errorf("failed to connect: %w", err)
	}
	if c.running {
		c.mu.Unlock()
		return errors.New("herald client: failed to connect: already connected")
	}
	c.running = true
	if !c.dispatching {
		c.dispatching = true
		c.wg.Add(1)
		go c.dispatch()
	}
	c.wg.Add(1)
	c.mu.Unlock()

	first := make(chan error, 1)
	go c.run(ctx, first)
	return <-first
}

// Close stops the client: it closes the connection (a close frame 1000,
// then at most a second's wait for the server's answer), stops reconnecting,
// fails pending requests with an error matching both ErrClosed and
// ErrDisconnected, and waits until the client's goroutines have returned. The handler call in progress, if any, finishes
// first; queued events are dropped, and no handler is called after Close
// returns. Close must not be called from a handler (use `go c.Close()`).
// It is idempotent and always returns nil.
func (c *Client) Close() error {
	c.mu.Lock()
	first := !c.closed
	c.closed = true
	c.state = StateClosed
	c.closeDoneLocked()
	c.notifyLocked()
	s := c.cur
	c.mu.Unlock()
	if first {
		c.cancel(ErrClosed)
		if s != nil {
			s.closeGracefully()
		}
		c.q.abort()
	}
	c.wg.Wait()
	return nil
}

// ID returns the client id the server gave the current connection (what the
// server's Send and Disconnect take), or the last one while disconnected;
// "" before the first connection. It changes at every reconnect.
func (c *Client) ID() string {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.id
}

// ConnectReplyData returns the data the server's Connect hook gave the
// current connection (the last one while disconnected), nil if none.
func (c *Client) ConnectReplyData() json.RawMessage {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.replyData
}

// State returns the connection's current state.
func (c *Client) State() State {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.state
}

// Done is closed when the client stops for good: Close was called, or the
// server asked it not to reconnect (then Err says why).
func (c *Client) Done() <-chan struct{} { return c.done }

// Err returns why the client stopped: nil while it runs, ErrClosed after
// Close, or the *CloseError / *HandshakeError that forbade reconnecting.
func (c *Client) Err() error {
	c.mu.Lock()
	defer c.mu.Unlock()
	if c.stopErr != nil {
		return c.stopErr
	}
	if c.closed {
		return ErrClosed
	}
	return nil
}

// notifyLocked wakes awaitLive's waiters: live changed, or the client
// stopped running. c.mu must be held.
func (c *Client) notifyLocked() {
	close(c.liveCh)
	c.liveCh = make(chan struct{})
}

// awaitLive returns the live connection for a request, other than not (a
// connection the request just lost), waiting for the reconnect while the
// client is running. It fails at once before Connect and after Close.
func (c *Client) awaitLive(ctx context.Context, not *session) (*session, error) {
	for {
		c.mu.Lock()
		if err := c.stoppedLocked(); err != nil {
			c.mu.Unlock()
			return nil, err
		}
		if c.live != nil && c.live != not {
			s := c.live
			c.mu.Unlock()
			return s, nil
		}
		if !c.running {
			c.mu.Unlock()
			return nil, ErrDisconnected
		}
		ch := c.liveCh
		c.mu.Unlock()
		select {
		case <-ch:
		case <-ctx.Done():
			return nil, fmt.Errorf("%w: %w", ErrDisconnected, context.Cause(ctx))
		}
	}
}

func (c *Client) closeDoneLocked() {
	if !c.doneClosed {
		c.doneClosed = true
		close(c.done)
	}
}

// stoppedLocked returns the error for a call on a stopped client, or nil.
func (c *Client) stoppedLocked() error {
	if c.closed {
		return ErrClosed
	}
	if c.stopErr != nil {
		return fmt.Errorf("%w: %w", ErrClosed, c.stopErr)
	}
	return nil
}

// emit queues a state change for OnState.
func (c *Client) emit(ch StateChange) {
	if c.opts.OnState != nil {
		_ = c.q.push(event{kind: evState, state: ch}, false, 0, nil)
	}
}

func (c *Client) setState(ch StateChange) {
	c.mu.Lock()
	if !c.closed && c.stopErr == nil {
		c.state = ch.State
	}
	c.mu.Unlock()
	c.emit(ch)
}

// run is the connection goroutine: it makes the first connection (reporting
// the outcome to Connect through first), then serves it, and reconnects
// after every loss until Close or a close code that forbids it.
func (c *Client) run(ctx context.Context, first chan<- error) {
	defer c.wg.Done()

	c.setState(StateChange{State: StateConnecting, Attempt: 1})
	// The first attempt ends with Connect's ctx or with Close.
	ectx, cancel := context.WithCancelCause(ctx)
	stop := onCancel(c.ctx, func() { cancel(context.Cause(c.ctx)) })
	s, err := c.establish(ectx)
	stop()
	cancel(nil)
	if err != nil {
		c.mu.Lock()
		c.running = false
		c.notifyLocked()
		c.mu.Unlock()
		c.setState(attemptChange(err))
		first <- fmt.Errorf("failed to connect to %s: %w", c.url, err)
		return
	}
	first <- nil

	attempt := 0
	for {
		began := time.Now()
		err := c.serve(s)
		c.teardown(s)
		if c.ctx.Err() != nil {
			return // Close
		}
		ch := lostChange(err)
		if terminal(ch.Err) {
			c.stop(ch)
			return
		}
		c.log.Info("connection lost, reconnecting", "code", ch.Code, "reason", ch.Reason, "err", ch.Err)
		c.setState(ch)
		if ch.Code == protocol.CloseRateLimited {
			// Closed for flooding: slow down, and let repeated closes
			// lengthen the wait before reconnecting.
			c.pace.refused()
		} else if time.Since(began) >= c.opts.Backoff.Max {
			attempt = 0 // a connection that held for a while: start afresh
		}
		if s = c.reconnect(&attempt); s == nil {
			return
		}
	}
}

// reconnect makes attempts, spaced by the backoff, until one succeeds. It
// returns nil when the client is closed or must not reconnect.
func (c *Client) reconnect(attempt *int) *session {
	for {
		t := time.NewTimer(c.opts.Backoff.delay(*attempt))
		select {
		case <-c.ctx.Done():
			t.Stop()
			return nil
		case <-t.C:
		}
		*attempt++
		c.setState(StateChange{State: StateConnecting, Attempt: *attempt})
		s, err := c.establish(c.ctx)
		if err == nil {
			return s
		}
		if c.ctx.Err() != nil {
			return nil
		}
		ch := attemptChange(err)
		if terminal(err) {
			c.stop(ch)
			return nil
		}
		c.log.Info("reconnect attempt failed", "attempt", *attempt, "err", err)
		c.setState(ch)
	}
}

// stop ends the client for good after the server forbade reconnecting: the
// dispatcher delivers what is queued, StateClosed last, and exits.
func (c *Client) stop(ch StateChange) {
	c.log.Warn("server forbids reconnecting; client stopped", "code", ch.Code, "reason", ch.Reason, "err", ch.Err)
	c.mu.Lock()
	c.running = false
	c.stopErr = ch.Err
	c.state = StateClosed
	c.closeDoneLocked()
	c.notifyLocked()
	c.mu.Unlock()
	ch.State = StateClosed
	c.emit(ch)
	c.q.finish()
}

// lostChange describes the end of a connection whose reader failed with err.
func lostChange(err error) StateChange {
	ch := StateChange{State: StateDisconnected, Err: err}
	var (
		ld *localDrop
		we *websocket.CloseError
	)
	switch {
	case errors.As(err, &ld):
		// The client ended it: there is no server close code to report.
	case errors.As(err, &we) && we.Code != websocket.CloseAbnormalClosure:
		ch.Code, ch.Reason = protocol.CloseCode(we.Code), we.Text
		ch.Err = &CloseError{Code: protocol.CloseCode(we.Code), Reason: we.Text}
	default:
		// gorilla reports a bare EOF as a CloseError 1006, RFC 6455's code
		// for "no close frame"; other network errors get it too.
		ch.Code = protocol.CloseAbnormal
	}
	return ch
}

// attemptChange describes a failed connection attempt.
func attemptChange(err error) StateChange {
	ch := StateChange{State: StateDisconnected, Err: err}
	var ce *CloseError
	if errors.As(err, &ce) {
		ch.Code, ch.Reason = ce.Code, ce.Reason
	}
	return ch
}

// onCancel runs f on its own goroutine if ctx ends before the returned stop
// is called. stop waits for f if it already started, so that no goroutine
// outlives the caller's use of it.
func onCancel(ctx context.Context, f func()) (stop func()) {
	fired := make(chan struct{})
	stopAfter := context.AfterFunc(ctx, func() {
		defer close(fired)
		f()
	})
	return func() {
		if !stopAfter() {
			<-fired
		}
	}
}
