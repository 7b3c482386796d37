package herald

import (
	"context"
	"net/http/httptest"
	"sort"
	"strings"
	"testing"
	"time"

	"github.com/gorilla/websocket"
	"github.com/prometheus/common/expfmt"
	"github.com/prometheus/common/model"

	"github.com/heraldhq/herald/protocol"
)

func scrape(t *testing.T, n *Node) map[string]float64 {
	t.Helper()
	rec := httptest.NewRecorder()
	n.MetricsHandler().ServeHTTP(rec, httptest.NewRequest("GET", "/metrics", nil))
	p := expfmt.NewTextParser(model.UTF8Validation)
	fams, err := p.TextToMetricFamilies(rec.Body)
	if err != nil {
		t.Fatal(err)
	}
	out := map[string]float64{}
	for name, f := range fams {
		for _, m := range f.Metric {
			key := name
			for _, l := range m.Label {
				key += "{" + l.GetName() + "=" + l.GetValue() + "}"
			}
			switch {
			case m.Counter != nil:
				out[key] = m.Counter.GetValue()
			case m.Gauge != nil:
				out[key] = m.Gauge.GetValue()
			case m.Histogram != nil:
				out[key+"_count"] = float64(m.Histogram.GetSampleCount())
			}
		}
	}
	return out
}

func TestMetricsMove(t *testing.T) {
	t.Parallel()
	s := newTestServer(t, Config{MaxQueueBytes: 64 << 10, MaxMessageSize: 32 << 10, CloseGrace: 100 * time.Millisecond})
	before := scrape(t, s.node)
	c := s.client(t)
	c.mustOK(protocol.Command{Cmd: "publish", Channel: "m", Data: []byte(`1`)})
	c.subscribe("m")
	if _, err := s.node.Publish(context.Background(), "m", []byte(`2`)); err != nil {
		t.Fatal(err)
	}
	c.readJSON()
	slow := s.client(t)
	slow.subscribe("m")
	if g := scrape(t, s.node); g["herald_connections"] != 2 || g["herald_subscriptions"] != 2 || g["herald_channels"] != 1 {
		t.Errorf("gauges: connections %v subscriptions %v channels %v", g["herald_connections"], g["herald_subscriptions"], g["herald_channels"])
	}
	// The slow client never reads: once the socket buffers are full, its
	// queue overflows and it is cut. Publish until that shows.
	big := []byte(`"` + strings.Repeat("z", 16000) + `"`)
	var after map[string]float64
	for i := 0; ; i++ {
		if _, err := s.node.Publish(context.Background(), "m", big); err != nil {
			t.Fatal(err)
		}
		if i%50 == 0 {
			if after = scrape(t, s.node); after["herald_slow_consumer_disconnects_total"] >= 1 {
				break
			}
		}
		if i > 10000 {
			t.Fatal("160 MB published and no slow consumer counted")
		}
	}
	for _, name := range []string{
		"herald_messages_received_total", "herald_received_bytes_total", "herald_messages_sent_total",
		"herald_sent_bytes_total", "herald_publications_total{source=client}", "herald_publications_total{source=server}",
		"herald_dropped_messages_total", "herald_broadcast_duration_seconds_count",
	} {
		if after[name] <= before[name] {
			t.Errorf("%s did not move: %v -> %v", name, before[name], after[name])
		}
	}
	if _, ok := after["go_goroutines"]; !ok {
		t.Error("no Go runtime metrics")
	}
}

// TestDrainSpreadsCloses: Drain closes every connection with 1012, spread
// over the window rather than at once, after Ready has turned false.
func TestDrainSpreadsCloses(t *testing.T) {
	t.Parallel()
	ts := newTestServer(t, Config{})
	const n, window = 40, 800 * time.Millisecond
	clients := make([]*testClient, n)
	for i := range clients {
		clients[i] = ts.client(t)
	}
	if err := ts.node.Ready(context.Background()); err != nil {
		t.Fatal(err)
	}
	closedAt := make(chan time.Duration, n)
	start := time.Now()
	for _, c := range clients {
		go func() {
			c.ws.SetReadDeadline(time.Now().Add(10 * time.Second))
			_, _, err := c.ws.ReadMessage()
			if ce, ok := err.(*websocket.CloseError); ok && ce.Code == websocket.CloseServiceRestart {
				closedAt <- time.Since(start)
				return
			}
			closedAt <- -1
		}()
	}
	drained := make(chan error, 1)
	go func() { drained <- ts.node.Drain(context.Background(), window) }()
	if err := ts.node.Ready(context.Background()); err != ErrDraining {
		// Drain sets the flag before its first close; poll briefly.
		waitFor(t, "not ready", func() bool { return ts.node.Ready(context.Background()) == ErrDraining })
	}
	if _, resp, err := websocket.DefaultDialer.Dial(ts.url+"/ws", nil); err == nil || resp.StatusCode != 503 {
		t.Fatalf("new connection while draining: %v %v", err, resp)
	}
	var times []float64
	for range n {
		d := <-closedAt
		if d < 0 {
			t.Fatal("a client did not get close 1012")
		}
		times = append(times, d.Seconds())
	}
	if err := <-drained; err != nil {
		t.Fatal(err)
	}
	sort.Float64s(times)
	// Spread: the closes fill the window instead of coming in one burst.
	// Each quarter of the window holds some of them.
	quarters := make([]int, 4)
	for _, s := range times {
		quarters[min(int(s/window.Seconds()*4), 3)]++
	}
	for i, q := range quarters {
		if q == 0 {
			t.Errorf("no close in quarter %d of the window: %v", i+1, quarters)
		}
	}
	t.Logf("closes per quarter of the %v window: %v; first %.3fs, last %.3fs, spread %.0f%%", window, quarters, times[0], times[n-1], 100*(times[n-1]-times[0])/window.Seconds())
}
