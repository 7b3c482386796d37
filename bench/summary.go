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
	"time"
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
		return run, fmt.Errorf("%s: no plan record: not a herald-bench -json file", path)
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
	fs := flag.NewFlagSet("herald-bench summary", flag.ContinueOnError)
	fs.SetOutput(w)
	ref := fs.String("ref", "herald-1n", "label of the single-node runs that cross-node runs are compared with (else: herald)")
	crossOnly := fs.Bool("cross-only", false, "print only the cross-node table")
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
		k := fmt.Sprintf("%s %06d|%s", scenarioName(r.plan), r.plan.Connections, r.plan.Label)
		if _, ok := groups[k]; !ok {
			keys = append(keys, k)
		}
		groups[k] = append(groups[k], r)
	}
	sort.Strings(keys)
	if *crossOnly {
		return crossTable(w, groups, slices.DeleteFunc(keys, isHistory), *ref)
	}
	var churn []string
	keys = slices.DeleteFunc(keys, func(k string) bool {
		if groups[k][0].plan.Churn {
			churn = append(churn, k)
			return true
		}
		return false
	})
	fmt.Fprintln(w, "| scenario | server | runs | connect/s | RSS/conn KB | best passing rate/s | deliveries/s there | CPU s/M there | CPU s/M publications there |")
	fmt.Fprintln(w, "|---|---|---|---|---|---|---|---|---|")
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
		fmt.Fprintf(w, "| %s (%d×%d) | %s | %d | %s | %s | %s | %s | %s | %s |\n",
			scenarioName(p), p.Channels, p.Subscribers, p.Label, len(runs),
			medianOf(runs, func(r savedRun) (float64, bool) { return r.connect.RatePerSec, r.connect.RatePerSec > 0 }, "%.0f"),
			medianOf(runs, func(r savedRun) (float64, bool) { return r.connect.RSSPerConn / 1000, r.connect.RSSPerConn != 0 }, "%.1f"),
			medianOf(runs, rate, "%.0f"),
			medianOf(runs, best(func(s StepResult) float64 { return s.DeliveredPerSec }), "%.0f"),
			medianOf(runs, best(func(s StepResult) float64 { return s.CPUPerMillion }), "%.2f"),
			medianOf(runs, best(func(s StepResult) float64 { return s.CPUPerMillionPub }), "%.2f"))
	}
	fmt.Fprintln(w)
	churnTable(w, groups, churn)
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
			fmt.Fprintf(w, "| %s | %s | %s | %d/%d | %s | %s | %s | %s | %s | %s | %s | %s | %s | %s |\n",
				scenarioName(p), p.Label, rate, passed, ran,
				medianOf(runs, stepAt(i, func(s StepResult) float64 { return s.DeliveredPerSec }), "%.0f"),
				medianOf(runs, stepAt(i, func(s StepResult) float64 { return float64(s.Lost) }), "%.0f"),
				medianOf(runs, stepAt(i, func(s StepResult) float64 { return float64(s.SubscribersCut) }), "%.0f"),
				medianOf(runs, stepAt(i, func(s StepResult) float64 { return s.OnTimePct }), "%.1f"),
				medianOf(runs, stepAt(i, func(s StepResult) float64 { return s.Latency.P50 }), "%.1f"),
				medianOf(runs, stepAt(i, func(s StepResult) float64 { return s.Latency.P90 }), "%.1f"),
				medianOf(runs, stepAt(i, func(s StepResult) float64 { return s.Latency.P99 }), "%.1f"),
				medianOf(runs, stepAt(i, func(s StepResult) float64 { return s.Latency.P999 }), "%.1f"),
				medianOf(runs, stepAt(i, func(s StepResult) float64 { return s.Latency.Max }), "%.0f"),
				medianOf(runs, stepAt(i, func(s StepResult) float64 { return s.CPUPerMillion }), "%.2f"))
		}
	}
	return crossTable(w, groups, slices.DeleteFunc(keys, isHistory), *ref)
}

// isHistory reports whether a group key is the history scenario's, whose
// cross-node runs are compared by rate, not with a single-node p99.
func isHistory(k string) bool { return strings.HasPrefix(k, "history ") }

