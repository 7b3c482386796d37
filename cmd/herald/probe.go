package main

import (
	"context"
	"errors"
	"fmt"
	"io"
	"net/http"
	"net/url"
	"strings"
	"time"
)

const probeUsage = `Usage: herald probe [--timeout DURATION] [URL]

Asks a Herald server whether it is ready (GET URL, by default
http://127.0.0.1:8080/readyz) and exits 0 on 200 OK, non-zero otherwise,
printing the server's answer. It is the container image's health check:
the image has no shell, curl or wget, only the herald binary.

Use /readyz for "should this node get new clients" (it fails while the node
drains or cannot reach its broker) and /healthz for "is the process alive".

Flags:
  --timeout DURATION   bound on the whole request (default 3s)
`

const defaultProbeURL = "http://127.0.0.1:8080/readyz"

// probe runs `herald probe`: one GET, bounded by --timeout, that succeeds
// on 200 only. Redirects are not followed: a probe answered elsewhere is
// asking the wrong server.
func probe(ctx context.Context, args []string, stdout io.Writer) error {
	var timeout time.Duration
	fs := newFlagSet("probe", nil)
	fs.DurationVar(&timeout, "timeout", 3*time.Second, "")
	if err := parseFlags(fs, args, stdout, probeUsage); err != nil {
		return err
	}
	if fs.NArg() > 1 {
		return fmt.Errorf("herald probe takes one URL, got %d arguments (see herald help probe)", fs.NArg())
	}
	if timeout <= 0 {
		return fmt.Errorf("herald probe: --timeout must be positive, got %s", timeout)
	}
	target := defaultProbeURL
	if fs.NArg() == 1 {
		target = fs.Arg(0)
	}
	u, err := url.Parse(target)
	if err != nil || (u.Scheme != "http" && u.Scheme != "https") || u.Host == "" {
		return fmt.Errorf("herald probe: %q is not an http:// or https:// URL", target)
	}
	ctx, cancel := context.WithTimeout(ctx, timeout)
	defer cancel()
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, target, nil)
	if err != nil {
		return fmt.Errorf("herald probe: failed to make the request: %w", err)
	}
	client := &http.Client{
		// One request per process: nothing to keep alive.
		Transport:     &http.Transport{DisableKeepAlives: true},
		CheckRedirect: func(*http.Request, []*http.Request) error { return http.ErrUseLastResponse },
	}
	resp, err := client.Do(req)
	if err != nil {
		return fmt.Errorf("herald probe: failed to reach %s: %w", target, err)
	}
	defer resp.Body.Close()
	// The answer is a short line ("ok", "not ready: draining: ..."); read
	// a bounded amount, in case the URL names something else.
	body, err := io.ReadAll(io.LimitReader(resp.Body, 1024))
	if err != nil && !errors.Is(err, context.DeadlineExceeded) {
		return fmt.Errorf("herald probe: failed to read the answer of %s: %w", target, err)
	}
	answer := strings.TrimSpace(string(body))
	if resp.StatusCode != http.StatusOK {
		return fmt.Errorf("herald probe: %s answered %s: %s", target, resp.Status, answer)
	}
	_, err = fmt.Fprintln(stdout, answer)
	return err
}
