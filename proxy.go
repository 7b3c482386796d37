package herald

import (
	"fmt"
	"net"
	"net/http"
	"net/netip"
	"strings"
)

// Trusted proxies: the client's address behind a reverse proxy.
//
// A proxy connects to the node itself, so a request's RemoteAddr is the
// proxy's. The proxy writes the address it was connected from into a
// header — X-Forwarded-For, or RFC 7239's Forwarded — appending it to what
// it received, so the header is a list of hops, the client's first, each
// added by the next hop. Only the entries added by hops you run can be
// believed: a client writes whatever it likes in the header it sends, so
// its own entries are on the left. The node therefore reads the list from
// the right, from the peer (which must be trusted, or the header is not
// read at all), skipping every address inside Config.TrustedProxies, and
// takes the first address outside them: the one a trusted hop saw connect.
// A client that prepends entries cannot get past that: its fakes are left
// of the address the proxy appended for it.
//
// When the header is absent, or an entry cannot be read (not an address,
// "unknown", an obfuscated identifier, an element with no for=), the node
// uses the peer's address: a header it cannot read proves nothing, and
// falling back to the proxy keeps the client counted somewhere rather than
// letting a garbled header choose its own address.

// Forwarded headers that Config.ForwardedHeader may name.
const (
	HeaderXForwardedFor = "X-Forwarded-For"
	HeaderForwarded     = "Forwarded"
)

// proxyTrust is the trusted-proxy policy in force: immutable once stored in
// Node.proxies.
type proxyTrust struct {
	prefixes []netip.Prefix // masked, IPv4 ones unmapped
	header   string         // HeaderXForwardedFor or HeaderForwarded
}

// newProxyTrust validates the prefixes and the header name as New does.
func newProxyTrust(prefixes []netip.Prefix, header string) (*proxyTrust, error) {
	pt := &proxyTrust{header: HeaderXForwardedFor}
	switch {
	case header == "" || strings.EqualFold(header, HeaderXForwardedFor):
	case strings.EqualFold(header, HeaderForwarded):
		pt.header = HeaderForwarded
	default:
		return nil, fmt.Errorf("herald: ForwardedHeader %q: want %s or %s", header, HeaderXForwardedFor, HeaderForwarded)
	}
	for _, p := range prefixes {
		if !p.IsValid() {
			return nil, fmt.Errorf("herald: TrustedProxies holds an invalid prefix %q: want an address range such as 10.0.0.0/8 or fd00::/8", p.String())
		}
		if a := p.Addr(); a.Is4In6() && p.Bits() >= 96 {
			// ::ffff:10.0.0.0/104 is 10.0.0.0/8: addresses are compared unmapped.
			p = netip.PrefixFrom(a.Unmap(), p.Bits()-96)
		}
		pt.prefixes = append(pt.prefixes, p.Masked())
	}
	return pt, nil
}

// setProxies puts pt in force, with a warning when it trusts every
// address of a family: then any client can claim any address.
func (n *Node) setProxies(pt *proxyTrust) {
	for _, p := range pt.prefixes {
		if p.Bits() == 0 {
			n.log.Warn("a trusted proxy range holds every address of its family: any client of it can claim any address to the per-IP limits, logs and hooks",
				"trusted_proxies", p.String())
		}
	}
	n.proxies.Store(pt)
}

// trusts reports whether a is inside one of the trusted ranges.
func (pt *proxyTrust) trusts(a netip.Addr) bool {
	for _, p := range pt.prefixes {
		if p.Contains(a) {
			return true
		}
	}
	return false
}

// ParseTrustedProxies parses address ranges for Config.TrustedProxies:
// each one a CIDR prefix ("10.0.0.0/8", "fd00::/8") or a single address
// ("127.0.0.1", a /32 or /128). An item that is neither is an error naming
// it.
func ParseTrustedProxies(items []string) ([]netip.Prefix, error) {
	out := make([]netip.Prefix, 0, len(items))
	for _, it := range items {
		s := strings.TrimSpace(it)
		if strings.Contains(s, "/") {
			p, err := netip.ParsePrefix(s)
			if err != nil {
				return nil, fmt.Errorf("herald: failed to parse trusted proxy %q: want an address range such as 10.0.0.0/8, or an address", it)
			}
			out = append(out, p)
			continue
		}
		a, err := netip.ParseAddr(s)
		if err != nil || a.Zone() != "" {
			return nil, fmt.Errorf("herald: failed to parse trusted proxy %q: want an address range such as 10.0.0.0/8, or an address", it)
		}
		out = append(out, netip.PrefixFrom(a, a.BitLen()))
	}
	return out, nil
}

