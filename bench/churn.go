package bench

import (
	"context"
	"crypto/tls"
	"crypto/x509"
	"errors"
	"fmt"
	"math"
	"os"
	"strconv"
	"sync"
	"sync/atomic"
	"time"

	"github.com/HdrHistogram/hdrhistogram-go"
	"github.com/gorilla/websocket"

	"github.com/heraldhq/herald/bench/internal/benchjwt"
)

// The churn scenario: connections that come and go. Each cycle dials
// (TLS too for wss://), connects with a JWT when a secret is given,
// subscribes to one of the plan's channels, waits for the subscribe reply,
// and closes (a close frame, then the socket). A step starts cycles at its
// rate for its duration, each at its due time, with at most
// ConnectConcurrency in flight; a cycle's latency is measured from its due
// time (a generator held up by a slow server shows it as latency), and the
// step passes when every cycle due was started, none failed, and at least
// 97% finished within OnTime.

// churnTokens is how many distinct users the generator mints tokens for
// (once, before the steps): every cycle's server verifies a signature, the
// generator does not sign one per cycle.
const churnTokens = 1024

// churnState is a churn step's counters, shared by its cycles.
type churnState struct {
	mu     sync.Mutex
	hist   *hdrhistogram.Histogram
	done   atomic.Int64
	failed atomic.Int64
	onTime atomic.Int64
	err    atomic.Pointer[string]
}

// prepareChurn mints the tokens and sets up TLS for wss:// targets.
func (r *runner) prepareChurn() ([]string, error) {
	cfg := &r.cfg
	if cfg.CAFile != "" {
		pem, err := os.ReadFile(cfg.CAFile)
		if err != nil {
			return nil, fmt.Errorf("failed to read -ca: %w", err)
		}
		pool := x509.NewCertPool()
		if !pool.AppendCertsFromPEM(pem) {
			return nil, fmt.Errorf("no certificate in %s", cfg.CAFile)
		}
		r.d.setTLS(&tls.Config{RootCAs: pool, MinVersion: tls.VersionTLS12})
	}
	if cfg.JWTSecret == "" {
		return nil, nil
	}
	tokens := make([]string, churnTokens)
	for i := range tokens {
		t, err := benchjwt.Mint([]byte(cfg.JWTSecret), "user"+strconv.Itoa(i), cfg.Timeout+time.Hour)
		if err != nil {
			return nil, err
		}
		tokens[i] = t
	}
	return tokens, nil
}

