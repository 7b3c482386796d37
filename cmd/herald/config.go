package main

import (
	"errors"
	"fmt"
	"io"
	"log/slog"
	"math"
	"net"
	"net/netip"
	"net/url"
	"slices"
	"strconv"
	"strings"
	"time"

	"github.com/heraldhq/herald"
)

// Config is the configuration of `herald serve`.
//
// Every setting can come from four places, highest precedence first:
//
//  1. a command-line flag:     --read-buffer-size 1024
//  2. an environment variable: HERALD_READ_BUFFER_SIZE=1024
//  3. the YAML config file:    read_buffer_size: 1024
//     (named by --config or HERALD_CONFIG; unknown keys are an error, so a
//     typo cannot silently leave a setting at its default)
//  4. the default.
//
// Each source is parsed by the same code (see settings), so a value means the
// same thing wherever it is written, and an invalid one is reported with the
// setting's name and the place it came from.
//
// For the node's settings, zero means the library's default (see
// herald.Config); the values here are passed through unchanged, so the
// library stays the one place where those defaults live.
type Config struct {
	// Addr is the TCP address to listen on. Port 0 picks a free port; the
	// address actually bound is logged ("listening").
	Addr string

	// AllowedOrigins and AllowAnyOrigin: see herald.Config.
	AllowedOrigins []string
	AllowAnyOrigin bool

	// TrustedProxies and ForwardedHeader: see herald.Config. ForwardedHeader
	// is "x-forwarded-for" (the default) or "forwarded".
	TrustedProxies  []netip.Prefix
	ForwardedHeader string
	// ProxyProtocol accepts the PROXY protocol (v1 or v2) on the listener
	// from TrustedProxies (L4 load balancers): see proxyproto.go.
	ProxyProtocol bool

	ReadBufferSize           int
	MaxMessageSize           int64
	PingInterval             time.Duration
	PongTimeout              time.Duration
	WriteTimeout             time.Duration
	HandshakeTimeout         time.Duration
	CloseGrace               time.Duration
	MaxQueueBytes            int
	MaxQueueMessages         int
	SocketSendBuffer         int
	MaxChannelsPerConnection int
	// Compression is herald.Config.EnableCompression.
	Compression bool

	// ReadHeaderTimeout bounds how long a client may take to send a request's
	// headers. It is what stops slowloris clients (connections that trickle
	// a request and never finish it) from holding sockets and goroutines
	// forever. Zero means 10s; it cannot be turned off.
	ReadHeaderTimeout time.Duration

	// ShutdownTimeout bounds the whole graceful shutdown: WebSocket clients
	// are sent close 1001 and their queues drained, then in-flight HTTP
	// requests finish. Whatever is left when it runs out is cut. Zero means 10s.
	ShutdownTimeout time.Duration

	// Namespaces configure history, recovery, presence and permissions per
	// channel namespace (file only: `namespaces:` is a list). See
	// herald.Namespace. The default is defaultNamespaces; a file's list,
	// even an empty one, replaces it whole.
	Namespaces []herald.Namespace

	// Token authentication (docs/security.md). Setting any key — JWTSecret,
	// JWTSecretFile, JWTRSAPublicKey, JWTECDSAPublicKey or JWKSURL — turns
	// it on: serve builds a herald.JWTVerifier and sets herald.Config.Tokens.
	// With none, the server is open to anyone, and says so in its log.
	//
	// JWTSecret is the HMAC secret (HS256/384/512), used as the bytes
	// written. It is never logged, nor echoed in errors.
	JWTSecret secret
	// JWTSecretFile names a file holding the HMAC secret (trailing newlines
	// are ignored), so the secret stays out of the process list and the
	// environment. At most one of JWTSecret and JWTSecretFile may be set.
	JWTSecretFile string
	// JWTRSAPublicKey and JWTECDSAPublicKey name PEM files (a public key or
	// a certificate) that verify RS256 and ES256 tokens.
	JWTRSAPublicKey   string
	JWTECDSAPublicKey string
	// JWKSURL is a JSON Web Key Set (RS256, ES256 keys by "kid").
	JWKSURL string
	// JWTIssuer and JWTAudience, when set, must match "iss" and "aud".
	JWTIssuer   string
	JWTAudience string
	// ConnectTimeout is herald.Config.ConnectTimeout.
	ConnectTimeout time.Duration

	// Limits: see herald.Config. ConnectRatePerIP is negative for no cap
	// ("off" in every source).
	MaxConnections        int
	MaxConnectionsPerUser int
	MaxConnectionsPerIP   int
	ConnectRatePerIP      float64
	MessageRate           float64
	MessageBurst          int

	// TLSCert and TLSKey name the PEM files of the server's certificate
	// (chain) and private key: set both to serve https:// and wss://, or
	// neither for plain HTTP (behind a TLS-terminating proxy, say).
	TLSCert string
	TLSKey  string

	// DrainWindow is how long the drain before the shutdown lasts: on
	// SIGINT or SIGTERM the server first fails /readyz, then closes its
	// WebSocket clients with 1012 (service restart: reconnect elsewhere)
	// spread over this window, so that they do not all reconnect to the
	// other nodes in the same instant. Zero means 10s; negative ("off" in
	// every source) skips the drain: every client is sent 1001 at once.
	// ShutdownTimeout starts after the drain.
	DrainWindow time.Duration

	// Broker joins nodes: "memory" (one node, the default), "redis" or
	// "nats". RedisURL, RedisAddr and NATSURL say where; each may be set
	// only with its broker (empty: the default address). RedisAddr is the
	// host:port shorthand for redis://HOST:PORT/0; at most one of RedisURL
	// and RedisAddr. BrokerPrefix starts every key and subject, so that
	// several Herald clusters share one Redis or NATS; empty means "herald".
	Broker       string
	RedisURL     string
	RedisAddr    string
	NATSURL      string
	BrokerPrefix string
	// RedisCluster makes the URLs of RedisURL (or RedisAddr) nodes of a
	// Redis Cluster (redisbroker.Options.Cluster); without it several
	// comma-separated URLs are shards (redisbroker.Options.Shards).
	// NATSReplicas is the replica count of the JetStream stream and buckets
	// (natsbroker.Options.Replicas); zero means 1.
	RedisCluster bool
	NATSReplicas int
	// RedisPingTimeout and NATSPingInterval set how fast a dead broker
	// link (one that stays open and carries nothing) is noticed:
	// redisbroker.Options.PingTimeout, natsbroker.Options.PingInterval.
	RedisPingTimeout time.Duration
	NATSPingInterval time.Duration

	// APIKey turns the HTTP API on at /api/ (herald.APIConfig.Key): every
	// request must carry it. APIKeyFile names a file holding it instead
	// (trailing newlines ignored). At most one of them; neither: no API.
	// Both are re-read on SIGHUP.
	APIKey     secret
	APIKeyFile string
	// Metrics serves the Prometheus metrics at /metrics. On by default.
	Metrics bool

	// AdminPassword turns the admin dashboard on at /admin; AdminPasswordFile
	// names a file holding it instead. At most one; neither: no dashboard.
	// Re-read on SIGHUP (a new password ends every session).
	AdminPassword     secret
	AdminPasswordFile string

	// LogFormat is "text" (logfmt-like, for people) or "json" (for log
	// collectors). LogLevel is debug, info, warn or error.
	LogFormat string
	LogLevel  slog.Level

	// Hooks are the backend's HTTP hooks (hooks.go): the hook_* settings
	// and hooks_secret.
	Hooks hookSettings
	// PusherApps are the apps served over Pusher's protocol and HTTP API
	// (file only: `pusher_apps:` is a list; pusher.go, docs/pusher.md).
	PusherApps []pusherAppConfig
	// PusherApp is one more app from the pusher_app_* settings (flags,
	// environment, file): the container-friendly way to run one app.
	PusherApp pusherAppSettings

	// Webhooks are the webhook_* settings (webhooks.go); the namespaces
	// say which channel events are on.
	Webhooks webhookSettings

	// secretOnCommandLine is set when JWTSecret came from a flag, where
	// every user of the machine can read it (ps); serve warns about it.
	// onCommandLine lists the other secrets that did (api_key, admin_password).
	secretOnCommandLine bool
	onCommandLine       []string
}

