package brokertest

import (
	"fmt"
	"testing"

	"github.com/heraldhq/herald"
)

// RunShardOutage runs node A on a broker that spreads channels over
// several links (shards), kills the server behind one of them (srv) and
// checks that only that shard's channels are affected:
//   - A's subscriber of a channel on the killed shard is closed with 4006;
//   - A's subscriber of a channel on another shard is not, and keeps
//     getting publications; A stays ready;
//   - once the server is back (empty), the killed shard's channel works
//     again: a resubscribe with the old position is told the history was
//     reset or recovers, and live delivery goes on.
//
// onSrv reports whether a channel lives on srv.
func RunShardOutage(t *testing.T, newBroker func(t *testing.T) herald.Broker, srv Restartable, onSrv func(channel string) bool) {
	broker := newBroker(t)
	a := startNode(t, broker)
	down, live := "", ""
	for i := 0; down == "" || live == ""; i++ {
		ch := fmt.Sprintf("chat:shard-%d", i)
		if onSrv(ch) {
			if down == "" {
				down = ch
			}
		} else if live == "" {
			live = ch
		}
		if i > 10000 {
			t.Fatal("no channel found on the killed shard and on another")
		}
	}
	t.Logf("channel %s is on the killed shard, %s on another", down, live)
	x := dialNode(t, a, "x")
	y := dialNode(t, a, "y")
	posX := subscribePos(t, x, down, nil)
	posY := subscribePos(t, y, live, nil)
	publishNode(t, a, down, `"d1"`)
	publishNode(t, a, live, `"l1"`)
	expectPubs(t, x, posX.Offset+1, `"d1"`)
	expectPubs(t, y, posY.Offset+1, `"l1"`)

	srv.Kill()
	expectClosed(t, x, herald.CloseResubscribe)
	if err := a.Ready(ctxT(t)); err != nil {
		t.Fatalf("node not ready while only one shard is down: %v", err)
	}
	publishNode(t, a, live, `"l2"`)
	expectPubs(t, y, posY.Offset+2, `"l2"`) // y was not closed
	if _, err := a.Publish(ctxT(t), down, []byte(`"lost"`)); err == nil {
		t.Log("a publish to the killed shard's channel succeeded (the server may not be gone yet)")
	}

	srv.Start(false)
	publishRetry(t, a, down, `"d2"`)
	if sh, ok := broker.(interface{ ShardsHealth() map[string]error }); ok {
		// A subscriber that comes while the shard's link is being restored
		// may be told to resubscribe by the reconnect's check.
		Eventually(t, func() bool {
			for _, err := range sh.ShardsHealth() {
				if err != nil {
					return false
				}
			}
			return true
		}, func() string { return fmt.Sprintf("shards not all up: %v", sh.ShardsHealth()) })
	}
	x2 := dialNode(t, a, "x")
	got := subscribePos(t, x2, down, &position{Offset: posX.Offset + 1, Epoch: posX.Epoch})
	if got.Recovered == nil || (*got.Recovered && got.Epoch != posX.Epoch) {
		t.Fatalf("resubscribe after the shard came back: %+v", got)
	}
	d3 := publishRetry(t, a, down, `"d3"`)
	expectPubs(t, x2, d3.Offset, `"d3"`)
	publishNode(t, a, live, `"l3"`)
	expectPubs(t, y, posY.Offset+3, `"l3"`)
}
