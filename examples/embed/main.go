// Command embed shows Herald mounted in an application's own net/http server:
// the application keeps its mux and routes, and Herald is one more handler.
//
// Run it and open http://localhost:8080 in a browser, or connect with any
// WebSocket client using the subprotocol herald.v1:
//
//	go run ./examples/embed
//	websocat --protocol herald.v1 ws://localhost:8080/ws
//	{"id":1,"cmd":"subscribe","channel":"clock"}
//
// The server publishes its time to channel "clock" every second, and
// publishes whatever JSON is POSTed to /api/notify?channel=NAME:
//
//	curl -d '{"text":"hello"}' 'localhost:8080/api/notify?channel=clock'
package main

import (
	"context"
	"encoding/json"
	"errors"
	"flag"
	"io"
	"log"
	"net"
	"net/http"
	"os"
	"os/signal"
	"sync"
	"syscall"
	"time"

	"github.com/heraldhq/herald"
)

func main() {
	addr := flag.String("addr", "localhost:8080", "listen address")
	flag.Parse()
	// Ctrl-C or a SIGTERM from a supervisor cancels ctx, and run shuts down.
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	defer stop()
	ready := func(addr string) { log.Printf("listening on http://%s", addr) }
	if err := run(ctx, *addr, time.Second, ready); err != nil {
		log.Fatal(err)
	}
}

// run serves until ctx is done, then shuts down; it calls ready with the
// bound address once connections are accepted. clockEvery is the period of
// the "clock" publications (a parameter so that tests need not wait seconds).
func run(ctx context.Context, addr string, clockEvery time.Duration, ready func(addr string)) error {
	node, err := herald.New(herald.Config{})
	if err != nil {
		return err
	}
	mux := http.NewServeMux()
	mux.HandleFunc("GET /{$}", home)
	mux.HandleFunc("POST /api/notify", notify(node))
	mux.Handle("/ws", node.Handler())
	srv := &http.Server{Handler: mux, ReadHeaderTimeout: 10 * time.Second}

	ln, err := net.Listen("tcp", addr)
	if err != nil {
		return err
	}
	// Either server failing on its own stops everything, like a signal.
	ctx, cancel := context.WithCancel(ctx)
	defer cancel()
	var wg sync.WaitGroup
	var runErr, serveErr error
	// The node gets a context that is never cancelled: cancelling Run's
	// context would make the node shut itself down with its own short grace
	// period, and we want to shut it down below, in order, with our deadline.
	wg.Go(func() { defer cancel(); runErr = node.Run(context.WithoutCancel(ctx)) })
	wg.Go(func() {
		defer cancel()
		if err := srv.Serve(ln); !errors.Is(err, http.ErrServerClosed) {
			serveErr = err
		}
	})
	wg.Go(func() { publishClock(ctx, node, clockEvery) })
	ready(ln.Addr().String())

	<-ctx.Done()
	sctx, scancel := context.WithTimeout(context.WithoutCancel(ctx), 5*time.Second)
	defer scancel()
	// http.Server.Shutdown closes the listener and waits for plain HTTP
	// requests, but it does not know about hijacked WebSocket connections:
	// node.Shutdown sends those close 1001 and waits for them to end.
	shutErr := errors.Join(srv.Shutdown(sctx), node.Shutdown(sctx))
	wg.Wait()
	return errors.Join(serveErr, runErr, shutErr)
}

// publishClock publishes the server time to "clock" until ctx is done. Publish
// does not wait for subscribers: with none, the message is simply dropped.
func publishClock(ctx context.Context, node *herald.Node, every time.Duration) {
	t := time.NewTicker(every)
	defer t.Stop()
	for {
		select {
		case <-ctx.Done():
			return
		case now := <-t.C:
			data, _ := json.Marshal(map[string]string{"time": now.Format(time.RFC3339Nano)})
			if _, err := node.Publish(ctx, "clock", data); err != nil && ctx.Err() == nil {
				log.Printf("publish clock: %v", err)
			}
		}
	}
}

// notify publishes the request body (JSON) to the channel in the query string:
// the way an application's own code pushes events to its WebSocket clients.
func notify(node *herald.Node) http.HandlerFunc {
	return func(w http.ResponseWriter, r *http.Request) {
		body, err := io.ReadAll(http.MaxBytesReader(w, r.Body, 64<<10))
		if err != nil || !json.Valid(body) {
			http.Error(w, "body must be JSON of at most 64 KiB", http.StatusBadRequest)
			return
		}
		if _, err := node.Publish(r.Context(), r.URL.Query().Get("channel"), body); err != nil {
			status := http.StatusServiceUnavailable
			if errors.Is(err, herald.ErrBadChannel) {
				status = http.StatusBadRequest
			}
			http.Error(w, err.Error(), status)
			return
		}
		w.WriteHeader(http.StatusNoContent)
	}
}

// home serves a page that subscribes to "clock" and shows what arrives.
func home(w http.ResponseWriter, _ *http.Request) {
	io.WriteString(w, `<!doctype html><title>Herald embed</title><pre id=out>connecting…</pre>
<script>
const ws = new WebSocket((location.protocol === "https:" ? "wss://" : "ws://") + location.host + "/ws", "herald.v1");
ws.onopen = () => ws.send(JSON.stringify({id: 1, cmd: "subscribe", channel: "clock"}));
ws.onmessage = (e) => { const m = JSON.parse(e.data); if (m.push) out.textContent = m.channel + ": " + JSON.stringify(m.data); };
ws.onclose = (e) => { out.textContent += "\nclosed: " + e.code; };
</script>`)
}
