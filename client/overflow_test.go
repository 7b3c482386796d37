package client_test

import (
	"context"
	"fmt"
	"net"
	"net/http/httptest"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/gorilla/websocket"

	"github.com/heraldhq/herald"
	"github.com/heraldhq/herald/client"
)

// smallSendBuffers gives the server's sockets a 16 KB send buffer, so that
// a client that stops reading fills its server-side queue soon.
type smallSendBuffers struct{ net.Listener }

func (l smallSendBuffers) Accept() (net.Conn, error) {
	c, err := l.Listener.Accept()
	if tc, ok := c.(*net.TCPConn); ok {
		_ = tc.SetWriteBuffer(16 << 10)
	}
	return c, err
}

// A subscriber whose handler blocks stops reading; the server, under
// drop_oldest, drops its oldest queued publications and says which: the
// client calls OnDropped in their place, with exactly the offsets that
// OnPublication never saw, and its position moves past them.
func TestOnDropped(t *testing.T) {
	n, err := herald.New(herald.Config{
		Namespaces:       []herald.Namespace{{Name: "feed", Overflow: herald.OverflowDropOldest, HistorySize: 100000, HistoryTTL: time.Minute}},
		MaxQueueMessages: 32,
	})
	if err != nil {
		t.Fatal(err)
	}
	srv := httptest.NewUnstartedServer(n.Handler())
	srv.Listener = smallSendBuffers{srv.Listener}
	srv.Start()
	defer srv.Close()
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan struct{})
	go func() { defer close(done); _ = n.Run(ctx) }()
	defer func() { shutdown(t, n); cancel(); <-done }()

	dialer := &websocket.Dialer{ReadBufferSize: 4096, NetDialContext: func(ctx context.Context, network, addr string) (net.Conn, error) {
		var d net.Dialer
		c, err := d.DialContext(ctx, network, addr)
		if tc, ok := c.(*net.TCPConn); ok {
			_ = tc.SetReadBuffer(4096)
		}
		return c, err
	}}
	c := connect(t, "ws"+strings.TrimPrefix(srv.URL, "http"), client.Options{Dialer: dialer, QueueSize: 4, QueueTimeout: time.Minute})
	release := make(chan struct{})
	var mu sync.Mutex
	var order []string // "p<offset>" and "d<from>-<to>", in handler order
	received := map[uint64]bool{}
	lost := map[uint64]bool{}
	sub, err := c.Subscribe(ctxT(t), "feed:x", client.SubscribeOptions{
		OnPublication: func(p client.Publication) {
			<-release
			mu.Lock()
			defer mu.Unlock()
			received[p.Offset] = true
			order = append(order, fmt.Sprint("p", p.Offset))
		},
		OnDropped: func(d client.Dropped) {
			mu.Lock()
			defer mu.Unlock()
			sum := 0
			for _, r := range d.Offsets {
				for o := r[0]; o <= r[1]; o++ {
					lost[o] = true
				}
				sum += int(r[1] - r[0] + 1)
				order = append(order, fmt.Sprintf("d%d-%d", r[0], r[1]))
			}
			if sum != d.Count || d.Channel != "feed:x" {
				t.Errorf("dropped push %+v: count %d for %d offsets listed", d, d.Count, sum)
			}
		},
	})
	if err != nil {
		t.Fatal(err)
	}
	pad := strings.Repeat("x", 500)
	total := 0
	for ; n.Stats().Overflow["feed"].Dropped == 0 || total < 300; total++ {
		if _, err := n.Publish(ctx, "feed:x", fmt.Appendf(nil, `{"i":%d,"pad":%q}`, total, pad)); err != nil {
			t.Fatal(err)
		}
		if total > 100000 {
			t.Fatal("nothing dropped")
		}
	}
	close(release)
	waitFor(t, "every publication received or said dropped", func() bool {
		mu.Lock()
		defer mu.Unlock()
		return len(received)+len(lost) >= total
	})
	mu.Lock()
	defer mu.Unlock()
	if len(lost) == 0 {
		t.Fatal("OnDropped was not called")
	}
	for o := uint64(1); o <= uint64(total); o++ {
		if received[o] == lost[o] {
			t.Fatalf("offset %d: received %v, said dropped %v", o, received[o], lost[o])
		}
	}
	// In order: each dropped range comes where its publications would have.
	next := uint64(1)
	for _, e := range order {
		var from, to uint64
		if _, err := fmt.Sscanf(e, "d%d-%d", &from, &to); err == nil {
			if from != next {
				t.Fatalf("dropped range %s after offset %d", e, next-1)
			}
			next = to + 1
			continue
		}
		var o uint64
		fmt.Sscanf(e, "p%d", &o)
		if o != next {
			t.Fatalf("publication %d after offset %d", o, next-1)
		}
		next++
	}
	if pos := sub.Position(); pos.Offset != uint64(total) {
		t.Fatalf("position %+v, want offset %d", pos, total)
	}
}

// keyBroker is the memory broker, recording each publication's key.
type keyBroker struct {
	*herald.MemoryBroker
	mu   sync.Mutex
	keys []string
}

func (b *keyBroker) Publish(ctx context.Context, pub *herald.Publication, opts herald.PublishOptions) (herald.PublishResult, error) {
	b.mu.Lock()
	b.keys = append(b.keys, pub.Key)
	b.mu.Unlock()
	return b.MemoryBroker.Publish(ctx, pub, opts)
}

// WithKey sends the publication's conflation key.
func TestPublishWithKey(t *testing.T) {
	b := &keyBroker{MemoryBroker: herald.NewMemoryBroker()}
	ts := newServer(t, herald.Config{Broker: b, Namespaces: namespaces})
	c := connect(t, ts.url, client.Options{})
	if _, err := c.Publish(ctxT(t), "live:px", []byte(`1`), client.WithKey("AAPL")); err != nil {
		t.Fatal(err)
	}
	if _, err := c.Publish(ctxT(t), "live:px", []byte(`2`)); err != nil {
		t.Fatal(err)
	}
	b.mu.Lock()
	defer b.mu.Unlock()
	if len(b.keys) != 2 || b.keys[0] != "AAPL" || b.keys[1] != "" {
		t.Fatalf("keys %q, want [AAPL \"\"]", b.keys)
	}
}
