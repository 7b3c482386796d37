package herald

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"log/slog"
	"math"
	"net/http"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/gorilla/websocket"

	"github.com/heraldhq/herald/protocol"
)

func ping(c *testClient) { c.t.Helper(); c.mustOK(protocol.Command{Cmd: "ping"}) }

// errCode is the code of a reply's error, "" for a success.
func errCode(m anyMsg) protocol.Code {
	if m.Error == nil {
		return ""
	}
	return m.Error.Code
}

// TestSetLimitsMaxConnections: lowering MaxConnections below the open
// connections closes none of them and refuses new handshakes with 503;
// raising it admits them again.
func TestSetLimitsMaxConnections(t *testing.T) {
	t.Parallel()
	ts := newTestServer(t, Config{Limits: Limits{MaxConnections: 10}})
	a, b := ts.client(t), ts.client(t)
	ping(a)
	ping(b)
	if err := ts.node.SetLimits(Limits{MaxConnections: 1}); err != nil {
		t.Fatal(err)
	}
	if st, _, _ := dialStatus(t, ts.url+"/ws", nil); st != http.StatusServiceUnavailable {
		t.Fatalf("handshake over the lowered cap: %d, want 503", st)
	}
	ping(a) // the two open connections stay
	ping(b)
	if got := ts.node.Stats().Connections; got != 2 {
		t.Fatalf("%d connections, want the 2 opened before", got)
	}
	if err := ts.node.SetLimits(Limits{MaxConnections: 3}); err != nil {
		t.Fatal(err)
	}
	if st, _, _ := dialStatus(t, ts.url+"/ws", nil); st != http.StatusSwitchingProtocols {
		t.Fatalf("handshake under the raised cap: %d, want 101", st)
	}
}

// TestSetLimitsPerIP: a per-IP cap set while running counts the
// connections the address opened while there was none; removing it
// admits again.
func TestSetLimitsPerIP(t *testing.T) {
	t.Parallel()
	ts := newTestServer(t, Config{Limits: Limits{ConnectRatePerIP: -1}}) // nothing per IP
	a, b := ts.client(t), ts.client(t)
	ping(a)
	ping(b)
	if err := ts.node.SetLimits(Limits{MaxConnectionsPerIP: 2, ConnectRatePerIP: -1}); err != nil {
		t.Fatal(err)
	}
	if st, _, _ := dialStatus(t, ts.url+"/ws", nil); st != http.StatusTooManyRequests {
		t.Fatalf("third connection from the address under a cap of 2: %d, want 429", st)
	}
	ping(a)
	a.ws.Close() // a slot frees up once a is gone
	waitFor(t, "a slot", func() bool { st, _, _ := dialStatus(t, ts.url+"/ws", nil); return st == http.StatusSwitchingProtocols })
	if err := ts.node.SetLimits(Limits{ConnectRatePerIP: -1}); err != nil {
		t.Fatal(err)
	}
	for i := range 3 {
		if st, _, _ := dialStatus(t, ts.url+"/ws", nil); st != http.StatusSwitchingProtocols {
			t.Fatalf("connection %d with the cap removed: %d", i, st)
		}
	}
}

// TestSetLimitsConnectRate: a new connect rate applies to an address that
// already connected under the old one, and turning the cap off and on
// works.
func TestSetLimitsConnectRate(t *testing.T) {
	t.Parallel()
	ts := newTestServer(t, Config{}) // 1,000 per second
	for i := range 3 {
		if st, _, _ := dialStatus(t, ts.url+"/ws", nil); st != http.StatusSwitchingProtocols {
			t.Fatalf("connection %d: %d", i, st)
		}
	}
	// One every 2 seconds, in bursts of 1: this address has a token left
	// from the old burst, then none.
	if err := ts.node.SetLimits(Limits{ConnectRatePerIP: 0.5}); err != nil {
		t.Fatal(err)
	}
	if st, _, _ := dialStatus(t, ts.url+"/ws", nil); st != http.StatusSwitchingProtocols {
		t.Fatalf("first connection at the new rate: %d, want 101", st)
	}
	if st, _, h := dialStatus(t, ts.url+"/ws", nil); st != http.StatusTooManyRequests || h.Get("Retry-After") == "" {
		t.Fatalf("second connection at once at the new rate: %d (Retry-After %q), want 429 with Retry-After", st, h.Get("Retry-After"))
	}
	if err := ts.node.SetLimits(Limits{ConnectRatePerIP: -1}); err != nil {
		t.Fatal(err)
	}
	for i := range 10 {
		if st, _, _ := dialStatus(t, ts.url+"/ws", nil); st != http.StatusSwitchingProtocols {
			t.Fatalf("connection %d with no cap: %d", i, st)
		}
	}
	if err := ts.node.SetLimits(Limits{ConnectRatePerIP: 0.5}); err != nil {
		t.Fatal(err)
	}
	dialStatus(t, ts.url+"/ws", nil) // a full burst of 1 again
	if st, _, _ := dialStatus(t, ts.url+"/ws", nil); st != http.StatusTooManyRequests {
		t.Fatalf("with the cap back on: %d, want 429", st)
	}
}

