package main

import (
	"encoding/json"
	"fmt"
	"io"
	"net/http"
	"net/http/httptest"
	"net/url"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/gorilla/websocket"

	"github.com/heraldhq/herald/pusherapi"
)

const twoPusherApps = `
pusher_apps:
  - id: "101"
    key: key-a
    secret: secret-a-0123456789
    client_events: true
    webhooks:
      - url: %s
        event_types: [channel_occupied]
  - id: "202"
    key: key-b
    secret_file: %s
`

// pusherClient dials /app/{key} as pusher-js does and reads
// pusher:connection_established.
func pusherClient(t *testing.T, addr, key string) *websocket.Conn {
	t.Helper()
	ws, resp, err := websocket.DefaultDialer.Dial("ws://"+addr+"/app/"+key+"?protocol=7&client=js&version=8.6.0&flash=false", nil)
	if resp != nil && resp.Body != nil {
		resp.Body.Close()
	}
	if err != nil {
		t.Fatalf("dial app %s: %v", key, err)
	}
	t.Cleanup(func() { ws.Close() })
	if ev := pusherRead(t, ws); ev.Event != "pusher:connection_established" {
		t.Fatalf("first event %+v", ev)
	}
	return ws
}

type pusherMsg struct {
	Event   string `json:"event"`
	Channel string `json:"channel"`
	Data    any    `json:"data"`
}

func pusherRead(t *testing.T, ws *websocket.Conn) pusherMsg {
	t.Helper()
	_, b := readMessage(t, ws)
	var m pusherMsg
	if err := json.Unmarshal(b, &m); err != nil {
		t.Fatalf("not a Pusher message: %s", b)
	}
	return m
}

func pusherSubscribe(t *testing.T, ws *websocket.Conn, channel string) {
	t.Helper()
	if err := ws.WriteMessage(websocket.TextMessage, []byte(`{"event":"pusher:subscribe","data":{"channel":"`+channel+`"}}`)); err != nil {
		t.Fatal(err)
	}
	if ev := pusherRead(t, ws); ev.Event != "pusher_internal:subscription_succeeded" || ev.Channel != channel {
		t.Fatalf("subscribe %s: %+v", channel, ev)
	}
}

// trigger calls the server's Pusher API as app (id, key, secret) would.
func trigger(t *testing.T, addr, id, key, secret, body string) int {
	t.Helper()
	path := "/apps/" + id + "/events"
	q := url.Values{}
	pusherapi.SignQuery("POST", path, q, []byte(body), key, secret, time.Now())
	res, err := http.Post("http://"+addr+path+"?"+q.Encode(), "application/json", strings.NewReader(body))
	if err != nil {
		t.Fatal(err)
	}
	defer res.Body.Close()
	_, _ = io.Copy(io.Discard, res.Body)
	return res.StatusCode
}

