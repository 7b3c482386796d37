package herald

import (
	"context"
	"encoding/json"
	"fmt"
	"strings"
	"testing"

	"github.com/heraldhq/herald/protocol"
)

// TestPausedReaderGetsEverything: a client that stops reading while a
// burst larger than the socket buffers is sent to it gets all of it, whole
// and in order, once it reads again. On Linux the writer pool writes until
// the socket is full, possibly in the middle of a frame; the connection's
// own writer then finishes that frame and the rest.
func TestPausedReaderGetsEverything(t *testing.T) {
	t.Parallel()
	ts := newTestServer(t, Config{MaxQueueBytes: 64 << 20})
	paused := ts.client(t)
	paused.subscribe("burst")

	// 2000 x 8 KB = 16 MB: more than loopback socket buffers hold.
	const n = 2000
	pad := strings.Repeat("x", 8000)
	for i := range n {
		if _, err := ts.node.Publish(context.Background(), "burst", fmt.Appendf(nil, `"%06d%s"`, i, pad)); err != nil {
			t.Fatal(err)
		}
	}
	if poolWrites {
		waitFor(t, "a pool write to find the socket full", func() bool { return ts.node.metrics.socketFull.Load() > 0 })
	}
	for i := range n {
		var s string
		if err := json.Unmarshal(paused.readJSON().Data, &s); err != nil {
			t.Fatalf("message %d: %v", i, err)
		}
		if want := fmt.Sprintf("%06d%s", i, pad); s != want {
			t.Fatalf("message %d: got %.20q… (%d bytes), want %.20q…", i, s, len(s), want)
		}
	}
	// The connection's writer handed the role back: later frames flow.
	if _, err := ts.node.Publish(context.Background(), "burst", []byte(`"after"`)); err != nil {
		t.Fatal(err)
	}
	if m := paused.readJSON(); string(m.Data) != `"after"` {
		t.Fatalf("got %s after the burst", m.Data)
	}
	paused.mustOK(protocol.Command{Cmd: "ping"})
}
