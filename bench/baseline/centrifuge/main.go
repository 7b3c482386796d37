// Command centrifuge is a benchmark baseline: a server built on the
// centrifuge library (github.com/centrifugal/centrifuge, Centrifugo's
// engine), the strongest peer a Go user would pick instead of Herald. It
// speaks centrifuge's own JSON protocol over WebSocket at /ws, which
// `herald-bench -proto centrifuge` drives: connect (with a token when
// -jwt-secret is set), subscribe, publish, and publication pushes.
//
// It is configured as a small app would be, close to Herald's defaults:
// any channel may be subscribed and published to by any connected client;
// channels whose name starts with -history-prefix (default "chat:", the
// namespace Herald keeps history for by default) keep the last 100
// publications for 10 minutes and subscribe with recovery on, as Herald's
// chat namespace does; everything else is the library's defaults (client
// queue of 1 MiB, app-level pings every 25 s answered by the client).
// With -redis it uses centrifuge's Redis engine (broker and presence), so
// several processes share channels; otherwise its memory engine.
//
//	centrifuge -addr 127.0.0.1:0 [-redis redis://127.0.0.1:6379/0 -redis-prefix P]
//	           [-jwt-secret S] [-tls-cert F -tls-key F]
//	logs msg=listening addr=127.0.0.1:PORT
package main

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"log/slog"
	"net"
	"net/http"
	"os"
	"os/signal"
	"strings"
	"syscall"
	"time"

	"github.com/centrifugal/centrifuge"

	"github.com/heraldhq/herald/bench/internal/benchjwt"
)

// The history a -history-prefix channel keeps: Herald's chat namespace's.
const (
	historySize = 100
	historyTTL  = 10 * time.Minute
)

// options is the baseline's configuration.
type options struct {
	RedisURL      string // empty: the memory engine
	RedisPrefix   string
	JWTSecret     []byte // empty: every connection is anonymous
	HistoryPrefix string
}

// newNode builds and runs a centrifuge node with o's engine and handlers.
// The caller stops it with stop, which shuts the node down and closes its
// Redis connections.
func newNode(o options) (node *centrifuge.Node, stop func(context.Context), err error) {
	node, err = centrifuge.New(centrifuge.Config{})
	if err != nil {
		return nil, nil, fmt.Errorf("failed to create the node: %w", err)
	}
	var shard *centrifuge.RedisShard
	stop = func(ctx context.Context) {
		_ = node.Shutdown(ctx)
		if shard != nil {
			shard.Close()
		}
	}
	if o.RedisURL != "" {
		if shard, err = useRedis(node, o); err != nil {
			return nil, nil, err
		}
	}
	node.OnConnecting(func(_ context.Context, e centrifuge.ConnectEvent) (centrifuge.ConnectReply, error) {
		if len(o.JWTSecret) == 0 {
			return centrifuge.ConnectReply{Credentials: &centrifuge.Credentials{}}, nil
		}
		user, err := benchjwt.Verify(o.JWTSecret, e.Token)
		if err != nil {
			return centrifuge.ConnectReply{}, centrifuge.DisconnectInvalidToken
		}
		return centrifuge.ConnectReply{Credentials: &centrifuge.Credentials{UserID: user}}, nil
	})
	node.OnConnect(func(c *centrifuge.Client) {
		c.OnSubscribe(func(e centrifuge.SubscribeEvent, cb centrifuge.SubscribeCallback) {
			var opts centrifuge.SubscribeOptions
			if o.history(e.Channel) {
				opts.EnableRecovery = true
			}
			cb(centrifuge.SubscribeReply{Options: opts}, nil)
		})
		c.OnPublish(func(e centrifuge.PublishEvent, cb centrifuge.PublishCallback) {
			var opts centrifuge.PublishOptions
			if o.history(e.Channel) {
				opts.HistorySize, opts.HistoryTTL = historySize, historyTTL
			}
			cb(centrifuge.PublishReply{Options: opts}, nil)
		})
	})
	if err := node.Run(); err != nil {
		stop(context.Background())
		return nil, nil, fmt.Errorf("failed to run the node: %w", err)
	}
	return node, stop, nil
}

func (o options) history(channel string) bool {
	return o.HistoryPrefix != "" && strings.HasPrefix(channel, o.HistoryPrefix)
}

