package herald

import (
	"context"
	"encoding/json"
	"net/http"
	"sort"
	"strconv"
	"strings"
	"unicode/utf8"

	"github.com/heraldhq/herald/internal/wsframe"
	"github.com/heraldhq/herald/protocol"
)

// Pusher's close codes (its protocol's "error codes"): 4000-4099 the
// client must not reconnect, 4100-4199 reconnect after a backoff,
// 4200-4299 reconnect at once. pusher-js acts on them so
// (connection/protocol/protocol.ts, getCloseAction).
const (
	PusherAppNotFound      CloseCode = 4001 // no app with this key
	PusherAppDisabled      CloseCode = 4003
	PusherOverQuota        CloseCode = 4004 // the app's connections are at MaxConnections
	PusherPathNotFound     CloseCode = 4005
	PusherBadProtocol      CloseCode = 4007 // protocol version under 7
	PusherUnauthorized     CloseCode = 4009 // a refused sign-in, a terminated user, an expired credential
	PusherOverCapacity     CloseCode = 4100 // slow consumer, flooding, the server too busy: back off
	PusherReconnect        CloseCode = 4200 // drain, shutdown, resubscribe: reconnect at once
	PusherPongNotReceived  CloseCode = 4201
	PusherClientEventLimit           = 4301 // pusher:error only: a client event over the rate
)

// pusherCloseCode maps the close code of a Herald close (conn.close) to
// Pusher's, so that pusher-js reconnects when Herald's client would and
// not when it would not.
func pusherCloseCode(code CloseCode) CloseCode {
	switch code {
	case CloseSlowConsumer, CloseRateLimited, CloseTryAgainLater:
		return PusherOverCapacity
	case CloseNoPong:
		return PusherPongNotReceived
	case CloseGoingAway, CloseServiceRestart, CloseResubscribe:
		return PusherReconnect
	case CloseDisconnected, CloseTokenExpired, CloseForbidden, CloseUnauthorized, ClosePolicyViolation:
		return PusherUnauthorized
	}
	return code
}

var pusherSlowFrame = wsframe.Close(PusherOverCapacity, "slow consumer")

// pusherSession is the Pusher Channels protocol, version 7, on one
// connection (session_pusher.go; docs/pusher.md): pusher:* messages and
// client events in, Pusher events out through the connection's queue.
// Its methods run on the connection's reader goroutine; it runs no timer.
type pusherSession struct {
	c   *conn
	app *PusherApp // nil for an unknown key: the connection is closing
	// user is the signed-in user (pusher:signin), "" before; reader only.
	user string
	// members: the presence user id of each presence channel subscribed
	// (Herald name), for client events' user_id; reader only.
	members map[string]string
	counted bool // counted in the app's connections
}

var _ session = (*pusherSession)(nil)

// PusherHandler serves Pusher clients (pusher-js, Laravel Echo, the
// Pusher SDKs' WebSocket clients) at /app/{key}, Pusher's protocol 7
// (docs/pusher.md). Mount it at "/app/" (or under a prefix: the key is
// what follows the last "/app/"). A key of no app gets pusher:error 4001
// and the close, as Pusher does; a protocol under 7, 4007. Config's
// Authenticate, Tokens and connect hook do not apply: Pusher clients are
// authorized per channel, with the app's signatures.
func (n *Node) PusherHandler() http.Handler {
	return http.HandlerFunc(n.servePusher)
}

