package bench

import (
	"context"
	"net/http"
	"net/http/httptest"
	"strings"
	"testing"
	"time"

	"github.com/heraldhq/herald"
	"github.com/heraldhq/herald/httpapi"
)

// startPusherNode serves an in-process node with one Pusher app (id
// "1001", key "bench-key") at /app/{key} and the HTTP API at /api/, and
// returns the app's WebSocket endpoint.
func startPusherNode(t *testing.T) string {
	t.Helper()
	node, err := herald.New(herald.Config{PusherApps: []herald.PusherApp{
		{ID: "1001", Key: "bench-key", Secret: "bench-secret-0123456789"},
	}})
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	runDone := make(chan struct{})
	go func() { defer close(runDone); _ = node.Run(ctx) }()
	mux := http.NewServeMux()
	mux.Handle("/ws", node.Handler())
	mux.Handle("GET /app/{key}", node.PusherHandler())
	mux.Handle("/api/", httpapi.Handler(node, httpapi.Config{Key: testAPIKey}))
	ts := httptest.NewServer(mux)
	t.Cleanup(func() {
		sctx, scancel := context.WithTimeout(context.Background(), 10*time.Second)
		defer scancel()
		_ = node.Shutdown(sctx)
		cancel()
		<-runDone
		ts.Close()
	})
	return "ws" + strings.TrimPrefix(ts.URL, "http")
}

// A low-rate run through the Pusher endpoint loses nothing, with both
// readers, and Herald's own protocol on the same channels and publish path
// does too: the comparison bench/pusher.sh makes.
func TestRunPusher(t *testing.T) {
	base := startPusherNode(t)
	for _, tc := range []struct{ name, proto, path, reader string }{
		{"pusher-epoll", ProtoPusher, "/app/bench-key", ReaderEpoll},
		{"pusher-goroutine", ProtoPusher, "/app/bench-key", ReaderGoroutine},
		{"herald-same-channels", ProtoHerald, "/ws", ""},
	} {
		t.Run(tc.name, func(t *testing.T) {
			if tc.reader == ReaderEpoll && !epollReader {
				t.Skip("the epoll reader needs Linux")
			}
			cfg := Config{
				URL: base + tc.path, APIURL: strings.Replace(base, "ws://", "http://", 1) + "/api/v1/publish", APIKey: testAPIKey,
				Protocol: tc.proto, Reader: tc.reader, PubMode: PubAPI, ChannelPrefix: "pusher-1001:bench.",
				Channels: 2, Subscribers: 10, Label: tc.name,
				// One HTTP request at a time per publisher, slow under -race.
				Rates: []Rate{{PerSecond: 10}, {PerSecond: 20}}, StepDuration: time.Second, Drain: 2 * time.Second, OnTime: 5 * time.Second,
			}
			res, err := Run(context.Background(), cfg)
			checkClean(t, res, err, 2)
			if s := res.Steps[1]; s.Expected != s.Published*10 {
				t.Errorf("step 1 published %d, expected %d deliveries", s.Published, s.Expected)
			}
		})
	}
}

// A Pusher run refuses what it cannot do, and a wrong app key fails the
// connects with the server's pusher:error instead of hanging.
func TestRunPusherRefused(t *testing.T) {
	base := startPusherNode(t)
	for _, tc := range []struct {
		name string
		cfg  Config
		want string
	}{
		{"ws publisher", Config{PubMode: PubWS, ChannelPrefix: "pusher-1001:b."}, "-publish api"},
		{"raw subscribers", Config{PubMode: PubAPI, SubMode: SubRaw, ChannelPrefix: "pusher-1001:b."}, "protocol subscribers only"},
		{"not the app's namespace", Config{PubMode: PubAPI, ChannelPrefix: "bench."}, "pusher-APPID"},
		{"not /app/", Config{URL: base + "/ws", PubMode: PubAPI, ChannelPrefix: "pusher-1001:b."}, "/app/KEY"},
		{"churn", Config{Churn: true, PubMode: PubAPI, ChannelPrefix: "pusher-1001:b."}, "churn"},
		{"unknown key", Config{URL: base + "/app/nokey", PubMode: PubAPI, ChannelPrefix: "pusher-1001:b."}, "pusher"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			cfg := tc.cfg
			if cfg.URL == "" {
				cfg.URL = base + "/app/bench-key"
			}
			cfg.Protocol, cfg.APIKey, cfg.Subscribers = ProtoPusher, testAPIKey, 2
			cfg.Rates, cfg.StepDuration, cfg.Drain = []Rate{{PerSecond: 10}}, 200*time.Millisecond, 200*time.Millisecond
			_, err := Run(context.Background(), cfg)
			if err == nil || !strings.Contains(err.Error(), tc.want) {
				t.Fatalf("got %v, want an error about %q", err, tc.want)
			}
			if testing.Verbose() {
				t.Log(err)
			}
		})
	}
}

// The Pusher messages a subscriber reads are told apart, and the
// endpoint gets protocol=7.
func TestPusherMessages(t *testing.T) {
	for _, tc := range []struct {
		msg           string
		done, refused bool
	}{
		{`{"event":"pusher_internal:subscription_succeeded","channel":"bench.0","data":"{}"}`, true, false},
		{`{"event":"pusher:subscription_error","channel":"bench.0","data":"{\"status\":403}"}`, true, true},
		{`{"data":{"code":4001,"message":"no such app"},"event":"pusher:error"}`, true, true},
		{`{"event":"pusher:pong","data":"{}"}`, false, false},
	} {
		if done, refused := subscribeOutcome([]byte(tc.msg)); done != tc.done || refused != tc.refused {
			t.Errorf("%s: done %v refused %v", tc.msg, done, refused)
		}
	}
	if !isPusherPing([]byte(`{"event":"pusher:ping","data":"{}"}`)) || isPusherPing([]byte(`{"event":"pusher:pong"}`)) {
		t.Error("pusher:ping not told apart")
	}
	if got := string(subscribeCommand(ProtoPusher, "pusher-1001:bench.3", "")); got != `{"event":"pusher:subscribe","data":{"channel":"bench.3"}}` {
		t.Errorf("subscribe command %s", got)
	}
	p := payloadInfo{stream: 3, seq: 7, sentNs: 12345, step: 1}
	frame := `{"event":"herald:publication","channel":"bench.3","data":"\` + strings.Replace(string(appendPayload(nil, 64, p)), `"`, `\"`, 2)[1:] + `"}`
	if got, err := findPayload([]byte(frame)); err != nil || got != p {
		t.Errorf("payload in %s: %+v, %v", frame, got, err)
	}
	cfg := Config{URL: "ws://127.0.0.1:1/app/k", Protocol: ProtoPusher, PubMode: PubAPI, ChannelPrefix: "pusher-1:x."}
	if err := cfg.applyDefaults(); err != nil || cfg.subURLs[0] != "ws://127.0.0.1:1/app/k?protocol=7" {
		t.Errorf("applyDefaults: %v, %v", err, cfg.subURLs)
	}
}
