package herald

import (
	"context"
	"encoding/json"
	"fmt"
	"strings"
	"testing"
	"time"

	"github.com/heraldhq/herald/protocol"
)

// TestPausedReaderGetsEverything: a client that stops reading while a
// burst larger than the socket buffers is sent to it gets all of it, whole
// and in order, once it reads again. On Linux the writer pool writes until
// the socket is full, possibly in the middle of a frame; the connection's
// own writer then finishes that frame and the rest.
func TestPausedReaderGetsEverything(t *testing.T) {
	t.Parallel()
	// The write deadline is the slow-reader cut, not this test's subject:
	// on a loaded machine publishing the burst alone may outlast the
	// default 10 s while the client does not read yet (1006, 1 run in 5
	// beside other work).
	ts := newTestServer(t, Config{MaxQueueBytes: 64 << 20, WriteTimeout: 2 * time.Minute})
	paused := ts.client(t)
	paused.subscribe("burst")

	// 2000 x 8 KB = 16 MB: more than loopback socket buffers hold.
	const n = 2000
	pad := strings.Repeat("x", 8000)
	for i := range n {
		if _, err := ts.node.Publish(context.Background(), "burst", fmt.Appendf(nil, `"%06d%s"`, i, pad)); err != nil {
			t.Fatal(err)
		}
	}
	if poolWrites {
		waitFor(t, "a pool write to find the socket full", func() bool { return ts.node.metrics.socketFull.Load() > 0 })
	}
	for i := range n {
		var s string
		if err := json.Unmarshal(paused.readJSON().Data, &s); err != nil {
			t.Fatalf("message %d: %v", i, err)
		}
		if want := fmt.Sprintf("%06d%s", i, pad); s != want {
			t.Fatalf("message %d: got %.20q… (%d bytes), want %.20q…", i, s, len(s), want)
		}
	}
	// The connection's writer handed the role back: later frames flow.
	if _, err := ts.node.Publish(context.Background(), "burst", []byte(`"after"`)); err != nil {
		t.Fatal(err)
	}
	if m := paused.readJSON(); string(m.Data) != `"after"` {
		t.Fatalf("got %s after the burst", m.Data)
	}
	paused.mustOK(protocol.Command{Cmd: "ping"})
}

// TestPoolHandOffMidFrame: a frame larger than the socket can hold is
// necessarily cut short by the pool's non-blocking write; the connection's
// own writer sends the rest, then what was queued after it, and the client
// reads both whole and in order.
func TestPoolHandOffMidFrame(t *testing.T) {
	if !poolWrites {
		t.Skip("no writer pool on this platform")
	}
	t.Parallel()
	ts := newTestServer(t, Config{MaxQueueBytes: 8 << 20})
	c := ts.client(t)
	c.subscribe("big")
	var sc *conn
	ts.node.forEachConn(func(x *conn) { sc = x })
	// A 4 KB send buffer and a client that does not read yet: together with
	// the client's receive window that holds far less than 1 MB.
	if err := sc.nc.(interface{ SetWriteBuffer(int) error }).SetWriteBuffer(4096); err != nil {
		t.Fatal(err)
	}
	if n := ts.node.metrics.socketFull.Load(); n != 0 {
		t.Fatalf("socket full %d times before the big frame", n)
	}
	big := `"` + strings.Repeat("y", 1<<20) + `"`
	for _, data := range []string{big, `"after"`} {
		if _, err := ts.node.Publish(context.Background(), "big", []byte(data)); err != nil {
			t.Fatal(err)
		}
	}
	waitFor(t, "the pool to hand the big frame over", func() bool { return ts.node.metrics.socketFull.Load() == 1 })
	if m := c.readJSON(); string(m.Data) != big {
		t.Fatalf("got %d bytes of data, want the %d-byte frame whole", len(m.Data), len(big))
	}
	if m := c.readJSON(); string(m.Data) != `"after"` {
		t.Fatalf("got %.40s after the big frame", m.Data)
	}
}