func (n *Node) servePusher(w http.ResponseWriter, r *http.Request) {
	hs, no := n.checkHandshake(w, r, nil)
	ip, remote := n.clientAddr(r)
	if no == nil {
		no = n.admit(w, ip, "")
	}
	if no != nil {
		http.Error(w, no.msg, no.status)
		return
	}
	lim := n.limits.Load() // before the 101: see newConn
	nc, err := n.accept(w, hs)
	if err != nil {
		n.log.Info("websocket handshake failed", "remote", remote, "err", err)
		n.release(ip, "")
		return
	}
	c := n.newConn(nc, hs, identity{client: newSocketID(), remote: remote, authed: true}, ip, false, lim)
	c.form, c.pusher = formPusher|c.form&1, true
	c.out = newOutbound(n.cfg.MaxQueueMessages, n.cfg.MaxQueueBytes, pusherSlowFrame)
	c.remote = remote
	s := &pusherSession{c: c}
	c.sess = s
	welcome := s.start(r) // s.app is set before the hub shares c (pusherTerminate reads it)
	n.hub.addConn(c)
	if welcome { // in before the welcome, as a herald.v1 connect reply
		s.welcome()
	}
	n.connected(c, ClientInfo{ID: c.id, RemoteAddr: remote})
	n.log.Debug("pusher client connected", "client", c.id, "remote", remote)
	c.startReader(hs.deflate)
}

// start checks the app and the protocol of the handshake: it reports
// whether the client is to be welcomed, or refuses it.
func (s *pusherSession) start(r *http.Request) bool {
	n := s.c.node
	key := r.URL.Path[strings.LastIndex(r.URL.Path, "/app/")+len("/app/"):]
	if strings.LastIndex(r.URL.Path, "/app/") < 0 || key == "" || strings.Contains(key, "/") {
		s.refuse(PusherPathNotFound, "Path not found: connect to /app/{key}")
		return false
	}
	app := n.pusher.Load().byKey[key]
	if app == nil {
		s.refuse(PusherAppNotFound, "App key "+strconv.Quote(key[:min(len(key), 64)])+" not in this cluster")
		return false
	}
	if v := r.URL.Query().Get("protocol"); v != "" {
		if p, err := strconv.Atoi(v); err != nil || p < 7 {
			s.refuse(PusherBadProtocol, "Unsupported protocol version: this server speaks 7")
			return false
		}
	}
	count := n.pusherConns.of(app.ID)
	if k := count.Add(1); app.MaxConnections > 0 && k > int64(app.MaxConnections) {
		count.Add(-1)
		n.metrics.limitHits.Add(1)
		s.refuse(PusherOverQuota, "Application is over connection quota")
		return false
	}
	s.app, s.counted = app, true
	return true
}

// welcome sends pusher:connection_established: the socket id and the
// activity timeout.
func (s *pusherSession) welcome() {
	c, n := s.c, s.c.node
	timeout := s.app.ActivityTimeout
	if timeout == 0 {
		timeout = 120
	}
	data, _ := json.Marshal(map[string]any{"socket_id": c.id, "activity_timeout": timeout})
	n.admitConn(c)
	s.send("pusher:connection_established", "", string(data))
}

func (s *pusherSession) readDone() {}

func (s *pusherSession) stop() {
	if s.counted {
		s.c.node.pusherConns.of(s.app.ID).Add(-1)
		s.counted = false
	}
}

// pusherMsg is a message a Pusher client sends.
type pusherMsg struct {
	Event   string          `json:"event"`
	Channel string          `json:"channel"`
	Data    json.RawMessage `json:"data"`
}

func (s *pusherSession) message(msg []byte, binary bool) {
	c := s.c
	lim := c.limit()
	if lim == flooding {
		c.close(CloseRateLimited, "message rate limit exceeded")
		return
	}
	var m pusherMsg
	if binary || json.Unmarshal(msg, &m) != nil || m.Event == "" {
		s.errorEvent(0, `Invalid message: a Pusher message is a JSON object with "event"`)
		return
	}
	if s.app == nil {
		return // refused: closing
	}
	if lim == refused {
		s.rateRefused(m)
		return
	}
	switch {
	case m.Event == "pusher:ping":
		s.send("pusher:pong", "", "{}")
	case m.Event == "pusher:subscribe":
		s.subscribe(m.Data)
	case m.Event == "pusher:unsubscribe":
		s.unsubscribe(m.Data)
	case m.Event == "pusher:signin":
		s.signin(m.Data)
	case strings.HasPrefix(m.Event, "client-"):
		s.clientEvent(m)
	case strings.HasPrefix(m.Event, "pusher:"):
		// Other pusher: events (pusher:pong and the like) need nothing.
	default:
		s.errorEvent(0, "Unknown event "+strconv.Quote(m.Event)+": clients send pusher:* and client-* events")
	}
}

