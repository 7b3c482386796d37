//go:build !linux

package herald

import "errors"

// parkable: elsewhere an idle reader waits in Go's netpoller, in its
// goroutine.
const parkable = false

type poller struct{}

func startPoller() (*poller, error)         { return nil, errors.New("parking idle readers needs epoll") }
func (p *poller) arm(c *conn, fd int) error { return errors.New("unreachable: not parkable") }
func (p *poller) forget(c *conn, fd int32)  {}
func (p *poller) stop()                     {}
