package herald

import (
	"context"
	"errors"
	"math/rand/v2"
	"time"
)

// ErrDraining is what Ready returns once Drain or Shutdown has begun.
var ErrDraining = errors.New("herald: node draining")

// HealthChecker is implemented by brokers that can lose their backend
// (Redis, NATS). Healthy reports the broker's last known state without I/O;
// Ready returns its error.
type HealthChecker interface {
	Healthy() error
}

// Ready reports whether the node should get new connections: not once it
// drains or shuts down, and not while a broker that implements
// HealthChecker is unhealthy. Serve it as a readiness probe.
func (n *Node) Ready(ctx context.Context) error {
	if n.isClosing() {
		return ErrDraining
	}
	if hc, ok := n.broker.(HealthChecker); ok {
		return hc.Healthy()
	}
	return nil
}

// Drain prepares a node to stop without a reconnect storm: it refuses new
// connections (503) and fails Ready at once, then closes the existing
// connections with 1012 (service restart: reconnect, to another node)
// spread over window — each at a random time in its own slice of the
// window, so the closes are uniform with jitter and no two clients are
// told at the same instant by design. It returns when every connection has
// been told, or ctx is done. Call Shutdown afterwards.
func (n *Node) Drain(ctx context.Context, window time.Duration) error {
	n.mu.Lock()
	n.closing, n.draining = true, true
	n.mu.Unlock()
	var conns []*conn
	n.forEachConn(func(c *conn) { conns = append(conns, c) })
	rand.Shuffle(len(conns), func(i, j int) { conns[i], conns[j] = conns[j], conns[i] })
	n.log.Info("draining", "connections", len(conns), "window", window.String())
	start := time.Now()
	slice := window / time.Duration(max(len(conns), 1))
	t := time.NewTimer(0)
	defer t.Stop()
	<-t.C
	for i, c := range conns {
		at := start.Add(slice*time.Duration(i) + rand.N(slice+1))
		t.Reset(time.Until(at))
		select {
		case <-ctx.Done():
			return ctx.Err()
		case <-t.C:
		}
		c.close(CloseServiceRestart, "server restarting, reconnect")
	}
	return nil
}
