package bench

import (
	"bytes"
	"context"
	"encoding/json"
	"math"
	"os"
	"path/filepath"
	"strings"
	"testing"
)

// writeRun saves a run with one passing step as JSON lines.
func writeRun(t *testing.T, dir, name string, plan PlanRecord, conn ConnectResult, step StepResult) string {
	t.Helper()
	var b bytes.Buffer
	enc := json.NewEncoder(&b)
	plan.Type, conn.Type, step.Type, step.Pass = "plan", "connect", "step", true
	step.Subscribers = conn.Connections
	if !plan.Churn && step.Expected == 0 {
		step.Expected, step.Delivered = 1, 1
	}
	_ = enc.Encode(plan)
	_ = enc.Encode(conn)
	if step.Rate != "" {
		_ = enc.Encode(step)
	}
	_ = enc.Encode(SummaryRecord{Type: "summary", Label: plan.Label})
	path := filepath.Join(dir, name)
	if err := os.WriteFile(path, b.Bytes(), 0o644); err != nil {
		t.Fatal(err)
	}
	return path
}

// The model reads each input from its scenario's runs and sizes every
// shape; more connections never need fewer nodes, and a missing scenario
// is named.
func TestCapacity(t *testing.T) {
	dir := t.TempDir()
	h := PlanRecord{Label: "herald"}
	with := func(p PlanRecord, sc string, conns int) PlanRecord { p.Scenario, p.Connections = sc, conns; return p }
	files := []string{
		writeRun(t, dir, "s1-19k.jsonl", with(h, "s1", 19000), ConnectResult{Connections: 19000, RSSPerConn: 5000}, StepResult{}),
		writeRun(t, dir, "s4.jsonl", with(h, "s4", 10001), ConnectResult{Connections: 10000}, StepResult{Rate: "10", TargetRate: 10, DeliveredPerSec: 1e5, CPUPerMillion: 4}),
		writeRun(t, dir, "s5.jsonl", with(h, "s5", 10004), ConnectResult{Connections: 10000}, StepResult{Rate: "5000", TargetRate: 5000, DeliveredPerSec: 5e4, CPUPerMillion: 5}),
		writeRun(t, dir, "rooms.jsonl", with(h, "rooms", 18004), ConnectResult{Connections: 18000},
			StepResult{Rate: "40000", TargetRate: 40000, DeliveredPerSec: 8e4, CPUPerMillion: 12, CPUPerMillionPub: 24}),
		writeRun(t, dir, "churn.jsonl", PlanRecord{Label: "herald", Scenario: "churn", Churn: true, Connections: 128}, ConnectResult{},
			StepResult{Rate: "1000", TargetRate: 1000, Cycles: 5000, CyclesPerSec: 1000, CPUPerKCycles: 0.9}),
		writeRun(t, dir, "history.jsonl", PlanRecord{Label: "herald-redis-2n", Scenario: "history", Connections: 1004, Nodes: 2}, ConnectResult{Connections: 1000},
			StepResult{Rate: "5000", TargetRate: 5000, DeliveredPerSec: 5e4, CPUPerMillion: 20}),
	}
	var out bytes.Buffer
	if err := Main(context.Background(), append([]string{"capacity"}, files...), &out); err != nil {
		t.Fatal(err)
	}
	s := out.String()
	for _, want := range []string{
		"| memory per idle connection | 5.0 KB | s1-19k, median of 1 (s1-19k.jsonl) |",
		"| CPU per connection cycle (dial, JWT, subscribe, close) | 900 µs |",
		"| publications with history per second, one Redis, two nodes | 5000/s |",
		"| chat rooms | 10M | 833.3k | 166.7k |",
		"| broadcast | 1M | 1M | 1 |",
	} {
		if !strings.Contains(s, want) {
			t.Errorf("capacity output lacks %q:\n%s", want, s)
		}
	}

	in, err := gatherInputs(mustRead(t, files), "herald")
	if err != nil {
		t.Fatal(err)
	}
	spec := nodeSpec{cores: 16, memGB: 32, nicGbps: 10, headroom: 0.6, frameBytes: 250, kernelPerConn: 4000, minNodes: 2}
	for _, sh := range capacityShapes {
		a, b := planFor(in, sh, spec, 1e6), planFor(in, sh, spec, 1e7)
		if a.nodes < 2 || b.nodes < a.nodes || a.failover <= 0 || math.IsInf(b.nodes, 0) || b.shards < a.shards {
			t.Errorf("%s: 1M %+v, 10M %+v", sh.name, a, b)
		}
	}
	// Chat rooms at 10M: 166,667 publications/s over 5,000/s per Redis at
	// 60% is 56 shards.
	if p := planFor(in, capacityShapes[0], spec, 1e7); p.shards != 56 || !strings.HasPrefix(p.bottleneck, "broker") {
		t.Errorf("chat rooms at 10M: %v shards (want 56), bottleneck %q", p.shards, p.bottleneck)
	}
	// Memory binds when connections are large and traffic is nil.
	tiny := spec
	tiny.memGB = 1
	if p := planFor(in, capacityShapes[1], tiny, 1e6); p.bottleneck != "memory" || p.nodes != p.memNodes || p.nodes != 15 { // 1M × 9 KB over 0.6 GB
		t.Errorf("1 GB nodes: %+v", p)
	}

	out.Reset()
	err = Main(context.Background(), append([]string{"capacity"}, files[:3]...), &out)
	if err == nil || !strings.Contains(err.Error(), "churn") || !strings.Contains(err.Error(), "rooms") {
		t.Errorf("missing scenarios: %v", err)
	}
}

func mustRead(t *testing.T, files []string) []savedRun {
	t.Helper()
	var runs []savedRun
	for _, f := range files {
		r, err := readRun(f)
		if err != nil {
			t.Fatal(err)
		}
		runs = append(runs, r)
	}
	return runs
}

// summary groups churn runs apart from fan-out ones, TLS apart from plain,
// and gives their best cycles per second.
func TestSummaryChurn(t *testing.T) {
	dir := t.TempDir()
	churn := func(name, label string, tls bool, rate float64) string {
		return writeRun(t, dir, name, PlanRecord{Label: label, Scenario: "churn", Churn: true, TLS: tls, Connections: 128}, ConnectResult{},
			StepResult{Rate: "x", TargetRate: rate, Target: int64(rate), Cycles: int64(rate), CyclesPerSec: rate, CPUPerKCycles: 1})
	}
	files := []string{churn("a.jsonl", "herald", false, 1000), churn("b.jsonl", "herald", true, 500), churn("c.jsonl", "herald", false, 2000)}
	var out bytes.Buffer
	if err := Main(context.Background(), append([]string{"summary"}, files...), &out); err != nil {
		t.Fatal(err)
	}
	for _, want := range []string{"| churn | herald | 2 | 1500 (1000, 2000) | 1.000 (1.000, 1.000) |", "| churn-tls | herald | 1 | 500 | 1.000 |"} {
		if !strings.Contains(out.String(), want) {
			t.Errorf("summary lacks %q:\n%s", want, out.String())
		}
	}
}
