package bench

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"math"
	"net/http"
	"net/url"
	"sync/atomic"
	"time"

	"github.com/gorilla/websocket"
)

// publisher publishes to the channels it owns (channel c belongs to
// publisher c mod Publishers), so each channel's sequence numbers come from
// one goroutine, in order.
type publisher struct {
	r        *runner
	idx      int
	channels []int

	// ws mode: one connection, commands pipelined up to Window outstanding.
	ws     *websocket.Conn
	fw     *frameWriter
	window chan struct{}
	dead   chan struct{} // closed when the connection's reader ends
	nextID uint64

	// raw mode: one connection per channel, by position in channels.
	raw []*rawConn

	// api mode
	hc *http.Client

	buf      []byte // ws: frames of the batch being built
	batch    []pubMsg
	errors   atomic.Int64
	firstErr atomic.Pointer[string]
}

type pubMsg struct {
	pos     int // position of the channel in channels
	payload []byte
}

type rawConn struct {
	ws   *websocket.Conn
	fw   *frameWriter
	buf  []byte
	dead chan struct{}
}

func (p *publisher) fail(err error) {
	p.errors.Add(1)
	s := err.Error()
	p.firstErr.CompareAndSwap(nil, &s)
}

// openPublishers connects the publishers (none when the plan has no steps).
func (r *runner) openPublishers(ctx context.Context) error {
	cfg := &r.cfg
	if len(cfg.Rates) == 0 {
		return nil
	}
	var hc *http.Client
	if cfg.PubMode == PubAPI {
		hc = &http.Client{Timeout: 10 * time.Second, Transport: &http.Transport{
			MaxIdleConnsPerHost: cfg.Publishers, MaxConnsPerHost: cfg.Publishers, IdleConnTimeout: time.Minute,
		}}
	}
	for i := range cfg.Publishers {
		p := &publisher{r: r, idx: i, hc: hc}
		for c := i; c < cfg.Channels; c += cfg.Publishers {
			p.channels = append(p.channels, c)
		}
		r.pubs = append(r.pubs, p)
		switch cfg.PubMode {
		case PubWS:
			ws, _, err := r.d.dial(ctx, cfg.pubURL, cfg.Protocol == ProtoHerald)
			if err != nil {
				return fmt.Errorf("publisher %d: %w", i, err)
			}
			p.ws, p.fw = ws, &frameWriter{nc: ws.NetConn()}
			p.window = make(chan struct{}, cfg.Window)
			p.dead = make(chan struct{})
			p.fw.installHandlers(ws)
			if c := publisherConnect(cfg.Protocol); c != nil {
				// Its reply frees no window slot: none was taken for it.
				p.nextID = 1
				if err := p.fw.write(appendClientFrame(nil, websocket.TextMessage, c)); err != nil {
					ws.Close()
					return fmt.Errorf("publisher %d: connect: %w", i, err)
				}
			}
			r.wg.Add(1)
			go p.readReplies()
		case PubRaw:
			for _, c := range p.channels {
				ws, _, err := r.d.dial(ctx, cfg.pubRawURL+"?channel="+url.QueryEscape(r.names[c]), false)
				if err != nil {
					return fmt.Errorf("raw publisher for %s: %w", r.names[c], err)
				}
				rc := &rawConn{ws: ws, fw: &frameWriter{nc: ws.NetConn()}, dead: make(chan struct{})}
				rc.fw.installHandlers(ws)
				p.raw = append(p.raw, rc)
				r.wg.Add(1)
				go p.drainRaw(rc)
			}
		}
	}
	return nil
}

func (p *publisher) close() {
	if p.ws != nil {
		p.ws.Close()
	}
	for _, rc := range p.raw {
		rc.ws.Close()
	}
	if p.hc != nil {
		p.hc.CloseIdleConnections()
	}
}

