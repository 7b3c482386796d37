package bench

import (
	"encoding/binary"
	"errors"
	"fmt"
	"io"
	"net"
	"runtime"
	"sync"
	"time"

	"github.com/gorilla/websocket"
	"golang.org/x/sys/unix"

	"github.com/heraldhq/herald/internal/epoll"
	"github.com/heraldhq/herald/internal/wsframe"
	"github.com/heraldhq/herald/protocol"
)

const epollReader = true

// rxPool is the epoll reader: a loop per CPU, each waiting on its own epoll
// instance and reading the subscriber sockets it was given. With one
// goroutine per subscriber (the goroutine reader), every delivery wakes a
// goroutine through Go's netpoller and scheduler and goes through gorilla's
// buffered reader; here a loop learns of up to 256 readable sockets with
// one epoll_wait and reads each with one read(2) into a buffer it reuses,
// parsing frames in place (wsframe.Decoder in its client mode). The kernel's
// receive path, which no reader avoids, is then most of the generator's
// cost, and the server under test gets the CPU the rest would have taken.
//
// A loop owns the sockets it was given: once add has registered a socket,
// only its loop reads, writes (pongs) and closes it, so no lock guards a
// socket. Before that, add itself handles the bytes that came with the
// handshake. The conns map is locked because add puts sockets in it from
// subscriber goroutines; end, which takes them out, marks each closed once
// under the same lock.
type rxPool struct {
	loops []*rxLoop
}

type rxLoop struct {
	r    *runner
	epfd int
	wake int // an eventfd in the epoll set: stop writes it
	buf  []byte

	mu      sync.Mutex
	stopped bool
	conns   map[int32]*rxConn // by fd
	pending []*rxConn         // waiting for their subscribe reply
}

// rxConn is one subscriber socket, a duplicate of the descriptor gorilla's
// dialer opened (whose own descriptor, registered with Go's netpoller, is
// closed once the loop has this one).
type rxConn struct {
	fd       int
	s        *subscriber
	ready    func(error)
	dec      wsframe.Decoder
	msg      []byte
	deadline time.Time // for the subscribe reply
	closed   bool
}

func newRxPool(r *runner) (*rxPool, error) {
	p := &rxPool{}
	for range runtime.GOMAXPROCS(0) {
		l, err := newRxLoop(r)
		if err != nil {
			p.stop()
			return nil, err
		}
		p.loops = append(p.loops, l)
		r.wg.Add(1)
		go l.run()
	}
	return p, nil
}

func newRxLoop(r *runner) (*rxLoop, error) {
	epfd, wake, err := epoll.New()
	if err != nil {
		return nil, err
	}
	return &rxLoop{r: r, epfd: epfd, wake: wake, buf: make([]byte, 64<<10), conns: map[int32]*rxConn{}}, nil
}

// stop makes every loop close its sockets and end; r.wg waits for them.
func (p *rxPool) stop() {
	for _, l := range p.loops {
		epoll.Wake(l.wake)
	}
}

// add hands s's socket (hc: gorilla's dialer opened it, and it holds what
// was read past the handshake) to a loop, which reads it from then on and
// calls ready once s is subscribed (at once for a raw subscriber, already
// counted in) or has failed. On a failure here the socket is closed and
// ready called with the reason.
func (p *rxPool) add(s *subscriber, hc *handshakeConn, ready func(error)) {
	l := p.loops[s.id%len(p.loops)]
	c := &rxConn{s: s, ready: ready, dec: wsframe.Decoder{MaxMessage: maxMessage, FromServer: true}}
	fd, err := dupSocket(hc)
	if err != nil {
		if hc != nil {
			hc.Close()
		}
		l.r.ended(s, websocket.CloseAbnormalClosure, err, ready)
		return
	}
	c.fd = fd
	// Gorilla's descriptor goes, ours stays: the socket stays open.
	hc.Close()
	// The bytes that came with the handshake's response, before the loop
	// can see the socket: nothing else touches c yet.
	if rest := hc.take(); len(rest) > 0 && !l.feed(c, rest) {
		return
	}
	c.deadline = time.Now().Add(subscribeTimeout)
	l.mu.Lock()
	if l.stopped {
		l.mu.Unlock()
		l.end(c, websocket.CloseAbnormalClosure, errors.New("run ended"))
		return
	}
	l.conns[int32(fd)] = c
	if !s.subscribed {
		l.pending = append(l.pending, c)
	}
	l.mu.Unlock()
	if err := unix.EpollCtl(l.epfd, unix.EPOLL_CTL_ADD, fd, &unix.EpollEvent{Events: unix.EPOLLIN | unix.EPOLLRDHUP, Fd: int32(fd)}); err != nil {
		// No event can name the socket, but teardown may end it first:
		// end closes it once either way.
		l.end(c, websocket.CloseAbnormalClosure, fmt.Errorf("epoll_ctl: %w", err))
	}
}

// dupSocket returns a duplicate, close-on-exec descriptor of the TCP socket
// under hc (non-blocking, as Go's is: the flag belongs to the socket).
func dupSocket(hc *handshakeConn) (int, error) {
	if hc == nil {
		return -1, errors.New("not a ws:// connection")
	}
	tc, ok := hc.Conn.(*net.TCPConn)
	if !ok {
		return -1, fmt.Errorf("not a TCP connection: %T", hc.Conn)
	}
	rc, err := tc.SyscallConn()
	if err != nil {
		return -1, err
	}
	fd := -1
	var derr error
	if err := rc.Control(func(s uintptr) { fd, derr = unix.FcntlInt(s, unix.F_DUPFD_CLOEXEC, 0) }); err != nil {
		return -1, err
	}
	return fd, derr
}

