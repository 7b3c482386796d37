package herald

import (
	"bufio"
	"context"
	"encoding/base64"
	"encoding/json"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/url"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/heraldhq/herald/protocol"
)

// sseEvent is one parsed Server-Sent Event, as EventSource would dispatch
// it, or a comment (the heartbeat).
type sseEvent struct {
	Event, ID, Data string
	Comment         string
}

// sseClient reads an event stream over a real HTTP connection, parsing it
// as the HTML standard says (the parts Herald uses: event, data, id, and
// comments).
type sseClient struct {
	t      testing.TB
	resp   *http.Response
	events chan sseEvent
	done   chan struct{} // closed when the stream ended
	cancel context.CancelFunc
	lastID string
}

// sseURL is ts's /sse URL for channels, with extra query parameters.
func (ts *testServer) sseURL(extra url.Values, channels ...string) string {
	q := url.Values{"channel": channels}
	for k, v := range extra {
		q[k] = v
	}
	return ts.srv.URL + "/sse?" + q.Encode()
}

// sseGet opens the stream at u with hdr; it returns the response for a
// refused request (its body read), or a client for a stream.
func sseGet(t testing.TB, u string, hdr http.Header) (*sseClient, *http.Response, string) {
	t.Helper()
	return sseGetWith(t, http.DefaultClient, u, hdr)
}

// sseGetWith is sseGet through hc (a client dialling from a chosen
// address, say).
func sseGetWith(t testing.TB, hc *http.Client, u string, hdr http.Header) (*sseClient, *http.Response, string) {
	t.Helper()
	ctx, cancel := context.WithCancel(context.Background())
	req, _ := http.NewRequestWithContext(ctx, http.MethodGet, u, nil)
	for k, v := range hdr {
		req.Header[k] = v
	}
	req.Header.Set("Accept", "text/event-stream")
	resp, err := hc.Do(req)
	if err != nil {
		cancel()
		t.Fatalf("GET %s: %v", u, err)
	}
	if resp.StatusCode != http.StatusOK {
		b, _ := io.ReadAll(resp.Body)
		resp.Body.Close()
		cancel()
		return nil, resp, string(b)
	}
	c := &sseClient{t: t, resp: resp, events: make(chan sseEvent, 4096), done: make(chan struct{}), cancel: cancel}
	go c.read()
	t.Cleanup(c.close)
	return c, resp, ""
}

func (ts *testServer) sse(t testing.TB, hdr http.Header, channels ...string) *sseClient {
	t.Helper()
	c, resp, body := sseGet(t, ts.sseURL(nil, channels...), hdr)
	if c == nil {
		t.Fatalf("GET /sse %v: %d %s", channels, resp.StatusCode, body)
	}
	return c
}

// close ends the stream from the client's side and waits for its reader.
func (c *sseClient) close() {
	c.cancel()
	<-c.done
}

func (c *sseClient) read() {
	defer close(c.done)
	defer close(c.events)
	defer c.resp.Body.Close()
	sc := bufio.NewScanner(c.resp.Body)
	sc.Buffer(make([]byte, 0, 64<<10), 1<<20)
	var ev sseEvent
	var data []string
	for sc.Scan() {
		line := sc.Text()
		if line == "" {
			if data != nil || ev.Event != "" {
				ev.Data = strings.Join(data, "\n")
				c.events <- ev
			}
			ev, data = sseEvent{ID: ev.ID}, nil
			continue
		}
		field, value, _ := strings.Cut(line, ":")
		value = strings.TrimPrefix(value, " ")
		switch field {
		case "":
			c.events <- sseEvent{Comment: value}
		case "event":
			ev.Event = value
		case "data":
			data = append(data, value)
		case "id":
			ev.ID = value
		}
	}
}

// next returns the next event, skipping heartbeat comments.
func (c *sseClient) next() sseEvent {
	c.t.Helper()
	timeout := time.After(10 * time.Second)
	for {
		select {
		case ev, ok := <-c.events:
			if !ok {
				c.t.Fatal("the stream ended")
			}
			if ev.Comment != "" {
				continue
			}
			if ev.ID != "" {
				c.lastID = ev.ID
			}
			return ev
		case <-timeout:
			c.t.Fatal("no event within 10s")
		}
	}
}

