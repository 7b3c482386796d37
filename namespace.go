package herald

import (
	"fmt"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/heraldhq/herald/protocol"
)

// Namespace configures the channels whose name starts with Name followed by
// ':' ("chat" configures "chat:lobby"). The namespace with the empty Name
// configures channels without ':'.
//
// With no namespaces configured every channel is accepted with the zero
// Namespace: no history, no presence. Once any is configured, a channel whose
// namespace is not configured is refused (bad_channel), so a typo in a
// channel name fails loudly instead of silently losing history.
//
// The namespace named AnyNamespace ("*") configures every channel whose
// namespace is not listed, so that a few namespaces can get history or
// presence while every other channel is still accepted. It gives up the
// refusal above: a misspelt namespace then falls to "*" instead of failing.
// So that such a typo shows, the first channel of each namespace that
// falls to "*" is logged when other namespaces are configured too — as a
// warning when its name is within two letters of a configured one
// ("privte" beside "private"), at debug level otherwise; the first 1000
// names are, per SetNamespaces.
type Namespace struct {
	Name string

	// HistorySize keeps the last HistorySize publications of each channel,
	// each for HistoryTTL, and numbers publications with offsets, which
	// makes recovery after a reconnect possible. Zero keeps no history.
	HistorySize int
	// HistoryTTL is how long a publication stays in history. Zero means
	// 5 minutes when HistorySize is set.
	HistoryTTL time.Duration

	// Presence keeps the set of clients subscribed to each channel, for the
	// presence and presence_stats commands.
	Presence bool
	// JoinLeave sends join and leave pushes to a channel's subscribers when
	// a client subscribes or leaves. It implies Presence.
	JoinLeave bool

	// Webhook events of the namespace's channels (see Webhooks):
	// ChannelEvents sends channel.occupied and channel.vacated (the first
	// subscriber anywhere in the cluster, the last one gone);
	// MemberEvents member.added and member.removed (needs Presence);
	// PublishEvents a publication event for each publication a client
	// makes (not those of Node.Publish or the HTTP API: the backend made
	// those).
	ChannelEvents bool
	MemberEvents  bool
	PublishEvents bool

	// Delta lets the namespace's subscribers ask for deltas (subscribe's
	// "delta"): each publication is then sent as a fossil delta against
	// the previous one the subscriber got, when that is smaller (see
	// delta.go and PROTOCOL.md, "Delta delivery"). It needs HistorySize:
	// the base of a delta is named by its offset. The zero value,
	// DeltaNone, sends full publications only.
	Delta DeltaType

	// Who may subscribe, publish, read presence and read history. The zero
	// value, PermDefault, means PermAnyone when the node checks no tokens
	// (Config.Tokens is nil) and PermAuthenticated when it does. Publishing
	// from the server (Node.Publish, the HTTP API) is always allowed.
	//
	// A channel whose name contains '#' is user-limited: the comma-separated
	// user ids after the first '#' ("dm:#alice,bob"; in "dm:#a#b,c" the
	// users "a#b" and "c") may do all four, and nobody else may do any,
	// whatever these say.
	AllowSubscribe Permission
	AllowPublish   Permission
	AllowPresence  Permission
	AllowHistory   Permission

	// Overflow is what happens to a subscriber whose outbound queue is full
	// (Config.MaxQueueMessages or MaxQueueBytes) when a publication of this
	// namespace arrives. The zero value, OverflowDisconnect, cuts it with
	// 4001; see OverflowPolicy for the others and PROTOCOL.md ("Slow
	// subscribers") for what each promises.
	Overflow OverflowPolicy
}

// OverflowPolicy says what a full outbound queue does with a namespace's
// publications. Whatever the policy, a queue stays within its limits in
// frames and bytes, and frames that are not publications (replies, pings,
// join and leave, the dropped push itself) are never dropped: a queue that
// cannot make room for one by the policies of the publications it holds
// still cuts its client with 4001. A connection whose channels are in
// namespaces of several policies has each queued publication treated by
// the policy of its own namespace (the one in force when it was queued).
type OverflowPolicy uint8

