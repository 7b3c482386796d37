// Command hub is a benchmark baseline: the classic Go WebSocket hub
// pattern (gorilla/websocket's chat example), speaking just enough
// herald.v1 for `herald-bench` (subscribe and publish, with their replies,
// and pub pushes).
//
// The pattern: one hub goroutine owns the registry and fans each
// publication out over every subscriber's buffered send channel (256
// messages); a client whose channel is full is dropped (its channel
// closed). Each connection has a readPump, which parses commands and hands
// them to the hub, and a writePump, which writes what its send channel
// delivers — one WriteMessage, so one write syscall, per message (the chat
// example joins queued messages with newlines into one frame; herald.v1
// carries one JSON object per message, so it cannot) — and pings.
//
//	hub -addr 127.0.0.1:0    logs msg=listening addr=127.0.0.1:PORT
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
	"syscall"
	"time"

	"github.com/gorilla/websocket"
)

const (
	writeWait      = 10 * time.Second
	pongWait       = 60 * time.Second
	pingPeriod     = pongWait * 9 / 10
	maxMessageSize = 64 << 10
	sendBuffer     = 256
)

type client struct {
	hub  *hub
	ws   *websocket.Conn
	send chan []byte
}

type subscription struct {
	c       *client
	channel string
	id      uint64
}

type publication struct {
	c       *client
	channel string
	push    []byte
	id      uint64
}

type hub struct {
	channels   map[string]map[*client]bool
	clients    map[*client]map[string]bool
	register   chan *client
	subscribe  chan subscription
	broadcast  chan publication
	unregister chan *client
	done       chan struct{}
}

func newHub() *hub {
	return &hub{
		channels:   map[string]map[*client]bool{},
		clients:    map[*client]map[string]bool{},
		register:   make(chan *client),
		subscribe:  make(chan subscription),
		broadcast:  make(chan publication),
		unregister: make(chan *client),
		done:       make(chan struct{}),
	}
}

func reply(id uint64, code string) []byte {
	if code != "" {
		return []byte(`{"id":` + strconv.FormatUint(id, 10) + `,"error":{"code":"` + code + `","message":"` + code + `"}}`)
	}
	return []byte(`{"id":` + strconv.FormatUint(id, 10) + `}`)
}

// run is the hub goroutine: it alone touches the registry and the send
// channels.
func (h *hub) run(ctx context.Context) {
	defer close(h.done)
	for {
		select {
		case <-ctx.Done():
			return
		case c := <-h.register:
			h.clients[c] = map[string]bool{}
		case s := <-h.subscribe:
			chans, ok := h.clients[s.c]
			if !ok {
				continue
			}
			subs := h.channels[s.channel]
			if subs == nil {
				subs = map[*client]bool{}
				h.channels[s.channel] = subs
			}
			subs[s.c] = true
			chans[s.channel] = true
			h.send(s.c, reply(s.id, ""))
		case p := <-h.broadcast:
			for c := range h.channels[p.channel] {
				h.send(c, p.push)
			}
			if _, ok := h.clients[p.c]; ok {
				h.send(p.c, reply(p.id, ""))
			}
		case c := <-h.unregister:
			h.remove(c)
		}
	}
}

// send queues msg for c, or drops c if its buffer is full.
func (h *hub) send(c *client, msg []byte) {
	select {
	case c.send <- msg:
	default:
		h.remove(c)
	}
}

func (h *hub) remove(c *client) {
	chans, ok := h.clients[c]
	if !ok {
		return
	}
	for ch := range chans {
		delete(h.channels[ch], c)
		if len(h.channels[ch]) == 0 {
			delete(h.channels, ch)
		}
	}
	delete(h.clients, c)
	close(c.send)
}

// command is the part of a herald.v1 command this server understands.
type command struct {
	ID      uint64          `json:"id"`
	Cmd     string          `json:"cmd"`
	Channel string          `json:"channel"`
	Data    json.RawMessage `json:"data"`
}

