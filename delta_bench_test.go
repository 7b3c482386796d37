package herald

import (
	"context"
	"encoding/base64"
	"encoding/json"
	"fmt"
	"io"
	"math/rand/v2"
	"runtime"
	"sync/atomic"
	"testing"
	"time"

	"github.com/centrifugal/fdelta"
	"github.com/gorilla/websocket"

	"github.com/heraldhq/herald/internal/wsframe"
	"github.com/heraldhq/herald/protocol"
)

// benchStates is a ring of successive ~2 KB JSON states (30 instruments),
// each 3 fields (bid, ask, volume of random instruments) and a sequence
// number away from the one before: a price board ticking.
func benchStates(n int) [][]byte {
	doc, r := newStateDoc(), rand.New(rand.NewPCG(7, 8))
	out := make([][]byte, n)
	for i := range out {
		out[i] = doc.tick(r)
	}
	return out
}

// BenchmarkDelta measures delta delivery over real loopback WebSockets: one
// publication of a ~2 KB JSON state that changes a few fields per tick, to
// S subscribers, paced (the next publication waits until every subscriber
// has read the previous one). delta=false subscribers do not ask for deltas
// (full publications, today's wire); delta=true ones do. It reports
// wire-B/delivery, the bytes each subscriber's socket read per publication
// (frame headers and compression included), and allocs/op per publication:
// with deltas they must not grow with S (the delta is made once per
// publication and framed once per wire form, never per subscriber).
func BenchmarkDelta(b *testing.B) {
	states := benchStates(1024)
	for _, deflate := range []bool{false, true} {
		for _, subs := range []int{1, 100} {
			for _, delta := range []bool{false, true} {
				b.Run(fmt.Sprintf("deflate=%t/subs=%d/delta=%t", deflate, subs, delta), func(b *testing.B) {
					benchDelta(b, states, subs, deflate, delta)
				})
			}
		}
	}
}

func benchDelta(b *testing.B, states [][]byte, subs int, deflate, delta bool) {
	cfg := deltaConfig()
	cfg.Logger, cfg.EnableCompression = nopLogger(), deflate
	cfg.Limits = Limits{ConnectRatePerIP: -1}
	ts := newTestServer(b, cfg)
	var wire atomic.Int64
	ask := ""
	if delta {
		ask = protocol.DeltaFossil
	}
	d := websocket.Dialer{Subprotocols: []string{protocol.Subprotocol}, HandshakeTimeout: 5 * time.Second, EnableCompression: deflate}
	for range subs {
		ws, _, err := d.Dial(ts.url+"/ws", nil)
		if err != nil {
			b.Fatal(err)
		}
		b.Cleanup(func() { ws.Close() })
		c := &testClient{t: b, ws: ws}
		if m := c.call(protocol.Command{Cmd: "subscribe", Channel: "d:bench", Delta: ask}); m.Error != nil {
			b.Fatal(m.Error)
		}
		// From here the socket's bytes are counted, not parsed: the
		// allocations measured are the server's.
		_ = ws.NetConn().SetReadDeadline(time.Time{})
		go func() { _, _ = io.Copy(countingReader{&wire}, ws.NetConn()) }()
	}
	m := &ts.node.metrics
	// A writer counts a frame just after writing it, so the last subscribe
	// replies (read above, not counted in wire) may not be counted yet:
	// wait until the counters stand still before taking their start.
	for prev := uint64(0); prev != m.bytesOut.Load(); {
		prev = m.bytesOut.Load()
		time.Sleep(20 * time.Millisecond)
	}
	// quiet waits until the server wrote frames frames since f0 and the
	// clients read every byte it wrote since the counters' start.
	f0, out0 := m.framesOut.Load(), m.bytesOut.Load()
	quiet := func(frames uint64) {
		deadline := time.Now().Add(time.Minute)
		for m.framesOut.Load()-f0 < frames || uint64(wire.Load()) != m.bytesOut.Load()-out0 {
			if time.Now().After(deadline) {
				b.Fatalf("wrote %d frames, want %d; read %d of %d bytes", m.framesOut.Load()-f0, frames, wire.Load(), m.bytesOut.Load()-out0)
			}
			runtime.Gosched()
		}
	}
	ctx := context.Background()
	// One publication first, so that every run starts with a base.
	if _, err := ts.node.Publish(ctx, "d:bench", states[len(states)-1]); err != nil {
		b.Fatal(err)
	}
	quiet(uint64(subs))
	wire0, payload := wire.Load(), 0
	b.ReportAllocs()
	sent := uint64(0)
	for b.Loop() {
		s := states[sent%uint64(len(states))]
		payload += len(s)
		if _, err := ts.node.Publish(ctx, "d:bench", s); err != nil {
			b.Fatal(err)
		}
		sent++
		quiet((sent + 1) * uint64(subs))
	}
	b.StopTimer()
	b.ReportMetric(float64(wire.Load()-wire0)/float64(sent)/float64(subs), "wire-B/delivery")
	b.ReportMetric(float64(payload)/float64(sent), "payload-B")
}

// BenchmarkDeltaEncode is the CPU the server spends per publication to
// produce its delta frame (fossil delta of the ~2 KB state against the one
// before, then the push and its WebSocket frame), beside the full frame's
// encoding (which it costs in addition to: the full frame is built for every
// publication). It is paid once per publication, whatever the number of
// subscribers: divide by S for the cost per delivery. frame-B is the frame's
// size. delta-base64 is the alternative not taken: the delta in a text
// frame, base64 in a JSON string.
func BenchmarkDeltaEncode(b *testing.B) {
	states := benchStates(1024)
	n, err := New(Config{Logger: nopLogger()})
	if err != nil {
		b.Fatal(err)
	}
	type encoder func(i int, deflate bool) []byte
	full := func(i int, deflate bool) []byte {
		s := states[i%len(states)]
		_ = json.Valid(s)
		return n.encode(protocol.PushPub, "d:bench", uint64(i+1), s, false, boolForm(deflate))
	}
	delta := func(i int, deflate bool) []byte {
		prev, s := states[(i+len(states)-1)%len(states)], states[i%len(states)]
		_ = json.Valid(s) // deltable
		d := fdelta.Create(prev, s)
		return n.buildFrame(wsframe.OpBinary, protocol.AppendDeltaPush(nil, "d:bench", uint64(i+1), d), deflate)
	}
	delta64 := func(i int, deflate bool) []byte {
		prev, s := states[(i+len(states)-1)%len(states)], states[i%len(states)]
		_ = json.Valid(s)
		d := fdelta.Create(prev, s)
		p := protocol.AppendPushHeader(nil, protocol.PushPub, "d:bench", uint64(i+1))
		p = append(p, `,"delta":"`...)
		p = base64.StdEncoding.AppendEncode(p, d)
		p = append(p, `"}`...)
		return n.buildFrame(wsframe.OpText, p, deflate)
	}
	for _, deflate := range []bool{false, true} {
		for _, e := range []struct {
			name string
			f    encoder
		}{{"full", full}, {"delta", delta}, {"delta-base64", delta64}} {
			b.Run(fmt.Sprintf("%s/deflate=%t", e.name, deflate), func(b *testing.B) {
				b.ReportAllocs()
				i, size := 1, 0
				for b.Loop() {
					size += len(e.f(i, deflate))
					i++
				}
				b.ReportMetric(float64(size)/float64(i-1), "frame-B")
			})
		}
	}
}

func boolForm(deflate bool) uint8 {
	if deflate {
		return formProtocolDeflate
	}
	return formProtocol
}
