//go:build unix

// Command floor is a benchmark probe, not a server anyone should run: the
// cheapest fan-out a Go program can do with one write per delivery, speaking
// just enough herald.v1 for `herald-bench` (subscribe and publish, with
// their replies, and pub pushes).
//
// It answers one question: how low can a fan-out scenario's latency go on
// this machine, with this generator, when the server does nothing but the
// writes? Each publication's push is framed once; W writer goroutines, each
// locked to its own OS thread and started once, split the channel's sockets
// between them and write the frame to each with one write(2) on the raw
// descriptor: no queue, no goroutine per connection or per write, no
// netpoller, no deadline, no buffering. A write that would block or is
// short closes that connection (the generator counts it cut); at the rates
// the latency scenarios use, none does.
//
// What it leaves out is what a server needs and a probe does not: queues
// for slow clients, heartbeats, limits, ordering between a connection's
// replies and its pushes beyond what single write(2) calls of whole frames
// give. Each read pump is gorilla's; a pong is gorilla's WriteControl, also
// one write of one whole frame.
//
//	floor -addr 127.0.0.1:0 [-writers N]    logs msg=listening addr=127.0.0.1:PORT
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
	"runtime"
	"strconv"
	"sync"
	"sync/atomic"
	"syscall"
	"time"

	"github.com/gorilla/websocket"

	"github.com/heraldhq/herald/internal/wsframe"
)

// sub is one subscribed socket: its descriptor, valid until conn closes.
type sub struct {
	fd   int
	conn net.Conn
}

// job is one publication's share for one writer.
type job struct {
	frame []byte
	subs  []sub
	done  *sync.WaitGroup
}

type server struct {
	// mu is held shared by a publication until its writes are done, and
	// exclusively to change a channel's subscribers. A connection is
	// removed before it closes, so no write can reach its descriptor
	// after the descriptor is freed (and perhaps reused).
	mu       sync.RWMutex
	channels map[string][]sub // copied on write
	upgrader websocket.Upgrader
	jobs     []chan job // one per writer
	failed   atomic.Int64
	stop     chan struct{}
	wg       sync.WaitGroup // the writers
}

func newServer(writers int) *server {
	s := &server{
		channels: map[string][]sub{},
		upgrader: websocket.Upgrader{
			ReadBufferSize:  1024,
			WriteBufferSize: 1024,
			Subprotocols:    []string{"herald.v1"},
			CheckOrigin:     func(*http.Request) bool { return true },
		},
		stop: make(chan struct{}),
	}
	for range writers {
		ch := make(chan job, 1)
		s.jobs = append(s.jobs, ch)
		s.wg.Add(1)
		go s.writer(ch)
	}
	return s
}

// close stops the writers; call it after the HTTP server has stopped.
func (s *server) close() {
	close(s.stop)
	s.wg.Wait()
}

// writer owns one OS thread and writes the frames of the jobs it is given, while
// the publication that gave them holds s.mu shared.
func (s *server) writer(jobs <-chan job) {
	defer s.wg.Done()
	runtime.LockOSThread()
	defer runtime.UnlockOSThread()
	for {
		select {
		case j := <-jobs:
			for _, sb := range j.subs {
				if n, err := syscall.Write(sb.fd, j.frame); err != nil || n != len(j.frame) {
					// Shut down, not closed: the descriptor stays this
					// connection's until its read pump, failing now,
					// removes it and closes it.
					s.failed.Add(1)
					_ = syscall.Shutdown(sb.fd, syscall.SHUT_RDWR)
				}
			}
			j.done.Done()
		case <-s.stop:
			return
		}
	}
}

// frame returns msg as one unmasked, final text frame: Herald's own
// encoder, so the probe frames exactly as the server it is compared with.
func frame(msg []byte) []byte { return wsframe.Append(nil, wsframe.OpText, msg, false) }

// publish writes msg to every subscriber of channel, split over the
// writers, and returns when every write is done.
func (s *server) publish(channel string, msg []byte) {
	s.mu.RLock()
	defer s.mu.RUnlock()
	subs := s.channels[channel]
	if len(subs) == 0 {
		return
	}
	f := frame(msg)
	var done sync.WaitGroup
	per := (len(subs) + len(s.jobs) - 1) / len(s.jobs)
	for i := 0; i < len(subs); i += per {
		done.Add(1)
		s.jobs[i/per] <- job{frame: f, subs: subs[i:min(i+per, len(subs))], done: &done}
	}
	done.Wait()
}