func (c *client) readPump() {
	defer func() {
		select {
		case c.hub.unregister <- c:
		case <-c.hub.done:
		}
		c.ws.Close()
	}()
	c.ws.SetReadLimit(maxMessageSize)
	_ = c.ws.SetReadDeadline(time.Now().Add(pongWait))
	c.ws.SetPongHandler(func(string) error { return c.ws.SetReadDeadline(time.Now().Add(pongWait)) })
	for {
		_, msg, err := c.ws.ReadMessage()
		if err != nil {
			return
		}
		_ = c.ws.SetReadDeadline(time.Now().Add(pongWait))
		var cmd command
		if err := json.Unmarshal(msg, &cmd); err != nil || (cmd.Cmd != "subscribe" && cmd.Cmd != "publish") {
			continue // the hub pattern has no way to answer outside the hub; herald-bench never sends these
		}
		var ev any
		switch cmd.Cmd {
		case "subscribe":
			ev = subscription{c: c, channel: cmd.Channel, id: cmd.ID}
		case "publish":
			push := append([]byte(`{"push":"pub","channel":"`+cmd.Channel+`","data":`), cmd.Data...)
			ev = publication{c: c, channel: cmd.Channel, push: append(push, '}'), id: cmd.ID}
		}
		switch e := ev.(type) {
		case subscription:
			select {
			case c.hub.subscribe <- e:
			case <-c.hub.done:
				return
			}
		case publication:
			select {
			case c.hub.broadcast <- e:
			case <-c.hub.done:
				return
			}
		}
	}
}

func (c *client) writePump() {
	ticker := time.NewTicker(pingPeriod)
	defer func() {
		ticker.Stop()
		c.ws.Close()
	}()
	for {
		select {
		case msg, ok := <-c.send:
			_ = c.ws.SetWriteDeadline(time.Now().Add(writeWait))
			if !ok {
				_ = c.ws.WriteMessage(websocket.CloseMessage, []byte{})
				return
			}
			if err := c.ws.WriteMessage(websocket.TextMessage, msg); err != nil {
				return
			}
		case <-ticker.C:
			_ = c.ws.SetWriteDeadline(time.Now().Add(writeWait))
			if err := c.ws.WriteMessage(websocket.PingMessage, nil); err != nil {
				return
			}
		case <-c.hub.done:
			return
		}
	}
}

var upgrader = websocket.Upgrader{
	ReadBufferSize:  1024,
	WriteBufferSize: 1024,
	Subprotocols:    []string{"herald.v1"},
	CheckOrigin:     func(*http.Request) bool { return true },
}

func (h *hub) serveWS(w http.ResponseWriter, r *http.Request) {
	ws, err := upgrader.Upgrade(w, r, nil)
	if err != nil {
		return
	}
	c := &client{hub: h, ws: ws, send: make(chan []byte, sendBuffer)}
	select {
	case h.register <- c:
	case <-h.done:
		ws.Close()
		return
	}
	go c.writePump()
	go c.readPump()
}

// handler serves the WebSocket endpoint at /ws with h.
func handler(h *hub) http.Handler {
	mux := http.NewServeMux()
	mux.HandleFunc("/ws", h.serveWS)
	return mux
}

func main() {
	addr := flag.String("addr", "127.0.0.1:8091", "listen address")
	flag.Parse()
	ctx, stop := signal.NotifyContext(context.Background(), syscall.SIGINT, syscall.SIGTERM)
	defer stop()
	if err := serve(ctx, *addr, slog.New(slog.NewTextHandler(os.Stderr, nil))); err != nil {
		fmt.Fprintln(os.Stderr, "hub:", err)
		os.Exit(1)
	}
}

func serve(ctx context.Context, addr string, log *slog.Logger) error {
	ln, err := net.Listen("tcp", addr)
	if err != nil {
		return err
	}
	h := newHub()
	go h.run(ctx)
	srv := &http.Server{Handler: handler(h), ReadHeaderTimeout: 10 * time.Second}
	log.Info("listening", "addr", ln.Addr().String(), "server", "hub")
	go func() {
		<-ctx.Done()
		_ = srv.Close()
	}()
	if err := srv.Serve(ln); !errors.Is(err, http.ErrServerClosed) {
		return err
	}
	return nil
}
