package brokertest

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"net"
	"net/http/httptest"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/gorilla/websocket"

	"github.com/heraldhq/herald"
	"github.com/heraldhq/herald/protocol"
)

// RunOverflow runs the namespace overflow policies against a broker from
// newBroker: one node, a fast subscriber that reads all along and a slow
// one that stops reading (a 4 KB socket receive buffer, nothing read) while
// publications flow, per policy:
//
//   - conflate: the fast subscriber gets every publication in order; the
//     slow one is not cut and ends with the latest value of every key,
//     never going back on a key;
//   - drop_oldest: the fast one gets every publication; the slow one is not
//     cut, and the offsets its dropped pushes list are exactly those it did
//     not receive (history with since returns them); without history, the
//     counts add up;
//   - disconnect: the slow one is cut with 4001.
//
// The publisher waits for the fast subscriber every batch, so that only the
// slow one's queue can fill, whatever the machine's load.
func RunOverflow(t *testing.T, newBroker func(t *testing.T) herald.Broker) {
	node := startOverflowNode(t, newBroker(t))
	t.Run("conflate", func(t *testing.T) { runConflate(t, node) })
	t.Run("drop_oldest", func(t *testing.T) { runDropOldest(t, node, "dq:feed", true) })
	t.Run("drop_oldest_no_history", func(t *testing.T) { runDropOldest(t, node, "dn:feed", false) })
	t.Run("disconnect", func(t *testing.T) { runDisconnect(t, node) })
}

// Queue limits of the overflow node: small, so that a slow client's queue
// fills after a few hundred publications beyond its socket buffers.
const (
	overflowQueue = 128
	overflowBatch = 50 // publications between waits for the fast client
	overflowData  = 1000
)

func startOverflowNode(t *testing.T, b herald.Broker) *testNode {
	t.Helper()
	n, err := herald.New(herald.Config{
		Broker: b,
		Namespaces: []herald.Namespace{
			{Name: "px", Overflow: herald.OverflowConflate},
			{Name: "dq", Overflow: herald.OverflowDropOldest, HistorySize: 20000, HistoryTTL: time.Minute},
			{Name: "dn", Overflow: herald.OverflowDropOldest},
			{Name: "chat", HistorySize: 100, HistoryTTL: time.Minute},
		},
		MaxQueueMessages: overflowQueue,
		MaxQueueBytes:    1 << 20,
		MaxMessageSize:   64 << 10,
	})
	if err != nil {
		t.Fatal(err)
	}
	srv := httptest.NewUnstartedServer(n.Handler())
	srv.Listener = smallSendBuffers{srv.Listener}
	srv.Start()
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan struct{})
	go func() { defer close(done); _ = n.Run(ctx) }()
	t.Cleanup(func() {
		sctx, scancel := context.WithTimeout(context.Background(), 5*time.Second)
		defer scancel()
		if err := n.Shutdown(sctx); err != nil {
			t.Errorf("Shutdown: %v", err)
		}
		cancel()
		<-done
		srv.Close()
	})
	return &testNode{Node: n, url: "ws" + strings.TrimPrefix(srv.URL, "http")}
}

// smallSendBuffers gives the server's sockets a 16 KB send buffer: a
// client that stops reading then fills its queue after some 30 KB in the
// kernel, not after the megabytes a loopback socket grows to.
type smallSendBuffers struct{ net.Listener }

func (l smallSendBuffers) Accept() (net.Conn, error) {
	c, err := l.Listener.Accept()
	if tc, ok := c.(*net.TCPConn); ok {
		_ = tc.SetWriteBuffer(16 << 10)
	}
	return c, err
}

