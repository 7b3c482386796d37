package web

import (
	"io"
	"io/fs"
	"net/http"
	"net/http/httptest"
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
		"/":          "text/html",
		"/app.js":    "text/javascript",
		"/herald.js": "text/javascript",
		"/style.css": "text/css",
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
