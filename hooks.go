package herald

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"net/http"
	"slices"
	"strings"
	"time"

	"github.com/heraldhq/herald/protocol"
)

// Hooks let the application's backend decide what clients may do: Herald
// asks it, and waits for the answer, before it lets a connection in,
// subscribes it, publishes for it, or answers its RPC call. Every field is
// optional: a nil hook is not called.
//
// Calls: each hook call gets a context that ends at Timeout (or when the
// node shuts down). The hooks of one connection run on that connection's
// reader goroutine, one at a time, in the order of its commands: a slow
// hook delays only its own connection's later commands, never another
// connection. Hooks of different connections run concurrently, so they
// must be safe for concurrent use.
//
// Answers: a hook refuses by returning an *Error (see Refuse): its Code
// reaches the client as the error reply's code, which the client can
// switch on; the application may use codes of its own (ValidAppCode). Any
// other error is a failure (the backend is down or slow): each hook's doc
// says what a failure does, a deliberate choice written down in
// docs/hooks.md. Calls, refusals, failures and durations are counted in
// herald_hook_calls_total and herald_hook_duration_seconds.
type Hooks struct {
	// Connect authenticates a connection from its handshake request (its
	// cookies, say) and can set its user, info, expiry and server-side
	// subscriptions. For herald.v1 it runs on the client's connect command
	// (which becomes required, as with token checks) and sees the
	// command's data; for raw mode it runs at the handshake, before the
	// upgrade. It runs after Authenticate and token checks, with the user
	// they found.
	//
	// Refused: the connect reply carries the error, and the connection is
	// closed with 4501 (code unauthorized) or 4500 (any other code), which
	// the bundled clients do not reconnect after; a raw handshake is
	// answered 401 or 403. Failed: the reply is unavailable and the
	// connection is closed with 1013, which clients retry with backoff (a
	// raw handshake gets 503): no one gets in unchecked.
	Connect func(ctx context.Context, e *ConnectEvent) (*ConnectReply, error)

	// Refresh is called when the expiry that Connect (or a later Refresh)
	// set comes, to extend it. Its reply's ExpiresAt is the new expiry. A
	// refusal closes the connection (4501 or 4500, as Connect). A failure
	// keeps the connection and asks again after RefreshRetry: an outage of
	// the backend must not disconnect every user at once.
	Refresh func(ctx context.Context, e *RefreshEvent) (*RefreshReply, error)

	// Subscribe is asked after Herald's own checks (channel, namespace
	// permission, grants, subscription token) pass: it can only refuse
	// more, and attach the subscriber's info in this channel's presence.
	// A refusal or a failure (code unavailable) is the subscribe's error
	// reply; the connection stays. A raw client, whose one channel is
	// subscribed just after the upgrade, is closed instead: 1008 for a
	// refusal, 1013 for a failure. Server-side subscriptions (Connect's
	// Channels, SubscribeUser, SubscribeClient) are made by the backend
	// and do not ask it.
	Subscribe func(ctx context.Context, e *SubscribeEvent) (*SubscribeReply, error)
	// SubscribeNamespaces, when not nil, limits Subscribe to the channels
	// of these namespaces ("" names channels without one); nil means all.
	// AnyNamespace ("*") is refused (New fails): use nil for all.
	SubscribeNamespaces []string

	// Publish is asked before a client's publication (herald.v1 publish,
	// or a raw client's message) is published: it may allow it, refuse
	// it, or replace its data. A refusal or a failure is the publish's
	// error reply (code unavailable for a failure): nothing is published
	// that the backend did not see. A raw client has no replies: a
	// refusal closes it with 1008, a failure with 1013.
	Publish func(ctx context.Context, e *PublishEvent) (*PublishReply, error)
	// PublishNamespaces limits Publish as SubscribeNamespaces does
	// Subscribe.
	PublishNamespaces []string

	// RPC answers a client's rpc command: a named method with a payload,
	// answered over the same socket. Without it rpc is refused with
	// not_enabled. A failure is the error reply unavailable.
	RPC func(ctx context.Context, e *RPCEvent) (*RPCReply, error)

	// Disconnected and Unsubscribed are notifications: called after the
	// fact, each on a goroutine of its own (bounded by Timeout), never
	// holding anything up, and so in no particular order. An error is
	// counted and logged, not retried; past 256 calls of one of them in
	// flight on a node a notification is dropped and counted (result
	// "dropped"). A node that stops waits for the calls in flight, within
	// its Shutdown's deadline.
	Disconnected func(ctx context.Context, e *DisconnectEvent) error
	Unsubscribed func(ctx context.Context, e *UnsubscribeEvent) error

	// Timeout bounds each hook call. Zero means 5s.
	Timeout time.Duration
	// RefreshRetry is how long after a failed Refresh it is asked again.
	// Zero means 1 minute.
	RefreshRetry time.Duration
}

