package pusherapi

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net/http"
	"net/url"
	"slices"
	"strconv"
	"strings"
	"time"

	"github.com/heraldhq/herald"
)

// Pusher's webhook event names.
const (
	WebhookChannelOccupied = "channel_occupied"
	WebhookChannelVacated  = "channel_vacated"
	WebhookMemberAdded     = "member_added"
	WebhookMemberRemoved   = "member_removed"
	WebhookClientEvent     = "client_event"
	WebhookCacheMiss       = "cache_miss"
)

// WebhookNames are the webhook events this package sends.
var WebhookNames = []string{WebhookChannelOccupied, WebhookChannelVacated, WebhookMemberAdded,
	WebhookMemberRemoved, WebhookClientEvent, WebhookCacheMiss}

// Webhook is one URL of a Pusher app's webhooks.
type Webhook struct {
	// URL is an absolute http:// or https:// URL.
	URL string
	// EventTypes are the events sent to URL (WebhookNames); empty means
	// all of them.
	EventTypes []string
}

// WebhookEvent is one event of a webhook call, in Pusher's format: Name
// and Channel always, the others as the event has them.
type WebhookEvent struct {
	Name    string `json:"name"`
	Channel string `json:"channel"`
	// UserID: member_added, member_removed, and a client_event on a
	// presence- channel.
	UserID string `json:"user_id,omitempty"`
	// Event, Data and SocketID: a client_event's name, data and sender.
	Event    string `json:"event,omitempty"`
	Data     string `json:"data,omitempty"`
	SocketID string `json:"socket_id,omitempty"`
}

// WebhookBody is the body of a webhook call.
type WebhookBody struct {
	TimeMS int64          `json:"time_ms"`
	Events []WebhookEvent `json:"events"`
}

// WebhookConfig configures Webhooks.
type WebhookConfig struct {
	// Apps are the node's Pusher apps (herald.Config.PusherApps). They are
	// fixed: a node whose apps change (Node.SetPusherApps) keeps sending
	// with these, so make new Webhooks (and a new node) for new apps or
	// secrets; herald serve needs a restart for them.
	Apps []herald.PusherApp
	// Hooks are the webhooks of each app, by app ID. An app without any
	// gets none.
	Hooks map[string][]Webhook
	// Next delivers the events that are not of a Pusher app's channel
	// (Herald's own webhooks: httphooks.Backend.Deliver). Nil drops them.
	Next func(ctx context.Context, events []herald.Event) error
	// Client makes the calls. Nil means a client that follows no
	// redirects (a redirected POST would carry the signed body elsewhere).
	Client *http.Client
}

// Webhooks turns Herald's webhook events (herald.Webhooks) into Pusher's:
// its Deliver is herald.Webhooks.Deliver. So Pusher's webhooks ride on
// Herald's outbox: one event per happening however many nodes, in order
// per channel, at least once, retried with backoff (docs/webhooks.md).
// Each call POSTs {"time_ms","events":[…]} with Content-Type
// application/json, X-Pusher-Key (the app's key) and X-Pusher-Signature
// (hex HMAC-SHA256 of the body under the app's secret), which the Pusher
// SDKs' webhook(request).isValid() verifies.
//
// A batch is delivered only when every URL it goes to answered 2xx; if
// one failed the whole batch comes again, so the URLs that had answered
// get it twice: Pusher's events carry no id, so a receiver that must not
// act twice compares what it got.
type Webhooks struct {
	cfg    WebhookConfig
	client *http.Client
}

// NewWebhooks checks cfg (every URL absolute http(s), every event type
// known, every app ID one of Apps) and returns its Webhooks.
func NewWebhooks(cfg WebhookConfig) (*Webhooks, error) {
	for id, hooks := range cfg.Hooks {
		if !slices.ContainsFunc(cfg.Apps, func(a herald.PusherApp) bool { return a.ID == id }) {
			return nil, fmt.Errorf("pusherapi: webhooks of unknown app %q", id)
		}
		for _, h := range hooks {
			if u, err := url.Parse(h.URL); err != nil || (u.Scheme != "http" && u.Scheme != "https") || u.Host == "" {
				return nil, fmt.Errorf("pusherapi: app %s: webhook URL %q is not an absolute http:// or https:// URL", id, h.URL)
			}
			for _, t := range h.EventTypes {
				if !slices.Contains(WebhookNames, t) {
					return nil, fmt.Errorf("pusherapi: app %s: unknown webhook event type %q (want one of %v)", id, t, WebhookNames)
				}
			}
		}
	}
	w := &Webhooks{cfg: cfg, client: cfg.Client}
	if w.client == nil {
		w.client = &http.Client{CheckRedirect: func(*http.Request, []*http.Request) error { return http.ErrUseLastResponse }}
	}
	return w, nil
}