// TestWriterPoolReadyList: the ready list is FIFO, and under sustained load,
// when it never empties, its consumed front is reclaimed instead of growing
// the list without bound.
func TestWriterPoolReadyList(t *testing.T) {
	p := newWriterPool(1)
	p.running = 1 // as if a worker ran: add starts none, the test is the worker
	conns := make([]*conn, 5000)
	for i := range conns {
		conns[i] = &conn{}
	}
	in, out := 0, 0
	for range 200 { // 25 in, 20 out: the list grows but never empties
		for range 25 {
			p.add(conns[in%len(conns)])
			in++
		}
		for range 20 {
			if c := p.next(); c != conns[out%len(conns)] {
				t.Fatalf("next gave connection out of order at %d", out)
			}
			out++
		}
	}
	if pending := len(p.ready) - p.head; pending != in-out {
		t.Fatalf("%d pending, want %d", pending, in-out)
	}
	if len(p.ready) > 2*(in-out)+1024 {
		t.Fatalf("ready list holds %d entries for %d pending: the consumed front was kept", len(p.ready), in-out)
	}
	for range in - out {
		if p.next() == nil {
			t.Fatal("a pending connection was lost")
		}
	}
	if c := p.next(); c != nil || p.running != 0 {
		t.Fatalf("after the last one: next %v, running %d", c, p.running)
	}
}

// TestSmallFanOutWritesInline: a publication to a few subscribers is
// written by the goroutine that fans it out, with no pool worker woken for
// it (inlineFlush); to more than maxInlineFlush it goes to the pool. Every
// subscriber gets every publication, in order, either way.
func TestSmallFanOutWritesInline(t *testing.T) {
	if !poolWrites {
		t.Skip("no writer pool on this platform")
	}
	t.Parallel()
	ts := newTestServer(t, Config{})
	fanOut := func(subscribers, pubs int) (workers uint64) {
		t.Helper()
		channel := fmt.Sprintf("room%d", subscribers)
		clients := make([]*testClient, subscribers)
		for i := range clients {
			clients[i] = ts.client(t)
			clients[i].mustOK(protocol.Command{Cmd: "connect"})
			clients[i].subscribe(channel)
		}
		// Wait for the subscribe replies' writers to be gone: a worker
		// that is still running would take the fan-outs' connections.
		waitFor(t, "writer pool idle", func() bool {
			ts.node.writers.mu.Lock()
			defer ts.node.writers.mu.Unlock()
			return ts.node.writers.running == 0
		})
		before := ts.node.writers.workersStarted()
		for i := range pubs {
			if _, err := ts.node.Publish(context.Background(), channel, []byte(fmt.Sprint(i))); err != nil {
				t.Fatal(err)
			}
		}
		workers = ts.node.writers.workersStarted() - before
		for ci, c := range clients {
			for i := range pubs {
				m := c.readJSON()
				if m.Push != protocol.PushPub || string(m.Data) != fmt.Sprint(i) {
					t.Fatalf("%d subscribers: client %d: want publication %d, got %+v", subscribers, ci, i, m)
				}
			}
		}
		return workers
	}
	if w := fanOut(2, 100); w != 0 {
		t.Errorf("100 publications to 2 subscribers started %d pool workers, want 0", w)
	}
	if w := fanOut(maxInlineFlush, 20); w != 0 {
		t.Errorf("20 publications to %d subscribers started %d pool workers, want 0", maxInlineFlush, w)
	}
	if w := fanOut(maxInlineFlush+4, 20); w == 0 {
		t.Errorf("20 publications to %d subscribers started no pool worker", maxInlineFlush+4)
	}
}

// TestRepliesWriteInline: the reply to a command is written by the
// connection's reader, which handled the command, with no pool worker
// woken for it (enqueueWrite); replies still come one per command, in order.
func TestRepliesWriteInline(t *testing.T) {
	if !poolWrites {
		t.Skip("no writer pool on this platform")
	}
	t.Parallel()
	ts := newTestServer(t, Config{})
	c := ts.client(t)
	c.mustOK(protocol.Command{Cmd: "connect"})
	waitFor(t, "writer pool idle", func() bool {
		ts.node.writers.mu.Lock()
		defer ts.node.writers.mu.Unlock()
		return ts.node.writers.running == 0
	})
	before := ts.node.writers.workersStarted()
	for i := range 100 {
		m := c.call(protocol.Command{Cmd: protocol.CmdPing})
		if m.Error != nil {
			t.Fatalf("ping %d: %+v", i, m.Error)
		}
	}
	if w := ts.node.writers.workersStarted() - before; w != 0 {
		t.Errorf("100 replies started %d pool workers, want 0", w)
	}
}