// secret is a string that does not print: fmt and slog show it redacted,
// so that a Config logged or printed by mistake does not leak it.
type secret string

const redacted = "(redacted)"

func (s secret) String() string {
	if s == "" {
		return ""
	}
	return redacted
}

func (s secret) GoString() string { return `"` + s.String() + `"` }

func (s secret) LogValue() slog.Value { return slog.StringValue(s.String()) }

// minHMACSecret is the shortest HMAC secret accepted: RFC 7518 section 3.2
// requires a key at least as long as the hash, 256 bits for HS256.
const minHMACSecret = 32

func checkHMACSecret(b []byte) error {
	if len(b) < minHMACSecret {
		return fmt.Errorf("too short (%d bytes): HS256 needs at least %d bytes (RFC 7518 section 3.2); generate one with: openssl rand -base64 32", len(b), minHMACSecret)
	}
	return nil
}

// Defaults of the settings that the command itself owns. The node's
// settings default to zero, which herald.New turns into its own defaults.
const (
	defaultAddr              = ":8080"
	defaultReadHeaderTimeout = 10 * time.Second
	defaultShutdownTimeout   = 10 * time.Second
	defaultDrainWindow       = 10 * time.Second
	defaultRedisURL          = "redis://127.0.0.1:6379/0"
	defaultNATSURL           = "nats://127.0.0.1:4222"
	defaultBrokerPrefix      = "herald"
	defaultRedisPingTimeout  = 3 * time.Second // redisbroker's default
	defaultNATSPingInterval  = 2 * time.Second // natsbroker's default

	// The node's defaults of the two sizes that validate checks against
	// each other (herald.Config documents them; herald.New applies them).
	defaultMaxMessageSize = 64 << 10
	defaultMaxQueueBytes  = 1 << 20

	// minAPIKey and minAdminPassword are the shortest secrets accepted: the
	// API key publishes as the server, and the dashboard can too, so a key
	// guessable online would hand that over. Both are compared in constant
	// time; the dashboard also limits login attempts.
	minAPIKey        = 16
	minAdminPassword = 12
)

func defaultConfig() Config {
	return Config{
		Addr:              defaultAddr,
		ReadHeaderTimeout: defaultReadHeaderTimeout,
		ShutdownTimeout:   defaultShutdownTimeout,
		DrainWindow:       defaultDrainWindow,
		Broker:            "memory",
		ForwardedHeader:   "x-forwarded-for",
		BrokerPrefix:      defaultBrokerPrefix,
		RedisPingTimeout:  defaultRedisPingTimeout,
		NATSPingInterval:  defaultNATSPingInterval,
		Metrics:           true,
		LogFormat:         "text",
		LogLevel:          slog.LevelInfo,
		Namespaces:        defaultNamespaces(),
	}
}

// defaultNamespaces give the demo chat page's channels (chat:lobby, chat:*)
// what the page shows on joining: the recent messages (history, which also
// lets a page recover what it missed during a reconnect) and who is in the
// room (presence, with join and leave pushes). Every other channel is
// accepted as with no namespaces at all: no history, no presence
// (herald.AnyNamespace). The cost: at most 100 publications per chat
// channel, each kept 10 minutes, in the broker.
func defaultNamespaces() []herald.Namespace {
	return []herald.Namespace{
		{Name: "chat", HistorySize: 100, HistoryTTL: 10 * time.Minute, JoinLeave: true},
		{Name: herald.AnyNamespace},
	}
}

// nodeConfig maps the settings onto the library's configuration.
func (c Config) nodeConfig(logger *slog.Logger) herald.Config {
	return herald.Config{
		Logger:            logger,
		AllowedOrigins:    c.AllowedOrigins,
		AllowAnyOrigin:    c.AllowAnyOrigin,
		TrustedProxies:    c.TrustedProxies,
		ForwardedHeader:   c.ForwardedHeader,
		ReadBufferSize:    c.ReadBufferSize,
		MaxMessageSize:    c.MaxMessageSize,
		PingInterval:      c.PingInterval,
		PongTimeout:       c.PongTimeout,
		WriteTimeout:      c.WriteTimeout,
		HandshakeTimeout:  c.HandshakeTimeout,
		CloseGrace:        c.CloseGrace,
		MaxQueueBytes:     c.MaxQueueBytes,
		MaxQueueMessages:  c.MaxQueueMessages,
		SocketSendBuffer:  c.SocketSendBuffer,
		EnableCompression: c.Compression,
		Namespaces:        c.Namespaces,
		ConnectTimeout:    c.ConnectTimeout,
		Limits: herald.Limits{
			MaxConnections:           c.MaxConnections,
			MaxConnectionsPerUser:    c.MaxConnectionsPerUser,
			MaxConnectionsPerIP:      c.MaxConnectionsPerIP,
			ConnectRatePerIP:         c.ConnectRatePerIP,
			MaxChannelsPerConnection: c.MaxChannelsPerConnection,
			MessageRate:              c.MessageRate,
			MessageBurst:             c.MessageBurst,
		},
	}
}

// setting describes one configuration setting once, for all its sources.
// Its name is the config file key; the flag is the name with dashes
// (--max-message-size) and the environment variable is HERALD_ and the name
// in upper case (HERALD_MAX_MESSAGE_SIZE).
type setting struct {
	name  string
	arg   string // placeholder for the value in the usage text
	usage string
	def   string // the default, for the usage text
	// want says in words what a valid value is ("a whole number"), for
	// errors about a value of the wrong shape (a list where one value is
	// wanted) that set never sees.
	want string
	// isBool settings take no value on the command line (--compression).
	isBool bool
	// isSecret settings are never echoed: errors show their value redacted.
	isSecret bool
	// redact, if set, is how errors show a value that may hold a secret
	// (a password in a URL).
	redact func(v string) string
	// set parses a value written as a string (a flag, a variable, a scalar in
	// the file) into c. Its error says what a valid value looks like.
	set func(c *Config, v string) error
	// setList, for list settings only, takes the items of a YAML sequence.
	// set then takes a comma-separated list.
	setList func(c *Config, items []string) error
	// get returns the setting's value in c, in a form that set accepts.
	// Secrets are returned as they are: compare them, never print them.
	get func(c *Config) string
	// effective, if set, returns the value that takes effect, in the form
	// get uses: the default that zero resolves to ("100000" for a
	// max_connections of 0). Without it the value is what get returns.
	effective func(c *Config) string
}

