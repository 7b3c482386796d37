package herald

import (
	"context"
	"encoding/json"
	"net/http"

	"github.com/heraldhq/herald/internal/wsframe"
	"github.com/heraldhq/herald/protocol"
)

// The hooks on the sessions' paths: connect (raw handshake, herald.v1
// connect), publish, rpc, and the notifications.

// rawConnectHook asks Hooks.Connect about a raw handshake, before the
// upgrade: a raw client has no replies, so a refusal is the handshake's
// HTTP answer (401 or 403, 503 for a failure).
func (n *Node) rawConnectHook(r *http.Request, rawCh string, id *identity) *handshakeRefusal {
	return n.handshakeConnectHook(r, ClientInfo{ID: id.client, UserID: id.user, Info: id.info, Raw: true, RawChannel: rawCh, RemoteAddr: id.remote}, id)
}

// handshakeConnectHook asks Hooks.Connect about a request that is its
// connection's whole say (raw mode, SSE), client describing it; a refusal
// is the request's HTTP answer.
func (n *Node) handshakeConnectHook(r *http.Request, client ClientInfo, id *identity) *handshakeRefusal {
	ev := &ConnectEvent{Client: client, Header: r.Header, URL: r.URL.String()}
	var reply *ConnectReply
	v, perr := n.callHook(hookConnect, id.client, func(ctx context.Context) (err error) {
		reply, err = n.cfg.Hooks.Connect(ctx, ev)
		return err
	})
	if v == hookOK {
		perr = n.applyConnectReply(id, reply)
	}
	switch {
	case perr == nil:
		return nil
	case perr.Code == protocol.CodeUnavailable:
		return &handshakeRefusal{http.StatusServiceUnavailable, "Service Unavailable: " + perr.Message}
	case perr.Code == protocol.CodeUnauthorized:
		n.metrics.authFailures.Add(1)
		return &handshakeRefusal{http.StatusUnauthorized, "Unauthorized: " + perr.Message}
	default:
		n.metrics.authFailures.Add(1)
		return &handshakeRefusal{http.StatusForbidden, "Forbidden: " + perr.Message}
	}
}

// rawConnectAdmitted asks the connect hook about an admitted raw
// handshake — after the limits, so that a flood of handshakes is refused
// before it reaches the backend — then counts the connection under the
// user the hook gave, and checks that user may subscribe to the channel.
// A refusal releases the admission.
func (n *Node) rawConnectAdmitted(r *http.Request, rawCh, ip string, id *identity) *handshakeRefusal {
	counted := id.user
	no := n.rawConnectHook(r, rawCh, id)
	switch {
	case no != nil:
	case id.user != counted && !n.moveUser(counted, id.user):
		n.metrics.limitHits.Add(1)
		no = &handshakeRefusal{http.StatusTooManyRequests, "Too Many Requests: too many connections for this user"}
	default:
		counted = id.user
		ns, err := n.channelNamespace(rawCh)
		if err == nil {
			err = n.permit(id.user, id.grants, rawCh, ns.AllowSubscribe)
		}
		if err != nil {
			no = &handshakeRefusal{http.StatusForbidden, "Forbidden: " + err.Message}
		}
	}
	if no != nil {
		n.release(ip, counted)
	}
	return no
}

// applyConnectReply sets what the connect hook answered into id. A reply
// Herald cannot use (a user id or info that is not valid) is the
// backend's failure, refused as unavailable: no one gets in on a garbled
// answer.
func (n *Node) applyConnectReply(id *identity, reply *ConnectReply) *Error {
	if reply == nil {
		return nil
	}
	bad := func(what string) *Error {
		n.log.Warn("connect hook answered an invalid "+what, "client", id.client)
		return &Error{Code: protocol.CodeUnavailable, Message: "connect hook unavailable"}
	}
	if reply.UserID != "" {
		if validUserID(reply.UserID) != nil {
			return bad("user id")
		}
		id.user = reply.UserID
	}
	if reply.Info != nil {
		if !json.Valid(reply.Info) {
			return bad("info")
		}
		id.info = reply.Info
	}
	if reply.Data != nil && !json.Valid(reply.Data) {
		return bad("data")
	}
	for _, ch := range reply.Channels {
		if !protocol.ValidChannel(ch) {
			return bad("channel")
		}
	}
	if !reply.ExpiresAt.IsZero() {
		id.expires, id.hookExpiry = reply.ExpiresAt, true
	}
	return nil
}

