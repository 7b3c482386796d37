package web

import (
	"bytes"
	"io"
	"io/fs"
	"net/http"
	"net/http/httptest"
	"os"
	"path/filepath"
	"regexp"
	"strings"
	"testing"
)

func get(t *testing.T, path string) (*http.Response, string) {
	t.Helper()
	rec := httptest.NewRecorder()
	Handler().ServeHTTP(rec, httptest.NewRequest(http.MethodGet, path, nil))
	resp := rec.Result()
	body, _ := io.ReadAll(resp.Body)
	return resp, string(body)
}

func TestHandlerServesThePage(t *testing.T) {
	for path, ctype := range map[string]string{
		"/":                 "text/html",
		"/app.js":           "text/javascript",
		"/herald-client.js": "text/javascript",
		"/style.css":        "text/css",
	} {
		resp, body := get(t, path)
		if resp.StatusCode != http.StatusOK || !strings.HasPrefix(resp.Header.Get("Content-Type"), ctype) || body == "" {
			t.Errorf("%s: %d %q, %d bytes", path, resp.StatusCode, resp.Header.Get("Content-Type"), len(body))
		}
		if resp.Header.Get("Content-Security-Policy") != contentSecurityPolicy {
			t.Errorf("%s: no Content-Security-Policy", path)
		}
	}
	_, page := get(t, "/")
	// The browser test and anyone scripting the page rely on these ids.
	for _, id := range []string{"name", "channel", "join", "text", "send", "messages", "status"} {
		if !strings.Contains(page, `id="`+id+`"`) {
			t.Errorf("index.html has no #%s", id)
		}
	}
	if resp, _ := get(t, "/missing.js"); resp.StatusCode != http.StatusNotFound {
		t.Errorf("/missing.js: %d", resp.StatusCode)
	}
}

// TestNoRemoteOrUnsafeContent guards two promises of the demo: it loads
// nothing from another site (no CDN), and it never turns user data into
// HTML.
func TestNoRemoteOrUnsafeContent(t *testing.T) {
	remote := regexp.MustCompile(`(?i)(src|href)\s*=\s*["']?(https?:)?//`)
	unsafe := regexp.MustCompile(`innerHTML|outerHTML|insertAdjacentHTML|document\.write|eval\(|new Function`)
	err := fs.WalkDir(FS, ".", func(path string, d fs.DirEntry, err error) error {
		if err != nil || d.IsDir() {
			return err
		}
		b, err := fs.ReadFile(FS, path)
		if err != nil {
			return err
		}
		if m := remote.Find(b); m != nil {
			t.Errorf("%s loads from another site: %s", path, m)
		}
		if strings.HasSuffix(path, ".js") {
			if m := unsafe.Find(b); m != nil {
				t.Errorf("%s uses %s", path, m)
			}
		}
		return nil
	})
	if err != nil {
		t.Fatal(err)
	}
}

// TestVendoredClientIsUnchanged keeps the page on the project's real client:
// static/herald-client.js must be a byte-for-byte copy of clients/js/index.js
// (the herald-client package), never a fork of it.
func TestVendoredClientIsUnchanged(t *testing.T) {
	const fix = "re-copy it, from the repository root: cp clients/js/index.js web/static/herald-client.js"
	want, err := os.ReadFile(filepath.Join("..", "clients", "js", "index.js"))
	if err != nil {
		t.Fatalf("reading the client's source: %v", err)
	}
	got, err := fs.ReadFile(FS, "herald-client.js")
	if err != nil {
		t.Fatalf("the page's copy of herald-client is missing (%v); %s", err, fix)
	}
	if !bytes.Equal(got, want) {
		n := 0
		for n < len(got) && n < len(want) && got[n] == want[n] {
			n++
		}
		line := 1 + bytes.Count(want[:n], []byte("\n"))
		t.Fatalf("web/static/herald-client.js (%d bytes) differs from clients/js/index.js (%d bytes) from line %d on; %s",
			len(got), len(want), line, fix)
	}
	// The page must load the copy, not some other client.
	app, err := fs.ReadFile(FS, "app.js")
	if err != nil {
		t.Fatal(err)
	}
	if !bytes.Contains(app, []byte(`from './herald-client.js'`)) {
		t.Error("app.js does not import ./herald-client.js")
	}
}
