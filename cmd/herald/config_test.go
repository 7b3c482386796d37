package main

import (
	"errors"
	"flag"
	"io"
	"log/slog"
	"os"
	"path/filepath"
	"reflect"
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
	}
	rows := []row{
		{"addr", `":9000"`, ":9001", ":9002", func(c Config) any { return c.Addr },
			":8080", ":9000", ":9001", ":9002"},
		{"ping_interval", "5s", "6s", "7s", func(c Config) any { return c.PingInterval },
			time.Duration(0), 5 * time.Second, 6 * time.Second, 7 * time.Second},
		{"read_header_timeout", "1s", "2s", "200ms", func(c Config) any { return c.ReadHeaderTimeout },
			10 * time.Second, time.Second, 2 * time.Second, 200 * time.Millisecond},
		{"shutdown_timeout", "1m", "2m", "3m", func(c Config) any { return c.ShutdownTimeout },
			10 * time.Second, time.Minute, 2 * time.Minute, 3 * time.Minute},
		{"max_message_size", "1000", "2000", "3000", func(c Config) any { return c.MaxMessageSize },
			int64(0), int64(1000), int64(2000), int64(3000)},
		{"max_queue_messages", "10", "20", "30", func(c Config) any { return c.MaxQueueMessages },
			0, 10, 20, 30},
		{"compression", "true", "false", "true", func(c Config) any { return c.Compression },
			false, true, false, true},
		{"allowed_origins", "[https://a.example, 'https://*.b.example']", "https://c.example", "https://d.example,https://e.example",
			func(c Config) any { return c.AllowedOrigins },
			[]string(nil), []string{"https://a.example", "https://*.b.example"}, []string{"https://c.example"},
			[]string{"https://d.example", "https://e.example"}},
		{"log_level", "debug", "warn", "error", func(c Config) any { return c.LogLevel },
			slog.LevelInfo, slog.LevelDebug, slog.LevelWarn, slog.LevelError},
		{"log_format", "json", "text", "json", func(c Config) any { return c.LogFormat },
			"text", "json", "text", "json"},
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
				cfg, err := parseServeConfig(c.args, c.env, io.Discard)
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
`)
	cfg, err := parseServeConfig([]string{"--config", file}, nil, io.Discard)
	if err != nil {
		t.Fatal(err)
	}
	logger := slog.New(slog.DiscardHandler)
	got := cfg.nodeConfig(logger)
	want := herald.Config{
		Logger:                   logger,
		AllowedOrigins:           []string{"https://app.example.com", "https://*.example.net"},
		AllowAnyOrigin:           true,
		ReadBufferSize:           1024,
		MaxMessageSize:           131072,
		PingInterval:             20 * time.Second,
		PongTimeout:              5 * time.Second,
		WriteTimeout:             3 * time.Second,
		HandshakeTimeout:         4 * time.Second,
		CloseGrace:               1500 * time.Millisecond,
		MaxQueueBytes:            2 << 20,
		MaxQueueMessages:         100,
		MaxChannelsPerConnection: 8,
		EnableCompression:        true,
	}
	if !reflect.DeepEqual(got, want) {
		t.Fatalf("node config\n got %+v\nwant %+v", got, want)
	}
	if cfg.Addr != "127.0.0.1:7000" || cfg.ReadHeaderTimeout != 2*time.Second || cfg.ShutdownTimeout != 30*time.Second ||
		cfg.LogFormat != "json" || cfg.LogLevel != slog.LevelDebug {
		t.Fatalf("server settings: %+v", cfg)
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
	want.Namespaces = []herald.Namespace{{Name: ""}, {Name: "chat", HistorySize: 100, HistoryTTL: 10 * time.Minute, Presence: true, JoinLeave: true}}
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

// TestConfigSchemaMatchesSettings keeps the file schema and the settings
// table in step: a setting without a file field, or the reverse, fails here.
func TestConfigSchemaMatchesSettings(t *testing.T) {
	t.Parallel()
	nodes := (&fileSettings{}).nodes()
	for _, s := range settings {
		if nodes[s.name] == nil {
			t.Errorf("setting %s has no fileSettings field", s.name)
		}
		delete(nodes, s.name)
	}
	for name := range nodes {
		t.Errorf("fileSettings field %s is no setting", name)
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
		{name: "list for a scalar", file: "addr: [a, b]\n",
			want: []string{`invalid addr "(a list)"`, `line 1): want a single value`}},
		{name: "mapping for a list", file: "allowed_origins: {a: b}\n",
			want: []string{`invalid allowed_origins "(a mapping)"`, `want a list of strings`}},
		{name: "unknown key in file", file: "ping_intervall: 5s\n",
			want: []string{"failed to parse config file", "line 1: field ping_intervall not found"}},
		{name: "bad YAML", file: "addr: [\n",
			want: []string{"failed to parse config file"}},
		{name: "missing file", args: []string{"--config", "/nonexistent/herald.yaml"},
			want: []string{"failed to read config file", "no such file"}},
		{name: "unknown flag", args: []string{"--bogus"},
			want: []string{"failed to parse serve arguments: flag provided but not defined: -bogus"}},
		{name: "stray argument", args: []string{"--addr", ":1", "extra"},
			want: []string{`serve takes no arguments, got ["extra"]`}},
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
