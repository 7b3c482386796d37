package herald

import (
	"context"
	"encoding/json"
	"fmt"
	"sync/atomic"
	"testing"

	"github.com/heraldhq/herald/internal/wsframe"
	"github.com/heraldhq/herald/protocol"
)

// A Pusher presence subscriber is never sent a member_added for a user its
// subscription_succeeded already listed, nor a member_removed for one it
// does not have: pusher-js would emit pusher:member_added (Echo's joining)
// for a member already in here. Two members subscribing back to back
// raced: the first's join is published after its own answer, and the
// second's snapshot could list it and then get its join too (1 CI run in
// 3 of TestPusherPresenceAndClientEvents).
func TestPusherMemberEventsMatchSnapshot(t *testing.T) {
	t.Parallel()
	ts := pusherServer(t)
	for round := range 20 {
		ch := fmt.Sprintf("presence-r%d", round)
		a, b, c := ts.pusher(t), ts.pusher(t), ts.pusher(t)
		views := map[*pusherClient]map[string]bool{}
		ask := func(p *pusherClient, user string) {
			data := fmt.Sprintf(`{"user_id":%q}`, user)
			p.send("pusher:subscribe", "", map[string]any{"channel": ch, "channel_data": data,
				"auth": PusherChannelAuth(testApp, p.socketID, ch, data)})
		}
		snapshot := func(p *pusherClient) {
			f := p.expect("pusher_internal:subscription_succeeded")
			var d struct {
				Presence struct{ IDs []string } `json:"presence"`
			}
			if err := json.Unmarshal([]byte(f.str(t)), &d); err != nil {
				t.Fatal(err)
			}
			views[p] = map[string]bool{}
			for _, id := range d.Presence.IDs {
				views[p][id] = true
			}
		}
		// Both at once: each one's snapshot may or may not list the
		// other, and its join may come before or after the other's.
		ask(a, "alice")
		ask(b, "bob")
		snapshot(a)
		snapshot(b)
		// The marker: a and b read until carol's join. (The order of
		// alice's, bob's and carol's joins is not fixed: each is published
		// by its own subscribe.)
		ask(c, "carol")
		snapshot(c)
		for _, p := range []*pusherClient{a, b} {
			for !views[p]["carol"] {
				f := p.read()
				var m struct {
					UserID string `json:"user_id"`
				}
				if err := json.Unmarshal([]byte(f.str(t)), &m); err != nil {
					t.Fatal(err)
				}
				switch f.Event {
				case "pusher_internal:member_added":
					if views[p][m.UserID] {
						t.Fatalf("round %d: member_added for %s, already a member: %v", round, m.UserID, views[p])
					}
					views[p][m.UserID] = true
				case "pusher_internal:member_removed":
					if !views[p][m.UserID] {
						t.Fatalf("round %d: member_removed for %s, not a member: %v", round, m.UserID, views[p])
					}
					delete(views[p], m.UserID)
				default:
					t.Fatalf("round %d: unexpected %+v", round, f)
				}
			}
		}
		for _, p := range []*pusherClient{a, b, c} {
			p.ws.Close()
		}
	}
}

// The filter itself: events held until the snapshot is sent are replayed
// against it; after it, only changes pass.
func TestPusherMembersFilter(t *testing.T) {
	t.Parallel()
	ts := newTestServer(t, Config{})
	cl := ts.client(t)
	var c *conn
	waitFor(t, "the connection", func() bool { // registered just after the 101
		ts.node.forEachConn(func(x *conn) { c = x })
		return c != nil
	})
	join := func(u string) *Publication {
		return &Publication{Kind: KindJoin, Presence: &ClientPresence{Client: "x", User: u}}
	}
	leave := func(u string) *Publication {
		return &Publication{Kind: KindLeave, Presence: &ClientPresence{Client: "x", User: u}}
	}
	var m pusherMembers
	// Before the snapshot: held, not sent.
	for _, p := range []*Publication{join("alice"), join("bob"), leave("dave")} {
		if m.admit(p, c.frame(wsframe.OpText, fmt.Appendf(nil, `{"push":%q}`, p.Presence.User))) {
			t.Fatalf("%v of %s sent before the snapshot", p.Kind, p.Presence.User)
		}
	}
	// The snapshot lists alice: of the held, only bob's join is sent.
	m.ready(c, []string{"alice"})
	if got := cl.readJSON(); got.Push != "bob" {
		t.Fatalf("replayed %+v, want bob's join", got)
	}
	for _, tc := range []struct {
		p    *Publication
		want bool
	}{
		{join("alice"), false}, {join("bob"), false}, {join("carol"), true},
		{leave("dave"), false}, {leave("bob"), true}, {leave("bob"), false}, {join("bob"), true},
	} {
		if got := m.admit(tc.p, nil); got != tc.want {
			t.Fatalf("%v of %s: sent %v, want %v", tc.p.Kind, tc.p.Presence.User, got, tc.want)
		}
	}
	cl.mustOK(protocol.Command{Cmd: "ping"}) // nothing else was queued before the reply
}

// historyHook is a MemoryBroker that runs after (once, when set) after a
// History read: what it publishes reaches a subscriber while its subscribe
// still buffers the live stream (subscribeCheckedAs's recovery buffer).
type historyHook struct {
	*MemoryBroker
	after atomic.Pointer[func()]
}

func (b *historyHook) History(ctx context.Context, channel string, opts HistoryOptions) (HistoryResult, error) {
	res, err := b.MemoryBroker.History(ctx, channel, opts)
	if f := b.after.Swap(nil); f != nil {
		(*f)()
	}
	return res, err
}

// Events buffered while a Pusher presence subscriber's subscribe reads
// history (a presence-cache channel always keeps some) pass the same
// filters as live ones: the member filter (no member_added for a user the
// snapshot listed) and the exclusion of its own socket.
func TestPusherBufferedEventsFiltered(t *testing.T) {
	t.Parallel()
	hb := &historyHook{MemoryBroker: NewMemoryBroker()}
	ts := newTestServer(t, Config{PusherApps: []PusherApp{testApp}, Broker: hb})
	const ch = "presence-cache-room"
	hch := testApp.HeraldChannel(ch)
	a, b := ts.pusher(t), ts.pusher(t)
	a.subscribe(ch, `{"user_id":"alice"}`)
	ctx := context.Background()
	hook := func() {
		// alice's second tab joins (the snapshot lists alice), and a
		// trigger excludes b.
		ts.node.publishEvent(hch, KindJoin, &ClientPresence{Client: "tab2", User: "alice"})
		if err := ts.node.PusherTrigger(ctx, testApp, []string{ch}, "excluded", "x", b.socketID); err != nil {
			t.Error(err)
		}
	}
	hb.after.Store(&hook)
	if f := b.subscribe(ch, `{"user_id":"bob"}`); !json.Valid([]byte(f.str(t))) {
		t.Fatalf("bad snapshot %+v", f)
	}
	if err := ts.node.PusherTrigger(ctx, testApp, []string{ch}, "marker", "x", ""); err != nil {
		t.Fatal(err)
	}
	for {
		f := b.read()
		switch f.Event {
		case "marker":
			return
		case "pusher:cache_miss":
		default:
			t.Fatalf("b got %+v (user %s)", f, f.UserID)
		}
	}
}
