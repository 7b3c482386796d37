package herald

import (
	"bytes"
	"encoding/json"
	"fmt"
	"math/rand/v2"
	"testing"
	"time"

	"github.com/centrifugal/fdelta"
	"github.com/gorilla/websocket"

	"github.com/heraldhq/herald/protocol"
)

// Overflow policies and delta delivery together: a slow subscriber that
// asked for deltas, under conflate and under drop_oldest, never gets a
// delta whose base it does not hold — a dropped or replaced publication
// turns the deltas queued after it into full frames, and the next one
// sent goes full — and every payload it rebuilds is exactly one that was
// published, the latest of each key last.
func TestOverflowWithDelta(t *testing.T) {
	t.Parallel()
	for _, pol := range []OverflowPolicy{OverflowConflate, OverflowDropOldest} {
		t.Run(pol.String(), func(t *testing.T) {
			t.Parallel()
			ts := overflowServer(t, Namespace{Name: "px", Overflow: pol, HistorySize: 100000, HistoryTTL: time.Minute, Delta: DeltaFossil})
			c := ts.slowClient(t, "/ws")
			var res protocol.SubscribeResult
			m := c.call(protocol.Command{Cmd: "subscribe", Channel: "px:eu", Delta: protocol.DeltaFossil})
			if err := json.Unmarshal(m.Result, &res); m.Error != nil || err != nil || !res.Delta {
				t.Fatalf("subscribe: delta not granted (%+v, %v)", m, err)
			}

			// One key (a key change sends a full publication: deltas chain
			// within a key), a ~2 KB state changing a little per tick: the
			// deltas are small, so most frames queued are deltas.
			const keys = 1
			docs := [keys]*stateDoc{newStateDoc()}
			r := rand.New(rand.NewPCG(1, 2))
			published := map[string]bool{}
			latest := [keys]string{}
			pub := func(i int) {
				k := i % keys
				data := docs[k].tick(r)
				data = append(fmt.Appendf(nil, `{"k":%d,"i":%d,"doc":`, k, i), append(data, '}')...)
				published[string(data)] = true
				latest[k] = string(data)
				mustPublishKey(t, ts.node, "px:eu", data, fmt.Sprint(k))
			}
			var base []byte
			var last uint64
			held := [keys]string{}
			deltas := 0
			readOne := func() {
				op, b := c.read()
				if op == websocket.TextMessage {
					var p protocol.Push
					if err := json.Unmarshal(b, &p); err != nil {
						t.Fatal(err)
					}
					if p.Push == "dropped" {
						return // drop_oldest tells; the next one comes full
					}
					if p.Push != "pub" {
						t.Fatalf("unexpected %s", b)
					}
					base, last = bytes.Clone(p.Data), p.Offset
				} else {
					h, payload, err := protocol.SplitBinary(b)
					if err != nil {
						t.Fatal(err)
					}
					var p protocol.Push
					if err := json.Unmarshal(h, &p); err != nil || !p.Delta {
						t.Fatalf("unexpected binary frame %q", h)
					}
					if base == nil || p.Offset != last+1 {
						t.Fatalf("a delta at offset %d on a base the client does not hold (it holds %d)", p.Offset, last)
					}
					data, err := fdelta.Apply(base, payload)
					if err != nil {
						t.Fatalf("delta at %d: %v", p.Offset, err)
					}
					base, last = data, p.Offset
					deltas++
				}
				if !published[string(base)] {
					t.Fatalf("rebuilt a payload never published at offset %d: %.80q", last, base)
				}
				var v struct{ K int }
				if err := json.Unmarshal(base, &v); err != nil {
					t.Fatal(err)
				}
				held[v.K] = string(base)
			}
			// A client that reads gets deltas: the chain is on before the
			// flood, so the queue the policy acts on holds deltas.
			for i := range 5 {
				pub(i)
				readOne()
			}
			if deltas == 0 {
				t.Fatal("5 publications read one by one and not one delta")
			}
			total := 5 + overflowUntil(t, ts.node, "px", 300, func(i int) { pub(5 + i) })
			for held != latest {
				readOne()
			}
			t.Logf("%d publications, %d read as deltas", total, deltas)
			if ts.node.Stats().SlowConsumers != 0 {
				t.Fatal("the client was cut")
			}
		})
	}
}