// run waits for readable sockets and reads each once per wake-up (the set
// is level-triggered: a socket with more to read comes back next time).
func (l *rxLoop) run() {
	defer l.r.wg.Done()
	defer unix.Close(l.epfd)
	defer unix.Close(l.wake)
	events := make([]unix.EpollEvent, 256)
	nextCheck := time.Now().Add(time.Second)
	for {
		n, err := unix.EpollWait(l.epfd, events, 250)
		if err != nil && err != unix.EINTR {
			l.r.out.warn("epoll_wait: %v; closing this loop's subscribers", err)
			l.shutdown()
			return
		}
		for _, ev := range events[:max(n, 0)] {
			if ev.Fd == int32(l.wake) {
				l.shutdown()
				return
			}
			l.mu.Lock()
			c := l.conns[ev.Fd]
			l.mu.Unlock()
			if c != nil {
				l.read(c)
			}
		}
		if now := time.Now(); now.After(nextCheck) {
			l.expire(now)
			nextCheck = now.Add(time.Second)
		}
	}
}

// read reads c once and handles what came.
func (l *rxLoop) read(c *rxConn) {
	n, err := unix.Read(c.fd, l.buf)
	switch {
	case err == unix.EAGAIN || err == unix.EINTR:
	case err != nil:
		l.end(c, websocket.CloseAbnormalClosure, err)
	case n == 0:
		l.end(c, websocket.CloseAbnormalClosure, io.ErrUnexpectedEOF)
	default:
		l.feed(c, l.buf[:n])
	}
}

// feed parses p, handles every message and control frame in it, and
// returns false if the socket has ended (closed, and accounted for).
func (l *rxLoop) feed(c *rxConn, p []byte) bool {
	for len(p) > 0 {
		n, ev, err := c.dec.Feed(p, &c.msg)
		p = p[n:]
		if err != nil {
			// Fail the connection as RFC 6455 asks, and count it cut with
			// the code it was failed with.
			code := websocket.CloseProtocolError
			if perr, ok := err.(*wsframe.ProtocolError); ok {
				code = int(perr.Code)
			}
			l.closeWith(c, code, code, err)
			return false
		}
		switch ev {
		case wsframe.Message:
			act := l.r.message(c.s, c.msg, c.ready)
			c.msg = c.msg[:0]
			switch act {
			case msgDone:
				l.end(c, websocket.CloseNormalClosure, nil)
				return false
			case msgPing:
				if !l.write(c, appendClientFrame(nil, websocket.TextMessage, pingReply(l.r.cfg.Protocol))) {
					l.end(c, websocket.CloseAbnormalClosure, errors.New("ping reply not written"))
					return false
				}
			}
		case wsframe.Control:
			op, payload := c.dec.Control()
			switch op {
			case websocket.PingMessage:
				if !l.write(c, appendClientFrame(nil, websocket.PongMessage, payload)) {
					l.end(c, websocket.CloseAbnormalClosure, errors.New("pong not written"))
					return false
				}
			case websocket.CloseMessage:
				code := int(wsframe.CloseCode(payload))
				reply := code
				if code == int(protocol.CloseNoStatus) {
					reply = websocket.CloseNormalClosure
				}
				l.closeWith(c, reply, code, &websocket.CloseError{Code: code})
				return false
			}
		}
	}
	return true
}

// closeWith sends a close frame with reply (best effort) and ends c,
// counting it cut with code.
func (l *rxLoop) closeWith(c *rxConn, reply, code int, err error) {
	l.write(c, appendClientFrame(nil, websocket.CloseMessage, binary.BigEndian.AppendUint16(nil, uint16(reply))))
	l.end(c, code, err)
}

// write writes one small client frame whole, without waiting: a socket
// whose send buffer cannot take a pong or a close frame is stuck anyway.
func (l *rxLoop) write(c *rxConn, frame []byte) bool {
	n, err := unix.Write(c.fd, frame)
	return err == nil && n == len(frame)
}

// end takes c out of the set, closes its socket and accounts for it, once.
// It runs on the loop, or on the goroutine adding c when the loop cannot
// have it yet (or only through shutdown): closed, under mu, makes it once.
func (l *rxLoop) end(c *rxConn, code int, err error) {
	l.mu.Lock()
	done := c.closed
	c.closed = true
	if !done && l.conns[int32(c.fd)] == c {
		// Before the close: the descriptor's number may be reused at once.
		delete(l.conns, int32(c.fd))
	}
	l.mu.Unlock()
	if done {
		return
	}
	// Closing the descriptor takes the socket out of the epoll set: it is
	// its only one.
	unix.Close(c.fd)
	if err == nil {
		err = errors.New("subscription refused")
	}
	l.r.ended(c.s, code, err, c.ready)
}

// expire fails subscribers whose subscribe reply is overdue.
func (l *rxLoop) expire(now time.Time) {
	var due []*rxConn
	l.mu.Lock()
	keep := l.pending[:0]
	for _, c := range l.pending {
		switch {
		case c.closed || c.s.subscribed:
		case now.After(c.deadline):
			due = append(due, c)
		default:
			keep = append(keep, c)
		}
	}
	clear(l.pending[len(keep):])
	l.pending = keep
	l.mu.Unlock()
	for _, c := range due {
		l.end(c, websocket.CloseAbnormalClosure, fmt.Errorf("no subscribe reply in %s", subscribeTimeout))
	}
}

// shutdown closes every socket of the loop (teardown), once.
func (l *rxLoop) shutdown() {
	l.mu.Lock()
	l.stopped = true
	conns := l.conns
	l.conns = map[int32]*rxConn{}
	l.pending = nil
	l.mu.Unlock()
	for _, c := range conns {
		l.end(c, websocket.CloseGoingAway, errors.New("run ended"))
	}
}
