package herald

import (
	"context"
	"crypto/hmac"
	"crypto/rand"
	"crypto/sha256"
	"encoding/binary"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/heraldhq/herald/protocol"
)

// Pusher Channels, spoken by Herald (docs/pusher.md): pusher-js, Laravel
// Echo and the Pusher server SDKs work against a node unchanged. A Pusher
// app is a set of Herald namespaces, and a Pusher channel is a Herald
// channel in one of them (PusherApp.HeraldChannel): publications, presence,
// history, limits, metrics and the brokers are Herald's own, so an event
// triggered through Pusher reaches Herald clients and a Herald publication
// reaches Pusher clients, on every node.

// PusherApp is one Pusher app: the credentials its clients and backend
// use, and its settings. Apps never see each other's clients or channels:
// each has its own Herald namespaces (Namespace).
type PusherApp struct {
	// ID, Key and Secret are the app's credentials, as in Pusher's
	// dashboard: clients connect to /app/{Key}; the backend signs its
	// HTTP API requests and its clients' auth signatures with Secret. ID
	// is 1-64 of A-Z a-z 0-9 _ -. All three are required, and IDs and
	// keys are unique among the apps.
	ID, Key, Secret string
	// ClientEvents lets the clients of private and presence channels send
	// client-* events to each other. Off by default, as in Pusher.
	ClientEvents bool
	// MaxConnections caps the app's connections on this node; past it a
	// new one gets pusher:error 4004 and is closed. As for every limit
	// (Limits), zero means the default — here no cap beyond the node's own
	// Limits — and NoLimit (any negative value) means no cap.
	MaxConnections int
	// Namespace is the prefix of the app's Herald namespaces: the
	// channels of app "123" are "pusher-123:<channel>" and the like (see
	// HeraldChannel). Empty means "pusher-" + ID.
	Namespace string
	// HistorySize keeps the last HistorySize events of each of the app's
	// channels, each for HistoryTTL (zero: 5 minutes): a client that
	// reconnects can then recover what it missed (docs/pusher.md,
	// "Recovery"). Zero keeps none, except the one event of each cache
	// channel, which cache channels always keep.
	HistorySize int
	HistoryTTL  time.Duration
	// ActivityTimeout is the activity_timeout sent in
	// pusher:connection_established, in seconds: a client that hears
	// nothing for that long sends pusher:ping. Zero means 120, Pusher's.
	ActivityTimeout int
}

// The kinds of Pusher channel, by name prefix; each kind of an app is one
// Herald namespace, the app's Namespace plus the kind's suffix.
const (
	pusherPublic        = ""
	pusherPrivate       = ".private"
	pusherPresence      = ".presence"
	pusherCache         = ".cache"
	pusherPrivateCache  = ".private-cache"
	pusherPresenceCache = ".presence-cache"
	pusherUser          = ".user"
	// pusherUserPrefix is the channel Pusher sends a signed-in user's
	// events on (pusher-js subscribes it after pusher:signin).
	pusherUserPrefix = "#server-to-user-"
	// maxPusherChannelLen is Pusher's limit on a channel name.
	maxPusherChannelLen = 164
)

var pusherKinds = []string{pusherPublic, pusherPrivate, pusherPresence, pusherCache, pusherPrivateCache, pusherPresenceCache, pusherUser}

func (a PusherApp) prefix() string {
	if a.Namespace != "" {
		return a.Namespace
	}
	return "pusher-" + a.ID
}

// pusherKind returns the kind of a Pusher channel name.
func pusherKind(ch string) string {
	switch {
	case strings.HasPrefix(ch, pusherUserPrefix):
		return pusherUser
	case strings.HasPrefix(ch, "presence-cache-"):
		return pusherPresenceCache
	case strings.HasPrefix(ch, "private-cache-"), strings.HasPrefix(ch, "private-encrypted-cache-"):
		return pusherPrivateCache
	case strings.HasPrefix(ch, "cache-"):
		return pusherCache
	case strings.HasPrefix(ch, "presence-"):
		return pusherPresence
	case strings.HasPrefix(ch, "private-"):
		return pusherPrivate
	}
	return pusherPublic
}

