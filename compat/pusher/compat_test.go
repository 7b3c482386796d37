// Package pusher_test drives Herald's Pusher endpoint with the real
// pusher-js and laravel-echo from npm, unmodified, in Node and in headless
// Chromium: each Go test starts real Herald nodes on 127.0.0.1:0 (one, or
// two joined through Redis or NATS), with an app backend beside them (the
// auth endpoints a Laravel app has, signing with the app secret, and test
// hooks that trigger and publish through the Go API), and runs a script of
// this folder under `node --test`.
//
// It needs `npm ci` in this folder (.ci/run does it); without
// node_modules the tests skip, saying so.
package pusher_test

import (
	"bytes"
	"context"
	"crypto/sha256"
	"encoding/base64"
	"encoding/json"
	"fmt"
	"log/slog"
	"net/http"
	"net/http/httptest"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/gorilla/websocket"
	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"
	"go.uber.org/goleak"

	"github.com/heraldhq/herald"
	"github.com/heraldhq/herald/internal/testenv"
	"github.com/heraldhq/herald/natsbroker"
	"github.com/heraldhq/herald/protocol"
	"github.com/heraldhq/herald/redisbroker"
)

func TestMain(m *testing.M) { goleak.VerifyTestMain(m) }

var app = herald.PusherApp{ID: "1", Key: "compat-key", Secret: "compat-secret", ClientEvents: true, HistorySize: 100}

// encryptionMasterKey is the app backend's master key for encrypted
// channels (browser.test.mjs encrypts with the same derivation).
const encryptionMasterKey = "compat-encryption-master-key-32b"

// noEvents is a second app, client events off.
var noEvents = herald.PusherApp{ID: "2", Key: "quiet-key", Secret: "quiet-secret"}

// backend is a running node and the app's backend beside it.
type backend struct {
	node *herald.Node
	srv  *httptest.Server
	// seen are the publications a Herald protocol client subscribed to
	// "private-chat" received (the Go side of "and the other way").
	mu   sync.Mutex
	seen []json.RawMessage
}

func start(t *testing.T, broker herald.Broker) *backend {
	return startWith(t, herald.Config{Broker: broker})
}

// startWith starts a node of cfg with the test apps.
func startWith(t *testing.T, cfg herald.Config) *backend {
	t.Helper()
	cfg.PusherApps, cfg.AllowAnyOrigin = []herald.PusherApp{app, noEvents}, true
	cfg.Logger = slog.New(slog.NewTextHandler(testWriter{t}, &slog.HandlerOptions{Level: slog.LevelWarn}))
	n, err := herald.New(cfg)
	if err != nil {
		t.Fatal(err)
	}
	b := &backend{node: n}
	mux := http.NewServeMux()
	mux.Handle("/app/", n.PusherHandler())
	mux.Handle("/ws", n.Handler())
	mux.HandleFunc("POST /broadcasting/auth", b.channelAuth)
	mux.HandleFunc("POST /broadcasting/user-auth", b.userAuth)
	mux.HandleFunc("POST /test/{op}", b.op)
	mux.HandleFunc("GET /test/seen", b.seenJSON)
	mux.HandleFunc("/", b.static)
	b.srv = httptest.NewServer(mux)
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan struct{})
	go func() { defer close(done); _ = n.Run(ctx) }()
	t.Cleanup(func() {
		sctx, scancel := context.WithTimeout(context.Background(), 5*time.Second)
		defer scancel()
		_ = n.Shutdown(sctx)
		cancel()
		<-done
		b.srv.Close()
	})
	return b
}

type testWriter struct{ t *testing.T }

func (w testWriter) Write(p []byte) (int, error) {
	w.t.Logf("%s", bytes.TrimSpace(p))
	return len(p), nil
}

// appOf is the app of a request's key (param "key"; the first app else).
func appOf(r *http.Request) herald.PusherApp {
	if r.FormValue("key") == noEvents.Key {
		return noEvents
	}
	return app
}

// channelAuth is a Laravel app's /broadcasting/auth: it signs
// socket_id:channel_name (and the channel_data of the user in param
// "user" for presence) with the app secret; a channel with "forbidden" in
// its name is refused with 403, as a Laravel channel callback that says no.
func (b *backend) channelAuth(w http.ResponseWriter, r *http.Request) {
	socket, channel := r.FormValue("socket_id"), r.FormValue("channel_name")
	if strings.Contains(channel, "forbidden") {
		http.Error(w, "Forbidden", http.StatusForbidden)
		return
	}
	a, out := appOf(r), map[string]string{}
	if strings.HasPrefix(channel, "presence-") {
		user := r.FormValue("user")
		cd, _ := json.Marshal(map[string]any{"user_id": user, "user_info": map[string]string{"name": strings.ToUpper(user)}})
		out["channel_data"] = string(cd)
	}
	out["auth"] = herald.PusherChannelAuth(a, socket, channel, out["channel_data"])
	if strings.HasPrefix(channel, "private-encrypted-") {
		// As the Pusher server SDKs derive it: the key of an encrypted
		// channel, which Herald never sees.
		sum := sha256.Sum256([]byte(channel + encryptionMasterKey))
		out["shared_secret"] = base64.StdEncoding.EncodeToString(sum[:])
	}
	writeJSON(w, out)
}

