package main

import (
	"context"
	"encoding/json"
	"errors"
	"flag"
	"fmt"
	"io"
	"log/slog"
	"net/netip"
	"os"
	"path/filepath"
	"reflect"
	"slices"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/heraldhq/herald"
)

func writeFile(t *testing.T, content string) string {
	t.Helper()
	path := filepath.Join(t.TempDir(), "herald.yaml")
	if err := os.WriteFile(path, []byte(content), 0o600); err != nil {
		t.Fatal(err)
	}
	return path
}

// TestConfigPrecedence proves flag > env > file > default, for a setting of
// each kind.
func TestConfigPrecedence(t *testing.T) {
	t.Parallel()
	type row struct {
		setting         string
		file, env, flag string // as written in each source
		get             func(Config) any
		def, inFile     any
		inEnv, inFlag   any
		// also holds variables set in every case, for settings that need
		// another one (a key, for jwt_issuer).
		also []string
	}
	const key = "HERALD_JWT_SECRET=0123456789abcdef0123456789abcdef"
	rows := []row{
		{"addr", `":9000"`, ":9001", ":9002", func(c Config) any { return c.Addr },
			":8080", ":9000", ":9001", ":9002", nil},
		{"ping_interval", "5s", "6s", "7s", func(c Config) any { return c.PingInterval },
			time.Duration(0), 5 * time.Second, 6 * time.Second, 7 * time.Second, nil},
		{"read_header_timeout", "1s", "2s", "200ms", func(c Config) any { return c.ReadHeaderTimeout },
			10 * time.Second, time.Second, 2 * time.Second, 200 * time.Millisecond, nil},
		{"shutdown_timeout", "1m", "2m", "3m", func(c Config) any { return c.ShutdownTimeout },
			10 * time.Second, time.Minute, 2 * time.Minute, 3 * time.Minute, nil},
		{"max_message_size", "1000", "2000", "3000", func(c Config) any { return c.MaxMessageSize },
			int64(0), int64(1000), int64(2000), int64(3000), nil},
		{"max_queue_messages", "10", "20", "30", func(c Config) any { return c.MaxQueueMessages },
			0, 10, 20, 30, nil},
		{"compression", "true", "false", "true", func(c Config) any { return c.Compression },
			false, true, false, true, nil},
		{"allowed_origins", "[https://a.example, 'https://*.b.example']", "https://c.example", "https://d.example,https://e.example",
			func(c Config) any { return c.AllowedOrigins },
			[]string(nil), []string{"https://a.example", "https://*.b.example"}, []string{"https://c.example"},
			[]string{"https://d.example", "https://e.example"}, nil},
		{"log_level", "debug", "warn", "error", func(c Config) any { return c.LogLevel },
			slog.LevelInfo, slog.LevelDebug, slog.LevelWarn, slog.LevelError, nil},
		{"log_format", "json", "text", "json", func(c Config) any { return c.LogFormat },
			"text", "json", "text", "json", nil},
		{"jwt_secret", "file-secret-of-at-least-32-bytes!", "env-secret-of-at-least-32-bytes!!", "flag-secret-of-at-least-32-bytes!",
			func(c Config) any { return string(c.JWTSecret) },
			"", "file-secret-of-at-least-32-bytes!", "env-secret-of-at-least-32-bytes!!", "flag-secret-of-at-least-32-bytes!", nil},
		{"jwt_secret_file", "/a", "/b", "/c", func(c Config) any { return c.JWTSecretFile }, "", "/a", "/b", "/c", nil},
		{"jwt_rsa_public_key", "/a.pem", "/b.pem", "/c.pem", func(c Config) any { return c.JWTRSAPublicKey },
			"", "/a.pem", "/b.pem", "/c.pem", nil},
		{"jwt_ecdsa_public_key", "/a.pem", "/b.pem", "/c.pem", func(c Config) any { return c.JWTECDSAPublicKey },
			"", "/a.pem", "/b.pem", "/c.pem", nil},
		{"jwks_url", "https://a.example/jwks", "https://b.example/jwks", "http://127.0.0.1:1/jwks", func(c Config) any { return c.JWKSURL },
			"", "https://a.example/jwks", "https://b.example/jwks", "http://127.0.0.1:1/jwks", nil},
		{"jwt_issuer", "iss-a", "iss-b", "iss-c", func(c Config) any { return c.JWTIssuer }, "", "iss-a", "iss-b", "iss-c", []string{key}},
		{"jwt_audience", "aud-a", "aud-b", "aud-c", func(c Config) any { return c.JWTAudience }, "", "aud-a", "aud-b", "aud-c", []string{key}},
		{"connect_timeout", "1s", "2s", "3s", func(c Config) any { return c.ConnectTimeout },
			time.Duration(0), time.Second, 2 * time.Second, 3 * time.Second, []string{key}},
		{"max_connections", "10", "20", "30", func(c Config) any { return c.MaxConnections }, 0, 10, 20, 30, nil},
		{"max_connections_per_user", "1", "2", "3", func(c Config) any { return c.MaxConnectionsPerUser }, 0, 1, 2, 3, nil},
		{"max_connections_per_ip", "4", "5", "6", func(c Config) any { return c.MaxConnectionsPerIP }, 0, 4, 5, 6, nil},
		{"connect_rate_per_ip", "0.5", "off", "7", func(c Config) any { return c.ConnectRatePerIP }, 0.0, 0.5, -1.0, 7.0, nil},
		{"message_rate", "10", "2.5", "100", func(c Config) any { return c.MessageRate }, 0.0, 10.0, 2.5, 100.0, nil},
		{"message_burst", "10", "20", "30", func(c Config) any { return c.MessageBurst }, 0, 10, 20, 30, []string{"HERALD_MESSAGE_RATE=1"}},
		{"drain_window", "1s", "off", "0s", func(c Config) any { return c.DrainWindow },
			10 * time.Second, time.Second, time.Duration(-1), time.Duration(0), nil},
		{"broker", "redis", "nats", "memory", func(c Config) any { return c.Broker }, "memory", "redis", "nats", "memory", nil},
		{"redis_url", "redis://a:1/0", "rediss://u:p@b:2/1", "redis://c:3", func(c Config) any { return c.RedisURL },
			"", "redis://a:1/0", "rediss://u:p@b:2/1", "redis://c:3", []string{"HERALD_BROKER=redis"}},
		{"redis_addr", "a:1", "b:2", "c:3", func(c Config) any { return c.RedisAddr }, "", "a:1", "b:2", "c:3", []string{"HERALD_BROKER=redis"}},
		{"nats_url", "nats://a:1", "nats://b:2,nats://c:3", "tls://d:4", func(c Config) any { return c.NATSURL },
			"", "nats://a:1", "nats://b:2,nats://c:3", "tls://d:4", []string{"HERALD_BROKER=nats"}},
		{"broker_prefix", "a", "b_2", "c-3", func(c Config) any { return c.BrokerPrefix }, "herald", "a", "b_2", "c-3", nil},
		// How fast a dead broker link is noticed (broker.go passes them to
		// redisbroker.Options.PingTimeout and natsbroker.Options.PingInterval).
		{"redis_ping_timeout", "5s", "6s", "1500ms", func(c Config) any { return c.RedisPingTimeout },
			3 * time.Second, 5 * time.Second, 6 * time.Second, 1500 * time.Millisecond, nil},
		{"nats_ping_interval", "4s", "5s", "500ms", func(c Config) any { return c.NATSPingInterval },
			2 * time.Second, 4 * time.Second, 5 * time.Second, 500 * time.Millisecond, nil},
		{"api_key", "file-api-key-0123456789", "env-api-key-0123456789", "flag-api-key-0123456789",
			func(c Config) any { return string(c.APIKey) }, "", "file-api-key-0123456789", "env-api-key-0123456789", "flag-api-key-0123456789", nil},
		{"api_key_file", "/a", "/b", "/c", func(c Config) any { return c.APIKeyFile }, "", "/a", "/b", "/c", nil},
		{"metrics", "false", "true", "false", func(c Config) any { return c.Metrics }, true, false, true, false, nil},
		{"admin_password", "file password!", "env password!!", "flag password!",
			func(c Config) any { return string(c.AdminPassword) }, "", "file password!", "env password!!", "flag password!", nil},
		{"admin_password_file", "/a", "/b", "/c", func(c Config) any { return c.AdminPasswordFile }, "", "/a", "/b", "/c", nil},
	}
	for _, r := range rows {
		s := lookupSetting(t, r.setting)
		file := writeFile(t, r.setting+": "+r.file+"\n")
		flagArg := "--" + s.flagName() + "=" + r.flag
		envVar := s.envName() + "=" + r.env
		for _, c := range []struct {
			name string
			args []string
			env  []string
			want any
		}{
			{"default", nil, nil, r.def},
			{"file", []string{"--config", file}, nil, r.inFile},
			{"env over default", nil, []string{envVar}, r.inEnv},
			{"env over file", []string{"--config", file}, []string{envVar}, r.inEnv},
			{"flag over file", []string{"--config", file, flagArg}, nil, r.inFlag},
			{"flag over env and file", []string{"--config", file, flagArg}, []string{envVar}, r.inFlag},
			{"file named by env", nil, []string{"HERALD_CONFIG=" + file}, r.inFile},
		} {
			t.Run(r.setting+"/"+c.name, func(t *testing.T) {
				cfg, err := parseServeConfig(c.args, append(slices.Clip(r.also), c.env...), io.Discard)
				if err != nil {
					t.Fatal(err)
				}
				if got := r.get(cfg); !reflect.DeepEqual(got, c.want) {
					t.Fatalf("got %#v, want %#v", got, c.want)
				}
			})
		}
	}
}

