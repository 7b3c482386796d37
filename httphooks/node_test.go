package httphooks_test

import (
	"context"
	"encoding/json"
	"io"
	"net/http"
	"net/http/httptest"
	"strings"
	"sync"
	"testing"

	"github.com/heraldhq/herald"
	"github.com/heraldhq/herald/httphooks"
	"github.com/heraldhq/herald/internal/wstest"
	"github.com/heraldhq/herald/protocol"
)

var secret = []byte("node-test-secret-0123456789abcdef")

// app is the application's backend, as a real one would be written with
// this package's wire types: one handler for every hook, switching on the
// Herald-Hook header, refusing unsigned calls.
type app struct {
	*httptest.Server
	mu    sync.Mutex
	notes []string // "disconnected ann 1000", "unsubscribed ann chat:a client"
}

func newApp(t *testing.T) *app {
	t.Helper()
	a := &app{}
	a.Server = httptest.NewServer(http.HandlerFunc(a.serve))
	t.Cleanup(a.Close)
	return a
}

func (a *app) serve(w http.ResponseWriter, r *http.Request) {
	body, err := httphooks.VerifyRequest(r, secret, 0)
	if err != nil {
		http.Error(w, err.Error(), http.StatusUnauthorized)
		return
	}
	var out any
	switch r.Header.Get("Herald-Hook") {
	case "connect":
		var req httphooks.ConnectRequest
		_ = json.Unmarshal(body, &req)
		switch user := req.Cookies["session"]; user {
		case "ann", "bob":
			out = httphooks.ConnectResponse{Result: &httphooks.ConnectResult{User: user, Channels: []string{"news"}, Data: json.RawMessage(`{"hi":"` + user + `"}`)}}
		default:
			out = httphooks.ConnectResponse{Error: &httphooks.Error{Code: "login_required", Message: "log in first"}}
		}
	case "subscribe":
		var req httphooks.SubscribeRequest
		_ = json.Unmarshal(body, &req)
		if strings.HasSuffix(req.Channel, "secret") {
			out = httphooks.SubscribeResponse{Error: &httphooks.Error{Code: "not_member", Message: "members only"}}
		} else {
			out = httphooks.SubscribeResponse{Result: &httphooks.SubscribeResult{}}
		}
	case "publish":
		var req httphooks.PublishRequest
		_ = json.Unmarshal(body, &req)
		clean := strings.ReplaceAll(string(req.Data), "darn", "****")
		out = httphooks.PublishResponse{Result: &httphooks.PublishResult{Data: json.RawMessage(clean)}}
	case "rpc":
		var req httphooks.RPCRequest
		_ = json.Unmarshal(body, &req)
		out = httphooks.RPCResponse{Result: &httphooks.RPCResult{Data: json.RawMessage(`{"method":"` + req.Method + `","user":"` + req.Client.User + `","echo":` + string(req.Data) + `}`)}}
	case "disconnected":
		var req httphooks.DisconnectedRequest
		_ = json.Unmarshal(body, &req)
		a.note("disconnected", req.Client.User)
		w.WriteHeader(http.StatusNoContent)
		return
	case "unsubscribed":
		var req httphooks.UnsubscribedRequest
		_ = json.Unmarshal(body, &req)
		a.note("unsubscribed", req.Client.User, req.Channel, req.Reason)
		w.WriteHeader(http.StatusNoContent)
		return
	default:
		http.Error(w, "unknown hook", http.StatusBadRequest)
		return
	}
	w.Header().Set("Content-Type", "application/json")
	_ = json.NewEncoder(w).Encode(out)
}

func (a *app) note(words ...string) {
	a.mu.Lock()
	defer a.mu.Unlock()
	a.notes = append(a.notes, strings.Join(words, " "))
}

func (a *app) noted(s string) bool {
	a.mu.Lock()
	defer a.mu.Unlock()
	for _, n := range a.notes {
		if n == s {
			return true
		}
	}
	return false
}

// startNode runs a node with the hooks of cfg behind a loopback server,
// and returns its ws:// URL.
func startNode(t *testing.T, cfg httphooks.Config) string {
	t.Helper()
	b, err := httphooks.New(cfg)
	if err != nil {
		t.Fatal(err)
	}
	n, err := herald.New(herald.Config{Hooks: b.Hooks(), Namespaces: []herald.Namespace{{Name: ""}, {Name: "chat"}}})
	if err != nil {
		t.Fatal(err)
	}
	srv := httptest.NewServer(n.Handler())
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan struct{})
	go func() { defer close(done); _ = n.Run(ctx) }()
	t.Cleanup(func() {
		_ = n.Shutdown(context.Background())
		cancel()
		<-done
		srv.Close()
		b.Close()
	})
	return "ws" + strings.TrimPrefix(srv.URL, "http")
}

// until reads messages until one satisfies ok, and returns it.
func until(t *testing.T, c *wstest.Client, what string, ok func(wstest.Msg) bool) wstest.Msg {
	t.Helper()
	for i := 0; i < 20; i++ {
		if m := c.ReadJSON(); ok(m) {
			return m
		}
	}
	t.Fatalf("no %s in 20 messages", what)
	return wstest.Msg{}
}

