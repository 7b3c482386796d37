package bench

import (
	"bytes"
	"errors"
	"fmt"
	"net/url"
	"strings"
	"time"

	"github.com/gorilla/websocket"
)

// ProtoPusher is Pusher Channels protocol 7, as Herald serves it at
// /app/{key} (docs/pusher.md): a subscriber waits for
// pusher:connection_established, sends pusher:subscribe for a public
// channel, and reads events {"event","channel","data"}; a publication
// without Pusher's envelope arrives as the event herald:publication whose
// data is the publication's JSON text as a JSON string, so the payload's
// marker and hex fields are found in it unchanged (only its quotes are
// escaped). Herald pings at the WebSocket level (both readers answer those);
// a pusher:ping, which Pusher's own servers send, is answered with
// pusher:pong.
//
// Pusher clients cannot publish on public channels, so the publications go
// through the HTTP API (-publish api) to the Herald channels the app's
// public channels map to: -channel-prefix is a Herald name,
// pusher-APPID:NAME (the app's namespace, then the Pusher name), and each
// subscriber subscribes to the part after the colon. Running Herald's own
// protocol with the same -publish api and -channel-prefix measures the
// same publish path and the same channels, only the subscribers' protocol
// differing (bench/pusher.sh).
const ProtoPusher = "pusher"

var (
	// Herald writes "event" first in its events, but an error of the
	// handshake may come with its keys in another order: these are
	// looked for anywhere in a message.
	pusherEventKey  = []byte(`"event":"pusher`)
	pusherSucceeded = []byte(`"event":"pusher_internal:subscription_succeeded"`)
	pusherSubError  = []byte(`"event":"pusher:subscription_error"`)
	pusherError     = []byte(`"event":"pusher:error"`)
	pusherWelcome   = []byte(`{"event":"pusher:connection_established"`)
	pusherPing      = []byte(`{"event":"pusher:ping"`)
	pusherPong      = []byte(`{"event":"pusher:pong","data":{}}`)
)

// pusherChannelName is the Pusher name of a public channel's Herald name
// (pusher-APPID:NAME): what follows the namespace.
func pusherChannelName(heraldChannel string) string {
	if _, name, ok := strings.Cut(heraldChannel, ":"); ok {
		return name
	}
	return heraldChannel
}

// pusherSubscribeCommand is pusher:subscribe for the public channel whose
// Herald name is channel (benchmark names need no JSON escaping).
func pusherSubscribeCommand(channel string) []byte {
	b := append([]byte(nil), `{"event":"pusher:subscribe","data":{"channel":"`...)
	b = append(b, pusherChannelName(channel)...)
	return append(b, `"}}`...)
}

// pusherOutcome is subscribeOutcome for a Pusher message: ok is false for
// a message that is not a pusher event (another protocol's reply).
func pusherOutcome(msg []byte) (done, refused, ok bool) {
	if !bytes.Contains(msg, pusherEventKey) {
		return false, false, false
	}
	switch {
	case bytes.Contains(msg, pusherSubError), bytes.Contains(msg, pusherError):
		return true, true, true
	case bytes.Contains(msg, pusherSucceeded):
		return true, false, true
	}
	return false, false, true
}

// isPusherPing reports whether msg is the server's pusher:ping.
func isPusherPing(msg []byte) bool { return bytes.HasPrefix(msg, pusherPing) }

// pingReply is the answer to a protocol's app-level ping (centrifuge's
// empty object, Pusher's pusher:pong).
func pingReply(proto string) []byte {
	if proto == ProtoPusher {
		return pusherPong
	}
	return emptyObjectLine
}

// welcomeTimeout bounds the wait for pusher:connection_established.
const welcomeTimeout = 10 * time.Second

// awaitPusherWelcome reads a new Pusher connection's first message, which
// must be pusher:connection_established (a pusher:error refuses the
// connection: an unknown key, the app's connection cap). It runs before
// the subscribe is sent, so nothing else is on its way and the socket can
// still go to an epoll reader afterwards.
func awaitPusherWelcome(ws *websocket.Conn) error {
	_ = ws.SetReadDeadline(time.Now().Add(welcomeTimeout))
	defer func() { _ = ws.SetReadDeadline(time.Time{}) }()
	msg, err := readMessage(ws, nil)
	if err != nil {
		return fmt.Errorf("waiting for pusher:connection_established: %w", err)
	}
	if !bytes.HasPrefix(msg, pusherWelcome) {
		return fmt.Errorf("pusher connection refused: %.200s", msg)
	}
	return nil
}

// pusherDefaults checks and completes a Pusher run's settings: protocol
// subscribers, HTTP API publishers, Herald channel names in an app's
// namespace, and protocol=7 on the endpoints (as pusher-js asks).
func (c *Config) pusherDefaults() error {
	switch {
	case c.Churn:
		return errors.New("the pusher protocol does not run churn (its connect has no token)")
	case c.SubMode == SubRaw:
		return errors.New("the pusher protocol has protocol subscribers only")
	case c.PubMode != PubAPI:
		return errors.New("the pusher protocol publishes through the HTTP API (Pusher clients cannot publish on public channels): add -publish api")
	case !strings.Contains(c.ChannelPrefix, ":"):
		return fmt.Errorf("channel prefix %q is not in a Pusher app's namespace: give the Herald name, e.g. -channel-prefix pusher-APPID:bench.", c.ChannelPrefix)
	}
	for i, s := range c.subURLs {
		u, err := url.Parse(s)
		if err != nil {
			return err
		}
		if !strings.HasPrefix(u.Path, "/app/") {
			return fmt.Errorf("bad URL %q for the pusher protocol: want ws://HOST:PORT/app/KEY", s)
		}
		q := u.Query()
		if q.Get("protocol") == "" {
			q.Set("protocol", "7")
			u.RawQuery = q.Encode()
			c.subURLs[i] = u.String()
		}
	}
	return nil
}
