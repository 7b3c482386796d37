package main

import (
	"context"
	"crypto/rand"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"net/http"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/gorilla/websocket"
	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"
	"github.com/redis/rueidis"

	"github.com/heraldhq/herald"
	"github.com/heraldhq/herald/internal/testenv"
	"github.com/heraldhq/herald/internal/testserver"
)

// The cluster tests run three `herald serve` in-process, joined by a real
// Redis or NATS server: the one at its usual local address, or the one
// HERALD_TEST_REDIS / HERALD_TEST_NATS names (see internal/testenv). Each
// test uses its own broker_prefix and deletes its keys, streams and buckets
// at the end.

func testPrefix() string {
	b := make([]byte, 6)
	_, _ = rand.Read(b)
	return "hcmd_" + hex.EncodeToString(b)
}

// redisCluster returns the serve flags of a Redis-joined node, or skips.
func redisCluster(t *testing.T) []string {
	u := testenv.RedisURL(t)
	p := testPrefix()
	t.Cleanup(func() { deleteRedisKeys(t, u, p) }) // registered first: runs after the servers stop
	return []string{"--broker", "redis", "--redis-url", u, "--broker-prefix", p}
}

func deleteRedisKeys(t *testing.T, u, prefix string) {
	opt, err := rueidis.ParseURL(u)
	if err != nil {
		t.Errorf("cleanup: %v", err)
		return
	}
	opt.DisableCache = true
	c, err := rueidis.NewClient(opt)
	if err != nil {
		t.Errorf("cleanup: %v", err)
		return
	}
	defer c.Close()
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	var cursor uint64
	for {
		e, err := c.Do(ctx, c.B().Scan().Cursor(cursor).Match(prefix+":*").Count(1000).Build()).AsScanEntry()
		if err != nil {
			t.Errorf("cleanup scan: %v", err)
			return
		}
		if len(e.Elements) > 0 {
			c.Do(ctx, c.B().Del().Key(e.Elements...).Build())
		}
		if cursor = e.Cursor; cursor == 0 {
			return
		}
	}
}

// natsCluster returns the serve flags of a NATS-joined node, or skips.
func natsCluster(t *testing.T) []string {
	u := testenv.NATSURL(t)
	p := testPrefix()
	t.Cleanup(func() {
		nc, err := nats.Connect(u)
		if err != nil {
			t.Errorf("cleanup: %v", err)
			return
		}
		defer nc.Close()
		js, err := jetstream.New(nc)
		if err != nil {
			t.Errorf("cleanup: %v", err)
			return
		}
		ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
		defer cancel()
		// The webhooks' stream and bucket exist only where a test turned
		// the webhooks on: "not found" is fine.
		for _, s := range []string{p + "_history", "KV_" + p + "_idem", "KV_" + p + "_presence", p + "_events", "KV_" + p + "_eventstate"} {
			if err := js.DeleteStream(ctx, s); err != nil && !strings.Contains(err.Error(), "not found") {
				t.Errorf("cleanup: delete stream %s: %v", s, err)
			}
		}
	})
	return []string{"--broker", "nats", "--nats-url", u, "--broker-prefix", p}
}

type pushMsg struct {
	ID     uint64          `json:"id"`
	Result json.RawMessage `json:"result"`
	Error  json.RawMessage `json:"error"`
	Push   string          `json:"push"`
	Chan   string          `json:"channel"`
	Offset uint64          `json:"offset"`
	Data   json.RawMessage `json:"data"`
}

// callAmid sends a command and returns its successful reply, skipping the
// pushes that arrive before it: a subscriber may get its own publication
// back through the broker before or after the reply.
func callAmid(t *testing.T, ws *websocket.Conn, id uint64, cmd string) pushMsg {
	t.Helper()
	if err := ws.WriteMessage(websocket.TextMessage, []byte(cmd)); err != nil {
		t.Fatalf("write: %v", err)
	}
	for {
		_, b := readMessage(t, ws)
		var m pushMsg
		if err := json.Unmarshal(b, &m); err != nil {
			t.Fatalf("not JSON: %s", b)
		}
		if m.Push != "" {
			continue
		}
		if m.ID != id || m.Error != nil {
			t.Fatalf("%s: got %s", cmd, b)
		}
		return m
	}
}

// nextPub reads until the next pub push and returns it.
func nextPub(t *testing.T, ws *websocket.Conn) pushMsg {
	t.Helper()
	for {
		_, b := readMessage(t, ws)
		var m pushMsg
		if err := json.Unmarshal(b, &m); err != nil {
			t.Fatalf("not JSON: %s", b)
		}
		if m.Push == "pub" {
			return m
		}
	}
}

