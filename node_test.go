package herald

import (
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"net/http"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/gorilla/websocket"
	"go.uber.org/goleak"

	"github.com/heraldhq/herald/protocol"
)

func TestMain(m *testing.M) { goleak.VerifyTestMain(m) }

func TestPublishSubscribe(t *testing.T) {
	t.Parallel()
	ts := newTestServer(t, Config{})
	a, b := ts.client(t), ts.client(t)
	a.subscribe("chat")
	b.mustOK(protocol.Command{Cmd: "publish", Channel: "chat", Data: []byte(`{"text":"hi"}`)})
	m := a.readJSON()
	if m.Push != "pub" || m.Channel != "chat" || string(m.Data) != `{"text":"hi"}` {
		t.Fatalf("got %+v", m)
	}
	if _, err := ts.node.Publish(context.Background(), "chat", []byte(`"from go"`)); err != nil {
		t.Fatal(err)
	}
	if m := a.readJSON(); string(m.Data) != `"from go"` {
		t.Fatalf("got %+v", m)
	}
	// After unsubscribe nothing more arrives: the next message is the ping reply.
	a.mustOK(protocol.Command{Cmd: "unsubscribe", Channel: "chat"})
	b.mustOK(protocol.Command{Cmd: "publish", Channel: "chat", Data: []byte(`1`)})
	a.mustOK(protocol.Command{Cmd: "ping"})
}

func TestSubprotocolNegotiated(t *testing.T) {
	t.Parallel()
	ts := newTestServer(t, Config{})
	c := ts.client(t)
	if got := c.ws.Subprotocol(); got != protocol.Subprotocol {
		t.Fatalf("subprotocol = %q, want %q", got, protocol.Subprotocol)
	}
}

func TestBroadcastToMany(t *testing.T) {
	t.Parallel()
	ts := newTestServer(t, Config{})
	const subs, msgs = 50, 20
	clients := make([]*testClient, subs)
	for i := range clients {
		clients[i] = ts.client(t)
		clients[i].subscribe("news")
	}
	for i := range msgs {
		if _, err := ts.node.Publish(context.Background(), "news", []byte(fmt.Sprint(i))); err != nil {
			t.Fatal(err)
		}
	}
	for ci, c := range clients {
		for i := range msgs {
			if m := c.readJSON(); string(m.Data) != fmt.Sprint(i) {
				t.Fatalf("client %d message %d: got %+v", ci, i, m)
			}
		}
	}
}

func TestSendToOneUserAndAll(t *testing.T) {
	t.Parallel()
	var mu sync.Mutex
	users := map[string]string{} // remote addr -> user, from the header below
	ids := map[string]string{}   // user -> client id
	ts := newTestServer(t, Config{
		Authenticate: func(r *http.Request) (Credentials, error) {
			u := r.Header.Get("X-Test-User")
			mu.Lock()
			users[r.RemoteAddr] = u
			mu.Unlock()
			return Credentials{UserID: u}, nil
		},
		OnConnect: func(ci ClientInfo) {
			mu.Lock()
			ids[ci.UserID] = ci.ID
			mu.Unlock()
		},
	})
	hdr := func(u string) http.Header { return http.Header{"X-Test-User": {u}} }
	alice1, alice2, bob := ts.dial(t, "/ws", hdr("alice")), ts.dial(t, "/ws", hdr("alice")), ts.dial(t, "/ws", hdr("bob"))
	ctx := context.Background()

	// Send to one connection: only bob gets it. Its id also comes from connect.
	var res protocol.ConnectResult
	if err := json.Unmarshal(bob.call(protocol.Command{Cmd: "connect"}).Result, &res); err != nil {
		t.Fatal(err)
	}
	mu.Lock()
	bobID := ids["bob"]
	mu.Unlock()
	if res.Client != bobID {
		t.Fatalf("connect says %q, OnConnect said %q", res.Client, bobID)
	}
	if err := ts.node.Send(ctx, bobID, []byte(`"to bob"`)); err != nil {
		t.Fatal(err)
	}
	if m := bob.readJSON(); m.Push != "message" || string(m.Data) != `"to bob"` {
		t.Fatalf("bob got %+v", m)
	}
	// Send to a user: both of alice's tabs.
	if err := ts.node.SendToUser(ctx, "alice", []byte(`"to alice"`)); err != nil {
		t.Fatal(err)
	}
	for _, c := range []*testClient{alice1, alice2} {
		if m := c.readJSON(); m.Push != "message" || string(m.Data) != `"to alice"` {
			t.Fatalf("alice got %+v", m)
		}
	}
	// Broadcast: everyone; and bob's next message proves he got nothing of alice's.
	if err := ts.node.Broadcast(ctx, []byte(`"all"`)); err != nil {
		t.Fatal(err)
	}
	for _, c := range []*testClient{alice1, alice2, bob} {
		if m := c.readJSON(); m.Push != "message" || string(m.Data) != `"all"` {
			t.Fatalf("got %+v", m)
		}
	}
	// Disconnect a user with a code.
	if err := ts.node.DisconnectUser(ctx, "alice", CloseForbidden, "banned"); err != nil {
		t.Fatal(err)
	}
	for _, c := range []*testClient{alice1, alice2} {
		if ce := c.expectClose(); CloseCode(ce.Code) != CloseForbidden || ce.Text != "banned" {
			t.Fatalf("close = %v", ce)
		}
	}
	bob.mustOK(protocol.Command{Cmd: "ping"})
}

