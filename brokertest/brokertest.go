// Package brokertest is the conformance suite every herald.Broker and
// herald.PresenceManager passes: the in-memory ones, redisbroker and
// natsbroker run the same tests, so they keep the same semantics. It is
// public, as testing/fstest is, so that a broker written outside this
// module can prove the same: call Run (and RunPresence, RunCrossNode,
// RunLiveSubscribe, RunUnsubscribeUser, RunHistoryReset, and RunRestart
// and RunDeadLink with a server of the test's own) from its tests.
//
// Run and RunPresence take a factory. The factory returns a new, not yet
// registered nor running, instance and arranges its cleanup (t.Cleanup); the
// suite registers a recording handler, runs it and stops it. Instances that
// the factory makes for the same *testing.T must share one backend namespace
// (for Redis, one key prefix), so that two of them act as two nodes of one
// cluster; a factory called with a different *testing.T must give a fresh
// namespace. Backends that join several nodes say so with MultiNode, and
// the tests that need it skip otherwise.
package brokertest

import (
	"context"
	"fmt"
	"slices"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/heraldhq/herald"
)

// Option describes what the backend under test can do.
type Option func(*config)

type config struct {
	multiNode   bool
	presenceTTL time.Duration
	skip        map[string]string // test name -> why the backend cannot pass it
}

// Skip skips the suite's test name (such as "SubscribeThenPublishOtherNode")
// for a backend that does not give its guarantee, saying why. Document the
// weakness where the backend is documented.
func Skip(name, why string) Option {
	return func(c *config) {
		if c.skip == nil {
			c.skip = make(map[string]string)
		}
		c.skip[name] = why
	}
}

func (c config) skipped(t *testing.T, name string) {
	t.Helper()
	if why, ok := c.skip[name]; ok {
		t.Skip("skipped for this backend: " + why)
	}
}

// MultiNode says that instances made for the same *testing.T share a
// backend, as nodes of one cluster do: the fan-out, cross-node ordering and
// cross-node presence tests run only with it.
func MultiNode() Option { return func(c *config) { c.multiNode = true } }

// PresenceTTL says that the presence manager expires an entry that its node
// stopped refreshing within ttl (the factory must configure that TTL), and
// that a running instance keeps its own entries alive. It implies MultiNode.
func PresenceTTL(ttl time.Duration) Option {
	return func(c *config) { c.multiNode, c.presenceTTL = true, ttl }
}

func newConfig(opts []Option) config {
	var c config
	for _, o := range opts {
		o(&c)
	}
	return c
}

func (c config) needMultiNode(t *testing.T) {
	t.Helper()
	if !c.multiNode {
		t.Skip("backend is single-node (no brokertest.MultiNode option): no second node to talk to")
	}
}

// waitFor is how long the suite waits for something that should happen.
const waitFor = 10 * time.Second

// Recorder is a herald.BrokerHandler that keeps what it is handed. It fails
// the test if HandlePublication runs concurrently for one channel.
type Recorder struct {
	t          testing.TB
	mu         sync.Mutex
	pubs       map[string][]*herald.Publication
	controls   [][]byte
	inFlight   sync.Map // channel -> *atomic.Int32
	reconnects atomic.Int32
	outages    atomic.Int32
}

// NewRecorder returns an empty Recorder that reports to t.
func NewRecorder(t testing.TB) *Recorder {
	return &Recorder{t: t, pubs: make(map[string][]*herald.Publication)}
}

// HandlePublication implements herald.BrokerHandler.
func (r *Recorder) HandlePublication(pub *herald.Publication) {
	v, _ := r.inFlight.LoadOrStore(pub.Channel, new(atomic.Int32))
	n := v.(*atomic.Int32)
	if n.Add(1) != 1 {
		r.t.Errorf("HandlePublication called concurrently for channel %q", pub.Channel)
	}
	cp := *pub // the broker does not retain pub, but copy to be safe
	r.mu.Lock()
	r.pubs[pub.Channel] = append(r.pubs[pub.Channel], &cp)
	r.mu.Unlock()
	n.Add(-1)
}

// HandleReconnect implements herald.BrokerHandler; it counts the calls.
func (r *Recorder) HandleReconnect() { r.reconnects.Add(1) }

// Reconnects counts HandleReconnect calls.
func (r *Recorder) Reconnects() int { return int(r.reconnects.Load()) }

// HandleOutage implements herald.BrokerHandler; it counts the calls.
func (r *Recorder) HandleOutage(error) { r.outages.Add(1) }

