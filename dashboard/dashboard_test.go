package dashboard

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"log/slog"
	"net/http"
	"net/http/httptest"
	"net/url"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/gorilla/websocket"
	"go.uber.org/goleak"

	"github.com/heraldhq/herald"
	"github.com/heraldhq/herald/internal/dashtest"
	"github.com/heraldhq/herald/internal/wstest"
	"github.com/heraldhq/herald/protocol"
)

func TestMain(m *testing.M) { goleak.VerifyTestMain(m) }

const testPassword = "correct horse battery staple"

// newBrowser is a browser on the server at base. (It finds the session
// cookie by dashtest.SessionCookie: a login fails if that is not
// sessionCookie.)
func newBrowser(t *testing.T, base string) *dashtest.Browser {
	return &dashtest.Browser{T: t, Base: base}
}

// testServer is a node with its WebSocket endpoint and a dashboard mounted
// at /admin, as an embedding server mounts them, on a loopback port.
type testServer struct {
	*httptest.Server
	node *herald.Node
	dash *Dashboard
	logs string // the file of the server's log: what the dashboard logged
}

func newTestServer(t *testing.T, cfg Config) *testServer {
	t.Helper()
	n, err := herald.New(herald.Config{Namespaces: []herald.Namespace{{Name: ""}, {Name: "room", Presence: true}}})
	if err != nil {
		t.Fatal(err)
	}
	s := &testServer{node: n, logs: filepath.Join(t.TempDir(), "log")}
	logFile, err := os.Create(s.logs)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { logFile.Close() })
	cfg.Logs = NewLogRecorder(slog.NewJSONHandler(logFile, &slog.HandlerOptions{Level: slog.LevelDebug}), 0)
	cfg.Logger = slog.New(cfg.Logs)
	s.dash = New(n, cfg)
	mux := http.NewServeMux()
	mux.Handle("/ws", n.Handler())
	mux.Handle(Path, s.dash)
	mux.Handle(Path+"/", s.dash)
	s.Server = httptest.NewServer(mux)
	ctx, cancel := context.WithCancel(context.Background())
	var wg sync.WaitGroup
	wg.Go(func() { _ = n.Run(ctx) })
	wg.Go(func() { s.dash.Run(ctx) })
	t.Cleanup(func() {
		_ = n.Shutdown(context.Background())
		cancel()
		wg.Wait()
		s.Close()
	})
	return s
}

// TestOff: without a password every path is 404, files included;
// SetPassword turns the dashboard on and off, and ends the sessions.
func TestOff(t *testing.T) {
	t.Parallel()
	s := newTestServer(t, Config{})
	c := newBrowser(t, s.URL)
	for _, p := range []string{"/admin", "/admin/", "/admin/login", "/admin/api/stats", "/admin/admin.js"} {
		if resp, _ := c.Do("GET", p, nil, ""); resp.StatusCode != http.StatusNotFound {
			t.Errorf("%s: %d, want 404", p, resp.StatusCode)
		}
	}
	if !s.dash.SetPassword(testPassword) || s.dash.SetPassword(testPassword) || !s.dash.Enabled() {
		t.Fatal("SetPassword: want on, changed once")
	}
	if c.Login(testPassword); c.Token == "" {
		t.Fatal("login after SetPassword failed")
	}
	if resp, _ := c.Do("GET", "/admin/api/stats", nil, ""); resp.StatusCode != http.StatusOK {
		t.Fatalf("stats with a session: %d", resp.StatusCode)
	}
	s.dash.SetPassword("another password, long enough")
	if resp, _ := c.Do("GET", "/admin/api/stats", nil, ""); resp.StatusCode != http.StatusUnauthorized {
		t.Fatalf("a session of the old password: %d, want 401", resp.StatusCode)
	}
	if !s.dash.SetPassword("") || s.dash.Enabled() {
		t.Fatal("SetPassword(\"\") did not turn it off")
	}
	if resp, _ := c.Do("GET", "/admin/", nil, ""); resp.StatusCode != http.StatusNotFound {
		t.Fatalf("/admin/ once off: %d", resp.StatusCode)
	}
}

