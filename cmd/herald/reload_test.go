package main

import (
	"bytes"
	"context"
	"crypto/tls"
	"encoding/pem"
	"net/http"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
	"testing"

	"github.com/heraldhq/herald"
	"github.com/heraldhq/herald/internal/dashtest"
)

// TestServeReload: SIGHUP applies what the binary owns (log level, API key
// from its file, admin password, metrics) and the node's reloadable
// settings, logs each setting that changed in the file but needs a
// restart, and leaves everything as it was when the new file is invalid.
// No secret reaches the log. (TestServeReloadNodeSettings checks that the
// node's settings take effect.)
func TestServeReload(t *testing.T) {
	t.Parallel()
	dir := t.TempDir()
	write := func(name, content string) string {
		t.Helper()
		path := filepath.Join(dir, name)
		if err := os.WriteFile(path, []byte(content), 0o600); err != nil {
			t.Fatal(err)
		}
		return path
	}
	const (
		key1, key2 = "first-api-key-0123456789", "second-api-key-0123456789"
		pw1, pw2   = "first admin password", "second admin password"
	)
	keyFile := write("api_key", key1+"\n")
	pwFile := write("admin_password", pw1+"\n")
	cfgFile := write("herald.yaml", `log_level: info
api_key_file: `+keyFile+`
admin_password_file: `+pwFile+`
ping_interval: 25s
namespaces:
  - name: chat
`)
	hup := make(chan os.Signal, 1)
	s := startServerReload(t, hup, nil, "--config", cfgFile)
	base := "http://" + s.addr
	reload := func(t *testing.T, n int) {
		t.Helper()
		hup <- syscall.SIGHUP
		waitFor(t, "the reload", func() bool {
			return strings.Count(s.logs.String(), `"msg":"configuration reloaded"`)+
				strings.Count(s.logs.String(), `"msg":"reload failed: the running configuration is unchanged"`) >= n
		})
	}
	admin := &dashtest.Browser{T: t, Base: base}
	if admin.Login(pw1); admin.Token == "" {
		t.Fatal("login with the first password failed")
	}

	// Change everything: what can change, and what cannot.
	write("api_key", key2+"\n")
	write("admin_password", pw2+"\n")
	write("herald.yaml", `log_level: debug
api_key_file: `+keyFile+`
admin_password_file: `+pwFile+`
metrics: false
ping_interval: 10s
max_connections: 7
message_rate: 5
namespaces:
  - name: chat
    history_size: 10
`)
	reload(t, 1)
	logs := s.logs.String()
	for _, want := range []string{
		`"msg":"reloaded","setting":"log_level"`,
		`"msg":"reloaded","setting":"api_key"`,
		`"msg":"reloaded","setting":"admin_password"`,
		`"msg":"reloaded","setting":"metrics"`,
		`"msg":"changed in the file but needs a restart: the running value stays in force","setting":"ping_interval","running":"25s","file":"10s"`,
		`"msg":"reloaded","setting":"message_rate","old":"0","new":"5"`,
		`"msg":"reloaded","setting":"message_burst","old":"0","new":"5"`, // its default follows message_rate
		`"msg":"reloaded","setting":"max_connections","old":"100000","new":"7"`,
		`"msg":"reloaded","setting":"namespaces","added":[],"removed":[],"changed":["chat"]`,
		`"applied":"log_level,api_key,admin_password,metrics,max_connections,message_rate,message_burst,namespaces","needs_restart":"ping_interval"`,
	} {
		if !strings.Contains(logs, want) {
			t.Errorf("the reload did not log %s", want)
		}
	}
	// The new key works, the old one no longer does.
	if resp, _ := httpDo(t, "GET", base+"/api/v1/info", bearer(key1), ""); resp.StatusCode != http.StatusUnauthorized {
		t.Errorf("old API key after reload: %d, want 401", resp.StatusCode)
	}
	if resp, _ := httpDo(t, "GET", base+"/api/v1/info", bearer(key2), ""); resp.StatusCode != http.StatusOK {
		t.Errorf("new API key after reload: %d, want 200", resp.StatusCode)
	}
	// A new password ends the sessions of the old one.
	if resp, _ := admin.Do("GET", "/admin/api/stats", nil, ""); resp.StatusCode != http.StatusUnauthorized {
		t.Errorf("a session of the old password after reload: %d, want 401", resp.StatusCode)
	}
	admin.Token = ""
	if admin.Login(pw2); admin.Token == "" {
		t.Error("login with the new password failed")
	}
	if resp, _ := httpGet(t, base+"/metrics"); resp.StatusCode != http.StatusNotFound {
		t.Errorf("/metrics after metrics: false: %d, want 404", resp.StatusCode)
	}
	// Debug level is on: a WebSocket connection logs "connected" at debug.
	mustDialWS(t, "ws://"+s.addr+"/ws", nil)
	waitFor(t, "a debug line", func() bool { return strings.Contains(s.logs.String(), `"level":"DEBUG"`) })

	// An invalid file changes nothing.
	write("herald.yaml", "log_level: loud\n")
	reload(t, 2)
	if !strings.Contains(s.logs.String(), `invalid log_level \"loud\"`) {
		t.Errorf("the failed reload does not say why:\n%s", s.logs)
	}
	if resp, _ := httpDo(t, "GET", base+"/api/v1/info", bearer(key2), ""); resp.StatusCode != http.StatusOK {
		t.Errorf("API key after a failed reload: %d, want 200", resp.StatusCode)
	}
	// A file that names an unreadable key file changes nothing either.
	write("herald.yaml", "api_key_file: "+filepath.Join(dir, "missing")+"\n")
	reload(t, 3)
	if resp, _ := httpDo(t, "GET", base+"/api/v1/info", bearer(key2), ""); resp.StatusCode != http.StatusOK {
		t.Errorf("API key after a failed reload: %d, want 200", resp.StatusCode)
	}

	if err := s.stop(t); err != nil {
		t.Fatal(err)
	}
	for _, secret := range []string{key1, key2, pw1, pw2} {
		if strings.Contains(s.logs.String(), secret) {
			t.Errorf("a secret is in the log: %q", secret)
		}
	}
}

