package protocol

import "strconv"

// CloseCode is a WebSocket close code (RFC 6455 section 7.4): every code a
// Herald server sends is one of the constants below, and PROTOCOL.md says
// what a client should do after each.
//
// Ranges: 1000-1015 are RFC 6455's. 4000-4499 are Herald's and allow a
// reconnect; 4500-4999 are Herald's and ask the client not to reconnect
// without a change (new credentials, say). See Reconnect.
type CloseCode int

// Codes of RFC 6455 that Herald sends (and 1006, which nobody sends).
const (
	// CloseNormal: the echo of a client's close without a code of its own.
	CloseNormal CloseCode = 1000
	// CloseGoingAway: the server is shutting down. Reconnect with backoff.
	CloseGoingAway CloseCode = 1001
	// CloseProtocolError: the client broke RFC 6455 (an unmasked frame, a
	// reserved bit or opcode, a bad continuation or close code).
	CloseProtocolError CloseCode = 1002
	// CloseNoStatus is never sent: it stands for a close frame without a
	// code (RFC 6455 section 7.1.5).
	CloseNoStatus CloseCode = 1005
	// CloseAbnormal is never sent: it is what a client sees when the
	// connection ended without a close frame (a cut socket, a slow
	// consumer that did not read its close in time). Reconnect.
	CloseAbnormal CloseCode = 1006
	// CloseInvalidPayload: a text frame is not UTF-8, or a compressed
	// message does not inflate.
	CloseInvalidPayload CloseCode = 1007
	// ClosePolicyViolation: too many connections for the user (at
	// connect), or a raw client may not publish to its channel. Do not
	// reconnect without a change.
	ClosePolicyViolation CloseCode = 1008
	// CloseMessageTooBig: a message over the server's size limit.
	CloseMessageTooBig CloseCode = 1009
	// CloseServiceRestart: the server drains for a restart. Reconnect,
	// with backoff: a load balancer sends the client to another node.
	CloseServiceRestart CloseCode = 1012
	// CloseTryAgainLater: the server could not serve the connection now
	// (the broker failed a raw client's subscribe or publish).
	CloseTryAgainLater CloseCode = 1013
)

// Herald's codes.
const (
	// CloseSlowConsumer: the client did not read fast enough; its outbound
	// queue went past the limit and was dropped. Reconnect and recover.
	CloseSlowConsumer CloseCode = 4001
	// CloseNoPong: nothing arrived from the client within the heartbeat
	// timeout; the connection is presumed dead.
	CloseNoPong CloseCode = 4002
	// CloseDisconnected: the server application disconnected the client and
	// allows it to reconnect.
	CloseDisconnected CloseCode = 4003
	// CloseTokenExpired: the connection's token expired without a refresh.
	// Reconnect with a fresh token.
	CloseTokenExpired CloseCode = 4004
	// CloseConnectTimeout: the server checks tokens and the client did not
	// send connect in time.
	CloseConnectTimeout CloseCode = 4005
	// CloseResubscribe: publications of a subscribed channel may have been
	// missed (the node's broker link was lost, or its history reset).
	// Reconnect and resubscribe with since: the history recovers them, or
	// the reply says recovered:false.
	CloseResubscribe CloseCode = 4006
	// CloseRateLimited: the client kept sending over the message rate.
	// Reconnect after a backoff, and send less.
	CloseRateLimited CloseCode = 4007
	// CloseForbidden: the server application disconnected the client and
	// asks it not to reconnect.
	CloseForbidden CloseCode = 4500
	// CloseUnauthorized: the client's token was refused (garbled, expired,
	// wrongly signed, for another user). Do not reconnect with it.
	CloseUnauthorized CloseCode = 4501
)

var closeNames = map[CloseCode]string{
	CloseNormal: "normal", CloseGoingAway: "going away", CloseProtocolError: "protocol error",
	CloseNoStatus: "no status", CloseAbnormal: "abnormal closure", CloseInvalidPayload: "invalid payload",
	ClosePolicyViolation: "policy violation", CloseMessageTooBig: "message too big",
	CloseServiceRestart: "service restart", CloseTryAgainLater: "try again later",
	CloseSlowConsumer: "slow consumer", CloseNoPong: "no pong", CloseDisconnected: "disconnected",
	CloseTokenExpired: "token expired", CloseConnectTimeout: "connect timeout", CloseResubscribe: "resubscribe",
	CloseRateLimited: "rate limited", CloseForbidden: "forbidden", CloseUnauthorized: "unauthorized",
}

// String returns the code and its name, such as "4001 slow consumer".
func (c CloseCode) String() string {
	if name, ok := closeNames[c]; ok {
		return strconv.Itoa(int(c)) + " " + name
	}
	return strconv.Itoa(int(c))
}

// Reconnect reports whether a client closed with c may reconnect by itself
// (with backoff): every code but 1008 and 4500-4999, which ask for a change
// first (new credentials, fewer connections). The bundled clients follow
// it. (After 1002, 1007 or 1009 a reconnect is allowed, but the client's
// next message should not repeat what was refused.)
func (c CloseCode) Reconnect() bool {
	return c != ClosePolicyViolation && (c < 4500 || c > 4999)
}