// value returns the setting's value as it takes effect in c, defaults
// resolved, so that a reload compares and logs what actually changes
// (old=100000, not old=0, for a max_connections left unset).
func (s *setting) value(c *Config) string {
	if s.effective != nil {
		return s.effective(c)
	}
	return s.get(c)
}

func (s *setting) flagName() string { return strings.ReplaceAll(s.name, "_", "-") }
func (s *setting) envName() string  { return "HERALD_" + strings.ToUpper(s.name) }

// settings lists every setting of `herald serve`, in the order of the usage text.
var settings = slices.Concat([]*setting{
	{
		name: "addr", arg: "ADDR", def: defaultAddr, want: wantAddr,
		usage: "TCP address to listen on (port 0 picks a free port)",
		set: func(c *Config, v string) error {
			v = strings.TrimSpace(v)
			if v == "" {
				return errors.New("must not be empty")
			}
			if _, _, err := net.SplitHostPort(v); err != nil {
				if _, err := strconv.ParseUint(v, 10, 16); err == nil {
					return fmt.Errorf("want %s; did you mean :%s?", wantAddr, v)
				}
				return errors.New("want " + wantAddr)
			}
			c.Addr = v
			return nil
		},
		get: func(c *Config) string { return c.Addr },
	},
	listSetting("allowed_origins", "ORIGINS",
		"browser origins allowed to connect besides the server's own, comma-separated: https://app.example.com, https://*.example.com",
		"same origin only", "a list of origins such as https://app.example.com",
		func(c *Config) *[]string { return &c.AllowedOrigins }, checkOrigin),
	boolSetting("allow_any_origin", "disable the origin check (lets any web site use your users' cookies)",
		func(c *Config) *bool { return &c.AllowAnyOrigin }),
	trustedProxiesSetting(),
	enumSetting("forwarded_header", "HEADER",
		"the header trusted_proxies write the client's address in: x-forwarded-for or forwarded (RFC 7239); only that one is read",
		[]string{"x-forwarded-for", "forwarded"}, func(c *Config) *string { return &c.ForwardedHeader }),
	boolSetting("proxy_protocol", "accept the PROXY protocol (v1 or v2, from L4 load balancers) from trusted_proxies: its source address becomes the client's, and X-Forwarded-For/Forwarded are then ignored; other peers are served as they are; needs trusted_proxies",
		func(c *Config) *bool { return &c.ProxyProtocol }),
	stringSetting("tls_cert", "FILE", "PEM certificate (chain) to serve https:// and wss://; needs tls_key", "none (plain HTTP)",
		func(c *Config) *string { return &c.TLSCert }),
	stringSetting("tls_key", "FILE", "PEM private key of tls_cert", "none",
		func(c *Config) *string { return &c.TLSKey }),
	secretSetting("jwt_secret", "SECRET", "none", "a secret of at least 32 bytes",
		"HMAC secret (at least 32 bytes) that verifies HS256 tokens and turns authentication on; a flag shows in ps: prefer the variable or jwt_secret_file",
		checkHMACSecret, func(c *Config) *secret { return &c.JWTSecret }),
	stringSetting("jwt_secret_file", "FILE", "file holding the HMAC secret (trailing newlines ignored); instead of jwt_secret", "none",
		func(c *Config) *string { return &c.JWTSecretFile }),
	stringSetting("jwt_rsa_public_key", "FILE", "PEM RSA public key (or certificate) that verifies RS256 tokens", "none",
		func(c *Config) *string { return &c.JWTRSAPublicKey }),
	stringSetting("jwt_ecdsa_public_key", "FILE", "PEM ECDSA P-256 public key (or certificate) that verifies ES256 tokens", "none",
		func(c *Config) *string { return &c.JWTECDSAPublicKey }),
	{
		name: "jwks_url", arg: "URL", def: "none", want: wantJWKSURL, redact: redactURL,
		usage: "JSON Web Key Set to fetch RS256 and ES256 keys from, by kid (refreshed hourly, and at most every 5 minutes on an unknown kid)",
		set: func(c *Config, v string) error {
			v = strings.TrimSpace(v)
			u, err := url.Parse(v)
			if err != nil || (u.Scheme != "https" && u.Scheme != "http") || u.Host == "" {
				return errors.New("want " + wantJWKSURL + schemeHint(v, "https"))
			}
			c.JWKSURL = v
			return nil
		},
		get: func(c *Config) string { return c.JWKSURL },
	},
	stringSetting("jwt_issuer", "ISS", "issuer that tokens must name in iss", "any",
		func(c *Config) *string { return &c.JWTIssuer }),
	stringSetting("jwt_audience", "AUD", "audience that tokens must name in aud", "any",
		func(c *Config) *string { return &c.JWTAudience }),
	durationSetting("connect_timeout", "with token authentication, time a protocol client has to send connect before close 4005", "10s",
		func(c *Config) *time.Duration { return &c.ConnectTimeout }),
}, hookSettingList(), webhookSettingList(), pusherSettingList(), []*setting{
	intSetting("read_buffer_size", "read buffer in bytes of a TLS connection (plain connections hold none while idle)", "512",
		func(c *Config) *int { return &c.ReadBufferSize }),
	numberSetting("max_message_size", "BYTES",
		"largest message a client may send, in bytes; a larger one closes the connection with 1009; max_queue_bytes must be at least twice it",
		strconv.Itoa(defaultMaxMessageSize), "a whole number", parseNonNegative, formatInt64,
		func(c *Config) *int64 { return &c.MaxMessageSize }),
	durationSetting("ping_interval", "how often the server pings each connection", "25s",
		func(c *Config) *time.Duration { return &c.PingInterval }),
	durationSetting("pong_timeout", "how long past a ping interval a silent connection is kept", "10s",
		func(c *Config) *time.Duration { return &c.PongTimeout }),
	durationSetting("write_timeout", "bound on every write to a socket", "10s",
		func(c *Config) *time.Duration { return &c.WriteTimeout }),
	durationSetting("handshake_timeout", "bound on writing the WebSocket upgrade response", "10s",
		func(c *Config) *time.Duration { return &c.HandshakeTimeout }),
	durationSetting("close_grace", "time a closing connection has to flush its queue and finish the close handshake", "2s",
		func(c *Config) *time.Duration { return &c.CloseGrace }),
	intSetting("max_queue_bytes", "outbound queue limit per connection in bytes; past it the client is cut as a slow consumer (4001); at least twice max_message_size (a message being written and one waiting)",
		strconv.Itoa(defaultMaxQueueBytes),
		func(c *Config) *int { return &c.MaxQueueBytes }),
	intSetting("max_queue_messages", "outbound queue limit per connection in messages", "8192",
		func(c *Config) *int { return &c.MaxQueueMessages }),
	intSetting("socket_send_buffer", "kernel send buffer (SO_SNDBUF) of each client socket in bytes; small (65536) keeps a slow client's backlog in its queue, where overflow conflate and drop_oldest act", "0 (the OS default)",
		func(c *Config) *int { return &c.SocketSendBuffer }),
	intSetting("max_channels_per_connection", "channels one connection may subscribe to", "256",
		func(c *Config) *int { return &c.MaxChannelsPerConnection }),
	intSetting("max_connections", "connections this server accepts; past it the handshake gets 503", "100000",
		func(c *Config) *int { return &c.MaxConnections }),
	intSetting("max_connections_per_user", "connections of one user (429 at the handshake, or close 1008 at connect)", "100",
		func(c *Config) *int { return &c.MaxConnectionsPerUser }),
	intSetting("max_connections_per_ip", "connections from one IP address (429); behind a proxy all clients share its address, unless trusted_proxies names it", "0 (no cap)",
		func(c *Config) *int { return &c.MaxConnectionsPerIP }),
	withOff(rateSetting("connect_rate_per_ip",
		"new connections per second from one IP address, in bursts of as many (429 with Retry-After); off for no cap",
		"1000", // herald.Config's default
		func(c *Config) *float64 { return &c.ConnectRatePerIP }),
		wantRate+", or off", func(c *Config) *float64 { return &c.ConnectRatePerIP }),
	rateSetting("message_rate",
		"messages per second one connection may send; over it: rate_limited errors, then close 4007 (raw: 4007 at once)",
		"0 (no cap)", func(c *Config) *float64 { return &c.MessageRate }),
	withEffective(intSetting("message_burst", "messages a connection may send at once within message_rate", "message_rate rounded up",
		func(c *Config) *int { return &c.MessageBurst }), func(c *Config) string {
		if c.MessageBurst == 0 && c.MessageRate > 0 {
			return strconv.Itoa(int(math.Ceil(c.MessageRate))) // herald.Config's default
		}
		return strconv.Itoa(c.MessageBurst)
	}),
	boolSetting("compression", "negotiate permessage-deflate with clients that offer it",
		func(c *Config) *bool { return &c.Compression }),
	durationSetting("read_header_timeout", "time a client has to send a request's headers (stops slowloris)", defaultReadHeaderTimeout.String(),
		func(c *Config) *time.Duration { return &c.ReadHeaderTimeout }),
	withOff(durationSetting("drain_window",
		"on SIGINT or SIGTERM, fail /readyz and close WebSocket clients with 1012 spread over this window before shutting down; off: 1001 to all at once",
		defaultDrainWindow.String(), func(c *Config) *time.Duration { return &c.DrainWindow }),
		"a duration such as 10s or 1m, or off", func(c *Config) *time.Duration { return &c.DrainWindow }),
	durationSetting("shutdown_timeout", "bound on the graceful shutdown after SIGINT or SIGTERM (after the drain)", defaultShutdownTimeout.String(),
		func(c *Config) *time.Duration { return &c.ShutdownTimeout }),
	enumSetting("broker", "KIND", "what joins nodes: memory (this node alone), redis or nats",
		[]string{"memory", "redis", "nats"}, func(c *Config) *string { return &c.Broker }),
	urlSetting("redis_url", "Redis server for broker redis: redis://[user:password@]host:port/db, or rediss:// for TLS; several, comma-separated, are shards that share the channels (or with redis_cluster, nodes of a Redis Cluster)", defaultRedisURL,
		[]string{"redis", "rediss", "unix"}, func(c *Config) *string { return &c.RedisURL }),
	boolSetting("redis_cluster", "broker redis: redis_url (or redis_addr) names nodes of a Redis Cluster (7.0 or later), not standalone servers",
		func(c *Config) *bool { return &c.RedisCluster }),
	{
		name: "redis_addr", arg: "HOST:PORT", def: "none", want: "host:port, such as 127.0.0.1:6379",
		usage: "shorthand for redis_url redis://HOST:PORT/0",
		set: func(c *Config, v string) error {
			v = strings.TrimSpace(v)
			if _, _, err := net.SplitHostPort(v); err != nil || strings.ContainsAny(v, "/@?#") {
				return errors.New("want host:port, such as 127.0.0.1:6379")
			}
			c.RedisAddr = v
			return nil
		},
		get: func(c *Config) string { return c.RedisAddr },
	},
	urlSetting("nats_url", "NATS server(s) for broker nats, comma-separated: nats://[user:password@]host:port", defaultNATSURL,
		[]string{"nats", "tls", "ws", "wss"}, func(c *Config) *string { return &c.NATSURL }),
	{
		name: "broker_prefix", arg: "PREFIX", def: defaultBrokerPrefix, want: "letters, digits, '_' and '-'",
		usage: "starts every Redis key and NATS subject, so that several Herald clusters share one server: letters, digits, '_' and '-'",
		set: func(c *Config, v string) error {
			v = strings.TrimSpace(v)
			if v == "" || strings.IndexFunc(v, func(r rune) bool {
				return !(r >= 'a' && r <= 'z' || r >= 'A' && r <= 'Z' || r >= '0' && r <= '9' || r == '_' || r == '-')
			}) >= 0 {
				return errors.New("want letters, digits, '_' and '-' (it names NATS streams and Redis keys)")
			}
			c.BrokerPrefix = v
			return nil
		},
		get: func(c *Config) string { return c.BrokerPrefix },
	},
	durationSetting("redis_ping_timeout", "broker redis: how long a connection may leave a PING (sent after each idle second) or a command unanswered before it counts as dead: then /readyz fails and subscribers are closed with 4006 to recover elsewhere",
		defaultRedisPingTimeout.String(), func(c *Config) *time.Duration { return &c.RedisPingTimeout }),
	intSetting("nats_replicas", "broker nats: replicas of the JetStream stream and buckets Herald creates (3 on a three-server cluster, so that one server may fail); at most 5", "1",
		func(c *Config) *int { return &c.NATSReplicas }),
	durationSetting("nats_ping_interval", "broker nats: how often the connection is pinged; after 2 unanswered pings it counts as dead: then /readyz fails and subscribers are closed with 4006 to recover elsewhere",
		defaultNATSPingInterval.String(), func(c *Config) *time.Duration { return &c.NATSPingInterval }),
	secretSetting("api_key", "KEY", "none (no API)", "a key of at least 16 bytes",
		"key (at least 16 bytes) of the HTTP API, which it turns on at /api/; a flag shows in ps: prefer the variable or api_key_file",
		checkAPIKey, func(c *Config) *secret { return &c.APIKey }),
	stringSetting("api_key_file", "FILE", "file holding the API key (trailing newlines ignored); instead of api_key", "none",
		func(c *Config) *string { return &c.APIKeyFile }),
	withDefault(boolSetting("metrics", "serve Prometheus metrics at /metrics (--metrics=false to turn them off)",
		func(c *Config) *bool { return &c.Metrics }), "true"),
	secretSetting("admin_password", "PASSWORD", "none (no dashboard)", "a password of at least 12 bytes",
		"password (at least 12 bytes) of the admin dashboard, which it turns on at /admin; a flag shows in ps: prefer the variable or admin_password_file",
		checkAdminPassword, func(c *Config) *secret { return &c.AdminPassword }),
	stringSetting("admin_password_file", "FILE", "file holding the admin password (trailing newlines ignored); instead of admin_password", "none",
		func(c *Config) *string { return &c.AdminPasswordFile }),
	enumSetting("log_format", "FORMAT", "log format: text or json", []string{"text", "json"},
		func(c *Config) *string { return &c.LogFormat }),
	{
		name: "log_level", arg: "LEVEL", def: "info", want: "debug, info, warn or error", usage: "least severe level logged: debug, info, warn or error",
		set: func(c *Config, v string) error {
			switch strings.ToLower(strings.TrimSpace(v)) {
			case "debug":
				c.LogLevel = slog.LevelDebug
			case "info":
				c.LogLevel = slog.LevelInfo
			case "warn", "warning":
				c.LogLevel = slog.LevelWarn
			case "error":
				c.LogLevel = slog.LevelError
			default:
				return errors.New("want debug, info, warn or error")
			}
			return nil
		},
		get: func(c *Config) string { return strings.ToLower(c.LogLevel.String()) },
	},
})

