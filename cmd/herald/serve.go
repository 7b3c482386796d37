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
	"sync/atomic"
	"time"

	"github.com/heraldhq/herald"
	"github.com/heraldhq/herald/web"
)

// idleTimeout closes keep-alive HTTP connections that sit unused, so idle
// browsers and proxies do not pin sockets forever. WebSocket connections are
// hijacked from the HTTP server and have their own heartbeat instead.
const idleTimeout = 120 * time.Second

// serve runs the server until ctx is done, then shuts it down gracefully:
// WebSocket clients get close 1001 ("going away", so they reconnect
// elsewhere) after what is already queued for them, then in-flight HTTP
// requests finish. It returns nil after a clean shutdown, and an error if
// the server failed or the shutdown ran out of time.
func serve(ctx context.Context, cfg Config, logOut io.Writer) error {
	logger := newLogger(cfg, logOut)
	if cfg.ReadHeaderTimeout <= 0 {
		cfg.ReadHeaderTimeout = defaultReadHeaderTimeout
	}
	if cfg.ShutdownTimeout <= 0 {
		cfg.ShutdownTimeout = defaultShutdownTimeout
	}

	tlsConfig, err := cfg.tlsConfig()
	if err != nil {
		return err
	}
	// The verifier's JWKS fetches, if any, end with serve, or as soon as
	// ctx is done: SIGTERM must not wait for a JWKS host that hangs at start.
	authCtx, stopAuth := context.WithCancel(context.Background())
	defer stopAuth()
	defer context.AfterFunc(ctx, stopAuth)()
	tokens, err := cfg.tokenVerifier(authCtx, logger)
	if err != nil {
		return err
	}
	nodeCfg := cfg.nodeConfig(logger)
	if tokens != nil {
		nodeCfg.Tokens = tokens
	}
	node, err := herald.New(nodeCfg)
	if err != nil {
		return fmt.Errorf("failed to create node: %w", err)
	}
	logAuth(logger, &cfg)
	// Listen before serving so that the address actually bound (port 0
	// picks one) can be logged, and a busy port fails here, clearly.
	ln, err := net.Listen("tcp", cfg.Addr)
	if err != nil {
		_ = node.Shutdown(context.Background()) // nothing runs yet: returns at once
		return fmt.Errorf("failed to listen on %s: %w", cfg.Addr, err)
	}
	if tlsConfig != nil {
		// The TLS handshake runs on each connection's goroutine, bounded
		// by ReadHeaderTimeout like the request headers.
		ln = tls.NewListener(ln, tlsConfig)
	}

	var draining atomic.Bool
	srv := &http.Server{
		Handler:           newMux(node, &draining),
		ReadHeaderTimeout: cfg.ReadHeaderTimeout,
		IdleTimeout:       idleTimeout,
		ErrorLog:          slog.NewLogLogger(logger.Handler(), slog.LevelWarn),
	}

	// The node runs on its own context rather than ctx: were ctx to stop it,
	// Run would shut the node down itself with only CloseGrace to drain, racing
	// the Shutdown below, which allows ShutdownTimeout. Shutdown ends Run.
	runCtx, stopRun := context.WithCancel(context.Background())
	defer stopRun()
	var runErr, serveErr error
	runDone, serveDone := make(chan struct{}), make(chan struct{})
	go func() {
		defer close(runDone)
		runErr = node.Run(runCtx)
	}()
	go func() {
		defer close(serveDone)
		serveErr = srv.Serve(ln)
	}()
	logger.Info("listening", "addr", ln.Addr().String(), "tls", tlsConfig != nil, "version", versionString())

	select {
	case <-ctx.Done():
		logger.Info("shutting down", "timeout", cfg.ShutdownTimeout.String())
	case <-serveDone:
		logger.Error("HTTP server stopped unexpectedly; shutting down", "err", serveErr)
	case <-runDone:
		logger.Error("node stopped unexpectedly; shutting down", "err", runErr)
	}

	// One deadline for the whole shutdown: it is what an operator (or a
	// container runtime's kill timeout) plans around.
	sctx, cancel := context.WithTimeout(context.Background(), cfg.ShutdownTimeout)
	defer cancel()
	draining.Store(true) // health checks fail first, so load balancers move on
	var errs []error
	if err := node.Shutdown(sctx); err != nil {
		errs = append(errs, fmt.Errorf("failed to drain WebSocket connections within %s: %w", cfg.ShutdownTimeout, err))
	}
	if err := srv.Shutdown(sctx); err != nil {
		errs = append(errs, fmt.Errorf("failed to finish HTTP requests within %s: %w", cfg.ShutdownTimeout, err))
		_ = srv.Close()
	}
	stopRun()
	<-runDone
	<-serveDone
	if !errors.Is(serveErr, http.ErrServerClosed) {
		errs = append(errs, fmt.Errorf("failed to serve HTTP: %w", serveErr))
	}
	if runErr != nil {
		errs = append(errs, fmt.Errorf("failed to run node: %w", runErr))
	} else if ctx.Err() == nil && len(errs) == 0 {
		errs = append(errs, errors.New("failed to keep serving: node stopped without an error"))
	}
	if err := errors.Join(errs...); err != nil {
		logger.Error("stopped with errors", "err", err)
		return err
	}
	logger.Info("stopped")
	return nil
}

// tlsConfig loads the certificate and key, or returns nil for plain HTTP.
//
// The server speaks HTTP/1.1 only over TLS: a WebSocket upgrade (RFC 6455)
// needs HTTP/1.1, and offering h2 would let a client try WebSocket over
// HTTP/2 (RFC 8441), which Herald does not serve. The demo page and the
// health check lose nothing that matters.
func (c *Config) tlsConfig() (*tls.Config, error) {
	if c.TLSCert == "" {
		return nil, nil
	}
	cert, err := tls.LoadX509KeyPair(c.TLSCert, c.TLSKey)
	if err != nil {
		return nil, fmt.Errorf("failed to load tls_cert %s and tls_key %s: %w", c.TLSCert, c.TLSKey, err)
	}
	return &tls.Config{
		Certificates: []tls.Certificate{cert},
		MinVersion:   tls.VersionTLS12,
		NextProtos:   []string{"http/1.1"},
	}, nil
}

// newMux routes the server's endpoints.
func newMux(node *herald.Node, draining *atomic.Bool) *http.ServeMux {
	mux := http.NewServeMux()
	mux.Handle("GET /ws", node.Handler())
	mux.Handle("GET /ws/raw", node.RawHandler())
	mux.HandleFunc("GET /healthz", func(w http.ResponseWriter, r *http.Request) {
		w.Header().Set("Content-Type", "text/plain; charset=utf-8")
		w.Header().Set("Cache-Control", "no-store")
		if draining.Load() {
			w.WriteHeader(http.StatusServiceUnavailable)
			_, _ = io.WriteString(w, "shutting down")
			return
		}
		_, _ = io.WriteString(w, "ok")
	})
	mux.Handle("GET /", web.Handler())
	return mux
}

func newLogger(cfg Config, w io.Writer) *slog.Logger {
	opts := &slog.HandlerOptions{Level: cfg.LogLevel}
	if cfg.LogFormat == "json" {
		return slog.New(slog.NewJSONHandler(w, opts))
	}
	return slog.New(slog.NewTextHandler(w, opts))
}