// ConnectEvent is what Hooks.Connect is asked about.
type ConnectEvent struct {
	// Client is the connection: its id, and the user Authenticate or a
	// token set ("" for anonymous).
	Client ClientInfo
	// Header is the handshake request's header (cookies included), URL
	// its URL: read them, do not change them.
	Header http.Header
	URL    string
	// Data is the connect command's data (herald.v1), nil if it had none
	// and for raw mode.
	Data json.RawMessage
}

// ConnectReply is Hooks.Connect's answer. A nil reply lets the connection
// in as it is.
type ConnectReply struct {
	// UserID, when not empty, is the connection's user, in place of the
	// one in ConnectEvent.Client.
	UserID string
	// Info is the connection's public info (shown in presence); nil keeps
	// what it had.
	Info json.RawMessage
	// Channels are server-side subscriptions: the connection is subscribed
	// to each, without asking Subscribe, and told by a subscribe push.
	// Raw mode ignores them.
	Channels []string
	// ExpiresAt, when not zero, is when Refresh is asked to extend the
	// connection; without Refresh the connection is then closed with 4004.
	ExpiresAt time.Time
	// Data is sent to the client in the connect result (herald.v1).
	Data json.RawMessage
}

// RefreshEvent is what Hooks.Refresh is asked about.
type RefreshEvent struct {
	Client ClientInfo
}

// RefreshReply is Hooks.Refresh's answer.
type RefreshReply struct {
	// ExpiresAt is the next expiry; zero means none (the connection stays
	// until it ends).
	ExpiresAt time.Time
}

// SubscribeEvent is what Hooks.Subscribe is asked about.
type SubscribeEvent struct {
	Client  ClientInfo
	Channel string
	// Data is the subscribe command's data, nil if none.
	Data json.RawMessage
}

// SubscribeReply is Hooks.Subscribe's answer; nil allows.
type SubscribeReply struct {
	// Info, when not nil, is the subscriber's info in this channel
	// (presence, join and leave), in place of the connection's.
	Info json.RawMessage
}

// PublishEvent is what Hooks.Publish is asked about.
type PublishEvent struct {
	Client  ClientInfo
	Channel string
	// Data is the payload: JSON for a text publication, bytes for a
	// binary one (Binary set).
	Data   []byte
	Binary bool
}

// PublishReply is Hooks.Publish's answer; nil publishes the data as sent.
type PublishReply struct {
	// Data, when not nil, is published in place of the client's (JSON for
	// a text publication: it must be valid JSON).
	Data []byte
}

// RPCEvent is what Hooks.RPC is asked: the client called Method with Data.
type RPCEvent struct {
	Client ClientInfo
	Method string
	// Data is the call's payload, any JSON; nil if it had none.
	Data json.RawMessage
}

// RPCReply is Hooks.RPC's answer.
type RPCReply struct {
	// Data is the result sent to the client, any JSON; nil sends none.
	Data json.RawMessage
}

// DisconnectEvent tells Hooks.Disconnected that a connection ended.
type DisconnectEvent struct {
	Client ClientInfo
	// Code and Reason are the close the server sent, or received from the
	// client (1006 when the socket was lost without one).
	Code   CloseCode
	Reason string
}

// UnsubscribeEvent tells Hooks.Unsubscribed that a subscription ended.
type UnsubscribeEvent struct {
	Client  ClientInfo
	Channel string
	// Reason is why: "client" (it unsubscribed), "server" (the
	// application took it away), or "disconnect" (the connection ended).
	Reason string
}

// Refuse is the error a hook returns to refuse: the client gets code and
// message in its error reply. code is one of protocol's codes or one of
// the application's own (ValidAppCode).
func Refuse(code Code, message string) *Error {
	return &Error{Code: code, Message: message}
}

// ValidAppCode reports whether code may be sent to a client as an error
// code: 1 to 64 bytes of lowercase ASCII letters, digits and '_',
// starting with a letter (protocol.ValidCode). A hook's refusal with any
// other code reaches the client as permission_denied, and is logged.
func ValidAppCode(code Code) bool { return protocol.ValidCode(code) }

// Hook names, the hook label of the hook metrics.
const (
	hookConnect      = "connect"
	hookRefresh      = "refresh"
	hookSubscribe    = "subscribe"
	hookPublish      = "publish"
	hookRPC          = "rpc"
	hookDisconnected = "disconnected"
	hookUnsubscribed = "unsubscribed"
)

// hookVerdict is what became of one hook call.
type hookVerdict uint8

const (
	hookOK      hookVerdict = iota
	hookRefused             // the hook returned an *Error: err is it
	hookFailed              // any other error, a timeout, a panic: err says which
)

// callHook runs one hook call, bounded by Hooks.Timeout and the node's
// life, and counts it. A refusal comes back as an *Error whose code the
// client may see (an invalid app code becomes permission_denied); a
// failure as an unavailable *Error whose cause is logged, never shown.
// A panicking hook is a failure: it must not take the node down.
func (n *Node) callHook(name string, client string, call func(ctx context.Context) error) (v hookVerdict, perr *Error) {
	return n.callHookIn(n.ctx, name, client, call)
}