// validPusherChannel reports whether ch is a channel name Pusher accepts:
// 1-164 of A-Z a-z 0-9 _ - = @ , . ; (a user channel: its prefix and a
// user id Herald accepts).
func validPusherChannel(ch string) bool {
	if len(ch) == 0 || len(ch) > maxPusherChannelLen {
		return false
	}
	if user, ok := strings.CutPrefix(ch, pusherUserPrefix); ok {
		return user != "" && validUserID(user) == nil && protocol.ValidChannel("#"+user)
	}
	for i := 0; i < len(ch); i++ {
		c := ch[i]
		if !('a' <= c && c <= 'z' || 'A' <= c && c <= 'Z' || '0' <= c && c <= '9' || strings.IndexByte("_-=@,.;", c) >= 0) {
			return false
		}
	}
	return true
}

// HeraldChannel returns the Herald channel of one of the app's Pusher
// channels, "" for a name Pusher would refuse. The mapping is the
// namespace of the channel's kind, ':', and the Pusher name with ';' (not
// a Herald channel character) written '!':
//
//	"orders"                 -> "pusher-123:orders"
//	"private-orders"         -> "pusher-123.private:private-orders"
//	"private-encrypted-x"    -> "pusher-123.private:private-encrypted-x"
//	"presence-room"          -> "pusher-123.presence:presence-room"
//	"cache-x"                -> "pusher-123.cache:cache-x"
//	"private-cache-x"        -> "pusher-123.private-cache:private-cache-x"
//	"presence-cache-x"       -> "pusher-123.presence-cache:presence-cache-x"
//	"#server-to-user-alice"  -> "pusher-123.user:#alice"
//
// The user channel is user-limited in Herald too ('#'): only the user may
// subscribe to it.
func (a PusherApp) HeraldChannel(pusherChannel string) string {
	if !validPusherChannel(pusherChannel) {
		return ""
	}
	kind := pusherKind(pusherChannel)
	if kind == pusherUser {
		return a.prefix() + kind + ":#" + strings.TrimPrefix(pusherChannel, pusherUserPrefix)
	}
	return a.prefix() + kind + ":" + strings.ReplaceAll(pusherChannel, ";", "!")
}

// PusherChannel is HeraldChannel's inverse: the Pusher name of one of the
// app's Herald channels, and false for a channel that is not the app's.
func (a PusherApp) PusherChannel(heraldChannel string) (string, bool) {
	ns, name, ok := strings.Cut(heraldChannel, ":")
	if !ok {
		return "", false
	}
	kind, ok := strings.CutPrefix(ns, a.prefix())
	if !ok {
		return "", false
	}
	ch, ok := pusherName(kind, name)
	if !ok || a.HeraldChannel(ch) != heraldChannel {
		return "", false
	}
	return ch, true
}

// pusherName is the Pusher name of name in a namespace of kind.
func pusherName(kind, name string) (string, bool) {
	if kind == pusherUser {
		user, ok := strings.CutPrefix(name, "#")
		return pusherUserPrefix + user, ok
	}
	return strings.ReplaceAll(name, "!", ";"), true
}

// pusherNameOf is the Pusher name of a Herald channel a Pusher client is
// subscribed to (so one of its app's): the name after the namespace.
func pusherNameOf(heraldChannel string) string {
	ns, name, _ := strings.Cut(heraldChannel, ":")
	kind := ""
	if strings.HasSuffix(ns, pusherUser) {
		kind = pusherUser
	}
	ch, _ := pusherName(kind, name)
	return ch
}

