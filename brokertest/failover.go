package brokertest

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"net/http"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/gorilla/websocket"

	"github.com/heraldhq/herald"
	"github.com/heraldhq/herald/protocol"
)

// RunServerKilled runs node A and node B on the brokers newA and newB make
// (connected to different servers of one broker cluster), with a
// subscriber of one channel with history on each, and both nodes
// publishing to it, while kill kills one server of the cluster. It checks
// that nothing is silently lost: every publication whose Publish returned
// without error reaches both subscribers, at consecutive offsets of one
// epoch, live or recovered after they were told to resubscribe (4006) —
// never a gap without that close, never recovered:false. It also checks
// that both nodes publish again after the kill.
func RunServerKilled(t *testing.T, newA, newB func(t *testing.T) herald.Broker, kill func()) {
	// History long enough for everything published during the outage:
	// a subscriber must recover it all.
	a := startNodeHistory(t, newA(t), 100000)
	b := startNodeHistory(t, newB(t), 100000)
	const ch = "chat:failover"
	followers := []*follower{{node: a, user: "x", ch: ch}, {node: b, user: "y", ch: ch}}
	var fwg sync.WaitGroup
	for _, f := range followers {
		if err := f.connect(); err != nil {
			t.Fatalf("subscriber on %s: %v", f.user, err)
		}
		fwg.Go(f.run)
	}

	var killed atomic.Bool
	pubs := []*publisher{{node: a, name: "a"}, {node: b, name: "b"}}
	ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	defer cancel()
	var pwg sync.WaitGroup
	for _, p := range pubs {
		pwg.Go(func() { p.run(ctx, ch, &killed) })
	}
	waitAcked(t, pubs, false, 100, waitFor)
	t.Log("killing a server")
	kill()
	killed.Store(true)
	// Streams elect new leaders, nodes reconnect and set up again; on a
	// loaded machine that took more than 10 s once.
	waitAcked(t, pubs, true, 50, 3*waitFor)
	cancel()
	pwg.Wait()

	end := publishRetry(t, b, ch, `"end"`)
	done := make(chan struct{})
	go func() { fwg.Wait(); close(done) }()
	select {
	case <-done:
	case <-time.After(waitFor):
		for _, f := range followers {
			f.close()
		}
		<-done
		t.Fatalf("the subscribers did not reach the end marker at offset %d", end.Offset)
	}
	for _, f := range followers {
		f.check(t, pubs)
	}
}

// waitAcked waits up to within until every publisher has n acknowledged
// publications (after the kill, if afterKill).
func waitAcked(t *testing.T, pubs []*publisher, afterKill bool, n int, within time.Duration) {
	t.Helper()
	deadline := time.Now().Add(within)
	for {
		done := true
		for _, p := range pubs {
			done = done && p.count(afterKill) >= n
		}
		if done {
			return
		}
		if time.Now().After(deadline) {
			t.Fatalf("publishers acknowledged a:%d b:%d within %v (after the kill: %v), want %d each; last errors:\na: %v\nb: %v",
				pubs[0].count(afterKill), pubs[1].count(afterKill), within, afterKill, n, pubs[0].lastErr(), pubs[1].lastErr())
		}
		time.Sleep(10 * time.Millisecond)
	}
}

// publisher publishes "<name>-<i>" on its node until ctx is done, 5 ms
// apart, and records what was acknowledged.
type publisher struct {
	node *testNode
	name string

	mu     sync.Mutex
	acked  map[uint64]string // offset -> data
	before int               // acknowledged before the kill
	after  int
	err    error
}

func (p *publisher) run(ctx context.Context, ch string, killed *atomic.Bool) {
	p.acked = make(map[uint64]string)
	for i := 0; ctx.Err() == nil; i++ {
		data := fmt.Sprintf(`"%s-%d"`, p.name, i)
		pctx, cancel := context.WithTimeout(ctx, 2*time.Second)
		res, err := p.node.Publish(pctx, ch, []byte(data))
		cancel()
		p.mu.Lock()
		if err != nil {
			p.err = err
		} else {
			p.acked[res.Offset] = data
			if killed.Load() {
				p.after++
			} else {
				p.before++
			}
		}
		p.mu.Unlock()
		time.Sleep(5 * time.Millisecond)
	}
}

func (p *publisher) count(afterKill bool) int {
	p.mu.Lock()
	defer p.mu.Unlock()
	if afterKill {
		return p.after
	}
	return p.before
}

func (p *publisher) lastErr() error {
	p.mu.Lock()
	defer p.mu.Unlock()
	return p.err
}

// follower is a subscriber that resubscribes with its position whenever it
// is closed with 4006, as a client library does, until it gets "end". Its
// goroutine owns ws; close may be called from another to stop it.
type follower struct {
	node     *testNode
	user, ch string

	mu     sync.Mutex
	ws     *websocket.Conn
	pos    position
	seen   map[uint64]string
	resubs int
	err    error
}

