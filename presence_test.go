package herald

import (
	"context"
	"encoding/json"
	"fmt"
	"net/http"
	"testing"
	"time"

	"github.com/heraldhq/herald/protocol"
)

func presenceServer(t *testing.T, cfg Config) *testServer {
	cfg.Authenticate = func(r *http.Request) (Credentials, error) {
		u := r.Header.Get("X-Test-User")
		return Credentials{UserID: u, Info: json.RawMessage(fmt.Sprintf(`{"name":%q}`, u))}, nil
	}
	return newTestServer(t, cfg)
}

func (ts *testServer) userClient(t *testing.T, user string) *testClient {
	return ts.dial(t, "/ws", http.Header{"X-Test-User": {user}})
}

type infoPush struct {
	Push    string              `json:"push"`
	Channel string              `json:"channel"`
	Info    protocol.ClientInfo `json:"info"`
}

func (c *testClient) readInfoPush() infoPush {
	c.t.Helper()
	_, b := c.read()
	var p infoPush
	if err := json.Unmarshal(b, &p); err != nil {
		c.t.Fatalf("%q: %v", b, err)
	}
	return p
}

func (c *testClient) presenceStats(ch string) protocol.PresenceStatsResult {
	c.t.Helper()
	m := c.call(protocol.Command{Cmd: "presence_stats", Channel: ch})
	var st protocol.PresenceStatsResult
	if m.Error != nil || json.Unmarshal(m.Result, &st) != nil {
		c.t.Fatalf("presence_stats: %+v", m)
	}
	return st
}

func TestPresenceJoinLeave(t *testing.T) {
	t.Parallel()
	ts := presenceServer(t, historyConfig(10))
	watcher := ts.userClient(t, "watcher")
	watcher.subscribe("room:1")
	if p := watcher.readInfoPush(); p.Push != "join" || p.Info.User != "watcher" {
		t.Fatalf("own join: %+v", p)
	}
	alice1 := ts.userClient(t, "alice")
	alice1.subscribe("room:1")
	p := watcher.readInfoPush()
	if p.Push != "join" || p.Channel != "room:1" || p.Info.User != "alice" || string(p.Info.Info) != `{"name":"alice"}` || p.Info.Client == "" {
		t.Fatalf("join: %+v", p)
	}
	alice2 := ts.userClient(t, "alice") // a second tab
	alice2.subscribe("room:1")
	watcher.readInfoPush()
	anon := ts.userClient(t, "")
	anon.subscribe("room:1")
	watcher.readInfoPush()

	// Three users' worth of clients, but alice counts once; anonymous not at all.
	if st := watcher.presenceStats("room:1"); st.Clients != 4 || st.Users != 2 {
		t.Fatalf("stats %+v", st)
	}
	m := watcher.call(protocol.Command{Cmd: "presence", Channel: "room:1"})
	var pres protocol.PresenceResult
	if m.Error != nil || json.Unmarshal(m.Result, &pres) != nil || len(pres.Clients) != 4 {
		t.Fatalf("presence: %+v", m)
	}
	if ci := pres.Clients[p.Info.Client]; ci.User != "alice" || string(ci.Info) != `{"name":"alice"}` {
		t.Fatalf("alice's entry: %+v", ci)
	}

	// One tab leaves: a leave push, alice still counted once.
	id := alice1.send(protocol.Command{Cmd: "unsubscribe", Channel: "room:1"})
	for m := alice1.readJSON(); m.ID != id; m = alice1.readJSON() { // skip the join pushes it saw
		if m.Push != "join" {
			t.Fatalf("alice1 got %+v", m)
		}
	}
	if p := watcher.readInfoPush(); p.Push != "leave" || p.Info.User != "alice" {
		t.Fatalf("leave: %+v", p)
	}
	if st := watcher.presenceStats("room:1"); st.Clients != 3 || st.Users != 2 {
		t.Fatalf("stats %+v", st)
	}
	// The other tab's connection closes: leave, and alice is gone.
	alice2.ws.Close()
	if p := watcher.readInfoPush(); p.Push != "leave" || p.Info.User != "alice" {
		t.Fatalf("leave: %+v", p)
	}
	if st := watcher.presenceStats("room:1"); st.Clients != 2 || st.Users != 1 {
		t.Fatalf("stats %+v", st)
	}
}

func TestPresenceDeadClientExpires(t *testing.T) {
	t.Parallel()
	ts := presenceServer(t, Config{
		Namespaces:   historyConfig(10).Namespaces,
		PingInterval: 50 * time.Millisecond, PongTimeout: 100 * time.Millisecond,
	})
	watcher := ts.userClient(t, "watcher")
	watcher.subscribe("stats:1")
	ghost := ts.userClient(t, "ghost")
	ghost.subscribe("stats:1")
	if st := watcher.presenceStats("stats:1"); st.Clients != 2 {
		t.Fatalf("stats %+v", st)
	}
	// The watcher keeps reading, which answers the server's pings.
	go func() {
		for {
			if _, _, err := watcher.ws.ReadMessage(); err != nil {
				return
			}
		}
	}()
	// ghost stops reading and never answers a ping, and sends no close frame:
	// the heartbeat timeout removes it.
	waitFor(t, "ghost to leave presence", func() bool {
		st, err := ts.node.PresenceStats(context.Background(), "stats:1")
		return err == nil && st.Clients == 1 && st.Users == 1
	})
}

func TestPresenceNotEnabled(t *testing.T) {
	t.Parallel()
	ts := newTestServer(t, historyConfig(10))
	c := ts.client(t)
	for _, cmd := range []string{"presence", "presence_stats"} {
		if m := c.call(protocol.Command{Cmd: cmd, Channel: "plain"}); m.Error == nil || m.Error.Code != protocol.CodeNotEnabled {
			t.Errorf("%s: %+v", cmd, m)
		}
	}
	// A channel outside the configured namespaces is refused.
	if m := c.call(protocol.Command{Cmd: "subscribe", Channel: "nowhere:1"}); m.Error == nil || m.Error.Code != protocol.CodeBadChannel {
		t.Errorf("unknown namespace: %+v", m)
	}
}

// BenchmarkPresence10k measures the presence and presence_stats of a
// channel with 10,000 members (in-memory presence).
func BenchmarkPresence10k(b *testing.B) {
	m := NewMemoryPresence()
	ctx := context.Background()
	for i := range 10000 {
		_ = m.AddPresence(ctx, "big", ClientPresence{Client: fmt.Sprint("c", i), User: fmt.Sprint("u", i%5000), Info: json.RawMessage(`{"name":"x"}`)})
	}
	b.Run("presence", func(b *testing.B) {
		b.ReportAllocs()
		for b.Loop() {
			if p, _ := m.Presence(ctx, "big"); len(p) != 10000 {
				b.Fatal(len(p))
			}
		}
	})
	b.Run("stats", func(b *testing.B) {
		b.ReportAllocs()
		for b.Loop() {
			if st, _ := m.PresenceStats(ctx, "big"); st.Users != 5000 {
				b.Fatal(st)
			}
		}
	})
}
