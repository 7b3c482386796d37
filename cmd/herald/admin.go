package main

import (
	"context"
	"crypto/rand"
	"crypto/sha256"
	"crypto/subtle"
	"encoding/base64"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net/http"
	"net/url"
	"slices"
	"strings"
	"sync"
	"time"

	"github.com/heraldhq/herald"
	"github.com/heraldhq/herald/web"
)

// The admin dashboard at /admin: live node stats with charts, channels,
// presence lookup, a publish form and the recent warnings and errors.
//
// It is off unless admin_password (or admin_password_file) is set, and
// every data route needs a session:
//
//   - POST /admin/login checks the password in constant time (both sides
//     hashed first, so that not even the length leaks), with attempts
//     limited per node, and sets a session cookie: a random 256-bit token,
//     HttpOnly (script cannot read it), SameSite=Strict (no other site's
//     request carries it), Secure with TLS, Path /admin, for sessionTTL.
//   - Requests that change something (publish, logout) need the cookie AND
//     an X-CSRF-Token header equal to the session's CSRF token (which only
//     a page of this origin can read, from /admin/api/session) AND, when
//     the browser says where the request comes from (Origin or
//     Sec-Fetch-Site), that it is this origin. The login form needs the
//     same-origin check.
//   - The dashboard's files are public (they hold no data); its data is not.
//
// A new password (SIGHUP) ends every session.

const (
	sessionCookie = "herald_admin"
	sessionTTL    = 12 * time.Hour
	maxSessions   = 100 // oldest dropped past it: logins cannot grow memory

	// Login attempts: a burst of loginBurst, then one per loginEvery, for
	// the whole node. Online guessing of a 12-byte password is hopeless at
	// that rate; a flood also locks the operator out for its duration,
	// which is the lesser harm.
	loginBurst = 10
	loginEvery = time.Second

	sampleEvery = time.Second
	maxSamples  = 300 // five minutes of history on the charts

	adminMaxBody   = 1 << 20
	adminOpTimeout = 5 * time.Second
)

// adminDeps is what the dashboard reads and acts on.
type adminDeps struct {
	node   *herald.Node
	recent *recentLogs
	logger *slog.Logger
	secure bool                            // TLS: cookies are Secure
	ready  func(ctx context.Context) error // /readyz's answer
	broker string
}

type admin struct {
	adminDeps
	files   http.Handler
	started time.Time

	mu       sync.Mutex
	password [sha256.Size]byte // of the password; zero when off
	on       bool
	sessions map[[sha256.Size]byte]*session // by hash of the token
	tokens   float64                        // login attempts left
	refilled time.Time
	samples  []sample // oldest first
}

type session struct {
	expires time.Time
	csrf    string
}

// sample is one point of the charts: rates are per second over the
// interval before T.
type sample struct {
	T           int64   `json:"t"` // Unix milliseconds
	Connections int     `json:"connections"`
	InRate      float64 `json:"in_per_sec"`
	OutRate     float64 `json:"out_per_sec"`
	PubRate     float64 `json:"published_per_sec"`
	Slow        uint64  `json:"slow_disconnects"` // in the interval
}

func newAdmin(d adminDeps) *admin {
	return &admin{adminDeps: d, files: web.AdminHandler(), started: time.Now(),
		sessions: make(map[[sha256.Size]byte]*session), tokens: loginBurst, refilled: time.Now()}
}

func (a *admin) enabled() bool {
	a.mu.Lock()
	defer a.mu.Unlock()
	return a.on
}

// setPassword turns the dashboard on with password, or off for "", and
// reports whether that changed anything. A change ends every session:
// rotating the password is how an operator locks everyone else out.
func (a *admin) setPassword(password string) bool {
	a.mu.Lock()
	defer a.mu.Unlock()
	sum := sha256.Sum256([]byte(password))
	on := password != ""
	if on == a.on && (!on || subtle.ConstantTimeCompare(sum[:], a.password[:]) == 1) {
		return false
	}
	a.on, a.password = on, sum
	if !on {
		a.password = [sha256.Size]byte{}
	}
	clear(a.sessions)
	return true
}

