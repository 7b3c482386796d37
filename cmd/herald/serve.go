package main

import (
	"context"
	"crypto/tls"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net"
	"net/http"
	"net/netip"
	"net/url"
	"os"
	"strings"
	"sync/atomic"
	"time"

	"github.com/heraldhq/herald"
	"github.com/heraldhq/herald/dashboard"
	"github.com/heraldhq/herald/httpapi"
	"github.com/heraldhq/herald/httphooks"
	"github.com/heraldhq/herald/pusherapi"
	"github.com/heraldhq/herald/web"
)

// idleTimeout closes keep-alive HTTP connections that sit unused, so idle
// browsers and proxies do not pin sockets forever. WebSocket connections are
// hijacked from the HTTP server and have their own heartbeat instead.
const idleTimeout = 120 * time.Second

// serveOptions are what serve needs besides the configuration: where the
// logs go, and for SIGHUP the signal channel and how to read the
// configuration again (from the same flags, environment and file).
type serveOptions struct {
	logOut io.Writer
	reload <-chan os.Signal
	load   func() (Config, error)
}

// instance is one running `herald serve`: the node and what the binary owns
// around it, some of which SIGHUP may change (see reload.go). Fields that
// HTTP handlers read while a reload writes them are atomic; the rest are
// used by serve's goroutine only.
type instance struct {
	cfg    Config // as running: reloadable fields follow each reload
	logger *slog.Logger
	level  *slog.LevelVar
	logs   *dashboard.LogRecorder // the logger's recent warnings and errors
	node   *herald.Node
	dash   *dashboard.Dashboard
	hooks  *httphooks.Backend // nil: no hook is on, nor the webhooks
	// webhookStoreShared: the broker keeps the webhooks' outbox (else the
	// node keeps it in memory).
	webhookStoreShared bool

	draining atomic.Bool                     // /readyz fails from the first signal on
	api      atomic.Pointer[http.Handler]    // nil: the API is off
	apiKey   string                          // the key api serves with
	metrics  atomic.Bool                     // serve /metrics
	cert     atomic.Pointer[tls.Certificate] // with TLS: the certificate served
	// proxies are the trusted proxies in force (trusted_proxies), for the
	// PROXY protocol listener, which decides on accept while a reload may
	// change them.
	proxies atomic.Pointer[[]netip.Prefix]
	// fileSums are digests of the files read at start only (JWT keys), so a
	// reload can tell that one changed and needs a restart.
	fileSums map[string]string
}

// serve runs the server until ctx is done, then drains and shuts it down:
// /readyz fails at once (load balancers stop sending new clients), WebSocket
// clients get close 1012 (service restart: reconnect, to another node)
// spread over drain_window, then the rest get 1001 after what is already
// queued for them, and in-flight HTTP requests finish, within
// shutdown_timeout. SIGHUP (opts.reload) reloads what can change while
// running. It returns nil after a clean shutdown, and an error if the server
// failed or the shutdown ran out of time.
func serve(ctx context.Context, cfg Config, opts serveOptions) error {
	in := newInstance(cfg, opts.logOut)
	secrets, err := in.readSecrets()
	if err != nil {
		return err
	}
	// The verifier's JWKS fetches, if any, end with serve, or as soon as
	// ctx is done: SIGTERM must not wait for a JWKS host that hangs at start.
	authCtx, stopAuth := context.WithCancel(context.Background())
	defer stopAuth()
	defer context.AfterFunc(ctx, stopAuth)()
	closeBroker, err := in.newNode(ctx, authCtx)
	if err != nil {
		return err
	}
	// The broker is closed after the node has stopped (Run has returned),
	// as both brokers require: shutdown waits for Run.
	defer closeBroker()
	in.mount(secrets)
	ln, err := in.listen(secrets.tls)
	if err != nil {
		_ = in.node.Shutdown(context.Background()) // nothing runs yet: returns at once
		return err
	}
	run := in.start(ln, secrets.tls != nil)
	signalled := in.wait(ctx, opts, run)
	return in.shutdown(run, signalled)
}

// newInstance makes the instance of cfg, with its logger writing to logOut.
func newInstance(cfg Config, logOut io.Writer) *instance {
	in := &instance{cfg: cfg, level: new(slog.LevelVar)}
	in.setProxies(cfg.TrustedProxies)
	in.logger, in.logs = newLogger(cfg, logOut, in.level)
	in.cfg.normalize()
	return in
}

