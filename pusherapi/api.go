package pusherapi

import (
	_ "embed"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net/http"
	"regexp"
	"strings"
	"time"

	"github.com/heraldhq/herald"
)

// Config configures the API. The zero value is Pusher's limits.
type Config struct {
	// ClockSkew is how far auth_timestamp may be from the server's clock,
	// either way. Zero means DefaultClockSkew (600s, Pusher's).
	ClockSkew time.Duration
	// MaxEventBytes caps one event's data; a larger one is answered 413.
	// Zero means 10 KiB, Pusher's limit.
	MaxEventBytes int
	// MaxBodyBytes caps a request body; a larger one is answered 413.
	// Zero means 256 KiB (ten events of MaxEventBytes with room to spare).
	MaxBodyBytes int64
	// Logger receives the calls that failed on the broker. Nil logs
	// nothing.
	Logger *slog.Logger
}

// Pusher's limits on an API call.
const (
	maxChannels     = 100 // channels of one trigger
	maxBatch        = 10  // events of one batch
	maxNameLen      = 200 // an event's name
	defaultMaxEvent = 10 << 10
)

// socketID is the form of a Pusher socket id.
var socketID = regexp.MustCompile(`^\d+\.\d+$`)

// Handler returns the Pusher HTTP API of node n, to be mounted at /apps/.
// Every request must be signed by an app of the node (auth_key its Key,
// auth_signature made with its Secret: VerifyRequest); a bad one is
// answered 401 with the reason as text and counted in
// herald_auth_failures_total. Answers are Pusher's: JSON on success, a
// text message with 400, 401, 404 or 413 on failure. A failing call never
// affects connected clients.
//
// Channel occupancy and counts: a presence- channel's are cluster-wide
// (from Herald's presence); another channel's subscription_count and the
// channel list count this node's subscribers only. docs/pusher.md says so.
func Handler(n *herald.Node, cfg Config) http.Handler {
	if cfg.ClockSkew <= 0 {
		cfg.ClockSkew = DefaultClockSkew
	}
	if cfg.MaxEventBytes <= 0 {
		cfg.MaxEventBytes = defaultMaxEvent
	}
	if cfg.MaxBodyBytes <= 0 {
		cfg.MaxBodyBytes = 256 << 10
	}
	a := &api{n: n, cfg: cfg, log: cfg.Logger}
	if a.log == nil {
		a.log = slog.New(slog.DiscardHandler)
	}
	mux := http.NewServeMux()
	for _, rt := range a.routes() {
		mux.HandleFunc(rt.pattern, a.signed(rt.h))
	}
	mux.HandleFunc("GET /apps/openapi.json", func(w http.ResponseWriter, r *http.Request) {
		w.Header().Set("Content-Type", "application/json")
		_, _ = w.Write(OpenAPI)
	})
	mux.HandleFunc("/", func(w http.ResponseWriter, r *http.Request) {
		fail(w, http.StatusNotFound, "no such route: "+r.Method+" "+r.URL.Path)
	})
	return mux
}

// OpenAPI is the OpenAPI 3.1 document of the API and of the webhooks,
// served at /apps/openapi.json (no signature needed).
//
//go:embed openapi.json
var OpenAPI []byte

type route struct {
	pattern string
	h       signedHandler
}

// routes are the API's routes; openapi.json describes each.
func (a *api) routes() []route {
	return []route{
		{"POST /apps/{app_id}/events", a.trigger},
		{"POST /apps/{app_id}/batch_events", a.batch},
		{"GET /apps/{app_id}/channels", a.channels},
		{"GET /apps/{app_id}/channels/{channel_name}", a.channel},
		{"GET /apps/{app_id}/channels/{channel_name}/users", a.users},
		{"POST /apps/{app_id}/users/{user_id}/terminate_connections", a.terminate},
	}
}

type api struct {
	n   *herald.Node
	cfg Config
	log *slog.Logger
}

// call is one signed request: its app and its body, read whole.
type call struct {
	app  herald.PusherApp
	body []byte
}

type signedHandler func(w http.ResponseWriter, r *http.Request, c call)

// signed reads the body, finds the app and checks the request's signature
// before h runs.
func (a *api) signed(h signedHandler) http.HandlerFunc {
	return func(w http.ResponseWriter, r *http.Request) {
		body, err := io.ReadAll(http.MaxBytesReader(w, r.Body, a.cfg.MaxBodyBytes))
		var tooBig *http.MaxBytesError
		if errors.As(err, &tooBig) {
			fail(w, http.StatusRequestEntityTooLarge, fmt.Sprintf("Request body larger than %d bytes", a.cfg.MaxBodyBytes))
			return
		}
		if err != nil {
			fail(w, http.StatusBadRequest, "Failed to read the request body")
			return
		}
		app, ok := a.n.PusherAppByID(r.PathValue("app_id"))
		if !ok {
			a.n.ReportAuthFailure()
			fail(w, http.StatusNotFound, "Unknown app_id "+r.PathValue("app_id"))
			return
		}
		q := r.URL.Query()
		if q.Get("auth_key") != app.Key {
			a.n.ReportAuthFailure()
			fail(w, http.StatusUnauthorized, "Unknown auth_key")
			return
		}
		if err := VerifyRequest(r.Method, r.URL.Path, q, body, app.Secret, time.Now(), a.cfg.ClockSkew); err != nil {
			a.n.ReportAuthFailure()
			fail(w, http.StatusUnauthorized, authMessage(err))
			return
		}
		h(w, r, call{app: app, body: body})
	}
}

// authMessage is the answer to a refused signature, in Pusher's words.
func authMessage(err error) string {
	switch {
	case errors.Is(err, ErrBadSignature):
		return "Invalid signature: you should have sent HmacSHA256Hex(\"METHOD\\nPATH\\nSORTED_QUERY\", your_secret)"
	case errors.Is(err, ErrTimestamp):
		return "Timestamp expired: " + strings.TrimPrefix(err.Error(), ErrTimestamp.Error()+": ")
	default:
		return strings.TrimPrefix(err.Error(), "pusherapi: ")
	}
}

// fail answers a refusal as Pusher does: the status and a line of text.
func fail(w http.ResponseWriter, status int, msg string) {
	w.Header().Set("Content-Type", "text/plain; charset=utf-8")
	w.Header().Set("X-Content-Type-Options", "nosniff")
	w.WriteHeader(status)
	_, _ = io.WriteString(w, msg+"\n")
}

// nodeError answers the error of a Node method: a *herald.Error with the
// status herald.HTTPStatus gives its code, anything else 503 (and logged).
func (a *api) nodeError(w http.ResponseWriter, err error) {
	var he *herald.Error
	if errors.As(err, &he) {
		fail(w, herald.HTTPStatus(he.Code), he.Message)
		return
	}
	a.log.Warn("Pusher API call failed", "err", err)
	fail(w, http.StatusServiceUnavailable, "Unavailable; retry")
}
