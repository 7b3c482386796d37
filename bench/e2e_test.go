package bench

import (
	"bytes"
	"context"
	"encoding/json"
	"encoding/pem"
	"net/http"
	"net/http/httptest"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/gorilla/websocket"

	"github.com/heraldhq/herald"
	"github.com/heraldhq/herald/httpapi"
)

const testAPIKey = "bench-test-key"

// startHerald serves an in-process node with default settings: /ws,
// /ws/raw, the HTTP API and /metrics.
func startHerald(t *testing.T) string {
	t.Helper()
	return startNode(t, herald.Config{})
}

// startNode serves an in-process node with cfg as startHerald does, and
// returns its /ws URL.
func startNode(t *testing.T, cfg herald.Config) string {
	t.Helper()
	u, _ := serveNode(t, cfg, false)
	return u
}

// serveNode serves an in-process node as startNode does, over TLS with
// tlsOn (a test certificate for 127.0.0.1), and returns its /ws URL (ws://
// or wss://) and the certificate's PEM file (empty without TLS).
func serveNode(t *testing.T, cfg herald.Config, tlsOn bool) (string, string) {
	t.Helper()
	node, err := herald.New(cfg)
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	runDone := make(chan struct{})
	go func() { defer close(runDone); _ = node.Run(ctx) }()
	mux := http.NewServeMux()
	mux.Handle("/ws", node.Handler())
	mux.Handle("/ws/raw", node.RawHandler())
	mux.Handle("/api/", httpapi.Handler(node, httpapi.Config{Key: testAPIKey}))
	mux.Handle("/metrics", node.MetricsHandler())
	ts := httptest.NewUnstartedServer(mux)
	var certFile string
	if tlsOn {
		ts.StartTLS()
		certFile = filepath.Join(t.TempDir(), "cert.pem")
		pemBytes := pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: ts.Certificate().Raw})
		if err := os.WriteFile(certFile, pemBytes, 0o600); err != nil {
			t.Fatal(err)
		}
	} else {
		ts.Start()
	}
	t.Cleanup(func() {
		sctx, scancel := context.WithTimeout(context.Background(), 10*time.Second)
		defer scancel()
		_ = node.Shutdown(sctx)
		cancel()
		<-runDone
		ts.Close()
	})
	return "ws" + strings.TrimPrefix(ts.URL, "http") + "/ws", certFile
}

// checkClean asserts that every step of a low-rate run passed.
func checkClean(t *testing.T, res *Result, err error, wantSteps int) {
	t.Helper()
	if err != nil {
		t.Fatalf("run: %v", err)
	}
	if res.Connect.Failed != 0 {
		t.Fatalf("connect: %+v", res.Connect)
	}
	if len(res.Steps) != wantSteps {
		t.Fatalf("%d steps, want %d", len(res.Steps), wantSteps)
	}
	for _, s := range res.Steps {
		// Nothing lost, repeated or cut. (Pass also needs 97% on time and
		// every publication sent on schedule, which a machine busy with
		// other tests may not grant: a publisher that fell behind has sent
		// fewer, and loss is counted against what it sent.)
		if s.Lost != 0 || s.Dups != 0 || s.Reordered != 0 || s.SubscribersCut != 0 || s.PublishErrors != 0 ||
			s.Delivered != s.Expected || s.Expected == 0 || s.Published < s.Target*8/10 {
			t.Errorf("step %d: %+v", s.Step, s)
		}
		if s.Latency.Count != s.Delivered || s.Latency.P50 <= 0 || s.Latency.Max < s.Latency.P99 {
			t.Errorf("step %d latency: %+v", s.Step, s.Latency)
		}
	}
	if res.Summary.Late != 0 || res.Summary.Malformed != 0 {
		t.Errorf("summary: %+v", res.Summary)
	}
}

