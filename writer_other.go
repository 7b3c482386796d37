//go:build !linux

package herald

import "syscall"

// poolWrites: elsewhere every connection has a writeLoop of its own.
const poolWrites = false

type nbWriter struct{}

func newNBWriter() *nbWriter { return &nbWriter{} }

func (w *nbWriter) write(rc syscall.RawConn, frames [][]byte) (int, error) {
	panic("unreachable: no pool writes on this platform")
}
