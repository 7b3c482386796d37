package main

import (
	"context"
	"errors"
	"fmt"
	"math"
	"os"
	"slices"
	"strconv"
	"strings"
	"time"

	"go.yaml.in/yaml/v3"

	"github.com/heraldhq/herald"
	"github.com/heraldhq/herald/pusherapi"
)

// Pusher apps (docs/pusher.md): the file's pusher_apps list. Each app is
// served at /app/{key} (pusher-js and Laravel Echo) and /apps/{id}/… (the
// Pusher server SDKs' HTTP API, package pusherapi); its webhooks go out in
// Pusher's format through the node's webhook outbox.

// pusherAppConfig is one entry of pusher_apps.
type pusherAppConfig struct {
	ID, Key string
	// Secret signs the app's auth signatures, API calls and webhooks.
	// secret_file names a file holding it instead.
	Secret     secret
	SecretFile string
	// ClientEvents lets the app's clients send client-* events on private
	// and presence channels.
	ClientEvents bool
	// MaxConnections caps the app's connections on this node; 0: no cap
	// beyond the server's.
	MaxConnections int
	// HistorySize and HistoryTTL keep each channel's last events, for
	// recovery; ActivityTimeout is the seconds a client may stay silent.
	// Zero values: herald.PusherApp's defaults.
	HistorySize     int
	HistoryTTL      time.Duration
	ActivityTimeout int
	Webhooks        []pusherapi.Webhook
	line            int // of the entry, for errors
}

// pusherAppSettings are the pusher_app_* settings: one app, set like any
// other setting (HERALD_PUSHER_APP_ID=1001 ...), added to pusher_apps.
type pusherAppSettings struct {
	ID, Key      string
	Secret       secret
	SecretFile   string
	ClientEvents bool
	WebhookURL   string
}

func pusherSettingList() []*setting {
	p := func(c *Config) *pusherAppSettings { return &c.PusherApp }
	name := func(want string) func(string) (string, error) {
		return func(v string) (string, error) { return parsePusherName(v, want) }
	}
	webhook := valueSetting("pusher_app_webhook_url", "URL", "URL of the pusher_app_* app's webhooks (Pusher's format, every event type)",
		"none", wantWebhookURL, parseWebhookURL, identity, func(c *Config) *string { return &p(c).WebhookURL })
	webhook.redact = redactURL
	return []*setting{
		valueSetting("pusher_app_id", "ID", "id of a Pusher app (PUSHER_APP_ID), added to the file's pusher_apps; with pusher_app_key and a secret (docs/pusher.md)",
			"none", "an app id such as 1001", name("an app id such as 1001"), identity, func(c *Config) *string { return &p(c).ID }),
		valueSetting("pusher_app_key", "KEY", "key of the pusher_app_id app (PUSHER_APP_KEY): clients connect to /app/KEY",
			"none", "an app key such as app-key", name("an app key such as app-key (letters, digits, - and _)"), identity, func(c *Config) *string { return &p(c).Key }),
		secretSetting("pusher_app_secret", "SECRET", "none", "a secret of at least 16 bytes",
			"secret of the pusher_app_id app (PUSHER_APP_SECRET); a flag shows in ps: prefer the variable or pusher_app_secret_file",
			checkPusherSecret, func(c *Config) *secret { return &p(c).Secret }),
		stringSetting("pusher_app_secret_file", "FILE", "file holding the pusher_app_id app's secret (trailing newlines ignored); instead of pusher_app_secret", "none",
			func(c *Config) *string { return &p(c).SecretFile }),
		boolSetting("pusher_app_client_events", "let the pusher_app_id app's clients send client-* events on private and presence channels",
			func(c *Config) *bool { return &p(c).ClientEvents }),
		webhook,
	}
}

// settingsApp adds the pusher_app_* app to the apps, or says which of its
// settings is missing.
func (c *Config) settingsApp() error {
	s := c.PusherApp
	if s == (pusherAppSettings{}) {
		return nil
	}
	if s.ID == "" || s.Key == "" {
		return errors.New("pusher_app_* settings need pusher_app_id and pusher_app_key (and pusher_app_secret or pusher_app_secret_file)")
	}
	app := pusherAppConfig{ID: s.ID, Key: s.Key, Secret: s.Secret, SecretFile: s.SecretFile, ClientEvents: s.ClientEvents}
	if s.WebhookURL != "" {
		app.Webhooks = []pusherapi.Webhook{{URL: s.WebhookURL}}
	}
	c.PusherApps = append(c.PusherApps, app)
	return nil
}

// pusherAppKeys are the keys of an app in the file.
var pusherAppKeys = []string{"id", "key", "secret", "secret_file", "client_events", "max_connections",
	"history_size", "history_ttl", "activity_timeout", "webhooks"}