func TestBinaryRoundTrip(t *testing.T) {
	t.Parallel()
	ts := newTestServer(t, Config{})
	sub, pub := ts.client(t), ts.client(t)
	sub.subscribe("files")
	payload := []byte{0xff, 0xfe, 0x00, '\n', 0x80, 'x', 0xc3, 0x28} // not UTF-8, has NUL and newline

	// A binary frame from a client: header, '\n', payload.
	frame := append([]byte(`{"id":7,"cmd":"publish","channel":"files"}`+"\n"), payload...)
	if err := pub.ws.WriteMessage(websocket.BinaryMessage, frame); err != nil {
		t.Fatal(err)
	}
	if m := pub.readJSON(); m.ID != 7 || m.Error != nil {
		t.Fatalf("reply %+v", m)
	}
	// And one from Go.
	if _, err := ts.node.Publish(context.Background(), "files", payload, Binary()); err != nil {
		t.Fatal(err)
	}
	for range 2 {
		op, b := sub.read()
		if op != websocket.BinaryMessage {
			t.Fatalf("opcode %d", op)
		}
		hdr, got, err := protocol.SplitBinary(b)
		if err != nil {
			t.Fatal(err)
		}
		var p protocol.Push
		if err := json.Unmarshal(hdr, &p); err != nil || p.Push != "pub" || p.Channel != "files" {
			t.Fatalf("header %q: %v", hdr, err)
		}
		if !bytes.Equal(got, payload) {
			t.Fatalf("payload %x, want %x", got, payload)
		}
	}
}

func TestRawRelay(t *testing.T) {
	t.Parallel()
	ts := newTestServer(t, Config{})
	a := ts.dial(t, "/ws/raw?channel=room", nil)
	b := ts.dial(t, "/ws/raw?channel=room", nil)
	echo := ts.dial(t, "/ws/raw?channel=room&echo=1", nil)
	p := ts.client(t)
	p.subscribe("room")
	waitFor(t, "3 raw subscribers + 1", func() bool { return ts.node.hub.numSubs("room") == 4 })

	bin := []byte{0, 1, 2, 0xff, '\n'}
	msgs := []struct {
		op   int
		data []byte
	}{{websocket.TextMessage, []byte("hello, not JSON")}, {websocket.BinaryMessage, bin}, {websocket.TextMessage, []byte(`{"a":1}`)}}
	for _, m := range msgs {
		if err := a.ws.WriteMessage(m.op, m.data); err != nil {
			t.Fatal(err)
		}
	}
	// Raw receivers get the frames verbatim, opcode kept; the sender gets
	// nothing (its next frame would be b's, below), and echo gets its own too.
	for _, c := range []*testClient{b, echo} {
		for _, m := range msgs {
			op, got := c.read()
			if op != m.op || !bytes.Equal(got, m.data) {
				t.Fatalf("got op %d %q, want op %d %q", op, got, m.op, m.data)
			}
		}
	}
	if err := echo.ws.WriteMessage(websocket.TextMessage, []byte("mine")); err != nil {
		t.Fatal(err)
	}
	if _, got := echo.read(); string(got) != "mine" {
		t.Fatalf("echo got %q", got)
	}
	if _, got := a.read(); string(got) != "mine" {
		t.Fatalf("a got %q (its own frames must not come back)", got)
	}
	// A protocol subscriber sees raw text as JSON data (a string when not JSON) and binary as binary.
	if m := p.readJSON(); string(m.Data) != `"hello, not JSON"` {
		t.Fatalf("protocol got %+v", m)
	}
	if op, b := p.read(); op != websocket.BinaryMessage || !bytes.HasSuffix(b, bin) {
		t.Fatalf("protocol got %d %q", op, b)
	}
	if m := p.readJSON(); string(m.Data) != `{"a":1}` {
		t.Fatalf("protocol got %+v", m)
	}
}

