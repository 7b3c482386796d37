package herald

import (
	"context"
	"fmt"
	"net"
	"net/http"
	"net/netip"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/gorilla/websocket"

	"github.com/heraldhq/herald/protocol"
)

// The walk over the forwarded headers, entry by entry.
func TestForwardedWalk(t *testing.T) {
	t.Parallel()
	trusted, err := ParseTrustedProxies([]string{"10.0.0.0/8", "fd00::/8", "192.0.2.1"})
	if err != nil {
		t.Fatal(err)
	}
	pt, err := newProxyTrust(trusted, "")
	if err != nil {
		t.Fatal(err)
	}
	const peer = "" // the walk gives up: the caller uses the peer
	xff := []struct {
		name, want string
		lines      []string
	}{
		{"absent", peer, nil},
		{"one client", "203.0.113.7", []string{"203.0.113.7"}},
		{"trusted hops skipped", "203.0.113.7", []string{"203.0.113.7, 10.1.1.1, 192.0.2.1"}},
		{"spoofed entries left of the real one", "203.0.113.7", []string{"1.1.1.1, 10.9.9.9, 203.0.113.7"}},
		{"lines joined in order", "203.0.113.7", []string{"1.1.1.1", "203.0.113.7", "10.1.1.1"}},
		{"every hop trusted: the leftmost", "10.2.2.2", []string{"10.2.2.2, 10.1.1.1"}},
		{"IPv6 bare", "2001:db8::7", []string{"2001:db8::7"}},
		{"IPv6 in brackets with a port", "2001:db8::7", []string{"[2001:db8::7]:4711"}},
		{"IPv4 with a port", "203.0.113.7", []string{"203.0.113.7:4711"}},
		{"IPv4-mapped IPv6 unmapped", "203.0.113.7", []string{"::ffff:203.0.113.7"}},
		{"garbage", peer, []string{"not-an-address"}},
		{"garbage behind a trusted hop", peer, []string{"oops, 10.1.1.1"}},
		{"garbage left of the client is never read", "203.0.113.7", []string{"oops, 203.0.113.7"}},
		{"empty entry", peer, []string{"203.0.113.7,,10.1.1.1"}},
		{"empty header", peer, []string{""}},
		{"unknown", peer, []string{"unknown"}},
		{"zone", peer, []string{"fe80::1%eth0"}},
		{"IPv4 in brackets", peer, []string{"[203.0.113.7]"}},
		{"port out of range", peer, []string{"203.0.113.7:70000"}},
	}
	for _, tc := range xff {
		got, ok := xffClient(tc.lines, pt.trusts)
		if s := addrOr(got, ok); s != tc.want {
			t.Errorf("X-Forwarded-For %s %q: %q, want %q", tc.name, tc.lines, s, tc.want)
		}
	}
	fwd := []struct {
		name, want string
		lines      []string
	}{
		{"absent", peer, nil},
		{"RFC 7239 example", "192.0.2.60", []string{`for=192.0.2.60;proto=http;by=203.0.113.43`}},
		{"quoted IPv6 with port", "2001:db8:cafe::17", []string{`for="[2001:db8:cafe::17]:4711"`}},
		{"case and spaces", "203.0.113.7", []string{`For="203.0.113.7" ; Proto=https , for=10.1.1.1`}},
		{"trusted hops skipped", "203.0.113.7", []string{`for=203.0.113.7, for=10.1.1.1`, `for="[fd00::1]"`}},
		{"spoofed element left of the real one", "203.0.113.7", []string{`for=1.1.1.1, for=203.0.113.7`}},
		{"garbled line left of the real one", "203.0.113.7", []string{`for="1.1.1.1`, `for=203.0.113.7`}},
		{"garbled line behind trusted hops", peer, []string{`for="1.1.1.1`, `for=10.1.1.1`}},
		{"quoted comma is not a separator", "203.0.113.7", []string{`for=203.0.113.7;host="a,b"`}},
		{"escaped quote", "203.0.113.7", []string{`for=203.0.113.7;ext="a\"b"`}},
		{"obfuscated port", "203.0.113.7", []string{`for="203.0.113.7:_x1"`}},
		{"unknown", peer, []string{`for=unknown, for=10.1.1.1`}},
		{"obfuscated node", peer, []string{`for=_hidden`}},
		{"no for=", peer, []string{`proto=https;by=10.0.0.1`}},
		{"empty elements skipped", "203.0.113.7", []string{`, for=203.0.113.7 ,`}},
		{"repeated parameter", peer, []string{`for=203.0.113.7;for=203.0.113.8`}},
		{"no value", peer, []string{`for`}},
		{"unclosed quote", peer, []string{`for="203.0.113.7`}},
		{"junk after a value", peer, []string{`for=203.0.113.7 x`}},
		{"IPv6 with a port and no brackets", peer, []string{`for="2001:db8::7:4711:x"`}},
		// nginx's proxy_set_header Forwarded "$http_forwarded, for=$remote_addr"
		// appends to the client's text on one line: the proxy's element is
		// read however the client's prefix is garbled.
		{"open quote left of the proxy's element", "203.0.113.7", []string{`for="1.1.1.1, for=203.0.113.7`}},
		{"repeated parameter left of the proxy's element", "203.0.113.7", []string{`for=1.1.1.1;for=2.2.2.2, for=203.0.113.7`}},
		{"junk left of the proxy's element", "203.0.113.7", []string{`x y z;;=, for=203.0.113.7;proto=https`}},
		{"trailing backslash left of a quoted element", "2001:db8::7", []string{`for="a\, for="[2001:db8::7]:4711"`}},
		{"quoted comma and escaped quote in the proxy's element", "203.0.113.7", []string{`for="1.1.1.1, for=203.0.113.7;ext="a,\"b\\"`}},
		{"garbage left, trusted hops right", "203.0.113.7", []string{`for="1.1.1.1, for=203.0.113.7, for=10.1.1.1`, `for=192.0.2.1`}},
		{"empty pairs", "203.0.113.7", []string{`;for=203.0.113.7;;proto=https;`}},
		{"garbage reached behind a trusted hop", peer, []string{`for="1.1.1.1, for=10.1.1.1`}},
		{"garbled element right of a good one", peer, []string{`for=203.0.113.7, for="10.1.1.1`}},
		{"repeated parameter behind a trusted hop", peer, []string{`for=1.1.1.1;for=2.2.2.2, for=10.1.1.1`}},
	}
	for _, tc := range fwd {
		got, ok := forwardedClient(tc.lines, pt.trusts)
		if s := addrOr(got, ok); s != tc.want {
			t.Errorf("Forwarded %s %q: %q, want %q", tc.name, tc.lines, s, tc.want)
		}
	}
}

