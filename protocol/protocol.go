// Package protocol is Herald's wire format, herald.v1: the one contract that
// the server and every client mirror. PROTOCOL.md at the repository root is
// its human-readable specification; this package is the executable one.
//
// The format is WebSocket-agnostic: it describes message bodies, not frames.
// A message travels either as a text frame holding one JSON object, or as a
// binary frame holding a JSON header, one '\n' byte, and the raw payload bytes:
//
//	text:   {"id":1,"cmd":"publish","channel":"chat","data":{"text":"hi"}}
//	binary: {"id":2,"cmd":"publish","channel":"files"}\n<raw bytes>
//
// Compact JSON never contains a raw newline (it is escaped inside strings), so
// the first '\n' in a binary frame always ends the header.
//
// Compatibility: decoders ignore unknown fields and clients ignore unknown
// push kinds, so later versions add fields, commands and pushes without
// breaking v1 peers. A server answers a command it does not know with the
// error code "unknown_command".
package protocol

import (
	"bytes"
	"encoding/base64"
	"encoding/json"
	"errors"
	"fmt"
	"strconv"
)

// Subprotocol is the WebSocket subprotocol name of this version.
const Subprotocol = "herald.v1"

// Command names a client may send.
const (
	// CmdConnect authenticates the connection with "token" (required first
	// when the server checks tokens, optional otherwise); its result tells
	// the client its id.
	CmdConnect = "connect"
	// CmdRefresh replaces the connection's token with a fresh one ("token")
	// for the same user before the old one expires.
	CmdRefresh     = "refresh"
	CmdSubscribe   = "subscribe"
	CmdUnsubscribe = "unsubscribe"
	CmdPublish     = "publish"
	CmdPing        = "ping"
	// CmdHistory reads a channel's history.
	CmdHistory = "history"
	// CmdPresence lists the clients present in a channel.
	CmdPresence = "presence"
	// CmdPresenceStats counts them.
	CmdPresenceStats = "presence_stats"
	// CmdRPC calls "method" of the application's backend with "data"; the
	// result carries the backend's answer (RPCResult).
	CmdRPC = "rpc"
)

// Push kinds the server sends without a request.
const (
	// PushPub carries a publication of a subscribed channel.
	PushPub = "pub"
	// PushMessage carries a message sent to this connection directly (to the
	// connection, to its user, or to every connection) rather than through a
	// channel.
	PushMessage = "message"
	// PushJoin and PushLeave tell subscribers of a channel with join/leave
	// events on that a client subscribed or left.
	PushJoin  = "join"
	PushLeave = "leave"
	// PushUnsub tells a client that the server ended one of its
	// subscriptions ("code" says why, "reason" in words): the client must
	// not resubscribe by itself.
	PushUnsub = "unsub"
	// PushSubscribe tells a client that the server subscribed it to a
	// channel (a server-side subscription): "channel", and the channel's
	// position as in a SubscribeResult. Publications of the channel
	// follow it, recovered ones first. The client treats it as its own
	// subscription, but does not resubscribe to it after a reconnect: it
	// sends its position in connect's "subs" instead.
	PushSubscribe = "subscribe"
	// PushDropped tells a client that publications of "channel" were
	// dropped from its queue because it read too slowly (a namespace with
	// overflow drop_oldest): "count" of them, and for a channel with
	// history exactly which, in "offsets": inclusive ranges [from,to] in
	// ascending order. It comes where the first of them would have: the
	// channel's publications before it were delivered, the next one
	// after it follows the last dropped. Read them back with history and
	// since if they matter.
	PushDropped = "dropped"
)

// Codes of an unsub push.
const (
	// UnsubServer: the server application unsubscribed the client (the
	// HTTP API's unsubscribe_user, Node.UnsubscribeUser).
	UnsubServer = "server_unsubscribe"
	// UnsubNotRestored: a server-side subscription the client named in
	// connect's "subs" was not made again on this connection (the
	// application no longer grants it).
	UnsubNotRestored = "not_restored"
)

