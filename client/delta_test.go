package client_test

import (
	"bytes"
	"context"
	"crypto/rand"
	"encoding/hex"
	"encoding/json"
	"fmt"
	"net/http/httptest"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/centrifugal/fdelta"
	"github.com/gorilla/websocket"
	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"
	"github.com/redis/rueidis"

	"github.com/heraldhq/herald"
	"github.com/heraldhq/herald/client"
	"github.com/heraldhq/herald/internal/testenv"
	"github.com/heraldhq/herald/natsbroker"
	"github.com/heraldhq/herald/protocol"
	"github.com/heraldhq/herald/redisbroker"
)

var deltaNamespaces = []herald.Namespace{{Name: "d", HistorySize: 1000, HistoryTTL: time.Minute, Delta: herald.DeltaFossil}}

// states returns n versions of a ~2 KB JSON document, each a few fields
// away from the one before.
func states(n int) [][]byte {
	type instr struct {
		Symbol string `json:"symbol"`
		Bid    int    `json:"bid"`
		Volume int    `json:"volume"`
	}
	doc := struct {
		Seq    int     `json:"seq"`
		Instrs []instr `json:"instruments"`
	}{}
	for i := range 40 {
		doc.Instrs = append(doc.Instrs, instr{Symbol: fmt.Sprintf("SYM%03d", i), Bid: 1000 + i, Volume: i * 7})
	}
	out := make([][]byte, n)
	for i := range out {
		doc.Seq = i
		doc.Instrs[(i*7)%40].Bid += i
		doc.Instrs[(i*13)%40].Volume += 3
		out[i], _ = json.Marshal(doc)
	}
	return out
}

// waitPubs waits until rec holds n publications.
func waitPubs(t *testing.T, rec *recorder, n int) []client.Publication {
	t.Helper()
	deadline := time.Now().Add(20 * time.Second)
	for {
		rec.mu.Lock()
		got := append([]client.Publication(nil), rec.pubs...)
		rec.mu.Unlock()
		if len(got) >= n {
			return got
		}
		if time.Now().After(deadline) {
			t.Fatalf("got %d publications, want %d", len(got), n)
		}
		time.Sleep(time.Millisecond)
	}
}

// checkDeltaRun subscribes a client with deltas and one without to the
// node behind subURL, publishes a long run of small changes on pubNode, and
// checks that both see every payload byte for byte, and that deltas were
// sent (by subNode's counters).
func checkDeltaRun(t *testing.T, subURL string, pubNode, subNode *herald.Node, channel string) {
	var withDelta, without recorder
	c1 := connect(t, subURL, client.Options{})
	c2 := connect(t, subURL, client.Options{})
	if _, err := c1.Subscribe(ctxT(t), channel, client.SubscribeOptions{Delta: true, OnPublication: withDelta.sub().OnPublication}); err != nil {
		t.Fatal(err)
	}
	if _, err := c2.Subscribe(ctxT(t), channel, client.SubscribeOptions{OnPublication: without.sub().OnPublication}); err != nil {
		t.Fatal(err)
	}
	want := states(150)
	before := subNode.DeltaStats()["d"]
	for _, d := range want {
		if _, err := pubNode.Publish(ctxT(t), channel, d); err != nil {
			t.Fatal(err)
		}
	}
	for _, rec := range []*recorder{&withDelta, &without} {
		got := waitPubs(t, rec, len(want))
		for i, p := range got {
			if !bytes.Equal(p.Data, want[i]) || p.Binary {
				t.Fatalf("publication %d: got %s, want %s", i+1, p.Data, want[i])
			}
		}
	}
	after := subNode.DeltaStats()["d"]
	// 150 publications: the first and every 32nd are full, and only the
	// client that asked gets deltas.
	if n := after.Deliveries - before.Deliveries; n != 150-1-4 {
		t.Fatalf("%d deltas sent, want %d", n, 150-1-4)
	}
}

// The Go client applies deltas transparently on a single node.
func TestDeltaClient(t *testing.T) {
	t.Parallel()
	ts := newServer(t, herald.Config{Namespaces: deltaNamespaces})
	checkDeltaRun(t, ts.url, ts.node(), ts.node(), "d:prices")
}

