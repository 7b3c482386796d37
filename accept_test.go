package herald

import (
	"bufio"
	"net"
	"net/http"
	"net/http/httptest"
	"strings"
	"testing"
)

// rawHandshake sends a handshake request written by hand and returns the
// status line and headers of the answer.
func rawHandshake(t *testing.T, ts *testServer, req string) (status string, hdr http.Header) {
	t.Helper()
	c, err := net.Dial("tcp", strings.TrimPrefix(ts.url, "ws://"))
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	if _, err := c.Write([]byte(req)); err != nil {
		t.Fatal(err)
	}
	resp, err := http.ReadResponse(bufio.NewReader(c), nil)
	if err != nil {
		t.Fatal(err)
	}
	resp.Body.Close()
	return resp.Status, resp.Header
}

func handshakeRequest(method, path string, extra ...string) string {
	h := method + " " + path + " HTTP/1.1\r\nHost: x\r\nConnection: Upgrade\r\nUpgrade: websocket\r\n"
	for _, e := range extra {
		h += e + "\r\n"
	}
	return h + "\r\n"
}

const goodKey = "Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ=="

// The opening handshake, done by Herald itself (accept.go): each refusal
// with the status RFC 6455 suggests, the accept key of the RFC's own
// example, the subprotocol selected, and permessage-deflate accepted only
// as Herald compresses.
func TestAcceptHandshake(t *testing.T) {
	t.Parallel()
	ts := newTestServer(t, Config{EnableCompression: true})
	v13 := "Sec-WebSocket-Version: 13"
	for _, tc := range []struct {
		name, req, status string
		check             func(http.Header) string
	}{
		{"ok, the RFC's example key", handshakeRequest("GET", "/ws", v13, goodKey, "Sec-WebSocket-Protocol: other, herald.v1"), "101 Switching Protocols",
			func(h http.Header) string {
				if h.Get("Sec-WebSocket-Accept") != "s3pPLMBiTxaQ9kYGzzhZRbK+xOo=" || h.Get("Sec-WebSocket-Protocol") != "herald.v1" || h.Get("Sec-WebSocket-Extensions") != "" {
					return "accept, protocol or extensions wrong"
				}
				return ""
			}},
		{"deflate offered", handshakeRequest("GET", "/ws", v13, goodKey, "Sec-WebSocket-Extensions: permessage-deflate; client_max_window_bits"), "101 Switching Protocols",
			func(h http.Header) string {
				if !strings.HasPrefix(h.Get("Sec-WebSocket-Extensions"), "permessage-deflate") {
					return "deflate not accepted"
				}
				return ""
			}},
		{"deflate with a small server window is declined", handshakeRequest("GET", "/ws", v13, goodKey, "Sec-WebSocket-Extensions: permessage-deflate; server_max_window_bits=10"), "101 Switching Protocols",
			func(h http.Header) string {
				if h.Get("Sec-WebSocket-Extensions") != "" {
					return "an offer Herald cannot honour was accepted"
				}
				return ""
			}},
		{"a full server window offered is echoed", handshakeRequest("GET", "/ws", v13, goodKey, "Sec-WebSocket-Extensions: permessage-deflate; server_max_window_bits=15"), "101 Switching Protocols",
			func(h http.Header) string {
				if !strings.HasSuffix(h.Get("Sec-WebSocket-Extensions"), "server_max_window_bits=15") {
					return "server_max_window_bits=15 not echoed"
				}
				return ""
			}},
		{"an invalid value declines the offer", handshakeRequest("GET", "/ws", v13, goodKey, "Sec-WebSocket-Extensions: permessage-deflate; client_max_window_bits=abc, permessage-deflate; client_no_context_takeover=1"), "101 Switching Protocols",
			func(h http.Header) string {
				if h.Get("Sec-WebSocket-Extensions") != "" {
					return "an invalid offer was accepted"
				}
				return ""
			}},
		{"raw endpoint selects no subprotocol", handshakeRequest("GET", "/ws/raw?channel=a", v13, goodKey, "Sec-WebSocket-Protocol: herald.v1"), "101 Switching Protocols",
			func(h http.Header) string {
				if h.Get("Sec-WebSocket-Protocol") != "" {
					return "raw mode selected a subprotocol"
				}
				return ""
			}},
		{"POST", handshakeRequest("POST", "/ws", v13, goodKey), "405 Method Not Allowed", nil},
		{"no upgrade", "GET /ws HTTP/1.1\r\nHost: x\r\n\r\n", "400 Bad Request", nil},
		{"version 8", handshakeRequest("GET", "/ws", "Sec-WebSocket-Version: 8", goodKey), "426 Upgrade Required",
			func(h http.Header) string {
				if h.Get("Sec-WebSocket-Version") != "13" {
					return "no Sec-WebSocket-Version: 13"
				}
				return ""
			}},
		{"bad key", handshakeRequest("GET", "/ws", v13, "Sec-WebSocket-Key: short"), "400 Bad Request", nil},
		{"foreign origin", handshakeRequest("GET", "/ws", v13, goodKey, "Origin: https://evil.example"), "403 Forbidden", nil},
	} {
		status, hdr := rawHandshake(t, ts, tc.req)
		if status != tc.status {
			t.Errorf("%s: %s, want %s", tc.name, status, tc.status)
			continue
		}
		if tc.check != nil {
			if msg := tc.check(hdr); msg != "" {
				t.Errorf("%s: %s: %v", tc.name, msg, hdr)
			}
		}
	}
}

// A client that sends a frame with its handshake, before the answer, is
// refused (RFC 6455 section 4.1): the bytes would otherwise be lost.
func TestAcceptEarlyData(t *testing.T) {
	t.Parallel()
	ts := newTestServer(t, Config{})
	status, _ := rawHandshake(t, ts, handshakeRequest("GET", "/ws", "Sec-WebSocket-Version: 13", goodKey)+"\x81\x80abcd")
	if status != "400 Bad Request" {
		t.Fatalf("got %s, want 400", status)
	}
}

// plainWriter hides the ResponseWriter's Hijack, as a logging middleware's
// wrapper without Unwrap does.
type plainWriter struct{ w http.ResponseWriter }

func (p plainWriter) Header() http.Header         { return p.w.Header() }
func (p plainWriter) Write(b []byte) (int, error) { return p.w.Write(b) }
func (p plainWriter) WriteHeader(s int)           { p.w.WriteHeader(s) }

// A handshake whose connection cannot be taken over is answered 500, not an
// empty 200, and counts no connection.
func TestAcceptCannotHijack(t *testing.T) {
	t.Parallel()
	n, err := New(Config{Logger: testLogger(t)})
	if err != nil {
		t.Fatal(err)
	}
	h := n.Handler()
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) { h.ServeHTTP(plainWriter{w}, r) }))
	defer srv.Close()
	ts := &testServer{t: t, node: n, srv: srv, url: "ws" + strings.TrimPrefix(srv.URL, "http")}
	if status, _ := rawHandshake(t, ts, handshakeRequest("GET", "/ws", "Sec-WebSocket-Version: 13", goodKey)); status != "500 Internal Server Error" {
		t.Fatalf("got %s, want 500", status)
	}
	n.mu.Lock()
	admitted := n.conns
	n.mu.Unlock()
	if admitted != 0 {
		t.Fatalf("%d connections still counted after the failed handshake", admitted)
	}
	_ = n.Shutdown(t.Context())
}
