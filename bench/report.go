package bench

import (
	"encoding/json"
	"fmt"
	"io"
	"strings"
	"sync"
	"time"
)

// PlanRecord is the first JSON line of a run: what it will do.
type PlanRecord struct {
	Type        string   `json:"type"` // "plan"
	Label       string   `json:"label,omitempty"`
	Scenario    string   `json:"scenario,omitempty"`
	Protocol    string   `json:"protocol,omitempty"`
	Churn       bool     `json:"churn,omitempty"`
	TLS         bool     `json:"tls,omitempty"`
	JWT         bool     `json:"jwt,omitempty"`
	URL         string   `json:"url"`
	PubURL      string   `json:"pub_url,omitempty"` // when publishers use another endpoint than the (first) subscribers'
	Nodes       int      `json:"nodes,omitempty"`   // distinct endpoints (host:port): 2 or more is a cross-node run
	Channels    int      `json:"channels"`
	Subscribers int      `json:"subscribers_per_channel"`
	Connections int      `json:"connections"`
	SubMode     string   `json:"sub_mode"`
	Reader      string   `json:"reader"`
	PubMode     string   `json:"pub_mode"`
	Publishers  int      `json:"publishers"`
	Rates       []string `json:"rates"`
	StepSeconds float64  `json:"step_s"`
	Payload     int      `json:"payload_bytes"`
	OnTimeMs    float64  `json:"on_time_ms"`
	MaxP99Ms    float64  `json:"max_p99_ms,omitempty"`
	ConnectRate float64  `json:"connect_rate_target"`
	Sources     int      `json:"source_addresses"`
	IdleSeconds float64  `json:"idle_s"`
	TimeoutSecs float64  `json:"timeout_s"`
	ServerPID   int      `json:"server_pid,omitempty"`
	ServerPIDs  []int    `json:"server_pids,omitempty"` // with several servers
	Metrics     string   `json:"metrics_url,omitempty"`
	Started     string   `json:"started"`
}

// ConnectResult is the connect phase: rate, failures, server memory.
type ConnectResult struct {
	Type        string  `json:"type"` // "connect"
	Connections int     `json:"connections"`
	Failed      int     `json:"failed"`
	FirstError  string  `json:"first_error,omitempty"`
	Retries     int64   `json:"retries"`
	Seconds     float64 `json:"seconds"`
	RatePerSec  float64 `json:"connect_rate_per_s"`
	// Server RSS before the first connection and after the idle hold, and
	// the growth per connection.
	ServerRSSBefore int64   `json:"server_rss_before_bytes,omitempty"`
	ServerRSSAfter  int64   `json:"server_rss_after_bytes,omitempty"`
	RSSPerConn      float64 `json:"server_rss_per_conn_bytes,omitempty"`
	ServerCPU       float64 `json:"server_cpu_s,omitempty"`
	// Each server's RSS after the hold, with several servers.
	ServerRSSAfterEach []int64 `json:"server_rss_after_each_bytes,omitempty"`
	CutWhileIdle       int64   `json:"cut_while_idle"`
	// The close codes of the subscribers cut while idle (1006: no close
	// frame).
	CloseCodes map[string]int64 `json:"close_codes_while_idle,omitempty"`
}