// TestDashboard: with a password, the dashboard's data needs a session
// from a login (constant-time password check, a cookie that is HttpOnly,
// SameSite=Strict, scoped to /admin, with an expiry); state changes need
// the session's CSRF token and a same-origin request; the routes serve the
// node's stats, channels, presence, recent errors and publish, and answer
// errors as the HTTP API does; logout ends the session; the password is
// never logged.
func TestDashboard(t *testing.T) {
	t.Parallel()
	s := newTestServer(t, Config{Password: testPassword, Version: "v-test", Broker: "memory"})
	base := s.URL
	c := newBrowser(t, base)

	// Before logging in: the pages send you to the login, the data is 401.
	resp, _ := c.Do("GET", "/admin", nil, "")
	if resp.StatusCode != http.StatusMovedPermanently || resp.Header.Get("Location") != "/admin/" {
		t.Fatalf("/admin: %d %q", resp.StatusCode, resp.Header.Get("Location"))
	}
	resp, _ = c.Do("GET", "/admin/", nil, "")
	if resp.StatusCode != http.StatusSeeOther || resp.Header.Get("Location") != "/admin/login" {
		t.Fatalf("/admin/ without a session: %d %q", resp.StatusCode, resp.Header.Get("Location"))
	}
	resp, body := c.Do("GET", "/admin/login", nil, "")
	if resp.StatusCode != http.StatusOK || !strings.Contains(body, `id="password"`) ||
		!strings.Contains(resp.Header.Get("Content-Security-Policy"), "frame-ancestors 'none'") {
		t.Fatalf("/admin/login: %d %q", resp.StatusCode, resp.Header.Get("Content-Security-Policy"))
	}
	resp, body = c.Do("GET", "/admin/api/stats", nil, "")
	if resp.StatusCode != http.StatusUnauthorized || strings.TrimSpace(body) != `{"error":{"code":"unauthorized","message":"not logged in"}}` {
		t.Fatalf("stats without a session: %d %s", resp.StatusCode, body)
	}
	if resp, _ := c.Do("GET", "/admin/vendor/uPlot.iife.min.js", nil, ""); resp.StatusCode != http.StatusOK {
		t.Fatalf("the dashboard's files are public: %d", resp.StatusCode)
	}
	if resp, _ := c.Do("GET", "/admin/vendor/herald-client.js", nil, ""); resp.StatusCode != http.StatusOK {
		t.Fatalf("the dashboard's client: %d", resp.StatusCode)
	}
	if resp, _ := c.Do("POST", "/admin/admin.js", nil, ""); resp.StatusCode != http.StatusMethodNotAllowed {
		t.Fatalf("POST to a file: %d", resp.StatusCode)
	}

	// Wrong password, and a login posted by another site.
	if resp := c.Login("wrong password, long enough"); resp.StatusCode != http.StatusSeeOther ||
		resp.Header.Get("Location") != "/admin/login?error=wrong" || c.Token != "" {
		t.Fatalf("wrong password: %d %q, cookie %q", resp.StatusCode, resp.Header.Get("Location"), c.Token)
	}
	resp, _ = c.Do("POST", "/admin/login", http.Header{"Origin": {"https://evil.example"},
		"Content-Type": {"application/x-www-form-urlencoded"}}, "password="+url.QueryEscape(testPassword))
	if resp.StatusCode != http.StatusForbidden || len(resp.Cookies()) != 0 {
		t.Fatalf("cross-origin login: %d", resp.StatusCode)
	}

	// The real login.
	resp = c.Login(testPassword)
	if resp.StatusCode != http.StatusSeeOther || resp.Header.Get("Location") != "/admin/" || c.Token == "" {
		t.Fatalf("login: %d %q, cookie %q", resp.StatusCode, resp.Header.Get("Location"), c.Token)
	}
	var ck *http.Cookie
	for _, x := range resp.Cookies() {
		if x.Name == sessionCookie {
			ck = x
		}
	}
	if !ck.HttpOnly || ck.SameSite != http.SameSiteStrictMode || ck.Path != "/admin" || ck.MaxAge <= 0 || ck.Expires.IsZero() ||
		ck.Secure || len(ck.Value) < 43 {
		t.Fatalf("session cookie %+v: want HttpOnly, SameSite=Strict, Path=/admin, an expiry and 256 random bits", ck)
	}
	if resp, body := c.Do("GET", "/admin/", nil, ""); resp.StatusCode != http.StatusOK || !strings.Contains(body, `id="connections"`) {
		t.Fatalf("/admin/ with a session: %d", resp.StatusCode)
	}
	if resp, _ := c.Do("GET", "/admin/login", nil, ""); resp.StatusCode != http.StatusSeeOther || resp.Header.Get("Location") != "/admin/" {
		t.Fatalf("/admin/login with a session: %d %q", resp.StatusCode, resp.Header.Get("Location"))
	}
	var sess struct{ CSRF string }
	if st := c.GetJSON("/admin/api/session", &sess); st != http.StatusOK || len(sess.CSRF) < 43 {
		t.Fatalf("session: %d %+v", st, sess)
	}
	c.CSRF = sess.CSRF

	// Before the first sample the charts get an empty list, not null.
	if _, body := c.Do("GET", "/admin/api/stats", nil, ""); strings.Contains(body, `"samples":null`) {
		t.Fatalf("stats: %s", body)
	}

	// Stats, channels and presence see a client.
	ws := wstest.Dial(t, "ws"+strings.TrimPrefix(base, "http")+"/ws", nil)
	ws.OK(protocol.Command{Cmd: "subscribe", Channel: "room:1"})
	var stats struct {
		Connections int    `json:"connections"`
		Channels    int    `json:"channels"`
		Ready       string `json:"ready"`
		Broker      string `json:"broker"`
		Version     string `json:"version"`
		Samples     []sample
	}
	if st := c.GetJSON("/admin/api/stats", &stats); st != http.StatusOK || stats.Connections != 1 || stats.Channels != 1 ||
		stats.Ready != "ok" || stats.Broker != "memory" || stats.Version != "v-test" {
		t.Fatalf("stats: %d %+v", st, stats)
	}
	var chans struct {
		Total    int
		Channels []channelCount
	}
	if st := c.GetJSON("/admin/api/channels", &chans); st != http.StatusOK || chans.Total != 1 ||
		chans.Channels[0] != (channelCount{"room:1", 1}) {
		t.Fatalf("channels: %d %+v", st, chans)
	}
	var pres struct {
		Count   int
		Clients []struct{ Client string }
	}
	if st := c.GetJSON("/admin/api/presence?channel=room:1", &pres); st != http.StatusOK || pres.Count != 1 || len(pres.Clients) != 1 {
		t.Fatalf("presence: %d %+v", st, pres)
	}
	resp, body = c.Do("GET", "/admin/api/presence?channel=nopresence", nil, "")
	if resp.StatusCode != http.StatusBadRequest || !strings.Contains(body, `"code":"not_enabled"`) || !strings.Contains(body, `"field":"channel"`) {
		t.Fatalf("presence where it is not kept: %d %s", resp.StatusCode, body)
	}
	if resp, body := c.Do("GET", "/admin/api/nope", nil, ""); resp.StatusCode != http.StatusNotFound ||
		strings.TrimSpace(body) != `{"error":{"code":"not_found","message":"no such route: GET /admin/api/nope"}}` {
		t.Fatalf("an unknown route: %d %s", resp.StatusCode, body)
	}

	// Publishing needs the CSRF token and a same-origin request.
	pubBody := `{"channel":"room:1","data":{"text":"from the dashboard"}}`
	for name, hdr := range map[string]http.Header{
		"no CSRF token":   {"Origin": {base}},
		"wrong token":     {"Origin": {base}, "X-CSRF-Token": {"nope"}},
		"another origin":  {"Origin": {"https://evil.example"}, "X-CSRF-Token": {c.CSRF}},
		"cross-site page": {"Sec-Fetch-Site": {"cross-site"}, "X-CSRF-Token": {c.CSRF}},
		"null origin":     {"Origin": {"null"}, "X-CSRF-Token": {c.CSRF}},
	} {
		resp, body := c.Do("POST", "/admin/api/publish", hdr, pubBody)
		if resp.StatusCode != http.StatusForbidden || !strings.Contains(body, `"code":"permission_denied"`) {
			t.Errorf("publish with %s: %d %s, want 403", name, resp.StatusCode, body)
		}
	}
	resp, body = c.Post("/admin/api/publish", pubBody)
	if resp.StatusCode != http.StatusOK {
		t.Fatalf("publish: %d %s", resp.StatusCode, body)
	}
	if _, b := ws.Read(); string(b) != `{"push":"pub","channel":"room:1","data":{"text":"from the dashboard"}}` {
		t.Fatalf("subscriber got %s", b)
	}
	if resp, body := c.Post("/admin/api/publish", `{"channel":"bad channel","data":1}`); resp.StatusCode != http.StatusBadRequest ||
		!strings.Contains(body, `"code":"bad_channel"`) || !strings.Contains(body, `"field":"channel"`) {
		t.Fatalf("publish to a bad channel: %d %s", resp.StatusCode, body)
	}
	if resp, body := c.Post("/admin/api/publish", `{"channel":"room:1","data":nope}`); resp.StatusCode != http.StatusBadRequest {
		t.Fatalf("publish of non-JSON: %d %s", resp.StatusCode, body)
	}
	// A malformed request is answered in words, not with Go's types, in
	// the HTTP API's error shape.
	for body, want := range map[string]string{
		`{"channel":5,"data":1}`:                  `{"error":{"code":"bad_request","message":"channel must be a string","field":"channel"}}`,
		`{"channel":"room:1","data":1,"key":"k"}`: `{"error":{"code":"bad_request","message":"unknown field \"key\": the body takes channel, data and idempotency_key","field":"key"}}`,
		`{"channel":"room:1","data":1`:            `{"error":{"code":"bad_request","message":"the body is not valid JSON: unexpected end of JSON input"}}`,
		`[1]`:                                     `{"error":{"code":"bad_request","message":"want a JSON object with channel, data and idempotency_key"}}`,
		`{"channel":"room:1"}`:                    `{"error":{"code":"bad_request","message":"data (a JSON value) is required","field":"data"}}`,
	} {
		resp, got := c.Post("/admin/api/publish", body)
		if resp.StatusCode != http.StatusBadRequest || strings.TrimSpace(got) != want {
			t.Errorf("publish %s: %d %s, want 400 %s", body, resp.StatusCode, got, want)
		}
	}
	big := `{"channel":"room:1","data":"` + strings.Repeat("x", maxPublishBody) + `"}`
	if resp, got := c.Post("/admin/api/publish", big); resp.StatusCode != http.StatusRequestEntityTooLarge ||
		!strings.Contains(got, `"code":"too_large"`) {
		t.Errorf("publish of a body over %d bytes: %d %s", maxPublishBody, resp.StatusCode, got)
	}

	// Recent errors hold the failed logins and the refused requests.
	var errs struct {
		Entries []LogEntry
		Total   uint64
	}
	if st := c.GetJSON("/admin/api/errors", &errs); st != http.StatusOK || errs.Total == 0 {
		t.Fatalf("errors: %d %+v", st, errs)
	}
	found := false
	for _, e := range errs.Entries {
		found = found || (e.Message == "admin login failed" && e.Level == "WARN")
	}
	if !found {
		t.Errorf("recent errors lack the failed login: %+v", errs.Entries)
	}

	// The charts' samples arrive once a second.
	wstest.WaitFor(t, "a stats sample", func() bool {
		c.GetJSON("/admin/api/stats", &stats)
		return len(stats.Samples) > 0 && stats.Samples[len(stats.Samples)-1].Connections == 1
	})

	// Logout needs the token too, then ends the session.
	if resp, _ := c.Do("POST", "/admin/api/logout", http.Header{"Origin": {base}}, "{}"); resp.StatusCode != http.StatusForbidden {
		t.Fatalf("logout without the CSRF token: %d", resp.StatusCode)
	}
	resp, _ = c.Post("/admin/api/logout", "{}")
	if resp.StatusCode != http.StatusOK || len(resp.Cookies()) != 1 || resp.Cookies()[0].MaxAge >= 0 {
		t.Fatalf("logout: %d, cookies %v", resp.StatusCode, resp.Cookies())
	}
	if resp, _ := c.Do("GET", "/admin/api/stats", nil, ""); resp.StatusCode != http.StatusUnauthorized {
		t.Fatalf("stats after logout: %d", resp.StatusCode)
	}

	// Guessing is limited: past the burst, attempts are refused unchecked.
	var limited bool
	for range loginBurst + 5 {
		limited = limited || c.Login("still the wrong password").Header.Get("Location") == "/admin/login?error=limited"
	}
	if !limited {
		t.Fatal("login attempts are not limited")
	}

	logs, err := os.ReadFile(s.logs)
	if err != nil {
		t.Fatal(err)
	}
	if !bytes.Contains(logs, []byte(`"msg":"admin publish"`)) || bytes.Contains(logs, []byte(testPassword)) ||
		bytes.Contains(logs, []byte(c.Token)) {
		t.Fatalf("the log lacks the publish, or holds the password or a session token:\n%s", logs)
	}
}

