package herald

import (
	"sync"
	"time"
)

// session is one wire protocol's side of a connection: it turns the
// client's messages into node operations and answers through the
// connection's outbound queue. Each protocol is one session type:
// v1Session (herald.v1, session_v1.go) and rawSession (raw relay,
// session_raw.go); a new protocol is a new session type over the same
// transport and queue, not a new connection.
//
// Both methods run on the connection's reader goroutine, one at a time; a
// session may also run timers of its own, which must only push or close.
type session interface {
	// message handles one complete data message of the client, after the
	// transport checked it (size, UTF-8 of text).
	message(msg []byte, binary bool)
	// stop ends what the session runs by itself (timers), as the
	// connection ends.
	stop()
}

// expiry closes a connection when the credentials it was admitted with
// expire (CloseTokenExpired), unless renewed first. Both sessions have one:
// a raw client's token expires as a protocol client's does.
type expiry struct {
	mu    sync.Mutex
	timer *time.Timer
	unix  int64 // the expiry, Unix seconds, while the timer is set
}

// set (re)arms the timer for exp; a zero exp means none.
func (e *expiry) set(c *conn, exp time.Time) {
	e.mu.Lock()
	defer e.mu.Unlock()
	e.stopLocked()
	if exp.IsZero() {
		return
	}
	e.unix = exp.Unix()
	e.timer = time.AfterFunc(time.Until(exp), func() { c.close(CloseTokenExpired, "token expired") })
}

// at returns the expiry, if one is set.
func (e *expiry) at() (unix int64, ok bool) {
	e.mu.Lock()
	defer e.mu.Unlock()
	return e.unix, e.timer != nil
}

func (e *expiry) stop() {
	e.mu.Lock()
	defer e.mu.Unlock()
	e.stopLocked()
}

func (e *expiry) stopLocked() {
	if e.timer != nil {
		e.timer.Stop()
		e.timer = nil
	}
}