func lookupSetting(t *testing.T, name string) *setting {
	t.Helper()
	for _, s := range settings {
		if s.name == name {
			return s
		}
	}
	t.Fatalf("no setting %q", name)
	return nil
}

// TestConfigFileFlagOverEnv: --config beats HERALD_CONFIG, like any setting.
func TestConfigFileFlagOverEnv(t *testing.T) {
	t.Parallel()
	fromEnv, fromFlag := writeFile(t, "addr: :1111\n"), writeFile(t, "addr: :2222\n")
	cfg, err := parseServeConfig([]string{"--config", fromFlag}, []string{"HERALD_CONFIG=" + fromEnv}, io.Discard)
	if err != nil {
		t.Fatal(err)
	}
	if cfg.Addr != ":2222" {
		t.Fatalf("addr %q: the file named by the flag should win", cfg.Addr)
	}
}

// TestConfigEveryNodeSetting maps a file that sets everything onto
// herald.Config.
func TestConfigEveryNodeSetting(t *testing.T) {
	t.Parallel()
	file := writeFile(t, `# every setting
addr: 127.0.0.1:7000
allowed_origins:
  - https://app.example.com
  - https://*.example.net
allow_any_origin: true
read_buffer_size: 1024
max_message_size: 131072
ping_interval: 20s
pong_timeout: 5s
write_timeout: 3s
handshake_timeout: 4s
close_grace: 1500ms
max_queue_bytes: 2097152
max_queue_messages: 100
max_channels_per_connection: 8
compression: true
read_header_timeout: 2s
shutdown_timeout: 30s
log_format: json
log_level: debug
tls_cert: /etc/herald/cert.pem
tls_key: /etc/herald/key.pem
jwt_secret_file: /run/secrets/herald
jwt_rsa_public_key: /etc/herald/rsa.pem
jwt_ecdsa_public_key: /etc/herald/ec.pem
jwks_url: https://auth.example/jwks.json
jwt_issuer: https://auth.example
jwt_audience: herald
connect_timeout: 3s
max_connections: 5000
max_connections_per_user: 7
max_connections_per_ip: 50
connect_rate_per_ip: 2.5
message_rate: 30
message_burst: 60
trusted_proxies: [10.0.0.0/8, "::1"]
forwarded_header: Forwarded
namespaces:
  - name: ""
  - name: chat
    history_size: 10
    delta: fossil
    allow_subscribe: anyone
    allow_publish: Authenticated
    allow_presence: granted
    allow_history: nobody
`)
	cfg, err := parseServeConfig([]string{"--config", file}, nil, io.Discard)
	if err != nil {
		t.Fatal(err)
	}
	logger := slog.New(slog.DiscardHandler)
	got := cfg.nodeConfig(logger)
	want := herald.Config{
		Logger:            logger,
		AllowedOrigins:    []string{"https://app.example.com", "https://*.example.net"},
		AllowAnyOrigin:    true,
		TrustedProxies:    []netip.Prefix{netip.MustParsePrefix("10.0.0.0/8"), netip.MustParsePrefix("::1/128")},
		ForwardedHeader:   "forwarded",
		ReadBufferSize:    1024,
		MaxMessageSize:    131072,
		PingInterval:      20 * time.Second,
		PongTimeout:       5 * time.Second,
		WriteTimeout:      3 * time.Second,
		HandshakeTimeout:  4 * time.Second,
		CloseGrace:        1500 * time.Millisecond,
		MaxQueueBytes:     2 << 20,
		MaxQueueMessages:  100,
		EnableCompression: true,
		ConnectTimeout:    3 * time.Second,
		Limits: herald.Limits{
			MaxConnections:           5000,
			MaxConnectionsPerUser:    7,
			MaxConnectionsPerIP:      50,
			ConnectRatePerIP:         2.5,
			MaxChannelsPerConnection: 8,
			MessageRate:              30,
			MessageBurst:             60,
		},
		Namespaces: []herald.Namespace{{Name: ""}, {Name: "chat", HistorySize: 10, Delta: herald.DeltaFossil,
			AllowSubscribe: herald.PermAnyone, AllowPublish: herald.PermAuthenticated,
			AllowPresence: herald.PermGranted, AllowHistory: herald.PermNobody}},
	}
	if !reflect.DeepEqual(got, want) {
		t.Fatalf("node config\n got %+v\nwant %+v", got, want)
	}
	if cfg.Addr != "127.0.0.1:7000" || cfg.ReadHeaderTimeout != 2*time.Second || cfg.ShutdownTimeout != 30*time.Second ||
		cfg.LogFormat != "json" || cfg.LogLevel != slog.LevelDebug ||
		cfg.TLSCert != "/etc/herald/cert.pem" || cfg.TLSKey != "/etc/herald/key.pem" {
		t.Fatalf("server settings: %+v", cfg)
	}
	if cfg.JWTSecretFile != "/run/secrets/herald" || cfg.JWTRSAPublicKey != "/etc/herald/rsa.pem" ||
		cfg.JWTECDSAPublicKey != "/etc/herald/ec.pem" || cfg.JWKSURL != "https://auth.example/jwks.json" ||
		cfg.JWTIssuer != "https://auth.example" || cfg.JWTAudience != "herald" {
		t.Fatalf("auth settings: %+v", cfg)
	}
	if _, err := herald.New(got); err != nil {
		t.Fatalf("herald.New rejects the mapped config: %v", err)
	}
}

