package httphooks

import (
	"context"
	"encoding/json"
	"errors"
	"io"
	"net/http"
	"reflect"
	"strings"
	"testing"
	"time"

	"github.com/heraldhq/herald"
)

var testEvents = []herald.Event{
	{ID: "e1", Kind: herald.EventUserOnline, Key: "user:ann", Time: time.Date(2026, 1, 2, 3, 4, 5, 6e6, time.UTC), User: "ann"},
	{ID: "e2", Kind: herald.EventMemberAdded, Key: "channel:chat:a", Time: time.Date(2026, 1, 2, 3, 4, 6, 0, time.UTC),
		User: "ann", Channel: "chat:a", Client: "c1", Info: json.RawMessage(`{"name":"Ann"}`)},
	{ID: "e3", Kind: herald.EventPublication, Key: "channel:chat:a", Time: time.Date(2026, 1, 2, 3, 4, 7, 0, time.UTC),
		User: "ann", Channel: "chat:a", Client: "c1", Data: json.RawMessage(`{"text":"hi"}`), Offset: 7},
	{ID: "e4", Kind: herald.EventPublication, Key: "channel:bin", Time: time.Date(2026, 1, 2, 3, 4, 8, 0, time.UTC),
		Channel: "bin", Client: "c2", Binary: []byte{0, 1, 0xff}},
}

// A batch reaches the backend whole, in order, signed, with the events'
// fields as herald.Event encodes them; the backend decodes it with
// WebhookBatch after VerifyRequest.
func TestDeliverSigned(t *testing.T) {
	t.Parallel()
	var got WebhookBatch
	var verr error
	app := newApp(t, func(w http.ResponseWriter, r *http.Request) {
		body, err := VerifyRequest(r, testSecret, time.Minute)
		if err == nil {
			err = json.Unmarshal(body, &got)
		}
		if verr = err; err != nil {
			http.Error(w, err.Error(), http.StatusUnauthorized)
			return
		}
		w.WriteHeader(http.StatusNoContent)
	})
	b := newBackend(t, Config{Webhook: Endpoint{URL: app.URL + "/events"}, Secret: testSecret})
	if err := b.Deliver(context.Background(), testEvents); err != nil {
		t.Fatalf("%v (verify: %v)", err, verr)
	}
	req := app.last(t)
	if req.hook != "events" || req.contentType != "application/json" || !strings.HasPrefix(req.signature, "t=") {
		t.Fatalf("headers %+v", req)
	}
	if !reflect.DeepEqual(got.Events, testEvents) {
		t.Fatalf("decoded\n got %+v\nwant %+v", got.Events, testEvents)
	}
	if !strings.HasPrefix(string(req.body), `{"events":[{"id":"e1","kind":"user.online","key":"user:ann","time":"2026-01-02T03:04:05.006Z","user":"ann"},`) ||
		!strings.Contains(string(req.body), `"binary":"AAH/"`) {
		t.Fatalf("body %s", req.body)
	}

	// The hooks' secret signs webhooks; the wrong secret fails the call.
	other := newApp(t, func(w http.ResponseWriter, r *http.Request) {
		if _, err := VerifyRequest(r, []byte("another secret 0123456789abcdefgh"), 0); err != nil {
			http.Error(w, err.Error(), http.StatusUnauthorized)
			return
		}
		w.WriteHeader(http.StatusOK)
	})
	b2 := newBackend(t, Config{Webhook: Endpoint{URL: other.URL}, Secret: testSecret})
	if err := b2.Deliver(context.Background(), testEvents[:1]); !errors.Is(err, ErrBadResponse) || !strings.Contains(err.Error(), "401") {
		t.Fatalf("want a 401 failure, got %v", err)
	}
}