// TestSetLimitsPerUser: a lower per-user cap closes none of the user's
// connections; the next one is refused, at the handshake and at connect.
func TestSetLimitsPerUser(t *testing.T) {
	t.Parallel()
	cfg := authConfig(t)
	cfg.MaxConnectionsPerUser = 5
	ts := newTestServer(t, cfg)
	bearer := http.Header{"Authorization": {"Bearer " + userToken(t, "gus", time.Hour)}}
	a, b := ts.dial(t, "/ws", bearer), ts.dial(t, "/ws", bearer)
	ping(a)
	ping(b)
	if err := ts.node.SetLimits(Limits{MaxConnectionsPerUser: 1}); err != nil {
		t.Fatal(err)
	}
	if st, _, _ := dialStatus(t, ts.url+"/ws", bearer); st != http.StatusTooManyRequests {
		t.Fatalf("third connection of the user: %d, want 429", st)
	}
	c := ts.client(t)
	if m := c.connect(userToken(t, "gus", time.Hour)); errCode(m) != protocol.CodeLimitExceeded {
		t.Fatalf("connect as the user over the cap: %+v, want limit_exceeded", m)
	}
	ping(a)
	ping(b)
}

// TestSetLimitsChannels: a lower channel cap drops no subscription; the
// connection subscribes again once it is under the cap.
func TestSetLimitsChannels(t *testing.T) {
	t.Parallel()
	ts := newTestServer(t, Config{Limits: Limits{MaxChannelsPerConnection: 3}})
	c := ts.client(t)
	c.subscribe("a")
	c.subscribe("b")
	if err := ts.node.SetLimits(Limits{MaxChannelsPerConnection: 1}); err != nil {
		t.Fatal(err)
	}
	if m := c.call(protocol.Command{Cmd: "subscribe", Channel: "c"}); errCode(m) != protocol.CodeLimitExceeded {
		t.Fatalf("subscribe over the lowered cap: %+v, want limit_exceeded", m)
	}
	if _, err := ts.node.Publish(context.Background(), "b", []byte(`"still here"`)); err != nil {
		t.Fatal(err)
	}
	if m := c.readJSON(); m.Push != protocol.PushPub || m.Channel != "b" || string(m.Data) != `"still here"` {
		t.Fatalf("the subscription made before: got %+v", m)
	}
	c.mustOK(protocol.Command{Cmd: "unsubscribe", Channel: "a"})
	if m := c.call(protocol.Command{Cmd: "subscribe", Channel: "c"}); errCode(m) != protocol.CodeLimitExceeded {
		t.Fatalf("subscribe at the cap: %+v, want limit_exceeded", m)
	}
	c.mustOK(protocol.Command{Cmd: "unsubscribe", Channel: "b"})
	c.subscribe("c")
}

