package herald

import (
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"math/rand/v2"
	"net/http/httptest"
	"strings"
	"testing"
	"time"

	"github.com/centrifugal/fdelta"
	"github.com/gorilla/websocket"

	"github.com/heraldhq/herald/protocol"
)

func deltaConfig() Config {
	return Config{Namespaces: []Namespace{
		{Name: "d", HistorySize: 100, HistoryTTL: time.Minute, Delta: DeltaFossil},
		{Name: "plain", HistorySize: 100, HistoryTTL: time.Minute},
	}}
}

// deltaSub is a test client's view of one channel, applying deltas as the
// bundled clients do: only on the exact base.
type deltaSub struct {
	c               *testClient
	base            []byte
	baseBinary      bool
	last            uint64
	deltas, fulls   int
	fullAt, deltaAt []uint64
}

// next reads the channel's next publication and returns its payload,
// reconstructed from a delta when it is one.
func (s *deltaSub) next(t *testing.T) []byte {
	t.Helper()
	op, b := s.c.read()
	var data []byte
	var off uint64
	switch op {
	case websocket.TextMessage:
		var p offsetPush
		if err := json.Unmarshal(b, &p); err != nil || p.Push != "pub" {
			t.Fatalf("want a pub push, got %q", b)
		}
		data, off = p.Data, p.Offset
		s.baseBinary = false
		s.fulls++
		s.fullAt = append(s.fullAt, off)
	case websocket.BinaryMessage:
		h, payload, err := protocol.SplitBinary(b)
		if err != nil {
			t.Fatal(err)
		}
		var p protocol.Push
		if err := json.Unmarshal(h, &p); err != nil || p.Push != "pub" {
			t.Fatalf("want a pub push, got %q", h)
		}
		off = p.Offset
		if !p.Delta {
			data, s.baseBinary = payload, true
			s.fulls++
			s.fullAt = append(s.fullAt, off)
			break
		}
		if s.base == nil || s.last != off-1 {
			t.Fatalf("delta at offset %d on base %d (held: %v)", off, s.last, s.base != nil)
		}
		data, err = fdelta.Apply(s.base, payload)
		if err != nil {
			t.Fatalf("delta at offset %d does not apply: %v", off, err)
		}
		s.deltas++
		s.deltaAt = append(s.deltaAt, off)
	}
	s.base, s.last = bytes.Clone(data), off
	return data
}

// stateDoc is a realistic ~2 KB JSON state: 40 instruments with a few
// numeric fields; tick changes a few of them.
type stateDoc struct {
	Seq    int          `json:"seq"`
	Instrs []instrument `json:"instruments"`
}

type instrument struct {
	Symbol string  `json:"symbol"`
	Bid    float64 `json:"bid"`
	Ask    float64 `json:"ask"`
	Volume int     `json:"volume"`
}

func newStateDoc() *stateDoc {
	d := &stateDoc{}
	for i := range 30 {
		d.Instrs = append(d.Instrs, instrument{Symbol: fmt.Sprintf("SYM%03d", i), Bid: 100 + float64(i), Ask: 100.5 + float64(i), Volume: 1000 * i})
	}
	return d
}

func (d *stateDoc) tick(r *rand.Rand) []byte {
	d.Seq++
	for range 3 {
		in := &d.Instrs[r.IntN(len(d.Instrs))]
		in.Bid += float64(r.IntN(100)-50) / 100
		in.Ask = in.Bid + 0.5
		in.Volume += r.IntN(1000)
	}
	b, _ := json.Marshal(d)
	return b
}

