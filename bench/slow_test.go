package bench

import (
	"context"
	"testing"
	"time"

	"github.com/heraldhq/herald"
)

// TestSlowE2E runs the slow-subscriber benchmark, short, against an
// in-process node with a conflate and a disconnect namespace and small
// socket buffers: under conflate no one is cut and fast subscribers miss
// nothing; under disconnect the slow ones are cut and the fast ones miss
// nothing.
func TestSlowE2E(t *testing.T) {
	url := startNode(t, herald.Config{
		Namespaces:       []herald.Namespace{{Name: "px", Overflow: herald.OverflowConflate}, {Name: "tk"}},
		MaxQueueMessages: 128,
		SocketSendBuffer: 8192,
	})
	phases, err := RunSlow(context.Background(), SlowConfig{
		Targets: []SlowTarget{
			{Name: "conflate", URL: url, Channel: "px:ticks"},
			{Name: "disconnect", URL: url, Channel: "tk:ticks"},
		},
		Subscribers: 20, SlowFraction: 0.25, SlowDivisor: 20, Keys: 10, Rate: 500, Duration: 3 * time.Second, Payload: 200,
	})
	if err != nil {
		t.Fatal(err)
	}
	if len(phases) != 4 {
		t.Fatalf("%d phases, want 4", len(phases))
	}
	for _, p := range phases {
		t.Logf("%+v", p)
		if p.Published == 0 || p.FastCut != 0 || p.FastMissing != 0 {
			t.Errorf("%s (slow %d): published %d, fast cut %d, fast missing %d", p.Target, p.Slow, p.Published, p.FastCut, p.FastMissing)
		}
	}
	conflate, disconnect := phases[1], phases[3]
	if conflate.SlowCut != 0 || conflate.SlowDeliv == 0 {
		t.Errorf("conflate: %d slow subscribers cut, %d deliveries to them", conflate.SlowCut, conflate.SlowDeliv)
	}
	if disconnect.SlowCut != int64(disconnect.Slow) {
		t.Errorf("disconnect: %d of %d slow subscribers cut", disconnect.SlowCut, disconnect.Slow)
	}
}