func (a *admin) ServeHTTP(w http.ResponseWriter, r *http.Request) {
	if !a.enabled() {
		http.NotFound(w, r)
		return
	}
	path := strings.TrimPrefix(r.URL.Path, "/admin")
	switch {
	case path == "":
		http.Redirect(w, r, "/admin/", http.StatusMovedPermanently)
	case path == "/login" && r.Method == http.MethodPost:
		a.login(w, r)
	case path == "/login":
		if a.session(r) != nil {
			http.Redirect(w, r, "/admin/", http.StatusSeeOther)
			return
		}
		a.file(w, r, "/login.html")
	case path == "/":
		if a.session(r) == nil {
			http.Redirect(w, r, "/admin/login", http.StatusSeeOther)
			return
		}
		a.file(w, r, "/")
	case strings.HasPrefix(path, "/api/"):
		a.api(w, r, strings.TrimPrefix(path, "/api/"))
	case r.Method == http.MethodGet || r.Method == http.MethodHead:
		a.file(w, r, path)
	default:
		w.Header().Set("Allow", "GET, HEAD")
		http.Error(w, http.StatusText(http.StatusMethodNotAllowed), http.StatusMethodNotAllowed)
	}
}

// file serves one of the dashboard's static files.
func (a *admin) file(w http.ResponseWriter, r *http.Request, path string) {
	if r.Method != http.MethodGet && r.Method != http.MethodHead {
		w.Header().Set("Allow", "GET, HEAD")
		http.Error(w, http.StatusText(http.StatusMethodNotAllowed), http.StatusMethodNotAllowed)
		return
	}
	r2 := r.Clone(r.Context())
	r2.URL.Path, r2.URL.RawPath = path, ""
	a.files.ServeHTTP(w, r2)
}

// sameOrigin reports whether a browser request comes from a page of this
// server. Browsers send Origin with every POST (and Sec-Fetch-Site); a
// request with neither comes from no browser, so no other site can have
// made it in a user's name.
//
// "Origin: null" (a page whose referrer policy hides its origin, a
// sandboxed frame) proves nothing either way, so Sec-Fetch-Site decides
// then, and without it the request is refused.
func sameOrigin(r *http.Request) bool {
	fetchSite := r.Header.Get("Sec-Fetch-Site")
	if o := r.Header.Get("Origin"); o != "" && o != "null" {
		u, err := url.Parse(o)
		return err == nil && u.Host != "" && strings.EqualFold(u.Host, r.Host) && (fetchSite == "" || fetchSite == "same-origin")
	} else if o == "null" && fetchSite == "" {
		return false
	}
	if fetchSite != "" {
		return fetchSite == "same-origin"
	}
	return true
}

// allowLogin takes one login attempt from the node's budget.
func (a *admin) allowLogin(now time.Time) bool {
	a.mu.Lock()
	defer a.mu.Unlock()
	a.tokens = min(loginBurst, a.tokens+now.Sub(a.refilled).Seconds()/loginEvery.Seconds())
	a.refilled = now
	if a.tokens < 1 {
		return false
	}
	a.tokens--
	return true
}

func (a *admin) login(w http.ResponseWriter, r *http.Request) {
	if !sameOrigin(r) {
		a.logger.Warn("admin login refused: cross-origin request", "remote", r.RemoteAddr, "origin", r.Header.Get("Origin"))
		http.Error(w, "Forbidden: cross-origin request", http.StatusForbidden)
		return
	}
	if !a.allowLogin(time.Now()) {
		w.Header().Set("Retry-After", "1")
		http.Redirect(w, r, "/admin/login?error=limited", http.StatusSeeOther)
		return
	}
	r.Body = http.MaxBytesReader(w, r.Body, 4096)
	given := sha256.Sum256([]byte(r.PostFormValue("password")))
	a.mu.Lock()
	ok := a.on && subtle.ConstantTimeCompare(given[:], a.password[:]) == 1
	a.mu.Unlock()
	if !ok {
		// WARN, so that it shows among the dashboard's recent errors too.
		a.logger.Warn("admin login failed", "remote", r.RemoteAddr)
		http.Redirect(w, r, "/admin/login?error=wrong", http.StatusSeeOther)
		return
	}
	token, s := a.newSession(time.Now())
	http.SetCookie(w, &http.Cookie{
		Name: sessionCookie, Value: token, Path: "/admin", Expires: s.expires, MaxAge: int(sessionTTL.Seconds()),
		HttpOnly: true, Secure: a.secure, SameSite: http.SameSiteStrictMode,
	})
	a.logger.Info("admin login", "remote", r.RemoteAddr)
	http.Redirect(w, r, "/admin/", http.StatusSeeOther)
}

