package bench

import (
	"context"
	"errors"
	"fmt"
	"math"
	"net/url"
	"strconv"
	"sync"
	"sync/atomic"
	"time"

	"github.com/gorilla/websocket"
)

// Result is everything a run measured.
type Result struct {
	Plan    PlanRecord    `json:"plan"`
	Connect ConnectResult `json:"connect"`
	Steps   []StepResult  `json:"steps"`
	Summary SummaryRecord `json:"summary"`
	Err     string        `json:"error,omitempty"`
}

// runner is one run's state. Goroutines it starts: one per subscriber
// (which dials, subscribes, and then either reads its socket until it ends
// or hands it to one of the epoll loops of rx and returns), the epoll loops,
// one reader per publishing connection (all in wg, ended by teardown closing
// their sockets and stopping rx), one publishing goroutine per publisher
// during a step, and the progress ticker; every one has ended when Run
// returns.
type runner struct {
	cfg      Config
	base     time.Time
	onTimeNs int64
	d        *dialer
	rx       *rxPool // nil with the goroutine reader
	probe    serverProbe
	out      *reporter

	names []string // channel names
	subs  []*subscriber
	pubs  []*publisher
	seq   []uint64 // last number published per channel (its publisher's goroutine only)
	steps []*stepStats

	cur        atomic.Int32 // the step running, -1 before the first
	published  atomic.Int64 // publications sent, all steps
	cut        atomic.Int64 // subscribers whose connection ended during the run
	live       atomic.Int64 // subscribers subscribed and connected
	connected  int          // subscribers that connected in the connect phase
	malformed  atomic.Int64
	closing    atomic.Bool
	codesMu    sync.Mutex
	closeCodes map[int]int64

	wg sync.WaitGroup
}

type subscriber struct {
	id      int
	channel int
	ws      atomic.Pointer[websocket.Conn] // the goroutine reader's, closed by teardown
	alive   atomic.Bool
	// Owned by the subscriber's reader: its goroutine, or the epoll loop
	// that took its socket.
	subscribed bool
	tr         seqTracker
}

// Run runs one benchmark: connect every subscriber at the configured rate,
// hold, run the steps, report, and close everything. It returns when all is
// closed, after at most cfg.Timeout. The Result holds what was measured even
// when err is not nil.
func Run(ctx context.Context, cfg Config) (*Result, error) {
	if err := cfg.applyDefaults(); err != nil {
		return nil, err
	}
	ctx, cancel := context.WithTimeout(ctx, cfg.Timeout)
	defer cancel()
	r := &runner{
		cfg:        cfg,
		base:       time.Now(),
		onTimeNs:   cfg.OnTime.Nanoseconds(),
		d:          newDialer(cfg.Sources),
		probe:      newServerProbe(&cfg),
		out:        newReporter(cfg),
		closeCodes: map[int]int64{},
	}
	r.cur.Store(-1)
	res := &Result{}
	err := r.run(ctx, res)
	if err != nil {
		res.Err = err.Error()
		res.Summary.Error = res.Err
	}
	r.out.summary(&res.Summary)
	return res, err
}