// rateRefused answers a message over the message rate. A subscription
// gets pusher:subscription_error 429 on its channel, so that the page
// learns of it (Echo's error callback): pusher-js does not retry a
// subscription by itself, and after a reconnect it resubscribes every
// channel at once. Anything else gets pusher:error 4301, Pusher's code for
// a client event over the rate.
func (s *pusherSession) rateRefused(m pusherMsg) {
	if m.Event == "pusher:subscribe" {
		var d struct {
			Channel string `json:"channel"`
		}
		_ = json.Unmarshal(m.Data, &d)
		s.subscriptionError(d.Channel, "LimitReached", "Too many messages (the server's message_rate): subscribe again later", http.StatusTooManyRequests)
		return
	}
	msg := "Client event rejected due to rate limit"
	if !strings.HasPrefix(m.Event, "client-") {
		msg = "Message rejected due to rate limit: " + closeReason(m.Event[:min(len(m.Event), 64)])
	}
	s.errorEvent(PusherClientEventLimit, msg)
}

// send queues a Pusher event. data is the event's data: a string, sent as
// a JSON string, as Pusher sends data.
func (s *pusherSession) send(event, channel, data string) {
	s.c.enqueue(s.c.frame(wsframe.OpText, appendPusherFrame(nil, event, channel, data, "", 0, "")))
}

// errorEvent queues pusher:error; code 0 sends a null code (an error that
// is no close code).
func (s *pusherSession) errorEvent(code CloseCode, message string) {
	m := map[string]any{"code": nil, "message": message}
	if code != 0 {
		m["code"] = int(code)
	}
	b, _ := json.Marshal(map[string]any{"event": "pusher:error", "data": m})
	s.c.enqueue(s.c.frame(wsframe.OpText, b))
}

// refuse sends pusher:error with code and closes the connection with it,
// as Pusher does for a refused connection. The code is Pusher's own.
func (s *pusherSession) refuse(code CloseCode, message string) {
	s.errorEvent(code, message)
	reason := closeReason(message)
	if s.c.closeFrame(wsframe.Close(code, reason), false) {
		s.c.setEnded(code, reason)
	}
}

// closeReason is message as a close frame's reason: valid UTF-8 of at
// most 123 bytes, cut at a character's start.
func closeReason(message string) string {
	r := strings.ToValidUTF8(message, "?")
	for len(r) > 123 {
		_, size := utf8.DecodeLastRuneInString(r)
		r = r[:len(r)-size]
	}
	return r
}

// subscriptionError tells the client that a subscription was refused
// (pusher-js emits it on the channel as pusher:subscription_error).
func (s *pusherSession) subscriptionError(channel, typ, msg string, status int) {
	b, _ := json.Marshal(map[string]any{"type": typ, "error": msg, "status": status})
	s.c.enqueue(s.c.frame(wsframe.OpText, appendPusherFrame(nil, "pusher:subscription_error", channel, "", "", 0, "", b)))
}

// pusherSubscribe is pusher:subscribe's data; Since is Herald's opt-in
// recovery (docs/pusher.md, "Recovery"): the position of the last event
// the client has of the channel. PrevSocketID is the socket id of the
// client's connection before this one: what was never sent to it (its
// own client events, triggers excluding it) is not recovered either.
type pusherSubscribe struct {
	Channel      string             `json:"channel"`
	Auth         string             `json:"auth"`
	ChannelData  string             `json:"channel_data"`
	Since        *protocol.Position `json:"herald_since"`
	PrevSocketID string             `json:"herald_socket_id"`
}

