package main

import (
	"context"
	"fmt"
	"io"
	"log/slog"
	"slices"
	"strings"
	"sync"
	"time"
)

// recentLogs keeps the last WARN and ERROR records, for the admin
// dashboard: an operator who opens it after a page sees what went wrong
// without a log pipeline. It is a fixed ring, so a flood of warnings costs
// a bounded amount of memory and the newest ones win.
type recentLogs struct {
	mu    sync.Mutex
	buf   []logEntry
	next  int    // where the next entry goes
	total uint64 // entries ever added, so a reader can tell it missed some
}

// logEntry is one record as the dashboard shows it. Attrs are flattened to
// key=value strings (groups as dotted prefixes): the records carry no
// secrets (see docs/security.md), and the dashboard shows them as text.
type logEntry struct {
	Time    time.Time `json:"time"`
	Level   string    `json:"level"`
	Message string    `json:"msg"`
	Attrs   []string  `json:"attrs,omitempty"`
}

const recentLogsSize = 100

func newRecentLogs(n int) *recentLogs { return &recentLogs{buf: make([]logEntry, 0, n)} }

func (r *recentLogs) add(e logEntry) {
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
func (r *recentLogs) entries() ([]logEntry, uint64) {
	r.mu.Lock()
	defer r.mu.Unlock()
	out := make([]logEntry, 0, len(r.buf))
	out = append(out, r.buf[r.next:]...)
	out = append(out, r.buf[:r.next]...)
	slices.Reverse(out)
	return out, r.total
}

// recordingHandler passes records to the next handler and copies those at
// WARN and above into a recentLogs, whatever the configured level: with
// log_level error, warnings still reach the dashboard.
type recordingHandler struct {
	next   slog.Handler
	recent *recentLogs
	attrs  []string // from WithAttrs, already formatted
	group  string   // dotted prefix from WithGroup
}

func (h *recordingHandler) Enabled(ctx context.Context, l slog.Level) bool {
	return l >= slog.LevelWarn || h.next.Enabled(ctx, l)
}

func (h *recordingHandler) Handle(ctx context.Context, r slog.Record) error {
	if r.Level >= slog.LevelWarn {
		e := logEntry{Time: r.Time, Level: r.Level.String(), Message: r.Message, Attrs: slices.Clone(h.attrs)}
		r.Attrs(func(a slog.Attr) bool {
			e.Attrs = appendAttr(e.Attrs, h.group, a)
			return true
		})
		h.recent.add(e)
	}
	if !h.next.Enabled(ctx, r.Level) {
		return nil
	}
	return h.next.Handle(ctx, r)
}

func (h *recordingHandler) WithAttrs(attrs []slog.Attr) slog.Handler {
	c := *h
	c.next = h.next.WithAttrs(attrs)
	c.attrs = slices.Clone(h.attrs)
	for _, a := range attrs {
		c.attrs = appendAttr(c.attrs, h.group, a)
	}
	return &c
}

func (h *recordingHandler) WithGroup(name string) slog.Handler {
	if name == "" {
		return h
	}
	c := *h
	c.next = h.next.WithGroup(name)
	c.group = h.group + name + "."
	return &c
}

// appendAttr flattens a into key=value strings, resolving LogValuers (the
// secret type among them, so a secret would show as "(redacted)").
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

// newLogger builds the server's logger: text or JSON to w, at a level that
// SIGHUP can change (level), with WARN and ERROR records also kept in
// recent for the dashboard.
func newLogger(cfg Config, w io.Writer, level *slog.LevelVar, recent *recentLogs) *slog.Logger {
	level.Set(cfg.LogLevel)
	opts := &slog.HandlerOptions{Level: level}
	var h slog.Handler
	if cfg.LogFormat == "json" {
		h = slog.NewJSONHandler(w, opts)
	} else {
		h = slog.NewTextHandler(w, opts)
	}
	return slog.New(&recordingHandler{next: h, recent: recent})
}