// clientAddr returns the address of r's client: ip, the IP address that
// per-IP limits count, and remote, what logs and hooks show
// (ClientInfo.RemoteAddr). For a peer that is not a trusted proxy, or
// whose header names no readable client, they are r.RemoteAddr's host and
// r.RemoteAddr itself; for a client behind trusted proxies, both are the
// client's IP address, with no port (X-Forwarded-For carries none, and a
// proxy's view of the client's port is rarely worth showing).
func (n *Node) clientAddr(r *http.Request) (ip, remote string) {
	host, _, err := net.SplitHostPort(r.RemoteAddr)
	if err != nil {
		host = r.RemoteAddr
	}
	pt := n.proxies.Load()
	if len(pt.prefixes) == 0 {
		return host, r.RemoteAddr
	}
	peer, err := netip.ParseAddr(host)
	if err != nil || !pt.trusts(peer.WithZone("").Unmap()) {
		return host, r.RemoteAddr
	}
	var client netip.Addr
	var ok bool
	if pt.header == HeaderForwarded {
		client, ok = forwardedClient(r.Header.Values(HeaderForwarded), pt.trusts)
	} else {
		client, ok = xffClient(r.Header.Values(HeaderXForwardedFor), pt.trusts)
	}
	if !ok {
		return host, r.RemoteAddr
	}
	s := client.String()
	return s, s
}

// ClientAddr returns the address of r's client as the node sees it: the
// address X-Forwarded-For or Forwarded names (Config.ForwardedHeader) when
// the peer is a trusted proxy (Config.TrustedProxies), else r.RemoteAddr.
// It is what ClientInfo.RemoteAddr holds for a connection: r.RemoteAddr
// (host:port) for a direct client, the IP address alone for one behind a
// trusted proxy. Handlers mounted next to the node's call it to log the
// same address the node does.
func (n *Node) ClientAddr(r *http.Request) string {
	_, remote := n.clientAddr(r)
	return remote
}

// xffClient walks X-Forwarded-For (every line of it, in order, as one
// list) from the right: the first entry outside the trusted ranges is the
// client. If every entry is trusted, the leftmost is. ok is false when the
// header is absent or an entry is not an address: the caller uses the
// peer.
func xffClient(lines []string, trusted func(netip.Addr) bool) (client netip.Addr, ok bool) {
	for i := len(lines) - 1; i >= 0; i-- {
		rest := lines[i]
		for {
			j := strings.LastIndexByte(rest, ',')
			a, good := parseNode(strings.TrimSpace(rest[j+1:]))
			if !good {
				return netip.Addr{}, false
			}
			if !trusted(a) {
				return a, true
			}
			client = a
			if j < 0 {
				break
			}
			rest = rest[:j]
		}
	}
	return client, client.IsValid()
}

// forwardedClient walks Forwarded's for= values as xffClient walks
// X-Forwarded-For: lines from the last, and within a line elements from
// the last, each found by lastElement and parsed only when the walk
// reaches it. A proxy that appends its element to the client's text on
// one line (nginx's "$http_forwarded, for=$remote_addr") is therefore read
// however garbled the client's prefix is (an open quote, a repeated
// parameter): only what the walk reaches must parse. An element that
// does not parse, has no for=, or whose for= is "unknown" or an obfuscated
// identifier ("_hidden") ends the walk with ok false: that hop did not say
// who connected to it.
func forwardedClient(lines []string, trusted func(netip.Addr) bool) (client netip.Addr, ok bool) {
	for i := len(lines) - 1; i >= 0; i-- {
		rest, more := lines[i], true
		for more {
			var elem string
			rest, elem, more = lastElement(rest)
			if strings.TrimLeft(elem, " \t") == "" {
				continue // an empty list element (RFC 9110's list rule)
			}
			f, good := forwardedFor(elem)
			if !good {
				return netip.Addr{}, false
			}
			a, good := parseNode(f)
			if !good {
				return netip.Addr{}, false
			}
			if !trusted(a) {
				return a, true
			}
			client = a
		}
	}
	return client, client.IsValid()
}

// lastElement cuts line at its last comma outside a quoted-string, found
// scanning from the right: elem is what follows it, rest what precedes it,
// and more is false when there is no such comma (elem is the whole line).
// Scanning from the right, a '"' met outside a quoted-string closes one;
// inside, it opens it unless an odd run of backslashes precedes it (a
// quoted pair). A well-formed element is thus split off exactly, whatever
// stands left of it: a quote the client left open there is never reached.
func lastElement(line string) (rest, elem string, more bool) {
	quoted := false
	for i := len(line) - 1; i >= 0; i-- {
		switch line[i] {
		case '"':
			if !quoted {
				quoted = true
				continue
			}
			n := 0
			for j := i - 1; j >= 0 && line[j] == '\\'; j-- {
				n++
			}
			quoted = n%2 == 1 // an escaped quote stays inside
		case ',':
			if !quoted {
				return line[:i], line[i+1:], true
			}
		}
	}
	return "", line, false
}

