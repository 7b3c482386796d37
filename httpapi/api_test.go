package httpapi_test

import (
	"bytes"
	"context"
	"encoding/base64"
	"encoding/json"
	"io"
	"net/http"
	"net/http/httptest"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/gorilla/websocket"
	"go.uber.org/goleak"

	"github.com/heraldhq/herald"
	"github.com/heraldhq/herald/httpapi"
	"github.com/heraldhq/herald/internal/wstest"
	"github.com/heraldhq/herald/protocol"
)

func TestMain(m *testing.M) { goleak.VerifyTestMain(m) }

const testAPIKey = "k3y-for-tests"

// apiServer is a running node with its WebSocket endpoints and the API,
// each behind an httptest server on a loopback port.
type apiServer struct {
	node *herald.Node
	ws   *httptest.Server
	api  *httptest.Server
}

func newAPIServer(t *testing.T, cfg herald.Config) *apiServer {
	t.Helper()
	n, err := herald.New(cfg)
	if err != nil {
		t.Fatal(err)
	}
	mux := http.NewServeMux()
	mux.Handle("/ws", n.Handler())
	mux.Handle("/ws/raw", n.RawHandler())
	s := &apiServer{node: n, ws: httptest.NewServer(mux), api: httptest.NewServer(httpapi.Handler(n, httpapi.Config{Key: testAPIKey, MaxBodyBytes: 4096}))}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan struct{})
	go func() { defer close(done); _ = n.Run(ctx) }()
	t.Cleanup(func() {
		_ = n.Shutdown(context.Background())
		cancel()
		<-done
		s.ws.Close()
		s.api.Close()
	})
	return s
}

func (s *apiServer) dial(t *testing.T, path string, hdr http.Header) *wstest.Client {
	return wstest.Dial(t, "ws"+strings.TrimPrefix(s.ws.URL, "http")+path, hdr)
}

// call makes an API request and decodes the JSON answer into out (if not nil).
func (s *apiServer) call(t *testing.T, method, path, body string, out any) int {
	t.Helper()
	req, _ := http.NewRequest(method, s.api.URL+path, strings.NewReader(body))
	req.Header.Set("Authorization", "Bearer "+testAPIKey)
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	b, _ := io.ReadAll(resp.Body)
	if out != nil {
		if err := json.Unmarshal(b, out); err != nil {
			t.Fatalf("%s %s: %q: %v", method, path, b, err)
		}
	}
	return resp.StatusCode
}

type apiErr struct {
	Error struct{ Code, Message, Field string } `json:"error"`
}

type publishResponse struct {
	Offset    uint64 `json:"offset,omitempty"`
	Epoch     string `json:"epoch,omitempty"`
	Duplicate bool   `json:"duplicate,omitempty"`
}

