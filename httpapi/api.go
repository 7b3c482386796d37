// Package httpapi is Herald's HTTP server API: the routes a backend uses to
// publish, reach users and read a node's state (/api/v1/…, described by
// /api/openapi.json), as an http.Handler built on a *herald.Node's
// exported methods. herald serve mounts it at /api/ when an API key is set;
// any net/http server can do the same:
//
//	mux.Handle("/api/", httpapi.Handler(node, httpapi.Config{Key: key}))
package httpapi

import (
	"context"
	"crypto/subtle"
	_ "embed"
	"encoding/base64"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net/http"
	"strconv"
	"strings"

	"github.com/heraldhq/herald"
	"github.com/heraldhq/herald/internal/httpx"
	"github.com/heraldhq/herald/protocol"
)

// Config configures the API.
type Config struct {
	// Key is the API key every request must carry, as "Authorization:
	// Bearer KEY" or "X-API-Key: KEY". It is compared in constant time and
	// never logged. Empty refuses every request: the API publishes as the
	// server, so it is never open.
	Key string
	// MaxBodyBytes caps a request body; a larger one gets 413. Zero means
	// 1 MiB.
	MaxBodyBytes int64
	// Logger receives the calls that failed on the broker. Nil logs
	// nothing.
	Logger *slog.Logger
}

//go:embed openapi.json
var openAPIDoc []byte

// Handler returns the API of node n, to be mounted at /api/ (its routes are
// /api/v1/…; /api/openapi.json describes them and needs no key). Every
// other request needs the API key; a missing or wrong one is counted in
// herald_auth_failures_total. Requests and responses are JSON; errors are
// {"error":{"code","message","field"}} with the status herald.HTTPStatus
// gives their code. A failing call never affects connected clients.
func Handler(n *herald.Node, cfg Config) http.Handler {
	if cfg.MaxBodyBytes <= 0 {
		cfg.MaxBodyBytes = 1 << 20
	}
	a := &api{n: n, cfg: cfg, log: cfg.Logger}
	if a.log == nil {
		a.log = slog.New(slog.DiscardHandler)
	}
	mux := http.NewServeMux()
	methods := make(map[string]string) // path -> its method, for 405
	for _, r := range a.routes() {
		mux.HandleFunc(r.method+" "+r.path, r.h)
		methods[r.path] = r.method
	}
	mux.HandleFunc("GET /api/openapi.json", func(w http.ResponseWriter, r *http.Request) {
		w.Header().Set("Content-Type", "application/json")
		_, _ = w.Write(openAPIDoc)
	})
	mux.HandleFunc("/api/", func(w http.ResponseWriter, r *http.Request) {
		// ServeMux would answer 405 itself, but this catch-all matches
		// every method first.
		if m, ok := methods[r.URL.Path]; ok {
			w.Header().Set("Allow", m)
			a.fail(w, http.StatusMethodNotAllowed, "method_not_allowed", r.URL.Path+" takes "+m+", not "+r.Method, "")
			return
		}
		a.fail(w, http.StatusNotFound, "not_found", "no such API route: "+r.Method+" "+r.URL.Path, "")
	})
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if r.URL.Path != "/api/openapi.json" && !a.authorized(r) {
			n.ReportAuthFailure()
			w.Header().Set("WWW-Authenticate", `Bearer realm="herald"`)
			a.fail(w, http.StatusUnauthorized, "unauthorized", "missing or wrong API key", "")
			return
		}
		mux.ServeHTTP(w, r)
	})
}

type api struct {
	n   *herald.Node
	cfg Config
	log *slog.Logger
}

type apiRoute struct {
	method, path string
	h            http.HandlerFunc
}

func (a *api) routes() []apiRoute {
	return []apiRoute{
		{"POST", "/api/v1/publish", a.publish},
		{"POST", "/api/v1/broadcast", a.broadcast},
		{"POST", "/api/v1/send_user", a.sendUser},
		{"POST", "/api/v1/disconnect_user", a.disconnectUser},
		{"POST", "/api/v1/unsubscribe_user", a.unsubscribeUser},
		{"POST", "/api/v1/subscribe_user", a.serverSide("user", a.n.SubscribeUser)},
		{"POST", "/api/v1/subscribe_client", a.serverSide("client", a.n.SubscribeClient)},
		{"POST", "/api/v1/unsubscribe_client", a.serverSide("client", a.n.UnsubscribeClient)},
		{"GET", "/api/v1/channels", a.channels},
		{"GET", "/api/v1/presence", a.presence},
		{"GET", "/api/v1/presence_stats", a.presenceStats},
		{"GET", "/api/v1/history", a.history},
		{"GET", "/api/v1/info", a.info},
	}
}

