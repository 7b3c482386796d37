package main

import (
	"errors"
	"fmt"
	"log/slog"
	"net/url"
	"strings"
	"time"

	"github.com/heraldhq/herald/httphooks"
	"github.com/heraldhq/herald/protocol"
)

// The backend's HTTP hooks (package httphooks, docs/hooks.md): the hook_*
// settings and hooks_secret. They need a restart: a reload logs a change
// to any of them as such.

// hookSettings are the hook_* settings and hooks_secret, in the order of
// the usage text.
type hookSettings struct {
	// A hook is on when its URL is set. Its timeout bounds each call;
	// zero means httphooks.DefaultTimeout (5s).
	ConnectURL, RefreshURL, SubscribeURL, PublishURL, RPCURL, DisconnectedURL, UnsubscribedURL string
	ConnectTimeout, RefreshTimeout, SubscribeTimeout, PublishTimeout, RPCTimeout               time.Duration
	// SubscribeNamespaces and PublishNamespaces limit those hooks to the
	// channels of these namespaces ("" is channels without one); nil: all.
	SubscribeNamespaces, PublishNamespaces []string
	// ForwardHeaders and ForwardCookies name what the connect hook is
	// sent of the handshake request.
	ForwardHeaders, ForwardCookies []string
	// Secret signs every call (Herald-Signature); SecretFile names a file
	// holding it instead. At most one of them.
	Secret     secret
	SecretFile string
}

// minHooksSecret is the shortest hooks_secret accepted: the key of an
// HMAC-SHA256 should be as long as the hash (RFC 2104 section 3).
const minHooksSecret = 32

func checkHooksSecret(b []byte) error {
	if len(b) < minHooksSecret {
		return fmt.Errorf("too short (%d bytes): use at least %d; generate one with: openssl rand -base64 32", len(b), minHooksSecret)
	}
	return nil
}

const wantHookURL = "an http:// or https:// URL, such as https://app.example.com/herald/connect"

// hookURLSetting is the URL of hook name.
func hookURLSetting(name, usage string, field func(*Config) *string) *setting {
	parse := func(v string) (string, error) {
		v = strings.TrimSpace(v)
		u, err := url.Parse(v)
		if err != nil || (u.Scheme != "http" && u.Scheme != "https") || u.Host == "" {
			return "", errors.New("want " + wantHookURL + schemeHint(v, "https"))
		}
		return v, nil
	}
	s := valueSetting("hook_"+name+"_url", "URL", usage, "none (off)", wantHookURL, parse, identity, field)
	s.redact = redactURL
	return s
}

// hookTimeoutSetting is the timeout of hook name. Zero means the default,
// as for every duration of serve (a timeout of 0 could never be met).
func hookTimeoutSetting(name string, field func(*Config) *time.Duration) *setting {
	usage := "bound on each call of the " + name + " hook; needs hook_" + name + "_url"
	return durationSetting("hook_"+name+"_timeout", usage, httphooks.DefaultTimeout.String(), field)
}

// namespaceListSetting is a list of namespace names, in which "" (written
// "" in a flag or variable, or as an empty item in the file) names the
// channels without a namespace. It may not be empty: a hook limited to no
// channel is a hook turned off, which its URL says better.
func namespaceListSetting(name, usage string, field func(*Config) *[]string) *setting {
	const want = `namespace names, comma-separated, "" for channels without one`
	s := &setting{name: name, arg: "NAMESPACES", usage: usage, def: "all channels", want: want,
		get: func(c *Config) string {
			items := make([]string, len(*field(c)))
			for i, ns := range *field(c) {
				items[i] = ns
				if ns == "" {
					items[i] = `""`
				}
			}
			return strings.Join(items, ",")
		}}
	s.setList = func(c *Config, items []string) error {
		list := make([]string, 0, len(items))
		for _, it := range items {
			if it = strings.TrimSpace(it); it == `""` {
				it = ""
			}
			if it != "" && (!protocol.ValidChannel(it) || strings.Contains(it, ":")) {
				return fmt.Errorf("%q is not a namespace name (the part of a channel name before ':'); write \"\" for channels without one", it)
			}
			list = append(list, it)
		}
		if len(list) == 0 {
			return errors.New("want at least one namespace")
		}
		*field(c) = list
		return nil
	}
	// In a flag, a variable or a scalar, an empty item is a stray comma;
	// only "" names channels without a namespace.
	s.set = func(c *Config, v string) error {
		var items []string
		for _, it := range strings.Split(v, ",") {
			if it = strings.TrimSpace(it); it != "" {
				items = append(items, it)
			}
		}
		return s.setList(c, items)
	}
	return s
}

