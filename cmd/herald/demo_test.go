package main

import (
	"bufio"
	"encoding/json"
	"net"
	"net/http"
	"strings"
	"testing"

	"github.com/heraldhq/herald"
)

func TestDemoURL(t *testing.T) {
	t.Parallel()
	for _, tc := range []struct {
		addr string
		tls  bool
		want string
	}{
		{"127.0.0.1:8080", false, "http://127.0.0.1:8080/"},
		{"0.0.0.0:8080", false, "http://localhost:8080/"},
		{"[::]:8080", false, "http://localhost:8080/"},
		{"[::1]:9000", true, "https://[::1]:9000/"},
		{"192.0.2.7:443", true, "https://192.0.2.7:443/"},
	} {
		addr, err := net.ResolveTCPAddr("tcp", tc.addr)
		if err != nil {
			t.Fatal(err)
		}
		if got := demoURL(addr, tc.tls); got != tc.want {
			t.Errorf("demoURL(%s, tls %v) = %q, want %q", tc.addr, tc.tls, got, tc.want)
		}
	}
}

// TestServeLogsDemoURL: at start, serve logs the URL to open, and that URL
// serves the demo chat page.
func TestServeLogsDemoURL(t *testing.T) {
	t.Parallel()
	s := startServer(t, nil)
	var u string
	waitFor(t, `the "open the demo chat" log line`, func() bool {
		sc := bufio.NewScanner(strings.NewReader(s.logs.String()))
		for sc.Scan() {
			var line struct{ Msg, URL string }
			if json.Unmarshal(sc.Bytes(), &line) == nil && line.Msg == "open the demo chat" {
				u = line.URL
				return true
			}
		}
		return false
	})
	if want := "http://" + s.addr + "/"; u != want {
		t.Fatalf("logged url %q, want %q", u, want)
	}
	resp, body := httpDo(t, http.MethodGet, u, nil, "")
	if resp.StatusCode != http.StatusOK || !strings.Contains(body, "<title>Herald chat</title>") {
		t.Fatalf("GET %s: %d, want the demo page", u, resp.StatusCode)
	}
}

// TestDefaultNamespaces: with no namespaces configured, the demo's chat
// channels keep history and presence (what the page shows on joining),
// and every other channel is accepted, without either.
func TestDefaultNamespaces(t *testing.T) {
	t.Parallel()
	node, err := herald.New(herald.Config{Namespaces: defaultConfig().Namespaces})
	if err != nil {
		t.Fatal(err)
	}
	ctx := t.Context()
	defer node.Shutdown(ctx)
	res, err := node.Publish(ctx, "chat:lobby", []byte(`{"name":"a","text":"kept"}`))
	if err != nil || res.Offset != 1 {
		t.Fatalf("publish to chat:lobby: %+v %v, want offset 1 (history)", res, err)
	}
	if _, err := node.Presence(ctx, "chat:lobby"); err != nil {
		t.Fatalf("presence of chat:lobby: %v", err)
	}
	for _, ch := range []string{"news:sport", "lobby", "orders"} {
		res, err := node.Publish(ctx, ch, []byte(`1`))
		if err != nil || res.Offset != 0 {
			t.Fatalf("publish to %s: %+v %v, want accepted, no history", ch, res, err)
		}
		if _, err := node.Presence(ctx, ch); err == nil {
			t.Fatalf("presence of %s: no error, want not enabled", ch)
		}
	}
}
