package main

import (
	"encoding/json"
	"fmt"
	"io"
	"net/http"
	"net/http/httptest"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/gorilla/websocket"

	"github.com/heraldhq/herald"
	"github.com/heraldhq/herald/httphooks"
)

// eventApp is the application's backend for the webhooks: it checks each
// call's signature, can be told how to answer the next calls (a status,
// or a late answer), and keeps the events de-duplicated by id, as a real
// backend must. Its /connect is a connect hook that makes the connection
// the user named in the connect command's data ({"user":"ann"}).
type eventApp struct {
	*httptest.Server
	t *testing.T

	mu     sync.Mutex
	script []answer // how to answer the next webhook calls; then 204
	calls  int      // webhook calls received
	failed int      // calls answered other than 2xx in time
	raw    int      // events received, duplicates included
	seen   map[string]bool
	events []herald.Event // de-duplicated, in arrival order
	errs   []string       // what was wrong with a call
}

// answer is how eventApp answers one webhook call: with status after
// delay (a delay past webhook_timeout: the call has timed out for Herald,
// yet the app took the events).
type answer struct {
	status int
	delay  time.Duration
}

func newEventApp(t *testing.T) *eventApp {
	a := &eventApp{t: t, seen: make(map[string]bool)}
	a.Server = httptest.NewServer(http.HandlerFunc(a.serve))
	t.Cleanup(a.Close)
	return a
}

func (a *eventApp) serve(w http.ResponseWriter, r *http.Request) {
	body, err := httphooks.VerifyRequest(r, []byte(testHooksSecret), time.Minute)
	if err != nil {
		a.fail("bad signature: %v", err)
		http.Error(w, err.Error(), http.StatusUnauthorized)
		return
	}
	if r.URL.Path == "/connect" {
		var req httphooks.ConnectRequest
		var data struct{ User string }
		if json.Unmarshal(body, &req) != nil || json.Unmarshal(req.Data, &data) != nil || r.Header.Get("Herald-Hook") != "connect" {
			a.fail("bad connect call %s", body)
		}
		w.Header().Set("Content-Type", "application/json")
		fmt.Fprintf(w, `{"result":{"user":%q}}`, data.User)
		return
	}
	var batch httphooks.WebhookBatch
	if err := json.Unmarshal(body, &batch); err != nil || r.Header.Get("Herald-Hook") != "events" || r.URL.Path != "/events" || len(batch.Events) == 0 {
		a.fail("bad webhook call %s %s: %v", r.URL.Path, body, err)
		http.Error(w, "bad call", http.StatusBadRequest)
		return
	}
	a.mu.Lock()
	a.calls++
	ans := answer{status: http.StatusNoContent}
	if len(a.script) > 0 {
		ans, a.script = a.script[0], a.script[1:]
	}
	if ans.status/100 == 2 {
		// Taken, whether Herald hears the answer in time or not.
		a.raw += len(batch.Events)
		for _, e := range batch.Events {
			if !a.seen[e.ID] {
				a.seen[e.ID] = true
				a.events = append(a.events, e)
			}
		}
	}
	if ans.status/100 != 2 || ans.delay > 0 {
		a.failed++
	}
	a.mu.Unlock()
	if ans.delay > 0 {
		select {
		case <-time.After(ans.delay):
		case <-r.Context().Done():
		}
	}
	w.WriteHeader(ans.status)
}

func (a *eventApp) fail(format string, args ...any) {
	a.mu.Lock()
	a.errs = append(a.errs, fmt.Sprintf(format, args...))
	a.mu.Unlock()
}

// then scripts the answers of the next webhook calls.
func (a *eventApp) then(answers ...answer) {
	a.mu.Lock()
	a.script = append(a.script, answers...)
	a.mu.Unlock()
}

// byKey returns the events received so far per key, as "kind user"
// lines in arrival order (the order Herald guarantees per key).
func (a *eventApp) byKey() map[string][]string {
	a.mu.Lock()
	defer a.mu.Unlock()
	out := make(map[string][]string)
	for _, e := range a.events {
		s := e.Kind
		if e.Kind == herald.EventMemberAdded || e.Kind == herald.EventMemberRemoved || e.Kind == herald.EventPublication {
			s += " " + e.User
		}
		if e.Data != nil {
			s += " " + string(e.Data)
		}
		out[e.Key] = append(out[e.Key], s)
	}
	return out
}

