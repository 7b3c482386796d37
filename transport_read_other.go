//go:build !unix

package herald

import (
	"net"
	"syscall"
)

// pollable: elsewhere the reader blocks in Read with a buffer of its own.
const pollable = false

func (c *conn) tryRead(fd uintptr) bool { panic("unreachable: not pollable") }

// rawConn: elsewhere the reader and writer use nc's own methods only.
func rawConn(nc net.Conn) syscall.RawConn { return nil }
