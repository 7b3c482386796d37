package bench

import (
	"bytes"
	"errors"
	"fmt"
	"io"
	"net"
	"net/url"
	"slices"
	"strconv"
	"strings"
	"time"
)

// Publish modes.
const (
	PubWS  = "ws"  // herald.v1 publish commands on WebSocket connections, pipelined
	PubRaw = "raw" // raw mode: frames on /ws/raw?channel=… connections
	PubAPI = "api" // POST /api/v1/publish on the HTTP API
)

// Subscribe modes.
const (
	SubProtocol = "protocol" // /ws and a subscribe command
	SubRaw      = "raw"      // /ws/raw?channel=…
)

// Subscriber readers: how the generator reads its subscribers' sockets.
const (
	// ReaderEpoll: a few loops (one per CPU) wait on epoll and read every
	// subscriber socket themselves (Linux, ws:// only). The default there:
	// it costs the generator far less CPU per delivery, CPU it would
	// otherwise take from the server it shares the machine with.
	ReaderEpoll = "epoll"
	// ReaderGoroutine: one goroutine per subscriber reads through
	// gorilla/websocket (every platform, ws:// and wss://).
	ReaderGoroutine = "goroutine"
)

// Rate is one step's publication rate: a fixed number of publications per
// second, over all channels, or Max: as fast as the server accepts them
// (each WebSocket publisher keeps Window commands outstanding).
type Rate struct {
	PerSecond float64
	Max       bool
}

func (r Rate) String() string {
	if r.Max {
		return "max"
	}
	return strconv.FormatFloat(r.PerSecond, 'f', -1, 64)
}

// ParseRates parses "100", "100,200,500", "max", "100,max", or "" / "none"
// (no publishing: connect, hold, measure).
func ParseRates(s string) ([]Rate, error) {
	s = strings.TrimSpace(s)
	if s == "" || s == "none" {
		return nil, nil
	}
	var out []Rate
	for f := range strings.SplitSeq(s, ",") {
		f = strings.TrimSpace(f)
		if f == "max" {
			out = append(out, Rate{Max: true})
			continue
		}
		v, err := strconv.ParseFloat(f, 64)
		if err != nil || v <= 0 || v > 10_000_000 {
			return nil, fmt.Errorf("bad rate %q: want a number of publications per second (0 < r ≤ 1e7) or max", f)
		}
		out = append(out, Rate{PerSecond: v})
	}
	return out, nil
}

