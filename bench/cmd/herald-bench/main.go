// Command herald-bench is Herald's load generator (package bench), a
// program of its own so that the server binary does not carry it:
//
//	go run ./bench/cmd/herald-bench -scenario s3 -url ws://127.0.0.1:8080/ws -server-pid PID
//	go run ./bench/cmd/herald-bench summary OUTDIR/*.jsonl
//
// herald-bench -h lists its flags and scenarios; docs/benchmarks.md has
// the figures, and bench/suite.sh runs the whole suite.
package main

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"os"
	"os/signal"
	"syscall"

	"github.com/heraldhq/herald/bench"
)

func main() {
	ctx, stop := signal.NotifyContext(context.Background(), syscall.SIGINT, syscall.SIGTERM)
	err := bench.Main(ctx, os.Args[1:], os.Stdout)
	stop()
	if errors.Is(err, flag.ErrHelp) {
		return
	}
	if err != nil {
		fmt.Fprintln(os.Stderr, "herald-bench:", err)
		os.Exit(1)
	}
}
