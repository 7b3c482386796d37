// Package bench is Herald's load generator, the herald-bench command
// (bench/cmd/herald-bench; the server binary does not link it): it opens
// subscriber connections at a controlled rate from several loopback source
// addresses, publishes at fixed rates, in steps, or as fast as the server
// accepts, over WebSocket (herald.v1 or raw mode) or the HTTP API, and
// measures what arrives: delivered messages per second, loss and
// duplicates (every payload carries a sequence number), subscribers cut,
// end-to-end latency percentiles (every payload carries its send time),
// and, given the server's pid or /metrics, the server's RSS per connection
// and CPU seconds per million deliveries (and per million publications).
// It speaks herald.v1 or, with -proto centrifuge, the centrifuge
// baseline's JSON protocol; with -churn it measures connections instead:
// cycles of dial, connect with a JWT, subscribe and close per second, over
// TLS too. Every run is bounded in connections, steps and time, and stops
// by itself.
//
// docs/benchmarks.md has the scenarios and their figures.
package bench

import (
	"bytes"
	"context"
	"errors"
	"flag"
	"fmt"
	"io"
	"os"
	"runtime/pprof"
	"sort"
	"strings"
	"time"
)

const usage = `Usage:
  herald-bench [flags]                      run a benchmark against a server
  herald-bench plot -o OUT.svg FILE.jsonl…  plot runs saved with -json
  herald-bench summary FILE.jsonl…          medians of repeated runs, as Markdown tables
  herald-bench slow [flags]                 slow subscribers: conflate vs disconnect vs the hub
  herald-bench capacity FILE.jsonl…         the capacity model (docs/capacity.md) from a suite's runs

(from a checkout: go run ./bench/cmd/herald-bench [flags])

A run connects channels x subs subscribers (at -connect-rate, from the
-sources addresses), holds them -idle, then publishes at each rate of -rates
for -step, waits up to -drain for what is still on its way, and reports each
step: publications, deliveries/s, lost, duplicated, subscribers cut, the
share delivered within -on-time, and latency p50/p90/p99/p99.9/max (from the
time each publication was due). With -server-pid (or -metrics-url) it adds
the server's RSS per connection and CPU seconds per million deliveries.

Across nodes (several servers joined by a broker): -url takes a
comma-separated list and spreads each channel's subscribers over the nodes
in turn, -pub-url sends the publications to another node, and -server-pid
takes every node's pid (figures are sums; each node's CPU is reported per
step). Latency is end to end, from the publication's due time on the
publisher to its arrival at the subscriber, through the broker.

Scenarios (-scenario; explicit flags override their settings):
  s1  idle memory: 100 channels x 100 subscribers, no publishing, hold 20s
      (19,000 connections: -scenario s1 -subs 190)
  s2  fan-out throughput: 1 channel x 1,000 subscribers, 128-byte payloads,
      rates 25..5000/s in 5s steps, stop after four failing steps in a row
  s3  fan-out latency: 1 channel x 1,000 subscribers at 100/s for 30s
  s4  wide: 1 channel x 10,000 subscribers at 10/s for 30s
  s5  many channels: 1,000 channels x 10 subscribers, 4 publishers,
      1,000/s then 5,000/s, 15s each
  rooms    many rooms, chat-like: 9,000 channels x 2 subscribers (10,000 x 2
           does not fit the 20,000-file cap with the server's side), 4
           publishers, rates 2,000..60,000/s in 5s steps; a step passes
           only with p99 <= 100ms too; reports server CPU per million
           publications
  history  history through the broker: 100 chat:N channels (history on by
           default) x 10 subscribers, 4 publishers, rates 500..20,000/s in
           5s steps; give two nodes with -url/-pub-url (bench/suite.sh does)
  churn    connections per second: each cycle dials, connects (with a JWT
           from -jwt-secret), subscribes to one of 100 channels and closes;
           rates 100..2,000 cycles/s in 5s steps (wss:// with -ca for TLS)

Flags:
`

