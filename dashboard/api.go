package dashboard

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net/http"
	"slices"
	"strings"
	"time"

	"github.com/heraldhq/herald"
	"github.com/heraldhq/herald/internal/httpx"
	"github.com/heraldhq/herald/protocol"
)

// The JSON routes under /admin/api/, all behind a session.

const (
	maxPublishBody = 1 << 20
	opTimeout      = 5 * time.Second // of a node call made for a route

	// maxChannelsShown bounds the channels table: a node may hold a million.
	maxChannelsShown = 200
)

// api serves the dashboard's JSON routes.
func (d *Dashboard) api(w http.ResponseWriter, r *http.Request, route string) {
	s := d.session(r)
	if s == nil {
		httpx.WriteError(w, http.StatusUnauthorized, string(protocol.CodeUnauthorized), "not logged in", "")
		return
	}
	if r.Method == http.MethodPost && !checkCSRF(r, s) {
		d.log.Warn("admin request refused: cross-origin or without its CSRF token", "remote", d.node.ClientAddr(r), "route", route)
		httpx.WriteError(w, http.StatusForbidden, string(protocol.CodePermission), "cross-origin request, or missing CSRF token", "")
		return
	}
	switch r.Method + " " + route {
	case "GET session":
		httpx.WriteJSON(w, http.StatusOK, map[string]any{"csrf": s.csrf, "expires": s.expires})
	case "POST logout":
		d.endSession(w, r)
		httpx.WriteJSON(w, http.StatusOK, struct{}{})
	case "GET stats":
		d.stats(w, r)
	case "GET channels":
		d.channels(w)
	case "GET presence":
		d.presence(w, r)
	case "POST publish":
		d.publish(w, r)
	case "GET errors":
		var entries []LogEntry
		var total uint64
		if d.cfg.Logs != nil {
			entries, total = d.cfg.Logs.Recent()
		}
		httpx.WriteJSON(w, http.StatusOK, map[string]any{"entries": nonNil(entries), "total": total})
	default:
		httpx.WriteError(w, http.StatusNotFound, "not_found", "no such route: "+r.Method+" "+Path+"/api/"+route, "")
	}
}

// nonNil returns s, or an empty slice for nil: JSON [] rather than null.
func nonNil[T any](s []T) []T {
	if s == nil {
		return []T{}
	}
	return s
}

func (d *Dashboard) stats(w http.ResponseWriter, r *http.Request) {
	st := d.node.Stats()
	ready := "ok"
	if err := d.cfg.Ready(r.Context()); err != nil {
		ready = err.Error()
	}
	d.mu.Lock()
	samples := slices.Clone(d.samples)
	d.mu.Unlock()
	body := httpx.StatsFields(st)
	body["version"], body["broker"], body["ready"] = d.cfg.Version, d.cfg.Broker, ready
	body["samples"] = nonNil(samples) // [] rather than null before the first sample
	body["webhooks"] = d.node.WebhookStats()
	body["overflow"] = overflowRows(st.Overflow, d.node.DeltaStats())
	httpx.WriteJSON(w, http.StatusOK, body)
}

// overflowRow is one namespace's line in the panel of what the node did
// to keep subscribers current: overflow policies and deltas.
type overflowRow struct {
	Namespace string `json:"namespace"`
	herald.OverflowCounts
	Deltas     uint64 `json:"deltas"`
	BytesSaved uint64 `json:"delta_bytes_saved"`
}

// overflowRows lists by name the namespaces with overflow or delta counts.
func overflowRows(over map[string]herald.OverflowCounts, deltas map[string]herald.DeltaStats) []overflowRow {
	rows := make([]overflowRow, 0, len(over)+len(deltas))
	for name, c := range over {
		d := deltas[name]
		rows = append(rows, overflowRow{Namespace: name, OverflowCounts: c, Deltas: d.Deliveries, BytesSaved: d.BytesSaved})
	}
	for name, d := range deltas {
		if _, ok := over[name]; !ok {
			rows = append(rows, overflowRow{Namespace: name, Deltas: d.Deliveries, BytesSaved: d.BytesSaved})
		}
	}
	slices.SortFunc(rows, func(x, y overflowRow) int { return strings.Compare(x.Namespace, y.Namespace) })
	return rows
}

type channelCount struct {
	Name        string `json:"name"`
	Subscribers int    `json:"subscribers"`
}

func (d *Dashboard) channels(w http.ResponseWriter) {
	st := d.node.Stats()
	list := make([]channelCount, 0, len(st.Channels))
	for name, n := range st.Channels {
		list = append(list, channelCount{name, n})
	}
	slices.SortFunc(list, func(x, y channelCount) int {
		if x.Subscribers != y.Subscribers {
			return y.Subscribers - x.Subscribers
		}
		return strings.Compare(x.Name, y.Name)
	})
	httpx.WriteJSON(w, http.StatusOK, map[string]any{"total": len(list), "channels": list[:min(len(list), maxChannelsShown)]})
}

