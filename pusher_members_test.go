package herald

import (
	"encoding/json"
	"fmt"
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
	ts.node.forEachConn(func(x *conn) { c = x })
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