// TestConfigExampleFile keeps the documented example valid.
func TestConfigExampleFile(t *testing.T) {
	t.Parallel()
	cfg, err := parseServeConfig([]string{"--config", "herald.example.yaml"}, nil, io.Discard)
	if err != nil {
		t.Fatal(err)
	}
	want := defaultConfig()
	want.AllowedOrigins = []string{"https://app.example.com", "https://*.example.com"}
	want.ReadBufferSize, want.MaxMessageSize = 512, 65536
	want.PingInterval, want.PongTimeout = 25*time.Second, 10*time.Second
	want.WriteTimeout, want.HandshakeTimeout, want.CloseGrace = 10*time.Second, 10*time.Second, 2*time.Second
	want.MaxQueueBytes, want.MaxQueueMessages, want.MaxChannelsPerConnection = 1<<20, 8192, 256
	want.MaxConnections, want.MaxConnectionsPerUser, want.ConnectRatePerIP = 100000, 100, 1000
	want.Namespaces = []herald.Namespace{
		{Name: ""},
		{Name: "chat", HistorySize: 100, HistoryTTL: 10 * time.Minute, Presence: true, JoinLeave: true},
		{Name: "news", AllowSubscribe: herald.PermAnyone, AllowPublish: herald.PermNobody, AllowHistory: herald.PermAnyone, HistorySize: 20},
		{Name: "private", AllowSubscribe: herald.PermGranted, AllowPublish: herald.PermGranted},
		{Name: "dm"},
		{Name: "prices", HistorySize: 10, Delta: herald.DeltaFossil, Overflow: herald.OverflowConflate},
	}
	if !reflect.DeepEqual(cfg, want) {
		t.Fatalf("got  %+v\nwant %+v", cfg, want)
	}
}