// TestSetLimitsDefaults: zero and negative fields mean what they mean in
// Config, whether the node gets them from New or from SetLimits; a rate
// that is not a finite number is refused and changes nothing.
func TestSetLimitsDefaults(t *testing.T) {
	t.Parallel()
	cases := []struct{ in, want Limits }{
		{Limits{}, Limits{MaxConnections: 100_000, MaxConnectionsPerUser: 100, ConnectRatePerIP: 1000, MaxChannelsPerConnection: 256}},
		{
			// Negative is no cap, for every limit (NoLimit).
			Limits{MaxConnections: -1, MaxConnectionsPerUser: -2, MaxConnectionsPerIP: -3, ConnectRatePerIP: -4, MaxChannelsPerConnection: -5},
			Limits{MaxConnections: -1, MaxConnectionsPerUser: -2, MaxConnectionsPerIP: -3, ConnectRatePerIP: -4, MaxChannelsPerConnection: -5},
		},
		{
			Limits{MaxConnections: 7, MaxConnectionsPerUser: 3, MaxConnectionsPerIP: 2, ConnectRatePerIP: 0.5, MaxChannelsPerConnection: 9},
			Limits{MaxConnections: 7, MaxConnectionsPerUser: 3, MaxConnectionsPerIP: 2, ConnectRatePerIP: 0.5, MaxChannelsPerConnection: 9},
		},
	}
	for _, tc := range cases {
		l := tc.in
		cfg := Config{Logger: nopLogger(), Limits: l}
		fromNew, err := New(cfg)
		if err != nil {
			t.Fatal(err)
		}
		if got := fromNew.Limits(); got != tc.want {
			t.Errorf("New with %+v: limits %+v, want %+v", l, got, tc.want)
		}
		if wd := cfg.withDefaults(); wd.Limits != tc.want {
			got := wd.Limits
			t.Errorf("Config.withDefaults with %+v: limits %+v, want %+v", l, got, tc.want)
		}
		set, err := New(Config{Logger: nopLogger(), Limits: Limits{MaxConnections: 1}})
		if err != nil {
			t.Fatal(err)
		}
		if err := set.SetLimits(l); err != nil {
			t.Fatal(err)
		}
		if got := set.Limits(); got != tc.want {
			t.Errorf("SetLimits(%+v): limits %+v, want %+v", l, got, tc.want)
		}
	}

	n, err := New(Config{Logger: nopLogger(), Limits: Limits{MaxConnections: 5}})
	if err != nil {
		t.Fatal(err)
	}
	before := n.Limits()
	for _, r := range []float64{math.NaN(), math.Inf(1), math.Inf(-1)} {
		if err := n.SetLimits(Limits{MaxConnections: 1, ConnectRatePerIP: r}); err == nil {
			t.Errorf("SetLimits with ConnectRatePerIP %v: no error", r)
		}
		if got := n.Limits(); got != before {
			t.Errorf("a refused SetLimits changed the limits: %+v, were %+v", got, before)
		}
		if _, err := New(Config{Logger: nopLogger(), Limits: Limits{ConnectRatePerIP: r}}); err == nil {
			t.Errorf("New with ConnectRatePerIP %v: no error", r)
		}
	}
}

// TestSetAllowedOrigins: a browser origin added while running can open
// connections (protocol and raw), one removed cannot, connections already
// open stay, and an invalid list changes nothing.
func TestSetAllowedOrigins(t *testing.T) {
	t.Parallel()
	ts := newTestServer(t, Config{})
	app := http.Header{"Origin": {"https://app.example.com"}}
	for _, path := range []string{"/ws", "/ws/raw?channel=x"} {
		if st, _, _ := dialStatus(t, ts.url+path, app); st != http.StatusForbidden {
			t.Fatalf("%s from another origin before: %d, want 403", path, st)
		}
	}
	if err := ts.node.SetAllowedOrigins([]string{"https://*.example.com"}, false); err != nil {
		t.Fatal(err)
	}
	for _, path := range []string{"/ws", "/ws/raw?channel=x"} {
		if st, _, _ := dialStatus(t, ts.url+path, app); st != http.StatusSwitchingProtocols {
			t.Fatalf("%s from an origin allowed since: %d, want 101", path, st)
		}
	}
	open := ts.dial(t, "/ws", app)
	ping(open)

	if err := ts.node.SetAllowedOrigins([]string{"https://app.*.com"}, false); err == nil {
		t.Fatal("a wildcard that is not the first label: no error")
	}
	if st, _, _ := dialStatus(t, ts.url+"/ws", app); st != http.StatusSwitchingProtocols {
		t.Fatalf("after an invalid list: %d, want 101 (unchanged)", st)
	}

	if err := ts.node.SetAllowedOrigins(nil, false); err != nil {
		t.Fatal(err)
	}
	if st, _, _ := dialStatus(t, ts.url+"/ws", app); st != http.StatusForbidden {
		t.Fatalf("from an origin removed since: %d, want 403", st)
	}
	ping(open) // the connection opened while it was allowed stays

	if err := ts.node.SetAllowedOrigins(nil, true); err != nil {
		t.Fatal(err)
	}
	if st, _, _ := dialStatus(t, ts.url+"/ws", http.Header{"Origin": {"https://evil.test"}}); st != http.StatusSwitchingProtocols {
		t.Fatalf("any origin: %d, want 101", st)
	}
}

