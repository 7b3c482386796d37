package main

import (
	"crypto/sha256"
	"crypto/tls"
	"encoding/hex"
	"os"
	"reflect"
	"slices"
	"strings"
)

// What SIGHUP can change.
//
// The node's settings are fixed when it is created (herald.Config is read
// by herald.New), so a reload changes only what the binary itself owns:
// the log level, the API key, the admin password, whether /metrics is
// served, the drain window and shutdown timeout (read at shutdown), and the
// TLS certificate (served through GetCertificate). For every other setting
// the new file is compared with the running configuration, and each
// difference is logged as needing a restart: nothing is silently ignored.

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

// startFiles are the settings naming files that are read at start only.
var startFiles = []string{"jwt_secret_file", "jwt_rsa_public_key", "jwt_ecdsa_public_key"}

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

func settingByName(name string) *setting {
	for _, s := range settings {
		if s.name == name {
			return s
		}
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
	next, err := load()
	if err == nil {
		next.normalize()
	}
	var apiKey, adminPassword string
	if err == nil {
		apiKey, err = next.apiKey()
	}
	if err == nil {
		adminPassword, err = next.adminPassword()
	}
	tlsStays := in.cfg.TLSCert != "" && next.TLSCert != ""
	var cert *tls.Certificate
	if err == nil && tlsStays {
		cert, err = next.loadCertificate()
	}
	if err != nil {
		log.Error("reload failed: the running configuration is unchanged", "err", err)
		return
	}

	var applied []string
	if next.LogLevel != in.cfg.LogLevel {
		in.level.Set(next.LogLevel)
		applied = append(applied, "log_level")
	}
	if apiKey != in.apiKey {
		in.setAPIKey(apiKey)
		applied = append(applied, "api_key")
	}
	if in.admin.setPassword(adminPassword) {
		applied = append(applied, "admin_password")
	}
	if next.Metrics != in.cfg.Metrics {
		in.metrics.Store(next.Metrics)
		applied = append(applied, "metrics")
	}
	if next.DrainWindow != in.cfg.DrainWindow {
		applied = append(applied, "drain_window")
	}
	if next.ShutdownTimeout != in.cfg.ShutdownTimeout {
		applied = append(applied, "shutdown_timeout")
	}
	if tlsStays && !sameCertificate(cert, in.cert.Load()) {
		in.cert.Store(cert)
		applied = append(applied, "tls_cert")
	}
	// The running configuration takes the applied values, so that the next
	// reload compares with what runs.
	in.cfg.LogLevel = next.LogLevel
	in.cfg.APIKey, in.cfg.APIKeyFile = next.APIKey, next.APIKeyFile
	in.cfg.AdminPassword, in.cfg.AdminPasswordFile = next.AdminPassword, next.AdminPasswordFile
	in.cfg.Metrics, in.cfg.DrainWindow, in.cfg.ShutdownTimeout = next.Metrics, next.DrainWindow, next.ShutdownTimeout
	if tlsStays {
		in.cfg.TLSCert, in.cfg.TLSKey = next.TLSCert, next.TLSKey
	}

	restart := in.needsRestart(&next)
	for _, name := range applied {
		log.Info("reloaded", "setting", name) // never the value: some are secrets
	}
	log.Info("configuration reloaded", "applied", strings.Join(applied, ","), "needs_restart", strings.Join(restart, ","))
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
		running, file := s.get(&in.cfg), s.get(next)
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
	if !reflect.DeepEqual(in.cfg.Namespaces, next.Namespaces) {
		names = append(names, "namespaces")
		in.logger.Warn(msg, "setting", "namespaces")
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

func sameCertificate(a, b *tls.Certificate) bool {
	if a == nil || b == nil {
		return a == b
	}
	return slices.EqualFunc(a.Certificate, b.Certificate, slices.Equal)
}
