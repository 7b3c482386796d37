package pusherapi

import (
	"context"
	"net/http"
	"slices"
	"strings"

	"github.com/heraldhq/herald"
)

// channelInfo is what the API tells of a channel; the fields asked for
// with info (and occupied for one channel) are set.
type channelInfo struct {
	Occupied          *bool `json:"occupied,omitempty"`
	SubscriptionCount *int  `json:"subscription_count,omitempty"`
	UserCount         *int  `json:"user_count,omitempty"`
}

const (
	infoSubscriptions = "subscription_count"
	infoUsers         = "user_count"
)

func isPresence(ch string) bool { return strings.HasPrefix(ch, "presence-") }

// parseInfo reads an info parameter ("subscription_count,user_count") for
// channels; user_count only for presence- channels, as Pusher checks.
func parseInfo(s string, channels []string) ([]string, string) {
	if s == "" {
		return nil, ""
	}
	var out []string
	for _, f := range strings.Split(s, ",") {
		switch f = strings.TrimSpace(f); f {
		case infoSubscriptions:
		case infoUsers:
			for _, ch := range channels {
				if !isPresence(ch) {
					return nil, "user_count may only be requested for presence- channels, not " + ch
				}
			}
		default:
			return nil, "Unknown info attribute " + f + " (want subscription_count or user_count)"
		}
		out = append(out, f)
	}
	return out, ""
}

// counts returns a channel's subscriptions and users: cluster-wide from
// presence for a presence- channel; for another, this node's subscribers
// (users: 0).
func (a *api) counts(ctx context.Context, app herald.PusherApp, ch string) (subs, users int, err error) {
	hc := app.HeraldChannel(ch)
	if isPresence(ch) {
		st, err := a.n.PresenceStats(ctx, hc)
		return st.Clients, st.Users, err
	}
	return a.n.Stats().Channels[hc], 0, nil
}

// info returns the fields of ch that attrs names.
func (a *api) info(ctx context.Context, app herald.PusherApp, ch string, attrs []string) (channelInfo, error) {
	subs, users, err := a.counts(ctx, app, ch)
	if err != nil {
		return channelInfo{}, err
	}
	var out channelInfo
	if slices.Contains(attrs, infoSubscriptions) {
		out.SubscriptionCount = &subs
	}
	if slices.Contains(attrs, infoUsers) {
		out.UserCount = &users
	}
	return out, nil
}

// channels lists the app's occupied channels, optionally those starting
// with filter_by_prefix; info=user_count needs filter_by_prefix=presence-.
// The list is of the channels with subscribers on this node.
func (a *api) channels(w http.ResponseWriter, r *http.Request, c call) {
	q := r.URL.Query()
	prefix := q.Get("filter_by_prefix")
	var attrs []string
	if s := q.Get("info"); s != "" {
		if s != infoUsers {
			fail(w, http.StatusBadRequest, "info may only be user_count here")
			return
		}
		if !strings.HasPrefix(prefix, "presence-") {
			fail(w, http.StatusBadRequest, "info=user_count needs filter_by_prefix=presence-")
			return
		}
		attrs = []string{infoUsers}
	}
	out := make(map[string]channelInfo)
	for hc := range a.n.Stats().Channels {
		ch, ok := c.app.PusherChannel(hc)
		if !ok || !strings.HasPrefix(ch, prefix) || strings.HasPrefix(ch, serverToUser) {
			continue
		}
		info, err := a.info(r.Context(), c.app, ch, attrs)
		if err != nil {
			a.nodeError(w, err)
			return
		}
		out[ch] = info
	}
	writeJSON(w, map[string]any{"channels": out})
}

// channel answers one channel's state: occupied, and the counts info asks.
func (a *api) channel(w http.ResponseWriter, r *http.Request, c call) {
	ch := r.PathValue("channel_name")
	if c.app.HeraldChannel(ch) == "" || strings.HasPrefix(ch, serverToUser) {
		fail(w, http.StatusBadRequest, "Invalid channel name "+ch)
		return
	}
	attrs, msg := parseInfo(r.URL.Query().Get("info"), []string{ch})
	if msg != "" {
		fail(w, http.StatusBadRequest, msg)
		return
	}
	info, err := a.info(r.Context(), c.app, ch, append(attrs, infoSubscriptions))
	if err != nil {
		a.nodeError(w, err)
		return
	}
	occupied := *info.SubscriptionCount > 0
	info.Occupied = &occupied
	if !slices.Contains(attrs, infoSubscriptions) {
		info.SubscriptionCount = nil
	}
	writeJSON(w, info)
}

// users lists the users of a presence- channel, cluster-wide.
func (a *api) users(w http.ResponseWriter, r *http.Request, c call) {
	ch := r.PathValue("channel_name")
	if !isPresence(ch) || c.app.HeraldChannel(ch) == "" {
		fail(w, http.StatusBadRequest, "Users may only be listed for presence- channels, not "+ch)
		return
	}
	members, err := a.n.Presence(r.Context(), c.app.HeraldChannel(ch))
	if err != nil {
		a.nodeError(w, err)
		return
	}
	type user struct {
		ID string `json:"id"`
	}
	seen := make(map[string]bool, len(members))
	users := make([]user, 0, len(members))
	for _, m := range members {
		if !seen[m.User] {
			seen[m.User] = true
			users = append(users, user{ID: m.User})
		}
	}
	slices.SortFunc(users, func(x, y user) int { return strings.Compare(x.ID, y.ID) })
	writeJSON(w, map[string]any{"users": users})
}

// terminate closes every connection of the app signed in as the user, on
// every node (herald.Node.PusherTerminateUser).
func (a *api) terminate(w http.ResponseWriter, r *http.Request, c call) {
	user := r.PathValue("user_id")
	if user == "" {
		fail(w, http.StatusBadRequest, "user_id is required")
		return
	}
	if err := a.n.PusherTerminateUser(r.Context(), c.app, user); err != nil {
		a.nodeError(w, err)
		return
	}
	writeJSON(w, struct{}{})
}