// TestServeCluster: three nodes A, B and C joined by a broker. A client on
// A receives what a client on B publishes and what C's HTTP API publishes;
// presence asked on A lists the clients of A, B and C; a client that
// leaves A and comes back on C recovers, in order, what was published while
// it was away.
func TestServeCluster(t *testing.T) {
	t.Parallel()
	for _, b := range []struct {
		name  string
		flags func(t *testing.T) []string
	}{
		{"redis", redisCluster}, {"nats", natsCluster},
		{"redis-shards", redisShards}, {"redis-cluster", redisClusterMode}, {"nats-cluster", natsClusterMode},
	} {
		t.Run(b.name, func(t *testing.T) {
			t.Parallel()
			testCluster(t, b.flags(t))
		})
	}
}

// Servers of the tests' own, on the ports this package was given: Redis
// 17080-17099 (Cluster bus ports +10000), NATS clients 14250-14299 and
// routes 16250-16299.

// redisShards returns the serve flags of a node joined by three standalone
// Redis servers of the test's own, as shards.
func redisShards(t *testing.T) []string {
	base := testserver.PortBlock(t, 17080, 17090, 3, 0)
	var urls []string
	for i := range 3 {
		urls = append(urls, "redis://"+testserver.RedisAt(t, base+i).Addr()+"/0")
	}
	return []string{"--broker", "redis", "--redis-url", strings.Join(urls, ",")}
}

// redisClusterMode returns the serve flags of a node joined by a Redis
// Cluster of three masters of the test's own.
func redisClusterMode(t *testing.T) []string {
	nodes := testserver.RedisCluster(t, testserver.PortBlock(t, 17090, 17100, 3, 10000), 3)
	return []string{"--broker", "redis", "--redis-cluster", "--redis-url", "redis://" + nodes[0].Addr()}
}

// natsClusterMode returns the serve flags of a node joined by a
// three-server NATS cluster of the test's own, JetStream replicated three
// times.
func natsClusterMode(t *testing.T) []string {
	base := testserver.PortBlock(t, 14250, 14300, 3, 2000)
	srvs := testserver.NATSCluster(t, base, base+2000, 3)
	var urls []string
	for _, s := range srvs {
		urls = append(urls, "nats://"+s.Addr())
	}
	return []string{"--broker", "nats", "--nats-replicas", "3", "--nats-url", strings.Join(urls, ",")}
}