// TestSetNamespaces: new calls follow the new namespaces; subscriptions
// made before stay as they were made.
func TestSetNamespaces(t *testing.T) {
	t.Parallel()
	ctx := context.Background()

	t.Run("new rules", func(t *testing.T) {
		t.Parallel()
		ts := newTestServer(t, Config{Namespaces: []Namespace{{Name: "chat"}}})
		c := ts.client(t)
		c.subscribe("chat:a")
		if m := c.call(protocol.Command{Cmd: "history", Channel: "chat:a"}); errCode(m) != protocol.CodeNotEnabled {
			t.Fatalf("history before: %+v, want not_enabled", m)
		}
		if m := c.call(protocol.Command{Cmd: "subscribe", Channel: "news:x"}); errCode(m) != protocol.CodeBadChannel {
			t.Fatalf("subscribe to an unknown namespace: %+v, want bad_channel", m)
		}
		err := ts.node.SetNamespaces([]Namespace{
			{Name: "chat", HistorySize: 10},
			{Name: "news", AllowSubscribe: PermNobody},
		})
		if err != nil {
			t.Fatal(err)
		}
		res, err := ts.node.Publish(ctx, "chat:a", []byte(`"kept"`))
		if err != nil || res.Offset != 1 {
			t.Fatalf("publish to a namespace that gained history: %+v %v, want offset 1", res, err)
		}
		if m := c.readJSON(); m.Push != protocol.PushPub || string(m.Data) != `"kept"` {
			t.Fatalf("the subscriber from before: got %+v", m)
		}
		m := c.call(protocol.Command{Cmd: "history", Channel: "chat:a"})
		var h protocol.HistoryResult
		if m.Error != nil || json.Unmarshal(m.Result, &h) != nil || len(h.Publications) != 1 {
			t.Fatalf("history after: %+v, want the one publication", m)
		}
		if m := c.call(protocol.Command{Cmd: "subscribe", Channel: "news:x"}); errCode(m) != protocol.CodePermission {
			t.Fatalf("subscribe where nobody may: %+v, want permission_denied", m)
		}

		// Invalid namespaces change nothing.
		for _, bad := range [][]Namespace{{{Name: "chat"}, {Name: "chat"}}, {{Name: "a:b"}}, {{Name: "x", AllowPublish: "everyone"}}} {
			if err := ts.node.SetNamespaces(bad); err == nil {
				t.Fatalf("SetNamespaces(%+v): no error", bad)
			}
		}
		if res, err := ts.node.Publish(ctx, "chat:a", []byte(`2`)); err != nil || res.Offset != 2 {
			t.Fatalf("publish after invalid namespaces: %+v %v, want offset 2 (history kept)", res, err)
		}
	})

	t.Run("namespace removed", func(t *testing.T) {
		t.Parallel()
		ts := newTestServer(t, Config{Namespaces: []Namespace{{Name: "chat"}}})
		c := ts.client(t)
		c.subscribe("chat:a")
		if err := ts.node.SetNamespaces([]Namespace{{Name: "other"}}); err != nil {
			t.Fatal(err)
		}
		if m := c.call(protocol.Command{Cmd: "subscribe", Channel: "chat:b"}); errCode(m) != protocol.CodeBadChannel {
			t.Fatalf("subscribe in a removed namespace: %+v, want bad_channel", m)
		}
		if _, err := ts.node.Publish(ctx, "chat:a", []byte(`1`)); !errors.Is(err, ErrBadChannel) {
			t.Fatalf("publish in a removed namespace: %v, want ErrBadChannel", err)
		}
		if m := c.call(protocol.Command{Cmd: "publish", Channel: "chat:a", Data: json.RawMessage(`1`)}); errCode(m) != protocol.CodeBadChannel {
			t.Fatalf("client publish in a removed namespace: %+v, want bad_channel", m)
		}
		// The subscription is still there: unsubscribe finds it.
		c.mustOK(protocol.Command{Cmd: "unsubscribe", Channel: "chat:a"})
	})

	t.Run("presence leaves as it joined", func(t *testing.T) {
		t.Parallel()
		ts := newTestServer(t, Config{Namespaces: []Namespace{{Name: "room", JoinLeave: true}}})
		a, b := ts.client(t), ts.client(t)
		a.subscribe("room:1")
		if m := a.readJSON(); m.Push != protocol.PushJoin { // its own join
			t.Fatalf("a got %+v, want its join", m)
		}
		if err := ts.node.SetNamespaces([]Namespace{{Name: "room"}}); err != nil { // no presence any more
			t.Fatal(err)
		}
		b.subscribe("room:1") // made without presence
		if _, err := ts.node.Presence(ctx, "room:1"); !errors.Is(err, ErrNotEnabled) {
			t.Fatalf("presence after it was turned off: %v, want ErrNotEnabled", err)
		}
		a.mustOK(protocol.Command{Cmd: "unsubscribe", Channel: "room:1"})
		// a joined with presence and join/leave: it leaves the presence
		// set, and b hears it leave.
		if m := b.readJSON(); m.Push != protocol.PushLeave || m.Channel != "room:1" {
			t.Fatalf("b got %+v, want a's leave", m)
		}
		if set, err := ts.node.presence.Presence(ctx, "room:1"); err != nil || len(set) != 0 {
			t.Fatalf("presence set after a left: %v %v, want empty", set, err)
		}

		// And the other way: b, subscribed without presence, leaves
		// without a leave event once presence is back on.
		if err := ts.node.SetNamespaces([]Namespace{{Name: "room", JoinLeave: true}}); err != nil {
			t.Fatal(err)
		}
		a.subscribe("room:1") // with presence again: a join, which b receives
		if m := b.readJSON(); m.Push != protocol.PushJoin {
			t.Fatalf("b got %+v, want a's join", m)
		}
		b.mustOK(protocol.Command{Cmd: "unsubscribe", Channel: "room:1"})
		if _, err := ts.node.Publish(ctx, "room:1", []byte(`"marker"`)); err != nil {
			t.Fatal(err)
		}
		for m := a.readJSON(); string(m.Data) != `"marker"`; m = a.readJSON() { // a's own join first
			if m.Push == protocol.PushLeave {
				t.Fatalf("a got %+v: a leave of b, who never joined", m)
			}
		}
		set, err := ts.node.Presence(ctx, "room:1")
		if err != nil || len(set) != 1 {
			t.Fatalf("presence: %v %v, want a alone", set, err)
		}
	})

	t.Run("raw client of a removed namespace", func(t *testing.T) {
		t.Parallel()
		ts := newTestServer(t, Config{Namespaces: []Namespace{{Name: "chat"}}})
		sub := ts.client(t)
		sub.subscribe("chat:r")
		raw := ts.dial(t, "/ws/raw?channel=chat:r", nil)
		if err := raw.ws.WriteMessage(websocket.TextMessage, []byte(`"before"`)); err != nil {
			t.Fatal(err)
		}
		if m := sub.readJSON(); string(m.Data) != `"before"` {
			t.Fatalf("subscriber got %+v", m)
		}
		if err := ts.node.SetNamespaces([]Namespace{{Name: "other"}}); err != nil {
			t.Fatal(err)
		}
		if err := raw.ws.WriteMessage(websocket.TextMessage, []byte(`"after"`)); err != nil {
			t.Fatal(err)
		}
		if ce := raw.expectClose(); ce.Code != websocket.ClosePolicyViolation {
			t.Fatalf("raw client publishing in a removed namespace: close %d, want 1008", ce.Code)
		}
		// Nothing reached the subscriber: the next thing it gets is the
		// reply to a ping.
		ping(sub)
	})
}