func addrOr(a netip.Addr, ok bool) string {
	if !ok {
		return ""
	}
	return a.String()
}

func TestTrustedProxiesInvalid(t *testing.T) {
	t.Parallel()
	for _, bad := range []string{"10.0.0.0/33", "example.com", "fe80::1%eth0", "10.0.0.0/", ""} {
		if _, err := ParseTrustedProxies([]string{bad}); err == nil || !strings.Contains(err.Error(), "trusted proxy") {
			t.Errorf("ParseTrustedProxies(%q): %v, want an error naming it", bad, err)
		}
	}
	if _, err := New(Config{TrustedProxies: []netip.Prefix{{}}}); err == nil {
		t.Error("New with a zero prefix: no error")
	}
	if _, err := New(Config{ForwardedHeader: "X-Real-IP"}); err == nil || !strings.Contains(err.Error(), "X-Real-IP") {
		t.Errorf("New with ForwardedHeader X-Real-IP: %v", err)
	}
	n, err := New(Config{TrustedProxies: []netip.Prefix{netip.MustParsePrefix("127.0.0.1/32")}, ForwardedHeader: "forwarded"})
	if err != nil {
		t.Fatal(err)
	}
	defer n.Shutdown(context.Background())
	if err := n.SetTrustedProxies([]netip.Prefix{{}}, ""); err == nil {
		t.Error("SetTrustedProxies with a zero prefix: no error")
	}
	if err := n.SetSettings(Settings{ForwardedHeader: "X-Real-IP"}); err == nil {
		t.Error("SetSettings with ForwardedHeader X-Real-IP: no error")
	}
	// Neither refusal changed anything.
	r := &http.Request{RemoteAddr: "127.0.0.1:1234", Header: http.Header{"Forwarded": {"for=203.0.113.7"}}}
	if got := n.ClientAddr(r); got != "203.0.113.7" {
		t.Fatalf("after refused changes, ClientAddr %q", got)
	}
}

