// Command hookserver is the server of @heraldhq/client's hook tests
// (test/hooks.test.js): a herald.Node whose hooks are Go functions that
// the tests steer, so that the client's rpc, connect data and server-side
// subscriptions meet the real node. `herald serve` calls its hooks over
// HTTP (package httphooks); this server needs no backend of its own.
//
// Namespaces: "" (channels without one), "hist" (history), and "locked",
// which no client may subscribe to by itself (only server-side).
//
// It serves the protocol at /ws and a control API under /control/ (JSON
// bodies, 200 with {} or the result, 400/500 with the error in words):
//
//	POST /control/grant            {"user","channels":[...]}: the connect
//	                               hook's Channels for the user from now on
//	POST /control/subscribe_user   {"user","channel"}: Node.SubscribeUser
//	POST /control/unsubscribe_user {"user","channel"}: Node.UnsubscribeUser
//	POST /control/publish          {"channel","data"}: Node.Publish
//
// The hooks:
//
//   - Connect reads the connect command's data, {"user", "channels",
//     "refuse", "fail"}: refuse (a code) refuses with it, fail fails; else
//     the connection's user is "user", its Channels are the user's grants
//     plus "channels", and the reply's Data is {"hello": user, "data": the
//     connect data}.
//   - RPC answers by method: "echo" with {"method", "user", "data"}; "none"
//     with no data; "refuse" refuses with the code in data.code; "fail"
//     fails (the client sees unavailable); "slow" outlasts the hook
//     timeout (unavailable too).
//
// It logs to stderr in the format of `herald serve` (logfmt), including
// `msg=listening addr=HOST:PORT` once it accepts connections, which is
// what test/hook-server.js waits for. SIGTERM or SIGINT stops it.
package main

import (
	"context"
	"encoding/json"
	"errors"
	"flag"
	"fmt"
	"log/slog"
	"net"
	"net/http"
	"os"
	"os/signal"
	"slices"
	"sync"
	"syscall"
	"time"

	"github.com/heraldhq/herald"
)

// hookTimeout is short so that the "slow" method shows the timeout's
// answer quickly; "slow" sleeps twice as long.
const hookTimeout = 500 * time.Millisecond

func main() {
	if err := run(); err != nil {
		fmt.Fprintln(os.Stderr, "hookserver:", err)
		os.Exit(1)
	}
}

func run() error {
	addr := flag.String("addr", "127.0.0.1:0", "listen address")
	flag.Parse()
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	defer stop()

	logger := slog.New(slog.NewTextHandler(os.Stderr, nil))
	b := &backend{grants: make(map[string][]string)}
	node, err := herald.New(herald.Config{
		Logger: logger,
		Namespaces: []herald.Namespace{
			{Name: ""},
			{Name: "hist", HistorySize: 100, HistoryTTL: 10 * time.Minute},
			// Only the server subscribes clients here: a server-side
			// subscription that the connect hook no longer names is not
			// restored after a reconnect (in the other namespaces the
			// client may take it by itself, so the node restores it).
			{Name: "locked", AllowSubscribe: herald.PermNobody},
		},
		Hooks: herald.Hooks{Connect: b.connect, RPC: b.rpc, Timeout: hookTimeout},
	})
	if err != nil {
		return fmt.Errorf("failed to create the node: %w", err)
	}
	ln, err := net.Listen("tcp", *addr)
	if err != nil {
		return fmt.Errorf("failed to listen: %w", err)
	}
	mux := http.NewServeMux()
	mux.Handle("/ws", node.Handler())
	mux.HandleFunc("POST /control/{op}", b.control(node))
	srv := &http.Server{Handler: mux, ReadHeaderTimeout: 5 * time.Second}

	runErr := make(chan error, 1)
	go func() { runErr <- node.Run(ctx) }()
	serveErr := make(chan error, 1)
	go func() { serveErr <- srv.Serve(ln) }()
	logger.Info("listening", "addr", ln.Addr().String())

	select {
	case <-ctx.Done():
	case err = <-serveErr:
		err = fmt.Errorf("failed to serve: %w", err)
	}
	sctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	// The node first: it closes the connections it hijacked, which the
	// http.Server's Shutdown does not wait for.
	err = errors.Join(err, node.Shutdown(sctx), srv.Shutdown(sctx))
	return errors.Join(err, <-runErr)
}

