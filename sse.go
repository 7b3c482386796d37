package herald

import (
	"context"
	"encoding/base64"
	"encoding/json"
	"errors"
	"fmt"
	"math/rand/v2"
	"net"
	"net/http"
	"net/url"
	"strconv"
	"strings"
	"sync"
	"time"

	"github.com/heraldhq/herald/protocol"
)

// Server-Sent Events (PROTOCOL.md, "Server-Sent Events"): a receive-only
// connection for clients that cannot open a WebSocket (a proxy that
// breaks the upgrade, say). It is the same connection as any other — the
// outbound queue with its limits and slow-consumer cut, the node's
// subscriptions with recovery, presence, limits, drain and shutdown, the
// heartbeat, the metrics — over another transport and session:
//
//   - the transport is the HTTP response itself (sseStream, a net.Conn
//     over the ResponseWriter): the writer role's holder writes each batch
//     of events with one Write and one Flush, under the write deadline;
//   - the session (sseSession) takes no command: the channels are the
//     request's, subscribed before anything is sent, and each event id
//     carries the position of every one of them, so that the browser's own
//     reconnect (Last-Event-ID) recovers what it missed.
//
// The handler's goroutine is the connection's reader: it owns the
// teardown, and waits for the client to go (the request's context) or for
// the stream to end (a close event written, or a failed write).

// ssePing is the heartbeat: a comment, which EventSource ignores and which
// keeps proxies from closing an idle stream.
var ssePing = []byte(": ping\n\n")

// sseSlowClose is the close event of a slow consumer.
var sseSlowClose = sseClose(CloseSlowConsumer, "slow consumer")

// sseClose is the event that ends a stream: the code and reason a
// WebSocket client would get in its close frame.
func sseClose(code CloseCode, reason string) []byte {
	b, _ := json.Marshal(struct { // an int and a string: cannot fail
		Code   CloseCode `json:"code"`
		Reason string    `json:"reason,omitempty"`
	}{code, reason})
	return appendSSEData(append([]byte(nil), "event: close\n"...), b)
}

// sseEventName is the SSE event type of a herald.v1 push kind: a
// publication is the default type ("message", what EventSource.onmessage
// receives); a direct message (Node.Send and the like) is "direct".
func sseEventName(kind string) string {
	switch kind {
	case protocol.PushPub:
		return ""
	case protocol.PushMessage:
		return "direct"
	case protocol.PushSubscribe:
		return "subscribed"
	}
	return kind
}

// appendSSEEvent appends the event of a herald.v1 push of kind whose JSON
// is push.
func appendSSEEvent(dst []byte, kind string, push []byte) []byte {
	if name := sseEventName(kind); name != "" {
		dst = append(dst, "event: "...)
		dst = append(dst, name...)
		dst = append(dst, '\n')
	}
	return appendSSEData(dst, push)
}

// appendSSEData appends data as an event's data lines and ends the event.
// JSON may hold line breaks between its tokens (never inside a string):
// each starts another data line, which EventSource joins with "\n" — the
// same JSON.
func appendSSEData(dst, data []byte) []byte {
	dst = append(dst, "data: "...)
	for i := 0; i < len(data); i++ {
		switch b := data[i]; b {
		case '\r':
			if i+1 < len(data) && data[i+1] == '\n' {
				i++
			}
			dst = append(dst, "\ndata: "...)
		case '\n':
			dst = append(dst, "\ndata: "...)
		default:
			dst = append(dst, b)
		}
	}
	return append(dst, "\n\n"...)
}

// sseEncode builds the event of a publication or direct message: its data
// is the herald.v1 push, a binary payload in base64 under "binary" (as
// history replies carry it).
func sseEncode(kind, channel string, offset uint64, data []byte, binary bool) []byte {
	var push []byte
	switch {
	case binary:
		push = protocol.AppendPushHeader(make([]byte, 0, 64+base64.StdEncoding.EncodedLen(len(data))), kind, channel, offset)
		push = append(push, `,"binary":"`...)
		push = base64.StdEncoding.AppendEncode(push, data)
		push = append(push, `"}`...)
	case json.Valid(data):
		push = protocol.AppendTextPush(nil, kind, channel, offset, data)
	default:
		s, _ := json.Marshal(string(data))
		push = protocol.AppendTextPush(nil, kind, channel, offset, s)
	}
	return appendSSEEvent(make([]byte, 0, len(push)+32), kind, push)
}

