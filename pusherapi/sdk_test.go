package pusherapi_test

import (
	"bufio"
	"context"
	"encoding/json"
	"io"
	"net/url"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/heraldhq/herald"
	"github.com/heraldhq/herald/pusherapi"
)

// compatDir is the folder of the npm tests (package.json pins pusher and
// pusher-js; .ci/run runs npm ci there).
const compatDir = "../compat/pusher"

// nodeScript returns a command running script of compatDir with env, or
// skips the test when node or the npm packages are missing (a failure
// under CI, which installs them).
func nodeScript(t *testing.T, ctx context.Context, script string, env ...string) *exec.Cmd {
	t.Helper()
	node, err := exec.LookPath("node")
	missing := ""
	switch {
	case err != nil:
		missing = "node is not installed"
	case !exists(filepath.Join(compatDir, "node_modules", "pusher")) || !exists(filepath.Join(compatDir, "node_modules", "pusher-js")):
		missing = "the npm packages are not installed: run npm ci in compat/pusher"
	}
	if missing != "" {
		if os.Getenv("CI") != "" {
			t.Fatal(missing)
		}
		t.Skip(missing)
	}
	cmd := exec.CommandContext(ctx, node, script)
	cmd.Dir = compatDir
	cmd.Env = append(os.Environ(), env...)
	cmd.WaitDelay = 5 * time.Second
	return cmd
}

func exists(path string) bool {
	_, err := os.Stat(path)
	return err == nil
}

// The real pusher server SDK against Herald's API, with pusher-js clients
// receiving: trigger with and without socket exclusion, several channels
// with info, batch, channel queries, presence users, sendToUser,
// terminateUserConnections, and refusals (wrong secret, old timestamp,
// data too large). The script's steps are in compat/pusher/sdk_api.mjs.
func TestPusherServerSDK(t *testing.T) {
	t.Parallel()
	s := newServer(t, herald.Config{})
	u, _ := url.Parse(s.srv.URL)
	ctx, cancel := context.WithTimeout(context.Background(), 90*time.Second)
	defer cancel()
	cmd := nodeScript(t, ctx, "sdk_api.mjs",
		"HERALD_HOST="+u.Hostname(), "HERALD_PORT="+u.Port(),
		"APP_ID="+appA.ID, "APP_KEY="+appA.Key, "APP_SECRET="+appA.Secret)
	runLogged(t, cmd)
}

// runLogged runs cmd, logging each line of its output, and fails the test
// if it fails.
func runLogged(t *testing.T, cmd *exec.Cmd) {
	t.Helper()
	pr, pw := io.Pipe()
	cmd.Stdout, cmd.Stderr = pw, pw
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	done := make(chan struct{})
	var out strings.Builder
	go func() {
		defer close(done)
		sc := bufio.NewScanner(pr)
		for sc.Scan() {
			out.WriteString(sc.Text() + "\n")
		}
	}()
	err := cmd.Wait()
	pw.Close()
	<-done
	t.Logf("%s output:\n%s", filepath.Base(cmd.Args[len(cmd.Args)-1]), out.String())
	if err != nil {
		t.Fatalf("%s failed: %v", cmd.Args[len(cmd.Args)-1], err)
	}
}

// Webhooks in Pusher's format, each call verified by the real SDK's
// webhook(request).isValid() in compat/pusher/sdk_webhook.mjs, with
// pusher-js making each event happen: channel_occupied, member_added,
// client_event, cache_miss, member_removed, channel_vacated; and a forged
// call refused.
func TestPusherWebhooksVerifiedBySDK(t *testing.T) {
	t.Parallel()
	ctx, cancel := context.WithTimeout(context.Background(), 90*time.Second)
	defer cancel()
	cmd := nodeScript(t, ctx, "sdk_webhook.mjs")
	stdin, err := cmd.StdinPipe()
	if err != nil {
		t.Fatal(err)
	}
	pr, pw := io.Pipe()
	cmd.Stdout, cmd.Stderr = pw, pw
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	lines := make(chan string, 100)
	go func() {
		defer close(lines)
		sc := bufio.NewScanner(pr)
		for sc.Scan() {
			lines <- sc.Text()
		}
	}()
	var out strings.Builder
	port := ""
	for port == "" {
		select {
		case l, ok := <-lines:
			if !ok {
				t.Fatalf("the script ended before listening:\n%s", out.String())
			}
			out.WriteString(l + "\n")
			port, _ = strings.CutPrefix(l, "PORT ")
		case <-ctx.Done():
			t.Fatal("the script did not listen")
		}
	}

	hooks, err := pusherapi.NewWebhooks(pusherapi.WebhookConfig{
		Apps:  []herald.PusherApp{appA, appB},
		Hooks: map[string][]pusherapi.Webhook{appA.ID: {{URL: "http://127.0.0.1:" + port + "/pusher"}}},
	})
	if err != nil {
		t.Fatal(err)
	}
	s := newServer(t, herald.Config{Webhooks: herald.Webhooks{Deliver: hooks.Deliver, Grace: 100 * time.Millisecond}})
	u, _ := url.Parse(s.srv.URL)
	b, _ := json.Marshal(map[string]string{"host": u.Hostname(), "port": u.Port(), "appId": appA.ID, "key": appA.Key, "secret": appA.Secret})
	if _, err := stdin.Write(append(b, '\n')); err != nil {
		t.Fatal(err)
	}
	waited := make(chan error, 1)
	go func() {
		err := cmd.Wait() // the process ended and its output is copied
		pw.Close()
		waited <- err
	}()
	for l := range lines {
		out.WriteString(l + "\n")
	}
	err = <-waited
	t.Logf("sdk_webhook.mjs output:\n%s", out.String())
	if err != nil {
		t.Fatalf("sdk_webhook.mjs failed: %v", err)
	}
}