// backend plays the application's backend. Its hooks run on connection
// goroutines concurrently, and the control API writes grants: mu guards
// grants.
type backend struct {
	mu     sync.Mutex
	grants map[string][]string // user -> channels the connect hook gives
}

// connectData is what the tests send as connect's data.
type connectData struct {
	User     string   `json:"user"`
	Channels []string `json:"channels"`
	Refuse   string   `json:"refuse"`
	Fail     bool     `json:"fail"`
}

func (b *backend) connect(_ context.Context, e *herald.ConnectEvent) (*herald.ConnectReply, error) {
	var d connectData
	if len(e.Data) > 0 {
		if err := json.Unmarshal(e.Data, &d); err != nil {
			return nil, herald.Refuse("bad_connect_data", err.Error())
		}
	}
	if d.Refuse != "" {
		return nil, herald.Refuse(herald.Code(d.Refuse), "refused by the test backend")
	}
	if d.Fail {
		return nil, errors.New("the test backend failed")
	}
	b.mu.Lock()
	channels := append(slices.Clone(b.grants[d.User]), d.Channels...)
	b.mu.Unlock()
	data, err := json.Marshal(map[string]any{"hello": d.User, "data": e.Data})
	if err != nil {
		return nil, err
	}
	return &herald.ConnectReply{UserID: d.User, Channels: channels, Data: data}, nil
}

func (b *backend) rpc(ctx context.Context, e *herald.RPCEvent) (*herald.RPCReply, error) {
	switch e.Method {
	case "echo":
		data, err := json.Marshal(map[string]any{"method": e.Method, "user": e.Client.UserID, "data": e.Data})
		return &herald.RPCReply{Data: data}, err
	case "none":
		return &herald.RPCReply{}, nil
	case "refuse":
		var d struct {
			Code string `json:"code"`
		}
		_ = json.Unmarshal(e.Data, &d)
		return nil, herald.Refuse(herald.Code(d.Code), "refused by the test backend")
	case "fail":
		return nil, errors.New("the test backend failed")
	case "slow":
		select {
		case <-time.After(2 * hookTimeout):
			return &herald.RPCReply{Data: json.RawMessage(`"too late"`)}, nil
		case <-ctx.Done():
			return nil, ctx.Err()
		}
	}
	return nil, herald.Refuse("no_such_method", fmt.Sprintf("no method %q", e.Method))
}

// control serves /control/{op}; every call is bounded by 5 s.
func (b *backend) control(node *herald.Node) http.HandlerFunc {
	return func(w http.ResponseWriter, r *http.Request) {
		var req struct {
			User     string          `json:"user"`
			Channel  string          `json:"channel"`
			Channels []string        `json:"channels"`
			Data     json.RawMessage `json:"data"`
		}
		if err := json.NewDecoder(http.MaxBytesReader(w, r.Body, 1<<20)).Decode(&req); err != nil {
			http.Error(w, "bad JSON: "+err.Error(), http.StatusBadRequest)
			return
		}
		ctx, cancel := context.WithTimeout(r.Context(), 5*time.Second)
		defer cancel()
		var result any = struct{}{}
		var err error
		switch op := r.PathValue("op"); op {
		case "grant":
			b.mu.Lock()
			b.grants[req.User] = req.Channels
			b.mu.Unlock()
		case "subscribe_user":
			err = node.SubscribeUser(ctx, req.User, req.Channel)
		case "unsubscribe_user":
			err = node.UnsubscribeUser(ctx, req.User, req.Channel)
		case "publish":
			var res herald.PublishResult
			res, err = node.Publish(ctx, req.Channel, req.Data)
			result = map[string]any{"offset": res.Offset, "epoch": res.Epoch}
		default:
			http.Error(w, fmt.Sprintf("no control %q", op), http.StatusNotFound)
			return
		}
		if err != nil {
			http.Error(w, err.Error(), http.StatusInternalServerError)
			return
		}
		w.Header().Set("Content-Type", "application/json")
		_ = json.NewEncoder(w).Encode(result)
	}
}