func TestAPIRoundTrips(t *testing.T) {
	t.Parallel()
	s := newAPIServer(t, herald.Config{
		Namespaces: []herald.Namespace{{Name: ""}, {Name: "h", HistorySize: 10, Presence: true}},
		Authenticate: func(r *http.Request) (herald.Credentials, error) {
			return herald.Credentials{UserID: r.Header.Get("X-Test-User")}, nil
		},
	})
	sub := s.dial(t, "/ws", http.Header{"X-Test-User": {"ann"}})
	sub.OK(protocol.Command{Cmd: "subscribe", Channel: "news"})
	sub.OK(protocol.Command{Cmd: "subscribe", Channel: "h:1"})

	var pr map[string]any
	if st := s.call(t, "POST", "/api/v1/publish", `{"channel":"news","data":{"t":1}}`, &pr); st != 200 {
		t.Fatalf("publish: %d %v", st, pr)
	}
	if m := sub.ReadJSON(); string(m.Data) != `{"t":1}` {
		t.Fatalf("got %+v", m)
	}
	bin := []byte{0, 0xff, '\n'}
	if st := s.call(t, "POST", "/api/v1/publish", `{"channel":"news","data_base64":"`+base64.StdEncoding.EncodeToString(bin)+`"}`, nil); st != 200 {
		t.Fatal(st)
	}
	if op, b := sub.Read(); op != websocket.BinaryMessage || !bytes.HasSuffix(b, bin) {
		t.Fatalf("got %d %q", op, b)
	}
	var br struct{ Results []publishResponse }
	if st := s.call(t, "POST", "/api/v1/broadcast", `{"channels":["news","h:1"],"data":"both"}`, &br); st != 200 || len(br.Results) != 2 || br.Results[1].Offset != 1 {
		t.Fatalf("broadcast: %d %+v", st, br)
	}
	for range 2 {
		if m := sub.ReadJSON(); string(m.Data) != `"both"` {
			t.Fatalf("got %+v", m)
		}
	}
	if st := s.call(t, "POST", "/api/v1/send_user", `{"user":"ann","data":"psst"}`, nil); st != 200 {
		t.Fatal(st)
	}
	if m := sub.ReadJSON(); m.Push != "message" || string(m.Data) != `"psst"` {
		t.Fatalf("got %+v", m)
	}
	var h protocol.HistoryResult
	if st := s.call(t, "GET", "/api/v1/history?channel=h:1&limit=5", "", &h); st != 200 || len(h.Publications) != 1 || string(h.Publications[0].Data) != `"both"` {
		t.Fatalf("history: %d %+v", st, h)
	}
	var ps protocol.PresenceStatsResult
	if st := s.call(t, "GET", "/api/v1/presence_stats?channel=h:1", "", &ps); st != 200 || ps.Clients != 1 || ps.Users != 1 {
		t.Fatalf("presence_stats: %d %+v", st, ps)
	}
	var p protocol.PresenceResult
	if st := s.call(t, "GET", "/api/v1/presence?channel=h:2", "", &p); st != 200 || len(p.Clients) != 0 {
		t.Fatalf("presence of an empty channel: %d %+v", st, p) // empty, not an error
	}
	var chans struct{ Channels map[string]int }
	if st := s.call(t, "GET", "/api/v1/channels", "", &chans); st != 200 || chans.Channels["news"] != 1 {
		t.Fatalf("channels: %d %+v", st, chans)
	}
	var info map[string]any
	if st := s.call(t, "GET", "/api/v1/info", "", &info); st != 200 || info["connections"].(float64) != 1 {
		t.Fatalf("info: %d %+v", st, info)
	}
	if st := s.call(t, "POST", "/api/v1/unsubscribe_user", `{"user":"ann","channel":"news"}`, nil); st != 200 {
		t.Fatal(st)
	}
	wstest.WaitFor(t, "unsubscribe", func() bool { return s.node.Stats().Channels["news"] == 0 })
	var unsub struct {
		Push, Channel, Code, Reason string
	}
	if _, b := sub.Read(); json.Unmarshal(b, &unsub) != nil || unsub.Push != "unsub" || unsub.Channel != "news" ||
		unsub.Code != protocol.UnsubServer || unsub.Reason == "" {
		t.Fatalf("want an unsub push, got %s", b)
	}
	if m := sub.Call(protocol.Command{Cmd: "unsubscribe", Channel: "news"}); m.Error == nil || m.Error.Code != protocol.CodeNotSubscribed {
		t.Fatalf("unsubscribe after the server's: %+v", m)
	}
	if st := s.call(t, "POST", "/api/v1/disconnect_user", `{"user":"ann","code":4500,"reason":"bye"}`, nil); st != 200 {
		t.Fatal(st)
	}
	if ce := sub.ExpectClose(); ce.Code != 4500 || ce.Text != "bye" {
		t.Fatalf("close %v", ce)
	}
}

