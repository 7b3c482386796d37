package web

import (
	"bytes"
	"crypto/sha256"
	"encoding/hex"
	"io"
	"io/fs"
	"net/http"
	"net/http/httptest"
	"os"
	"path/filepath"
	"regexp"
	"strings"
	"testing"

	jsclient "github.com/heraldhq/herald/clients/js"
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
	// The client the page loads is served from clients/js: the same rules.
	if m := remote.Find(jsclient.Source()); m != nil {
		t.Errorf("herald-client.js loads from another site: %s", m)
	}
	if m := unsafe.Find(jsclient.Source()); m != nil {
		t.Errorf("herald-client.js uses %s", m)
	}
}

// TestPagesServeTheClient keeps both pages on the project's real client:
// the demo's /herald-client.js and the dashboard's /vendor/herald-client.js
// are clients/js/index.js itself (package jsclient), with each page's
// headers, and the pages' scripts import them.
func TestPagesServeTheClient(t *testing.T) {
	want, err := os.ReadFile(filepath.Join("..", "clients", "js", "index.js"))
	if err != nil {
		t.Fatalf("reading the client's source: %v", err)
	}
	for _, c := range []struct {
		name, path, csp string
		h               http.Handler
	}{
		{"demo", "/herald-client.js", contentSecurityPolicy, Handler()},
		{"dashboard", "/vendor/herald-client.js", adminContentSecurityPolicy, AdminHandler()},
	} {
		rec := httptest.NewRecorder()
		c.h.ServeHTTP(rec, httptest.NewRequest(http.MethodGet, c.path, nil))
		resp := rec.Result()
		got, _ := io.ReadAll(resp.Body)
		if resp.StatusCode != http.StatusOK || !strings.HasPrefix(resp.Header.Get("Content-Type"), "text/javascript") ||
			!bytes.Equal(got, want) {
			t.Errorf("%s %s: %d %q, %d bytes; want clients/js/index.js (%d bytes)", c.name, c.path, resp.StatusCode,
				resp.Header.Get("Content-Type"), len(got), len(want))
		}
		if resp.Header.Get("Content-Security-Policy") != c.csp || resp.Header.Get("Cache-Control") != "no-cache" {
			t.Errorf("%s %s: headers %v", c.name, c.path, resp.Header)
		}
	}
	// The pages must load that client, not some other one.
	for f, imp := range map[fs.FS][2]string{FS: {"app.js", `from './herald-client.js'`}, AdminFS: {"admin.js", `from './vendor/herald-client.js'`}} {
		b, err := fs.ReadFile(f, imp[0])
		if err != nil {
			t.Fatal(err)
		}
		if !bytes.Contains(b, []byte(imp[1])) {
			t.Errorf("%s does not import %s", imp[0], imp[1])
		}
	}
	// No copy of it is left to drift.
	for f, path := range map[fs.FS]string{FS: "herald-client.js", AdminFS: "vendor/herald-client.js"} {
		if _, err := fs.Stat(f, path); err == nil {
			t.Errorf("%s is a copy of the client in web/: delete it, the client is served from clients/js", path)
		}
	}
}

// TestAdminVendor checks the vendored uPlot files against the digests that
// vendor/README.md records with their version, and that its license ships.
func TestAdminVendor(t *testing.T) {
	readme, err := fs.ReadFile(AdminFS, "vendor/README.md")
	if err != nil {
		t.Fatal(err)
	}
	for _, name := range []string{"uPlot.iife.min.js", "uPlot.min.css"} {
		b, err := fs.ReadFile(AdminFS, "vendor/"+name)
		if err != nil {
			t.Fatal(err)
		}
		sum := sha256.Sum256(b)
		if line := hex.EncodeToString(sum[:]) + "  " + name; !strings.Contains(string(readme), line) {
			t.Errorf("vendor/README.md does not record %q", line)
		}
	}
	if lic, err := fs.ReadFile(AdminFS, "vendor/uPlot.LICENSE"); err != nil || !strings.Contains(string(lic), "MIT License") {
		t.Errorf("uPlot's license: %v", err)
	}
}

func TestAdminHandler(t *testing.T) {
	for path, ctype := range map[string]string{
		"/":                         "text/html",
		"/login.html":               "text/html",
		"/admin.js":                 "text/javascript",
		"/login.js":                 "text/javascript",
		"/admin.css":                "text/css",
		"/vendor/uPlot.iife.min.js": "text/javascript",
		"/vendor/herald-client.js":  "text/javascript",
	} {
		rec := httptest.NewRecorder()
		AdminHandler().ServeHTTP(rec, httptest.NewRequest(http.MethodGet, path, nil))
		resp := rec.Result()
		if resp.StatusCode != http.StatusOK || !strings.HasPrefix(resp.Header.Get("Content-Type"), ctype) {
			t.Errorf("%s: %d %q", path, resp.StatusCode, resp.Header.Get("Content-Type"))
		}
		if resp.Header.Get("Content-Security-Policy") != adminContentSecurityPolicy || resp.Header.Get("X-Frame-Options") != "DENY" {
			t.Errorf("%s: headers %v", path, resp.Header)
		}
	}
	page, _ := fs.ReadFile(AdminFS, "index.html")
	// The browser test relies on these ids.
	for _, id := range []string{"connections", "chart-connections", "chart-rates", "chart-slow", "channels", "presence-channel",
		"publish-channel", "publish-data", "publish-send", "publish-result", "errors", "logout", "tap-channel", "overflow", "overflow-rows"} {
		if !strings.Contains(string(page), `id="`+id+`"`) {
			t.Errorf("admin/index.html has no #%s", id)
		}
	}
}

// TestAdminNoRemoteOrUnsafeContent: the dashboard's own files load nothing
// from another site and never turn data into HTML (the vendored files are
// checked for remote loads only: they are minified by their authors).
func TestAdminNoRemoteOrUnsafeContent(t *testing.T) {
	remote := regexp.MustCompile(`(?i)(src|href)\s*=\s*["']?(https?:)?//`)
	unsafe := regexp.MustCompile(`innerHTML|outerHTML|insertAdjacentHTML|document\.write|eval\(|new Function`)
	err := fs.WalkDir(AdminFS, ".", func(path string, d fs.DirEntry, err error) error {
		if err != nil || d.IsDir() || strings.HasSuffix(path, ".md") {
			return err
		}
		b, err := fs.ReadFile(AdminFS, path)
		if err != nil {
			return err
		}
		if m := remote.Find(b); m != nil {
			t.Errorf("%s loads from another site: %s", path, m)
		}
		if strings.HasSuffix(path, ".js") && !strings.HasPrefix(path, "vendor/") {
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
