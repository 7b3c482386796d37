package main

import (
	"log/slog"
	"net/http"
	"strings"
	"testing"

	"github.com/heraldhq/herald/internal/dashtest"
)

// The dashboard itself (sessions, CSRF, routes) is tested in package
// dashboard; these tests check that herald serve mounts it and wires it:
// the password from the configuration, the logger's recent errors, the
// sampler, the version and the broker.

const testAdminPassword = "correct horse battery staple"

// TestServeAdmin: herald serve mounts the dashboard at /admin, off without
// admin_password; with one, a login gets a session (not Secure without
// TLS), the stats name this build and the broker, the charts' sampler runs,
// the recent errors come from the server's log, and neither the password
// nor the session token is logged.
func TestServeAdmin(t *testing.T) {
	t.Parallel()
	t.Run("off without a password", func(t *testing.T) {
		t.Parallel()
		s := startServer(t, nil)
		for _, p := range []string{"/admin", "/admin/", "/admin/login", "/admin/api/stats", "/admin/admin.js"} {
			if resp, _ := httpGet(t, "http://"+s.addr+p); resp.StatusCode != http.StatusNotFound {
				t.Errorf("%s: %d, want 404", p, resp.StatusCode)
			}
		}
	})

	s := startServer(t, []string{"HERALD_ADMIN_PASSWORD=" + testAdminPassword})
	c := &dashtest.Browser{T: t, Base: "http://" + s.addr}
	if resp, _ := c.Do("GET", "/admin/", nil, ""); resp.StatusCode != http.StatusSeeOther || resp.Header.Get("Location") != "/admin/login" {
		t.Fatalf("/admin/ without a session: %d %q", resp.StatusCode, resp.Header.Get("Location"))
	}
	if resp := c.Login("wrong password, long enough"); resp.Header.Get("Location") != "/admin/login?error=wrong" {
		t.Fatalf("wrong password: %d %q", resp.StatusCode, resp.Header.Get("Location"))
	}
	resp := c.Login(testAdminPassword)
	if resp.StatusCode != http.StatusSeeOther || c.Token == "" {
		t.Fatalf("login: %d %q", resp.StatusCode, resp.Header.Get("Location"))
	}
	for _, ck := range resp.Cookies() {
		if ck.Name == dashtest.SessionCookie && (ck.Secure || !ck.HttpOnly || ck.Path != "/admin") {
			t.Fatalf("session cookie %+v: want HttpOnly, Path=/admin, not Secure without TLS", ck)
		}
	}
	mustDialWS(t, "ws://"+s.addr+"/ws", nil)
	var stats struct {
		Version, Broker, Ready string
		Samples                []struct{ Connections int }
	}
	waitFor(t, "a stats sample with the connection", func() bool {
		if st := c.GetJSON("/admin/api/stats", &stats); st != http.StatusOK {
			t.Fatalf("stats: %d", st)
		}
		return len(stats.Samples) > 0 && stats.Samples[len(stats.Samples)-1].Connections == 1
	})
	if stats.Version != versionString() || stats.Broker != "memory" || stats.Ready != "ok" {
		t.Fatalf("stats: %+v", stats)
	}
	// The failed login is among the recent errors: the dashboard reads the
	// server's log.
	var errs struct {
		Entries []struct{ Msg, Level string }
	}
	if st := c.GetJSON("/admin/api/errors", &errs); st != http.StatusOK || len(errs.Entries) == 0 ||
		errs.Entries[0].Msg != "admin login failed" || errs.Entries[0].Level != "WARN" {
		t.Fatalf("errors, newest first: %d %+v", st, errs)
	}
	if err := s.stop(t); err != nil {
		t.Fatal(err)
	}
	if logs := s.logs.String(); strings.Contains(logs, testAdminPassword) || strings.Contains(logs, c.Token) {
		t.Fatalf("the password or a session token is in the log:\n%s", logs)
	}
}

// TestLogger: the server's logger keeps WARN and ERROR records for the
// dashboard even when log_level would drop them, with secrets redacted;
// the level follows its LevelVar (what SIGHUP sets).
func TestLogger(t *testing.T) {
	t.Parallel()
	var out strings.Builder
	level := new(slog.LevelVar)
	logger, recent := newLogger(Config{LogLevel: slog.LevelError}, &out, level)
	logger.Warn("careful", "key", secret("hunter2-hunter2"))
	logger.Info("not kept")
	logger.Error("bad")
	got, total := recent.Recent()
	if total != 2 || got[0].Message != "bad" || got[1].Message != "careful" || strings.Join(got[1].Attrs, " ") != "key=(redacted)" {
		t.Fatalf("kept %+v, total %d", got, total)
	}
	if strings.Contains(out.String(), "careful") || !strings.Contains(out.String(), "bad") {
		t.Errorf("log level error: the log holds %q", out.String())
	}
	level.Set(slog.LevelInfo) // what SIGHUP does
	logger.Info("now logged")
	if !strings.Contains(out.String(), "now logged") {
		t.Error("changing the level var does not change the log level")
	}
}
