// Package web holds Herald's demo chat page and the admin dashboard's
// files: static files embedded in the binary, so that `herald serve` shows a
// working client at / (and, with an admin password, the dashboard at
// /admin) with nothing else to install. The pages are plain HTML, CSS and
// ES modules; there is no build step and nothing is loaded from another
// site.
//
// Both pages run on @heraldhq/client, the JavaScript client in clients/js:
// Handler and AdminHandler serve it (package jsclient) at
// /herald-client.js and /vendor/herald-client.js, so that there is one copy
// of it. The dashboard's other library, uPlot, is vendored in admin/vendor
// (see its README.md for its version and license).
//
// This package serves files only, each with its security headers. The
// dashboard's routing, sessions and data are package dashboard's, which
// serves these files under /admin through AdminHandler.
package web

import (
	"embed"
	"io/fs"
	"net/http"

	jsclient "github.com/heraldhq/herald/clients/js"
)

// Where the demo page and the dashboard load @heraldhq/client from, relative
// to the root of their files.
const (
	clientPath      = "/herald-client.js"
	adminClientPath = "/vendor/herald-client.js"
)

//go:embed static
var static embed.FS

//go:embed admin
var adminFiles embed.FS

// FS holds the demo's own files, index.html at its root; herald-client.js,
// which the page imports, is jsclient.Source.
var FS fs.FS = mustSub(static, "static")

// AdminFS holds the dashboard's own files: index.html (the dashboard),
// login.html, their scripts and styles, and vendor/ (uPlot);
// vendor/herald-client.js, which admin.js imports, is jsclient.Source.
var AdminFS fs.FS = mustSub(adminFiles, "admin")

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

// Handler serves the demo's files, and @heraldhq/client at /herald-client.js.
// Files are not cached without revalidation: they change with the binary,
// and carry no version in their names.
func Handler() http.Handler {
	files := withClient(http.FileServerFS(FS), clientPath)
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		h := w.Header()
		h.Set("Content-Security-Policy", contentSecurityPolicy)
		h.Set("X-Content-Type-Options", "nosniff")
		h.Set("Referrer-Policy", "no-referrer")
		h.Set("Cache-Control", "no-cache")
		files.ServeHTTP(w, r)
	})
}

// withClient serves @heraldhq/client at path, and everything else from files.
func withClient(files http.Handler, path string) http.Handler {
	client := jsclient.Handler()
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if r.URL.Path == path {
			client.ServeHTTP(w, r)
			return
		}
		files.ServeHTTP(w, r)
	})
}

// adminContentSecurityPolicy is the demo's policy, but for the login form,
// which posts to its own origin.
const adminContentSecurityPolicy = "default-src 'none'; script-src 'self'; style-src 'self'; " +
	"img-src 'self' data:; connect-src 'self'; base-uri 'none'; form-action 'self'; frame-ancestors 'none'"

// AdminHandler serves the dashboard's files, and @heraldhq/client at
// /vendor/herald-client.js, by paths relative to the dashboard's root (the
// caller strips /admin). They hold no data, so they need no session; the
// caller (package dashboard) guards the data routes.
func AdminHandler() http.Handler {
	files := withClient(http.FileServerFS(AdminFS), adminClientPath)
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		h := w.Header()
		h.Set("Content-Security-Policy", adminContentSecurityPolicy)
		h.Set("X-Content-Type-Options", "nosniff")
		h.Set("X-Frame-Options", "DENY")
		// same-origin, not no-referrer: with no-referrer, browsers send
		// "Origin: null" on the dashboard's own POSTs, and the server's
		// same-origin check needs the real origin.
		h.Set("Referrer-Policy", "same-origin")
		h.Set("Cache-Control", "no-cache")
		files.ServeHTTP(w, r)
	})
}