// StepResult is one step.
type StepResult struct {
	Type            string  `json:"type"` // "step"
	Label           string  `json:"label,omitempty"`
	Step            int     `json:"step"`
	Rate            string  `json:"rate"`        // as given: a number or "max"
	TargetRate      float64 `json:"target_rate"` // publications/s; 0 for max
	Subscribers     int     `json:"subscribers"` // alive at the step's start
	StepSeconds     float64 `json:"step_s"`
	Seconds         float64 `json:"publish_s"` // until the last publication went out
	Due             int64   `json:"due"`       // deliveries due at the target rate
	DrainSeconds    float64 `json:"drain_s"`
	Target          int64   `json:"target"` // publications due at the target rate
	Published       int64   `json:"published"`
	PublishErrors   int64   `json:"publish_errors"`
	PublishError    string  `json:"publish_error,omitempty"`
	PublishedPerSec float64 `json:"published_per_s"`
	// Expected deliveries: each publication times the subscribers alive on
	// its channel at the step's start. Delivered counts first deliveries.
	Expected        int64            `json:"expected"`
	Delivered       int64            `json:"delivered"`
	DeliveredPerSec float64          `json:"delivered_per_s"`
	Lost            int64            `json:"lost"`
	Dups            int64            `json:"duplicates"`
	Reordered       int64            `json:"reordered"`
	Misrouted       int64            `json:"misrouted"`
	SubscribersCut  int64            `json:"subscribers_cut"`
	CloseCodes      map[string]int64 `json:"close_codes,omitempty"`
	OnTime          int64            `json:"on_time"`
	OnTimePct       float64          `json:"on_time_pct"` // of the deliveries due at the target rate
	Latency         Latency          `json:"latency"`
	ServerCPU       float64          `json:"server_cpu_s,omitempty"`
	CPUPerMillion   float64          `json:"server_cpu_s_per_m_deliveries,omitempty"`
	// Server CPU seconds per million publications: what a publication costs
	// the server whatever its fan-out (the many-rooms figure).
	CPUPerMillionPub float64 `json:"server_cpu_s_per_m_publications,omitempty"`
	// Churn steps (Target is the cycles due): cycles completed, failed (or
	// not started in time), the first error, per second, and server CPU
	// seconds per thousand cycles.
	Cycles        int64   `json:"cycles,omitempty"`
	CyclesFailed  int64   `json:"cycles_failed,omitempty"`
	CycleError    string  `json:"cycle_error,omitempty"`
	CyclesPerSec  float64 `json:"cycles_per_s,omitempty"`
	CPUPerKCycles float64 `json:"server_cpu_s_per_k_cycles,omitempty"`
	ServerRSS     int64   `json:"server_rss_bytes,omitempty"`
	// Each server's CPU seconds, in the order of -server-pid (or
	// -metrics-url), when there are several.
	ServerCPUEach []float64 `json:"server_cpu_each_s,omitempty"`
	GenCPU        float64   `json:"generator_cpu_s"`
	Pass          bool      `json:"pass"`
}

// SummaryRecord is the last JSON line of a run.
type SummaryRecord struct {
	Type                string  `json:"type"` // "summary"
	Label               string  `json:"label,omitempty"`
	Connections         int     `json:"connections"`
	ConnectRate         float64 `json:"connect_rate_per_s"`
	RSSPerConn          float64 `json:"server_rss_per_conn_bytes,omitempty"`
	Steps               int     `json:"steps"`
	Published           int64   `json:"published"`
	Delivered           int64   `json:"delivered"`
	Lost                int64   `json:"lost"`
	Dups                int64   `json:"duplicates"`
	Late                int64   `json:"late"`
	Malformed           int64   `json:"malformed"`
	SubscribersCut      int64   `json:"subscribers_cut"`
	BestStep            int     `json:"best_step"` // the passing step with the most deliveries/s; -1: none
	BestRate            string  `json:"best_rate,omitempty"`
	BestDeliveredPerSec float64 `json:"best_delivered_per_s,omitempty"`
	BestCPUPerMillion   float64 `json:"best_server_cpu_s_per_m_deliveries,omitempty"`
	BestP99             float64 `json:"best_p99_ms,omitempty"`
	// Churn: the best passing step's cycles per second and CPU per
	// thousand cycles.
	BestCyclesPerSec  float64 `json:"best_cycles_per_s,omitempty"`
	BestCPUPerKCycles float64 `json:"best_server_cpu_s_per_k_cycles,omitempty"`
	// The best passing step's server CPU per million publications.
	BestCPUPerMillionPub float64 `json:"best_server_cpu_s_per_m_publications,omitempty"`
	Stopped              string  `json:"stopped,omitempty"` // why the steps ended early
	Error                string  `json:"error,omitempty"`
}

// ProgressRecord is written once a second.
type ProgressRecord struct {
	Type           string  `json:"type"` // "progress"
	Seconds        float64 `json:"t_s"`
	Step           int     `json:"step"`
	Connections    int     `json:"connections"`
	Published      int64   `json:"published"`
	Delivered      int64   `json:"delivered"`
	DeliveredPerS  float64 `json:"delivered_per_s"`
	SubscribersCut int64   `json:"subscribers_cut"`
	P99            float64 `json:"step_p99_ms"`
}