// useRedis sets node's broker and presence manager to centrifuge's Redis
// engine on one Redis (one shard), and returns the shard to close.
func useRedis(node *centrifuge.Node, o options) (*centrifuge.RedisShard, error) {
	shard, err := centrifuge.NewRedisShard(node, centrifuge.RedisShardConfig{Address: o.RedisURL})
	if err != nil {
		return nil, fmt.Errorf("failed to connect to Redis: %w", err)
	}
	shards := []*centrifuge.RedisShard{shard}
	broker, err := centrifuge.NewRedisBroker(node, centrifuge.RedisBrokerConfig{Prefix: o.RedisPrefix, Shards: shards})
	if err != nil {
		shard.Close()
		return nil, fmt.Errorf("failed to create the Redis broker: %w", err)
	}
	presence, err := centrifuge.NewRedisPresenceManager(node, centrifuge.RedisPresenceManagerConfig{Prefix: o.RedisPrefix, Shards: shards})
	if err != nil {
		shard.Close()
		return nil, fmt.Errorf("failed to create the Redis presence manager: %w", err)
	}
	node.SetBroker(broker)
	node.SetPresenceManager(presence)
	return shard, nil
}

// handler serves node's WebSocket endpoint at /ws, to any origin (the
// generator sends none).
func handler(node *centrifuge.Node) http.Handler {
	mux := http.NewServeMux()
	mux.Handle("/ws", centrifuge.NewWebsocketHandler(node, centrifuge.WebsocketConfig{
		CheckOrigin: func(*http.Request) bool { return true },
	}))
	return mux
}

func main() {
	addr := flag.String("addr", "127.0.0.1:8093", "listen address")
	var o options
	var secret, cert, key string
	flag.StringVar(&o.RedisURL, "redis", "", "Redis URL for centrifuge's Redis engine (default: the memory engine)")
	flag.StringVar(&o.RedisPrefix, "redis-prefix", "centrifuge", "prefix of every Redis key and channel")
	flag.StringVar(&secret, "jwt-secret", "", "HS256 secret: clients must connect with a token signed by it (default: anonymous connections)")
	flag.StringVar(&o.HistoryPrefix, "history-prefix", "chat:", "channels with this prefix keep history (100 publications, 10 min) and recover; empty: none")
	flag.StringVar(&cert, "tls-cert", "", "PEM certificate: serve wss:// (needs -tls-key)")
	flag.StringVar(&key, "tls-key", "", "PEM private key of -tls-cert")
	flag.Parse()
	o.JWTSecret = []byte(secret)
	ctx, stop := signal.NotifyContext(context.Background(), syscall.SIGINT, syscall.SIGTERM)
	defer stop()
	if err := serve(ctx, *addr, o, cert, key, slog.New(slog.NewTextHandler(os.Stderr, nil))); err != nil {
		fmt.Fprintln(os.Stderr, "centrifuge:", err)
		os.Exit(1)
	}
}

// serve runs the server until ctx ends.
func serve(ctx context.Context, addr string, o options, cert, key string, log *slog.Logger) error {
	if (cert == "") != (key == "") {
		return errors.New("-tls-cert and -tls-key go together")
	}
	if len(o.JWTSecret) > 0 && len(o.JWTSecret) < benchjwt.MinSecret {
		return fmt.Errorf("-jwt-secret has %d bytes, want at least %d", len(o.JWTSecret), benchjwt.MinSecret)
	}
	node, stopNode, err := newNode(o)
	if err != nil {
		return err
	}
	defer func() {
		sctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
		defer cancel()
		stopNode(sctx)
	}()
	ln, err := net.Listen("tcp", addr)
	if err != nil {
		return err
	}
	srv := &http.Server{Handler: handler(node), ReadHeaderTimeout: 10 * time.Second}
	engine := "memory"
	if o.RedisURL != "" {
		engine = "redis"
	}
	log.Info("listening", "addr", ln.Addr().String(), "server", "centrifuge", "engine", engine, "tls", cert != "")
	go func() {
		<-ctx.Done()
		_ = srv.Close()
	}()
	if cert != "" {
		err = srv.ServeTLS(ln, cert, key)
	} else {
		err = srv.Serve(ln)
	}
	if !errors.Is(err, http.ErrServerClosed) {
		return err
	}
	return nil
}
