package pusherapi_test

import (
	"bufio"
	"context"
	"io"
	"net/url"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/heraldhq/herald"
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