// dialFrom dials the handshake from the loopback address local (all of
// 127.0.0.0/8 is this host's on Linux), so that the node sees a peer other
// than 127.0.0.1.
func dialFrom(t *testing.T, local, url string, hdr http.Header) (int, *websocket.Conn) {
	t.Helper()
	nd := &net.Dialer{LocalAddr: &net.TCPAddr{IP: net.ParseIP(local)}, Timeout: 5 * time.Second}
	d := websocket.Dialer{NetDialContext: nd.DialContext, HandshakeTimeout: 5 * time.Second,
		Subprotocols: []string{protocol.Subprotocol}}
	ws, resp, err := d.Dial(url, hdr)
	if err == nil {
		t.Cleanup(func() { ws.Close() })
		return http.StatusSwitchingProtocols, ws
	}
	if resp == nil {
		if strings.Contains(err.Error(), "assign requested address") {
			t.Skipf("cannot dial from %s on this host: %v", local, err)
		}
		t.Fatalf("dial from %s: %v", local, err)
	}
	return resp.StatusCode, nil
}

// remotes records the RemoteAddr that OnConnect and the connect hook see.
type remotes struct {
	mu   sync.Mutex
	seen []string
}

func (r *remotes) add(s string) {
	r.mu.Lock()
	r.seen = append(r.seen, s)
	r.mu.Unlock()
}

// after waits until n addresses were seen and returns the n-th (from 1)
// with everything seen since. OnConnect may run after the dial has its
// 101 (a raw client's after its connect hook), so calls of successive
// dials may land out of order: a test asks whether an address is among
// those seen once its count is reached, not whether it came last.
func (r *remotes) after(t *testing.T, n int) []string {
	t.Helper()
	var out []string
	waitFor(t, fmt.Sprintf("%d remote addresses", n), func() bool {
		r.mu.Lock()
		defer r.mu.Unlock()
		if len(r.seen) < n {
			return false
		}
		out = append([]string(nil), r.seen...)
		return true
	})
	return out
}

// seenOnce reports whether exactly one address in seen satisfies match.
func seenOnce(seen []string, match func(string) bool) bool {
	k := 0
	for _, s := range seen {
		if match(s) {
			k++
		}
	}
	return k == 1
}

func is(want string) func(string) bool { return func(s string) bool { return s == want } }

func hasPrefix(p string) func(string) bool {
	return func(s string) bool { return strings.HasPrefix(s, p) }
}