// TestSetSettingsAllOrNothing: SetSettings with one invalid part changes
// none of the others.
func TestSetSettingsAllOrNothing(t *testing.T) {
	t.Parallel()
	ts := newTestServer(t, Config{})
	before := ts.node.Limits()
	app := http.Header{"Origin": {"https://app.example.com"}}
	for _, s := range []Settings{
		{Limits: Limits{MaxConnections: 1}, AllowedOrigins: []string{"https://app.example.com"}, Namespaces: []Namespace{{Name: "a:b"}}},
		{Limits: Limits{MaxConnections: 1}, AllowedOrigins: []string{"app.example.com"}, Namespaces: []Namespace{{Name: "chat"}}},
		{Limits: Limits{MaxConnections: 1, ConnectRatePerIP: math.NaN()}, AllowedOrigins: []string{"https://app.example.com"}, Namespaces: []Namespace{{Name: "chat"}}},
	} {
		if err := ts.node.SetSettings(s); err == nil {
			t.Fatalf("SetSettings(%+v): no error", s)
		}
		if got := ts.node.Limits(); got != before {
			t.Fatalf("limits changed by a failed SetSettings: %+v, were %+v", got, before)
		}
		if st, _, _ := dialStatus(t, ts.url+"/ws", app); st != http.StatusForbidden {
			t.Fatalf("origins changed by a failed SetSettings: %d, want 403", st)
		}
		c := ts.client(t)
		c.subscribe("anything") // no namespaces: every channel is accepted
	}
	// A valid one changes all three.
	err := ts.node.SetSettings(Settings{Limits: Limits{MaxChannelsPerConnection: 1}, AllowedOrigins: []string{"https://app.example.com"},
		Namespaces: []Namespace{{Name: "chat"}}})
	if err != nil {
		t.Fatal(err)
	}
	c := ts.dial(t, "/ws", app)
	if m := c.call(protocol.Command{Cmd: "subscribe", Channel: "anything"}); errCode(m) != protocol.CodeBadChannel {
		t.Fatalf("subscribe outside the new namespaces: %+v, want bad_channel", m)
	}
	c.subscribe("chat:1")
	if m := c.call(protocol.Command{Cmd: "subscribe", Channel: "chat:2"}); errCode(m) != protocol.CodeLimitExceeded {
		t.Fatalf("second channel under a cap of 1: %+v, want limit_exceeded", m)
	}
}

