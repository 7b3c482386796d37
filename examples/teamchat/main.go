// Command teamchat is a small team chat whose backend is in the loop: the
// application decides who connects, checks and stores every message, answers
// the page's questions, and learns who is online, while Herald carries the
// messages. It is one Go program: the application's net/http server with a
// herald.Node mounted at /ws.
//
//	go run ./examples/teamchat        # then open http://localhost:8080 in two browsers
//
// Where things are:
//
//   - main.go: flags, the HTTP routes (login, logout, the page) and the
//     node's configuration: namespaces, hooks, webhooks.
//   - hooks.go: what the backend answers Herald (connect, publish, rpc) and
//     what it does with the webhook events (the online list).
//   - store.go: the application's own state: sessions, messages, who is
//     online. All in memory: a real application keeps them in its database.
//   - static/: the page, on @heraldhq/client (clients/js), which this program
//     serves at /herald-client.js from package jsclient: no copy of it.
package main

import (
	"context"
	"crypto/rand"
	"embed"
	"encoding/json"
	"errors"
	"flag"
	"io/fs"
	"log"
	"net"
	"net/http"
	"os"
	"os/signal"
	"regexp"
	"sync"
	"syscall"
	"time"

	"github.com/heraldhq/herald"
	jsclient "github.com/heraldhq/herald/clients/js"
)

// The channels. The backend subscribes every connection to both (connect
// hook): the page never subscribes by itself.
const (
	generalChannel = "room:general" // the chat room: history, presence, the publish hook
	onlineChannel  = "users:online" // the online list, published by the backend only
)

// sessionCookie holds the session id: HttpOnly, so page scripts (and any
// script injected into the page) cannot read it; the browser sends it with
// the WebSocket handshake, where the connect hook reads it.
const sessionCookie = "teamchat_session"

func main() {
	addr := flag.String("addr", "localhost:8080", "listen address")
	grace := flag.Duration("grace", 5*time.Second, "how long a user stays online after their last tab closed (webhooks' Grace)")
	flag.Parse()
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	defer stop()
	cfg := config{addr: *addr, grace: *grace}
	ready := func(addr string) { log.Printf("listening on http://%s", addr) }
	if err := run(ctx, cfg, ready); err != nil {
		log.Fatal(err)
	}
}

// config is what run needs; tests set the fields main does not.
type config struct {
	addr  string
	grace time.Duration
	// observe, when set, sees every webhook batch as delivered, before
	// de-duplication (tests count the events with it).
	observe func([]herald.Event)
}

//go:embed static
var static embed.FS

// run serves until ctx is done, then shuts down; it calls ready with the
// bound address once connections are accepted.
func run(ctx context.Context, cfg config, ready func(addr string)) error {
	a := newApp()
	node, err := herald.New(herald.Config{
		Namespaces: []herald.Namespace{
			// AllowSubscribe nobody: only the backend subscribes (the
			// connect hook's Channels). Publishing is checked by the
			// publish hook, which stores each message before Herald
			// publishes it; history lets a reconnecting page recover what
			// it missed.
			{Name: "room", HistorySize: 50, HistoryTTL: time.Hour, Presence: true,
				AllowSubscribe: herald.PermNobody, AllowPublish: herald.PermAuthenticated},
			// The online list: one publication per change, by the backend.
			{Name: "users", AllowSubscribe: herald.PermNobody, AllowPublish: herald.PermNobody},
		},
		Hooks: herald.Hooks{
			Connect:           a.connect,
			Publish:           a.publish,
			PublishNamespaces: []string{"room"},
			RPC:               a.rpc,
		},
		Webhooks: herald.Webhooks{
			Users: true, // user.online and user.offline
			Grace: cfg.grace,
			Deliver: func(ctx context.Context, events []herald.Event) error {
				if cfg.observe != nil {
					cfg.observe(events)
				}
				return a.deliver(ctx, events)
			},
		},
	})
	if err != nil {
		return err
	}
	a.node = node

	files, err := fs.Sub(static, "static")
	if err != nil {
		return err
	}
	mux := http.NewServeMux()
	mux.Handle("GET /", http.FileServerFS(files))
	mux.Handle("GET /herald-client.js", jsclient.Handler())
	mux.HandleFunc("POST /login", a.login)
	mux.HandleFunc("POST /logout", a.logout)
	mux.HandleFunc("GET /me", a.me)
	// Herald's origin check stays on: only this site's pages may open a
	// WebSocket with its users' cookies.
	mux.Handle("GET /ws", node.Handler())
	srv := &http.Server{Handler: secure(mux), ReadHeaderTimeout: 10 * time.Second}

	ln, err := net.Listen("tcp", cfg.addr)
	if err != nil {
		return err
	}
	ctx, cancel := context.WithCancel(ctx)
	defer cancel()
	var wg sync.WaitGroup
	var runErr, serveErr error
	// The node's own context is never cancelled: it is shut down below, in
	// order, with our deadline (as in examples/embed).
	wg.Go(func() { defer cancel(); runErr = node.Run(context.WithoutCancel(ctx)) })
	wg.Go(func() {
		defer cancel()
		if err := srv.Serve(ln); !errors.Is(err, http.ErrServerClosed) {
			serveErr = err
		}
	})
	ready(ln.Addr().String())

	<-ctx.Done()
	sctx, scancel := context.WithTimeout(context.WithoutCancel(ctx), 5*time.Second)
	defer scancel()
	shutErr := errors.Join(srv.Shutdown(sctx), node.Shutdown(sctx))
	wg.Wait()
	return errors.Join(serveErr, runErr, shutErr)
}

