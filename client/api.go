package client

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"unicode/utf8"

	"github.com/heraldhq/herald/protocol"
)

// PublishOption modifies one Publish or PublishBinary.
type PublishOption func(*publishSettings)

type publishSettings struct {
	idempotencyKey string
	key            string
	retry          bool
}

// WithKey sets the publication's conflation key: in a namespace whose
// overflow policy is conflate, a slow subscriber keeps only the newest
// publication per channel and key (one key per instrument, per player).
func WithKey(key string) PublishOption {
	return func(s *publishSettings) { s.key = key }
}

// WithIdempotencyKey makes the publish happen at most once per channel and
// key within the server's window (2 minutes by default): a repeat publishes
// nothing and returns the first publish's result with Duplicate set. The
// client's own retries carry it instead of an automatic key; use it to
// retry safely yourself after an error (a *PublishError holds the key that
// was used).
func WithIdempotencyKey(key string) PublishOption {
	return func(s *publishSettings) { s.idempotencyKey = key }
}

// WithRetry turns the automatic publish retries on or off for this call,
// whatever Options.DisablePublishRetry says.
//
// On (the default): the publish carries an idempotency key — a random one
// (128 bits from crypto/rand) unless WithIdempotencyKey gives one — and is
// sent again with that same key when the outcome is unknown (an
// unavailable reply, or the connection lost before the reply: then on the
// next connection), within ctx and Options.RetryTimeout, which keeps every
// retry inside the server's idempotency window. So it happens at most once,
// and exactly once when the call returns no error; otherwise the error is a
// *PublishError. The cost: the key costs the server's broker one more write
// per publish, and a publish made while the client reconnects waits for the
// connection instead of failing at once.
//
// Off: the publish is sent once per connection, with no key unless
// WithIdempotencyKey gives one, and an unknown outcome is returned as it
// is (ErrDisconnected, an *Error of code CodeUnavailable): it may or may
// not have happened. Use it when a duplicate does not matter and latency
// does, or when the app retries itself. Either way a publish refused with
// rate_limited is sent again, as every request is: the server did nothing,
// so it cannot happen twice.
func WithRetry(on bool) PublishOption {
	return func(s *publishSettings) { s.retry = on }
}

// PublishResult is where a publication landed, on a channel with history
// (zero otherwise, unless Duplicate).
type PublishResult struct {
	Offset uint64
	Epoch  string
	// Duplicate: the idempotency key was seen; nothing was published, and
	// Offset and Epoch are the first publish's. After the client's own
	// retries it means that an earlier attempt, whose reply was lost,
	// published: the publication happened once.
	Duplicate bool
}

var errNotJSON = errors.New("data is not a valid UTF-8 JSON value (use PublishBinary for bytes)")

// Publish publishes data, a JSON value, to channel in a text frame; it
// reaches subscribers byte for byte. It returns once the server has queued
// the publication to the subscribers on its node (so a subscribed publisher
// receives its own publication before Publish returns). Publishing does not
// require being subscribed.
//
// By default the publish carries an automatic idempotency key and is
// retried until it is known to have happened, within ctx and
// Options.RetryTimeout (see WithRetry for the guarantee and the cost).
// When it carried a key, its error is a *PublishError.
func (c *Client) Publish(ctx context.Context, channel string, data []byte, opts ...PublishOption) (PublishResult, error) {
	if !utf8.Valid(data) || !json.Valid(data) {
		return PublishResult{}, fmt.Errorf("failed to publish to %q: %w", channel, errNotJSON)
	}
	return c.publish(ctx, channel, data, false, opts)
}

// PublishBinary publishes raw bytes, any values, in a binary frame; they
// reach subscribers untouched, as a Publication with Binary set. It
// retries as Publish does.
func (c *Client) PublishBinary(ctx context.Context, channel string, data []byte, opts ...PublishOption) (PublishResult, error) {
	if data == nil {
		data = []byte{}
	}
	return c.publish(ctx, channel, data, true, opts)
}