func TestAPIBadInput(t *testing.T) {
	t.Parallel()
	s := newAPIServer(t, herald.Config{Namespaces: []herald.Namespace{{Name: ""}, {Name: "h", HistorySize: 10}}})
	watcher := s.dial(t, "/ws", nil)
	watcher.OK(protocol.Command{Cmd: "subscribe", Channel: "w"})

	for _, key := range []string{"", "wrong", testAPIKey + "x"} {
		req, _ := http.NewRequest("POST", s.api.URL+"/api/v1/publish", strings.NewReader(`{"channel":"w","data":1}`))
		if key != "" {
			req.Header.Set("X-API-Key", key)
		}
		resp, err := http.DefaultClient.Do(req)
		if err != nil {
			t.Fatal(err)
		}
		b, _ := io.ReadAll(resp.Body)
		resp.Body.Close()
		if resp.StatusCode != 401 || strings.Contains(string(b), testAPIKey) {
			t.Errorf("key %q: %d %s", key, resp.StatusCode, b)
		}
	}
	rec := httptest.NewRecorder()
	s.node.MetricsHandler().ServeHTTP(rec, httptest.NewRequest("GET", "/metrics", nil))
	if !strings.Contains(rec.Body.String(), "\nherald_auth_failures_total 3\n") {
		t.Error("the three 401s are not counted in herald_auth_failures_total")
	}
	cases := []struct {
		method, path, body string
		status             int
		code, field        string
	}{
		{"POST", "/api/v1/publish", `{"channel":"w","data":`, 400, "bad_request", ""},
		{"POST", "/api/v1/publish", ``, 400, "bad_request", ""},
		{"POST", "/api/v1/publish", `{"channel":7,"data":1}`, 400, "bad_request", "channel"},
		{"POST", "/api/v1/publish", `{"channel":"w"}`, 400, "bad_request", "data"},
		{"POST", "/api/v1/publish", `{"channel":"w","data":1,"extra":2}`, 400, "bad_request", "extra"},
		{"POST", "/api/v1/publish", `{"channel":"w","data_base64":"***"}`, 400, "bad_request", "data_base64"},
		{"POST", "/api/v1/publish", `{"channel":"bad name","data":1}`, 400, "bad_channel", "channel"},
		{"POST", "/api/v1/publish", `{"channel":"nowhere:x","data":1}`, 400, "bad_channel", "channel"},
		{"POST", "/api/v1/publish", `{"channel":"w","data":"` + strings.Repeat("x", 5000) + `"}`, 413, "too_large", ""},
		{"POST", "/api/v1/broadcast", `{"channels":[],"data":1}`, 400, "bad_request", "channels"},
		{"POST", "/api/v1/send_user", `{"data":1}`, 400, "bad_request", "user"},
		{"POST", "/api/v1/disconnect_user", `{"user":"x","code":1000}`, 400, "bad_request", "code"},
		{"GET", "/api/v1/presence", ``, 400, "bad_request", "channel"},
		{"GET", "/api/v1/presence?channel=w", ``, 400, "not_enabled", "channel"},
		{"GET", "/api/v1/history?channel=h:1&limit=-1", ``, 400, "bad_request", "limit"},
		{"GET", "/api/v1/nope", ``, 404, "not_found", ""},
		{"DELETE", "/api/v1/publish", ``, 405, "method_not_allowed", ""},
	}
	for _, tc := range cases {
		var e apiErr
		st := s.call(t, tc.method, tc.path, tc.body, &e)
		if st != tc.status || e.Error.Code != tc.code || e.Error.Field != tc.field || e.Error.Message == "" {
			t.Errorf("%s %s %.40s: %d %+v, want %d %s field %q", tc.method, tc.path, tc.body, st, e.Error, tc.status, tc.code, tc.field)
		}
	}
	// None of it reached or hurt the connected client.
	if st := s.call(t, "POST", "/api/v1/publish", `{"channel":"w","data":"ok"}`, nil); st != 200 {
		t.Fatal(st)
	}
	if m := watcher.ReadJSON(); string(m.Data) != `"ok"` {
		t.Fatalf("watcher got %+v", m)
	}
}

// The OpenAPI document is served without a key.
func TestOpenAPIServed(t *testing.T) {
	t.Parallel()
	s := newAPIServer(t, herald.Config{})
	resp, err := http.Get(s.api.URL + "/api/openapi.json")
	if err != nil || resp.StatusCode != 200 {
		t.Fatalf("%v %v", err, resp)
	}
	resp.Body.Close()
}

