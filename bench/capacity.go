package bench

import (
	"errors"
	"flag"
	"fmt"
	"io"
	"math"
	"path/filepath"
	"sort"
	"strings"
)

// The capacity model of docs/capacity.md: from the figures of saved runs
// (memory per idle connection, server CPU per delivery and per publication,
// CPU per connection cycle, publications with history per second through
// one broker), how many nodes and broker shards serve a number of
// connections at a traffic shape, and which resource runs out first.
//
// The model is deliberately simple: a node's CPU is the sum of its
// deliveries, the publications it receives and its connection cycles, each
// at the measured cost, spread over its cores; its memory is its idle
// connections at the measured size; the broker carries every publication
// once per shard at the measured rate of one Redis; the network carries
// every delivery's frame. Each is held to a headroom.

// capacityInputs are the measured figures the model uses, each with where
// it came from.
type capacityInputs struct {
	memPerConn      figure // bytes per idle connection
	cpuBroadcast    figure // server CPU seconds per delivery, wide fan-out at a low rate (S4)
	cpuDashboard    figure // per delivery, many channels of a few subscribers (S5)
	cpuRoomDelivery figure // per delivery in small rooms (rooms)
	cpuRoomPub      figure // per publication in small rooms, its deliveries included (rooms)
	cpuCycle        figure // per connection cycle with a JWT (churn)
	brokerPubs      figure // publications with history per second through one Redis, two nodes (history)
}

// figure is one input: its value, and where it came from (empty: an
// assumption, not measured).
type figure struct {
	v      float64
	source string
}

// shape is a traffic shape of the model.
type shape struct {
	name string
	// per connection: channels it subscribes to, messages it receives per
	// second; publications per second over the whole deployment per
	// connection; the channel's spread (how many nodes see a publication).
	describe string
	load     func(conns, nodes float64) shapeLoad
	cpu      func(in *capacityInputs) (perDelivery, perPub float64)
	history  bool
}

// shapeLoad is the deployment-wide traffic of a shape.
type shapeLoad struct {
	deliveries float64 // per second, all nodes
	pubs       float64 // publications per second, through the broker
	nodePubs   float64 // publications a node receives per second (from the broker)
	cycles     float64 // connection cycles per second, all nodes
}

// nodeSpec is the machine a node runs on, and the headroom kept.
type nodeSpec struct {
	cores, memGB, nicGbps, headroom float64
	frameBytes                      float64 // bytes on the wire per delivery
	kernelPerConn                   float64 // bytes the kernel holds per idle connection (not in RSS)
	minNodes                        float64 // at least this many (one may fail)
}

var capacityShapes = []shape{
	{
		name:     "chat rooms",
		describe: "rooms of 5, each member posts once a minute (history on, through the broker); 1% of connections reconnect per minute",
		history:  true,
		load: func(n, nodes float64) shapeLoad {
			pubs := n / 60
			return shapeLoad{deliveries: pubs * 5, pubs: pubs, nodePubs: pubs * math.Min(5, nodes) / nodes, cycles: n * 0.01 / 60}
		},
		cpu: func(in *capacityInputs) (float64, float64) {
			// rooms' CPU per publication covers the publication and its two
			// deliveries: what is left after two deliveries at the cost of
			// an unbatched one (S5's) is the publication's own cost.
			return in.cpuRoomDelivery.v, math.Max(in.cpuRoomPub.v-2*in.cpuDashboard.v, 0)
		},
	},
	{
		name:     "broadcast",
		describe: "every connection on one channel, one publication a second (live scores); 1% reconnect per minute",
		load: func(n, nodes float64) shapeLoad {
			return shapeLoad{deliveries: n, pubs: 1, nodePubs: 1, cycles: n * 0.01 / 60}
		},
		cpu: func(in *capacityInputs) (float64, float64) { return in.cpuBroadcast.v, 0 },
	},
	{
		name:     "dashboards",
		describe: "each connection watches 10 of 10,000 topics, each topic updates once a second; 1% reconnect per minute",
		load: func(n, nodes float64) shapeLoad {
			return shapeLoad{deliveries: n * 10, pubs: 10_000, nodePubs: 10_000, cycles: n * 0.01 / 60}
		},
		cpu: func(in *capacityInputs) (float64, float64) { return in.cpuDashboard.v, 0 },
	},
}

