package herald

import (
	"bytes"
	"context"
	"encoding/base64"
	"encoding/json"
	"io"
	"net/http"
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

const testAPIKey = "k3y-for-tests"

type apiServer struct {
	*testServer
	api *httptest.Server
}

func newAPIServer(t *testing.T, cfg Config) *apiServer {
	ts := newTestServer(t, cfg)
	api := httptest.NewServer(ts.node.APIHandler(APIConfig{Key: testAPIKey, MaxBodyBytes: 4096}))
	t.Cleanup(api.Close)
	return &apiServer{ts, api}
}

// call makes an API request and decodes the JSON answer into out (if not nil).
func (s *apiServer) call(t *testing.T, method, path, body string, out any) int {
	t.Helper()
	req, _ := http.NewRequest(method, s.api.URL+path, strings.NewReader(body))
	req.Header.Set("Authorization", "Bearer "+testAPIKey)
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	b, _ := io.ReadAll(resp.Body)
	if out != nil {
		if err := json.Unmarshal(b, out); err != nil {
			t.Fatalf("%s %s: %q: %v", method, path, b, err)
		}
	}
	return resp.StatusCode
}

type apiErr struct {
	Error struct{ Code, Message, Field string } `json:"error"`
}

func TestAPIRoundTrips(t *testing.T) {
	t.Parallel()
	s := newAPIServer(t, Config{
		Namespaces: []Namespace{{Name: ""}, {Name: "h", HistorySize: 10, Presence: true}},
		Authenticate: func(r *http.Request) (Credentials, error) {
			return Credentials{UserID: r.Header.Get("X-Test-User")}, nil
		},
	})
	sub := s.dial(t, "/ws", http.Header{"X-Test-User": {"ann"}})
	sub.subscribe("news")
	sub.subscribeSince("h:1", nil)

	var pr map[string]any
	if st := s.call(t, "POST", "/api/v1/publish", `{"channel":"news","data":{"t":1}}`, &pr); st != 200 {
		t.Fatalf("publish: %d %v", st, pr)
	}
	if m := sub.readJSON(); string(m.Data) != `{"t":1}` {
		t.Fatalf("got %+v", m)
	}
	bin := []byte{0, 0xff, '\n'}
	if st := s.call(t, "POST", "/api/v1/publish", `{"channel":"news","data_base64":"`+base64.StdEncoding.EncodeToString(bin)+`"}`, nil); st != 200 {
		t.Fatal(st)
	}
	if op, b := sub.read(); op != websocket.BinaryMessage || !bytes.HasSuffix(b, bin) {
		t.Fatalf("got %d %q", op, b)
	}
	var br struct{ Results []publishResponse }
	if st := s.call(t, "POST", "/api/v1/broadcast", `{"channels":["news","h:1"],"data":"both"}`, &br); st != 200 || len(br.Results) != 2 || br.Results[1].Offset != 1 {
		t.Fatalf("broadcast: %d %+v", st, br)
	}
	for range 2 {
		if m := sub.readJSON(); string(m.Data) != `"both"` {
			t.Fatalf("got %+v", m)
		}
	}
	if st := s.call(t, "POST", "/api/v1/send_user", `{"user":"ann","data":"psst"}`, nil); st != 200 {
		t.Fatal(st)
	}
	if m := sub.readJSON(); m.Push != "message" || string(m.Data) != `"psst"` {
		t.Fatalf("got %+v", m)
	}
	var h protocol.HistoryResult
	if st := s.call(t, "GET", "/api/v1/history?channel=h:1&limit=5", "", &h); st != 200 || len(h.Publications) != 1 || string(h.Publications[0].Data) != `"both"` {
		t.Fatalf("history: %d %+v", st, h)
	}
	var ps protocol.PresenceStatsResult
	if st := s.call(t, "GET", "/api/v1/presence_stats?channel=h:1", "", &ps); st != 200 || ps.Clients != 1 || ps.Users != 1 {
		t.Fatalf("presence_stats: %d %+v", st, ps)
	}
	var p protocol.PresenceResult
	if st := s.call(t, "GET", "/api/v1/presence?channel=h:2", "", &p); st != 200 || len(p.Clients) != 0 {
		t.Fatalf("presence of an empty channel: %d %+v", st, p) // empty, not an error
	}
	var chans struct{ Channels map[string]int }
	if st := s.call(t, "GET", "/api/v1/channels", "", &chans); st != 200 || chans.Channels["news"] != 1 {
		t.Fatalf("channels: %d %+v", st, chans)
	}
	var info map[string]any
	if st := s.call(t, "GET", "/api/v1/info", "", &info); st != 200 || info["connections"].(float64) != 1 {
		t.Fatalf("info: %d %+v", st, info)
	}
	if st := s.call(t, "POST", "/api/v1/unsubscribe_user", `{"user":"ann","channel":"news"}`, nil); st != 200 {
		t.Fatal(st)
	}
	waitFor(t, "unsubscribe", func() bool { return s.node.hub.numSubs("news") == 0 })
	var unsub struct {
		Push, Channel, Code, Reason string
	}
	if _, b := sub.read(); json.Unmarshal(b, &unsub) != nil || unsub.Push != "unsub" || unsub.Channel != "news" ||
		unsub.Code != protocol.UnsubServer || unsub.Reason == "" {
		t.Fatalf("want an unsub push, got %s", b)
	}
	if m := sub.call(protocol.Command{Cmd: "unsubscribe", Channel: "news"}); m.Error == nil || m.Error.Code != protocol.CodeNotSubscribed {
		t.Fatalf("unsubscribe after the server's: %+v", m)
	}
	if st := s.call(t, "POST", "/api/v1/disconnect_user", `{"user":"ann","code":4500,"reason":"bye"}`, nil); st != 200 {
		t.Fatal(st)
	}
	if ce := sub.expectClose(); ce.Code != 4500 || ce.Text != "bye" {
		t.Fatalf("close %v", ce)
	}
}

func TestAPIBadInput(t *testing.T) {
	t.Parallel()
	s := newAPIServer(t, Config{Namespaces: []Namespace{{Name: ""}, {Name: "h", HistorySize: 10}}})
	watcher := s.client(t)
	watcher.subscribe("w")

	for _, key := range []string{"", "wrong", testAPIKey + "x"} {
		req, _ := http.NewRequest("POST", s.api.URL+"/api/v1/publish", strings.NewReader(`{"channel":"w","data":1}`))
		if key != "" {
			req.Header.Set("X-API-Key", key)
		}
		resp, err := http.DefaultClient.Do(req)
		if err != nil {
			t.Fatal(err)
		}
		b, _ := io.ReadAll(resp.Body)
		resp.Body.Close()
		if resp.StatusCode != 401 || strings.Contains(string(b), testAPIKey) {
			t.Errorf("key %q: %d %s", key, resp.StatusCode, b)
		}
	}
	cases := []struct {
		method, path, body string
		status             int
		code, field        string
	}{
		{"POST", "/api/v1/publish", `{"channel":"w","data":`, 400, "bad_request", ""},
		{"POST", "/api/v1/publish", ``, 400, "bad_request", ""},
		{"POST", "/api/v1/publish", `{"channel":7,"data":1}`, 400, "bad_request", "channel"},
		{"POST", "/api/v1/publish", `{"channel":"w"}`, 400, "bad_request", "data"},
		{"POST", "/api/v1/publish", `{"channel":"w","data":1,"extra":2}`, 400, "bad_request", "extra"},
		{"POST", "/api/v1/publish", `{"channel":"w","data_base64":"***"}`, 400, "bad_request", "data_base64"},
		{"POST", "/api/v1/publish", `{"channel":"bad name","data":1}`, 400, "bad_channel", "channel"},
		{"POST", "/api/v1/publish", `{"channel":"nowhere:x","data":1}`, 400, "bad_channel", "channel"},
		{"POST", "/api/v1/publish", `{"channel":"w","data":"` + strings.Repeat("x", 5000) + `"}`, 413, "too_large", ""},
		{"POST", "/api/v1/broadcast", `{"channels":[],"data":1}`, 400, "bad_request", "channels"},
		{"POST", "/api/v1/send_user", `{"data":1}`, 400, "bad_request", "user"},
		{"POST", "/api/v1/disconnect_user", `{"user":"x","code":1000}`, 400, "bad_request", "code"},
		{"GET", "/api/v1/presence", ``, 400, "bad_request", "channel"},
		{"GET", "/api/v1/presence?channel=w", ``, 400, "not_enabled", "channel"},
		{"GET", "/api/v1/history?channel=h:1&limit=-1", ``, 400, "bad_request", "limit"},
		{"GET", "/api/v1/nope", ``, 404, "not_found", ""},
		{"DELETE", "/api/v1/publish", ``, 405, "method_not_allowed", ""},
	}
	for _, tc := range cases {
		var e apiErr
		st := s.call(t, tc.method, tc.path, tc.body, &e)
		if st != tc.status || e.Error.Code != tc.code || e.Error.Field != tc.field || e.Error.Message == "" {
			t.Errorf("%s %s %.40s: %d %+v, want %d %s field %q", tc.method, tc.path, tc.body, st, e.Error, tc.status, tc.code, tc.field)
		}
	}
	// None of it reached or hurt the connected client.
	if st := s.call(t, "POST", "/api/v1/publish", `{"channel":"w","data":"ok"}`, nil); st != 200 {
		t.Fatal(st)
	}
	if m := watcher.readJSON(); string(m.Data) != `"ok"` {
		t.Fatalf("watcher got %+v", m)
	}
}

// TestOpenAPIMatchesRoutes keeps api_openapi.json true: every route the API
// serves is documented with its method, and every documented one is served.
func TestOpenAPIMatchesRoutes(t *testing.T) {
	t.Parallel()
	var doc struct {
		OpenAPI string                                `json:"openapi"`
		Paths   map[string]map[string]json.RawMessage `json:"paths"`
	}
	if err := json.Unmarshal(openAPIDoc, &doc); err != nil || !strings.HasPrefix(doc.OpenAPI, "3.") {
		t.Fatalf("openapi.json: %v %q", err, doc.OpenAPI)
	}
	var documented, served []string
	for path, ops := range doc.Paths {
		for m := range ops {
			documented = append(documented, strings.ToUpper(m)+" "+path)
		}
	}
	for _, r := range (&api{}).routes() {
		served = append(served, r.method+" "+r.path)
	}
	served = append(served, "GET /api/openapi.json")
	sort.Strings(documented)
	sort.Strings(served)
	if strings.Join(documented, "\n") != strings.Join(served, "\n") {
		t.Fatalf("documented:\n%s\nserved:\n%s", strings.Join(documented, "\n"), strings.Join(served, "\n"))
	}
	// And it is served, without a key.
	s := newAPIServer(t, Config{})
	resp, err := http.Get(s.api.URL + "/api/openapi.json")
	if err != nil || resp.StatusCode != 200 {
		t.Fatalf("%v %v", err, resp)
	}
	resp.Body.Close()
}

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
	s := newAPIServer(t, Config{MaxQueueBytes: 64 << 10, MaxMessageSize: 32 << 10, CloseGrace: 100 * time.Millisecond})
	before := scrape(t, s.node)
	c := s.client(t)
	c.mustOK(protocol.Command{Cmd: "publish", Channel: "m", Data: []byte(`1`)})
	c.subscribe("m")
	s.call(t, "POST", "/api/v1/publish", `{"channel":"m","data":2}`, nil)
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
	// 401s count as auth failures.
	resp, _ := http.Post(s.api.URL+"/api/v1/publish", "application/json", strings.NewReader(`{}`))
	resp.Body.Close()
	if scrape(t, s.node)["herald_auth_failures_total"] < 1 {
		t.Error("auth failure not counted")
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

// unsubscribe_user closes a raw client of the channel: its one channel is
// gone. Other users' raw clients stay.
func TestAPIUnsubscribeUserRaw(t *testing.T) {
	t.Parallel()
	s := newAPIServer(t, Config{Authenticate: func(r *http.Request) (Credentials, error) {
		return Credentials{UserID: r.Header.Get("X-Test-User")}, nil
	}})
	ann := s.dial(t, "/ws/raw?channel=news", http.Header{"X-Test-User": {"ann"}})
	bob := s.dial(t, "/ws/raw?channel=news", http.Header{"X-Test-User": {"bob"}})
	if st := s.call(t, "POST", "/api/v1/unsubscribe_user", `{"user":"ann","channel":"news"}`, nil); st != 200 {
		t.Fatal(st)
	}
	if ce := ann.expectClose(); ce.Code != CloseForbidden {
		t.Fatalf("close %v, want %d", ce, CloseForbidden)
	}
	if _, err := s.node.Publish(context.Background(), "news", []byte(`"still here"`)); err != nil {
		t.Fatal(err)
	}
	if _, b := bob.read(); string(b) != `"still here"` {
		t.Fatalf("bob got %s", b)
	}
}
