package main

import (
	"bufio"
	"context"
	"io"
	"net"
	"net/http"
	"os"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/gorilla/websocket"
	"github.com/pires/go-proxyproto"
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

// TestServeProxyProtocol: with proxy_protocol, a connection from a trusted
// proxy that opens with a PROXY header (v1 or v2) is the client it names,
// for the per-IP limit and the log; one without a header is served as it
// is; a PROXY header from anyone else is refused as a bad request.
func TestServeProxyProtocol(t *testing.T) {
	t.Parallel()
	s := startServer(t, nil, "--trusted-proxies", "127.0.0.1", "--proxy-protocol",
		"--max-connections-per-ip", "1", "--log-level", "debug")
	dial := func(local string, header *proxyproto.Header) int {
		t.Helper()
		return dialProxied(t, s.addr, local, header, nil)
	}
	server, _ := net.ResolveTCPAddr("tcp", s.addr)
	from := func(version byte, client string) *proxyproto.Header {
		return proxyproto.HeaderProxyFromAddrs(version, &net.TCPAddr{IP: net.ParseIP(client), Port: 40000}, server)
	}

	if st := dial("127.0.0.1", from(1, "203.0.113.7")); st != 101 {
		t.Fatalf("PROXY v1 from the trusted balancer: %d", st)
	}
	waitFor(t, "the connection logged with the client's address", func() bool {
		return strings.Contains(s.logs.String(), `"msg":"connected",`) && strings.Contains(s.logs.String(), `"remote":"203.0.113.7:40000"`)
	})
	if st := dial("127.0.0.1", from(2, "203.0.113.7")); st != http.StatusTooManyRequests {
		t.Fatalf("PROXY v2 naming the same client: %d, want 429", st)
	}
	if st := dial("127.0.0.1", from(2, "2001:db8::7")); st != 101 {
		t.Fatalf("PROXY v2, another client: %d", st)
	}
	// Without a header (a health check, say), the balancer is itself.
	if st := dial("127.0.0.1", nil); st != 101 {
		t.Fatalf("no header from the balancer: %d", st)
	}
	// A PROXY header from a peer that is not trusted is not read: it is a
	// bad HTTP request.
	if st := dial("127.0.0.2", from(1, "203.0.113.99")); st != http.StatusBadRequest {
		t.Fatalf("PROXY header from an untrusted peer: %d, want 400", st)
	}
	if st := dial("127.0.0.2", nil); st != 101 {
		t.Fatalf("plain connection from an untrusted peer: %d", st)
	}

	err := run(context.Background(), []string{"serve", "--proxy-protocol"}, nil, io.Discard)
	if err == nil || !strings.Contains(err.Error(), "proxy_protocol needs trusted_proxies") {
		t.Fatalf("proxy_protocol alone: %v", err)
	}
}

// dialProxied opens a WebSocket to addr from local, first sending header
// (if any), with the request headers h, and returns the handshake's status.
func dialProxied(t *testing.T, addr, local string, header *proxyproto.Header, h http.Header) int {
	t.Helper()
	nd := &net.Dialer{LocalAddr: &net.TCPAddr{IP: net.ParseIP(local)}, Timeout: 5 * time.Second}
	d := websocket.Dialer{HandshakeTimeout: 5 * time.Second, Subprotocols: []string{"herald.v1"},
		NetDialContext: func(ctx context.Context, network, addr string) (net.Conn, error) {
			c, err := nd.DialContext(ctx, network, addr)
			if err == nil && header != nil {
				if _, err = header.WriteTo(c); err != nil {
					c.Close()
				}
			}
			return c, err
		}}
	ws, resp, err := d.Dial("ws://"+addr+"/ws", h)
	if err == nil {
		t.Cleanup(func() { ws.Close() })
		return http.StatusSwitchingProtocols
	}
	if resp == nil {
		if strings.Contains(err.Error(), "assign requested address") {
			t.Skipf("cannot dial from %s on this host: %v", local, err)
		}
		t.Fatalf("dial from %s: %v", local, err)
	}
	return resp.StatusCode
}

// TestServeProxyProtocolForwarded: on a connection whose address came from
// a PROXY header, X-Forwarded-For and Forwarded are not read, even when
// that address is inside trusted_proxies: the balancer vouches for the
// address it saw, and a client behind it (an internal one, inside the
// trusted ranges) must not claim another. Without a PROXY header, the
// balancer's own connection is a trusted proxy's as before.
func TestServeProxyProtocolForwarded(t *testing.T) {
	t.Parallel()
	s := startServer(t, nil, "--trusted-proxies", "127.0.0.0/8", "--proxy-protocol", "--log-level", "debug")
	server, _ := net.ResolveTCPAddr("tcp", s.addr)
	internal := proxyproto.HeaderProxyFromAddrs(1, &net.TCPAddr{IP: net.ParseIP("127.0.0.9"), Port: 40000}, server)
	spoof := http.Header{"X-Forwarded-For": {"198.51.100.9"}, "Forwarded": {"for=198.51.100.9"}}
	if st := dialProxied(t, s.addr, "127.0.0.1", internal, spoof); st != 101 {
		t.Fatalf("PROXY header naming a trusted address, with X-Forwarded-For: %d", st)
	}
	waitFor(t, "the connection logged with the PROXY header's address", func() bool {
		return strings.Contains(s.logs.String(), `"remote":"127.0.0.9:40000"`)
	})
	if strings.Contains(s.logs.String(), "198.51.100.9") {
		t.Fatalf("X-Forwarded-For was believed behind a PROXY header:\n%s", s.logs.String())
	}
	xff := http.Header{"X-Forwarded-For": {"203.0.113.8"}}
	if st := dialProxied(t, s.addr, "127.0.0.1", nil, xff); st != 101 {
		t.Fatalf("no PROXY header, X-Forwarded-For from the trusted balancer: %d", st)
	}
	waitFor(t, "X-Forwarded-For read from the balancer's own connection", func() bool {
		return strings.Contains(s.logs.String(), `"remote":"203.0.113.8"`)
	})
}

// TestServeProxyProtocolReload: a SIGHUP that changes trusted_proxies
// changes whose PROXY header the listener reads, from the next connection.
func TestServeProxyProtocolReload(t *testing.T) {
	t.Parallel()
	cfgFile := filepath.Join(t.TempDir(), "herald.yaml")
	write := func(content string) {
		t.Helper()
		if err := os.WriteFile(cfgFile, []byte(content), 0o600); err != nil {
			t.Fatal(err)
		}
	}
	write("proxy_protocol: true\ntrusted_proxies: 127.0.0.1\n")
	hup := make(chan os.Signal, 1)
	s := startServerReload(t, hup, nil, "--config", cfgFile)
	healthz := func() int {
		t.Helper()
		c, err := net.DialTimeout("tcp", s.addr, 5*time.Second)
		if err != nil {
			t.Fatal(err)
		}
		defer c.Close()
		_ = c.SetDeadline(time.Now().Add(5 * time.Second))
		if _, err := io.WriteString(c, "PROXY TCP4 203.0.113.7 127.0.0.1 40000 80\r\nGET /healthz HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n"); err != nil {
			t.Fatal(err)
		}
		resp, err := http.ReadResponse(bufio.NewReader(c), nil)
		if err != nil {
			t.Fatal(err)
		}
		resp.Body.Close()
		return resp.StatusCode
	}
	if st := healthz(); st != http.StatusOK {
		t.Fatalf("PROXY header from the trusted peer: %d", st)
	}
	write("proxy_protocol: true\ntrusted_proxies: 10.0.0.0/8\n")
	hup <- syscall.SIGHUP
	waitFor(t, "the reload", func() bool { return strings.Contains(s.logs.String(), `"msg":"configuration reloaded"`) })
	if st := healthz(); st != http.StatusBadRequest {
		t.Fatalf("PROXY header from a peer no longer trusted: %d, want 400", st)
	}
}