// Every hook over HTTP against a real node and real WebSocket clients.
func TestNodeWithHTTPHooks(t *testing.T) {
	t.Parallel()
	a := newApp(t)
	url := startNode(t, httphooks.Config{
		Connect: httphooks.Endpoint{URL: a.URL}, Subscribe: httphooks.Endpoint{URL: a.URL},
		Publish: httphooks.Endpoint{URL: a.URL}, RPC: httphooks.Endpoint{URL: a.URL},
		Disconnected: httphooks.Endpoint{URL: a.URL}, Unsubscribed: httphooks.Endpoint{URL: a.URL},
		ForwardCookies: []string{"session"}, SubscribeNamespaces: []string{"chat"}, Secret: secret,
	})

	ann := wstest.Dial(t, url, http.Header{"Cookie": {"session=ann"}})
	m := ann.OK(protocol.Command{Cmd: "connect"})
	var res protocol.ConnectResult
	if err := json.Unmarshal(m.Result, &res); err != nil || res.User != "ann" || string(res.Data) != `{"hi":"ann"}` {
		t.Fatalf("connect: %s", m.Result)
	}
	until(t, ann, "subscribe push for news", func(m wstest.Msg) bool { return m.Push == "subscribe" && m.Channel == "news" })

	if m := ann.Call(protocol.Command{Cmd: "subscribe", Channel: "chat:secret"}); m.Error == nil || m.Error.Code != "not_member" {
		t.Fatalf("subscribe chat:secret: %+v", m)
	}
	ann.OK(protocol.Command{Cmd: "subscribe", Channel: "chat:a"})

	bob := wstest.Dial(t, url, http.Header{"Cookie": {"session=bob"}})
	bob.OK(protocol.Command{Cmd: "connect"})
	until(t, bob, "subscribe push for news", func(m wstest.Msg) bool { return m.Push == "subscribe" && m.Channel == "news" })
	bob.OK(protocol.Command{Cmd: "publish", Channel: "chat:a", Data: json.RawMessage(`{"text":"darn it"}`)})
	pub := until(t, ann, "the publication", func(m wstest.Msg) bool { return m.Push == "pub" && m.Channel == "chat:a" })
	if string(pub.Data) != `{"text":"**** it"}` {
		t.Fatalf("published %s, want the backend's rewrite", pub.Data)
	}

	m = ann.OK(protocol.Command{Cmd: "rpc", Method: "sum", Data: json.RawMessage(`[1,2]`)})
	var rpc struct{ Data json.RawMessage }
	if err := json.Unmarshal(m.Result, &rpc); err != nil || string(rpc.Data) != `{"method":"sum","user":"ann","echo":[1,2]}` {
		t.Fatalf("rpc result %s", m.Result)
	}

	ann.OK(protocol.Command{Cmd: "unsubscribe", Channel: "chat:a"})
	wstest.WaitFor(t, "the unsubscribed notification", func() bool { return a.noted("unsubscribed ann chat:a client") })
	bob.WS.Close()
	wstest.WaitFor(t, "the disconnected notification", func() bool { return a.noted("disconnected bob") })

	// No session cookie: refused with the backend's code, closed 4500.
	stranger := wstest.Dial(t, url, nil)
	if m := stranger.Call(protocol.Command{Cmd: "connect"}); m.Error == nil || m.Error.Code != "login_required" {
		t.Fatalf("stranger: %+v", m)
	}
	if ce := stranger.ExpectClose(); ce.Code != int(herald.CloseForbidden) {
		t.Fatalf("stranger closed %d", ce.Code)
	}
}

// A backend that is down, or that does not take the signature: nobody gets
// in, and clients are told to try again later (1013).
func TestNodeHookFailures(t *testing.T) {
	t.Parallel()
	a := newApp(t)
	wrongSecret := startNode(t, httphooks.Config{Connect: httphooks.Endpoint{URL: a.URL}, Secret: []byte("not-the-app-secret-0123456789abcdef")})
	down := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {}))
	down.Close()
	downURL := startNode(t, httphooks.Config{Connect: httphooks.Endpoint{URL: down.URL}})
	garbage := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) { _, _ = io.WriteString(w, "<html>") }))
	t.Cleanup(garbage.Close)
	garbageURL := startNode(t, httphooks.Config{Connect: httphooks.Endpoint{URL: garbage.URL}})
	for name, url := range map[string]string{"wrong secret": wrongSecret, "down": downURL, "garbage": garbageURL} {
		c := wstest.Dial(t, url, http.Header{"Cookie": {"session=ann"}})
		if m := c.Call(protocol.Command{Cmd: "connect"}); m.Error == nil || m.Error.Code != protocol.CodeUnavailable {
			t.Errorf("%s: connect %+v, want unavailable", name, m)
			continue
		}
		if ce := c.ExpectClose(); ce.Code != int(herald.CloseTryAgainLater) {
			t.Errorf("%s: closed %d, want 1013", name, ce.Code)
		}
	}
}
