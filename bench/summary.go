package bench

import (
	"bufio"
	"encoding/json"
	"errors"
	"flag"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"slices"
	"sort"
	"strconv"
	"strings"
)

// savedRun is one run read back from its JSON lines.
type savedRun struct {
	path    string
	plan    PlanRecord
	connect ConnectResult
	steps   []StepResult
	summary SummaryRecord
}

func readRun(path string) (savedRun, error) {
	f, err := os.Open(path)
	if err != nil {
		return savedRun{}, err
	}
	defer f.Close()
	run := savedRun{path: path}
	sc := bufio.NewScanner(f)
	sc.Buffer(make([]byte, 64<<10), 4<<20)
	for sc.Scan() {
		var head struct{ Type string }
		if json.Unmarshal(sc.Bytes(), &head) != nil {
			continue
		}
		var err error
		switch head.Type {
		case "plan":
			err = json.Unmarshal(sc.Bytes(), &run.plan)
		case "connect":
			err = json.Unmarshal(sc.Bytes(), &run.connect)
		case "step":
			var s StepResult
			err = json.Unmarshal(sc.Bytes(), &s)
			run.steps = append(run.steps, s)
		case "summary":
			err = json.Unmarshal(sc.Bytes(), &run.summary)
		}
		if err != nil {
			return run, fmt.Errorf("%s: %w", path, err)
		}
	}
	if run.plan.Type == "" {
		return run, fmt.Errorf("%s: no plan record: not a herald bench -json file", path)
	}
	return run, sc.Err()
}

func median(v []float64) float64 {
	if len(v) == 0 {
		return 0
	}
	s := slices.Clone(v)
	sort.Float64s(s)
	if len(s)%2 == 1 {
		return s[len(s)/2]
	}
	return (s[len(s)/2-1] + s[len(s)/2]) / 2
}

// medianOf formats the median of f over runs, with every value after it:
// "10.5 (10.2, 10.5, 11.0)".
func medianOf(runs []savedRun, f func(savedRun) (float64, bool), format string) string {
	var v []float64
	for _, r := range runs {
		if x, ok := f(r); ok {
			v = append(v, x)
		}
	}
	if len(v) == 0 {
		return "–"
	}
	parts := make([]string, len(v))
	for i, x := range v {
		parts[i] = fmt.Sprintf(format, x)
	}
	m := fmt.Sprintf(format, median(v))
	if len(v) == 1 {
		return m
	}
	return m + " (" + strings.Join(parts, ", ") + ")"
}