var scenarios = map[string]map[string]string{
	"s1": {"channels": "100", "subs": "100", "rates": "none", "idle": "20s", "label": "s1"},
	"s2": {"channels": "1", "subs": "1000", "payload": "128", "step": "5s", "stop-after-fails": "4", "label": "s2",
		"rates": "25,50,100,150,200,300,400,500,700,1000,1500,2000,3000,5000"},
	"s3": {"channels": "1", "subs": "1000", "payload": "128", "rates": "100", "step": "30s", "label": "s3"},
	"s4": {"channels": "1", "subs": "10000", "payload": "128", "rates": "10", "step": "30s", "label": "s4"},
	"s5": {"channels": "1000", "subs": "10", "payload": "128", "rates": "1000,5000", "step": "15s", "publishers": "4", "label": "s5"},
	"rooms": {"channels": "9000", "subs": "2", "payload": "128", "publishers": "4", "step": "5s", "stop-after-fails": "2", "label": "rooms",
		"max-p99": "100ms", "rates": "2000,5000,10000,15000,20000,30000,40000,60000"},
	"history": {"channels": "100", "subs": "10", "payload": "128", "publishers": "4", "step": "5s", "stop-after-fails": "2", "label": "history",
		"channel-prefix": "chat:", "rates": "500,1000,2000,5000,10000,20000"},
	"churn": {"churn": "true", "channels": "100", "rates": "100,200,500,1000,2000", "step": "5s", "stop-after-fails": "2",
		"connect-concurrency": "128", "label": "churn"},
}

