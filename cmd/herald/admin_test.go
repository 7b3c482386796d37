package main

import (
	"encoding/json"
	"log/slog"
	"net/http"
	"net/url"
	"slices"
	"strings"
	"testing"
)

const testAdminPassword = "correct horse battery staple"

// adminClient is a browser stand-in: it keeps the session cookie and sends
// the Origin a page of the server would.
type adminClient struct {
	t      *testing.T
	base   string
	cookie string
	csrf   string
}

func (c *adminClient) do(method, path string, hdr http.Header, body string) (*http.Response, string) {
	c.t.Helper()
	h := http.Header{}
	for k, v := range hdr {
		h[k] = v
	}
	if c.cookie != "" {
		h.Set("Cookie", sessionCookie+"="+c.cookie)
	}
	return httpDo(c.t, method, c.base+path, h, body)
}

func (c *adminClient) login(password string) *http.Response {
	c.t.Helper()
	resp, _ := c.do("POST", "/admin/login", http.Header{
		"Content-Type": {"application/x-www-form-urlencoded"},
		"Origin":       {c.base},
	}, url.Values{"password": {password}}.Encode())
	for _, ck := range resp.Cookies() {
		if ck.Name == sessionCookie {
			c.cookie = ck.Value
		}
	}
	return resp
}

// post sends a state-changing dashboard request as the page does.
func (c *adminClient) post(path, body string) (*http.Response, string) {
	c.t.Helper()
	return c.do("POST", path, http.Header{"Origin": {c.base}, "X-CSRF-Token": {c.csrf}, "Content-Type": {"application/json"}}, body)
}

func (c *adminClient) getJSON(path string, v any) int {
	c.t.Helper()
	resp, body := c.do("GET", path, nil, "")
	if resp.StatusCode == http.StatusOK {
		if err := json.Unmarshal([]byte(body), v); err != nil {
			c.t.Fatalf("GET %s: %v: %s", path, err, body)
		}
	}
	return resp.StatusCode
}