func TestConfigNamespacesStrict(t *testing.T) {
	t.Parallel()
	for _, body := range []string{
		"namespaces:\n  - name: chat\n    histroy_size: 10\n", // typo
		"namespaces:\n  - name: chat\n    history_ttl: soon\n",
		"namespaces: chat\n",
	} {
		path := filepath.Join(t.TempDir(), "herald.yaml")
		if err := os.WriteFile(path, []byte(body), 0o600); err != nil {
			t.Fatal(err)
		}
		if _, err := parseServeConfig([]string{"--config", path}, nil, io.Discard); err == nil {
			t.Errorf("%q: accepted", body)
		}
	}
}

// TestConfigEverySettingSaysWhatItWants: each setting can describe a valid
// value in words, for errors about a value of the wrong shape.
func TestConfigEverySettingSaysWhatItWants(t *testing.T) {
	t.Parallel()
	for _, s := range settings {
		if s.want == "" || goTypes.MatchString(s.want) {
			t.Errorf("setting %s wants %q", s.name, s.want)
		}
	}
}

func TestConfigEmptySources(t *testing.T) {
	t.Parallel()
	// An empty file and empty variables leave the defaults.
	cfg, err := parseServeConfig([]string{"--config", writeFile(t, "")},
		[]string{"HERALD_ADDR=", "HERALD_PING_INTERVAL=", "HERALD_TEST_REDIS=redis://127.0.0.1:6379/0"}, io.Discard)
	if err != nil {
		t.Fatal(err)
	}
	if !reflect.DeepEqual(cfg, defaultConfig()) {
		t.Fatalf("got %+v, want the defaults", cfg)
	}
	// A key with no value in the file means "default" too.
	cfg, err = parseServeConfig([]string{"--config", writeFile(t, "addr:\nallowed_origins:\n")}, nil, io.Discard)
	if err != nil || !reflect.DeepEqual(cfg, defaultConfig()) {
		t.Fatalf("got %+v, %v", cfg, err)
	}
}

