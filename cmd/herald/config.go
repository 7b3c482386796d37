package main

import (
	"bytes"
	"errors"
	"flag"
	"fmt"
	"io"
	"log/slog"
	"net/url"
	"os"
	"reflect"
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

	// Namespaces configure history, recovery and presence per channel
	// namespace (file only: `namespaces:` is a list). See herald.Namespace.
	Namespaces []herald.Namespace

	// LogFormat is "text" (logfmt-like, for people) or "json" (for log
	// collectors). LogLevel is debug, info, warn or error.
	LogFormat string
	LogLevel  slog.Level
}

// Defaults of the settings that the command itself owns. The node's
// settings default to zero, which herald.New turns into its own defaults.
const (
	defaultAddr              = ":8080"
	defaultReadHeaderTimeout = 10 * time.Second
	defaultShutdownTimeout   = 10 * time.Second
)

func defaultConfig() Config {
	return Config{
		Addr:              defaultAddr,
		ReadHeaderTimeout: defaultReadHeaderTimeout,
		ShutdownTimeout:   defaultShutdownTimeout,
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
	// set parses a value written as a string (a flag, a variable, a scalar in
	// the file) into c. Its error says what a valid value looks like.
	set func(c *Config, v string) error
	// setList, for list settings only, takes the items of a YAML sequence.
	// set then takes a comma-separated list.
	setList func(c *Config, items []string) error
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
	intSetting("read_buffer_size", "per-connection read buffer in bytes", "512",
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
	boolSetting("compression", "negotiate permessage-deflate with clients that offer it",
		func(c *Config) *bool { return &c.Compression }),
	durationSetting("read_header_timeout", "time a client has to send a request's headers (stops slowloris)", defaultReadHeaderTimeout.String(),
		func(c *Config) *time.Duration { return &c.ReadHeaderTimeout }),
	durationSetting("shutdown_timeout", "bound on the graceful shutdown after SIGINT or SIGTERM", defaultShutdownTimeout.String(),
		func(c *Config) *time.Duration { return &c.ShutdownTimeout }),
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
	}}
}

func boolSetting(name, usage string, field func(*Config) *bool) *setting {
	return &setting{name: name, usage: usage, def: "false", isBool: true, set: func(c *Config, v string) error {
		b, err := strconv.ParseBool(strings.TrimSpace(v))
		if err != nil {
			return errors.New("want true or false")
		}
		*field(c) = b
		return nil
	}}
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
	}}
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
	}}
}

func listSetting(name, arg, usage, def string, field func(*Config) *[]string, check func(string) error) *setting {
	s := &setting{name: name, arg: arg, usage: usage, def: def}
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
				return Config{}, &SettingError{Setting: s.name, Source: "env " + s.envName(), Value: v, Err: err}
			}
		}
	}

	for _, f := range flagged {
		if err := f.s.set(&cfg, f.v); err != nil {
			return Config{}, &SettingError{Setting: f.s.name, Source: "flag --" + f.s.flagName(), Value: f.v, Err: err}
		}
	}
	return cfg, nil
}

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
	ReadHeaderTimeout        yaml.Node `yaml:"read_header_timeout"`
	ShutdownTimeout          yaml.Node `yaml:"shutdown_timeout"`
	LogFormat                yaml.Node `yaml:"log_format"`
	LogLevel                 yaml.Node `yaml:"log_level"`

	// Namespaces is structured, so it lives in the file only (no flag or
	// variable) and is decoded directly, unknown keys included as errors.
	Namespaces []namespaceSetting `yaml:"namespaces"`
}

// namespaceSetting is one entry of the file's namespaces list; see
// herald.Namespace for the meaning of each field.
type namespaceSetting struct {
	Name        string        `yaml:"name"`
	HistorySize int           `yaml:"history_size"`
	HistoryTTL  time.Duration `yaml:"history_ttl"`
	Presence    bool          `yaml:"presence"`
	JoinLeave   bool          `yaml:"join_leave"`
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
	for _, ns := range fset.Namespaces {
		cfg.Namespaces = append(cfg.Namespaces, herald.Namespace{
			Name: ns.Name, HistorySize: ns.HistorySize, HistoryTTL: ns.HistoryTTL,
			Presence: ns.Presence, JoinLeave: ns.JoinLeave,
		})
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
				return &SettingError{Setting: s.name, Source: source, Value: n.Value, Err: err}
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
				return &SettingError{Setting: s.name, Source: source, Value: strings.Join(items, ","), Err: err}
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
and a health check at /healthz.

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
