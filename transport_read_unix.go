//go:build unix

package herald

import (
	"net"
	"syscall"
)

// pollable: the reader may wait for readability without holding a buffer.
const pollable = true

// tryRead is the function the reader hands syscall.RawConn.Read: it reads
// into a pooled chunk, and gives the chunk back when there is nothing to
// read, reporting false (wait for readability) unless the reader may park.
// Reader goroutine only.
func (c *conn) tryRead(fd uintptr) bool {
	b := readChunks.Get().(*[]byte)
	for {
		n, err := syscall.Read(int(fd), *b)
		switch err {
		case syscall.EINTR:
			continue
		case syscall.EAGAIN:
			readChunks.Put(b)
			// Park (the reader gives up its goroutine), or wait for
			// readability here, in Go's netpoller.
			c.wouldBlock = c.mayPark
			return c.mayPark
		}
		c.chunk, c.nread, c.rerr = b, max(n, 0), err
		return true
	}
}

// rawConn returns nc's descriptor for the reader's and the writer pool's
// system calls, or nil when nc has none (TLS).
func rawConn(nc net.Conn) syscall.RawConn {
	if sc, ok := nc.(syscall.Conn); ok {
		if rc, err := sc.SyscallConn(); err == nil {
			return rc
		}
	}
	return nil
}
