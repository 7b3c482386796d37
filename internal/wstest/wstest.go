// Package wstest is a herald.v1 client for tests: a real WebSocket on
// loopback that sends commands and reads replies and pushes, failing the
// test on anything unexpected. Packages built on a node (httpapi,
// dashboard, cmd/herald) use it; it imports nothing of the server.
package wstest

import (
	"encoding/json"
	"errors"
	"net/http"
	"sync/atomic"
	"testing"
	"time"

	"github.com/gorilla/websocket"

	"github.com/heraldhq/herald/protocol"
)

// Timeout bounds every read.
const Timeout = 10 * time.Second

// Client is one connection.
type Client struct {
	t      testing.TB
	WS     *websocket.Conn
	nextID atomic.Uint64
}

// Msg is any message from the server: a reply or a push.
type Msg struct {
	ID      uint64          `json:"id"`
	Result  json.RawMessage `json:"result"`
	Error   *protocol.Error `json:"error"`
	Push    string          `json:"push"`
	Channel string          `json:"channel"`
	Offset  uint64          `json:"offset"`
	Data    json.RawMessage `json:"data"`
	Code    string          `json:"code"`
	Reason  string          `json:"reason"`
}

// Dial connects to url (ws://…) asking for herald.v1, with the headers;
// the connection is closed when the test ends.
func Dial(t testing.TB, url string, hdr http.Header) *Client {
	t.Helper()
	d := websocket.Dialer{Subprotocols: []string{protocol.Subprotocol}, HandshakeTimeout: 5 * time.Second}
	ws, resp, err := d.Dial(url, hdr)
	if err != nil {
		status := 0
		if resp != nil {
			status = resp.StatusCode
		}
		t.Fatalf("dial %s: %v (status %d)", url, err, status)
	}
	t.Cleanup(func() { ws.Close() })
	return &Client{t: t, WS: ws}
}

// Send writes cmd, numbering it if its ID is 0, and returns its ID.
func (c *Client) Send(cmd protocol.Command) uint64 {
	c.t.Helper()
	if cmd.ID == 0 {
		cmd.ID = c.nextID.Add(1)
	}
	b, _ := json.Marshal(cmd)
	if err := c.WS.WriteMessage(websocket.TextMessage, b); err != nil {
		c.t.Fatalf("write: %v", err)
	}
	return cmd.ID
}

// Read returns the next message's opcode and bytes.
func (c *Client) Read() (int, []byte) {
	c.t.Helper()
	_ = c.WS.SetReadDeadline(time.Now().Add(Timeout))
	op, b, err := c.WS.ReadMessage()
	if err != nil {
		c.t.Fatalf("read: %v", err)
	}
	return op, b
}

// ReadJSON returns the next message, which must be a text one.
func (c *Client) ReadJSON() Msg {
	c.t.Helper()
	op, b := c.Read()
	if op != websocket.TextMessage {
		c.t.Fatalf("want a text message, got opcode %d: %q", op, b)
	}
	var m Msg
	if err := json.Unmarshal(b, &m); err != nil {
		c.t.Fatalf("bad JSON from the server %q: %v", b, err)
	}
	return m
}

// Call sends cmd and returns its reply; anything else first fails the test.
func (c *Client) Call(cmd protocol.Command) Msg {
	c.t.Helper()
	id := c.Send(cmd)
	m := c.ReadJSON()
	if m.ID != id {
		c.t.Fatalf("want the reply to %d, got %+v", id, m)
	}
	return m
}

// OK is Call that fails the test on an error reply.
func (c *Client) OK(cmd protocol.Command) Msg {
	c.t.Helper()
	m := c.Call(cmd)
	if m.Error != nil {
		c.t.Fatalf("%s %s: %v", cmd.Cmd, cmd.Channel, m.Error)
	}
	return m
}

// ExpectClose reads until the connection closes and returns the close.
func (c *Client) ExpectClose() *websocket.CloseError {
	c.t.Helper()
	_ = c.WS.SetReadDeadline(time.Now().Add(Timeout))
	for {
		_, _, err := c.WS.ReadMessage()
		if err == nil {
			continue
		}
		var ce *websocket.CloseError
		if !errors.As(err, &ce) {
			c.t.Fatalf("want a close frame, got %v", err)
		}
		return ce
	}
}

// WaitFor polls cond until it holds, failing the test after Timeout.
func WaitFor(t testing.TB, what string, cond func() bool) {
	t.Helper()
	deadline := time.Now().Add(Timeout)
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatalf("timed out waiting for %s", what)
		}
		time.Sleep(time.Millisecond)
	}
}