// TestServeReloadNodeSettings: SIGHUP applies the node's limits, allowed
// origins and namespaces to a running server. A lower max_connections
// refuses the next handshake with 503 and closes no open connection; an
// origin added is accepted where it was refused; a namespace that gains
// history serves it and a new one's permission applies to a new subscribe;
// and a file the node refuses (a namespace configured twice, an origin
// with a wildcard in the middle) changes nothing, not even what the binary
// owns.
func TestServeReloadNodeSettings(t *testing.T) {
	t.Parallel()
	cfgFile := filepath.Join(t.TempDir(), "herald.yaml")
	write := func(content string) {
		t.Helper()
		if err := os.WriteFile(cfgFile, []byte(content), 0o600); err != nil {
			t.Fatal(err)
		}
	}
	write(`max_connections: 10
namespaces:
  - name: chat
`)
	hup := make(chan os.Signal, 1)
	s := startServerReload(t, hup, nil, "--config", cfgFile)
	url := "ws://" + s.addr + "/ws"
	reload := func(t *testing.T, n int) {
		t.Helper()
		hup <- syscall.SIGHUP
		waitFor(t, "the reload", func() bool {
			return strings.Count(s.logs.String(), `"msg":"configuration reloaded"`)+
				strings.Count(s.logs.String(), `"msg":"reload failed: the running configuration is unchanged"`) >= n
		})
	}
	dialStatus := func(t *testing.T, hdr http.Header) int {
		t.Helper()
		_, resp, err := dialWS(t, url, hdr)
		if err == nil {
			return http.StatusSwitchingProtocols
		}
		if resp == nil {
			t.Fatalf("dial: %v", err)
		}
		return resp.StatusCode
	}
	app := http.Header{"Origin": {"https://app.example.com"}}

	// Before: another origin is refused, chat keeps no history.
	if st := dialStatus(t, app); st != http.StatusForbidden {
		t.Fatalf("handshake from another origin: %d, want 403", st)
	}
	a, b := mustDialWS(t, url, nil), mustDialWS(t, url, nil)
	call(t, a, `{"id":1,"cmd":"subscribe","channel":"chat:x"}`)
	if m := request(t, a, `{"id":2,"cmd":"history","channel":"chat:x"}`); m.errorCode() != "not_enabled" {
		t.Fatalf("history before: %s, want not_enabled", m.Error)
	}

	write(`max_connections: 2
allowed_origins: [https://app.example.com]
namespaces:
  - name: chat
    history_size: 10
  - name: news
    allow_subscribe: nobody
`)
	reload(t, 1)
	logs := s.logs.String()
	for _, want := range []string{
		`"msg":"reloaded","setting":"allowed_origins","old":"","new":"https://app.example.com"`,
		`"msg":"reloaded","setting":"max_connections","old":"10","new":"2"`,
		`"msg":"reloaded","setting":"namespaces","added":["news"],"removed":[],"changed":["chat"]`,
		`"applied":"allowed_origins,max_connections,namespaces","needs_restart":""`,
	} {
		if !strings.Contains(logs, want) {
			t.Errorf("the reload did not log %s", want)
		}
	}
	// Two connections are open: a cap of 2 refuses a third and closes
	// neither.
	if st := dialStatus(t, nil); st != http.StatusServiceUnavailable {
		t.Fatalf("third connection under max_connections 2: %d, want 503", st)
	}
	call(t, a, `{"id":3,"cmd":"ping"}`)
	call(t, b, `{"id":1,"cmd":"ping"}`)
	// The subscription made before stays; history is served now; a new
	// subscribe follows the new namespaces.
	if m := request(t, a, `{"id":4,"cmd":"history","channel":"chat:x"}`); m.Error != nil {
		t.Fatalf("history after chat gained it: %s", m.Error)
	}
	if m := call(t, b, `{"id":2,"cmd":"subscribe","channel":"chat:x"}`); !strings.Contains(string(m.Result), `"epoch"`) {
		t.Fatalf("subscribe to a channel with history: %s, want its position", m.Result)
	}
	if m := request(t, b, `{"id":3,"cmd":"subscribe","channel":"news:y"}`); m.errorCode() != "permission_denied" {
		t.Fatalf("subscribe where nobody may: %s %s, want permission_denied", m.Result, m.Error)
	}
	// Once b has gone, the origin allowed since gets the free slot.
	b.Close()
	waitFor(t, "a handshake from the allowed origin", func() bool { return dialStatus(t, app) == http.StatusSwitchingProtocols })

	// Files the node refuses change nothing, not even the log level.
	for i, bad := range []string{
		"namespaces:\n  - name: chat\n  - name: chat\n",
		"allowed_origins: [https://app.*.example.com]\nnamespaces:\n  - name: chat\n    history_size: 10\n",
	} {
		write("log_level: debug\nmax_connections: 50\n" + bad)
		reload(t, 2+i)
	}
	logs = s.logs.String()
	if n := strings.Count(logs, `"msg":"reload failed: the running configuration is unchanged"`); n != 2 {
		t.Fatalf("%d failed reloads logged, want 2:\n%s", n, logs)
	}
	if !strings.Contains(logs, `configured twice`) || !strings.Contains(logs, `a wildcard may only be the first label`) {
		t.Errorf("the failed reloads do not say why:\n%s", logs)
	}
	if strings.Contains(logs, `"setting":"log_level"`) || strings.Contains(logs, `"new":"50"`) {
		t.Errorf("a failed reload applied something:\n%s", logs)
	}
	if st := dialStatus(t, nil); st != http.StatusServiceUnavailable {
		t.Fatalf("after failed reloads: %d, want 503 (max_connections still 2)", st)
	}
	if m := request(t, a, `{"id":5,"cmd":"history","channel":"chat:x"}`); m.Error != nil {
		t.Fatalf("history after failed reloads: %s (chat's history should stay)", m.Error)
	}
	if err := s.stop(t); err != nil {
		t.Fatal(err)
	}
}