func (c *Client) publish(ctx context.Context, channel string, data []byte, binary bool, opts []PublishOption) (PublishResult, error) {
	set := publishSettings{retry: !c.opts.DisablePublishRetry}
	for _, o := range opts {
		o(&set)
	}
	key := set.idempotencyKey
	if key == "" && set.retry {
		key = newIdempotencyKey()
	}
	cmd := protocol.Command{Cmd: protocol.CmdPublish, Channel: channel, IdempotencyKey: key, Key: set.key}
	raw, attempts, err := c.do(ctx, cmd, data, binary, set.retry)
	if err != nil {
		if key != "" {
			err = &PublishError{IdempotencyKey: key, Attempts: attempts, Err: err}
		}
		return PublishResult{}, fmt.Errorf("failed to publish to %q: %w", channel, err)
	}
	var res protocol.PublishResult
	if len(raw) > 0 {
		if err := json.Unmarshal(raw, &res); err != nil {
			return PublishResult{}, fmt.Errorf("failed to decode the publish result %q: %w", raw, err)
		}
	}
	return PublishResult{Offset: res.Offset, Epoch: res.Epoch, Duplicate: res.Duplicate}, nil
}

// HistoryOptions select what History returns.
type HistoryOptions struct {
	// Limit caps the number of publications: 0 means all the history keeps;
	// a negative Limit returns none, only the current Position.
	Limit int
	// Since returns only the publications after this position (it must
	// carry the history's current epoch).
	Since *Position
	// Reverse returns the newest first.
	Reverse bool
}

// HistoryResult is a slice of a channel's history and the channel's
// current position (the offset of its last publication, and its epoch).
type HistoryResult struct {
	Publications []Publication
	Position     Position
}

// History reads a channel's history. It fails with an *Error of code
// protocol.CodeNotEnabled on a channel whose namespace keeps no history.
func (c *Client) History(ctx context.Context, channel string, opts HistoryOptions) (HistoryResult, error) {
	cmd := &command{Command: protocol.Command{Cmd: protocol.CmdHistory, Channel: channel, Since: opts.Since, Reverse: opts.Reverse}}
	if opts.Limit != 0 {
		limit := max(opts.Limit, 0)
		cmd.Limit = &limit
	}
	raw, err := c.call(ctx, cmd, nil, false)
	if err != nil {
		return HistoryResult{}, fmt.Errorf("failed to read the history of %q: %w", channel, err)
	}
	var res protocol.HistoryResult
	if err := json.Unmarshal(raw, &res); err != nil {
		return HistoryResult{}, fmt.Errorf("failed to decode the history of %q: %w", channel, err)
	}
	out := HistoryResult{Publications: make([]Publication, len(res.Publications)), Position: Position{Offset: res.Offset, Epoch: res.Epoch}}
	for i, hp := range res.Publications {
		p := Publication{Channel: channel, Offset: hp.Offset, Data: hp.Data}
		if len(hp.Data) == 0 {
			// Binary travels as base64 in "binary", omitted when empty; a
			// text publication always has data.
			p.Data, p.Binary = hp.Binary, true
			if p.Data == nil {
				p.Data = []byte{}
			}
		}
		out.Publications[i] = p
	}
	return out, nil
}

// Presence returns the clients subscribed to channel, by client id. It
// fails with an *Error of code protocol.CodeNotEnabled on a channel whose
// namespace keeps no presence.
func (c *Client) Presence(ctx context.Context, channel string) (map[string]ClientInfo, error) {
	raw, err := c.call(ctx, &command{Command: protocol.Command{Cmd: protocol.CmdPresence, Channel: channel}}, nil, false)
	if err != nil {
		return nil, fmt.Errorf("failed to read the presence of %q: %w", channel, err)
	}
	var res protocol.PresenceResult
	if err := json.Unmarshal(raw, &res); err != nil {
		return nil, fmt.Errorf("failed to decode the presence of %q: %w", channel, err)
	}
	if res.Clients == nil {
		res.Clients = map[string]ClientInfo{}
	}
	return res.Clients, nil
}