// Overflow policies.
const (
	// OverflowDisconnect cuts the client with 4001 (slow consumer): every
	// publication is delivered or the client knows it was cut. For chats,
	// where every message matters and recovery fills the hole.
	OverflowDisconnect OverflowPolicy = iota
	// OverflowDropOldest drops the oldest queued publications of such
	// namespaces to make room, and queues a "dropped" push in the place of
	// the first one dropped of each channel, naming the offsets lost
	// (their count, for a channel without history), so that the client can
	// read them from history with since, or go on.
	OverflowDropOldest
	// OverflowConflate keeps, in a full queue, only the newest publication
	// per channel and key (Publication.Key, WithKey): a new one takes the
	// queued slot of its key's newest, so a slow client is not cut and
	// converges to the latest value of every key. A client whose queue is
	// not full gets every publication. The promise holds while the queue
	// can hold one frame per key (frames and bytes); past that the client
	// is cut with 4001. Do not use it where every message matters.
	OverflowConflate
)

var overflowNames = [...]string{"disconnect", "drop_oldest", "conflate"}

// String returns the policy's name in the config file: disconnect,
// drop_oldest or conflate.
func (p OverflowPolicy) String() string {
	if int(p) < len(overflowNames) {
		return overflowNames[p]
	}
	return fmt.Sprintf("OverflowPolicy(%d)", p)
}

// ParseOverflowPolicy reads a policy's name (String); the empty string is
// OverflowDisconnect.
func ParseOverflowPolicy(s string) (OverflowPolicy, error) {
	if s == "" {
		return OverflowDisconnect, nil
	}
	for i, name := range overflowNames {
		if s == name {
			return OverflowPolicy(i), nil
		}
	}
	return 0, fmt.Errorf("unknown overflow policy %q (want disconnect, drop_oldest or conflate)", s)
}

// AnyNamespace is the Name of the namespace that configures the channels of
// every namespace not listed (see Namespace). '*' is not a channel character,
// so it cannot be the namespace of a channel.
const AnyNamespace = "*"

// Permission says who may do something on a namespace's channels.
type Permission string

// Permissions.
const (
	PermDefault Permission = ""
	// PermAnyone: every client, anonymous ones included.
	PermAnyone Permission = "anyone"
	// PermAuthenticated: clients with a user id.
	PermAuthenticated Permission = "authenticated"
	// PermGranted: clients whose connection token lists the channel in its
	// "channels" claim, or who subscribed with a subscription token for it
	// (a token whose "channel" is the channel and whose "sub" is their user).
	PermGranted Permission = "granted"
	// PermNobody: no client.
	PermNobody Permission = "nobody"
)

func (p Permission) valid() bool {
	switch p {
	case PermDefault, PermAnyone, PermAuthenticated, PermGranted, PermNobody:
		return true
	}
	return false
}

// userLimit returns the users of a user-limited channel ("dm:#alice,bob"):
// everything after the first '#', split at each ','. So "dm:#a#b" admits
// the one user "a#b"; a user id cannot contain ',' (validUserID).
func userLimit(channel string) (users []string, limited bool) {
	i := strings.IndexByte(channel, '#')
	if i < 0 {
		return nil, false
	}
	return strings.Split(channel[i+1:], ","), true
}

type namespaces struct {
	strict bool // namespaces were configured: unknown ones are refused
	byName map[string]*Namespace
	zero   Namespace
	// other configures the namespaces not in byName when strict: the
	// AnyNamespace entry, or nil to refuse them.
	other *Namespace

	// The namespace names that have fallen to other, each logged once
	// (firstFallback) when other namespaces are configured too: a typo
	// ("privte") gets "*"'s permissions without an error. At most
	// maxFallbackWarnings names are recorded, so that clients naming
	// endless namespaces cannot grow the set. A SetNamespaces starts anew.
	fallen  sync.Map // namespace name → struct{}
	nfallen atomic.Int32
}

// maxFallbackWarnings bounds the namespace names logged as falling to "*".
const maxFallbackWarnings = 1000