func sameEvents(got, want map[string][]string) bool {
	if len(got) != len(want) {
		return false
	}
	for k, w := range want {
		if !slices.Equal(got[k], w) {
			return false
		}
	}
	return true
}

// waitEvents waits until exactly want has arrived (per key, in order),
// then for settle more, in which nothing else may arrive.
func (a *eventApp) waitEvents(t *testing.T, within, settle time.Duration, want map[string][]string) {
	t.Helper()
	deadline := time.Now().Add(within)
	for !sameEvents(a.byKey(), want) {
		if time.Now().After(deadline) {
			t.Fatalf("events:\n got %q\nwant %q", a.byKey(), want)
		}
		time.Sleep(20 * time.Millisecond)
	}
	time.Sleep(settle)
	if got := a.byKey(); !sameEvents(got, want) {
		t.Fatalf("more events came:\n got %q\nwant %q", got, want)
	}
	a.mu.Lock()
	defer a.mu.Unlock()
	if len(a.errs) > 0 {
		t.Fatalf("bad calls: %q", a.errs)
	}
}

// waitKind waits until an event of kind for key has arrived.
func (a *eventApp) waitKind(t *testing.T, key, kind string) {
	t.Helper()
	waitFor(t, kind+" of "+key, func() bool {
		for _, s := range a.byKey()[key] {
			if strings.HasPrefix(s, kind) {
				return true
			}
		}
		return false
	})
}

// webhookNamespaces is a config file whose namespace chat has every
// channel event on.
const webhookNamespaces = `namespaces:
  - name: chat
    presence: true
    channel_events: true
    member_events: true
    publish_events: true
`

// connectUser opens a protocol connection to addr as user (through the
// connect hook).
func connectUser(t *testing.T, addr, user string) *websocket.Conn {
	t.Helper()
	ws := mustDialWS(t, "ws://"+addr+"/ws", nil)
	call(t, ws, `{"id":1,"cmd":"connect","data":{"user":"`+user+`"}}`)
	return ws
}

// herald serve with webhook_url: signed batches of user, channel, member
// and publication events; a backend that answers 500 twice gets them
// again, in order, each once after de-duplication.
func TestServeWebhooks(t *testing.T) {
	t.Parallel()
	app := newEventApp(t)
	s := startServer(t, []string{"HERALD_HOOKS_SECRET=" + testHooksSecret},
		"--config", writeFile(t, webhookNamespaces), "--hook-connect-url", app.URL+"/connect",
		"--webhook-url", app.URL+"/events", "--webhook-users", "--webhook-grace", "200ms", "--webhook-timeout", "2s")
	logs := s.logs.String()
	if !strings.Contains(logs, `"msg":"webhooks on"`) || !strings.Contains(logs, `"level":"WARN","msg":"webhook outbox in this process's memory`) {
		t.Fatalf("no webhook log lines:\n%s", logs)
	}

	ann := connectUser(t, s.addr, "ann")
	app.waitKind(t, "user:ann", herald.EventUserOnline)
	call(t, ann, `{"id":2,"cmd":"subscribe","channel":"chat:a"}`)
	bob := connectUser(t, s.addr, "bob")
	call(t, bob, `{"id":2,"cmd":"publish","channel":"chat:a","data":{"text":"hi"}}`)
	app.waitKind(t, "channel:chat:a", herald.EventPublication)

	// The next two calls fail; the events wait, in order, and come again.
	app.then(answer{status: 500}, answer{status: 503})
	ann.Close()
	app.waitEvents(t, 20*time.Second, 500*time.Millisecond, map[string][]string{
		"user:ann":       {"user.online", "user.offline"},
		"user:bob":       {"user.online"},
		"channel:chat:a": {"channel.occupied", "member.added ann", `publication bob {"text":"hi"}`, "member.removed ann", "channel.vacated"},
	})
	app.mu.Lock()
	failed, calls := app.failed, app.calls
	app.mu.Unlock()
	if failed != 2 || calls < 4 {
		t.Fatalf("%d calls, %d failed: want the 2 failures retried", calls, failed)
	}
	_, metrics := httpGet(t, "http://"+s.addr+"/metrics")
	for _, want := range []string{`herald_webhook_deliveries_total{result="failed"} 2`, `herald_webhook_events_total{result="delivered"} 8`} {
		if !strings.Contains(metrics, want) {
			t.Errorf("metrics lack %s:\n%s", want, grepLines(metrics, "herald_webhook"))
		}
	}
}

