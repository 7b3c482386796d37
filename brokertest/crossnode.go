package brokertest

import (
	"context"
	"encoding/json"
	"net/http"
	"net/http/httptest"
	"strings"
	"testing"
	"time"

	"github.com/gorilla/websocket"

	"github.com/heraldhq/herald"
	"github.com/heraldhq/herald/protocol"
)

// RunCrossNode runs two herald.Nodes, each with a broker from newBroker
// (same *testing.T, so one backend) behind its own HTTP server, and checks
// with real WebSocket clients speaking herald.v1 that:
//   - a client on node A subscribed to a channel receives what a client on
//     node B publishes there, with its offset;
//   - Node.SendToUser on B reaches the user's connection on A;
//   - presence on B lists the client subscribed on A.
//
// Connections authenticate with the X-User header.
func RunCrossNode(t *testing.T, newBroker func(t *testing.T) herald.Broker) {
	nodeA := startNode(t, newBroker(t))
	nodeB := startNode(t, newBroker(t))

	alice := dialNode(t, nodeA, "alice")
	bob := dialNode(t, nodeB, "bob")
	const ch = "chat:lobby"

	sub := alice.call(t, map[string]any{"cmd": "subscribe", "channel": ch})
	var subRes struct {
		Offset uint64 `json:"offset"`
		Epoch  string `json:"epoch"`
	}
	if err := json.Unmarshal(sub.Result, &subRes); err != nil || subRes.Epoch == "" {
		t.Fatalf("subscribe result %s: want an offset and an epoch (%v)", sub.Result, err)
	}

	pubRep := bob.call(t, map[string]any{"cmd": "publish", "channel": ch, "data": map[string]string{"text": "hi from B"}})
	var pubRes struct {
		Offset uint64 `json:"offset"`
		Epoch  string `json:"epoch"`
	}
	if err := json.Unmarshal(pubRep.Result, &pubRes); err != nil || pubRes.Offset != subRes.Offset+1 || pubRes.Epoch != subRes.Epoch {
		t.Fatalf("publish result %s, want offset %d epoch %q", pubRep.Result, subRes.Offset+1, subRes.Epoch)
	}
	push := alice.waitPush(t, "pub")
	if push.Channel != ch || string(push.Data) != `{"text":"hi from B"}` || push.Offset != pubRes.Offset {
		t.Fatalf("alice got %+v, want the publication from node B at offset %d", push, pubRes.Offset)
	}

	if err := nodeB.SendToUser(ctxT(t), "alice", []byte(`{"note":"direct"}`)); err != nil {
		t.Fatal(err)
	}
	if msg := alice.waitPush(t, "message"); string(msg.Data) != `{"note":"direct"}` {
		t.Fatalf("alice got message %s, want the one SendToUser sent on node B", msg.Data)
	}

	pres := bob.call(t, map[string]any{"cmd": "presence", "channel": ch})
	if !strings.Contains(string(pres.Result), `"user":"alice"`) {
		t.Fatalf("presence on node B: %s, want alice (subscribed on node A)", pres.Result)
	}
}

func startNode(t *testing.T, b herald.Broker) *testNode {
	t.Helper()
	return startNodeHistory(t, b, 10)
}