// pub reads the next event as a publication.
func (c *sseClient) pub() offsetPush {
	c.t.Helper()
	ev := c.next()
	if ev.Event != "" {
		c.t.Fatalf("want a publication, got event %q: %s", ev.Event, ev.Data)
	}
	var p offsetPush
	if err := json.Unmarshal([]byte(ev.Data), &p); err != nil || p.Push != "pub" {
		c.t.Fatalf("bad publication %q: %v", ev.Data, err)
	}
	return p
}

// subscribed reads the next event as a subscribed event.
func (c *sseClient) subscribed(channel string) protocol.SubscribeResult {
	c.t.Helper()
	ev := c.next()
	var m struct {
		protocol.SubscribeResult
		Push    string `json:"push"`
		Channel string `json:"channel"`
	}
	if ev.Event != "subscribed" || json.Unmarshal([]byte(ev.Data), &m) != nil || m.Channel != channel {
		c.t.Fatalf("want subscribed to %s, got %+v", channel, ev)
	}
	return m.SubscribeResult
}

// expectEnd reads until the stream ends and returns the close event's
// code (0 if it ended without one).
func (c *sseClient) expectEnd() CloseCode {
	c.t.Helper()
	var code CloseCode
	timeout := time.After(10 * time.Second)
	for {
		select {
		case ev, ok := <-c.events:
			if !ok {
				return code
			}
			if ev.Event == "close" {
				var m struct{ Code CloseCode }
				_ = json.Unmarshal([]byte(ev.Data), &m)
				code = m.Code
			}
		case <-timeout:
			c.t.Fatal("the stream did not end within 10s")
		}
	}
}

func TestSSEStream(t *testing.T) {
	t.Parallel()
	ts := newTestServer(t, historyConfig(100))
	ctx := context.Background()
	c := ts.sse(t, nil, "news", "stats:a")
	h := c.resp.Header
	for k, want := range map[string]string{"Content-Type": "text/event-stream", "Cache-Control": "no-cache", "X-Accel-Buffering": "no"} {
		if got := h.Get(k); got != want {
			t.Errorf("%s: %q, want %q", k, got, want)
		}
	}
	res := c.subscribed("news")
	if res.Epoch == "" {
		t.Fatalf("a channel with history has a position: %+v", res)
	}
	if want := fmt.Sprintf("0:%s,", res.Epoch); c.lastID != want {
		t.Fatalf("id %q, want %q", c.lastID, want)
	}
	c.subscribed("stats:a")
	if want := fmt.Sprintf("0:%s,-", res.Epoch); c.lastID != want {
		t.Fatalf("id %q, want %q", c.lastID, want)
	}
	waitFor(t, "subscriptions", func() bool { return ts.node.hub.numSubs("stats:a") == 1 })

	// Text with line breaks between its tokens, binary, text that is not
	// JSON, a room without history, a direct message.
	mustPublish(t, ts.node, "news", []byte("{\n  \"a\": 1\r\n}"))
	if _, err := ts.node.Publish(ctx, "news", []byte{0, 1, 2, 255}, WithBinary()); err != nil {
		t.Fatal(err)
	}
	mustPublish(t, ts.node, "stats:a", []byte(`"hi"`))
	if err := ts.node.Send(ctx, ts.sseConnID(t), []byte(`{"just":"you"}`)); err != nil {
		t.Fatal(err)
	}

	p := c.pub()
	var v map[string]int
	if p.Offset != 1 || json.Unmarshal(p.Data, &v) != nil || v["a"] != 1 {
		t.Fatalf("first publication: %+v", p)
	}
	if want := fmt.Sprintf("1:%s,-", res.Epoch); c.lastID != want {
		t.Fatalf("id %q, want %q", c.lastID, want)
	}
	ev := c.next()
	var bin struct {
		Offset uint64 `json:"offset"`
		Binary string `json:"binary"`
	}
	if err := json.Unmarshal([]byte(ev.Data), &bin); err != nil || bin.Offset != 2 || bin.Binary != base64.StdEncoding.EncodeToString([]byte{0, 1, 2, 255}) {
		t.Fatalf("binary publication: %+v (%v)", ev, err)
	}
	if p := c.pub(); string(p.Data) != `"hi"` || p.Offset != 0 {
		t.Fatalf("room publication: %+v", p)
	}
	if want := fmt.Sprintf("2:%s,-", res.Epoch); c.lastID != want {
		t.Fatalf("a publication without offset keeps the id: %q, want %q", c.lastID, want)
	}
	if ev := c.next(); ev.Event != "direct" || !strings.Contains(ev.Data, `"data":{"just":"you"}`) {
		t.Fatalf("direct message: %+v", ev)
	}
}