// Deliver sends events: those of an app's channels to the app's URLs in
// Pusher's format, the others to Next. It returns nil only when every
// call passed. It is herald.Webhooks.Deliver's signature.
func (w *Webhooks) Deliver(ctx context.Context, events []herald.Event) error {
	perApp := make(map[string][]WebhookEvent)
	var rest []herald.Event
	for _, e := range events {
		app, pe, ok := w.convert(e)
		switch {
		case !ok:
			rest = append(rest, e)
		case pe.Name != "":
			perApp[app] = append(perApp[app], pe)
		}
	}
	var errs []error
	for _, app := range w.cfg.Apps {
		if evs := perApp[app.ID]; len(evs) > 0 {
			for _, h := range w.cfg.Hooks[app.ID] {
				if err := w.post(ctx, app, h, evs); err != nil {
					errs = append(errs, err)
				}
			}
		}
	}
	if len(rest) > 0 && w.cfg.Next != nil {
		errs = append(errs, w.cfg.Next(ctx, rest))
	}
	return errors.Join(errs...)
}

// convert finds the app of e's channel and e as Pusher's webhook event
// (Name "" for an event of an app that Pusher has no webhook for); ok is
// false when e is not of an app's channel.
func (w *Webhooks) convert(e herald.Event) (appID string, pe WebhookEvent, ok bool) {
	if e.Channel == "" {
		return "", pe, false
	}
	for _, app := range w.cfg.Apps {
		ch, mine := app.PusherChannel(e.Channel)
		if !mine {
			continue
		}
		pe = WebhookEvent{Channel: ch}
		switch e.Kind {
		case herald.EventChannelOccupied:
			pe.Name = WebhookChannelOccupied
		case herald.EventChannelVacated:
			pe.Name = WebhookChannelVacated
		case herald.EventMemberAdded:
			pe.Name, pe.UserID = WebhookMemberAdded, e.User
		case herald.EventMemberRemoved:
			pe.Name, pe.UserID = WebhookMemberRemoved, e.User
		case herald.EventCacheMiss:
			pe.Name = WebhookCacheMiss
		default:
			pe = pusherEvent(e, pe)
		}
		return app.ID, pe, true
	}
	return "", pe, false
}

// post makes one call of the app's webhook h with the events it wants.
func (w *Webhooks) post(ctx context.Context, app herald.PusherApp, h Webhook, events []WebhookEvent) error {
	if len(h.EventTypes) > 0 {
		events = slices.DeleteFunc(slices.Clone(events), func(e WebhookEvent) bool { return !slices.Contains(h.EventTypes, e.Name) })
		if len(events) == 0 {
			return nil
		}
	}
	body, err := json.Marshal(WebhookBody{TimeMS: time.Now().UnixMilli(), Events: events})
	if err != nil {
		return err
	}
	req, err := http.NewRequestWithContext(ctx, http.MethodPost, h.URL, bytes.NewReader(body))
	if err != nil {
		return fmt.Errorf("pusherapi: app %s webhook: %w", app.ID, err)
	}
	req.Header.Set("Content-Type", "application/json")
	req.Header.Set(WebhookKeyHeader, app.Key)
	req.Header.Set(WebhookSignatureHeader, Sign(app.Secret, string(body)))
	res, err := w.client.Do(req)
	if err != nil {
		return fmt.Errorf("pusherapi: app %s webhook: failed to call %s: %w", app.ID, redact(h.URL), err)
	}
	defer res.Body.Close()
	excerpt, _ := io.ReadAll(io.LimitReader(res.Body, 200))
	_, _ = io.Copy(io.Discard, io.LimitReader(res.Body, 1<<20)) // the connection goes back to the pool
	if res.StatusCode/100 != 2 {
		return fmt.Errorf("pusherapi: app %s webhook: failed to call %s: status %s, want 2xx: body %s", app.ID, redact(h.URL), res.Status, strconv.Quote(string(excerpt)))
	}
	return nil
}

// redact hides a URL's password, for errors and logs.
func redact(s string) string {
	u, err := url.Parse(s)
	if err != nil {
		return "(unparsable URL)"
	}
	return u.Redacted()
}

// pusherEvent is pe for a Herald event that is not a channel's or a
// member's: a client event (a Pusher client's publication, whose data is
// herald.PusherEvent's envelope); Name "" for anything else.
func pusherEvent(e herald.Event, pe WebhookEvent) WebhookEvent {
	if e.Kind != herald.EventPublication {
		return WebhookEvent{}
	}
	ev, ok := herald.DecodePusherEvent(e.Data)
	if !ok || !strings.HasPrefix(ev.Event, "client-") {
		return WebhookEvent{}
	}
	pe.Name, pe.Event, pe.Data, pe.SocketID, pe.UserID = WebhookClientEvent, ev.Event, ev.Data, e.Client, ev.UserID
	return pe
}