func (r *runner) planRecord() PlanRecord {
	cfg := &r.cfg
	rates := make([]string, len(cfg.Rates))
	for i, rt := range cfg.Rates {
		rates[i] = rt.String()
	}
	subs, pubs := cfg.connections()
	var pubURL string
	if cfg.pubURL != cfg.subURLs[0] || len(cfg.subURLs) > 1 {
		pubURL = cfg.pubURL
	}
	var pids []int
	if all := cfg.pids(); len(all) > 1 {
		pids = all
	}
	return PlanRecord{
		Type: "plan", Label: cfg.Label, Scenario: cfg.Scenario, Protocol: cfg.Protocol, Churn: cfg.Churn, TLS: strings.HasPrefix(cfg.URL, "wss://"), JWT: cfg.JWTSecret != "", URL: cfg.URL, PubURL: pubURL, Nodes: cfg.nodes(), Channels: cfg.Channels, Subscribers: cfg.Subscribers,
		Connections: subs + pubs, SubMode: cfg.SubMode, Reader: cfg.Reader, PubMode: cfg.PubMode, Publishers: cfg.Publishers,
		Rates: rates, StepSeconds: cfg.StepDuration.Seconds(), Payload: cfg.Payload, OnTimeMs: ms(cfg.OnTime), MaxP99Ms: ms(cfg.MaxP99),
		ConnectRate: cfg.ConnectRate, Sources: len(cfg.Sources), IdleSeconds: cfg.Idle.Seconds(),
		TimeoutSecs: cfg.Timeout.Seconds(), ServerPID: cfg.ServerPID, ServerPIDs: pids, Metrics: cfg.MetricsURL,
		Started: r.base.UTC().Format(time.RFC3339),
	}
}

func ms(d time.Duration) float64 { return float64(d) / float64(time.Millisecond) }

// reporter writes the human report, the JSON lines and the progress line.
// The progress line is cleared before any other text goes to the same
// terminal.
type reporter struct {
	mu           sync.Mutex
	text, js, tt io.Writer
	lineShown    bool
}

func newReporter(cfg Config) *reporter {
	return &reporter{text: cfg.Text, js: cfg.JSON, tt: cfg.Progress}
}

func (o *reporter) clearLine() {
	if o.lineShown {
		fmt.Fprint(o.tt, "\r\x1b[K")
		o.lineShown = false
	}
}

func (o *reporter) json(v any) {
	if o.js == nil {
		return
	}
	b, err := json.Marshal(v)
	if err != nil {
		return
	}
	_, _ = o.js.Write(append(b, '\n'))
}

func (o *reporter) printf(format string, args ...any) {
	o.mu.Lock()
	defer o.mu.Unlock()
	if o.text == nil {
		return
	}
	o.clearLine()
	fmt.Fprintf(o.text, format, args...)
}

func (o *reporter) note(format string, args ...any) { o.printf("# "+format+"\n", args...) }
func (o *reporter) warn(format string, args ...any) { o.printf("warning: "+format+"\n", args...) }

func (o *reporter) plan(p *PlanRecord) {
	o.mu.Lock()
	o.json(p)
	o.mu.Unlock()
	rates := strings.Join(p.Rates, ",")
	if rates == "" {
		rates = "none (idle)"
	}
	target := p.URL
	if p.PubURL != "" {
		target = fmt.Sprintf("subscribers on %s, publishers on %s (%d nodes)", p.URL, p.PubURL, p.Nodes)
	}
	if p.Churn {
		o.printf("# %s%s: churn over %d channels, %d cycles in flight at most, cycles/s %s, step %gs, on time <= %gms, timeout %gs\n",
			labelPrefix(p.Label), target, p.Channels, p.Connections, rates, p.StepSeconds, p.OnTimeMs, p.TimeoutSecs)
		return
	}
	o.printf("# %s%s: %d channels x %d subscribers (%s, %s reader), publish %s x%d, rates/s %s, step %gs, payload %d B, on time <= %gms, timeout %gs\n",
		labelPrefix(p.Label), target, p.Channels, p.Subscribers, p.SubMode, p.Reader, p.PubMode, p.Publishers, rates, p.StepSeconds, p.Payload, p.OnTimeMs, p.TimeoutSecs)
}

