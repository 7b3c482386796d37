package herald

import (
	"bufio"
	"context"
	"encoding/json"
	"fmt"
	"net"
	"net/http"
	"net/http/httptest"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/gorilla/websocket"

	"github.com/heraldhq/herald/protocol"
)

// Overflow policies over real sockets, on the transports and mixes that the
// broker suite (brokertest.RunOverflow) does not cover: several namespaces
// on one connection, SSE, raw, a reload, and the metrics.

// overflowServer is a node with small queues whose sockets have small send
// buffers, so that a client that stops reading overflows its queue soon.
func overflowServer(t *testing.T, ns ...Namespace) *testServer {
	t.Helper()
	n, err := New(Config{Namespaces: ns, MaxQueueMessages: 64, MaxQueueBytes: 256 << 10, MaxMessageSize: 64 << 10, Logger: testLogger(t)})
	if err != nil {
		t.Fatal(err)
	}
	mux := http.NewServeMux()
	mux.Handle("/ws", n.Handler())
	mux.Handle("/ws/raw", n.RawHandler())
	mux.Handle("/sse", n.SSEHandler())
	srv := httptest.NewUnstartedServer(mux)
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
	return &testServer{t: t, node: n, srv: srv, url: "ws" + strings.TrimPrefix(srv.URL, "http")}
}

type smallSendBuffers struct{ net.Listener }

func (l smallSendBuffers) Accept() (net.Conn, error) {
	c, err := l.Listener.Accept()
	if tc, ok := c.(*net.TCPConn); ok {
		_ = tc.SetWriteBuffer(16 << 10)
	}
	return c, err
}

// dialSmallRead dials with a 4 KB socket receive buffer.
func dialSmallRead(ctx context.Context, network, addr string) (net.Conn, error) {
	var d net.Dialer
	c, err := d.DialContext(ctx, network, addr)
	if tc, ok := c.(*net.TCPConn); ok {
		_ = tc.SetReadBuffer(4096)
	}
	return c, err
}

// slowClient dials path with a small receive buffer; it reads only when
// the test calls read.
func (ts *testServer) slowClient(t *testing.T, path string) *testClient {
	t.Helper()
	d := websocket.Dialer{HandshakeTimeout: 5 * time.Second, NetDialContext: dialSmallRead, ReadBufferSize: 4096}
	if !strings.HasPrefix(path, "/ws/raw") {
		d.Subprotocols = []string{protocol.Subprotocol}
	}
	ws, _, err := d.Dial(ts.url+path, nil)
	if err != nil {
		t.Fatalf("dial %s: %v", path, err)
	}
	t.Cleanup(func() { ws.Close() })
	return &testClient{t: t, ws: ws}
}

// overflowUntil publishes with pub until the namespace's counter that
// counted says something was conflated or dropped, then publishes more
// more times: the slow client is then well past its limits.
func overflowUntil(t *testing.T, n *Node, ns string, more int, pub func(i int)) int {
	t.Helper()
	i := 0
	for ; ; i++ {
		pub(i)
		c := n.Stats().Overflow[ns]
		if c.Conflated+c.Dropped > 0 {
			break
		}
		if i > 100000 {
			t.Fatal("100000 publications and nothing conflated or dropped")
		}
	}
	for range more {
		i++
		pub(i)
	}
	return i + 1
}

func mustPublishKey(t *testing.T, n *Node, ch string, data []byte, key string) {
	t.Helper()
	if _, err := n.Publish(context.Background(), ch, data, WithKey(key)); err != nil {
		t.Fatal(err)
	}
}

var pad = strings.Repeat("p", 500)

