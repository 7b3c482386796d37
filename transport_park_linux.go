package herald

import (
	"sync"

	"golang.org/x/sys/unix"

	"github.com/heraldhq/herald/internal/epoll"
)

// parkable: an idle reader may park in the node's poller (below) instead of
// in a goroutine.
const parkable = true

// poller is where the idle readers of a node's plain-socket connections
// park: one epoll instance and one goroutine for the whole node.
//
// A reader parked in Go's netpoller (syscall.RawConn.Read) keeps its
// goroutine: a 2 KB stack and the goroutine's descriptor, a third of what
// an idle connection costs (docs/benchmarks.md, S1). Parked here, an idle
// connection keeps no goroutine at all: its socket is armed in the epoll
// set (EPOLLONESHOT: one wake-up per arming), and the poller's goroutine
// starts a reader when it becomes readable. Every connection's read
// deadline is still set on its socket (it is what ends a read with a
// timeout); a runtime timer per connection (conn.park) makes sure a parked
// reader wakes to see it pass.
//
// The socket stays registered with Go's netpoller too, which is harmless:
// nothing waits there while the reader is parked here. Arming happens
// inside syscall.RawConn.Control, which holds the descriptor open, so a
// closed connection's number, reused by a new socket, is never armed on
// its behalf; a closed socket leaves the epoll set by itself, so whoever
// closes one wakes its parked reader (conn.cut), which finds it closed and
// tears the connection down.
type poller struct {
	epfd int
	wake int // an eventfd in the epoll set: stop writes to it
	done chan struct{}

	mu    sync.Mutex
	conns map[int32]*conn // by descriptor: the connection last armed with it
}

// startPoller makes the poller and starts its goroutine, which stop ends.
func startPoller() (*poller, error) {
	epfd, wake, err := epoll.New()
	if err != nil {
		return nil, err
	}
	p := &poller{epfd: epfd, wake: wake, done: make(chan struct{}), conns: map[int32]*conn{}}
	go p.run()
	return p, nil
}

// run waits for armed sockets to become readable and wakes their readers.
func (p *poller) run() {
	defer close(p.done)
	events := make([]unix.EpollEvent, 128)
	for {
		n, err := unix.EpollWait(p.epfd, events, -1)
		if err != nil {
			if err == unix.EINTR {
				continue
			}
			// Not expected (EBADF, EFAULT, EINVAL name bugs): wake every
			// parked reader, which then waits in Go's netpoller instead.
			p.failAll()
			return
		}
		for _, ev := range events[:n] {
			if ev.Fd == int32(p.wake) {
				return
			}
			p.mu.Lock()
			c := p.conns[ev.Fd]
			p.mu.Unlock()
			if c != nil {
				c.wake()
			}
		}
	}
}

// failAll turns parking off for every connection the poller knows and
// wakes its reader.
func (p *poller) failAll() {
	p.mu.Lock()
	cs := make([]*conn, 0, len(p.conns))
	for _, c := range p.conns {
		cs = append(cs, c)
	}
	p.conns = nil
	p.mu.Unlock()
	for _, c := range cs {
		c.parkBroken.Store(true)
		c.wake()
	}
}

// arm registers c's socket (descriptor fd, held open by the caller's
// RawConn.Control) for one wake-up when it is readable, or its peer hangs
// up.
func (p *poller) arm(c *conn, fd int) error {
	p.mu.Lock()
	if p.conns == nil {
		p.mu.Unlock()
		return errPollerStopped
	}
	op := unix.EPOLL_CTL_MOD
	if p.conns[int32(fd)] != c {
		// A new socket, or this number's previous socket was closed (and
		// left the set with it).
		p.conns[int32(fd)] = c
		op = unix.EPOLL_CTL_ADD
	}
	p.mu.Unlock()
	ev := unix.EpollEvent{Events: unix.EPOLLIN | unix.EPOLLRDHUP | unix.EPOLLONESHOT, Fd: int32(fd)}
	err := unix.EpollCtl(p.epfd, op, fd, &ev)
	switch {
	case err == unix.EEXIST && op == unix.EPOLL_CTL_ADD:
		err = unix.EpollCtl(p.epfd, unix.EPOLL_CTL_MOD, fd, &ev)
	case err == unix.ENOENT && op == unix.EPOLL_CTL_MOD:
		err = unix.EpollCtl(p.epfd, unix.EPOLL_CTL_ADD, fd, &ev)
	}
	return err
}

// forget drops c, whose socket is about to be closed, from the map.
func (p *poller) forget(c *conn, fd int32) {
	p.mu.Lock()
	if p.conns[fd] == c {
		delete(p.conns, fd)
	}
	p.mu.Unlock()
}

// stop ends the poller's goroutine and waits for it. Every connection must
// be gone: a reader still parked would never wake.
func (p *poller) stop() {
	epoll.Wake(p.wake)
	<-p.done
	p.mu.Lock()
	p.conns = nil
	p.mu.Unlock()
	unix.Close(p.epfd)
	unix.Close(p.wake)
}