func TestRawBadChannel(t *testing.T) {
	t.Parallel()
	ts := newTestServer(t, Config{})
	d := websocket.Dialer{HandshakeTimeout: 5 * time.Second}
	for _, q := range []string{"", "?channel=", "?channel=bad%20name"} {
		_, resp, err := d.Dial(ts.url+"/ws/raw"+q, nil)
		if err == nil || resp == nil || resp.StatusCode != http.StatusBadRequest {
			t.Fatalf("%q: err %v resp %v, want 400", q, err, resp)
		}
	}
}

// TestOrderingConcurrentPublishers: each publisher's messages reach every
// subscriber in publish order, with several publishers at once.
func TestOrderingConcurrentPublishers(t *testing.T) {
	t.Parallel()
	ts := newTestServer(t, Config{})
	const pubs, perPub, subs = 4, 200, 5
	readers := make([]*testClient, subs)
	for i := range readers {
		readers[i] = ts.client(t)
		readers[i].subscribe("seq")
	}
	var wg sync.WaitGroup
	for p := range pubs {
		c := ts.client(t)
		wg.Add(1)
		go func() {
			defer wg.Done()
			for i := range perPub {
				b, _ := json.Marshal(protocol.Command{ID: uint64(i + 1), Cmd: "publish", Channel: "seq", Data: []byte(fmt.Sprintf(`{"p":%d,"i":%d}`, p, i))})
				if err := c.ws.WriteMessage(websocket.TextMessage, b); err != nil {
					t.Error(err)
					return
				}
			}
		}()
	}
	wg.Wait()
	for ri, r := range readers {
		next := make([]int, pubs)
		for range pubs * perPub {
			var d struct{ P, I int }
			if err := json.Unmarshal(r.readJSON().Data, &d); err != nil {
				t.Fatal(err)
			}
			if d.I != next[d.P] {
				t.Fatalf("reader %d: publisher %d message %d arrived when %d was due", ri, d.P, d.I, next[d.P])
			}
			next[d.P]++
		}
	}
}

// TestSlowConsumerIsolated: a client that never reads is cut with 4001 and
// does not delay the others, who receive everything.
func TestSlowConsumerIsolated(t *testing.T) {
	t.Parallel()
	// A long CloseGrace lets the close frame wait until the slow client reads.
	ts := newTestServer(t, Config{MaxQueueBytes: 512 << 10, CloseGrace: 30 * time.Second})
	slow := ts.client(t)
	slow.subscribe("firehose")
	fast := ts.client(t)
	fast.subscribe("firehose")

	// 2000 x 8 KB = 16 MB: more than loopback socket buffers hold, so the
	// slow client's queue must overflow. The publisher stays within 32
	// messages of the fast client, which therefore never overflows.
	const n = 2000
	payload := []byte(`"` + strings.Repeat("x", 8000) + `"`)
	var received atomic.Int64
	got := make(chan error, 1)
	go func() {
		for i := range n {
			fast.ws.SetReadDeadline(time.Now().Add(10 * time.Second))
			_, b, err := fast.ws.ReadMessage()
			if err != nil {
				got <- fmt.Errorf("fast client, message %d: %w", i, err)
				return
			}
			if !bytes.Contains(b, payload) {
				got <- fmt.Errorf("fast client got %q", b)
				return
			}
			received.Add(1)
		}
		got <- nil
	}()
	for i := range n {
		waitFor(t, "fast client to keep up", func() bool { return int64(i)-received.Load() < 32 })
		if _, err := ts.node.Publish(context.Background(), "firehose", payload); err != nil {
			t.Fatal(err)
		}
	}
	if err := <-got; err != nil {
		t.Fatal(err)
	}
	// The slow client now reads what the kernel buffered, then the close.
	if ce := slow.expectClose(); CloseCode(ce.Code) != CloseSlowConsumer {
		t.Fatalf("slow client closed with %v, want %d", ce, CloseSlowConsumer)
	}
	waitFor(t, "slow client removed", func() bool { return ts.node.hub.numSubs("firehose") == 1 })
	fast.mustOK(protocol.Command{Cmd: "ping"})
}