func (r *runner) run(ctx context.Context, res *Result) error {
	cfg := &r.cfg
	r.names = make([]string, cfg.Channels)
	for i := range r.names {
		r.names[i] = cfg.ChannelPrefix + strconv.Itoa(i)
	}
	r.seq = make([]uint64, cfg.Channels)
	r.steps = make([]*stepStats, len(cfg.Rates))
	for i := range r.steps {
		r.steps[i] = newStepStats()
	}
	res.Plan = r.planRecord()
	r.out.plan(&res.Plan)
	res.Summary = SummaryRecord{Type: "summary", Label: cfg.Label, BestStep: -1}

	defer r.teardown()
	stopProgress := r.startProgress()
	defer stopProgress()
	defer r.fillSummary(res)

	var tokens []string // churn's connection tokens
	var err error
	if cfg.Churn {
		if tokens, err = r.prepareChurn(); err != nil {
			return err
		}
	} else {
		res.Connect, err = r.connect(ctx)
		r.out.connected(&res.Connect)
		if err != nil {
			return err
		}
		if err := r.openPublishers(ctx); err != nil {
			return err
		}
	}
	fails := 0
	for i, rate := range cfg.Rates {
		if ctx.Err() != nil {
			break
		}
		var st StepResult
		if cfg.Churn {
			st = r.runChurnStep(ctx, i, rate, tokens)
		} else {
			st = r.runStep(ctx, i, rate)
		}
		res.Steps = append(res.Steps, st)
		r.out.step(&st)
		if st.Pass && (res.Summary.BestStep < 0 || st.throughput() >= res.Steps[res.Summary.BestStep].throughput()) {
			res.Summary.BestStep = i
		}
		if st.Pass {
			fails = 0
		} else if fails++; cfg.StopAfterFails > 0 && fails >= cfg.StopAfterFails {
			res.Summary.Stopped = fmt.Sprintf("%d steps in a row did not pass", fails)
			break
		}
		if cfg.Churn {
			continue // no standing subscribers or publishers to lose
		}
		if r.aliveSubscribers() == 0 {
			res.Summary.Stopped = "every subscriber was cut"
			break
		}
		if r.publisherLost() {
			// The server closed a publishing connection (the hub baseline
			// does so when its reply buffer overflows): measured, not an
			// error of the run; nothing more can be published.
			res.Summary.Stopped = "the server closed a publisher's connection"
			break
		}
	}
	if ctx.Err() != nil {
		return fmt.Errorf("run stopped: %w (timeout %s)", ctx.Err(), cfg.Timeout)
	}
	return nil
}

// publisherLost reports whether a publishing connection has ended.
func (r *runner) publisherLost() bool {
	for _, p := range r.pubs {
		if p.dead != nil && isClosed(p.dead) {
			return true
		}
		for _, rc := range p.raw {
			if isClosed(rc.dead) {
				return true
			}
		}
	}
	return false
}

func (r *runner) aliveSubscribers() int {
	n := 0
	for _, s := range r.subs {
		if s.alive.Load() {
			n++
		}
	}
	return n
}

// sleepUntil sleeps until the run's clock reads t (or ctx ends).
func (r *runner) sleepUntil(ctx context.Context, t time.Duration) {
	d := t - time.Since(r.base)
	if d <= 0 {
		return
	}
	tm := time.NewTimer(d)
	defer tm.Stop()
	select {
	case <-ctx.Done():
	case <-tm.C:
	}
}