// newLogger builds the server's logger: text or JSON to w, at a level that
// SIGHUP can change (level), through a LogRecorder that keeps the WARN and
// ERROR records for the dashboard whatever the level.
func newLogger(cfg Config, w io.Writer, level *slog.LevelVar) (*slog.Logger, *dashboard.LogRecorder) {
	level.Set(cfg.LogLevel)
	opts := &slog.HandlerOptions{Level: level}
	var h slog.Handler = slog.NewTextHandler(w, opts)
	if cfg.LogFormat == "json" {
		h = slog.NewJSONHandler(w, opts)
	}
	rec := dashboard.NewLogRecorder(h, dashboard.DefaultLogRecords)
	return slog.New(rec), rec
}

// startSecrets are what serve reads at start besides the configuration:
// the TLS certificate (a nil config: plain HTTP), the API key and the admin
// password, from their files where the configuration names files.
type startSecrets struct {
	tls           *tls.Config
	apiKey        string
	adminPassword string
}

func (in *instance) readSecrets() (s startSecrets, err error) {
	if s.tls, err = in.tlsConfig(); err != nil {
		return s, err
	}
	if s.apiKey, err = in.cfg.apiKey(); err != nil {
		return s, err
	}
	if s.adminPassword, err = in.cfg.adminPassword(); err != nil {
		return s, err
	}
	in.fileSums = startFileSums(&in.cfg)
	return s, nil
}

// newNode makes the node, with its token verifier (whose JWKS fetches end
// with authCtx) and its broker, and returns the function that closes the
// broker: call it once the node has stopped.
func (in *instance) newNode(ctx, authCtx context.Context) (closeBroker func(), err error) {
	tokens, err := in.cfg.tokenVerifier(authCtx, in.logger)
	if err != nil {
		return nil, err
	}
	broker, closeBroker, err := in.cfg.newBroker(ctx, in.logger)
	if err != nil {
		return nil, err
	}
	hooks, err := in.cfg.Hooks.backend(in.cfg.Webhooks.URL, in.cfg.Webhooks.Timeout)
	if err != nil {
		closeBroker()
		return nil, err
	}
	if err := in.checkWebhookOutbox(broker); err != nil {
		closeBroker()
		return nil, err
	}
	nodeCfg := in.cfg.nodeConfig(in.logger)
	nodeCfg.Broker = broker
	if tokens != nil {
		nodeCfg.Tokens = tokens
	}
	if hooks != nil {
		nodeCfg.Hooks = hooks.Hooks()
		nodeCfg.Webhooks = in.cfg.Webhooks.webhooks(hooks)
	}
	nodeCfg.PusherApps = in.cfg.pusherApps()
	if nodeCfg.Webhooks, err = in.cfg.withPusherWebhooks(nodeCfg.Webhooks); err != nil {
		closeBroker()
		return nil, err
	}
	if in.node, err = herald.New(nodeCfg); err != nil {
		closeBroker()
		return nil, fmt.Errorf("failed to create node: %w", err)
	}
	in.hooks = hooks
	// The hooks' idle connections are closed with the broker, once the
	// node has stopped and no hook can be called.
	brokerClose := closeBroker // the named result is about to be this func
	return func() {
		brokerClose()
		if hooks != nil {
			hooks.Close()
		}
	}, nil
}

// checkWebhookOutbox refuses webhooks on a broker that keeps no outbox
// for them, and records whether the outbox is shared. Nodes joined by a
// broker that keeps none would each think they hold every user alone: one
// event per node, not per happening. Refuse rather than send those.
func (in *instance) checkWebhookOutbox(broker herald.Broker) error {
	if in.cfg.Webhooks.URL == "" && !in.cfg.pusherWebhooks() {
		return nil
	}
	_, in.webhookStoreShared = broker.(herald.EventStoreProvider)
	if broker != nil && !in.webhookStoreShared {
		return fmt.Errorf("webhooks on (webhook_url or a Pusher app's webhooks), but broker %s keeps no webhook outbox (herald.EventStoreProvider): use broker redis, or memory for one node", in.cfg.Broker)
	}
	return nil
}

// mount sets up what the routes serve around the node — metrics, the HTTP
// API, the dashboard — and logs what is on.
func (in *instance) mount(s startSecrets) {
	in.metrics.Store(in.cfg.Metrics)
	in.setAPIKey(s.apiKey)
	in.dash = dashboard.New(in.node, dashboard.Config{
		Password: s.adminPassword,
		Secure:   s.tls != nil,
		Ready:    in.ready, // fails from the first signal on, as /readyz does
		Logs:     in.logs,
		Logger:   in.logger,
		Version:  versionString(),
		Broker:   in.cfg.Broker,
	})
	logAuth(in.logger, &in.cfg)
	logHooks(in.logger, &in.cfg.Hooks, in.hooks)
	logWebhooks(in.logger, &in.cfg, in.webhookStoreShared)
	in.logOps()
}