func TestBadInputKeepsConnection(t *testing.T) {
	t.Parallel()
	ts := newTestServer(t, Config{Limits: Limits{MaxChannelsPerConnection: 2}})
	c := ts.client(t)
	cases := []struct {
		name  string
		frame string
		id    uint64
		code  protocol.Code
	}{
		{"malformed JSON", `{"id":3,"cmd":`, 0, protocol.CodeBadRequest},
		{"not an object", `[1,2]`, 0, protocol.CodeBadRequest},
		{"missing id", `{"cmd":"ping"}`, 0, protocol.CodeBadRequest},
		{"missing cmd", `{"id":4}`, 4, protocol.CodeBadRequest},
		{"wrong type", `{"id":5,"cmd":"subscribe","channel":7}`, 5, protocol.CodeBadRequest},
		{"unknown command", `{"id":6,"cmd":"teleport"}`, 6, protocol.CodeUnknownCommand},
		{"bad channel", `{"id":8,"cmd":"subscribe","channel":"has space"}`, 8, protocol.CodeBadChannel},
		{"empty channel", `{"id":9,"cmd":"publish","channel":"","data":1}`, 9, protocol.CodeBadChannel},
		{"long channel", `{"id":10,"cmd":"subscribe","channel":"` + strings.Repeat("a", 256) + `"}`, 10, protocol.CodeBadChannel},
		{"not subscribed", `{"id":11,"cmd":"unsubscribe","channel":"x"}`, 11, protocol.CodeNotSubscribed},
		{"sub a", `{"id":12,"cmd":"subscribe","channel":"a"}`, 12, ""},
		{"already subscribed", `{"id":13,"cmd":"subscribe","channel":"a"}`, 13, protocol.CodeAlreadySub},
		{"sub b", `{"id":14,"cmd":"subscribe","channel":"b"}`, 14, ""},
		{"too many channels", `{"id":15,"cmd":"subscribe","channel":"c"}`, 15, protocol.CodeLimitExceeded},
	}
	for _, tc := range cases {
		if err := c.ws.WriteMessage(websocket.TextMessage, []byte(tc.frame)); err != nil {
			t.Fatal(err)
		}
		m := c.readJSON()
		if m.ID != tc.id {
			t.Errorf("%s: reply id %d, want %d", tc.name, m.ID, tc.id)
		}
		switch {
		case tc.code == "" && m.Error != nil:
			t.Errorf("%s: unexpected error %v", tc.name, m.Error)
		case tc.code != "" && (m.Error == nil || m.Error.Code != tc.code):
			t.Errorf("%s: got %+v, want code %s", tc.name, m.Error, tc.code)
		case tc.code != "" && m.Error.Message == "":
			t.Errorf("%s: error without a message", tc.name)
		}
	}
	// Binary frames: without the header separator, and with data in the header.
	for _, f := range []string{`{"id":20,"cmd":"publish","channel":"a"}`, `{"id":21,"cmd":"publish","channel":"a","data":1}` + "\nxx"} {
		if err := c.ws.WriteMessage(websocket.BinaryMessage, []byte(f)); err != nil {
			t.Fatal(err)
		}
		if m := c.readJSON(); m.Error == nil || m.Error.Code != protocol.CodeBadRequest {
			t.Errorf("binary %q: got %+v", f, m)
		}
	}
	c.mustOK(protocol.Command{Cmd: "ping"}) // still open
}

