package dashboard

import (
	"log/slog"
	"slices"
	"strings"
	"testing"
)

func TestLogRing(t *testing.T) {
	t.Parallel()
	r := NewLogRecorder(nil, 3)
	for i := range 5 {
		r.ring.add(LogEntry{Message: string(rune('a' + i))})
	}
	got, total := r.Recent()
	if total != 5 || len(got) != 3 || got[0].Message != "e" || got[2].Message != "c" {
		t.Fatalf("got %+v, total %d; want e d c, 5", got, total)
	}
}

// redactedValue stands for a secret that redacts itself in logs.
type redactedValue string

func (redactedValue) LogValue() slog.Value { return slog.StringValue("(redacted)") }

// TestLogRecorder: WARN and ERROR records are kept with their attributes
// (groups dotted, LogValuers resolved, so a secret shows redacted) even
// when the next handler's level would drop them; lower ones are not, and
// the next handler's level still rules what it writes.
func TestLogRecorder(t *testing.T) {
	t.Parallel()
	var out strings.Builder
	level := new(slog.LevelVar)
	level.Set(slog.LevelError)
	rec := NewLogRecorder(slog.NewTextHandler(&out, &slog.HandlerOptions{Level: level}), 10)
	logger := slog.New(rec)
	logger.With("node", "a").WithGroup("g").Warn("careful", "n", 1, "key", redactedValue("hunter2-hunter2"), slog.Group("sub", "x", "y z"))
	logger.Info("not kept")
	logger.Error("bad")
	got, total := rec.Recent()
	if total != 2 || got[0].Message != "bad" || got[1].Message != "careful" || got[1].Level != "WARN" {
		t.Fatalf("kept %+v, total %d", got, total)
	}
	if want := []string{"node=a", "g.n=1", `g.key=(redacted)`, `g.sub.x="y z"`}; !slices.Equal(got[1].Attrs, want) {
		t.Errorf("attrs %q, want %q", got[1].Attrs, want)
	}
	if strings.Contains(out.String(), "careful") || !strings.Contains(out.String(), "bad") {
		t.Errorf("level error: the log holds %q", out.String())
	}
	level.Set(slog.LevelInfo)
	logger.Info("now logged")
	if !strings.Contains(out.String(), "now logged") {
		t.Error("changing the next handler's level does not change what it logs")
	}
	if entries, _ := NewLogRecorder(nil, 0).Recent(); entries == nil || len(entries) != 0 {
		t.Errorf("a new recorder: %v, want an empty list", entries)
	}
}