// Config is one benchmark run. Run fills zero fields with the defaults in
// the comments.
type Config struct {
	// URL is the herald.v1 WebSocket endpoint, e.g. ws://127.0.0.1:8080/ws.
	// A comma-separated list spreads the subscribers over several nodes,
	// round robin: subscriber i connects to the (i mod n)th.
	URL string
	// RawURL is the raw-mode endpoint; empty means URL with /ws → /ws/raw.
	// With several URLs it is a list of as many, in the same order.
	RawURL string
	// PubURL is the publishers' herald.v1 endpoint, to publish on one node
	// and subscribe on another (joined by a broker); empty means the first
	// of URL. In raw publish mode the publishers use PubURL with /raw
	// appended (or, without PubURL, the first of RawURL).
	PubURL string
	// APIURL is the HTTP API's publish route (for PubMode api); empty means
	// the publishers' host (PubURL, else URL) with /api/v1/publish. APIKey
	// is its key.
	APIURL string
	APIKey string

	// Protocol is what the connections speak: ProtoHerald (default),
	// ProtoCentrifuge (the centrifuge baseline; protocol subscribers and ws
	// publishers only) or ProtoPusher (proto_pusher.go; protocol
	// subscribers and api publishers only).
	Protocol string
	// Token, when set, is a connection token every subscriber sends in a
	// connect command before subscribing.
	Token string
	// Churn runs the churn scenario instead of fan-out (see churn.go): each
	// rate of Rates is connection cycles per second — dial, connect with a
	// token minted from JWTSecret (when set), subscribe, close.
	Churn     bool
	JWTSecret string
	// CAFile is a PEM certificate to trust for wss:// targets (the suite's
	// self-signed one); empty means the system's roots.
	CAFile string

	// Channels (default 1) each get Subscribers subscribers (default 10):
	// Channels × Subscribers connections.
	Channels    int
	Subscribers int
	SubMode     string // protocol (default) or raw
	// Reader is ReaderEpoll (the default on Linux for ws:// targets) or
	// ReaderGoroutine (the default elsewhere).
	Reader string
	// PubMode is ws (default), raw or api. Publishers is the number of
	// publishing connections (api: concurrent HTTP requests); channel c is
	// published by publisher c mod Publishers, so each channel's numbers come
	// from one place, in order. Default 1 (api: 4); raw mode needs one
	// connection per channel and opens them all.
	PubMode    string
	Publishers int
	// Window is how many publish commands a ws publisher keeps outstanding
	// (default 1024); at Max rate it is what "as fast as accepted" means.
	Window int

	// Rates are the steps; none means connect, hold Idle, measure, stop.
	Rates        []Rate
	StepDuration time.Duration // default 5s
	Payload      int           // bytes, a JSON string; default 128, at least MinPayload
	// Drain bounds the wait after each step for deliveries still on their
	// way (default 5s); it ends sooner once every delivery arrived, or when
	// none arrived for a second while some are missing.
	Drain time.Duration
	// OnTime is the latency within which a delivery counts as on time
	// (default 100ms). A step passes with no loss, no duplicate, no
	// subscriber cut and at least 97% of the deliveries due at its target
	// rate on time.
	OnTime time.Duration
	// MaxP99, when set, is one more condition for a step to pass: its
	// latency p99 at most this (the many-rooms scenario's 100 ms).
	MaxP99 time.Duration
	// StopAfterFails ends the run after that many steps in a row did not
	// pass (0: run every step). Two, not one, so that one step spoiled by a
	// hiccup of a shared machine does not end a stepped search early.
	StopAfterFails int

	// ConnectRate paces new connections per second (default 2000);
	// ConnectConcurrency bounds handshakes in flight (default 64).
	ConnectRate        float64
	ConnectConcurrency int
	// Sources are the local addresses connections come from, in turn (one
	// address has about 28k ephemeral ports). Default for a 127.x target:
	// 127.0.0.2 … 127.0.0.9.
	Sources []net.IP
	// Idle is how long to hold the connections after they are all
	// subscribed, before the steps; the server's RSS is read at its end.
	// Default 0 with steps, 10s without.
	Idle time.Duration

	// ServerPID or MetricsURL (Prometheus text) let the run report server
	// RSS per connection and CPU seconds per million deliveries (the pid
	// wins when both are given). ServerPIDs are more servers (the nodes of
	// a cluster), as is a comma-separated list of metrics URLs: with
	// several servers the figures are sums over them, and each step also
	// reports each server's CPU.
	ServerPID  int
	ServerPIDs []int
	MetricsURL string

	// Timeout bounds the whole run; default: the plan's own length plus a
	// margin (printed with the plan).
	Timeout time.Duration
	Label   string
	// Scenario names the preset the run came from (recorded in the plan).
	Scenario string
	// ChannelPrefix names the channels: prefix0, prefix1, … (default "bench.").
	ChannelPrefix string

	// Endpoints as used, set by applyDefaults from URL, RawURL and PubURL.
	subURLs, subRawURLs []string
	pubURL, pubRawURL   string

	// Text receives the human report, JSON one JSON object per line (plan,
	// connect, progress every second, step, summary), Progress a live
	// progress line (a terminal). Any may be nil.
	Text, JSON, Progress io.Writer
}