// Command is a request from a client. Every command carries an ID chosen by
// the client (1 or more, unique among its outstanding commands); the reply
// carries the same ID.
type Command struct {
	ID      uint64 `json:"id"`
	Cmd     string `json:"cmd"`
	Channel string `json:"channel,omitempty"`
	// Data is the payload of a text-frame publish: any JSON value, kept
	// byte-for-byte. For a binary frame it is empty and the payload follows
	// the header.
	Data json.RawMessage `json:"data,omitempty"`
	// Since asks subscribe to recover the publications after this position,
	// and history to return only those.
	Since *Position `json:"since,omitempty"`
	// Token is a connection token (connect, refresh) or a subscription token
	// (subscribe to a channel that needs one).
	Token string `json:"token,omitempty"`
	// IdempotencyKey makes a publish happen once within the server's window.
	IdempotencyKey string `json:"idempotency_key,omitempty"`
	// Key is a publish's conflation key: in a namespace that conflates, a
	// slow subscriber keeps only the newest publication per channel and key.
	Key string `json:"key,omitempty"`
	// Limit caps how many publications history returns (absent: all kept).
	Limit *int `json:"limit,omitempty"`
	// Reverse makes history return the newest first.
	Reverse bool `json:"reverse,omitempty"`
	// Method is the method an rpc calls.
	Method string `json:"method,omitempty"`
	// Subs are, in connect, the server-side subscriptions the client held
	// on its previous connection, each with the position it reached: the
	// server makes again those the application still grants, recovering
	// from there, and ends the others with an unsub push (not_restored).
	Subs map[string]Position `json:"subs,omitempty"`
	// Delta, in subscribe, asks for the channel's publications as deltas
	// of this type (DeltaFossil) when its namespace allows them; the
	// result's Delta says whether they were granted.
	Delta string `json:"delta,omitempty"`
}

// DeltaFossil is the delta type of subscribe's "delta": fossil delta
// (https://fossil-scm.org/home/doc/tip/www/delta_format.wiki), each delta
// against the channel's previous publication (offset-1).
const DeltaFossil = "fossil"

// Position is a position in a channel's history: the offset of the last
// publication seen and the epoch of the history it belongs to.
type Position struct {
	Offset uint64 `json:"offset"`
	Epoch  string `json:"epoch"`
}

// Reasons a subscribe with since could not recover.
const (
	// ReasonEpochChanged: the channel's history was reset (the epoch differs).
	ReasonEpochChanged = "epoch_changed"
	// ReasonTooOld: publications after the offset have left the history.
	ReasonTooOld = "too_old"
	// ReasonNoHistory: the channel keeps no history.
	ReasonNoHistory = "no_history"
)

// SubscribeResult is the result of subscribe. Offset and Epoch are present
// when the channel keeps history: the position at the time of subscribing,
// from which the client tracks offsets. Recovered is present when the
// command had since.
type SubscribeResult struct {
	Offset    uint64 `json:"offset,omitempty"`
	Epoch     string `json:"epoch,omitempty"`
	Recovered *bool  `json:"recovered,omitempty"`
	// Reason says why recovery failed (one of the Reason constants).
	Reason string `json:"reason,omitempty"`
	// Delta: the subscription gets deltas (the command asked and the
	// namespace allows them). See AppendDeltaPush.
	Delta bool `json:"delta,omitempty"`
}

// PublishResult is the result of publish on a channel with history, or of a
// publish with an idempotency key.
type PublishResult struct {
	Offset    uint64 `json:"offset,omitempty"`
	Epoch     string `json:"epoch,omitempty"`
	Duplicate bool   `json:"duplicate,omitempty"`
}

// HistoryResult is the result of history.
type HistoryResult struct {
	Publications []HistoryPublication `json:"publications"`
	Offset       uint64               `json:"offset"`
	Epoch        string               `json:"epoch"`
}

// HistoryPublication is one publication in a history result. A text
// publication has "data"; a binary one has "binary", standard base64 (with
// padding), present even when the payload is empty.
type HistoryPublication struct {
	Offset uint64
	// Data is the JSON of a text publication.
	Data json.RawMessage
	// Binary is the payload of a binary publication (IsBinary set).
	Binary   []byte
	IsBinary bool
}

type historyPublicationJSON struct {
	Offset uint64          `json:"offset"`
	Data   json.RawMessage `json:"data,omitempty"`
	Binary *[]byte         `json:"binary,omitempty"`
}

