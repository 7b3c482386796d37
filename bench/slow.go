package bench

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"flag"
	"fmt"
	"io"
	"net"
	"os"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	hdrhistogram "github.com/HdrHistogram/hdrhistogram-go"
	"github.com/gorilla/websocket"
)

const slowUsage = `Usage:
  herald-bench slow [flags]

Slow subscribers under the overflow policies (issue 19): one channel, -subs
subscribers of which -slow-fraction read at a -slow-rate-divisor-th of the
publication rate through a 4 KB socket receive buffer (a phone on a poor
network); a publisher sends -rate publications/s over -keys conflation keys
for -duration. The same load runs, in one invocation, against each target
given — Herald with a conflate namespace (-conflate), Herald with a
disconnect one (-disconnect), the hub baseline (-hub-url) — once with the
slow subscribers and once without, and reports per phase: the fast
subscribers' latency p50/p99 (publication to arrival), the slow ones'
staleness p50/p99 (the age of each value when it arrives: the newest value
of its key they hold from then on), subscribers cut, and the server's peak
RSS (with -server-pid / -hub-pid).

Flags:
`

// SlowConfig is one slow-subscriber benchmark.
type SlowConfig struct {
	Targets      []SlowTarget
	Subscribers  int
	SlowFraction float64
	SlowDivisor  float64
	Keys         int
	Rate         float64
	Duration     time.Duration
	Payload      int // padding bytes in each publication
	Text, JSON   io.Writer
}

// SlowTarget is one server and channel to run the load against.
type SlowTarget struct {
	Name    string // conflate, disconnect, hub
	URL     string // herald.v1 WebSocket endpoint
	Channel string
	PID     int // for the peak RSS; 0: not measured
}

// SlowPhase is what one phase measured.
type SlowPhase struct {
	Type        string  `json:"type"` // "slow_phase"
	Target      string  `json:"target"`
	WithSlow    bool    `json:"with_slow"`
	Subscribers int     `json:"subscribers"`
	Slow        int     `json:"slow"`
	Published   int64   `json:"published"`
	FastDeliv   int64   `json:"fast_deliveries"`
	SlowDeliv   int64   `json:"slow_deliveries"`
	FastP50ms   float64 `json:"fast_p50_ms"`
	FastP99ms   float64 `json:"fast_p99_ms"`
	StaleP50ms  float64 `json:"slow_staleness_p50_ms,omitempty"`
	StaleP99ms  float64 `json:"slow_staleness_p99_ms,omitempty"`
	FastCut     int64   `json:"fast_cut"`
	SlowCut     int64   `json:"slow_cut"`
	PeakRSSMB   float64 `json:"peak_rss_mb,omitempty"`
	FastMissing int64   `json:"fast_missing"`     // publications a fast subscriber did not get
	CutBy       string  `json:"cut_by,omitempty"` // how the first subscriber cut was cut
	// PublisherCut: the server closed the publisher's connection (the hub
	// drops any client whose send buffer is full, replies included).
	PublisherCut string `json:"publisher_cut,omitempty"`
}

