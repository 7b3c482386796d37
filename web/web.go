// Package web holds Herald's demo chat page: static files embedded in the
// binary, so that `herald serve` shows a working client at / with nothing
// else to install. The page is plain HTML, CSS and an ES module that speaks
// the herald.v1 protocol over the browser's WebSocket; there is no build
// step and nothing is loaded from another site.
package web

import (
	"embed"
	"io/fs"
	"net/http"
)

//go:embed static
var static embed.FS

// FS holds the demo's files, index.html at its root.
var FS fs.FS = mustSub(static, "static")

func mustSub(f fs.FS, dir string) fs.FS {
	sub, err := fs.Sub(f, dir)
	if err != nil {
		panic("web: " + err.Error()) // dir is a constant embedded above
	}
	return sub
}

// contentSecurityPolicy allows the page its own files and a WebSocket to its
// own server, and nothing else: no inline script, no other origin. Were a
// message ever rendered as HTML by mistake, injected script still would not
// run. (connect-src 'self' covers ws: and wss: to the same host.)
const contentSecurityPolicy = "default-src 'none'; script-src 'self'; style-src 'self'; " +
	"img-src 'self' data:; connect-src 'self'; base-uri 'none'; form-action 'none'; frame-ancestors 'none'"

// Handler serves the demo's files. Files are not cached without
// revalidation: they change with the binary, and carry no version in their
// names.
func Handler() http.Handler {
	files := http.FileServerFS(FS)
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		h := w.Header()
		h.Set("Content-Security-Policy", contentSecurityPolicy)
		h.Set("X-Content-Type-Options", "nosniff")
		h.Set("Referrer-Policy", "no-referrer")
		h.Set("Cache-Control", "no-cache")
		files.ServeHTTP(w, r)
	})
}