func (c *Config) applyDefaults() error {
	if strings.TrimSpace(c.URL) == "" {
		return errors.New("no target URL (-url ws://HOST:PORT/ws)")
	}
	var err error
	if c.subURLs, err = parseWSURLs(c.URL); err != nil {
		return err
	}
	if c.RawURL == "" {
		c.subRawURLs = make([]string, len(c.subURLs))
		for i, s := range c.subURLs {
			c.subRawURLs[i] = rawOf(s)
		}
		c.RawURL = strings.Join(c.subRawURLs, ",")
	} else {
		c.subRawURLs = splitList(c.RawURL)
		if len(c.subRawURLs) != len(c.subURLs) {
			return fmt.Errorf("%d raw URLs for %d URLs: give one raw-mode endpoint per node, in the same order", len(c.subRawURLs), len(c.subURLs))
		}
	}
	c.pubURL, c.pubRawURL = c.subURLs[0], c.subRawURLs[0]
	if c.PubURL != "" {
		p, err := parseWSURLs(c.PubURL)
		if err != nil {
			return err
		}
		if len(p) != 1 {
			return fmt.Errorf("bad publish URL %q: want one endpoint", c.PubURL)
		}
		c.pubURL, c.pubRawURL = p[0], rawOf(p[0])
	}
	u, _ := url.Parse(c.pubURL)
	if c.APIURL == "" {
		a := *u
		a.Scheme = "http"
		if u.Scheme == "wss" {
			a.Scheme = "https"
		}
		a.Path = "/api/v1/publish"
		c.APIURL = a.String()
	}
	def := func(v *int, d int) {
		if *v <= 0 {
			*v = d
		}
	}
	defDur := func(v *time.Duration, d time.Duration) {
		if *v <= 0 {
			*v = d
		}
	}
	switch c.Protocol {
	case "":
		c.Protocol = ProtoHerald
	case ProtoHerald:
	case ProtoCentrifuge:
		if c.SubMode == SubRaw || c.PubMode == PubRaw || c.PubMode == PubAPI {
			return errors.New("the centrifuge protocol has protocol subscribers and ws publishers only")
		}
	case ProtoPusher:
		if err := c.pusherDefaults(); err != nil {
			return err
		}
	default:
		return fmt.Errorf("bad protocol %q: want herald, centrifuge or pusher", c.Protocol)
	}
	def(&c.Channels, 1)
	def(&c.Subscribers, 10)
	if c.SubMode == "" {
		c.SubMode = SubProtocol
	}
	if c.PubMode == "" {
		c.PubMode = PubWS
	}
	switch c.PubMode {
	case PubWS:
		def(&c.Publishers, 1)
	case PubAPI:
		def(&c.Publishers, 4)
	case PubRaw:
		def(&c.Publishers, 1)
	default:
		return fmt.Errorf("bad publish mode %q: want ws, raw or api", c.PubMode)
	}
	if c.SubMode != SubProtocol && c.SubMode != SubRaw {
		return fmt.Errorf("bad subscribe mode %q: want protocol or raw", c.SubMode)
	}
	plain := true
	for _, u := range append(c.subURLs, c.subRawURLs...) {
		plain = plain && strings.HasPrefix(u, "ws://")
	}
	switch c.Reader {
	case "":
		c.Reader = ReaderGoroutine
		if epollReader && plain {
			c.Reader = ReaderEpoll
		}
	case ReaderGoroutine:
	case ReaderEpoll:
		if !epollReader {
			return fmt.Errorf("the epoll reader needs Linux: use -reader goroutine")
		}
		if !plain {
			return fmt.Errorf("the epoll reader reads plain ws:// sockets: use -reader goroutine for wss://")
		}
	default:
		return fmt.Errorf("bad reader %q: want epoll or goroutine", c.Reader)
	}
	c.Publishers = min(c.Publishers, c.Channels)
	def(&c.Window, 1024)
	defDur(&c.StepDuration, 5*time.Second)
	def(&c.Payload, 128)
	if c.Payload < MinPayload {
		return fmt.Errorf("payload of %d bytes is too small: at least %d carry the sequence number and timestamp", c.Payload, MinPayload)
	}
	if c.Payload > 60<<10 {
		return fmt.Errorf("payload of %d bytes is over the server's default 64 KiB message limit", c.Payload)
	}
	defDur(&c.Drain, 5*time.Second)
	defDur(&c.OnTime, 100*time.Millisecond)
	if c.ConnectRate <= 0 {
		c.ConnectRate = 2000
	}
	def(&c.ConnectConcurrency, 64)
	if c.Churn && len(c.Rates) == 0 {
		return errors.New("churn needs rates: connection cycles per second")
	}
	if c.Churn && slices.ContainsFunc(c.Rates, func(r Rate) bool { return r.Max }) {
		return errors.New("churn takes fixed rates, not max")
	}
	if len(c.Rates) == 0 && c.Idle <= 0 && !c.Churn {
		c.Idle = 10 * time.Second
	}
	if c.Sources == nil && c.allLoopback4() {
		for i := 2; i <= 9; i++ {
			c.Sources = append(c.Sources, net.IPv4(127, 0, 0, byte(i)))
		}
	}
	if c.ChannelPrefix == "" {
		c.ChannelPrefix = "bench."
	}
	if len(c.Rates) > 100 {
		return errors.New("more than 100 steps")
	}
	if c.StepDuration > time.Hour || c.Idle > time.Hour {
		return errors.New("a step or the idle hold is over an hour: every run is bounded")
	}
	if c.Timeout <= 0 {
		c.Timeout = c.planLength() + time.Minute
	}
	return c.checkCapacity()
}