// readReplies reads the replies to a ws publisher's commands, freeing a
// window slot for each.
func (p *publisher) readReplies() {
	defer p.r.wg.Done()
	defer close(p.dead)
	var buf []byte
	for {
		msg, err := readMessage(p.ws, buf)
		buf = msg
		if err != nil {
			if !p.r.closing.Load() {
				p.fail(fmt.Errorf("publisher connection ended (close code %d): %w", closeCode(err), err))
			}
			p.ws.Close()
			return
		}
		n, failed := countReplies(msg)
		if p.r.cfg.Protocol == ProtoCentrifuge && isAppPing(msg) {
			_ = p.fw.write(appendClientFrame(nil, websocket.TextMessage, emptyObjectLine))
		}
		for range n {
			select {
			case <-p.window:
			default:
			}
		}
		if failed {
			p.fail(fmt.Errorf("publish refused: %s", msg))
		}
	}
}

// drainRaw reads a raw publisher's connection (pings; nothing else comes
// for a channel it alone publishes to).
func (p *publisher) drainRaw(rc *rawConn) {
	defer p.r.wg.Done()
	defer close(rc.dead)
	var buf []byte
	for {
		msg, err := readMessage(rc.ws, buf)
		buf = msg
		if err != nil {
			if !p.r.closing.Load() {
				p.fail(fmt.Errorf("raw publisher connection ended (close code %d): %w", closeCode(err), err))
			}
			rc.ws.Close()
			return
		}
	}
}

// acquire takes a window slot for one more outstanding command (ws mode).
func (p *publisher) acquire(ctx context.Context) bool {
	if p.window == nil {
		return ctx.Err() == nil
	}
	select {
	case p.window <- struct{}{}:
		return true
	default:
	}
	select {
	case p.window <- struct{}{}:
		return true
	case <-p.dead:
		return false
	case <-ctx.Done():
		return false
	}
}

// add appends one publication to the batch.
func (p *publisher) add(pos int, payload []byte) {
	p.batch = append(p.batch, pubMsg{pos: pos, payload: payload})
}

// flush sends the batch and counts what was sent per channel.
func (p *publisher) flush(ctx context.Context, counts []int64) error {
	defer func() { p.batch = p.batch[:0] }()
	if len(p.batch) == 0 {
		return nil
	}
	r := p.r
	switch r.cfg.PubMode {
	case PubWS:
		b := p.buf[:0]
		var cmd []byte
		for _, m := range p.batch {
			p.nextID++
			cmd = appendPublish(cmd[:0], r.cfg.Protocol, p.nextID, r.names[p.channels[m.pos]], m.payload)
			b = appendClientFrame(b, websocket.TextMessage, cmd)
		}
		p.buf = b
		if err := p.fw.write(b); err != nil {
			p.fail(err)
			return err
		}
		for _, m := range p.batch {
			counts[p.channels[m.pos]]++
		}
		r.published.Add(int64(len(p.batch)))
	case PubRaw:
		for _, m := range p.batch {
			rc := p.raw[m.pos]
			rc.buf = appendClientFrame(rc.buf, websocket.TextMessage, m.payload)
		}
		var firstErr error
		for _, rc := range p.raw {
			if len(rc.buf) == 0 {
				continue
			}
			err := rc.fw.write(rc.buf)
			rc.buf = rc.buf[:0]
			if err != nil {
				p.fail(err)
				firstErr = err
			}
		}
		if firstErr != nil {
			return firstErr
		}
		for _, m := range p.batch {
			counts[p.channels[m.pos]]++
		}
		r.published.Add(int64(len(p.batch)))
	case PubAPI:
		var body []byte
		for _, m := range p.batch {
			if ctx.Err() != nil {
				return nil
			}
			body = append(body[:0], `{"channel":"`...)
			body = append(body, r.names[p.channels[m.pos]]...)
			body = append(body, `","data":`...)
			body = append(body, m.payload...)
			body = append(body, '}')
			if err := p.post(ctx, body); err != nil {
				if ctx.Err() != nil {
					return nil
				}
				p.fail(err)
				continue
			}
			counts[p.channels[m.pos]]++
			r.published.Add(1)
		}
	}
	return nil
}