// wantAddr and wantJWKSURL describe a valid addr and jwks_url.
const (
	wantAddr    = "host:port or :port, such as :8080 or 127.0.0.1:8080"
	wantJWKSURL = "an http:// or https:// URL, such as https://auth.example.com/.well-known/jwks.json"
)

// stringWants describes in words the value of a string setting, by its
// placeholder in the usage text.
var stringWants = map[string]string{
	"FILE": "a file path",
	"ISS":  "an issuer, such as https://auth.example.com",
	"AUD":  "an audience, such as herald",
}

func stringSetting(name, arg, usage, def string, field func(*Config) *string) *setting {
	want, ok := stringWants[arg]
	if !ok {
		panic("config: no words for the value of " + name) // arg is a constant of this file
	}
	return valueSetting(name, arg, usage, def, want, parseNonEmpty, identity, field)
}

func parseNonEmpty(v string) (string, error) {
	if v = strings.TrimSpace(v); v == "" {
		return "", errors.New("must not be empty")
	}
	return v, nil
}

func identity(v string) string { return v }

// valueSetting is a setting whose value parse reads (its error says what a
// valid value looks like) and format writes back, in a form parse accepts.
func valueSetting[T any](name, arg, usage, def, want string, parse func(string) (T, error), format func(T) string,
	field func(*Config) *T) *setting {
	return &setting{name: name, arg: arg, usage: usage, def: def, want: want,
		set: func(c *Config, v string) error {
			x, err := parse(v)
			if err != nil {
				return err
			}
			*field(c) = x
			return nil
		},
		get: func(c *Config) string { return format(*field(c)) }}
}

