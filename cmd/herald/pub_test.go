package main

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"io"
	"net"
	"net/http"
	"net/http/httptest"
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
		{"bad url", []string{"HERALD_URL=ftp://x", "HERALD_API_KEY=k"}, []string{"--channel", "news", "1"}, 0, []string{`invalid HERALD_URL "ftp://x"`}},
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

// TestPubInputErrors: a bad --url, HERALD_URL, --timeout or --json is
// reported with what was given (a password hidden) and what is wanted,
// before anything is sent.
func TestPubInputErrors(t *testing.T) {
	t.Parallel()
	key := "HERALD_API_KEY=" + testAPIKey
	for _, c := range []struct {
		name string
		env  []string
		args []string
		want string
	}{
		{"url without scheme", []string{key}, []string{"--url", "127.0.0.1:8080"},
			`invalid --url "127.0.0.1:8080": want an http:// or https:// URL, such as http://127.0.0.1:8080; did you mean http://127.0.0.1:8080?`},
		{"url with another scheme", []string{key, "HERALD_URL=ftp://x"}, nil,
			`invalid HERALD_URL "ftp://x": want an http:// or https:// URL, such as http://127.0.0.1:8080`},
		{"unparseable url with a password", []string{key}, []string{"--url", "http://admin:hunter2@host:port"},
			`invalid --url "http://admin:xxxxx@host:port": want an http:// or https:// URL, such as http://127.0.0.1:8080`},
		{"url without host", []string{key}, []string{"--url", "http://"},
			`invalid --url "http://": want an http:// or https:// URL, such as http://127.0.0.1:8080`},
		{"bad timeout", []string{key}, []string{"--timeout", "soon"},
			`failed to parse pub arguments: invalid value "soon" for flag -timeout: want a duration such as 500ms, 10s or 1m (see herald help pub)`},
		{"zero timeout", []string{key}, []string{"--timeout", "0s"},
			`invalid --timeout 0s: must be positive, such as 10s`},
		{"empty key file", nil, []string{"--api-key-file", os.DevNull},
			`invalid --api-key-file /dev/null: the file is empty: write the server's API key (its api_key) in it`},
		{"missing key file", []string{"HERALD_API_KEY_FILE=/nonexistent/key"}, nil,
			`invalid HERALD_API_KEY_FILE /nonexistent/key: open /nonexistent/key: no such file or directory`},
		{"bad json flag", []string{key}, []string{"--json=maybe"},
			`failed to parse pub arguments: invalid boolean value "maybe" for -json: want true or false (see herald help pub)`},
	} {
		t.Run(c.name, func(t *testing.T) {
			args := append(append([]string{"pub", "--channel", "news"}, c.args...), "1")
			err := run(context.Background(), args, c.env, io.Discard)
			if err == nil || err.Error() != c.want {
				t.Fatalf("error\n %v\nwant\n %s", err, c.want)
			}
		})
	}
}

// TestPubUnexpectedAnswer: a 2xx answer that is not the publish API's
// (another server on the port) says so in words, not with a Go type.
func TestPubUnexpectedAnswer(t *testing.T) {
	t.Parallel()
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		_, _ = io.WriteString(w, `{"offset":"seven"}`)
	}))
	defer srv.Close()
	defer srv.CloseClientConnections()
	err := run(context.Background(), []string{"pub", "--url", srv.URL, "--channel", "news", "1"}, []string{"HERALD_API_KEY=" + testAPIKey}, io.Discard)
	want := `the server's answer "{\"offset\":\"seven\"}" is not the publish API's ({"offset":N,"epoch":"E"} or {}): is --url a Herald server?`
	if err == nil || err.Error() != want {
		t.Fatalf("error\n %v\nwant\n %s", err, want)
	}
}

// TestRedactURL: a password in a URL is replaced by xxxxx, whether or not
// the URL parses; nothing else is changed, so an error still shows what
// was given.
func TestRedactURL(t *testing.T) {
	t.Parallel()
	for in, want := range map[string]string{
		"redis://user:hunter2@host:6379/0": "redis://user:xxxxx@host:6379/0",
		"redis://:hunter2@host:6379":       "redis://:xxxxx@host:6379",
		"redis://user@host:6379":           "redis://user@host:6379",
		"redis://user:hunter2@host:port/0": "redis://user:xxxxx@host:port/0",
		"user:hunter2@host:1":              "user:xxxxx@host:1",
		"http://u:p@ss:w@host:1/x":         "http://u:xxxxx@host:1/x",
		"127.0.0.1:8080":                   "127.0.0.1:8080",
		"http://127.0.0.1:8080/api":        "http://127.0.0.1:8080/api",
		"nats://a b":                       "nats://a b",
	} {
		if got := redactURL(in); got != want {
			t.Errorf("redactURL(%q) = %q, want %q", in, got, want)
		}
	}
}