// namespaces returns the app's Herald namespaces. Herald clients may read
// the public channels; the others only with a grant (PermGranted; the
// user channel: its user). Only the server and the app's clients publish.
func (a PusherApp) namespaces() []Namespace {
	ttl := a.HistoryTTL
	out := make([]Namespace, 0, len(pusherKinds))
	for _, kind := range pusherKinds {
		ns := Namespace{Name: a.prefix() + kind, HistorySize: a.HistorySize, HistoryTTL: ttl, ChannelEvents: true,
			AllowSubscribe: PermGranted, AllowPublish: PermNobody, AllowPresence: PermGranted, AllowHistory: PermGranted}
		switch kind {
		case pusherPublic, pusherCache:
			ns.AllowSubscribe, ns.AllowHistory, ns.AllowPresence = PermAnyone, PermAnyone, PermNobody
		case pusherUser:
			ns.AllowSubscribe, ns.AllowHistory, ns.ChannelEvents = PermAuthenticated, PermAuthenticated, false
		}
		switch kind {
		case pusherCache, pusherPrivateCache, pusherPresenceCache:
			ns.HistorySize = max(ns.HistorySize, 1)
		}
		switch kind {
		case pusherPresence, pusherPresenceCache:
			ns.Presence, ns.JoinLeave, ns.MemberEvents = true, true, true
		}
		// Client events are client publications: their webhooks.
		ns.PublishEvents = kind != pusherPublic && kind != pusherCache && kind != pusherUser
		out = append(out, ns)
	}
	return out
}

// pusherApps are the node's apps, by key and by ID.
type pusherApps struct {
	list  []PusherApp
	byKey map[string]*PusherApp
	byID  map[string]*PusherApp
}

func newPusherApps(list []PusherApp) (*pusherApps, error) {
	a := &pusherApps{list: list, byKey: make(map[string]*PusherApp), byID: make(map[string]*PusherApp)}
	prefixes := make(map[string]string)
	for i := range list {
		app := &list[i]
		switch {
		case app.ID == "" || app.Key == "" || app.Secret == "":
			return nil, fmt.Errorf("herald: pusher app %d: id, key and secret are required", i+1)
		case !validAppID(app.ID):
			return nil, fmt.Errorf("herald: pusher app %q: the id must be 1-64 of A-Z a-z 0-9 _ -", app.ID)
		case a.byID[app.ID] != nil:
			return nil, fmt.Errorf("herald: pusher app id %q is listed twice", app.ID)
		case a.byKey[app.Key] != nil:
			return nil, fmt.Errorf("herald: pusher app key of app %q is another app's too", app.ID)
		case app.HistorySize < 0 || app.ActivityTimeout < 0:
			return nil, fmt.Errorf("herald: pusher app %q: history size and activity timeout must be 0 or more", app.ID)
		case !protocol.ValidChannel(app.prefix()+pusherPresenceCache) || strings.ContainsAny(app.prefix(), ":#"):
			return nil, fmt.Errorf("herald: pusher app %q: namespace %q is not a namespace name", app.ID, app.prefix())
		}
		if other, dup := prefixes[app.prefix()]; dup {
			return nil, fmt.Errorf("herald: pusher apps %q and %q have the same namespace %q", other, app.ID, app.prefix())
		}
		prefixes[app.prefix()] = app.ID
		a.byID[app.ID], a.byKey[app.Key] = app, app
	}
	return a, nil
}

func validAppID(id string) bool {
	if len(id) == 0 || len(id) > 64 {
		return false
	}
	for i := 0; i < len(id); i++ {
		c := id[i]
		if !('a' <= c && c <= 'z' || 'A' <= c && c <= 'Z' || '0' <= c && c <= '9' || c == '_' || c == '-') {
			return false
		}
	}
	return true
}

// withPusher returns list with the namespaces of the apps that list does
// not configure itself. A namespace configured in list is used as it is,
// except that presence namespaces keep presence and join/leave, and
// cache ones history, which the Pusher side needs.
func (a *pusherApps) withPusher(list []Namespace) []Namespace {
	if a == nil || len(a.list) == 0 {
		return list
	}
	out := append([]Namespace(nil), list...)
	have := make(map[string]int, len(list))
	for i, ns := range list {
		have[ns.Name] = i
	}
	for _, app := range a.list {
		for _, ns := range app.namespaces() {
			i, ok := have[ns.Name]
			if !ok {
				out = append(out, ns)
				continue
			}
			own := &out[i]
			own.Presence, own.JoinLeave = own.Presence || ns.Presence, own.JoinLeave || ns.JoinLeave
			if ns.HistorySize > 0 {
				own.HistorySize = max(own.HistorySize, 1)
			}
		}
	}
	// A node with apps is strict about namespaces; with none of its own,
	// every other channel is still accepted, as before the apps.
	if len(list) == 0 {
		out = append(out, Namespace{Name: AnyNamespace})
	}
	return out
}

