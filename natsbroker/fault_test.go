package natsbroker_test

import (
	"context"
	"testing"
	"time"

	"github.com/nats-io/nats.go/jetstream"

	"github.com/heraldhq/herald"
	"github.com/heraldhq/herald/brokertest"
	"github.com/heraldhq/herald/internal/testserver"
	"github.com/heraldhq/herald/natsbroker"
)

// brokerAt is a broker on the NATS server at addr, with t's prefix, its
// stream and buckets on file so that a restart can keep them.
func brokerAt(t *testing.T, addr string) herald.Broker {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	b, err := natsbroker.New(ctx, natsbroker.Options{
		URL:     "nats://" + addr,
		Prefix:  prefix(t),
		Storage: jetstream.FileStorage,
		Logger:  logger(t, false),
	})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(b.Close)
	return b
}

// TestRestartEmpty: a NATS server killed and started on an empty store has
// no stream or buckets; the brokers set them up again by themselves, fail
// Ready until then, and the subscribers learn that the history was reset.
func TestRestartEmpty(t *testing.T) {
	natsURL(t)
	t.Parallel()
	srv := testserver.NATS(t)
	brokertest.RunRestart(t, func(t *testing.T) herald.Broker { return brokerAt(t, srv.Addr()) }, srv, false)
}

// TestRestartKeepsData: started again on its store, the server keeps the
// history; clients recover across the restart.
func TestRestartKeepsData(t *testing.T) {
	natsURL(t)
	t.Parallel()
	srv := testserver.NATS(t)
	brokertest.RunRestart(t, func(t *testing.T) herald.Broker { return brokerAt(t, srv.Addr()) }, srv, true)
}

// TestDeadLink: a link to NATS that stays open and carries nothing is
// noticed by the client's pings within seconds (nats.go's default took
// minutes).
func TestDeadLink(t *testing.T) {
	natsURL(t)
	t.Parallel()
	srv := testserver.NATS(t)
	brokertest.RunDeadLink(t, brokerAt, srv.Addr())
}