// Over the wire: a client behind a trusted proxy is counted, logged and
// shown to hooks with its forwarded address; the same headers from an
// untrusted peer are ignored, and a client's own entries cannot spoof one.
func TestTrustedProxiesOverTheWire(t *testing.T) {
	t.Parallel()
	var seen, hooked remotes
	ts := newTestServer(t, Config{
		TrustedProxies: []netip.Prefix{netip.MustParsePrefix("127.0.0.1/32"), netip.MustParsePrefix("10.0.0.0/8")},
		Limits:         Limits{MaxConnectionsPerIP: 1},
		OnConnect:      func(c ClientInfo) { seen.add(c.RemoteAddr) },
		Hooks: Hooks{Connect: func(ctx context.Context, e *ConnectEvent) (*ConnectReply, error) {
			hooked.add(e.Client.RemoteAddr)
			return nil, nil
		}},
	})
	xff := func(v string) http.Header { return http.Header{"X-Forwarded-For": {v}} }

	// Through the trusted proxy (127.0.0.1): the forwarded client is seen,
	// by OnConnect and by the connect hook of a protocol client.
	st, ws := dialFrom(t, "127.0.0.1", ts.url+"/ws", xff("203.0.113.7, 10.1.2.3"))
	if st != 101 {
		t.Fatalf("first client: %d", st)
	}
	if got := seen.after(t, 1); !seenOnce(got, is("203.0.113.7")) {
		t.Fatalf("OnConnect saw %q, want 203.0.113.7", got)
	}
	c := &testClient{t: t, ws: ws}
	c.mustOK(protocol.Command{Cmd: "connect"})
	if got := hooked.after(t, 1); !seenOnce(got, is("203.0.113.7")) {
		t.Fatalf("the connect hook saw %q, want 203.0.113.7", got)
	}
	// The per-IP cap counts the forwarded address: that client's second
	// connection is refused, another client behind the same proxy is not.
	if st, _ := dialFrom(t, "127.0.0.1", ts.url+"/ws", xff("203.0.113.7")); st != http.StatusTooManyRequests {
		t.Fatalf("second connection of 203.0.113.7: %d, want 429", st)
	}
	if st, _ := dialFrom(t, "127.0.0.1", ts.url+"/ws", xff("203.0.113.8")); st != 101 {
		t.Fatalf("another client behind the proxy: %d, want 101", st)
	}
	// Spoofing: the client prepends an address of its own; the proxy
	// appends the one it saw (203.0.113.7, at its cap). The fake is ignored.
	if st, _ := dialFrom(t, "127.0.0.1", ts.url+"/ws", xff("198.51.100.1, 203.0.113.7")); st != http.StatusTooManyRequests {
		t.Fatalf("spoofed X-Forwarded-For: %d, want 429 (counted as 203.0.113.7)", st)
	}
	// The raw connect hook sees the forwarded client too.
	if st, _ := dialFrom(t, "127.0.0.1", ts.url+"/ws/raw?channel=c", xff("[2001:db8::9]:443")); st != 101 {
		t.Fatalf("raw client: %d", st)
	}
	if got := hooked.after(t, 2); !seenOnce(got, is("2001:db8::9")) {
		t.Fatalf("the raw connect hook saw %q, want 2001:db8::9", got)
	}

	// From an untrusted peer (127.0.0.2) the header is ignored: it is
	// counted as itself, at its cap after one connection, whatever it says.
	if st, _ := dialFrom(t, "127.0.0.2", ts.url+"/ws", xff("203.0.113.50")); st != 101 {
		t.Fatalf("untrusted peer: %d", st)
	}
	if got := seen.after(t, 4); !seenOnce(got, hasPrefix("127.0.0.2:")) || !seenOnce(got, is("2001:db8::9")) {
		t.Fatalf("OnConnect saw %q: want the raw client 2001:db8::9 and the untrusted peer as 127.0.0.2:port", got)
	}
	if st, _ := dialFrom(t, "127.0.0.2", ts.url+"/ws", xff("203.0.113.51")); st != http.StatusTooManyRequests {
		t.Fatalf("untrusted peer claiming another address: %d, want 429", st)
	}

	// A malformed header from the trusted proxy falls back to the peer,
	// 127.0.0.1 itself, which then has its one connection.
	if st, _ := dialFrom(t, "127.0.0.1", ts.url+"/ws", xff("unknown")); st != 101 {
		t.Fatalf("malformed header: %d", st)
	}
	if got := seen.after(t, 5); !seenOnce(got, hasPrefix("127.0.0.1:")) {
		t.Fatalf("OnConnect saw %q, want the malformed header's client as 127.0.0.1:port", got)
	}
	if st, _ := dialFrom(t, "127.0.0.1", ts.url+"/ws", xff("not an address")); st != http.StatusTooManyRequests {
		t.Fatalf("second malformed header: %d, want 429 (counted as the proxy)", st)
	}
}