// Any 2xx is delivered; every other answer, a timeout, a closed port is an
// error that says why, with the start of the body.
func TestDeliverAnswers(t *testing.T) {
	t.Parallel()
	long := strings.Repeat("x", 5000)
	for _, tc := range []struct {
		name   string
		answer http.HandlerFunc
		is     error
		says   []string
	}{
		{name: "200", answer: answerJSON(`{"whatever":1}`)},
		{name: "202 empty", answer: statusAnswer(202, "")},
		{name: "500", answer: statusAnswer(500, "database down\n"), is: ErrBadResponse, says: []string{"500", `body "database down\n"`}},
		{name: "long body", answer: statusAnswer(503, long), is: ErrBadResponse, says: []string{"503", strings.Repeat("x", maxExcerpt) + `"…`}},
		{name: "redirect", answer: func(w http.ResponseWriter, r *http.Request) { http.Redirect(w, r, "/elsewhere", http.StatusFound) },
			is: ErrBadResponse, says: []string{"302"}},
		{name: "slow", answer: func(w http.ResponseWriter, r *http.Request) { <-r.Context().Done() }, is: context.DeadlineExceeded},
	} {
		t.Run(tc.name, func(t *testing.T) {
			t.Parallel()
			app := newApp(t, tc.answer)
			b := newBackend(t, Config{Webhook: Endpoint{URL: app.URL, Timeout: 200 * time.Millisecond}})
			start := time.Now()
			err := b.Deliver(context.Background(), testEvents)
			if tc.is == nil {
				if err != nil {
					t.Fatal(err)
				}
				return
			}
			if !errors.Is(err, tc.is) || !strings.Contains(err.Error(), "events hook: failed to call "+app.URL) {
				t.Fatalf("want %v, got %v", tc.is, err)
			}
			for _, s := range tc.says {
				if !strings.Contains(err.Error(), s) {
					t.Fatalf("error %q does not say %q", err, s)
				}
			}
			if len(err.Error()) > 400 {
				t.Fatalf("error of %d bytes", len(err.Error()))
			}
			if time.Since(start) > 5*time.Second {
				t.Fatalf("took %s", time.Since(start))
			}
		})
	}
	closed := newApp(t, statusAnswer(200, ""))
	closed.Close()
	b := newBackend(t, Config{Webhook: Endpoint{URL: closed.URL}})
	if err := b.Deliver(context.Background(), testEvents); err == nil {
		t.Fatal("delivered to a closed port")
	}
}

func TestDeliverConfig(t *testing.T) {
	t.Parallel()
	var body []byte
	app := newApp(t, statusAnswer(200, ""))
	if err := newBackend(t, Config{Webhook: Endpoint{URL: app.URL}}).Deliver(context.Background(), nil); err != nil {
		t.Fatal(err)
	}
	if body = app.last(t).body; string(body) != `{"events":[]}` {
		t.Fatalf("empty batch: %s", body)
	}
	if err := newBackend(t, Config{Connect: Endpoint{URL: app.URL}}).Deliver(context.Background(), testEvents); !errors.Is(err, ErrNoWebhook) {
		t.Fatalf("without a Webhook URL: %v", err)
	}
	if _, err := New(Config{Webhook: Endpoint{URL: "app.example.com/events"}}); err == nil || !strings.Contains(err.Error(), "webhook URL") {
		t.Fatalf("bad URL: %v", err)
	}
	if _, err := New(Config{Webhook: Endpoint{URL: "http://a", Timeout: -1}}); err == nil || !strings.Contains(err.Error(), "webhook Timeout") {
		t.Fatalf("negative timeout: %v", err)
	}
	for _, tc := range []struct {
		cfg  Config
		want time.Duration
	}{
		{Config{Webhook: Endpoint{URL: "http://a"}}, DefaultWebhookTimeout},
		{Config{Webhook: Endpoint{URL: "http://a"}, Timeout: time.Second}, time.Second},
		{Config{Webhook: Endpoint{URL: "http://a", Timeout: time.Minute}, Timeout: time.Second}, time.Minute},
	} {
		b := newBackend(t, tc.cfg)
		if got := b.WebhookTimeout(); got != tc.want {
			t.Errorf("%+v: WebhookTimeout %s, want %s", tc.cfg, got, tc.want)
		}
		if b.Hooks().Timeout != 0 || len(b.Enabled()) != 0 {
			t.Errorf("%+v: the webhook counts as a hook", tc.cfg)
		}
	}
}

// statusAnswer answers every call with code and body.
func statusAnswer(code int, body string) http.HandlerFunc {
	return func(w http.ResponseWriter, r *http.Request) {
		w.WriteHeader(code)
		_, _ = io.WriteString(w, body)
	}
}