func (a *api) authorized(r *http.Request) bool {
	key := httpx.BearerToken(r.Header.Get("Authorization"))
	if key == "" {
		key = r.Header.Get("X-API-Key")
	}
	return a.cfg.Key != "" && subtle.ConstantTimeCompare([]byte(key), []byte(a.cfg.Key)) == 1
}

func (a *api) fail(w http.ResponseWriter, status int, code, msg, field string) {
	httpx.WriteError(w, status, code, msg, field)
}

// decode reads a JSON body into v, answering 400 (naming the field) or 413.
func (a *api) decode(w http.ResponseWriter, r *http.Request, v any) bool {
	dec := json.NewDecoder(http.MaxBytesReader(w, r.Body, a.cfg.MaxBodyBytes))
	dec.DisallowUnknownFields()
	err := dec.Decode(v)
	if err == nil && dec.More() {
		err = errors.New("more than one JSON value in the body")
	}
	var tooBig *http.MaxBytesError
	var typeErr *json.UnmarshalTypeError
	switch {
	case err == nil:
		return true
	case errors.As(err, &tooBig):
		a.fail(w, http.StatusRequestEntityTooLarge, "too_large", fmt.Sprintf("body larger than %d bytes", a.cfg.MaxBodyBytes), "")
	case errors.As(err, &typeErr):
		a.fail(w, http.StatusBadRequest, "bad_request", fmt.Sprintf("%s must be %s", typeErr.Field, typeErr.Type), typeErr.Field)
	case strings.HasPrefix(err.Error(), "json: unknown field "):
		field := strings.Trim(strings.TrimPrefix(err.Error(), "json: unknown field "), `"`)
		a.fail(w, http.StatusBadRequest, "bad_request", "unknown field "+strconv.Quote(field), field)
	default:
		a.fail(w, http.StatusBadRequest, "bad_request", "malformed JSON: "+jsonErrText(err), "")
	}
	return false
}

func jsonErrText(err error) string {
	if errors.Is(err, io.EOF) {
		return "empty body"
	}
	return err.Error()
}

// payload is the data of a publish or send: JSON in data, or bytes in
// data_base64 (standard base64), which travel as binary.
type payload struct {
	Data       json.RawMessage `json:"data,omitempty"`
	DataBase64 *string         `json:"data_base64,omitempty"`
}

func (a *api) payload(w http.ResponseWriter, p payload) ([]byte, []herald.PublishOption, bool) {
	switch {
	case p.DataBase64 != nil && p.Data != nil:
		a.fail(w, http.StatusBadRequest, "bad_request", "give data or data_base64, not both", "data_base64")
	case p.DataBase64 != nil:
		b, err := base64.StdEncoding.DecodeString(*p.DataBase64)
		if err != nil {
			a.fail(w, http.StatusBadRequest, "bad_request", "data_base64 is not standard base64", "data_base64")
			return nil, nil, false
		}
		return b, []herald.PublishOption{herald.WithBinary()}, true
	case p.Data == nil:
		a.fail(w, http.StatusBadRequest, "bad_request", "data (any JSON value) or data_base64 is required", "data")
	default:
		return p.Data, nil, true
	}
	return nil, nil, false
}

// nodeError answers an error from a Node method (httpx.WriteNodeError),
// and logs a broker's failure.
func (a *api) nodeError(w http.ResponseWriter, err error, field string) {
	if httpx.WriteNodeError(w, err, field) {
		a.log.Warn("API call failed", "err", err)
	}
}

type publishResponse struct {
	Offset    uint64 `json:"offset,omitempty"`
	Epoch     string `json:"epoch,omitempty"`
	Duplicate bool   `json:"duplicate,omitempty"`
}