// connect opens every subscriber at the configured rate and waits until
// each is subscribed or failed, then holds for cfg.Idle and samples the
// server.
func (r *runner) connect(ctx context.Context) (ConnectResult, error) {
	cfg := &r.cfg
	res := ConnectResult{Type: "connect"}
	before, perr := r.probe.sample(ctx)
	if perr != nil {
		r.out.warn("server probe: %v", perr)
	}
	n := cfg.Channels * cfg.Subscribers
	r.subs = make([]*subscriber, n)
	if cfg.Reader == ReaderEpoll && r.rx == nil {
		rx, err := newRxPool(r)
		if err != nil {
			return res, fmt.Errorf("epoll reader: %w", err)
		}
		r.rx = rx
	}
	sem := make(chan struct{}, cfg.ConnectConcurrency)
	var ready sync.WaitGroup
	var failed atomic.Int64
	var errMu sync.Mutex
	var firstErr error
	start := time.Since(r.base)
	interval := float64(time.Second) / cfg.ConnectRate
	launched := 0
	for i := range n {
		// Subscribers of one channel are spread over the whole connect
		// phase, so every channel is complete only at its end.
		s := &subscriber{id: i, channel: i % cfg.Channels}
		r.subs[i] = s
		r.sleepUntil(ctx, start+time.Duration(float64(i)*interval))
		select {
		case sem <- struct{}{}:
		case <-ctx.Done():
		}
		if ctx.Err() != nil {
			break
		}
		launched++
		ready.Add(1)
		r.wg.Add(1)
		var once sync.Once
		go r.subscriber(ctx, s, func(err error) {
			once.Do(func() {
				if err != nil {
					failed.Add(1)
					errMu.Lock()
					if firstErr == nil {
						firstErr = err
					}
					errMu.Unlock()
				}
				<-sem
				ready.Done()
			})
		})
	}
	ready.Wait()
	r.subs = r.subs[:launched]
	elapsed := time.Since(r.base) - start
	res.Connections = launched - int(failed.Load())
	r.connected = res.Connections
	res.Failed = int(failed.Load())
	res.Retries = r.d.retries.Load()
	res.Seconds = elapsed.Seconds()
	if elapsed > 0 {
		res.RatePerSec = float64(res.Connections) / elapsed.Seconds()
	}
	if firstErr != nil {
		res.FirstError = firstErr.Error()
	}
	if ctx.Err() != nil {
		return res, fmt.Errorf("connect phase stopped: %w", ctx.Err())
	}
	if cfg.Idle > 0 {
		r.out.note("holding %d connections for %s", res.Connections, cfg.Idle)
		r.sleepUntil(ctx, time.Since(r.base)+cfg.Idle)
	}
	res.CutWhileIdle = r.cut.Load()
	res.CloseCodes = diffCodes(r.codes(), nil)
	after, aerr := r.probe.sample(ctx)
	if perr == nil && aerr == nil && before.ok && after.ok {
		res.ServerRSSBefore, res.ServerRSSAfter = before.rss, after.rss
		if res.Connections > 0 {
			res.RSSPerConn = float64(after.rss-before.rss) / float64(res.Connections)
		}
		res.ServerCPU = after.cpuSec - before.cpuSec
		res.ServerRSSAfterEach = after.rssEach
	}
	if res.Connections == 0 && n > 0 {
		return res, fmt.Errorf("no subscriber connected: %s", res.FirstError)
	}
	return res, nil
}

// subscriber runs one subscriber: dial, subscribe, then read until the
// socket ends, itself (the goroutine reader) or by handing the socket to an
// epoll loop and returning. ready is called once: subscribed, or failed.
func (r *runner) subscriber(ctx context.Context, s *subscriber, ready func(error)) {
	defer r.wg.Done()
	cfg := &r.cfg
	proto := cfg.SubMode == SubProtocol
	node := cfg.subscriberNode(s.id)
	u := cfg.subURLs[node]
	if !proto {
		u = cfg.subRawURLs[node] + "?channel=" + url.QueryEscape(r.names[s.channel])
	}
	ws, hc, err := r.d.dial(ctx, u, proto && cfg.Protocol == ProtoHerald)
	if err != nil {
		ready(err)
		return
	}
	s.ws.Store(ws)
	if r.closing.Load() {
		ws.Close()
		ready(errors.New("run ended"))
		return
	}
	ws.SetReadLimit(maxMessage)
	if proto {
		if err := r.sendSubscribe(ws, r.names[s.channel]); err != nil {
			ws.Close()
			ready(fmt.Errorf("subscribe: %w", err))
			return
		}
	} else {
		r.subscribed(s, ready)
	}
	if r.rx != nil {
		// The loop's from here on; if it cannot take the socket, it has
		// closed it and called ready.
		r.rx.add(s, hc, ready)
		return
	}
	if !s.subscribed {
		// Until the subscribe reply; a raw subscriber has none to wait for.
		_ = ws.SetReadDeadline(time.Now().Add(subscribeTimeout))
	}
	buf := make([]byte, 0, 256)
	for {
		msg, err := readMessage(ws, buf)
		buf = msg
		if err != nil {
			ws.Close()
			r.ended(s, closeCode(err), err, ready)
			return
		}
		wasSubscribed := s.subscribed
		switch r.message(s, msg, ready) {
		case msgDone:
			ws.Close()
			return
		case msgPing:
			_ = ws.SetWriteDeadline(time.Now().Add(10 * time.Second))
			_ = ws.WriteMessage(websocket.TextMessage, pingReply(r.cfg.Protocol))
		}
		if !wasSubscribed && s.subscribed {
			_ = ws.SetReadDeadline(time.Time{})
		}
	}
}

