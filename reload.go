package herald

import (
	"errors"
	"math"
	"net/http"
	"net/netip"
	"sync/atomic"

	"golang.org/x/time/rate"
)

// Changing a running node's settings.
//
// A running node can change its connection limits (SetLimits), the browser
// origins it accepts (SetAllowedOrigins), the proxies it trusts
// (SetTrustedProxies) and its namespaces (SetNamespaces), or all of them at
// once (SetSettings). Each setter validates its input as New
// does and returns an error without changing anything when it is invalid;
// otherwise it swaps in an immutable value with one atomic store. Readers
// load the value in force when they check it, with no lock: a handshake's
// admission, a subscribe, a publish each decide with one set of rules, the
// old or the new. (A history or presence command checks its permission,
// then reads, each with the namespaces in force at that instant: one that
// races a change may be allowed by the old rules and served by the new.)
//
// What a change means for what already exists is the same rule for every
// setting: nothing already admitted is undone. Lowering a limit closes no
// connection and drops no subscription; an origin no longer allowed closes
// no connection; a namespace changed or removed ends no subscription. The
// new values decide every later handshake, connect, subscribe, publish,
// history and presence call; clients already connected meet them when they
// reconnect.
//
// Everything else in Config is fixed when the node is created.

// NoLimit, given to any limit of Limits, means no cap. (Any negative value
// does.)
const NoLimit = -1

// Limits are a node's connection limits (Config.Limits), which can change
// while it runs (Node.SetLimits). One rule for all: zero means the default
// written next to each — for two of them, MaxConnectionsPerIP and
// MessageRate, that default is no cap — and NoLimit (any negative value)
// means no cap.
type Limits struct {
	// MaxConnections caps the node's connections (503 at the handshake).
	// Zero means 100,000. Lowered below the number of open connections, it
	// closes none: new handshakes are refused until enough have gone.
	MaxConnections int
	// MaxConnectionsPerUser caps one user's connections on this node (429
	// at the handshake, close 1008 at connect). Zero means 100. Lowered, it
	// closes none of a user's connections: the user's next one is refused
	// until enough have gone.
	MaxConnectionsPerUser int
	// MaxConnectionsPerIP caps the connections from one IP address (429).
	// Zero means the default, no cap: behind a NAT many users share one,
	// and behind a proxy too unless it is trusted (Config.TrustedProxies). Connections are counted per address even with no cap, so
	// a cap set while running counts the connections already open.
	MaxConnectionsPerIP int
	// ConnectRatePerIP caps new connections per second from one IP address,
	// in bursts of as many (429 with Retry-After). Zero means 1,000. A new
	// rate applies to every address from its next handshake on; an address
	// keeps the tokens it has (up to the new burst), so a change neither
	// forgives nor punishes past handshakes. Turning the cap on from none
	// starts every address with a full burst.
	ConnectRatePerIP float64
	// MaxChannelsPerConnection caps the channels one connection may hold.
	// Zero means 256. Lowered, it drops no subscription: a connection over
	// the new cap cannot subscribe again until it is under it.
	MaxChannelsPerConnection int
	// MessageRate caps the messages per second one connection may send, in
	// bursts of MessageBurst (zero: the rate, rounded up). A protocol client
	// over it gets a rate_limited error for each refused message, and is
	// closed with 4007 (CloseRateLimited) when it keeps sending at over
	// twice the rate; a raw client over it is closed with 4007 at once.
	// Zero means the default, no cap. A connection is paced by the rate in
	// force when it was admitted: a change applies to connections opened
	// after it, so no client already talking is cut by a reload.
	MessageRate  float64
	MessageBurst int
}

// withDefaults applies the defaults documented on Limits; a negative value
// stays, meaning no cap.
func (l Limits) withDefaults() Limits {
	if l.MaxConnections == 0 {
		l.MaxConnections = 100_000
	}
	if l.MaxConnectionsPerUser == 0 {
		l.MaxConnectionsPerUser = 100
	}
	if l.ConnectRatePerIP == 0 {
		l.ConnectRatePerIP = 1000
	}
	if l.MaxChannelsPerConnection == 0 {
		l.MaxChannelsPerConnection = 256
	}
	if l.MessageRate > 0 && l.MessageBurst <= 0 {
		l.MessageBurst = int(math.Ceil(l.MessageRate))
	}
	return l
}