// sseStream is the transport of an SSE connection: a net.Conn over the
// HTTP response, for the connection's writer (writeLoop: an SSE stream has
// no descriptor, so it is never the writer pool's). Write writes and
// flushes; Close makes every later write fail, and cuts a write in
// progress (a deadline in the past), which ends a write stuck on a client
// that stopped reading. Close leaves a response with no write in progress
// intact, so that a stream that ended normally (its close event flushed)
// still gets HTTP's end of body: the terminating chunk, which net/http
// writes after the handler returns. There is no reading: the request's
// context tells when the client goes.
//
// After detach (the handler is returning) nothing touches the response.
type sseStream struct {
	w      http.ResponseWriter
	rc     *http.ResponseController
	remote net.Addr
	grace  time.Duration // Config.CloseGrace: bounds the end of body

	// mu guards the flags, and orders rc's calls with detach.
	mu       sync.Mutex
	closed   bool
	writing  bool // a Write is in progress
	cut      bool // Close cut a write in progress: the response is broken
	detached bool
}

var _ net.Conn = (*sseStream)(nil)

// Write writes one batch of events and flushes it. Only the writer role's
// holder calls it, so there is one writer at a time; it does not hold mu
// while blocked, so Close can cut it short.
func (s *sseStream) Write(p []byte) (int, error) {
	s.mu.Lock()
	if s.closed {
		s.mu.Unlock()
		return 0, net.ErrClosed
	}
	s.writing = true
	s.mu.Unlock()
	n, err := s.w.Write(p)
	if err == nil {
		err = s.rc.Flush()
	}
	s.mu.Lock()
	s.writing = false
	s.mu.Unlock()
	return n, err
}

// Close ends the stream for writing; idempotent.
func (s *sseStream) Close() error {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.closed || s.detached {
		s.closed = true
		return nil
	}
	s.closed = true
	if s.writing {
		// A past deadline fails the write in progress at once (HTTP/1:
		// the socket's; HTTP/2: the stream is reset).
		s.cut = true
		_ = s.rc.SetWriteDeadline(time.Now().Add(-time.Second))
	}
	return nil
}

// detach is the handler's last word: the response is no longer ours.
// Unless a write was cut, it gives net/http's end of the response (the
// terminating chunk, flushed after the handler returns) CloseGrace: a
// client that stopped reading cannot hold it longer. net/http clears the
// deadline once the response is finished.
func (s *sseStream) detach() {
	s.mu.Lock()
	defer s.mu.Unlock()
	if !s.cut && !s.detached {
		_ = s.rc.SetWriteDeadline(time.Now().Add(s.grace))
	}
	s.closed, s.detached = true, true
}

func (s *sseStream) SetWriteDeadline(t time.Time) error {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.detached {
		return net.ErrClosed
	}
	return s.rc.SetWriteDeadline(t)
}

func (s *sseStream) SetDeadline(t time.Time) error { return s.SetWriteDeadline(t) }

// SetReadDeadline does nothing: the stream is never read.
func (s *sseStream) SetReadDeadline(time.Time) error { return nil }

// Read is never called (the connection has no reader); it fails.
func (s *sseStream) Read([]byte) (int, error) {
	return 0, errors.New("herald: an SSE stream is not read")
}

func (s *sseStream) LocalAddr() net.Addr  { return s.remote }
func (s *sseStream) RemoteAddr() net.Addr { return s.remote }

// sseAddr is the client's address as the request gave it.
type sseAddr string

func (a sseAddr) Network() string { return "tcp" }
func (a sseAddr) String() string  { return string(a) }

// sseSession is the session of an SSE connection: no commands, a fixed
// list of channels, and the position of each, which every event that
// moves one carries in its id.
type sseSession struct {
	c        *conn
	channels []string       // the request's, in its order: the id's slots
	index    map[string]int // channel -> slot
	exp      expiry

	// mu orders the changes of pos with the pushes of the ids that show
	// them, so that ids rise in the queue's order. Taken on the fan-out
	// path (under a hub shard's read lock) before the outbound queue's
	// lock; nothing is locked while holding it but that.
	mu  sync.Mutex
	pos []ssePos
}