// TestConfigErrors: an invalid value is reported with the setting's name,
// the value and its source.
func TestConfigErrors(t *testing.T) {
	t.Parallel()
	for _, c := range []struct {
		name string
		args []string
		env  []string
		file string // written to a file passed with --config when not empty
		want []string
	}{
		{name: "bad duration flag", args: []string{"--ping-interval", "abc"},
			want: []string{`invalid ping_interval "abc" (from flag --ping-interval): want a duration such as 500ms, 30s or 1m30s`}},
		{name: "negative size env", env: []string{"HERALD_MAX_QUEUE_BYTES=-1"},
			want: []string{`invalid max_queue_bytes "-1" (from env HERALD_MAX_QUEUE_BYTES): must not be negative`}},
		{name: "not a number env", env: []string{"HERALD_READ_BUFFER_SIZE=1k"},
			want: []string{`invalid read_buffer_size "1k" (from env HERALD_READ_BUFFER_SIZE): want a whole number`}},
		{name: "bool env", env: []string{"HERALD_COMPRESSION=maybe"},
			want: []string{`invalid compression "maybe" (from env HERALD_COMPRESSION): want true or false`}},
		{name: "bool flag", args: []string{"--allow-any-origin=maybe"},
			want: []string{`invalid allow_any_origin "maybe" (from flag --allow-any-origin)`}},
		{name: "duration without unit in file", file: "addr: :9000\npong_timeout: 10\n",
			want: []string{`invalid pong_timeout "10" (from config file `, `herald.yaml line 2): want a duration`}},
		{name: "log format in file", file: "log_format: xml\n",
			want: []string{`invalid log_format "xml" (from config file `, `line 1): want text or json`}},
		{name: "negative duration", args: []string{"--shutdown-timeout=-1s"},
			want: []string{`invalid shutdown_timeout "-1s" (from flag --shutdown-timeout): must not be negative`}},
		{name: "empty addr flag", args: []string{"--addr="},
			want: []string{`invalid addr "" (from flag --addr): must not be empty`}},
		{name: "bad origin in file list", file: "allowed_origins: [https://ok.example, app.example.com]\n",
			want: []string{`invalid allowed_origins`, `"app.example.com": want scheme://host[:port]`}},
		{name: "wildcard inside an origin", env: []string{"HERALD_ALLOWED_ORIGINS=https://app.*.example.com"},
			want: []string{`invalid allowed_origins "https://app.*.example.com" (from env HERALD_ALLOWED_ORIGINS): "https://app.*.example.com": a wildcard may only be the first label, as in https://*.example.com`}},
		{name: "wildcard alone", args: []string{"--allowed-origins", "https://*."},
			want: []string{`invalid allowed_origins "https://*." (from flag --allowed-origins): "https://*.": a wildcard needs a domain after it`}},
		{name: "list for a scalar", file: "addr: [a, b]\n",
			want: []string{`invalid addr "[a, b]"`, `line 1): want host:port or :port, such as :8080 or 127.0.0.1:8080; not a list`}},
		{name: "mapping for a list", file: "allowed_origins: {a: b}\n",
			want: []string{`invalid allowed_origins "{a: b}"`, `want a list of origins such as https://app.example.com; not a mapping`}},
		{name: "unknown key in file", file: "ping_intervall: 5s\n",
			want: []string{"unknown setting ping_intervall (config file ", "line 1): did you mean ping_interval?"}},
		{name: "bad YAML", file: "addr: [\n",
			want: []string{"failed to parse config file", "invalid YAML: line 1"}},
		{name: "missing file", args: []string{"--config", "/nonexistent/herald.yaml"},
			want: []string{"failed to read config file", "no such file"}},
		{name: "unknown flag", args: []string{"--bogus"},
			want: []string{"failed to parse serve arguments: flag provided but not defined: -bogus"}},
		{name: "stray argument", args: []string{"--addr", ":1", "extra"},
			want: []string{`serve takes no arguments, got ["extra"]`}},
		{name: "permission in namespace", file: "namespaces:\n  - name: chat\n    allow_publish: everyone\n",
			want: []string{`invalid allow_publish of namespace "chat" "everyone" (from config file `, `line 3): want anyone, authenticated, granted or nobody`}},
		{name: "permission as a list", file: "namespaces:\n  - name: chat\n    allow_history: [anyone]\n",
			want: []string{`invalid allow_history of namespace "chat" "[anyone]"`, `want anyone, authenticated, granted or nobody`}},
		{name: "empty permission", file: "namespaces:\n  - name: \"\"\n    allow_subscribe: ''\n",
			want: []string{`invalid allow_subscribe of namespace "" ""`}},
		{name: "tls cert without key", args: []string{"--tls-cert", "/c.pem"},
			want: []string{"tls_cert and tls_key go together: set both to serve https:// and wss://, or neither for plain HTTP"}},
		{name: "tls key without cert", env: []string{"HERALD_TLS_KEY=/k.pem"},
			want: []string{"tls_cert and tls_key go together"}},
		{name: "secret and secret file", env: []string{"HERALD_JWT_SECRET=0123456789abcdef0123456789abcdef", "HERALD_JWT_SECRET_FILE=/s"},
			want: []string{"jwt_secret and jwt_secret_file both set: set one of them"}},
		{name: "short secret", env: []string{"HERALD_JWT_SECRET=hunter2"},
			want: []string{`invalid jwt_secret "(redacted)" (from env HERALD_JWT_SECRET): too short (7 bytes): HS256 needs at least 32 bytes`}},
		{name: "issuer without key", args: []string{"--jwt-issuer", "me", "--connect-timeout", "1s"},
			want: []string{"jwt_issuer and connect_timeout set, but token authentication is off: set a key too (jwt_secret_file, jwt_secret, jwt_rsa_public_key, jwt_ecdsa_public_key or jwks_url)"}},
		{name: "audience without key", file: "jwt_audience: herald\n",
			want: []string{"jwt_audience set, but token authentication is off"}},
		{name: "jwks url without scheme", args: []string{"--jwks-url", "auth.example/jwks"},
			want: []string{`invalid jwks_url "auth.example/jwks" (from flag --jwks-url): want an http:// or https:// URL, such as https://auth.example.com/.well-known/jwks.json; did you mean https://auth.example/jwks?`}},
		{name: "connect rate", env: []string{"HERALD_CONNECT_RATE_PER_IP=fast"},
			want: []string{`invalid connect_rate_per_ip "fast" (from env HERALD_CONNECT_RATE_PER_IP): want a number per second, such as 50 or 0.5, or off`}},
		{name: "negative message rate", args: []string{"--message-rate=-1"},
			want: []string{`invalid message_rate "-1" (from flag --message-rate): must not be negative`}},
		{name: "infinite message rate", args: []string{"--message-rate=Inf"},
			want: []string{`invalid message_rate "Inf"`}},
		{name: "burst without rate", file: "message_burst: 5\n",
			want: []string{"message_burst set without message_rate: set message_rate too"}},
		{name: "negative connection cap", args: []string{"--max-connections-per-ip=-2"},
			want: []string{`invalid max_connections_per_ip "-2" (from flag --max-connections-per-ip): must not be negative`}},
		{name: "drain window", env: []string{"HERALD_DRAIN_WINDOW=soon"},
			want: []string{`invalid drain_window "soon" (from env HERALD_DRAIN_WINDOW): want a duration such as 10s or 1m, or off`}},
		{name: "unknown broker", args: []string{"--broker", "kafka"},
			want: []string{`invalid broker "kafka" (from flag --broker): want memory, redis or nats`}},
		{name: "redis url scheme, password hidden", args: []string{"--broker", "redis", "--redis-url", "http://user:hunter2@host:6379"},
			want: []string{`invalid redis_url "http://user:xxxxx@host:6379" (from flag --redis-url): want a URL such as redis://127.0.0.1:6379/0 (scheme redis, rediss or unix)`}},
		{name: "unparseable redis url, password hidden", args: []string{"--broker", "redis", "--redis-url", "redis://user:hunter2@host:port/0"},
			want: []string{`invalid redis_url "redis://user:xxxxx@host:port/0" (from flag --redis-url): want a URL such as redis://127.0.0.1:6379/0 (scheme redis, rediss or unix)`}},
		{name: "redis url without scheme", env: []string{"HERALD_BROKER=redis", "HERALD_REDIS_URL=127.0.0.1:6379"},
			want: []string{`invalid redis_url "127.0.0.1:6379" (from env HERALD_REDIS_URL): want a URL such as redis://127.0.0.1:6379/0 (scheme redis, rediss or unix); did you mean redis://127.0.0.1:6379?`}},
		{name: "one bad nats url of several, password hidden", env: []string{"HERALD_BROKER=nats", "HERALD_NATS_URL=nats://a:1, nats://u:hunter2@b:x:y"},
			want: []string{`invalid nats_url "nats://a:1,nats://u:xxxxx@b:x:y" (from env HERALD_NATS_URL): "nats://u:xxxxx@b:x:y" is not a URL such as nats://127.0.0.1:4222 (scheme nats, tls, ws or wss)`}},
		{name: "nats url without scheme", args: []string{"--broker", "nats", "--nats-url", "10.0.0.1:4222"},
			want: []string{`invalid nats_url "10.0.0.1:4222" (from flag --nats-url): want a URL such as nats://127.0.0.1:4222 (scheme nats, tls, ws or wss); did you mean nats://10.0.0.1:4222?`}},
		{name: "unparseable jwks url, password hidden", args: []string{"--jwks-url", "https://u:hunter2@auth.example:port/jwks"},
			want: []string{`invalid jwks_url "https://u:xxxxx@auth.example:port/jwks" (from flag --jwks-url): want an http:// or https:// URL, such as https://auth.example.com/.well-known/jwks.json`}},
		{name: "addr without colon", args: []string{"--addr", "8080"},
			want: []string{`invalid addr "8080" (from flag --addr): want host:port or :port, such as :8080 or 127.0.0.1:8080; did you mean :8080?`}},
		{name: "redis addr", env: []string{"HERALD_BROKER=redis", "HERALD_REDIS_ADDR=redis://h:1"},
			want: []string{`invalid redis_addr "redis://h:1" (from env HERALD_REDIS_ADDR): want host:port`}},
		{name: "redis url and addr", args: []string{"--broker", "redis", "--redis-url", "redis://a:1/0", "--redis-addr", "b:2"},
			want: []string{"redis_url and redis_addr both set: set one of them"}},
		{name: "redis url without broker redis", file: "redis_url: redis://a:1/0\n",
			want: []string{"redis_url or redis_addr set, but broker is memory: set broker redis too, or remove them"}},
		{name: "nats url with broker redis", args: []string{"--broker", "redis", "--nats-url", "nats://a:1"},
			want: []string{"nats_url set, but broker is redis: set broker nats too, or remove it"}},
		{name: "broker prefix", args: []string{"--broker-prefix", "a.b"},
			want: []string{`invalid broker_prefix "a.b" (from flag --broker-prefix): want letters, digits`}},
		{name: "short api key", env: []string{"HERALD_API_KEY=short"},
			want: []string{`invalid api_key "(redacted)" (from env HERALD_API_KEY): too short (5 bytes): use at least 16`}},
		{name: "api key and file", env: []string{"HERALD_API_KEY=0123456789abcdef", "HERALD_API_KEY_FILE=/k"},
			want: []string{"api_key and api_key_file both set: set one of them"}},
		{name: "short admin password", file: "admin_password: hunter2\n",
			want: []string{`invalid admin_password "(redacted)" (from config file `, `too short (7 bytes): use at least 12`}},
		{name: "admin password and file", args: []string{"--admin-password-file", "/p"}, env: []string{"HERALD_ADMIN_PASSWORD=0123456789abcdef"},
			want: []string{"admin_password and admin_password_file both set: set one of them"}},
		{name: "redis cluster without broker redis", args: []string{"--redis-cluster"},
			want: []string{"redis_cluster set, but broker is memory: set broker redis too, or remove it"}},
		{name: "nats replicas without broker nats", args: []string{"--broker", "redis", "--nats-replicas", "3"},
			want: []string{"nats_replicas set, but broker is redis: set broker nats too, or remove it"}},
		{name: "nats replicas over 5", args: []string{"--broker", "nats", "--nats-replicas", "7"},
			want: []string{"nats_replicas 7: want 1 to 5"}},
		{name: "redis shard not a URL", file: "broker: redis\nredis_url:\n  - redis://a:1/0\n  - b:2\n",
			want: []string{`"b:2" is not a URL such as redis://127.0.0.1:6379/0`}},
		{name: "metrics", args: []string{"--metrics=sometimes"},
			want: []string{`invalid metrics "sometimes" (from flag --metrics): want true or false`}},
	} {
		t.Run(c.name, func(t *testing.T) {
			args := c.args
			if c.file != "" {
				args = append([]string{"--config", writeFile(t, c.file)}, args...)
			}
			_, err := parseServeConfig(args, c.env, io.Discard)
			if err == nil {
				t.Fatal("want an error")
			}
			for _, w := range c.want {
				if !strings.Contains(err.Error(), w) {
					t.Errorf("error %q\ndoes not contain %q", err, w)
				}
			}
			if strings.Contains(err.Error(), "hunter2") {
				t.Errorf("error %q shows the password", err)
			}
			var se *SettingError
			if strings.HasPrefix(c.want[0], "invalid ") && !errors.As(err, &se) {
				t.Errorf("error %v is not a *SettingError", err)
			}
		})
	}
}