// MarshalJSON implements json.Marshaler.
func (p HistoryPublication) MarshalJSON() ([]byte, error) {
	j := historyPublicationJSON{Offset: p.Offset, Data: p.Data}
	if p.IsBinary {
		b := p.Binary
		if b == nil {
			b = []byte{}
		}
		j.Binary = &b
		j.Data = nil
	}
	return json.Marshal(j)
}

// UnmarshalJSON implements json.Unmarshaler.
func (p *HistoryPublication) UnmarshalJSON(b []byte) error {
	var j historyPublicationJSON
	if err := json.Unmarshal(b, &j); err != nil {
		return err
	}
	*p = HistoryPublication{Offset: j.Offset, Data: j.Data}
	if j.Binary != nil {
		p.Binary, p.IsBinary = *j.Binary, true
	}
	return nil
}

// ClientInfo describes a client in presence results and join/leave pushes.
type ClientInfo struct {
	Client string          `json:"client"`
	User   string          `json:"user,omitempty"`
	Info   json.RawMessage `json:"info,omitempty"`
}

// PresenceResult is the result of presence: clients by client id.
type PresenceResult struct {
	Clients map[string]ClientInfo `json:"clients"`
}

// PresenceStatsResult is the result of presence_stats.
type PresenceStatsResult struct {
	Clients int `json:"clients"`
	Users   int `json:"users"`
}

// Code is a typed error code carried in error replies. Codes are stable strings;
// clients switch on them, never on the message text.
type Code string

// Error codes of herald.v1.
const (
	CodeBadRequest     Code = "bad_request"     // unparseable frame or missing field
	CodeUnknownCommand Code = "unknown_command" // cmd not known to this server
	CodeBadChannel     Code = "bad_channel"     // channel name invalid
	CodeNotSubscribed  Code = "not_subscribed"  // unsubscribe from a channel not held
	CodeAlreadySub     Code = "already_subscribed"
	CodeTooLarge       Code = "too_large"         // reserved: v1 servers close oversize messages with 1009
	CodeLimitExceeded  Code = "limit_exceeded"    // e.g. too many channels on one connection
	CodeUnavailable    Code = "unavailable"       // broker unreachable or node shutting down
	CodeUnauthorized   Code = "unauthorized"      // no valid token where one is needed
	CodePermission     Code = "permission_denied" // the client may not do this on this channel
	CodeRateLimited    Code = "rate_limited"      // too many messages; slow down
	CodeNotEnabled     Code = "not_enabled"       // history or presence not enabled for the channel's namespace
	CodeInternal       Code = "internal"
)

// ValidCode reports whether code can travel as an error code: 1 to 64
// bytes of lowercase ASCII letters, digits and '_', starting with a
// letter. Every code above is valid; an application's hooks may refuse
// with codes of their own of this form.
func ValidCode(code Code) bool {
	if len(code) == 0 || len(code) > 64 || code[0] < 'a' || code[0] > 'z' {
		return false
	}
	for i := 0; i < len(code); i++ {
		if c := code[i]; (c < 'a' || c > 'z') && (c < '0' || c > '9') && c != '_' {
			return false
		}
	}
	return true
}

// Error is the error object of a failed command's reply.
type Error struct {
	Code    Code   `json:"code"`
	Message string `json:"message"`
}

func (e *Error) Error() string { return string(e.Code) + ": " + e.Message }

// Errorf builds an *Error with a formatted message.
func Errorf(code Code, format string, args ...any) *Error {
	return &Error{Code: code, Message: fmt.Sprintf(format, args...)}
}

// Reply answers one Command. Exactly one of Result and Error is set; Result
// may be absent when the command has nothing to return.
type Reply struct {
	ID     uint64          `json:"id"`
	Result json.RawMessage `json:"result,omitempty"`
	Error  *Error          `json:"error,omitempty"`
}

// ConnectResult is the result of connect and refresh.
type ConnectResult struct {
	Client string `json:"client"`
	// User is the authenticated user id; absent for an anonymous client.
	User string `json:"user,omitempty"`
	// Expires is the token's expiry in Unix seconds; absent if it has none.
	// The client must refresh before then.
	Expires int64 `json:"expires,omitempty"`
	// Data is the connect hook's data for the client, if it gave any.
	Data json.RawMessage `json:"data,omitempty"`
}