// PusherAppByKey returns the app whose key is key.
func (n *Node) PusherAppByKey(key string) (PusherApp, bool) {
	if app := n.pusher.Load().byKey[key]; app != nil {
		return *app, true
	}
	return PusherApp{}, false
}

// PusherAppByID returns the app whose ID is id.
func (n *Node) PusherAppByID(id string) (PusherApp, bool) {
	if app := n.pusher.Load().byID[id]; app != nil {
		return *app, true
	}
	return PusherApp{}, false
}

// PusherApps returns the node's apps.
func (n *Node) PusherApps() []PusherApp { return append([]PusherApp(nil), n.pusher.Load().list...) }

// PusherChannelOf returns the app and the Pusher name of a Herald channel
// of one of the apps (a webhook event's Channel, say).
func (n *Node) PusherChannelOf(heraldChannel string) (PusherApp, string, bool) {
	for _, app := range n.pusher.Load().list {
		if ch, ok := app.PusherChannel(heraldChannel); ok {
			return app, ch, true
		}
	}
	return PusherApp{}, "", false
}

// PusherEvent is a Pusher event as a Herald publication carries it: the
// publication's Data is its JSON envelope,
//
//	{"pusher_event":"<name>","data":"<data>","user_id":"<user>"}
//
// (user_id only for a client event on a presence channel). Herald clients
// receive that envelope as the publication's data; Pusher clients receive
// the event itself. A Herald publication without the envelope reaches
// Pusher clients as the event "herald:publication" whose data is the
// publication's JSON text (or, for binary data, the event
// "herald:binary" with the bytes in base64).
type PusherEvent struct {
	Event  string `json:"pusher_event"`
	Data   string `json:"data"`
	UserID string `json:"user_id,omitempty"`
}

// Pusher event names for Herald publications without the envelope.
const (
	PusherEventPublication = "herald:publication"
	PusherEventBinary      = "herald:binary"
)

// Encode returns the envelope, a publication's Data.
func (e PusherEvent) Encode() []byte {
	b, _ := json.Marshal(e)
	return b
}

// DecodePusherEvent reads the envelope of a publication's data; false for
// data that is not one.
func DecodePusherEvent(data []byte) (PusherEvent, bool) {
	if len(data) == 0 || data[0] != '{' || !strings.Contains(string(data[:min(len(data), 64)]), `"pusher_event"`) {
		return PusherEvent{}, false
	}
	var e PusherEvent
	if err := json.Unmarshal(data, &e); err != nil || e.Event == "" {
		return PusherEvent{}, false
	}
	return e, true
}

// Errors of the Pusher Go API.
var (
	// ErrPusherChannel: a channel name Pusher refuses.
	ErrPusherChannel = errors.New("herald: invalid pusher channel name")
	// ErrPusherSocketID: a socket id not of Pusher's form "1234.5678".
	ErrPusherSocketID = errors.New("herald: invalid pusher socket id")
)

// PusherTrigger sends event with data to each of the app's channels (Pusher
// names), as Pusher's trigger does: one publication per channel through
// the normal publish path (broker and history), so it reaches the
// channel's Pusher and Herald clients on every node. excludeSocketID, when
// not empty, is a client that does not receive it. It stops at the first
// failure (an *Error of code unavailable: that channel's publish may still
// have happened; those before it did).
func (n *Node) PusherTrigger(ctx context.Context, app PusherApp, channels []string, event, data, excludeSocketID string) error {
	if event == "" || len(event) > 200 {
		return errorf(protocol.CodeBadRequest, "an event name is 1-200 bytes")
	}
	if excludeSocketID != "" && !validSocketID(excludeSocketID) {
		return &Error{Code: protocol.CodeBadRequest, Message: "invalid socket id " + strconv.Quote(excludeSocketID), Err: ErrPusherSocketID}
	}
	chans := make([]string, len(channels))
	for i, ch := range channels {
		if chans[i] = app.HeraldChannel(ch); chans[i] == "" {
			return &Error{Code: protocol.CodeBadChannel, Message: "invalid channel name " + strconv.Quote(ch), Err: ErrPusherChannel}
		}
	}
	payload := PusherEvent{Event: event, Data: data}.Encode()
	for _, ch := range chans {
		ns, perr := n.channelNamespace(ch)
		if perr != nil {
			return perr
		}
		pub := &Publication{Channel: ch, Data: payload, Origin: excludeSocketID}
		n.metrics.pubServer.Add(1)
		if _, err := n.publish(ctx, pub, ns.publishOptions("", 0)); err != nil {
			return err
		}
	}
	return nil
}

