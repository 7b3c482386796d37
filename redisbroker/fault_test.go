package redisbroker_test

import (
	"context"
	"testing"
	"time"

	"github.com/redis/rueidis"

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

// TestHistoryResetWhileLinked: a channel's keys removed while every link
// is up (deleted, evicted, a FLUSHALL) start a new epoch that no outage
// announces; the epoch each publication carries tells every node, which
// closes its subscribers with 4006 rather than deliver offsets that start
// over under the old epoch.
func TestHistoryResetWhileLinked(t *testing.T) {
	u := redisURL(t)
	t.Parallel()
	brokertest.RunHistoryReset(t, func(t *testing.T) herald.Broker { return newBroker(t, testOpts{}) },
		func(t *testing.T, _ string) { deleteKeys(t, u, prefix(t)) })
}

// TestHistoryMetaLost: a channel's position (its meta hash) lost while its
// history list is kept — evicted alone under maxmemory, or deleted — starts
// a new epoch, and the publications of the old one must go with it: kept,
// they would be read back under the new epoch, at offsets counted back from
// the new top (which start below 1).
func TestHistoryMetaLost(t *testing.T) {
	u := redisURL(t)
	t.Parallel()
	b := newBroker(t, testOpts{})
	p := prefix(t) // the broker's (a subtest's would be another)
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan struct{})
	b.Register(brokertest.NewRecorder(t))
	go func() { defer close(done); _ = b.Run(ctx) }()
	t.Cleanup(func() { cancel(); <-done })

	for _, lose := range []struct{ name, via string }{{"publish", "publish"}, {"history read", "history"}} {
		t.Run(lose.name, func(t *testing.T) {
			ch := "lost-" + lose.via
			opts := herald.PublishOptions{HistorySize: 10, HistoryTTL: time.Minute}
			publish := func(data string) herald.PublishResult {
				t.Helper()
				res, err := b.Publish(ctx, &herald.Publication{Channel: ch, Data: []byte(data)}, opts)
				if err != nil {
					t.Fatalf("publish %s: %v", data, err)
				}
				return res
			}
			old := publish(`"old-1"`)
			publish(`"old-2"`)
			delKey(t, u, p+":{"+ch+"}:m")

			var newEpoch string
			if lose.via == "history" { // the first read after the loss fixes the new epoch
				h, err := b.History(ctx, ch, herald.HistoryOptions{Limit: -1})
				if err != nil {
					t.Fatal(err)
				}
				if h.Position.Offset != 0 || h.Position.Epoch == old.Epoch || len(h.Publications) != 0 {
					t.Fatalf("history after the loss: %+v, want offset 0 in a new epoch, no publications", h)
				}
				newEpoch = h.Position.Epoch
			}
			res := publish(`"new-1"`)
			if res.Offset != 1 || res.Epoch == old.Epoch || (newEpoch != "" && res.Epoch != newEpoch) {
				t.Fatalf("publish after the loss: %+v, want offset 1 in a new epoch", res.StreamPosition)
			}
			h, err := b.History(ctx, ch, herald.HistoryOptions{Limit: -1})
			if err != nil {
				t.Fatal(err)
			}
			if h.Position != res.StreamPosition || len(h.Publications) != 1 ||
				h.Publications[0].Offset != 1 || string(h.Publications[0].Data) != `"new-1"` {
				t.Fatalf("history: %+v, want only new-1 at offset 1 in epoch %q", h, res.Epoch)
			}
		})
	}
}

// delKey deletes one key from the Redis at u.
func delKey(t *testing.T, u, key string) {
	t.Helper()
	opt, err := rueidis.ParseURL(u)
	if err != nil {
		t.Fatal(err)
	}
	opt.DisableCache = true
	c, err := rueidis.NewClient(opt)
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	if n, err := c.Do(context.Background(), c.B().Del().Key(key).Build()).AsInt64(); err != nil || n != 1 {
		t.Fatalf("DEL %s: %d, %v", key, n, err)
	}
}
