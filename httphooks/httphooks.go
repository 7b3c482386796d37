// Package httphooks implements herald.Hooks over HTTP: each hook POSTs
// JSON to a URL of the application's backend and turns its answer into the
// hook's reply, a refusal or a failure. It is what `herald serve` uses for
// its hook_* settings; a Go program embedding Herald can use it too, or
// write herald.Hooks funcs of its own and skip HTTP altogether.
//
// A call sends
//
//	POST <URL>
//	Content-Type: application/json
//	Herald-Hook: connect|refresh|subscribe|publish|rpc|disconnected|unsubscribed
//	Herald-Signature: t=<unix>,v1=<hex HMAC-SHA256 of "<t>.<body>">   (with Secret)
//
// with the hook's request (ConnectRequest, ...) as the body. A deciding
// hook's answer is HTTP 200 with {"result":{...}} (allow) or
// {"error":{"code","message"}} (refuse: a *herald.Error from
// herald.Refuse). Anything else — another status, a timeout, a refused
// connection, a body that is not one of those two, a field with a bad
// value, a body over 1 MiB — is a failure: a plain error, which Herald
// handles as each hook's doc in herald.Hooks says (docs/hooks.md). The
// notifications (disconnected, unsubscribed) only need a 2xx.
//
// Backend.Deliver is herald.Webhooks.Deliver over HTTP: it POSTs a batch
// of events ({"events":[...]}, WebhookBatch) to Config.Webhook with
// Herald-Hook: events, signed the same way; any 2xx delivers it
// (docs/webhooks.md).
//
// Redirects are not followed (a 3xx is a failure): a POST redirected would
// become a GET, or carry the signed body somewhere else.
package httphooks

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net/http"
	"net/url"
	"strings"
	"time"

	"github.com/heraldhq/herald"
	"github.com/heraldhq/herald/protocol"
)

// DefaultTimeout bounds a hook call when neither its Endpoint nor Config
// sets a timeout; it is herald.Hooks' own default.
const DefaultTimeout = 5 * time.Second

// MaxResponseSize is the largest answer read from a backend: a larger one
// is a failure, so that a backend gone wrong cannot make the server buffer
// without bound.
const MaxResponseSize = 1 << 20

// ErrBadResponse is wrapped by the failure of a call whose backend
// answered, but not as the wire says: a status other than 200 (2xx for a
// notification), a body that is not JSON or is over MaxResponseSize, a
// field with a bad value (the error names it).
var ErrBadResponse = errors.New("bad response")

// Endpoint is where one hook is sent.
type Endpoint struct {
	// URL is the backend's http:// or https:// URL; empty turns the hook
	// off.
	URL string
	// Timeout bounds the call; zero means Config.Timeout.
	Timeout time.Duration
}

// Config configures a Backend. The zero value is valid: no hooks.
type Config struct {
	// One endpoint per hook; those without a URL are off (nil in
	// herald.Hooks), and Herald then does what it does without that hook.
	Connect, Refresh, Subscribe, Publish, RPC, Disconnected, Unsubscribed Endpoint

	// Webhook is where Deliver POSTs the webhooks' event batches
	// (herald.Webhooks, docs/webhooks.md). Its zero Timeout means
	// Config.Timeout, else DefaultWebhookTimeout.
	Webhook Endpoint

	// ForwardHeaders names the handshake request headers the connect hook
	// is sent (ConnectRequest.Headers), any case; others are not sent, so
	// that the backend sees only what it needs. Cookie is refused here:
	// name cookies in ForwardCookies, one by one.
	ForwardHeaders []string
	// ForwardCookies names the cookies the connect hook is sent
	// (ConnectRequest.Cookies), typically the session cookie.
	ForwardCookies []string

	// SubscribeNamespaces and PublishNamespaces limit the subscribe and
	// publish hooks to channels of these namespaces ("" names channels
	// without one); nil means every channel. See herald.Hooks.
	SubscribeNamespaces []string
	PublishNamespaces   []string

	// Secret, when set, signs every request (SignatureHeader), so that the
	// backend can tell Herald's calls from anyone else's; the backend
	// checks them with Verify or VerifyRequest. Use at least 32 random
	// bytes.
	Secret []byte

	// Timeout bounds each call of an Endpoint without a Timeout of its
	// own. Zero means DefaultTimeout.
	Timeout time.Duration
	// RefreshRetry is herald.Hooks.RefreshRetry: how long after a failed
	// refresh it is asked again. Zero means Herald's default (1 minute).
	RefreshRetry time.Duration

	// Client makes the calls. Nil means a client of the Backend's own,
	// which keeps up to 64 idle connections to the backend (the calls of
	// many connections go to one host) and follows no redirects. A given
	// Client's CheckRedirect and Timeout are used as they are.
	Client *http.Client
}

