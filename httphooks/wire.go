package httphooks

import "encoding/json"

// The wire: what Herald POSTs to each hook's URL, and what the backend
// answers. The types are exported so that a Go backend can decode the
// requests and encode the answers with them; docs/hooks.md documents the
// same JSON for other languages, and httpapi/openapi.json has it as
// OpenAPI webhooks.
//
// Every request carries the connection (Client) and the hook's own fields.
// Every answer of a deciding hook (connect, refresh, subscribe, publish,
// rpc) is HTTP 200 with a body of exactly one of
//
//	{"result": {...}}                             allow (fields per hook)
//	{"error": {"code": "...", "message": "..."}}  refuse
//
// The notifications (disconnected, unsubscribed) only need a 2xx; their
// body is not read.

// Client is the connection a hook call is about.
type Client struct {
	// ID is the connection's id, unique in the cluster.
	ID string `json:"id"`
	// User is the connection's user id; "" for an anonymous connection.
	User string `json:"user"`
	// Info is the connection's public info (shown in presence), any JSON;
	// absent when it has none.
	Info json.RawMessage `json:"info,omitempty"`
	// Raw is true for a raw-mode connection (/ws/raw).
	Raw bool `json:"raw"`
	// RemoteAddr is the client's address as the server saw it: host:port,
	// or behind a proxy the server trusts (trusted_proxies) the client's IP
	// address alone; behind a proxy it does not trust, the proxy's.
	RemoteAddr string `json:"remote_addr"`
}

// Error is a refusal: Code reaches the client as its error reply's code
// (a Herald code, or the application's own: 1 to 64 bytes of a-z, 0-9 and
// '_', starting with a letter), Message as its message.
type Error struct {
	Code    string `json:"code"`
	Message string `json:"message,omitempty"`
}

// ConnectRequest is the body of a connect hook call.
type ConnectRequest struct {
	Client Client `json:"client"`
	// Headers are the handshake request's headers named in ForwardHeaders,
	// those it had; several values of one header are joined with ", ".
	Headers map[string]string `json:"headers,omitempty"`
	// Cookies are the handshake request's cookies named in ForwardCookies,
	// those it had.
	Cookies map[string]string `json:"cookies,omitempty"`
	// URL is the handshake request's URL (path and query).
	URL string `json:"url"`
	// Data is the connect command's data, any JSON; absent when it had none
	// and for raw mode.
	Data json.RawMessage `json:"data,omitempty"`
}

// ConnectResult is a connect hook's allowing answer. Every field is
// optional: {} lets the connection in as it is.
type ConnectResult struct {
	// User, when not empty, is the connection's user, in place of the one
	// in the request.
	User string `json:"user,omitempty"`
	// Info is the connection's public info, any JSON.
	Info json.RawMessage `json:"info,omitempty"`
	// Channels are server-side subscriptions: valid channel names.
	Channels []string `json:"channels,omitempty"`
	// ExpiresAt, when not 0, is when (unix seconds) the refresh hook is
	// asked to extend the connection.
	ExpiresAt int64 `json:"expires_at,omitempty"`
	// Data is sent to the client in its connect result, any JSON.
	Data json.RawMessage `json:"data,omitempty"`
}

// ConnectResponse is a connect hook's answer: Result or Error.
type ConnectResponse struct {
	Result *ConnectResult `json:"result,omitempty"`
	Error  *Error         `json:"error,omitempty"`
}

// RefreshRequest is the body of a refresh hook call: the connection whose
// expiry has come.
type RefreshRequest struct {
	Client Client `json:"client"`
}

// RefreshResult extends the connection: ExpiresAt (unix seconds) is its
// next expiry, 0 for none.
type RefreshResult struct {
	ExpiresAt int64 `json:"expires_at,omitempty"`
}

// RefreshResponse is a refresh hook's answer: Result or Error.
type RefreshResponse struct {
	Result *RefreshResult `json:"result,omitempty"`
	Error  *Error         `json:"error,omitempty"`
}

// SubscribeRequest is the body of a subscribe hook call.
type SubscribeRequest struct {
	Client  Client `json:"client"`
	Channel string `json:"channel"`
	// Data is the subscribe command's data, any JSON; absent when none.
	Data json.RawMessage `json:"data,omitempty"`
}

// SubscribeResult allows the subscription. Info, when present, is the
// subscriber's info in this channel's presence, in place of the
// connection's.
type SubscribeResult struct {
	Info json.RawMessage `json:"info,omitempty"`
}

// SubscribeResponse is a subscribe hook's answer: Result or Error.
type SubscribeResponse struct {
	Result *SubscribeResult `json:"result,omitempty"`
	Error  *Error           `json:"error,omitempty"`
}

// PublishRequest is the body of a publish hook call: a text publication
// has Data (any JSON), a binary one Binary (base64 in JSON).
type PublishRequest struct {
	Client  Client          `json:"client"`
	Channel string          `json:"channel"`
	Data    json.RawMessage `json:"data,omitempty"`
	Binary  []byte          `json:"binary,omitempty"`
}

// PublishResult allows the publication; Data (for a text publication) or
// Binary (for a binary one), when present, is published in place of the
// client's. Neither: the client's is published as sent.
type PublishResult struct {
	Data   json.RawMessage `json:"data,omitempty"`
	Binary []byte          `json:"binary,omitempty"`
}

// PublishResponse is a publish hook's answer: Result or Error.
type PublishResponse struct {
	Result *PublishResult `json:"result,omitempty"`
	Error  *Error         `json:"error,omitempty"`
}

// RPCRequest is the body of an rpc hook call: the client called Method
// with Data (any JSON; absent when none).
type RPCRequest struct {
	Client Client          `json:"client"`
	Method string          `json:"method"`
	Data   json.RawMessage `json:"data,omitempty"`
}

// RPCResult is the rpc's answer: Data, any JSON, reaches the client as
// its result's data.
type RPCResult struct {
	Data json.RawMessage `json:"data,omitempty"`
}

// RPCResponse is an rpc hook's answer: Result or Error.
type RPCResponse struct {
	Result *RPCResult `json:"result,omitempty"`
	Error  *Error     `json:"error,omitempty"`
}

// DisconnectedRequest tells that a connection ended, with the close code
// and reason the server sent or received (1006: the socket was lost).
type DisconnectedRequest struct {
	Client Client `json:"client"`
	Code   int    `json:"code"`
	Reason string `json:"reason"`
}

// UnsubscribedRequest tells that a subscription ended. Reason is "client"
// (it unsubscribed), "server" (the application took it away) or
// "disconnect" (the connection ended).
type UnsubscribedRequest struct {
	Client  Client `json:"client"`
	Channel string `json:"channel"`
	Reason  string `json:"reason"`
}