// nodeError answers the error of a node call about channel (httpx), and
// logs a broker's failure.
func (d *Dashboard) nodeError(w http.ResponseWriter, err error) {
	if httpx.WriteNodeError(w, err, "channel") {
		d.log.Warn("admin call failed", "err", err)
	}
}

func (d *Dashboard) presence(w http.ResponseWriter, r *http.Request) {
	ch := r.URL.Query().Get("channel")
	ctx, cancel := context.WithTimeout(r.Context(), opTimeout)
	defer cancel()
	clients, err := d.node.Presence(ctx, ch)
	if err != nil {
		d.nodeError(w, err)
		return
	}
	st, err := d.node.PresenceStats(ctx, ch)
	if err != nil {
		d.nodeError(w, err)
		return
	}
	list := make([]herald.ClientPresence, 0, len(clients))
	for _, c := range clients {
		list = append(list, c)
	}
	slices.SortFunc(list, func(x, y herald.ClientPresence) int {
		if c := strings.Compare(x.User, y.User); c != 0 {
			return c
		}
		return strings.Compare(x.Client, y.Client)
	})
	httpx.WriteJSON(w, http.StatusOK, map[string]any{"channel": ch, "clients": list, "users": st.Users, "count": st.Clients})
}

func (d *Dashboard) publish(w http.ResponseWriter, r *http.Request) {
	var req struct {
		Channel        string          `json:"channel"`
		Data           json.RawMessage `json:"data"`
		IdempotencyKey string          `json:"idempotency_key"`
	}
	dec := json.NewDecoder(http.MaxBytesReader(w, r.Body, maxPublishBody))
	dec.DisallowUnknownFields()
	if err := dec.Decode(&req); err != nil {
		status, code, msg, field := publishBodyError(err)
		httpx.WriteError(w, status, code, msg, field)
		return
	}
	if len(req.Data) == 0 {
		httpx.WriteError(w, http.StatusBadRequest, string(protocol.CodeBadRequest), "data (a JSON value) is required", "data")
		return
	}
	var opts []herald.PublishOption
	if req.IdempotencyKey != "" {
		opts = append(opts, herald.WithIdempotencyKey(req.IdempotencyKey))
	}
	ctx, cancel := context.WithTimeout(r.Context(), opTimeout)
	defer cancel()
	res, err := d.node.Publish(ctx, req.Channel, req.Data, opts...)
	if err != nil {
		d.nodeError(w, err)
		return
	}
	// Who published what where, without the payload (never logged).
	d.log.Info("admin publish", "channel", req.Channel, "bytes", len(req.Data), "remote", d.node.ClientAddr(r))
	httpx.WriteJSON(w, http.StatusOK, map[string]any{"offset": res.Offset, "epoch": res.Epoch, "duplicate": res.Duplicate})
}

// publishBodyError says what is wrong with a publish request's body in
// the request's terms, with the field it is about: encoding/json's errors
// name Go types ("cannot unmarshal number into Go struct field .channel of
// type string").
func publishBodyError(err error) (status int, code, msg, field string) {
	const fields = "channel, data and idempotency_key"
	status, code = http.StatusBadRequest, string(protocol.CodeBadRequest)
	var typeErr *json.UnmarshalTypeError
	var syntaxErr *json.SyntaxError
	var tooLarge *http.MaxBytesError
	switch {
	case errors.As(err, &typeErr) && typeErr.Field != "":
		// data is any JSON value: only the strings can be mistyped.
		return status, code, typeErr.Field + " must be a string", typeErr.Field
	case errors.As(err, &typeErr):
		return status, code, "want a JSON object with " + fields, ""
	case errors.Is(err, io.ErrUnexpectedEOF), errors.Is(err, io.EOF):
		return status, code, "the body is not valid JSON: unexpected end of JSON input", ""
	case errors.As(err, &syntaxErr):
		return status, code, "the body is not valid JSON: " + strings.TrimPrefix(err.Error(), "json: "), ""
	case errors.As(err, &tooLarge):
		return http.StatusRequestEntityTooLarge, "too_large", fmt.Sprintf("the body is larger than %d bytes", tooLarge.Limit), ""
	}
	if name, ok := strings.CutPrefix(err.Error(), "json: unknown field "); ok {
		return status, code, "unknown field " + name + ": the body takes " + fields, strings.Trim(name, `"`)
	}
	return status, code, err.Error(), ""
}