func TestCloseCodes(t *testing.T) {
	t.Parallel()
	ts := newTestServer(t, Config{MaxMessageSize: 1024})
	t.Run("oversize frame gets 1009", func(t *testing.T) {
		t.Parallel()
		c := ts.client(t)
		_ = c.ws.WriteMessage(websocket.TextMessage, bytes.Repeat([]byte("a"), 2000))
		if ce := c.expectClose(); ce.Code != websocket.CloseMessageTooBig {
			t.Fatalf("close %v", ce)
		}
	})
	t.Run("invalid UTF-8 gets 1007", func(t *testing.T) {
		t.Parallel()
		c := ts.client(t)
		_ = c.ws.WriteMessage(websocket.TextMessage, []byte{'{', 0xff, '}'})
		if ce := c.expectClose(); ce.Code != websocket.CloseInvalidFramePayloadData {
			t.Fatalf("close %v", ce)
		}
	})
	t.Run("invalid UTF-8 in raw mode gets 1007", func(t *testing.T) {
		t.Parallel()
		c := ts.dial(t, "/ws/raw?channel=r", nil)
		_ = c.ws.WriteMessage(websocket.TextMessage, []byte{0xc3, 0x28})
		if ce := c.expectClose(); ce.Code != websocket.CloseInvalidFramePayloadData {
			t.Fatalf("close %v", ce)
		}
	})
	t.Run("client close is echoed", func(t *testing.T) {
		t.Parallel()
		c := ts.client(t)
		_ = c.ws.WriteControl(websocket.CloseMessage, websocket.FormatCloseMessage(4321, "bye"), time.Now().Add(time.Second))
		if ce := c.expectClose(); ce.Code != 4321 {
			t.Fatalf("close %v", ce)
		}
	})
	t.Run("bad close code gets 1002", func(t *testing.T) {
		t.Parallel()
		c := ts.client(t)
		_ = c.ws.WriteControl(websocket.CloseMessage, []byte{0x03, 0xe7}, time.Now().Add(time.Second)) // 999
		if ce := c.expectClose(); ce.Code != websocket.CloseProtocolError {
			t.Fatalf("close %v", ce)
		}
	})
}

func TestClientPingGetsPong(t *testing.T) {
	t.Parallel()
	ts := newTestServer(t, Config{})
	c := ts.dial(t, "/ws/raw?channel=p&echo=1", nil)
	pong := make(chan string, 1)
	c.ws.SetPongHandler(func(s string) error { pong <- s; return nil })
	if err := c.ws.WriteControl(websocket.PingMessage, []byte("abc"), time.Now().Add(time.Second)); err != nil {
		t.Fatal(err)
	}
	_ = c.ws.WriteMessage(websocket.TextMessage, []byte("after"))
	if _, b := c.read(); string(b) != "after" {
		t.Fatalf("got %q", b)
	}
	select {
	case s := <-pong:
		if s != "abc" {
			t.Fatalf("pong %q", s)
		}
	default:
		t.Fatal("no pong before the echoed message")
	}
}

func TestHeartbeat(t *testing.T) {
	t.Parallel()
	ts := newTestServer(t, Config{PingInterval: 50 * time.Millisecond, PongTimeout: 100 * time.Millisecond})
	t.Run("answering client stays", func(t *testing.T) {
		t.Parallel()
		// Its own server with room for a late pong: on a loaded machine the
		// client's goroutine may not run within 100 ms, and this case is
		// about pings going out and answers keeping the client, not about
		// how fast a pong is.
		ts := newTestServer(t, Config{PingInterval: 50 * time.Millisecond, PongTimeout: 5 * time.Second})
		c := ts.client(t)
		pings := 0
		c.ws.SetPingHandler(func(s string) error {
			pings++
			return c.ws.WriteControl(websocket.PongMessage, []byte(s), time.Now().Add(time.Second))
		})
		c.ws.SetReadDeadline(time.Now().Add(600 * time.Millisecond))
		_, _, err := c.ws.ReadMessage() // only pings arrive; the deadline ends the read
		if _, ok := err.(*websocket.CloseError); ok || pings < 3 {
			t.Fatalf("err %v after %d pings", err, pings)
		}
	})
	t.Run("silent client is closed with 4002", func(t *testing.T) {
		t.Parallel()
		c := ts.client(t)
		c.ws.SetPingHandler(func(string) error { return nil }) // never pong
		if ce := c.expectClose(); CloseCode(ce.Code) != CloseNoPong {
			t.Fatalf("close %v", ce)
		}
	})
}