// pusherApps reads the file's pusher_apps list (at line).
func (f configFile) pusherApps(n *yaml.Node, line int) ([]pusherAppConfig, error) {
	if n.Kind != yaml.SequenceNode {
		return nil, &SettingError{Setting: "pusher_apps", Source: f.source(line), Value: render(n),
			Err: errors.New(`want a list of apps, each "- id: ID" with key, secret and its other settings; not ` + shape(n))}
	}
	var list []pusherAppConfig
	for _, raw := range n.Content {
		e := resolve(raw)
		if e.Kind != yaml.MappingNode {
			return nil, &SettingError{Setting: "pusher_apps", Source: f.source(raw.Line), Value: render(e),
				Err: errors.New(`want an app's settings, such as "- id: 1001" with key and secret on the lines below; not ` + shape(e))}
		}
		app, err := f.pusherApp(e)
		if err != nil {
			return nil, err
		}
		list = append(list, app)
	}
	return list, nil
}

// pusherApp reads one entry of pusher_apps.
func (f configFile) pusherApp(e *yaml.Node) (app pusherAppConfig, err error) {
	app.line = e.Line
	first := make(map[string]int)
	for i := 0; i+1 < len(e.Content); i += 2 {
		k, v := e.Content[i], resolve(e.Content[i+1])
		if k.Kind != yaml.ScalarNode || !slices.Contains(pusherAppKeys, k.Value) {
			hint := "an app takes " + strings.Join(pusherAppKeys, ", ")
			if guess := didYouMean(k.Value, pusherAppKeys); guess != "" {
				hint = guess + " (" + hint + ")"
			}
			return app, fmt.Errorf("unknown setting %s in a Pusher app (config file %s line %d): %s", render(k), f.path, k.Line, hint)
		}
		setting, source := k.Value+" of a Pusher app", f.source(v.Line)
		if line, dup := first[k.Value]; dup {
			return app, &SettingError{Setting: setting, Source: source, Value: render(v), Err: fmt.Errorf("set twice in the app (first at line %d)", line)}
		}
		first[k.Value] = k.Line
		if isNull(v) {
			continue
		}
		if k.Value == "webhooks" {
			if app.Webhooks, err = f.pusherWebhooks(v); err != nil {
				return app, err
			}
			continue
		}
		if v.Kind != yaml.ScalarNode {
			return app, &SettingError{Setting: setting, Source: source, Value: render(v), Err: errors.New("want one value; not " + shape(v))}
		}
		if err := app.set(k.Value, v.Value); err != nil {
			return app, &SettingError{Setting: setting, Source: source, Value: v.Value, Err: err}
		}
	}
	return app, nil
}

func (app *pusherAppConfig) set(key, v string) error {
	var err error
	switch key {
	case "id":
		app.ID, err = parsePusherName(v, "an app id such as 1001")
	case "key":
		app.Key, err = parsePusherName(v, "an app key such as app-key (letters, digits, - and _)")
	case "secret":
		app.Secret, err = secret(v), checkPusherSecret([]byte(v))
	case "secret_file":
		app.SecretFile, err = parseNonEmpty(v)
	case "client_events":
		app.ClientEvents, err = parseBool(v)
	case "max_connections":
		app.MaxConnections, err = parseCount(v)
	case "history_size":
		app.HistorySize, err = parseCount(v)
	case "history_ttl":
		app.HistoryTTL, err = parseDuration(v)
	case "activity_timeout":
		app.ActivityTimeout, err = parseCount(v)
	}
	return err
}

func parseCount(v string) (int, error) {
	n, err := parseNonNegative(v)
	if n > math.MaxInt32 {
		return 0, errors.New("want a whole number up to 2147483647")
	}
	return int(n), err
}

// parsePusherName reads an app id or key: it goes in URL paths unescaped.
// 64 is herald.PusherApp's limit on an id; keys get the same.
func parsePusherName(v, want string) (string, error) {
	v = strings.TrimSpace(v)
	if v == "" || len(v) > 64 || strings.IndexFunc(v, func(r rune) bool {
		return !(r >= 'a' && r <= 'z' || r >= 'A' && r <= 'Z' || r >= '0' && r <= '9' || r == '-' || r == '_')
	}) >= 0 {
		return "", errors.New("want " + want + ", 1-64 characters")
	}
	return v, nil
}

// checkPusherSecret refuses a secret anyone could guess: it signs every
// API call and every private channel's subscription.
func checkPusherSecret(b []byte) error {
	if len(b) < 16 {
		return fmt.Errorf("want at least 16 bytes (Pusher's secrets are 20 hex characters); this one has %d", len(b))
	}
	return nil
}