// userAuth is /broadcasting/user-auth: user_data of the user in "user".
func (b *backend) userAuth(w http.ResponseWriter, r *http.Request) {
	ud, _ := json.Marshal(map[string]string{"id": r.FormValue("user"), "name": "someone"})
	writeJSON(w, map[string]string{"auth": herald.PusherUserAuth(appOf(r), r.FormValue("socket_id"), string(ud)), "user_data": string(ud)})
}

// op runs a test hook: trigger, publish (Herald's own API), send_to_user,
// disconnect (a client, with a Herald close code), watch (a Herald
// protocol client subscribes to a Pusher channel's Herald channel).
func (b *backend) op(w http.ResponseWriter, r *http.Request) {
	var req struct {
		Channels []string `json:"channels"`
		Channel  string   `json:"channel"`
		Event    string   `json:"event"`
		Data     string   `json:"data"`
		Exclude  string   `json:"exclude"`
		User     string   `json:"user"`
		Socket   string   `json:"socket"`
		Code     int      `json:"code"`
	}
	if err := json.NewDecoder(r.Body).Decode(&req); err != nil {
		http.Error(w, err.Error(), http.StatusBadRequest)
		return
	}
	ctx := r.Context()
	var err error
	switch r.PathValue("op") {
	case "trigger":
		err = b.node.PusherTrigger(ctx, app, req.Channels, req.Event, req.Data, req.Exclude)
	case "publish":
		_, err = b.node.Publish(ctx, app.HeraldChannel(req.Channel), []byte(req.Data))
	case "send_to_user":
		err = b.node.PusherSendToUser(ctx, app, req.User, req.Event, req.Data)
	case "disconnect":
		err = b.node.Disconnect(ctx, req.Socket, herald.CloseCode(req.Code), "test")
	case "watch":
		err = b.watch(app.HeraldChannel(req.Channel))
	default:
		http.NotFound(w, r)
		return
	}
	if err != nil {
		http.Error(w, err.Error(), http.StatusBadRequest)
		return
	}
	writeJSON(w, map[string]bool{"ok": true})
}

// watch subscribes a Herald protocol client (gorilla, on the node's /ws)
// to channel, granted by the server, and records what it receives.
func (b *backend) watch(channel string) error {
	ws, _, err := websocket.DefaultDialer.Dial("ws"+strings.TrimPrefix(b.srv.URL, "http")+"/ws", nil)
	if err != nil {
		return err
	}
	cmd, _ := json.Marshal(protocol.Command{ID: 1, Cmd: "connect"})
	if err := ws.WriteMessage(websocket.TextMessage, cmd); err != nil {
		ws.Close()
		return err
	}
	var reply struct {
		Result struct {
			Client string `json:"client"`
		} `json:"result"`
	}
	_ = ws.SetReadDeadline(time.Now().Add(5 * time.Second))
	if err := ws.ReadJSON(&reply); err != nil {
		ws.Close()
		return err
	}
	if err := b.node.SubscribeClient(context.Background(), reply.Result.Client, channel); err != nil {
		ws.Close()
		return err
	}
	go func() {
		defer ws.Close()
		for {
			_ = ws.SetReadDeadline(time.Now().Add(60 * time.Second))
			var m struct {
				Push string          `json:"push"`
				Data json.RawMessage `json:"data"`
			}
			if err := ws.ReadJSON(&m); err != nil {
				return
			}
			if m.Push == "pub" {
				b.mu.Lock()
				b.seen = append(b.seen, m.Data)
				b.mu.Unlock()
			}
		}
	}()
	return nil
}

func (b *backend) seenJSON(w http.ResponseWriter, _ *http.Request) {
	b.mu.Lock()
	defer b.mu.Unlock()
	writeJSON(w, b.seen)
}

// static serves the browser test's page and pusher-js's browser build.
func (b *backend) static(w http.ResponseWriter, r *http.Request) {
	switch r.URL.Path {
	case "/pusher.js":
		http.ServeFile(w, r, filepath.Join("node_modules", "pusher-js", "dist", "web", "pusher.js"))
	case "/pusher-with-encryption.js":
		http.ServeFile(w, r, filepath.Join("node_modules", "pusher-js", "dist", "web", "pusher-with-encryption.js"))
	case "/encrypted.html":
		w.Header().Set("Content-Type", "text/html")
		fmt.Fprint(w, `<!doctype html><title>pusher-js with encryption</title><script src="/pusher-with-encryption.js"></script><p>ready</p>`)
	case "/herald-recovery.js":
		http.ServeFile(w, r, filepath.Join("..", "..", "clients", "pusher", "herald-recovery.js"))
	case "/":
		w.Header().Set("Content-Type", "text/html")
		fmt.Fprint(w, `<!doctype html><title>pusher-js</title><script src="/pusher.js"></script><p>ready</p>`)
	default:
		http.NotFound(w, r)
	}
}