func randomToken() string {
	var b [32]byte
	_, _ = rand.Read(b[:]) // never fails (crypto/rand)
	return base64.RawURLEncoding.EncodeToString(b[:])
}

func (a *admin) newSession(now time.Time) (string, *session) {
	token := randomToken()
	s := &session{expires: now.Add(sessionTTL), csrf: randomToken()}
	a.mu.Lock()
	defer a.mu.Unlock()
	for k, old := range a.sessions {
		if now.After(old.expires) {
			delete(a.sessions, k)
		}
	}
	for len(a.sessions) >= maxSessions {
		var oldest [sha256.Size]byte
		var first time.Time
		for k, old := range a.sessions {
			if first.IsZero() || old.expires.Before(first) {
				oldest, first = k, old.expires
			}
		}
		delete(a.sessions, oldest)
	}
	a.sessions[sha256.Sum256([]byte(token))] = s
	return token, s
}

// session returns the request's live session, or nil. Sessions are looked
// up by the hash of the token, so lookup timing says nothing about tokens.
func (a *admin) session(r *http.Request) *session {
	c, err := r.Cookie(sessionCookie)
	if err != nil || c.Value == "" {
		return nil
	}
	key := sha256.Sum256([]byte(c.Value))
	a.mu.Lock()
	defer a.mu.Unlock()
	s := a.sessions[key]
	if s == nil {
		return nil
	}
	if time.Now().After(s.expires) {
		delete(a.sessions, key)
		return nil
	}
	return s
}

func (a *admin) endSession(r *http.Request) {
	if c, err := r.Cookie(sessionCookie); err == nil {
		a.mu.Lock()
		delete(a.sessions, sha256.Sum256([]byte(c.Value)))
		a.mu.Unlock()
	}
}

type adminError struct {
	Error string `json:"error"`
}

func adminJSON(w http.ResponseWriter, status int, v any) {
	w.Header().Set("Content-Type", "application/json")
	w.Header().Set("Cache-Control", "no-store")
	w.Header().Set("X-Content-Type-Options", "nosniff")
	w.WriteHeader(status)
	_ = json.NewEncoder(w).Encode(v)
}

// api serves the dashboard's JSON routes, all behind a session.
func (a *admin) api(w http.ResponseWriter, r *http.Request, route string) {
	s := a.session(r)
	if s == nil {
		adminJSON(w, http.StatusUnauthorized, adminError{"not logged in"})
		return
	}
	if r.Method == http.MethodPost {
		given := r.Header.Get("X-CSRF-Token")
		if !sameOrigin(r) || subtle.ConstantTimeCompare([]byte(given), []byte(s.csrf)) != 1 {
			a.logger.Warn("admin request refused: cross-origin or without its CSRF token", "remote", r.RemoteAddr, "route", route)
			adminJSON(w, http.StatusForbidden, adminError{"cross-origin request, or missing CSRF token"})
			return
		}
	}
	switch r.Method + " " + route {
	case "GET session":
		adminJSON(w, http.StatusOK, map[string]any{"csrf": s.csrf, "expires": s.expires})
	case "POST logout":
		a.endSession(r)
		http.SetCookie(w, &http.Cookie{Name: sessionCookie, Value: "", Path: "/admin", MaxAge: -1,
			HttpOnly: true, Secure: a.secure, SameSite: http.SameSiteStrictMode})
		adminJSON(w, http.StatusOK, struct{}{})
	case "GET stats":
		a.stats(w, r)
	case "GET channels":
		a.channels(w)
	case "GET presence":
		a.presence(w, r)
	case "POST publish":
		a.publish(w, r)
	case "GET errors":
		entries, total := a.recent.entries()
		adminJSON(w, http.StatusOK, map[string]any{"entries": entries, "total": total})
	default:
		adminJSON(w, http.StatusNotFound, adminError{"no such route: " + r.Method + " /admin/api/" + route})
	}
}