// withDefault sets the default shown in the usage text, for a setting whose
// default is not its type's zero value.
func withDefault(s *setting, def string) *setting {
	s.def = def
	return s
}

// withEffective sets how the setting's effective value is worked out, for
// a default that depends on other settings.
func withEffective(s *setting, effective func(c *Config) string) *setting {
	s.effective = effective
	return s
}

// urlSetting is a URL whose scheme must be one of schemes. Comma-separated
// lists (NATS takes several servers) are checked item by item. def, the
// default, is also the example that errors give.
func urlSetting(name, usage, def string, schemes []string, field func(*Config) *string) *setting {
	want := fmt.Sprintf("a URL such as %s (scheme %s)", def, orList(schemes))
	parse := func(v string) (string, error) {
		v = strings.TrimSpace(v)
		items := strings.Split(v, ",")
		for _, item := range items {
			item = strings.TrimSpace(item)
			u, err := url.Parse(item)
			if err == nil && slices.Contains(schemes, u.Scheme) && (u.Host != "" || u.Scheme == "unix") {
				continue
			}
			// The URL may hold a password: errors show it redacted.
			if len(items) > 1 {
				return "", fmt.Errorf("%q is not %s", redactURL(item), want)
			}
			return "", errors.New("want " + want + schemeHint(item, schemes[0]))
		}
		return v, nil
	}
	s := valueSetting(name, "URL", usage, def, want, parse, identity, field)
	s.redact = redactURLs
	// In a file, several URLs may also be a YAML list.
	s.setList = func(c *Config, items []string) error { return s.set(c, strings.Join(items, ",")) }
	return s
}

// schemeHint suggests the URL that v probably meant when it has no scheme
// (127.0.0.1:6379 for redis://127.0.0.1:6379), or returns "".
func schemeHint(v, scheme string) string {
	if v == "" || strings.Contains(v, "://") {
		return ""
	}
	return "; did you mean " + scheme + "://" + redactURL(v) + "?"
}

// orList joins words as "a, b or c".
func orList(words []string) string {
	if len(words) < 2 {
		return strings.Join(words, "")
	}
	return strings.Join(words[:len(words)-1], ", ") + " or " + words[len(words)-1]
}

func boolSetting(name, usage string, field func(*Config) *bool) *setting {
	s := valueSetting(name, "", usage, "false", "true or false", parseBool, strconv.FormatBool, field)
	s.isBool = true
	return s
}

// intSetting is a count or a size. When def is a number, zero means def:
// it is the value a reload compares and logs.
func intSetting(name, usage, def string, field func(*Config) *int) *setting {
	return numberSetting(name, "N", usage, def, "a whole number", parseInt, strconv.Itoa, field)
}

// durationSetting is a duration. When def is a duration, zero means def.
func durationSetting(name, usage, def string, field func(*Config) *time.Duration) *setting {
	return numberSetting(name, "DURATION", usage, def, wantDuration, parseDuration, time.Duration.String, field)
}

// rateSetting is a number per second. When def is a number, zero means def.
func rateSetting(name, usage, def string, field func(*Config) *float64) *setting {
	return numberSetting(name, "RATE", usage, def, wantRate, parseRate, formatRate, field)
}

func formatRate(r float64) string { return strconv.FormatFloat(r, 'g', -1, 64) }

func formatInt64(n int64) string { return strconv.FormatInt(n, 10) }

// numberSetting is a setting of a number that parse reads and format
// writes back. When def parses, zero means def: the effective value, which
// a reload compares and logs, is def's (old=100000 for a max_connections
// left at 0).
func numberSetting[T int | int64 | time.Duration | float64](name, arg, usage, def, want string,
	parse func(string) (T, error), format func(T) string, field func(*Config) *T) *setting {
	s := valueSetting(name, arg, usage, def, want, parse, format, field)
	if d, err := parse(def); err == nil {
		s.effective = func(c *Config) string {
			if *field(c) == 0 {
				return format(d)
			}
			return format(*field(c))
		}
	}
	return s
}

// withOff lets a number setting be "off" in every source, stored as -1 (no
// cap, or none), and says so in want, which its errors give.
func withOff[T time.Duration | float64](s *setting, want string, field func(*Config) *T) *setting {
	set, get, effective := s.set, s.get, s.effective
	if effective == nil {
		effective = get
	}
	s.want = want
	s.set = func(c *Config, v string) error {
		if strings.EqualFold(strings.TrimSpace(v), "off") {
			*field(c) = -1
			return nil
		}
		if err := set(c, v); err != nil {
			return errors.New("want " + want)
		}
		return nil
	}
	orOff := func(value func(*Config) string) func(*Config) string {
		return func(c *Config) string {
			if *field(c) < 0 {
				return "off"
			}
			return value(c)
		}
	}
	s.get, s.effective = orOff(get), orOff(effective)
	return s
}

// secretSetting is a secret: never echoed (errors show it redacted, and a
// reload logs no value), and checked by check.
func secretSetting(name, arg, def, want, usage string, check func([]byte) error, field func(*Config) *secret) *setting {
	parse := func(v string) (secret, error) { return secret(v), check([]byte(v)) }
	s := valueSetting(name, arg, usage, def, want, parse, func(v secret) string { return string(v) }, field)
	s.isSecret = true
	return s
}