// plan is the model's answer for one shape and size.
type capacityPlan struct {
	nodes, shards               float64
	cpuNodes, memNodes, netNode float64 // nodes each resource alone would need
	bottleneck                  string
	load                        shapeLoad
	// failover is how long the other nodes take to reconnect a lost node's
	// clients, at the measured CPU per cycle on the CPU the plan leaves
	// spare (one minus the headroom, plus what the node count leaves).
	failover float64
}

// planFor sizes a deployment of conns connections of shape s on nodes of
// spec: the fewest nodes such that CPU, memory and network each stay under
// the headroom, and the broker shards for its publications.
func planFor(in *capacityInputs, s shape, spec nodeSpec, conns float64) capacityPlan {
	perDelivery, perPub := s.cpu(in)
	usableCPU := spec.cores * spec.headroom
	usableMem := spec.memGB * 1e9 * spec.headroom
	usableNet := spec.nicGbps * 1e9 / 8 * spec.headroom
	var p capacityPlan
	p.memNodes = math.Ceil(conns * (in.memPerConn.v + spec.kernelPerConn) / usableMem)
	// A node's load depends on the node count (how many nodes a
	// publication reaches): iterate from the memory bound up.
	for nodes := math.Max(math.Max(1, spec.minNodes), p.memNodes); ; nodes++ {
		l := s.load(conns, nodes)
		cpu := (l.deliveries*perDelivery+l.cycles*in.cpuCycle.v)/nodes + l.nodePubs*perPub
		net := l.deliveries / nodes * spec.frameBytes
		if cpu <= usableCPU && net <= usableNet {
			p.nodes, p.load = nodes, l
			p.cpuNodes = math.Ceil((l.deliveries*perDelivery + l.cycles*in.cpuCycle.v) / math.Max(usableCPU-l.nodePubs*perPub, 1e-9))
			p.netNode = math.Ceil(l.deliveries * spec.frameBytes / usableNet)
			break
		}
		if nodes > 1e6 {
			p.nodes, p.load = math.Inf(1), l
			break
		}
	}
	if p.nodes > 1 && !math.IsInf(p.nodes, 0) {
		perNode := conns / p.nodes
		l := s.load(conns, p.nodes)
		used := (l.deliveries*perDelivery+l.cycles*in.cpuCycle.v)/p.nodes + l.nodePubs*perPub
		spare := (p.nodes - 1) * math.Max(spec.cores-used, 0)
		p.failover = perNode * in.cpuCycle.v / math.Max(spare, 1e-9)
	}
	p.shards = 1
	if in.brokerPubs.v > 0 {
		p.shards = math.Max(1, math.Ceil(p.load.pubs/(in.brokerPubs.v*spec.headroom)))
	}
	p.bottleneck = "memory"
	switch m := math.Max(p.memNodes, math.Max(p.cpuNodes, p.netNode)); {
	case s.history && p.shards > p.nodes:
		p.bottleneck = "broker (more Redis shards than nodes)"
	case m == p.cpuNodes && p.cpuNodes > p.memNodes:
		p.bottleneck = "CPU (the kernel's socket writes, then Herald)"
	case m == p.netNode && p.netNode > p.memNodes:
		p.bottleneck = "network"
	}
	return p
}