func TestConfigHelpFlag(t *testing.T) {
	t.Parallel()
	var out strings.Builder
	_, err := parseServeConfig([]string{"-h"}, nil, &out)
	if !errors.Is(err, flag.ErrHelp) || !strings.Contains(out.String(), "--read-header-timeout DURATION") {
		t.Fatalf("err %v, usage %q", err, out.String())
	}
}

// TestConfigSecretNeverEchoed: wherever an invalid jwt_secret comes from,
// the error names the setting and the source but not the value, and a
// printed Config shows the secret redacted.
func TestConfigSecretNeverEchoed(t *testing.T) {
	t.Parallel()
	const short = "sh0rt-s3cret"
	for _, c := range []struct {
		args []string
		env  []string
	}{
		{args: []string{"--jwt-secret", short}},
		{env: []string{"HERALD_JWT_SECRET=" + short}},
		{args: []string{"--config", writeFile(t, "jwt_secret: "+short+"\n")}},
	} {
		_, err := parseServeConfig(c.args, c.env, io.Discard)
		if err == nil || strings.Contains(err.Error(), short) || !strings.Contains(err.Error(), "jwt_secret") {
			t.Errorf("%v %v: error %v", c.args, c.env, err)
		}
	}
	const long = "a-secret-of-at-least-32-bytes-long!"
	cfg, err := parseServeConfig(nil, []string{"HERALD_JWT_SECRET=" + long}, io.Discard)
	if err != nil {
		t.Fatal(err)
	}
	if string(cfg.JWTSecret) != long {
		t.Fatalf("secret %q", string(cfg.JWTSecret))
	}
	var logged strings.Builder
	slog.New(slog.NewTextHandler(&logged, nil)).Info("config", "secret", cfg.JWTSecret)
	for _, printed := range []string{fmt.Sprintf("%v %+v %#v %s", cfg, cfg, cfg, cfg.JWTSecret), logged.String()} {
		if strings.Contains(printed, long) || !strings.Contains(printed, "(redacted)") {
			t.Errorf("printed config shows the secret or no redaction: %s", printed)
		}
	}
}