// A subscriber that asks for deltas gets them and rebuilds every published
// payload byte for byte over a long run of small changes; every 32nd
// publication is full; a subscriber that did not ask, and one in a
// namespace without deltas, get only full publications.
func TestDeltaLongSequence(t *testing.T) {
	t.Parallel()
	cfg := deltaConfig()
	cfg.EnableCompression = true
	ts := newTestServer(t, cfg)
	sub := &deltaSub{c: ts.client(t)}
	// A fourth subscriber with permessage-deflate: its frames, deltas
	// included, are the deflated form's.
	d := websocket.Dialer{Subprotocols: []string{protocol.Subprotocol}, HandshakeTimeout: 5 * time.Second, EnableCompression: true}
	ws, _, err := d.Dial(ts.url+"/ws", nil)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { ws.Close() })
	deflated := &deltaSub{c: &testClient{t: t, ws: ws}}
	deflated.c.mustOK(protocol.Command{Cmd: "subscribe", Channel: "d:state", Delta: "fossil"})
	m := sub.c.call(protocol.Command{Cmd: "subscribe", Channel: "d:state", Delta: "fossil"})
	var res protocol.SubscribeResult
	if m.Error != nil || json.Unmarshal(m.Result, &res) != nil || !res.Delta {
		t.Fatalf("subscribe asking for deltas: %+v", m)
	}
	plain := &deltaSub{c: ts.client(t)}
	plain.c.subscribe("d:state")
	other := &deltaSub{c: ts.client(t)}
	m = other.c.call(protocol.Command{Cmd: "subscribe", Channel: "plain:state", Delta: "fossil"})
	res = protocol.SubscribeResult{}
	if m.Error != nil || json.Unmarshal(m.Result, &res) != nil || res.Delta {
		t.Fatalf("subscribe asking for deltas where there are none: %+v", m)
	}

	doc, r := newStateDoc(), rand.New(rand.NewPCG(1, 2))
	const n = 200
	ctx := context.Background()
	for i := range n {
		data := doc.tick(r)
		if i == 0 {
			t.Logf("state: %d bytes", len(data))
		}
		if _, err := ts.node.Publish(ctx, "d:state", data); err != nil {
			t.Fatal(err)
		}
		if _, err := ts.node.Publish(ctx, "plain:state", data); err != nil {
			t.Fatal(err)
		}
		for _, s := range []*deltaSub{sub, plain, other, deflated} {
			if got := s.next(t); !bytes.Equal(got, data) {
				t.Fatalf("publication %d: got %q, want %q", i+1, got, data)
			}
		}
	}
	if plain.deltas != 0 || other.deltas != 0 {
		t.Fatalf("deltas to subscribers that did not get them: %d, %d", plain.deltas, other.deltas)
	}
	// The first is full (no base), then every 32nd.
	wantFull := []uint64{1}
	for o := uint64(deltaFullEvery); o <= n; o += deltaFullEvery {
		wantFull = append(wantFull, o)
	}
	for _, s := range []*deltaSub{sub, deflated} {
		if fmt.Sprint(s.fullAt) != fmt.Sprint(wantFull) {
			t.Fatalf("full publications at %v, want %v", s.fullAt, wantFull)
		}
	}
	st := ts.node.DeltaStats()["d"]
	if st.Deliveries != uint64(sub.deltas+deflated.deltas) || st.BytesSaved == 0 {
		t.Fatalf("DeltaStats %+v, clients got %d deltas", st, sub.deltas+deflated.deltas)
	}
	if _, ok := ts.node.DeltaStats()["plain"]; ok {
		t.Fatal("DeltaStats counts a namespace without deltas")
	}
}