// unsubscribe_user closes a raw client of the channel: its one channel is
// gone. Other users' raw clients stay.
func TestAPIUnsubscribeUserRaw(t *testing.T) {
	t.Parallel()
	s := newAPIServer(t, herald.Config{Authenticate: func(r *http.Request) (herald.Credentials, error) {
		return herald.Credentials{UserID: r.Header.Get("X-Test-User")}, nil
	}})
	ann := s.dial(t, "/ws/raw?channel=news", http.Header{"X-Test-User": {"ann"}})
	bob := s.dial(t, "/ws/raw?channel=news", http.Header{"X-Test-User": {"bob"}})
	// A raw client's subscription is made just after its 101 is written:
	// wait for both before taking ann's away.
	for deadline := time.Now().Add(5 * time.Second); s.node.Stats().Channels["news"] < 2; time.Sleep(5 * time.Millisecond) {
		if time.Now().After(deadline) {
			t.Fatal("the raw clients never subscribed")
		}
	}
	if st := s.call(t, "POST", "/api/v1/unsubscribe_user", `{"user":"ann","channel":"news"}`, nil); st != 200 {
		t.Fatal(st)
	}
	if ce := ann.ExpectClose(); ce.Code != int(herald.CloseForbidden) {
		t.Fatalf("close %v, want %d", ce, herald.CloseForbidden)
	}
	if _, err := s.node.Publish(context.Background(), "news", []byte(`"still here"`)); err != nil {
		t.Fatal(err)
	}
	if _, b := bob.Read(); string(b) != `"still here"` {
		t.Fatalf("bob got %s", b)
	}
}

// A route asked with the wrong method gets 405 with Allow, not 404.
func TestAPIWrongMethod(t *testing.T) {
	t.Parallel()
	s := newAPIServer(t, herald.Config{})
	for _, tc := range []struct{ method, path, allow string }{
		{"GET", "/api/v1/publish", "POST"},
		{"POST", "/api/v1/channels", "GET"},
	} {
		req, _ := http.NewRequest(tc.method, s.api.URL+tc.path, nil)
		req.Header.Set("Authorization", "Bearer "+testAPIKey)
		resp, err := http.DefaultClient.Do(req)
		if err != nil {
			t.Fatal(err)
		}
		resp.Body.Close()
		if resp.StatusCode != http.StatusMethodNotAllowed || resp.Header.Get("Allow") != tc.allow {
			t.Errorf("%s %s: %d Allow %q, want 405 Allow %s", tc.method, tc.path, resp.StatusCode, resp.Header.Get("Allow"), tc.allow)
		}
	}
	var e apiErr
	if st := s.call(t, "GET", "/api/v1/nothing", "", &e); st != 404 || e.Error.Code != "not_found" {
		t.Errorf("unknown route: %d %+v", st, e)
	}
}

// The history route sends each JSON payload byte for byte, as published:
// no compaction, no escaping of <, > and &.
func TestAPIHistoryByteExact(t *testing.T) {
	t.Parallel()
	s := newAPIServer(t, herald.Config{Namespaces: []herald.Namespace{{Name: "h", HistorySize: 10}}})
	payloads := []string{`{ "a" : 1 , "b":[1,2 ,3]}`, `"<script>&amp;"`, `[ "\u00e9", "é" , 1e3 ]`}
	for _, p := range payloads {
		if st := s.call(t, "POST", "/api/v1/publish", `{"channel":"h:x","data":`+p+`}`, nil); st != 200 {
			t.Fatalf("publish %s: %d", p, st)
		}
	}
	req, _ := http.NewRequest("GET", s.api.URL+"/api/v1/history?channel=h:x", nil)
	req.Header.Set("Authorization", "Bearer "+testAPIKey)
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	body, _ := io.ReadAll(resp.Body)
	resp.Body.Close()
	if resp.StatusCode != 200 || resp.Header.Get("Content-Type") != "application/json" {
		t.Fatalf("history: %d %s", resp.StatusCode, resp.Header.Get("Content-Type"))
	}
	for i, p := range payloads {
		if want := `{"offset":` + strconv.Itoa(i+1) + `,"data":` + p + `}`; !strings.Contains(string(body), want) {
			t.Errorf("publication %d is not byte for byte %s in %s", i+1, p, body)
		}
	}
}