// under reports whether count is under the cap max (a negative max: no
// cap).
func under(count, max int) bool { return max < 0 || count < max }

// nodeLimits are the limits in force, defaults applied, with what admission
// derives from them. Immutable once stored in Node.limits.
type nodeLimits struct {
	Limits
	connRate  rate.Limit // new connections per second per IP; 0: no cap
	connBurst int
}

func newNodeLimits(l Limits) (*nodeLimits, error) {
	if math.IsNaN(l.ConnectRatePerIP) || math.IsInf(l.ConnectRatePerIP, 0) {
		return nil, errors.New("herald: ConnectRatePerIP must be a finite number (NoLimit for no cap)")
	}
	if math.IsNaN(l.MessageRate) || math.IsInf(l.MessageRate, 0) {
		return nil, errors.New("herald: MessageRate must be a finite number (zero or NoLimit for no cap)")
	}
	nl := &nodeLimits{Limits: l.withDefaults()}
	if r := nl.ConnectRatePerIP; r > 0 {
		nl.connRate, nl.connBurst = rate.Limit(r), int(math.Ceil(r))
	}
	return nl, nil
}

// Limits returns the limits in force, with defaults applied.
func (n *Node) Limits() Limits { return n.limits.Load().Limits }

// SetLimits replaces the node's connection limits; see Limits for what each
// change means for the connections already open. Zero fields mean the
// defaults, as in Config. A ConnectRatePerIP that is NaN or infinite is an
// error, and changes nothing.
func (n *Node) SetLimits(l Limits) error {
	nl, err := newNodeLimits(l)
	if err != nil {
		return err
	}
	n.limits.Store(nl)
	return nil
}

// SetAllowedOrigins replaces the browser origins that may open a
// WebSocket, as Config.AllowedOrigins and AllowAnyOrigin (any disables the
// check, and logs a warning as New does). The new policy decides every
// later handshake, on Handler and RawHandler; connections already open stay
// open. An invalid origin is an error, and changes nothing.
func (n *Node) SetAllowedOrigins(origins []string, any bool) error {
	oc, err := newOriginChecker(origins, any)
	if err != nil {
		return err
	}
	n.setOrigins(oc)
	return nil
}

func (n *Node) setOrigins(oc *originChecker) {
	if oc.any && !n.origins.Load().any {
		n.log.Warn("origin check disabled (AllowAnyOrigin): any web site can open connections with your users' cookies")
	}
	n.origins.Store(oc)
}

// checkOrigin is the handshake's origin check: the policy in force.
func (n *Node) checkOrigin(r *http.Request) bool { return n.origins.Load().check(r) }

// SetTrustedProxies replaces the proxies whose forwarded header the node
// believes, and that header, as Config.TrustedProxies and ForwardedHeader
// (empty: none). The new policy decides every later handshake; a
// connection already open keeps the address it was admitted with, and is
// counted and released under it. An invalid prefix or header name is an
// error, and changes nothing.
func (n *Node) SetTrustedProxies(prefixes []netip.Prefix, header string) error {
	pt, err := newProxyTrust(prefixes, header)
	if err != nil {
		return err
	}
	n.setProxies(pt)
	return nil
}