func grepLines(s, prefix string) string {
	var out []string
	for _, l := range strings.Split(s, "\n") {
		if strings.HasPrefix(l, prefix) {
			out = append(out, l)
		}
	}
	return strings.Join(out, "\n")
}

// Every webhook setting from flags, variables and the file, and what
// refuses to start.
func TestWebhookConfig(t *testing.T) {
	t.Parallel()
	cfg, err := parseServeConfig([]string{"--config", writeFile(t, webhookNamespaces+"webhook_grace: 1s\n"), "--webhook-url", "https://app.example.com/events"},
		[]string{"HERALD_WEBHOOK_USERS=true", "HERALD_WEBHOOK_NODE_TTL=3s", "HERALD_WEBHOOK_RETRY_FOR=1h", "HERALD_WEBHOOK_TIMEOUT=4s",
			"HERALD_HOOKS_SECRET=" + testHooksSecret}, io.Discard)
	if err != nil {
		t.Fatal(err)
	}
	w := cfg.Webhooks
	if w.URL != "https://app.example.com/events" || !w.Users || w.Grace != time.Second || w.NodeTTL != 3*time.Second ||
		w.RetryFor != time.Hour || w.Timeout != 4*time.Second {
		t.Fatalf("%+v", w)
	}
	ns := cfg.Namespaces[0]
	if !ns.ChannelEvents || !ns.MemberEvents || !ns.PublishEvents {
		t.Fatalf("namespace %+v", ns)
	}
	b, err := cfg.Hooks.backend(w.URL, w.Timeout)
	if err != nil {
		t.Fatal(err)
	}
	defer b.Close()
	if wh := w.webhooks(b); wh.Deliver == nil || !wh.Users || wh.Timeout != 4*time.Second || wh.NodeTTL != 3*time.Second {
		t.Fatalf("%+v", wh)
	}
	if h := b.Hooks(); h.Connect != nil || h.Timeout != 0 {
		t.Fatalf("a hook is on: %+v", h)
	}

	for _, c := range []struct {
		args []string
		file string
		want string
	}{
		{args: []string{"--webhook-url", "app.example.com/events", "--webhook-users"},
			want: `invalid webhook_url "app.example.com/events" (from flag --webhook-url): want an http:// or https:// URL, such as https://app.example.com/herald/events; did you mean https://app.example.com/events?`},
		{args: []string{"--webhook-users", "--webhook-grace", "1s"}, want: "webhook_users, webhook_grace set, but webhook_url is not"},
		{file: webhookNamespaces, want: `channel_events of namespace "chat", member_events of namespace "chat", publish_events of namespace "chat" set, but webhook_url is not`},
		{args: []string{"--webhook-url", "http://a/e"}, want: "webhook_url set, but no event is on"},
		{args: []string{"--webhook-url", "http://a/e", "--webhook-users", "--webhook-node-ttl", "500ms"}, want: "webhook_node_ttl 500ms is under 1s"},
		{args: []string{"--webhook-url", "http://a/e", "--webhook-users", "--webhook-retry-for", "-1h"}, want: "must not be negative"},
		{args: []string{"--webhook-url", "http://a/e"}, file: "namespaces:\n  - name: chat\n    member_events: true\n",
			want: `member_events of namespace "chat" needs presence`},
		{args: []string{"--webhook-url", "http://a/e"}, file: "namespaces:\n  - name: chat\n    channel_events: maybe\n",
			want: `invalid channel_events of namespace "chat" "maybe"`},
	} {
		args := c.args
		if c.file != "" {
			args = append(args, "--config", writeFile(t, c.file))
		}
		_, err := parseServeConfig(args, nil, io.Discard)
		if err == nil || !strings.Contains(err.Error(), c.want) {
			t.Errorf("%v %q: error %v, want %q", c.args, c.file, err, c.want)
		}
	}
	// hooks_secret signs the webhooks: allowed with webhook_url alone.
	if _, err := parseServeConfig([]string{"--webhook-url", "http://a/e", "--webhook-users"}, []string{"HERALD_HOOKS_SECRET=" + testHooksSecret}, io.Discard); err != nil {
		t.Fatal(err)
	}
}