// runChurnStep runs one churn step at rate cycles per second.
func (r *runner) runChurnStep(ctx context.Context, i int, rate Rate, tokens []string) StepResult {
	cfg := &r.cfg
	res := StepResult{Type: "step", Step: i, Rate: rate.String(), Label: cfg.Label, TargetRate: rate.PerSecond}
	st := &churnState{hist: newHist()}
	srvBefore, serr := r.probe.sample(ctx)
	genBefore := selfCPU()
	start := time.Now()
	dur := cfg.StepDuration
	target := int64(math.Round(rate.PerSecond * dur.Seconds()))
	interval := time.Duration(float64(time.Second) / rate.PerSecond)
	// Cycles not started by the step's end plus a second are not started.
	sctx, cancel := context.WithDeadline(ctx, start.Add(dur+time.Second))
	sem := make(chan struct{}, cfg.ConnectConcurrency)
	var wg sync.WaitGroup
	var started int64
	for k := range target {
		due := start.Add(time.Duration(k) * interval)
		if d := time.Until(due); d > 0 {
			t := time.NewTimer(d)
			select {
			case <-t.C:
			case <-sctx.Done():
				t.Stop()
			}
		}
		select {
		case sem <- struct{}{}:
		case <-sctx.Done():
		}
		if sctx.Err() != nil {
			break
		}
		started++
		wg.Add(1)
		go func() {
			defer wg.Done()
			defer func() { <-sem }()
			r.churnCycle(ctx, int(k), due, tokens, st)
		}()
	}
	cancel()
	res.Seconds = time.Since(start).Seconds()
	wg.Wait() // every cycle is bounded by its own deadline
	res.DrainSeconds = time.Since(start).Seconds() - res.Seconds

	res.StepSeconds = dur.Seconds()
	res.Target = target
	res.Cycles = st.done.Load()
	res.CyclesFailed = st.failed.Load() + (target - started)
	if e := st.err.Load(); e != nil {
		res.CycleError = *e
	} else if started < target {
		res.CycleError = fmt.Sprintf("%d cycles not started in time (%d in flight at most)", target-started, cfg.ConnectConcurrency)
	}
	res.CyclesPerSec = float64(res.Cycles) / dur.Seconds()
	res.OnTime = st.onTime.Load()
	if target > 0 {
		res.OnTimePct = 100 * float64(res.OnTime) / float64(target)
	}
	res.Latency = summarize(st.hist)
	res.GenCPU = selfCPU() - genBefore
	if srvAfter, err := r.probe.sample(ctx); serr == nil && err == nil && srvBefore.ok && srvAfter.ok {
		res.ServerCPU = srvAfter.cpuSec - srvBefore.cpuSec
		res.ServerRSS = srvAfter.rss
		for k := range srvAfter.cpuEach {
			res.ServerCPUEach = append(res.ServerCPUEach, srvAfter.cpuEach[k]-srvBefore.cpuEach[k])
		}
		if res.Cycles > 0 {
			res.CPUPerKCycles = res.ServerCPU / float64(res.Cycles) * 1000
		}
	}
	res.Pass = target > 0 && res.CyclesFailed == 0 && res.Cycles == target && res.OnTimePct >= 97
	return res
}

// churnCycle runs one cycle: dial, connect, subscribe, close.
func (r *runner) churnCycle(ctx context.Context, k int, due time.Time, tokens []string, st *churnState) {
	cfg := &r.cfg
	cctx, cancel := context.WithTimeout(ctx, 10*time.Second)
	defer cancel()
	err := func() error {
		u := cfg.subURLs[k%len(cfg.subURLs)]
		ws, _, err := r.d.dial(cctx, u, cfg.Protocol == ProtoHerald)
		if err != nil {
			return err
		}
		defer ws.Close()
		deadline, _ := cctx.Deadline()
		_ = ws.SetReadDeadline(deadline)
		_ = ws.SetWriteDeadline(deadline)
		token := ""
		if len(tokens) > 0 {
			token = tokens[k%len(tokens)]
		}
		if c := connectCommand(cfg.Protocol, token); c != nil {
			if err := ws.WriteMessage(websocket.TextMessage, c); err != nil {
				return err
			}
		}
		if err := ws.WriteMessage(websocket.TextMessage, subscribeCommand(cfg.Protocol, r.names[k%len(r.names)], token)); err != nil {
			return err
		}
		for {
			_, msg, err := ws.ReadMessage()
			if err != nil {
				return fmt.Errorf("waiting for the subscribe reply: %w", err)
			}
			if done, refused := subscribeOutcome(msg); refused {
				return fmt.Errorf("refused: %s", msg)
			} else if done {
				break
			}
		}
		_ = ws.WriteMessage(websocket.CloseMessage, websocket.FormatCloseMessage(websocket.CloseNormalClosure, ""))
		return nil
	}()
	if err != nil {
		if ctx.Err() == nil || !errors.Is(err, context.Canceled) {
			st.failed.Add(1)
			s := err.Error()
			st.err.CompareAndSwap(nil, &s)
		}
		return
	}
	lat := time.Since(due)
	st.done.Add(1)
	if lat <= cfg.OnTime {
		st.onTime.Add(1)
	}
	st.mu.Lock()
	_ = st.hist.RecordValue(max(lat.Microseconds(), 1))
	st.mu.Unlock()
}
