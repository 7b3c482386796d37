package herald

import (
	"context"
	"sync"
	"time"
)

// session is one wire protocol's side of a connection: it turns the
// client's messages into node operations and answers through the
// connection's outbound queue. Each protocol is one session type:
// v1Session (herald.v1, session_v1.go), rawSession (raw relay,
// session_raw.go), pusherSession (Pusher protocol 7, session_pusher.go)
// and sseSession (Server-Sent Events, sse.go, over a transport whose
// socket is the HTTP response); a new protocol is a new session type over
// the same transport and queue, not a new connection.
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
	// readDone is called by the reader after handling what one read from
	// the socket completed (and before it waits for more, or ends): the
	// session finishes what it held back meanwhile (the herald.v1
	// session's batched publishes).
	readDone()
}

// expiry closes a connection when the credentials it was admitted with
// expire (CloseTokenExpired), unless renewed first. Both sessions have one:
// a raw client's token expires as a protocol client's does. An expiry the
// connect hook set is the backend's to extend: when it comes, Hooks.Refresh
// is asked (on the timer's goroutine), and the connection closes only if
// the backend refuses.
type expiry struct {
	mu      sync.Mutex
	timer   *time.Timer
	unix    int64 // the expiry, Unix seconds, while the timer is set
	hook    bool  // set by the connect or refresh hook
	stopped bool  // the connection ended: set nothing more
}

// set (re)arms the timer for exp; a zero exp means none. viaHook says
// the hooks set it.
func (e *expiry) set(c *conn, exp time.Time, viaHook bool) {
	e.mu.Lock()
	defer e.mu.Unlock()
	e.stopLocked()
	if exp.IsZero() || e.stopped {
		return
	}
	e.unix, e.hook = exp.Unix(), viaHook
	if viaHook && c.node.cfg.Hooks.Refresh != nil {
		e.timer = time.AfterFunc(time.Until(exp), func() { e.refresh(c) })
		return
	}
	e.timer = time.AfterFunc(time.Until(exp), func() { c.close(CloseTokenExpired, "token expired") })
}

// refresh asks Hooks.Refresh to extend the connection. A refusal closes
// it; a failure keeps it and asks again after Hooks.RefreshRetry, so that
// a backend outage does not disconnect everyone at once.
func (e *expiry) refresh(c *conn) {
	n := c.node
	var reply *RefreshReply
	v, perr := n.callHook(hookRefresh, c.id, func(ctx context.Context) (err error) {
		reply, err = n.cfg.Hooks.Refresh(ctx, &RefreshEvent{Client: c.clientInfo()})
		return err
	})
	switch {
	case v == hookRefused:
		c.close(closeForRefusal(perr), perr.Message)
	case v == hookFailed, reply != nil && !reply.ExpiresAt.IsZero() && !reply.ExpiresAt.After(time.Now()):
		// Failed, or answered an expiry already past (asking again at
		// once would spin): ask again later.
		e.set(c, time.Now().Add(n.cfg.Hooks.RefreshRetry), true)
	case reply != nil:
		e.set(c, reply.ExpiresAt, true)
	default:
		e.set(c, time.Time{}, true)
	}
}

// at returns the expiry the client must refresh a token before, if one
// is set: not one the hooks extend.
func (e *expiry) at() (unix int64, ok bool) {
	e.mu.Lock()
	defer e.mu.Unlock()
	return e.unix, e.timer != nil && !e.hook
}

// hooked reports whether the hooks set the expiry (and Refresh extends
// it): a token refreshed meanwhile does not replace it.
func (e *expiry) hooked() bool {
	e.mu.Lock()
	defer e.mu.Unlock()
	return e.timer != nil && e.hook
}

// stop ends the expiry for good, as the connection ends.
func (e *expiry) stop() {
	e.mu.Lock()
	defer e.mu.Unlock()
	e.stopped = true
	e.stopLocked()
}

func (e *expiry) stopLocked() {
	if e.timer != nil {
		e.timer.Stop()
		e.timer = nil
	}
}