// enumSetting is one of values, written in any case; the first is the
// default.
func enumSetting(name, arg, usage string, values []string, field func(*Config) *string) *setting {
	want := orList(values)
	parse := func(v string) (string, error) {
		if v = strings.ToLower(strings.TrimSpace(v)); slices.Contains(values, v) {
			return v, nil
		}
		return "", errors.New("want " + want)
	}
	return valueSetting(name, arg, usage, values[0], want, parse, identity, field)
}

// trustedProxiesSetting is trusted_proxies: address ranges, or single
// addresses, comma-separated (or a YAML list).
func trustedProxiesSetting() *setting {
	s := &setting{name: "trusted_proxies", arg: "RANGES", def: "none",
		want:  "address ranges or addresses, such as 10.0.0.0/8, 127.0.0.1",
		usage: "your reverse proxies' address ranges or addresses, comma-separated (10.0.0.0/8, 127.0.0.1): a request from one has its client's address, for per-IP limits, logs and hooks, read from forwarded_header; from anyone else the header is ignored",
		get: func(c *Config) string {
			items := make([]string, len(c.TrustedProxies))
			for i, p := range c.TrustedProxies {
				items[i] = p.String()
			}
			return strings.Join(items, ",")
		}}
	s.setList = func(c *Config, items []string) error {
		var list []netip.Prefix
		for _, it := range items {
			if it = strings.TrimSpace(it); it == "" {
				continue
			}
			p, err := herald.ParseTrustedProxies([]string{it})
			if err != nil {
				return fmt.Errorf("%q: want an address range such as 10.0.0.0/8, or an address", it)
			}
			list = append(list, p...)
		}
		c.TrustedProxies = list
		return nil
	}
	s.set = func(c *Config, v string) error { return s.setList(c, strings.Split(v, ",")) }
	return s
}

func listSetting(name, arg, usage, def, want string, field func(*Config) *[]string, check func(string) error) *setting {
	s := &setting{name: name, arg: arg, usage: usage, def: def, want: want,
		get: func(c *Config) string { return strings.Join(*field(c), ",") }}
	s.setList = func(c *Config, items []string) error {
		list := make([]string, 0, len(items))
		for _, it := range items {
			if it = strings.TrimSpace(it); it == "" {
				continue
			}
			if err := check(it); err != nil {
				return fmt.Errorf("%q: %w", it, err)
			}
			list = append(list, it)
		}
		*field(c) = list
		return nil
	}
	s.set = func(c *Config, v string) error { return s.setList(c, strings.Split(v, ",")) }
	return s
}

const wantDuration = "a duration such as 500ms, 30s or 1m30s"

// parseDuration parses a duration that may not be negative.
func parseDuration(v string) (time.Duration, error) {
	d, err := time.ParseDuration(strings.TrimSpace(v))
	if err != nil {
		return 0, errors.New("want " + wantDuration)
	}
	if d < 0 {
		return 0, errors.New("must not be negative")
	}
	return d, nil
}

// parseBool parses true or false, as strconv.ParseBool does, and the YAML
// 1.1 words yes, no, on and off.
func parseBool(v string) (bool, error) {
	v = strings.TrimSpace(v)
	switch strings.ToLower(v) {
	case "yes", "on":
		return true, nil
	case "no", "off":
		return false, nil
	}
	b, err := strconv.ParseBool(v)
	if err != nil {
		return false, errors.New("want true or false")
	}
	return b, nil
}

// parseNonNegative parses a size or count. Zero is allowed: it means the
// library default.
func parseNonNegative(v string) (int64, error) {
	v = strings.TrimSpace(v)
	n, err := strconv.ParseInt(v, 10, 64)
	switch {
	case errors.Is(err, strconv.ErrRange) && strings.HasPrefix(v, "-"):
		return 0, errors.New("must not be negative")
	case errors.Is(err, strconv.ErrRange):
		return 0, fmt.Errorf("too large: at most %d", int64(math.MaxInt64))
	case err != nil:
		return 0, errors.New("want a whole number")
	}
	if n < 0 {
		return 0, errors.New("must not be negative")
	}
	return n, nil
}

// parseInt parses a count or a size that fits an int.
func parseInt(v string) (int, error) {
	n, err := parseNonNegative(v)
	if err == nil && int64(int(n)) != n {
		err = fmt.Errorf("too large: at most %d", math.MaxInt)
	}
	return int(n), err
}

const wantRate = "a number per second, such as 50 or 0.5"

// parseRate parses a number of events per second. Zero is allowed: it means
// the library default.
func parseRate(v string) (float64, error) {
	r, err := strconv.ParseFloat(strings.TrimSpace(v), 64)
	if err != nil || math.IsNaN(r) || math.IsInf(r, 0) {
		return 0, errors.New("want " + wantRate)
	}
	if r < 0 {
		return 0, errors.New("must not be negative")
	}
	return r, nil
}

// checkOrigin catches malformed origins early, with the source of the
// setting in the error. herald.New remains the authority on what matches.
func checkOrigin(o string) error {
	u, err := url.Parse(o)
	if err != nil || u.Scheme == "" || u.Host == "" || (u.Path != "" && u.Path != "/") || u.RawQuery != "" || u.Fragment != "" {
		return errors.New("want scheme://host[:port], or scheme://*.domain for subdomains")
	}
	// herald.New refuses these too, but without the setting's source.
	host := u.Hostname()
	if rest, ok := strings.CutPrefix(host, "*."); ok {
		host = rest
		if rest == "" {
			return errors.New("a wildcard needs a domain after it, as in https://*.example.com")
		}
	}
	if strings.Contains(host, "*") {
		return errors.New("a wildcard may only be the first label, as in https://*.example.com")
	}
	return nil
}

// SettingError reports an invalid value, naming the setting and where the
// value came from.
type SettingError struct {
	Setting string // config file key, e.g. "ping_interval"
	Source  string // e.g. "flag --ping-interval", "env HERALD_PING_INTERVAL", "config file herald.yaml line 3"
	Value   string
	Err     error
}

func (e *SettingError) Error() string {
	return fmt.Sprintf("invalid %s %q (from %s): %v", e.Setting, e.Value, e.Source, e.Err)
}

func (e *SettingError) Unwrap() error { return e.Err }

// settingError builds the SettingError of s, with a secret's value redacted.
func settingError(s *setting, source, value string, err error) *SettingError {
	switch {
	case s.isSecret:
		value = redacted
	case s.redact != nil:
		value = s.redact(value)
	}
	return &SettingError{Setting: s.name, Source: source, Value: value, Err: err}
}