// churnTable prints, for the churn groups, the best passing rate of
// connection cycles and each step's figures (medians over the runs, with
// every run's value).
func churnTable(w io.Writer, groups map[string][]savedRun, keys []string) {
	if len(keys) == 0 {
		return
	}
	fmt.Fprintln(w, "| scenario | server | runs | best passing cycles/s | CPU s per 1,000 cycles there | p99 ms there |")
	fmt.Fprintln(w, "|---|---|---|---|---|---|")
	for _, k := range keys {
		runs := groups[k]
		best := func(f func(StepResult) float64) func(savedRun) (float64, bool) {
			return func(r savedRun) (float64, bool) {
				if b := bestStep(r); b >= 0 {
					return f(r.steps[b]), true
				}
				return 0, len(r.steps) > 0
			}
		}
		fmt.Fprintf(w, "| %s | %s | %d | %s | %s | %s |\n", scenarioName(runs[0].plan), runs[0].plan.Label, len(runs),
			medianOf(runs, best(func(s StepResult) float64 { return s.CyclesPerSec }), "%.0f"),
			medianOf(runs, best(func(s StepResult) float64 { return s.CPUPerKCycles }), "%.3f"),
			medianOf(runs, best(func(s StepResult) float64 { return s.Latency.P99 }), "%.1f"))
	}
	fmt.Fprintln(w)
	fmt.Fprintln(w, "| scenario | server | cycles/s | runs passed | done | failed | on time % | p50 ms | p99 ms | CPU s per 1,000 |")
	fmt.Fprintln(w, "|---|---|---|---|---|---|---|---|---|---|")
	for _, k := range keys {
		runs := groups[k]
		n := 0
		for _, r := range runs {
			n = max(n, len(r.steps))
		}
		for i := range n {
			var rate string
			passed, ran := 0, 0
			for _, r := range runs {
				if i < len(r.steps) {
					rate, ran = r.steps[i].Rate, ran+1
					if r.steps[i].Pass {
						passed++
					}
				}
			}
			fmt.Fprintf(w, "| %s | %s | %s | %d/%d | %s | %s | %s | %s | %s | %s |\n", scenarioName(runs[0].plan), runs[0].plan.Label, rate, passed, ran,
				medianOf(runs, stepAt(i, func(s StepResult) float64 { return float64(s.Cycles) }), "%.0f"),
				medianOf(runs, stepAt(i, func(s StepResult) float64 { return float64(s.CyclesFailed) }), "%.0f"),
				medianOf(runs, stepAt(i, func(s StepResult) float64 { return s.OnTimePct }), "%.1f"),
				medianOf(runs, stepAt(i, func(s StepResult) float64 { return s.Latency.P50 }), "%.1f"),
				medianOf(runs, stepAt(i, func(s StepResult) float64 { return s.Latency.P99 }), "%.1f"),
				medianOf(runs, stepAt(i, func(s StepResult) float64 { return s.CPUPerKCycles }), "%.3f"))
		}
	}
	fmt.Fprintln(w)
}