// connectHook asks Hooks.Connect about a herald.v1 connect, after the
// token (if any) was checked. It applies the answer to the connection and
// returns it, or closes the connection after replying with the refusal.
func (s *v1Session) connectHook(cmd protocol.Command) (reply *ConnectReply, ok bool) {
	c, n := s.c, s.c.node
	ev := &ConnectEvent{Client: c.clientInfo(), Header: s.header, URL: s.url, Data: cmd.Data}
	v, perr := n.callHook(hookConnect, c.id, func(ctx context.Context) (err error) {
		reply, err = n.cfg.Hooks.Connect(ctx, ev)
		return err
	})
	id := identity{client: c.id, user: ev.Client.UserID, info: ev.Client.Info}
	if v == hookOK {
		perr = n.applyConnectReply(&id, reply)
	}
	if perr == nil && id.user != ev.Client.UserID && !n.moveUser(ev.Client.UserID, id.user) {
		n.metrics.limitHits.Add(1)
		s.reply(cmd.ID, nil, protocol.Errorf(protocol.CodeLimitExceeded, "too many connections for this user"))
		c.close(ClosePolicyViolation, "too many connections for this user")
		return nil, false
	}
	if perr != nil {
		s.reply(cmd.ID, nil, toProto(perr))
		code := CloseTryAgainLater
		if perr.Code != protocol.CodeUnavailable {
			n.metrics.authFailures.Add(1)
			code = closeForRefusal(perr)
		}
		c.close(code, perr.Message)
		return nil, false
	}
	if id.user != ev.Client.UserID {
		n.hub.setUser(c, id.user)
		if c.admitted.Load() {
			n.events.userMoved(ev.Client.UserID, id.user)
		}
	}
	c.mu.Lock()
	c.info = id.info
	c.mu.Unlock()
	if id.hookExpiry {
		s.exp.set(c, id.expires, true)
	}
	return reply, true
}

// connectSubs makes a connect's server-side subscriptions, after its
// reply: the hook's channels, recovering from where connect's subs say
// the client was; then the other channels of subs the client may
// subscribe to by itself. The rest it ends with an unsub push
// (not_restored). Reader goroutine.
func (s *v1Session) connectSubs(reply *ConnectReply, subs map[string]protocol.Position) {
	c, n := s.c, s.c.node
	granted := make(map[string]bool)
	if reply != nil {
		for _, ch := range reply.Channels {
			if granted[ch] {
				continue
			}
			granted[ch] = true
			if err := n.serverSubscribe(c, ch, position(subs, ch), false); err != nil && err.Code != protocol.CodeAlreadySub {
				n.log.Warn("server-side subscription failed", "client", c.id, "channel", ch, "err", err)
				c.enqueue(c.frame(wsframe.OpText, protocol.AppendUnsubPush(nil, ch, protocol.UnsubNotRestored, err.Message)))
			}
		}
	}
	for ch := range subs {
		if granted[ch] {
			continue
		}
		if err := n.serverSubscribe(c, ch, position(subs, ch), true); err != nil && err.Code != protocol.CodeAlreadySub {
			c.enqueue(c.frame(wsframe.OpText, protocol.AppendUnsubPush(nil, ch, protocol.UnsubNotRestored, err.Message)))
		}
	}
}

