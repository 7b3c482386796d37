// Command herald-bench runs the load generator until it is wired into the
// herald binary as `herald bench`: herald-bench [flags] is herald bench
// [flags] (see bench.Main).
package main

import (
	"context"
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
	if err != nil {
		fmt.Fprintln(os.Stderr, "herald bench:", err)
		os.Exit(1)
	}
}