// startNodeHistory is startNode with namespace chat keeping size
// publications per channel.
func startNodeHistory(t *testing.T, b herald.Broker, size int) *testNode {
	t.Helper()
	n, err := herald.New(herald.Config{
		Broker: b,
		Namespaces: []herald.Namespace{
			{Name: ""},
			{Name: "chat", HistorySize: size, HistoryTTL: time.Minute, Presence: true},
		},
		Authenticate: func(r *http.Request) (herald.Credentials, error) {
			return herald.Credentials{UserID: r.Header.Get("X-User")}, nil
		},
	})
	if err != nil {
		t.Fatal(err)
	}
	srv := httptest.NewServer(n.Handler())
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

// testNode is a running node and the ws:// URL of its Handler.
type testNode struct {
	*herald.Node
	url string
}

type wsClient struct {
	ws     *websocket.Conn
	nextID uint64
	pushes []frame
}

type frame struct {
	ID      uint64          `json:"id"`
	Push    string          `json:"push"`
	Channel string          `json:"channel"`
	Data    json.RawMessage `json:"data"`
	Offset  uint64          `json:"offset"`
	Result  json.RawMessage `json:"result"`
	Error   *struct {
		Code    string `json:"code"`
		Message string `json:"message"`
	} `json:"error"`
}

func dialNode(t *testing.T, n *testNode, user string) *wsClient {
	t.Helper()
	d := websocket.Dialer{Subprotocols: []string{protocol.Subprotocol}, HandshakeTimeout: 5 * time.Second}
	ws, resp, err := d.Dial(n.url, http.Header{"X-User": {user}})
	if err != nil {
		t.Fatalf("dial: %v", err)
	}
	if resp.Header.Get("Sec-WebSocket-Protocol") != protocol.Subprotocol {
		t.Fatalf("server selected subprotocol %q", resp.Header.Get("Sec-WebSocket-Protocol"))
	}
	t.Cleanup(func() { ws.Close() })
	return &wsClient{ws: ws}
}

func (c *wsClient) read(t *testing.T) frame {
	t.Helper()
	_ = c.ws.SetReadDeadline(time.Now().Add(waitFor))
	_, b, err := c.ws.ReadMessage()
	if err != nil {
		t.Fatalf("read: %v", err)
	}
	var f frame
	if err := json.Unmarshal(b, &f); err != nil {
		t.Fatalf("bad frame %s: %v", b, err)
	}
	return f
}

// call sends a command and returns its reply, keeping pushes that arrive
// meanwhile; it fails the test on an error reply.
func (c *wsClient) call(t *testing.T, cmd map[string]any) frame {
	t.Helper()
	c.nextID++
	cmd["id"] = c.nextID
	if err := c.ws.WriteJSON(cmd); err != nil {
		t.Fatal(err)
	}
	for {
		f := c.read(t)
		if f.Push != "" {
			c.pushes = append(c.pushes, f)
			continue
		}
		if f.ID != c.nextID {
			t.Fatalf("reply to %d while waiting for %d", f.ID, c.nextID)
		}
		if f.Error != nil {
			t.Fatalf("%v: error %s: %s", cmd, f.Error.Code, f.Error.Message)
		}
		return f
	}
}

// waitPush returns the first push of kind, from those kept or read next.
func (c *wsClient) waitPush(t *testing.T, kind string) frame {
	t.Helper()
	for i, f := range c.pushes {
		if f.Push == kind {
			c.pushes = append(c.pushes[:i], c.pushes[i+1:]...)
			return f
		}
	}
	for {
		f := c.read(t)
		if f.Push == kind {
			return f
		}
		c.pushes = append(c.pushes, f)
	}
}

// RunUnsubscribeUser runs one node and checks that Node.UnsubscribeUser,
// which ends a channel's last local subscription and so unsubscribes the
// broker, does not stall delivery: the user gets its unsub push, another
// client keeps receiving, and no broker outage is counted — not even after
// a broker's heartbeat timeout has passed (a Redis broker once waited for
// the UNSUBSCRIBE's answer on the goroutine that reads it, until its link
// was deemed dead and every subscriber was closed with 4006).
func RunUnsubscribeUser(t *testing.T, newBroker func(t *testing.T) herald.Broker, heartbeat time.Duration) {
	node := startNode(t, newBroker(t))
	ann := dialNode(t, node, "ann")
	bob := dialNode(t, node, "bob")
	ann.call(t, map[string]any{"cmd": "subscribe", "channel": "chat:one"})
	bob.call(t, map[string]any{"cmd": "subscribe", "channel": "chat:two"})
	if err := node.UnsubscribeUser(ctxT(t), "ann", "chat:one"); err != nil {
		t.Fatal(err)
	}
	if f := ann.waitPush(t, "unsub"); f.Channel != "chat:one" {
		t.Fatalf("ann got %+v, want the unsub push of chat:one", f)
	}
	time.Sleep(heartbeat + time.Second) // long enough for a stalled link to be cut
	publishNode(t, node, "chat:two", `"still here"`)
	if f := bob.waitPush(t, "pub"); string(f.Data) != `"still here"` {
		t.Fatalf("bob got %+v", f)
	}
	if n := metric(t, node, "herald_broker_outages_total"); n != 0 {
		t.Fatalf("herald_broker_outages_total = %v after unsubscribe_user, want 0", n)
	}
}
