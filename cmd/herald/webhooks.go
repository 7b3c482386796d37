package main

import (
	"errors"
	"fmt"
	"log/slog"
	"net/url"
	"strings"
	"time"

	"github.com/heraldhq/herald"
	"github.com/heraldhq/herald/httphooks"
)

// The webhooks (herald.Webhooks, docs/webhooks.md): the webhook_* settings,
// and per namespace channel_events, member_events and publish_events (in
// the file's namespaces). hooks_secret signs them as it signs the hooks.
// The webhook_* settings need a restart; the namespaces' keys reload.

// webhookSettings are the webhook_* settings, in the order of the usage
// text. Zero durations mean herald.Webhooks' defaults.
type webhookSettings struct {
	// URL turns the webhooks on: each batch of events is POSTed to it.
	URL     string
	Timeout time.Duration
	// Users sends user.online and user.offline.
	Users                    bool
	Grace, RetryFor, NodeTTL time.Duration
}

// Defaults of herald.Webhooks, for the usage text and the reload log.
const (
	defaultWebhookGrace    = 5 * time.Second
	defaultWebhookRetryFor = 24 * time.Hour
	defaultWebhookNodeTTL  = 20 * time.Second
	// minWebhookNodeTTL: a node beats every NodeTTL/3, each beat a store
	// call; under a second, a live node under load could be taken for
	// dead and its users sent offline.
	minWebhookNodeTTL = time.Second
)

const wantWebhookURL = "an http:// or https:// URL, such as https://app.example.com/herald/events"

func webhookSettingList() []*setting {
	w := func(c *Config) *webhookSettings { return &c.Webhooks }
	webhookURL := valueSetting("webhook_url", "URL",
		"URL the webhooks POST batches of events to (users online and offline, channels occupied and vacated, members, publications: docs/webhooks.md); turns them on",
		"none (off)", wantWebhookURL, parseWebhookURL, identity, func(c *Config) *string { return &w(c).URL })
	webhookURL.redact = redactURL
	return []*setting{
		webhookURL,
		durationSetting("webhook_timeout", "bound on each webhook call; needs webhook_url", httphooks.DefaultWebhookTimeout.String(),
			func(c *Config) *time.Duration { return &w(c).Timeout }),
		boolSetting("webhook_users", "send user.online (a user's first connection in the cluster) and user.offline (its last one gone); needs webhook_url",
			func(c *Config) *bool { return &w(c).Users }),
		durationSetting("webhook_grace", "how long a user or channel stays online or occupied after its last connection or subscriber on a node went away (a page reload does not flap); needs webhook_url",
			defaultWebhookGrace.String(), func(c *Config) *time.Duration { return &w(c).Grace }),
		durationSetting("webhook_retry_for", "how long an event the backend does not take is retried (backoff 1s doubling to 10m) before it is dropped; needs webhook_url",
			defaultWebhookRetryFor.String(), func(c *Config) *time.Duration { return &w(c).RetryFor }),
		durationSetting("webhook_node_ttl", "how long a node that stopped beating (crashed) is taken for alive; then another sends the offline and vacated events of what it held; at least 1s; needs webhook_url",
			defaultWebhookNodeTTL.String(), func(c *Config) *time.Duration { return &w(c).NodeTTL }),
	}
}

// parseWebhookURL reads a URL that webhooks are POSTed to.
func parseWebhookURL(v string) (string, error) {
	v = strings.TrimSpace(v)
	u, err := url.Parse(v)
	if err != nil || (u.Scheme != "http" && u.Scheme != "https") || u.Host == "" {
		return "", errors.New("want " + wantWebhookURL + schemeHint(v, "https"))
	}
	return v, nil
}

// namespaceEvents lists the namespaces' event keys that are on, as
// "member_events of namespace \"chat\"", for errors.
func namespaceEvents(list []herald.Namespace) []string {
	var on []string
	for _, ns := range list {
		for _, k := range []struct {
			key string
			on  bool
		}{{"channel_events", ns.ChannelEvents}, {"member_events", ns.MemberEvents}, {"publish_events", ns.PublishEvents}} {
			if k.on {
				on = append(on, fmt.Sprintf("%s of namespace %q", k.key, ns.Name))
			}
		}
	}
	return on
}