func writeJSON(w http.ResponseWriter, v any) {
	w.Header().Set("Content-Type", "application/json")
	_ = json.NewEncoder(w).Encode(v)
}

// runNode runs `node --test script` here with env, within 3 minutes.
func runNode(t *testing.T, script string, env ...string) {
	t.Helper()
	if _, err := os.Stat(filepath.Join("node_modules", "pusher-js", "package.json")); err != nil {
		t.Skip("compat/pusher/node_modules is missing: run `npm ci` in compat/pusher (.ci/run does)")
	}
	nodeBin, err := exec.LookPath("node")
	if err != nil {
		t.Skip("node is not installed")
	}
	ctx, cancel := context.WithTimeout(context.Background(), 3*time.Minute)
	defer cancel()
	cmd := exec.CommandContext(ctx, nodeBin, "--test", "--test-force-exit", "--test-concurrency=1", "--test-timeout=120000", script)
	cmd.Env = append(os.Environ(), env...)
	out, err := cmd.CombinedOutput()
	t.Logf("node --test %s:\n%s", script, out)
	if err != nil {
		t.Fatalf("node --test %s: %v", script, err)
	}
}

func TestPusherJS(t *testing.T) {
	b := start(t, nil)
	runNode(t, "pusher.test.mjs", "HERALD_URL="+b.srv.URL)
}

// TestPusherJSHeartbeat: Herald's heartbeat (WebSocket pings, here every
// 100ms, a close past 200ms more without an answer) does not cut an idle
// pusher-js client, whose WebSocket answers pings by itself.
func TestPusherJSHeartbeat(t *testing.T) {
	b := startWith(t, herald.Config{PingInterval: 100 * time.Millisecond, PongTimeout: 200 * time.Millisecond})
	runNode(t, "heartbeat.test.mjs", "HERALD_URL="+b.srv.URL)
}

func TestLaravelEcho(t *testing.T) {
	b := start(t, nil)
	runNode(t, "echo.test.mjs", "HERALD_URL="+b.srv.URL)
}

func TestPusherJSInChromium(t *testing.T) {
	if _, err := os.Stat("/usr/bin/chromium"); err != nil && os.Getenv("CHROMIUM_PATH") == "" {
		t.Skip("no Chromium at /usr/bin/chromium (set CHROMIUM_PATH)")
	}
	b := start(t, nil)
	runNode(t, "browser.test.mjs", "HERALD_URL="+b.srv.URL)
}

// TestPusherJSCluster: a pusher-js client on node A gets the events
// triggered on node B, through Redis and through NATS.
func TestPusherJSCluster(t *testing.T) {
	for _, tc := range []struct {
		name   string
		broker func(t *testing.T, prefix string) herald.Broker
	}{
		{"redis", func(t *testing.T, prefix string) herald.Broker {
			br, err := redisbroker.New(redisbroker.Options{URL: testenv.RedisURL(t), Prefix: prefix})
			if err != nil {
				t.Fatal(err)
			}
			t.Cleanup(br.Close) // after the node's cleanup (Run returned): cleanups run last first
			return br
		}},
		{"nats", func(t *testing.T, prefix string) herald.Broker {
			ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
			defer cancel()
			br, err := natsbroker.New(ctx, natsbroker.Options{URL: testenv.NATSURL(t), Prefix: prefix, Storage: jetstream.MemoryStorage})
			if err != nil {
				t.Fatal(err)
			}
			t.Cleanup(br.Close)
			deleteNATSStreams(t, prefix)
			return br
		}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			prefix := fmt.Sprintf("pushercompat_%d", time.Now().UnixNano())
			a := start(t, tc.broker(t, prefix))
			b := start(t, tc.broker(t, prefix))
			runNode(t, "cluster.test.mjs", "HERALD_URL_A="+a.srv.URL, "HERALD_URL_B="+b.srv.URL)
		})
	}
}

// deleteNATSStreams deletes the JetStream streams and buckets of prefix
// when the test ends (once: both nodes share them).
func deleteNATSStreams(t *testing.T, prefix string) {
	if _, done := cleaned.LoadOrStore(prefix, true); done {
		return
	}
	u := testenv.NATSURL(t)
	t.Cleanup(func() {
		nc, err := nats.Connect(u)
		if err != nil {
			t.Error(err)
			return
		}
		defer nc.Close()
		js, _ := jetstream.New(nc)
		ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
		defer cancel()
		for _, s := range []string{prefix + "_history", "KV_" + prefix + "_idem", "KV_" + prefix + "_presence", prefix + "_events", "KV_" + prefix + "_eventstate"} {
			if err := js.DeleteStream(ctx, s); err != nil && !strings.Contains(err.Error(), "not found") {
				t.Errorf("cleanup: delete stream %s: %v", s, err)
			}
		}
	})
}

var cleaned sync.Map
