// Package httpx holds what the HTTP surfaces built on a herald.Node — the
// HTTP API (package httpapi) and the admin dashboard (package dashboard) —
// share: one JSON error shape, rendered from herald's one error type, and
// reading a bearer credential.
package httpx

import (
	"encoding/json"
	"errors"
	"net/http"
	"strings"
	"time"

	"github.com/heraldhq/herald"
	"github.com/heraldhq/herald/protocol"
)

// ErrorBody is the JSON of every error answer:
// {"error":{"code","message","field"}}. Code is the protocol's error code
// (herald.Error's), or one of the HTTP surfaces' own (not_found,
// method_not_allowed, unauthorized, too_large, bad_request).
type ErrorBody struct {
	Error ErrorDetail `json:"error"`
}

// ErrorDetail is an ErrorBody's error.
type ErrorDetail struct {
	Code    string `json:"code"`
	Message string `json:"message"`
	Field   string `json:"field,omitempty"`
}

// WriteJSON answers v as JSON with status; the answer is never cached.
func WriteJSON(w http.ResponseWriter, status int, v any) {
	w.Header().Set("Content-Type", "application/json")
	w.Header().Set("Cache-Control", "no-store")
	w.Header().Set("X-Content-Type-Options", "nosniff")
	w.WriteHeader(status)
	_ = json.NewEncoder(w).Encode(v)
}

// WriteError answers an error of the surface's own.
func WriteError(w http.ResponseWriter, status int, code, message, field string) {
	WriteJSON(w, status, ErrorBody{ErrorDetail{Code: code, Message: message, Field: field}})
}

// WriteNodeError answers the error of a Node method: a *herald.Error with
// its code, message and status (herald.HTTPStatus); any other error as 503
// unavailable, its text kept for the log, which the caller writes when
// WriteNodeError reports true. field names the request field the error is
// about, if any.
func WriteNodeError(w http.ResponseWriter, err error, field string) (unexpected bool) {
	var he *herald.Error
	if !errors.As(err, &he) {
		WriteError(w, http.StatusServiceUnavailable, string(protocol.CodeUnavailable), "unavailable; retry", "")
		return true
	}
	if he.Code == protocol.CodeUnavailable || he.Code == protocol.CodeInternal {
		field = ""
	}
	WriteError(w, herald.HTTPStatus(he.Code), string(he.Code), he.Message, field)
	return he.Code == protocol.CodeUnavailable && he.Err != nil
}

// BearerToken returns the credential of an "Authorization: Bearer" header
// value, or "".
func BearerToken(h string) string {
	if len(h) > 7 && strings.EqualFold(h[:7], "bearer ") {
		return strings.TrimSpace(h[7:])
	}
	return ""
}

// StatsFields are a node's counters as both surfaces answer them (the
// API's info, the dashboard's stats): a map, for the caller to add its own
// fields to.
func StatsFields(st herald.Stats) map[string]any {
	return map[string]any{
		"uptime_seconds": int64(time.Since(st.Started).Seconds()),
		"connections":    st.Connections,
		"channels":       len(st.Channels),
		"messages_in":    st.MessagesIn,
		"frames_out":     st.FramesOut,
		"published":      st.Published,
		"slow_consumers": st.SlowConsumers,
	}
}