func (a *admin) stats(w http.ResponseWriter, r *http.Request) {
	st := a.node.Stats()
	ready := "ok"
	if err := a.ready(r.Context()); err != nil {
		ready = err.Error()
	}
	a.mu.Lock()
	samples := append(make([]sample, 0, len(a.samples)), a.samples...) // [] rather than null before the first sample
	a.mu.Unlock()
	adminJSON(w, http.StatusOK, map[string]any{
		"version":        versionString(),
		"broker":         a.broker,
		"uptime_seconds": int64(time.Since(a.started).Seconds()),
		"ready":          ready,
		"connections":    st.Connections,
		"channels":       len(st.Channels),
		"messages_in":    st.MessagesIn,
		"frames_out":     st.FramesOut,
		"published":      st.Published,
		"slow_consumers": st.SlowConsumers,
		"samples":        samples,
	})
}

type channelCount struct {
	Name        string `json:"name"`
	Subscribers int    `json:"subscribers"`
}

// maxChannelsShown bounds the channels table: a node may hold a million.
const maxChannelsShown = 200

func (a *admin) channels(w http.ResponseWriter) {
	st := a.node.Stats()
	list := make([]channelCount, 0, len(st.Channels))
	for name, n := range st.Channels {
		list = append(list, channelCount{name, n})
	}
	slices.SortFunc(list, func(x, y channelCount) int {
		if x.Subscribers != y.Subscribers {
			return y.Subscribers - x.Subscribers
		}
		return strings.Compare(x.Name, y.Name)
	})
	adminJSON(w, http.StatusOK, map[string]any{"total": len(list), "channels": list[:min(len(list), maxChannelsShown)]})
}

// nodeError answers an error of a node call: the caller's mistake (bad
// channel, presence or history not enabled) or the broker's.
func (a *admin) nodeError(w http.ResponseWriter, err error) {
	if errors.Is(err, herald.ErrBadChannel) || errors.Is(err, herald.ErrNotEnabled) {
		adminJSON(w, http.StatusBadRequest, adminError{strings.TrimPrefix(err.Error(), "herald: ")})
		return
	}
	a.logger.Warn("admin call failed", "err", err)
	adminJSON(w, http.StatusServiceUnavailable, adminError{"failed: " + strings.TrimPrefix(err.Error(), "herald: ")})
}

func (a *admin) presence(w http.ResponseWriter, r *http.Request) {
	ch := r.URL.Query().Get("channel")
	ctx, cancel := context.WithTimeout(r.Context(), adminOpTimeout)
	defer cancel()
	clients, err := a.node.Presence(ctx, ch)
	if err != nil {
		a.nodeError(w, err)
		return
	}
	st, err := a.node.PresenceStats(ctx, ch)
	if err != nil {
		a.nodeError(w, err)
		return
	}
	list := make([]herald.ClientPresence, 0, len(clients))
	for _, c := range clients {
		list = append(list, c)
	}
	slices.SortFunc(list, func(x, y herald.ClientPresence) int {
		if c := strings.Compare(x.User, y.User); c != 0 {
			return c
		}
		return strings.Compare(x.Client, y.Client)
	})
	adminJSON(w, http.StatusOK, map[string]any{"channel": ch, "clients": list, "users": st.Users, "count": st.Clients})
}

