package httphooks

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"io"
	"net"
	"net/http"
	"net/http/httptest"
	"strings"
	"sync"
	"testing"
	"time"

	"go.uber.org/goleak"

	"github.com/heraldhq/herald"
)

func TestMain(m *testing.M) { goleak.VerifyTestMain(m) }

var testSecret = []byte("0123456789abcdef0123456789abcdef")

// seen is one request the test backend received.
type seen struct {
	hook, contentType, signature string
	body                         []byte
}

// fakeApp is the application's backend: a real HTTP server that records
// each request and answers with answer.
type fakeApp struct {
	*httptest.Server
	mu   sync.Mutex
	reqs []seen
}

func newApp(t *testing.T, answer http.HandlerFunc) *fakeApp {
	t.Helper()
	a := &fakeApp{}
	a.Server = httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		body, _ := io.ReadAll(r.Body)
		a.mu.Lock()
		a.reqs = append(a.reqs, seen{r.Header.Get("Herald-Hook"), r.Header.Get("Content-Type"), r.Header.Get(SignatureHeader), body})
		a.mu.Unlock()
		r.Body = io.NopCloser(bytes.NewReader(body))
		answer(w, r)
	}))
	t.Cleanup(a.Close)
	return a
}

func (a *fakeApp) last(t *testing.T) seen {
	t.Helper()
	a.mu.Lock()
	defer a.mu.Unlock()
	if len(a.reqs) == 0 {
		t.Fatal("the backend got no request")
	}
	return a.reqs[len(a.reqs)-1]
}

// answerJSON answers every call 200 with body.
func answerJSON(body string) http.HandlerFunc {
	return func(w http.ResponseWriter, r *http.Request) {
		w.Header().Set("Content-Type", "application/json")
		_, _ = io.WriteString(w, body)
	}
}

func newBackend(t *testing.T, cfg Config) *Backend {
	t.Helper()
	b, err := New(cfg)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(b.Close)
	return b
}

var ann = herald.ClientInfo{ID: "c1", UserID: "ann", Info: json.RawMessage(`{"name":"Ann"}`), RemoteAddr: "127.0.0.1:5000"}

func TestConnectAllow(t *testing.T) {
	t.Parallel()
	app := newApp(t, answerJSON(`{"result":{"user":"ann2","info":{"n":1},"channels":["news","user:ann"],"expires_at":1900000000,"data":{"hello":true}}}`))
	b := newBackend(t, Config{Connect: Endpoint{URL: app.URL + "/connect"}})
	reply, err := b.Hooks().Connect(context.Background(), &herald.ConnectEvent{
		Client: ann, URL: "/ws?x=1", Data: json.RawMessage(`{"v":2}`), Header: http.Header{"X-Secret": {"no"}},
	})
	if err != nil {
		t.Fatal(err)
	}
	if reply.UserID != "ann2" || string(reply.Info) != `{"n":1}` || strings.Join(reply.Channels, ",") != "news,user:ann" ||
		reply.ExpiresAt.Unix() != 1900000000 || string(reply.Data) != `{"hello":true}` {
		t.Fatalf("reply %+v", reply)
	}
	got := app.last(t)
	if got.hook != "connect" || got.contentType != "application/json" || got.signature != "" {
		t.Fatalf("headers: %+v", got)
	}
	want := `{"client":{"id":"c1","user":"ann","info":{"name":"Ann"},"raw":false,"remote_addr":"127.0.0.1:5000"},"url":"/ws?x=1","data":{"v":2}}`
	if string(got.body) != want {
		t.Fatalf("body\n got %s\nwant %s", got.body, want)
	}
}