// Backend calls the application's backend over HTTP. It is safe for
// concurrent use: the hooks of every connection share it.
type Backend struct {
	cfg    Config
	client *http.Client
	own    *http.Transport // the transport of a client New made; nil for Config.Client
	// headers and cookies are ForwardHeaders (canonical) and
	// ForwardCookies.
	headers []string
	cookies map[string]bool
}

// New checks cfg and returns its Backend. Every setting is checked, and
// the error names the bad one: a URL that is not absolute http(s), a
// negative timeout, a header or cookie name that is not a token, a
// namespace that is not a valid name.
func New(cfg Config) (*Backend, error) {
	b := &Backend{cfg: cfg, client: cfg.Client, cookies: make(map[string]bool)}
	for _, ep := range append(b.endpoints(), namedEndpoint{"webhook", cfg.Webhook}) {
		if err := ep.check(); err != nil {
			return nil, err
		}
	}
	if cfg.Timeout < 0 || cfg.RefreshRetry < 0 {
		return nil, errors.New("httphooks: Timeout and RefreshRetry must not be negative")
	}
	for _, h := range cfg.ForwardHeaders {
		if !isToken(h) {
			return nil, fmt.Errorf("httphooks: ForwardHeaders: %q is not a header name", h)
		}
		if strings.EqualFold(h, "Cookie") {
			return nil, errors.New("httphooks: ForwardHeaders: Cookie would send every cookie (other sites' sessions too): name the cookies the backend needs in ForwardCookies")
		}
		b.headers = append(b.headers, http.CanonicalHeaderKey(h))
	}
	for _, c := range cfg.ForwardCookies {
		if !isToken(c) {
			return nil, fmt.Errorf("httphooks: ForwardCookies: %q is not a cookie name", c)
		}
		b.cookies[c] = true
	}
	for _, list := range [][]string{cfg.SubscribeNamespaces, cfg.PublishNamespaces} {
		for _, ns := range list {
			if ns != "" && (!protocol.ValidChannel(ns) || strings.Contains(ns, ":")) {
				return nil, fmt.Errorf("httphooks: namespace %q: want a namespace name (the part of a channel name before ':'), or \"\" for channels without one", ns)
			}
		}
	}
	if b.client == nil {
		t := http.DefaultTransport.(*http.Transport).Clone()
		// Every connect, subscribe and publish of every connection goes to
		// the same few hosts: the default of 2 idle connections per host
		// would open and close one for most calls under load.
		t.MaxIdleConnsPerHost = 64
		b.own = t
		b.client = &http.Client{
			Transport: t,
			CheckRedirect: func(*http.Request, []*http.Request) error {
				return http.ErrUseLastResponse
			},
		}
	}
	return b, nil
}

// hookNames are the names of the hooks, in the order of endpoints, as the
// Herald-Hook header and docs/hooks.md spell them.
var hookNames = [...]string{"connect", "refresh", "subscribe", "publish", "rpc", "disconnected", "unsubscribed"}

type namedEndpoint struct {
	name string
	Endpoint
}

func (b *Backend) endpoints() []namedEndpoint {
	c := &b.cfg
	eps := []Endpoint{c.Connect, c.Refresh, c.Subscribe, c.Publish, c.RPC, c.Disconnected, c.Unsubscribed}
	out := make([]namedEndpoint, len(eps))
	for i, ep := range eps {
		out[i] = namedEndpoint{hookNames[i], ep}
	}
	return out
}

func (ep namedEndpoint) check() error {
	if ep.Timeout < 0 {
		return fmt.Errorf("httphooks: %s Timeout must not be negative", ep.name)
	}
	if ep.URL == "" {
		return nil
	}
	u, err := url.Parse(ep.URL)
	if err != nil || (u.Scheme != "http" && u.Scheme != "https") || u.Host == "" {
		return fmt.Errorf("httphooks: %s URL %q: want an absolute http:// or https:// URL", ep.name, redact(ep.URL))
	}
	return nil
}