func newNamespaces(list []Namespace) (*namespaces, error) {
	ns := &namespaces{strict: len(list) > 0, byName: make(map[string]*Namespace)}
	for i := range list {
		n := list[i]
		if n.Name != "" && n.Name != AnyNamespace && (!protocol.ValidChannel(n.Name) || strings.Contains(n.Name, ":")) {
			return nil, fmt.Errorf("herald: invalid namespace name %q", n.Name)
		}
		if _, dup := ns.byName[n.Name]; dup {
			return nil, fmt.Errorf("herald: namespace %q configured twice", n.Name)
		}
		for _, p := range []Permission{n.AllowSubscribe, n.AllowPublish, n.AllowPresence, n.AllowHistory} {
			if !p.valid() {
				return nil, fmt.Errorf("herald: namespace %q: unknown permission %q (want anyone, authenticated, granted or nobody)", n.Name, p)
			}
		}
		if int(n.Overflow) >= len(overflowNames) {
			return nil, fmt.Errorf("herald: namespace %q: unknown overflow policy %d", n.Name, n.Overflow)
		}
		if n.HistorySize < 0 || n.HistoryTTL < 0 {
			return nil, fmt.Errorf("herald: namespace %q: negative history size or TTL", n.Name)
		}
		if n.HistorySize > 0 && n.HistoryTTL == 0 {
			n.HistoryTTL = 5 * time.Minute
		}
		if n.JoinLeave {
			n.Presence = true
		}
		if err := n.Delta.check(n.HistorySize); err != nil {
			return nil, fmt.Errorf("herald: namespace %q: %w", n.Name, err)
		}
		if n.MemberEvents && !n.Presence {
			return nil, fmt.Errorf("herald: namespace %q: member events need presence", n.Name)
		}
		ns.byName[n.Name] = &n
	}
	// No channel's namespace is "*", so byName never finds this entry by
	// itself: lookup falls back to it.
	ns.other = ns.byName[AnyNamespace]
	return ns, nil
}

// lookup returns the namespace of a valid channel name, or nil if the
// namespace is not configured and unknown ones are refused.
func (ns *namespaces) lookup(channel string) *Namespace {
	if !ns.strict {
		return &ns.zero
	}
	name, _, found := strings.Cut(channel, ":")
	if !found {
		name = ""
	}
	if n := ns.byName[name]; n != nil {
		return n
	}
	return ns.other
}

// near returns a configured namespace name (not "*") within two edits of
// name, if there is one: name is then likely its typo.
func (ns *namespaces) near(name string) string {
	for configured := range ns.byName {
		if configured != AnyNamespace && configured != name && editDistanceAtMost(name, configured, 2) {
			return configured
		}
	}
	return ""
}

// editDistanceAtMost reports whether a and b are within k insertions,
// deletions and substitutions of each other (Levenshtein). Names are
// short; this is only run once per namespace name.
func editDistanceAtMost(a, b string, k int) bool {
	if d := len(a) - len(b); d > k || -d > k {
		return false
	}
	prev := make([]int, len(b)+1)
	cur := make([]int, len(b)+1)
	for j := range prev {
		prev[j] = j
	}
	for i := 1; i <= len(a); i++ {
		cur[0] = i
		for j := 1; j <= len(b); j++ {
			cost := 1
			if a[i-1] == b[j-1] {
				cost = 0
			}
			cur[j] = min(prev[j]+1, cur[j-1]+1, prev[j-1]+cost)
		}
		prev, cur = cur, prev
	}
	return prev[len(b)] <= k
}

// firstFallback reports whether channel's namespace, name, falls to
// other for the first time while namespaces other than "*" are
// configured, recording it; last is true for the name that fills the
// record (maxFallbackWarnings). Callers pass a channel that lookup
// resolved to other. A name already recorded costs a sync.Map read; once
// the record is full, an atomic load.
func (ns *namespaces) firstFallback(channel string) (name string, first, last bool) {
	if ns.other == nil || len(ns.byName) < 2 || ns.nfallen.Load() >= maxFallbackWarnings {
		return "", false, false // "*" alone: everything falls to it on purpose
	}
	name, _, found := strings.Cut(channel, ":")
	if !found {
		name = ""
	}
	if _, seen := ns.fallen.Load(name); seen {
		return "", false, false
	}
	name = strings.Clone(name) // not the whole channel name, kept alive
	if _, seen := ns.fallen.LoadOrStore(name, struct{}{}); seen {
		return "", false, false
	}
	// Racing callers may each store a new name past the bound: by at most
	// their number, once.
	k := ns.nfallen.Add(1)
	return name, true, k == maxFallbackWarnings
}

func (n *Namespace) publishOptions(idemKey string, window time.Duration) PublishOptions {
	o := PublishOptions{HistorySize: n.HistorySize, HistoryTTL: n.HistoryTTL}
	if idemKey != "" {
		o.IdempotencyKey, o.IdempotencyWindow = idemKey, window
	}
	return o
}