// TestServeReloadEffectiveValues: a reload compares and logs the values
// that take effect, defaults resolved: a setting left unset is logged as
// its default (old=100000 for max_connections, running=10s for
// pong_timeout), never as 0 or 0s; a file that writes a default out
// changes nothing; and a file that could not start the server (a queue
// smaller than twice max_message_size) is refused, saying why, even though
// both settings need a restart.
func TestServeReloadEffectiveValues(t *testing.T) {
	t.Parallel()
	cfgFile := filepath.Join(t.TempDir(), "herald.yaml")
	write := func(content string) {
		t.Helper()
		if err := os.WriteFile(cfgFile, []byte(content), 0o600); err != nil {
			t.Fatal(err)
		}
	}
	write("log_level: info\n")
	hup := make(chan os.Signal, 1)
	s := startServerReload(t, hup, nil, "--config", cfgFile)
	reload := func(t *testing.T, n int) string {
		t.Helper()
		hup <- syscall.SIGHUP
		waitFor(t, "the reload", func() bool {
			return strings.Count(s.logs.String(), `"msg":"configuration reloaded"`)+
				strings.Count(s.logs.String(), `"msg":"reload failed: the running configuration is unchanged"`) >= n
		})
		return s.logs.String()
	}

	// Every default written out: nothing changes.
	write(`max_connections: 100000
max_connections_per_user: 100
connect_rate_per_ip: 1000
max_channels_per_connection: 256
max_message_size: 65536
max_queue_bytes: 1048576
max_queue_messages: 8192
read_buffer_size: 512
ping_interval: 25s
pong_timeout: 10s
write_timeout: 10s
handshake_timeout: 10s
close_grace: 2s
drain_window: 100ms
read_header_timeout: 10s
shutdown_timeout: 10s
`)
	logs := reload(t, 1)
	if want := `"applied":"","needs_restart":""`; !strings.Contains(logs, want) {
		t.Fatalf("a file of defaults changed something; want %s in\n%s", want, logs)
	}

	// Changes from the defaults: logged against the defaults' values.
	write(`max_connections_per_user: 5
connect_rate_per_ip: 10
message_rate: 4
pong_timeout: 3s
max_queue_messages: 100
`)
	logs = reload(t, 2)
	for _, want := range []string{
		`"msg":"reloaded","setting":"max_connections_per_user","old":"100","new":"5"`,
		`"msg":"reloaded","setting":"connect_rate_per_ip","old":"1000","new":"10"`,
		`"msg":"reloaded","setting":"message_rate","old":"0","new":"4"`,
		`"msg":"reloaded","setting":"message_burst","old":"0","new":"4"`,
		`"setting":"pong_timeout","running":"10s","file":"3s"`,
		`"setting":"max_queue_messages","running":"8192","file":"100"`,
	} {
		if !strings.Contains(logs, want) {
			t.Errorf("the reload did not log %s", want)
		}
	}
	if strings.Contains(logs, `"old":"0","new":"5"`) || strings.Contains(logs, `"running":"0s"`) || strings.Contains(logs, `"running":"0"`) {
		t.Errorf("a default logged as zero:\n%s", logs)
	}

	// A file the server could not start with is refused.
	write("max_message_size: 20000000\nlog_level: debug\n")
	logs = reload(t, 3)
	if want := `max_queue_bytes 1048576 (the default) is less than twice max_message_size 20000000 (from config file ` + cfgFile + ` line 1)`; !strings.Contains(logs, want) {
		t.Errorf("the failed reload does not say why; want %s in\n%s", want, logs)
	}
	if strings.Contains(logs, `"setting":"log_level"`) {
		t.Errorf("a failed reload applied log_level")
	}
	if err := s.stop(t); err != nil {
		t.Fatal(err)
	}
}