// TestSetSettingsConcurrent changes the settings over and over while
// clients connect, subscribe, publish and read history and presence, for
// the race detector; every reply must be a success or an error that one
// of the two configurations explains.
func TestSetSettingsConcurrent(t *testing.T) {
	t.Parallel()
	ts := newTestServer(t, Config{Namespaces: []Namespace{{Name: "chat"}}, AllowAnyOrigin: true})
	configs := []Settings{
		{Limits: Limits{MaxConnections: 1000, MaxChannelsPerConnection: 2, ConnectRatePerIP: -1}, AllowAnyOrigin: true,
			Namespaces: []Namespace{{Name: "chat", HistorySize: 5, Presence: true}}},
		{Limits: Limits{MaxConnections: 500, MaxChannelsPerConnection: 1, MaxConnectionsPerIP: 400, ConnectRatePerIP: 10_000},
			AllowedOrigins: []string{"https://*.example.com"}, Namespaces: []Namespace{{Name: "chat", JoinLeave: true}, {Name: "news"}}},
	}
	stop := make(chan struct{})
	var setter sync.WaitGroup
	setter.Go(func() {
		for i := 0; ; i++ {
			select {
			case <-stop:
				return
			default:
			}
			if err := ts.node.SetSettings(configs[i%2]); err != nil {
				t.Errorf("SetSettings: %v", err)
				return
			}
			if ts.node.SetSettings(Settings{Namespaces: []Namespace{{Name: "bad:name"}}}) == nil {
				t.Error("invalid SetSettings: no error")
				return
			}
			_ = ts.node.SetLimits(configs[(i+1)%2].Limits)
			_ = ts.node.SetAllowedOrigins(configs[(i+1)%2].AllowedOrigins, configs[(i+1)%2].AllowAnyOrigin)
			_ = ts.node.SetNamespaces(configs[i%2].Namespaces)
			time.Sleep(100 * time.Microsecond)
		}
	})

	explained := map[protocol.Code]bool{"": true, protocol.CodeLimitExceeded: true, protocol.CodeNotEnabled: true, protocol.CodeAlreadySub: true}
	var clients sync.WaitGroup
	for w := range 4 {
		clients.Go(func() {
			d := websocket.Dialer{Subprotocols: []string{protocol.Subprotocol}, HandshakeTimeout: 5 * time.Second}
			for i := range 15 {
				// Every combination of the two configurations admits it.
				ws, _, err := d.Dial(ts.url+"/ws", http.Header{"Origin": {"https://app.example.com"}})
				if err != nil {
					t.Errorf("dial: %v", err)
					return
				}
				cmds := []string{
					`{"id":1,"cmd":"subscribe","channel":"chat:x"}`,
					`{"id":2,"cmd":"subscribe","channel":"chat:y"}`,
					fmt.Sprintf(`{"id":3,"cmd":"publish","channel":"chat:x","data":"%d-%d"}`, w, i),
					`{"id":4,"cmd":"history","channel":"chat:x"}`,
					`{"id":5,"cmd":"presence","channel":"chat:x"}`,
					`{"id":6,"cmd":"unsubscribe","channel":"chat:x"}`,
				}
				for _, cmd := range cmds {
					if err := ws.WriteMessage(websocket.TextMessage, []byte(cmd)); err != nil {
						t.Errorf("write: %v", err)
						break
					}
					for { // skip pushes until the reply
						_ = ws.SetReadDeadline(time.Now().Add(5 * time.Second))
						_, b, err := ws.ReadMessage()
						if err != nil {
							t.Errorf("read: %v", err)
							break
						}
						var m anyMsg
						if err := json.Unmarshal(b, &m); err != nil {
							t.Errorf("bad JSON %q", b)
							break
						}
						if m.Push != "" {
							continue
						}
						if code := errCode(m); !explained[code] && !(code == protocol.CodeNotSubscribed && strings.Contains(cmd, "unsubscribe")) {
							t.Errorf("%s: unexplained error %+v", cmd, m.Error)
						}
						break
					}
				}
				ws.Close()
			}
		})
	}
	clients.Wait()
	close(stop)
	setter.Wait()

	// The last call wins, whole.
	want := Limits{MaxConnections: 42, MaxConnectionsPerUser: 100, ConnectRatePerIP: 1000, MaxChannelsPerConnection: 256}
	if err := ts.node.SetSettings(Settings{Limits: Limits{MaxConnections: 42}}); err != nil {
		t.Fatal(err)
	}
	if got := ts.node.Limits(); got != want {
		t.Fatalf("limits %+v, want %+v", got, want)
	}
}