// splitList splits a comma-separated list, dropping empty items.
func splitList(s string) []string {
	var out []string
	for f := range strings.SplitSeq(s, ",") {
		if f = strings.TrimSpace(f); f != "" {
			out = append(out, f)
		}
	}
	return out
}

// parseWSURLs parses a comma-separated list of ws:// or wss:// URLs.
func parseWSURLs(s string) ([]string, error) {
	list := splitList(s)
	if len(list) == 0 {
		return nil, fmt.Errorf("bad URL %q: want ws://HOST:PORT/PATH", s)
	}
	for _, f := range list {
		u, err := url.Parse(f)
		if err != nil || (u.Scheme != "ws" && u.Scheme != "wss") || u.Host == "" {
			return nil, fmt.Errorf("bad URL %q: want ws://HOST:PORT/PATH", f)
		}
	}
	return list, nil
}

// rawOf is a herald.v1 endpoint's raw-mode endpoint: its path with /raw
// appended.
func rawOf(s string) string {
	u, _ := url.Parse(s)
	r := *u
	r.Path = strings.TrimSuffix(r.Path, "/") + "/raw"
	return r.String()
}

// allLoopback4 reports whether every endpoint is an IPv4 loopback address
// (where the default source addresses 127.0.0.2 … 127.0.0.9 work).
func (c *Config) allLoopback4() bool {
	for _, s := range append([]string{c.pubURL}, c.subURLs...) {
		u, err := url.Parse(s)
		if err != nil {
			return false
		}
		ip := net.ParseIP(u.Hostname())
		if ip == nil || ip.To4() == nil || !ip.IsLoopback() {
			return false
		}
	}
	return true
}

// nodes is the number of distinct endpoints (host:port) the plan talks to:
// 1 for a single server, 2 or more across nodes.
func (c *Config) nodes() int {
	seen := map[string]bool{}
	for _, s := range append([]string{c.pubURL}, c.subURLs...) {
		if u, err := url.Parse(s); err == nil {
			seen[u.Host] = true
		}
	}
	return len(seen)
}

// subscriberNode is the index in subURLs of subscriber i's endpoint:
// each channel's subscribers go to the nodes in turn (subscriber i is the
// (i / Channels)th of channel i mod Channels), and channel c's first
// subscriber to node c mod n, so that every channel is spread over every
// node.
func (c *Config) subscriberNode(i int) int {
	return (i/c.Channels + i%c.Channels) % len(c.subURLs)
}