// listen listens before serving, so that the address actually bound (port
// 0 picks one) can be logged, and a busy port fails here, clearly.
func (in *instance) listen(tlsConfig *tls.Config) (net.Listener, error) {
	ln, err := net.Listen("tcp", in.cfg.Addr)
	if err != nil {
		return nil, fmt.Errorf("failed to listen on %s: %w", in.cfg.Addr, err)
	}
	if in.cfg.ProxyProtocol {
		// Under TLS: a PROXY header comes before the TLS handshake.
		ln = in.proxyListener(ln)
	}
	if tlsConfig != nil {
		// The TLS handshake runs on each connection's goroutine, bounded
		// by ReadHeaderTimeout like the request headers.
		ln = tls.NewListener(ln, tlsConfig)
	}
	return ln, nil
}

// running is what start started, each on a goroutine of its own: the
// node's Run, the HTTP server and the dashboard's sampler. An error is set
// before its done channel is closed, and read after.
type running struct {
	srv                        *http.Server
	stop                       context.CancelFunc // ends Run and the sampler
	runDone, serveDone, sample chan struct{}
	runErr, serveErr           error
}

// start serves on ln and runs the node and the dashboard's sampler.
func (in *instance) start(ln net.Listener, tlsOn bool) *running {
	run := &running{
		srv: &http.Server{
			Handler:           in.routes(),
			ReadHeaderTimeout: in.cfg.ReadHeaderTimeout,
			IdleTimeout:       idleTimeout,
			ErrorLog:          slog.NewLogLogger(in.logger.Handler(), slog.LevelWarn),
		},
		runDone: make(chan struct{}), serveDone: make(chan struct{}), sample: make(chan struct{}),
	}
	if in.cfg.ProxyProtocol {
		// The PROXY header's source is the client: see proxyproto.go.
		run.srv.ConnContext = connContext
		run.srv.Handler = dropForwardedBehindPROXY(run.srv.Handler)
	}
	// The node runs on its own context rather than serve's: were that to
	// stop it, Run would shut the node down itself with only CloseGrace to
	// drain, racing shutdown's Drain and Shutdown. Shutdown ends Run.
	runCtx, stop := context.WithCancel(context.Background())
	run.stop = stop
	go func() {
		defer close(run.runDone)
		run.runErr = in.node.Run(runCtx)
	}()
	go func() {
		defer close(run.serveDone)
		run.serveErr = run.srv.Serve(ln)
	}()
	// The dashboard's charts sample the node's counters once a second, so
	// that a page opened now shows the last minutes, not an empty chart.
	go func() {
		defer close(run.sample)
		in.dash.Run(runCtx)
	}()
	in.logger.Info("listening", "addr", ln.Addr().String(), "tls", tlsOn, "version", versionString())
	// A newcomer's next step, spelt out: the address bound is not always
	// one a browser can open (":8080" binds "[::]:8080").
	in.logger.Info("open the demo chat", "url", demoURL(ln.Addr(), tlsOn))
	return run
}

// demoURL is the address of the demo chat page on addr, the listener's:
// localhost for a wildcard address (every interface, loopback included),
// else the address itself.
func demoURL(addr net.Addr, tlsOn bool) string {
	host, port, err := net.SplitHostPort(addr.String())
	if err != nil {
		return "" // not TCP: no URL to give
	}
	if ip := net.ParseIP(host); ip != nil && ip.IsUnspecified() {
		host = "localhost"
	}
	u := url.URL{Scheme: "http", Host: net.JoinHostPort(host, port), Path: "/"}
	if tlsOn {
		u.Scheme = "https"
	}
	return u.String()
}

// wait serves until ctx is done (signalled: SIGINT or SIGTERM) or the
// server or the node fails, reloading on each SIGHUP meanwhile.
func (in *instance) wait(ctx context.Context, opts serveOptions, run *running) (signalled bool) {
	for {
		select {
		case <-ctx.Done():
			in.logger.Info("shutting down", "drain_window", in.cfg.drainWindow().String(), "timeout", in.cfg.ShutdownTimeout.String())
			return true
		case <-opts.reload:
			in.reload(opts.load)
		case <-run.serveDone:
			in.logger.Error("HTTP server stopped unexpectedly; shutting down", "err", run.serveErr)
			return false
		case <-run.runDone:
			in.logger.Error("node stopped unexpectedly; shutting down", "err", run.runErr)
			return false
		}
	}
}