// TestSetLimitsMessageRate: a new message rate paces the connections
// opened after it, with its own figure in the error; a connection opened
// before keeps the rate it was admitted with.
func TestSetLimitsMessageRate(t *testing.T) {
	t.Parallel()
	ts := newTestServer(t, Config{})
	before := ts.client(t)
	if err := ts.node.SetLimits(Limits{MessageRate: 0.5, MessageBurst: 2}); err != nil {
		t.Fatal(err)
	}
	after := ts.client(t)
	ping(after)
	ping(after)
	m := after.call(protocol.Command{Cmd: "ping"})
	if errCode(m) != protocol.CodeRateLimited || !strings.Contains(m.Error.Message, "more than 0.5 messages per second") {
		t.Fatalf("third message of a connection opened after the change: %+v, want rate_limited at 0.5/s", m)
	}
	for range 5 {
		ping(before) // no cap when it connected
	}
	if err := ts.node.SetLimits(Limits{}); err != nil {
		t.Fatal(err)
	}
	if got := ts.node.Limits(); got.MessageRate != 0 || got.MessageBurst != 0 {
		t.Fatalf("limits back to the defaults: rate %g, burst %d", got.MessageRate, got.MessageBurst)
	}
	fresh := ts.client(t)
	for range 5 {
		ping(fresh)
	}
}

// TestAnyNamespace: the "*" namespace configures every channel whose
// namespace is not listed, so none is refused, while listed namespaces keep
// their own settings.
func TestAnyNamespace(t *testing.T) {
	t.Parallel()
	ctx := context.Background()
	ts := newTestServer(t, Config{Namespaces: []Namespace{
		{Name: "chat", HistorySize: 10, Presence: true},
		{Name: AnyNamespace, HistorySize: 2},
	}})
	c := ts.client(t)
	for _, ch := range []string{"chat:a", "news:x", "lobby"} {
		c.subscribe(ch)
	}
	r := ts.client(t) // reads history, subscribed to nothing: no pushes between replies
	// chat keeps its own settings: presence, and up to 10 publications.
	if _, err := ts.node.Presence(ctx, "chat:a"); err != nil {
		t.Fatalf("presence in chat: %v", err)
	}
	for _, ch := range []string{"news:x", "lobby"} {
		if _, err := ts.node.Presence(ctx, ch); !errors.Is(err, ErrNotEnabled) {
			t.Fatalf("presence in %s (from \"*\": none): %v, want ErrNotEnabled", ch, err)
		}
	}
	for _, ch := range []string{"chat:a", "news:x", "lobby"} {
		for i := range 3 {
			if _, err := ts.node.Publish(ctx, ch, []byte(strconv.Itoa(i))); err != nil {
				t.Fatalf("publish to %s: %v", ch, err)
			}
		}
	}
	for ch, want := range map[string]int{"chat:a": 3, "news:x": 2, "lobby": 2} {
		m := r.call(protocol.Command{Cmd: "history", Channel: ch})
		var h protocol.HistoryResult
		if m.Error != nil || json.Unmarshal(m.Result, &h) != nil || len(h.Publications) != want {
			t.Fatalf("history of %s: %+v, want %d publications", ch, m, want)
		}
	}

	// Without "*", the same unlisted channels are refused again.
	if err := ts.node.SetNamespaces([]Namespace{{Name: "chat"}}); err != nil {
		t.Fatal(err)
	}
	if m := r.call(protocol.Command{Cmd: "subscribe", Channel: "other:y"}); errCode(m) != protocol.CodeBadChannel {
		t.Fatalf("subscribe to an unlisted namespace without \"*\": %+v, want bad_channel", m)
	}
	for _, bad := range [][]Namespace{{{Name: AnyNamespace}, {Name: AnyNamespace}}, {{Name: "a*"}}} {
		if err := ts.node.SetNamespaces(bad); err == nil {
			t.Fatalf("SetNamespaces(%+v): no error", bad)
		}
	}
}

