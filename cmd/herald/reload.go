package main

import (
	"crypto/sha256"
	"crypto/tls"
	"encoding/hex"
	"fmt"
	"os"
	"reflect"
	"slices"
	"strings"

	"github.com/heraldhq/herald"
)

// What SIGHUP can change.
//
// A reload reads the configuration again (the same flags and environment,
// the config file as it is now) and applies, all or nothing:
//
//   - what the binary itself owns: the log level, the API key, the admin
//     password, whether /metrics is served, the drain window and shutdown
//     timeout (read at shutdown), and the TLS certificate while TLS stays on
//     (served through GetCertificate);
//   - the node's settings that can change while it runs, through
//     herald.Node.SetSettings: the connection limits (max_connections,
//     max_connections_per_user, max_connections_per_ip, connect_rate_per_ip,
//     max_channels_per_connection), the allowed origins (allowed_origins,
//     allow_any_origin), the trusted proxies (trusted_proxies,
//     forwarded_header) and the namespaces. Nothing already admitted is
//     undone: a lower limit closes no connection, an origin removed closes
//     no connection, a namespace changed or removed ends no subscription.
//     Every later handshake, connect, subscribe, publish, history and
//     presence call follows the new values (see herald.Limits and
//     herald.Node.SetNamespaces).
//
// Each applied setting is logged ("reloaded", with the old and new value
// unless it is a secret). For every other setting the new configuration is
// compared with the running one, and each difference is logged as needing
// a restart: nothing is silently ignored. Among those: addr, broker and its
// URLs and prefix, TLS on or off, the JWT keys and their files, the
// timeouts, buffer and queue sizes, compression and log_format.
//
// Values are compared and logged as they take effect (setting.value): a
// setting left unset shows as its default (old=100000 for max_connections),
// and writing a default out in the file changes nothing. The new
// configuration is checked as one at start is (parseServeConfig), so a file
// the server could not start with (a max_queue_bytes under twice
// max_message_size, say) is refused whole, though both of those need a
// restart anyway.

// nodeReloadable are the settings of the node that a reload applies
// (besides namespaces, which is in the file only and has no entry in
// settings).
var nodeReloadable = []string{
	"allowed_origins", "allow_any_origin",
	"max_connections", "max_connections_per_user", "max_connections_per_ip",
	"connect_rate_per_ip", "max_channels_per_connection", "message_rate", "message_burst",
	"trusted_proxies", "forwarded_header", // proxy_protocol's listener too
}

// reloadable lists the settings a reload applies. tls_cert and tls_key are
// reloadable only while TLS stays on (the listener is made at start).
var reloadable = map[string]bool{
	"log_level":           true,
	"api_key":             true,
	"api_key_file":        true,
	"admin_password":      true,
	"admin_password_file": true,
	"metrics":             true,
	"drain_window":        true,
	"shutdown_timeout":    true,
}

func init() {
	for _, name := range nodeReloadable {
		settingByName(name) // panics on a misspelt name
		reloadable[name] = true
	}
}

// nodeSettings returns the node's settings that a reload can change,
// mapped as nodeConfig maps them at start.
func (c *Config) nodeSettings() herald.Settings {
	nc := c.nodeConfig(nil)
	return herald.Settings{
		Limits:         nc.Limits,
		AllowedOrigins: nc.AllowedOrigins,
		AllowAnyOrigin: nc.AllowAnyOrigin,
		Namespaces:     nc.Namespaces,
		// Trusted proxies too: SetSettings sets every field, and an empty
		// one would trust none.
		TrustedProxies:  nc.TrustedProxies,
		ForwardedHeader: nc.ForwardedHeader,
	}
}

// startFiles are the settings naming files that are read at start only.
var startFiles = []string{"jwt_secret_file", "jwt_rsa_public_key", "jwt_ecdsa_public_key", "hooks_secret_file"}

// startFileSums returns a digest of each file read at start only, so that a
// reload can tell that one changed.
func startFileSums(c *Config) map[string]string {
	sums := make(map[string]string)
	for _, name := range startFiles {
		if path := settingByName(name).get(c); path != "" {
			sums[name] = fileSum(path)
		}
	}
	return sums
}

func fileSum(path string) string {
	b, err := os.ReadFile(path)
	if err != nil {
		return "unreadable"
	}
	sum := sha256.Sum256(b)
	return hex.EncodeToString(sum[:])
}

// settingByName returns the setting called name, which must exist.
func settingByName(name string) *setting {
	if s := lookupSettingByName(name); s != nil {
		return s
	}
	panic("no setting " + name) // names are constants of this file
}