// A connection with channels of two policies: a conflate flood does not
// cut it when a chat message (disconnect) comes; the chat message arrives,
// and the conflated channel ends at the latest value of each key.
func TestOverflowMixedNamespaces(t *testing.T) {
	t.Parallel()
	ts := overflowServer(t, Namespace{Name: "px", Overflow: OverflowConflate}, Namespace{Name: "chat"})
	c := ts.slowClient(t, "/ws")
	c.subscribe("px:eu")
	c.subscribe("chat:room")
	const keys = 5
	pub := func(i int) {
		mustPublishKey(t, ts.node, "px:eu", fmt.Appendf(nil, `{"k":%d,"i":%d,"pad":%q}`, i%keys, i, pad), fmt.Sprint(i%keys))
	}
	total := overflowUntil(t, ts.node, "px", 200, pub)
	mustPublish(t, ts.node, "chat:room", []byte(`{"text":"hello"}`))
	for i := total; i < total+200; i++ {
		pub(i)
	}
	total += 200
	if m := scrape(t, ts.node); m["herald_overflow_publications_total{action=conflated}{namespace=px}"] == 0 {
		t.Errorf("metrics: %v", m)
	}

	last := map[int]int{}
	chat := false
	for !chat || len(last) < keys || !allLatest(last, keys, total) {
		m := c.readJSON()
		switch {
		case m.Push == "pub" && m.Channel == "chat:room":
			chat = true
		case m.Push == "pub" && m.Channel == "px:eu":
			var v struct{ K, I int }
			if err := json.Unmarshal(m.Data, &v); err != nil {
				t.Fatal(err)
			}
			if prev, ok := last[v.K]; ok && v.I <= prev {
				t.Fatalf("key %d went from %d to %d", v.K, prev, v.I)
			}
			last[v.K] = v.I
		default:
			t.Fatalf("unexpected %+v", m)
		}
	}
	if ts.node.Stats().SlowConsumers != 0 {
		t.Fatal("the client was cut")
	}
}

func allLatest(last map[int]int, keys, total int) bool {
	for k := range keys {
		if last[k] < total-keys {
			return false
		}
	}
	return true
}

// A raw client has no push to be told with: its drops are counted, and it
// is not cut.
func TestOverflowRaw(t *testing.T) {
	t.Parallel()
	ts := overflowServer(t, Namespace{Name: "feed", Overflow: OverflowDropOldest})
	c := ts.slowClient(t, "/ws/raw?channel=feed:x")
	waitFor(t, "the raw subscription", func() bool { return ts.node.Stats().Channels["feed:x"] == 1 })
	total := overflowUntil(t, ts.node, "feed", 100, func(i int) {
		mustPublish(t, ts.node, "feed:x", fmt.Appendf(nil, "%d %s", i, pad))
	})
	got, prev := 0, -1
	for prev != total-1 {
		_, b := c.read()
		var i int
		fmt.Sscan(string(b), &i)
		if i <= prev {
			t.Fatalf("frame %d after %d", i, prev)
		}
		prev = i
		got++
	}
	dropped := ts.node.Stats().Overflow["feed"].Dropped
	if uint64(got)+dropped != uint64(total) {
		t.Fatalf("received %d + dropped %d, published %d", got, dropped, total)
	}
}

