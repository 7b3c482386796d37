package client

import (
	"context"
	"crypto/rand"
	"encoding/json"
	"errors"
	"fmt"
	"sync"
	"time"

	"github.com/heraldhq/herald/protocol"
)

// Retries. A request is retried, never more than Options.RetryTimeout after
// it was made and never past its ctx, when its outcome says that trying
// again is safe and may succeed:
//
//   - rate_limited: the server did nothing. Every request is retried, after
//     Options.RetryBackoff and the client's pace (see pacer).
//   - unavailable, or a connection lost before the reply: the outcome is
//     unknown. Only a publish with retries on is retried — with the same
//     idempotency key, so that it happens at most once — after
//     RetryBackoff, or after the reconnect.
//
// Everything else (a reply that says no, ErrTimeout, ErrClosed) ends the
// request at once.

// errRetryTimeout is the cause of a request's end when Options.RetryTimeout
// passed while it was being retried. It matches context.DeadlineExceeded.
var errRetryTimeout = fmt.Errorf("herald client: retried for Options.RetryTimeout without success: %w", context.DeadlineExceeded)

// pacer spaces the client's commands once the server has refused one with
// rate_limited, so that the client settles just under the server's message
// rate instead of being closed for flooding (4007, for a client that keeps
// sending at over twice the rate).
//
// Every rate_limited reply (and a 4007 close) doubles the gap between
// sends, from RetryBackoff.Min up to RetryBackoff.Max, and pushes the next
// send a full gap away; every other reply shortens it by an eighth. At the
// server's rate this settles where about one send in six is refused (ln 2
// per refusal against ln 8/7 per success): the client sends at about 1.2
// times the rate, far from the 2 that closes it. Below pacerOff the pacer
// turns off. That is far below any interval a server is likely to enforce:
// turning off near the server's interval would let the next burst (the
// resubscribes after a reconnect, say) go out unpaced and be closed again.
// The price: once limited, a burst of requests goes out one gap apart
// (200 ms at first, with the default RetryBackoff) until enough replies
// succeed — some 40 of them to get from 200 ms down to pacerOff. Unlimited,
// the pacer costs an uncontended lock per request and per reply.
//
// The server cannot be asked its rate, so the first refusals are the
// client's only measure. A server whose burst is too small to absorb them
// (a burst of 1 or 2 and sends well over the rate) may still close with
// 4007; the client then reconnects after its backoff, keeping its pace.
//
// Safe for concurrent use.
type pacer struct {
	min, max time.Duration

	mu   sync.Mutex
	gap  time.Duration // between two sends; 0: not pacing
	next time.Time     // the earliest time of the next send
}

// wait takes the next send slot and waits for it, or until ctx ends.
func (p *pacer) wait(ctx context.Context) error {
	p.mu.Lock()
	if p.gap == 0 {
		p.mu.Unlock()
		return cause(ctx)
	}
	now := time.Now()
	at := p.next
	if at.Before(now) {
		at = now
	}
	p.next = at.Add(p.gap)
	p.mu.Unlock()
	return sleep(ctx, at.Sub(now))
}

// refused records a rate_limited reply or a 4007 close.
func (p *pacer) refused() {
	p.mu.Lock()
	defer p.mu.Unlock()
	p.gap = min(max(2*p.gap, p.min), p.max)
	if next := time.Now().Add(p.gap); next.After(p.next) {
		p.next = next
	}
}

// passed records a reply that was not rate_limited.
func (p *pacer) passed() {
	p.mu.Lock()
	defer p.mu.Unlock()
	if p.gap > 0 {
		p.gap -= p.gap / 8
		if p.gap < pacerOff {
			p.gap = 0
		}
	}
}

// pacerOff is the gap below which the pacer stops pacing: a thousand
// sends a second.
const pacerOff = time.Millisecond

// sleep waits for d, or until ctx ends (then its cause).
func sleep(ctx context.Context, d time.Duration) error {
	if d <= 0 {
		return cause(ctx)
	}
	t := time.NewTimer(d)
	defer t.Stop()
	select {
	case <-ctx.Done():
		return context.Cause(ctx)
	case <-t.C:
		return nil
	}
}

