// Command herald runs a Herald real-time messaging server.
//
//	herald serve [flags]    run the server (see herald help serve)
//	herald token [flags]    mint a token for development (see herald help token)
//	herald version          print the version
//	herald help [command]   print help
package main

import (
	"context"
	"fmt"
	"os"
	"os/signal"
	"syscall"
)

func main() {
	ctx, stop := signal.NotifyContext(context.Background(), syscall.SIGINT, syscall.SIGTERM)
	// After the first signal, restore the default handling, so that a second
	// Ctrl-C kills a shutdown that takes too long instead of being swallowed.
	context.AfterFunc(ctx, stop)
	err := run(ctx, os.Args[1:], os.Environ(), os.Stdout)
	stop()
	if err != nil {
		fmt.Fprintln(os.Stderr, err)
		os.Exit(1)
	}
}