func (s *pusherSession) subscribe(raw json.RawMessage) {
	var d pusherSubscribe
	if json.Unmarshal(raw, &d) != nil {
		s.errorEvent(0, "Invalid pusher:subscribe: its data is an object with \"channel\"")
		return
	}
	hch := s.app.HeraldChannel(d.Channel)
	if hch == "" {
		s.subscriptionError(d.Channel, "InvalidChannel", "Invalid channel name", http.StatusBadRequest)
		return
	}
	kind := pusherKind(d.Channel)
	var member *ClientPresence
	switch kind {
	case pusherPrivate, pusherPrivateCache, pusherPresence, pusherPresenceCache:
		msg := s.c.id + ":" + d.Channel
		presence := kind == pusherPresence || kind == pusherPresenceCache
		if presence {
			msg += ":" + d.ChannelData
		}
		if !checkPusherAuth(s.app, d.Auth, msg) {
			s.c.node.metrics.authFailures.Add(1)
			s.subscriptionError(d.Channel, "AuthError", "Invalid signature: the auth is not key:HMAC-SHA256(secret, socket_id:channel"+map[bool]string{true: ":channel_data", false: ""}[presence]+")", http.StatusUnauthorized)
			return
		}
		if presence {
			var ok bool
			if member, ok = pusherMember(s.c.id, d.ChannelData); !ok {
				s.subscriptionError(d.Channel, "InvalidChannelData", `channel_data must be JSON with a "user_id"`, http.StatusBadRequest)
				return
			}
		}
	case pusherUser:
		if s.user == "" || d.Channel != pusherUserPrefix+s.user {
			s.subscriptionError(d.Channel, "AuthError", "Sign in as this user first (pusher:signin)", http.StatusForbidden)
			return
		}
	}
	s.subscribeHerald(d, hch, kind, member)
}

// pusherMember reads a presence subscription's channel_data.
func pusherMember(client, channelData string) (*ClientPresence, bool) {
	var cd struct {
		UserID   json.RawMessage `json:"user_id"`
		UserInfo json.RawMessage `json:"user_info"`
	}
	if json.Unmarshal([]byte(channelData), &cd) != nil || len(cd.UserID) == 0 {
		return nil, false
	}
	id, ok := pusherUserID(cd.UserID)
	if !ok {
		return nil, false
	}
	info := cd.UserInfo
	if len(info) == 0 {
		info = json.RawMessage("null")
	}
	return &ClientPresence{Client: client, User: id, Info: info}, true
}

// pusherUserID reads a user id of channel_data or of sign-in user_data: a
// string, or a number as PHP's json_encode writes an integer id (Laravel's
// user ids), taken as its text.
func pusherUserID(raw json.RawMessage) (string, bool) {
	var id string
	if json.Unmarshal(raw, &id) != nil {
		if _, err := strconv.ParseFloat(string(raw), 64); err != nil {
			return "", false
		}
		id = string(raw)
	}
	return id, id != "" && validUserID(id) == nil
}

// subscribeHerald makes the subscription of an authorized pusher:subscribe
// and answers it: subscription_succeeded, then for a cache channel its
// last event (or pusher:cache_miss), then the recovered events and the
// live stream.
func (s *pusherSession) subscribeHerald(d pusherSubscribe, hch, kind string, member *ClientPresence) {
	c, n := s.c, s.c.node
	c.subMu.Lock()
	defer c.subMu.Unlock()
	if subscribed(c, hch) { // pusher-js may ask again: answer again
		s.membersReady(hch, s.succeeded(d.Channel, hch, nil, member != nil))
		return
	}
	ns, perr := n.channelNamespace(hch)
	if perr != nil {
		s.subscriptionError(d.Channel, "InvalidChannel", perr.Message, http.StatusBadRequest)
		return
	}
	user, info := "", json.RawMessage(nil)
	if member != nil {
		user, info = member.User, member.Info
	}
	prev := d.PrevSocketID
	if !validSocketID(prev) {
		prev = ""
	}
	res, finish, perr := n.subscribeCheckedAs(c, ns, hch, d.Since, info, user, prev, "")
	if perr != nil {
		s.subscriptionError(d.Channel, "SubscriptionError", perr.Message, HTTPStatus(perr.Code))
		return
	}
	if member != nil {
		if s.members == nil {
			s.members = make(map[string]string)
		}
		s.members[hch] = member.User
	}
	s.membersReady(hch, s.succeeded(d.Channel, hch, res, member != nil))
	if res.Recovered != nil && !*res.Recovered {
		b, _ := json.Marshal(map[string]string{"reason": res.Reason})
		s.send("herald:unrecovered", d.Channel, string(b))
	}
	if (kind == pusherCache || kind == pusherPrivateCache || kind == pusherPresenceCache) && d.Since == nil {
		s.cached(d.Channel, hch, res)
	}
	finish()
	n.log.Debug("pusher subscribed", "client", c.id, "channel", hch)
}

