package dashboard

import (
	"crypto/rand"
	"crypto/sha256"
	"crypto/subtle"
	"encoding/base64"
	"net/http"
	"net/url"
	"strings"
	"time"
)

// Logins and sessions (see the package doc's Security section).

const (
	sessionCookie = "herald_admin"
	sessionTTL    = 12 * time.Hour
	maxSessions   = 100 // oldest dropped past it: logins cannot grow memory

	// Login attempts: a burst of loginBurst, then one per loginEvery, for
	// the whole dashboard. Online guessing of a 12-byte password is
	// hopeless at that rate; a flood also locks the operator out for its
	// duration, which is the lesser harm.
	loginBurst = 10
	loginEvery = time.Second

	maxLoginBody = 4096
)

type session struct {
	expires time.Time
	csrf    string
}

// loginBudget is a token bucket of login attempts. Dashboard.mu guards it.
type loginBudget struct {
	tokens   float64 // attempts left
	refilled time.Time
}

func newLoginBudget() loginBudget { return loginBudget{tokens: loginBurst, refilled: time.Now()} }

// allowLogin takes one login attempt from the dashboard's budget.
func (d *Dashboard) allowLogin(now time.Time) bool {
	d.mu.Lock()
	defer d.mu.Unlock()
	b := &d.logins
	b.tokens = min(loginBurst, b.tokens+now.Sub(b.refilled).Seconds()/loginEvery.Seconds())
	b.refilled = now
	if b.tokens < 1 {
		return false
	}
	b.tokens--
	return true
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

func (d *Dashboard) login(w http.ResponseWriter, r *http.Request) {
	if !sameOrigin(r) {
		d.log.Warn("admin login refused: cross-origin request", "remote", d.node.ClientAddr(r), "origin", r.Header.Get("Origin"))
		http.Error(w, "Forbidden: cross-origin request", http.StatusForbidden)
		return
	}
	if !d.allowLogin(time.Now()) {
		w.Header().Set("Retry-After", "1")
		http.Redirect(w, r, Path+"/login?error=limited", http.StatusSeeOther)
		return
	}
	r.Body = http.MaxBytesReader(w, r.Body, maxLoginBody)
	given := sha256.Sum256([]byte(r.PostFormValue("password")))
	d.mu.Lock()
	ok := d.on && subtle.ConstantTimeCompare(given[:], d.password[:]) == 1
	d.mu.Unlock()
	if !ok {
		// WARN, so that it shows among the dashboard's recent errors too.
		d.log.Warn("admin login failed", "remote", d.node.ClientAddr(r))
		http.Redirect(w, r, Path+"/login?error=wrong", http.StatusSeeOther)
		return
	}
	token, s := d.newSession(time.Now())
	d.setCookie(w, token, s.expires, int(sessionTTL.Seconds()))
	d.log.Info("admin login", "remote", d.node.ClientAddr(r))
	http.Redirect(w, r, Path+"/", http.StatusSeeOther)
}

// setCookie sets the session cookie, or with maxAge -1 removes it.
func (d *Dashboard) setCookie(w http.ResponseWriter, token string, expires time.Time, maxAge int) {
	http.SetCookie(w, &http.Cookie{
		Name: sessionCookie, Value: token, Path: Path, Expires: expires, MaxAge: maxAge,
		HttpOnly: true, Secure: d.cfg.Secure, SameSite: http.SameSiteStrictMode,
	})
}

func randomToken() string {
	var b [32]byte
	_, _ = rand.Read(b[:]) // never fails (crypto/rand)
	return base64.RawURLEncoding.EncodeToString(b[:])
}

func (d *Dashboard) newSession(now time.Time) (string, *session) {
	token := randomToken()
	s := &session{expires: now.Add(sessionTTL), csrf: randomToken()}
	d.mu.Lock()
	defer d.mu.Unlock()
	for k, old := range d.sessions {
		if now.After(old.expires) {
			delete(d.sessions, k)
		}
	}
	for len(d.sessions) >= maxSessions {
		var oldest [sha256.Size]byte
		var first time.Time
		for k, old := range d.sessions {
			if first.IsZero() || old.expires.Before(first) {
				oldest, first = k, old.expires
			}
		}
		delete(d.sessions, oldest)
	}
	d.sessions[sha256.Sum256([]byte(token))] = s
	return token, s
}

// session returns the request's live session, or nil. Sessions are looked
// up by the hash of the token, so lookup timing says nothing about tokens.
func (d *Dashboard) session(r *http.Request) *session {
	c, err := r.Cookie(sessionCookie)
	if err != nil || c.Value == "" {
		return nil
	}
	key := sha256.Sum256([]byte(c.Value))
	d.mu.Lock()
	defer d.mu.Unlock()
	s := d.sessions[key]
	if s == nil {
		return nil
	}
	if time.Now().After(s.expires) {
		delete(d.sessions, key)
		return nil
	}
	return s
}

func (d *Dashboard) endSession(w http.ResponseWriter, r *http.Request) {
	if c, err := r.Cookie(sessionCookie); err == nil {
		d.mu.Lock()
		delete(d.sessions, sha256.Sum256([]byte(c.Value)))
		d.mu.Unlock()
	}
	d.setCookie(w, "", time.Time{}, -1)
}

// checkCSRF reports whether a request that changes something comes from a
// page of this origin that holds the session's CSRF token.
func checkCSRF(r *http.Request, s *session) bool {
	given := r.Header.Get("X-CSRF-Token")
	return sameOrigin(r) && subtle.ConstantTimeCompare([]byte(given), []byte(s.csrf)) == 1
}