// gatherInputs reads the figures of label's runs: medians over its runs of
// each scenario, at the best passing step.
func gatherInputs(runs []savedRun, label string) (*capacityInputs, error) {
	by := map[string][]savedRun{}
	for _, r := range runs {
		if r.plan.Label == label || (r.plan.Scenario == "history" && r.plan.Label == label+"-redis-2n") {
			by[scenarioName(r.plan)] = append(by[scenarioName(r.plan)], r)
		}
	}
	if len(by) == 0 {
		return nil, fmt.Errorf("capacity: no runs labelled %q", label)
	}
	med := func(sc string, f func(savedRun) (float64, bool)) figure {
		var v []float64
		var files []string
		for _, r := range by[sc] {
			if x, ok := f(r); ok && x > 0 {
				v = append(v, x)
				files = append(files, filepath.Base(r.path))
			}
		}
		if len(v) == 0 {
			return figure{}
		}
		return figure{v: median(v), source: fmt.Sprintf("%s, median of %d (%s)", sc, len(v), strings.Join(files, ", "))}
	}
	best := func(f func(StepResult) float64) func(savedRun) (float64, bool) {
		return func(r savedRun) (float64, bool) {
			if b := bestStep(r); b >= 0 {
				return f(r.steps[b]), true
			}
			return 0, false
		}
	}
	// CPU figures come from the busiest step that delivered everything
	// (late or not: what a delivery costs does not depend on the deadline).
	clean := func(f func(StepResult) float64) func(savedRun) (float64, bool) {
		return func(r savedRun) (float64, bool) {
			b := -1
			for i, s := range r.steps {
				if s.Lost == 0 && s.Dups == 0 && s.SubscribersCut == 0 && s.PublishErrors == 0 && s.Expected > 0 &&
					s.Subscribers == r.connect.Connections && (b < 0 || s.throughput() >= r.steps[b].throughput()) {
					b = i
				}
			}
			if b < 0 {
				return 0, false
			}
			return f(r.steps[b]), true
		}
	}
	in := &capacityInputs{}
	in.memPerConn = med("s1-19k", func(r savedRun) (float64, bool) { return r.connect.RSSPerConn, true })
	if in.memPerConn.v == 0 {
		in.memPerConn = med("s1", func(r savedRun) (float64, bool) { return r.connect.RSSPerConn, true })
	}
	perDelivery := clean(func(s StepResult) float64 { return s.CPUPerMillion / 1e6 })
	in.cpuBroadcast = med("s4", perDelivery)
	in.cpuDashboard = med("s5", perDelivery)
	in.cpuRoomDelivery = med("rooms", perDelivery)
	in.cpuRoomPub = med("rooms", clean(func(s StepResult) float64 { return s.CPUPerMillionPub / 1e6 }))
	in.cpuCycle = med("churn", best(func(s StepResult) float64 { return s.CPUPerKCycles / 1e3 }))
	in.brokerPubs = med("history", best(func(s StepResult) float64 { return s.TargetRate }))
	var missing []string
	for name, f := range map[string]figure{"memory per connection (s1)": in.memPerConn, "CPU per delivery (s4)": in.cpuBroadcast,
		"CPU per delivery (s5)": in.cpuDashboard, "CPU per room delivery and publication (rooms)": in.cpuRoomPub, "CPU per cycle (churn)": in.cpuCycle,
		"history rate through Redis (history)": in.brokerPubs} {
		if f.v == 0 {
			missing = append(missing, name)
		}
	}
	if len(missing) > 0 {
		sort.Strings(missing)
		return nil, fmt.Errorf("capacity: no usable step (nothing lost; passing, for churn and history) for %s among the runs labelled %q", strings.Join(missing, "; "), label)
	}
	return in, nil
}

// capacityMain is `herald-bench capacity`: the model from saved runs, as
// Markdown.
func capacityMain(args []string, w io.Writer) error {
	fs := flag.NewFlagSet("herald-bench capacity", flag.ContinueOnError)
	fs.SetOutput(w)
	label := fs.String("label", "herald", "the server whose runs to model")
	var spec nodeSpec
	fs.Float64Var(&spec.cores, "cores", 16, "cores per node")
	fs.Float64Var(&spec.memGB, "mem-gb", 32, "memory per node, GB")
	fs.Float64Var(&spec.nicGbps, "nic-gbps", 10, "network per node, Gbit/s")
	fs.Float64Var(&spec.headroom, "headroom", 0.6, "share of each resource the plan may use")
	fs.Float64Var(&spec.frameBytes, "frame-bytes", 250, "bytes on the wire per delivery (a 128-byte payload in its push, WebSocket and TCP/IP headers)")
	var kernelKB float64
	fs.Float64Var(&spec.minNodes, "min-nodes", 2, "at least this many nodes (so that one may fail)")
	fs.Float64Var(&kernelKB, "kernel-kb", 4, "KB the kernel holds per idle connection besides the process's RSS (socket, file, epoll entry; an assumption, not measured)")
	if err := fs.Parse(args); err != nil {
		if errors.Is(err, flag.ErrHelp) {
			return nil
		}
		return err
	}
	if fs.NArg() == 0 {
		return errors.New("capacity: give the JSON lines files of the runs (bench/suite.sh's OUTDIR/*.jsonl)")
	}
	spec.kernelPerConn = kernelKB * 1000
	if kernelKB < 0 || spec.cores <= 0 || spec.memGB <= 0 || spec.nicGbps <= 0 || spec.headroom <= 0 || spec.headroom > 1 || spec.frameBytes <= 0 {
		return errors.New("capacity: -cores, -mem-gb, -nic-gbps, -frame-bytes must be positive and -headroom in (0, 1]")
	}
	var runs []savedRun
	for _, p := range fs.Args() {
		r, err := readRun(p)
		if err != nil {
			return err
		}
		runs = append(runs, r)
	}
	in, err := gatherInputs(runs, *label)
	if err != nil {
		return err
	}
	writeCapacity(w, in, spec, *label)
	return nil
}

