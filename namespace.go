package herald

import (
	"fmt"
	"strings"
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
}

type namespaces struct {
	strict bool // namespaces were configured: unknown ones are refused
	byName map[string]*Namespace
	zero   Namespace
}

func newNamespaces(list []Namespace) (*namespaces, error) {
	ns := &namespaces{strict: len(list) > 0, byName: make(map[string]*Namespace)}
	for i := range list {
		n := list[i]
		if n.Name != "" && (!protocol.ValidChannel(n.Name) || strings.Contains(n.Name, ":")) {
			return nil, fmt.Errorf("herald: invalid namespace name %q", n.Name)
		}
		if _, dup := ns.byName[n.Name]; dup {
			return nil, fmt.Errorf("herald: namespace %q configured twice", n.Name)
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
		ns.byName[n.Name] = &n
	}
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
	return ns.byName[name]
}

func (n *Namespace) publishOptions(idemKey string, window time.Duration) PublishOptions {
	o := PublishOptions{HistorySize: n.HistorySize, HistoryTTL: n.HistoryTTL}
	if idemKey != "" {
		o.IdempotencyKey, o.IdempotencyWindow = idemKey, window
	}
	return o
}