func (a *api) publish(w http.ResponseWriter, r *http.Request) {
	var req struct {
		Channel        string `json:"channel"`
		IdempotencyKey string `json:"idempotency_key,omitempty"`
		Key            string `json:"key,omitempty"`
		payload
	}
	if !a.decode(w, r, &req) {
		return
	}
	data, opts, ok := a.payload(w, req.payload)
	if !ok {
		return
	}
	if req.IdempotencyKey != "" {
		opts = append(opts, herald.WithIdempotencyKey(req.IdempotencyKey))
	}
	if req.Key != "" {
		opts = append(opts, herald.WithKey(req.Key))
	}
	res, err := a.n.Publish(r.Context(), req.Channel, data, opts...)
	if err != nil {
		a.nodeError(w, err, "channel")
		return
	}
	httpx.WriteJSON(w, http.StatusOK, publishResponse{Offset: res.Offset, Epoch: res.Epoch, Duplicate: res.Duplicate})
}

func (a *api) broadcast(w http.ResponseWriter, r *http.Request) {
	var req struct {
		Channels []string `json:"channels"`
		payload
	}
	if !a.decode(w, r, &req) {
		return
	}
	if len(req.Channels) == 0 {
		a.fail(w, http.StatusBadRequest, "bad_request", "channels must list at least one channel", "channels")
		return
	}
	data, opts, ok := a.payload(w, req.payload)
	if !ok {
		return
	}
	for _, ch := range req.Channels { // all or nothing for names
		if err := a.n.CheckChannel(ch); err != nil {
			a.nodeError(w, err, "channels")
			return
		}
	}
	results := make([]publishResponse, len(req.Channels))
	for i, ch := range req.Channels {
		res, err := a.n.Publish(r.Context(), ch, data, opts...)
		if err != nil {
			a.nodeError(w, err, "channels")
			return
		}
		results[i] = publishResponse{Offset: res.Offset, Epoch: res.Epoch}
	}
	httpx.WriteJSON(w, http.StatusOK, map[string]any{"results": results})
}

func (a *api) sendUser(w http.ResponseWriter, r *http.Request) {
	var req struct {
		User string `json:"user"`
		payload
	}
	if !a.decode(w, r, &req) {
		return
	}
	if req.User == "" {
		a.fail(w, http.StatusBadRequest, "bad_request", "user is required", "user")
		return
	}
	data, opts, ok := a.payload(w, req.payload)
	if !ok {
		return
	}
	if err := a.n.SendToUser(r.Context(), req.User, data, opts...); err != nil {
		a.nodeError(w, err, "")
		return
	}
	httpx.WriteJSON(w, http.StatusOK, struct{}{})
}

func (a *api) disconnectUser(w http.ResponseWriter, r *http.Request) {
	var req struct {
		User   string `json:"user"`
		Code   int    `json:"code,omitempty"`
		Reason string `json:"reason,omitempty"`
	}
	if !a.decode(w, r, &req) {
		return
	}
	if req.User == "" {
		a.fail(w, http.StatusBadRequest, "bad_request", "user is required", "user")
		return
	}
	if req.Code == 0 {
		req.Code = int(herald.CloseDisconnected)
	}
	if req.Code < 4000 || req.Code > 4999 {
		a.fail(w, http.StatusBadRequest, "bad_request", "code must be 4000-4999 (4000-4499: may reconnect; 4500-4999: should not)", "code")
		return
	}
	if len(req.Reason) > 123 {
		a.fail(w, http.StatusBadRequest, "bad_request", "reason is longer than 123 bytes", "reason")
		return
	}
	if err := a.n.DisconnectUser(r.Context(), req.User, herald.CloseCode(req.Code), req.Reason); err != nil {
		a.nodeError(w, err, "")
		return
	}
	httpx.WriteJSON(w, http.StatusOK, struct{}{})
}

func (a *api) unsubscribeUser(w http.ResponseWriter, r *http.Request) {
	var req struct {
		User    string `json:"user"`
		Channel string `json:"channel"`
	}
	if !a.decode(w, r, &req) {
		return
	}
	if req.User == "" {
		a.fail(w, http.StatusBadRequest, "bad_request", "user is required", "user")
		return
	}
	if err := a.n.UnsubscribeUser(r.Context(), req.User, req.Channel); err != nil {
		a.nodeError(w, err, "channel")
		return
	}
	httpx.WriteJSON(w, http.StatusOK, struct{}{})
}

