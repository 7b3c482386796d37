package main

import (
	"context"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/heraldhq/herald"
)

// buildHerald builds the herald binary into the test's temporary
// directory and returns its path (Go's build cache makes a second build
// in the same run quick).
func buildHerald(t *testing.T) string {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Minute)
	defer cancel()
	path := filepath.Join(t.TempDir(), "herald")
	if out, err := exec.CommandContext(ctx, "go", "build", "-o", path, ".").CombinedOutput(); err != nil {
		t.Fatalf("go build: %v\n%s", err, out)
	}
	return path
}

// proc is a `herald serve` process.
type proc struct {
	cmd  *exec.Cmd
	logs *syncBuffer
	addr string
	done chan struct{} // closed once the process has been waited for
}

// startProc starts `herald serve` with args (a loopback port and JSON
// logs added) and waits until it listens. Cleanup kills it by its PID.
func startProc(t *testing.T, bin string, env []string, args ...string) *proc {
	t.Helper()
	p := &proc{logs: &syncBuffer{}, done: make(chan struct{})}
	args = append([]string{"serve", "--addr", "127.0.0.1:0", "--log-format", "json", "--drain-window", "off"}, args...)
	p.cmd = exec.Command(bin, args...)
	// The test's own HERALD_ variables (HERALD_TEST_REDIS) are not the
	// server's settings.
	for _, kv := range os.Environ() {
		if !strings.HasPrefix(kv, "HERALD_") {
			p.cmd.Env = append(p.cmd.Env, kv)
		}
	}
	p.cmd.Env = append(p.cmd.Env, env...)
	p.cmd.Stdout, p.cmd.Stderr = p.logs, p.logs
	if err := p.cmd.Start(); err != nil {
		t.Fatal(err)
	}
	go func() {
		_ = p.cmd.Wait()
		close(p.done)
	}()
	t.Cleanup(func() {
		_ = p.cmd.Process.Kill()
		select {
		case <-p.done:
		case <-time.After(10 * time.Second):
			t.Errorf("process %d not reaped", p.cmd.Process.Pid)
		}
		if t.Failed() {
			t.Logf("logs of process %d:\n%s", p.cmd.Process.Pid, p.logs)
		}
	})
	waitFor(t, "the listening log line", func() bool {
		select {
		case <-p.done:
			t.Fatalf("herald serve exited: %v\n%s", p.cmd.ProcessState, p.logs)
		default:
		}
		p.addr = listeningAddr(p.logs.String())
		return p.addr != ""
	})
	return p
}

// kill is a crash: SIGKILL, no shutdown, no final flush.
func (p *proc) kill(t *testing.T) {
	t.Helper()
	if err := p.cmd.Process.Signal(syscall.SIGKILL); err != nil {
		t.Fatal(err)
	}
	select {
	case <-p.done:
	case <-time.After(10 * time.Second):
		t.Fatal("the killed process did not end")
	}
}

// A node crashes (SIGKILL): the surviving node sends user.offline for the
// users that were only on the dead node, and member.removed for its
// members, not for users or channels also held on the live node; while
// the backend refuses calls and answers one too late, every event arrives
// exactly once after de-duplication, in order per key.
func TestWebhooksNodeCrashRedis(t *testing.T) {
	t.Parallel()
	testWebhooksNodeCrash(t, redisCluster(t))
}

// The same crash with the outbox in JetStream.
func TestWebhooksNodeCrashNATS(t *testing.T) {
	t.Parallel()
	testWebhooksNodeCrash(t, natsCluster(t))
}

func testWebhooksNodeCrash(t *testing.T, broker []string) {
	bin := buildHerald(t)
	app := newEventApp(t)
	env := []string{"HERALD_HOOKS_SECRET=" + testHooksSecret}
	args := append(broker, "--config", writeFile(t, webhookNamespaces), "--hook-connect-url", app.URL+"/connect",
		"--webhook-url", app.URL+"/events", "--webhook-users", "--webhook-grace", "300ms",
		"--webhook-node-ttl", "1500ms", "--webhook-timeout", "500ms")
	a := startProc(t, bin, env, args...)
	b := startProc(t, bin, env, args...)
	if !strings.Contains(a.logs.String(), `"msg":"webhook outbox in the broker`) {
		t.Fatalf("no outbox log line:\n%s", a.logs)
	}

	// ann is on a only, carl on b only, bob on both. ann's member of
	// chat:a is on a, bob's on b.
	ann := connectUser(t, a.addr, "ann")
	connectUser(t, a.addr, "bob")
	bob := connectUser(t, b.addr, "bob")
	connectUser(t, b.addr, "carl")
	call(t, ann, `{"id":2,"cmd":"subscribe","channel":"chat:a"}`)
	app.waitKind(t, "channel:chat:a", herald.EventMemberAdded)
	call(t, bob, `{"id":2,"cmd":"subscribe","channel":"chat:a"}`)
	before := map[string][]string{
		"user:ann":       {"user.online"},
		"user:bob":       {"user.online"},
		"user:carl":      {"user.online"},
		"channel:chat:a": {"channel.occupied", "member.added ann", "member.added bob"},
	}
	app.waitEvents(t, 20*time.Second, 300*time.Millisecond, before)

	// The backend refuses two calls, then answers one after Herald gave
	// up on it (it has the events: they come again, de-duplicated).
	app.then(answer{status: 500}, answer{status: 503}, answer{status: 200, delay: 2 * time.Second})
	a.kill(t)
	after := map[string][]string{
		"user:ann":       {"user.online", "user.offline"},
		"user:bob":       {"user.online"},
		"user:carl":      {"user.online"},
		"channel:chat:a": {"channel.occupied", "member.added ann", "member.added bob", "member.removed ann"},
	}
	// Past node TTL, the 1s+2s+4s of backoff and the late answer; then
	// two node TTLs more in which nothing else may come.
	app.waitEvents(t, 40*time.Second, 3*time.Second, after)
	app.mu.Lock()
	failed, raw, events := app.failed, app.raw, len(app.events)
	app.mu.Unlock()
	if failed != 3 || raw <= events {
		t.Fatalf("%d failed calls, %d events received for %d distinct: want 3 failures and a batch received twice", failed, raw, events)
	}
	if !strings.Contains(b.logs.String(), "released what dead nodes held") {
		t.Fatalf("the live node did not reap:\n%s", b.logs)
	}
}