// crossTable prints, for every cross-node group (runs whose plan names two
// or more endpoints), each step's p99 next to the p99 of the same step in
// the single-node reference run of the same pass, and their ratio: the
// reference is the run labelled ref (else "herald") of the same scenario
// and size, on one node, that started last before the cross-node run (the
// suite runs it just before). It prints nothing when there is no
// cross-node group.
func crossTable(w io.Writer, groups map[string][]savedRun, keys []string, ref string) error {
	var cross []string
	for _, k := range keys {
		if groups[k][0].plan.Nodes >= 2 {
			cross = append(cross, k)
		}
	}
	if len(cross) == 0 {
		return nil
	}
	fmt.Fprintln(w)
	fmt.Fprintln(w, "| scenario | cross-node | single node | rate/s | cross-node runs passed | deliveries/s | lost | p99 cross-node ms | p99 single node ms | p99 ratio |")
	fmt.Fprintln(w, "|---|---|---|---|---|---|---|---|---|---|")
	for _, k := range cross {
		runs := groups[k]
		p := runs[0].plan
		refs, refLabel := referenceRuns(groups, keys, p, ref)
		if refLabel == "" {
			fmt.Fprintf(w, "| %s | %s | (no single-node run labelled %s or herald) | | | | | | | |\n", scenarioName(p), p.Label, ref)
			continue
		}
		pairs := make([]*savedRun, len(runs))
		for i := range runs {
			pairs[i] = pairRun(runs[i], refs)
		}
		n := 0
		for _, r := range runs {
			n = max(n, len(r.steps))
		}
		for i := range n {
			var rate string
			passed, ran := 0, 0
			var crossP99, refP99, ratios, delivered, lost []float64
			for j, r := range runs {
				if i >= len(r.steps) {
					continue
				}
				s := r.steps[i]
				rate = s.Rate
				ran++
				if s.Pass && s.Subscribers == r.connect.Connections {
					passed++
				}
				crossP99 = append(crossP99, s.Latency.P99)
				delivered = append(delivered, s.DeliveredPerSec)
				lost = append(lost, float64(s.Lost))
				if rr := pairs[j]; rr != nil && i < len(rr.steps) && rr.steps[i].Rate == s.Rate {
					refP99 = append(refP99, rr.steps[i].Latency.P99)
					if q := rr.steps[i].Latency.P99; q > 0 {
						ratios = append(ratios, s.Latency.P99/q)
					}
				}
			}
			if ran == 0 {
				continue
			}
			fmt.Fprintf(w, "| %s | %s | %s | %s | %d/%d | %s | %s | %s | %s | %s |\n",
				scenarioName(p), p.Label, refLabel, rate, passed, ran,
				medianValues(delivered, "%.0f"), medianValues(lost, "%.0f"),
				medianValues(crossP99, "%.1f"), medianValues(refP99, "%.1f"), medianValues(ratios, "%.2f"))
		}
	}
	return nil
}

// referenceRuns are the single-node runs of p's scenario and size labelled
// ref, else "herald", and the label found ("" if none).
func referenceRuns(groups map[string][]savedRun, keys []string, p PlanRecord, ref string) ([]savedRun, string) {
	for _, label := range []string{ref, "herald"} {
		var out []savedRun
		for _, k := range keys {
			g := groups[k]
			q := g[0].plan
			if q.Label == label && q.Nodes <= 1 && scenarioName(q) == scenarioName(p) && q.Connections == p.Connections {
				out = append(out, g...)
			}
		}
		if len(out) > 0 {
			return out, label
		}
	}
	return nil, ""
}

// pairRun is the reference run of r's pass: the one that started last
// before r (else the first after it).
func pairRun(r savedRun, refs []savedRun) *savedRun {
	at, err := time.Parse(time.RFC3339, r.plan.Started)
	if err != nil {
		return nil
	}
	var best *savedRun
	var bestAt time.Time
	for i := range refs {
		t, err := time.Parse(time.RFC3339, refs[i].plan.Started)
		if err != nil {
			continue
		}
		switch {
		case best == nil:
		case !t.After(at) && (bestAt.After(at) || t.After(bestAt)):
		case t.After(at) && bestAt.After(at) && t.Before(bestAt):
		default:
			continue
		}
		best, bestAt = &refs[i], t
	}
	return best
}

// medianValues formats the median of v with every value after it, as
// medianOf does.
func medianValues(v []float64, format string) string {
	if len(v) == 0 {
		return "–"
	}
	m := fmt.Sprintf(format, median(v))
	if len(v) == 1 {
		return m
	}
	parts := make([]string, len(v))
	for i, x := range v {
		parts[i] = fmt.Sprintf(format, x)
	}
	return m + " (" + strings.Join(parts, ", ") + ")"
}

// bestStep is the passing step with the most deliveries per second, among
// steps that still had every subscriber that connected (-1: none).
func bestStep(r savedRun) int {
	best := -1
	for i, s := range r.steps {
		if s.Pass && s.Subscribers == r.connect.Connections && (best < 0 || s.throughput() >= r.steps[best].throughput()) {
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
	if p.Churn && p.TLS {
		s += "-tls"
	}
	return s
}

// stepAt reads f of a run's i-th step, for medianOf; a run that stopped
// before step i has no value there.
func stepAt(i int, f func(StepResult) float64) func(savedRun) (float64, bool) {
	return func(r savedRun) (float64, bool) {
		if i >= len(r.steps) {
			return 0, false
		}
		return f(r.steps[i]), true
	}
}
