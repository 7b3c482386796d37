package main

import (
	"io"
	"strings"
	"testing"
	"time"
)

const testHooksSecret = "hooks-secret-0123456789-abcdefghij-KLMN"

// Every hook setting from every source, and what it maps to.
func TestHookConfigSources(t *testing.T) {
	t.Parallel()
	file := writeFile(t, `hook_connect_url: https://app.example.com/connect
hook_subscribe_url: http://10.0.0.1:8000/subscribe
hook_subscribe_namespaces: ["", chat]
hook_forward_cookies: [session]
`)
	cfg, err := parseServeConfig(
		[]string{"--config", file, "--hook-connect-timeout", "2s", "--hook-publish-namespaces", `"",news`},
		[]string{"HERALD_HOOK_PUBLISH_URL=http://127.0.0.1:9/publish", "HERALD_HOOK_FORWARD_HEADERS=X-Forwarded-For,authorization",
			"HERALD_HOOKS_SECRET=" + testHooksSecret, "HERALD_HOOK_RPC_URL=https://app.example.com/rpc", "HERALD_HOOK_RPC_TIMEOUT=30s"},
		io.Discard)
	if err != nil {
		t.Fatal(err)
	}
	h := cfg.Hooks
	if h.ConnectURL != "https://app.example.com/connect" || h.ConnectTimeout != 2*time.Second || h.RPCTimeout != 30*time.Second ||
		strings.Join(h.SubscribeNamespaces, "|") != "|chat" || strings.Join(h.PublishNamespaces, "|") != "|news" ||
		strings.Join(h.ForwardHeaders, "|") != "X-Forwarded-For|authorization" || strings.Join(h.ForwardCookies, "|") != "session" ||
		string(h.Secret) != testHooksSecret {
		t.Fatalf("hooks %+v", h)
	}
	if got := settingByName("hook_subscribe_namespaces").get(&cfg); got != `"",chat` {
		t.Fatalf("get %q", got)
	}
	b, err := h.backend("", 0)
	if err != nil {
		t.Fatal(err)
	}
	defer b.Close()
	hooks := b.Hooks()
	if hooks.Connect == nil || hooks.Subscribe == nil || hooks.Publish == nil || hooks.RPC == nil || hooks.Refresh != nil ||
		hooks.Disconnected != nil || hooks.Timeout != 30*time.Second {
		t.Fatalf("hooks %+v", hooks)
	}
	// connect_timeout is allowed without a key when the connect hook is on:
	// it makes connect required.
	if _, err := parseServeConfig([]string{"--hook-connect-url", "http://a/c", "--connect-timeout", "3s"}, nil, io.Discard); err != nil {
		t.Fatal(err)
	}
}

func TestHookConfigErrors(t *testing.T) {
	t.Parallel()
	for _, c := range []struct {
		args []string
		env  []string
		want string
	}{
		{args: []string{"--hook-connect-url", "app.example.com/connect"},
			want: `invalid hook_connect_url "app.example.com/connect" (from flag --hook-connect-url): want an http:// or https:// URL, such as https://app.example.com/herald/connect; did you mean https://app.example.com/connect?`},
		{env: []string{"HERALD_HOOK_RPC_URL=ftp://a/b"}, want: `invalid hook_rpc_url "ftp://a/b" (from env HERALD_HOOK_RPC_URL)`},
		{args: []string{"--hook-publish-url", "https://user:pw@/x"}, want: `invalid hook_publish_url "https://user:xxxxx@/x"`},
		{args: []string{"--hook-connect-url", "http://a", "--hook-connect-timeout", "-1s"}, want: `invalid hook_connect_timeout "-1s" (from flag --hook-connect-timeout): must not be negative`},
		{args: []string{"--hook-rpc-timeout", "5s"}, want: "hook_rpc_timeout set, but hook_rpc_url is not: set it too, or remove hook_rpc_timeout"},
		{args: []string{"--hook-forward-cookies", "session"}, want: "hook_forward_cookies set, but hook_connect_url is not"},
		{args: []string{"--hook-forward-headers", "X-A"}, want: "hook_forward_headers set, but hook_connect_url is not"},
		{args: []string{"--hook-subscribe-namespaces", "chat"}, want: "hook_subscribe_namespaces set, but hook_subscribe_url is not"},
		{args: []string{"--hook-connect-url", "http://a", "--hook-forward-headers", "X-A,Cookie"}, want: `"Cookie": would send every cookie`},
		{args: []string{"--hook-connect-url", "http://a", "--hook-forward-cookies", "a b"}, want: `invalid hook_forward_cookies "a b"`},
		{args: []string{"--hook-publish-url", "http://a", "--hook-publish-namespaces", "chat:x"}, want: `"chat:x" is not a namespace name`},
		{args: []string{"--hook-publish-url", "http://a", "--hook-publish-namespaces", ","}, want: "want at least one namespace"},
		{env: []string{"HERALD_HOOKS_SECRET=" + testHooksSecret}, want: "hooks_secret set, but no hook is"},
		{env: []string{"HERALD_HOOKS_SECRET=short-secret", "HERALD_HOOK_RPC_URL=http://a"},
			want: `invalid hooks_secret "(redacted)" (from env HERALD_HOOKS_SECRET): too short (12 bytes): use at least 32`},
		{args: []string{"--hook-rpc-url", "http://a", "--hooks-secret-file", "/x"}, env: []string{"HERALD_HOOKS_SECRET=" + testHooksSecret},
			want: "hooks_secret and hooks_secret_file both set"},
	} {
		_, err := parseServeConfig(c.args, c.env, io.Discard)
		if err == nil || !strings.Contains(err.Error(), c.want) {
			t.Errorf("%v %v: error %v, want %q", c.args, c.env, err, c.want)
		}
		if err != nil && (strings.Contains(err.Error(), "short-secret") || strings.Contains(err.Error(), ":pw@")) {
			t.Errorf("error shows a secret: %v", err)
		}
	}
}
