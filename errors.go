package herald

import (
	"errors"
	"fmt"
	"net/http"

	"github.com/heraldhq/herald/protocol"
)

// Errors and close codes: one vocabulary for what went wrong.
//
// A refusal — by a Node method, or by the node to a client's command — is
// an *Error: a Code from the protocol (bad_channel, not_enabled,
// unavailable, …) and a Message for humans. Every surface renders that one
// value the same way: a herald.v1 error reply, an HTTP API or dashboard
// error with the status HTTPStatus gives. The sentinels below match an
// *Error of their kind with errors.Is; errors.As gives the *Error.
//
// Connections end with a CloseCode, protocol's type, re-exported here.

// Code is an error code clients switch on (protocol.Code).
type Code = protocol.Code

// Error is a refusal: what was refused, in words safe to show the client
// (Message never holds a token, a key or a payload), and why (its Code).
// Err, when set, is the cause (a broker's error, say): for logs and
// errors.Is, not for clients.
type Error struct {
	Code    Code
	Message string
	Err     error
}

func (e *Error) Error() string {
	if e.Err != nil {
		return "herald: " + e.Message + ": " + e.Err.Error()
	}
	return "herald: " + e.Message
}

// Unwrap returns the cause.
func (e *Error) Unwrap() error { return e.Err }

// Is matches the sentinel of e's kind (ErrBadChannel for bad_channel,
// ErrNotEnabled for not_enabled).
func (e *Error) Is(target error) bool {
	switch target {
	case ErrBadChannel:
		return e.Code == protocol.CodeBadChannel
	case ErrNotEnabled:
		return e.Code == protocol.CodeNotEnabled
	}
	return false
}

// errorf builds an *Error.
func errorf(code Code, format string, args ...any) *Error {
	return &Error{Code: code, Message: fmt.Sprintf(format, args...)}
}

// unavailable is the refusal of a request that failed on the broker: cause
// is logged by the caller, not shown.
func unavailable(what string, cause error) *Error {
	return &Error{Code: protocol.CodeUnavailable, Message: what + ": broker unavailable", Err: cause}
}

var (
	// ErrNodeClosed is returned by operations on a node that is shutting
	// down (inside an *Error of code unavailable).
	ErrNodeClosed = errors.New("herald: node closed")
	// ErrBadChannel matches an *Error of code bad_channel: an invalid
	// channel name (see protocol.ValidChannel), or one in no configured
	// namespace.
	ErrBadChannel = errors.New("herald: invalid channel name")
	// ErrNotEnabled matches an *Error of code not_enabled: history or
	// presence asked of a channel whose namespace does not keep it.
	ErrNotEnabled = errors.New("herald: not enabled for this channel")
)

// errNodeClosed is the refusal of a request made to a closing node.
var errNodeClosed = &Error{Code: protocol.CodeUnavailable, Message: "node shutting down", Err: ErrNodeClosed}

// toProto renders an error for a herald.v1 reply: an *Error as itself, any
// other error as unavailable (its text is for the log, not the client).
func toProto(err error) *protocol.Error {
	var e *Error
	if errors.As(err, &e) {
		return &protocol.Error{Code: e.Code, Message: e.Message}
	}
	return protocol.Errorf(protocol.CodeUnavailable, "temporarily unavailable")
}

// HTTPStatus is the HTTP status of an error code, for the HTTP API and the
// dashboard: 400 for a bad request, 401, 403, 404, 409 for a state
// conflict, 413, 429, 503 for unavailable, 500 for anything else.
func HTTPStatus(code Code) int {
	switch code {
	case protocol.CodeBadRequest, protocol.CodeBadChannel, protocol.CodeNotEnabled, protocol.CodeUnknownCommand:
		return http.StatusBadRequest
	case protocol.CodeUnauthorized:
		return http.StatusUnauthorized
	case protocol.CodePermission:
		return http.StatusForbidden
	case protocol.CodeAlreadySub, protocol.CodeNotSubscribed:
		return http.StatusConflict
	case protocol.CodeTooLarge:
		return http.StatusRequestEntityTooLarge
	case protocol.CodeRateLimited, protocol.CodeLimitExceeded:
		return http.StatusTooManyRequests
	case protocol.CodeUnavailable:
		return http.StatusServiceUnavailable
	}
	return http.StatusInternalServerError
}

// CloseCode is a WebSocket close code (protocol.CloseCode): every code
// Herald sends, the ranges and what a client should do after each.
type CloseCode = protocol.CloseCode

// The close codes Herald sends (see protocol.CloseCode for each).
const (
	CloseNormal          = protocol.CloseNormal
	CloseGoingAway       = protocol.CloseGoingAway
	CloseProtocolError   = protocol.CloseProtocolError
	CloseInvalidPayload  = protocol.CloseInvalidPayload
	ClosePolicyViolation = protocol.ClosePolicyViolation
	CloseMessageTooBig   = protocol.CloseMessageTooBig
	CloseServiceRestart  = protocol.CloseServiceRestart
	CloseTryAgainLater   = protocol.CloseTryAgainLater
	CloseSlowConsumer    = protocol.CloseSlowConsumer
	CloseNoPong          = protocol.CloseNoPong
	CloseDisconnected    = protocol.CloseDisconnected
	CloseTokenExpired    = protocol.CloseTokenExpired
	CloseConnectTimeout  = protocol.CloseConnectTimeout
	CloseResubscribe     = protocol.CloseResubscribe
	CloseRateLimited     = protocol.CloseRateLimited
	CloseForbidden       = protocol.CloseForbidden
	CloseUnauthorized    = protocol.CloseUnauthorized
)

// DisconnectError is why a connection was closed: its close code and
// reason.
type DisconnectError struct {
	Code   CloseCode
	Reason string
}

func (e *DisconnectError) Error() string {
	return fmt.Sprintf("herald: disconnected: %s: %s", e.Code, e.Reason)
}
