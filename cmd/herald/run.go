package main

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"io"
	"os"
)

const usage = `Herald is a real-time messaging server over WebSocket.

Usage:
  herald serve [flags]    run the server
  herald pub [flags] JSON publish to a channel through a server's HTTP API (herald help pub)
  herald token [flags]    mint a token for development (herald help token)
  herald probe [URL]      exit 0 if a server is ready: the container health check (herald help probe)
  herald version          print the version
  herald help [command]   print help (herald help serve lists every setting)
`

// run is the whole program but for the process: it takes the arguments
// (without the program name), the environment and the output stream, and
// returns instead of exiting, so that tests can run it in-process. Logs go
// to standard error.
func run(ctx context.Context, args, env []string, stdout io.Writer) error {
	return runWithReload(ctx, args, env, stdout, nil)
}

// runWithReload is run with the channel on which main delivers SIGHUP:
// `herald serve` then reloads what it can (see reload.go).
func runWithReload(ctx context.Context, args, env []string, stdout io.Writer, reload <-chan os.Signal) error {
	return executeWith(ctx, args, env, stdout, os.Stderr, reload)
}

// execute is run with the log output as a parameter, for tests that read the
// logs (the listening address, for one).
func execute(ctx context.Context, args, env []string, stdout, logOut io.Writer) error {
	return executeWith(ctx, args, env, stdout, logOut, nil)
}

func executeWith(ctx context.Context, args, env []string, stdout, logOut io.Writer, reload <-chan os.Signal) error {
	if len(args) == 0 {
		_, _ = io.WriteString(stdout, usage)
		return errors.New("no command given")
	}
	switch cmd, rest := args[0], args[1:]; cmd {
	case "serve":
		cfg, err := parseServeConfig(rest, env, stdout)
		if err != nil {
			return helpIsDone(err)
		}
		return serve(ctx, cfg, serveOptions{
			logOut: logOut,
			reload: reload,
			// A reload reads the same flags and environment again, and
			// the file as it is now: flags and variables still win.
			load: func() (Config, error) { return parseServeConfig(rest, env, io.Discard) },
		})
	case "pub":
		return helpIsDone(publish(ctx, rest, env, os.Stdin, stdout))
	case "token":
		return helpIsDone(mintToken(rest, env, stdout))
	case "probe":
		return helpIsDone(probe(ctx, rest, stdout))
	case "bench":
		// The load generator is kept out of the server binary.
		return errors.New("herald has no bench command: the load generator is its own program, herald-bench " +
			"(go run ./bench/cmd/herald-bench -h; docs/benchmarks.md)")
	case "version", "-version", "--version":
		_, err := fmt.Fprintln(stdout, "herald", versionString())
		return err
	case "help", "-h", "-help", "--help":
		return help(rest, stdout)
	default:
		return fmt.Errorf("unknown command %q; run herald help", cmd)
	}
}

// helpIsDone returns a command's error, except flag.ErrHelp: -h or --help
// printed the usage, which is success.
func helpIsDone(err error) error {
	if errors.Is(err, flag.ErrHelp) {
		return nil
	}
	return err
}

func help(topics []string, w io.Writer) error {
	if len(topics) == 0 {
		_, err := io.WriteString(w, usage)
		return err
	}
	switch topics[0] {
	case "serve":
		writeServeUsage(w)
		return nil
	case "token":
		_, err := io.WriteString(w, tokenUsage)
		return err
	case "pub":
		_, err := io.WriteString(w, pubUsage)
		return err
	case "probe":
		_, err := io.WriteString(w, probeUsage)
		return err
	case "version":
		_, err := io.WriteString(w, "Usage: herald version\n\nPrints the version, the commit, the Go version and the platform of this build\n(also: herald --version).\n")
		return err
	case "help":
		_, err := io.WriteString(w, usage)
		return err
	}
	return fmt.Errorf("no help for unknown command %q; run herald help", topics[0])
}

// newFlagSet returns the flag set of a command, with a string flag for
// each of strs. It prints nothing itself: the caller prints the error
// once, and the usage only on request (parseFlags).
func newFlagSet(command string, strs map[string]*string) *flag.FlagSet {
	fs := flag.NewFlagSet(command, flag.ContinueOnError)
	fs.SetOutput(io.Discard)
	fs.Usage = func() {}
	for name, p := range strs {
		fs.StringVar(p, name, "", "")
	}
	return fs
}

// parseFlags parses args into fs. With -h or --help it writes usage to w
// and returns flag.ErrHelp; its other errors name the command.
func parseFlags(fs *flag.FlagSet, args []string, w io.Writer, usage string) error {
	err := fs.Parse(args)
	switch {
	case errors.Is(err, flag.ErrHelp):
		_, _ = io.WriteString(w, usage)
		return err
	case err != nil:
		return fmt.Errorf("failed to parse %s arguments: %w (see herald help %s)", fs.Name(), err, fs.Name())
	}
	return nil
}