// TestSecureCookie: with Config.Secure the session cookie is Secure.
func TestSecureCookie(t *testing.T) {
	t.Parallel()
	s := newTestServer(t, Config{Password: testPassword, Secure: true})
	c := newBrowser(t, s.URL)
	resp := c.Login(testPassword)
	if cks := resp.Cookies(); len(cks) != 1 || !cks[0].Secure {
		t.Fatalf("cookies %v: want one, Secure", cks)
	}
}

// TestReady: the stats show the readiness Config.Ready gives.
func TestReady(t *testing.T) {
	t.Parallel()
	s := newTestServer(t, Config{Password: testPassword, Ready: func(context.Context) error {
		return errNotReady
	}})
	c := newBrowser(t, s.URL)
	c.Login(testPassword)
	var stats struct{ Ready string }
	if st := c.GetJSON("/admin/api/stats", &stats); st != http.StatusOK || stats.Ready != errNotReady.Error() {
		t.Fatalf("stats: %d %+v", st, stats)
	}
}

type testError string

func (e testError) Error() string { return string(e) }

const errNotReady = testError("draining: the server is shutting down")

// The stats carry the webhooks' state: a backend that fails shows as
// failures and the error being retried.
func TestWebhookStats(t *testing.T) {
	t.Parallel()
	n, err := herald.New(herald.Config{
		Authenticate: func(r *http.Request) (herald.Credentials, error) { return herald.Credentials{UserID: "ann"}, nil },
		Webhooks: herald.Webhooks{Users: true, Deliver: func(context.Context, []herald.Event) error {
			return errors.New("backend answered 502")
		}},
	})
	if err != nil {
		t.Fatal(err)
	}
	dash := New(n, Config{Password: testPassword})
	mux := http.NewServeMux()
	mux.Handle("/ws", n.Handler())
	mux.Handle(Path+"/", dash)
	srv := httptest.NewServer(mux)
	ctx, cancel := context.WithCancel(context.Background())
	var wg sync.WaitGroup
	wg.Go(func() { _ = n.Run(ctx) })
	wg.Go(func() { dash.Run(ctx) })
	defer func() {
		_ = n.Shutdown(context.Background())
		cancel()
		wg.Wait()
		srv.Close()
	}()
	ws, _, err := websocket.DefaultDialer.Dial("ws"+strings.TrimPrefix(srv.URL, "http")+"/ws", nil)
	if err != nil {
		t.Fatal(err)
	}
	defer ws.Close()
	c := newBrowser(t, srv.URL)
	if resp := c.Login(testPassword); resp.StatusCode != http.StatusSeeOther {
		t.Fatal(resp.StatusCode)
	}
	var stats struct {
		Webhooks herald.WebhookStats `json:"webhooks"`
	}
	deadline := time.Now().Add(10 * time.Second)
	for {
		c.GetJSON("/admin/api/stats", &stats)
		w := stats.Webhooks
		if w.Enabled && w.Leading && w.Failures > 0 && w.Retrying && strings.Contains(w.LastError, "502") && w.Pending == 1 {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("webhook stats %+v", w)
		}
		time.Sleep(50 * time.Millisecond)
	}
}