// Outages counts HandleOutage calls.
func (r *Recorder) Outages() int { return int(r.outages.Load()) }

// HandleControl implements herald.BrokerHandler.
func (r *Recorder) HandleControl(data []byte) {
	r.mu.Lock()
	r.controls = append(r.controls, append([]byte(nil), data...))
	r.mu.Unlock()
}

// Pubs returns what was delivered for channel so far.
func (r *Recorder) Pubs(channel string) []*herald.Publication {
	r.mu.Lock()
	defer r.mu.Unlock()
	return slices.Clone(r.pubs[channel])
}

// Controls returns the control messages delivered so far.
func (r *Recorder) Controls() [][]byte {
	r.mu.Lock()
	defer r.mu.Unlock()
	return slices.Clone(r.controls)
}

// WaitPubs waits until at least n publications of channel were delivered
// and returns them; it fails the test after a while.
func (r *Recorder) WaitPubs(t testing.TB, channel string, n int) []*herald.Publication {
	t.Helper()
	var got []*herald.Publication
	Eventually(t, func() bool { got = r.Pubs(channel); return len(got) >= n },
		func() string { return fmt.Sprintf("%d of %d publications delivered on %q", len(got), n, channel) })
	return got
}

// Eventually polls cond until it holds, failing the test with what() after
// a while.
func Eventually(t testing.TB, cond func() bool, what func() string) {
	t.Helper()
	deadline := time.Now().Add(waitFor)
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatalf("timed out: %s", what())
		}
		time.Sleep(5 * time.Millisecond)
	}
}

// Start registers a Recorder on b and runs b until the test ends or stop is
// called; stop waits for Run to return and fails the test if it does not,
// or if it returns anything but context.Canceled.
func Start(t testing.TB, b herald.Broker) (rec *Recorder, stop func()) {
	t.Helper()
	rec = NewRecorder(t)
	b.Register(rec)
	return rec, run(t, b.Run)
}

func run(t testing.TB, f func(context.Context) error) (stop func()) {
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- f(ctx) }()
	var once sync.Once
	stop = func() {
		once.Do(func() {
			cancel()
			select {
			case err := <-done:
				if err != context.Canceled {
					t.Errorf("Run returned %v, want context.Canceled", err)
				}
			case <-time.After(waitFor):
				t.Errorf("Run did not return within %v of its context's end", waitFor)
			}
		})
	}
	t.Cleanup(stop)
	return stop
}

func ctxT(t testing.TB) context.Context {
	ctx, cancel := context.WithTimeout(context.Background(), waitFor)
	t.Cleanup(cancel)
	return ctx
}

// chanName is a channel name unique in the test, using characters that
// backends may have to escape.
func chanName(t testing.TB, suffix string) string {
	return "ns:" + strings.NewReplacer("/", ".", "#", "@").Replace(t.Name()) + "." + suffix
}

func publish(t testing.TB, b herald.Broker, channel, data string, opts herald.PublishOptions) herald.PublishResult {
	t.Helper()
	res, err := b.Publish(ctxT(t), &herald.Publication{Channel: channel, Data: []byte(data)}, opts)
	if err != nil {
		t.Fatalf("Publish(%q): %v", channel, err)
	}
	return res
}

func subscribe(t testing.TB, b herald.Broker, channel string) {
	t.Helper()
	if err := b.Subscribe(ctxT(t), channel); err != nil {
		t.Fatalf("Subscribe(%q): %v", channel, err)
	}
}

func history(t testing.TB, b herald.Broker, channel string, opts herald.HistoryOptions) herald.HistoryResult {
	t.Helper()
	res, err := b.History(ctxT(t), channel, opts)
	if err != nil {
		t.Fatalf("History(%q, %+v): %v", channel, opts, err)
	}
	return res
}

func offsets(pubs []*herald.Publication) []uint64 {
	out := make([]uint64, len(pubs))
	for i, p := range pubs {
		out[i] = p.Offset
	}
	return out
}

func datas(pubs []*herald.Publication) []string {
	out := make([]string, len(pubs))
	for i, p := range pubs {
		out[i] = string(p.Data)
	}
	return out
}

func seq(from, to uint64) []uint64 {
	var out []uint64
	if from <= to {
		for i := from; i <= to; i++ {
			out = append(out, i)
		}
	} else {
		for i := from; i >= to; i-- {
			out = append(out, i)
		}
	}
	return out
}

// hist is the history option set most tests use.
var hist = herald.PublishOptions{HistorySize: 100, HistoryTTL: time.Minute}