func (p *publisher) post(ctx context.Context, body []byte) error {
	req, err := http.NewRequestWithContext(ctx, http.MethodPost, p.r.cfg.APIURL, bytes.NewReader(body))
	if err != nil {
		return err
	}
	req.Header.Set("Content-Type", "application/json")
	if k := p.r.cfg.APIKey; k != "" {
		req.Header.Set("Authorization", "Bearer "+k)
	}
	resp, err := p.hc.Do(req)
	if err != nil {
		return err
	}
	b, _ := io.ReadAll(io.LimitReader(resp.Body, 4096))
	resp.Body.Close()
	if resp.StatusCode != http.StatusOK {
		return fmt.Errorf("publish API: %s: %s", resp.Status, bytes.TrimSpace(b))
	}
	return nil
}

// publishStep publishes one step's share of this publisher: its channels'
// part of the rate, round robin over them, for the step's duration. Each
// publication carries the time it was due. A publisher held up by the
// server (a full window, a blocked socket) falls behind; what it has not
// sent half a step (at least a second) after the step's end is dropped
// from the step and counted as not published.
func (r *runner) publishStep(ctx context.Context, p *publisher, step int, rate Rate, start time.Duration, counts, targets []int64) error {
	cfg := &r.cfg
	dur := cfg.StepDuration
	stepEnd := start + dur
	hardEnd := stepEnd + max(time.Second, dur/2)
	sctx, cancel := context.WithDeadline(ctx, r.base.Add(hardEnd))
	defer cancel()
	nch := len(p.channels)
	var pos int // next channel, round robin
	next := func(sent time.Duration) bool {
		if !p.acquire(sctx) {
			return false
		}
		c := p.channels[pos]
		r.seq[c]++
		payload := appendPayload(nil, cfg.Payload, payloadInfo{stream: uint32(c), seq: r.seq[c], sentNs: int64(sent), step: step})
		p.add(pos, payload)
		pos = (pos + 1) % nch
		return true
	}
	const maxBatch = 256
	if rate.Max {
		for time.Since(r.base) < stepEnd && sctx.Err() == nil {
			now := time.Since(r.base)
			for range 64 {
				if !next(now) {
					break
				}
			}
			if err := p.flush(sctx, counts); err != nil {
				return err
			}
			if p.dead != nil && isClosed(p.dead) {
				return errors.New("publisher connection lost")
			}
		}
		return nil
	}

	perSec := rate.PerSecond * float64(nch) / float64(cfg.Channels)
	target := int64(math.Round(perSec * dur.Seconds()))
	for j, c := range p.channels {
		targets[c] = target / int64(nch)
		if int64(j) < target%int64(nch) {
			targets[c]++
		}
	}
	interval := float64(time.Second) / perSec
	at := func(k int64) time.Duration { return start + time.Duration(float64(k)*interval) }
	for k := int64(0); k < target; {
		now := time.Since(r.base)
		if sctx.Err() != nil {
			return nil
		}
		due := min(target, int64(float64(now-start)/interval)+1)
		if due <= k {
			r.sleepUntil(sctx, at(k))
			continue
		}
		n := min(due-k, maxBatch)
		added := int64(0)
		for j := range n {
			if !next(at(k + j)) {
				break
			}
			added++
		}
		if err := p.flush(sctx, counts); err != nil {
			return err
		}
		k += added
		if added < n {
			if p.dead != nil && isClosed(p.dead) {
				return errors.New("publisher connection lost")
			}
			return nil // the step's time is up
		}
	}
	return nil
}

func isClosed(ch chan struct{}) bool {
	select {
	case <-ch:
		return true
	default:
		return false
	}
}