// TestReloadEverySettingComparable: every setting can be compared by a
// reload (it has a getter), and its getter's value parses back to itself,
// so that a reload never reports a change that is not one.
func TestReloadEverySettingComparable(t *testing.T) {
	t.Parallel()
	cfg := defaultConfig()
	for _, s := range settings {
		if s.get == nil {
			t.Errorf("setting %s has no get: a reload could not compare it", s.name)
			continue
		}
		v := s.get(&cfg)
		if v == "" {
			continue // unset: nothing to parse
		}
		c2 := defaultConfig()
		if err := s.set(&c2, v); err != nil {
			t.Errorf("%s: its value %q does not parse: %v", s.name, v, err)
			continue
		}
		if got := s.get(&c2); got != v {
			t.Errorf("%s: %q parsed back as %q", s.name, v, got)
		}
	}
	// The effective values, defaults resolved, are values too: written
	// in the file, each is the same setting (no change for a reload).
	for _, s := range settings {
		v := s.value(&cfg)
		if v == "" {
			continue
		}
		c2 := defaultConfig()
		if err := s.set(&c2, v); err != nil {
			t.Errorf("%s: its effective value %q does not parse: %v", s.name, v, err)
			continue
		}
		if got := s.value(&c2); got != v {
			t.Errorf("%s: effective %q parsed back as %q", s.name, v, got)
		}
	}
}