var _ session = (*sseSession)(nil)

// ssePos is one channel's slot in an event id.
type ssePos struct {
	state  uint8 // posNone, posNoHistory, posAt, posRemoved
	offset uint64
	epoch  string // escaped for the id
}

const (
	posNone      = iota // not subscribed yet: nothing delivered
	posNoHistory        // subscribed to a channel without history
	posAt               // delivered up to offset, of epoch
	posRemoved          // unsubscribed by the server: never resubscribed
)

func (s *sseSession) message([]byte, bool) {} // never called: no reader
func (s *sseSession) stop()                { s.exp.stop() }
func (s *sseSession) readDone()            {}

// deliver pushes a publication's event; one with an offset moves its
// channel's position, and goes with the id that says so.
// m describes it for its namespace's overflow policy.
func (s *sseSession) deliver(pub *Publication, body []byte, m qmeta) {
	i, ok := s.index[pub.Channel]
	if pub.Offset == 0 || !ok {
		_, start, cut := s.c.out.pushMeta(body, m)
		s.c.pushed(start, cut)
		return
	}
	s.mu.Lock()
	defer s.mu.Unlock()
	if p := &s.pos[i]; p.state == posAt && pub.Offset > p.offset {
		p.offset = pub.Offset
	}
	s.pushWithID(body, m)
}

// pushWithID pushes body after the id of the positions now. s.mu held.
func (s *sseSession) pushWithID(body []byte, m qmeta) {
	_, start, cut := s.c.out.pushPair(s.appendID(nil), body, m)
	s.c.pushed(start, cut)
}

// appendID appends the id line: a slot per channel, in the request's
// order, separated by commas — empty (nothing delivered yet), "-" (no
// history), "x" (unsubscribed by the server), or "OFFSET:EPOCH" (the
// epoch query-escaped).
func (s *sseSession) appendID(dst []byte) []byte {
	dst = append(dst, "id: "...)
	for i, p := range s.pos {
		if i > 0 {
			dst = append(dst, ',')
		}
		switch p.state {
		case posNoHistory:
			dst = append(dst, '-')
		case posRemoved:
			dst = append(dst, 'x')
		case posAt:
			dst = strconv.AppendUint(dst, p.offset, 10)
			dst = append(dst, ':')
			dst = append(dst, p.epoch...)
		}
	}
	return append(dst, '\n')
}

// parseLastEventID reads an event id this node sent (appendID) for n
// channels: the position to recover each from, nil for a slot with none;
// a no-history slot asks for recovery from nothing, which is answered
// recovered:false (no_history) as since is. removed marks the slots of
// channels the server unsubscribed the stream from ("x"): a reconnect
// must not subscribe them again.
func parseLastEventID(id string, n int) (since []*protocol.Position, removed []bool, err error) {
	slots := strings.Split(id, ",")
	if len(slots) != n {
		return nil, nil, fmt.Errorf("it holds %d positions for %d channels (the id belongs to the same channels, in the same order)", len(slots), n)
	}
	since, removed = make([]*protocol.Position, n), make([]bool, n)
	for i, slot := range slots {
		switch slot {
		case "":
			continue
		case "-":
			since[i] = &protocol.Position{}
			continue
		case "x":
			removed[i] = true
			continue
		}
		off, ep, ok := strings.Cut(slot, ":")
		offset, err := strconv.ParseUint(off, 10, 64)
		if !ok || err != nil {
			return nil, nil, fmt.Errorf("position %d is not OFFSET:EPOCH, -, x or empty", i+1)
		}
		epoch, err := url.QueryUnescape(ep)
		if err != nil {
			return nil, nil, fmt.Errorf("position %d has a badly escaped epoch", i+1)
		}
		since[i] = &protocol.Position{Offset: offset, Epoch: epoch}
	}
	return since, removed, nil
}