func testCluster(t *testing.T, flags []string) {
	cfg := writeFile(t, `namespaces:
  - name: chat
    history_size: 100
    history_ttl: 5m
    presence: true
`)
	// The test's clients do not answer close frames: a short grace keeps
	// the shutdown quick.
	flags = append(flags, "--config", cfg, "--close-grace", "200ms")
	env := []string{"HERALD_API_KEY=" + testAPIKey}
	nodes := map[string]*server{}
	for _, name := range []string{"A", "B", "C"} {
		nodes[name] = startServer(t, env, flags...)
	}
	for name, s := range nodes {
		waitFor(t, "node "+name+" ready (its broker connected)", func() bool {
			resp, _ := httpGet(t, "http://"+s.addr+"/readyz")
			return resp.StatusCode == http.StatusOK
		})
	}
	ws := func(node string) *websocket.Conn { return mustDialWS(t, "ws://"+nodes[node].addr+"/ws", nil) }
	const ch = "chat:room"

	a := ws("A")
	res := call(t, a, `{"id":1,"cmd":"subscribe","channel":"`+ch+`"}`)
	var pos struct {
		Offset uint64 `json:"offset"`
		Epoch  string `json:"epoch"`
	}
	if err := json.Unmarshal(res.Result, &pos); err != nil || pos.Epoch == "" {
		t.Fatalf("subscribe result %s: want an offset and epoch", res.Result)
	}
	b := ws("B")
	call(t, b, `{"id":1,"cmd":"subscribe","channel":"`+ch+`"}`)
	c := ws("C")
	call(t, c, `{"id":1,"cmd":"subscribe","channel":"`+ch+`"}`)

	// B publishes; A receives.
	callAmid(t, b, 2, `{"id":2,"cmd":"publish","channel":"`+ch+`","data":{"from":"B"}}`)
	if m := nextPub(t, a); string(m.Data) != `{"from":"B"}` || m.Offset != pos.Offset+1 {
		t.Fatalf("A got %+v, want B's publication at offset %d", m, pos.Offset+1)
	}
	// C's HTTP API publishes; A receives.
	apiPub := func(data string) {
		t.Helper()
		resp, body := httpDo(t, "POST", "http://"+nodes["C"].addr+"/api/v1/publish", bearer(testAPIKey),
			`{"channel":"`+ch+`","data":`+data+`}`)
		if resp.StatusCode != http.StatusOK {
			t.Fatalf("API publish on C: %d %s", resp.StatusCode, body)
		}
	}
	apiPub(`{"from":"C's API"}`)
	m := nextPub(t, a)
	if string(m.Data) != `{"from":"C's API"}` || m.Offset != pos.Offset+2 {
		t.Fatalf("A got %+v, want the API's publication at offset %d", m, pos.Offset+2)
	}
	last := m.Offset

	// Presence asked on A lists the clients of A, B and C.
	ids := map[string]bool{}
	waitFor(t, "presence on A to list the clients of A, B and C", func() bool {
		r := callAmid(t, a, 3, `{"id":3,"cmd":"presence","channel":"`+ch+`"}`)
		var p struct {
			Clients map[string]json.RawMessage `json:"clients"`
		}
		if err := json.Unmarshal(r.Result, &p); err != nil {
			t.Fatalf("presence result %s", r.Result)
		}
		clear(ids)
		for id := range p.Clients {
			ids[id] = true
		}
		return len(ids) == 3
	})
	resp, body := httpDo(t, "GET", "http://"+nodes["C"].addr+"/api/v1/presence_stats?channel="+ch, bearer(testAPIKey), "")
	if resp.StatusCode != http.StatusOK || !strings.Contains(body, `"clients":3`) {
		t.Fatalf("presence_stats through C's API: %d %s", resp.StatusCode, body)
	}

	// The client leaves A; while it is away B and C's API publish; it
	// comes back on C and recovers exactly what it missed, in order.
	if err := a.WriteMessage(websocket.CloseMessage, websocket.FormatCloseMessage(websocket.CloseNormalClosure, "")); err != nil {
		t.Fatal(err)
	}
	a.Close()
	for i := range 3 {
		callAmid(t, b, uint64(10+i), fmt.Sprintf(`{"id":%d,"cmd":"publish","channel":"%s","data":{"missed":%d}}`, 10+i, ch, i))
	}
	apiPub(`{"missed":3}`)
	back := ws("C")
	res = call(t, back, fmt.Sprintf(`{"id":1,"cmd":"subscribe","channel":"%s","since":{"offset":%d,"epoch":"%s"}}`, ch, last, pos.Epoch))
	var rec struct {
		Recovered bool   `json:"recovered"`
		Reason    string `json:"reason"`
	}
	if err := json.Unmarshal(res.Result, &rec); err != nil || !rec.Recovered {
		t.Fatalf("resubscribe on C: %s, want recovered", res.Result)
	}
	for i := range 4 {
		m := nextPub(t, back)
		if want := fmt.Sprintf(`{"missed":%d}`, i); string(m.Data) != want || m.Offset != last+1+uint64(i) {
			t.Fatalf("recovered publication %d: %+v, want %s at offset %d", i, m, want, last+1+uint64(i))
		}
	}
	// And the live stream goes on after the recovered ones.
	callAmid(t, b, 20, `{"id":20,"cmd":"publish","channel":"`+ch+`","data":"live"}`)
	if m := nextPub(t, back); string(m.Data) != `"live"` || m.Offset != last+5 {
		t.Fatalf("after recovery got %+v", m)
	}

	for name, s := range nodes {
		if err := s.stop(t); err != nil {
			t.Errorf("node %s: %v\nlogs:\n%s", name, err, s.logs)
		}
	}
}

