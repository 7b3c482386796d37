package main

import (
	"net"
	"net/netip"

	"github.com/pires/go-proxyproto"
)

// The PROXY protocol (proxy_protocol): an L4 load balancer (HAProxy's
// send-proxy, AWS NLB, ...) cannot add an HTTP header, so it opens each
// connection with a line (v1) or a binary block (v2) naming the client's
// address. The listener believes it only from trusted_proxies: a
// connection from one of them may open with a PROXY header, and then its
// source address is the connection's RemoteAddr, which the node counts,
// logs and shows to hooks (a forwarded header is then read only if that
// address is itself a trusted proxy). A connection from anyone else is
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
