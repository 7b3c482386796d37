// Package brokerclean removes what a benchmark run (or test) left in its
// broker under its own prefix: Redis keys PREFIX:*, or the NATS stream
// PREFIX_history and KV buckets PREFIX_idem and PREFIX_presence (the names
// redisbroker and natsbroker use for Options.Prefix).
package brokerclean

import (
	"context"
	"errors"
	"fmt"
	"time"

	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"
	"github.com/redis/rueidis"
)

func checkPrefix(prefix string) error {
	if prefix == "" || prefix == "herald" {
		return errors.New("brokerclean: give the run's own prefix (not empty, not the default herald)")
	}
	return nil
}

// Redis deletes the keys PREFIX:* and returns how many it deleted.
func Redis(ctx context.Context, url, prefix string) (int, error) {
	if err := checkPrefix(prefix); err != nil {
		return 0, err
	}
	opt, err := rueidis.ParseURL(url)
	if err != nil {
		return 0, err
	}
	opt.DisableCache = true
	c, err := rueidis.NewClient(opt)
	if err != nil {
		return 0, err
	}
	defer c.Close()
	n := 0
	var cursor uint64
	for {
		e, err := c.Do(ctx, c.B().Scan().Cursor(cursor).Match(prefix+":*").Count(1000).Build()).AsScanEntry()
		if err != nil {
			return n, fmt.Errorf("brokerclean: scan: %w", err)
		}
		if len(e.Elements) > 0 {
			if err := c.Do(ctx, c.B().Del().Key(e.Elements...).Build()).Error(); err != nil {
				return n, fmt.Errorf("brokerclean: del: %w", err)
			}
			n += len(e.Elements)
		}
		if cursor = e.Cursor; cursor == 0 {
			return n, nil
		}
	}
}

// NATS deletes the stream and KV buckets of prefix and returns how many of
// the three existed.
func NATS(ctx context.Context, url, prefix string) (int, error) {
	if err := checkPrefix(prefix); err != nil {
		return 0, err
	}
	nc, err := nats.Connect(url, nats.Timeout(10*time.Second))
	if err != nil {
		return 0, err
	}
	defer nc.Close()
	js, err := jetstream.New(nc)
	if err != nil {
		return 0, err
	}
	n := 0
	for _, s := range []string{prefix + "_history", "KV_" + prefix + "_idem", "KV_" + prefix + "_presence"} {
		err := js.DeleteStream(ctx, s)
		switch {
		case err == nil:
			n++
		case errors.Is(err, jetstream.ErrStreamNotFound):
		default:
			return n, fmt.Errorf("brokerclean: delete stream %s: %w", s, err)
		}
	}
	return n, nil
}