// Only the configured headers and cookies reach the backend.
func TestConnectForwardsOnlyNamed(t *testing.T) {
	t.Parallel()
	app := newApp(t, answerJSON(`{"result":{}}`))
	b := newBackend(t, Config{
		Connect:        Endpoint{URL: app.URL},
		ForwardHeaders: []string{"x-forwarded-for", "Authorization", "X-Absent"},
		ForwardCookies: []string{"session", "absent"},
	})
	hdr := http.Header{
		"X-Forwarded-For": {"1.2.3.4", "5.6.7.8"},
		"Authorization":   {"Bearer abc"},
		"X-Other":         {"secret"},
		"Cookie":          {"other=1; session=s3cr3t; session=second", "third=3"},
	}
	reply, err := b.Hooks().Connect(context.Background(), &herald.ConnectEvent{Client: ann, Header: hdr, URL: "/ws"})
	if err != nil || reply == nil || reply.UserID != "" || reply.Channels != nil {
		t.Fatalf("%+v %v", reply, err)
	}
	var req ConnectRequest
	if err := json.Unmarshal(app.last(t).body, &req); err != nil {
		t.Fatal(err)
	}
	wantH := map[string]string{"X-Forwarded-For": "1.2.3.4, 5.6.7.8", "Authorization": "Bearer abc"}
	if len(req.Headers) != len(wantH) || req.Headers["X-Forwarded-For"] != wantH["X-Forwarded-For"] || req.Headers["Authorization"] != wantH["Authorization"] {
		t.Fatalf("headers %v, want %v", req.Headers, wantH)
	}
	if len(req.Cookies) != 1 || req.Cookies["session"] != "s3cr3t" {
		t.Fatalf("cookies %v, want session=s3cr3t only", req.Cookies)
	}
	if req.Data != nil {
		t.Fatalf("data %s, want none", req.Data)
	}
}

// Nothing configured, nothing forwarded, even when the request has them.
func TestConnectForwardsNothingByDefault(t *testing.T) {
	t.Parallel()
	app := newApp(t, answerJSON(`{"result":{}}`))
	b := newBackend(t, Config{Connect: Endpoint{URL: app.URL}})
	hdr := http.Header{"Authorization": {"Bearer abc"}, "Cookie": {"session=1"}}
	if _, err := b.Hooks().Connect(context.Background(), &herald.ConnectEvent{Client: ann, Header: hdr}); err != nil {
		t.Fatal(err)
	}
	if body := string(app.last(t).body); strings.Contains(body, "headers") || strings.Contains(body, "cookies") {
		t.Fatalf("body %s", body)
	}
}

