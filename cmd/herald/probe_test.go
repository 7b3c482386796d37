package main

import (
	"bytes"
	"context"
	"net"
	"strings"
	"testing"
)

// TestProbe: `herald probe` (the container image's health check) succeeds
// on a ready server, fails with the server's reason once it drains, and
// fails plainly on a closed port or a bad URL.
func TestProbe(t *testing.T) {
	t.Parallel()
	s := startServer(t, nil, "--drain-window", "3s")
	mustDialWS(t, "ws://"+s.addr+"/ws", nil) // something to drain, so the drain lasts

	probeRun := func(args ...string) (string, error) {
		var out bytes.Buffer
		err := run(context.Background(), append([]string{"probe"}, args...), nil, &out)
		return out.String(), err
	}
	if out, err := probeRun("http://" + s.addr + "/readyz"); err != nil || out != "ok\n" {
		t.Fatalf("probe of a ready server: %q, %v", out, err)
	}

	s.cancel() // SIGTERM: the drain starts and /readyz fails at once
	waitFor(t, "the probe to fail while draining", func() bool {
		_, err := probeRun("--timeout", "1s", "http://"+s.addr+"/readyz")
		if err != nil && !strings.Contains(err.Error(), "503") {
			t.Fatalf("probe while draining: %v, want a 503", err)
		}
		return err != nil
	})
	_, err := probeRun("http://" + s.addr + "/readyz")
	if err == nil || !strings.Contains(err.Error(), "draining") {
		t.Fatalf("probe while draining: %v, want the server's reason (draining)", err)
	}
	if out, err := probeRun("http://" + s.addr + "/healthz"); err != nil || out != "ok\n" {
		t.Fatalf("probe of /healthz while draining: %q, %v; want ok (alive)", out, err)
	}
	if err := s.stop(t); err != nil {
		t.Fatal(err)
	}

	// A port where nothing listens: the listener is closed before the probe.
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	closed := ln.Addr().String()
	ln.Close()
	if _, err := probeRun("http://" + closed + "/readyz"); err == nil || !strings.Contains(err.Error(), "failed to reach") {
		t.Fatalf("probe of a closed port: %v, want failed to reach", err)
	}
	for _, bad := range [][]string{{"ftp://x/readyz"}, {"not a url"}, {"http://a/", "http://b/"}, {"--timeout", "0s"}} {
		if _, err := probeRun(bad...); err == nil {
			t.Errorf("probe %q: no error", bad)
		}
	}
}