// checkToken accepts a header or cookie name (an RFC 9110 token).
func checkToken(v string) error {
	for i := 0; i < len(v); i++ {
		if c := v[i]; c <= ' ' || c >= 0x7f || strings.IndexByte(`"(),/:;<=>?@[\]{}`, c) >= 0 {
			return errors.New("want a name of letters, digits and -_.!#$%&'*+^`|~")
		}
	}
	return nil
}

func checkForwardHeader(v string) error {
	if strings.EqualFold(v, "Cookie") {
		return errors.New("would send every cookie (other sites' sessions too): name the cookies the backend needs in hook_forward_cookies")
	}
	return checkToken(v)
}

// hookSettingList is every hook setting, for the settings table.
func hookSettingList() []*setting {
	h := func(c *Config) *hookSettings { return &c.Hooks }
	return []*setting{
		hookURLSetting("connect", "URL the connect hook POSTs to: it authenticates each connection and may set its user, info, expiry and channels (docs/hooks.md)",
			func(c *Config) *string { return &h(c).ConnectURL }),
		hookTimeoutSetting("connect", func(c *Config) *time.Duration { return &h(c).ConnectTimeout }),
		listSetting("hook_forward_headers", "NAMES", "handshake request headers sent to the connect hook, comma-separated (no others are)",
			"none", "header names, comma-separated", func(c *Config) *[]string { return &h(c).ForwardHeaders }, checkForwardHeader),
		listSetting("hook_forward_cookies", "NAMES", "cookies sent to the connect hook, comma-separated (no others are)",
			"none", "cookie names, comma-separated", func(c *Config) *[]string { return &h(c).ForwardCookies }, checkToken),
		hookURLSetting("refresh", "URL the refresh hook POSTs to when a connection's expiry (from the connect hook) comes",
			func(c *Config) *string { return &h(c).RefreshURL }),
		hookTimeoutSetting("refresh", func(c *Config) *time.Duration { return &h(c).RefreshTimeout }),
		hookURLSetting("subscribe", "URL the subscribe hook POSTs to: it may refuse a client's subscribe",
			func(c *Config) *string { return &h(c).SubscribeURL }),
		hookTimeoutSetting("subscribe", func(c *Config) *time.Duration { return &h(c).SubscribeTimeout }),
		namespaceListSetting("hook_subscribe_namespaces", `namespaces whose channels the subscribe hook is asked about, comma-separated ("" for channels without one)`,
			func(c *Config) *[]string { return &h(c).SubscribeNamespaces }),
		hookURLSetting("publish", "URL the publish hook POSTs to: it may refuse or rewrite a client's publication",
			func(c *Config) *string { return &h(c).PublishURL }),
		hookTimeoutSetting("publish", func(c *Config) *time.Duration { return &h(c).PublishTimeout }),
		namespaceListSetting("hook_publish_namespaces", `namespaces whose channels the publish hook is asked about, comma-separated ("" for channels without one)`,
			func(c *Config) *[]string { return &h(c).PublishNamespaces }),
		hookURLSetting("rpc", "URL the rpc hook POSTs to: it answers the clients' rpc commands",
			func(c *Config) *string { return &h(c).RPCURL }),
		hookTimeoutSetting("rpc", func(c *Config) *time.Duration { return &h(c).RPCTimeout }),
		hookURLSetting("disconnected", "URL told of each connection that ends (a notification: not retried)",
			func(c *Config) *string { return &h(c).DisconnectedURL }),
		hookURLSetting("unsubscribed", "URL told of each subscription that ends (a notification: not retried)",
			func(c *Config) *string { return &h(c).UnsubscribedURL }),
		secretSetting("hooks_secret", "SECRET", "none (unsigned)", "a secret of at least 32 bytes",
			"secret (at least 32 bytes) that signs every hook and webhook call (Herald-Signature header, docs/hooks.md); a flag shows in ps: prefer the variable or hooks_secret_file",
			checkHooksSecret, func(c *Config) *secret { return &h(c).Secret }),
		stringSetting("hooks_secret_file", "FILE", "file holding hooks_secret (trailing newlines ignored); instead of hooks_secret", "none",
			func(c *Config) *string { return &h(c).SecretFile }),
	}
}

// on reports whether any hook is on.
func (h *hookSettings) on() bool {
	return h.ConnectURL != "" || h.RefreshURL != "" || h.SubscribeURL != "" || h.PublishURL != "" ||
		h.RPCURL != "" || h.DisconnectedURL != "" || h.UnsubscribedURL != ""
}

