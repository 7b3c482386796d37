package client

import (
	"context"
	"errors"
	"fmt"
	"net/http"

	"github.com/heraldhq/herald/protocol"
)

var (
	// ErrDisconnected reports a request made while the client has no live
	// connection (before Connect, or while it reconnects), or a request
	// whose connection was lost before its reply arrived. The request may or
	// may not have taken effect on the server; a publish can be retried
	// safely with an idempotency key.
	ErrDisconnected = errors.New("herald client: not connected")

	// ErrClosed reports a call on a client that was closed by Close, or that
	// stopped for good because the server asked it not to reconnect (see
	// Client.Err for why).
	ErrClosed = errors.New("herald client: closed")

	// ErrTimeout reports a request that got no reply within
	// Options.RequestTimeout. It matches context.DeadlineExceeded too
	// (errors.Is), so callers can treat both deadlines alike.
	ErrTimeout error = timeoutError{}

	// ErrSlowHandler is the cause of a disconnect the client initiated
	// itself because the handlers did not keep up: the event queue stayed
	// full for Options.QueueTimeout. The client reconnects and recovers the
	// publications it could not queue, like a server-side slow consumer.
	ErrSlowHandler = errors.New("herald client: handlers too slow, event queue full")
)

// timeoutError is ErrTimeout: a net.Error-style timeout that also matches
// context.DeadlineExceeded, so one errors.Is check covers both deadlines.
type timeoutError struct{}

func (timeoutError) Error() string        { return "herald client: no reply within the request timeout" }
func (timeoutError) Timeout() bool        { return true }
func (timeoutError) Is(target error) bool { return target == context.DeadlineExceeded }

// Error is an error reply from the server, typed by its Code (see
// protocol.Code and PROTOCOL.md). Switch on Code, never on Message, which is
// for humans and may change. Request methods wrap it, so use errors.As:
//
//	var herr *client.Error
//	if errors.As(err, &herr) && herr.Code == protocol.CodeBadChannel { … }
//
// The client also returns an *Error with CodeAlreadySub, without asking the
// server, when Subscribe is called for a channel this client already holds.
type Error struct {
	Code    protocol.Code
	Message string
}

func (e *Error) Error() string { return "herald: " + string(e.Code) + ": " + e.Message }

func replyError(pe *protocol.Error) *Error { return &Error{Code: pe.Code, Message: pe.Message} }

// CloseError is a connection closed by the server with a close frame: its
// WebSocket close code (4003 disconnected, 4500 forbidden, 1001 going away…;
// see PROTOCOL.md) and reason. It is StateChange.Err of a disconnect, and
// Client.Err after a close code that forbids reconnecting.
type CloseError struct {
	Code   protocol.CloseCode
	Reason string
}

func (e *CloseError) Error() string {
	return fmt.Sprintf("herald client: connection closed by the server: %s: %s", e.Code, e.Reason)
}

// CloseCodeOf returns the close code of the server's close frame that err
// carries (a *CloseError in its chain, such as StateChange.Err or Err after
// a final close), or false.
func CloseCodeOf(err error) (protocol.CloseCode, bool) {
	var ce *CloseError
	if errors.As(err, &ce) {
		return ce.Code, true
	}
	return 0, false
}

// HandshakeError is a WebSocket handshake the server refused with an HTTP
// status (401, 403, 503…). 401 and 403 stop the client's reconnecting.
type HandshakeError struct {
	StatusCode int
	Err        error // the dialer's error, websocket.ErrBadHandshake
}

func (e *HandshakeError) Error() string {
	return fmt.Sprintf("herald client: handshake refused: %d %s", e.StatusCode, http.StatusText(e.StatusCode))
}

func (e *HandshakeError) Unwrap() error { return e.Err }

// PublishError is the error of a Publish or PublishBinary that carried an
// idempotency key (the automatic one, or WithIdempotencyKey's): every such
// publish that fails returns one, so that the key is never lost. Err says
// why, and errors.Is and errors.As see through it (ErrDisconnected, ErrTimeout,
// an *Error with its Code, the context's error…).
//
// Whether the publication happened depends on Err: a reply that says no
// (bad_channel, permission_denied, rate_limited…) on every attempt means it
// did not; ErrTimeout, ErrDisconnected or CodeUnavailable mean it may have.
// Publishing again with WithIdempotencyKey(IdempotencyKey) within the
// server's window (2 minutes by default, counted from the first attempt)
// settles it: the publication then happens exactly once, and the result's
// Duplicate says whether an earlier attempt had made it.
type PublishError struct {
	// IdempotencyKey is the key every attempt carried.
	IdempotencyKey string
	// Attempts counts the times the publish was sent (0: never, e.g. the
	// client was closed).
	Attempts int
	// Err is the last attempt's error, joined with the reason retrying
	// stopped (the context's error, or one matching context.DeadlineExceeded
	// after Options.RetryTimeout) when it was retryable.
	Err error
}

func (e *PublishError) Error() string {
	return fmt.Sprintf("herald client: publish with idempotency key %q failed after %d attempts: %v", e.IdempotencyKey, e.Attempts, e.Err)
}

func (e *PublishError) Unwrap() error { return e.Err }

// terminal reports whether err means "do not reconnect": the server closed
// with a code from 4500 to 4999 or 1008 (policy violation: too many
// connections for the user), or refused the handshake with 401 or 403.
// Reconnecting would only repeat the refusal; the app must change something
// (credentials, say) and make a new Client. Every other code, 4007 (rate
// limited) included, allows a reconnect.
func terminal(err error) bool {
	var ce *CloseError
	if errors.As(err, &ce) {
		return !ce.Code.Reconnect()
	}
	var he *HandshakeError
	if errors.As(err, &he) {
		return he.StatusCode == http.StatusUnauthorized || he.StatusCode == http.StatusForbidden
	}
	return false
}