func slowMain(ctx context.Context, args []string, stdout io.Writer) error {
	fs := flag.NewFlagSet("herald-bench slow", flag.ContinueOnError)
	fs.SetOutput(stdout)
	fs.Usage = func() { fmt.Fprint(stdout, slowUsage); fs.PrintDefaults() }
	cfg := SlowConfig{Text: stdout}
	var conflate, disconnect, hub, jsonOut string
	var heraldPID, hubPID int
	fs.StringVar(&conflate, "conflate", "", "Herald target with a conflate namespace: URL#CHANNEL, e.g. ws://127.0.0.1:8080/ws#px:ticks")
	fs.StringVar(&disconnect, "disconnect", "", "Herald target with a disconnect namespace: URL#CHANNEL")
	fs.StringVar(&hub, "hub-url", "", "hub baseline endpoint, e.g. ws://127.0.0.1:9000/ws")
	fs.IntVar(&heraldPID, "server-pid", 0, "Herald's pid, for its peak RSS")
	fs.IntVar(&hubPID, "hub-pid", 0, "the hub's pid, for its peak RSS")
	fs.IntVar(&cfg.Subscribers, "subs", 1000, "subscribers per phase")
	fs.Float64Var(&cfg.SlowFraction, "slow-fraction", 0.1, "share of the subscribers that read slowly")
	fs.Float64Var(&cfg.SlowDivisor, "slow-rate-divisor", 10, "a slow subscriber reads at most rate/divisor messages per second")
	fs.IntVar(&cfg.Keys, "keys", 100, "conflation keys (publication i has key i mod keys)")
	fs.Float64Var(&cfg.Rate, "rate", 5000, "publications per second")
	fs.DurationVar(&cfg.Duration, "duration", 10*time.Second, "publishing time per phase")
	fs.IntVar(&cfg.Payload, "payload", 64, "padding bytes per publication")
	fs.StringVar(&jsonOut, "json", "", "write one JSON object per phase to this file (- for stdout)")
	if err := fs.Parse(args); err != nil {
		return err
	}
	for _, t := range []struct{ name, spec string }{{"conflate", conflate}, {"disconnect", disconnect}} {
		if t.spec == "" {
			continue
		}
		u, ch, ok := strings.Cut(t.spec, "#")
		if !ok || ch == "" {
			return fmt.Errorf("-%s %q: want URL#CHANNEL", t.name, t.spec)
		}
		cfg.Targets = append(cfg.Targets, SlowTarget{Name: t.name, URL: u, Channel: ch, PID: heraldPID})
	}
	if hub != "" {
		cfg.Targets = append(cfg.Targets, SlowTarget{Name: "hub", URL: hub, Channel: "ticks", PID: hubPID})
	}
	if len(cfg.Targets) == 0 {
		return errors.New("no target: give -conflate, -disconnect and/or -hub-url")
	}
	if cfg.Subscribers <= 0 || cfg.Subscribers > 10000 || cfg.Rate <= 0 || cfg.Keys <= 0 || cfg.SlowDivisor < 1 ||
		cfg.SlowFraction < 0 || cfg.SlowFraction > 1 || cfg.Duration <= 0 || cfg.Duration > 10*time.Minute {
		return errors.New("bad flags: 1..10000 subs, a positive rate and keys, a divisor >= 1, a fraction in [0,1], a duration up to 10m")
	}
	if jsonOut == "-" {
		cfg.JSON, cfg.Text = stdout, nil
	} else if jsonOut != "" {
		f, err := os.Create(jsonOut)
		if err != nil {
			return err
		}
		defer f.Close()
		cfg.JSON = f
	}
	_, err := RunSlow(ctx, cfg)
	return err
}

// RunSlow runs every target with and without the slow subscribers, one
// phase after the other, and returns what each phase measured.
func RunSlow(ctx context.Context, cfg SlowConfig) ([]SlowPhase, error) {
	var out []SlowPhase
	if cfg.Text != nil {
		fmt.Fprintf(cfg.Text, "# %d subscribers (%.0f%% slow at 1/%g of the rate), %g publications/s over %d keys, %s per phase\n",
			cfg.Subscribers, 100*cfg.SlowFraction, cfg.SlowDivisor, cfg.Rate, cfg.Keys, cfg.Duration)
		fmt.Fprintln(cfg.Text, "| target | slow subs | fast p50 ms | fast p99 ms | slow staleness p50 ms | slow staleness p99 ms | fast cut | slow cut | fast missing | peak RSS MB |")
		fmt.Fprintln(cfg.Text, "|---|---|---|---|---|---|---|---|---|---|")
	}
	for _, t := range cfg.Targets {
		for _, withSlow := range []bool{false, true} {
			if ctx.Err() != nil {
				return out, ctx.Err()
			}
			p, err := runSlowPhase(ctx, cfg, t, withSlow)
			if err != nil {
				return out, fmt.Errorf("failed to run %s (slow %v): %w", t.Name, withSlow, err)
			}
			out = append(out, p)
			report(cfg, p)
		}
	}
	return out, nil
}

func report(cfg SlowConfig, p SlowPhase) {
	if cfg.JSON != nil {
		b, _ := json.Marshal(p)
		fmt.Fprintf(cfg.JSON, "%s\n", b)
	}
	if cfg.Text != nil {
		stale50, stale99 := "–", "–"
		if p.Slow > 0 {
			stale50, stale99 = fmt.Sprintf("%.1f", p.StaleP50ms), fmt.Sprintf("%.1f", p.StaleP99ms)
		}
		rss := "–"
		if p.PeakRSSMB > 0 {
			rss = fmt.Sprintf("%.0f", p.PeakRSSMB)
		}
		target := p.Target
		if p.PublisherCut != "" {
			target += fmt.Sprintf(" (publisher cut after %d)", p.Published)
		}
		fmt.Fprintf(cfg.Text, "| %s | %d | %.1f | %.1f | %s | %s | %d | %d | %d | %s |\n",
			target, p.Slow, p.FastP50ms, p.FastP99ms, stale50, stale99, p.FastCut, p.SlowCut, p.FastMissing, rss)
	}
}