// validate refuses settings that would do nothing: a timeout, namespaces,
// forwarded names or a secret without the hook they are for (webhooks: the
// webhooks are on, which hooks_secret signs too). The operator who set
// them thinks something is on that is not.
func (h *hookSettings) validate(webhooks bool) error {
	for _, need := range []struct {
		set   bool
		names string
		url   string
		ok    bool
	}{
		{h.ConnectTimeout != 0, "hook_connect_timeout", "hook_connect_url", h.ConnectURL != ""},
		{len(h.ForwardHeaders) > 0, "hook_forward_headers", "hook_connect_url", h.ConnectURL != ""},
		{len(h.ForwardCookies) > 0, "hook_forward_cookies", "hook_connect_url", h.ConnectURL != ""},
		{h.RefreshTimeout != 0, "hook_refresh_timeout", "hook_refresh_url", h.RefreshURL != ""},
		{h.SubscribeTimeout != 0, "hook_subscribe_timeout", "hook_subscribe_url", h.SubscribeURL != ""},
		{h.SubscribeNamespaces != nil, "hook_subscribe_namespaces", "hook_subscribe_url", h.SubscribeURL != ""},
		{h.PublishTimeout != 0, "hook_publish_timeout", "hook_publish_url", h.PublishURL != ""},
		{h.PublishNamespaces != nil, "hook_publish_namespaces", "hook_publish_url", h.PublishURL != ""},
		{h.RPCTimeout != 0, "hook_rpc_timeout", "hook_rpc_url", h.RPCURL != ""},
	} {
		if need.set && !need.ok {
			return fmt.Errorf("%s set, but %s is not: set it too, or remove %s", need.names, need.url, need.names)
		}
	}
	if h.Secret != "" && h.SecretFile != "" {
		return errors.New("hooks_secret and hooks_secret_file both set: set one of them")
	}
	if (h.Secret != "" || h.SecretFile != "") && !h.on() && !webhooks {
		return errors.New("hooks_secret set, but no hook is: set a hook_*_url or webhook_url too, or remove it")
	}
	return nil
}

// backend builds the backend of the hooks and of the webhook (webhookURL,
// with its timeout), reading hooks_secret_file; nil when neither is on.
func (h *hookSettings) backend(webhookURL string, webhookTimeout time.Duration) (*httphooks.Backend, error) {
	if !h.on() && webhookURL == "" {
		return nil, nil
	}
	secret, err := secretOrFile(h.Secret, h.SecretFile, "hooks_secret_file", checkHooksSecret)
	if err != nil {
		return nil, err
	}
	cfg := httphooks.Config{
		Connect:             httphooks.Endpoint{URL: h.ConnectURL, Timeout: h.ConnectTimeout},
		Refresh:             httphooks.Endpoint{URL: h.RefreshURL, Timeout: h.RefreshTimeout},
		Subscribe:           httphooks.Endpoint{URL: h.SubscribeURL, Timeout: h.SubscribeTimeout},
		Publish:             httphooks.Endpoint{URL: h.PublishURL, Timeout: h.PublishTimeout},
		RPC:                 httphooks.Endpoint{URL: h.RPCURL, Timeout: h.RPCTimeout},
		Disconnected:        httphooks.Endpoint{URL: h.DisconnectedURL},
		Unsubscribed:        httphooks.Endpoint{URL: h.UnsubscribedURL},
		Webhook:             httphooks.Endpoint{URL: webhookURL, Timeout: webhookTimeout},
		ForwardHeaders:      h.ForwardHeaders,
		ForwardCookies:      h.ForwardCookies,
		SubscribeNamespaces: h.SubscribeNamespaces,
		PublishNamespaces:   h.PublishNamespaces,
	}
	if secret != "" {
		cfg.Secret = []byte(secret)
	}
	b, err := httphooks.New(cfg)
	if err != nil {
		return nil, fmt.Errorf("invalid hook settings: %w", err) // the settings' own checks come first
	}
	return b, nil
}

// logHooks says at start which hooks are on and where they go (URLs
// redacted), so that an operator can tell why a connection was refused.
func logHooks(logger *slog.Logger, h *hookSettings, b *httphooks.Backend) {
	if b == nil || !h.on() {
		return
	}
	attrs := []any{"on", strings.Join(b.Enabled(), ","), "signed", h.Secret != "" || h.SecretFile != ""}
	for _, u := range []struct{ name, url string }{
		{"connect", h.ConnectURL}, {"refresh", h.RefreshURL}, {"subscribe", h.SubscribeURL}, {"publish", h.PublishURL},
		{"rpc", h.RPCURL}, {"disconnected", h.DisconnectedURL}, {"unsubscribed", h.UnsubscribedURL},
	} {
		if u.url != "" {
			attrs = append(attrs, u.name, redactURL(u.url))
		}
	}
	logger.Info("hooks on", attrs...)
	if h.Secret == "" && h.SecretFile == "" {
		logger.Warn("hook calls are not signed: anyone who can reach the hook URLs can pose as this server; set hooks_secret_file (docs/hooks.md)")
	}
}