// pusherWebhooks reads an app's webhooks: a list of {url, event_types}.
func (f configFile) pusherWebhooks(n *yaml.Node) ([]pusherapi.Webhook, error) {
	bad := func(at *yaml.Node, err error) error {
		return &SettingError{Setting: "webhooks of a Pusher app", Source: f.source(at.Line), Value: render(at), Err: err}
	}
	if n.Kind != yaml.SequenceNode {
		return nil, bad(n, errors.New(`want a list, each "- url: URL" with an optional event_types list; not `+shape(n)))
	}
	var out []pusherapi.Webhook
	for _, raw := range n.Content {
		e := resolve(raw)
		if e.Kind != yaml.MappingNode {
			return nil, bad(e, errors.New(`want "url: URL" and optional "event_types: [...]"; not `+shape(e)))
		}
		var h pusherapi.Webhook
		for i := 0; i+1 < len(e.Content); i += 2 {
			k, v := e.Content[i], resolve(e.Content[i+1])
			switch {
			case k.Value == "url" && v.Kind == yaml.ScalarNode:
				h.URL = strings.TrimSpace(v.Value)
			case k.Value == "event_types" && v.Kind == yaml.SequenceNode:
				for _, t := range v.Content {
					if t = resolve(t); t.Kind != yaml.ScalarNode || !slices.Contains(pusherapi.WebhookNames, t.Value) {
						return nil, bad(t, fmt.Errorf("want event types among %s", strings.Join(pusherapi.WebhookNames, ", ")))
					}
					h.EventTypes = append(h.EventTypes, t.Value)
				}
			default:
				return nil, bad(k, errors.New(`a webhook takes url (a URL) and event_types (a list)`))
			}
		}
		if _, err := parseWebhookURL(h.URL); err != nil {
			return nil, bad(e, fmt.Errorf("url: %w", err))
		}
		out = append(out, h)
	}
	return out, nil
}

// validatePusherApps checks the apps as a whole and reads their secret
// files: every app has an id, a key and one secret, and no two share an id
// or a key.
func (c *Config) validatePusherApps() error {
	if err := c.settingsApp(); err != nil {
		return err
	}
	ids, keys := make(map[string]bool), make(map[string]bool)
	for i := range c.PusherApps {
		app := &c.PusherApps[i]
		where := "Pusher app at line " + strconv.Itoa(app.line)
		if app.line == 0 {
			where = "Pusher app of the pusher_app_* settings"
		}
		switch {
		case app.ID == "" || app.Key == "":
			return fmt.Errorf("%s: id and key are required", where)
		case ids[app.ID]:
			return fmt.Errorf("%s: id %s is used by another app", where, app.ID)
		case keys[app.Key]:
			return fmt.Errorf("%s: key %s is used by another app", where, app.Key)
		case (app.Secret == "") == (app.SecretFile == ""):
			return fmt.Errorf("Pusher app %s: set one of secret and secret_file", app.ID)
		}
		ids[app.ID], keys[app.Key] = true, true
		if app.SecretFile != "" {
			b, err := os.ReadFile(app.SecretFile)
			if err != nil {
				return fmt.Errorf("Pusher app %s: failed to read secret_file: %w", app.ID, err)
			}
			b = []byte(strings.TrimRight(string(b), "\r\n"))
			if err := checkPusherSecret(b); err != nil {
				return fmt.Errorf("Pusher app %s: secret_file %s: %w", app.ID, app.SecretFile, err)
			}
			app.Secret = secret(b)
		}
	}
	return nil
}

// pusherWebhooks reports whether a Pusher app has webhooks.
func (c *Config) pusherWebhooks() bool {
	return slices.ContainsFunc(c.PusherApps, func(a pusherAppConfig) bool { return len(a.Webhooks) > 0 })
}

// pusherApps returns the apps as the node takes them.
func (c *Config) pusherApps() []herald.PusherApp {
	out := make([]herald.PusherApp, len(c.PusherApps))
	for i, a := range c.PusherApps {
		out[i] = herald.PusherApp{ID: a.ID, Key: a.Key, Secret: string(a.Secret), ClientEvents: a.ClientEvents,
			MaxConnections: a.MaxConnections, HistorySize: a.HistorySize, HistoryTTL: a.HistoryTTL, ActivityTimeout: a.ActivityTimeout}
	}
	return out
}

// pusherWebhookConfig is the apps' webhooks, with next delivering the
// events of Herald's own (webhook_url) when set.
func (c *Config) pusherWebhookConfig(next func(context.Context, []herald.Event) error) pusherapi.WebhookConfig {
	hooks := make(map[string][]pusherapi.Webhook)
	for _, a := range c.PusherApps {
		if len(a.Webhooks) > 0 {
			hooks[a.ID] = a.Webhooks
		}
	}
	return pusherapi.WebhookConfig{Apps: c.pusherApps(), Hooks: hooks, Next: next}
}

// withPusherWebhooks returns the node's webhooks with the Pusher apps'
// added: their Deliver sends the events of the apps' channels to the apps'
// URLs in Pusher's format (none for an app without webhooks), and the
// others to h's Deliver (webhook_url), if set. So webhook_url never gets
// the events of a Pusher app's channels, whose namespaces all record
// events. The webhook_* settings apply to both.
func (c *Config) withPusherWebhooks(h herald.Webhooks) (herald.Webhooks, error) {
	if len(c.PusherApps) == 0 || (h.Deliver == nil && !c.pusherWebhooks()) {
		return h, nil
	}
	pw, err := pusherapi.NewWebhooks(c.pusherWebhookConfig(h.Deliver))
	if err != nil {
		return h, err
	}
	w := &c.Webhooks
	h.Deliver, h.Users, h.Grace, h.RetryFor, h.NodeTTL = pw.Deliver, w.Users, w.Grace, w.RetryFor, w.NodeTTL
	if h.Timeout == 0 {
		h.Timeout = w.Timeout
	}
	return h, nil
}
