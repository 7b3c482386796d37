package herald

import (
	"hash/maphash"
	"math"
	"net"
	"net/http"
	"strconv"
	"sync"
	"time"

	"golang.org/x/time/rate"
)

// ipLimits counts connections and paces new ones per client IP address.
// Entries live while the IP has connections or its rate limiter is not yet
// full again; sweep drops the rest.
type ipLimits struct {
	seed   maphash.Seed
	shards [64]ipShard
	max    int        // connections per IP; 0 = no cap
	rate   rate.Limit // new connections per second per IP; 0 = no cap
	burst  int
}

type ipShard struct {
	mu sync.Mutex
	m  map[string]*ipEntry
}

type ipEntry struct {
	conns   int
	limiter *rate.Limiter
	seen    time.Time
}

func newIPLimits(max int, perSecond float64) *ipLimits {
	l := &ipLimits{seed: maphash.MakeSeed(), max: max}
	if perSecond > 0 {
		l.rate = rate.Limit(perSecond)
		l.burst = int(math.Ceil(perSecond))
	}
	return l
}

// acquire admits one more connection from ip, or returns the HTTP status and
// the seconds to wait (for Retry-After) that refuse it. A successful acquire
// must be paired with release.
func (l *ipLimits) acquire(ip string, now time.Time) (status int, retryAfter int) {
	if l.max == 0 && l.rate == 0 {
		return 0, 0
	}
	s := &l.shards[maphash.String(l.seed, ip)%uint64(len(l.shards))]
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.m == nil {
		s.m = make(map[string]*ipEntry)
	}
	e := s.m[ip]
	if e == nil {
		e = &ipEntry{}
		if l.rate > 0 {
			e.limiter = rate.NewLimiter(l.rate, l.burst)
		}
		s.m[ip] = e
	}
	e.seen = now
	if l.max > 0 && e.conns >= l.max {
		return http.StatusTooManyRequests, 1
	}
	if e.limiter != nil && !e.limiter.AllowN(now, 1) {
		wait := e.limiter.ReserveN(now, 1)
		d := wait.DelayFrom(now)
		wait.CancelAt(now)
		return http.StatusTooManyRequests, int(math.Ceil(d.Seconds()))
	}
	e.conns++
	return 0, 0
}

func (l *ipLimits) release(ip string) {
	if l.max == 0 && l.rate == 0 {
		return
	}
	s := &l.shards[maphash.String(l.seed, ip)%uint64(len(l.shards))]
	s.mu.Lock()
	if e := s.m[ip]; e != nil && e.conns > 0 {
		e.conns--
	}
	s.mu.Unlock()
}

// sweep forgets IPs with no connection that have not connected for a while
// (long enough for their limiter to be full again).
func (l *ipLimits) sweep(now time.Time) {
	for i := range l.shards {
		s := &l.shards[i]
		s.mu.Lock()
		for ip, e := range s.m {
			if e.conns == 0 && now.Sub(e.seen) > time.Minute {
				delete(s.m, ip)
			}
		}
		s.mu.Unlock()
	}
}

// clientIP is the IP address of the request's peer. Herald does not trust
// X-Forwarded-For: behind a proxy, per-IP limits see the proxy.
func clientIP(r *http.Request) string {
	host, _, err := net.SplitHostPort(r.RemoteAddr)
	if err != nil {
		return r.RemoteAddr
	}
	return host
}

func retryAfter(w http.ResponseWriter, secs int) {
	if secs > 0 {
		w.Header().Set("Retry-After", strconv.Itoa(secs))
	}
}