func TestOrigins(t *testing.T) {
	t.Parallel()
	ts := newTestServer(t, Config{AllowedOrigins: []string{"https://*.example.com", "http://trusted.test:8080"}})
	host := strings.TrimPrefix(ts.srv.URL, "http://")
	cases := []struct {
		origin string
		ok     bool
	}{
		{"", true}, // non-browser client
		{"http://" + host, true},
		{"https://app.example.com", true},
		{"https://a.b.example.com", true},
		{"https://example.com", false},
		{"http://app.example.com", false},
		{"https://evil-example.com", false},
		{"http://trusted.test:8080", true},
		{"http://trusted.test:8081", false},
		{"https://evil.test", false},
		{"null", false},
	}
	for _, tc := range cases {
		hdr := http.Header{}
		if tc.origin != "" {
			hdr.Set("Origin", tc.origin)
			hdr.Set("Cookie", "session=valid") // CSWSH: cookies do not help a foreign origin
		}
		d := websocket.Dialer{HandshakeTimeout: 5 * time.Second}
		ws, resp, err := d.Dial(ts.url+"/ws", hdr)
		if tc.ok {
			if err != nil {
				t.Errorf("origin %q refused: %v", tc.origin, err)
				continue
			}
			ws.Close()
		} else if err == nil || resp == nil || resp.StatusCode != http.StatusForbidden {
			t.Errorf("origin %q: err %v resp %v, want 403", tc.origin, err, resp)
			if ws != nil {
				ws.Close()
			}
		}
	}
	if _, err := New(Config{AllowedOrigins: []string{"example.com"}}); err == nil {
		t.Error("an origin without a scheme must be refused")
	}
	if _, err := New(Config{AllowedOrigins: []string{"https://app.*.com"}}); err == nil {
		t.Error("a wildcard in the middle must be refused")
	}
}

func TestAllowAnyOrigin(t *testing.T) {
	t.Parallel()
	ts := newTestServer(t, Config{AllowAnyOrigin: true})
	ts.dial(t, "/ws", http.Header{"Origin": {"https://anywhere.test"}})
}

func TestNotWebSocket(t *testing.T) {
	t.Parallel()
	ts := newTestServer(t, Config{})
	resp, err := http.Get(ts.srv.URL + "/ws")
	if err != nil {
		t.Fatal(err)
	}
	resp.Body.Close()
	if resp.StatusCode != http.StatusBadRequest {
		t.Fatalf("status %d", resp.StatusCode)
	}
}

