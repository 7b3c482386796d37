// Package dashboard is Herald's admin dashboard: live node stats with
// charts, the channels, presence lookup, a publish form and the recent
// warnings and errors, for an operator with a password. It is an
// http.Handler built on a *herald.Node's exported methods only, so that any
// net/http server embedding Herald can mount it; `herald serve` mounts it
// when admin_password is set.
//
//	dash := dashboard.New(node, dashboard.Config{Password: pw, Logs: recorder, Logger: logger})
//	go dash.Run(ctx) // the charts' sampler
//	mux.Handle("/admin", dash)
//	mux.Handle("/admin/", dash)
//
// It must be mounted at Path (/admin): its pages link to their files and
// routes there. Who serves what: package web holds the dashboard's files
// (pages, scripts, styles, uPlot, and @heraldhq/client from clients/js) and
// serves them with their security headers (web.AdminHandler); this package
// decides which of them a request gets (the login page or the dashboard),
// and owns the login, the sessions and the JSON routes under /admin/api/.
// Its JSON errors have the HTTP API's shape (package httpapi):
// {"error":{"code","message","field"}}, with the status herald.HTTPStatus
// gives a node's refusal.
//
// # Security
//
// It is off (every request 404) without a password, and every data route
// needs a session:
//
//   - POST /admin/login checks the password in constant time (both sides
//     hashed first, so that not even the length leaks), with attempts
//     limited per dashboard (a burst of 10, then one a second), and sets a
//     session cookie: a random 256-bit token, HttpOnly (script cannot read
//     it), SameSite=Strict (no other site's request carries it), Secure with
//     Config.Secure, Path /admin, for 12 hours. At most 100 sessions are
//     kept; the oldest goes first.
//   - Requests that change something (publish, logout) need the cookie AND
//     an X-CSRF-Token header equal to the session's CSRF token (which only
//     a page of this origin can read, from /admin/api/session) AND, when
//     the browser says where the request comes from (Origin or
//     Sec-Fetch-Site), that it is this origin. The login form needs the
//     same-origin check.
//   - The dashboard's files are public (they hold no data); its data is
//     not. They are served with a Content-Security-Policy that allows the
//     page its own files and a WebSocket to its own server, nothing else.
//
// A new password (SetPassword) ends every session. The password and the
// session tokens are never logged.
package dashboard

import (
	"context"
	"crypto/sha256"
	"crypto/subtle"
	"log/slog"
	"net/http"
	"strings"
	"sync"

	"github.com/heraldhq/herald"
	"github.com/heraldhq/herald/web"
)

// Path is where the dashboard is mounted: its pages name their files and
// routes under it. Mount the Dashboard at both Path and Path + "/".
const Path = "/admin"

// Config configures a Dashboard. The zero value is a dashboard that is off
// until SetPassword turns it on.
type Config struct {
	// Password turns the dashboard on; empty leaves it off. Choose a long
	// one: it lets whoever knows it publish as the server (herald serve
	// requires 12 bytes or more). SetPassword changes it while running.
	Password string
	// Secure marks the session cookie Secure: set it when browsers reach
	// the dashboard over https://, directly or through a proxy that
	// terminates TLS.
	Secure bool
	// Ready is the readiness the stats show ("ok", or the error's text).
	// Nil means the node's own, herald.Node.Ready; a server that fails its
	// readiness earlier while it drains passes its own check.
	Ready func(ctx context.Context) error
	// Logs is where the recent warnings and errors come from: a
	// LogRecorder that the embedding server installs in its logger. Nil
	// shows none.
	Logs *LogRecorder
	// Logger receives logins (WARN for a failed one or a refused request,
	// so that they show among the recent errors when it writes to Logs),
	// publishes (never their payload) and the node calls that failed. Nil
	// logs nothing.
	Logger *slog.Logger
	// Version and Broker are shown in the dashboard's header: the server's
	// build, and what joins its nodes ("memory", "redis", "nats"). Empty
	// shows nothing there.
	Version string
	Broker  string
}

// Dashboard is the admin dashboard of one node, an http.Handler. Its
// methods may be called from any goroutine.
type Dashboard struct {
	node  *herald.Node
	cfg   Config
	log   *slog.Logger
	files http.Handler // web.AdminHandler

	// mu guards what follows: the password, the sessions, the login budget
	// and the charts' samples.
	mu       sync.Mutex
	password [sha256.Size]byte // of the password; zero when off
	on       bool
	sessions map[[sha256.Size]byte]*session // by hash of the token
	logins   loginBudget
	samples  []sample // oldest first; appended by Run
}

// New returns the dashboard of n. Call Run for the charts, and SetPassword
// to change the password while running.
func New(n *herald.Node, cfg Config) *Dashboard {
	d := &Dashboard{node: n, cfg: cfg, log: cfg.Logger, files: web.AdminHandler(),
		sessions: make(map[[sha256.Size]byte]*session), logins: newLoginBudget()}
	if d.log == nil {
		d.log = slog.New(slog.DiscardHandler)
	}
	if d.cfg.Ready == nil {
		d.cfg.Ready = n.Ready
	}
	d.SetPassword(cfg.Password)
	return d
}

// Enabled reports whether the dashboard is on: it has a password.
func (d *Dashboard) Enabled() bool {
	d.mu.Lock()
	defer d.mu.Unlock()
	return d.on
}

// SetPassword turns the dashboard on with password, or off for "", and
// reports whether that changed anything. A change ends every session:
// rotating the password is how an operator locks everyone else out.
func (d *Dashboard) SetPassword(password string) (changed bool) {
	d.mu.Lock()
	defer d.mu.Unlock()
	sum := sha256.Sum256([]byte(password))
	on := password != ""
	if on == d.on && (!on || subtle.ConstantTimeCompare(sum[:], d.password[:]) == 1) {
		return false
	}
	d.on, d.password = on, sum
	if !on {
		d.password = [sha256.Size]byte{}
	}
	clear(d.sessions)
	return true
}

// ServeHTTP serves the dashboard's pages, files and routes under Path, and
// 404 to every request while the dashboard is off.
func (d *Dashboard) ServeHTTP(w http.ResponseWriter, r *http.Request) {
	if !d.Enabled() {
		http.NotFound(w, r)
		return
	}
	path := strings.TrimPrefix(r.URL.Path, Path)
	switch {
	case path == "":
		http.Redirect(w, r, Path+"/", http.StatusMovedPermanently)
	case path == "/login" && r.Method == http.MethodPost:
		d.login(w, r)
	case path == "/login":
		if d.session(r) != nil {
			http.Redirect(w, r, Path+"/", http.StatusSeeOther)
			return
		}
		d.file(w, r, "/login.html")
	case path == "/":
		if d.session(r) == nil {
			http.Redirect(w, r, Path+"/login", http.StatusSeeOther)
			return
		}
		d.file(w, r, "/")
	case strings.HasPrefix(path, "/api/"):
		d.api(w, r, strings.TrimPrefix(path, "/api/"))
	default:
		d.file(w, r, path)
	}
}

// file serves one of the dashboard's static files.
func (d *Dashboard) file(w http.ResponseWriter, r *http.Request, path string) {
	if r.Method != http.MethodGet && r.Method != http.MethodHead {
		w.Header().Set("Allow", "GET, HEAD")
		http.Error(w, http.StatusText(http.StatusMethodNotAllowed), http.StatusMethodNotAllowed)
		return
	}
	r2 := r.Clone(r.Context())
	r2.URL.Path, r2.URL.RawPath = path, ""
	d.files.ServeHTTP(w, r2)
}