// PusherSendToUser sends event with data to every connection of the app
// signed in as userID (pusher:signin), on every node: Pusher's "send an
// event to a user", on the user's channel "#server-to-user-<userID>".
func (n *Node) PusherSendToUser(ctx context.Context, app PusherApp, userID, event, data string) error {
	return n.PusherTrigger(ctx, app, []string{pusherUserPrefix + userID}, event, data, "")
}

// Signatures (Pusher's "authenticating users" and "authorizing
// channels"): hex HMAC-SHA256 with the app's secret, compared in constant
// time.

// PusherSign returns the hex HMAC-SHA256 of msg with secret.
func PusherSign(secret, msg string) string {
	m := hmac.New(sha256.New, []byte(secret))
	m.Write([]byte(msg))
	return hex.EncodeToString(m.Sum(nil))
}

// PusherChannelAuth is the auth of a subscription to a private or presence
// channel, as the app's auth endpoint returns it: "key:signature" of
// "socket_id:channel", or "socket_id:channel:channel_data" for presence.
func PusherChannelAuth(app PusherApp, socketID, channel, channelData string) string {
	msg := socketID + ":" + channel
	if channelData != "" {
		msg += ":" + channelData
	}
	return app.Key + ":" + PusherSign(app.Secret, msg)
}

// PusherUserAuth is the auth of a pusher:signin: "key:signature" of
// "socket_id::user::user_data".
func PusherUserAuth(app PusherApp, socketID, userData string) string {
	return app.Key + ":" + PusherSign(app.Secret, socketID+"::user::"+userData)
}

// checkPusherAuth checks auth ("key:hex") against the signature of msg.
func checkPusherAuth(app *PusherApp, auth, msg string) bool {
	key, sig, ok := strings.Cut(auth, ":")
	if !ok || key != app.Key {
		return false
	}
	got, err := hex.DecodeString(sig)
	if err != nil {
		return false
	}
	m := hmac.New(sha256.New, []byte(app.Secret))
	m.Write([]byte(msg))
	return hmac.Equal(got, m.Sum(nil))
}

// newSocketID returns a Pusher socket id: two random numbers, "1234.5678".
func newSocketID() string {
	var b [8]byte
	_, _ = rand.Read(b[:])
	return strconv.FormatUint(uint64(binary.BigEndian.Uint32(b[:4])), 10) + "." + strconv.FormatUint(uint64(binary.BigEndian.Uint32(b[4:])), 10)
}

// validSocketID reports whether id has Pusher's form \d+\.\d+.
func validSocketID(id string) bool {
	a, b, ok := strings.Cut(id, ".")
	return ok && len(id) <= 41 && digits(a) && digits(b)
}

func digits(s string) bool {
	if s == "" {
		return false
	}
	for i := 0; i < len(s); i++ {
		if s[i] < '0' || s[i] > '9' {
			return false
		}
	}
	return true
}

// pusherConns counts each app's connections on this node, by app ID (apps
// may be reloaded: a count stays with its ID).
type pusherConns struct{ m sync.Map } // app ID -> *atomic.Int64

func (p *pusherConns) of(id string) *atomic.Int64 {
	if v, ok := p.m.Load(id); ok {
		return v.(*atomic.Int64)
	}
	v, _ := p.m.LoadOrStore(id, new(atomic.Int64))
	return v.(*atomic.Int64)
}