// serverSide serves a server-side subscription call: {who, channel}
// where who is "user" or "client".
func (a *api) serverSide(who string, call func(ctx context.Context, id, channel string) error) http.HandlerFunc {
	return func(w http.ResponseWriter, r *http.Request) {
		var req struct {
			User    string `json:"user"`
			Client  string `json:"client"`
			Channel string `json:"channel"`
		}
		if !a.decode(w, r, &req) {
			return
		}
		id := req.User
		if who == "client" {
			id = req.Client
		}
		if id == "" {
			a.fail(w, http.StatusBadRequest, "bad_request", who+" is required", who)
			return
		}
		if err := call(r.Context(), id, req.Channel); err != nil {
			a.nodeError(w, err, "channel")
			return
		}
		httpx.WriteJSON(w, http.StatusOK, struct{}{})
	}
}

func (a *api) channels(w http.ResponseWriter, r *http.Request) {
	httpx.WriteJSON(w, http.StatusOK, map[string]any{"channels": a.n.Stats().Channels})
}

func (a *api) channelParam(w http.ResponseWriter, r *http.Request) (string, bool) {
	ch := r.URL.Query().Get("channel")
	if ch == "" {
		a.fail(w, http.StatusBadRequest, "bad_request", "query parameter channel is required", "channel")
		return "", false
	}
	return ch, true
}

func (a *api) presence(w http.ResponseWriter, r *http.Request) {
	ch, ok := a.channelParam(w, r)
	if !ok {
		return
	}
	m, err := a.n.Presence(r.Context(), ch)
	if err != nil {
		a.nodeError(w, err, "channel")
		return
	}
	out := make(map[string]protocol.ClientInfo, len(m))
	for id, p := range m {
		out[id] = protocol.ClientInfo{Client: p.Client, User: p.User, Info: p.Info}
	}
	httpx.WriteJSON(w, http.StatusOK, protocol.PresenceResult{Clients: out})
}

func (a *api) presenceStats(w http.ResponseWriter, r *http.Request) {
	ch, ok := a.channelParam(w, r)
	if !ok {
		return
	}
	st, err := a.n.PresenceStats(r.Context(), ch)
	if err != nil {
		a.nodeError(w, err, "channel")
		return
	}
	httpx.WriteJSON(w, http.StatusOK, protocol.PresenceStatsResult{Clients: st.Clients, Users: st.Users})
}

func (a *api) history(w http.ResponseWriter, r *http.Request) {
	ch, ok := a.channelParam(w, r)
	if !ok {
		return
	}
	q := r.URL.Query()
	opts := herald.HistoryOptions{Limit: -1, Reverse: q.Get("reverse") == "true"}
	if s := q.Get("limit"); s != "" {
		l, err := strconv.Atoi(s)
		if err != nil || l < 0 {
			a.fail(w, http.StatusBadRequest, "bad_request", "limit must be a whole number, 0 or more", "limit")
			return
		}
		opts.Limit = l
	}
	if s := q.Get("since_offset"); s != "" {
		off, err := strconv.ParseUint(s, 10, 64)
		if err != nil {
			a.fail(w, http.StatusBadRequest, "bad_request", "since_offset must be a whole number", "since_offset")
			return
		}
		opts.Since = &herald.StreamPosition{Offset: off, Epoch: q.Get("since_epoch")}
	}
	h, err := a.n.History(r.Context(), ch, opts)
	if err != nil {
		a.nodeError(w, err, "channel")
		return
	}
	// Not writeJSON: encoding/json would compact the payloads and escape
	// <, > and &; they go out byte for byte, as in pushes.
	w.Header().Set("Content-Type", "application/json")
	w.Header().Set("Cache-Control", "no-store")
	_, _ = w.Write(append(protocol.AppendHistoryResult(nil, h.Wire()), '\n'))
}

func (a *api) info(w http.ResponseWriter, r *http.Request) {
	st := a.n.Stats()
	body := httpx.StatsFields(st)
	body["node"], body["draining"] = st.Node, st.Draining
	httpx.WriteJSON(w, http.StatusOK, body)
}