func (a *admin) publish(w http.ResponseWriter, r *http.Request) {
	var req struct {
		Channel        string          `json:"channel"`
		Data           json.RawMessage `json:"data"`
		IdempotencyKey string          `json:"idempotency_key"`
	}
	dec := json.NewDecoder(http.MaxBytesReader(w, r.Body, adminMaxBody))
	dec.DisallowUnknownFields()
	if err := dec.Decode(&req); err != nil {
		adminJSON(w, http.StatusBadRequest, adminError{"bad request: " + publishBodyError(err)})
		return
	}
	if len(req.Data) == 0 {
		adminJSON(w, http.StatusBadRequest, adminError{"data (a JSON value) is required"})
		return
	}
	var opts []herald.PublishOption
	if req.IdempotencyKey != "" {
		opts = append(opts, herald.IdempotencyKey(req.IdempotencyKey))
	}
	ctx, cancel := context.WithTimeout(r.Context(), adminOpTimeout)
	defer cancel()
	res, err := a.node.Publish(ctx, req.Channel, req.Data, opts...)
	if err != nil {
		a.nodeError(w, err)
		return
	}
	// Who published what where, without the payload (never logged).
	a.logger.Info("admin publish", "channel", req.Channel, "bytes", len(req.Data), "remote", r.RemoteAddr)
	adminJSON(w, http.StatusOK, map[string]any{"offset": res.Offset, "epoch": res.Epoch, "duplicate": res.Duplicate})
}

// publishBodyError says what is wrong with a publish request's body in
// the request's terms: encoding/json's errors name Go types ("cannot
// unmarshal number into Go struct field .channel of type string").
func publishBodyError(err error) string {
	const fields = "channel, data and idempotency_key"
	var typeErr *json.UnmarshalTypeError
	var syntaxErr *json.SyntaxError
	var tooLarge *http.MaxBytesError
	switch {
	case errors.As(err, &typeErr) && typeErr.Field != "":
		return typeErr.Field + " must be a string" // data is any JSON value: only the strings can be mistyped
	case errors.As(err, &typeErr):
		return "want a JSON object with " + fields
	case errors.As(err, &syntaxErr), errors.Is(err, io.ErrUnexpectedEOF), errors.Is(err, io.EOF):
		msg := strings.TrimPrefix(err.Error(), "json: ")
		if errors.Is(err, io.ErrUnexpectedEOF) || errors.Is(err, io.EOF) {
			msg = "unexpected end of JSON input"
		}
		return "the body is not valid JSON: " + msg
	case errors.As(err, &tooLarge):
		return fmt.Sprintf("the body is larger than %d bytes", tooLarge.Limit)
	}
	if field, ok := strings.CutPrefix(err.Error(), "json: unknown field "); ok {
		return "unknown field " + field + ": the body takes " + fields
	}
	return err.Error()
}

// sample records the node's counters every sampleEvery while the dashboard
// is on, until ctx is done.
func (a *admin) sample(ctx context.Context) {
	t := time.NewTicker(sampleEvery)
	defer t.Stop()
	var prev herald.Stats
	var prevAt time.Time
	for {
		select {
		case <-ctx.Done():
			return
		case now := <-t.C:
			if !a.enabled() {
				a.mu.Lock()
				a.samples = nil
				a.mu.Unlock()
				prevAt = time.Time{}
				continue
			}
			st := a.node.Stats()
			if !prevAt.IsZero() {
				dt := now.Sub(prevAt).Seconds()
				s := sample{
					T:           now.UnixMilli(),
					Connections: st.Connections,
					InRate:      float64(st.MessagesIn-prev.MessagesIn) / dt,
					OutRate:     float64(st.FramesOut-prev.FramesOut) / dt,
					PubRate:     float64(st.Published-prev.Published) / dt,
					Slow:        st.SlowConsumers - prev.SlowConsumers,
				}
				a.mu.Lock()
				if len(a.samples) == maxSamples {
					a.samples = slices.Delete(a.samples, 0, 1)
				}
				a.samples = append(a.samples, s)
				a.mu.Unlock()
			}
			prev, prevAt = st, now
		}
	}
}