// slowSub is one subscriber of a phase, read by its own goroutine.
type slowSub struct {
	ws       *websocket.Conn
	slow     bool
	received atomic.Int64
	cut      atomic.Bool
	err      error // why it was cut; its reader's until that ends
}

func runSlowPhase(ctx context.Context, cfg SlowConfig, t SlowTarget, withSlow bool) (SlowPhase, error) {
	p := SlowPhase{Type: "slow_phase", Target: t.Name, WithSlow: withSlow, Subscribers: cfg.Subscribers}
	if withSlow {
		p.Slow = int(float64(cfg.Subscribers)*cfg.SlowFraction + 0.5)
	}
	subs := make([]*slowSub, cfg.Subscribers)
	defer func() {
		for _, s := range subs {
			if s != nil && s.ws != nil {
				s.ws.Close()
			}
		}
	}()
	for i := range subs {
		slow := i < p.Slow
		ws, err := dialSlowBench(ctx, t.URL, slow)
		if err != nil {
			return p, err
		}
		subs[i] = &slowSub{ws: ws, slow: slow}
		if err := subscribeBench(ws, t.Channel); err != nil {
			return p, fmt.Errorf("subscriber %d: %w", i, err)
		}
	}
	pubWS, err := dialSlowBench(ctx, t.URL, false)
	if err != nil {
		return p, err
	}
	defer pubWS.Close()
	go func() { // replies to the publisher: read and dropped
		for {
			if _, _, err := pubWS.NextReader(); err != nil {
				return
			}
		}
	}()

	fast := hdrhistogram.New(1, histMaxMicros, 3)
	stale := hdrhistogram.New(1, histMaxMicros, 3)
	var histMu sync.Mutex
	stop := make(chan struct{})
	var wg sync.WaitGroup
	slowInterval := time.Duration(float64(time.Second) * cfg.SlowDivisor / cfg.Rate)
	for _, s := range subs {
		wg.Go(func() { s.read(stop, slowInterval, fast, stale, &histMu) })
	}

	var peak atomic.Int64
	probeDone := make(chan struct{})
	go func() {
		defer close(probeDone)
		for {
			if t.PID > 0 {
				if r, err := procResources(t.PID); err == nil && r.rss > peak.Load() {
					peak.Store(r.rss)
				}
			}
			select {
			case <-stop:
				return
			case <-time.After(200 * time.Millisecond):
			}
		}
	}()

	p.Published, err = publishTicks(ctx, pubWS, t.Channel, cfg)
	if err != nil && ctx.Err() == nil {
		p.PublisherCut, err = err.Error(), nil // a result, not a failure of the run
	}
	// Let what is on its way arrive: fast subscribers get everything within
	// a second on a healthy run; the slow ones read on (staleness counts).
	time.Sleep(time.Second)
	// Then every reader drains what is left for up to 5 s: a subscriber
	// the server cut reads its close (or a reset) by then.
	for _, s := range subs {
		s.ws.SetReadDeadline(time.Now().Add(5 * time.Second))
	}
	close(stop)
	wg.Wait()
	<-probeDone
	if err != nil {
		return p, err
	}
	for _, s := range subs {
		if s.err != nil && p.CutBy == "" {
			p.CutBy = s.err.Error()
		}
		switch {
		case s.slow:
			p.SlowDeliv += s.received.Load()
			if s.cut.Load() {
				p.SlowCut++
			}
		default:
			p.FastDeliv += s.received.Load()
			if s.cut.Load() {
				p.FastCut++
			}
			p.FastMissing += max(0, p.Published-s.received.Load())
		}
	}
	p.FastP50ms = float64(fast.ValueAtQuantile(50)) / 1000
	p.FastP99ms = float64(fast.ValueAtQuantile(99)) / 1000
	p.StaleP50ms = float64(stale.ValueAtQuantile(50)) / 1000
	p.StaleP99ms = float64(stale.ValueAtQuantile(99)) / 1000
	p.PeakRSSMB = float64(peak.Load()) / (1 << 20)
	return p, nil
}

// dialSlowBench dials a herald.v1 endpoint; a slow subscriber gets a 4 KB
// socket receive buffer.
func dialSlowBench(ctx context.Context, url string, slow bool) (*websocket.Conn, error) {
	d := websocket.Dialer{Subprotocols: []string{"herald.v1"}, HandshakeTimeout: 10 * time.Second,
		NetDialContext: func(ctx context.Context, network, addr string) (net.Conn, error) {
			var nd net.Dialer
			c, err := nd.DialContext(ctx, network, addr)
			if tc, ok := c.(*net.TCPConn); ok && slow {
				_ = tc.SetReadBuffer(4096)
			}
			return c, err
		}}
	if slow {
		d.ReadBufferSize = 4096
	}
	ws, _, err := d.DialContext(ctx, url, nil)
	if err != nil {
		return nil, fmt.Errorf("failed to dial %s: %w", url, err)
	}
	return ws, nil
}

