package herald

import (
	"log/slog"
	"testing"
	"time"

	"github.com/gorilla/websocket"
)

// FuzzPusherMessage sends one odd frame to a Pusher connection: the server
// must not panic, and the connection answers a ping after it unless the
// frame made the server close it (a refused sign-in).
func FuzzPusherMessage(f *testing.F) {
	for _, s := range []string{
		`{"event":"pusher:subscribe","data":{"channel":"orders"}}`,
		`{"event":"pusher:subscribe","data":{"channel":"presence-x","auth":"app-key:00","channel_data":"{\"user_id\":1}"}}`,
		`{"event":"pusher:subscribe","data":"{\"channel\":\"orders\"}"}`,
		`{"event":"pusher:subscribe","data":null}`,
		`{"event":"pusher:unsubscribe","data":{"channel":"#server-to-user-x"}}`,
		`{"event":"pusher:signin","data":{"auth":"app-key:00","user_data":"{\"id\":\"bob\"}"}}`,
		`{"event":"client-x","channel":"private-x","data":{"a":1}}`,
		`{"event":"client-x","channel":"#server-to-user-a","data":null}`,
		`[]`, `null`, `{"event":{}}`, "\xff",
	} {
		f.Add(s)
	}
	ts := newTestServer(f, Config{PusherApps: []PusherApp{testApp}, Logger: slog.New(slog.DiscardHandler), Limits: Limits{ConnectRatePerIP: NoLimit, MaxConnectionsPerIP: NoLimit}})
	f.Fuzz(func(t *testing.T, s string) {
		c := ts.pusher(t)
		if err := c.ws.WriteMessage(websocket.TextMessage, []byte(s)); err != nil {
			t.Fatal(err)
		}
		c.send("pusher:ping", "", map[string]any{})
		_ = c.ws.SetReadDeadline(time.Now().Add(5 * time.Second))
		for {
			_, b, err := c.ws.ReadMessage()
			if err != nil {
				if _, closed := err.(*websocket.CloseError); closed {
					return
				}
				t.Fatalf("after %q: %v", s, err)
			}
			if string(b) == `{"event":"pusher:pong","data":"{}"}` {
				return
			}
		}
	})
}
