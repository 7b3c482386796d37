package bench

import (
	"bytes"
	"math"
	"strings"
	"testing"
	"time"

	"go.uber.org/goleak"
)

func TestMain(m *testing.M) { goleak.VerifyTestMain(m) }

// deliverAll feeds seqs to a tracker and a step, as one subscriber would.
func deliverAll(t *testing.T, seqs []uint64) *stepStats {
	t.Helper()
	st := newStepStats()
	var tr seqTracker
	for _, s := range seqs {
		st.deliver(tr.observe(s), int64(time.Millisecond), int64(100*time.Millisecond), 0)
	}
	return st
}

func TestLossAndDuplicates(t *testing.T) {
	cases := []struct {
		name                string
		seqs                []uint64
		published           int64
		unique, dups, reord int64
		lost                int64
	}{
		{"in order", []uint64{1, 2, 3, 4, 5}, 5, 5, 0, 0, 0},
		{"gap", []uint64{1, 2, 5, 6}, 6, 4, 0, 0, 2},
		{"tail missing", []uint64{1, 2, 3}, 6, 3, 0, 0, 3},
		{"head missing", []uint64{3, 4}, 4, 2, 0, 0, 2},
		{"duplicate", []uint64{1, 2, 2, 3, 3, 3}, 3, 3, 3, 0, 0},
		{"reordered", []uint64{1, 3, 2, 4}, 4, 4, 0, 1, 0},
		{"reordered then repeated", []uint64{1, 3, 2, 2, 4}, 4, 4, 1, 1, 0},
		{"gap and duplicate", []uint64{1, 2, 2, 7}, 8, 3, 1, 0, 5},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			st := deliverAll(t, c.seqs)
			if got := st.unique.Load(); got != c.unique {
				t.Errorf("unique = %d, want %d", got, c.unique)
			}
			if got := st.dups.Load(); got != c.dups {
				t.Errorf("dups = %d, want %d", got, c.dups)
			}
			if got := st.reordered.Load(); got != c.reord {
				t.Errorf("reordered = %d, want %d", got, c.reord)
			}
			if lost := c.published - st.unique.Load(); lost != c.lost {
				t.Errorf("lost = %d, want %d", lost, c.lost)
			}
		})
	}
}

func TestTrackerWindow(t *testing.T) {
	var tr seqTracker
	for s := uint64(1); s <= 5000; s += 2 { // every odd number
		if k := tr.observe(s); k != seqNew {
			t.Fatalf("observe(%d) = %d, want new", s, k)
		}
	}
	// Even numbers within the window are first deliveries, out of order;
	// odd ones are repeats; far below the window nothing can be told.
	for _, c := range []struct {
		seq  uint64
		want seqKind
	}{
		{4998, seqReordered}, {4998, seqDup}, {4999, seqDup}, {4999 - 1000, seqDup}, {4000, seqReordered},
		{4999 - windowBits + 2, seqDup}, {4999 - windowBits + 1, seqReordered}, {4999 - windowBits, seqTooOld}, {2, seqTooOld},
	} {
		if k := tr.observe(c.seq); k != c.want {
			t.Errorf("observe(%d) = %d, want %d", c.seq, k, c.want)
		}
	}
	// A jump past the window forgets everything below.
	tr.observe(10_000)
	if k := tr.observe(9999); k != seqReordered {
		t.Errorf("after a jump, observe(9999) = %d, want reordered", k)
	}
	// Shifts by every amount keep the bits in place.
	for n := uint64(1); n < 200; n++ {
		var tr seqTracker
		tr.observe(100)
		tr.observe(100 + n)
		if k := tr.observe(100); k != seqDup {
			t.Fatalf("shift %d: 100 not remembered (%d)", n, k)
		}
		if n > 1 {
			if k := tr.observe(101); k != seqReordered {
				t.Fatalf("shift %d: 101 wrongly remembered (%d)", n, k)
			}
		}
	}
}

func TestPercentiles(t *testing.T) {
	st := newStepStats()
	var tr seqTracker
	// 1..1000 ms, spread over every shard.
	for i := 1; i <= 1000; i++ {
		st.deliver(tr.observe(uint64(i)), int64(i)*int64(time.Millisecond), int64(900*time.Millisecond), i)
	}
	l := summarize(st.merged())
	near := func(name string, got, want float64) {
		if math.Abs(got-want) > want*0.002+0.001 {
			t.Errorf("%s = %g ms, want %g", name, got, want)
		}
	}
	if l.Count != 1000 {
		t.Errorf("count = %d", l.Count)
	}
	near("p50", l.P50, 500)
	near("p90", l.P90, 900)
	near("p99", l.P99, 990)
	near("p99.9", l.P999, 999)
	near("max", l.Max, 1000)
	if got := st.onTime.Load(); got != 900 {
		t.Errorf("on time = %d, want 900", got)
	}
	// After finalize, deliveries count as late only.
	st.finalize()
	st.deliver(tr.observe(1001), 1, 1, 0)
	if st.unique.Load() != 1000 || st.late.Load() != 1 {
		t.Errorf("after finalize: unique %d late %d", st.unique.Load(), st.late.Load())
	}
	if got := summarize(newHist()); got != (Latency{}) {
		t.Errorf("empty histogram: %+v", got)
	}
}