func labelPrefix(l string) string {
	if l == "" {
		return ""
	}
	return "[" + l + "] "
}

func (o *reporter) connected(c *ConnectResult) {
	o.mu.Lock()
	o.json(c)
	o.mu.Unlock()
	line := fmt.Sprintf("connected %d (failed %d, retried %d) in %.1fs: %.0f conn/s", c.Connections, c.Failed, c.Retries, c.Seconds, c.RatePerSec)
	if c.ServerRSSAfter > 0 {
		line += fmt.Sprintf("; server RSS %.1f -> %.1f MiB, %.2f KB/conn", mib(c.ServerRSSBefore), mib(c.ServerRSSAfter), c.RSSPerConn/1000)
	}
	if len(c.ServerRSSAfterEach) > 1 {
		parts := make([]string, len(c.ServerRSSAfterEach))
		for i, r := range c.ServerRSSAfterEach {
			parts[i] = fmt.Sprintf("%.1f", mib(r))
		}
		line += " (sum over servers: " + strings.Join(parts, " + ") + " MiB)"
	}
	if c.CutWhileIdle > 0 {
		line += fmt.Sprintf("; %d cut while idle (close codes %v)", c.CutWhileIdle, c.CloseCodes)
	}
	if c.FirstError != "" {
		line += "; first error: " + c.FirstError
	}
	o.printf("%s\n", line)
}

func mib(b int64) float64 { return float64(b) / (1 << 20) }

const stepHeader = "step  rate/s   published  deliv/s    lost  dup  cut  ontime%   p50ms   p90ms   p99ms  p99.9ms   maxms  cpu/M  gen-cpu  pass\n"

func (o *reporter) step(s *StepResult) {
	o.mu.Lock()
	o.json(s)
	o.mu.Unlock()
	if s.TargetRate > 0 && s.Target > 0 && s.Expected == 0 && (s.Cycles > 0 || s.CyclesFailed > 0) {
		o.churnStep(s)
		return
	}
	if s.Step == 0 {
		o.printf("%s", stepHeader)
	}
	cpu := "    -"
	if s.ServerCPU > 0 {
		cpu = fmt.Sprintf("%5.2f", s.CPUPerMillion)
	}
	pass := "ok"
	if !s.Pass {
		pass = "FAIL"
	}
	o.printf("%4d %7s %11d %8.0f %7d %4d %4d %8.2f %7.2f %7.2f %7.2f %8.2f %7.1f  %s  %6.2fs  %s\n",
		s.Step, s.Rate, s.Published, s.DeliveredPerSec, s.Lost, s.Dups, s.SubscribersCut, s.OnTimePct,
		s.Latency.P50, s.Latency.P90, s.Latency.P99, s.Latency.P999, s.Latency.Max, cpu, s.GenCPU, pass)
	if len(s.ServerCPUEach) > 1 {
		parts := make([]string, len(s.ServerCPUEach))
		for i, c := range s.ServerCPUEach {
			parts[i] = fmt.Sprintf("%.2fs", c)
		}
		o.printf("     server CPU per server (in the order of -server-pid or -metrics-url): %s\n", strings.Join(parts, ", "))
	}
	if s.PublishError != "" {
		o.printf("     publish errors: %d, first: %s\n", s.PublishErrors, s.PublishError)
	}
	if len(s.CloseCodes) > 0 {
		o.printf("     close codes of cut subscribers: %v\n", s.CloseCodes)
	}
}

const churnHeader = "step  cycles/s    due   done  failed  ontime%   p50ms   p90ms   p99ms   maxms  cpu/k  gen-cpu  pass\n"

// churnStep prints a churn step (the JSON line is written by step).
func (o *reporter) churnStep(s *StepResult) {
	if s.Step == 0 {
		o.printf("%s", churnHeader)
	}
	cpu := "    -"
	if s.ServerCPU > 0 {
		cpu = fmt.Sprintf("%5.3f", s.CPUPerKCycles)
	}
	pass := "ok"
	if !s.Pass {
		pass = "FAIL"
	}
	o.printf("%4d %9s %6d %6d %7d %8.2f %7.2f %7.2f %7.2f %7.1f  %s  %6.2fs  %s\n",
		s.Step, s.Rate, s.Target, s.Cycles, s.CyclesFailed, s.OnTimePct,
		s.Latency.P50, s.Latency.P90, s.Latency.P99, s.Latency.Max, cpu, s.GenCPU, pass)
	if s.CycleError != "" {
		o.printf("     first failure: %s\n", s.CycleError)
	}
}