// Main is herald-bench: args are the arguments after the program name.
// Reports go to stdout (a live progress line too, when stdout is a terminal); with
// -json -, JSON lines go to stdout instead of the text report. It returns
// an error if the run could not be carried out; steps that fail their
// criteria are reported, not returned as errors.
func Main(ctx context.Context, args []string, stdout io.Writer) error {
	if len(args) > 0 && args[0] == "plot" {
		return plotMain(args[1:], stdout)
	}
	if len(args) > 0 && args[0] == "summary" {
		return summaryMain(args[1:], stdout)
	}
	if len(args) > 0 && args[0] == "slow" {
		return slowMain(ctx, args[1:], stdout)
	}
	if len(args) > 0 && args[0] == "capacity" {
		return capacityMain(args[1:], stdout)
	}
	fs := flag.NewFlagSet("herald-bench", flag.ContinueOnError)
	fs.SetOutput(stdout)
	fs.Usage = func() {
		fmt.Fprint(stdout, usage)
		fs.PrintDefaults()
	}
	var (
		cfg                  Config
		scenario, rates, src string
		pids                 string
		jsonOut, svgOut      string
		progress, cpuProfile string
	)
	fs.StringVar(&scenario, "scenario", "", "preset: s1, s2, s3, s4, s5, rooms, history or churn (see above)")
	fs.StringVar(&cfg.URL, "url", "ws://127.0.0.1:8080/ws", "the server's herald.v1 WebSocket endpoint; a comma-separated list spreads each channel's subscribers over several nodes in turn")
	fs.StringVar(&cfg.RawURL, "raw-url", "", "the raw-mode endpoint, one per -url (default: -url with /raw appended)")
	fs.StringVar(&cfg.PubURL, "pub-url", "", "the publishers' herald.v1 endpoint, e.g. another node of a cluster (default: the first -url; raw publishers use it with /raw appended)")
	fs.StringVar(&cfg.APIURL, "api-url", "", "the HTTP API's publish route (default: http://HOST/api/v1/publish)")
	fs.StringVar(&cfg.APIKey, "api-key", os.Getenv("HERALD_API_KEY"), "the HTTP API key (env HERALD_API_KEY)")
	fs.BoolVar(&cfg.Churn, "churn", false, "churn: each rate is connection cycles per second (dial, connect, subscribe, close) instead of publications")
	fs.StringVar(&cfg.Protocol, "proto", ProtoHerald, "the server's protocol: herald (herald.v1: Herald, hub, naive, floor), centrifuge (the centrifuge baseline's JSON protocol) or pusher (Pusher protocol 7 at -url ws://HOST/app/KEY, with -publish api and -channel-prefix pusher-APPID:NAME; see proto_pusher.go)")
	fs.StringVar(&cfg.JWTSecret, "jwt-secret", os.Getenv("HERALD_BENCH_JWT_SECRET"), "HS256 secret (at least 32 bytes): subscribers connect with a token signed by it (env HERALD_BENCH_JWT_SECRET)")
	fs.StringVar(&cfg.CAFile, "ca", "", "PEM certificate to trust for wss:// (e.g. the suite's self-signed one)")
	fs.StringVar(&cfg.ChannelPrefix, "channel-prefix", "bench.", "channel names: PREFIX0, PREFIX1, … (chat: has history on Herald's and the centrifuge baseline's defaults)")
	fs.IntVar(&cfg.Channels, "channels", 1, "channels")
	fs.IntVar(&cfg.Subscribers, "subs", 10, "subscribers per channel")
	fs.StringVar(&cfg.SubMode, "sub-mode", SubProtocol, "subscribers speak: protocol (/ws + subscribe) or raw (/ws/raw?channel=)")
	fs.StringVar(&cfg.Reader, "reader", "", "how subscriber sockets are read: epoll (loops reading every socket; default on Linux for ws://) or goroutine (one per subscriber, through gorilla/websocket)")
	fs.StringVar(&cfg.PubMode, "publish", PubWS, "publish over: ws (herald.v1 publish commands), raw (raw-mode frames) or api (HTTP API)")
	fs.IntVar(&cfg.Publishers, "publishers", 0, "publishing connections (api: concurrent requests); default 1 (api: 4)")
	fs.IntVar(&cfg.Window, "window", 1024, "publish commands a ws publisher keeps outstanding")
	fs.StringVar(&rates, "rates", "100", "publications per second over all channels: one rate, a list of steps (100,200,500), max (as fast as accepted), or none")
	fs.DurationVar(&cfg.StepDuration, "step", 5*time.Second, "duration of each step")
	fs.IntVar(&cfg.Payload, "payload", 128, fmt.Sprintf("payload bytes (a JSON string; at least %d)", MinPayload))
	fs.DurationVar(&cfg.Drain, "drain", 5*time.Second, "longest wait after a step for deliveries still on their way")
	fs.DurationVar(&cfg.OnTime, "on-time", 100*time.Millisecond, "latency within which a delivery is on time (a step passes with >= 97% on time)")
	fs.DurationVar(&cfg.MaxP99, "max-p99", 0, "a step passes only with a latency p99 at most this (0: no bound)")
	fs.IntVar(&cfg.StopAfterFails, "stop-after-fails", 0, "stop after this many steps in a row did not pass (0: never)")
	fs.Float64Var(&cfg.ConnectRate, "connect-rate", 2000, "new connections per second")
	fs.IntVar(&cfg.ConnectConcurrency, "connect-concurrency", 64, "handshakes in flight")
	fs.StringVar(&src, "sources", "", "source addresses, e.g. 127.0.0.2-127.0.0.9 (the default for a 127.x target) or none")
	fs.DurationVar(&cfg.Idle, "idle", 0, "hold the connections this long before the steps (default 10s when there are no steps)")
	fs.StringVar(&pids, "server-pid", "", "the server's pid, for its RSS and CPU (from /proc); several comma-separated pids (the nodes of a cluster): sums, and each server's CPU per step")
	fs.StringVar(&cfg.MetricsURL, "metrics-url", "", "the server's Prometheus /metrics, for its RSS and CPU (instead of -server-pid); comma-separated for several servers")
	fs.DurationVar(&cfg.Timeout, "timeout", 0, "bound on the whole run (default: the plan's length plus a minute)")
	fs.StringVar(&cfg.Label, "label", "", "label for the reports (e.g. herald, hub, naive)")
	fs.StringVar(&jsonOut, "json", "", "write JSON lines to this file (- for stdout, instead of the text report)")
	fs.StringVar(&svgOut, "svg", "", "write an SVG plot of the steps to this file")
	fs.StringVar(&cpuProfile, "cpuprofile", "", "write the generator's own CPU profile to this file")
	fs.StringVar(&progress, "progress", "auto", "live progress line: auto (when stdout is a terminal), on, off")
	if err := fs.Parse(args); err != nil {
		if errors.Is(err, flag.ErrHelp) {
			return nil
		}
		return err
	}
	if fs.NArg() > 0 {
		return fmt.Errorf("unexpected arguments %q", fs.Args())
	}
	if scenario != "" {
		cfg.Scenario = scenario
		preset, ok := scenarios[scenario]
		if !ok {
			return fmt.Errorf("unknown scenario %q: want s1 … s5, rooms, history or churn", scenario)
		}
		set := map[string]bool{}
		fs.Visit(func(f *flag.Flag) { set[f.Name] = true })
		names := make([]string, 0, len(preset))
		for k := range preset {
			names = append(names, k)
		}
		sort.Strings(names)
		for _, k := range names {
			if !set[k] {
				if err := fs.Set(k, preset[k]); err != nil {
					return err
				}
			}
		}
	}
	var err error
	if cfg.Rates, err = ParseRates(rates); err != nil {
		return err
	}
	if cfg.Sources, err = ParseSources(src); err != nil {
		return err
	}
	if p, err := ParsePIDs(pids); err != nil {
		return err
	} else if len(p) > 0 {
		cfg.ServerPID, cfg.ServerPIDs = p[0], p[1:]
	}

	cfg.Text = stdout
	var jsonFile *os.File
	switch jsonOut {
	case "":
	case "-":
		cfg.JSON, cfg.Text = stdout, nil
	default:
		if jsonFile, err = os.Create(jsonOut); err != nil {
			return err
		}
		defer jsonFile.Close()
		cfg.JSON = jsonFile
	}
	switch progress {
	case "on":
		cfg.Progress = stdout
	case "auto":
		if isTerminal(stdout) && jsonOut != "-" {
			cfg.Progress = stdout
		}
	case "off":
	default:
		return fmt.Errorf("bad -progress %q: want auto, on or off", progress)
	}

	if cpuProfile != "" {
		f, err := os.Create(cpuProfile)
		if err != nil {
			return err
		}
		defer f.Close()
		if err := pprof.StartCPUProfile(f); err != nil {
			return err
		}
		defer pprof.StopCPUProfile()
	}
	res, runErr := Run(ctx, cfg)
	if svgOut != "" && res != nil && len(res.Steps) > 0 {
		var buf bytes.Buffer
		title := "herald-bench"
		if cfg.Label != "" {
			title += " — " + cfg.Label
		}
		if err := WriteSVG(&buf, title, []PlotRun{{Label: cfg.Label, Steps: res.Steps}}); err == nil {
			if err := os.WriteFile(svgOut, buf.Bytes(), 0o644); err != nil {
				return errors.Join(runErr, err)
			}
		}
	}
	if jsonFile != nil {
		if err := jsonFile.Close(); err != nil {
			return errors.Join(runErr, err)
		}
	}
	return runErr
}