func TestPayloadRoundTrip(t *testing.T) {
	p := payloadInfo{stream: 9999, seq: 123456789, sentNs: int64(36 * time.Hour), step: 42}
	for _, size := range []int{MinPayload, 128, 4096} {
		b := appendPayload(nil, size, p)
		if len(b) != size {
			t.Fatalf("size %d: got %d bytes", size, len(b))
		}
		push := append([]byte(`{"push":"pub","channel":"bench.3","data":`), b...)
		push = append(push, '}')
		got, err := findPayload(push)
		if err != nil || got != p {
			t.Fatalf("size %d: got %+v, %v; want %+v", size, got, err, p)
		}
	}
	if _, err := findPayload([]byte(`{"id":1}`)); err != errNoPayload {
		t.Errorf("reply: err = %v", err)
	}
	if _, err := findPayload([]byte(`"hB0000`)); err == nil {
		t.Error("truncated payload accepted")
	}
	bad := appendPayload(nil, 128, p)
	bad[5] = 'z'
	if _, err := findPayload(bad); err == nil {
		t.Error("malformed payload accepted")
	}
}

func TestParse(t *testing.T) {
	r, err := ParseRates("100, 250.5,max")
	if err != nil || len(r) != 3 || r[0].PerSecond != 100 || r[1].PerSecond != 250.5 || !r[2].Max {
		t.Errorf("ParseRates: %v %v", r, err)
	}
	if r, err := ParseRates("none"); err != nil || r != nil {
		t.Errorf("none: %v %v", r, err)
	}
	for _, bad := range []string{"0", "-1", "fast", "1,,2"} {
		if _, err := ParseRates(bad); err == nil {
			t.Errorf("ParseRates(%q) accepted", bad)
		}
	}
	s, err := ParseSources("127.0.0.2-127.0.0.9")
	if err != nil || len(s) != 8 || s[7].String() != "127.0.0.9" {
		t.Errorf("ParseSources: %v %v", s, err)
	}
	if s, err := ParseSources("none"); err != nil || s == nil || len(s) != 0 {
		t.Errorf("none: %v %v", s, err)
	}
	if _, err := ParseSources("127.0.0.9-127.0.0.2"); err == nil {
		t.Error("reversed range accepted")
	}
}

func TestPlanLimits(t *testing.T) {
	cfg := Config{URL: "ws://127.0.0.1:1/ws", Channels: 10_000, Subscribers: 10, Rates: []Rate{{PerSecond: 1}}}
	err := cfg.applyDefaults()
	if err == nil || !strings.Contains(err.Error(), "sockets") {
		t.Fatalf("100,000 connections: err = %v", err)
	}
	cfg = Config{URL: "ws://127.0.0.1:1/ws", Channels: 1, Subscribers: 5}
	if err := cfg.applyDefaults(); err != nil {
		t.Fatal(err)
	}
	if len(cfg.Sources) != 8 || cfg.Idle != 10*time.Second || cfg.RawURL != "ws://127.0.0.1:1/ws/raw" || cfg.APIURL != "http://127.0.0.1:1/api/v1/publish" {
		t.Errorf("defaults: %+v", cfg)
	}
	if cfg.Timeout <= time.Minute {
		t.Errorf("timeout %s", cfg.Timeout)
	}
	cfg = Config{URL: "ws://127.0.0.1:1/ws", Payload: 10}
	if err := cfg.applyDefaults(); err == nil {
		t.Error("tiny payload accepted")
	}
}

func TestSVG(t *testing.T) {
	steps := []StepResult{
		{Step: 0, Rate: "100", Pass: true, Delivered: 1000, DeliveredPerSec: 100000, Due: 1000, StepSeconds: 1, Latency: Latency{P50: 1, P90: 2, P99: 3, P999: 4, Max: 5}},
		{Step: 1, Rate: "200", Pass: false, Delivered: 2000, DeliveredPerSec: 150000, Due: 2000, StepSeconds: 1, Latency: Latency{P50: 10, P90: 20, P99: 300, P999: 400, Max: 5000}},
	}
	for _, runs := range [][]PlotRun{{{Label: "herald", Steps: steps}}, {{Label: "herald", Steps: steps}, {Label: "hub", Steps: steps[:1]}}} {
		var b bytes.Buffer
		if err := WriteSVG(&b, "t <&>", runs); err != nil {
			t.Fatal(err)
		}
		s := b.String()
		if !strings.HasPrefix(s, "<svg") || !strings.Contains(s, "polyline") || !strings.Contains(s, "t &lt;&amp;&gt;") {
			t.Errorf("svg: %.300s", s)
		}
	}
	if err := WriteSVG(&bytes.Buffer{}, "", nil); err == nil {
		t.Error("empty plot accepted")
	}
}
