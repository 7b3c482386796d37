package main

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"net"
	"os"
	"path/filepath"
	"regexp"
	"strings"
	"testing"

	"github.com/gorilla/websocket"
)

// TestPub runs `herald pub` against a real `herald serve` running
// in-process: JSON and binary payloads reach a WebSocket subscriber, the
// offset and epoch are printed, idempotency keys work, and every kind of
// failure is an error that says what the API said.
func TestPub(t *testing.T) {
	t.Parallel()
	cfgFile := writeFile(t, "namespaces:\n  - name: \"\"\n  - name: chat\n    history_size: 10\n    history_ttl: 1m\n")
	s := startServer(t, []string{"HERALD_API_KEY=" + testAPIKey}, "--config", cfgFile)
	env := []string{"HERALD_URL=http://" + s.addr, "HERALD_API_KEY=" + testAPIKey}
	sub := mustDialWS(t, "ws://"+s.addr+"/ws", nil)
	call(t, sub, `{"id":1,"cmd":"subscribe","channel":"chat:room"}`)
	call(t, sub, `{"id":2,"cmd":"subscribe","channel":"news"}`)

	pub := func(t *testing.T, env []string, args ...string) (string, error) {
		t.Helper()
		var out bytes.Buffer
		err := run(context.Background(), append([]string{"pub"}, args...), env, &out)
		return out.String(), err
	}

	t.Run("json to a channel with history", func(t *testing.T) {
		out, err := pub(t, env, "--channel", "chat:room", `{"text":"hi"}`)
		if err != nil {
			t.Fatal(err)
		}
		if !regexp.MustCompile(`^published to chat:room: offset 1, epoch \S+\n$`).MatchString(out) {
			t.Fatalf("printed %q", out)
		}
		if _, b := readMessage(t, sub); string(b) != `{"push":"pub","channel":"chat:room","offset":1,"data":{"text":"hi"}}` {
			t.Fatalf("subscriber got %s", b)
		}
	})
	t.Run("json to a channel without history", func(t *testing.T) {
		out, err := pub(t, env, "--channel", "news", `"plain text"`)
		if err != nil || out != "published to news (the channel keeps no history: no offset)\n" {
			t.Fatalf("printed %q, %v", out, err)
		}
		if _, b := readMessage(t, sub); string(b) != `{"push":"pub","channel":"news","data":"plain text"}` {
			t.Fatalf("subscriber got %s", b)
		}
	})
	t.Run("binary from a file", func(t *testing.T) {
		path := filepath.Join(t.TempDir(), "blob")
		payload := []byte{0, 1, 2, 0xff, '\n', 'x'}
		if err := os.WriteFile(path, payload, 0o600); err != nil {
			t.Fatal(err)
		}
		if _, err := pub(t, env, "--channel", "news", "--binary", "@"+path); err != nil {
			t.Fatal(err)
		}
		op, b := readMessage(t, sub)
		want := append([]byte(`{"push":"pub","channel":"news"}`+"\n"), payload...)
		if op != websocket.BinaryMessage || !bytes.Equal(b, want) {
			t.Fatalf("subscriber got opcode %d %q", op, b)
		}
	})
	t.Run("binary from stdin", func(t *testing.T) {
		var out bytes.Buffer
		if err := publish(context.Background(), []string{"--channel", "news", "--binary", "-"}, env, strings.NewReader("from stdin"), &out); err != nil {
			t.Fatal(err)
		}
		if op, b := readMessage(t, sub); op != websocket.BinaryMessage || string(b) != `{"push":"pub","channel":"news"}`+"\nfrom stdin" {
			t.Fatalf("subscriber got opcode %d %q", op, b)
		}
	})
	t.Run("idempotency key", func(t *testing.T) {
		first, err := pub(t, env, "--channel", "chat:room", "--idempotency-key", "k1", `2`)
		if err != nil {
			t.Fatal(err)
		}
		readMessage(t, sub)
		again, err := pub(t, env, "--channel", "chat:room", "--idempotency-key", "k1", `2`)
		if err != nil {
			t.Fatal(err)
		}
		offset := regexp.MustCompile(`offset \d+, epoch \S+`)
		if !strings.HasPrefix(again, "duplicate: ") || offset.FindString(again) != offset.FindString(first) {
			t.Fatalf("first %q, then %q", first, again)
		}
	})
	t.Run("flags over env, and --json", func(t *testing.T) {
		out, err := pub(t, []string{"HERALD_URL=http://127.0.0.1:1", "HERALD_API_KEY=wrong"},
			"--url", "http://"+s.addr+"/", "--api-key", testAPIKey, "--json", "--channel", "chat:room", `3`)
		if err != nil {
			t.Fatal(err)
		}
		var res struct{ Offset uint64 }
		if err := json.Unmarshal([]byte(out), &res); err != nil || res.Offset == 0 {
			t.Fatalf("--json printed %q", out)
		}
		readMessage(t, sub)
	})

	for _, c := range []struct {
		name   string
		env    []string
		args   []string
		status int      // of the *PubError, 0 for a local error
		want   []string // in the error
	}{
		{"wrong key", []string{"HERALD_URL=http://" + s.addr, "HERALD_API_KEY=wrong-key-0123456789"}, []string{"--channel", "news", "1"},
			401, []string{"HTTP 401 Unauthorized: unauthorized: missing or wrong API key", "HERALD_API_KEY"}},
		{"bad channel", env, []string{"--channel", "bad channel!", "1"},
			400, []string{"HTTP 400 Bad Request: bad_channel: ", "(field channel)"}},
		{"namespace not configured", env, []string{"--channel", "nope:x", "1"},
			400, []string{"bad_channel", "(field channel)"}},
		{"no key", []string{"HERALD_URL=http://" + s.addr}, []string{"--channel", "news", "1"},
			0, []string{"needs the server's API key"}},
		{"no channel", env, []string{"1"}, 0, []string{"needs --channel"}},
		{"not json", env, []string{"--channel", "news", "hello"}, 0, []string{"is not JSON", `'"hello"'`}},
		{"no payload", env, []string{"--channel", "news"}, 0, []string{"needs a payload"}},
		{"both payloads", env, []string{"--channel", "news", "--binary", "-", "1"}, 0, []string{"not both"}},
		{"bad binary", env, []string{"--channel", "news", "--binary", "file"}, 0, []string{"@FILE"}},
		{"bad url", []string{"HERALD_URL=ftp://x", "HERALD_API_KEY=k"}, []string{"--channel", "news", "1"}, 0, []string{"invalid server URL"}},
	} {
		t.Run(c.name, func(t *testing.T) {
			_, err := pub(t, c.env, c.args...)
			if err == nil {
				t.Fatal("want an error")
			}
			var pe *PubError
			if errors.As(err, &pe) != (c.status != 0) || (pe != nil && pe.Status != c.status) {
				t.Fatalf("got %v (%T), want HTTP status %d", err, err, c.status)
			}
			for _, w := range c.want {
				if !strings.Contains(err.Error(), w) {
					t.Errorf("error %q does not say %q", err, w)
				}
			}
		})
	}

	t.Run("API off", func(t *testing.T) {
		off := startServer(t, nil)
		_, err := pub(t, []string{"HERALD_URL=http://" + off.addr, "HERALD_API_KEY=" + testAPIKey}, "--channel", "news", "1")
		var pe *PubError
		if !errors.As(err, &pe) || pe.Status != 404 || !strings.Contains(err.Error(), "is the HTTP API on?") {
			t.Fatalf("got %v", err)
		}
	})
	t.Run("server down", func(t *testing.T) {
		ln, err := net.Listen("tcp", "127.0.0.1:0")
		if err != nil {
			t.Fatal(err)
		}
		addr := ln.Addr().String()
		ln.Close()
		_, err = pub(t, []string{"HERALD_URL=http://" + addr, "HERALD_API_KEY=" + testAPIKey}, "--channel", "news", "1")
		if err == nil || !strings.Contains(err.Error(), "failed to reach the server") {
			t.Fatalf("got %v", err)
		}
	})
	t.Run("help", func(t *testing.T) {
		out, err := pub(t, nil, "--help")
		if err != nil || !strings.Contains(out, "Usage: herald pub") {
			t.Fatalf("%q, %v", out, err)
		}
	})
}
