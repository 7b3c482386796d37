package brokertest

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net/http/httptest"
	"regexp"
	"strconv"
	"testing"
	"time"

	"github.com/gorilla/websocket"

	"github.com/heraldhq/herald"
	"github.com/heraldhq/herald/internal/faultproxy"
	"github.com/heraldhq/herald/protocol"
)

// Restartable is a broker server of the test's own that the test can kill
// and start again (internal/testserver).
type Restartable interface {
	Kill()
	Start(keepData bool)
}

// RunRestart runs two nodes, A and B, on one broker server of the test's
// own, kills the server (as a crash would) and starts it again, with its
// data (keepData) or empty. It checks that:
//   - A's subscriber is closed with 4006 as soon as A notices the link is
//     gone, and both nodes fail Ready until they can serve again;
//   - both come back by themselves, and publishing works again (a NATS
//     that restarted empty has no stream: the broker sets it up again);
//   - a client that resubscribes on A with its last position recovers
//     what B published meanwhile when the data was kept, and is told
//     recovered:false, epoch_changed, with the new epoch, when it was not
//     — never offsets that start over under the old epoch;
//   - live delivery goes on, in order, after that.
func RunRestart(t *testing.T, newBroker func(t *testing.T) herald.Broker, srv Restartable, keepData bool) {
	a := startNode(t, newBroker(t))
	b := startNode(t, newBroker(t))
	const ch = "chat:restart"

	x := dialNode(t, a, "x")
	pos := subscribePos(t, x, ch, nil)
	for i := 1; i <= 3; i++ {
		publishNode(t, b, ch, fmt.Sprintf(`"before-%d"`, i))
	}
	expectPubs(t, x, pos.Offset+1, `"before-1"`, `"before-2"`, `"before-3"`)
	seen := position{Offset: pos.Offset + 3, Epoch: pos.Epoch}

	srv.Kill()
	expectClosed(t, x, herald.CloseResubscribe)
	waitReady(t, a, false)
	waitReady(t, b, false)

	srv.Start(keepData)
	waitReady(t, a, true)
	waitReady(t, b, true)
	// The first commands after a restart may fail on connections the
	// client has not yet seen die (Redis: one per pooled connection): a
	// publisher retries with an idempotency key, as the clients do.
	first := publishRetry(t, b, ch, `"after-1"`)
	publishRetry(t, b, ch, `"after-2"`)

	x2 := dialNode(t, a, "x")
	got := subscribePos(t, x2, ch, &seen)
	if keepData {
		if got.Recovered == nil || !*got.Recovered || got.Epoch != seen.Epoch {
			t.Fatalf("resubscribe with data kept: %+v, want recovered in epoch %q", got, seen.Epoch)
		}
		expectPubs(t, x2, seen.Offset+1, `"after-1"`, `"after-2"`)
	} else {
		if got.Recovered == nil || *got.Recovered || got.Reason != "epoch_changed" || got.Epoch == seen.Epoch || got.Epoch != first.Epoch {
			t.Fatalf("resubscribe after an empty restart: %+v, want recovered:false, epoch_changed, epoch %q (not %q)", got, first.Epoch, seen.Epoch)
		}
	}
	live := publishRetry(t, b, ch, `"live"`)
	if live.Offset != got.Offset+1 {
		t.Fatalf("live publication at offset %d, want %d", live.Offset, got.Offset+1)
	}
	expectPubs(t, x2, live.Offset, `"live"`)
}

