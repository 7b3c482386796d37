package herald

import (
	"encoding/json"
	"errors"
	"fmt"
	"testing"
	"time"

	"github.com/gorilla/websocket"

	"github.com/heraldhq/herald/protocol"
)

// FuzzCommand drives the whole command-handling path of a live node with
// arbitrary frames: after each one, a ping must still be answered, or the
// connection must have been closed with a documented code. The server must
// never panic or hang. Run longer with:
//
//	go test -run '^$' -fuzz FuzzCommand -fuzztime 60s .
func FuzzCommand(f *testing.F) {
	for _, s := range []string{
		`{"id":1,"cmd":"subscribe","channel":"a"}`,
		`{"id":2,"cmd":"publish","channel":"a","data":{"x":[1,2,3]}}`,
		`{"id":3,"cmd":"history","channel":"h","limit":2,"reverse":true}`,
		`{"id":4,"cmd":"subscribe","channel":"h","since":{"offset":1,"epoch":"x"}}`,
		`{"id":5,"cmd":"presence","channel":"p:1"}`,
		`{"id":6,"cmd":"connect","token":"a.b.c"}`,
		`{"id":7,"cmd":"publish","channel":"h","data":1,"idempotency_key":"k"}`,
		`{"id":8,"cmd":"unsubscribe","channel":"a"}`,
		`{"id":`, `[]`, `null`, "\xff",
	} {
		f.Add([]byte(s), false)
	}
	f.Add([]byte("{\"id\":9,\"cmd\":\"publish\",\"channel\":\"b\"}\n\x00\xff"), true)
	f.Add([]byte("no separator"), true)

	ts := newTestServer(f, Config{
		Logger: nopLogger(),
		// The fuzzer redials after every frame that closes the connection,
		// far faster than the default per-IP connect rate allows.
		Limits:     Limits{ConnectRatePerIP: NoLimit},
		Namespaces: []Namespace{{Name: ""}, {Name: "h", HistorySize: 10}, {Name: "p", Presence: true, JoinLeave: true}},
	})
	var c *websocket.Conn
	dial := func(t *testing.T) {
		d := websocket.Dialer{Subprotocols: []string{protocol.Subprotocol}, HandshakeTimeout: 5 * time.Second}
		ws, _, err := d.Dial(ts.url+"/ws", nil)
		if err != nil {
			t.Fatal(err)
		}
		c = ws
	}
	f.Cleanup(func() {
		if c != nil {
			c.Close()
		}
	})
	documented := map[int]bool{1000: true, 1002: true, 1007: true, 1008: true, 1009: true}
	pingID := uint64(1 << 62)
	f.Fuzz(func(t *testing.T, frame []byte, binary bool) {
		if c == nil {
			dial(t)
		}
		op := websocket.TextMessage
		if binary {
			op = websocket.BinaryMessage
		}
		pingID++
		ping := fmt.Appendf(nil, `{"id":%d,"cmd":"ping"}`, pingID)
		if c.WriteMessage(op, frame) != nil || c.WriteMessage(websocket.TextMessage, ping) != nil {
			c.Close()
			c = nil
			return // the server closed on an earlier frame; its code was checked then
		}
		for {
			c.SetReadDeadline(time.Now().Add(5 * time.Second))
			rop, b, err := c.ReadMessage()
			if err != nil {
				var ce *websocket.CloseError
				if !errors.As(err, &ce) || !documented[ce.Code] {
					t.Fatalf("frame %q: connection ended with %v", frame, err)
				}
				c.Close()
				c = nil
				return
			}
			var m struct {
				ID uint64 `json:"id"`
			}
			if rop == websocket.TextMessage && json.Unmarshal(b, &m) == nil && m.ID == pingID {
				return // still serving
			}
		}
	})
}