func writeCapacity(w io.Writer, in *capacityInputs, spec nodeSpec, label string) {
	fmt.Fprintf(w, "Inputs (%s, measured on this machine; server CPU seconds are of one of its cores):\n\n", label)
	fmt.Fprintln(w, "| input | value | from |")
	fmt.Fprintln(w, "|---|---|---|")
	row := func(name, v string, f figure) { fmt.Fprintf(w, "| %s | %s | %s |\n", name, v, f.source) }
	row("memory per idle connection", fmt.Sprintf("%.1f KB", in.memPerConn.v/1000), in.memPerConn)
	row("CPU per delivery, broadcast (wide, low rate)", fmt.Sprintf("%.2f µs", in.cpuBroadcast.v*1e6), in.cpuBroadcast)
	row("CPU per delivery, dashboards (many channels)", fmt.Sprintf("%.2f µs", in.cpuDashboard.v*1e6), in.cpuDashboard)
	row("CPU per delivery, small rooms", fmt.Sprintf("%.2f µs", in.cpuRoomDelivery.v*1e6), in.cpuRoomDelivery)
	row("CPU per publication, small rooms (2 deliveries in)", fmt.Sprintf("%.2f µs", in.cpuRoomPub.v*1e6), in.cpuRoomPub)
	row("CPU per connection cycle (dial, JWT, subscribe, close)", fmt.Sprintf("%.0f µs", in.cpuCycle.v*1e6), in.cpuCycle)
	row("publications with history per second, one Redis, two nodes", fmt.Sprintf("%.0f/s", in.brokerPubs.v), in.brokerPubs)
	fmt.Fprintf(w, "\nNodes of %.0f cores, %.0f GB and %.0f Gbit/s, each resource used to %.0f%%, at least %.0f of them; %.0f bytes on the wire per delivery; "+
		"%.1f KB of kernel memory per connection besides the measured RSS (assumed).\n\n",
		spec.cores, spec.memGB, spec.nicGbps, spec.headroom*100, spec.minNodes, spec.frameBytes, spec.kernelPerConn/1000)
	fmt.Fprintln(w, "| shape | connections | deliveries/s | publications/s | nodes | Redis shards | nodes for memory / CPU / network | first bottleneck | a node lost: its clients back in |")
	fmt.Fprintln(w, "|---|---|---|---|---|---|---|---|---|")
	for _, s := range capacityShapes {
		for _, n := range []float64{1e6, 1e7} {
			p := planFor(in, s, spec, n)
			shards := "–"
			if s.history {
				shards = fmt.Sprintf("%.0f", p.shards)
			}
			fmt.Fprintf(w, "| %s | %s | %s | %s | %.0f | %s | %.0f / %.0f / %.0f | %s | %.1f s |\n", s.name, human(n), human(p.load.deliveries), human(p.load.pubs),
				p.nodes, shards, p.memNodes, p.cpuNodes, p.netNode, p.bottleneck, p.failover)
		}
	}
	fmt.Fprintln(w)
	for _, s := range capacityShapes {
		fmt.Fprintf(w, "- %s: %s.\n", s.name, s.describe)
	}
}

// human writes 1500000 as 1.5M.
func human(v float64) string {
	switch {
	case v >= 1e6:
		return strings.TrimSuffix(fmt.Sprintf("%.1f", v/1e6), ".0") + "M"
	case v >= 1e3:
		return strings.TrimSuffix(fmt.Sprintf("%.1f", v/1e3), ".0") + "k"
	}
	return fmt.Sprintf("%.0f", v)
}