func mustPublish(t testing.TB, n *Node, ch string, data []byte) PublishResult {
	t.Helper()
	res, err := n.Publish(context.Background(), ch, data)
	if err != nil {
		t.Fatal(err)
	}
	return res
}

func TestSSERecovery(t *testing.T) {
	t.Parallel()
	ts := newTestServer(t, historyConfig(5))
	c := ts.sse(t, nil, "a", "b")
	c.subscribed("a")
	c.subscribed("b")
	mustPublish(t, ts.node, "a", []byte(`1`))
	if p := c.pub(); p.Offset != 1 {
		t.Fatalf("got %+v", p)
	}
	last := c.lastID
	c.close()
	waitFor(t, "the stream's end", func() bool { return ts.node.hub.numConns() == 0 })

	// Missed while away: two on a, three on b.
	for _, m := range []struct{ ch, data string }{{"b", "b1"}, {"a", "a2"}, {"b", "b2"}, {"a", "a3"}, {"b", "b3"}} {
		mustPublish(t, ts.node, m.ch, []byte(`"`+m.data+`"`))
	}
	// The browser's reconnect: the header wins over a stale query id.
	u := ts.sseURL(url.Values{"last_event_id": {","}}, "a", "b")
	c2, resp, body := sseGet(t, u, http.Header{"Last-Event-Id": {last}})
	if c2 == nil {
		t.Fatalf("reconnect: %d %s", resp.StatusCode, body)
	}
	for _, ch := range []string{"a", "b"} {
		res := c2.subscribed(ch)
		if ch == "a" && c2.lastID != last {
			// Before a's recovered publications, every position is the
			// request's: a stream lost now must recover all of them again.
			t.Fatalf("id before the recovered publications %q, want %q", c2.lastID, last)
		}
		if res.Recovered == nil || !*res.Recovered {
			t.Fatalf("%s not recovered: %+v", ch, res)
		}
		var got []string
		for range map[string]int{"a": 2, "b": 3}[ch] {
			var s string
			_ = json.Unmarshal(c2.pub().Data, &s)
			got = append(got, s)
		}
		want := map[string]string{"a": "a2 a3", "b": "b1 b2 b3"}[ch]
		if strings.Join(got, " ") != want {
			t.Fatalf("%s recovered %v, want %s", ch, got, want)
		}
	}
	ep := strings.Split(strings.Split(c2.lastID, ",")[0], ":")[1]
	if want := fmt.Sprintf("3:%s,3:", ep); !strings.HasPrefix(c2.lastID, want) {
		t.Fatalf("id after recovery %q, want %s...", c2.lastID, want)
	}
	// Live after the recovered ones, with no gap.
	mustPublish(t, ts.node, "b", []byte(`"b4"`))
	if p := c2.pub(); p.Offset != 4 {
		t.Fatalf("live after recovery: %+v", p)
	}
	old := c2.lastID
	c2.close()

	// Too old: more missed than the history keeps.
	for i := range 7 {
		mustPublish(t, ts.node, "a", []byte(fmt.Sprint(10+i)))
	}
	c3, resp, body := sseGet(t, ts.sseURL(url.Values{"last_event_id": {old}}, "a", "b"), nil)
	if c3 == nil {
		t.Fatalf("reconnect: %d %s", resp.StatusCode, body)
	}
	if res := c3.subscribed("a"); res.Recovered == nil || *res.Recovered || res.Reason != protocol.ReasonTooOld || res.Offset != 10 {
		t.Fatalf("a: want recovered:false too_old at 10, got %+v", res)
	}
	if res := c3.subscribed("b"); res.Recovered == nil || !*res.Recovered {
		t.Fatalf("b: %+v", res)
	}
	mustPublish(t, ts.node, "a", []byte(`"now"`))
	if p := c3.pub(); p.Offset != 11 {
		t.Fatalf("a continues from the head: %+v", p)
	}
}

