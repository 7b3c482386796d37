package redisbroker_test

import (
	"testing"

	"github.com/heraldhq/herald"
	"github.com/heraldhq/herald/brokertest"
	"github.com/heraldhq/herald/internal/testserver"
	"github.com/heraldhq/herald/redisbroker"
)

// brokerAt is a broker on the Redis at addr, with t's key prefix.
func brokerAt(t *testing.T, addr string) herald.Broker {
	t.Helper()
	b, err := redisbroker.New(redisbroker.Options{URL: "redis://" + addr + "/0", Prefix: prefix(t), Logger: logger(t, false)})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(b.Close)
	return b
}

// TestRestartEmpty: a Redis without persistence, killed and started again,
// comes back empty; every node's subscribers learn that the history was
// reset (recovered:false, epoch_changed).
func TestRestartEmpty(t *testing.T) {
	redisURL(t)
	t.Parallel()
	srv := testserver.Redis(t, false)
	brokertest.RunRestart(t, func(t *testing.T) herald.Broker { return brokerAt(t, srv.Addr()) }, srv, false)
}

// TestRestartKeepsData: a Redis with an fsynced append-only file comes back
// with its data; clients recover across the restart.
func TestRestartKeepsData(t *testing.T) {
	redisURL(t)
	t.Parallel()
	srv := testserver.Redis(t, true)
	brokertest.RunRestart(t, func(t *testing.T) herald.Broker { return brokerAt(t, srv.Addr()) }, srv, true)
}

// TestDeadLink: a link to Redis that stays open and carries nothing is
// noticed by the PING heartbeat within seconds.
func TestDeadLink(t *testing.T) {
	redisURL(t)
	t.Parallel()
	srv := testserver.Redis(t, false)
	brokertest.RunDeadLink(t, brokerAt, srv.Addr())
}
