package herald

import (
	"encoding/json"
	"log/slog"
	"net/http"
	"net/netip"
	"time"
)

// Config configures a Node. The zero value is a working single-node setup:
// every zero field means the default written next to it.
type Config struct {
	// Logger receives the node's logs. Nil means the node logs nothing.
	Logger *slog.Logger

	// Broker carries publications and node-to-node control messages. Nil means
	// an in-memory broker: a single node, nothing else to run.
	Broker Broker

	// Presence keeps presence sets. Nil means the Broker if it implements
	// PresenceManager (so presence spans nodes), else an in-memory one.
	Presence PresenceManager

	// Namespaces configure history, recovery and presence per channel
	// namespace; see Namespace. Empty means every channel is accepted, with
	// no history and no presence. Node.SetNamespaces changes them while the
	// node runs.
	Namespaces []Namespace
	// BrokerTimeout bounds each broker, presence and token-verification call
	// made for a client (subscribe, publish, history, presence, connect).
	// Zero means 5s.
	BrokerTimeout time.Duration
	// IdempotencyWindow is how long a publish's idempotency key is
	// remembered. Zero means 2 minutes.
	IdempotencyWindow time.Duration

	// AllowedOrigins lists the browser origins, besides the server's own,
	// that may open a WebSocket: exact origins ("https://app.example.com") or
	// patterns with one leading wildcard label ("https://*.example.com", which
	// matches any subdomain but not example.com itself). Empty means
	// same-origin only. Requests without an Origin header (non-browser
	// clients) are always accepted: Origin checks exist to stop other web
	// sites from riding a browser's cookies (CSWSH), which needs a browser.
	// Node.SetAllowedOrigins changes them, and AllowAnyOrigin, while the
	// node runs.
	AllowedOrigins []string
	// AllowAnyOrigin disables the origin check. It lets every web site open
	// connections with your users' cookies; New logs a warning when it is set.
	AllowAnyOrigin bool

	// TrustedProxies are the address ranges of the reverse proxies in front
	// of the node (ParseTrustedProxies reads "10.0.0.0/8" or "127.0.0.1").
	// A request from an address inside them has its client's address read
	// from ForwardedHeader, walked from the right past every trusted hop;
	// from anyone else the header is ignored, since any client can write
	// it. That address is what per-IP limits count, logs show and
	// ClientInfo.RemoteAddr holds (see Node.ClientAddr). Empty means no
	// proxy is trusted: behind one, every client has the proxy's address.
	// List only your own proxies' ranges: an address listed can claim to
	// be anyone. Node.SetTrustedProxies changes them while the node runs.
	TrustedProxies []netip.Prefix
	// ForwardedHeader names the header the trusted proxies write the
	// client's address in: HeaderXForwardedFor (the zero value; nginx,
	// Caddy, HAProxy and the cloud load balancers write it) or
	// HeaderForwarded (RFC 7239). Only that one is read: the proxies must
	// set or append to it, so that a client's own copy cannot pass for
	// theirs.
	ForwardedHeader string

	// Authenticate, if set, is called with the upgrade request before the
	// handshake. It returns the connection's credentials, or an error to
	// refuse the connection with 401. Nil means every connection is anonymous.
	Authenticate func(r *http.Request) (Credentials, error)

	// Hooks ask the application's backend before a connection, a
	// subscription, a publication or an RPC call goes ahead (see Hooks).
	// The zero value calls nothing.
	Hooks Hooks

	// Webhooks tell the application's backend what happened (see
	// Webhooks). The zero value sends none.
	Webhooks Webhooks

	// Tokens, if set, turns token authentication on: clients authenticate
	// with a token in the protocol's connect command (the first command), an
	// Authorization: Bearer header, or raw mode's token query parameter, and
	// namespaces default to PermAuthenticated. Nil means no token checks:
	// every client is anonymous (unless Authenticate says otherwise) and
	// namespaces default to PermAnyone.
	Tokens TokenVerifier
	// ConnectTimeout is how long a connection may take to authenticate with
	// connect when Tokens is set; past it, it is closed with 4005. Zero
	// means 10s.
	ConnectTimeout time.Duration

	// Limits are the connection limits, documented on Limits: zero means
	// each one's default, NoLimit no cap. They can change while the node
	// runs (Node.SetLimits).
	Limits

	// OnConnect, if set, is called once a connection is registered, from the
	// goroutine that accepted it; it must not block. Its ID is what Send and
	// Disconnect take.
	OnConnect func(ClientInfo)

	// ReadBufferSize is the read buffer, in bytes, of a connection whose
	// socket has no file descriptor to wait on (TLS served by crypto/tls):
	// it keeps one for its life. Other connections hold none while idle and
	// borrow a pooled 4 KiB one for each read. Zero means 512: client
	// messages are small, and an idle connection should hold little.
	ReadBufferSize int
	// MaxMessageSize caps one incoming message in bytes, after decompression.
	// A larger one closes the connection with 1009. Zero means 64 KiB.
	MaxMessageSize int64

	// PingInterval is how often the server pings each connection. Zero means 25s.
	PingInterval time.Duration
	// PongTimeout is how long past a ping interval the server waits for any
	// frame (a pong at least) before closing the connection as dead (4002).
	// Zero means 10s.
	PongTimeout time.Duration
	// WriteTimeout bounds every write to a socket. Zero means 10s.
	WriteTimeout time.Duration
	// HandshakeTimeout bounds writing the upgrade response. Zero means 10s.
	// (Reading the request is the http.Server's job: set its ReadHeaderTimeout.)
	HandshakeTimeout time.Duration
	// CloseGrace is how long a closing connection may take to flush its queue
	// and complete the close handshake before the socket is cut. Zero means 2s.
	CloseGrace time.Duration
	// DrainWindow, when set, makes Shutdown drain first: the connections
	// are closed with 1012 (reconnect, to another node) spread evenly over
	// the window, so that they do not all land on the other nodes at once
	// (see Node.Drain). Zero means the default, no drain: 1001 to all at
	// once.
	DrainWindow time.Duration

	// MaxQueueBytes and MaxQueueMessages bound each connection's outbound
	// queue. A connection whose queue would go past either is a slow
	// consumer: its queue is dropped and it is closed with 4001, so that it
	// never delays anyone else. Zero means 1 MiB and 8192 messages.
	// MaxQueueBytes must be at least twice MaxMessageSize (New refuses
	// less): otherwise every message over half the queue would cut all its
	// receivers.
	MaxQueueBytes    int
	MaxQueueMessages int
	// SocketSendBuffer, when not zero, sets each client socket's kernel
	// send buffer (SO_SNDBUF) in bytes. Zero leaves the OS default, which
	// on Linux grows to megabytes for a client that reads slowly: all of
	// it is backlog the queue's overflow policy (Namespace.Overflow) cannot
	// conflate or drop. A small buffer (64 KiB) keeps a slow client's
	// backlog in the queue, where conflate keeps only the newest value per
	// key; it caps each connection's throughput at about the buffer per
	// round trip, which on a LAN or loopback is far more than enough.
	SocketSendBuffer int

	// EnableCompression negotiates permessage-deflate (RFC 7692, no context
	// takeover) with clients that offer it. Off by default: on loopback and
	// for small messages it costs more CPU than it saves.
	EnableCompression bool
	// CompressionMinSize is the smallest payload compressed when compression
	// is on. Zero means 256 bytes.
	CompressionMinSize int

	// PusherApps are the Pusher apps the node serves on PusherHandler
	// (docs/pusher.md). Empty means none. Each app adds its namespaces
	// (PusherApp.HeraldChannel) to Namespaces.
	PusherApps []PusherApp

	// Shards is the number of shards of the channel and connection registries.
	// Zero means 64.
	Shards int
}