func TestSSERefusals(t *testing.T) {
	t.Parallel()
	cfg := authConfig(t)
	cfg.AllowedOrigins = []string{"https://app.example.com"}
	cfg.Limits.MaxChannelsPerConnection = 2
	ts := newTestServer(t, cfg)
	alice := userToken(t, "alice", time.Hour)
	for _, tc := range []struct {
		name   string
		query  url.Values
		hdr    http.Header
		status int
	}{
		{"no channel", url.Values{}, nil, 400},
		{"bad channel", url.Values{"channel": {"no spaces"}}, nil, 400},
		{"no namespace", url.Values{"channel": {"nope:x"}}, nil, 400},
		{"twice", url.Values{"channel": {"public:a", "public:a"}}, nil, 400},
		{"too many", url.Values{"channel": {"public:a", "public:b", "public:c"}}, nil, 400},
		{"bad last id", url.Values{"channel": {"public:a", "public:b"}, "last_event_id": {"1:x"}}, nil, 400},
		{"anonymous on an authenticated channel", url.Values{"channel": {"news"}}, nil, 403},
		{"bad token", url.Values{"channel": {"news"}, "token": {"garbage"}}, nil, 401},
		{"token not granting", url.Values{"channel": {"private:x"}, "token": {alice}}, nil, 403},
		{"other origin", url.Values{"channel": {"public:a"}}, http.Header{"Origin": {"https://evil.example"}}, 403},
		{"anonymous on a public channel", url.Values{"channel": {"public:a"}}, nil, 200},
		{"token in the query", url.Values{"channel": {"news", "public:a"}, "token": {alice}}, nil, 200},
		{"token in the header", url.Values{"channel": {"news"}}, http.Header{"Authorization": {"Bearer " + alice}}, 200},
		{"allowed origin", url.Values{"channel": {"public:a"}}, http.Header{"Origin": {"https://app.example.com"}}, 200},
		// Without Origin, a browser's Fetch metadata tells a cross-site
		// GET (an <img src>, a no-cors fetch, a link) carrying cookies.
		{"cross-site without origin", url.Values{"channel": {"public:a"}}, http.Header{"Sec-Fetch-Site": {"cross-site"}, "Sec-Fetch-Mode": {"no-cors"}}, 403},
		{"same-site without origin", url.Values{"channel": {"public:a"}}, http.Header{"Sec-Fetch-Site": {"same-site"}, "Sec-Fetch-Mode": {"cors"}}, 403},
		{"image without origin", url.Values{"channel": {"public:a"}}, http.Header{"Sec-Fetch-Mode": {"no-cors"}, "Sec-Fetch-Dest": {"image"}}, 403},
		{"navigation", url.Values{"channel": {"public:a"}}, http.Header{"Sec-Fetch-Site": {"none"}, "Sec-Fetch-Mode": {"navigate"}}, 403},
		{"same-origin EventSource", url.Values{"channel": {"public:a"}}, http.Header{"Sec-Fetch-Site": {"same-origin"}, "Sec-Fetch-Mode": {"cors"}}, 200},
		{"cross-site with an allowed origin", url.Values{"channel": {"public:a"}}, http.Header{"Origin": {"https://app.example.com"}, "Sec-Fetch-Site": {"cross-site"}, "Sec-Fetch-Mode": {"cors"}}, 200},
	} {
		t.Run(tc.name, func(t *testing.T) {
			c, resp, body := sseGet(t, ts.srv.URL+"/sse?"+tc.query.Encode(), tc.hdr)
			if resp.StatusCode != tc.status {
				t.Fatalf("status %d (%s), want %d", resp.StatusCode, body, tc.status)
			}
			if c != nil {
				c.next() // subscribed
				c.close()
			}
		})
	}
	// A POST is not a stream.
	resp, err := http.Post(ts.srv.URL+"/sse?channel=public:a", "text/plain", nil)
	if err != nil {
		t.Fatal(err)
	}
	resp.Body.Close()
	if resp.StatusCode != http.StatusMethodNotAllowed {
		t.Fatalf("POST: %d", resp.StatusCode)
	}
	// The user of a token is the connection's.
	waitFor(t, "the streams' ends", func() bool { return ts.node.hub.numConns() == 0 })
	c := ts.sse(t, http.Header{"Authorization": {"Bearer " + alice}}, "news")
	c.subscribed("news")
	if id := ts.sseConnID(t); ts.node.hub.conn(id).user != "alice" {
		t.Fatal("the token's user is not the connection's")
	}
}