// maxMessage is the longest message a subscriber accepts (the goroutine
// reader closes with 1009 past it, the epoll reader likewise).
const maxMessage = 1 << 20

// subscribeTimeout bounds the wait for a subscribe reply, in both readers
// (a variable for tests).
var subscribeTimeout = 10 * time.Second

// msgAction is what a reader does after message.
type msgAction int

const (
	msgOK   msgAction = iota
	msgDone           // the subscriber is done: close its socket
	msgPing           // answer centrifuge's app-level ping with an empty object
)

// sendSubscribe writes a protocol subscriber's first command(s): a connect
// when the protocol or a token needs one, and the subscribe.
func (r *runner) sendSubscribe(ws *websocket.Conn, channel string) error {
	if r.cfg.Protocol == ProtoPusher {
		if err := awaitPusherWelcome(ws); err != nil {
			return err
		}
	}
	_ = ws.SetWriteDeadline(time.Now().Add(10 * time.Second))
	if c := connectCommand(r.cfg.Protocol, r.cfg.Token); c != nil {
		if err := ws.WriteMessage(websocket.TextMessage, c); err != nil {
			return err
		}
	}
	return ws.WriteMessage(websocket.TextMessage, subscribeCommand(r.cfg.Protocol, channel, r.cfg.Token))
}

// message handles one data message for s, on its reader: deliveries (one,
// or with centrifuge several a message), or before them the subscribe
// reply. It returns msgDone when the subscriber is done (its subscription
// was refused: ready has the reason), msgPing when the message holds an
// app-level ping to answer.
func (r *runner) message(s *subscriber, msg []byte, ready func(error)) msgAction {
	found := false
	for rest := msg; ; {
		p, next, perr := nextPayload(rest)
		if perr == errNoPayload {
			break
		}
		found = true
		if perr != nil {
			r.malformed.Add(1)
			break
		}
		r.deliver(s, p)
		rest = next
	}
	if !s.subscribed && !found {
		if done, refused := subscribeOutcome(msg); refused {
			ready(fmt.Errorf("subscribe refused: %s", msg))
			return msgDone
		} else if done {
			r.subscribed(s, ready)
		}
	}
	// The ping may come in the same frame as pushes.
	if r.cfg.Protocol == ProtoCentrifuge && isAppPing(msg) || r.cfg.Protocol == ProtoPusher && isPusherPing(msg) {
		return msgPing
	}
	return msgOK
}

// subscribed counts s in once its subscription holds (on its reader).
func (r *runner) subscribed(s *subscriber, ready func(error)) {
	s.subscribed = true
	s.alive.Store(true)
	r.live.Add(1)
	ready(nil)
}

// ended accounts for s's socket ending (on its reader, after closing it):
// a failed subscribe, or a subscriber cut with code unless the run is
// closing its connections itself.
func (r *runner) ended(s *subscriber, code int, err error, ready func(error)) {
	if !s.subscribed {
		ready(fmt.Errorf("subscribe: %w", err))
		return
	}
	s.alive.Store(false)
	r.live.Add(-1)
	if !r.closing.Load() {
		r.cut.Add(1)
		r.codesMu.Lock()
		r.closeCodes[code]++
		r.codesMu.Unlock()
	}
}