// SSE behind a trusted proxy: a stream is counted against the per-IP cap,
// and shown to OnConnect, under the address the proxy forwarded, exactly
// as a WebSocket is; from an untrusted peer the header is ignored.
func TestTrustedProxiesSSE(t *testing.T) {
	t.Parallel()
	var seen remotes
	ts := newTestServer(t, Config{
		TrustedProxies: []netip.Prefix{netip.MustParsePrefix("127.0.0.1/32")},
		Limits:         Limits{MaxConnectionsPerIP: 1},
		OnConnect: func(c ClientInfo) {
			if c.SSE {
				seen.add(c.RemoteAddr)
			}
		},
	})
	// A client dialling from local, one connection per request (a kept-
	// alive one would carry the next request from the same address anyway).
	from := func(local string) *http.Client {
		nd := &net.Dialer{LocalAddr: &net.TCPAddr{IP: net.ParseIP(local)}, Timeout: 5 * time.Second}
		if c, err := nd.Dial("tcp", ts.srv.Listener.Addr().String()); err != nil {
			if strings.Contains(err.Error(), "assign requested address") {
				t.Skipf("cannot dial from %s on this host: %v", local, err)
			}
			t.Fatalf("dial from %s: %v", local, err)
		} else {
			c.Close()
		}
		tr := &http.Transport{DialContext: nd.DialContext, DisableKeepAlives: true}
		t.Cleanup(tr.CloseIdleConnections)
		return &http.Client{Transport: tr}
	}
	proxy, stranger := from("127.0.0.1"), from("127.0.0.2")
	open := func(hc *http.Client, xff string) int {
		t.Helper()
		c, resp, body := sseGetWith(t, hc, ts.sseURL(nil, "x"), http.Header{"X-Forwarded-For": {xff}})
		if c != nil {
			c.subscribed("x") // the stream is up; it stays open until the test ends
		} else if resp.StatusCode != http.StatusTooManyRequests {
			t.Fatalf("X-Forwarded-For %q: %d %s", xff, resp.StatusCode, body)
		}
		return resp.StatusCode
	}

	// Through the trusted proxy: the forwarded client, counted as itself.
	if st := open(proxy, "203.0.113.7"); st != http.StatusOK {
		t.Fatalf("first stream of 203.0.113.7: %d", st)
	}
	if got := seen.after(t, 1); !seenOnce(got, is("203.0.113.7")) {
		t.Fatalf("OnConnect saw %q, want 203.0.113.7", got)
	}
	if st := open(proxy, "203.0.113.7"); st != http.StatusTooManyRequests {
		t.Fatalf("second stream of 203.0.113.7: %d, want 429", st)
	}
	if st := open(proxy, "203.0.113.8"); st != http.StatusOK {
		t.Fatalf("another client behind the proxy: %d, want 200", st)
	}
	// The client's own entry, left of what the proxy appended, is ignored.
	if st := open(proxy, "198.51.100.1, 203.0.113.7"); st != http.StatusTooManyRequests {
		t.Fatalf("spoofed X-Forwarded-For: %d, want 429 (counted as 203.0.113.7)", st)
	}

	// From an untrusted peer the header counts for nothing.
	if st := open(stranger, "203.0.113.50"); st != http.StatusOK {
		t.Fatalf("untrusted peer: %d", st)
	}
	if got := seen.after(t, 3); !seenOnce(got, hasPrefix("127.0.0.2:")) || !seenOnce(got, is("203.0.113.8")) {
		t.Fatalf("OnConnect saw %q: want 203.0.113.8 and the untrusted peer as 127.0.0.2:port", got)
	}
	if st := open(stranger, "203.0.113.51"); st != http.StatusTooManyRequests {
		t.Fatalf("untrusted peer claiming another address: %d, want 429 (counted as 127.0.0.2)", st)
	}
}