// SetNamespaces replaces the node's namespaces, as Config.Namespaces: an
// empty list accepts every channel, with no history and no presence.
// Invalid namespaces are an error, and change nothing.
//
// Subscriptions that exist stay as they are: a subscriber keeps receiving
// its channel's publications, and leaves it as it joined it (a subscription
// made with presence is removed from presence, and announces its leave if
// it was made with JoinLeave; one made without does neither), even if its
// namespace changed or is gone. Every later call follows the new
// namespaces: subscribe, publish (from clients, raw clients, Node.Publish
// and the HTTP API), history and presence, with their permissions, history
// size and TTL, presence and join/leave. So once a namespace is removed, its channels are refused
// (bad_channel) — a raw client of one is closed with 1008 at its next
// message — while their subscribers stay subscribed. History already
// stored is kept by the broker either way; a namespace that gains history
// numbers its publications from then on, and its existing subscribers
// receive the offsets too.
func (n *Node) SetNamespaces(list []Namespace) error {
	n.nsMu.Lock()
	defer n.nsMu.Unlock()
	ns, err := newNamespaces(n.pusher.Load().withPusher(list))
	if err != nil {
		return err
	}
	n.ns.p.Store(ns)
	n.nsOwn = list
	return nil
}

// SetPusherApps replaces the Pusher apps (Config.PusherApps) and their
// namespaces, all or nothing: an invalid list changes nothing. New
// connections see the new apps; a connection already open keeps the app
// it connected to (its key and secret, its settings) until it reconnects,
// and a removed app's channels are refused (bad_channel) as a removed
// namespace's are.
func (n *Node) SetPusherApps(apps []PusherApp) error {
	n.nsMu.Lock()
	defer n.nsMu.Unlock()
	a, err := newPusherApps(append([]PusherApp(nil), apps...))
	if err != nil {
		return err
	}
	ns, err := newNamespaces(a.withPusher(n.nsOwn))
	if err != nil {
		return err
	}
	n.pusher.Store(a)
	n.ns.p.Store(ns)
	return nil
}

// Settings are the settings SetSettings changes at once.
type Settings struct {
	Limits         Limits
	AllowedOrigins []string
	AllowAnyOrigin bool
	TrustedProxies []netip.Prefix
	// ForwardedHeader: see Config.ForwardedHeader.
	ForwardedHeader string
	Namespaces      []Namespace
}

// SetSettings applies SetLimits, SetAllowedOrigins, SetTrustedProxies and
// SetNamespaces together, all or nothing: if any part is invalid it returns the error and
// changes nothing. (Each part is swapped atomically on its own: a handshake
// that runs while SetSettings does may see the new origins and the old
// limits, but every value it sees was valid.)
func (n *Node) SetSettings(s Settings) error {
	nl, err := newNodeLimits(s.Limits)
	if err != nil {
		return err
	}
	oc, err := newOriginChecker(s.AllowedOrigins, s.AllowAnyOrigin)
	if err != nil {
		return err
	}
	pt, err := newProxyTrust(s.TrustedProxies, s.ForwardedHeader)
	if err != nil {
		return err
	}
	n.nsMu.Lock()
	defer n.nsMu.Unlock()
	ns, err := newNamespaces(n.pusher.Load().withPusher(s.Namespaces))
	if err != nil {
		return err
	}
	n.limits.Store(nl)
	n.setOrigins(oc)
	n.setProxies(pt)
	n.ns.p.Store(ns)
	n.nsOwn = s.Namespaces
	return nil
}

// nsRef holds the node's namespaces, which SetNamespaces swaps whole. An
// operation loads them once (load) and decides with that one set.
type nsRef struct{ p atomic.Pointer[namespaces] }

func (r *nsRef) load() *namespaces { return r.p.Load() }

// lookup is load().lookup, for a channel that was validated earlier (a raw
// connection's, at its handshake) and is looked up again: when SetNamespaces
// has removed its namespace since, it returns a namespace that refuses
// everything (permNoNamespace, which even a user-limited channel's users do
// not pass), never nil.
func (r *nsRef) lookup(channel string) *Namespace {
	if ns := r.p.Load().lookup(channel); ns != nil {
		return ns
	}
	return &Namespace{AllowSubscribe: permNoNamespace, AllowPublish: permNoNamespace,
		AllowPresence: permNoNamespace, AllowHistory: permNoNamespace}
}

// permNoNamespace is the permission of a channel whose namespace is no
// longer configured: nobody, not even the users a channel names. It is not
// a valid Permission for configuration.
const permNoNamespace Permission = "\x00no namespace"