// redact hides a password in a URL, for errors.
func redact(s string) string {
	if u, err := url.Parse(s); err == nil {
		return u.Redacted()
	}
	return "(unparsable URL)"
}

// isToken reports whether s is an RFC 9110 token: what header and cookie
// names are made of.
func isToken(s string) bool {
	if s == "" {
		return false
	}
	for i := 0; i < len(s); i++ {
		c := s[i]
		if c <= ' ' || c >= 0x7f || strings.IndexByte(`"(),/:;<=>?@[\]{}`, c) >= 0 {
			return false
		}
	}
	return true
}

// Enabled returns the names of the hooks that have a URL, for a log line
// (not the Webhook: it is not a hook).
func (b *Backend) Enabled() []string {
	var on []string
	for _, ep := range b.endpoints() {
		if ep.URL != "" {
			on = append(on, ep.name)
		}
	}
	return on
}

// Close closes the idle connections of the client New made (not those of
// a Config.Client). Call it once the node using the hooks has shut down;
// calls made after it still work, on new connections.
func (b *Backend) Close() {
	if b.own != nil {
		b.own.CloseIdleConnections()
	}
}

// timeout is ep's bound.
func (b *Backend) timeout(ep Endpoint) time.Duration {
	switch {
	case ep.Timeout > 0:
		return ep.Timeout
	case b.cfg.Timeout > 0:
		return b.cfg.Timeout
	}
	return DefaultTimeout
}

// Hooks returns the herald.Hooks that call the backend: one func per
// Endpoint with a URL, nil for the others. Its Timeout, the node's bound
// on every call's context, is the longest of the endpoints' timeouts, so
// that none is cut short; each call is bounded by its own.
func (b *Backend) Hooks() herald.Hooks {
	h := herald.Hooks{
		SubscribeNamespaces: b.cfg.SubscribeNamespaces,
		PublishNamespaces:   b.cfg.PublishNamespaces,
		RefreshRetry:        b.cfg.RefreshRetry,
	}
	for _, ep := range b.endpoints() {
		if ep.URL != "" {
			h.Timeout = max(h.Timeout, b.timeout(ep.Endpoint))
		}
	}
	c := &b.cfg
	if c.Connect.URL != "" {
		h.Connect = b.connect
	}
	if c.Refresh.URL != "" {
		h.Refresh = b.refresh
	}
	if c.Subscribe.URL != "" {
		h.Subscribe = b.subscribe
	}
	if c.Publish.URL != "" {
		h.Publish = b.publish
	}
	if c.RPC.URL != "" {
		h.RPC = b.rpc
	}
	if c.Disconnected.URL != "" {
		h.Disconnected = b.disconnected
	}
	if c.Unsubscribed.URL != "" {
		h.Unsubscribed = b.unsubscribed
	}
	return h
}

// call POSTs req to ep as hook name and decodes the answer of a deciding
// hook into resp (nil for a notification, whose body is not read). The
// error is a failure, in one phrasing: "httphooks: <hook> hook: failed to
// call <url>: <why>".
func (b *Backend) call(ctx context.Context, name string, ep Endpoint, req, resp any) error {
	err := b.do(ctx, name, ep, req, resp)
	if err != nil {
		return fmt.Errorf("httphooks: %s hook: failed to call %s: %w", name, redact(ep.URL), err)
	}
	return nil
}