// TestConfigPermissions: each permission is read from the namespaces
// entries, in any case; absent means the library default.
func TestConfigPermissions(t *testing.T) {
	t.Parallel()
	cfg, err := parseServeConfig([]string{"--config", writeFile(t, `namespaces:
  - name: a
    allow_subscribe: anyone
    allow_publish: " NOBODY "
    allow_presence: authenticated
    allow_history: granted
  - name: b
    allow_publish:
`)}, nil, io.Discard)
	if err != nil {
		t.Fatal(err)
	}
	want := []herald.Namespace{
		{Name: "a", AllowSubscribe: herald.PermAnyone, AllowPublish: herald.PermNobody,
			AllowPresence: herald.PermAuthenticated, AllowHistory: herald.PermGranted},
		{Name: "b"},
	}
	if !reflect.DeepEqual(cfg.Namespaces, want) {
		t.Fatalf("got %+v\nwant %+v", cfg.Namespaces, want)
	}
}

// TestConfigBrokerURLs: redis_addr is the short form of redis_url, and the
// defaults apply when neither is set.
func TestConfigBrokerURLs(t *testing.T) {
	t.Parallel()
	for _, c := range []struct {
		args []string
		want string
	}{
		{[]string{"--broker", "redis"}, "redis://127.0.0.1:6379/0"},
		{[]string{"--broker", "redis", "--redis-addr", "10.0.0.5:6380"}, "redis://10.0.0.5:6380/0"},
		{[]string{"--broker", "redis", "--redis-url", "rediss://u:p@h:1/2"}, "rediss://u:p@h:1/2"},
	} {
		cfg, err := parseServeConfig(c.args, nil, io.Discard)
		if err != nil {
			t.Fatal(err)
		}
		if got := cfg.redisURL(); got != c.want {
			t.Errorf("%q: redis URL %q, want %q", c.args, got, c.want)
		}
	}
	cfg, err := parseServeConfig([]string{"--broker", "nats"}, nil, io.Discard)
	if err != nil || cfg.natsURL() != "nats://127.0.0.1:4222" {
		t.Fatalf("nats default: %q, %v", cfg.natsURL(), err)
	}
}

// TestConfigRedisShards: several Redis URLs, as a list in the file or
// comma-separated, are shards; with redis_cluster, a Cluster's nodes.
func TestConfigRedisShards(t *testing.T) {
	t.Parallel()
	file := writeFile(t, "broker: redis\nredis_url:\n  - redis://a:1/0\n  - redis://b:2/0\nredis_cluster: true\n")
	cfg, err := parseServeConfig([]string{"--config", file}, nil, io.Discard)
	if err != nil {
		t.Fatal(err)
	}
	if cfg.redisURL() != "redis://a:1/0,redis://b:2/0" || !cfg.RedisCluster {
		t.Fatalf("redis_url %q, redis_cluster %v; want both URLs and true", cfg.redisURL(), cfg.RedisCluster)
	}
	cfg, err = parseServeConfig([]string{"--broker", "nats", "--nats-replicas", "3"}, nil, io.Discard)
	if err != nil || cfg.NATSReplicas != 3 {
		t.Fatalf("nats_replicas: %d, %v; want 3", cfg.NATSReplicas, err)
	}
}

