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
// For the churn scenario it also takes herald.v1's connect command: with
// -jwt-secret, a connection must connect with an HS256 token first (checked
// on its readPump), and -tls-cert/-tls-key serve wss://.
//
//	hub -addr 127.0.0.1:0 [-jwt-secret S] [-tls-cert F -tls-key F]
//	logs msg=listening addr=127.0.0.1:PORT
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

	"github.com/heraldhq/herald/bench/internal/benchjwt"
)

const (
	writeWait      = 10 * time.Second
	pongWait       = 60 * time.Second
	pingPeriod     = pongWait * 9 / 10
	maxMessageSize = 64 << 10
	sendBuffer     = 256
)

type client struct {
	hub    *hub
	ws     *websocket.Conn
	send   chan []byte
	authed bool // connected with a valid token (readPump only)
}

// direct is a reply the hub queues for one client (the hub alone sends on
// a client's channel, which it closes).
type direct struct {
	c   *client
	msg []byte
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
	direct     chan direct
	done       chan struct{}
	secret     []byte // HS256 secret: connections must connect with a token; set before run
}

func newHub() *hub {
	return &hub{
		channels:   map[string]map[*client]bool{},
		clients:    map[*client]map[string]bool{},
		register:   make(chan *client),
		subscribe:  make(chan subscription),
		broadcast:  make(chan publication),
		unregister: make(chan *client),
		direct:     make(chan direct),
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
		case d := <-h.direct:
			if _, ok := h.clients[d.c]; ok {
				h.send(d.c, d.msg)
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
	Token   string          `json:"token"`
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
		if err := json.Unmarshal(msg, &cmd); err != nil || (cmd.Cmd != "subscribe" && cmd.Cmd != "publish" && cmd.Cmd != "connect") {
			continue // herald-bench never sends these
		}
		var ev any
		switch {
		case cmd.Cmd == "connect":
			ev = direct{c: c, msg: reply(cmd.ID, c.connect(cmd.Token))}
		case len(c.hub.secret) > 0 && !c.authed:
			ev = direct{c: c, msg: reply(cmd.ID, "unauthorized")}
		case cmd.Cmd == "subscribe":
			ev = subscription{c: c, channel: cmd.Channel, id: cmd.ID}
		case cmd.Cmd == "publish":
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
		case direct:
			select {
			case c.hub.direct <- e:
			case <-c.hub.done:
				return
			}
		}
	}
}

// connect checks a connect command's token: the error code to reply with,
// or "" when it is good (or the hub checks none).
func (c *client) connect(token string) string {
	if len(c.hub.secret) == 0 {
		return ""
	}
	if _, err := benchjwt.Verify(c.hub.secret, token); err != nil {
		return "unauthorized"
	}
	c.authed = true
	return ""
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
	var o options
	var secret string
	flag.StringVar(&secret, "jwt-secret", "", "HS256 secret: connections must connect with a token signed by it first")
	flag.StringVar(&o.cert, "tls-cert", "", "PEM certificate: serve wss:// (needs -tls-key)")
	flag.StringVar(&o.key, "tls-key", "", "PEM private key of -tls-cert")
	flag.Parse()
	o.secret = []byte(secret)
	ctx, stop := signal.NotifyContext(context.Background(), syscall.SIGINT, syscall.SIGTERM)
	defer stop()
	if err := serve(ctx, *addr, o, slog.New(slog.NewTextHandler(os.Stderr, nil))); err != nil {
		fmt.Fprintln(os.Stderr, "hub:", err)
		os.Exit(1)
	}
}

// options are the churn scenario's settings.
type options struct {
	secret    []byte
	cert, key string
}

func serve(ctx context.Context, addr string, o options, log *slog.Logger) error {
	if (o.cert == "") != (o.key == "") {
		return errors.New("-tls-cert and -tls-key go together")
	}
	if len(o.secret) > 0 && len(o.secret) < benchjwt.MinSecret {
		return fmt.Errorf("-jwt-secret has %d bytes, want at least %d", len(o.secret), benchjwt.MinSecret)
	}
	ln, err := net.Listen("tcp", addr)
	if err != nil {
		return err
	}
	h := newHub()
	h.secret = o.secret
	go h.run(ctx)
	srv := &http.Server{Handler: handler(h), ReadHeaderTimeout: 10 * time.Second}
	log.Info("listening", "addr", ln.Addr().String(), "server", "hub")
	go func() {
		<-ctx.Done()
		_ = srv.Close()
	}()
	if o.cert != "" {
		err = srv.ServeTLS(ln, o.cert, o.key)
	} else {
		err = srv.Serve(ln)
	}
	if !errors.Is(err, http.ErrServerClosed) {
		return err
	}
	return nil
}