// dialOverflow dials a client; a slow one's socket receive buffer is 4 KB,
// so that it fills its server's queue soon once it stops reading.
func dialOverflow(t *testing.T, n *testNode, slow bool) *wsClient {
	t.Helper()
	d := websocket.Dialer{
		Subprotocols:     []string{protocol.Subprotocol},
		HandshakeTimeout: 5 * time.Second,
		ReadBufferSize:   4096,
		NetDialContext: func(ctx context.Context, network, addr string) (net.Conn, error) {
			var nd net.Dialer
			c, err := nd.DialContext(ctx, network, addr)
			if err != nil {
				return nil, err
			}
			if tc, ok := c.(*net.TCPConn); ok && slow {
				_ = tc.SetReadBuffer(4096)
			}
			return c, nil
		},
	}
	ws, _, err := d.Dial(n.url, nil)
	if err != nil {
		t.Fatalf("dial: %v", err)
	}
	t.Cleanup(func() { ws.Close() })
	return &wsClient{ws: ws}
}

// fastReader reads c's pushes of channel on a goroutine of its own until
// stop, keeping them.
type fastReader struct {
	mu   sync.Mutex
	got  []frame
	err  error
	done chan struct{}
}

func readFast(c *wsClient) *fastReader {
	r := &fastReader{done: make(chan struct{})}
	go func() {
		defer close(r.done)
		for {
			_ = c.ws.SetReadDeadline(time.Now().Add(2 * waitFor))
			_, b, err := c.ws.ReadMessage()
			if err != nil {
				r.mu.Lock()
				r.err = err
				r.mu.Unlock()
				return
			}
			var f frame
			if err := json.Unmarshal(b, &f); err != nil {
				r.mu.Lock()
				r.err = err
				r.mu.Unlock()
				return
			}
			r.mu.Lock()
			r.got = append(r.got, f)
			r.mu.Unlock()
		}
	}()
	return r
}

func (r *fastReader) count() int {
	r.mu.Lock()
	defer r.mu.Unlock()
	return len(r.got)
}

// stop closes the socket under the reader and waits for it.
func (r *fastReader) stop(c *wsClient) []frame {
	_ = c.ws.Close()
	<-r.done
	return r.got
}

// publishPaced publishes total publications made by pub, waiting every
// overflowBatch until the fast reader has them all.
func publishPaced(t *testing.T, n *testNode, fast *fastReader, total int, pub func(i int) (string, []byte, []herald.PublishOption)) {
	t.Helper()
	for i := range total {
		ch, data, opts := pub(i)
		if _, err := n.Publish(ctxT(t), ch, data, opts...); err != nil {
			t.Fatalf("publish %d: %v", i, err)
		}
		if (i+1)%overflowBatch == 0 || i == total-1 {
			Eventually(t, func() bool { return fast.count() >= i+1 }, func() string {
				return fmt.Sprintf("the fast subscriber has %d of %d publications", fast.count(), i+1)
			})
		}
	}
}

func padded(v string) []byte {
	return fmt.Appendf(nil, `{"v":%q,"pad":%q}`, v, strings.Repeat("x", overflowData))
}

type value struct {
	V string `json:"v"`
}

func valueOf(t *testing.T, f frame) string {
	t.Helper()
	var v value
	if err := json.Unmarshal(f.Data, &v); err != nil {
		t.Fatalf("publication data %s: %v", f.Data, err)
	}
	return v.V
}