// RPCResult is the result of rpc: the backend's answer, absent if it gave
// none.
type RPCResult struct {
	Data json.RawMessage `json:"data,omitempty"`
}

// Push is a server-initiated message, decoded (clients use this; the server
// encodes pushes with AppendPushHeader for speed).
type Push struct {
	Push    string          `json:"push"`
	Channel string          `json:"channel,omitempty"`
	Offset  uint64          `json:"offset,omitempty"`
	Data    json.RawMessage `json:"data,omitempty"`
	// Info is the client of a join or leave push.
	Info *ClientInfo `json:"info,omitempty"`
	// Code and Reason say why an unsub push ended a subscription.
	Code   string `json:"code,omitempty"`
	Reason string `json:"reason,omitempty"`
	// Epoch, Recovered and Reason (with Offset) are the channel's
	// position in a subscribe push, as in a SubscribeResult.
	Epoch     string `json:"epoch,omitempty"`
	Recovered *bool  `json:"recovered,omitempty"`
	// Delta marks a pub push (always a binary frame) whose payload is a
	// delta against the publication at Offset-1 (AppendDeltaPush).
	Delta bool `json:"delta,omitempty"`
	// Count and Offsets are what a dropped push says was lost: how many
	// publications, and the offsets as inclusive ranges (none for a
	// channel without history).
	Count   int         `json:"count,omitempty"`
	Offsets [][2]uint64 `json:"offsets,omitempty"`
}

// ErrNoSeparator reports a binary frame without the '\n' that ends its header.
var ErrNoSeparator = errors.New("binary frame has no '\\n' after its JSON header")

// SplitBinary splits a binary frame into its JSON header and payload. The
// payload aliases frame.
func SplitBinary(frame []byte) (header, payload []byte, err error) {
	i := bytes.IndexByte(frame, '\n')
	if i < 0 {
		return nil, nil, ErrNoSeparator
	}
	return frame[:i], frame[i+1:], nil
}

// DecodeCommand parses a client frame. For a binary frame the returned
// payload is the bytes after the header (aliasing frame); for a text frame it
// is Data. The error, when not nil, is always an *Error with CodeBadRequest.
// cmd.ID is filled in when the header is well-formed JSON with a valid id (a
// field of the wrong type, say), so the server can answer the right request;
// for JSON that does not parse it is 0: nothing in it can be trusted.
func DecodeCommand(frame []byte, binary bool) (cmd Command, payload []byte, err error) {
	header := frame
	if binary {
		header, payload, err = SplitBinary(frame)
		if err != nil {
			return cmd, nil, &Error{Code: CodeBadRequest, Message: err.Error()}
		}
	}
	if err := json.Unmarshal(header, &cmd); err != nil {
		return cmd, nil, &Error{Code: CodeBadRequest, Message: "malformed JSON: " + jsonErrText(err)}
	}
	if cmd.ID == 0 {
		return cmd, nil, &Error{Code: CodeBadRequest, Message: `missing "id": every command needs an id of 1 or more`}
	}
	if cmd.Cmd == "" {
		return cmd, nil, &Error{Code: CodeBadRequest, Message: `missing "cmd"`}
	}
	if binary {
		if len(cmd.Data) != 0 {
			return cmd, nil, &Error{Code: CodeBadRequest, Message: `a binary frame carries its payload after the header, not in "data"`}
		}
		return cmd, payload, nil
	}
	return cmd, cmd.Data, nil
}

func jsonErrText(err error) string {
	var se *json.SyntaxError
	if errors.As(err, &se) {
		return se.Error() + " at byte " + strconv.FormatInt(se.Offset, 10)
	}
	var te *json.UnmarshalTypeError
	if errors.As(err, &te) {
		return "field " + strconv.Quote(te.Field) + " must be " + te.Type.String()
	}
	return err.Error()
}