// The ways a call goes wrong: a refusal is a *herald.Error with the
// backend's code; everything else is a failure, never a *herald.Error.
func TestConnectAnswers(t *testing.T) {
	t.Parallel()
	closed, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	closedURL := "http://" + closed.Addr().String()
	closed.Close()
	status := func(code int, body string) http.HandlerFunc {
		return func(w http.ResponseWriter, r *http.Request) {
			w.WriteHeader(code)
			_, _ = io.WriteString(w, body)
		}
	}
	slow := func(w http.ResponseWriter, r *http.Request) {
		select { // answers only after the caller gave up
		case <-r.Context().Done():
		case <-time.After(5 * time.Second):
		}
	}
	for _, tc := range []struct {
		name    string
		answer  http.HandlerFunc
		url     string // instead of the app's
		refusal herald.Code
		is      error  // the failure wraps it
		says    string // the failure says it
	}{
		{name: "refuse app code", answer: answerJSON(`{"error":{"code":"banned","message":"you are banned"}}`), refusal: "banned"},
		{name: "refuse herald code", answer: answerJSON(`{"error":{"code":"unauthorized","message":"log in"}}`), refusal: "unauthorized"},
		{name: "500", answer: status(500, `{"result":{}}`), is: ErrBadResponse, says: "500"},
		{name: "201", answer: status(201, `{"result":{}}`), is: ErrBadResponse, says: "want 200"},
		{name: "redirect not followed", answer: func(w http.ResponseWriter, r *http.Request) {
			http.Redirect(w, r, "/elsewhere", http.StatusFound)
		}, is: ErrBadResponse, says: "302"},
		{name: "timeout", answer: slow, is: context.DeadlineExceeded},
		{name: "closed port", url: closedURL, says: "connect"},
		{name: "bad JSON", answer: answerJSON(`{"result":`), is: ErrBadResponse, says: "not the hook's JSON"},
		{name: "not an object", answer: answerJSON(`"yes"`), is: ErrBadResponse},
		{name: "empty body", answer: answerJSON(``), is: ErrBadResponse},
		{name: "neither", answer: answerJSON(`{}`), is: ErrBadResponse, says: "neither result nor error"},
		{name: "null result", answer: answerJSON(`{"result":null}`), is: ErrBadResponse, says: "neither"},
		{name: "both", answer: answerJSON(`{"result":{},"error":{"code":"x"}}`), is: ErrBadResponse, says: "both"},
		{name: "no code", answer: answerJSON(`{"error":{"message":"no"}}`), is: ErrBadResponse, says: "error.code"},
		{name: "bad channel", answer: answerJSON(`{"result":{"channels":["ok","bad channel"]}}`), is: ErrBadResponse, says: "result.channels[1]"},
		{name: "negative expiry", answer: answerJSON(`{"result":{"expires_at":-1}}`), is: ErrBadResponse, says: "result.expires_at"},
		{name: "string expiry", answer: answerJSON(`{"result":{"expires_at":"soon"}}`), is: ErrBadResponse, says: "expires_at"},
		{name: "too large", answer: answerJSON(`{"result":{"data":"` + strings.Repeat("x", MaxResponseSize) + `"}}`), is: ErrBadResponse, says: "over"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			t.Parallel()
			url := tc.url
			if url == "" {
				url = newApp(t, tc.answer).URL
			}
			b := newBackend(t, Config{Connect: Endpoint{URL: url, Timeout: 200 * time.Millisecond}})
			start := time.Now()
			reply, err := b.Hooks().Connect(context.Background(), &herald.ConnectEvent{Client: ann})
			if err == nil {
				t.Fatalf("no error; reply %+v", reply)
			}
			t.Logf("err: %v", err)
			var refusal *herald.Error
			isRefusal := errors.As(err, &refusal)
			if tc.refusal != "" {
				if !isRefusal || refusal.Code != tc.refusal || refusal.Message == "" {
					t.Fatalf("want refusal %s, got %#v", tc.refusal, err)
				}
				return
			}
			if isRefusal {
				t.Fatalf("a failure must not be a *herald.Error: %v", err)
			}
			if tc.is != nil && !errors.Is(err, tc.is) {
				t.Fatalf("want %v in %v", tc.is, err)
			}
			if !strings.Contains(err.Error(), tc.says) || !strings.HasPrefix(err.Error(), "httphooks: connect hook: failed to call ") {
				t.Fatalf("want %q in %q", tc.says, err)
			}
			if time.Since(start) > 3*time.Second {
				t.Fatalf("took %s", time.Since(start))
			}
		})
	}
}

// The caller's context bounds a call too (the node's Hooks.Timeout, or
// its shutdown).
func TestCallEndsWithContext(t *testing.T) {
	t.Parallel()
	app := newApp(t, func(w http.ResponseWriter, r *http.Request) { <-r.Context().Done() })
	b := newBackend(t, Config{RPC: Endpoint{URL: app.URL}, Timeout: time.Minute})
	ctx, cancel := context.WithCancel(context.Background())
	time.AfterFunc(50*time.Millisecond, cancel)
	if _, err := b.Hooks().RPC(ctx, &herald.RPCEvent{Client: ann, Method: "m"}); !errors.Is(err, context.Canceled) {
		t.Fatalf("want context.Canceled, got %v", err)
	}
}