// With ForwardedHeader Forwarded only that header is read: a client's
// X-Forwarded-For, which a proxy writing Forwarded passes on untouched,
// counts for nothing. And SetTrustedProxies changes the policy for the
// next handshake.
func TestTrustedProxiesForwardedAndReload(t *testing.T) {
	t.Parallel()
	var seen remotes
	ts := newTestServer(t, Config{
		TrustedProxies:  []netip.Prefix{netip.MustParsePrefix("127.0.0.0/8")},
		ForwardedHeader: HeaderForwarded,
		OnConnect:       func(c ClientInfo) { seen.add(c.RemoteAddr) },
	})
	hdr := http.Header{"Forwarded": {`for="[2001:db8:cafe::17]:4711";proto=https`}, "X-Forwarded-For": {"198.51.100.1"}}
	if st, _ := dialFrom(t, "127.0.0.3", ts.url+"/ws", hdr); st != 101 {
		t.Fatal(st)
	}
	if got := seen.after(t, 1); !seenOnce(got, is("2001:db8:cafe::17")) {
		t.Fatalf("OnConnect saw %q, want 2001:db8:cafe::17", got)
	}
	only := http.Header{"X-Forwarded-For": {"198.51.100.1"}}
	if st, _ := dialFrom(t, "127.0.0.3", ts.url+"/ws", only); st != 101 {
		t.Fatal(st)
	}
	if got := seen.after(t, 2); !seenOnce(got, hasPrefix("127.0.0.3:")) {
		t.Fatalf("with X-Forwarded-For alone OnConnect saw %q, want the peer", got)
	}
	if err := ts.node.SetTrustedProxies(nil, ""); err != nil {
		t.Fatal(err)
	}
	if st, _ := dialFrom(t, "127.0.0.3", ts.url+"/ws", hdr); st != 101 {
		t.Fatal(st)
	}
	if got := seen.after(t, 3); len(got) != 3 || !seenOnce(got, is("2001:db8:cafe::17")) {
		t.Fatalf("with no proxy trusted OnConnect saw %q, want the peer", got)
	}
}

// The parsers take any bytes a proxy or client may send without panicking,
// and only ever return an address that is in the header.
func FuzzForwardedHeaders(f *testing.F) {
	for _, s := range []string{`for=192.0.2.60;proto=http`, `for="[2001:db8::1]:80", for=unknown`, `1.2.3.4, 10.0.0.1`,
		`for="\"`, `[::1]:`, `for=_x;for=_y`, ` , ,`,
		`for="1.1.1.1, for=203.0.113.7`, `for=1.1.1.1;for=2.2.2.2, for=10.0.0.1`, `for="a\\", for="[::1]:1";x="\",\""`} {
		f.Add(s)
	}
	pt, _ := newProxyTrust([]netip.Prefix{netip.MustParsePrefix("10.0.0.0/8")}, "")
	f.Fuzz(func(t *testing.T, s string) {
		for _, walk := range []func([]string, func(netip.Addr) bool) (netip.Addr, bool){xffClient, forwardedClient} {
			if a, ok := walk([]string{s}, pt.trusts); ok && a.Is4() && !strings.Contains(s, a.String()) {
				t.Fatalf("%q: %v, which it does not hold", s, a)
			}
		}
	})
}

// BenchmarkClientAddr measures what trusted proxies add to a handshake:
// finding the client behind two trusted hops, from X-Forwarded-For and
// from Forwarded, against the peer alone (no proxy trusted).
func BenchmarkClientAddr(b *testing.B) {
	trusted := []netip.Prefix{netip.MustParsePrefix("10.0.0.0/8"), netip.MustParsePrefix("127.0.0.1/32")}
	for _, bc := range []struct {
		name    string
		trusted []netip.Prefix
		header  string
		value   string
	}{
		{"peer only", nil, "", ""},
		{"X-Forwarded-For", trusted, HeaderXForwardedFor, "198.51.100.1, 203.0.113.7, 10.1.2.3"},
		{"Forwarded", trusted, HeaderForwarded, `for=198.51.100.1, for="203.0.113.7:4711";proto=https, for=10.1.2.3`},
	} {
		b.Run(bc.name, func(b *testing.B) {
			n, err := New(Config{TrustedProxies: bc.trusted, ForwardedHeader: bc.header})
			if err != nil {
				b.Fatal(err)
			}
			defer n.Shutdown(context.Background())
			r := &http.Request{RemoteAddr: "127.0.0.1:50000", Header: http.Header{}}
			if bc.header != "" {
				r.Header.Set(bc.header, bc.value)
			}
			b.ReportAllocs()
			for b.Loop() {
				if ip, _ := n.clientAddr(r); ip == "" {
					b.Fatal("no address")
				}
			}
		})
	}
}
