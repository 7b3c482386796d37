package herald

import (
	"fmt"
	"net/http"
	"net/url"
	"strings"
	"sync"

	"golang.org/x/time/rate"
)

// originChecker decides whether a handshake's Origin may connect.
type originChecker struct {
	any      bool
	exact    map[string]bool
	suffixes []originSuffix // from "scheme://*.domain[:port]"
}

type originSuffix struct{ scheme, suffix, port string }

func newOriginChecker(allowed []string, any bool) (*originChecker, error) {
	oc := &originChecker{any: any, exact: make(map[string]bool)}
	for _, p := range allowed {
		u, err := url.Parse(p)
		if err != nil || u.Scheme == "" || u.Host == "" || (u.Path != "" && u.Path != "/") || u.RawQuery != "" {
			return nil, fmt.Errorf("herald: failed to parse allowed origin %q: want scheme://host[:port], optionally scheme://*.domain", p)
		}
		host := strings.ToLower(u.Hostname())
		scheme := strings.ToLower(u.Scheme)
		if rest, ok := strings.CutPrefix(host, "*."); ok {
			if rest == "" || strings.Contains(rest, "*") {
				return nil, fmt.Errorf("herald: bad wildcard in allowed origin %q", p)
			}
			oc.suffixes = append(oc.suffixes, originSuffix{scheme: scheme, suffix: "." + rest, port: u.Port()})
			continue
		}
		if strings.Contains(host, "*") {
			return nil, fmt.Errorf("herald: a wildcard may only be the first label in allowed origin %q", p)
		}
		oc.exact[scheme+"://"+strings.ToLower(u.Host)] = true
	}
	return oc, nil
}

// originWarnings says once per origin that a browser page was refused for
// its origin, at Warn, naming the setting that would admit it: a page of
// the app's own on a new domain is the common cause, and its developer
// should not have to guess. It remembers up to maxWarnedOrigins origins and
// warns at most a few times a second, so that a hostile page trying many
// origins cannot flood the log.
type originWarnings struct {
	mu     sync.Mutex
	seen   map[string]struct{}
	budget *rate.Limiter
}

const maxWarnedOrigins = 1024

func newOriginWarnings() *originWarnings {
	return &originWarnings{seen: make(map[string]struct{}), budget: rate.NewLimiter(1, 10)}
}

// first reports whether origin should be warned about now.
func (w *originWarnings) first(origin string) bool {
	w.mu.Lock()
	defer w.mu.Unlock()
	if _, ok := w.seen[origin]; ok || len(w.seen) >= maxWarnedOrigins || !w.budget.Allow() {
		return false
	}
	w.seen[origin] = struct{}{}
	return true
}

// check implements the policy documented on Config.AllowedOrigins.
func (oc *originChecker) check(r *http.Request) bool {
	origin := r.Header.Get("Origin")
	if origin == "" || oc.any {
		return true
	}
	u, err := url.Parse(origin)
	if err != nil || u.Host == "" {
		return false
	}
	if strings.EqualFold(u.Host, r.Host) {
		return true // same origin
	}
	scheme := strings.ToLower(u.Scheme)
	if oc.exact[scheme+"://"+strings.ToLower(u.Host)] {
		return true
	}
	host := strings.ToLower(u.Hostname())
	for _, s := range oc.suffixes {
		if s.scheme == scheme && s.port == u.Port() && strings.HasSuffix(host, s.suffix) && len(host) > len(s.suffix) {
			return true
		}
	}
	return false
}