// cause is nil while ctx runs, then why it ended.
func cause(ctx context.Context) error {
	if ctx.Err() == nil {
		return nil
	}
	return context.Cause(ctx)
}

// retryBudget bounds a request's retries by Options.RetryTimeout from the
// call. The bounded context is made at the first retry, so that a request
// answered at once costs no timer.
type retryBudget struct {
	ctx      context.Context
	deadline time.Time
	cancel   context.CancelFunc
}

func (c *Client) retryBudget(ctx context.Context) retryBudget {
	return retryBudget{ctx: ctx, deadline: time.Now().Add(c.opts.RetryTimeout)}
}

// retrying returns the context of the retries: the call's, ended at
// the deadline with errRetryTimeout.
func (b *retryBudget) retrying() context.Context {
	if b.cancel == nil {
		b.ctx, b.cancel = context.WithDeadlineCause(b.ctx, b.deadline, errRetryTimeout)
	}
	return b.ctx
}

// stop releases the retries' timer.
func (b *retryBudget) stop() {
	if b.cancel != nil {
		b.cancel()
	}
}

// pause waits before attempt n of a request (from 0): RetryBackoff's delay
// for the retries (exponential, with full jitter), then the pace.
func (c *Client) pause(ctx context.Context, n int) error {
	if n > 0 {
		if err := sleep(ctx, c.opts.RetryBackoff.delay(n-1)); err != nil {
			return err
		}
	}
	return c.pace.wait(ctx)
}

// gaveUp wraps the last attempt's error with why retrying stopped.
func gaveUp(last, why error) error {
	if last == nil {
		return why
	}
	return fmt.Errorf("%w; gave up retrying: %w", last, why)
}

func isCode(err error, code protocol.Code) bool {
	var e *Error
	return errors.As(err, &e) && e.Code == code
}

func rateLimited(r protocol.Reply) bool {
	return r.Error != nil && r.Error.Code == protocol.CodeRateLimited
}

// lostConnection reports an attempt whose connection was lost before its
// reply (or that found none), as opposed to the client being closed.
func lostConnection(err error) bool {
	return errors.Is(err, ErrDisconnected) && !errors.Is(err, ErrClosed)
}

// do sends a command and returns its reply's result, retrying after
// rate_limited, and, with unknownOutcome, after unavailable and a lost
// connection (waiting for the reconnect; also when there is no connection
// yet but the client is reconnecting). attempts counts the sends.
func (c *Client) do(ctx context.Context, base protocol.Command, payload []byte, binary, unknownOutcome bool) (raw json.RawMessage, attempts int, err error) {
	budget := c.retryBudget(ctx)
	defer budget.stop()
	var (
		last error
		lost *session // the session whose loss the last attempt saw
	)
	for n := 0; ; n++ {
		if n > 0 {
			budget.retrying()
		}
		if err := c.pause(budget.ctx, n); err != nil {
			return nil, attempts, gaveUp(last, err)
		}
		s, err := c.session()
		if unknownOutcome && ((err == nil && s == lost) || lostConnection(err)) {
			// No connection (yet), or still the one just lost: wait for
			// the reconnect, within RetryTimeout.
			s, err = c.awaitLive(budget.retrying(), lost)
		}
		if err != nil {
			return nil, attempts, gaveUp(last, err)
		}
		attempts++
		raw, err = c.callOn(budget.ctx, s, &command{Command: base}, payload, binary)
		switch {
		case err == nil:
			return raw, attempts, nil
		case isCode(err, protocol.CodeRateLimited),
			unknownOutcome && isCode(err, protocol.CodeUnavailable):
			lost = nil
		case unknownOutcome && lostConnection(err):
			lost = s
		default:
			return nil, attempts, err
		}
		last = err
		c.log.Debug("retrying", "cmd", base.Cmd, "channel", base.Channel, "attempt", attempts, "err", err)
	}
}

// newIdempotencyKey returns a random key: 128 bits from crypto/rand, in
// 26 characters of base32.
func newIdempotencyKey() string { return rand.Text() }
