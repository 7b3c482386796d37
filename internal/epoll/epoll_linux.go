// Package epoll holds what Herald's two epoll loops share: the server's
// poller of idle readers (transport_park_linux.go) and the load
// generator's readers (bench/rx_linux.go). Each loop owns an epoll
// instance with an eventfd in its set, which another goroutine writes to
// wake the loop (to stop it).
package epoll

import (
	"encoding/binary"
	"fmt"

	"golang.org/x/sys/unix"
)

// New returns a close-on-exec epoll instance and a non-blocking eventfd
// registered in it for reading (its event's Fd is the eventfd). The caller
// closes both.
func New() (epfd, wake int, err error) {
	epfd, err = unix.EpollCreate1(unix.EPOLL_CLOEXEC)
	if err != nil {
		return -1, -1, fmt.Errorf("epoll_create1: %w", err)
	}
	wake, err = unix.Eventfd(0, unix.EFD_CLOEXEC|unix.EFD_NONBLOCK)
	if err != nil {
		unix.Close(epfd)
		return -1, -1, fmt.Errorf("eventfd: %w", err)
	}
	if err := unix.EpollCtl(epfd, unix.EPOLL_CTL_ADD, wake, &unix.EpollEvent{Events: unix.EPOLLIN, Fd: int32(wake)}); err != nil {
		unix.Close(wake)
		unix.Close(epfd)
		return -1, -1, fmt.Errorf("epoll_ctl: %w", err)
	}
	return epfd, wake, nil
}

// Wake makes the eventfd wake readable, which ends the wait of the loop
// whose set holds it.
func Wake(wake int) {
	var one [8]byte
	binary.NativeEndian.PutUint64(one[:], 1)
	_, _ = unix.Write(wake, one[:])
}