// A channel whose namespace is not listed falls to "*" silently, so a typo
// ("privte") would get "*"'s permissions: the first channel of each such
// namespace is logged, once, when other namespaces are configured. With
// "*" alone every namespace falls to it on purpose, and nothing is logged.
func TestAnyNamespaceFallbackWarned(t *testing.T) {
	t.Parallel()
	var logs syncBuffer
	n, err := New(Config{Logger: slog.New(slog.NewTextHandler(&logs, &slog.HandlerOptions{Level: slog.LevelDebug})), Namespaces: []Namespace{
		{Name: "private", AllowSubscribe: PermGranted},
		{Name: AnyNamespace},
	}})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { n.Shutdown(context.Background()) })
	for _, ch := range []string{"private:a", "privte:a", "privte:b", "lobby", "news:x", "lobby"} {
		if err := n.CheckChannel(ch); err != nil {
			t.Fatalf("CheckChannel(%q): %v", ch, err)
		}
	}
	out := logs.String()
	for name, want := range map[string]int{`namespace=privte`: 1, `namespace=""`: 1, `namespace=news`: 1, `namespace=private`: 0} {
		if got := strings.Count(out, name+" "); got != want {
			t.Errorf("%s logged %d times, want %d:\n%s", name, got, want, out)
		}
	}
	if !strings.Contains(out, `\"*\"`) {
		t.Errorf("the warning does not name \"*\":\n%s", out)
	}
	// A likely typo of a configured name is a warning; other names are
	// what "*" is for, logged at debug level.
	for _, line := range strings.Split(out, "\n") {
		typo := strings.Contains(line, "namespace=privte ")
		if (typo || strings.Contains(line, "namespace=news ")) && strings.Contains(line, "level=WARN") != typo {
			t.Errorf("wrong level: %s", line)
		}
	}

	// Past maxFallbackWarnings names, no more are recorded or logged.
	logs.mu.Lock()
	logs.buf.Reset()
	logs.mu.Unlock()
	for i := range maxFallbackWarnings + 10 {
		_ = n.CheckChannel(fmt.Sprintf("ns%d:x", i))
	}
	if got := strings.Count(logs.String(), "namespace=ns"); got > maxFallbackWarnings+1 {
		t.Errorf("%d lines for %d names, want at most %d", got, maxFallbackWarnings+10, maxFallbackWarnings+1)
	}
	if strings.Contains(logs.String(), fmt.Sprintf("namespace=ns%d ", maxFallbackWarnings+5)) {
		t.Error("a name past the bound was logged")
	}

	logs.mu.Lock()
	logs.buf.Reset()
	logs.mu.Unlock()
	if err := n.SetNamespaces([]Namespace{{Name: AnyNamespace}}); err != nil {
		t.Fatal(err)
	}
	if err := n.CheckChannel("privte:a"); err != nil || logs.String() != "" {
		t.Fatalf("with \"*\" alone: %v, logged:\n%s", err, logs.String())
	}
}

// A hook limited to "*" would match no channel (hookOn compares names):
// an authorization hook silently off. New refuses it.
func TestAnyNamespaceInHookNamespacesRefused(t *testing.T) {
	t.Parallel()
	sub := func(context.Context, *SubscribeEvent) (*SubscribeReply, error) { return nil, nil }
	pub := func(context.Context, *PublishEvent) (*PublishReply, error) { return nil, nil }
	for _, h := range []Hooks{
		{Subscribe: sub, SubscribeNamespaces: []string{"chat", AnyNamespace}},
		{Publish: pub, PublishNamespaces: []string{AnyNamespace}},
	} {
		_, err := New(Config{Hooks: h})
		if err == nil || !strings.Contains(err.Error(), `"*"`) || !strings.Contains(err.Error(), "nil") {
			t.Fatalf("New with \"*\" in a hook's namespaces: %v, want an error saying to use nil", err)
		}
	}
	n, err := New(Config{Hooks: Hooks{Subscribe: sub, SubscribeNamespaces: []string{"", "chat"}}})
	if err != nil {
		t.Fatalf("namespaces without \"*\": %v", err)
	}
	n.Shutdown(context.Background())
}