func (s *server) add(channel string, sb sub) {
	s.mu.Lock()
	defer s.mu.Unlock()
	old := s.channels[channel]
	s.channels[channel] = append(old[:len(old):len(old)], sb)
}

func (s *server) remove(conn net.Conn) {
	s.mu.Lock()
	defer s.mu.Unlock()
	for ch, subs := range s.channels {
		kept := make([]sub, 0, len(subs))
		for _, sb := range subs {
			if sb.conn != conn {
				kept = append(kept, sb)
			}
		}
		s.channels[ch] = kept
	}
}

func reply(id uint64, code string) []byte {
	if code != "" {
		return []byte(`{"id":` + strconv.FormatUint(id, 10) + `,"error":{"code":"` + code + `","message":"` + code + `"}}`)
	}
	return []byte(`{"id":` + strconv.FormatUint(id, 10) + `}`)
}

type command struct {
	ID      uint64          `json:"id"`
	Cmd     string          `json:"cmd"`
	Channel string          `json:"channel"`
	Data    json.RawMessage `json:"data"`
}

func (s *server) serveWS(w http.ResponseWriter, r *http.Request) {
	ws, err := s.upgrader.Upgrade(w, r, nil)
	if err != nil {
		return
	}
	conn := ws.NetConn()
	var fd int
	sc, err := conn.(syscall.Conn).SyscallConn()
	if err == nil {
		err = sc.Control(func(d uintptr) { fd = int(d) })
	}
	if err != nil {
		ws.Close()
		return
	}
	// The read pump runs on the handler's goroutine. Every write after the
	// upgrade is one write(2) of one whole frame: replies here, pushes by
	// the writers, pongs by gorilla.
	defer func() {
		s.remove(conn)
		ws.Close()
	}()
	ws.SetReadLimit(64 << 10)
	send := func(msg []byte) bool {
		f := frame(msg)
		n, err := syscall.Write(fd, f)
		return err == nil && n == len(f)
	}
	for {
		_, msg, err := ws.ReadMessage()
		if err != nil {
			return
		}
		var cmd command
		if err := json.Unmarshal(msg, &cmd); err != nil {
			continue
		}
		switch cmd.Cmd {
		case "subscribe":
			s.add(cmd.Channel, sub{fd: fd, conn: conn})
			if !send(reply(cmd.ID, "")) {
				return
			}
		case "publish":
			push := append([]byte(`{"push":"pub","channel":"`+cmd.Channel+`","data":`), cmd.Data...)
			s.publish(cmd.Channel, append(push, '}'))
			if !send(reply(cmd.ID, "")) {
				return
			}
		default:
			if !send(reply(cmd.ID, "bad_request")) {
				return
			}
		}
	}
}

func main() {
	addr := flag.String("addr", "127.0.0.1:8091", "listen address")
	writers := flag.Int("writers", runtime.GOMAXPROCS(0), "writer threads")
	flag.Parse()
	ctx, stop := signal.NotifyContext(context.Background(), syscall.SIGINT, syscall.SIGTERM)
	defer stop()
	if err := serve(ctx, *addr, *writers, slog.New(slog.NewTextHandler(os.Stderr, nil))); err != nil {
		fmt.Fprintln(os.Stderr, "floor:", err)
		os.Exit(1)
	}
}

func serve(ctx context.Context, addr string, writers int, log *slog.Logger) error {
	if writers < 1 {
		return errors.New("-writers must be at least 1")
	}
	ln, err := net.Listen("tcp", addr)
	if err != nil {
		return err
	}
	s := newServer(writers)
	defer s.close()
	mux := http.NewServeMux()
	mux.HandleFunc("/ws", s.serveWS)
	srv := &http.Server{Handler: mux, ReadHeaderTimeout: 10 * time.Second}
	log.Info("listening", "addr", ln.Addr().String(), "server", "floor", "writers", writers)
	go func() {
		<-ctx.Done()
		_ = srv.Close()
	}()
	err = srv.Serve(ln)
	log.Info("stopped", "failed_writes", s.failed.Load())
	if !errors.Is(err, http.ErrServerClosed) {
		return err
	}
	return nil
}