// forwardedFor parses one element of a Forwarded header (RFC 7239 section
// 4: pairs separated by ';', empty ones allowed) and returns its for= value, unquoted; "" when
// it has none. ok is false on a syntax error (a comma outside a
// quoted-string among them) or a repeated parameter.
func forwardedFor(elem string) (val string, ok bool) {
	var seen [8]string // the parameters seen: RFC 7239 defines four
	nseen := 0
	for i := 0; ; {
		i = skipOWS(elem, i)
		if i == len(elem) {
			return val, true
		}
		if elem[i] == ';' { // an empty pair: allowed
			i++
			continue
		}
		// A pair: token "=" (token / quoted-string).
		k := i
		for i < len(elem) && isTokenChar(elem[i]) {
			i++
		}
		key := elem[k:i]
		if key == "" || i == len(elem) || elem[i] != '=' {
			return "", false
		}
		for _, s := range seen[:nseen] {
			if strings.EqualFold(s, key) {
				return "", false
			}
		}
		if nseen == len(seen) {
			return "", false // more parameters than any proxy writes
		}
		seen[nseen], nseen = key, nseen+1
		i++
		var v string
		if i < len(elem) && elem[i] == '"' {
			var good bool
			if v, i, good = quotedString(elem, i); !good {
				return "", false
			}
		} else {
			// A token, read leniently: an unquoted [v6]:port is not one,
			// but a trusted proxy that writes it means it plainly.
			j := i
			for i < len(elem) && !strings.ContainsRune(" \t;,\"", rune(elem[i])) {
				i++
			}
			v = elem[j:i]
		}
		if strings.EqualFold(key, "for") {
			val = v
		}
		i = skipOWS(elem, i)
		if i < len(elem) && elem[i] != ';' {
			return "", false
		}
	}
}

// quotedString reads the quoted-string that starts at s[i] ('"'),
// unescaping quoted pairs, and returns it and the index after it.
func quotedString(s string, i int) (val string, next int, ok bool) {
	var b strings.Builder
	for i++; i < len(s); i++ {
		switch c := s[i]; {
		case c == '"':
			return b.String(), i + 1, true
		case c == '\\' && i+1 < len(s):
			i++
			b.WriteByte(s[i])
		case c == '\\' || c < ' ' && c != '\t' || c == 0x7f:
			return "", 0, false
		default:
			b.WriteByte(c)
		}
	}
	return "", 0, false // no closing quote
}

func skipOWS(s string, i int) int {
	for i < len(s) && (s[i] == ' ' || s[i] == '\t') {
		i++
	}
	return i
}

// isTokenChar reports whether c is an RFC 9110 tchar.
func isTokenChar(c byte) bool {
	return c >= 'a' && c <= 'z' || c >= 'A' && c <= 'Z' || c >= '0' && c <= '9' ||
		strings.IndexByte("!#$%&'*+-.^_`|~", c) >= 0
}

// parseNode reads one hop's address: an IPv4 address, optionally with a
// port (1.2.3.4:80); an IPv6 address bare (as X-Forwarded-For writes it)
// or in brackets, optionally with a port ([2001:db8::1]:443). A port may be
// an obfuscated one ("_abc", RFC 7239 section 6.3); it is dropped either
// way. "unknown", an obfuscated node ("_hidden"), a zone, anything else:
// ok is false.
func parseNode(s string) (a netip.Addr, ok bool) {
	host, port := s, ""
	rest, bracketed := strings.CutPrefix(s, "[")
	if bracketed {
		end := strings.IndexByte(rest, ']')
		if end < 0 {
			return netip.Addr{}, false
		}
		host, port = rest[:end], rest[end+1:]
		if port != "" {
			var hasColon bool
			if port, hasColon = strings.CutPrefix(port, ":"); !hasColon || port == "" {
				return netip.Addr{}, false
			}
		}
	} else if strings.Count(s, ":") == 1 {
		host, port, _ = strings.Cut(s, ":")
		if port == "" {
			return netip.Addr{}, false
		}
	}
	if !validPort(port) {
		return netip.Addr{}, false
	}
	a, err := netip.ParseAddr(host)
	if err != nil || a.Zone() != "" {
		return netip.Addr{}, false
	}
	if bracketed && !a.Is6() {
		return netip.Addr{}, false // brackets hold IPv6 only
	}
	return a.Unmap(), true
}

// validPort reports whether p is empty, a port number, or an obfuscated
// port ("_" and letters, digits, '.', '_', '-').
func validPort(p string) bool {
	if p == "" {
		return true
	}
	if p[0] == '_' {
		for i := 1; i < len(p); i++ {
			if c := p[i]; !(c >= 'a' && c <= 'z' || c >= 'A' && c <= 'Z' || c >= '0' && c <= '9' || c == '.' || c == '_' || c == '-') {
				return false
			}
		}
		return true
	}
	if len(p) > 5 {
		return false
	}
	n := 0
	for i := 0; i < len(p); i++ {
		if p[i] < '0' || p[i] > '9' {
			return false
		}
		n = n*10 + int(p[i]-'0')
	}
	return n <= 65535
}