func (f *follower) connect() error {
	d := websocket.Dialer{Subprotocols: []string{protocol.Subprotocol}, HandshakeTimeout: 5 * time.Second}
	ws, _, err := d.Dial(f.node.url, http.Header{"X-User": {f.user}})
	if err != nil {
		return err
	}
	cmd := map[string]any{"cmd": "subscribe", "channel": f.ch, "id": 1}
	if f.seen != nil {
		cmd["since"] = f.pos
	}
	_ = ws.SetReadDeadline(time.Now().Add(waitFor))
	if err := ws.WriteJSON(cmd); err != nil {
		ws.Close()
		return err
	}
	var rep frame
	for {
		if err := ws.ReadJSON(&rep); err != nil {
			ws.Close()
			return err
		}
		if rep.Push == "" {
			break
		}
	}
	if rep.Error != nil {
		ws.Close()
		return fmt.Errorf("subscribe: %s: %s", rep.Error.Code, rep.Error.Message)
	}
	var res subscribeResult
	if err := json.Unmarshal(rep.Result, &res); err != nil {
		ws.Close()
		return err
	}
	f.mu.Lock()
	defer f.mu.Unlock()
	if f.seen == nil {
		f.seen, f.pos = make(map[uint64]string), res.position
	} else if res.Recovered == nil || !*res.Recovered {
		ws.Close()
		return fmt.Errorf("%w (since %+v): %s", errRecoveredFalse, f.pos, rep.Result)
	}
	f.ws = ws
	return nil
}

func (f *follower) close() {
	f.mu.Lock()
	defer f.mu.Unlock()
	if f.ws != nil {
		f.ws.Close()
	}
}

func (f *follower) fail(err error) {
	f.mu.Lock()
	defer f.mu.Unlock()
	if f.err == nil {
		f.err = err
	}
}

// run reads pushes until "end"; when closed with 4006 it resubscribes.
func (f *follower) run() {
	deadline := time.Now().Add(2 * time.Minute)
	for time.Now().Before(deadline) {
		end, err := f.read()
		if end || err == nil {
			return
		}
		var ce *websocket.CloseError
		if !errors.As(err, &ce) || herald.CloseCode(ce.Code) != herald.CloseResubscribe {
			f.fail(err)
			return
		}
		f.mu.Lock()
		f.resubs++
		f.mu.Unlock()
		for {
			err := f.connect()
			if err == nil {
				break
			}
			if time.Now().After(deadline) || errors.Is(err, errRecoveredFalse) {
				f.fail(err)
				return
			}
			time.Sleep(100 * time.Millisecond) // the node's broker may still be reconnecting
		}
	}
}

var errRecoveredFalse = errors.New("resubscribed and was told recovered:false: the broker lost history")

// read reads pushes on the current connection until "end" or an error.
func (f *follower) read() (end bool, err error) {
	f.mu.Lock()
	ws := f.ws
	f.mu.Unlock()
	defer ws.Close()
	for {
		_ = ws.SetReadDeadline(time.Now().Add(time.Minute))
		var fr frame
		if err := ws.ReadJSON(&fr); err != nil {
			return false, err
		}
		if fr.Push != "pub" {
			continue
		}
		f.mu.Lock()
		switch {
		case fr.Offset <= f.pos.Offset:
			// A repeat (delivered again after a recovery): already seen.
		case fr.Offset != f.pos.Offset+1:
			err = fmt.Errorf("offset %d after %d without a close: publications silently lost", fr.Offset, f.pos.Offset)
		default:
			f.pos.Offset = fr.Offset
			f.seen[fr.Offset] = string(fr.Data)
		}
		f.mu.Unlock()
		if err != nil {
			f.fail(err)
			return true, nil
		}
		if string(fr.Data) == `"end"` {
			return true, nil
		}
	}
}

// check compares what f saw with what the publishers were told was
// published.
func (f *follower) check(t *testing.T, pubs []*publisher) {
	t.Helper()
	f.mu.Lock()
	defer f.mu.Unlock()
	if f.err != nil {
		t.Errorf("subscriber %s: %v", f.user, f.err)
	}
	missing := 0
	for _, p := range pubs {
		p.mu.Lock()
		for off, data := range p.acked {
			if got, ok := f.seen[off]; !ok || got != data {
				if missing < 5 {
					t.Errorf("subscriber %s: publication %s at offset %d was acknowledged, got %q", f.user, data, off, got)
				}
				missing++
			}
		}
		p.mu.Unlock()
	}
	t.Logf("subscriber %s on its node: %d publications, resubscribed %d times, %d acknowledged ones missing",
		f.user, len(f.seen), f.resubs, missing)
}