// AppendReply appends the JSON encoding of a reply to dst. Result, which
// must be valid JSON, is copied byte for byte: encoding/json would compact
// it and escape <, > and &, and a history result carries payloads that
// must reach the client as they were published.
func AppendReply(dst []byte, r Reply) []byte {
	dst = append(dst, `{"id":`...)
	dst = strconv.AppendUint(dst, r.ID, 10)
	switch {
	case r.Error != nil:
		b, err := json.Marshal(r.Error)
		if err != nil {
			panic("protocol: cannot encode error: " + err.Error()) // two strings: cannot fail
		}
		dst = append(dst, `,"error":`...)
		dst = append(dst, b...)
	case len(r.Result) > 0:
		dst = append(dst, `,"result":`...)
		dst = append(dst, r.Result...)
	}
	return append(dst, '}')
}

// AppendHistoryResult appends the JSON of a history result with each
// text publication's data byte for byte as it was published (it must be
// valid JSON) and each binary one in standard base64. json.Marshal would
// compact the data and escape <, > and &; PROTOCOL.md promises JSON
// payloads byte for byte, in history as in pushes.
func AppendHistoryResult(dst []byte, r HistoryResult) []byte {
	dst = append(dst, `{"publications":[`...)
	for i, p := range r.Publications {
		if i > 0 {
			dst = append(dst, ',')
		}
		dst = append(dst, `{"offset":`...)
		dst = strconv.AppendUint(dst, p.Offset, 10)
		switch {
		case p.IsBinary:
			dst = append(dst, `,"binary":"`...)
			dst = base64.StdEncoding.AppendEncode(dst, p.Binary)
			dst = append(dst, '"')
		case len(p.Data) > 0:
			dst = append(dst, `,"data":`...)
			dst = append(dst, p.Data...)
		}
		dst = append(dst, '}')
	}
	dst = append(dst, `],"offset":`...)
	dst = strconv.AppendUint(dst, r.Offset, 10)
	dst = append(dst, `,"epoch":`...)
	epoch, _ := json.Marshal(r.Epoch) // a string: cannot fail
	dst = append(dst, epoch...)
	return append(dst, '}')
}

// AppendPushHeader appends the opening of a push object, without its data and
// without the closing brace:
//
//	{"push":"pub","channel":"chat","offset":7
//
// For a text frame the caller then appends `,"data":<json>}`; for a binary
// frame it appends "}\n" and the payload. channel must already be valid
// (ValidChannel), which guarantees it needs no JSON escaping.
func AppendPushHeader(dst []byte, kind, channel string, offset uint64) []byte {
	dst = append(dst, `{"push":"`...)
	dst = append(dst, kind...)
	dst = append(dst, '"')
	if channel != "" {
		dst = append(dst, `,"channel":"`...)
		dst = append(dst, channel...)
		dst = append(dst, '"')
	}
	if offset != 0 {
		dst = append(dst, `,"offset":`...)
		dst = strconv.AppendUint(dst, offset, 10)
	}
	return dst
}

// AppendTextPush appends a complete text-form push carrying JSON data.
func AppendTextPush(dst []byte, kind, channel string, offset uint64, data []byte) []byte {
	dst = AppendPushHeader(dst, kind, channel, offset)
	dst = append(dst, `,"data":`...)
	dst = append(dst, data...)
	return append(dst, '}')
}

// AppendInfoPush appends a complete join or leave push; info is the JSON of
// a ClientInfo.
func AppendInfoPush(dst []byte, kind, channel string, info []byte) []byte {
	dst = AppendPushHeader(dst, kind, channel, 0)
	dst = append(dst, `,"info":`...)
	dst = append(dst, info...)
	return append(dst, '}')
}

// AppendUnsubPush appends a complete unsub push.
func AppendUnsubPush(dst []byte, channel, code, reason string) []byte {
	dst = AppendPushHeader(dst, PushUnsub, channel, 0)
	b, _ := json.Marshal(struct { // two strings: cannot fail
		Code   string `json:"code"`
		Reason string `json:"reason,omitempty"`
	}{code, reason})
	dst = append(dst, ',')
	dst = append(dst, b[1:]...) // the object's fields and its closing brace
	return dst
}

