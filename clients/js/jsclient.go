// Package jsclient embeds @heraldhq/client, Herald's JavaScript client
// (index.js in this folder, the npm package @heraldhq/client), so that Go
// servers can serve the very file the npm package ships: the demo page and
// the admin dashboard (package web) load it from here, and there is no
// copy of it anywhere else in the repository to keep equal.
//
// This file is not part of the npm package: package.json's "files" lists
// index.js, index.d.ts and README.md only.
package jsclient

import (
	"bytes"
	_ "embed"
	"net/http"
	"time"
)

//go:embed index.js
var source []byte

// Source returns the client's source (index.js), a single ES module with no
// imports. The caller must not modify the slice.
func Source() []byte { return source }

// Handler serves the client as text/javascript at whatever path it is
// mounted on, for GET and HEAD (with Range and conditional requests, as
// http.ServeContent answers them). It sets no caching or security headers:
// the page that loads the client decides those (package web sets them).
func Handler() http.Handler {
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if r.Method != http.MethodGet && r.Method != http.MethodHead {
			w.Header().Set("Allow", "GET, HEAD")
			http.Error(w, http.StatusText(http.StatusMethodNotAllowed), http.StatusMethodNotAllowed)
			return
		}
		w.Header().Set("Content-Type", "text/javascript; charset=utf-8")
		// No modification time: the file changes with the binary, like the
		// embedded files served beside it.
		http.ServeContent(w, r, "herald-client.js", time.Time{}, bytes.NewReader(source))
	})
}
