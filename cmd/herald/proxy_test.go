package main

import (
	"context"
	"io"
	"net/http"
	"os"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
)

// TestServeTrustedProxies: with trusted_proxies, serve counts and logs a
// client behind the proxy by its forwarded address; a SIGHUP that changes
// the header or drops the proxies applies to the next handshake.
func TestServeTrustedProxies(t *testing.T) {
	t.Parallel()
	cfgFile := filepath.Join(t.TempDir(), "herald.yaml")
	write := func(content string) {
		t.Helper()
		if err := os.WriteFile(cfgFile, []byte(content), 0o600); err != nil {
			t.Fatal(err)
		}
	}
	const pw = "admin_password: a long admin password\n"
	write(pw + "trusted_proxies:\n  - 127.0.0.1\n  - 10.0.0.0/8\nmax_connections_per_ip: 1\n")
	hup := make(chan os.Signal, 1)
	s := startServerReload(t, hup, nil, "--config", cfgFile, "--log-level", "debug")
	reloads := 0
	reload := func() {
		t.Helper()
		reloads++
		hup <- syscall.SIGHUP
		waitFor(t, "the reload", func() bool {
			return strings.Count(s.logs.String(), `"msg":"configuration reloaded"`) >= reloads
		})
	}
	url := "ws://" + s.addr + "/ws"
	status := func(hdr http.Header) int {
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
	xff := func(v string) http.Header { return http.Header{"X-Forwarded-For": {v}} }

	if st := status(xff("203.0.113.7, 10.0.0.2")); st != 101 {
		t.Fatalf("first client behind the proxy: %d", st)
	}
	waitFor(t, "the connection logged with the client's address", func() bool {
		return strings.Contains(s.logs.String(), `"remote":"203.0.113.7"`)
	})
	if st := status(xff("198.51.100.1, 203.0.113.7")); st != http.StatusTooManyRequests {
		t.Fatalf("same client again, with a spoofed entry in front: %d, want 429", st)
	}
	if st := status(xff("203.0.113.8")); st != 101 {
		t.Fatalf("another client behind the proxy: %d, want 101", st)
	}
	// The dashboard logs a failed login with the client's address too.
	req, _ := http.NewRequest("POST", "http://"+s.addr+"/admin/login", strings.NewReader("password=wrong"))
	req.Header.Set("Content-Type", "application/x-www-form-urlencoded")
	req.Header.Set("X-Forwarded-For", "203.0.113.66")
	client := &http.Client{CheckRedirect: func(*http.Request, []*http.Request) error { return http.ErrUseLastResponse }}
	resp, err := client.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	resp.Body.Close()
	if !strings.Contains(s.logs.String(), `"msg":"admin login failed","remote":"203.0.113.66"`) {
		t.Fatalf("no failed login logged with the client's address:\n%s", s.logs)
	}

	// forwarded_header forwarded: X-Forwarded-For is no longer read, so a
	// header naming a new client is the proxy, 127.0.0.1, itself.
	write(pw + "trusted_proxies: 127.0.0.1, 10.0.0.0/8\nforwarded_header: forwarded\nmax_connections_per_ip: 1\n")
	reload()
	if !strings.Contains(s.logs.String(), `"setting":"forwarded_header","old":"x-forwarded-for","new":"forwarded"`) {
		t.Fatalf("the reload did not log forwarded_header:\n%s", s.logs)
	}
	if st := status(http.Header{"Forwarded": {`for="[2001:db8::1]:1234"`}}); st != 101 {
		t.Fatalf("a client named in Forwarded: %d", st)
	}
	if st := status(xff("203.0.113.9")); st != 101 {
		t.Fatalf("first connection counted as the proxy: %d", st)
	}
	if st := status(xff("203.0.113.10")); st != http.StatusTooManyRequests {
		t.Fatalf("X-Forwarded-For with forwarded_header forwarded: %d, want 429 (counted as the proxy)", st)
	}

	// No proxy trusted: every header is ignored.
	write(pw + "max_connections_per_ip: 1\n")
	reload()
	if !strings.Contains(s.logs.String(), `"setting":"trusted_proxies","old":"127.0.0.1/32,10.0.0.0/8","new":""`) {
		t.Fatalf("the reload did not log trusted_proxies:\n%s", s.logs)
	}
	if st := status(http.Header{"Forwarded": {`for=203.0.113.11`}}); st != http.StatusTooManyRequests {
		t.Fatalf("Forwarded with no proxy trusted: %d, want 429 (counted as the peer)", st)
	}
}

func TestServeTrustedProxiesInvalid(t *testing.T) {
	t.Parallel()
	err := run(context.Background(), []string{"serve", "--trusted-proxies", "10.0.0.0/8,proxy.internal"}, nil, io.Discard)
	if err == nil || !strings.Contains(err.Error(), `invalid trusted_proxies`) || !strings.Contains(err.Error(), `"proxy.internal"`) ||
		!strings.Contains(err.Error(), "flag --trusted-proxies") {
		t.Fatalf("got %v", err)
	}
	err = run(context.Background(), []string{"serve"}, []string{"HERALD_FORWARDED_HEADER=x-real-ip"}, io.Discard)
	if err == nil || !strings.Contains(err.Error(), "want x-forwarded-for or forwarded") {
		t.Fatalf("got %v", err)
	}
}