// TestAdmin: the dashboard is off without a password; with one, its data
// needs a session from a login (constant-time password check, a cookie
// that is HttpOnly, SameSite=Strict, scoped to /admin, with an expiry);
// state changes need the session's CSRF token and a same-origin request;
// the routes serve the node's stats, channels, presence, recent errors and
// publish; logout ends the session; the password is never logged.
func TestAdmin(t *testing.T) {
	t.Parallel()
	t.Run("off without a password", func(t *testing.T) {
		t.Parallel()
		s := startServer(t, nil)
		for _, p := range []string{"/admin", "/admin/", "/admin/login", "/admin/api/stats", "/admin/admin.js"} {
			if resp, _ := httpGet(t, "http://"+s.addr+p); resp.StatusCode != http.StatusNotFound {
				t.Errorf("%s: %d, want 404", p, resp.StatusCode)
			}
		}
	})

	cfg := writeFile(t, "namespaces:\n  - name: \"\"\n  - name: room\n    presence: true\n")
	s := startServer(t, []string{"HERALD_ADMIN_PASSWORD=" + testAdminPassword}, "--config", cfg, "--log-level", "debug")
	base := "http://" + s.addr
	c := &adminClient{t: t, base: base}

	// Before logging in: the pages send you to the login, the data is 401.
	resp, _ := c.do("GET", "/admin/", nil, "")
	if resp.StatusCode != http.StatusSeeOther || resp.Header.Get("Location") != "/admin/login" {
		t.Fatalf("/admin/ without a session: %d %q", resp.StatusCode, resp.Header.Get("Location"))
	}
	resp, body := c.do("GET", "/admin/login", nil, "")
	if resp.StatusCode != http.StatusOK || !strings.Contains(body, `id="password"`) ||
		!strings.Contains(resp.Header.Get("Content-Security-Policy"), "frame-ancestors 'none'") {
		t.Fatalf("/admin/login: %d %q", resp.StatusCode, resp.Header.Get("Content-Security-Policy"))
	}
	if resp, _ := c.do("GET", "/admin/api/stats", nil, ""); resp.StatusCode != http.StatusUnauthorized {
		t.Fatalf("stats without a session: %d", resp.StatusCode)
	}
	if resp, _ := c.do("GET", "/admin/vendor/uPlot.iife.min.js", nil, ""); resp.StatusCode != http.StatusOK {
		t.Fatalf("the dashboard's files are public: %d", resp.StatusCode)
	}

	// Wrong password, and a login posted by another site.
	if resp := c.login("wrong password, long enough"); resp.StatusCode != http.StatusSeeOther ||
		resp.Header.Get("Location") != "/admin/login?error=wrong" || c.cookie != "" {
		t.Fatalf("wrong password: %d %q, cookie %q", resp.StatusCode, resp.Header.Get("Location"), c.cookie)
	}
	resp, _ = c.do("POST", "/admin/login", http.Header{"Origin": {"https://evil.example"},
		"Content-Type": {"application/x-www-form-urlencoded"}}, "password="+url.QueryEscape(testAdminPassword))
	if resp.StatusCode != http.StatusForbidden || len(resp.Cookies()) != 0 {
		t.Fatalf("cross-origin login: %d", resp.StatusCode)
	}

	// The real login.
	resp = c.login(testAdminPassword)
	if resp.StatusCode != http.StatusSeeOther || resp.Header.Get("Location") != "/admin/" || c.cookie == "" {
		t.Fatalf("login: %d %q, cookie %q", resp.StatusCode, resp.Header.Get("Location"), c.cookie)
	}
	var ck *http.Cookie
	for _, x := range resp.Cookies() {
		if x.Name == sessionCookie {
			ck = x
		}
	}
	if !ck.HttpOnly || ck.SameSite != http.SameSiteStrictMode || ck.Path != "/admin" || ck.MaxAge <= 0 || ck.Expires.IsZero() ||
		len(ck.Value) < 43 {
		t.Fatalf("session cookie %+v: want HttpOnly, SameSite=Strict, Path=/admin, an expiry and 256 random bits", ck)
	}
	if resp, body := c.do("GET", "/admin/", nil, ""); resp.StatusCode != http.StatusOK || !strings.Contains(body, `id="connections"`) {
		t.Fatalf("/admin/ with a session: %d", resp.StatusCode)
	}
	var sess struct{ CSRF string }
	if st := c.getJSON("/admin/api/session", &sess); st != http.StatusOK || len(sess.CSRF) < 43 {
		t.Fatalf("session: %d %+v", st, sess)
	}
	c.csrf = sess.CSRF

	// Before the first sample the charts get an empty list, not null.
	if _, body := c.do("GET", "/admin/api/stats", nil, ""); strings.Contains(body, `"samples":null`) {
		t.Fatalf("stats: %s", body)
	}

	// Stats, channels and presence see a client.
	ws := mustDialWS(t, "ws://"+s.addr+"/ws", nil)
	call(t, ws, `{"id":1,"cmd":"subscribe","channel":"room:1"}`)
	var stats struct {
		Connections int    `json:"connections"`
		Channels    int    `json:"channels"`
		Ready       string `json:"ready"`
		Broker      string `json:"broker"`
		Samples     []sample
	}
	if st := c.getJSON("/admin/api/stats", &stats); st != http.StatusOK || stats.Connections != 1 || stats.Channels != 1 ||
		stats.Ready != "ok" || stats.Broker != "memory" {
		t.Fatalf("stats: %d %+v", st, stats)
	}
	var chans struct {
		Total    int
		Channels []channelCount
	}
	if st := c.getJSON("/admin/api/channels", &chans); st != http.StatusOK || chans.Total != 1 ||
		chans.Channels[0] != (channelCount{"room:1", 1}) {
		t.Fatalf("channels: %d %+v", st, chans)
	}
	var pres struct {
		Count   int
		Clients []struct{ Client string }
	}
	if st := c.getJSON("/admin/api/presence?channel=room:1", &pres); st != http.StatusOK || pres.Count != 1 || len(pres.Clients) != 1 {
		t.Fatalf("presence: %d %+v", st, pres)
	}
	var perr adminError
	if st := c.getJSON("/admin/api/presence?channel=nopresence", &perr); st != http.StatusBadRequest {
		t.Fatalf("presence where it is not kept: %d", st)
	}

	// Publishing needs the CSRF token and a same-origin request.
	pubBody := `{"channel":"room:1","data":{"text":"from the dashboard"}}`
	for name, hdr := range map[string]http.Header{
		"no CSRF token":   {"Origin": {base}},
		"wrong token":     {"Origin": {base}, "X-CSRF-Token": {"nope"}},
		"another origin":  {"Origin": {"https://evil.example"}, "X-CSRF-Token": {c.csrf}},
		"cross-site page": {"Sec-Fetch-Site": {"cross-site"}, "X-CSRF-Token": {c.csrf}},
	} {
		if resp, _ := c.do("POST", "/admin/api/publish", hdr, pubBody); resp.StatusCode != http.StatusForbidden {
			t.Errorf("publish with %s: %d, want 403", name, resp.StatusCode)
		}
	}
	resp, body = c.post("/admin/api/publish", pubBody)
	if resp.StatusCode != http.StatusOK {
		t.Fatalf("publish: %d %s", resp.StatusCode, body)
	}
	if _, b := readMessage(t, ws); string(b) != `{"push":"pub","channel":"room:1","data":{"text":"from the dashboard"}}` {
		t.Fatalf("subscriber got %s", b)
	}
	if resp, body := c.post("/admin/api/publish", `{"channel":"bad channel","data":1}`); resp.StatusCode != http.StatusBadRequest {
		t.Fatalf("publish to a bad channel: %d %s", resp.StatusCode, body)
	}
	if resp, body := c.post("/admin/api/publish", `{"channel":"room:1","data":nope}`); resp.StatusCode != http.StatusBadRequest {
		t.Fatalf("publish of non-JSON: %d %s", resp.StatusCode, body)
	}
	// A malformed request is answered in words, not with Go's types.
	for body, want := range map[string]string{
		`{"channel":5,"data":1}`:                  `{"error":"bad request: channel must be a string"}`,
		`{"channel":"room:1","data":1,"key":"k"}`: `{"error":"bad request: unknown field \"key\": the body takes channel, data and idempotency_key"}`,
		`{"channel":"room:1","data":1`:            `{"error":"bad request: the body is not valid JSON: unexpected end of JSON input"}`,
		`[1]`:                                     `{"error":"bad request: want a JSON object with channel, data and idempotency_key"}`,
	} {
		resp, got := c.post("/admin/api/publish", body)
		if resp.StatusCode != http.StatusBadRequest || strings.TrimSpace(got) != want {
			t.Errorf("publish %s: %d %s, want 400 %s", body, resp.StatusCode, got, want)
		}
	}

	// Recent errors hold the failed logins and the refused requests.
	var errs struct {
		Entries []logEntry
		Total   uint64
	}
	if st := c.getJSON("/admin/api/errors", &errs); st != http.StatusOK || errs.Total == 0 {
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
	waitFor(t, "a stats sample", func() bool {
		c.getJSON("/admin/api/stats", &stats)
		return len(stats.Samples) > 0 && stats.Samples[len(stats.Samples)-1].Connections == 1
	})

	// Logout needs the token too, then ends the session.
	if resp, _ := c.do("POST", "/admin/api/logout", http.Header{"Origin": {base}}, "{}"); resp.StatusCode != http.StatusForbidden {
		t.Fatalf("logout without the CSRF token: %d", resp.StatusCode)
	}
	if resp, _ := c.post("/admin/api/logout", "{}"); resp.StatusCode != http.StatusOK {
		t.Fatalf("logout: %d", resp.StatusCode)
	}
	if resp, _ := c.do("GET", "/admin/api/stats", nil, ""); resp.StatusCode != http.StatusUnauthorized {
		t.Fatalf("stats after logout: %d", resp.StatusCode)
	}

	// Guessing is limited: past the burst, attempts are refused unchecked.
	var limited bool
	for range loginBurst + 5 {
		limited = limited || c.login("still the wrong password").Header.Get("Location") == "/admin/login?error=limited"
	}
	if !limited {
		t.Fatal("login attempts are not limited")
	}

	if err := s.stop(t); err != nil {
		t.Fatal(err)
	}
	if strings.Contains(s.logs.String(), testAdminPassword) || strings.Contains(s.logs.String(), c.cookie) {
		t.Fatalf("the password or a session token is in the log:\n%s", s.logs)
	}
}

func TestRecentLogs(t *testing.T) {
	t.Parallel()
	r := newRecentLogs(3)
	for i := range 5 {
		r.add(logEntry{Message: string(rune('a' + i))})
	}
	got, total := r.entries()
	if total != 5 || len(got) != 3 || got[0].Message != "e" || got[2].Message != "c" {
		t.Fatalf("got %+v, total %d; want e d c, 5", got, total)
	}
}

// TestRecordingHandler: WARN and ERROR records are kept with their
// attributes (groups dotted, LogValuers resolved, so a secret shows
// redacted) even when the log level would drop them; lower ones are not.
func TestRecordingHandler(t *testing.T) {
	t.Parallel()
	var out strings.Builder
	recent := newRecentLogs(10)
	level := new(slog.LevelVar)
	logger := newLogger(Config{LogLevel: slog.LevelError}, &out, level, recent)
	logger.With("node", "a").WithGroup("g").Warn("careful", "n", 1, "key", secret("hunter2-hunter2"), slog.Group("sub", "x", "y z"))
	logger.Info("not kept")
	logger.Error("bad")
	got, total := recent.entries()
	if total != 2 || got[0].Message != "bad" || got[1].Message != "careful" || got[1].Level != "WARN" {
		t.Fatalf("kept %+v, total %d", got, total)
	}
	if want := []string{"node=a", "g.n=1", `g.key=(redacted)`, `g.sub.x="y z"`}; !slices.Equal(got[1].Attrs, want) {
		t.Errorf("attrs %q, want %q", got[1].Attrs, want)
	}
	if strings.Contains(out.String(), "careful") || !strings.Contains(out.String(), "bad") {
		t.Errorf("log level error: the log holds %q", out.String())
	}
	level.Set(slog.LevelInfo) // what SIGHUP does
	logger.Info("now logged")
	if !strings.Contains(out.String(), "now logged") {
		t.Error("changing the level var does not change the log level")
	}
}
