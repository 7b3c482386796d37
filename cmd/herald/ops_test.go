package main

import (
	"encoding/json"
	"io"
	"net/http"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/gorilla/websocket"
)

const testAPIKey = "test-api-key-0123456789abcdef"

// httpDo sends a request without keeping the connection alive (goleak) and
// returns the response and its body.
func httpDo(t *testing.T, method, url string, hdr http.Header, body string) (*http.Response, string) {
	t.Helper()
	req, err := http.NewRequest(method, url, strings.NewReader(body))
	if err != nil {
		t.Fatal(err)
	}
	for k, v := range hdr {
		req.Header[k] = v
	}
	c := &http.Client{Transport: &http.Transport{DisableKeepAlives: true}, Timeout: 5 * time.Second,
		CheckRedirect: func(*http.Request, []*http.Request) error { return http.ErrUseLastResponse }}
	resp, err := c.Do(req)
	if err != nil {
		t.Fatalf("%s %s: %v", method, url, err)
	}
	defer resp.Body.Close()
	b, err := io.ReadAll(resp.Body)
	if err != nil {
		t.Fatalf("%s %s: read body: %v", method, url, err)
	}
	return resp, string(b)
}

func bearer(key string) http.Header { return http.Header{"Authorization": {"Bearer " + key}} }

// TestServeAPI: the HTTP API is off without api_key, needs the key with
// one (401 without it, with the API's JSON error), publishes to WebSocket
// subscribers, and the key never reaches the log, even at debug level.
func TestServeAPI(t *testing.T) {
	t.Parallel()
	t.Run("off without api_key", func(t *testing.T) {
		t.Parallel()
		s := startServer(t, nil)
		resp, _ := httpDo(t, "POST", "http://"+s.addr+"/api/v1/publish", bearer(testAPIKey), `{"channel":"a","data":1}`)
		if resp.StatusCode != http.StatusNotFound {
			t.Fatalf("API without api_key: %d, want 404", resp.StatusCode)
		}
	})
	t.Run("on with api_key", func(t *testing.T) {
		t.Parallel()
		s := startServer(t, []string{"HERALD_API_KEY=" + testAPIKey}, "--log-level", "debug")
		base := "http://" + s.addr
		for _, hdr := range []http.Header{nil, bearer("wrong-key-0123456789abcdef"), {"X-API-Key": {"nope"}}} {
			resp, body := httpDo(t, "GET", base+"/api/v1/info", hdr, "")
			if resp.StatusCode != http.StatusUnauthorized || !strings.Contains(body, `"code":"unauthorized"`) {
				t.Fatalf("API with key %v: %d %s, want 401 unauthorized", hdr, resp.StatusCode, body)
			}
		}
		sub := mustDialWS(t, "ws://"+s.addr+"/ws", nil)
		call(t, sub, `{"id":1,"cmd":"subscribe","channel":"news"}`)
		resp, body := httpDo(t, "POST", base+"/api/v1/publish", bearer(testAPIKey), `{"channel":"news","data":{"text":"hi"}}`)
		if resp.StatusCode != http.StatusOK {
			t.Fatalf("publish: %d %s", resp.StatusCode, body)
		}
		if _, b := readMessage(t, sub); string(b) != `{"push":"pub","channel":"news","data":{"text":"hi"}}` {
			t.Fatalf("subscriber got %s", b)
		}
		resp, body = httpDo(t, "GET", base+"/api/v1/info", http.Header{"X-API-Key": {testAPIKey}}, "")
		if resp.StatusCode != http.StatusOK || !strings.Contains(body, `"connections":1`) {
			t.Fatalf("info: %d %s", resp.StatusCode, body)
		}
		if resp, body = httpDo(t, "GET", base+"/api/openapi.json", nil, ""); resp.StatusCode != http.StatusOK || !json.Valid([]byte(body)) {
			t.Fatalf("openapi.json: %d", resp.StatusCode)
		}
		if err := s.stop(t); err != nil {
			t.Fatal(err)
		}
		if strings.Contains(s.logs.String(), testAPIKey) {
			t.Fatalf("the API key is in the log:\n%s", s.logs)
		}
		if !strings.Contains(s.logs.String(), `"api":"/api/"`) {
			t.Errorf("the log does not say the API is on:\n%s", s.logs)
		}
	})
	t.Run("api_key_file", func(t *testing.T) {
		t.Parallel()
		path := filepath.Join(t.TempDir(), "key")
		if err := os.WriteFile(path, []byte(testAPIKey+"\n"), 0o600); err != nil {
			t.Fatal(err)
		}
		s := startServer(t, nil, "--api-key-file", path)
		if resp, body := httpDo(t, "GET", "http://"+s.addr+"/api/v1/info", bearer(testAPIKey), ""); resp.StatusCode != http.StatusOK {
			t.Fatalf("info with the key from the file: %d %s", resp.StatusCode, body)
		}
	})
}