// unsubscribed marks channel's slot removed and pushes the unsub event
// of body with the id that says so: the browser's reconnect (which sends
// the last id) does not subscribe it again. Called once the subscription
// is gone (no publication of it follows).
func (s *sseSession) unsubscribed(channel string, body []byte) {
	i, ok := s.index[channel]
	if !ok {
		s.c.enqueue(body)
		return
	}
	s.mu.Lock()
	defer s.mu.Unlock()
	s.pos[i] = ssePos{state: posRemoved}
	s.pushWithID(body, qmeta{})
}

// SSEHandler returns the http.Handler of Server-Sent Events (PROTOCOL.md,
// "Server-Sent Events"): GET ?channel=A&channel=B streams the publications
// of those channels as an event stream, with the tokens, permissions,
// origin check, limits and recovery of a WebSocket subscription. It is
// receive-only: clients publish over the HTTP API or a WebSocket.
//
// Use it where a WebSocket cannot connect; a WebSocket is cheaper (no
// per-connection event id to build per publication) and two-way. Serve it
// with no http.Server WriteTimeout of its own concern: each write sets its
// deadline (Config.WriteTimeout), and the stream lives until the client,
// the node or the heartbeat's failed write ends it. A proxy in front must
// not buffer the response (it says X-Accel-Buffering: no, which nginx
// honours) and must let it idle longer than Config.PingInterval.
func (n *Node) SSEHandler() http.Handler {
	return http.HandlerFunc(n.serveSSE)
}

// sseRequest is a checked SSE request: its channels and what to recover.
type sseRequest struct {
	channels []string
	ns       []*Namespace
	since    []*protocol.Position // nil without Last-Event-ID
	removed  []bool               // the id's slots marked removed; nil without Last-Event-ID
}

// isRemoved reports whether the id marked the i-th channel removed.
func (req *sseRequest) isRemoved(i int) bool { return req.removed != nil && req.removed[i] }

// checkSSE checks an SSE request before anything is spent on it: method,
// origin, channels, Last-Event-ID, and that the response can stream.
func (n *Node) checkSSE(w http.ResponseWriter, r *http.Request) (sseRequest, *handshakeRefusal) {
	var req sseRequest
	if r.Method != http.MethodGet {
		w.Header().Set("Allow", http.MethodGet)
		return req, &handshakeRefusal{http.StatusMethodNotAllowed, "Method Not Allowed: an event stream is a GET"}
	}
	if !n.checkOrigin(r) {
		return req, n.originRefused(r)
	}
	if no := sseFetchRefused(r); no != nil {
		n.log.Debug("event stream refused", "status", no.status, "remote", n.ClientAddr(r), "reason", no.msg)
		return req, no
	}
	q := r.URL.Query()
	req.channels = q["channel"]
	if len(req.channels) == 0 {
		return req, &handshakeRefusal{http.StatusBadRequest, "Bad Request: name at least one channel (?channel=NAME, repeatable)"}
	}
	if maxCh := n.limits.Load().MaxChannelsPerConnection; !under(len(req.channels)-1, maxCh) {
		n.metrics.limitHits.Add(1)
		return req, &handshakeRefusal{http.StatusBadRequest, fmt.Sprintf("Bad Request: a connection may hold at most %d channels", maxCh)}
	}
	seen := make(map[string]struct{}, len(req.channels))
	for _, ch := range req.channels {
		ns, err := n.channelNamespace(ch)
		if err != nil {
			return req, &handshakeRefusal{http.StatusBadRequest, "Bad Request: " + err.Message}
		}
		if _, dup := seen[ch]; dup {
			return req, &handshakeRefusal{http.StatusBadRequest, fmt.Sprintf("Bad Request: channel %q named twice", ch)}
		}
		seen[ch] = struct{}{}
		req.ns = append(req.ns, ns)
	}
	// The header is the browser's own reconnect, with the last id it got;
	// the query parameter is for a client that opens a new stream (an
	// EventSource cannot set headers), and an older id than the header's.
	lastID := r.Header.Get("Last-Event-ID")
	if lastID == "" {
		lastID = q.Get("last_event_id")
	}
	if lastID != "" {
		since, removed, err := parseLastEventID(lastID, len(req.channels))
		if err != nil {
			return req, &handshakeRefusal{http.StatusBadRequest, "Bad Request: Last-Event-ID: " + err.Error()}
		}
		req.since, req.removed = since, removed
	}
	if !canStream(w) {
		return req, &handshakeRefusal{http.StatusInternalServerError, "Internal Server Error: this response cannot be streamed (a middleware's ResponseWriter without Unwrap)"}
	}
	if err := http.NewResponseController(w).SetWriteDeadline(time.Time{}); err != nil {
		return req, &handshakeRefusal{http.StatusInternalServerError, "Internal Server Error: this response cannot have write deadlines (a middleware's ResponseWriter without Unwrap)"}
	}
	return req, nil
}

