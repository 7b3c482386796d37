//go:build !linux

package bench

import "errors"

const epollReader = false

// rxPool is the epoll reader, which needs Linux: elsewhere every subscriber
// has its own goroutine reader.
type rxPool struct{}

func newRxPool(*runner) (*rxPool, error) { return nil, errors.New("needs Linux") }

// add is never called: without a pool, subscribers read with goroutines.
func (*rxPool) add(*subscriber, *handshakeConn, func(error)) {}

func (*rxPool) stop() {}