// parseServeConfig builds the configuration of `herald serve` from its
// arguments, the environment (as os.Environ returns it) and the config file
// they name. It returns flag.ErrHelp when -h or --help was given, after
// writing the usage to usageOut.
func parseServeConfig(args, env []string, usageOut io.Writer) (Config, error) {
	// Flags are applied last (highest precedence) but parsed first, since
	// they may name the config file.
	flagged, configPath, err := parseServeFlags(args, usageOut)
	if err != nil {
		return Config{}, err
	}
	// Variables that start with HERALD_ but name no setting are ignored, not
	// refused: they may be meant for something else (the test suite's
	// HERALD_TEST_REDIS, for one). An empty variable counts as unset, as it
	// does in most deployment tools, where "HERALD_X=" is how an optional
	// value is left out.
	vars := envMap(env)
	cfg := defaultConfig()
	// src records where each setting that is not at its default came
	// from, for the errors of validate.
	src := make(sources)
	if configPath == "" {
		configPath = vars["HERALD_CONFIG"]
	}
	if configPath != "" {
		if err := applyConfigFile(&cfg, configPath, src); err != nil {
			return Config{}, err
		}
	}
	for _, s := range settings {
		if v := vars[s.envName()]; v != "" {
			if err := cfg.apply(s, v, "env "+s.envName(), src); err != nil {
				return Config{}, err
			}
		}
	}
	for _, f := range flagged {
		if err := cfg.apply(f.s, f.v, "flag --"+f.s.flagName(), src); err != nil {
			return Config{}, err
		}
		switch f.s.name {
		case "jwt_secret":
			cfg.secretOnCommandLine = true
		case "api_key", "admin_password", "hooks_secret", "pusher_app_secret":
			cfg.onCommandLine = append(cfg.onCommandLine, f.s.name)
		}
	}
	if err := cfg.validate(src); err != nil {
		return Config{}, err
	}
	return cfg, nil
}

// flagValue is a setting's value as a flag gave it.
type flagValue struct {
	s *setting
	v string
}

// parseServeFlags parses serve's flags, every setting's and --config, and
// returns the settings' values as given, in order, and the config file's
// path.
func parseServeFlags(args []string, usageOut io.Writer) (flagged []flagValue, configPath string, err error) {
	fs := newFlagSet("serve", map[string]*string{"config": &configPath})
	for _, s := range settings {
		record := func(v string) error {
			flagged = append(flagged, flagValue{s, v})
			return nil
		}
		if s.isBool {
			fs.BoolFunc(s.flagName(), s.usage, record)
		} else {
			fs.Func(s.flagName(), s.usage, record)
		}
	}
	var usage strings.Builder
	writeServeUsage(&usage)
	if err := parseFlags(fs, args, usageOut, usage.String()); err != nil {
		return nil, "", err
	}
	if fs.NArg() > 0 {
		return nil, "", fmt.Errorf("serve takes no arguments, got %q (see herald help serve)", fs.Args())
	}
	return flagged, configPath, nil
}

// apply sets s to v, which came from source, and records the source.
func (c *Config) apply(s *setting, v, source string, src sources) error {
	if err := s.set(c, v); err != nil {
		return settingError(s, source, v, err)
	}
	src[s.name] = source
	return nil
}

// sources maps a setting's name to where its value came from ("flag
// --max-message-size", "env HERALD_MAX_QUEUE_BYTES", "config file
// herald.yaml line 3"); a setting at its default has no entry.
type sources map[string]string

// describe says where the setting's value came from, for an error; zero
// says that it was given as 0, which means the default.
func (src sources) describe(name string, zero bool) string {
	from, ok := src[name]
	switch {
	case !ok:
		return "the default"
	case zero:
		return "the default, as 0 from " + from
	}
	return "from " + from
}

// authEnabled reports whether a key is configured: token authentication is on.
func (c *Config) authEnabled() bool {
	return c.JWTSecret != "" || c.JWTSecretFile != "" || c.JWTRSAPublicKey != "" || c.JWTECDSAPublicKey != "" || c.JWKSURL != ""
}

// validate checks the rules that span several settings, once every source
// has been applied; src says where each setting came from.
func (c *Config) validate(src sources) error {
	if err := c.checkQueueHoldsTwoMessages(src); err != nil {
		return err
	}
	if c.ProxyProtocol && len(c.TrustedProxies) == 0 {
		return errors.New("proxy_protocol needs trusted_proxies: the load balancers' addresses, the only peers whose PROXY header is believed")
	}
	if (c.TLSCert == "") != (c.TLSKey == "") {
		return errors.New("tls_cert and tls_key go together: set both to serve https:// and wss://, or neither for plain HTTP")
	}
	for _, pair := range [][2]string{{"jwt_secret", "jwt_secret_file"}, {"api_key", "api_key_file"}, {"admin_password", "admin_password_file"}} {
		if settingByName(pair[0]).get(c) != "" && settingByName(pair[1]).get(c) != "" {
			return fmt.Errorf("%s and %s both set: set one of them", pair[0], pair[1])
		}
	}
	if !c.authEnabled() {
		var orphans []string
		if c.JWTIssuer != "" {
			orphans = append(orphans, "jwt_issuer")
		}
		if c.JWTAudience != "" {
			orphans = append(orphans, "jwt_audience")
		}
		// The connect hook makes connect required too, so its timeout
		// applies.
		if c.ConnectTimeout != 0 && c.Hooks.ConnectURL == "" {
			orphans = append(orphans, "connect_timeout")
		}
		if len(orphans) > 0 {
			return fmt.Errorf("%s set, but token authentication is off: set a key too (%s)", strings.Join(orphans, " and "), keySettings)
		}
	}
	if c.MessageBurst != 0 && c.MessageRate == 0 {
		return errors.New("message_burst set without message_rate: set message_rate too")
	}
	if err := c.validateBroker(); err != nil {
		return err
	}
	if err := c.validatePusherApps(); err != nil {
		return err
	}
	if err := c.Webhooks.validate(c.Namespaces, c.pusherWebhooks()); err != nil {
		return err
	}
	return c.Hooks.validate(c.Webhooks.URL != "")
}

// validateBroker checks that the broker's settings go with the broker
// chosen.
func (c *Config) validateBroker() error {
	if c.RedisURL != "" && c.RedisAddr != "" {
		return errors.New("redis_url and redis_addr both set: set one of them (redis_addr HOST:PORT means redis_url redis://HOST:PORT/0)")
	}
	// An address for a broker that is not used means the operator thinks
	// the nodes are joined when they are not: refuse rather than run alone.
	if (c.RedisURL != "" || c.RedisAddr != "") && c.Broker != "redis" {
		return fmt.Errorf("redis_url or redis_addr set, but broker is %s: set broker redis too, or remove them", c.Broker)
	}
	if c.NATSURL != "" && c.Broker != "nats" {
		return fmt.Errorf("nats_url set, but broker is %s: set broker nats too, or remove it", c.Broker)
	}
	if c.RedisCluster && c.Broker != "redis" {
		return fmt.Errorf("redis_cluster set, but broker is %s: set broker redis too, or remove it", c.Broker)
	}
	if c.NATSReplicas != 0 && c.Broker != "nats" {
		return fmt.Errorf("nats_replicas set, but broker is %s: set broker nats too, or remove it", c.Broker)
	}
	if c.NATSReplicas < 0 || c.NATSReplicas > 5 {
		return fmt.Errorf("nats_replicas %d: want 1 to 5 (JetStream's limit)", c.NATSReplicas)
	}
	return nil
}

// maxMessageSize and maxQueueBytes are the sizes the node runs with,
// defaults resolved.
func (c *Config) maxMessageSize() int64 {
	if c.MaxMessageSize <= 0 {
		return defaultMaxMessageSize
	}
	return c.MaxMessageSize
}

func (c *Config) maxQueueBytes() int {
	if c.MaxQueueBytes <= 0 {
		return defaultMaxQueueBytes
	}
	return c.MaxQueueBytes
}