// succeeded sends pusher_internal:subscription_succeeded, with the
// channel's members for a presence channel (whose users it returns), and
// the channel's position (offset, epoch) when it keeps history, for the
// opt-in recovery.
func (s *pusherSession) succeeded(channel, hch string, res *protocol.SubscribeResult, presence bool) (users []string) {
	data := "{}"
	if presence {
		data, users = s.presenceData(hch)
	}
	var offset uint64
	epoch := ""
	if res != nil {
		offset, epoch = res.Offset, res.Epoch
	}
	s.c.enqueue(s.c.frame(wsframe.OpText, appendPusherFrame(nil, "pusher_internal:subscription_succeeded", channel, data, "", offset, epoch)))
	return users
}

// membersReady tells a presence subscription's member filter the users
// its subscription_succeeded listed (see pusherMembers).
func (s *pusherSession) membersReady(hch string, users []string) {
	if e := s.c.node.hub.sub(hch, s.c); e != nil && e.members != nil {
		e.members.ready(s.c, users)
	}
}

// presenceData is a presence channel's subscription_succeeded data:
// {"presence":{"ids":[..],"hash":{id:info},"count":n}}, one entry per
// user, cluster-wide.
func (s *pusherSession) presenceData(hch string) (string, []string) {
	ctx, cancel := s.c.node.opCtx()
	defer cancel()
	m, err := s.c.node.Presence(ctx, hch)
	if err != nil {
		s.c.node.log.Warn("presence read failed", "channel", hch, "err", err)
	}
	hash := make(map[string]json.RawMessage, len(m))
	for _, p := range m {
		info := p.Info
		if len(info) == 0 {
			info = json.RawMessage("null")
		}
		hash[p.User] = info
	}
	ids := make([]string, 0, len(hash))
	for id := range hash {
		ids = append(ids, id)
	}
	sort.Strings(ids)
	b, _ := json.Marshal(map[string]any{"presence": map[string]any{"ids": ids, "hash": hash, "count": len(ids)}})
	return string(b), ids
}

// cached sends a cache channel's last event from history, or
// pusher:cache_miss (and its webhook event) when there is none.
func (s *pusherSession) cached(channel, hch string, res *protocol.SubscribeResult) {
	c, n := s.c, s.c.node
	if res.Offset > 0 {
		ctx, cancel := n.opCtx()
		h, err := n.broker.History(ctx, hch, HistoryOptions{Since: &StreamPosition{Offset: res.Offset - 1, Epoch: res.Epoch}, Limit: 1})
		cancel()
		if err == nil && len(h.Publications) == 1 && h.Publications[0].Offset == res.Offset {
			p := h.Publications[0]
			c.enqueue(n.encodePub(p, c.form))
			return
		}
	}
	s.send("pusher:cache_miss", channel, "")
	if n.events != nil {
		n.events.cacheMiss(hch)
	}
}

func (s *pusherSession) unsubscribe(raw json.RawMessage) {
	var d struct {
		Channel string `json:"channel"`
	}
	_ = json.Unmarshal(raw, &d)
	hch := s.app.HeraldChannel(d.Channel)
	if hch == "" {
		return
	}
	c, n := s.c, s.c.node
	c.subMu.Lock()
	err := n.unsubscribeConn(c, hch)
	c.subMu.Unlock()
	if err == nil {
		delete(s.members, hch)
		n.unsubscribed(c, hch, "client")
	}
}