// position is the recovery position of ch in connect's subs: none for a
// channel without history (no epoch), which has nothing to recover.
func position(subs map[string]protocol.Position, ch string) *protocol.Position {
	if p, ok := subs[ch]; ok && p.Epoch != "" {
		return &p
	}
	return nil
}

// publishHook asks Hooks.Publish about a client's publication, if it is on
// for the channel, and applies its answer to pub. wantJSON: the
// replacement of a text publication must be JSON (herald.v1's are; a raw
// client's text is any text).
func (n *Node) publishHook(c *conn, pub *Publication, wantJSON bool) *Error {
	hook := n.cfg.Hooks.Publish
	if hook == nil || !hookOn(n.cfg.Hooks.PublishNamespaces, pub.Channel) {
		return nil
	}
	var reply *PublishReply
	ev := &PublishEvent{Client: c.clientInfo(), Channel: pub.Channel, Data: pub.Data, Binary: pub.Binary}
	if v, perr := n.callHook(hookPublish, c.id, func(ctx context.Context) (err error) {
		reply, err = hook(ctx, ev)
		return err
	}); v != hookOK {
		return perr
	}
	if reply != nil && reply.Data != nil {
		if wantJSON && !pub.Binary && !json.Valid(reply.Data) {
			n.log.Warn("publish hook answered data that is not JSON", "channel", pub.Channel)
			return errorf(protocol.CodeUnavailable, "publish hook unavailable")
		}
		pub.Data = reply.Data
	}
	return nil
}

// rpc answers an rpc command with the RPC hook's answer.
func (s *v1Session) rpc(cmd protocol.Command, binary bool) {
	c, n := s.c, s.c.node
	hook := n.cfg.Hooks.RPC
	switch {
	case hook == nil:
		s.reply(cmd.ID, nil, protocol.Errorf(protocol.CodeNotEnabled, "this server has no RPC methods"))
		return
	case cmd.Method == "":
		s.reply(cmd.ID, nil, protocol.Errorf(protocol.CodeBadRequest, `rpc needs "method"`))
		return
	case binary:
		s.reply(cmd.ID, nil, protocol.Errorf(protocol.CodeBadRequest, `rpc takes JSON "data" in a text frame`))
		return
	}
	var reply *RPCReply
	ev := &RPCEvent{Client: c.clientInfo(), Method: cmd.Method, Data: cmd.Data}
	if v, perr := n.callHook(hookRPC, c.id, func(ctx context.Context) (err error) {
		reply, err = hook(ctx, ev)
		return err
	}); v != hookOK {
		s.fail(cmd.ID, perr)
		return
	}
	var res protocol.RPCResult
	if reply != nil && reply.Data != nil {
		if !json.Valid(reply.Data) {
			n.log.Warn("rpc hook answered data that is not JSON", "method", cmd.Method)
			s.reply(cmd.ID, nil, protocol.Errorf(protocol.CodeUnavailable, "rpc hook unavailable"))
			return
		}
		res.Data = reply.Data
	}
	s.reply(cmd.ID, json.RawMessage(protocol.AppendRPCResult(nil, res)), nil)
}

// unsubscribed tells Hooks.Unsubscribed that c's subscription to channel
// ended, for reason (client, server, disconnect).
func (n *Node) unsubscribed(c *conn, channel, reason string) {
	hook := n.cfg.Hooks.Unsubscribed
	if hook == nil {
		return
	}
	ev := &UnsubscribeEvent{Client: c.clientInfo(), Channel: channel, Reason: reason}
	n.notify(hookUnsubscribed, c.id, func(ctx context.Context) error { return hook(ctx, ev) })
}

// disconnected tells Hooks.Disconnected that c ended.
func (n *Node) disconnected(c *conn) {
	hook := n.cfg.Hooks.Disconnected
	if hook == nil {
		return
	}
	ev := &DisconnectEvent{Client: c.clientInfo()}
	ev.Code, ev.Reason = c.ended()
	n.notify(hookDisconnected, c.id, func(ctx context.Context) error { return hook(ctx, ev) })
}