// summaryMain prints, for runs grouped by scenario, size and label, the
// median of each key figure over the group's runs, followed by every run's
// value, as Markdown tables.
func summaryMain(args []string, w io.Writer) error {
	fs := flag.NewFlagSet("herald bench summary", flag.ContinueOnError)
	fs.SetOutput(w)
	if err := fs.Parse(args); err != nil {
		if errors.Is(err, flag.ErrHelp) {
			return nil
		}
		return err
	}
	if fs.NArg() == 0 {
		return errors.New("summary: give the JSON lines files of the runs")
	}
	groups := map[string][]savedRun{}
	var keys []string
	for _, p := range fs.Args() {
		r, err := readRun(p)
		if err != nil {
			return err
		}
		if r.plan.Scenario == "" {
			// Runs made without -scenario: suite.sh names files SCENARIO-SERVER-N.
			if b, _, ok := strings.Cut(filepath.Base(p), "-"); ok && len(b) == 2 && b[0] == 's' {
				r.plan.Scenario = b
			}
		}
		sc := r.plan.Scenario
		if sc == "" {
			sc = "custom"
		}
		k := fmt.Sprintf("%s %06d|%s", sc, r.plan.Connections, r.plan.Label)
		if _, ok := groups[k]; !ok {
			keys = append(keys, k)
		}
		groups[k] = append(groups[k], r)
	}
	sort.Strings(keys)
	fmt.Fprintln(w, "| scenario | server | runs | connect/s | RSS/conn KB | best passing rate/s | deliveries/s there | CPU s/M there |")
	fmt.Fprintln(w, "|---|---|---|---|---|---|---|---|")
	for _, k := range keys {
		runs := groups[k]
		p := runs[0].plan
		best := func(f func(StepResult) float64) func(savedRun) (float64, bool) {
			return func(r savedRun) (float64, bool) {
				b := bestStep(r)
				if b < 0 {
					return 0, len(r.steps) > 0 // a stepped run with no passing step counts as 0
				}
				return f(r.steps[b]), true
			}
		}
		rate := best(func(s StepResult) float64 { return s.TargetRate })
		fmt.Fprintf(w, "| %s (%d×%d) | %s | %d | %s | %s | %s | %s | %s |\n",
			scenarioName(p), p.Channels, p.Subscribers, p.Label, len(runs),
			medianOf(runs, func(r savedRun) (float64, bool) { return r.connect.RatePerSec, r.connect.RatePerSec > 0 }, "%.0f"),
			medianOf(runs, func(r savedRun) (float64, bool) { return r.connect.RSSPerConn / 1000, r.connect.RSSPerConn != 0 }, "%.1f"),
			medianOf(runs, rate, "%.0f"),
			medianOf(runs, best(func(s StepResult) float64 { return s.DeliveredPerSec }), "%.0f"),
			medianOf(runs, best(func(s StepResult) float64 { return s.CPUPerMillion }), "%.2f"))
	}
	fmt.Fprintln(w)
	fmt.Fprintln(w, "| scenario | server | rate/s | runs passed | deliveries/s | lost | cut | on time % | p50 ms | p90 ms | p99 ms | p99.9 ms | max ms | CPU s/M |")
	fmt.Fprintln(w, "|---|---|---|---|---|---|---|---|---|---|---|---|---|---|")
	for _, k := range keys {
		runs := groups[k]
		p := runs[0].plan
		n := 0
		for _, r := range runs {
			n = max(n, len(r.steps))
		}
		for i := range n {
			var rate string
			passed, ran := 0, 0
			for _, r := range runs {
				if i < len(r.steps) {
					rate = r.steps[i].Rate
					ran++
					if r.steps[i].Pass && r.steps[i].Subscribers == r.connect.Connections {
						passed++
					}
				}
			}
			step := func(f func(StepResult) float64) func(savedRun) (float64, bool) {
				return func(r savedRun) (float64, bool) {
					if i >= len(r.steps) {
						return 0, false
					}
					return f(r.steps[i]), true
				}
			}
			fmt.Fprintf(w, "| %s | %s | %s | %d/%d | %s | %s | %s | %s | %s | %s | %s | %s | %s | %s |\n",
				scenarioName(p), p.Label, rate, passed, ran,
				medianOf(runs, step(func(s StepResult) float64 { return s.DeliveredPerSec }), "%.0f"),
				medianOf(runs, step(func(s StepResult) float64 { return float64(s.Lost) }), "%.0f"),
				medianOf(runs, step(func(s StepResult) float64 { return float64(s.SubscribersCut) }), "%.0f"),
				medianOf(runs, step(func(s StepResult) float64 { return s.OnTimePct }), "%.1f"),
				medianOf(runs, step(func(s StepResult) float64 { return s.Latency.P50 }), "%.1f"),
				medianOf(runs, step(func(s StepResult) float64 { return s.Latency.P90 }), "%.1f"),
				medianOf(runs, step(func(s StepResult) float64 { return s.Latency.P99 }), "%.1f"),
				medianOf(runs, step(func(s StepResult) float64 { return s.Latency.P999 }), "%.1f"),
				medianOf(runs, step(func(s StepResult) float64 { return s.Latency.Max }), "%.0f"),
				medianOf(runs, step(func(s StepResult) float64 { return s.CPUPerMillion }), "%.2f"))
		}
	}
	return nil
}

// bestStep is the passing step with the most deliveries per second, among
// steps that still had every subscriber that connected (-1: none).
func bestStep(r savedRun) int {
	best := -1
	for i, s := range r.steps {
		if s.Pass && s.Subscribers == r.connect.Connections && (best < 0 || s.DeliveredPerSec >= r.steps[best].DeliveredPerSec) {
			best = i
		}
	}
	return best
}

func scenarioName(p PlanRecord) string {
	s := p.Scenario
	if s == "" {
		s = "custom"
	}
	if p.Scenario == "s1" && p.Connections != 10000 {
		s += "-" + strconv.Itoa(p.Connections/1000) + "k"
	}
	return s
}
