package dashboard

import (
	"context"
	"fmt"
	"log/slog"
	"slices"
	"strings"
	"sync"
	"time"
)

// LogRecorder is a slog.Handler that passes every record on to the next
// handler and keeps the last WARN and ERROR records, whatever the next
// handler's level (with a log level of error, warnings still reach the
// dashboard), for the dashboard's recent errors: an operator who opens it
// after a page sees what went wrong without a log pipeline. It keeps a
// fixed ring, so a flood of warnings costs a bounded amount of memory and
// the newest ones win.
//
// Install it in the server's logger and give it to the dashboard:
//
//	rec := dashboard.NewLogRecorder(slog.NewTextHandler(os.Stderr, nil), 0)
//	logger := slog.New(rec)
//	dash := dashboard.New(node, dashboard.Config{Logs: rec, Logger: logger, …})
//
// The handlers that WithAttrs and WithGroup return keep into the same
// ring. Attributes are kept as key=value text, with LogValuers resolved (a
// value that redacts itself in logs stays redacted here). The dashboard
// shows the records to whoever has its password: log no secrets.
type LogRecorder struct {
	next  slog.Handler
	ring  *logRing
	attrs []string // from WithAttrs, already formatted
	group string   // dotted prefix from WithGroup
}

// LogEntry is one kept record as the dashboard shows it. Attrs are
// key=value strings, groups as dotted prefixes (g.key=value); a value with
// a space, '=' or '"' is quoted.
type LogEntry struct {
	Time    time.Time `json:"time"`
	Level   string    `json:"level"`
	Message string    `json:"msg"`
	Attrs   []string  `json:"attrs,omitempty"`
}

// DefaultLogRecords is how many records a LogRecorder keeps by default.
const DefaultLogRecords = 100

// NewLogRecorder returns a handler that passes records to next (nil: to
// none) and keeps the last keep WARN and ERROR records; keep <= 0 means
// DefaultLogRecords.
func NewLogRecorder(next slog.Handler, keep int) *LogRecorder {
	if next == nil {
		next = slog.DiscardHandler
	}
	if keep <= 0 {
		keep = DefaultLogRecords
	}
	return &LogRecorder{next: next, ring: &logRing{buf: make([]LogEntry, 0, keep)}}
}

// Recent returns the kept records, newest first, and how many were ever
// kept, so that a reader can tell it missed some.
func (h *LogRecorder) Recent() (entries []LogEntry, total uint64) { return h.ring.entries() }

// Enabled reports whether the next handler takes records at l, or l is
// WARN or above.
func (h *LogRecorder) Enabled(ctx context.Context, l slog.Level) bool {
	return l >= slog.LevelWarn || h.next.Enabled(ctx, l)
}

// Handle keeps r if it is WARN or above, and passes it on if the next
// handler takes its level.
func (h *LogRecorder) Handle(ctx context.Context, r slog.Record) error {
	if r.Level >= slog.LevelWarn {
		e := LogEntry{Time: r.Time, Level: r.Level.String(), Message: r.Message, Attrs: slices.Clone(h.attrs)}
		r.Attrs(func(a slog.Attr) bool {
			e.Attrs = appendAttr(e.Attrs, h.group, a)
			return true
		})
		h.ring.add(e)
	}
	if !h.next.Enabled(ctx, r.Level) {
		return nil
	}
	return h.next.Handle(ctx, r)
}

// WithAttrs returns a LogRecorder with attrs, keeping into the same ring.
func (h *LogRecorder) WithAttrs(attrs []slog.Attr) slog.Handler {
	c := *h
	c.next = h.next.WithAttrs(attrs)
	c.attrs = slices.Clone(h.attrs)
	for _, a := range attrs {
		c.attrs = appendAttr(c.attrs, h.group, a)
	}
	return &c
}

// WithGroup returns a LogRecorder in group name, keeping into the same ring.
func (h *LogRecorder) WithGroup(name string) slog.Handler {
	if name == "" {
		return h
	}
	c := *h
	c.next = h.next.WithGroup(name)
	c.group = h.group + name + "."
	return &c
}

// appendAttr flattens a into key=value strings, resolving LogValuers.
func appendAttr(dst []string, prefix string, a slog.Attr) []string {
	a.Value = a.Value.Resolve()
	if a.Equal(slog.Attr{}) {
		return dst
	}
	if a.Value.Kind() == slog.KindGroup {
		p := prefix
		if a.Key != "" {
			p += a.Key + "."
		}
		for _, g := range a.Value.Group() {
			dst = appendAttr(dst, p, g)
		}
		return dst
	}
	v := a.Value.String()
	if strings.ContainsAny(v, " =\"") {
		v = fmt.Sprintf("%q", v)
	}
	return append(dst, prefix+a.Key+"="+v)
}

// logRing is a LogRecorder's fixed ring of records, shared by the handlers
// derived from it.
type logRing struct {
	mu    sync.Mutex
	buf   []LogEntry
	next  int    // where the next entry goes
	total uint64 // entries ever added
}

func (r *logRing) add(e LogEntry) {
	r.mu.Lock()
	defer r.mu.Unlock()
	r.total++
	if len(r.buf) < cap(r.buf) {
		r.buf = append(r.buf, e)
		return
	}
	r.buf[r.next] = e
	r.next = (r.next + 1) % len(r.buf)
}

// entries returns the kept records, newest first, and how many were ever added.
func (r *logRing) entries() ([]LogEntry, uint64) {
	r.mu.Lock()
	defer r.mu.Unlock()
	out := make([]LogEntry, 0, len(r.buf))
	out = append(out, r.buf[r.next:]...)
	out = append(out, r.buf[:r.next]...)
	slices.Reverse(out)
	return out, r.total
}