// herald serve with two apps from the config file (one secret inline, one
// from a file): each app's clients get its events, never the other's,
// though both subscribe to a channel of the same name; one app's
// credentials do not work on the other's API; app A's webhooks come
// signed with A's secret, and tell nothing of B.
func TestServePusherTwoApps(t *testing.T) {
	t.Parallel()
	dir := t.TempDir()
	secretFile := filepath.Join(dir, "b.secret")
	if err := os.WriteFile(secretFile, []byte("secret-b-0123456789\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	// App A's webhooks: each call checked as a receiver would.
	var mu sync.Mutex
	var hooked []pusherapi.WebhookEvent
	hook := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		body, _ := io.ReadAll(r.Body)
		var wb pusherapi.WebhookBody
		if r.Header.Get("X-Pusher-Key") != "key-a" || !pusherapi.VerifyWebhook("secret-a-0123456789", r.Header.Get("X-Pusher-Signature"), body) ||
			json.Unmarshal(body, &wb) != nil {
			t.Errorf("a bad webhook call: %v %s", r.Header, body)
			w.WriteHeader(http.StatusUnauthorized)
			return
		}
		mu.Lock()
		hooked = append(hooked, wb.Events...)
		mu.Unlock()
	}))
	defer hook.Close()
	cfgPath := filepath.Join(dir, "herald.yaml")
	if err := os.WriteFile(cfgPath, []byte(fmt.Sprintf(twoPusherApps, hook.URL, secretFile)), 0o600); err != nil {
		t.Fatal(err)
	}
	s := startServer(t, nil, "--config", cfgPath)
	a := pusherClient(t, s.addr, "key-a")
	b := pusherClient(t, s.addr, "key-b")
	pusherSubscribe(t, a, "news")
	pusherSubscribe(t, b, "news")

	if st := trigger(t, s.addr, "101", "key-a", "secret-a-0123456789", `{"name":"for-a","channel":"news","data":"1"}`); st != 200 {
		t.Fatalf("trigger A: %d", st)
	}
	if st := trigger(t, s.addr, "202", "key-b", "secret-b-0123456789", `{"name":"for-b","channel":"news","data":"2"}`); st != 200 {
		t.Fatalf("trigger B: %d", st)
	}
	// A's credentials on B's API, and B's secret for A's key: refused.
	if st := trigger(t, s.addr, "202", "key-a", "secret-a-0123456789", `{"name":"cross","channel":"news","data":"x"}`); st != 401 {
		t.Fatalf("A's key on app B: %d", st)
	}
	if st := trigger(t, s.addr, "101", "key-a", "secret-b-0123456789", `{"name":"cross","channel":"news","data":"x"}`); st != 401 {
		t.Fatalf("B's secret for app A: %d", st)
	}
	// A marker last on each: everything before it has been delivered.
	for _, app := range [][3]string{{"101", "key-a", "secret-a-0123456789"}, {"202", "key-b", "secret-b-0123456789"}} {
		if st := trigger(t, s.addr, app[0], app[1], app[2], `{"name":"end","channel":"news","data":""}`); st != 200 {
			t.Fatalf("marker: %d", st)
		}
	}
	for ws, want := range map[*websocket.Conn]string{a: "for-a", b: "for-b"} {
		var got []string
		for ev := pusherRead(t, ws); ev.Event != "end"; ev = pusherRead(t, ws) {
			got = append(got, ev.Event)
		}
		if len(got) != 1 || got[0] != want {
			t.Errorf("client got %v, want only %s", got, want)
		}
	}
	// A's channel_occupied came to A's webhook, and nothing of B's.
	waitFor(t, "app A's channel_occupied webhook", func() bool {
		mu.Lock()
		defer mu.Unlock()
		return len(hooked) > 0
	})
	mu.Lock()
	if len(hooked) != 1 || hooked[0] != (pusherapi.WebhookEvent{Name: "channel_occupied", Channel: "news"}) {
		t.Errorf("webhook events %+v", hooked)
	}
	mu.Unlock()
	// An unknown key is refused as Pusher does: error 4001, then close.
	ws, _, err := websocket.DefaultDialer.Dial("ws://"+s.addr+"/app/nope?protocol=7", nil)
	if err != nil {
		t.Fatal(err)
	}
	defer ws.Close()
	if code := expectClose(t, ws); code != 4001 {
		t.Fatalf("unknown key: close %d", code)
	}
}