func TestSignedRequests(t *testing.T) {
	t.Parallel()
	var verr error
	var mu sync.Mutex
	app := newApp(t, func(w http.ResponseWriter, r *http.Request) {
		_, err := VerifyRequest(r, testSecret, 0)
		mu.Lock()
		verr = err
		mu.Unlock()
		if err != nil {
			http.Error(w, "bad signature", http.StatusUnauthorized)
			return
		}
		answerJSON(`{"result":{"data":{"ok":1}}}`)(w, r)
	})
	b := newBackend(t, Config{RPC: Endpoint{URL: app.URL}, Secret: testSecret})
	reply, err := b.Hooks().RPC(context.Background(), &herald.RPCEvent{Client: ann, Method: "sum", Data: json.RawMessage(`[1,2]`)})
	if err != nil || string(reply.Data) != `{"ok":1}` {
		t.Fatalf("%+v %v (verify: %v)", reply, err, verr)
	}
	got := app.last(t)
	if !strings.HasPrefix(got.signature, "t=") || !strings.Contains(got.signature, ",v1=") {
		t.Fatalf("signature header %q", got.signature)
	}
	now := time.Now()
	if err := Verify(testSecret, got.signature, got.body, now, time.Minute); err != nil {
		t.Fatalf("verify: %v", err)
	}
	tampered := bytes.Replace(got.body, []byte(`"sum"`), []byte(`"mul"`), 1)
	if err := Verify(testSecret, got.signature, tampered, now, time.Minute); !errors.Is(err, ErrBadSignature) {
		t.Fatalf("tampered body: %v", err)
	}
	if err := Verify([]byte("another secret 0123456789abcdefgh"), got.signature, got.body, now, time.Minute); !errors.Is(err, ErrBadSignature) {
		t.Fatalf("wrong secret: %v", err)
	}
	// A replay: the same request, presented later than the tolerance.
	if err := Verify(testSecret, got.signature, got.body, now.Add(2*time.Minute), time.Minute); !errors.Is(err, ErrStaleSignature) {
		t.Fatalf("replay: %v", err)
	}
	if err := Verify(testSecret, got.signature, got.body, now.Add(-2*time.Minute), time.Minute); !errors.Is(err, ErrStaleSignature) {
		t.Fatalf("from the future: %v", err)
	}

	// A backend with another secret refuses the call: a failure.
	other := newApp(t, func(w http.ResponseWriter, r *http.Request) {
		if _, err := VerifyRequest(r, []byte("not the secret"), 0); err != nil {
			http.Error(w, err.Error(), http.StatusUnauthorized)
			return
		}
		answerJSON(`{"result":{}}`)(w, r)
	})
	b2 := newBackend(t, Config{RPC: Endpoint{URL: other.URL}, Secret: testSecret})
	if _, err := b2.Hooks().RPC(context.Background(), &herald.RPCEvent{Client: ann, Method: "m"}); !errors.Is(err, ErrBadResponse) || !strings.Contains(err.Error(), "401") {
		t.Fatalf("want a 401 failure, got %v", err)
	}
}

func TestVerifyHeaderShapes(t *testing.T) {
	t.Parallel()
	body := []byte(`{"a":1}`)
	now := time.Unix(1700000000, 0)
	good := Sign(testSecret, now, body)
	for _, tc := range []struct {
		header string
		want   error
	}{
		{good, nil},
		{"v1=00," + good, nil}, // any v1 may match
		{"", ErrNoSignature},
		{"t=1700000000", ErrNoSignature},
		{strings.Split(good, ",")[1], ErrNoSignature},
		{"t=1700000000,v1=zz", ErrNoSignature},
		{"t=1700000001," + strings.Split(good, ",")[1], ErrBadSignature}, // t is signed
	} {
		if err := Verify(testSecret, tc.header, body, now, 0); !errors.Is(err, tc.want) || (tc.want == nil) != (err == nil) {
			t.Errorf("Verify(%q) = %v, want %v", tc.header, err, tc.want)
		}
	}
	// Known answer, so that other languages' verifiers can be checked
	// against it (openssl dgst -sha256 -hmac KEY of "1700000000.{\"a\":1}").
	if want := "t=1700000000,v1=f05f2539e3ae1c49aec5f8cfdad75ef6b06480b133973ffbb7ec9e18827af177"; good != want {
		t.Errorf("Sign = %s", good)
	}
}