func (o *reporter) progress(p *ProgressRecord) {
	o.mu.Lock()
	defer o.mu.Unlock()
	o.json(p)
	if o.tt == nil {
		return
	}
	step := "connect"
	if p.Step >= 0 {
		step = fmt.Sprintf("step %d", p.Step)
	}
	fmt.Fprintf(o.tt, "\r\x1b[K%6.1fs %s: conns %d, published %d, delivered %d (%.0f/s), cut %d, p99 %.2fms",
		p.Seconds, step, p.Connections, p.Published, p.Delivered, p.DeliveredPerS, p.SubscribersCut, p.P99)
	o.lineShown = true
}

func (o *reporter) summary(s *SummaryRecord) {
	o.mu.Lock()
	o.json(s)
	o.mu.Unlock()
	if s.Connections == 0 && s.Delivered == 0 && s.BestCyclesPerSec > 0 {
		line := fmt.Sprintf("summary (churn): best passing step %d (rate %s/s): %.0f cycles/s, p99 %.2fms", s.BestStep, s.BestRate, s.BestCyclesPerSec, s.BestP99)
		if s.BestCPUPerKCycles > 0 {
			line += fmt.Sprintf(", %.3f server CPU s per thousand cycles", s.BestCPUPerKCycles)
		}
		if s.Stopped != "" {
			line += "; stopped: " + s.Stopped
		}
		o.printf("%s\n", line)
		return
	}
	line := fmt.Sprintf("summary: %d connections at %.0f/s", s.Connections, s.ConnectRate)
	if s.RSSPerConn != 0 {
		line += fmt.Sprintf(", server %.2f KB RSS/conn", s.RSSPerConn/1000)
	}
	if s.Steps > 0 {
		line += fmt.Sprintf("; published %d, delivered %d, lost %d, dup %d, late %d, cut %d", s.Published, s.Delivered, s.Lost, s.Dups, s.Late, s.SubscribersCut)
		if s.BestStep >= 0 {
			line += fmt.Sprintf("; best passing step %d (rate %s/s): %.0f deliveries/s, p99 %.2fms", s.BestStep, s.BestRate, s.BestDeliveredPerSec, s.BestP99)
			if s.BestCPUPerMillion > 0 {
				line += fmt.Sprintf(", %.2f server CPU s per million", s.BestCPUPerMillion)
			}
		} else {
			line += "; no step passed"
		}
	}
	if s.Stopped != "" {
		line += "; stopped: " + s.Stopped
	}
	if s.Error != "" {
		line += "; error: " + s.Error
	}
	o.printf("%s\n", line)
}

// startProgress writes a progress record once a second until stopped.
func (r *runner) startProgress() (stop func()) {
	if r.out.js == nil && r.out.tt == nil {
		return func() {}
	}
	done := make(chan struct{})
	finished := make(chan struct{})
	go func() {
		defer close(finished)
		t := time.NewTicker(time.Second)
		defer t.Stop()
		var lastDelivered int64
		last := time.Now()
		for {
			select {
			case <-done:
				return
			case <-t.C:
			}
			var delivered int64
			for _, st := range r.steps {
				delivered += st.unique.Load()
			}
			now := time.Now()
			p := ProgressRecord{
				Type: "progress", Seconds: time.Since(r.base).Seconds(), Step: int(r.cur.Load()),
				Published: r.published.Load(), Delivered: delivered, SubscribersCut: r.cut.Load(),
				DeliveredPerS: float64(delivered-lastDelivered) / now.Sub(last).Seconds(),
			}
			lastDelivered, last = delivered, now
			if p.Step >= 0 {
				p.P99 = summarize(r.steps[p.Step].merged()).P99
			}
			p.Connections = int(r.live.Load())
			r.out.progress(&p)
		}
	}()
	return func() {
		close(done)
		<-finished
		r.out.mu.Lock()
		if r.out.tt != nil {
			r.out.clearLine()
		}
		r.out.mu.Unlock()
	}
}
