package main

import (
	"encoding/json"
	"io"
	"net/http"
	"net/http/httptest"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/heraldhq/herald/httphooks"
)

// hookApp is the application's backend for serve: its connect hook lets in
// the holder of the session cookie "s3ss10n" as user ann, with channel
// news, and records the requests it verified.
type hookApp struct {
	*httptest.Server
	mu   sync.Mutex
	reqs []httphooks.ConnectRequest
	errs []error
}

func newHookApp(t *testing.T) *hookApp {
	a := &hookApp{}
	a.Server = httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		body, err := httphooks.VerifyRequest(r, []byte(testHooksSecret), time.Minute)
		var req httphooks.ConnectRequest
		if err == nil {
			err = json.Unmarshal(body, &req)
		}
		a.mu.Lock()
		a.reqs = append(a.reqs, req)
		if err != nil {
			a.errs = append(a.errs, err)
		}
		a.mu.Unlock()
		w.Header().Set("Content-Type", "application/json")
		switch {
		case err != nil:
			http.Error(w, err.Error(), http.StatusUnauthorized)
		case r.Header.Get("Herald-Hook") != "connect":
			http.Error(w, "not a connect call", http.StatusBadRequest)
		case req.Cookies["session"] == "s3ss10n":
			_, _ = io.WriteString(w, `{"result":{"user":"ann","channels":["news"],"data":{"welcome":"Ann"}}}`)
		default:
			_, _ = io.WriteString(w, `{"error":{"code":"login_required","message":"log in first"}}`)
		}
	}))
	t.Cleanup(a.Close)
	return a
}

// herald serve with a connect hook: the cookie named in
// hook_forward_cookies reaches the backend, signed, and nothing else does;
// the backend's answer decides the connection.
func TestServeConnectHook(t *testing.T) {
	t.Parallel()
	app := newHookApp(t)
	s := startServer(t, []string{"HERALD_HOOKS_SECRET=" + testHooksSecret},
		"--hook-connect-url", app.URL+"/connect", "--hook-forward-cookies", "session", "--hook-forward-headers", "X-Trace")
	if !strings.Contains(s.logs.String(), `"msg":"hooks on","on":"connect","signed":true`) {
		t.Fatalf("no hooks log line:\n%s", s.logs)
	}
	hdr := http.Header{"Cookie": {"other=1; session=s3ss10n"}, "X-Trace": {"t1"}, "X-Private": {"p"}}
	ws := mustDialWS(t, "ws://"+s.addr+"/ws", hdr)
	m := request(t, ws, `{"id":1,"cmd":"connect","data":{"v":1}}`)
	var res struct {
		User string
		Data json.RawMessage
	}
	if err := json.Unmarshal(m.Result, &res); err != nil || m.Error != nil || res.User != "ann" || string(res.Data) != `{"welcome":"Ann"}` {
		t.Fatalf("connect: %s %s", m.Result, m.Error)
	}
	app.mu.Lock()
	if len(app.errs) > 0 || len(app.reqs) != 1 {
		t.Fatalf("backend: %v %+v", app.errs, app.reqs)
	}
	req := app.reqs[0]
	app.mu.Unlock()
	if len(req.Cookies) != 1 || req.Cookies["session"] != "s3ss10n" || len(req.Headers) != 1 || req.Headers["X-Trace"] != "t1" ||
		string(req.Data) != `{"v":1}` || req.Client.ID == "" || req.URL != "/ws" {
		t.Fatalf("the backend was sent %+v", req)
	}

	// Without the cookie: refused with the backend's code, and closed 4501
	// or 4500 (no reconnect).
	ws2 := mustDialWS(t, "ws://"+s.addr+"/ws", nil)
	if m := request(t, ws2, `{"id":1,"cmd":"connect"}`); m.errorCode() != "login_required" {
		t.Fatalf("want login_required, got %s %s", m.Result, m.Error)
	}
	_ = ws2.SetReadDeadline(time.Now().Add(5 * time.Second))
	_, _, err := ws2.ReadMessage()
	if ce, ok := err.(interface{ Error() string }); !ok || !strings.Contains(ce.Error(), "4500") {
		t.Fatalf("want close 4500, got %v", err)
	}
}