func TestSSECORS(t *testing.T) {
	t.Parallel()
	ts := newTestServer(t, Config{AllowedOrigins: []string{"https://app.example.com"}})
	self := "http://" + strings.TrimPrefix(ts.srv.URL, "http://")
	for _, tc := range []struct {
		name, origin string
		cors         bool
	}{
		{"allowed other origin", "https://app.example.com", true},
		{"own origin", self, false},
		{"no origin", "", false},
	} {
		t.Run(tc.name, func(t *testing.T) {
			hdr := http.Header{}
			if tc.origin != "" {
				hdr.Set("Origin", tc.origin)
			}
			c, resp, body := sseGet(t, ts.sseURL(nil, "x"), hdr)
			if c == nil {
				t.Fatalf("%d %s", resp.StatusCode, body)
			}
			c.subscribed("x")
			h := resp.Header
			want := map[string]string{"Access-Control-Allow-Origin": tc.origin, "Access-Control-Allow-Credentials": "true", "Vary": "Origin"}
			for k, v := range want {
				if !tc.cors {
					v = ""
				}
				if got := h.Get(k); got != v {
					t.Errorf("%s: %q, want %q", k, got, v)
				}
			}
			c.close()
		})
	}
}

// TestSSEEndOfBody checks that a stream the server ends (a close event
// written) ends with HTTP's end of body — the terminating chunk — and not
// a cut connection: a raw HTTP/1.1 client reads it to the end.
func TestSSEEndOfBody(t *testing.T) {
	t.Parallel()
	ts := newTestServer(t, authConfig(t))
	nc, err := net.DialTimeout("tcp", strings.TrimPrefix(ts.srv.URL, "http://"), 5*time.Second)
	if err != nil {
		t.Fatal(err)
	}
	defer nc.Close()
	_ = nc.SetDeadline(time.Now().Add(15 * time.Second))
	q := url.Values{"channel": {"public:a"}, "token": {userToken(t, "carol", time.Hour)}}
	fmt.Fprintf(nc, "GET /sse?%s HTTP/1.1\r\nHost: %s\r\nAccept: text/event-stream\r\n\r\n", q.Encode(), strings.TrimPrefix(ts.srv.URL, "http://"))
	br := bufio.NewReader(nc)
	resp, err := http.ReadResponse(br, nil)
	if err != nil {
		t.Fatal(err)
	}
	if resp.StatusCode != http.StatusOK || len(resp.TransferEncoding) == 0 || resp.TransferEncoding[0] != "chunked" {
		t.Fatalf("status %d, transfer encoding %v", resp.StatusCode, resp.TransferEncoding)
	}
	body := bufio.NewReader(resp.Body) // dechunks; io.EOF only at the terminating chunk
	line, err := body.ReadString('\n')
	if err != nil || line != "id: -\n" {
		t.Fatalf("first line %q: %v", line, err)
	}
	waitFor(t, "the subscription", func() bool { return ts.node.hub.numSubs("public:a") == 1 })
	if err := ts.node.DisconnectUser(context.Background(), "carol", CloseForbidden, "bye"); err != nil {
		t.Fatal(err)
	}
	rest, err := io.ReadAll(body)
	if err != nil {
		t.Fatalf("the body ended without its terminating chunk: %v (read %q)", err, rest)
	}
	if !strings.Contains(string(rest), "event: close\ndata: {\"code\":4500,\"reason\":\"bye\"}\n\n") {
		t.Fatalf("no close event in %q", rest)
	}
}