// Low-rate runs against an in-process node lose nothing, in every
// publish and subscribe mode.
func TestRunAgainstHerald(t *testing.T) {
	url := startHerald(t)
	base := Config{
		URL: url, APIKey: testAPIKey, Channels: 2, Subscribers: 10,
		Rates: []Rate{{PerSecond: 50}, {PerSecond: 100}}, StepDuration: time.Second, Drain: 2 * time.Second, OnTime: 5 * time.Second,
		MetricsURL: strings.Replace(strings.Replace(url, "ws://", "http://", 1), "/ws", "/metrics", 1),
	}
	for _, mode := range []struct{ pub, sub string }{{PubWS, SubProtocol}, {PubRaw, SubRaw}, {PubAPI, SubProtocol}} {
		t.Run(mode.pub+"-"+mode.sub, func(t *testing.T) {
			cfg := base
			cfg.PubMode, cfg.SubMode, cfg.Label = mode.pub, mode.sub, mode.pub
			var text, js bytes.Buffer
			cfg.Text, cfg.JSON = &text, &js
			want := int64(100)
			if mode.pub == PubAPI {
				// One HTTP request at a time per publisher, slow under -race.
				cfg.Rates, want = []Rate{{PerSecond: 10}, {PerSecond: 20}}, 20
			}
			res, err := Run(context.Background(), cfg)
			checkClean(t, res, err, 2)
			if s := res.Steps[1]; s.Target != want || s.Expected != s.Published*10 {
				t.Errorf("step 1 published %d, expected %d deliveries", res.Steps[1].Published, res.Steps[1].Expected)
			}
			if res.Connect.ServerRSSAfter == 0 || res.Steps[0].ServerCPU <= 0 {
				t.Errorf("no server figures from /metrics: %+v %+v", res.Connect, res.Steps[0])
			}
			types := map[string]int{}
			for line := range strings.SplitSeq(strings.TrimSpace(js.String()), "\n") {
				var rec struct{ Type string }
				if err := json.Unmarshal([]byte(line), &rec); err != nil {
					t.Fatalf("bad JSON line %q: %v", line, err)
				}
				types[rec.Type]++
			}
			if types["plan"] != 1 || types["connect"] != 1 || types["step"] != 2 || types["summary"] != 1 {
				t.Errorf("JSON records: %v", types)
			}
			if !strings.Contains(text.String(), "summary:") {
				t.Errorf("text report:\n%s", text.String())
			}
		})
	}
}

// The rate "max" publishes as fast as the window allows, and still loses
// nothing at this size.
func TestRunMaxRate(t *testing.T) {
	url := startHerald(t)
	res, err := Run(context.Background(), Config{URL: url, Channels: 1, Subscribers: 5, Rates: []Rate{{Max: true}}, StepDuration: 500 * time.Millisecond, Window: 64, OnTime: 5 * time.Second})
	checkClean(t, res, err, 1)
	if res.Steps[0].Published < 100 {
		t.Errorf("max rate published only %d", res.Steps[0].Published)
	}
}