// sseFetchRefused refuses a browser's request that another site made
// without an Origin. The WebSocket rule (no Origin: not a browser, no
// victim's cookies) does not hold for a plain GET: an <img src>, a no-cors
// fetch or a top-level navigation carries the user's cookies and no
// Origin. Browsers say where such a request came from in the Fetch
// metadata headers: a request from another site (Sec-Fetch-Site
// cross-site or same-site), or one that is not the CORS fetch EventSource
// makes (Sec-Fetch-Mode present and neither cors nor same-origin), is
// refused with 403. A client that sends no Sec-Fetch-* header is not a
// browser that does, and passes, as without Origin before.
func sseFetchRefused(r *http.Request) *handshakeRefusal {
	if r.Header.Get("Origin") != "" {
		return nil // checked by the origin rule
	}
	switch site := r.Header.Get("Sec-Fetch-Site"); site {
	case "cross-site", "same-site":
		return &handshakeRefusal{http.StatusForbidden, "Forbidden: a request from another site (Sec-Fetch-Site: " + site + ") without Origin"}
	}
	switch mode := r.Header.Get("Sec-Fetch-Mode"); mode {
	case "", "cors", "same-origin":
		return nil
	default:
		return &handshakeRefusal{http.StatusForbidden, "Forbidden: an event stream is opened by EventSource or fetch (Sec-Fetch-Mode: cors), not by " + mode}
	}
}

// sseCORS sets the CORS headers of a stream opened from an allowed
// origin other than the server's own: without them EventSource
// (withCredentials or not) discards the response. The origin is echoed,
// never "*", since credentials are allowed.
func sseCORS(h http.Header, r *http.Request) {
	origin := r.Header.Get("Origin")
	if origin == "" {
		return
	}
	if u, err := url.Parse(origin); err == nil && strings.EqualFold(u.Host, r.Host) {
		return // same origin: no CORS
	}
	h.Set("Access-Control-Allow-Origin", origin)
	h.Add("Vary", "Origin")
	h.Set("Access-Control-Allow-Credentials", "true")
}

// canStream reports whether w, or a ResponseWriter it wraps, can flush:
// what http.ResponseController.Flush finds, asked without flushing.
func canStream(w http.ResponseWriter) bool {
	for {
		switch t := w.(type) {
		case interface{ FlushError() error }, http.Flusher:
			return true
		case interface{ Unwrap() http.ResponseWriter }:
			w = t.Unwrap()
		default:
			return false
		}
	}
}

// permitSSE checks that id's user may subscribe to every channel of req
// but those the server removed (often for a permission taken away).
func (n *Node) permitSSE(id *identity, req *sseRequest) *handshakeRefusal {
	for i, ch := range req.channels {
		if req.isRemoved(i) {
			continue
		}
		if err := n.permit(id.user, id.grants, ch, req.ns[i].AllowSubscribe); err != nil {
			return &handshakeRefusal{http.StatusForbidden, "Forbidden: " + err.Message}
		}
	}
	return nil
}