func TestPusherAppsConfigErrors(t *testing.T) {
	t.Parallel()
	cases := []struct{ name, file, want string }{
		{"not a list", "pusher_apps: yes\n", "want a list of apps"},
		{"unknown key", "pusher_apps:\n  - id: a\n    key: k\n    secret: 0123456789abcdef\n    clientevents: true\n", "did you mean client_events"},
		{"no key", "pusher_apps:\n  - id: a\n    secret: 0123456789abcdef\n", "id and key are required"},
		{"short secret", "pusher_apps:\n  - id: a\n    key: k\n    secret: short\n", "at least 16 bytes"},
		{"no secret", "pusher_apps:\n  - id: a\n    key: k\n", "set one of secret and secret_file"},
		{"same key", "pusher_apps:\n  - {id: a, key: k, secret: 0123456789abcdef}\n  - {id: b, key: k, secret: 0123456789abcdef}\n", "key k is used by another app"},
		{"bad id", "pusher_apps:\n  - id: a/b\n    key: k\n    secret: 0123456789abcdef\n", "want an app id"},
		{"bad webhook url", "pusher_apps:\n  - id: a\n    key: k\n    secret: 0123456789abcdef\n    webhooks:\n      - url: ftp://x\n", "http:// or https://"},
		{"bad event type", "pusher_apps:\n  - id: a\n    key: k\n    secret: 0123456789abcdef\n    webhooks:\n      - url: http://x/h\n        event_types: [channel_opened]\n", "want event types among"},
		{"user events without webhook_url", "webhook_users: true\npusher_apps:\n  - id: a\n    key: k\n    secret: 0123456789abcdef\n    webhooks:\n      - url: http://x/h\n", "webhook_url is not"},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			t.Parallel()
			path := writeFile(t, c.file)
			_, err := parseServeConfig([]string{"--config", path}, nil, io.Discard)
			if err == nil || !strings.Contains(err.Error(), c.want) {
				t.Fatalf("got %v, want an error with %q", err, c.want)
			}
		})
	}
	// A good one, with webhooks and their settings, parses.
	path := writeFile(t, "webhook_grace: 1s\npusher_apps:\n  - id: a\n    key: k\n    secret: 0123456789abcdef\n    history_size: 10\n    webhooks:\n      - url: https://app.example/pusher\n        event_types: [channel_occupied, member_added]\n")
	cfg, err := parseServeConfig([]string{"--config", path}, nil, io.Discard)
	if err != nil {
		t.Fatal(err)
	}
	if apps := cfg.pusherApps(); len(apps) != 1 || apps[0].HistorySize != 10 || len(cfg.PusherApps[0].Webhooks[0].EventTypes) != 2 {
		t.Fatalf("parsed %+v", cfg.PusherApps)
	}
}

// With webhook_url and a Pusher app without webhooks, webhook_url gets the
// events of Herald's channels, never those of the app's channels.
func TestServePusherEventsNotAtWebhookURL(t *testing.T) {
	t.Parallel()
	var mu sync.Mutex
	var channels []string
	hook := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		var batch struct {
			Events []struct{ Kind, Channel string }
		}
		_ = json.NewDecoder(r.Body).Decode(&batch)
		mu.Lock()
		for _, e := range batch.Events {
			channels = append(channels, e.Kind+" "+e.Channel)
		}
		mu.Unlock()
	}))
	defer hook.Close()
	path := writeFile(t, "webhook_url: "+hook.URL+"\nnamespaces:\n  - name: room\n    channel_events: true\n"+
		"pusher_apps:\n  - id: \"1\"\n    key: k1\n    secret: 0123456789abcdef\n")
	s := startServer(t, nil, "--config", path)
	p := pusherClient(t, s.addr, "k1")
	pusherSubscribe(t, p, "news")
	h := mustDialWS(t, "ws://"+s.addr+"/ws", nil)
	call(t, h, `{"id":1,"cmd":"subscribe","channel":"room:1"}`)
	waitFor(t, "room:1's channel.occupied at webhook_url", func() bool {
		mu.Lock()
		defer mu.Unlock()
		return slices.Contains(channels, "channel.occupied room:1")
	})
	mu.Lock()
	defer mu.Unlock()
	if len(channels) != 1 {
		t.Fatalf("webhook_url got %v", channels)
	}
}