// Credentials identify the user behind a connection.
type Credentials struct {
	// UserID is empty for an anonymous connection.
	UserID string
	// Info is public JSON about the user (shown to others later, in presence).
	Info json.RawMessage
}

// ClientInfo describes a connection.
type ClientInfo struct {
	ID     string
	UserID string
	// Info is the connection's public info (Credentials.Info, a token's
	// info, or the connect hook's).
	Info json.RawMessage
	// Raw is true for a raw-mode connection, whose channel is RawChannel.
	Raw        bool
	RawChannel string
	// SSE is true for a Server-Sent Events connection (Node.SSEHandler),
	// whose channels are fixed by its request and which sends nothing.
	SSE bool
	// RemoteAddr is the client's address: the handshake's RemoteAddr
	// (host:port), or behind a trusted proxy (Config.TrustedProxies) the
	// client's IP address alone, as the proxy forwarded it.
	RemoteAddr string
}

func (c Config) withDefaults() Config {
	def := func(v *int, d int) {
		if *v <= 0 {
			*v = d
		}
	}
	defDur := func(v *time.Duration, d time.Duration) {
		if *v <= 0 {
			*v = d
		}
	}
	def(&c.ReadBufferSize, 512)
	if c.MaxMessageSize <= 0 {
		c.MaxMessageSize = 64 << 10
	}
	defDur(&c.PingInterval, 25*time.Second)
	defDur(&c.PongTimeout, 10*time.Second)
	defDur(&c.WriteTimeout, 10*time.Second)
	defDur(&c.HandshakeTimeout, 10*time.Second)
	defDur(&c.CloseGrace, 2*time.Second)
	c.DrainWindow = max(c.DrainWindow, 0) // negative: no drain, as zero
	defDur(&c.IdempotencyWindow, 2*time.Minute)
	defDur(&c.BrokerTimeout, 5*time.Second)
	defDur(&c.ConnectTimeout, 10*time.Second)
	c.Limits = c.Limits.withDefaults() // the same defaults as Node.SetLimits
	def(&c.MaxQueueBytes, 1<<20)
	def(&c.MaxQueueMessages, 8192)
	def(&c.CompressionMinSize, 256)
	def(&c.Shards, 64)
	defDur(&c.Hooks.Timeout, 5*time.Second)
	defDur(&c.Hooks.RefreshRetry, time.Minute)
	if c.Logger == nil {
		c.Logger = slog.New(slog.DiscardHandler)
	}
	return c
}