// callHookIn is callHook within base (the node's life, or for
// notifications one that outlasts the connections' end; see notify).
func (n *Node) callHookIn(base context.Context, name string, client string, call func(ctx context.Context) error) (v hookVerdict, perr *Error) {
	ctx, cancel := context.WithTimeout(base, n.cfg.Hooks.Timeout)
	defer cancel()
	start := time.Now()
	err := func() (err error) {
		defer func() {
			if p := recover(); p != nil {
				err = fmt.Errorf("hook panicked: %v", p)
			}
		}()
		return call(ctx)
	}()
	n.metrics.hookDuration.WithLabelValues(name).Observe(time.Since(start).Seconds())
	var refusal *Error
	switch {
	case err == nil:
		v = hookOK
	case errors.As(err, &refusal) && refusal.Code != protocol.CodeUnavailable:
		v = hookRefused
		perr = &Error{Code: refusal.Code, Message: refusal.Message}
		if !protocol.ValidCode(refusal.Code) {
			n.log.Warn("hook refused with an invalid code; sent as permission_denied", "hook", name, "code", string(refusal.Code))
			perr.Code = protocol.CodePermission
		}
	default:
		v = hookFailed
		if ctx.Err() != nil && !errors.Is(err, context.Canceled) {
			err = fmt.Errorf("%w (no answer within %v)", err, n.cfg.Hooks.Timeout)
		}
		n.log.Warn("hook failed", "hook", name, "client", client, "err", err)
		perr = &Error{Code: protocol.CodeUnavailable, Message: name + " hook unavailable", Err: err}
	}
	n.metrics.hookCalls.WithLabelValues(name, [...]string{"ok", "refused", "failed"}[v]).Inc()
	return v, perr
}

// checkHookNamespaces refuses AnyNamespace in SubscribeNamespaces or
// PublishNamespaces: no channel's namespace is "*", so hookOn would match
// none, and a hook meant to authorize every channel would be silently off.
func checkHookNamespaces(h *Hooks) error {
	for _, l := range []struct {
		field string
		names []string
	}{{"SubscribeNamespaces", h.SubscribeNamespaces}, {"PublishNamespaces", h.PublishNamespaces}} {
		if slices.Contains(l.names, AnyNamespace) {
			return fmt.Errorf("herald: Hooks.%s holds %q, which names no channel's namespace: leave it nil to ask the hook about every channel", l.field, AnyNamespace)
		}
	}
	return nil
}

// hookOn reports whether a hook limited to namespaces (nil: all) applies
// to channel.
func hookOn(namespaces []string, channel string) bool {
	if namespaces == nil {
		return true
	}
	ns, _, found := strings.Cut(channel, ":")
	if !found {
		ns = ""
	}
	return slices.Contains(namespaces, ns)
}

// closeForRefusal is the close code of a connection whose connect or
// refresh the backend refused: 4501 for unauthorized, 4500 otherwise.
// Neither is reconnected after by the bundled clients.
func closeForRefusal(perr *Error) CloseCode {
	if perr.Code == protocol.CodeUnauthorized {
		return CloseUnauthorized
	}
	return CloseForbidden
}

// notify calls a notification hook (Disconnected, Unsubscribed) off the
// caller's goroutine. At most maxNotifying of each hook run at once: past
// that, the notification is dropped and counted (result "dropped"), so
// that a mass disconnect never piles up goroutines waiting on a slow
// backend, and a connection with many channels cannot crowd out the
// Disconnected calls. The calls run within notifyCtx, which outlives the
// connections: a node that stops waits for them (within its Shutdown's
// deadline), so that the disconnects of a restart are told.
func (n *Node) notify(name, client string, call func(ctx context.Context) error) {
	slots := n.notifying
	if name == hookDisconnected {
		slots = n.notifyingDisc
	}
	select {
	case slots <- struct{}{}:
	default:
		n.metrics.hookCalls.WithLabelValues(name, "dropped").Inc()
		n.log.Warn("hook notification dropped: too many in flight", "hook", name, "client", client)
		return
	}
	n.notifyWG.Add(1)
	go func() {
		defer n.notifyWG.Done()
		defer func() { <-slots }()
		n.callHookIn(n.notifyCtx, name, client, call)
	}()
}

// waitNotifications waits for the notification calls in flight, until
// ctx ends; then it cancels those left. Called by the node's stop once
// every connection has ended (so no more begin).
func (n *Node) waitNotifications(ctx context.Context) {
	done := make(chan struct{})
	go func() { n.notifyWG.Wait(); close(done) }()
	select {
	case <-done:
	case <-ctx.Done():
		n.notifyCancel()
		<-done
	}
	n.notifyCancel()
}

// maxNotifying bounds the notification hook calls in flight on a node.
const maxNotifying = 256

// clientInfo describes c to a hook.
func (c *conn) clientInfo() ClientInfo {
	c.mu.Lock()
	defer c.mu.Unlock()
	return ClientInfo{ID: c.id, UserID: c.user, Info: c.info, Raw: c.raw, SSE: c.sse != nil, RemoteAddr: c.remote}
}