// signin is pusher:signin: the user's auth checked, the connection is the
// user's (Herald's user id: limits, SendToUser, DisconnectUser), and may
// subscribe to the user's channel.
func (s *pusherSession) signin(raw json.RawMessage) {
	c, n := s.c, s.c.node
	var d struct {
		Auth     string `json:"auth"`
		UserData string `json:"user_data"`
	}
	var ud struct {
		ID json.RawMessage `json:"id"`
	}
	var id string
	ok := json.Unmarshal(raw, &d) == nil && json.Unmarshal([]byte(d.UserData), &ud) == nil
	if ok {
		id, ok = pusherUserID(ud.ID)
	}
	if !ok || !validPusherChannel(pusherUserPrefix+id) {
		s.refuse(PusherUnauthorized, `Invalid pusher:signin: user_data must be JSON with an "id" (a string or a number)`)
		return
	}
	if !checkPusherAuth(s.app, d.Auth, c.id+"::user::"+d.UserData) {
		n.metrics.authFailures.Add(1)
		s.refuse(PusherUnauthorized, "Invalid signature: the auth is not key:HMAC-SHA256(secret, socket_id::user::user_data)")
		return
	}
	if id != c.user {
		if !n.moveUser(c.user, id) {
			n.metrics.limitHits.Add(1)
			s.refuse(PusherOverQuota, "too many connections for this user")
			return
		}
		old := c.user
		n.hub.setUser(c, id)
		n.events.userMoved(old, id)
	}
	s.user = id
	b, _ := json.Marshal(map[string]string{"user_data": d.UserData})
	s.send("pusher:signin_success", "", string(b))
}

// clientEvent relays a client-* event to the channel's other subscribers
// (not back to the sender), on every node.
func (s *pusherSession) clientEvent(m pusherMsg) {
	c, n := s.c, s.c.node
	kind := pusherKind(m.Channel)
	switch {
	case !s.app.ClientEvents:
		s.errorEvent(0, "To send client events, enable client events for the app (client_events)")
		return
	case kind != pusherPrivate && kind != pusherPresence && kind != pusherPrivateCache && kind != pusherPresenceCache,
		strings.HasPrefix(m.Channel, "private-encrypted-"):
		s.errorEvent(0, "Client events are allowed on private and presence channels only")
		return
	case len(m.Event) > 200:
		s.errorEvent(0, "Event name too long: at most 200 characters")
		return
	}
	hch := s.app.HeraldChannel(m.Channel)
	if !subscribed(c, hch) {
		s.errorEvent(0, "Client event on a channel this connection is not subscribed to")
		return
	}
	data := string(m.Data)
	var str string
	if json.Unmarshal(m.Data, &str) == nil {
		data = str
	}
	pub := &Publication{Channel: hch, Data: PusherEvent{Event: m.Event, Data: data, UserID: s.members[hch]}.Encode(), Origin: c.id}
	if perr := n.publishHook(c, pub, true); perr != nil {
		s.errorEvent(0, perr.Message)
		return
	}
	ns, perr := n.channelNamespace(hch)
	if perr != nil {
		s.errorEvent(0, perr.Message)
		return
	}
	n.metrics.pubClient.Add(1)
	ctx, cancel := n.opCtx()
	defer cancel()
	res, err := n.publish(ctx, pub, ns.publishOptions("", 0))
	if err != nil {
		n.log.Warn("client event publish failed", "channel", hch, "err", err)
		s.errorEvent(0, "Client event failed: try again")
		return
	}
	if ns.PublishEvents && n.events != nil {
		pub.Offset = res.Offset
		n.events.published(c, pub)
	}
}