// TestSSEStuckWriteIsCut checks that closing the stream (Shutdown's cut)
// still ends a write stuck on a client that stopped reading, long before
// the write timeout.
func TestSSEStuckWriteIsCut(t *testing.T) {
	t.Parallel()
	ts := newTestServer(t, Config{MaxMessageSize: 64 << 10, MaxQueueBytes: 32 << 20, MaxQueueMessages: 1 << 16, WriteTimeout: 60 * time.Second})
	nc, err := net.DialTimeout("tcp", strings.TrimPrefix(ts.srv.URL, "http://"), 5*time.Second)
	if err != nil {
		t.Fatal(err)
	}
	defer nc.Close()
	fmt.Fprintf(nc, "GET /sse?channel=x HTTP/1.1\r\nHost: x\r\n\r\n") // and never read
	waitFor(t, "the subscription", func() bool { return ts.node.hub.numSubs("x") == 1 })
	big := []byte(`"` + strings.Repeat("z", 60<<10) + `"`)
	var c *conn
	ts.node.forEachConn(func(cc *conn) { c = cc })
	for range 250 { // 15 MB: more than the sockets' buffers hold
		mustPublish(t, ts.node, "x", big)
	}
	time.Sleep(200 * time.Millisecond)
	if c.out.queued() == 0 {
		t.Fatal("the writer is not stuck")
	}
	ctx, cancel := context.WithTimeout(context.Background(), 300*time.Millisecond)
	defer cancel()
	start := time.Now()
	_ = ts.node.Shutdown(ctx)
	if d := time.Since(start); d > 5*time.Second {
		t.Fatalf("Shutdown took %v: the stuck write was not cut", d)
	}
}

func TestSSETokenExpiry(t *testing.T) {
	t.Parallel()
	ts := newTestServer(t, authConfig(t))
	c := ts.sse(t, http.Header{"Authorization": {"Bearer " + userToken(t, "bob", 1500*time.Millisecond)}}, "news")
	c.subscribed("news")
	if code := c.expectEnd(); code != CloseTokenExpired {
		t.Fatalf("close %d, want %d", code, CloseTokenExpired)
	}
}

func TestSSEHeartbeat(t *testing.T) {
	t.Parallel()
	ts := newTestServer(t, Config{PingInterval: 50 * time.Millisecond})
	c := ts.sse(t, nil, "x")
	deadline := time.After(5 * time.Second)
	for pings := 0; pings < 3; {
		select {
		case ev := <-c.events:
			if ev.Comment == "ping" {
				pings++
			}
		case <-deadline:
			t.Fatal("fewer than 3 pings in 5s at a 50ms interval")
		}
	}
}

func TestSSEDrainAndShutdown(t *testing.T) {
	t.Parallel()
	ts := newTestServer(t, Config{})
	a := ts.sse(t, nil, "x")
	a.subscribed("x")
	b := ts.sse(t, nil, "y")
	b.subscribed("y")
	if err := ts.node.Drain(context.Background(), 100*time.Millisecond); err != nil {
		t.Fatal(err)
	}
	for _, c := range []*sseClient{a, b} {
		if code := c.expectEnd(); code != CloseServiceRestart {
			t.Fatalf("close %d, want %d", code, CloseServiceRestart)
		}
	}
	// Draining: a new stream ends at once with 1012 and a retry hint, so a
	// browser's EventSource tries again (a 503 would end it for good).
	if code, retry := sseRefusal(t, ts.sseURL(nil, "x")); code != CloseServiceRestart || retry < 1000 || retry > 3000 {
		t.Fatalf("while draining: close %d, retry %d ms", code, retry)
	}
	waitFor(t, "every stream's end", func() bool { return ts.node.hub.numConns() == 0 })
}

// sseRefusal opens a stream the node refuses for now and returns the close
// code and the retry: hint (ms) of the empty stream it answers with.
func sseRefusal(t *testing.T, u string) (CloseCode, int) {
	t.Helper()
	req, _ := http.NewRequest(http.MethodGet, u, nil)
	req.Header.Set("Accept", "text/event-stream")
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	body, err := io.ReadAll(resp.Body) // it ends by itself
	if err != nil {
		t.Fatal(err)
	}
	if resp.StatusCode != http.StatusOK || resp.Header.Get("Content-Type") != "text/event-stream" {
		t.Fatalf("status %d, type %q: %s", resp.StatusCode, resp.Header.Get("Content-Type"), body)
	}
	var retry int
	var m struct{ Code CloseCode }
	for _, line := range strings.Split(string(body), "\n") {
		if v, ok := strings.CutPrefix(line, "retry: "); ok {
			retry, _ = strconv.Atoi(v)
		}
		if v, ok := strings.CutPrefix(line, "data: "); ok {
			_ = json.Unmarshal([]byte(v), &m)
		}
	}
	if !strings.Contains(string(body), "event: close\n") {
		t.Fatalf("no close event: %q", body)
	}
	return m.Code, retry
}