func TestSubscribe(t *testing.T) {
	t.Parallel()
	app := newApp(t, func(w http.ResponseWriter, r *http.Request) {
		var req SubscribeRequest
		_ = json.NewDecoder(r.Body).Decode(&req)
		switch req.Channel {
		case "open":
			answerJSON(`{"result":{}}`)(w, r)
		case "info":
			answerJSON(`{"result":{"info":{"role":"mod"}}}`)(w, r)
		default:
			answerJSON(`{"error":{"code":"not_a_member","message":"join the group first"}}`)(w, r)
		}
	})
	h := newBackend(t, Config{Subscribe: Endpoint{URL: app.URL}, SubscribeNamespaces: []string{"", "chat"}}).Hooks()
	if h.Connect != nil || h.Publish != nil || strings.Join(h.SubscribeNamespaces, ",") != ",chat" {
		t.Fatalf("hooks %+v", h)
	}
	if r, err := h.Subscribe(context.Background(), &herald.SubscribeEvent{Client: ann, Channel: "open"}); r != nil || err != nil {
		t.Fatalf("open: %+v %v", r, err)
	}
	if string(app.last(t).body) != `{"client":{"id":"c1","user":"ann","info":{"name":"Ann"},"raw":false,"remote_addr":"127.0.0.1:5000"},"channel":"open"}` {
		t.Fatalf("body %s", app.last(t).body)
	}
	if r, err := h.Subscribe(context.Background(), &herald.SubscribeEvent{Client: ann, Channel: "info", Data: json.RawMessage(`{"k":1}`)}); err != nil || string(r.Info) != `{"role":"mod"}` {
		t.Fatalf("info: %+v %v", r, err)
	}
	var e *herald.Error
	if _, err := h.Subscribe(context.Background(), &herald.SubscribeEvent{Client: ann, Channel: "x"}); !errors.As(err, &e) || e.Code != "not_a_member" {
		t.Fatalf("refused: %v", err)
	}
}

func TestPublish(t *testing.T) {
	t.Parallel()
	app := newApp(t, func(w http.ResponseWriter, r *http.Request) {
		var req PublishRequest
		_ = json.NewDecoder(r.Body).Decode(&req)
		switch {
		case req.Channel == "keep":
			answerJSON(`{"result":{}}`)(w, r)
		case req.Channel == "wrong":
			answerJSON(`{"result":{"binary":"AAE="}}`)(w, r)
		case req.Binary != nil:
			answerJSON(`{"result":{"binary":"`+"AQID"+`"}}`)(w, r) // bytes 1 2 3
		default:
			answerJSON(`{"result":{"data":{"text":"***"}}}`)(w, r)
		}
	})
	h := newBackend(t, Config{Publish: Endpoint{URL: app.URL}, PublishNamespaces: []string{"chat"}}).Hooks()
	ctx := context.Background()
	if r, err := h.Publish(ctx, &herald.PublishEvent{Client: ann, Channel: "keep", Data: []byte(`"hi"`)}); r != nil || err != nil {
		t.Fatalf("keep: %+v %v", r, err)
	}
	if r, err := h.Publish(ctx, &herald.PublishEvent{Client: ann, Channel: "chat:a", Data: []byte(`{"text":"darn"}`)}); err != nil || string(r.Data) != `{"text":"***"}` {
		t.Fatalf("text: %+v %v", r, err)
	}
	if !strings.Contains(string(app.last(t).body), `"data":{"text":"darn"}`) {
		t.Fatalf("body %s", app.last(t).body)
	}
	if r, err := h.Publish(ctx, &herald.PublishEvent{Client: ann, Channel: "chat:b", Data: []byte{0xff, 0}, Binary: true}); err != nil || !bytes.Equal(r.Data, []byte{1, 2, 3}) {
		t.Fatalf("binary: %+v %v", r, err)
	}
	if !strings.Contains(string(app.last(t).body), `"binary":"/wA="`) {
		t.Fatalf("body %s", app.last(t).body)
	}
	if _, err := h.Publish(ctx, &herald.PublishEvent{Client: ann, Channel: "wrong", Data: []byte(`1`)}); !errors.Is(err, ErrBadResponse) || !strings.Contains(err.Error(), "result.binary") {
		t.Fatalf("binary answer to text: %v", err)
	}
}

func TestRefresh(t *testing.T) {
	t.Parallel()
	app := newApp(t, answerJSON(`{"result":{"expires_at":1900000000}}`))
	h := newBackend(t, Config{Refresh: Endpoint{URL: app.URL}}).Hooks()
	r, err := h.Refresh(context.Background(), &herald.RefreshEvent{Client: ann})
	if err != nil || r.ExpiresAt.Unix() != 1900000000 {
		t.Fatalf("%+v %v", r, err)
	}
	if got := app.last(t); got.hook != "refresh" || !strings.HasPrefix(string(got.body), `{"client":{"id":"c1"`) {
		t.Fatalf("%+v", got)
	}
}

