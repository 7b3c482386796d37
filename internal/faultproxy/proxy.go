// Package faultproxy is a TCP proxy for tests that stalls or cuts the link
// between a Herald node and its broker on demand: the one fault of a real
// network that no real server produces when asked. A stalled ("blackholed")
// link stays open and carries nothing, as a hung server or a dropped route
// does, which only heartbeats can notice.
package faultproxy

import (
	"net"
	"sync"
	"testing"
)

// Proxy forwards every connection made to Addr to the upstream address.
//
// Goroutines: one accepts; each connection has two pumps (one per
// direction). All of them stop when the test ends (Close).
type Proxy struct {
	ln       net.Listener
	upstream string

	mu    sync.Mutex
	open  chan struct{} // closed while forwarding; replaced by Blackhole
	conns map[net.Conn]struct{}
	done  chan struct{}
	wg    sync.WaitGroup
}

// New starts a proxy to upstream on a free loopback port; it stops when
// the test ends.
func New(t testing.TB, upstream string) *Proxy {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	p := &Proxy{ln: ln, upstream: upstream, open: make(chan struct{}), conns: make(map[net.Conn]struct{}), done: make(chan struct{})}
	close(p.open)
	p.wg.Go(p.accept)
	t.Cleanup(p.Close)
	return p
}

// Addr is the proxy's address, host:port.
func (p *Proxy) Addr() string { return p.ln.Addr().String() }

// Blackhole stops forwarding: connections stay open and carry nothing, in
// either direction, and new ones are accepted but not connected upstream,
// until Restore. What was sent meanwhile waits in the sockets' buffers, as
// it would behind a stalled route.
func (p *Proxy) Blackhole() {
	p.mu.Lock()
	defer p.mu.Unlock()
	select {
	case <-p.open:
		p.open = make(chan struct{})
	default: // already
	}
}

// Restore forwards again, what waited included.
func (p *Proxy) Restore() {
	p.mu.Lock()
	defer p.mu.Unlock()
	select {
	case <-p.open:
	default:
		close(p.open)
	}
}

// Cut closes every connection (both ends), as a reset would; new
// connections are forwarded as usual.
func (p *Proxy) Cut() {
	p.mu.Lock()
	defer p.mu.Unlock()
	for c := range p.conns {
		_ = c.Close()
		delete(p.conns, c)
	}
}

// Close stops the proxy and every connection, and waits for its goroutines.
func (p *Proxy) Close() {
	p.mu.Lock()
	select {
	case <-p.done:
		p.mu.Unlock()
		return
	default:
	}
	close(p.done)
	_ = p.ln.Close()
	for c := range p.conns {
		_ = c.Close()
	}
	p.mu.Unlock()
	p.wg.Wait()
}

// gate waits while the proxy is blackholed; it reports false once it is
// closed.
func (p *Proxy) gate() bool {
	p.mu.Lock()
	open := p.open
	p.mu.Unlock()
	select {
	case <-open:
		return true
	case <-p.done:
		return false
	}
}

func (p *Proxy) track(c net.Conn) bool {
	p.mu.Lock()
	defer p.mu.Unlock()
	select {
	case <-p.done:
		_ = c.Close()
		return false
	default:
	}
	p.conns[c] = struct{}{}
	return true
}

func (p *Proxy) accept() {
	for {
		c, err := p.ln.Accept()
		if err != nil {
			return // closed
		}
		if !p.track(c) {
			return
		}
		p.wg.Go(func() { p.serve(c) })
	}
}

func (p *Proxy) serve(c net.Conn) {
	if !p.gate() {
		return
	}
	up, err := net.Dial("tcp", p.upstream)
	if err != nil {
		_ = c.Close()
		return
	}
	if !p.track(up) {
		_ = c.Close()
		return
	}
	p.wg.Go(func() { p.pump(up, c) })
	p.pump(c, up)
}

// pump copies src to dst, waiting at the gate before each read and each
// write, until either fails; then it closes both.
func (p *Proxy) pump(dst, src net.Conn) {
	defer func() { _ = src.Close(); _ = dst.Close() }()
	buf := make([]byte, 32<<10)
	for p.gate() {
		n, err := src.Read(buf)
		if n > 0 {
			if !p.gate() {
				return
			}
			if _, werr := dst.Write(buf[:n]); werr != nil {
				return
			}
		}
		if err != nil {
			return
		}
	}
}
