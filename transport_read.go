package herald

import (
	"bytes"
	"errors"
	"io"
	"net"
	"os"
	"sync"
	"time"
	"unicode/utf8"

	"github.com/heraldhq/herald/internal/wsframe"
	"github.com/heraldhq/herald/protocol"
)

// The read side of a connection's transport.
//
// accept.go performs the handshake; the frames are read here. An
// idle connection is the common case (most subscribers never send), so its
// reader should hold as little as possible while it waits:
//
//   - no read buffer: on a socket with a descriptor (plain TCP or a Unix
//     socket) the reader waits for readability inside syscall.RawConn.Read
//     and borrows a pooled readChunk only for the read that follows, giving
//     it back before it waits again. Connections without one (TLS served by
//     Go's crypto/tls) keep a ReadBufferSize buffer and block in Read.
//   - no goroutine, on Linux: a reader with nothing to read parks in the
//     node's poller and ends (transport_park.go); a wake-up starts the
//     next one.
//   - elsewhere, a small stack: the goroutine waits in a short call chain
//     (readLoop → RawConn.Read → the netpoller), and after a read that
//     handled a message — whose handling may have grown the stack — the
//     reader hands the connection to a fresh goroutine and exits, so an
//     idle reader's stack is a new one, not the largest it ever needed.
//
// Frames are parsed by wsframe.Decoder, which checks what RFC 6455 asks of
// a server (masking, opcodes, reserved bits, control frames, fragmentation,
// close payloads); a violation closes the connection with 1002 (1007, 1009)
// and a reason, after which the socket is cut once the close frame is sent.

const readChunkSize = 4096

var readChunks = sync.Pool{New: func() any { b := make([]byte, readChunkSize); return &b }}

// msgBufs hold messages being read; inflated holds decompressed ones.
var (
	msgBufs  = sync.Pool{New: func() any { b := make([]byte, 0, 512); return &b }}
	inflated = sync.Pool{New: func() any { return new(bytes.Buffer) }}
)

const maxPooledMsg = 64 << 10

// startReader sets up the read side and starts the reader. The reader
// goroutine is owned by the node (node.wg counts the connection until
// finish).
func (c *conn) startReader(deflate bool) {
	cfg := &c.node.cfg
	c.dec.MaxMessage = cfg.MaxMessageSize
	c.dec.Deflate = deflate
	if c.rc != nil {
		c.tryReadFn = c.tryRead
		c.lingerFrom = time.Now().Add(c.node.lingerAfter)
	} else {
		c.rbuf = make([]byte, cfg.ReadBufferSize)
	}
	c.extendReadDeadline()
	go c.readLoopFn()
}

// readLoop is the reader. Its own frame stays small and it parks in fill,
// so an idle connection's goroutine needs little stack; the work is in
// consume.
func (c *conn) readLoop() {
	for {
		p, err := c.fill()
		if err == errWouldBlock {
			if c.park() {
				return
			}
			continue
		}
		if err != nil {
			c.readFailed(err)
			c.finish()
			return
		}
		handled, ok := c.consume(p)
		if handled && c.rc != nil {
			if now := time.Now(); now.After(c.lingerFrom) {
				c.lingerTill = now.Add(c.node.linger)
			}
		}
		c.releaseChunk()
		c.sess.readDone()
		if !ok {
			c.finish()
			return
		}
		if handled && !c.canPark() {
			// About to wait in a goroutine: a fresh one (a parked reader's
			// goroutine ends anyway).
			go c.readLoopFn()
			return
		}
	}
}

// fill waits for and reads the next bytes from the socket.
func (c *conn) fill() ([]byte, error) {
	if c.rc == nil {
		n, err := c.nc.Read(c.rbuf)
		if n > 0 {
			return c.rbuf[:n], nil // an error comes again with the next Read
		}
		return nil, err
	}
	for {
		c.mayPark = c.canPark()
		if c.mayPark && c.linger() {
			c.mayPark = false
		} else if c.lingerDL {
			c.endLinger()
		}
		err := c.rc.Read(c.tryReadFn)
		if err == nil {
			break
		}
		if c.lingerDL && errors.Is(err, os.ErrDeadlineExceeded) && time.Now().Before(c.parkDeadline()) {
			// The linger's deadline, not the connection's: linger on if
			// messages since it was set moved the linger's end, else park.
			c.endLinger()
			if time.Now().Before(c.lingerTill) {
				continue
			}
			return nil, errWouldBlock
		}
		return nil, err // a deadline, or the socket was closed
	}
	if c.wouldBlock {
		c.wouldBlock = false
		return nil, errWouldBlock
	}
	if c.rerr != nil || c.nread <= 0 {
		err := c.rerr
		if err == nil {
			err = io.EOF
		}
		c.releaseChunk()
		return nil, err
	}
	return (*c.chunk)[:c.nread], nil
}