// An SSE stream gets the dropped push as a "dropped" event, in place.
func TestOverflowSSE(t *testing.T) {
	t.Parallel()
	ts := overflowServer(t, Namespace{Name: "feed", Overflow: OverflowDropOldest, HistorySize: 100000, HistoryTTL: time.Minute})
	hc := &http.Client{Transport: &http.Transport{DialContext: dialSmallRead, ReadBufferSize: 4096}}
	defer hc.CloseIdleConnections()
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	req, _ := http.NewRequestWithContext(ctx, http.MethodGet, ts.sseURL(nil, "feed:x"), nil)
	resp, err := hc.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	waitFor(t, "the SSE subscription", func() bool { return ts.node.Stats().Channels["feed:x"] == 1 })
	total := overflowUntil(t, ts.node, "feed", 100, func(i int) {
		mustPublish(t, ts.node, "feed:x", fmt.Appendf(nil, `{"i":%d,"pad":%q}`, i, pad))
	})
	sc := bufio.NewScanner(resp.Body)
	sc.Buffer(make([]byte, 0, 64<<10), 1<<20)
	var event string
	received, lost := map[uint64]bool{}, map[uint64]bool{}
	for !received[uint64(total)] {
		if !sc.Scan() {
			t.Fatalf("stream ended: %v", sc.Err())
		}
		line := sc.Text()
		switch {
		case strings.HasPrefix(line, "event: "):
			event = strings.TrimPrefix(line, "event: ")
		case strings.HasPrefix(line, "data: "):
			var p protocol.Push
			if err := json.Unmarshal([]byte(strings.TrimPrefix(line, "data: ")), &p); err != nil {
				t.Fatal(err)
			}
			switch {
			case event == "dropped":
				for _, r := range p.Offsets {
					for o := r[0]; o <= r[1]; o++ {
						lost[o] = true
					}
				}
			case event == "" && p.Push == "pub":
				if lost[p.Offset] || received[p.Offset] {
					t.Fatalf("offset %d received twice or after being said dropped", p.Offset)
				}
				received[p.Offset] = true
			}
		case line == "":
			event = ""
		}
	}
	if len(lost) == 0 {
		t.Fatalf("no dropped event: %d received of %d, %+v", len(received), total, ts.node.Stats().Overflow)
	}
	for o := uint64(1); o <= uint64(total); o++ {
		if received[o] == lost[o] {
			t.Fatalf("offset %d: received %v, said dropped %v", o, received[o], lost[o])
		}
	}
}

// A reload that takes a namespace back to disconnect cuts a slow client
// at its next overflow, which conflation kept from being cut before.
func TestOverflowReload(t *testing.T) {
	t.Parallel()
	ts := overflowServer(t, Namespace{Name: "px", Overflow: OverflowConflate})
	c := ts.slowClient(t, "/ws")
	c.subscribe("px:eu")
	overflowUntil(t, ts.node, "px", 50, func(i int) {
		mustPublishKey(t, ts.node, "px:eu", fmt.Appendf(nil, `{"i":%d,"pad":%q}`, i, pad), fmt.Sprint(i%3))
	})
	if ts.node.Stats().SlowConsumers != 0 {
		t.Fatal("cut under conflate")
	}
	if err := ts.node.SetNamespaces([]Namespace{{Name: "px"}}); err != nil {
		t.Fatal(err)
	}
	for i := 0; ts.node.Stats().SlowConsumers == 0; i++ {
		mustPublishKey(t, ts.node, "px:eu", fmt.Appendf(nil, `{"i":%d,"pad":%q}`, i, pad), fmt.Sprint(i%3))
		if i > 100000 {
			t.Fatal("not cut after the reload")
		}
	}
}

// keyRecorder is the memory broker, recording each publication's key.
type keyRecorder struct {
	*MemoryBroker
	mu   sync.Mutex
	keys []string
}

func (b *keyRecorder) Publish(ctx context.Context, pub *Publication, opts PublishOptions) (PublishResult, error) {
	b.mu.Lock()
	b.keys = append(b.keys, pub.Key)
	b.mu.Unlock()
	return b.MemoryBroker.Publish(ctx, pub, opts)
}

// The publish command's "key" and WithKey reach the broker as the
// publication's conflation key.
func TestPublishKey(t *testing.T) {
	t.Parallel()
	b := &keyRecorder{MemoryBroker: NewMemoryBroker()}
	ts := newTestServer(t, Config{Broker: b})
	c := ts.client(t)
	c.mustOK(protocol.Command{Cmd: "publish", Channel: "px", Data: []byte(`1`), Key: "AAPL"})
	c.mustOK(protocol.Command{Cmd: "publish", Channel: "px", Data: []byte(`2`)})
	mustPublishKey(t, ts.node, "px", []byte(`3`), "MSFT")
	b.mu.Lock()
	defer b.mu.Unlock()
	if got := strings.Join(b.keys, ","); got != "AAPL,,MSFT" {
		t.Fatalf("keys %q, want AAPL,,MSFT", got)
	}
}