// deliver records one delivery of a publication to s.
func (r *runner) deliver(s *subscriber, p payloadInfo) {
	if p.step >= len(r.steps) {
		r.malformed.Add(1)
		return
	}
	st := r.steps[p.step]
	if int(p.stream) != s.channel {
		st.misrouted.Add(1)
		return
	}
	lat := time.Since(r.base).Nanoseconds() - p.sentNs
	st.deliver(s.tr.observe(p.seq), lat, r.onTimeNs, s.id)
}

// teardown closes every connection and waits for every reader.
func (r *runner) teardown() {
	r.closing.Store(true)
	for _, s := range r.subs {
		// For a socket an epoll loop took, this only closes gorilla's
		// descriptor again (it was closed at the hand-over, an error
		// ignored); the loop closes its own when rx stops.
		if ws := s.ws.Load(); ws != nil {
			ws.Close()
		}
	}
	if r.rx != nil {
		r.rx.stop()
	}
	for _, p := range r.pubs {
		p.close()
	}
	r.wg.Wait()
	if r.probe.client != nil {
		r.probe.client.CloseIdleConnections()
	}
}

// runStep publishes at one rate for the step's duration, waits for the
// deliveries to drain, and measures.
func (r *runner) runStep(ctx context.Context, i int, rate Rate) StepResult {
	cfg := &r.cfg
	st := r.steps[i]
	res := StepResult{Type: "step", Step: i, Rate: rate.String(), Label: cfg.Label}
	if !rate.Max {
		res.TargetRate = rate.PerSecond
	}
	// Subscribers alive at the start are the ones owed this step's deliveries.
	alive := make([]int64, cfg.Channels)
	for _, s := range r.subs {
		if s.alive.Load() {
			alive[s.channel]++
			res.Subscribers++
		}
	}
	cutBefore := r.cut.Load()
	codesBefore := r.codes()
	srvBefore, serr := r.probe.sample(ctx)
	genBefore := selfCPU()
	r.cur.Store(int32(i))

	start := time.Since(r.base)
	counts := make([]int64, cfg.Channels)  // published per channel
	targets := make([]int64, cfg.Channels) // due per channel at the target rate
	// Publishers count their failures (publish_errors); a step whose
	// publisher failed does not pass.
	var wg sync.WaitGroup
	for _, p := range r.pubs {
		wg.Add(1)
		go func() {
			defer wg.Done()
			_ = r.publishStep(ctx, p, i, rate, start, counts, targets)
		}()
	}
	wg.Wait()
	pubEnd := time.Since(r.base)

	var expected, due int64
	for c := range counts {
		res.Published += counts[c]
		res.Target += targets[c]
		expected += counts[c] * alive[c]
		due += targets[c] * alive[c]
	}
	if rate.Max {
		res.Target, due = res.Published, expected
	}
	for _, p := range r.pubs {
		res.PublishErrors += p.errors.Swap(0)
		if e := p.firstErr.Swap(nil); e != nil && res.PublishError == "" {
			res.PublishError = *e
		}
	}

	// Drain: until every delivery is in, or none came for a second, or the
	// drain time is up.
	drainEnd := time.Now().Add(cfg.Drain)
	last, lastChange := st.unique.Load(), time.Now()
	for st.unique.Load() < expected && time.Now().Before(drainEnd) && time.Since(lastChange) < time.Second && ctx.Err() == nil {
		time.Sleep(5 * time.Millisecond)
		if u := st.unique.Load(); u != last {
			last, lastChange = u, time.Now()
		}
	}
	st.finalize()
	end := time.Since(r.base)

	res.Seconds = (pubEnd - start).Seconds()
	res.DrainSeconds = (end - pubEnd).Seconds()
	res.Expected = expected
	res.Due = due
	res.StepSeconds = cfg.StepDuration.Seconds()
	res.Delivered = st.unique.Load()
	res.Lost = max(expected-res.Delivered, 0)
	res.Dups = st.dups.Load()
	res.Reordered = st.reordered.Load()
	res.Misrouted = st.misrouted.Load() + st.tooOld.Load()
	res.OnTime = st.onTime.Load()
	if due > 0 {
		res.OnTimePct = 100 * float64(res.OnTime) / float64(due)
	}
	stepSecs := cfg.StepDuration.Seconds()
	res.PublishedPerSec = float64(res.Published) / stepSecs
	res.DeliveredPerSec = float64(res.Delivered) / stepSecs
	res.SubscribersCut = r.cut.Load() - cutBefore
	res.CloseCodes = diffCodes(r.codes(), codesBefore)
	res.Latency = summarize(st.merged())
	res.GenCPU = selfCPU() - genBefore
	if srvAfter, err := r.probe.sample(ctx); serr == nil && err == nil && srvBefore.ok && srvAfter.ok {
		res.ServerCPU = srvAfter.cpuSec - srvBefore.cpuSec
		res.ServerRSS = srvAfter.rss
		for k := range srvAfter.cpuEach {
			res.ServerCPUEach = append(res.ServerCPUEach, srvAfter.cpuEach[k]-srvBefore.cpuEach[k])
		}
		if res.Delivered > 0 {
			res.CPUPerMillion = res.ServerCPU / float64(res.Delivered) * 1e6
		}
		if res.Published > 0 {
			res.CPUPerMillionPub = res.ServerCPU / float64(res.Published) * 1e6
		}
	}
	// A step passes only with every subscriber that connected still there:
	// after a server cut some, a later step serves fewer and proves little.
	res.Pass = res.Subscribers == r.connected && res.Lost == 0 && res.Dups == 0 && res.Misrouted == 0 && res.SubscribersCut == 0 &&
		res.PublishErrors == 0 && res.Expected > 0 && res.OnTimePct >= 97 &&
		(cfg.MaxP99 <= 0 || res.Latency.P99 <= ms(cfg.MaxP99))
	return res
}