// PresenceStats counts the clients in a channel's presence.
type PresenceStats struct {
	// Clients counts connections; Users distinct user ids (a user with
	// several connections counts once; anonymous clients count only in
	// Clients).
	Clients, Users int
}

// PresenceStats counts the clients and users subscribed to channel.
func (c *Client) PresenceStats(ctx context.Context, channel string) (PresenceStats, error) {
	raw, err := c.call(ctx, &command{Command: protocol.Command{Cmd: protocol.CmdPresenceStats, Channel: channel}}, nil, false)
	if err != nil {
		return PresenceStats{}, fmt.Errorf("failed to read the presence stats of %q: %w", channel, err)
	}
	var res protocol.PresenceStatsResult
	if err := json.Unmarshal(raw, &res); err != nil {
		return PresenceStats{}, fmt.Errorf("failed to decode the presence stats of %q: %w", channel, err)
	}
	return PresenceStats{Clients: res.Clients, Users: res.Users}, nil
}

// Ping makes an application-level round trip to the server. The server
// answers in order, and the client reads in order: when Ping returns, every
// push the server sent before its reply has been queued for the handlers
// (not necessarily handled yet).
func (c *Client) Ping(ctx context.Context) error {
	if _, err := c.call(ctx, &command{Command: protocol.Command{Cmd: protocol.CmdPing}}, nil, false); err != nil {
		return fmt.Errorf("failed to ping: %w", err)
	}
	return nil
}

// RPC calls method of the application's backend (the server's RPC hook)
// with data, and returns the backend's answer: any JSON value, nil when it
// gave none. data may be nil (the call carries none), a json.RawMessage
// (sent as is; it must be valid JSON), or any value encoding/json can
// marshal.
//
// A refusal is an *Error, reached with errors.As: switch on its Code, which
// is one of protocol's codes or one of the application's own (lowercase,
// as the backend refused with, passed through untouched). Herald's own
// answers: protocol.CodeNotEnabled when the server has no RPC hook,
// protocol.CodeUnavailable when the backend failed or did not answer in
// time. An rpc is retried only after rate_limited (the server did
// nothing): after unavailable or a lost connection (ErrDisconnected) the
// backend may or may not have run it, and only the application knows
// whether calling again is safe.
func (c *Client) RPC(ctx context.Context, method string, data any) (json.RawMessage, error) {
	fail := func(err error) (json.RawMessage, error) {
		return nil, fmt.Errorf("failed to call %q: %w", method, err)
	}
	if method == "" {
		return fail(errors.New("the method is empty"))
	}
	payload, err := rpcPayload(data)
	if err != nil {
		return fail(err)
	}
	raw, err := c.call(ctx, &command{Command: protocol.Command{Cmd: protocol.CmdRPC, Method: method}}, payload, false)
	if err != nil {
		return fail(err)
	}
	var res protocol.RPCResult
	if len(raw) > 0 {
		if err := json.Unmarshal(raw, &res); err != nil {
			return fail(fmt.Errorf("failed to decode the rpc result %q: %w", raw, err))
		}
	}
	return res.Data, nil
}

var errRPCData = errors.New("data is a json.RawMessage that is not a valid UTF-8 JSON value")

// rpcPayload is the JSON of an rpc's data; nil for none. A []byte is
// marshalled as encoding/json does (base64): only json.RawMessage is taken
// as JSON already.
func rpcPayload(data any) ([]byte, error) {
	switch d := data.(type) {
	case nil:
		return nil, nil
	case json.RawMessage:
		if d == nil {
			return nil, nil
		}
		if !utf8.Valid(d) || !json.Valid(d) {
			return nil, errRPCData
		}
		return d, nil
	}
	b, err := json.Marshal(data)
	if err != nil {
		return nil, fmt.Errorf("failed to encode data: %w", err)
	}
	return b, nil
}