func TestCompression(t *testing.T) {
	t.Parallel()
	ts := newTestServer(t, Config{EnableCompression: true, MaxMessageSize: 64 << 10})
	d := websocket.Dialer{Subprotocols: []string{protocol.Subprotocol}, EnableCompression: true}
	dial := func() *testClient {
		ws, _, err := d.Dial(ts.url+"/ws", nil)
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { ws.Close() })
		return &testClient{t: t, ws: ws}
	}
	sub, plain := dial(), ts.client(t)
	sub.subscribe("z")
	plain.subscribe("z")
	big := []byte(`"` + strings.Repeat("compressible ", 1000) + `"`)
	if _, err := ts.node.Publish(context.Background(), "z", big); err != nil {
		t.Fatal(err)
	}
	for _, c := range []*testClient{sub, plain} {
		if m := c.readJSON(); !bytes.Equal(m.Data, big) {
			t.Fatalf("got %d bytes", len(m.Data))
		}
	}
	// A message that inflates past MaxMessageSize is refused with 1009,
	// although its compressed form is small.
	bomb := dial()
	bomb.ws.EnableWriteCompression(true)
	_ = bomb.ws.WriteMessage(websocket.TextMessage, []byte(`{"id":1,"cmd":"publish","channel":"z","data":"`+strings.Repeat("0", 200<<10)+`"}`))
	if ce := bomb.expectClose(); ce.Code != websocket.CloseMessageTooBig {
		t.Fatalf("close %v", ce)
	}
	// A compressed message that does not inflate is refused with 1007; the
	// other subscribers keep receiving.
	corrupt := dial()
	if _, err := corrupt.ws.NetConn().Write(rawFrame(true, 4, websocket.TextMessage, []byte{0xff, 0xff, 0xff})); err != nil {
		t.Fatal(err)
	}
	if ce := corrupt.expectClose(); ce.Code != websocket.CloseInvalidFramePayloadData {
		t.Fatalf("corrupt compressed message: close %v, want 1007", ce)
	}
	if _, err := ts.node.Publish(context.Background(), "z", []byte(`"after"`)); err != nil {
		t.Fatal(err)
	}
	for _, c := range []*testClient{sub, plain} {
		if m := c.readJSON(); string(m.Data) != `"after"` {
			t.Fatalf("after the corrupt message: got %s", m.Data)
		}
	}
}

func TestShutdownSends1001(t *testing.T) {
	t.Parallel()
	n, err := New(Config{Logger: testLogger(t)})
	if err != nil {
		t.Fatal(err)
	}
	ts := &testServer{t: t, node: n}
	srv := newHTTPTestServer(n)
	defer srv.Close()
	ts.url = "ws" + strings.TrimPrefix(srv.URL, "http")
	runErr := make(chan error, 1)
	go func() { runErr <- n.Run(context.Background()) }()
	c := ts.client(t)
	c.subscribe("a")
	if _, err := n.Publish(context.Background(), "a", []byte(`"last"`)); err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	shut := make(chan error, 1)
	go func() { shut <- n.Shutdown(ctx) }()
	// What was queued before the close still arrives, then 1001.
	if m := c.readJSON(); string(m.Data) != `"last"` {
		t.Fatalf("got %+v", m)
	}
	if ce := c.expectClose(); ce.Code != websocket.CloseGoingAway {
		t.Fatalf("close %v", ce)
	}
	c.ws.Close()
	if err := <-shut; err != nil {
		t.Fatal(err)
	}
	if err := <-runErr; err != nil {
		t.Fatal(err)
	}
	// New connections are refused.
	_, resp, err := websocket.DefaultDialer.Dial(ts.url+"/ws", nil)
	if err == nil || resp.StatusCode != http.StatusServiceUnavailable {
		t.Fatalf("dial after shutdown: %v %v", err, resp)
	}
	if _, err := n.Publish(context.Background(), "a", []byte(`1`)); err == nil {
		t.Fatal("publish after shutdown must fail")
	}
}

// TestShutdownDeadlineCutsStuckClients: a client that never reads cannot
// hold Shutdown past its deadline.
func TestShutdownDeadlineCutsStuckClients(t *testing.T) {
	t.Parallel()
	n, err := New(Config{Logger: testLogger(t), CloseGrace: 10 * time.Second, WriteTimeout: 10 * time.Second})
	if err != nil {
		t.Fatal(err)
	}
	srv := newHTTPTestServer(n)
	defer srv.Close()
	ts := &testServer{t: t, node: n, url: "ws" + strings.TrimPrefix(srv.URL, "http")}
	c := ts.client(t)
	c.subscribe("a")
	for range 200 { // fill the socket buffers: the writer blocks
		if _, err := n.Publish(context.Background(), "a", []byte(`"`+strings.Repeat("y", 30000)+`"`)); err != nil {
			t.Fatal(err)
		}
	}
	ctx, cancel := context.WithTimeout(context.Background(), 300*time.Millisecond)
	defer cancel()
	if err := n.Shutdown(ctx); err != context.DeadlineExceeded {
		t.Fatalf("Shutdown = %v, want deadline exceeded", err)
	}
	if got := n.Stats().Connections; got != 0 {
		t.Fatalf("%d connections left", got)
	}
}