// throughput is what a step is ranked by: deliveries per second, or
// cycles per second for churn.
func (s StepResult) throughput() float64 {
	if s.CyclesPerSec > 0 {
		return s.CyclesPerSec
	}
	return s.DeliveredPerSec
}

func (r *runner) codes() map[int]int64 {
	r.codesMu.Lock()
	defer r.codesMu.Unlock()
	m := make(map[int]int64, len(r.closeCodes))
	for k, v := range r.closeCodes {
		m[k] = v
	}
	return m
}

func diffCodes(now, before map[int]int64) map[string]int64 {
	var out map[string]int64
	for k, v := range now {
		if d := v - before[k]; d > 0 {
			if out == nil {
				out = map[string]int64{}
			}
			out[strconv.Itoa(k)] = d
		}
	}
	return out
}

func (r *runner) fillSummary(res *Result) {
	sm := &res.Summary
	sm.Connections = res.Connect.Connections
	sm.ConnectRate = res.Connect.RatePerSec
	sm.RSSPerConn = res.Connect.RSSPerConn
	sm.SubscribersCut = r.cut.Load()
	sm.Malformed = r.malformed.Load()
	for i, st := range r.steps {
		if i < len(res.Steps) {
			sm.Late += st.late.Load()
		}
	}
	sm.Steps = len(res.Steps)
	if sm.BestStep >= 0 {
		b := res.Steps[sm.BestStep]
		sm.BestRate = b.Rate
		sm.BestDeliveredPerSec = b.DeliveredPerSec
		sm.BestCPUPerMillion = b.CPUPerMillion
		sm.BestP99 = b.Latency.P99
		sm.BestCyclesPerSec = b.CyclesPerSec
		sm.BestCPUPerKCycles = b.CPUPerKCycles
		sm.BestCPUPerMillionPub = b.CPUPerMillionPub
	}
	for _, s := range res.Steps {
		sm.Published += s.Published
		sm.Delivered += s.Delivered
		sm.Lost += s.Lost
		sm.Dups += s.Dups
	}
	if math.IsNaN(sm.RSSPerConn) {
		sm.RSSPerConn = 0
	}
}