// normalize fills in the defaults that serve applies to the settings it
// owns, so that a reloaded configuration compares equal to a running one.
func (c *Config) normalize() {
	if c.ReadHeaderTimeout <= 0 {
		c.ReadHeaderTimeout = defaultReadHeaderTimeout
	}
	if c.ShutdownTimeout <= 0 {
		c.ShutdownTimeout = defaultShutdownTimeout
	}
}

// reload reads the configuration again and applies what can change while
// running. It is all or nothing for what it applies: if the new
// configuration is invalid, or a file it names cannot be read, the running
// configuration stays as it was, and the error is logged.
func (in *instance) reload(load func() (Config, error)) {
	log := in.logger
	log.Info("SIGHUP: reloading the configuration")
	next, secrets, err := in.loadNext(load)
	if err != nil {
		log.Error("reload failed: the running configuration is unchanged", "err", err)
		return
	}
	applied := in.applyNodeSettings(&next)
	owned := in.applyOwned(&next, secrets)
	restart := in.needsRestart(&next)
	for _, name := range owned {
		log.Info("reloaded", "setting", name) // never the value: some are secrets
	}
	applied = append(owned, applied...)
	log.Info("configuration reloaded", "applied", strings.Join(applied, ","), "needs_restart", strings.Join(restart, ","))
}

// reloadSecrets are what a reload reads besides the configuration: the
// secrets from their files, and the TLS certificate while TLS stays on.
type reloadSecrets struct {
	apiKey, adminPassword string
	cert                  *tls.Certificate // nil unless TLS stays on
}

// loadNext reads the next configuration and what it names, and sets the
// node's settings: everything of a reload that can fail.
func (in *instance) loadNext(load func() (Config, error)) (next Config, s reloadSecrets, err error) {
	if next, err = load(); err != nil {
		return next, s, err
	}
	next.normalize()
	if s.apiKey, err = next.apiKey(); err != nil {
		return next, s, err
	}
	if s.adminPassword, err = next.adminPassword(); err != nil {
		return next, s, err
	}
	if in.cfg.TLSCert != "" && next.TLSCert != "" {
		if s.cert, err = next.loadCertificate(); err != nil {
			return next, s, err
		}
	}
	// The node's settings go last among what can fail: SetSettings
	// validates them all before it changes any, and nothing after it fails.
	// They are set whether or not they changed, so that the node judges
	// every new file (setting equal values changes nothing).
	if err = in.node.SetSettings(next.nodeSettings()); err != nil {
		return next, s, fmt.Errorf("invalid node settings: %w", err)
	}
	return next, s, nil
}

// applyNodeSettings logs the node's settings that the reload changed (the
// node has them already: loadNext set them), takes them into the running
// configuration, and returns their names.
func (in *instance) applyNodeSettings(next *Config) []string {
	var applied []string
	for _, name := range nodeReloadable {
		if s := settingByName(name); s.value(&in.cfg) != s.value(next) {
			in.logger.Info("reloaded", "setting", name, "old", s.value(&in.cfg), "new", s.value(next))
			applied = append(applied, name)
		}
	}
	if added, removed, changed := namespaceChanges(in.cfg.Namespaces, next.Namespaces); len(added)+len(removed)+len(changed) > 0 {
		in.logger.Info("reloaded", "setting", "namespaces", "added", added, "removed", removed, "changed", changed)
		applied = append(applied, "namespaces")
		if !next.authEnabled() {
			warnNamespacePermissions(in.logger, next)
		}
	}
	in.cfg.AllowedOrigins, in.cfg.AllowAnyOrigin = next.AllowedOrigins, next.AllowAnyOrigin
	in.cfg.MaxConnections, in.cfg.MaxConnectionsPerUser = next.MaxConnections, next.MaxConnectionsPerUser
	in.cfg.MaxConnectionsPerIP, in.cfg.ConnectRatePerIP = next.MaxConnectionsPerIP, next.ConnectRatePerIP
	in.cfg.MaxChannelsPerConnection, in.cfg.Namespaces = next.MaxChannelsPerConnection, next.Namespaces
	in.cfg.MessageRate, in.cfg.MessageBurst = next.MessageRate, next.MessageBurst
	in.cfg.TrustedProxies, in.cfg.ForwardedHeader = next.TrustedProxies, next.ForwardedHeader
	in.setProxies(next.TrustedProxies)
	return applied
}