// appendPusherFrame appends a Pusher event: {"event","channel","data"
// (a JSON string),"user_id"} and, for a channel with history, Herald's
// "offset" and "epoch" (ignored by pusher-js; read by the recovery glue).
// rawData, when given, is sent as data instead, as JSON.
func appendPusherFrame(b []byte, event, channel, data, userID string, offset uint64, epoch string, rawData ...json.RawMessage) []byte {
	b = append(b, `{"event":`...)
	b = appendJSONString(b, event)
	if channel != "" {
		b = append(b, `,"channel":`...)
		b = appendJSONString(b, channel)
	}
	b = append(b, `,"data":`...)
	if len(rawData) > 0 {
		b = append(b, rawData[0]...)
	} else {
		b = appendJSONString(b, data)
	}
	if userID != "" {
		b = append(b, `,"user_id":`...)
		b = appendJSONString(b, userID)
	}
	if offset != 0 {
		b = append(b, `,"offset":`...)
		b = strconv.AppendUint(b, offset, 10)
	}
	if epoch != "" {
		b = append(b, `,"epoch":`...)
		b = appendJSONString(b, epoch)
	}
	return append(b, '}')
}

func appendJSONString(b []byte, s string) []byte {
	q, _ := json.Marshal(s)
	return append(b, q...)
}

// appendPusherPub appends the Pusher event of a publication or presence
// event to a Pusher client: the envelope's event (PusherEvent), a plain
// publication as herald:publication (herald:binary), a join or leave as
// pusher_internal:member_added or member_removed.
func appendPusherPub(b []byte, pub *Publication) []byte {
	ch := pusherNameOf(pub.Channel)
	switch pub.Kind {
	case KindJoin:
		d, _ := json.Marshal(map[string]any{"user_id": pub.Presence.User, "user_info": pub.Presence.Info})
		return appendPusherFrame(b, "pusher_internal:member_added", ch, string(d), "", 0, "")
	case KindLeave:
		d, _ := json.Marshal(map[string]string{"user_id": pub.Presence.User})
		return appendPusherFrame(b, "pusher_internal:member_removed", ch, string(d), "", 0, "")
	}
	return appendPusherData(b, ch, pub.Offset, pub.Data, pub.Binary)
}

// appendPusherData appends the Pusher event of a publication's data on
// channel (a Pusher name; "" for a message sent to the connection, as
// Node.Send, which goes as herald:message).
func appendPusherData(b []byte, channel string, offset uint64, data []byte, binary bool) []byte {
	switch {
	case binary:
		q, _ := json.Marshal(data) // base64
		return appendPusherFrame(b, PusherEventBinary, channel, "", "", offset, "", q)
	case channel == "":
		return appendPusherFrame(b, "herald:message", "", string(data), "", 0, "")
	}
	if e, ok := DecodePusherEvent(data); ok {
		return appendPusherFrame(b, e.Event, channel, e.Data, e.UserID, offset, "")
	}
	return appendPusherFrame(b, PusherEventPublication, channel, string(data), "", offset, "")
}

// pusherSkips reports whether fan-out skips pub for Pusher client c: its
// own client event, or an event triggered excluding it (Origin is its
// socket id), and its own member_added and member_removed.
func pusherSkips(c *conn, pub *Publication) bool {
	if pub.Kind != KindPublication {
		return pub.Presence != nil && pub.Presence.Client == c.id
	}
	return pub.Origin != "" && pub.Origin == c.id
}

// PusherTerminateUser closes every connection of the app signed in as
// userID (pusher:signin), on every node: Pusher's "terminate user
// connections". Each gets pusher:error 4009 and the close 4009, on which
// pusher-js does not reconnect. The user's connections to other apps,
// and Herald protocol clients of that user, stay.
func (n *Node) PusherTerminateUser(ctx context.Context, app PusherApp, userID string) error {
	if userID == "" {
		return errorf(protocol.CodeBadRequest, "a user id is required")
	}
	return n.publishControl(ctx, control{Op: "pusher_terminate", User: userID, App: app.ID, Reason: "Connection terminated by the app"})
}

// pusherTerminate closes c if it is a Pusher client of the app appID.
// c.pusher first: it is fixed at creation, while another connection's
// sess may still be written by its serve (a race otherwise).
func pusherTerminate(c *conn, appID, reason string) {
	if !c.pusher {
		return
	}
	if s, ok := c.sess.(*pusherSession); ok && s.app != nil && s.app.ID == appID {
		s.refuse(PusherUnauthorized, reason)
	}
}
