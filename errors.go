package herald

import (
	"errors"
	"fmt"
)

var (
	// ErrNodeClosed is returned by operations on a node that is shutting down.
	ErrNodeClosed = errors.New("herald: node closed")
	// ErrBadChannel reports an invalid channel name (see protocol.ValidChannel).
	ErrBadChannel = errors.New("herald: invalid channel name")
	// ErrNotEnabled reports history or presence asked of a channel whose
	// namespace does not keep it.
	ErrNotEnabled = errors.New("herald: not enabled for this channel")
)

// Close codes Herald sends, besides the RFC 6455 ones (1000 normal, 1001
// going away, 1002 protocol error, 1007 invalid UTF-8, 1009 message too big,
// 1011 internal error). Codes 4000-4499 mean the client may reconnect;
// 4500-4999 mean it should not reconnect without a change (a new token, say).
const (
	// CloseSlowConsumer: the client did not read fast enough; its outbound
	// queue went past the limit and was dropped. Reconnect and recover.
	CloseSlowConsumer = 4001
	// CloseNoPong: nothing arrived from the client within the heartbeat
	// timeout; the connection is presumed dead.
	CloseNoPong = 4002
	// CloseDisconnected: the server application disconnected the client and
	// allows it to reconnect.
	CloseDisconnected = 4003
	// CloseTokenExpired: the connection's token expired without a refresh.
	// Reconnect with a fresh token.
	CloseTokenExpired = 4004
	// CloseResubscribe: the node's broker connection was interrupted and
	// publications of a subscribed channel may have been missed. Reconnect
	// and resubscribe with since: the history recovers them, or the reply
	// says recovered:false.
	CloseResubscribe = 4006
	// CloseConnectTimeout: the server checks tokens and the client did not
	// send connect within Config.ConnectTimeout.
	CloseConnectTimeout = 4005
	// CloseRateLimited: the client kept sending over Config.MessageRate
	// (a protocol client at over twice the rate, past its burst, after
	// rate_limited replies; a raw client at once). Reconnect after a
	// backoff, and send less.
	CloseRateLimited = 4007
	// CloseForbidden: the server application disconnected the client and asks
	// it not to reconnect.
	CloseForbidden = 4500
	// CloseUnauthorized: the client's token was refused (garbled, expired,
	// wrongly signed, for another user). Do not reconnect with the same token.
	CloseUnauthorized = 4501
)

// DisconnectError describes why a connection was closed.
type DisconnectError struct {
	Code   int
	Reason string
}

func (e *DisconnectError) Error() string {
	return fmt.Sprintf("herald: disconnected: %d %s", e.Code, e.Reason)
}