// A full node answers a new stream with 1013 and a retry hint, not a 503.
func TestSSEFullNodeRetries(t *testing.T) {
	t.Parallel()
	ts := newTestServer(t, Config{Limits: Limits{MaxConnections: 1}})
	a := ts.sse(t, nil, "x")
	a.subscribed("x")
	if code, retry := sseRefusal(t, ts.sseURL(nil, "x")); code != CloseTryAgainLater || retry < 1000 || retry > 3000 {
		t.Fatalf("full: close %d, retry %d ms", code, retry)
	}
}

func TestSSESlowConsumer(t *testing.T) {
	t.Parallel()
	ts := newTestServer(t, Config{MaxMessageSize: 32 << 10, MaxQueueBytes: 64 << 10, WriteTimeout: 5 * time.Second})
	c := ts.sse(t, nil, "x")
	c.subscribed("x")
	// Stop reading: the parser blocks once its buffer is full, then the
	// sockets' buffers fill, then the server's queue.
	big := []byte(`"` + strings.Repeat("z", 30<<10) + `"`)
	deadline := time.Now().Add(20 * time.Second)
	for ts.node.metrics.slowConsumers.Load() == 0 {
		if time.Now().After(deadline) {
			t.Fatal("not cut as a slow consumer")
		}
		mustPublish(t, ts.node, "x", big)
	}
	// The stream ends (reading again drains it).
	go func() {
		for range c.events {
		}
	}()
	select {
	case <-c.done:
	case <-time.After(15 * time.Second):
		t.Fatal("the stream of a slow consumer did not end")
	}
	waitFor(t, "the slow consumer's end", func() bool { return ts.node.hub.numConns() == 0 })
}

func TestSSEServerUnsubscribeAndPresence(t *testing.T) {
	t.Parallel()
	ts := newTestServer(t, historyConfig(10))
	tok := ts.sse(t, nil, "room:1", "news")
	tok.subscribed("room:1")
	if ev := tok.next(); ev.Event != "join" { // its own
		t.Fatalf("want its own join event, got %+v", ev)
	}
	tok.subscribed("news")
	id := ts.sseConnID(t)
	pres, err := ts.node.Presence(context.Background(), "room:1")
	if err != nil || len(pres) != 1 || pres[id].Client != id {
		t.Fatalf("presence: %v %v", pres, err)
	}
	ws := ts.client(t)
	ws.subscribe("room:1")
	if ev := tok.next(); ev.Event != "join" || !strings.Contains(ev.Data, `"push":"join"`) {
		t.Fatalf("want a join event, got %+v", ev)
	}
	if err := ts.node.UnsubscribeClient(context.Background(), id, "room:1"); err != nil {
		t.Fatal(err)
	}
	if ev := tok.next(); ev.Event != "unsub" || !strings.Contains(ev.Data, `"channel":"room:1"`) {
		t.Fatalf("want an unsub event, got %+v", ev)
	}
	// Server-side subscriptions leave SSE streams alone (their channels
	// are the request's).
	if err := ts.node.SubscribeClient(context.Background(), id, "other"); err != nil {
		t.Fatal(err)
	}
	mustPublish(t, ts.node, "news", []byte(`1`))
	if p := tok.pub(); p.Offset != 1 {
		t.Fatalf("got %+v", p)
	}
	if ts.node.hub.numSubs("other") != 0 {
		t.Fatal("an SSE stream was subscribed by the server")
	}
}

