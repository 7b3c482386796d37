package herald

import (
	"bytes"
	"context"
	"fmt"
	"runtime"
	"testing"
	"time"

	"github.com/heraldhq/herald/protocol"
)

// readers counts the goroutines that are a connection's reader.
func readers() int {
	buf := make([]byte, 1<<20)
	for {
		n := runtime.Stack(buf, true)
		if n < len(buf) {
			return bytes.Count(buf[:n], []byte("herald.(*conn).readLoop("))
		}
		buf = make([]byte, 2*len(buf))
	}
}

// Idle readers park in the node's poller: idle connections keep no
// goroutine, and a parked connection still reads what comes, answers, sees
// its peer leave and is closed by Shutdown. Not parallel: it counts every
// reader goroutine of the process.
func TestIdleReadersPark(t *testing.T) {
	ts := newTestServer(t, Config{})
	const n = 100
	clients := make([]*testClient, n)
	for i := range clients {
		clients[i] = ts.client(t)
		clients[i].subscribe(fmt.Sprintf("room%d", i%10))
	}
	// Each reader handled a subscribe and found nothing more to read.
	waitFor(t, "every reader parked", func() bool { return readers() == 0 })

	// A parked reader wakes for a command, and parks again.
	for _, c := range clients[1:10] { // none of them in room0
		c.mustOK(protocol.Command{Cmd: "publish", Channel: "room0", Data: []byte(`1`)})
	}
	for i := 0; i < n; i += 10 { // room0's ten subscribers got all nine
		for range 9 {
			if m := clients[i].readJSON(); m.Push != "pub" || m.Channel != "room0" {
				t.Fatalf("client %d got %+v", i, m)
			}
		}
	}
	waitFor(t, "readers parked again", func() bool { return readers() == 0 })

	// A peer that leaves wakes its parked reader, which tears it down.
	for _, c := range clients[n/2:] {
		c.ws.Close()
	}
	waitFor(t, "departed clients gone", func() bool { return ts.node.Stats().Connections == n/2 })

	// Shutdown's close reaches parked readers: each client gets 1001 (and
	// the test server's Shutdown, at cleanup, returns within its deadline).
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	done := make(chan error, 1)
	go func() { done <- ts.node.Shutdown(ctx) }()
	for _, c := range clients[:n/2] {
		if ce := c.expectClose(); CloseCode(ce.Code) != CloseGoingAway {
			t.Fatalf("close %v", ce)
		}
	}
	if err := <-done; err != nil {
		t.Fatalf("Shutdown: %v", err)
	}
}

// A parked reader whose client goes silent still wakes for its deadline:
// no pong in time closes it with 4002.
func TestParkedReaderDeadline(t *testing.T) {
	ts := newTestServer(t, Config{PingInterval: 100 * time.Millisecond, PongTimeout: 200 * time.Millisecond})
	c := ts.client(t)
	c.subscribe("x")
	c.ws.SetPingHandler(func(string) error { return nil }) // never pong
	start := time.Now()
	if ce := c.expectClose(); CloseCode(ce.Code) != CloseNoPong {
		t.Fatalf("close %v after %v", ce, time.Since(start))
	}
}