// RunDeadLink runs node A whose broker reaches the server through a proxy
// that is then blackholed (the link stays open and carries nothing), and
// node B connected directly. It checks that A notices within seconds (a
// heartbeat, not a TCP timeout): it fails Ready, counts the outage in
// herald_broker_outages_total and closes its subscriber with 4006, which
// then recovers on B everything published meanwhile; and that A serves
// again once the link does. newBroker connects to addr.
func RunDeadLink(t *testing.T, newBroker func(t *testing.T, addr string) herald.Broker, serverAddr string) {
	proxy := faultproxy.New(t, serverAddr)
	a := startNode(t, newBroker(t, proxy.Addr()))
	b := startNode(t, newBroker(t, serverAddr))
	const ch = "chat:deadlink"

	x := dialNode(t, a, "x")
	pos := subscribePos(t, x, ch, nil)
	publishNode(t, b, ch, `"1"`)
	publishNode(t, b, ch, `"2"`)
	expectPubs(t, x, pos.Offset+1, `"1"`, `"2"`)
	seen := position{Offset: pos.Offset + 2, Epoch: pos.Epoch}

	proxy.Blackhole()
	start := time.Now()
	expectClosedWithin(t, x, herald.CloseResubscribe, 30*time.Second)
	t.Logf("blackholed link noticed after %v", time.Since(start).Round(100*time.Millisecond))
	if err := a.Ready(context.Background()); err == nil {
		t.Fatal("node A is ready while its broker link is dead")
	}
	if n := metric(t, a, "herald_broker_outages_total"); n < 1 {
		t.Fatalf("herald_broker_outages_total = %v, want at least 1", n)
	}

	// Publishes pipelined into A meanwhile (a batch, with a broker that
	// batches) each get an unavailable error, in order, within the
	// broker timeout, and the client's connection stays usable.
	p := dialNode(t, a, "p")
	p.call(t, map[string]any{"cmd": "ping"})
	var wire []byte
	for i := range 5 {
		cmd, _ := json.Marshal(map[string]any{"id": i + 100, "cmd": "publish", "channel": ch, "data": i})
		wire = appendMaskedText(wire, cmd)
	}
	if _, err := p.ws.NetConn().Write(wire); err != nil {
		t.Fatal(err)
	}
	for i := range 5 {
		if f := p.read(t); f.ID != uint64(i+100) || f.Error == nil || f.Error.Code != string(protocol.CodeUnavailable) {
			t.Fatalf("reply %d to a publish over the dead link: %+v, want id %d with error %s", i, f, i+100, protocol.CodeUnavailable)
		}
	}
	if f := p.call(t, map[string]any{"cmd": "ping"}); f.Error != nil {
		t.Fatalf("ping after the failed publishes: %+v", f.Error)
	}

	// The client moves to B and recovers what was published meanwhile.
	publishNode(t, b, ch, `"3"`)
	publishNode(t, b, ch, `"4"`)
	y := dialNode(t, b, "x")
	if got := subscribePos(t, y, ch, &seen); got.Recovered == nil || !*got.Recovered {
		t.Fatalf("resubscribe on B: %+v, want recovered", got)
	}
	expectPubs(t, y, seen.Offset+1, `"3"`, `"4"`)

	proxy.Restore()
	waitReady(t, a, true)
	z := dialNode(t, a, "x")
	if got := subscribePos(t, z, ch, &position{Offset: seen.Offset + 2, Epoch: seen.Epoch}); got.Recovered == nil || !*got.Recovered {
		t.Fatalf("resubscribe on A after the link is back: %+v, want recovered", got)
	}
	publishNode(t, b, ch, `"5"`)
	expectPubs(t, z, seen.Offset+3, `"5"`)
}

type position struct {
	Offset uint64 `json:"offset"`
	Epoch  string `json:"epoch"`
}

type subscribeResult struct {
	position
	Recovered *bool  `json:"recovered"`
	Reason    string `json:"reason"`
}

func subscribePos(t *testing.T, c *wsClient, ch string, since *position) subscribeResult {
	t.Helper()
	cmd := map[string]any{"cmd": "subscribe", "channel": ch}
	if since != nil {
		cmd["since"] = since
	}
	rep := c.call(t, cmd)
	var res subscribeResult
	if err := json.Unmarshal(rep.Result, &res); err != nil || res.Epoch == "" {
		t.Fatalf("subscribe result %s: want a position (%v)", rep.Result, err)
	}
	return res
}

// publishNode publishes through the node's Go API, waiting for the broker
// to take it.
func publishNode(t *testing.T, n *testNode, ch, data string) herald.PublishResult {
	t.Helper()
	res, err := n.Publish(ctxT(t), ch, []byte(data))
	if err != nil {
		t.Fatalf("publish %s: %v", data, err)
	}
	return res
}

// publishRetry publishes with an idempotency key, retrying on errors until
// it succeeds or the test times out: a failed publish may have happened,
// and the key makes the retry publish it at most once.
func publishRetry(t *testing.T, n *testNode, ch, data string) herald.PublishResult {
	t.Helper()
	key := fmt.Sprintf("retry-%s-%s", ch, data)
	deadline := time.Now().Add(waitFor)
	for {
		res, err := n.Publish(ctxT(t), ch, []byte(data), herald.WithIdempotencyKey(key))
		if err == nil {
			return res
		}
		if time.Now().After(deadline) {
			t.Fatalf("publish %s: %v", data, err)
		}
		t.Logf("publish %s failed, retrying: %v", data, err)
		time.Sleep(50 * time.Millisecond)
	}
}

// expectPubs reads pushes until it has the publications datas, at
// consecutive offsets from first.
func expectPubs(t *testing.T, c *wsClient, first uint64, datas ...string) {
	t.Helper()
	for i, want := range datas {
		f, err := c.readPush()
		if err != nil {
			t.Fatalf("waiting for %s: %v", want, err)
		}
		if f.Push != "pub" || string(f.Data) != want || f.Offset != first+uint64(i) {
			t.Fatalf("got %s %s at offset %d, want pub %s at offset %d", f.Push, f.Data, f.Offset, want, first+uint64(i))
		}
	}
}

func expectClosed(t *testing.T, c *wsClient, code herald.CloseCode) {
	t.Helper()
	expectClosedWithin(t, c, code, waitFor)
}