// TestReloadEffectiveDefaultsAreTheLibrarys: the defaults a reload logs for
// unset limits are the ones the node applies (herald.Node.Limits), and the
// usage text shows the same.
func TestReloadEffectiveDefaultsAreTheLibrarys(t *testing.T) {
	t.Parallel()
	node, err := herald.New(herald.Config{})
	if err != nil {
		t.Fatal(err)
	}
	defer node.Shutdown(context.Background())
	lim := node.Limits()
	cfg := defaultConfig()
	for name, want := range map[string]string{
		"max_connections":             strconv.Itoa(lim.MaxConnections),
		"max_connections_per_user":    strconv.Itoa(lim.MaxConnectionsPerUser),
		"max_connections_per_ip":      strconv.Itoa(lim.MaxConnectionsPerIP),
		"connect_rate_per_ip":         strconv.FormatFloat(lim.ConnectRatePerIP, 'g', -1, 64),
		"max_channels_per_connection": strconv.Itoa(lim.MaxChannelsPerConnection),
		"message_rate":                strconv.FormatFloat(lim.MessageRate, 'g', -1, 64),
		"message_burst":               strconv.Itoa(lim.MessageBurst),
	} {
		if got := settingByName(name).value(&cfg); got != want {
			t.Errorf("%s: a reload would log the default as %s; the node runs with %s", name, got, want)
		}
	}
	// Every number or duration whose usage shows a default resolves to it.
	for _, s := range settings {
		if v := s.value(&cfg); s.effective != nil && s.def != v && !strings.Contains(s.def, " ") {
			t.Errorf("%s: usage says default %s, a reload would log %s", s.name, s.def, v)
		}
	}
}

// TestServeReloadTLS: SIGHUP swaps in a renewed certificate (new files at
// the same paths): the next TLS handshake gets it, without a restart.
func TestServeReloadTLS(t *testing.T) {
	t.Parallel()
	certA, keyA, _ := selfSigned(t)
	certB, keyB, _ := selfSigned(t)
	dir := t.TempDir()
	cert, key := filepath.Join(dir, "cert.pem"), filepath.Join(dir, "key.pem")
	install := func(c, k string) {
		t.Helper()
		for src, dst := range map[string]string{c: cert, k: key} {
			b, err := os.ReadFile(src)
			if err != nil {
				t.Fatal(err)
			}
			if err := os.WriteFile(dst, b, 0o600); err != nil {
				t.Fatal(err)
			}
		}
	}
	der := func(path string) []byte {
		t.Helper()
		b, err := os.ReadFile(path)
		if err != nil {
			t.Fatal(err)
		}
		block, _ := pem.Decode(b)
		return block.Bytes
	}
	install(certA, keyA)
	hup := make(chan os.Signal, 1)
	s := startServerReload(t, hup, nil, "--tls-cert", cert, "--tls-key", key)
	served := func() []byte {
		t.Helper()
		// Only the certificate is looked at, not trusted: verification is
		// TestServeTLS's business.
		c, err := tls.Dial("tcp", s.addr, &tls.Config{InsecureSkipVerify: true, MinVersion: tls.VersionTLS12})
		if err != nil {
			t.Fatal(err)
		}
		defer c.Close()
		return c.ConnectionState().PeerCertificates[0].Raw
	}
	if !bytes.Equal(served(), der(certA)) {
		t.Fatal("the server does not serve its first certificate")
	}
	install(certB, keyB)
	hup <- syscall.SIGHUP
	waitFor(t, "the reload", func() bool { return strings.Contains(s.logs.String(), `"msg":"configuration reloaded"`) })
	if !strings.Contains(s.logs.String(), `"msg":"reloaded","setting":"tls_cert"`) {
		t.Errorf("the reload does not say it applied tls_cert:\n%s", s.logs)
	}
	if !bytes.Equal(served(), der(certB)) {
		t.Fatal("after SIGHUP the server still serves the old certificate")
	}
}
