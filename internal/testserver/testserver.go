// Package testserver runs broker servers of a test's own — redis-server
// and nats-server from the machine's packages — on free loopback ports, so
// that a test can kill one and start it again, with or without its data,
// without touching the servers the machine runs for everyone.
//
// A missing binary skips the test, unless the environment says the broker
// is required (HERALD_TEST_REDIS or HERALD_TEST_NATS set to a URL, as CI
// does; see internal/testenv): then it fails it.
package testserver

import (
	"bytes"
	"fmt"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/heraldhq/herald/internal/testenv"
)

// Server is one server process of the test's own. Its methods are for the
// test's goroutine.
type Server struct {
	t    testing.TB
	name string
	port int
	dir  string
	args func(keepData bool) []string
	bin  string
	cmd  *exec.Cmd
	done chan struct{}
}

// Redis starts a redis-server. With persist it keeps its data across Kill
// and Start (an append-only file synced at every write, as a server
// configured for durability would); without, it keeps nothing on disk
// (the machine's own Redis is configured so), and Start brings it back
// empty.
func Redis(t testing.TB, persist bool) *Server {
	t.Helper()
	s := newServer(t, "redis-server", testenv.RedisVar)
	s.args = func(bool) []string {
		a := []string{"--port", strconv.Itoa(s.port), "--bind", "127.0.0.1", "--dir", s.dir, "--save", "", "--daemonize", "no", "--logfile", filepath.Join(s.dir, "redis.log")}
		if persist {
			return append(a, "--appendonly", "yes", "--appendfsync", "always")
		}
		return append(a, "--appendonly", "no")
	}
	s.Start(true)
	return s
}

// NATS starts a nats-server with JetStream, its store in a directory of
// the test's. Start(false) brings it back on an empty store.
func NATS(t testing.TB) *Server {
	t.Helper()
	s := newServer(t, "nats-server", testenv.NATSVar)
	s.args = func(keepData bool) []string {
		store := filepath.Join(s.dir, "store")
		if !keepData {
			_ = os.RemoveAll(store)
		}
		return []string{"-a", "127.0.0.1", "-p", strconv.Itoa(s.port), "-js", "-sd", store, "-l", filepath.Join(s.dir, "nats.log")}
	}
	s.Start(true)
	return s
}

// NATSAt is NATS on a given port.
func NATSAt(t testing.TB, port int) *Server {
	t.Helper()
	s := newServer(t, "nats-server", testenv.NATSVar)
	s.port = port
	s.args = func(bool) []string {
		return []string{"-a", "127.0.0.1", "-p", strconv.Itoa(s.port), "-js", "-sd", filepath.Join(s.dir, "store"), "-l", filepath.Join(s.dir, "nats.log")}
	}
	s.Start(true)
	return s
}

func newServer(t testing.TB, name, requiredBy string) *Server {
	t.Helper()
	bin, err := exec.LookPath(name)
	if err != nil {
		for _, dir := range []string{"/usr/sbin", "/usr/local/sbin", "/usr/bin"} {
			if p := filepath.Join(dir, name); isExecutable(p) {
				bin, err = p, nil
				break
			}
		}
	}
	if err != nil {
		if testenv.Required(requiredBy) {
			t.Fatalf("%s not found, and %s is set: install it (Debian: apt-get install %s)", name, requiredBy, debianPackage(name))
		}
		t.Skipf("%s not found: this test runs a server of its own (Debian: apt-get install %s)", name, debianPackage(name))
	}
	s := &Server{t: t, name: name, bin: bin, port: freePort(t), dir: t.TempDir()}
	t.Cleanup(s.Kill)
	return s
}

func debianPackage(name string) string {
	if name == "redis-server" {
		return "redis-server"
	}
	return "nats-server"
}

func isExecutable(p string) bool {
	fi, err := os.Stat(p)
	return err == nil && !fi.IsDir() && fi.Mode()&0o111 != 0
}

func freePort(t testing.TB) int {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	return ln.Addr().(*net.TCPAddr).Port
}

// Addr is the server's address, host:port.
func (s *Server) Addr() string { return net.JoinHostPort("127.0.0.1", strconv.Itoa(s.port)) }

// Start starts the server on its port, keeping its data if keepData and it
// keeps any, and waits until it accepts connections.
func (s *Server) Start(keepData bool) {
	s.t.Helper()
	if s.cmd != nil {
		s.t.Fatalf("%s: Start while running", s.name)
	}
	cmd := exec.Command(s.bin, s.args(keepData)...)
	cmd.Dir = s.dir
	if err := cmd.Start(); err != nil {
		s.t.Fatalf("failed to start %s: %v", s.name, err)
	}
	s.cmd, s.done = cmd, make(chan struct{})
	go func(done chan struct{}) { _ = cmd.Wait(); close(done) }(s.done) // owned: ends with the process
	deadline := time.Now().Add(10 * time.Second)
	for {
		c, err := net.DialTimeout("tcp", s.Addr(), time.Second)
		if err == nil {
			c.Close()
			return
		}
		select {
		case <-s.done:
			s.cmd = nil
			s.t.Fatalf("%s exited at start (port %d): see %s", s.name, s.port, s.dir)
		default:
		}
		if time.Now().After(deadline) {
			s.Kill()
			s.t.Fatalf("%s does not accept connections on %s: %v", s.name, s.Addr(), err)
		}
		time.Sleep(20 * time.Millisecond)
	}
}

// Kill kills the server with SIGKILL, as a crash would, and waits for it
// to be gone. A no-op when it is not running.
func (s *Server) Kill() {
	if s.cmd == nil {
		return
	}
	_ = s.cmd.Process.Kill()
	select {
	case <-s.done:
	case <-time.After(10 * time.Second):
		s.t.Errorf("%s (pid %d) did not exit after SIGKILL", s.name, s.cmd.Process.Pid)
	}
	s.cmd = nil
}

// String names the server for logs.
func (s *Server) String() string { return fmt.Sprintf("%s on %s", s.name, s.Addr()) }

// Pid is the server process's id, 0 when it is not running.
func (s *Server) Pid() int {
	if s.cmd == nil {
		return 0
	}
	return s.cmd.Process.Pid
}

// CPUSeconds is the CPU time (user and system) the servers' processes
// have used, from /proc/PID/stat (Linux; clock ticks of 1/100 s).
func CPUSeconds(srvs ...*Server) (float64, error) {
	total := 0.0
	for _, s := range srvs {
		stat, err := os.ReadFile("/proc/" + strconv.Itoa(s.Pid()) + "/stat")
		if err != nil {
			return 0, err
		}
		// The fields after the command (in parentheses): utime and stime
		// are the 12th and 13th.
		f := strings.Fields(string(stat[bytes.LastIndexByte(stat, ')')+1:]))
		if len(f) < 13 {
			return 0, fmt.Errorf("unexpected /proc/%d/stat", s.Pid())
		}
		ut, _ := strconv.ParseFloat(f[11], 64)
		st, _ := strconv.ParseFloat(f[12], 64)
		total += (ut + st) / 100
	}
	return total, nil
}

// SelfCPU is the CPU time (user and system) this process has used.
func SelfCPU() float64 {
	var ru syscall.Rusage
	_ = syscall.Getrusage(syscall.RUSAGE_SELF, &ru)
	return time.Duration(ru.Utime.Nano() + ru.Stime.Nano()).Seconds()
}