// shutdown drains the node after a signal, shuts the node and the HTTP
// server down within shutdown_timeout, waits for what start started, and
// returns every failure, of the run and of the shutdown.
func (in *instance) shutdown(run *running, signalled bool) error {
	// Readiness fails first, before any client is told to go, so that load
	// balancers stop sending new ones here while the others leave.
	in.draining.Store(true)
	var errs []error
	if window := in.cfg.drainWindow(); signalled && window > 0 {
		if err := in.drain(window); err != nil {
			errs = append(errs, err)
		}
	}
	// One deadline for the rest of the shutdown: it is what an operator (or
	// a container runtime's kill timeout, minus drain_window) plans around.
	timeout := in.cfg.ShutdownTimeout
	sctx, cancel := context.WithTimeout(context.Background(), timeout)
	defer cancel()
	if err := in.node.Shutdown(sctx); err != nil {
		errs = append(errs, fmt.Errorf("failed to drain WebSocket connections within %s: %w", timeout, err))
	}
	if err := run.srv.Shutdown(sctx); err != nil {
		errs = append(errs, fmt.Errorf("failed to finish HTTP requests within %s: %w", timeout, err))
		_ = run.srv.Close()
	}
	run.stop()
	<-run.runDone
	<-run.serveDone
	<-run.sample
	if !errors.Is(run.serveErr, http.ErrServerClosed) {
		errs = append(errs, fmt.Errorf("failed to serve HTTP: %w", run.serveErr))
	}
	if run.runErr != nil {
		errs = append(errs, fmt.Errorf("failed to run node: %w", run.runErr))
	} else if !signalled && len(errs) == 0 {
		errs = append(errs, errors.New("failed to keep serving: node stopped without an error"))
	}
	if err := errors.Join(errs...); err != nil {
		in.logger.Error("stopped with errors", "err", err)
		return err
	}
	in.logger.Info("stopped")
	return nil
}

// drain tells every WebSocket client to reconnect elsewhere (close 1012),
// spread over window. Drain returns once every client has been told, about
// window from now; the extra shutdown_timeout only guards against a drain
// that would not end.
func (in *instance) drain(window time.Duration) error {
	bound := window + in.cfg.ShutdownTimeout
	ctx, cancel := context.WithTimeout(context.Background(), bound)
	defer cancel()
	start := time.Now()
	err := in.node.Drain(ctx, window)
	in.logger.Info("drained", "took", time.Since(start).Round(time.Millisecond).String())
	if err != nil {
		return fmt.Errorf("failed to drain within %s: %w", bound, err)
	}
	return nil
}

// setAPIKey mounts the HTTP API with key, or unmounts it for "". Building
// the handler is cheap, so a new key simply gets a new handler.
func (in *instance) setAPIKey(key string) {
	in.apiKey = key
	if key == "" {
		in.api.Store(nil)
		return
	}
	h := httpapi.Handler(in.node, httpapi.Config{Key: key, Logger: in.logger})
	in.api.Store(&h)
}

// logOps says at start what the operator endpoints are, so that a missing
// one is not a mystery. Secrets are never logged, only whether they are set.
func (in *instance) logOps() {
	attrs := []any{"healthz", "/healthz", "readyz", "/readyz"}
	if in.metrics.Load() {
		attrs = append(attrs, "metrics", "/metrics")
	}
	if in.api.Load() != nil {
		attrs = append(attrs, "api", "/api/")
	}
	if in.dash.Enabled() {
		attrs = append(attrs, "admin", "/admin")
	}
	in.logger.Info("operator endpoints", attrs...)
	for _, name := range in.cfg.onCommandLine {
		in.logger.Warn(name + " was given as a flag: every user of this machine can read it in the process list; use HERALD_" +
			strings.ToUpper(name) + " or " + name + "_file instead")
	}
	if in.api.Load() != nil && in.cfg.TLSCert == "" {
		in.logger.Info("the HTTP API is served over plain HTTP: keep it on a private network, or behind a proxy that terminates TLS")
	}
}