func runConflate(t *testing.T, n *testNode) {
	const ch, keys, total = "px:ticks", 10, 3000
	fast, slow := dialOverflow(t, n, false), dialOverflow(t, n, true)
	for _, c := range []*wsClient{fast, slow} {
		c.call(t, map[string]any{"cmd": "subscribe", "channel": ch})
	}
	fr := readFast(fast)
	before := n.Stats().Overflow["px"].Conflated
	publishPaced(t, n, fr, total, func(i int) (string, []byte, []herald.PublishOption) {
		return ch, padded(fmt.Sprintf("k%d:%d", i%keys, i)), []herald.PublishOption{herald.WithKey(fmt.Sprint("k", i%keys))}
	})
	got := fr.stop(fast)
	if fr.err != nil && !isClosedByUs(fr.err) {
		t.Fatalf("fast subscriber: %v", fr.err)
	}
	for i, f := range got[:total] {
		if want := fmt.Sprintf("k%d:%d", i%keys, i); valueOf(t, f) != want {
			t.Fatalf("fast subscriber's publication %d is %s, want %s", i, valueOf(t, f), want)
		}
	}
	if n.Stats().Overflow["px"].Conflated == before {
		t.Fatal("nothing was conflated: the slow subscriber never filled its queue, so the test proves nothing")
	}

	// The slow subscriber reads now: it must reach the last value of every
	// key, never go back on one, and not be cut.
	last := map[string]int{}
	received := 0
	for len(last) < keys || !allFinal(last, keys, total) {
		f, err := slow.readPush()
		if err != nil {
			t.Fatalf("slow subscriber after %d publications (latest %v): %v", received, last, err)
		}
		received++
		var k string
		var i int
		if _, err := fmt.Sscanf(strings.Replace(valueOf(t, f), ":", " ", 1), "%s %d", &k, &i); err != nil {
			t.Fatal(err)
		}
		if prev, ok := last[k]; ok && i <= prev {
			t.Fatalf("slow subscriber: key %s went from %d to %d", k, prev, i)
		}
		last[k] = i
	}
	if received >= total {
		t.Fatalf("the slow subscriber received %d of %d publications: nothing was conflated for it", received, total)
	}
	t.Logf("slow subscriber: %d of %d publications, the latest of all %d keys", received, total, keys)
}

func allFinal(last map[string]int, keys, total int) bool {
	for k := range keys {
		i, ok := last[fmt.Sprint("k", k)]
		if !ok || i < total-keys {
			return false
		}
	}
	return true
}

func isClosedByUs(err error) bool {
	return errors.Is(err, net.ErrClosed) || strings.Contains(err.Error(), "use of closed network connection")
}

func runDropOldest(t *testing.T, n *testNode, ch string, history bool) {
	const total = 3000
	ns, _, _ := strings.Cut(ch, ":")
	fast, slow := dialOverflow(t, n, false), dialOverflow(t, n, true)
	var subOffset uint64
	for _, c := range []*wsClient{fast, slow} {
		rep := c.call(t, map[string]any{"cmd": "subscribe", "channel": ch})
		var pos struct{ Offset uint64 }
		_ = json.Unmarshal(rep.Result, &pos)
		subOffset = pos.Offset
	}
	fr := readFast(fast)
	before := n.Stats().Overflow[ns].Dropped
	publishPaced(t, n, fr, total, func(i int) (string, []byte, []herald.PublishOption) {
		return ch, padded(fmt.Sprint(i)), nil
	})
	got := fr.stop(fast)
	for i, f := range got[:total] {
		if valueOf(t, f) != fmt.Sprint(i) || f.Push != protocol.PushPub {
			t.Fatalf("fast subscriber's message %d is %s %s, want publication %d", i, f.Push, f.Data, i)
		}
	}

	// The slow subscriber reads now, up to the last publication.
	var received []int
	var lost []uint64
	lostCount := 0
	for len(received) == 0 || received[len(received)-1] != total-1 {
		_ = slow.ws.SetReadDeadline(time.Now().Add(waitFor))
		_, b, err := slow.ws.ReadMessage()
		if err != nil {
			t.Fatalf("slow subscriber after %d publications: %v", len(received), err)
		}
		var p protocol.Push
		if err := json.Unmarshal(b, &p); err != nil {
			t.Fatal(err)
		}
		switch p.Push {
		case protocol.PushDropped:
			lostCount += p.Count
			for _, r := range p.Offsets {
				for off := r[0]; off <= r[1]; off++ {
					lost = append(lost, off)
				}
			}
		case protocol.PushPub:
			i := valueOf(t, frame{Data: p.Data})
			var v int
			fmt.Sscan(i, &v)
			if len(received) > 0 && v <= received[len(received)-1] {
				t.Fatalf("slow subscriber got %d after %d", v, received[len(received)-1])
			}
			if history && p.Offset != subOffset+uint64(v)+1 {
				t.Fatalf("publication %d has offset %d, want %d", v, p.Offset, subOffset+uint64(v)+1)
			}
			received = append(received, v)
		default:
			t.Fatalf("slow subscriber: unexpected %s", b)
		}
	}
	if lostCount+len(received) != total {
		t.Fatalf("slow subscriber: %d received + %d said dropped, want %d", len(received), lostCount, total)
	}
	// Read only now: the fan-out may reach the slow subscriber after the
	// fast one, so until it has the last publication a drop may be to come.
	dropped := n.Stats().Overflow[ns].Dropped - before
	if dropped == 0 {
		t.Fatal("nothing was dropped: the slow subscriber never filled its queue, so the test proves nothing")
	}
	if uint64(lostCount) != dropped {
		t.Fatalf("dropped pushes count %d, the node's counter %d", lostCount, dropped)
	}
	if !history {
		if len(lost) != 0 {
			t.Fatalf("offsets %v listed for a channel without history", lost)
		}
		return
	}
	// Exactly the offsets not received, and history gives them back.
	var missing []uint64
	next := 0
	for v := range total {
		if next < len(received) && received[next] == v {
			next++
			continue
		}
		missing = append(missing, subOffset+uint64(v)+1)
	}
	if !slices.Equal(lost, missing) {
		t.Fatalf("dropped pushes list %d offsets %v..., the slow subscriber missed %d %v...", len(lost), head(lost), len(missing), head(missing))
	}
	// The newest one dropped is still in history (a broker may keep fewer
	// than the namespace asks: NATS keeps 1000 by default).
	newest := lost[len(lost)-1]
	h, err := n.History(ctxT(t), ch, herald.HistoryOptions{Since: &herald.StreamPosition{Offset: newest - 1, Epoch: histEpoch(t, n, ch)}, Limit: 1})
	if err != nil {
		t.Fatal(err)
	}
	if len(h.Publications) != 1 || h.Publications[0].Offset != newest {
		t.Fatalf("history since %d does not give the newest one dropped back: %d publications, oldest %d", newest-1, len(h.Publications), h.Oldest)
	}
	t.Logf("slow subscriber: %d received, %d dropped and listed", len(received), lostCount)
}