// sseRetryLater answers a stream the node cannot take now (it is draining
// or stopping, it is full, the connect hook's backend is down) with an
// empty stream that ends at once: a retry: hint and a close event with the
// code a WebSocket client would get, 1012, 1001 or 1013. Browsers' own
// EventSource gives up for good on any status but 200 (HTML standard,
// "fail the connection") and reconnects after a stream that ends; a 503
// would leave a page behind a restarting single node deaf until reloaded.
// The hint spreads the reconnects over 1 to 3 seconds.
func (n *Node) sseRetryLater(w http.ResponseWriter, r *http.Request, reason string) {
	n.mu.Lock()
	draining, closing := n.draining, n.closing
	n.mu.Unlock()
	code := CloseTryAgainLater
	switch {
	case draining:
		code = CloseServiceRestart
	case closing:
		code = CloseGoingAway
	}
	h := w.Header()
	h.Set("Content-Type", "text/event-stream")
	h.Set("Cache-Control", "no-cache")
	sseCORS(h, r)
	w.WriteHeader(http.StatusOK)
	b := fmt.Appendf(nil, "retry: %d\n", 1000+rand.IntN(2000))
	_, _ = w.Write(append(b, sseClose(code, reason)...))
}

// serveSSE runs one SSE connection: every refusal comes before the stream
// begins, as an HTTP error, or as sseRetryLater's empty stream when the
// node cannot take it now (a 503); then it subscribes the channels, each
// announced by a subscribed event (with recovery's outcome), and waits for
// the end.
func (n *Node) serveSSE(w http.ResponseWriter, r *http.Request) {
	req, no := n.checkSSE(w, r)
	ip, remote := n.clientAddr(r)
	id := identity{client: newID(), remote: remote}
	if no == nil {
		no = n.identifyUser(r, true, &id)
	}
	if no == nil && n.cfg.Hooks.Connect == nil {
		no = n.permitSSE(&id, &req)
	}
	if no == nil {
		no = n.admit(w, ip, id.user)
		if no == nil && n.cfg.Hooks.Connect != nil {
			no = n.sseConnectAdmitted(r, ip, &id, &req)
		}
	}
	if no != nil {
		if no.status == http.StatusServiceUnavailable {
			n.sseRetryLater(w, r, no.msg)
			return
		}
		http.Error(w, no.msg, no.status)
		return
	}

	lim := n.limits.Load() // before the stream's first byte: see newConn
	rc := http.NewResponseController(w)
	// An http.Server ReadTimeout would end the request's context (its
	// connection's background read) while the stream is still wanted.
	_ = rc.SetReadDeadline(time.Time{})
	h := w.Header()
	h.Set("Content-Type", "text/event-stream")
	h.Set("Cache-Control", "no-cache")
	h.Set("X-Accel-Buffering", "no") // nginx: pass each event on at once
	sseCORS(h, r)                    // the origin passed checkSSE
	stream := &sseStream{w: w, rc: rc, remote: sseAddr(remote), grace: n.cfg.CloseGrace}

	c := n.newConn(stream, handshake{}, id, ip, false, lim)
	c.form = formSSE
	c.out = newOutbound(n.cfg.MaxQueueMessages, n.cfg.MaxQueueBytes, sseSlowClose)
	c.out.note = c.droppedFrame // a "dropped" event (c.sse is set below)
	c.remote = remote
	s := &sseSession{c: c, channels: req.channels, index: make(map[string]int, len(req.channels)), pos: make([]ssePos, len(req.channels))}
	for i, ch := range req.channels {
		s.index[ch] = i
		// Until its subscription says otherwise, a channel stands where
		// the request says it is: an id sent meanwhile must not lose it.
		if req.isRemoved(i) {
			s.pos[i].state = posRemoved
		} else if req.since != nil && req.since[i] != nil {
			if p := req.since[i]; p.Offset == 0 && p.Epoch == "" {
				s.pos[i].state = posNoHistory
			} else {
				s.pos[i] = ssePos{state: posAt, offset: p.Offset, epoch: url.QueryEscape(p.Epoch)}
			}
		}
	}
	c.sse, c.sess = s, s
	s.exp.set(c, id.expires, id.hookExpiry)
	n.hub.addConn(c)
	n.subscribeSSE(r.Context(), c, s, &req)
	n.admitConn(c)
	n.connected(c, ClientInfo{ID: c.id, UserID: c.user, Info: c.info, SSE: true, RemoteAddr: remote})
	n.log.Debug("connected", "client", c.id, "user", c.user, "sse", true, "remote", remote)

	select {
	case <-r.Context().Done(): // the client went (or the server is closing)
		c.closeFrame(nil, false)
	case <-c.out.flushed: // ended: a close event is out, or a write failed
	}
	c.finish()
	stream.detach()
}

