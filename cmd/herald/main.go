// Command herald runs a Herald real-time messaging server.
//
//	herald serve [flags]    run the server (see herald help serve)
//	herald pub [flags] JSON publish through a server's HTTP API (see herald help pub)
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
	// SIGHUP reloads what `herald serve` can change while running (log
	// level, API key, admin password, TLS certificate, limits, origins,
	// namespaces) and reports the rest.
	// Without this, SIGHUP would kill the process.
	hup := make(chan os.Signal, 1)
	signal.Notify(hup, syscall.SIGHUP)
	err := runWithReload(ctx, os.Args[1:], os.Environ(), os.Stdout, hup)
	signal.Stop(hup)
	stop()
	if err != nil {
		fmt.Fprintln(os.Stderr, err)
		os.Exit(1)
	}
}