// Two nodes joined by a real Redis or NATS: the publisher's node carries
// full publications through the broker, and the subscriber's node computes
// the deltas against what it delivered.
func TestDeltaClientTwoNodes(t *testing.T) {
	t.Parallel()
	for _, broker := range []string{"redis", "nats"} {
		t.Run(broker, func(t *testing.T) {
			t.Parallel()
			newBroker := redisNode
			if broker == "nats" {
				newBroker = natsNode
			}
			p := "hdelta_" + randHex()
			pubNode, _ := newBroker(t, p)
			subNode, subURL := newBroker(t, p)
			checkDeltaRun(t, subURL, pubNode, subNode, "d:two")
		})
	}
}

func randHex() string {
	b := make([]byte, 6)
	_, _ = rand.Read(b)
	return hex.EncodeToString(b)
}

// runNode runs a node on broker b behind an httptest server and returns it
// with its WebSocket URL; everything stops with the test.
func runNode(t *testing.T, b herald.Broker, stop func()) (*herald.Node, string) {
	n, err := herald.New(herald.Config{Namespaces: deltaNamespaces, Broker: b})
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan struct{})
	go func() { defer close(done); _ = n.Run(ctx) }()
	srv := httptest.NewServer(n.Handler())
	t.Cleanup(func() {
		srv.Close()
		shutdown(t, n)
		cancel()
		<-done
		stop()
	})
	return n, "ws" + strings.TrimPrefix(srv.URL, "http")
}

func redisNode(t *testing.T, prefix string) (*herald.Node, string) {
	u := testenv.RedisURL(t)
	b, err := redisbroker.New(redisbroker.Options{URL: u, Prefix: prefix})
	if err != nil {
		t.Fatal(err)
	}
	var once sync.Once
	t.Cleanup(func() { once.Do(func() { deleteRedisPrefix(t, u, prefix) }) })
	return runNode(t, b, b.Close)
}

func natsNode(t *testing.T, prefix string) (*herald.Node, string) {
	u := testenv.NATSURL(t)
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	b, err := natsbroker.New(ctx, natsbroker.Options{URL: u, Prefix: prefix, Storage: jetstream.MemoryStorage})
	if err != nil {
		t.Fatal(err)
	}
	var once sync.Once
	t.Cleanup(func() { once.Do(func() { deleteNATSPrefix(t, u, prefix) }) })
	return runNode(t, b, b.Close)
}

func deleteRedisPrefix(t *testing.T, u, p string) {
	opt, err := rueidis.ParseURL(u)
	if err != nil {
		t.Error(err)
		return
	}
	opt.DisableCache = true
	c, err := rueidis.NewClient(opt)
	if err != nil {
		t.Error(err)
		return
	}
	defer c.Close()
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	var cursor uint64
	for {
		e, err := c.Do(ctx, c.B().Scan().Cursor(cursor).Match(p+":*").Count(1000).Build()).AsScanEntry()
		if err != nil {
			t.Errorf("cleanup scan: %v", err)
			return
		}
		if len(e.Elements) > 0 {
			_ = c.Do(ctx, c.B().Del().Key(e.Elements...).Build()).Error()
		}
		if cursor = e.Cursor; cursor == 0 {
			return
		}
	}
}

func deleteNATSPrefix(t *testing.T, u, p string) {
	nc, err := nats.Connect(u)
	if err != nil {
		t.Error(err)
		return
	}
	defer nc.Close()
	js, _ := jetstream.New(nc)
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	for _, s := range []string{p + "_history", "KV_" + p + "_idem", "KV_" + p + "_presence"} {
		if err := js.DeleteStream(ctx, s); err != nil && !strings.Contains(err.Error(), "not found") {
			t.Errorf("cleanup %s: %v", s, err)
		}
	}
}