func plotMain(args []string, stdout io.Writer) error {
	fs := flag.NewFlagSet("herald-bench plot", flag.ContinueOnError)
	fs.SetOutput(stdout)
	out := fs.String("o", "bench.svg", "output SVG file")
	title := fs.String("title", "herald-bench", "plot title")
	if err := fs.Parse(args); err != nil {
		if errors.Is(err, flag.ErrHelp) {
			return nil
		}
		return err
	}
	if fs.NArg() == 0 {
		return errors.New("plot: give the JSON lines files of one or more runs")
	}
	var runs []PlotRun
	for _, p := range fs.Args() {
		r, err := ReadSteps(p)
		if err != nil {
			return err
		}
		runs = append(runs, r)
	}
	var buf bytes.Buffer
	if err := WriteSVG(&buf, *title, runs); err != nil {
		return err
	}
	if err := os.WriteFile(*out, buf.Bytes(), 0o644); err != nil {
		return err
	}
	fmt.Fprintf(stdout, "wrote %s (%s)\n", *out, strings.Join(fs.Args(), ", "))
	return nil
}

func isTerminal(w io.Writer) bool {
	f, ok := w.(*os.File)
	if !ok {
		return false
	}
	st, err := f.Stat()
	return err == nil && st.Mode()&os.ModeCharDevice != 0
}
