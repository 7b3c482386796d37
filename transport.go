package herald

import (
	"bytes"
	"net"
	"sync"
	"syscall"
	"time"

	"github.com/heraldhq/herald/internal/wsframe"
)

// transport is a connection's socket: its one reader (transport_read.go)
// and the writes of whoever holds the writer role (the writer pool,
// writer.go, or writeLoop below). It holds no frame of its own: what it
// writes comes from the connection's outbound queue, what it reads goes to
// the connection's session.
type transport struct {
	// nc is the socket: written only by the writer role's holder, closed
	// by finish, by a failed write (writeFailed) and by Shutdown's cut;
	// deadlines are set by either side.
	nc net.Conn
	// rc is nc's descriptor, set before the connection is shared; nil if
	// nc has none (TLS): then the reader keeps rbuf and writes go through
	// nc.
	rc syscall.RawConn
	// writeLoopFn and readLoopFn are c.writeLoop and c.readLoop, made once:
	// `go c.readLoop()` allocates a closure each time, and a reader starts
	// after every message it handles (writeLoop starts less often, but on
	// the same terms).
	writeLoopFn, readLoopFn func()

	// Write state, writeLoop only. wdeadline is the write deadline last set
	// on nc (a slow-consumer cut may shorten the real one behind its back,
	// which only makes writes end sooner); bufs is the batch being written.
	wdeadline time.Time
	bufs      net.Buffers

	// Read state, reader goroutine only (transport_read.go).
	dec       wsframe.Decoder
	msg       *[]byte // the message being read (pooled); nil between messages
	rbuf      []byte  // the read buffer of a connection without rc
	chunk     *[]byte // tryRead's result: a pooled buffer holding nread bytes
	nread     int
	rerr      error
	tryReadFn func(fd uintptr) bool
	rdeadline time.Time // the read deadline last set
	parkState
}

// startWriter runs a writer for a connection whose push took the writer
// role: a writer-pool worker where the socket has a descriptor to write to
// without blocking, else the connection's own writeLoop.
func (c *conn) startWriter() {
	if c.pooled() {
		c.node.writers.add(c)
	} else {
		go c.writeLoopFn()
	}
}

// pooled reports whether the writer pool writes for c: a socket with a
// descriptor, on a system where the pool's non-blocking writes work. Where
// it does, a goroutine that took c's writer role may make the pool's
// non-blocking write itself (flushNow) instead of waking a worker.
func (c *conn) pooled() bool { return poolWrites && c.rc != nil }

// writeLoop writes queued frames until the queue is empty, taking everything
// queued at once (at most writeLoopBatch messages of a queue that an
// overflow policy acts on) and writing it with one vectored write, each
// with the write deadline. It runs holding the writer role, on a goroutine of its
// own: it may wait for a slow client. It sends every close frame, then
// gives the client CloseGrace to answer.
func (c *conn) writeLoop() {
	cfg := &c.node.cfg
	for {
		batch, closing := c.out.takeSome(writeLoopBatch)
		if batch == nil {
			return // the role is given back
		}
		// Every write has a deadline between half the write timeout and the
		// whole of it: re-arming the socket's timer for each batch cost 7%
		// of server CPU at high fan-out rates (docs/benchmarks.md), so it is
		// re-armed only when less than half is left.
		now := time.Now()
		switch {
		case closing:
			c.wdeadline = now.Add(min(cfg.WriteTimeout, cfg.CloseGrace))
			_ = c.nc.SetWriteDeadline(c.wdeadline)
		case c.wdeadline.Sub(now) < cfg.WriteTimeout/2:
			c.wdeadline = now.Add(cfg.WriteTimeout)
			_ = c.nc.SetWriteDeadline(c.wdeadline)
		}
		written, err := c.writeFrames(batch)
		c.node.metrics.writes.Add(1)
		c.node.metrics.framesOut.Add(uint64(len(batch)))
		c.node.metrics.bytesOut.Add(uint64(written))
		clear(batch)
		if err != nil {
			c.writeFailed()
			return
		}
		if closing {
			// Our close frame is out: wait a little for the client's reply.
			c.closeReadBy(time.Now().Add(cfg.CloseGrace))
		}
		if !c.out.done(batch) {
			return // the role is given back
		}
	}
}

// writeFailed ends the writer role after a failed write: nothing more is
// sent, and closing the socket wakes the reader (cut), which tears the
// connection down.
func (c *conn) writeFailed() {
	c.out.fail()
	c.cut()
}

var writeBufs = sync.Pool{New: func() any { return new(bytes.Buffer) }}

// writeFrames writes all frames in one call: writev on a TCP socket, or one
// coalesced Write elsewhere (TLS, which would otherwise write per buffer).
func (c *conn) writeFrames(frames [][]byte) (int64, error) {
	nc := c.nc
	if _, ok := nc.(*net.TCPConn); ok {
		// c.bufs, not a local: WriteTo's receiver would escape, an
		// allocation per write.
		c.bufs = frames
		n, err := c.bufs.WriteTo(nc)
		c.bufs = nil
		return n, err
	}
	buf := writeBufs.Get().(*bytes.Buffer)
	buf.Reset()
	for _, f := range frames {
		buf.Write(f)
	}
	n, err := nc.Write(buf.Bytes())
	if buf.Cap() <= 64<<10 {
		writeBufs.Put(buf)
	}
	return int64(n), err
}
