package main

import (
	"context"
	"crypto/tls"
	"net"
	"net/http"
	"net/netip"

	"github.com/pires/go-proxyproto"

	"github.com/heraldhq/herald"
)

// The PROXY protocol (proxy_protocol): an L4 load balancer (HAProxy's
// send-proxy, AWS NLB, ...) cannot add an HTTP header, so it opens each
// connection with a line (v1) or a binary block (v2) naming the client's
// address. The listener believes it only from trusted_proxies: a
// connection from one of them may open with a PROXY header, and then its
// source address is the connection's RemoteAddr, which the node counts,
// logs and shows to hooks. X-Forwarded-For and Forwarded are not read on
// such a connection, even when that address is inside trusted_proxies:
// the balancer vouches for the address it saw connect, and a client behind
// it with an address in the trusted ranges (an internal one) must not
// claim another through a header. A balancer's own connection without a
// PROXY header is a trusted proxy's as any other. A connection from anyone else is
// served as it is, unread: a PROXY header it sends is a malformed HTTP
// request (400). Health checks from the balancer without a header are
// served too.
//
// A connection from the listener is a *proxyproto.Conn, which has no file
// descriptor to wait on: the node keeps a read buffer (read_buffer_size)
// for each, as for TLS.

// proxyListener wraps ln to read PROXY headers from trusted_proxies, within
// read_header_timeout.
func (in *instance) proxyListener(ln net.Listener) net.Listener {
	return &proxyproto.Listener{
		Listener:          ln,
		ReadHeaderTimeout: in.cfg.ReadHeaderTimeout,
		ConnPolicy: func(opts proxyproto.ConnPolicyOptions) (proxyproto.Policy, error) {
			if in.trustsPeer(opts.Upstream) {
				return proxyproto.USE, nil
			}
			return proxyproto.SKIP, nil
		},
	}
}

// setProxies puts list in force for the listener. The listener reads a
// copy of the slice header: in.cfg's field is written by reloads.
func (in *instance) setProxies(list []netip.Prefix) {
	in.proxies.Store(&list)
}

// trustsPeer reports whether a connection's peer is inside trusted_proxies
// as in force now.
func (in *instance) trustsPeer(peer net.Addr) bool {
	ap, err := netip.ParseAddrPort(peer.String())
	if err != nil {
		return false
	}
	a := ap.Addr().WithZone("").Unmap()
	for _, p := range *in.proxies.Load() {
		if p.Contains(a) {
			return true
		}
	}
	return false
}

// connKey is the context key under which connContext keeps a connection.
type connKey struct{}

// connContext keeps each connection in its requests' context, for
// dropForwardedBehindPROXY. It is http.Server.ConnContext, called on the
// accept loop, so it reads nothing from the connection.
func connContext(ctx context.Context, c net.Conn) context.Context {
	return context.WithValue(ctx, connKey{}, c)
}

// dropForwardedBehindPROXY removes X-Forwarded-For and Forwarded from
// requests on a connection whose address came from a PROXY header, before
// the node (or the dashboard, or the API) reads them.
func dropForwardedBehindPROXY(next http.Handler) http.Handler {
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if c, _ := r.Context().Value(connKey{}).(net.Conn); fromPROXYHeader(c) {
			r.Header.Del(herald.HeaderXForwardedFor)
			r.Header.Del(herald.HeaderForwarded)
		}
		next.ServeHTTP(w, r)
	})
}

// fromPROXYHeader reports whether c's RemoteAddr came from a PROXY header:
// it differs from the TCP peer's. The header has been read by then (the
// HTTP server asked for RemoteAddr before reading the request), so this
// does not block. A LOCAL command (a v2 health check) or a header that
// failed leaves the peer's address, and is no PROXY address.
func fromPROXYHeader(c net.Conn) bool {
	if tc, ok := c.(*tls.Conn); ok {
		c = tc.NetConn()
	}
	pc, ok := c.(*proxyproto.Conn)
	return ok && pc.RemoteAddr().String() != pc.Raw().RemoteAddr().String()
}