// The stats carry each namespace's overflow and delta counts: a subscriber
// of a conflating namespace that reads nothing shows as conflated
// publications, one that asked for deltas as deltas and bytes saved.
func TestOverflowStats(t *testing.T) {
	t.Parallel()
	n, err := herald.New(herald.Config{
		Namespaces: []herald.Namespace{
			{Name: "px", Overflow: herald.OverflowConflate},
			{Name: "d", HistorySize: 10, Delta: herald.DeltaFossil},
		},
		MaxQueueMessages: 16,
	})
	if err != nil {
		t.Fatal(err)
	}
	dash := New(n, Config{Password: testPassword})
	mux := http.NewServeMux()
	mux.Handle("/ws", n.Handler())
	mux.Handle(Path+"/", dash)
	srv := httptest.NewServer(mux)
	ctx, cancel := context.WithCancel(context.Background())
	var wg sync.WaitGroup
	wg.Go(func() { _ = n.Run(ctx) })
	wg.Go(func() { dash.Run(ctx) })
	defer func() {
		_ = n.Shutdown(context.Background())
		cancel()
		wg.Wait()
		srv.Close()
	}()
	d := websocket.Dialer{Subprotocols: []string{protocol.Subprotocol}}
	ws, _, err := d.Dial("ws"+strings.TrimPrefix(srv.URL, "http")+"/ws", nil)
	if err != nil {
		t.Fatal(err)
	}
	defer ws.Close()
	if err := ws.WriteJSON(map[string]any{"id": 1, "cmd": "subscribe", "channel": "px:eu"}); err != nil {
		t.Fatal(err)
	}
	if err := ws.WriteJSON(map[string]any{"id": 2, "cmd": "subscribe", "channel": "d:x", "delta": "fossil"}); err != nil {
		t.Fatal(err)
	}
	wstest.WaitFor(t, "the subscriptions", func() bool { st := n.Stats(); return st.Channels["px:eu"] == 1 && st.Channels["d:x"] == 1 })
	// A subscription is counted, and its reply sent, before its subscribe
	// has finished; publications meanwhile are held and then sent full, so
	// fewer would be deltas. Commands are handled in order: the reply to a
	// ping sent after the subscribes says they have finished.
	if err := ws.WriteJSON(map[string]any{"id": 3, "cmd": "ping"}); err != nil {
		t.Fatal(err)
	}
	for {
		var r struct {
			ID    uint64          `json:"id"`
			Error *protocol.Error `json:"error"`
		}
		if err := ws.ReadJSON(&r); err != nil || r.Error != nil {
			t.Fatalf("before the ping's reply: %+v, %v", r, err)
		}
		if r.ID == 3 {
			break
		}
	}
	// Small changes to a larger state: after the first, deltas.
	for i := range 4 {
		state := fmt.Appendf(nil, `{"tick":%d,"pad":%q}`, i, strings.Repeat("s", 400))
		if _, err := n.Publish(ctx, "d:x", state); err != nil {
			t.Fatal(err)
		}
	}
	wstest.WaitFor(t, "deltas", func() bool { return n.DeltaStats()["d"].Deliveries == 3 })
	// The client reads nothing more: once its socket buffers are full its
	// queue stays full, and each publication takes its key's slot.
	big := []byte(`"` + strings.Repeat("z", 16000) + `"`)
	for i := 0; n.Stats().Overflow["px"].Conflated == 0; i++ {
		if _, err := n.Publish(ctx, "px:eu", big, herald.WithKey(fmt.Sprint(i%4))); err != nil {
			t.Fatal(err)
		}
		if i > 10000 {
			t.Fatal("160 MB published and nothing conflated")
		}
	}
	c := newBrowser(t, srv.URL)
	if resp := c.Login(testPassword); resp.StatusCode != http.StatusSeeOther {
		t.Fatal(resp.StatusCode)
	}
	var stats struct {
		Overflow []struct {
			Namespace  string `json:"namespace"`
			Conflated  uint64 `json:"conflated"`
			Dropped    uint64 `json:"dropped"`
			Deltas     uint64 `json:"deltas"`
			BytesSaved uint64 `json:"delta_bytes_saved"`
		} `json:"overflow"`
	}
	if st := c.GetJSON("/admin/api/stats", &stats); st != http.StatusOK || len(stats.Overflow) != 2 {
		t.Fatalf("stats: %d %+v", st, stats)
	}
	if d, px := stats.Overflow[0], stats.Overflow[1]; d.Namespace != "d" || d.Deltas != 3 || d.BytesSaved < 3*300 || d.Conflated != 0 ||
		px.Namespace != "px" || px.Conflated == 0 || px.Dropped != 0 || px.Deltas != 0 {
		t.Fatalf("stats: %+v", stats)
	}
	if n.Stats().SlowConsumers != 0 {
		t.Fatal("the slow subscriber was cut")
	}
}
