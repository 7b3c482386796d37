package httphooks

import (
	"context"
	"errors"
	"strconv"
	"time"

	"github.com/heraldhq/herald"
)

// DefaultWebhookTimeout bounds a Deliver call when neither Config.Webhook
// nor Config sets a timeout; it is herald.Webhooks' own default, so that
// the node does not cut a call short that this package would let run.
const DefaultWebhookTimeout = 10 * time.Second

// WebhookBatch is the body of a webhook call: events, in the order the
// outbox holds them (the events of one key in the order they happened).
// A Go backend decodes it with this type; docs/webhooks.md documents the
// JSON for other languages.
type WebhookBatch struct {
	Events []herald.Event `json:"events"`
}

// ErrNoWebhook is returned by Deliver on a Backend whose Config.Webhook
// has no URL.
var ErrNoWebhook = errors.New("httphooks: no Webhook URL configured")

// Deliver POSTs events to Config.Webhook as one WebhookBatch, signed like
// the hooks (Herald-Signature, when Config.Secret is set), with the header
// Herald-Hook: events. Any 2xx answer means the backend has them all (its
// body is not read past MaxResponseSize, nor parsed); anything else — a
// non-2xx status, a timeout, a refused connection — is an error that
// names the status and the start of the body, and the node retries the
// batch (herald.Webhooks). It is herald.Webhooks.Deliver's signature: set
// that field to it.
//
// The backend must de-duplicate on Event.ID: a batch that reached it but
// whose answer did not reach Herald is sent again.
func (b *Backend) Deliver(ctx context.Context, events []herald.Event) error {
	ep := b.cfg.Webhook
	if ep.URL == "" {
		return ErrNoWebhook
	}
	if ep.Timeout == 0 && b.cfg.Timeout == 0 {
		ep.Timeout = DefaultWebhookTimeout
	}
	if events == nil {
		events = []herald.Event{} // "events":[] rather than null
	}
	return b.call(ctx, "events", ep, WebhookBatch{Events: events}, nil)
}

// WebhookTimeout is the bound on each Deliver call: set
// herald.Webhooks.Timeout to it, so that both agree.
func (b *Backend) WebhookTimeout() time.Duration {
	if b.cfg.Webhook.Timeout == 0 && b.cfg.Timeout == 0 {
		return DefaultWebhookTimeout
	}
	return b.timeout(b.cfg.Webhook)
}

// maxExcerpt is how much of a failed call's body its error quotes: enough
// for a framework's error line, not a whole error page.
const maxExcerpt = 200

// excerpt quotes the start of a failed call's body, for its error; "" for
// an empty body.
func excerpt(body []byte) string {
	if len(body) == 0 {
		return ""
	}
	// Quote shows bytes that are not UTF-8 (a rune cut in two) as \x
	// escapes: the excerpt stays one line, whatever the backend sent.
	cut := len(body) > maxExcerpt
	if cut {
		body = body[:maxExcerpt]
	}
	s := ": body " + strconv.Quote(string(body))
	if cut {
		s += "…"
	}
	return s
}