// A delta whose base the client does not hold (offset 3 after 1), and one
// that does not apply (a wrong checksum), make the client resubscribe that
// channel from its last position, with deltas asked again; the app sees
// every publication once, in order, full.
func TestDeltaBrokenBaseResyncs(t *testing.T) {
	t.Parallel()
	base := []byte(`{"v":1,"pad":"` + strings.Repeat("a", 200) + `"}`)
	v := func(i int) []byte { return bytes.Replace(base, []byte(`"v":1`), fmt.Appendf(nil, `"v":%d`, i), 1) }
	// other is a document of v's length whose copy regions differ from v's.
	other := func(i int) []byte {
		return bytes.Replace(v(i), []byte(strings.Repeat("a", 200)), []byte(strings.Repeat("0123456789", 20)), 1)
	}
	deltaPush := func(off uint64, delta []byte) []byte {
		return protocol.AppendDeltaPush(nil, "d:x", off, delta)
	}
	var (
		mu   sync.Mutex
		subs []protocol.Command
		cmds []string
	)
	fs := newFakeServer(t, func(ws *websocket.Conn, n int32, cmd protocol.Command) {
		if answerConnect(ws, n, cmd) {
			return
		}
		mu.Lock()
		cmds = append(cmds, cmd.Cmd)
		if cmd.Cmd == protocol.CmdSubscribe {
			subs = append(subs, cmd)
		}
		nsubs := len(subs)
		mu.Unlock()
		switch {
		case cmd.Cmd == protocol.CmdSubscribe && nsubs == 1:
			fakeReply(ws, cmd.ID, protocol.SubscribeResult{Offset: 0, Epoch: "e", Delta: true})
			_ = ws.WriteMessage(websocket.TextMessage, protocol.AppendTextPush(nil, "pub", "d:x", 1, v(1)))
			// Offset 3 on base 1: publication 2 never came.
			_ = ws.WriteMessage(websocket.BinaryMessage, deltaPush(3, fdelta.Create(v(2), v(3))))
		case cmd.Cmd == protocol.CmdUnsubscribe:
			fakeReply(ws, cmd.ID, nil)
		case cmd.Cmd == protocol.CmdSubscribe && nsubs == 2:
			yes := true
			fakeReply(ws, cmd.ID, protocol.SubscribeResult{Offset: 3, Epoch: "e", Recovered: &yes, Delta: true})
			_ = ws.WriteMessage(websocket.TextMessage, protocol.AppendTextPush(nil, "pub", "d:x", 2, v(2)))
			_ = ws.WriteMessage(websocket.TextMessage, protocol.AppendTextPush(nil, "pub", "d:x", 3, v(3)))
			_ = ws.WriteMessage(websocket.BinaryMessage, deltaPush(4, fdelta.Create(v(3), v(4))))
			// On the right offset, against the wrong base: the checksum fails.
			_ = ws.WriteMessage(websocket.BinaryMessage, deltaPush(5, fdelta.Create(other(4), other(5))))
		case cmd.Cmd == protocol.CmdSubscribe && nsubs == 3:
			yes := true
			fakeReply(ws, cmd.ID, protocol.SubscribeResult{Offset: 5, Epoch: "e", Recovered: &yes, Delta: true})
			_ = ws.WriteMessage(websocket.TextMessage, protocol.AppendTextPush(nil, "pub", "d:x", 5, v(5)))
		}
	})
	var rec recorder
	c := connect(t, fs.url, client.Options{})
	if _, err := c.Subscribe(ctxT(t), "d:x", client.SubscribeOptions{Delta: true, OnPublication: rec.sub().OnPublication}); err != nil {
		t.Fatal(err)
	}
	got := waitPubs(t, &rec, 5)
	for i, p := range got {
		if p.Offset != uint64(i+1) || !bytes.Equal(p.Data, v(i+1)) {
			t.Fatalf("publication %d: offset %d %s, want %d %s", i, p.Offset, p.Data, i+1, v(i+1))
		}
	}
	mu.Lock()
	defer mu.Unlock()
	if fmt.Sprint(cmds) != "[subscribe unsubscribe subscribe unsubscribe subscribe]" {
		t.Fatalf("commands %v", cmds)
	}
	for i, want := range []uint64{1, 4} {
		s := subs[i+1]
		if s.Since == nil || s.Since.Offset != want || s.Since.Epoch != "e" || s.Delta != protocol.DeltaFossil {
			t.Fatalf("resubscribe %d: since %+v delta %q, want since offset %d with delta", i+1, s.Since, s.Delta, want)
		}
	}
}