// secure sets the page's security headers on every answer: its scripts and
// WebSocket from this site only, so that a message rendered as HTML by
// mistake still could not run script.
func secure(h http.Handler) http.Handler {
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		w.Header().Set("Content-Security-Policy", "default-src 'none'; script-src 'self'; style-src 'self'; "+
			"connect-src 'self'; base-uri 'none'; form-action 'none'; frame-ancestors 'none'")
		w.Header().Set("X-Content-Type-Options", "nosniff")
		w.Header().Set("Cache-Control", "no-cache")
		h.ServeHTTP(w, r)
	})
}

// validName is who may log in: a short handle, which is also the Herald
// user id (no ',', which user-limited channels reserve).
var validName = regexp.MustCompile(`^[A-Za-z0-9_.-]{1,24}$`)

// login starts a session for the name in the JSON body {name} and sets its
// cookie. There is no password: this is a demo of the plumbing. The body
// must be sent as application/json, which another site's form cannot do and
// its scripts cannot do without this server's CORS consent: no login CSRF.
func (a *app) login(w http.ResponseWriter, r *http.Request) {
	if r.Header.Get("Content-Type") != "application/json" {
		http.Error(w, "send JSON: Content-Type application/json", http.StatusUnsupportedMediaType)
		return
	}
	var body struct{ Name string }
	if err := json.NewDecoder(http.MaxBytesReader(w, r.Body, 1<<10)).Decode(&body); err != nil {
		http.Error(w, "body must be JSON {\"name\": ...}", http.StatusBadRequest)
		return
	}
	if !validName.MatchString(body.Name) {
		http.Error(w, "name: 1 to 24 letters, digits, '.', '_' or '-'", http.StatusBadRequest)
		return
	}
	id := rand.Text() // 128 random bits: a session id cannot be guessed
	a.sessions.put(id, body.Name)
	http.SetCookie(w, &http.Cookie{Name: sessionCookie, Value: id, Path: "/", HttpOnly: true,
		SameSite: http.SameSiteLaxMode, Secure: r.TLS != nil})
	writeJSON(w, map[string]string{"name": body.Name})
}

// logout ends the session. Connections it opened stay until they close
// (the page closes its own first); a connection is checked when it opens.
func (a *app) logout(w http.ResponseWriter, r *http.Request) {
	if c, err := r.Cookie(sessionCookie); err == nil {
		a.sessions.delete(c.Value)
	}
	http.SetCookie(w, &http.Cookie{Name: sessionCookie, Path: "/", MaxAge: -1, HttpOnly: true})
	w.WriteHeader(http.StatusNoContent)
}

// me tells the page who is logged in: {name}, "" for nobody. (Nobody is
// an answer, not an error: a 401 would be logged in the browser's console
// on every visit before login.)
func (a *app) me(w http.ResponseWriter, r *http.Request) {
	name, _ := a.sessions.fromHeader(r.Header)
	writeJSON(w, map[string]string{"name": name})
}

func writeJSON(w http.ResponseWriter, v any) {
	w.Header().Set("Content-Type", "application/json")
	_ = json.NewEncoder(w).Encode(v) // the client went away: nothing to do
}