func subscribeBench(ws *websocket.Conn, channel string) error {
	if err := ws.WriteJSON(map[string]any{"id": 1, "cmd": "subscribe", "channel": channel}); err != nil {
		return err
	}
	ws.SetReadDeadline(time.Now().Add(10 * time.Second))
	defer ws.SetReadDeadline(time.Time{})
	var reply struct {
		ID    uint64          `json:"id"`
		Error json.RawMessage `json:"error"`
	}
	if err := ws.ReadJSON(&reply); err != nil {
		return err
	}
	if reply.ID != 1 || reply.Error != nil {
		return fmt.Errorf("subscribe refused: %s", reply.Error)
	}
	return nil
}

// read reads the subscriber's pushes until stop: a fast one records each
// publication's latency, a slow one the age of each value it gets, and
// waits interval between reads.
func (s *slowSub) read(stop <-chan struct{}, interval time.Duration, fast, stale *hdrhistogram.Histogram, mu *sync.Mutex) {
	local := hdrhistogram.New(1, histMaxMicros, 3)
	defer func() {
		mu.Lock()
		if s.slow {
			stale.Merge(local)
		} else {
			fast.Merge(local)
		}
		mu.Unlock()
	}()
	next := time.Now()
	for {
		_, msg, err := s.ws.ReadMessage()
		if err != nil {
			s.ended(err)
			return
		}
		select {
		case <-stop:
			// The phase is over: read what is left at full speed, to
			// see whether the server cut this subscriber (its close
			// comes after what it had sent) or it is still served.
			s.drain()
			return
		default:
		}
		sent, ok := tickTime(msg)
		if !ok {
			continue
		}
		s.received.Add(1)
		_ = local.RecordValue(max(1, time.Since(time.Unix(0, sent)).Microseconds()))
		if s.slow {
			next = next.Add(interval)
			if d := time.Until(next); d > 0 {
				select {
				case <-stop:
				case <-time.After(d):
				}
			} else {
				next = time.Now()
			}
		}
	}
}

// drain reads until the read deadline set at the phase's end: a close or a
// reset before it means the server cut the subscriber.
func (s *slowSub) drain() {
	for {
		if _, _, err := s.ws.ReadMessage(); err != nil {
			s.ended(err)
			return
		}
	}
}

// ended records how the subscriber's reading ended: the phase's deadline,
// or a cut.
func (s *slowSub) ended(err error) {
	if !isTimeout(err) {
		s.err = err
		s.cut.Store(true)
	}
}

func isTimeout(err error) bool {
	var ne net.Error
	return errors.As(err, &ne) && ne.Timeout()
}

var tickField = []byte(`"t":`)

// tickTime reads the send time (Unix ns) out of a pub push's data.
func tickTime(msg []byte) (int64, bool) {
	i := bytes.Index(msg, tickField)
	if i < 0 || !bytes.HasPrefix(msg, []byte(`{"push":"pub"`)) {
		return 0, false
	}
	rest := msg[i+len(tickField):]
	j := bytes.IndexAny(rest, ",}")
	if j < 0 {
		return 0, false
	}
	v, err := strconv.ParseInt(string(rest[:j]), 10, 64)
	return v, err == nil
}

// publishTicks publishes at cfg.Rate for cfg.Duration, publication i with
// key i mod cfg.Keys, in batches every 10 ms; it returns how many it sent.
func publishTicks(ctx context.Context, ws *websocket.Conn, channel string, cfg SlowConfig) (int64, error) {
	pad := strings.Repeat("x", cfg.Payload)
	start := time.Now()
	tick := time.NewTicker(10 * time.Millisecond)
	defer tick.Stop()
	var sent int64
	var buf []byte
	for {
		elapsed := time.Since(start)
		if elapsed >= cfg.Duration {
			return sent, nil
		}
		due := int64(elapsed.Seconds() * cfg.Rate)
		for ; sent < due; sent++ {
			k := sent % int64(cfg.Keys)
			buf = fmt.Appendf(buf[:0], `{"id":%d,"cmd":"publish","channel":%q,"key":"k%d","data":{"k":%d,"t":%d,"p":%q}}`,
				sent+2, channel, k, k, time.Now().UnixNano(), pad)
			if err := ws.WriteMessage(websocket.TextMessage, buf); err != nil {
				return sent, fmt.Errorf("failed to publish: %w", err)
			}
		}
		select {
		case <-ctx.Done():
			return sent, ctx.Err()
		case <-tick.C:
		}
	}
}
