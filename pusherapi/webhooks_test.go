package pusherapi_test

import (
	"context"
	"encoding/json"
	"io"
	"net/http"
	"net/http/httptest"
	"slices"
	"strings"
	"sync"
	"testing"

	"github.com/heraldhq/herald"
	"github.com/heraldhq/herald/pusherapi"
)

// receiver is a webhook URL that checks each call's signature with
// secret and keeps the events; status is what it answers.
type receiver struct {
	srv    *httptest.Server
	mu     sync.Mutex
	events []pusherapi.WebhookEvent
	status int
}

func newReceiver(t *testing.T, key, secret string) *receiver {
	rc := &receiver{status: 200}
	rc.srv = httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		body, _ := io.ReadAll(r.Body)
		var b pusherapi.WebhookBody
		if r.Header.Get("Content-Type") != "application/json" || r.Header.Get(pusherapi.WebhookKeyHeader) != key ||
			!pusherapi.VerifyWebhook(secret, r.Header.Get(pusherapi.WebhookSignatureHeader), body) || json.Unmarshal(body, &b) != nil || b.TimeMS == 0 {
			t.Errorf("a bad call: %v %s", r.Header, body)
		}
		rc.mu.Lock()
		defer rc.mu.Unlock()
		rc.events = append(rc.events, b.Events...)
		w.WriteHeader(rc.status)
	}))
	t.Cleanup(rc.srv.Close)
	return rc
}

func (rc *receiver) got() []pusherapi.WebhookEvent {
	rc.mu.Lock()
	defer rc.mu.Unlock()
	return append([]pusherapi.WebhookEvent(nil), rc.events...)
}

// Deliver sends each app's events to its URLs (filtered by event type),
// the events of other channels to Next, and fails when a URL fails.
func TestWebhooksDeliver(t *testing.T) {
	t.Parallel()
	all := newReceiver(t, appA.Key, appA.Secret)
	members := newReceiver(t, appA.Key, appA.Secret)
	var next []herald.Event
	w, err := pusherapi.NewWebhooks(pusherapi.WebhookConfig{
		Apps: []herald.PusherApp{appA, appB},
		Hooks: map[string][]pusherapi.Webhook{appA.ID: {
			{URL: all.srv.URL},
			{URL: members.srv.URL, EventTypes: []string{pusherapi.WebhookMemberAdded}},
		}},
		Next: func(_ context.Context, evs []herald.Event) error { next = append(next, evs...); return nil },
	})
	if err != nil {
		t.Fatal(err)
	}
	clientEvent := herald.PusherEvent{Event: "client-typing", Data: `{"x":1}`, UserID: "ann"}.Encode()
	events := []herald.Event{
		{Kind: herald.EventChannelOccupied, Channel: appA.HeraldChannel("presence-room")},
		{Kind: herald.EventMemberAdded, Channel: appA.HeraldChannel("presence-room"), User: "ann"},
		{Kind: herald.EventPublication, Channel: appA.HeraldChannel("presence-room"), Client: "1.2", Data: clientEvent},
		{Kind: herald.EventCacheMiss, Channel: appA.HeraldChannel("cache-x")},
		{Kind: herald.EventChannelOccupied, Channel: appB.HeraldChannel("news")}, // B has no webhooks
		{Kind: herald.EventChannelOccupied, Channel: "chat:lobby"},               // Herald's own
		{Kind: herald.EventUserOnline, User: "ann"},                              // Herald's own
	}
	if err := w.Deliver(context.Background(), events); err != nil {
		t.Fatal(err)
	}
	want := []pusherapi.WebhookEvent{
		{Name: "channel_occupied", Channel: "presence-room"},
		{Name: "member_added", Channel: "presence-room", UserID: "ann"},
		{Name: "client_event", Channel: "presence-room", Event: "client-typing", Data: `{"x":1}`, SocketID: "1.2", UserID: "ann"},
		{Name: "cache_miss", Channel: "cache-x"},
	}
	if got := all.got(); !slices.Equal(got, want) {
		t.Errorf("all events: got %+v\nwant %+v", got, want)
	}
	if got := members.got(); !slices.Equal(got, want[1:2]) {
		t.Errorf("member_added only: got %+v", got)
	}
	if len(next) != 2 || next[0].Channel != "chat:lobby" || next[1].Kind != herald.EventUserOnline {
		t.Errorf("Next got %+v", next)
	}

	// A URL that fails fails the batch, naming the app, the URL and the status.
	members.mu.Lock()
	members.status = 503
	members.mu.Unlock()
	err = w.Deliver(context.Background(), events[1:2])
	if err == nil || !strings.Contains(err.Error(), "app 101") || !strings.Contains(err.Error(), "503") {
		t.Fatalf("a failing URL: %v", err)
	}
}

func TestNewWebhooksRefusesBadConfig(t *testing.T) {
	t.Parallel()
	for _, hooks := range []map[string][]pusherapi.Webhook{
		{"999": {{URL: "http://x/"}}},
		{appA.ID: {{URL: "ftp://x/"}}},
		{appA.ID: {{URL: "/relative"}}},
		{appA.ID: {{URL: "http://x/", EventTypes: []string{"channel_opened"}}}},
	} {
		if _, err := pusherapi.NewWebhooks(pusherapi.WebhookConfig{Apps: []herald.PusherApp{appA}, Hooks: hooks}); err == nil {
			t.Errorf("accepted %+v", hooks)
		}
	}
}
