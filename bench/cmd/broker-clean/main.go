// Command broker-clean removes what one cross-node benchmark run left in
// its broker, under the run's own prefix (herald serve --broker-prefix):
//
//	broker-clean -redis redis://127.0.0.1:6379/0 -prefix hb_1234_1   # keys PREFIX:*
//	broker-clean -nats nats://127.0.0.1:4222 -prefix hb_1234_1       # stream PREFIX_history, KV buckets PREFIX_idem, PREFIX_presence
//
// bench/suite.sh runs it after every cross-node run, so that repeated runs
// leave no streams, buckets or keys behind on a shared server. It refuses
// an empty prefix and the default "herald", and gives up after 30 s.
package main

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"os"
	"time"

	"github.com/heraldhq/herald/bench/internal/brokerclean"
)

func main() {
	redisURL := flag.String("redis", "", "Redis URL: delete the keys PREFIX:*")
	natsURL := flag.String("nats", "", "NATS URL: delete the stream PREFIX_history and the KV buckets PREFIX_idem and PREFIX_presence")
	prefix := flag.String("prefix", "", "the run's broker prefix (--broker-prefix)")
	flag.Parse()
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	var n int
	var err error
	switch {
	case *redisURL != "" && *natsURL == "":
		n, err = brokerclean.Redis(ctx, *redisURL, *prefix)
	case *natsURL != "" && *redisURL == "":
		n, err = brokerclean.NATS(ctx, *natsURL, *prefix)
	default:
		err = errors.New("give one of -redis URL or -nats URL")
	}
	if err != nil {
		fmt.Fprintln(os.Stderr, "broker-clean:", err)
		os.Exit(1)
	}
	fmt.Printf("broker-clean: removed %d under prefix %s\n", n, *prefix)
}