func head(s []uint64) []uint64 { return s[:min(len(s), 5)] }

func histEpoch(t *testing.T, n *testNode, ch string) string {
	h, err := n.History(ctxT(t), ch, herald.HistoryOptions{})
	if err != nil {
		t.Fatal(err)
	}
	return h.Position.Epoch
}

func runDisconnect(t *testing.T, n *testNode) {
	const ch, total = "chat:room", 3000
	fast, slow := dialOverflow(t, n, false), dialOverflow(t, n, true)
	for _, c := range []*wsClient{fast, slow} {
		c.call(t, map[string]any{"cmd": "subscribe", "channel": ch})
	}
	fr := readFast(fast)
	before := n.Stats().SlowConsumers
	publishPaced(t, n, fr, total, func(i int) (string, []byte, []herald.PublishOption) {
		return ch, padded(fmt.Sprint(i)), nil
	})
	if got := fr.stop(fast); len(got) < total {
		t.Fatalf("fast subscriber got %d of %d", len(got), total)
	}
	if cut := n.Stats().SlowConsumers - before; cut != 1 {
		t.Fatalf("%d clients cut as slow consumers, want the slow one", cut)
	}
	// The close frame is sent after what the socket holds, if the client
	// reads within the close grace; this one read nothing for longer, so
	// the socket may have been closed under it (1006).
	for {
		_ = slow.ws.SetReadDeadline(time.Now().Add(waitFor))
		_, _, err := slow.ws.ReadMessage()
		var ce *websocket.CloseError
		if errors.As(err, &ce) {
			if ce.Code != int(herald.CloseSlowConsumer) && ce.Code != websocket.CloseAbnormalClosure {
				t.Fatalf("slow subscriber closed with %d, want %d", ce.Code, herald.CloseSlowConsumer)
			}
			return
		}
		if err != nil && !errors.Is(err, net.ErrClosed) && !strings.Contains(err.Error(), "reset by peer") {
			t.Fatalf("slow subscriber: %v, want the connection closed", err)
		}
		if err != nil {
			return
		}
	}
}
