package pusherapi_test

import (
	"encoding/json"
	"errors"
	"fmt"
	"testing"
	"time"

	"github.com/gorilla/websocket"

	"github.com/heraldhq/herald"
	"github.com/heraldhq/herald/internal/testenv"
	"github.com/heraldhq/herald/redisbroker"
)

// Two nodes joined by Redis: the API of node B reaches a Pusher client of
// node A (trigger, terminate_connections), and B answers presence queries
// for A's members (presence is cluster-wide).
func TestClusterAPIRedis(t *testing.T) {
	t.Parallel()
	prefix := fmt.Sprintf("pusherapi_%d", time.Now().UnixNano())
	node := func() *server {
		br, err := redisbroker.New(redisbroker.Options{URL: testenv.RedisURL(t), Prefix: prefix})
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(br.Close) // after the node's cleanup: cleanups run last first
		return newServer(t, herald.Config{Broker: br})
	}
	a, b := node(), node()
	ws := a.pusherConn(t, appA, "ann")
	socketID := a.socketIDOf(t, ws)
	for _, ch := range []string{"news", "presence-room"} {
		data := ""
		sub := map[string]string{"channel": ch}
		if ch == "presence-room" {
			data = `{"user_id":"ann","user_info":{"name":"Ann"}}`
			sub["channel_data"] = data
			sub["auth"] = herald.PusherChannelAuth(appA, socketID, ch, data)
		}
		msg, _ := json.Marshal(map[string]any{"event": "pusher:subscribe", "data": sub})
		if err := ws.WriteMessage(websocket.TextMessage, msg); err != nil {
			t.Fatal(err)
		}
		var ok struct{ Event, Channel string }
		if err := ws.ReadJSON(&ok); err != nil || ok.Event != "pusher_internal:subscription_succeeded" {
			t.Fatalf("subscribe %s: %+v %v", ch, ok, err)
		}
	}

	deadline := time.Now().Add(10 * time.Second)
	for {
		st, body := b.signed(t, appA, "GET", "/apps/101/channels/presence-room/users", nil, "")
		if st == 200 && body == "{\"users\":[{\"id\":\"ann\"}]}\n" {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("node B's users of presence-room: %d %s", st, body)
		}
		time.Sleep(10 * time.Millisecond)
	}
	if st, body := b.signed(t, appA, "POST", "/apps/101/events", nil, `{"name":"from-b","channel":"news","data":"hi"}`); st != 200 {
		t.Fatalf("trigger on B: %d %s", st, body)
	}
	var ev struct{ Event, Channel, Data string }
	_ = ws.SetReadDeadline(time.Now().Add(10 * time.Second))
	for ev.Event != "from-b" {
		if err := ws.ReadJSON(&ev); err != nil {
			t.Fatalf("node A's client: %v", err)
		}
	}
	if ev.Channel != "news" || ev.Data != "hi" {
		t.Fatalf("got %+v", ev)
	}
	if st, body := b.signed(t, appA, "POST", "/apps/101/users/ann/terminate_connections", nil, "{}"); st != 200 {
		t.Fatalf("terminate on B: %d %s", st, body)
	}
	for {
		if _, _, err := ws.ReadMessage(); err != nil {
			var ce *websocket.CloseError
			if !errors.As(err, &ce) || ce.Code != 4009 {
				t.Fatalf("want close 4009, got %v", err)
			}
			return
		}
	}
}
