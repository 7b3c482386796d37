// Command naive is a benchmark baseline: the seed's naive WebSocket
// broadcast recipe, speaking just enough herald.v1 for `herald-bench`
// (subscribe and publish, with their replies, and pub pushes).
//
// The recipe: one map of channel → clients under a sync.RWMutex, and a
// publish writes the push to each subscriber with gorilla's WriteMessage
// while holding the lock. (It takes the write lock, not the read lock:
// gorilla allows one writer per connection, and replies are written under
// the same lock, so a read lock would let two goroutines write one socket.)
// One slow client stalls every publisher; no heartbeats; no queues.
//
//	naive -addr 127.0.0.1:0    logs msg=listening addr=127.0.0.1:PORT
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
	"strconv"
	"sync"
	"syscall"
	"time"

	"github.com/gorilla/websocket"
)

type server struct {
	mu       sync.RWMutex
	channels map[string]map[*websocket.Conn]struct{}
	upgrader websocket.Upgrader
}

func newServer() *server {
	return &server{
		channels: map[string]map[*websocket.Conn]struct{}{},
		upgrader: websocket.Upgrader{
			Subprotocols: []string{"herald.v1"},
			CheckOrigin:  func(*http.Request) bool { return true },
		},
	}
}

// command is the part of a herald.v1 command this server understands.
type command struct {
	ID      uint64          `json:"id"`
	Cmd     string          `json:"cmd"`
	Channel string          `json:"channel"`
	Data    json.RawMessage `json:"data"`
}

func (s *server) ServeHTTP(w http.ResponseWriter, r *http.Request) {
	ws, err := s.upgrader.Upgrade(w, r, nil)
	if err != nil {
		return
	}
	defer s.drop(ws)
	for {
		_, msg, err := ws.ReadMessage()
		if err != nil {
			return
		}
		var cmd command
		if err := json.Unmarshal(msg, &cmd); err != nil {
			s.reply(ws, cmd.ID, "bad_request")
			continue
		}
		switch cmd.Cmd {
		case "subscribe":
			s.mu.Lock()
			subs := s.channels[cmd.Channel]
			if subs == nil {
				subs = map[*websocket.Conn]struct{}{}
				s.channels[cmd.Channel] = subs
			}
			subs[ws] = struct{}{}
			s.mu.Unlock()
			s.reply(ws, cmd.ID, "")
		case "publish":
			push := append([]byte(`{"push":"pub","channel":"`+cmd.Channel+`","data":`), cmd.Data...)
			push = append(push, '}')
			s.mu.Lock()
			for c := range s.channels[cmd.Channel] {
				_ = c.SetWriteDeadline(time.Now().Add(10 * time.Second))
				if err := c.WriteMessage(websocket.TextMessage, push); err != nil {
					c.Close() // its reader drops it
				}
			}
			s.mu.Unlock()
			s.reply(ws, cmd.ID, "")
		default:
			s.reply(ws, cmd.ID, "unknown_command")
		}
	}
}

func (s *server) reply(ws *websocket.Conn, id uint64, code string) {
	msg := `{"id":` + strconv.FormatUint(id, 10) + `}`
	if code != "" {
		msg = `{"id":` + strconv.FormatUint(id, 10) + `,"error":{"code":"` + code + `","message":"` + code + `"}}`
	}
	s.mu.Lock()
	defer s.mu.Unlock()
	_ = ws.SetWriteDeadline(time.Now().Add(10 * time.Second))
	_ = ws.WriteMessage(websocket.TextMessage, []byte(msg))
}

func (s *server) drop(ws *websocket.Conn) {
	s.mu.Lock()
	for ch, subs := range s.channels {
		delete(subs, ws)
		if len(subs) == 0 {
			delete(s.channels, ch)
		}
	}
	s.mu.Unlock()
	ws.Close()
}

func main() {
	addr := flag.String("addr", "127.0.0.1:8090", "listen address")
	flag.Parse()
	ctx, stop := signal.NotifyContext(context.Background(), syscall.SIGINT, syscall.SIGTERM)
	defer stop()
	if err := serve(ctx, *addr, slog.New(slog.NewTextHandler(os.Stderr, nil))); err != nil {
		fmt.Fprintln(os.Stderr, "naive:", err)
		os.Exit(1)
	}
}

// handler serves the WebSocket endpoint at /ws.
func handler() http.Handler {
	mux := http.NewServeMux()
	mux.Handle("/ws", newServer())
	return mux
}

func serve(ctx context.Context, addr string, log *slog.Logger) error {
	ln, err := net.Listen("tcp", addr)
	if err != nil {
		return err
	}
	srv := &http.Server{Handler: handler(), ReadHeaderTimeout: 10 * time.Second}
	log.Info("listening", "addr", ln.Addr().String(), "server", "naive")
	go func() {
		<-ctx.Done()
		// Hijacked WebSocket connections are not the server's to close:
		// the process exits with them.
		_ = srv.Close()
	}()
	if err := srv.Serve(ln); !errors.Is(err, http.ErrServerClosed) {
		return err
	}
	return nil
}
