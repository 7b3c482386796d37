package herald

import (
	"bytes"
	"log/slog"
	"net/http"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/gorilla/websocket"
)

// syncBuffer is a log sink tests read while the node writes.
type syncBuffer struct {
	mu  sync.Mutex
	buf bytes.Buffer
}

func (b *syncBuffer) Write(p []byte) (int, error) {
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.buf.Write(p)
}

func (b *syncBuffer) String() string {
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.buf.String()
}

// A page refused for its origin is logged once per origin, at Warn, naming
// the setting that would admit it; the refusals after it are Debug.
func TestOriginRefusalNamesTheSetting(t *testing.T) {
	t.Parallel()
	var logs syncBuffer
	ts := newTestServer(t, Config{Logger: slog.New(slog.NewTextHandler(&logs, nil))}) // Info and up
	d := websocket.Dialer{HandshakeTimeout: 5 * time.Second}
	for _, origin := range []string{"https://app.example.com", "https://app.example.com", "https://other.example.com"} {
		_, resp, err := d.Dial(ts.url+"/ws", http.Header{"Origin": {origin}})
		if err == nil || resp == nil || resp.StatusCode != http.StatusForbidden {
			t.Fatalf("origin %s: %v %v, want 403", origin, err, resp)
		}
	}
	got := logs.String()
	if n := strings.Count(got, "level=WARN"); n != 2 {
		t.Errorf("%d warnings, want one per origin (2):\n%s", n, got)
	}
	if !strings.Contains(got, "allowed_origins") || !strings.Contains(got, "origin=https://app.example.com") {
		t.Errorf("the warning does not name allowed_origins and the origin:\n%s", got)
	}
}

// A queue smaller than two of the largest messages cannot work: each such
// message would cut all its receivers. New refuses it.
func TestQueueMustHoldTwoMessages(t *testing.T) {
	t.Parallel()
	_, err := New(Config{MaxMessageSize: 20_000_000})
	if err == nil || !strings.Contains(err.Error(), "MaxQueueBytes (1048576) must be at least twice MaxMessageSize (20000000)") {
		t.Fatalf("New: %v", err)
	}
	n, err := New(Config{MaxMessageSize: 1 << 20, MaxQueueBytes: 2 << 20})
	if err != nil {
		t.Fatalf("New with a queue of exactly twice the message: %v", err)
	}
	_ = n.Shutdown(t.Context())
}

// A route asked with the wrong method gets 405 with Allow, not 404.
func TestAPIWrongMethod(t *testing.T) {
	t.Parallel()
	s := newAPIServer(t, Config{})
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