// subscribeSSE subscribes c to the request's channels in order, each
// announced by a subscribed event (the subscribe push: position, and
// recovery's outcome when the request named a position) that carries the
// id, then followed by what it recovered. A failure ends the stream with
// a close event, as it closes a raw connection: the subscribe hook's
// refusal with 1008, a broker's failure with 1013.
//
// Recovery is paced: before each channel after the first, it waits
// (paceSSE) until the queue is below half its limits, so that many
// channels' missed publications are not queued at once — every event
// carries the id of all the channels, and 50 channels × 60 missed
// publications at once took the queue past MaxQueueBytes (a slow
// consumer cut) on a client that reads at once.
func (n *Node) subscribeSSE(ctx context.Context, c *conn, s *sseSession, req *sseRequest) {
	c.subMu.Lock() // the hub holds c already: the server may unsubscribe it
	defer c.subMu.Unlock()
	for i, ch := range req.channels {
		if req.isRemoved(i) {
			continue // the server unsubscribed it: it stays out
		}
		if i > 0 {
			n.paceSSE(ctx, c)
		}
		var since *protocol.Position
		if req.since != nil {
			since = req.since[i]
		}
		res, finish, err := n.subscribeConn(c, ch, since, "", nil, "")
		if err != nil {
			code := CloseTryAgainLater
			if err.Code != protocol.CodeUnavailable {
				code = ClosePolicyViolation
			}
			c.close(code, err.Message)
			return
		}
		s.mu.Lock()
		p := &s.pos[i]
		switch {
		case req.ns[i].HistorySize == 0:
			p.state = posNoHistory
		case since != nil && res.Recovered != nil && *res.Recovered:
			// Recovered from since: the recovered publications move it.
			p.state, p.offset, p.epoch = posAt, since.Offset, url.QueryEscape(since.Epoch)
		default:
			p.state, p.offset, p.epoch = posAt, res.Offset, url.QueryEscape(res.Epoch)
		}
		s.pushWithID(appendSSEEvent(nil, protocol.PushSubscribe, protocol.AppendSubscribePush(nil, ch, *res)), qmeta{})
		s.mu.Unlock()
		finish()
	}
}

// paceSSE waits until c's queue is below half its limits (outbound's
// belowHalf), polling, for at most WriteTimeout — a writer that moves
// nothing for that long fails anyway — or until ctx (the request's) ends.
func (n *Node) paceSSE(ctx context.Context, c *conn) {
	if c.out.belowHalf() {
		return
	}
	limit := time.NewTimer(n.cfg.WriteTimeout)
	defer limit.Stop()
	tick := time.NewTicker(ssePaceTick)
	defer tick.Stop()
	for !c.out.belowHalf() {
		select {
		case <-ctx.Done():
			return
		case <-limit.C:
			return
		case <-tick.C:
		}
	}
}

// ssePaceTick is how often paceSSE looks at the queue: a few ms, against
// a queue that a reading client drains in well under one.
const ssePaceTick = 2 * time.Millisecond

// sseConnectAdmitted asks the connect hook about an admitted SSE request,
// as rawConnectAdmitted does for raw mode, then checks that the user it
// gave may subscribe to every channel.
func (n *Node) sseConnectAdmitted(r *http.Request, ip string, id *identity, req *sseRequest) *handshakeRefusal {
	counted := id.user
	no := n.handshakeConnectHook(r, ClientInfo{ID: id.client, UserID: id.user, Info: id.info, SSE: true, RemoteAddr: id.remote}, id)
	switch {
	case no != nil:
	case id.user != counted && !n.moveUser(counted, id.user):
		n.metrics.limitHits.Add(1)
		no = &handshakeRefusal{http.StatusTooManyRequests, "Too Many Requests: too many connections for this user"}
	default:
		counted = id.user
		no = n.permitSSE(id, req)
	}
	if no != nil {
		n.release(ip, counted)
	}
	return no
}