// pids is every server pid given.
func (c *Config) pids() []int {
	var out []int
	if c.ServerPID > 0 {
		out = append(out, c.ServerPID)
	}
	for _, p := range c.ServerPIDs {
		if p > 0 && !slices.Contains(out, p) {
			out = append(out, p)
		}
	}
	return out
}

// ParsePIDs parses "1234" or "1234,5678" (the servers of one run).
func ParsePIDs(s string) ([]int, error) {
	var out []int
	for _, f := range splitList(s) {
		p, err := strconv.Atoi(f)
		if err != nil || p <= 0 {
			return nil, fmt.Errorf("bad pid %q", f)
		}
		out = append(out, p)
	}
	return out, nil
}

// connections is how many sockets the plan opens: subscribers plus
// publishers.
func (c *Config) connections() (subs, pubs int) {
	if c.Churn {
		return c.ConnectConcurrency, 0 // cycles in flight at once
	}
	subs = c.Channels * c.Subscribers
	switch c.PubMode {
	case PubRaw:
		pubs = c.Channels
	default:
		pubs = c.Publishers
	}
	if len(c.Rates) == 0 {
		pubs = 0
	}
	return subs, pubs
}

// planLength estimates how long the plan runs.
func (c *Config) planLength() time.Duration {
	subs, pubs := c.connections()
	connect := time.Duration(float64(subs+pubs)/c.ConnectRate*float64(time.Second)) * 2
	if c.Churn {
		connect = 0
	}
	steps := time.Duration(len(c.Rates)) * (c.StepDuration*2 + c.Drain)
	return connect + c.Idle + steps
}

// filesReserved is kept free of the file cap for everything but the
// benchmark's sockets: standard streams, the HTTP client, /proc reads, Go's
// runtime.
const filesReserved = 64

// checkCapacity refuses plans that cannot run on this machine: more sockets
// than this process may open, or more connections from one source address
// than it has ephemeral ports.
func (c *Config) checkCapacity() error {
	subs, pubs := c.connections()
	need := subs + pubs
	if c.PubMode == PubAPI {
		need += c.Publishers
	}
	if limit := fileLimit(); need+filesReserved > limit {
		return fmt.Errorf("the plan opens %d sockets but this process may open %d files (ulimit -n) and keeps %d for itself; "+
			"plan fewer connections, e.g. 1,000 channels x 10 subscribers or 10,000 channels x 1", need, limit, filesReserved)
	}
	perSource := need
	if len(c.Sources) > 0 {
		perSource = (need + len(c.Sources) - 1) / len(c.Sources)
	}
	if ports := ephemeralPorts(); perSource > ports*9/10 {
		return fmt.Errorf("%d connections per source address would use up its %d ephemeral ports; add source addresses (-sources)", perSource, ports)
	}
	return nil
}

// ParseSources parses "127.0.0.2-127.0.0.9", "127.0.0.2,127.0.0.3", or
// "none" (let the kernel pick).
func ParseSources(s string) ([]net.IP, error) {
	s = strings.TrimSpace(s)
	if s == "" {
		return nil, nil
	}
	if s == "none" {
		return []net.IP{}, nil
	}
	if lo, hi, ok := strings.Cut(s, "-"); ok {
		a, b := net.ParseIP(lo).To4(), net.ParseIP(hi).To4()
		if a == nil || b == nil || !bytes.Equal(a[:3], b[:3]) || a[3] > b[3] {
			return nil, fmt.Errorf("bad source range %q: want A.B.C.x-A.B.C.y", s)
		}
		var out []net.IP
		for i := int(a[3]); i <= int(b[3]); i++ {
			out = append(out, net.IPv4(a[0], a[1], a[2], byte(i)))
		}
		return out, nil
	}
	var out []net.IP
	for f := range strings.SplitSeq(s, ",") {
		ip := net.ParseIP(strings.TrimSpace(f))
		if ip == nil {
			return nil, fmt.Errorf("bad source address %q", f)
		}
		out = append(out, ip)
	}
	return out, nil
}