// checkQueueHoldsTwoMessages refuses a max_queue_bytes under twice
// max_message_size. A connection's queue must hold the message being
// written plus one more waiting (each with its few bytes of framing);
// with less, any subscriber sent two messages near max_message_size in a
// row, or one larger than the queue, is cut as a slow consumer (4001)
// however fast it reads. herald.New has the same rule; this check comes
// first, so that the error names the settings and their sources.
func (c *Config) checkQueueHoldsTwoMessages(src sources) error {
	msg, queue := c.maxMessageSize(), int64(c.maxQueueBytes())
	if msg <= queue/2 { // msg*2 <= queue, without overflow
		return nil
	}
	need := "at least " + strconv.FormatInt(2*msg, 10)
	if msg > math.MaxInt/2 {
		need = "at least twice it" // 2*msg does not fit in max_queue_bytes
	}
	return fmt.Errorf("max_queue_bytes %d (%s) is less than twice max_message_size %d (%s): "+
		"a connection's queue must hold a message being written and one more waiting, "+
		"or messages over %d bytes can cut their receivers as slow consumers (close 4001); "+
		"set max_queue_bytes to %s, or max_message_size to at most %d",
		queue, src.describe("max_queue_bytes", c.MaxQueueBytes == 0), msg, src.describe("max_message_size", c.MaxMessageSize == 0),
		queue/2, need, queue/2)
}

// redisURL is the Redis server to use with broker redis.
func (c *Config) redisURL() string {
	switch {
	case c.RedisAddr != "":
		return "redis://" + c.RedisAddr + "/0"
	case c.RedisURL != "":
		return c.RedisURL
	}
	return defaultRedisURL
}

// natsURL is the NATS server (or servers) to use with broker nats.
func (c *Config) natsURL() string {
	if c.NATSURL != "" {
		return c.NATSURL
	}
	return defaultNATSURL
}

// drainWindow is the drain's length, 0 for none.
func (c *Config) drainWindow() time.Duration {
	switch {
	case c.DrainWindow < 0:
		return 0
	case c.DrainWindow == 0:
		return defaultDrainWindow
	}
	return c.DrainWindow
}

func checkAPIKey(b []byte) error {
	if len(b) < minAPIKey {
		return fmt.Errorf("too short (%d bytes): use at least %d; generate one with: openssl rand -base64 32", len(b), minAPIKey)
	}
	return nil
}

func checkAdminPassword(b []byte) error {
	if len(b) < minAdminPassword {
		return fmt.Errorf("too short (%d bytes): use at least %d; generate one with: openssl rand -base64 18", len(b), minAdminPassword)
	}
	return nil
}

// apiKey returns the API key, read from api_key_file if that is set; ""
// means the API is off.
func (c *Config) apiKey() (string, error) {
	return secretOrFile(c.APIKey, c.APIKeyFile, "api_key_file", checkAPIKey)
}

// adminPassword returns the dashboard's password, read from
// admin_password_file if that is set; "" means the dashboard is off.
func (c *Config) adminPassword() (string, error) {
	return secretOrFile(c.AdminPassword, c.AdminPasswordFile, "admin_password_file", checkAdminPassword)
}

// secretOrFile returns value, or if path (the setting fileSetting) is set,
// the secret in that file, checked by check.
func secretOrFile(value secret, path, fileSetting string, check func([]byte) error) (string, error) {
	if path == "" {
		return string(value), nil
	}
	b, err := readSecret(path, check)
	if err != nil {
		return "", fmt.Errorf("invalid %s %s: %w", fileSetting, path, err)
	}
	return string(b), nil
}

// redactURLs hides the passwords in a comma-separated list of URLs.
func redactURLs(v string) string {
	items := strings.Split(v, ",")
	for i, it := range items {
		items[i] = redactURL(strings.TrimSpace(it))
	}
	return strings.Join(items, ",")
}

// keySettings lists the settings that turn token authentication on.
const keySettings = "jwt_secret_file, jwt_secret, jwt_rsa_public_key, jwt_ecdsa_public_key or jwks_url"

// serveUsageHead is the help text of `herald serve` before the table of
// settings.
const serveUsageHead = `Usage: herald serve [flags]

Runs a Herald server: the WebSocket protocol endpoint at /ws (subprotocol
herald.v1), raw relay mode at /ws/raw?channel=NAME, a demo chat page at /,
health checks at /healthz (alive) and /readyz (ready for new clients), and
Prometheus metrics at /metrics. With api_key, the HTTP API at /api/ (see
herald help pub); with admin_password, the admin dashboard at /admin. With
--tls-cert and --tls-key it serves https:// and wss://.

Channels take their settings from the namespaces list of the config file
(the part of a channel's name before ':'). Without one, chat:* channels keep
history (the last 100 publications, 10 minutes) and presence with join and
leave pushes, for the demo page, and every other channel is accepted with
neither (the namespace "*"); a file's list replaces both.

With broker redis or nats, several servers share channels, presence and
history. On SIGINT or SIGTERM the server drains (drain_window), then shuts
down (shutdown_timeout). SIGHUP reloads log_level, api_key, admin_password,
metrics, drain_window, shutdown_timeout, the TLS certificate, the connection
limits and message rate, allowed_origins, allow_any_origin and namespaces
(open connections and subscriptions stay), trusted_proxies and
forwarded_header, and logs every other changed setting as needing a restart.

Without a key (jwt_secret_file, jwt_secret, jwt_rsa_public_key,
jwt_ecdsa_public_key or jwks_url) the server is OPEN: anyone who reaches it
may connect, subscribe and publish on every channel. With one, clients
authenticate with tokens (herald token mints one for development), and
namespaces admit authenticated users only unless their allow_* settings say
otherwise. See docs/security.md.

With webhook_url, the server POSTs batches of events to your backend: users
online and offline (webhook_users), and per namespace in the file, channels
occupied and vacated (channel_events), members (member_events, with
presence) and client publications (publish_events). See docs/webhooks.md.

With pusher_apps in the config file (each: id, key, secret or secret_file,
client_events, max_connections, history_size, history_ttl, activity_timeout,
webhooks), the server speaks Pusher: pusher-js and Laravel Echo connect to
/app/{key}, the Pusher server SDKs call /apps/{app_id}/..., and each app's
webhooks go out in Pusher's format. Changes need a restart. See
docs/pusher.md.

A namespace with history may set delta: fossil: its subscribers that ask get
each publication as a delta against the previous one. See PROTOCOL.md.

Each setting is read from its flag, else from its environment variable, else
from the YAML config file (same name as the flag, with underscores), else
from its default. Durations are a number and a unit (500ms, 30s, 1m30s, 2h);
sizes are in bytes; zero means the default. max_queue_bytes must be at least
twice max_message_size (a connection's queue holds a message being written and
one waiting), or the server refuses to start.

  --config FILE
        YAML config file
        env HERALD_CONFIG, default none
`

// writeServeUsage writes the help text of `herald serve`.
func writeServeUsage(w io.Writer) {
	var b strings.Builder
	b.WriteString(serveUsageHead)
	for _, s := range settings {
		head := "  --" + s.flagName()
		if s.arg != "" {
			head += " " + s.arg
		}
		fmt.Fprintf(&b, "%s\n        %s\n        env %s, default %s\n", head, s.usage, s.envName(), s.def)
	}
	_, _ = io.WriteString(w, b.String())
}