// One app from the environment alone, as a container runs it.
func TestServePusherAppFromEnv(t *testing.T) {
	t.Parallel()
	s := startServer(t, []string{"HERALD_PUSHER_APP_ID=7", "HERALD_PUSHER_APP_KEY=env-key", "HERALD_PUSHER_APP_SECRET=env-secret-0123456789"})
	ws := pusherClient(t, s.addr, "env-key")
	pusherSubscribe(t, ws, "news")
	if st := trigger(t, s.addr, "7", "env-key", "env-secret-0123456789", `{"name":"hi","channel":"news","data":"1"}`); st != 200 {
		t.Fatalf("trigger: %d", st)
	}
	if ev := pusherRead(t, ws); ev.Event != "hi" || ev.Data != "1" {
		t.Fatalf("got %+v", ev)
	}
	// The same id in the file and the environment is refused.
	path := writeFile(t, "pusher_apps:\n  - {id: \"7\", key: other, secret: 0123456789abcdef}\n")
	_, err := parseServeConfig([]string{"--config", path}, []string{"HERALD_PUSHER_APP_ID=7", "HERALD_PUSHER_APP_KEY=env-key", "HERALD_PUSHER_APP_SECRET=env-secret-0123456789"}, io.Discard)
	if err == nil || !strings.Contains(err.Error(), "id 7 is used by another app") {
		t.Fatalf("same id twice: %v", err)
	}
	if _, err := parseServeConfig([]string{"--pusher-app-key", "k"}, nil, io.Discard); err == nil || !strings.Contains(err.Error(), "need pusher_app_id") {
		t.Fatalf("a key alone: %v", err)
	}
}

// TestPusherDocsConfig runs herald serve with the config example of
// docs/pusher.md as written (only the secret files made real): a page of
// the site it names (https://app.example.com) connects to /app/{key}, as
// pusher-js and Echo in a browser do, and another site's page is refused.
// Without allowed_origins in the example, the site's own page got 403.
func TestPusherDocsConfig(t *testing.T) {
	t.Parallel()
	doc, err := os.ReadFile("../../docs/pusher.md")
	if err != nil {
		t.Fatal(err)
	}
	_, rest, ok := strings.Cut(string(doc), "```yaml\n# herald.yaml\n")
	example, _, ok2 := strings.Cut(rest, "```")
	if !ok || !ok2 {
		t.Fatal("docs/pusher.md has no ```yaml block starting with # herald.yaml")
	}
	dir := t.TempDir()
	for _, id := range []string{"1001", "1002"} {
		file := filepath.Join(dir, id+".secret")
		if err := os.WriteFile(file, []byte("a-secret-of-app-"+id+"\n"), 0o600); err != nil {
			t.Fatal(err)
		}
		example = strings.ReplaceAll(example, "/etc/herald/pusher-"+id+".secret", file)
	}
	cfgPath := filepath.Join(dir, "herald.yaml")
	if err := os.WriteFile(cfgPath, []byte(example), 0o600); err != nil {
		t.Fatal(err)
	}
	s := startServer(t, nil, "--config", cfgPath)
	dial := func(origin string) (*websocket.Conn, int, error) {
		ws, resp, err := websocket.DefaultDialer.Dial("ws://"+s.addr+"/app/app-key?protocol=7&client=js&version=8.6.0&flash=false",
			http.Header{"Origin": {origin}})
		status := 0
		if resp != nil {
			status = resp.StatusCode
			resp.Body.Close()
		}
		return ws, status, err
	}
	ws, status, err := dial("https://app.example.com")
	if err != nil {
		t.Fatalf("the page of https://app.example.com: %v (status %d)", err, status)
	}
	defer ws.Close()
	if ev := pusherRead(t, ws); ev.Event != "pusher:connection_established" {
		t.Fatalf("first event %+v", ev)
	}
	if _, status, err := dial("https://evil.example.net"); err == nil || status != http.StatusForbidden {
		t.Fatalf("another site's page: %v, status %d; want 403", err, status)
	}
}