// subscribe_user, subscribe_client and unsubscribe_client over HTTP: the
// client is told by pushes and receives the channel in between.
func TestAPIServerSideSubscriptions(t *testing.T) {
	t.Parallel()
	s := newAPIServer(t, herald.Config{Authenticate: func(r *http.Request) (herald.Credentials, error) {
		return herald.Credentials{UserID: r.Header.Get("X-Test-User")}, nil
	}})
	ann := s.dial(t, "/ws", http.Header{"X-Test-User": {"ann"}})
	var res protocol.ConnectResult
	if err := json.Unmarshal(ann.OK(protocol.Command{Cmd: "connect"}).Result, &res); err != nil {
		t.Fatal(err)
	}
	if st := s.call(t, "POST", "/api/v1/subscribe_user", `{"user":"ann","channel":"team"}`, nil); st != 200 {
		t.Fatal(st)
	}
	if m := ann.ReadJSON(); m.Push != protocol.PushSubscribe || m.Channel != "team" {
		t.Fatalf("%+v", m)
	}
	if st := s.call(t, "POST", "/api/v1/subscribe_client", `{"client":"`+res.Client+`","channel":"desk"}`, nil); st != 200 {
		t.Fatal(st)
	}
	if m := ann.ReadJSON(); m.Push != protocol.PushSubscribe || m.Channel != "desk" {
		t.Fatalf("%+v", m)
	}
	if st := s.call(t, "POST", "/api/v1/publish", `{"channel":"desk","data":1}`, nil); st != 200 {
		t.Fatal(st)
	}
	if m := ann.ReadJSON(); m.Push != "pub" || string(m.Data) != "1" {
		t.Fatalf("%+v", m)
	}
	if st := s.call(t, "POST", "/api/v1/unsubscribe_client", `{"client":"`+res.Client+`","channel":"desk"}`, nil); st != 200 {
		t.Fatal(st)
	}
	if m := ann.ReadJSON(); m.Push != protocol.PushUnsub || m.Channel != "desk" {
		t.Fatalf("%+v", m)
	}
	for _, tc := range []struct{ path, body, field string }{
		{"/api/v1/subscribe_user", `{"channel":"x"}`, "user"},
		{"/api/v1/subscribe_client", `{"user":"ann","channel":"x"}`, "client"},
		{"/api/v1/unsubscribe_client", `{"client":"c","channel":"bad channel"}`, "channel"},
	} {
		var e apiErr
		if st := s.call(t, "POST", tc.path, tc.body, &e); st != 400 || e.Error.Field != tc.field {
			t.Errorf("%s %s: %d %+v", tc.path, tc.body, st, e)
		}
	}
}

// keyBroker is the memory broker, recording the conflation key of every
// publication it is handed.
type keyBroker struct {
	*herald.MemoryBroker
	mu   sync.Mutex
	keys []string
}

func (b *keyBroker) Publish(ctx context.Context, pub *herald.Publication, opts herald.PublishOptions) (herald.PublishResult, error) {
	b.mu.Lock()
	b.keys = append(b.keys, pub.Key)
	b.mu.Unlock()
	return b.MemoryBroker.Publish(ctx, pub, opts)
}

// The publish route's "key" reaches the broker as the publication's
// conflation key; without one the key is empty.
func TestAPIPublishKey(t *testing.T) {
	t.Parallel()
	b := &keyBroker{MemoryBroker: herald.NewMemoryBroker()}
	s := newAPIServer(t, herald.Config{Broker: b})
	for _, body := range []string{`{"channel":"px","data":1,"key":"AAPL"}`, `{"channel":"px","data":2}`} {
		if st := s.call(t, "POST", "/api/v1/publish", body, nil); st != http.StatusOK {
			t.Fatalf("publish %s: %d", body, st)
		}
	}
	b.mu.Lock()
	defer b.mu.Unlock()
	if len(b.keys) != 2 || b.keys[0] != "AAPL" || b.keys[1] != "" {
		t.Fatalf("keys %q, want [AAPL \"\"]", b.keys)
	}
}