// TestServeRedisClusterAddMaster: two nodes on a Redis Cluster of three
// masters, a client on A subscribed to a channel with history; a fourth
// master joins the cluster and the channel's slot moves to it, with no
// node restarted. The client is told to resubscribe (4006), recovers on A
// what was published during the move, and then gets B's publications live
// from the new master.
func TestServeRedisClusterAddMaster(t *testing.T) {
	t.Parallel()
	// Ports: the cluster in 17090-17098 as redisClusterMode's, the added
	// master on 17099, which no block of three there takes.
	nodes := testserver.RedisCluster(t, testserver.PortBlock(t, 17090, 17100, 3, 10000), 3)
	addPort := testserver.PortBlock(t, 17099, 17100, 1, 10000)
	cfg := writeFile(t, `namespaces:
  - name: chat
    history_size: 100
    history_ttl: 5m
`)
	flags := []string{"--broker", "redis", "--redis-cluster", "--redis-url", "redis://" + nodes[0].Addr(),
		"--config", cfg, "--close-grace", "200ms"}
	srvA, srvB := startServer(t, nil, flags...), startServer(t, nil, flags...)
	for _, s := range []*server{srvA, srvB} {
		waitFor(t, "node ready (its broker connected)", func() bool {
			resp, _ := httpGet(t, "http://"+s.addr+"/readyz")
			return resp.StatusCode == http.StatusOK
		})
	}
	const ch = "chat:grows"
	a := mustDialWS(t, "ws://"+srvA.addr+"/ws", nil)
	res := call(t, a, `{"id":1,"cmd":"subscribe","channel":"`+ch+`"}`)
	var pos struct {
		Offset uint64 `json:"offset"`
		Epoch  string `json:"epoch"`
	}
	if err := json.Unmarshal(res.Result, &pos); err != nil || pos.Epoch == "" {
		t.Fatalf("subscribe result %s: want an offset and epoch", res.Result)
	}
	b := mustDialWS(t, "ws://"+srvB.addr+"/ws", nil)
	publish := func(id int, data string) {
		t.Helper()
		callAmid(t, b, uint64(id), fmt.Sprintf(`{"id":%d,"cmd":"publish","channel":"%s","data":%s}`, id, ch, data))
	}
	publish(2, `"before"`)
	if m := nextPub(t, a); string(m.Data) != `"before"` || m.Offset != pos.Offset+1 {
		t.Fatalf("A got %+v, want B's publication at offset %d", m, pos.Offset+1)
	}

	added := testserver.AddClusterMaster(t, nodes, addPort)
	slot := testserver.KeySlot(t, nodes[0], ch)
	from := testserver.SlotOwner(t, nodes, slot)
	if from == nil {
		t.Fatalf("no master serves slot %d", slot)
	}
	testserver.MoveSlot(t, append(slices.Clone(nodes), added), slot, from, added)
	if code := expectClose(t, a); code != int(herald.CloseResubscribe) {
		t.Fatalf("A's client closed with %d, want %d (resubscribe)", code, herald.CloseResubscribe)
	}
	publish(3, `"during"`)

	// As a client does on 4006: reconnect to A and resubscribe from the
	// last offset seen. A may ask again while the channel settles on its
	// new master (its reconnect check may run after the client recovered);
	// every publication arrives once, in order, all the same.
	last, published := pos.Offset+1, false
	var got []string
	deadline := time.Now().Add(30 * time.Second)
	for len(got) < 2 {
		if time.Now().After(deadline) {
			t.Fatalf("after the move, got %q within 30 s, want [\"during\" \"after\"]", got)
		}
		back := mustDialWS(t, "ws://"+srvA.addr+"/ws", nil)
		if err := back.WriteMessage(websocket.TextMessage, fmt.Appendf(nil, `{"id":1,"cmd":"subscribe","channel":"%s","since":{"offset":%d,"epoch":"%s"}}`, ch, last, pos.Epoch)); err != nil {
			t.Fatal(err)
		}
		for len(got) < 2 {
			if !published && len(got) == 1 {
				publish(4, `"after"`)
				published = true
			}
			_ = back.SetReadDeadline(time.Now().Add(10 * time.Second))
			_, msg, err := back.ReadMessage()
			var ce *websocket.CloseError
			if errors.As(err, &ce) && ce.Code == int(herald.CloseResubscribe) {
				t.Logf("told to resubscribe again after offset %d", last)
				break
			}
			if err != nil {
				t.Fatalf("read after the move: %v", err)
			}
			var m pushMsg
			if err := json.Unmarshal(msg, &m); err != nil {
				t.Fatalf("not JSON: %s", msg)
			}
			if m.ID == 1 {
				var rec struct {
					Recovered bool `json:"recovered"`
				}
				if err := json.Unmarshal(m.Result, &rec); err != nil || !rec.Recovered {
					t.Fatalf("resubscribe on A after the move: %s, want recovered", msg)
				}
				continue
			}
			if m.Push != "pub" {
				continue
			}
			if m.Offset != last+1 {
				t.Fatalf("got %s at offset %d after %d: want consecutive offsets", m.Data, m.Offset, last)
			}
			got, last = append(got, string(m.Data)), m.Offset
		}
		back.Close()
	}
	if got[0] != `"during"` || got[1] != `"after"` {
		t.Fatalf("after the move got %q, want [\"during\" \"after\"]", got)
	}
	for _, s := range []*server{srvA, srvB} {
		if err := s.stop(t); err != nil {
			t.Errorf("%v\nlogs:\n%s", err, s.logs)
		}
	}
}
