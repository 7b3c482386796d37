package main

import (
	"bytes"
	"errors"
	"flag"
	"fmt"
	"io"
	"log/slog"
	"math"
	"net"
	"net/url"
	"os"
	"reflect"
	"slices"
	"strconv"
	"strings"
	"time"

	"go.yaml.in/yaml/v3"

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

	ReadBufferSize           int
	MaxMessageSize           int64
	PingInterval             time.Duration
	PongTimeout              time.Duration
	WriteTimeout             time.Duration
	HandshakeTimeout         time.Duration
	CloseGrace               time.Duration
	MaxQueueBytes            int
	MaxQueueMessages         int
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
	// herald.Namespace.
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
		BrokerPrefix:      defaultBrokerPrefix,
		Metrics:           true,
		LogFormat:         "text",
		LogLevel:          slog.LevelInfo,
	}
}

// nodeConfig maps the settings onto the library's configuration.
func (c Config) nodeConfig(logger *slog.Logger) herald.Config {
	return herald.Config{
		Logger:                   logger,
		AllowedOrigins:           c.AllowedOrigins,
		AllowAnyOrigin:           c.AllowAnyOrigin,
		ReadBufferSize:           c.ReadBufferSize,
		MaxMessageSize:           c.MaxMessageSize,
		PingInterval:             c.PingInterval,
		PongTimeout:              c.PongTimeout,
		WriteTimeout:             c.WriteTimeout,
		HandshakeTimeout:         c.HandshakeTimeout,
		CloseGrace:               c.CloseGrace,
		MaxQueueBytes:            c.MaxQueueBytes,
		MaxQueueMessages:         c.MaxQueueMessages,
		MaxChannelsPerConnection: c.MaxChannelsPerConnection,
		EnableCompression:        c.Compression,
		Namespaces:               c.Namespaces,
		ConnectTimeout:           c.ConnectTimeout,
		MaxConnections:           c.MaxConnections,
		MaxConnectionsPerUser:    c.MaxConnectionsPerUser,
		MaxConnectionsPerIP:      c.MaxConnectionsPerIP,
		ConnectRatePerIP:         c.ConnectRatePerIP,
		MessageRate:              c.MessageRate,
		MessageBurst:             c.MessageBurst,
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
	// get returns the setting's value in c, in a form that set accepts, so
	// that a reload can tell which settings a new file changes. Secrets are
	// returned as they are: compare them, never print them.
	get func(c *Config) string
}

func (s *setting) flagName() string { return strings.ReplaceAll(s.name, "_", "-") }
func (s *setting) envName() string  { return "HERALD_" + strings.ToUpper(s.name) }

// settings lists every setting of `herald serve`, in the order of the usage text.
var settings = []*setting{
	stringSetting("addr", "ADDR", "TCP address to listen on (port 0 picks a free port)", defaultAddr,
		func(c *Config) *string { return &c.Addr }),
	listSetting("allowed_origins", "ORIGINS",
		"browser origins allowed to connect besides the server's own, comma-separated: https://app.example.com, https://*.example.com",
		"same origin only", func(c *Config) *[]string { return &c.AllowedOrigins }, checkOrigin),
	boolSetting("allow_any_origin", "disable the origin check (lets any web site use your users' cookies)",
		func(c *Config) *bool { return &c.AllowAnyOrigin }),
	stringSetting("tls_cert", "FILE", "PEM certificate (chain) to serve https:// and wss://; needs tls_key", "none (plain HTTP)",
		func(c *Config) *string { return &c.TLSCert }),
	stringSetting("tls_key", "FILE", "PEM private key of tls_cert", "none",
		func(c *Config) *string { return &c.TLSKey }),
	{
		name: "jwt_secret", arg: "SECRET", def: "none", isSecret: true,
		usage: "HMAC secret (at least 32 bytes) that verifies HS256 tokens and turns authentication on; a flag shows in ps: prefer the variable or jwt_secret_file",
		set: func(c *Config, v string) error {
			if err := checkHMACSecret([]byte(v)); err != nil {
				return err
			}
			c.JWTSecret = secret(v)
			return nil
		},
		get: func(c *Config) string { return string(c.JWTSecret) },
	},
	stringSetting("jwt_secret_file", "FILE", "file holding the HMAC secret (trailing newlines ignored); instead of jwt_secret", "none",
		func(c *Config) *string { return &c.JWTSecretFile }),
	stringSetting("jwt_rsa_public_key", "FILE", "PEM RSA public key (or certificate) that verifies RS256 tokens", "none",
		func(c *Config) *string { return &c.JWTRSAPublicKey }),
	stringSetting("jwt_ecdsa_public_key", "FILE", "PEM ECDSA P-256 public key (or certificate) that verifies ES256 tokens", "none",
		func(c *Config) *string { return &c.JWTECDSAPublicKey }),
	{
		name: "jwks_url", arg: "URL", def: "none",
		usage: "JSON Web Key Set to fetch RS256 and ES256 keys from, by kid (refreshed hourly, and at most every 5 minutes on an unknown kid)",
		set: func(c *Config, v string) error {
			v = strings.TrimSpace(v)
			u, err := url.Parse(v)
			if err != nil || (u.Scheme != "https" && u.Scheme != "http") || u.Host == "" {
				return errors.New("want an http:// or https:// URL")
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
	intSetting("read_buffer_size", "read buffer in bytes of a TLS connection (plain connections hold none while idle)", "512",
		func(c *Config) *int { return &c.ReadBufferSize }),
	{
		name: "max_message_size", arg: "BYTES", def: "65536",
		usage: "largest message a client may send, in bytes; a larger one closes the connection with 1009",
		set: func(c *Config, v string) error {
			n, err := parseNonNegative(v)
			if err != nil {
				return err
			}
			c.MaxMessageSize = n
			return nil
		},
		get: func(c *Config) string { return strconv.FormatInt(c.MaxMessageSize, 10) },
	},
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
	intSetting("max_queue_bytes", "outbound queue limit per connection in bytes; past it the client is cut as a slow consumer (4001)", "1048576",
		func(c *Config) *int { return &c.MaxQueueBytes }),
	intSetting("max_queue_messages", "outbound queue limit per connection in messages", "8192",
		func(c *Config) *int { return &c.MaxQueueMessages }),
	intSetting("max_channels_per_connection", "channels one connection may subscribe to", "256",
		func(c *Config) *int { return &c.MaxChannelsPerConnection }),
	intSetting("max_connections", "connections this server accepts; past it the handshake gets 503", "100000",
		func(c *Config) *int { return &c.MaxConnections }),
	intSetting("max_connections_per_user", "connections of one user (429 at the handshake, or close 1008 at connect)", "100",
		func(c *Config) *int { return &c.MaxConnectionsPerUser }),
	intSetting("max_connections_per_ip", "connections from one IP address (429); behind a proxy, all clients share the proxy's IP", "0 (no cap)",
		func(c *Config) *int { return &c.MaxConnectionsPerIP }),
	{
		name: "connect_rate_per_ip", arg: "RATE", def: "1000",
		usage: "new connections per second from one IP address, in bursts of as many (429 with Retry-After); off for no cap",
		set: func(c *Config, v string) error {
			if strings.EqualFold(strings.TrimSpace(v), "off") {
				c.ConnectRatePerIP = -1
				return nil
			}
			r, err := parseRate(v)
			if err != nil {
				return fmt.Errorf("%w, or off", err)
			}
			c.ConnectRatePerIP = r
			return nil
		},
		get: func(c *Config) string {
			if c.ConnectRatePerIP < 0 {
				return "off"
			}
			return strconv.FormatFloat(c.ConnectRatePerIP, 'g', -1, 64)
		},
	},
	{
		name: "message_rate", arg: "RATE", def: "0 (no cap)",
		usage: "messages per second one connection may send; over it: rate_limited errors, then close 4007 (raw: 4007 at once)",
		set: func(c *Config, v string) error {
			r, err := parseRate(v)
			if err != nil {
				return err
			}
			c.MessageRate = r
			return nil
		},
		get: func(c *Config) string { return strconv.FormatFloat(c.MessageRate, 'g', -1, 64) },
	},
	intSetting("message_burst", "messages a connection may send at once within message_rate", "message_rate rounded up",
		func(c *Config) *int { return &c.MessageBurst }),
	boolSetting("compression", "negotiate permessage-deflate with clients that offer it",
		func(c *Config) *bool { return &c.Compression }),
	durationSetting("read_header_timeout", "time a client has to send a request's headers (stops slowloris)", defaultReadHeaderTimeout.String(),
		func(c *Config) *time.Duration { return &c.ReadHeaderTimeout }),
	{
		name: "drain_window", arg: "DURATION", def: defaultDrainWindow.String(),
		usage: "on SIGINT or SIGTERM, fail /readyz and close WebSocket clients with 1012 spread over this window before shutting down; off: 1001 to all at once",
		set: func(c *Config, v string) error {
			if strings.EqualFold(strings.TrimSpace(v), "off") {
				c.DrainWindow = -1
				return nil
			}
			d, err := time.ParseDuration(strings.TrimSpace(v))
			if err != nil || d < 0 {
				return errors.New("want a duration such as 10s or 1m, or off")
			}
			c.DrainWindow = d
			return nil
		},
		get: func(c *Config) string {
			if c.DrainWindow < 0 {
				return "off"
			}
			return c.DrainWindow.String()
		},
	},
	durationSetting("shutdown_timeout", "bound on the graceful shutdown after SIGINT or SIGTERM (after the drain)", defaultShutdownTimeout.String(),
		func(c *Config) *time.Duration { return &c.ShutdownTimeout }),
	{
		name: "broker", arg: "KIND", def: "memory",
		usage: "what joins nodes: memory (this node alone), redis or nats",
		set: func(c *Config, v string) error {
			switch v = strings.ToLower(strings.TrimSpace(v)); v {
			case "memory", "redis", "nats":
				c.Broker = v
				return nil
			}
			return errors.New("want memory, redis or nats")
		},
		get: func(c *Config) string { return c.Broker },
	},
	urlSetting("redis_url", "Redis server for broker redis: redis://[user:password@]host:port/db, or rediss:// for TLS", defaultRedisURL,
		[]string{"redis", "rediss", "unix"}, func(c *Config) *string { return &c.RedisURL }),
	{
		name: "redis_addr", arg: "HOST:PORT", def: "none",
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
		name: "broker_prefix", arg: "PREFIX", def: defaultBrokerPrefix,
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
	{
		name: "api_key", arg: "KEY", def: "none (no API)", isSecret: true,
		usage: "key (at least 16 bytes) of the HTTP API, which it turns on at /api/; a flag shows in ps: prefer the variable or api_key_file",
		set: func(c *Config, v string) error {
			if err := checkAPIKey([]byte(v)); err != nil {
				return err
			}
			c.APIKey = secret(v)
			return nil
		},
		get: func(c *Config) string { return string(c.APIKey) },
	},
	stringSetting("api_key_file", "FILE", "file holding the API key (trailing newlines ignored); instead of api_key", "none",
		func(c *Config) *string { return &c.APIKeyFile }),
	withDefault(boolSetting("metrics", "serve Prometheus metrics at /metrics (--metrics=false to turn them off)",
		func(c *Config) *bool { return &c.Metrics }), "true"),
	{
		name: "admin_password", arg: "PASSWORD", def: "none (no dashboard)", isSecret: true,
		usage: "password (at least 12 bytes) of the admin dashboard, which it turns on at /admin; a flag shows in ps: prefer the variable or admin_password_file",
		set: func(c *Config, v string) error {
			if err := checkAdminPassword([]byte(v)); err != nil {
				return err
			}
			c.AdminPassword = secret(v)
			return nil
		},
		get: func(c *Config) string { return string(c.AdminPassword) },
	},
	stringSetting("admin_password_file", "FILE", "file holding the admin password (trailing newlines ignored); instead of admin_password", "none",
		func(c *Config) *string { return &c.AdminPasswordFile }),
	{
		name: "log_format", arg: "FORMAT", def: "text", usage: "log format: text or json",
		set: func(c *Config, v string) error {
			switch v = strings.ToLower(strings.TrimSpace(v)); v {
			case "text", "json":
				c.LogFormat = v
				return nil
			}
			return errors.New("want text or json")
		},
		get: func(c *Config) string { return c.LogFormat },
	},
	{
		name: "log_level", arg: "LEVEL", def: "info", usage: "least severe level logged: debug, info, warn or error",
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
}

func stringSetting(name, arg, usage, def string, field func(*Config) *string) *setting {
	return &setting{name: name, arg: arg, usage: usage, def: def, set: func(c *Config, v string) error {
		v = strings.TrimSpace(v)
		if v == "" {
			return errors.New("must not be empty")
		}
		*field(c) = v
		return nil
	}, get: func(c *Config) string { return *field(c) }}
}

// withDefault sets the default shown in the usage text, for a setting whose
// default is not its type's zero value.
func withDefault(s *setting, def string) *setting {
	s.def = def
	return s
}

// urlSetting is a URL whose scheme must be one of schemes. Comma-separated
// lists (NATS takes several servers) are checked item by item.
func urlSetting(name, usage, def string, schemes []string, field func(*Config) *string) *setting {
	return &setting{name: name, arg: "URL", usage: usage, def: def, redact: redactURLs, set: func(c *Config, v string) error {
		v = strings.TrimSpace(v)
		for _, item := range strings.Split(v, ",") {
			u, err := url.Parse(strings.TrimSpace(item))
			if err != nil || !slices.Contains(schemes, u.Scheme) || (u.Host == "" && u.Scheme != "unix") {
				// The URL may hold a password: the error does not quote it.
				return fmt.Errorf("want a URL with scheme %s", strings.Join(schemes, ", "))
			}
		}
		*field(c) = v
		return nil
	}, get: func(c *Config) string { return *field(c) }}
}

func boolSetting(name, usage string, field func(*Config) *bool) *setting {
	return &setting{name: name, usage: usage, def: "false", isBool: true, set: func(c *Config, v string) error {
		b, err := strconv.ParseBool(strings.TrimSpace(v))
		if err != nil {
			return errors.New("want true or false")
		}
		*field(c) = b
		return nil
	}, get: func(c *Config) string { return strconv.FormatBool(*field(c)) }}
}

func intSetting(name, usage, def string, field func(*Config) *int) *setting {
	return &setting{name: name, arg: "N", usage: usage, def: def, set: func(c *Config, v string) error {
		n, err := parseNonNegative(v)
		if err != nil {
			return err
		}
		if int64(int(n)) != n {
			return errors.New("too large")
		}
		*field(c) = int(n)
		return nil
	}, get: func(c *Config) string { return strconv.Itoa(*field(c)) }}
}

func durationSetting(name, usage, def string, field func(*Config) *time.Duration) *setting {
	return &setting{name: name, arg: "DURATION", usage: usage, def: def, set: func(c *Config, v string) error {
		d, err := time.ParseDuration(strings.TrimSpace(v))
		if err != nil {
			return errors.New("want a duration such as 500ms, 30s or 1m30s")
		}
		if d < 0 {
			return errors.New("must not be negative")
		}
		*field(c) = d
		return nil
	}, get: func(c *Config) string { return field(c).String() }}
}

func listSetting(name, arg, usage, def string, field func(*Config) *[]string, check func(string) error) *setting {
	s := &setting{name: name, arg: arg, usage: usage, def: def,
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

// parseNonNegative parses a size or count. Zero is allowed: it means the
// library default.
func parseNonNegative(v string) (int64, error) {
	n, err := strconv.ParseInt(strings.TrimSpace(v), 10, 64)
	if err != nil {
		return 0, errors.New("want a whole number")
	}
	if n < 0 {
		return 0, errors.New("must not be negative")
	}
	return n, nil
}

// parseRate parses a number of events per second. Zero is allowed: it means
// the library default.
func parseRate(v string) (float64, error) {
	r, err := strconv.ParseFloat(strings.TrimSpace(v), 64)
	if err != nil || math.IsNaN(r) || math.IsInf(r, 0) {
		return 0, errors.New("want a number per second, such as 50 or 0.5")
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
	fs := flag.NewFlagSet("serve", flag.ContinueOnError)
	// The flag package would print errors and usage itself; the caller
	// prints the error once, and usage only on request.
	fs.SetOutput(io.Discard)
	fs.Usage = func() {}

	// Flags are applied last (highest precedence) but parsed first, since
	// they may name the config file. Values are kept as given.
	type flagValue struct {
		s *setting
		v string
	}
	var flagged []flagValue
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
	configPath := fs.String("config", "", "YAML config file")
	if err := fs.Parse(args); err != nil {
		if errors.Is(err, flag.ErrHelp) {
			writeServeUsage(usageOut)
			return Config{}, err
		}
		return Config{}, fmt.Errorf("failed to parse serve arguments: %w (see herald help serve)", err)
	}
	if fs.NArg() > 0 {
		return Config{}, fmt.Errorf("serve takes no arguments, got %q (see herald help serve)", fs.Args())
	}

	// Variables that start with HERALD_ but name no setting are ignored, not
	// refused: they may be meant for something else (the test suite's
	// HERALD_TEST_REDIS, for one).
	envVars := make(map[string]string)
	for _, kv := range env {
		if k, v, ok := strings.Cut(kv, "="); ok && strings.HasPrefix(k, "HERALD_") {
			envVars[k] = v
		}
	}

	cfg := defaultConfig()

	path := *configPath
	if path == "" {
		path = envVars["HERALD_CONFIG"]
	}
	if path != "" {
		if err := applyConfigFile(&cfg, path); err != nil {
			return Config{}, err
		}
	}

	// An empty variable counts as unset, as it does in most deployment
	// tools, where "HERALD_X=" is how an optional value is left out.
	for _, s := range settings {
		if v := envVars[s.envName()]; v != "" {
			if err := s.set(&cfg, v); err != nil {
				return Config{}, settingError(s, "env "+s.envName(), v, err)
			}
		}
	}

	for _, f := range flagged {
		if err := f.s.set(&cfg, f.v); err != nil {
			return Config{}, settingError(f.s, "flag --"+f.s.flagName(), f.v, err)
		}
		switch f.s.name {
		case "jwt_secret":
			cfg.secretOnCommandLine = true
		case "api_key", "admin_password":
			cfg.onCommandLine = append(cfg.onCommandLine, f.s.name)
		}
	}
	if err := cfg.validate(); err != nil {
		return Config{}, err
	}
	return cfg, nil
}

// authEnabled reports whether a key is configured: token authentication is on.
func (c *Config) authEnabled() bool {
	return c.JWTSecret != "" || c.JWTSecretFile != "" || c.JWTRSAPublicKey != "" || c.JWTECDSAPublicKey != "" || c.JWKSURL != ""
}

// validate checks the rules that span several settings, once every source
// has been applied.
func (c *Config) validate() error {
	if (c.TLSCert == "") != (c.TLSKey == "") {
		return errors.New("tls_cert and tls_key go together: set both to serve https:// and wss://, or neither for plain HTTP")
	}
	if c.JWTSecret != "" && c.JWTSecretFile != "" {
		return errors.New("jwt_secret and jwt_secret_file both set: set one of them")
	}
	if !c.authEnabled() {
		var orphans []string
		if c.JWTIssuer != "" {
			orphans = append(orphans, "jwt_issuer")
		}
		if c.JWTAudience != "" {
			orphans = append(orphans, "jwt_audience")
		}
		if c.ConnectTimeout != 0 {
			orphans = append(orphans, "connect_timeout")
		}
		if len(orphans) > 0 {
			return fmt.Errorf("%s set, but token authentication is off: set a key too (%s)", strings.Join(orphans, " and "), keySettings)
		}
	}
	if c.MessageBurst != 0 && c.MessageRate == 0 {
		return errors.New("message_burst set without message_rate: set message_rate too")
	}
	if c.APIKey != "" && c.APIKeyFile != "" {
		return errors.New("api_key and api_key_file both set: set one of them")
	}
	if c.AdminPassword != "" && c.AdminPasswordFile != "" {
		return errors.New("admin_password and admin_password_file both set: set one of them")
	}
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
	return nil
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
	if c.APIKeyFile == "" {
		return string(c.APIKey), nil
	}
	b, err := readSecret(c.APIKeyFile, checkAPIKey)
	if err != nil {
		return "", fmt.Errorf("invalid api_key_file %s: %w", c.APIKeyFile, err)
	}
	return string(b), nil
}

// adminPassword returns the dashboard's password, read from
// admin_password_file if that is set; "" means the dashboard is off.
func (c *Config) adminPassword() (string, error) {
	if c.AdminPasswordFile == "" {
		return string(c.AdminPassword), nil
	}
	b, err := readSecret(c.AdminPasswordFile, checkAdminPassword)
	if err != nil {
		return "", fmt.Errorf("invalid admin_password_file %s: %w", c.AdminPasswordFile, err)
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

// fileSettings is the config file's schema. Each field holds the raw YAML
// node so that file values go through the same parsers as flags and
// variables; decoding into a struct with KnownFields(true) makes an unknown
// key an error. Its tags must match the names in settings (a test checks).
type fileSettings struct {
	Addr                     yaml.Node `yaml:"addr"`
	AllowedOrigins           yaml.Node `yaml:"allowed_origins"`
	AllowAnyOrigin           yaml.Node `yaml:"allow_any_origin"`
	ReadBufferSize           yaml.Node `yaml:"read_buffer_size"`
	MaxMessageSize           yaml.Node `yaml:"max_message_size"`
	PingInterval             yaml.Node `yaml:"ping_interval"`
	PongTimeout              yaml.Node `yaml:"pong_timeout"`
	WriteTimeout             yaml.Node `yaml:"write_timeout"`
	HandshakeTimeout         yaml.Node `yaml:"handshake_timeout"`
	CloseGrace               yaml.Node `yaml:"close_grace"`
	MaxQueueBytes            yaml.Node `yaml:"max_queue_bytes"`
	MaxQueueMessages         yaml.Node `yaml:"max_queue_messages"`
	MaxChannelsPerConnection yaml.Node `yaml:"max_channels_per_connection"`
	Compression              yaml.Node `yaml:"compression"`
	TLSCert                  yaml.Node `yaml:"tls_cert"`
	TLSKey                   yaml.Node `yaml:"tls_key"`
	JWTSecret                yaml.Node `yaml:"jwt_secret"`
	JWTSecretFile            yaml.Node `yaml:"jwt_secret_file"`
	JWTRSAPublicKey          yaml.Node `yaml:"jwt_rsa_public_key"`
	JWTECDSAPublicKey        yaml.Node `yaml:"jwt_ecdsa_public_key"`
	JWKSURL                  yaml.Node `yaml:"jwks_url"`
	JWTIssuer                yaml.Node `yaml:"jwt_issuer"`
	JWTAudience              yaml.Node `yaml:"jwt_audience"`
	ConnectTimeout           yaml.Node `yaml:"connect_timeout"`
	MaxConnections           yaml.Node `yaml:"max_connections"`
	MaxConnectionsPerUser    yaml.Node `yaml:"max_connections_per_user"`
	MaxConnectionsPerIP      yaml.Node `yaml:"max_connections_per_ip"`
	ConnectRatePerIP         yaml.Node `yaml:"connect_rate_per_ip"`
	MessageRate              yaml.Node `yaml:"message_rate"`
	MessageBurst             yaml.Node `yaml:"message_burst"`
	ReadHeaderTimeout        yaml.Node `yaml:"read_header_timeout"`
	ShutdownTimeout          yaml.Node `yaml:"shutdown_timeout"`
	DrainWindow              yaml.Node `yaml:"drain_window"`
	Broker                   yaml.Node `yaml:"broker"`
	RedisURL                 yaml.Node `yaml:"redis_url"`
	RedisAddr                yaml.Node `yaml:"redis_addr"`
	NATSURL                  yaml.Node `yaml:"nats_url"`
	BrokerPrefix             yaml.Node `yaml:"broker_prefix"`
	APIKey                   yaml.Node `yaml:"api_key"`
	APIKeyFile               yaml.Node `yaml:"api_key_file"`
	Metrics                  yaml.Node `yaml:"metrics"`
	AdminPassword            yaml.Node `yaml:"admin_password"`
	AdminPasswordFile        yaml.Node `yaml:"admin_password_file"`
	LogFormat                yaml.Node `yaml:"log_format"`
	LogLevel                 yaml.Node `yaml:"log_level"`

	// Namespaces is structured, so it lives in the file only (no flag or
	// variable) and is decoded directly, unknown keys included as errors.
	Namespaces []namespaceSetting `yaml:"namespaces"`
}

// namespaceSetting is one entry of the file's namespaces list; see
// herald.Namespace for the meaning of each field. The permissions are kept
// as nodes so that an invalid one is reported with its line.
type namespaceSetting struct {
	Name           string        `yaml:"name"`
	HistorySize    int           `yaml:"history_size"`
	HistoryTTL     time.Duration `yaml:"history_ttl"`
	Presence       bool          `yaml:"presence"`
	JoinLeave      bool          `yaml:"join_leave"`
	AllowSubscribe yaml.Node     `yaml:"allow_subscribe"`
	AllowPublish   yaml.Node     `yaml:"allow_publish"`
	AllowPresence  yaml.Node     `yaml:"allow_presence"`
	AllowHistory   yaml.Node     `yaml:"allow_history"`
}

// namespace converts the entry, checking its permissions.
func (ns *namespaceSetting) namespace(path string) (herald.Namespace, error) {
	n := herald.Namespace{
		Name: ns.Name, HistorySize: ns.HistorySize, HistoryTTL: ns.HistoryTTL,
		Presence: ns.Presence, JoinLeave: ns.JoinLeave,
	}
	for _, p := range []struct {
		key  string
		node *yaml.Node
		dst  *herald.Permission
	}{
		{"allow_subscribe", &ns.AllowSubscribe, &n.AllowSubscribe},
		{"allow_publish", &ns.AllowPublish, &n.AllowPublish},
		{"allow_presence", &ns.AllowPresence, &n.AllowPresence},
		{"allow_history", &ns.AllowHistory, &n.AllowHistory},
	} {
		if p.node.Kind == 0 || (p.node.Kind == yaml.ScalarNode && p.node.Tag == "!!null") {
			continue // absent or empty: the default (see herald.Namespace)
		}
		value := p.node.Value
		if p.node.Kind != yaml.ScalarNode {
			value = "(" + kindName(p.node.Kind) + ")"
		}
		perm, err := parsePermission(p.node)
		if err != nil {
			return n, &SettingError{
				Setting: fmt.Sprintf("%s of namespace %q", p.key, ns.Name),
				Source:  fmt.Sprintf("config file %s line %d", path, p.node.Line),
				Value:   value, Err: err,
			}
		}
		*p.dst = perm
	}
	return n, nil
}

func parsePermission(n *yaml.Node) (herald.Permission, error) {
	if n.Kind == yaml.ScalarNode {
		switch p := herald.Permission(strings.ToLower(strings.TrimSpace(n.Value))); p {
		case herald.PermAnyone, herald.PermAuthenticated, herald.PermGranted, herald.PermNobody:
			return p, nil
		}
	}
	return "", errors.New("want anyone, authenticated, granted or nobody")
}

// nodes returns the file's nodes by setting name.
func (f *fileSettings) nodes() map[string]*yaml.Node {
	m := make(map[string]*yaml.Node)
	v := reflect.ValueOf(f).Elem()
	for i := range v.NumField() {
		if n, ok := v.Field(i).Addr().Interface().(*yaml.Node); ok {
			m[v.Type().Field(i).Tag.Get("yaml")] = n
		}
	}
	return m
}

// applyConfigFile applies the settings present in the YAML file at path.
func applyConfigFile(cfg *Config, path string) error {
	data, err := os.ReadFile(path)
	if err != nil {
		return fmt.Errorf("failed to read config file: %w", err)
	}
	var fset fileSettings
	dec := yaml.NewDecoder(bytes.NewReader(data))
	dec.KnownFields(true)
	if err := dec.Decode(&fset); err != nil && !errors.Is(err, io.EOF) { // EOF: an empty file
		return fmt.Errorf("failed to parse config file %s: %w", path, err)
	}
	for i := range fset.Namespaces {
		ns, err := fset.Namespaces[i].namespace(path)
		if err != nil {
			return err
		}
		cfg.Namespaces = append(cfg.Namespaces, ns)
	}
	nodes := fset.nodes()
	for _, s := range settings {
		n := nodes[s.name]
		if n == nil {
			panic("config: setting " + s.name + " has no field in fileSettings")
		}
		if n.Kind == 0 || (n.Kind == yaml.ScalarNode && n.Tag == "!!null") {
			continue // absent, or written with no value: keep the default
		}
		source := fmt.Sprintf("config file %s line %d", path, n.Line)
		switch {
		case n.Kind == yaml.ScalarNode:
			if err := s.set(cfg, n.Value); err != nil {
				return settingError(s, source, n.Value, err)
			}
		case n.Kind == yaml.SequenceNode && s.setList != nil:
			items := make([]string, 0, len(n.Content))
			for _, it := range n.Content {
				if it.Kind != yaml.ScalarNode {
					return &SettingError{Setting: s.name, Source: source, Value: "(" + kindName(it.Kind) + ")", Err: errors.New("want a list of strings")}
				}
				items = append(items, it.Value)
			}
			if err := s.setList(cfg, items); err != nil {
				return settingError(s, source, strings.Join(items, ","), err)
			}
		default:
			want := "a single value"
			if s.setList != nil {
				want = "a list of strings"
			}
			return &SettingError{Setting: s.name, Source: source, Value: "(" + kindName(n.Kind) + ")", Err: errors.New("want " + want)}
		}
	}
	return nil
}

func kindName(k yaml.Kind) string {
	switch k {
	case yaml.MappingNode:
		return "a mapping"
	case yaml.SequenceNode:
		return "a list"
	case yaml.AliasNode:
		return "an alias"
	default:
		return "a scalar"
	}
}

// writeServeUsage writes the help text of `herald serve`.
func writeServeUsage(w io.Writer) {
	var b strings.Builder
	b.WriteString(`Usage: herald serve [flags]

Runs a Herald server: the WebSocket protocol endpoint at /ws (subprotocol
herald.v1), raw relay mode at /ws/raw?channel=NAME, a demo chat page at /,
health checks at /healthz (alive) and /readyz (ready for new clients), and
Prometheus metrics at /metrics. With api_key, the HTTP API at /api/ (see
herald help pub); with admin_password, the admin dashboard at /admin. With
--tls-cert and --tls-key it serves https:// and wss://.

With broker redis or nats, several servers share channels, presence and
history. On SIGINT or SIGTERM the server drains (drain_window), then shuts
down (shutdown_timeout). SIGHUP reloads log_level, api_key, admin_password,
metrics, drain_window, shutdown_timeout, the TLS certificate, the connection
limits and message rate, allowed_origins, allow_any_origin and namespaces (open connections
and subscriptions stay), and logs every other changed setting as needing a
restart.

Without a key (jwt_secret_file, jwt_secret, jwt_rsa_public_key,
jwt_ecdsa_public_key or jwks_url) the server is OPEN: anyone who reaches it
may connect, subscribe and publish on every channel. With one, clients
authenticate with tokens (herald token mints one for development), and
namespaces admit authenticated users only unless their allow_* settings say
otherwise. See docs/security.md.

Each setting is read from its flag, else from its environment variable, else
from the YAML config file (same name as the flag, with underscores), else
from its default. Durations are Go durations (500ms, 30s, 1m30s); sizes are
in bytes; zero means the default.

  --config FILE
        YAML config file
        env HERALD_CONFIG, default none
`)
	for _, s := range settings {
		head := "  --" + s.flagName()
		if s.arg != "" {
			head += " " + s.arg
		}
		fmt.Fprintf(&b, "%s\n        %s\n        env %s, default %s\n", head, s.usage, s.envName(), s.def)
	}
	_, _ = io.WriteString(w, b.String())
}