func TestNotifications(t *testing.T) {
	t.Parallel()
	ok := newApp(t, func(w http.ResponseWriter, r *http.Request) { w.WriteHeader(http.StatusNoContent) })
	down := newApp(t, func(w http.ResponseWriter, r *http.Request) { http.Error(w, "down", http.StatusBadGateway) })
	h := newBackend(t, Config{Disconnected: Endpoint{URL: ok.URL}, Unsubscribed: Endpoint{URL: down.URL}}).Hooks()
	if err := h.Disconnected(context.Background(), &herald.DisconnectEvent{Client: ann, Code: 1006, Reason: "lost"}); err != nil {
		t.Fatal(err)
	}
	if got := ok.last(t); got.hook != "disconnected" || !strings.HasSuffix(string(got.body), `"code":1006,"reason":"lost"}`) {
		t.Fatalf("%+v %s", got, got.body)
	}
	err := h.Unsubscribed(context.Background(), &herald.UnsubscribeEvent{Client: ann, Channel: "news", Reason: "client"})
	if !errors.Is(err, ErrBadResponse) || !strings.Contains(err.Error(), "502") {
		t.Fatalf("want a 502 failure, got %v", err)
	}
	if got := down.last(t); got.hook != "unsubscribed" || !strings.HasSuffix(string(got.body), `"channel":"news","reason":"client"}`) {
		t.Fatalf("%+v %s", got, got.body)
	}
}

func TestHooksTimeout(t *testing.T) {
	t.Parallel()
	for _, tc := range []struct {
		cfg  Config
		want time.Duration
	}{
		{Config{}, 0},
		{Config{Connect: Endpoint{URL: "http://a"}}, DefaultTimeout},
		{Config{Connect: Endpoint{URL: "http://a"}, Timeout: time.Second}, time.Second},
		{Config{Connect: Endpoint{URL: "http://a"}, RPC: Endpoint{URL: "http://a", Timeout: 30 * time.Second}}, 30 * time.Second},
		{Config{Connect: Endpoint{URL: "http://a", Timeout: time.Second}, RPC: Endpoint{Timeout: time.Hour}}, time.Second},
	} {
		b := newBackend(t, tc.cfg)
		if got := b.Hooks().Timeout; got != tc.want {
			t.Errorf("%+v: Timeout %s, want %s", tc.cfg, got, tc.want)
		}
	}
}

func TestNewErrors(t *testing.T) {
	t.Parallel()
	for _, tc := range []struct {
		cfg  Config
		says string
	}{
		{Config{Connect: Endpoint{URL: "example.com/hook"}}, "connect URL"},
		{Config{RPC: Endpoint{URL: "ftp://example.com/hook"}}, "rpc URL"},
		{Config{Publish: Endpoint{URL: "http:///path"}}, "publish URL"},
		{Config{Subscribe: Endpoint{URL: "https://u:pw@example.com/x y%zz"}}, "subscribe URL"},
		{Config{Refresh: Endpoint{URL: "http://a", Timeout: -1}}, "refresh Timeout"},
		{Config{Timeout: -1}, "negative"},
		{Config{ForwardHeaders: []string{"X Bad"}}, "ForwardHeaders"},
		{Config{ForwardHeaders: []string{"cookie"}}, "ForwardCookies"},
		{Config{ForwardCookies: []string{"a;b"}}, "ForwardCookies"},
		{Config{SubscribeNamespaces: []string{"chat:room"}}, `"chat:room"`},
		{Config{PublishNamespaces: []string{"bad name"}}, `"bad name"`},
	} {
		_, err := New(tc.cfg)
		if err == nil || !strings.Contains(err.Error(), tc.says) {
			t.Errorf("New(%+v) = %v, want an error with %q", tc.cfg, err, tc.says)
		}
		if err != nil && strings.Contains(err.Error(), "pw") {
			t.Errorf("error shows the URL's password: %v", err)
		}
	}
	b, err := New(Config{Connect: Endpoint{URL: "https://app.example.com/hooks/connect"}, RPC: Endpoint{URL: "http://10.0.0.1:8000/rpc"}})
	if err != nil || strings.Join(b.Enabled(), ",") != "connect,rpc" {
		t.Fatalf("%v %v", b, err)
	}
}