// validate refuses webhook settings that would do nothing, or not what
// the operator thinks: a setting without webhook_url (or a Pusher app's
// webhooks: pusher says whether there are any), webhook_url with no event
// on, member events without presence (there are no members to tell of).
func (w *webhookSettings) validate(namespaces []herald.Namespace, pusher bool) error {
	events := namespaceEvents(namespaces)
	if w.URL == "" && pusher {
		if w.Users {
			events = append(events, "webhook_users")
		}
		if len(events) > 0 {
			return fmt.Errorf("%s set, but webhook_url is not (the Pusher apps' webhooks tell only of their own channels): set it too, or remove them",
				strings.Join(events, ", "))
		}
	} else if w.URL == "" {
		var orphans []string
		for _, s := range []struct {
			name string
			set  bool
		}{
			{"webhook_timeout", w.Timeout != 0}, {"webhook_users", w.Users}, {"webhook_grace", w.Grace != 0},
			{"webhook_retry_for", w.RetryFor != 0}, {"webhook_node_ttl", w.NodeTTL != 0},
		} {
			if s.set {
				orphans = append(orphans, s.name)
			}
		}
		orphans = append(orphans, events...)
		if len(orphans) > 0 {
			return fmt.Errorf("%s set, but webhook_url is not: set it too, or remove them", strings.Join(orphans, ", "))
		}
		return nil
	}
	if w.URL != "" && !w.Users && len(events) == 0 {
		return fmt.Errorf("webhook_url set, but no event is on: set webhook_users, or channel_events, member_events or publish_events in a namespace (docs/webhooks.md)")
	}
	if w.NodeTTL != 0 && w.NodeTTL < minWebhookNodeTTL {
		return fmt.Errorf("webhook_node_ttl %s is under %s: a live node could be taken for dead and its users sent offline", w.NodeTTL, minWebhookNodeTTL)
	}
	for _, ns := range namespaces {
		if ns.MemberEvents && !ns.Presence && !ns.JoinLeave {
			return fmt.Errorf("member_events of namespace %q needs presence: set presence: true in the namespace too (members are presence's)", ns.Name)
		}
	}
	return nil
}

// webhooks is the node's herald.Webhooks, delivering through b; off (the
// zero value) without webhook_url.
func (w *webhookSettings) webhooks(b *httphooks.Backend) herald.Webhooks {
	if w.URL == "" || b == nil {
		return herald.Webhooks{}
	}
	return herald.Webhooks{
		Deliver:  b.Deliver,
		Users:    w.Users,
		Grace:    w.Grace,
		RetryFor: w.RetryFor,
		NodeTTL:  w.NodeTTL,
		Timeout:  b.WebhookTimeout(),
	}
}

// logWebhooks says at start where the webhooks go and where their outbox
// lives: with the in-memory broker it is this process, and a crash loses
// the events not yet delivered, which an operator must know.
//
// shared says whether the broker keeps the outbox (it implements
// herald.EventStoreProvider); else the node keeps it in memory.
func logWebhooks(logger *slog.Logger, c *Config, shared bool) {
	w := &c.Webhooks
	if w.URL == "" && !c.pusherWebhooks() {
		return
	}
	if w.URL != "" {
		logger.Info("webhooks on", "url", redactURL(w.URL), "users", w.Users, "namespace_events", strings.Join(namespaceEvents(c.Namespaces), "; "),
			"signed", c.Hooks.Secret != "" || c.Hooks.SecretFile != "")
	}
	for _, app := range c.PusherApps {
		for _, h := range app.Webhooks {
			logger.Info("Pusher webhooks on", "app", app.ID, "url", redactURL(h.URL), "event_types", strings.Join(h.EventTypes, ","))
		}
	}
	if shared {
		logger.Info("webhook outbox in the broker: undelivered events survive a crash of any node", "broker", c.Broker, "prefix", c.BrokerPrefix)
	} else {
		logger.Warn("webhook outbox in this process's memory: a crash loses the events not yet delivered, and nodes do not share it; use a broker that keeps it (redis) (docs/webhooks.md)",
			"broker", c.Broker)
	}
	if w.URL != "" && c.Hooks.Secret == "" && c.Hooks.SecretFile == "" {
		logger.Warn("webhook calls are not signed: anyone who can reach webhook_url can forge events; set hooks_secret_file (docs/webhooks.md)")
	}
}