// applyOwned applies the settings the binary owns that the reload changed,
// takes them into the running configuration, and returns their names.
func (in *instance) applyOwned(next *Config, s reloadSecrets) []string {
	var owned []string
	if next.LogLevel != in.cfg.LogLevel {
		in.level.Set(next.LogLevel)
		owned = append(owned, "log_level")
	}
	if s.apiKey != in.apiKey {
		in.setAPIKey(s.apiKey)
		owned = append(owned, "api_key")
	}
	if in.dash.SetPassword(s.adminPassword) {
		owned = append(owned, "admin_password")
	}
	if next.Metrics != in.cfg.Metrics {
		in.metrics.Store(next.Metrics)
		owned = append(owned, "metrics")
	}
	if next.DrainWindow != in.cfg.DrainWindow {
		owned = append(owned, "drain_window")
	}
	if next.ShutdownTimeout != in.cfg.ShutdownTimeout {
		owned = append(owned, "shutdown_timeout")
	}
	if s.cert != nil && !sameCertificate(s.cert, in.cert.Load()) {
		in.cert.Store(s.cert)
		owned = append(owned, "tls_cert")
	}
	// The running configuration takes the applied values, so that the next
	// reload compares with what runs.
	in.cfg.LogLevel = next.LogLevel
	in.cfg.APIKey, in.cfg.APIKeyFile = next.APIKey, next.APIKeyFile
	in.cfg.AdminPassword, in.cfg.AdminPasswordFile = next.AdminPassword, next.AdminPasswordFile
	in.cfg.Metrics, in.cfg.DrainWindow, in.cfg.ShutdownTimeout = next.Metrics, next.DrainWindow, next.ShutdownTimeout
	if s.cert != nil {
		in.cfg.TLSCert, in.cfg.TLSKey = next.TLSCert, next.TLSKey
	}
	return owned
}

// needsRestart logs, and returns, every setting whose value in next differs
// from the running one but cannot change without a restart.
func (in *instance) needsRestart(next *Config) []string {
	const msg = "changed in the file but needs a restart: the running value stays in force"
	var names []string
	tlsStays := in.cfg.TLSCert != "" && next.TLSCert != ""
	for _, s := range settings {
		if reloadable[s.name] || (tlsStays && (s.name == "tls_cert" || s.name == "tls_key")) {
			continue
		}
		// Values as they take effect: a setting written out at its default
		// is no change, and one left unset shows as its default, not 0.
		running, file := s.value(&in.cfg), s.value(next)
		if running == file {
			continue
		}
		names = append(names, s.name)
		switch {
		case s.isSecret:
			in.logger.Warn(msg, "setting", s.name) // a secret: no values
		case s.redact != nil:
			in.logger.Warn(msg, "setting", s.name, "running", s.redact(running), "file", s.redact(file))
		default:
			in.logger.Warn(msg, "setting", s.name, "running", running, "file", file)
		}
	}
	if !reflect.DeepEqual(in.cfg.PusherApps, next.PusherApps) {
		names = append(names, "pusher_apps")
		in.logger.Warn(msg, "setting", "pusher_apps") // secrets inside: no values
	}
	for _, name := range startFiles {
		path := settingByName(name).get(next)
		if path == "" || path != settingByName(name).get(&in.cfg) || slices.Contains(names, name) {
			continue // unset, or its path changed, which is reported above
		}
		if fileSum(path) != in.fileSums[name] {
			names = append(names, name)
			in.logger.Warn("the file's content changed but needs a restart: the key read at start stays in force", "setting", name, "file", path)
		}
	}
	return names
}

// namespaceChanges names the namespaces that are new in next, gone from it,
// or configured differently ("" is the namespace of channels without ':').
func namespaceChanges(running, next []herald.Namespace) (added, removed, changed []string) {
	added, removed, changed = []string{}, []string{}, []string{} // [] in the log, not null
	byName := func(list []herald.Namespace) map[string]herald.Namespace {
		m := make(map[string]herald.Namespace, len(list))
		for _, ns := range list {
			m[ns.Name] = ns
		}
		return m
	}
	old, nu := byName(running), byName(next)
	for _, ns := range next {
		if o, ok := old[ns.Name]; !ok {
			added = append(added, ns.Name)
		} else if o != ns {
			changed = append(changed, ns.Name)
		}
	}
	for _, ns := range running {
		if _, ok := nu[ns.Name]; !ok {
			removed = append(removed, ns.Name)
		}
	}
	return added, removed, changed
}

func sameCertificate(a, b *tls.Certificate) bool {
	if a == nil || b == nil {
		return a == b
	}
	return slices.EqualFunc(a.Certificate, b.Certificate, slices.Equal)
}
