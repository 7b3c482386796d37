package main

import (
	"context"
	"encoding/json"
	"fmt"
	"strings"
	"time"
	"unicode/utf8"

	"github.com/heraldhq/herald"
	"github.com/heraldhq/herald/protocol"
)

// connect lets a connection in when its handshake carries a session cookie,
// as the user of that session; it subscribes the connection to the room
// and the online list (server-side subscriptions: the page does not ask).
// No session: refused with unauthorized, which closes the connection with
// 4501, after which the client does not reconnect (the page shows the login
// form).
func (a *app) connect(_ context.Context, e *herald.ConnectEvent) (*herald.ConnectReply, error) {
	name, ok := a.sessions.fromHeader(e.Header)
	if !ok {
		return nil, herald.Refuse(protocol.CodeUnauthorized, "log in first")
	}
	info, err := json.Marshal(map[string]string{"name": name})
	if err != nil {
		return nil, err
	}
	return &herald.ConnectReply{
		UserID:   name,
		Info:     info,
		Channels: []string{generalChannel, onlineChannel},
	}, nil
}

// maxText is the longest message, in characters.
const maxText = 500

// publish checks a message ({text}), stores it, and has Herald publish the
// stored form ({id, user, text, at}) instead of what the page sent: the
// user is the connection's, never the page's say, and every client sees
// the id that "load older" pages by. A message the app refuses gets the
// error code bad_message, the app's own, which the page shows.
//
// A message is stored before it is published: if publishing then fails
// (the publisher gets unavailable), it is in the store but reached no one
// live; the next page load shows it.
func (a *app) publish(_ context.Context, e *herald.PublishEvent) (*herald.PublishReply, error) {
	if e.Binary {
		return nil, herald.Refuse("bad_message", "messages are text")
	}
	var in struct{ Text string }
	if err := json.Unmarshal(e.Data, &in); err != nil {
		return nil, herald.Refuse("bad_message", `a message is {"text": "..."}`)
	}
	text := strings.TrimSpace(in.Text)
	switch n := utf8.RuneCountInString(text); {
	case n == 0:
		return nil, herald.Refuse("bad_message", "the message is empty")
	case n > maxText:
		return nil, herald.Refuse("bad_message", fmt.Sprintf("the message has %d characters; at most %d", n, maxText))
	}
	data, err := json.Marshal(a.messages.add(e.Client.UserID, text, time.Now()))
	if err != nil {
		return nil, err
	}
	return &herald.PublishReply{Data: data}, nil
}

// rpc answers the page's calls:
//
//	messages.before {before, limit}: up to limit (default 20, at most 50)
//	    messages older than id before (absent or 0: the latest), oldest
//	    first: {messages: [...], more: bool}
//	users.online: the online list, {version, users}
func (a *app) rpc(_ context.Context, e *herald.RPCEvent) (*herald.RPCReply, error) {
	var result any
	switch e.Method {
	case "messages.before":
		var in struct {
			Before int64
			Limit  int
		}
		if len(e.Data) > 0 {
			if err := json.Unmarshal(e.Data, &in); err != nil || in.Before < 0 || in.Limit < 0 {
				return nil, herald.Refuse(protocol.CodeBadRequest, "messages.before takes {before: id, limit: n}")
			}
		}
		if in.Limit == 0 {
			in.Limit = 20
		}
		page, more := a.messages.before(in.Before, min(in.Limit, 50))
		result = map[string]any{"messages": page, "more": more}
	case "users.online":
		result = a.online.list()
	default:
		return nil, herald.Refuse("unknown_method", fmt.Sprintf("no method %q", e.Method))
	}
	data, err := json.Marshal(result)
	if err != nil {
		return nil, err
	}
	return &herald.RPCReply{Data: data}, nil
}

// deliver takes the webhook events (user.online and user.offline: the
// first connection of a user and, Grace after, the last one gone) and
// publishes the online list when it changed. Events may come twice (at
// least once delivery): online.apply skips those it has seen. An error
// makes Herald deliver the batch again: the list is then published on the
// retry, though its events are not applied twice.
func (a *app) deliver(ctx context.Context, events []herald.Event) error {
	if !a.online.apply(events) {
		return nil
	}
	list := a.online.list()
	data, err := json.Marshal(list)
	if err != nil {
		return err
	}
	if _, err := a.node.Publish(ctx, onlineChannel, data); err != nil {
		return fmt.Errorf("failed to publish the online list: %w", err)
	}
	a.online.published(list.Version)
	return nil
}