// TestSSEServerUnsubscribeStaysAfterReconnect checks that a channel the
// server took away is marked so in the event id ("x"), and that the
// browser's reconnect with that id neither subscribes it again nor
// replays what was published on it meanwhile.
func TestSSEServerUnsubscribeStaysAfterReconnect(t *testing.T) {
	t.Parallel()
	ts := newTestServer(t, historyConfig(10))
	c := ts.sse(t, nil, "a", "b")
	c.subscribed("a")
	c.subscribed("b")
	if err := ts.node.UnsubscribeClient(context.Background(), ts.sseConnID(t), "a"); err != nil {
		t.Fatal(err)
	}
	if ev := c.next(); ev.Event != "unsub" || !strings.HasPrefix(ev.ID, "x,0:") {
		t.Fatalf("want an unsub event with id x,0:..., got %+v", ev)
	}
	last := c.lastID
	c.close()
	waitFor(t, "the stream's end", func() bool { return ts.node.hub.numConns() == 0 })
	mustPublish(t, ts.node, "a", []byte(`"a1"`)) // excluded: must not come back
	mustPublish(t, ts.node, "b", []byte(`"b1"`))

	c2 := ts.sse(t, http.Header{"Last-Event-Id": {last}}, "a", "b")
	if res := c2.subscribed("b"); res.Recovered == nil || !*res.Recovered {
		t.Fatalf("b: %+v", res)
	}
	if p := c2.pub(); string(p.Data) != `"b1"` {
		t.Fatalf("recovered %+v, want b's b1", p)
	}
	if !strings.HasPrefix(c2.lastID, "x,1:") {
		t.Fatalf("id %q keeps a removed, want x,1:...", c2.lastID)
	}
	if n := ts.node.hub.numSubs("a"); n != 0 {
		t.Fatalf("the reconnect subscribed a removed channel (%d subscribers)", n)
	}
	mustPublish(t, ts.node, "a", []byte(`"a2"`))
	mustPublish(t, ts.node, "b", []byte(`"b2"`))
	if p := c2.pub(); string(p.Data) != `"b2"` {
		t.Fatalf("got %+v, want b's b2", p)
	}
	// The removed mark is no format error.
	if _, removed, err := parseLastEventID("x,-,", 3); err != nil || !removed[0] || removed[1] || removed[2] {
		t.Fatalf("x,-,: removed %v, %v", removed, err)
	}
}

// TestSSERecoveryOfManyChannels checks that a reconnect recovering many
// channels at once delivers everything, without a slow-consumer cut:
// every event carries the id of all 50 channels, and 50 × 60 recovered
// events queued at once took the queue past its default byte limit.
func TestSSERecoveryOfManyChannels(t *testing.T) {
	t.Parallel()
	const channels, missed = 50, 60
	ts := newTestServer(t, historyConfig(100))
	var names []string
	for i := range channels {
		names = append(names, fmt.Sprintf("ch%02d", i))
	}
	c := ts.sse(t, nil, names...)
	for _, ch := range names {
		c.subscribed(ch)
	}
	last := c.lastID
	c.close()
	waitFor(t, "the stream's end", func() bool { return ts.node.hub.numConns() == 0 })
	for _, ch := range names {
		for j := range missed {
			mustPublish(t, ts.node, ch, []byte(fmt.Sprint(j)))
		}
	}
	c2 := ts.sse(t, http.Header{"Last-Event-Id": {last}}, names...)
	for _, ch := range names {
		if res := c2.subscribed(ch); res.Recovered == nil || !*res.Recovered {
			t.Fatalf("%s: %+v", ch, res)
		}
		for j := range missed {
			ev := c2.next()
			if ev.Event == "close" {
				t.Fatalf("%s, publication %d: the stream was closed: %s", ch, j+1, ev.Data)
			}
			var p offsetPush
			if err := json.Unmarshal([]byte(ev.Data), &p); err != nil || p.Offset != uint64(j+1) {
				t.Fatalf("%s: publication %d: %+v (%v)", ch, j+1, ev, err)
			}
		}
	}
	if n := ts.node.metrics.slowConsumers.Load(); n != 0 {
		t.Fatalf("%d slow consumers", n)
	}
}

// sseConnID returns the id of the node's one SSE connection.
func (ts *testServer) sseConnID(t testing.TB) string {
	t.Helper()
	var ids []string
	ts.node.forEachConn(func(c *conn) {
		if c.sse != nil {
			ids = append(ids, c.id)
		}
	})
	if len(ids) != 1 {
		t.Fatalf("%d SSE connections, want 1", len(ids))
	}
	return ids[0]
}