func (b *Backend) do(ctx context.Context, name string, ep Endpoint, req, resp any) error {
	body, err := json.Marshal(req)
	if err != nil {
		return err // the wire types always marshal; kept for safety
	}
	ctx, cancel := context.WithTimeout(ctx, b.timeout(ep))
	defer cancel()
	r, err := http.NewRequestWithContext(ctx, http.MethodPost, ep.URL, bytes.NewReader(body))
	if err != nil {
		return err
	}
	r.Header.Set("Content-Type", "application/json")
	r.Header.Set("Herald-Hook", name)
	if len(b.cfg.Secret) > 0 {
		r.Header.Set(SignatureHeader, Sign(b.cfg.Secret, time.Now(), body))
	}
	res, err := b.client.Do(r)
	if err != nil {
		return err
	}
	defer res.Body.Close()
	// The body is read whole (to the cap) even when unused, so that the
	// connection goes back to the pool.
	data, err := io.ReadAll(io.LimitReader(res.Body, MaxResponseSize+1))
	if err != nil {
		return fmt.Errorf("failed to read the response: %w", err)
	}
	if resp == nil {
		if res.StatusCode/100 != 2 {
			return fmt.Errorf("%w: status %s, want 2xx%s", ErrBadResponse, res.Status, excerpt(data))
		}
		return nil
	}
	if res.StatusCode != http.StatusOK {
		return fmt.Errorf("%w: status %s, want 200", ErrBadResponse, res.Status)
	}
	if len(data) > MaxResponseSize {
		return fmt.Errorf("%w: body over %d bytes", ErrBadResponse, MaxResponseSize)
	}
	if err := json.Unmarshal(data, resp); err != nil {
		return fmt.Errorf("%w: body is not the hook's JSON: %v", ErrBadResponse, err)
	}
	return nil
}

// answer checks that a response has exactly one of result and error, and
// returns the refusal of an error.
func answer(hasResult bool, e *Error) error {
	switch {
	case hasResult && e != nil:
		return fmt.Errorf("%w: both result and error", ErrBadResponse)
	case e != nil:
		if e.Code == "" {
			return fmt.Errorf("%w: error.code is empty", ErrBadResponse)
		}
		return herald.Refuse(herald.Code(e.Code), e.Message)
	case !hasResult:
		return fmt.Errorf("%w: neither result nor error", ErrBadResponse)
	}
	return nil
}

// decide runs a deciding hook's call and returns its refusal or failure.
func (b *Backend) decide(ctx context.Context, name string, ep Endpoint, req any, hasResult func() bool, e func() *Error, resp any) error {
	if err := b.call(ctx, name, ep, req, resp); err != nil {
		return err
	}
	if err := answer(hasResult(), e()); err != nil {
		var refusal *herald.Error
		if errors.As(err, &refusal) {
			return err
		}
		return fmt.Errorf("httphooks: %s hook: failed to call %s: %w", name, redact(ep.URL), err)
	}
	return nil
}

// badField is the failure of an answer whose field has a bad value.
func badField(name string, ep Endpoint, field, why string) error {
	return fmt.Errorf("httphooks: %s hook: failed to call %s: %w: %s %s", name, redact(ep.URL), ErrBadResponse, field, why)
}

func client(c herald.ClientInfo) Client {
	return Client{ID: c.ID, User: c.UserID, Info: c.Info, Raw: c.Raw, RemoteAddr: c.RemoteAddr}
}

// orNil treats a JSON null as absent.
func orNil(m json.RawMessage) json.RawMessage {
	if len(m) == 0 || string(m) == "null" {
		return nil
	}
	return m
}

func (b *Backend) connect(ctx context.Context, e *herald.ConnectEvent) (*herald.ConnectReply, error) {
	req := ConnectRequest{Client: client(e.Client), URL: e.URL, Data: orNil(e.Data)}
	for _, h := range b.headers {
		if vs := e.Header.Values(h); len(vs) > 0 {
			if req.Headers == nil {
				req.Headers = make(map[string]string)
			}
			req.Headers[h] = strings.Join(vs, ", ")
		}
	}
	if len(b.cookies) > 0 {
		// Only the Cookie header is parsed: the names asked for, first
		// value of each, as net/http's Request.Cookie picks.
		for _, ck := range (&http.Request{Header: e.Header}).Cookies() {
			if b.cookies[ck.Name] {
				if req.Cookies == nil {
					req.Cookies = make(map[string]string)
				}
				if _, dup := req.Cookies[ck.Name]; !dup {
					req.Cookies[ck.Name] = ck.Value
				}
			}
		}
	}
	var resp ConnectResponse
	ep := b.cfg.Connect
	if err := b.decide(ctx, "connect", ep, req, func() bool { return resp.Result != nil }, func() *Error { return resp.Error }, &resp); err != nil {
		return nil, err
	}
	res := resp.Result
	for i, ch := range res.Channels {
		if !protocol.ValidChannel(ch) {
			return nil, badField("connect", ep, fmt.Sprintf("result.channels[%d]", i), fmt.Sprintf("%q is not a valid channel name", ch))
		}
	}
	if res.ExpiresAt < 0 {
		return nil, badField("connect", ep, "result.expires_at", "must be unix seconds, not negative")
	}
	reply := &herald.ConnectReply{UserID: res.User, Info: orNil(res.Info), Channels: res.Channels, Data: orNil(res.Data)}
	if res.ExpiresAt > 0 {
		reply.ExpiresAt = time.Unix(res.ExpiresAt, 0)
	}
	return reply, nil
}

