package herald

import (
	"hash/maphash"
	"math"
	"net/http"
	"strconv"
	"sync"
	"time"

	"golang.org/x/time/rate"
)

// ipLimits counts connections and paces new ones per client IP address,
// with the limits in force at each handshake (Node.SetLimits can change
// them). Connections are counted even with no cap, so that a cap set later
// counts the connections already open. An entry with no connection is
// dropped at once when it has no rate limiter, else kept while it may
// remember a recent burst; sweep drops the rest.
type ipLimits struct {
	seed   maphash.Seed
	shards [64]ipShard
}

type ipShard struct {
	mu sync.Mutex
	m  map[string]*ipEntry
}

type ipEntry struct {
	conns   int
	limiter *rate.Limiter
}

func newIPLimits() *ipLimits {
	return &ipLimits{seed: maphash.MakeSeed()}
}

// acquire admits one more connection from ip under lim, or returns the HTTP
// status and the seconds to wait (for Retry-After) that refuse it. A
// successful acquire must be paired with release.
func (l *ipLimits) acquire(ip string, now time.Time, lim *nodeLimits) (status int, retryAfter int) {
	s := &l.shards[maphash.String(l.seed, ip)%uint64(len(l.shards))]
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.m == nil {
		s.m = make(map[string]*ipEntry)
	}
	e := s.m[ip]
	if e == nil {
		e = &ipEntry{}
		s.m[ip] = e
	}
	// The rate in force: a limiter made under another one takes the new
	// rate and burst, keeping its tokens.
	switch {
	case lim.connRate == 0:
		e.limiter = nil
	case e.limiter == nil:
		e.limiter = rate.NewLimiter(lim.connRate, lim.connBurst)
	case e.limiter.Limit() != lim.connRate || e.limiter.Burst() != lim.connBurst:
		e.limiter.SetLimitAt(now, lim.connRate)
		e.limiter.SetBurstAt(now, lim.connBurst)
	}
	if lim.MaxConnectionsPerIP > 0 && e.conns >= lim.MaxConnectionsPerIP {
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
	s := &l.shards[maphash.String(l.seed, ip)%uint64(len(l.shards))]
	s.mu.Lock()
	if e := s.m[ip]; e != nil && e.conns > 0 {
		if e.conns--; e.conns == 0 && e.limiter == nil {
			delete(s.m, ip) // nothing to remember
		}
	}
	s.mu.Unlock()
}

// sweep forgets the IPs with no connection whose limiter is full again:
// they have nothing left to remember. The heartbeat calls it once per ping
// interval, so the table holds the addresses connected or recently seen,
// not every address that ever connected.
func (l *ipLimits) sweep(now time.Time) {
	for i := range l.shards {
		s := &l.shards[i]
		s.mu.Lock()
		for ip, e := range s.m {
			if e.conns == 0 && (e.limiter == nil || e.limiter.TokensAt(now) >= float64(e.limiter.Burst())) {
				delete(s.m, ip)
			}
		}
		s.mu.Unlock()
	}
}

// len returns the number of addresses remembered.
func (l *ipLimits) len() int {
	n := 0
	for i := range l.shards {
		s := &l.shards[i]
		s.mu.Lock()
		n += len(s.m)
		s.mu.Unlock()
	}
	return n
}

func retryAfter(w http.ResponseWriter, secs int) {
	if secs > 0 {
		w.Header().Set("Retry-After", strconv.Itoa(secs))
	}
}