// tlsConfig loads the certificate and key, or returns nil for plain HTTP.
// The certificate is served through GetCertificate, so that SIGHUP can
// swap in a renewed one without a restart.
//
// The server speaks HTTP/1.1 only over TLS: a WebSocket upgrade (RFC 6455)
// needs HTTP/1.1, and offering h2 would let a client try WebSocket over
// HTTP/2 (RFC 8441), which Herald does not serve. The demo page and the
// health check lose nothing that matters.
func (in *instance) tlsConfig() (*tls.Config, error) {
	c := &in.cfg
	if c.TLSCert == "" {
		return nil, nil
	}
	cert, err := c.loadCertificate()
	if err != nil {
		return nil, err
	}
	in.cert.Store(cert)
	return &tls.Config{
		GetCertificate: func(*tls.ClientHelloInfo) (*tls.Certificate, error) { return in.cert.Load(), nil },
		MinVersion:     tls.VersionTLS12,
		NextProtos:     []string{"http/1.1"},
	}, nil
}

func (c *Config) loadCertificate() (*tls.Certificate, error) {
	cert, err := tls.LoadX509KeyPair(c.TLSCert, c.TLSKey)
	if err != nil {
		return nil, fmt.Errorf("failed to load tls_cert %s and tls_key %s: %w", c.TLSCert, c.TLSKey, err)
	}
	return &cert, nil
}

// routes routes the server's endpoints. The API, metrics and dashboard
// are always routed and answer 404 while off, so that SIGHUP can turn them
// on and off.
func (in *instance) routes() *http.ServeMux {
	mux := http.NewServeMux()
	mux.Handle("GET /ws", in.node.Handler())
	mux.Handle("GET /ws/raw", in.node.RawHandler())
	mux.Handle("GET /sse", in.node.SSEHandler())
	if len(in.cfg.PusherApps) > 0 {
		// Pusher's paths: pusher-js connects to /app/{key}, the server
		// SDKs call /apps/{app_id}/… (docs/pusher.md).
		mux.Handle("GET /app/{key}", in.node.PusherHandler())
		mux.Handle("/apps/", pusherapi.Handler(in.node, pusherapi.Config{Logger: in.logger}))
	}
	// Liveness: the process answers. It stays 200 while draining, so that
	// an orchestrator does not kill a server that is leaving on purpose.
	mux.HandleFunc("GET /healthz", func(w http.ResponseWriter, r *http.Request) {
		plain(w, http.StatusOK, "ok")
	})
	mux.HandleFunc("GET /readyz", in.readyz)
	mux.HandleFunc("/api/", func(w http.ResponseWriter, r *http.Request) {
		h := in.api.Load()
		if h == nil {
			http.NotFound(w, r)
			return
		}
		(*h).ServeHTTP(w, r)
	})
	metrics := in.node.MetricsHandler()
	mux.HandleFunc("GET /metrics", func(w http.ResponseWriter, r *http.Request) {
		if !in.metrics.Load() {
			http.NotFound(w, r)
			return
		}
		metrics.ServeHTTP(w, r)
	})
	mux.Handle(dashboard.Path, in.dash)
	mux.Handle(dashboard.Path+"/", in.dash)
	// "/" rather than "GET /": a method-less pattern for every path would
	// conflict with "/api/" and "/admin/" in the mux's rules.
	files := web.Handler()
	mux.HandleFunc("/", func(w http.ResponseWriter, r *http.Request) {
		if r.Method != http.MethodGet && r.Method != http.MethodHead {
			w.Header().Set("Allow", "GET, HEAD")
			http.Error(w, http.StatusText(http.StatusMethodNotAllowed), http.StatusMethodNotAllowed)
			return
		}
		files.ServeHTTP(w, r)
	})
	return mux
}

// readyz is the readiness probe: 200 while the node should get new
// clients, 503 with the reason once it drains or while its broker is down.
func (in *instance) readyz(w http.ResponseWriter, r *http.Request) {
	if err := in.ready(r.Context()); err != nil {
		plain(w, http.StatusServiceUnavailable, "not ready: "+err.Error())
		return
	}
	plain(w, http.StatusOK, "ok")
}

// errDraining is what readiness says from the signal on; the node's own
// herald.ErrDraining follows once Drain starts.
var errDraining = errors.New("draining: the server is shutting down")

func (in *instance) ready(ctx context.Context) error {
	if in.draining.Load() {
		return errDraining
	}
	return in.node.Ready(ctx)
}

func plain(w http.ResponseWriter, status int, body string) {
	w.Header().Set("Content-Type", "text/plain; charset=utf-8")
	w.Header().Set("Cache-Control", "no-store")
	w.WriteHeader(status)
	_, _ = io.WriteString(w, body)
}
