package pusherapi

import (
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"net/http"
	"strings"

	"github.com/heraldhq/herald"
)

// eventRequest is an event to trigger: the body of POST events, and each
// item of a batch (which names one channel).
type eventRequest struct {
	Name string `json:"name"`
	// Data is a string, as Pusher defines it (the SDKs send JSON encoded
	// in a string). Any other JSON value is taken as its text, as Pusher
	// does.
	Data     json.RawMessage `json:"data"`
	Channel  string          `json:"channel"`
	Channels []string        `json:"channels"`
	// SocketID is a connection not to send the event to: the one whose
	// action made the backend trigger it.
	SocketID string `json:"socket_id"`
	// Info asks for attributes of each channel in the answer:
	// subscription_count, user_count (presence- channels).
	Info string `json:"info"`
}

// event is a checked eventRequest.
type event struct {
	name, data, socketID string
	channels             []string
	info                 []string
}

func (a *api) trigger(w http.ResponseWriter, r *http.Request, c call) {
	var req eventRequest
	if !decode(w, c.body, &req) {
		return
	}
	if req.Channel != "" {
		req.Channels = append(req.Channels, req.Channel)
	}
	ev, status, msg := a.check(c.app, req, maxChannels)
	if status != 0 {
		fail(w, status, msg)
		return
	}
	if err := a.publish(r.Context(), c.app, ev); err != nil {
		a.nodeError(w, err)
		return
	}
	if len(ev.info) == 0 {
		writeJSON(w, struct{}{})
		return
	}
	out := make(map[string]channelInfo, len(ev.channels))
	for _, ch := range ev.channels {
		info, err := a.info(r.Context(), c.app, ch, ev.info)
		if err != nil {
			a.nodeError(w, err)
			return
		}
		out[ch] = info
	}
	writeJSON(w, map[string]any{"channels": out})
}

func (a *api) batch(w http.ResponseWriter, r *http.Request, c call) {
	var req struct {
		Batch []eventRequest `json:"batch"`
	}
	if !decode(w, c.body, &req) {
		return
	}
	if len(req.Batch) == 0 {
		fail(w, http.StatusBadRequest, "batch must hold at least one event")
		return
	}
	if len(req.Batch) > maxBatch {
		fail(w, http.StatusBadRequest, fmt.Sprintf("Batch too large (%d > %d)", len(req.Batch), maxBatch))
		return
	}
	evs := make([]event, len(req.Batch))
	for i, it := range req.Batch { // all checked before any is sent
		if len(it.Channels) > 0 {
			fail(w, http.StatusBadRequest, fmt.Sprintf("batch[%d]: give channel, not channels", i))
			return
		}
		it.Channels = []string{it.Channel}
		ev, status, msg := a.check(c.app, it, 1)
		if status != 0 {
			fail(w, status, fmt.Sprintf("batch[%d]: %s", i, msg))
			return
		}
		evs[i] = ev
	}
	infos := make([]channelInfo, len(evs))
	asked := false
	for i, ev := range evs {
		if err := a.publish(r.Context(), c.app, ev); err != nil {
			a.nodeError(w, err)
			return
		}
		if len(ev.info) > 0 {
			asked = true
			info, err := a.info(r.Context(), c.app, ev.channels[0], ev.info)
			if err != nil {
				a.nodeError(w, err)
				return
			}
			infos[i] = info
		}
	}
	if !asked {
		writeJSON(w, struct{}{})
		return
	}
	writeJSON(w, map[string]any{"batch": infos})
}

// check checks an event as Pusher does, and returns it or the status and
// message of its refusal.
func (a *api) check(app herald.PusherApp, req eventRequest, maxCh int) (ev event, status int, msg string) {
	switch {
	case req.Name == "":
		return ev, http.StatusBadRequest, "name is required"
	case len(req.Name) > maxNameLen:
		return ev, http.StatusBadRequest, fmt.Sprintf("Event name too long (over %d characters)", maxNameLen)
	case strings.HasPrefix(req.Name, "pusher:") || strings.HasPrefix(req.Name, "pusher_internal:"):
		// pusher-js acts on these itself (a fake connection_established,
		// member_added): only the server's protocol may send them.
		return ev, http.StatusBadRequest, "Event names starting with pusher: or pusher_internal: are reserved"
	case len(req.Channels) == 0:
		return ev, http.StatusBadRequest, "channel or channels is required"
	case len(req.Channels) > maxCh:
		return ev, http.StatusBadRequest, fmt.Sprintf("Too many channels (%d > %d)", len(req.Channels), maxCh)
	case req.SocketID != "" && !socketID.MatchString(req.SocketID):
		return ev, http.StatusBadRequest, "Invalid socket_id " + req.SocketID
	case req.Data == nil:
		return ev, http.StatusBadRequest, "data is required"
	}
	for _, ch := range req.Channels {
		if app.HeraldChannel(ch) == "" {
			return ev, http.StatusBadRequest, fmt.Sprintf("Invalid channel name %q (1-164 of a-z A-Z 0-9 _ - = @ , . ;, or #server-to-user-<user id>)", ch)
		}
	}
	data := string(req.Data)
	if req.Data[0] == '"' {
		if err := json.Unmarshal(req.Data, &data); err != nil {
			return ev, http.StatusBadRequest, "data is not a valid JSON string"
		}
	}
	if len(data) > a.cfg.MaxEventBytes {
		return ev, http.StatusRequestEntityTooLarge, fmt.Sprintf("Payload too large: data is %d bytes, the limit %d", len(data), a.cfg.MaxEventBytes)
	}
	info, err := parseInfo(req.Info, req.Channels)
	if err != "" {
		return ev, http.StatusBadRequest, err
	}
	return event{name: req.Name, data: data, socketID: req.SocketID, channels: req.Channels, info: info}, 0, ""
}

// serverToUser starts the channel the SDKs' sendToUser triggers to.
const serverToUser = "#server-to-user-"

// publish sends ev to its channels through the node's publish path (every
// node, history); a "#server-to-user-<id>" channel reaches the connections
// signed in as that user.
func (a *api) publish(ctx context.Context, app herald.PusherApp, ev event) error {
	return a.n.PusherTrigger(ctx, app, ev.channels, ev.name, ev.data, ev.socketID)
}

// decode reads a JSON object body into v, answering 400 when it is not one.
func decode(w http.ResponseWriter, body []byte, v any) bool {
	body = bytes.TrimSpace(body)
	if len(body) == 0 || body[0] != '{' {
		fail(w, http.StatusBadRequest, "The body must be a JSON object")
		return false
	}
	if err := json.Unmarshal(body, v); err != nil {
		fail(w, http.StatusBadRequest, "Malformed JSON: "+err.Error())
		return false
	}
	return true
}

// writeJSON answers v as JSON with 200; the answer is never cached.
func writeJSON(w http.ResponseWriter, v any) {
	w.Header().Set("Content-Type", "application/json")
	w.Header().Set("Cache-Control", "no-store")
	w.WriteHeader(http.StatusOK)
	_ = json.NewEncoder(w).Encode(v)
}