func (c *conn) releaseChunk() {
	if c.chunk != nil {
		readChunks.Put(c.chunk)
		c.chunk = nil
	}
}

// consume parses p and handles what it completes. handled reports that a
// data message was handled; ok false means the connection is done reading
// (the client's close frame came, or a protocol error closed it).
func (c *conn) consume(p []byte) (handled, ok bool) {
	c.extendReadDeadline()
	for len(p) > 0 {
		if c.msg == nil {
			c.msg = msgBufs.Get().(*[]byte)
		}
		n, ev, err := c.dec.Feed(p, c.msg)
		p = p[n:]
		if err != nil {
			var pe *wsframe.ProtocolError
			if errors.As(err, &pe) {
				c.node.log.Debug("websocket protocol error", "client", c.id, "err", err)
				c.close(pe.Code, pe.Reason)
			}
			return handled, false
		}
		switch ev {
		case wsframe.Message:
			handled = true
			c.handleMessage()
			*c.msg = (*c.msg)[:0]
		case wsframe.Control:
			if !c.handleControl() {
				return handled, false
			}
		}
	}
	if c.dec.Idle() && c.msg != nil {
		if cap(*c.msg) <= maxPooledMsg {
			*c.msg = (*c.msg)[:0]
			msgBufs.Put(c.msg)
		}
		c.msg = nil
	}
	return handled, true
}

// handleMessage handles the data message the decoder completed in c.msg.
func (c *conn) handleMessage() {
	cfg := &c.node.cfg
	op, compressed := c.dec.MessageOp()
	msg := *c.msg
	if compressed {
		buf := inflated.Get().(*bytes.Buffer)
		buf.Reset()
		defer func() {
			if buf.Cap() <= maxPooledMsg {
				inflated.Put(buf)
			}
		}()
		if err := wsframe.Inflate(buf, msg, cfg.MaxMessageSize); err != nil {
			c.close(CloseInvalidPayload, "invalid compressed message")
			return
		}
		msg = buf.Bytes()
	}
	switch {
	case c.isClosing():
		// Closing: read on only to see the client's close frame.
		return
	case int64(len(msg)) > cfg.MaxMessageSize:
		// Only reachable with compression: the decoder's cap counts wire bytes.
		c.close(CloseMessageTooBig, "message too big")
		return
	case op == wsframe.OpText && !utf8.Valid(msg):
		c.close(CloseInvalidPayload, "invalid UTF-8 in text frame")
		return
	}
	c.node.metrics.messagesIn.Add(1)
	c.node.metrics.bytesIn.Add(uint64(len(msg)))
	c.sess.message(msg, op == wsframe.OpBinary)
}

// handleControl answers a ping, and a close frame with its echo. It reports
// false after a close frame: the reader is done.
func (c *conn) handleControl() bool {
	op, payload := c.dec.Control()
	switch op {
	case wsframe.OpPing:
		c.enqueue(wsframe.Append(nil, wsframe.OpPong, payload, false))
	case wsframe.OpClose:
		// Echo the client's code (RFC 6455 section 5.5.1), unless we sent ours.
		if code := wsframe.CloseCode(payload); code == protocol.CloseNoStatus {
			if c.closeFrame(wsframe.Append(nil, wsframe.OpClose, nil, false), false) {
				c.setEnded(protocol.CloseNoStatus, "")
			}
		} else {
			c.close(code, "")
		}
		return false
	}
	// A pong needs nothing more: every read extends the read deadline.
	return true
}

// readRearm is how often, at most, a busy reader moves its read deadline
// (an eighth of the deadline if that is shorter): setting one updates a
// runtime timer, which a publisher sending thousands of messages a second
// should not pay for on each read. The deadline is thus
// PingInterval+PongTimeout after the last frame, less up to readRearm.
const readRearm = time.Second

// extendReadDeadline gives the client another ping interval plus the pong
// timeout to send something (a pong at least). Reader goroutine only.
func (c *conn) extendReadDeadline() {
	if c.isClosing() {
		return // the writer set the close handshake's deadline
	}
	cfg := &c.node.cfg
	d := cfg.PingInterval + cfg.PongTimeout
	now := time.Now()
	if c.rdeadline.Sub(now) > d-min(readRearm, d/8) {
		return
	}
	c.rdeadline = now.Add(d)
	c.lingerDL = false // the socket's deadline is the real one again
	// The writer may have sent its close frame since isClosing above:
	// setReadDeadline keeps its CloseGrace deadline if that is sooner.
	c.setReadDeadline(c.rdeadline)
}

// readFailed decides how the connection ends after a read error.
func (c *conn) readFailed(err error) {
	var ne net.Error
	if errors.As(err, &ne) && ne.Timeout() && !c.isClosing() {
		c.node.log.Debug("no pong within timeout", "client", c.id)
		c.close(CloseNoPong, "no pong")
		return
	}
	// The socket failed (reset, EOF, closed). Queue nothing more.
	c.closeFrame(nil, false)
}