// TestServeMetrics: /metrics scrapes in the Prometheus format and counts
// what happens; metrics=false turns it off.
func TestServeMetrics(t *testing.T) {
	t.Parallel()
	s := startServer(t, nil)
	ws := mustDialWS(t, "ws://"+s.addr+"/ws", nil)
	call(t, ws, `{"id":1,"cmd":"subscribe","channel":"a"}`)
	raw := mustDialWS(t, "ws://"+s.addr+"/ws/raw?channel=a", nil)
	if err := raw.WriteMessage(websocket.TextMessage, []byte("1")); err != nil {
		t.Fatal(err)
	}
	readMessage(t, ws) // the raw client's publication: it is counted
	resp, body := httpGet(t, "http://"+s.addr+"/metrics")
	if resp.StatusCode != http.StatusOK || !strings.HasPrefix(resp.Header.Get("Content-Type"), "text/plain") {
		t.Fatalf("/metrics: %d %q", resp.StatusCode, resp.Header.Get("Content-Type"))
	}
	for _, want := range []string{
		"\nherald_connections 2\n",
		"\nherald_channels 1\n",
		"\nherald_subscriptions 2\n",
		"\nherald_messages_received_total 2\n",
		`herald_publications_total{source="raw"} 1`,
		"# TYPE herald_broadcast_duration_seconds histogram",
		"\ngo_goroutines ",
		"\nprocess_resident_memory_bytes ",
	} {
		if !strings.Contains(body, want) {
			t.Errorf("/metrics has no %q", strings.TrimSpace(want))
		}
	}

	off := startServer(t, nil, "--metrics=false")
	if resp, _ := httpGet(t, "http://"+off.addr+"/metrics"); resp.StatusCode != http.StatusNotFound {
		t.Fatalf("/metrics with metrics=false: %d, want 404", resp.StatusCode)
	}
}

// TestServeReadyzDraining: /readyz fails with the reason as soon as the
// drain starts, and /healthz still says the process is alive.
func TestServeReadyzDraining(t *testing.T) {
	t.Parallel()
	s := startServer(t, nil, "--drain-window", "3s")
	mustDialWS(t, "ws://"+s.addr+"/ws", nil) // something to drain
	if resp, body := httpGet(t, "http://"+s.addr+"/readyz"); resp.StatusCode != http.StatusOK || body != "ok" {
		t.Fatalf("/readyz before: %d %q", resp.StatusCode, body)
	}
	s.cancel()
	waitFor(t, "/readyz 503", func() bool {
		resp, body := httpGet(t, "http://"+s.addr+"/readyz")
		if resp.StatusCode == http.StatusServiceUnavailable && !strings.Contains(body, "draining") {
			t.Fatalf("/readyz while draining says %q", body)
		}
		return resp.StatusCode == http.StatusServiceUnavailable
	})
	if resp, _ := httpGet(t, "http://"+s.addr+"/healthz"); resp.StatusCode != http.StatusOK {
		t.Fatalf("/healthz while draining: %d, want 200", resp.StatusCode)
	}
	if err := s.stop(t); err != nil {
		t.Fatal(err)
	}
}

// TestServeOnlyGETForPages: the demo's files answer GET and HEAD only, now
// that they are routed for every method.
func TestServeOnlyGETForPages(t *testing.T) {
	t.Parallel()
	s := startServer(t, nil)
	resp, _ := httpDo(t, "POST", "http://"+s.addr+"/", nil, "x")
	if resp.StatusCode != http.StatusMethodNotAllowed {
		t.Fatalf("POST /: %d, want 405", resp.StatusCode)
	}
	resp, _ = httpDo(t, "HEAD", "http://"+s.addr+"/", nil, "")
	if resp.StatusCode != http.StatusOK {
		t.Fatalf("HEAD /: %d", resp.StatusCode)
	}
}