func expectClosedWithin(t *testing.T, c *wsClient, code herald.CloseCode, within time.Duration) {
	t.Helper()
	deadline := time.Now().Add(within)
	for {
		_ = c.ws.SetReadDeadline(deadline)
		_, b, err := c.ws.ReadMessage()
		var ce *websocket.CloseError
		switch {
		case errors.As(err, &ce):
			if herald.CloseCode(ce.Code) != code {
				t.Fatalf("closed with %d %q, want %d", ce.Code, ce.Text, code)
			}
			return
		case err != nil:
			t.Fatalf("want close %d within %v, got %v", code, within, err)
		}
		t.Logf("while waiting for close %d: %s", code, b)
	}
}

func waitReady(t *testing.T, n *testNode, ready bool) {
	t.Helper()
	var err error
	deadline := time.Now().Add(30 * time.Second)
	for {
		err = n.Ready(context.Background())
		if (err == nil) == ready {
			return
		}
		if time.Now().After(deadline) {
			t.Fatalf("node not ready=%v within 30s: %v", ready, err)
		}
		time.Sleep(20 * time.Millisecond)
	}
}

// metric reads a counter from the node's Prometheus metrics.
func metric(t *testing.T, n *testNode, name string) float64 {
	t.Helper()
	rec := httptest.NewRecorder()
	n.MetricsHandler().ServeHTTP(rec, httptest.NewRequest("GET", "/metrics", nil))
	body, _ := io.ReadAll(rec.Result().Body)
	m := regexp.MustCompile(`(?m)^` + regexp.QuoteMeta(name) + ` (\S+)$`).FindSubmatch(body)
	if m == nil {
		t.Fatalf("metric %s not served", name)
	}
	v, err := strconv.ParseFloat(string(m[1]), 64)
	if err != nil {
		t.Fatal(err)
	}
	return v
}

// RunHistoryReset runs two nodes, A and B, on one broker; reset removes
// the channel's history at the broker while every link stays up (keys
// deleted or evicted, a FLUSHALL), so no outage tells the nodes. The next
// publication starts a new epoch at offset 1. It checks that the epoch it
// carries reaches both nodes and closes their subscribers with 4006
// before they are sent anything under the old epoch (offset 1 again,
// colliding with what they hold), and that a client that resubscribes
// with its last position is told recovered:false, epoch_changed, with the
// new epoch, and then gets live publications in order.
func RunHistoryReset(t *testing.T, newBroker func(t *testing.T) herald.Broker, reset func(t *testing.T, channel string)) {
	a := startNode(t, newBroker(t))
	b := startNode(t, newBroker(t))
	const ch = "chat:reset"

	x := dialNode(t, a, "x")
	y := dialNode(t, b, "y")
	pos := subscribePos(t, x, ch, nil)
	if got := subscribePos(t, y, ch, nil); got.position != pos.position {
		t.Fatalf("positions differ across nodes: %+v and %+v", got.position, pos.position)
	}
	publishNode(t, b, ch, `"before-1"`)
	publishNode(t, b, ch, `"before-2"`)
	expectPubs(t, x, pos.Offset+1, `"before-1"`, `"before-2"`)
	expectPubs(t, y, pos.Offset+1, `"before-1"`, `"before-2"`)
	seen := position{Offset: pos.Offset + 2, Epoch: pos.Epoch}

	reset(t, ch)
	first := publishNode(t, b, ch, `"after-1"`)
	if first.Epoch == seen.Epoch || first.Offset != 1 {
		t.Fatalf("publish after the reset: %+v, want offset 1 in a new epoch (not %q)", first.StreamPosition, seen.Epoch)
	}
	for name, c := range map[string]*wsClient{"A's subscriber": x, "B's subscriber": y} {
		f, err := c.readPush()
		var ce *websocket.CloseError
		switch {
		case errors.As(err, &ce) && herald.CloseCode(ce.Code) == herald.CloseResubscribe:
		case err != nil:
			t.Fatalf("%s: %v, want close %d", name, err, herald.CloseResubscribe)
		default:
			t.Fatalf("%s got %s %s at offset %d under the old epoch, want close %d", name, f.Push, f.Data, f.Offset, herald.CloseResubscribe)
		}
	}

	x2 := dialNode(t, a, "x")
	got := subscribePos(t, x2, ch, &seen)
	if got.Recovered == nil || *got.Recovered || got.Reason != "epoch_changed" || got.position != (position{Offset: first.Offset, Epoch: first.Epoch}) {
		t.Fatalf("resubscribe after the reset: %+v, want recovered:false, epoch_changed at %+v", got, first.StreamPosition)
	}
	live := publishNode(t, b, ch, `"live"`)
	expectPubs(t, x2, first.Offset+1, `"live"`)
	if live.Offset != first.Offset+1 || live.Epoch != first.Epoch {
		t.Fatalf("live publication at %+v, want offset %d in epoch %q", live.StreamPosition, first.Offset+1, first.Epoch)
	}
}
