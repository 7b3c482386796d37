package bench

import (
	"fmt"
	"io"
	"net"
	"runtime"
	"sync"
	"syscall"
	"testing"

	"golang.org/x/sys/unix"
)

// BenchmarkLoopbackWrite is the floor under every server's CPU per
// delivery in the suite: one write(2) of a pub frame (150 bytes, about what
// a 128-byte payload costs on the wire) to a loopback TCP socket whose
// reader keeps up, with its CPU taken from the writing thread alone
// (RUSAGE_THREAD). On loopback the sender's system call also runs the
// receiver's TCP input, so this is what the kernel charges a server per
// delivery; docs/benchmarks.md compares the scenarios' CPU with it. With
// sockets=1000 the writes go round robin over a thousand sockets, as a
// fan-out's do, each colder in the caches than the one socket of sockets=1.
//
//	go test -run '^$' -bench LoopbackWrite -benchtime 200000x -count 3 ./bench
func BenchmarkLoopbackWrite(b *testing.B) {
	for _, n := range []int{1, 1000} {
		b.Run(fmt.Sprintf("sockets=%d", n), func(b *testing.B) { benchLoopbackWrite(b, n) })
	}
}

func benchLoopbackWrite(b *testing.B, sockets int) {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		b.Fatal(err)
	}
	defer ln.Close()
	var wg sync.WaitGroup
	wg.Add(1)
	go func() { // the readers: one each, as the generator's would keep up
		defer wg.Done()
		for range sockets {
			c, err := ln.Accept()
			if err != nil {
				return
			}
			wg.Add(1)
			go func() {
				defer wg.Done()
				_, _ = io.Copy(io.Discard, c)
				c.Close()
			}()
		}
	}()
	conns := make([]net.Conn, sockets)
	rcs := make([]syscall.RawConn, sockets)
	for i := range conns {
		c, err := net.Dial("tcp", ln.Addr().String())
		if err != nil {
			b.Fatal(err)
		}
		conns[i] = c
		if rcs[i], err = c.(*net.TCPConn).SyscallConn(); err != nil {
			b.Fatal(err)
		}
	}
	frame := make([]byte, 150)
	runtime.LockOSThread()
	defer runtime.UnlockOSThread()
	var before, after unix.Rusage
	_ = unix.Getrusage(unix.RUSAGE_THREAD, &before)
	b.ResetTimer()
	for i := range b.N {
		rc := rcs[i%sockets]
		for {
			var n int
			var werr error
			_ = rc.Write(func(fd uintptr) bool {
				n, werr = syscall.Write(int(fd), frame)
				return werr != syscall.EAGAIN
			})
			if werr != nil {
				b.Fatal(werr)
			}
			if n == len(frame) {
				break
			}
			b.Fatalf("short write %d", n)
		}
	}
	b.StopTimer()
	_ = unix.Getrusage(unix.RUSAGE_THREAD, &after)
	cpu := float64(after.Utime.Nano()+after.Stime.Nano()-before.Utime.Nano()-before.Stime.Nano()) / 1e3
	b.ReportMetric(cpu/float64(b.N), "cpu-µs/write")
	for _, c := range conns {
		c.Close()
	}
	wg.Wait()
}