// After recovery the first live publication is full; then deltas resume.
// Binary publications go as deltas of bytes; a switch between text and
// binary is full.
func TestDeltaAfterRecoveryAndKindChange(t *testing.T) {
	t.Parallel()
	ts := newTestServer(t, deltaConfig())
	ctx := context.Background()
	pub := func(data string, opts ...PublishOption) {
		t.Helper()
		if _, err := ts.node.Publish(ctx, "d:r", []byte(data), opts...); err != nil {
			t.Fatal(err)
		}
	}
	long := strings.Repeat("x", 300)
	pub(`{"v":1,"pad":"` + long + `"}`)
	pub(`{"v":2,"pad":"` + long + `"}`)
	sub := &deltaSub{c: ts.client(t)}
	b, _ := json.Marshal(protocol.Command{ID: 1, Cmd: "subscribe", Channel: "d:r", Delta: "fossil", Since: &protocol.Position{Offset: 0, Epoch: ts.epoch(t, "d:r")}})
	if err := sub.c.ws.WriteMessage(websocket.TextMessage, b); err != nil {
		t.Fatal(err)
	}
	if m := sub.c.readJSON(); m.ID != 1 || m.Error != nil {
		t.Fatalf("subscribe: %+v", m)
	}
	sub.next(t) // recovered 1
	sub.next(t) // recovered 2
	pub(`{"v":3,"pad":"` + long + `"}`)
	pub(`{"v":4,"pad":"` + long + `"}`)
	pub("\x00\x01binary"+long, WithBinary())
	pub("\x00\x02binary"+long, WithBinary())
	pub(`{"v":5,"pad":"` + long + `"}`)
	for range 5 {
		sub.next(t)
	}
	if fmt.Sprint(sub.fullAt) != "[1 2 3 5 7]" || fmt.Sprint(sub.deltaAt) != "[4 6]" {
		t.Fatalf("full at %v, deltas at %v; want full at [1 2 3 5 7], deltas at [4 6]", sub.fullAt, sub.deltaAt)
	}
}

func (ts *testServer) epoch(t *testing.T, channel string) string {
	t.Helper()
	h, err := ts.node.History(context.Background(), channel, HistoryOptions{})
	if err != nil {
		t.Fatal(err)
	}
	return h.Position.Epoch
}

func TestDeltaNeedsHistory(t *testing.T) {
	t.Parallel()
	_, err := New(Config{Namespaces: []Namespace{{Name: "d", Delta: DeltaFossil}}})
	if err == nil || !strings.Contains(err.Error(), "delta needs history") {
		t.Fatalf("New with delta and no history: %v", err)
	}
	_, err = New(Config{Namespaces: []Namespace{{Name: "d", HistorySize: 1, Delta: "xdelta"}}})
	if err == nil || !strings.Contains(err.Error(), "unknown delta type") {
		t.Fatalf("New with an unknown delta type: %v", err)
	}
}

// deltaBegin offers a base only for the publication right after it: same
// epoch, offset+1, same kind, JSON without surrounding whitespace, and not
// the 32nd.
func TestDeltaBase(t *testing.T) {
	t.Parallel()
	n, err := New(Config{Logger: testLogger(t), Namespaces: deltaConfig().Namespaces})
	if err != nil {
		t.Fatal(err)
	}
	n.delta.states.Store("d:x", &deltaState{stats: new(deltaCounters)})
	n.delta.nstates.Add(1)
	pub := func(off uint64, epoch, data string, binary bool) *Publication {
		return &Publication{Channel: "d:x", Offset: off, Epoch: epoch, Data: []byte(data), Binary: binary}
	}
	for i, c := range []struct {
		pub  *Publication
		base uint64 // 0: none
	}{
		{pub(1, "e", `{"a":1}`, false), 0},            // nothing before
		{pub(2, "e", `{"a":2}`, false), 1},            // the next one
		{pub(4, "e", `{"a":4}`, false), 0},            // a gap
		{pub(5, "f", `{"a":5}`, false), 0},            // another epoch
		{pub(6, "f", "\x00\x01", true), 0},            // text to binary
		{pub(7, "f", "\x00\x02", true), 6},            // binary to binary
		{pub(8, "f", ` {"a":8}`, false), 0},           // whitespace: never a delta
		{pub(9, "f", `{"a":9}`, false), 0},            // nor a base
		{pub(10, "f", `not json`, false), 0},          // not JSON
		{pub(11, "f", `{"a":11}`, false), 0},          // not JSON before
		{pub(12, "f", `{"a":12}`, false), 11},         // fine again
		{&Publication{Channel: "d:y", Offset: 13}, 0}, // no delta subscriber there
	} {
		dx := n.deltaBegin(c.pub)
		got := uint64(0)
		if dx.base != nil {
			got = dx.base.Offset
		}
		if got != c.base {
			t.Errorf("case %d (offset %d): base %d, want %d", i, c.pub.Offset, got, c.base)
		}
	}
	// The 32nd publication of the channel on this node is full.
	ds, _ := n.delta.states.Load("d:x")
	ds.(*deltaState).count = deltaFullEvery - 2
	if dx := n.deltaBegin(pub(13, "f", `{"a":13}`, false)); dx.base == nil {
		t.Fatal("31st: no base")
	}
	if dx := n.deltaBegin(pub(14, "f", `{"a":14}`, false)); dx.base != nil {
		t.Fatal("32nd: a base")
	}
}