// TestConfigQueueHoldsTwoMessages: max_queue_bytes must be at least twice
// max_message_size (the effective values, defaults included), or a message
// near the limit would cut every receiver as a slow consumer (4001). The
// error names both settings, their values and where each came from.
func TestConfigQueueHoldsTwoMessages(t *testing.T) {
	t.Parallel()
	for _, c := range []struct {
		name string
		args []string
		env  []string
		file string
		want string // "" for accepted; FILE stands for the file's path
	}{
		{name: "big messages, default queue", args: []string{"--max-message-size", "20000000"},
			want: "max_queue_bytes 1048576 (the default) is less than twice max_message_size 20000000 (from flag --max-message-size): " +
				"a connection's queue must hold a message being written and one more waiting, or messages over 524288 bytes can cut their receivers " +
				"as slow consumers (close 4001); set max_queue_bytes to at least 40000000, or max_message_size to at most 524288"},
		{name: "small queue, default messages", file: "ping_interval: 5s\nmax_queue_bytes: 100000\n",
			want: "max_queue_bytes 100000 (from config file FILE line 2) is less than twice max_message_size 65536 (the default): " +
				"a connection's queue must hold a message being written and one more waiting, or messages over 50000 bytes can cut their receivers " +
				"as slow consumers (close 4001); set max_queue_bytes to at least 131072, or max_message_size to at most 50000"},
		{name: "both set, one short", env: []string{"HERALD_MAX_QUEUE_BYTES=2097151"}, args: []string{"--max-message-size=1048576"},
			want: "max_queue_bytes 2097151 (from env HERALD_MAX_QUEUE_BYTES) is less than twice max_message_size 1048576 (from flag --max-message-size)"},
		{name: "exactly twice", env: []string{"HERALD_MAX_QUEUE_BYTES=2097152"}, args: []string{"--max-message-size=1048576"}},
		{name: "the defaults", args: nil},
		{name: "zero means the default", args: []string{"--max-message-size=0", "--max-queue-bytes=0"}},
		{name: "zero queue, big messages", args: []string{"--max-message-size=600000", "--max-queue-bytes=0"},
			want: "max_queue_bytes 1048576 (the default, as 0 from flag --max-queue-bytes) is less than twice max_message_size 600000 (from flag --max-message-size)"},
		{name: "huge message size", args: []string{"--max-message-size=9223372036854775807"},
			want: "max_queue_bytes 1048576 (the default) is less than twice max_message_size 9223372036854775807 (from flag --max-message-size)"},
	} {
		t.Run(c.name, func(t *testing.T) {
			args := c.args
			path := ""
			if c.file != "" {
				path = writeFile(t, c.file)
				args = append([]string{"--config", path}, args...)
			}
			_, err := parseServeConfig(args, c.env, io.Discard)
			switch want := strings.ReplaceAll(c.want, "FILE", path); {
			case want == "" && err != nil:
				t.Fatalf("refused: %v", err)
			case want != "" && (err == nil || !strings.HasPrefix(err.Error(), want)):
				t.Fatalf("error\n %v\nwant\n %s", err, want)
			}
		})
	}
	// herald serve refuses to start, before it listens or builds a node
	// (should it start, the deadline stops it and run returns nil).
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	err := run(ctx, []string{"serve", "--addr", "127.0.0.1:0", "--max-message-size", "20000000"}, nil, io.Discard)
	if err == nil || !strings.HasPrefix(err.Error(), "max_queue_bytes 1048576 (the default) is less than twice max_message_size 20000000") {
		t.Fatalf("serve: %v", err)
	}
}

// TestServeQueueOfTwiceTheMessageSize: at the smallest queue the rule
// accepts (max_queue_bytes twice max_message_size), publications of the
// largest size a client may send reach their subscriber, framed, one after
// another, and nobody is cut as a slow consumer.
func TestServeQueueOfTwiceTheMessageSize(t *testing.T) {
	t.Parallel()
	const size = 500_000
	s := startServer(t, nil, "--max-message-size", strconv.Itoa(size), "--max-queue-bytes", strconv.Itoa(2*size))
	pub, sub := mustDialWS(t, "ws://"+s.addr+"/ws", nil), mustDialWS(t, "ws://"+s.addr+"/ws", nil)
	call(t, sub, `{"id":1,"cmd":"subscribe","channel":"big"}`)
	for i := range 3 {
		cmd := fmt.Sprintf(`{"id":%d,"cmd":"publish","channel":"big","data":"`, i+1)
		text := strings.Repeat(string(rune('a'+i)), size-len(cmd)-2) // the command is exactly max_message_size
		call(t, pub, cmd+text+`"}`)
		var m wireMsg
		if _, b := readMessage(t, sub); json.Unmarshal(b, &m) != nil || string(m.Data) != `"`+text+`"` {
			t.Fatalf("publication %d of %d bytes not received whole", i, len(text))
		}
	}
}