// AppendRPCResult appends the JSON of an rpc result, its data byte for
// byte (it must be valid JSON), as AppendReply does a result.
func AppendRPCResult(dst []byte, r RPCResult) []byte {
	if len(r.Data) == 0 {
		return append(dst, "{}"...)
	}
	dst = append(dst, `{"data":`...)
	dst = append(dst, r.Data...)
	return append(dst, '}')
}

// AppendSubscribePush appends a complete subscribe push: the channel and
// its position, as in r.
func AppendSubscribePush(dst []byte, channel string, r SubscribeResult) []byte {
	dst = AppendPushHeader(dst, PushSubscribe, channel, r.Offset)
	if r.Epoch != "" {
		e, _ := json.Marshal(r.Epoch) // a string: cannot fail
		dst = append(dst, `,"epoch":`...)
		dst = append(dst, e...)
	}
	if r.Recovered != nil {
		dst = append(dst, `,"recovered":`...)
		dst = strconv.AppendBool(dst, *r.Recovered)
	}
	if r.Reason != "" {
		dst = append(dst, `,"reason":"`...)
		dst = append(dst, r.Reason...) // one of the Reason constants
		dst = append(dst, '"')
	}
	return append(dst, '}')
}

// AppendDroppedPush appends a complete dropped push: count publications of
// channel lost, at the offsets in ranges (inclusive, ascending; none for a
// channel without history).
//
//	{"push":"dropped","channel":"prices:eu","count":12,"offsets":[[41,50],[53,54]]}
func AppendDroppedPush(dst []byte, channel string, count int, ranges [][2]uint64) []byte {
	dst = AppendPushHeader(dst, PushDropped, channel, 0)
	dst = append(dst, `,"count":`...)
	dst = strconv.AppendInt(dst, int64(count), 10)
	if len(ranges) > 0 {
		dst = append(dst, `,"offsets":[`...)
		for i, r := range ranges {
			if i > 0 {
				dst = append(dst, ',')
			}
			dst = append(dst, '[')
			dst = strconv.AppendUint(dst, r[0], 10)
			dst = append(dst, ',')
			dst = strconv.AppendUint(dst, r[1], 10)
			dst = append(dst, ']')
		}
		dst = append(dst, ']')
	}
	return append(dst, '}')
}

// AppendBinaryPush appends a complete binary-form push: header, '\n', payload.
func AppendBinaryPush(dst []byte, kind, channel string, offset uint64, payload []byte) []byte {
	dst = AppendPushHeader(dst, kind, channel, offset)
	dst = append(dst, "}\n"...)
	return append(dst, payload...)
}

// AppendDeltaPush appends a complete delta push, sent as a binary frame:
//
//	{"push":"pub","channel":"prices","offset":8,"delta":true}\n<delta>
//
// delta is a fossil delta that turns the payload of the publication at
// offset-1 into this one's. The result has the base's kind: JSON text when
// the base was a text publication, bytes when it was binary. A client
// applies it only if the last publication it holds of channel is exactly
// offset-1; otherwise its base is broken and it resubscribes with since.
func AppendDeltaPush(dst []byte, channel string, offset uint64, delta []byte) []byte {
	dst = AppendPushHeader(dst, PushPub, channel, offset)
	dst = append(dst, `,"delta":true}`+"\n"...)
	return append(dst, delta...)
}

// MaxChannelLen is the longest valid channel name, in bytes.
const MaxChannelLen = 255

// ValidChannel reports whether name is a valid channel name: 1 to 255 bytes of
// ASCII letters, digits and the punctuation _ - . : @ # , = / !
//
// The part before the first ':' is the channel's namespace. The character set
// is closed under JSON (no byte needs escaping) and URL query use is simple.
func ValidChannel(name string) bool {
	if len(name) == 0 || len(name) > MaxChannelLen {
		return false
	}
	for i := 0; i < len(name); i++ {
		if !channelByte[name[i]] {
			return false
		}
	}
	return true
}

var channelByte = func() (t [256]bool) {
	for c := 'a'; c <= 'z'; c++ {
		t[c] = true
	}
	for c := 'A'; c <= 'Z'; c++ {
		t[c] = true
	}
	for c := '0'; c <= '9'; c++ {
		t[c] = true
	}
	for _, c := range "_-.:@#,=/!" {
		t[c] = true
	}
	return t
}()