// The counters reach Prometheus by namespace.
func TestDeltaMetrics(t *testing.T) {
	t.Parallel()
	ts := newTestServer(t, deltaConfig())
	sub := &deltaSub{c: ts.client(t)}
	sub.c.mustOK(protocol.Command{Cmd: "subscribe", Channel: "d:m", Delta: "fossil"})
	doc, r := newStateDoc(), rand.New(rand.NewPCG(3, 4))
	for range 3 {
		if _, err := ts.node.Publish(context.Background(), "d:m", doc.tick(r)); err != nil {
			t.Fatal(err)
		}
		sub.next(t)
	}
	rec := httptest.NewRecorder()
	ts.node.MetricsHandler().ServeHTTP(rec, httptest.NewRequest("GET", "/metrics", nil))
	body := rec.Body.String()
	if !strings.Contains(body, `herald_delta_deliveries_total{namespace="d"} 2`) {
		t.Fatalf("no delta deliveries in the metrics:\n%s", grepLines(body, "herald_delta"))
	}
	st := ts.node.DeltaStats()["d"]
	if want := fmt.Sprintf(`herald_delta_bytes_saved_total{namespace="d"} %d`, st.BytesSaved); st.BytesSaved == 0 || !strings.Contains(body, want) {
		t.Fatalf("want %q in the metrics:\n%s", want, grepLines(body, "herald_delta"))
	}
}

func grepLines(s, sub string) string {
	var out []string
	for _, l := range strings.Split(s, "\n") {
		if strings.Contains(l, sub) {
			out = append(out, l)
		}
	}
	return strings.Join(out, "\n")
}

// A delta subscriber in a namespace with join and leave events gets them
// (they are never deltas) and its deltas go on: the fan-out does not take
// a presence event for a publication of the delta chain.
func TestDeltaWithJoinLeave(t *testing.T) {
	t.Parallel()
	ts := newTestServer(t, Config{Namespaces: []Namespace{
		{Name: "d", HistorySize: 100, HistoryTTL: time.Minute, Delta: DeltaFossil, Presence: true, JoinLeave: true},
	}})
	sub := &deltaSub{c: ts.client(t)}
	sub.c.mustOK(protocol.Command{Cmd: "subscribe", Channel: "d:room", Delta: "fossil"})
	if m := sub.c.readJSON(); m.Push != "join" {
		t.Fatalf("want its own join, got %+v", m)
	}
	ctx := context.Background()
	long := strings.Repeat("x", 300)
	pub := func(v int) []byte {
		t.Helper()
		data := []byte(fmt.Sprintf(`{"v":%d,"pad":"%s"}`, v, long))
		if _, err := ts.node.Publish(ctx, "d:room", data); err != nil {
			t.Fatal(err)
		}
		return data
	}
	if want, got := pub(1), sub.next(t); !bytes.Equal(got, want) {
		t.Fatalf("got %q, want %q", got, want)
	}
	other := ts.client(t)
	other.subscribe("d:room")
	if m := sub.c.readJSON(); m.Push != "join" {
		t.Fatalf("want the join, got %+v", m)
	}
	if want, got := pub(2), sub.next(t); !bytes.Equal(got, want) {
		t.Fatalf("got %q, want %q", got, want)
	}
	if sub.deltas != 1 {
		t.Fatalf("%d deltas, want the second publication as one", sub.deltas)
	}
}