// An idle run holds its connections and reports the connect phase; the
// server's RSS comes from /proc when its pid is given (here: this process).
func TestIdleRunAndMain(t *testing.T) {
	url := startHerald(t)
	dir := t.TempDir()
	jsonPath, svgPath := filepath.Join(dir, "run.jsonl"), filepath.Join(dir, "run.svg")
	var out bytes.Buffer
	err := Main(context.Background(), []string{
		"-url", url, "-channels", "2", "-subs", "5", "-rates", "20,40", "-step", "500ms", "-idle", "200ms",
		"-server-pid", strconv.Itoa(os.Getpid()), "-json", jsonPath, "-svg", svgPath, "-label", "herald",
	}, &out)
	if err != nil {
		t.Fatalf("Main: %v\n%s", err, out.String())
	}
	for _, want := range []string{"connected 10", "KB/conn", "step  rate/s", "summary: 10 connections"} {
		if !strings.Contains(out.String(), want) {
			t.Errorf("report lacks %q:\n%s", want, out.String())
		}
	}
	run, err := ReadSteps(jsonPath)
	if err != nil || run.Label != "herald" || len(run.Steps) != 2 {
		t.Fatalf("ReadSteps: %+v %v", run, err)
	}
	if b, err := os.ReadFile(svgPath); err != nil || !bytes.HasPrefix(b, []byte("<svg")) {
		t.Errorf("svg: %v", err)
	}
	out.Reset()
	plotPath := filepath.Join(dir, "cmp.svg")
	if err := Main(context.Background(), []string{"plot", "-o", plotPath, jsonPath, jsonPath}, &out); err != nil {
		t.Fatalf("plot: %v", err)
	}
	if _, err := os.Stat(plotPath); err != nil {
		t.Error(err)
	}
	out.Reset()
	if err := Main(context.Background(), []string{"summary", jsonPath, jsonPath}, &out); err != nil {
		t.Fatalf("summary: %v", err)
	}
	if s := out.String(); !strings.Contains(s, "| custom (2×5) | herald | 2 |") || !strings.Contains(s, "| custom | herald | 40 | ") {
		t.Errorf("summary:\n%s", s)
	}

	// Scenarios fill in what the flags leave out; explicit flags win.
	out.Reset()
	err = Main(context.Background(), []string{"-url", url, "-scenario", "s1", "-channels", "1", "-subs", "3", "-idle", "100ms"}, &out)
	if err != nil || !strings.Contains(out.String(), "1 channels x 3 subscribers") || !strings.Contains(out.String(), "none (idle)") {
		t.Errorf("scenario s1: %v\n%s", err, out.String())
	}
	if err := Main(context.Background(), []string{"-scenario", "s9"}, &out); err == nil {
		t.Error("unknown scenario accepted")
	}
}

// A run whose server vanishes ends with an error, bounded, and leaks nothing.
func TestRunNoServer(t *testing.T) {
	ts := httptest.NewServer(http.NotFoundHandler())
	url := "ws" + strings.TrimPrefix(ts.URL, "http") + "/ws"
	ts.Close()
	start := time.Now()
	_, err := Run(context.Background(), Config{URL: url, Channels: 1, Subscribers: 3, Rates: []Rate{{PerSecond: 10}}, StepDuration: time.Second})
	if err == nil || time.Since(start) > 20*time.Second {
		t.Errorf("err = %v after %s", err, time.Since(start))
	}
}

// A server that closes the publisher's connection ends the steps, with the
// step failed and the reason in the summary, but the run is no error.
func TestPublisherCut(t *testing.T) {
	up := websocket.Upgrader{Subprotocols: []string{"herald.v1"}}
	var wg sync.WaitGroup
	ts := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		ws, err := up.Upgrade(w, r, nil)
		if err != nil {
			return
		}
		wg.Add(1)
		defer wg.Done()
		defer ws.Close()
		for {
			_, msg, err := ws.ReadMessage()
			if err != nil {
				return
			}
			if bytes.Contains(msg, []byte(`"publish"`)) {
				_ = ws.WriteMessage(websocket.CloseMessage, websocket.FormatCloseMessage(4001, "go away"))
				return
			}
			_ = ws.WriteMessage(websocket.TextMessage, []byte(`{"id":1}`))
		}
	}))
	defer func() { ts.Close(); wg.Wait() }()
	res, err := Run(context.Background(), Config{
		URL: "ws" + strings.TrimPrefix(ts.URL, "http") + "/ws", Channels: 1, Subscribers: 2,
		Rates: []Rate{{PerSecond: 20}, {PerSecond: 20}}, StepDuration: 500 * time.Millisecond, Drain: 500 * time.Millisecond,
	})
	if err != nil {
		t.Fatal(err)
	}
	if len(res.Steps) != 1 || res.Steps[0].Pass || res.Steps[0].PublishErrors == 0 || !strings.Contains(res.Summary.Stopped, "publisher") {
		t.Errorf("steps %+v, summary %+v", res.Steps, res.Summary)
	}
}