func (b *Backend) refresh(ctx context.Context, e *herald.RefreshEvent) (*herald.RefreshReply, error) {
	var resp RefreshResponse
	ep := b.cfg.Refresh
	if err := b.decide(ctx, "refresh", ep, RefreshRequest{Client: client(e.Client)}, func() bool { return resp.Result != nil }, func() *Error { return resp.Error }, &resp); err != nil {
		return nil, err
	}
	if resp.Result.ExpiresAt < 0 {
		return nil, badField("refresh", ep, "result.expires_at", "must be unix seconds, not negative")
	}
	reply := &herald.RefreshReply{}
	if resp.Result.ExpiresAt > 0 {
		reply.ExpiresAt = time.Unix(resp.Result.ExpiresAt, 0)
	}
	return reply, nil
}

func (b *Backend) subscribe(ctx context.Context, e *herald.SubscribeEvent) (*herald.SubscribeReply, error) {
	var resp SubscribeResponse
	req := SubscribeRequest{Client: client(e.Client), Channel: e.Channel, Data: orNil(e.Data)}
	if err := b.decide(ctx, "subscribe", b.cfg.Subscribe, req, func() bool { return resp.Result != nil }, func() *Error { return resp.Error }, &resp); err != nil {
		return nil, err
	}
	if info := orNil(resp.Result.Info); info != nil {
		return &herald.SubscribeReply{Info: info}, nil
	}
	return nil, nil
}

func (b *Backend) publish(ctx context.Context, e *herald.PublishEvent) (*herald.PublishReply, error) {
	req := PublishRequest{Client: client(e.Client), Channel: e.Channel}
	if e.Binary {
		req.Binary = e.Data
		if req.Binary == nil {
			req.Binary = []byte{} // an empty binary publication is still binary
		}
	} else {
		req.Data = e.Data
	}
	var resp PublishResponse
	ep := b.cfg.Publish
	if err := b.decide(ctx, "publish", ep, req, func() bool { return resp.Result != nil }, func() *Error { return resp.Error }, &resp); err != nil {
		return nil, err
	}
	res := resp.Result
	data := orNil(res.Data)
	switch {
	case e.Binary && data != nil:
		return nil, badField("publish", ep, "result.data", "given for a binary publication: answer result.binary (base64)")
	case !e.Binary && res.Binary != nil:
		return nil, badField("publish", ep, "result.binary", "given for a text publication: answer result.data (JSON)")
	case data != nil:
		return &herald.PublishReply{Data: data}, nil
	case res.Binary != nil:
		return &herald.PublishReply{Data: res.Binary}, nil
	}
	return nil, nil
}

func (b *Backend) rpc(ctx context.Context, e *herald.RPCEvent) (*herald.RPCReply, error) {
	var resp RPCResponse
	req := RPCRequest{Client: client(e.Client), Method: e.Method, Data: orNil(e.Data)}
	if err := b.decide(ctx, "rpc", b.cfg.RPC, req, func() bool { return resp.Result != nil }, func() *Error { return resp.Error }, &resp); err != nil {
		return nil, err
	}
	return &herald.RPCReply{Data: orNil(resp.Result.Data)}, nil
}

func (b *Backend) disconnected(ctx context.Context, e *herald.DisconnectEvent) error {
	return b.call(ctx, "disconnected", b.cfg.Disconnected, DisconnectedRequest{Client: client(e.Client), Code: int(e.Code), Reason: e.Reason}, nil)
}

func (b *Backend) unsubscribed(ctx context.Context, e *herald.UnsubscribeEvent) error {
	return b.call(ctx, "unsubscribed", b.cfg.Unsubscribed, UnsubscribedRequest{Client: client(e.Client), Channel: e.Channel, Reason: e.Reason}, nil)
}
