package herald

import (
	"slices"
	"sync"
	"time"
)

// Continuity of channels with history across broker trouble.
//
// A node must never let a subscriber of a channel with history miss a
// publication silently, and must never report a loss that did not happen:
// a false report cuts healthy subscribers, and each extra round trip of
// theirs can push them past the kept history. Three things can break
// continuity, and each closes the channel's local subscribers with
// CloseResubscribe (4006), so that they resubscribe with since and recover
// from history, or learn recovered:false:
//
//   - a gap: a publication arrives whose offset is more than one past the
//     last one delivered here, so some never arrived (checkContinuity);
//   - an epoch change: the broker's history of the channel was reset (a
//     Redis or NATS that restarted empty), so offsets start over under a
//     new epoch (checkContinuity, and HandleReconnect for the position);
//   - an outage: the broker's link is down, so nothing arrives until it is
//     back (HandleOutage, as soon as the broker notices; HandleReconnect
//     checks again when it is back).

// stream is what the node knows of the position of one channel with
// history and local subscribers: the highest offset delivered here, and
// the epoch. It exists from the channel's first local subscription to its
// last one's end, and is created before the broker subscription, so that
// no delivery goes unrecorded.
//
// Until a history read has fixed the position (known), deliveries cannot
// be judged: the broker subscription precedes the first subscriber's
// history read, and what is delivered in between is recorded, not judged.
// (The earlier design started tracking only after that read, so a
// publication delivered during it was missed by the tracker, and the next
// one looked like a gap: about 2 in 10 fresh subscribers on a busy NATS
// channel were cut for nothing.)
type stream struct {
	mu    sync.Mutex
	known bool
	last  uint64
	epoch string
}

// continuity is what a delivery says about a stream.
type continuity uint8

const (
	continuous   continuity = iota
	gapped                  // publications before this one never arrived
	epochChanged            // the channel's history was reset
)

// observe records a delivered publication (with an offset) and judges it.
// The broker delivers a channel from one goroutine at a time, in offset
// order, so a jump can only mean that publications never arrived.
func (s *stream) observe(pub *Publication) continuity {
	s.mu.Lock()
	defer s.mu.Unlock()
	if !s.known {
		if pub.Offset > s.last {
			s.last, s.epoch = pub.Offset, pub.Epoch
		}
		return continuous
	}
	if pub.Epoch != "" && s.epoch != "" && pub.Epoch != s.epoch {
		s.last, s.epoch = pub.Offset, pub.Epoch
		return epochChanged
	}
	if pub.Offset <= s.last {
		return continuous // read from history already, or delivered again
	}
	prev := s.last
	s.last = pub.Offset
	if pub.Offset > prev+1 {
		return gapped
	}
	return continuous
}

// establish fixes the position from a history read made after the broker
// subscription (a subscriber's); later reads change nothing, since every
// delivery since the first is judged. A position ahead of the deliveries
// means publications stored before the read and not yet delivered: they
// will be delivered, at or below the position, and are no gap.
func (s *stream) establish(pos StreamPosition) {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.known {
		return
	}
	s.known = true
	if s.epoch != "" && s.epoch != pos.Epoch {
		// What was delivered before the read is of another epoch (the
		// history was reset meanwhile): the read is the newer truth.
		s.last, s.epoch = pos.Offset, pos.Epoch
		return
	}
	s.last, s.epoch = max(s.last, pos.Offset), pos.Epoch
}

// behind says what a history position read after an outage shows: broken
// (another epoch, or a position never fixed), or how many publications
// were stored past what was delivered here (0: nothing was missed).
func (s *stream) behind(pos StreamPosition) (n uint64, broken bool) {
	s.mu.Lock()
	defer s.mu.Unlock()
	if !s.known || pos.Epoch != s.epoch {
		return 0, true
	}
	if pos.Offset <= s.last {
		return 0, false
	}
	return pos.Offset - s.last, false
}

// reconnectCatchUp is how long HandleReconnect lets deliveries catch up
// with a position it read: a broker may deliver a publication after a
// history read returned it, so a channel whose position is a little ahead
// right after the reconnect may have missed nothing.
const reconnectCatchUp = time.Second

// streamOf returns channel's stream, creating it if the channel's first
// subscription was made while its namespace kept no history (SetNamespaces
// added it since). The caller holds a subscription of the channel, so the
// stream is not being removed.
func (n *Node) streamOf(channel string) *stream {
	v, _ := n.streams.LoadOrStore(channel, &stream{})
	return v.(*stream)
}

// checkContinuity judges a publication with an offset before its fan-out,
// and closes the channel's subscribers if continuity is broken.
func (n *Node) checkContinuity(pub *Publication) {
	v, ok := n.streams.Load(pub.Channel)
	if !ok {
		return
	}
	switch v.(*stream).observe(pub) {
	case gapped:
		n.log.Warn("publications missed (broker outage): asking subscribers to resubscribe", "channel", pub.Channel, "offset", pub.Offset)
		n.resubscribeAll(pub.Channel)
	case epochChanged:
		n.log.Warn("channel history reset by the broker (new epoch): asking subscribers to resubscribe", "channel", pub.Channel, "epoch", pub.Epoch)
		n.resubscribeAll(pub.Channel)
	}
}

// resubscribeAll closes every local subscriber of channel with
// CloseResubscribe. Safe from the broker's delivery goroutine: closing
// only queues a close frame.
func (n *Node) resubscribeAll(channel string) {
	n.hub.forEachSub(channel, func(c *conn, _ *subEntry) {
		if c.close(CloseResubscribe, "missed publications: resubscribe to recover") {
			n.metrics.resubscribes.Add(1)
		}
	})
}

// HandleReconnect implements BrokerHandler. After a broker outage it checks
// every channel with local subscribers: a channel with history whose
// position moved past the last offset this node delivered, or whose epoch
// changed, missed publications (a gap followed by later deliveries is
// caught as it arrives, by checkContinuity; this catches the gap at the
// end, and a reset with nothing published since), and one without history
// may have (nothing can tell). The subscribers of those channels are closed
// with CloseResubscribe. Channels with history and no gap are left alone.
func (n *Node) HandleReconnect() { n.HandlePartialReconnect(nil) }

// HandlePartialReconnect implements PartialBrokerHandler: HandleReconnect
// for the channels affects reports (every channel when affects is nil).
func (n *Node) HandlePartialReconnect(affects func(channel string) bool) {
	type lag struct {
		ch  string
		st  *stream
		pos StreamPosition
	}
	var lagging []lag
	nss := n.ns.load()
	for ch := range n.hub.channelCounts() {
		if affects != nil && !affects(ch) {
			continue
		}
		if ns := nss.lookup(ch); ns != nil && ns.HistorySize > 0 {
			if v, ok := n.streams.Load(ch); ok {
				st := v.(*stream)
				ctx, cancel := n.opCtx()
				h, err := n.broker.History(ctx, ch, HistoryOptions{Limit: 0})
				cancel()
				if err == nil {
					switch ahead, broken := st.behind(h.Position); {
					case broken:
					case ahead == 0:
						continue // nothing was published during the outage
					default:
						lagging = append(lagging, lag{ch, st, h.Position})
						continue
					}
				}
			}
		}
		n.log.Warn("broker reconnected: subscribers may have missed publications; asking them to resubscribe", "channel", ch)
		n.resubscribeAll(ch)
	}
	// What is ahead may be on its way; a gap followed by deliveries is
	// caught as they arrive (checkContinuity), so only a gap at the end is
	// left to find here.
	deadline := time.Now().Add(reconnectCatchUp)
	for len(lagging) > 0 && time.Now().Before(deadline) {
		time.Sleep(10 * time.Millisecond)
		lagging = slices.DeleteFunc(lagging, func(l lag) bool {
			ahead, broken := l.st.behind(l.pos)
			return ahead == 0 && !broken
		})
	}
	for _, l := range lagging {
		n.log.Warn("broker reconnected: publications missed during the outage; asking subscribers to resubscribe", "channel", l.ch)
		n.resubscribeAll(l.ch)
	}
}

// HandleOutage implements BrokerHandler. The broker's link is down, so
// nothing published from now on reaches this node until HandleReconnect:
// every subscriber is closed with CloseResubscribe at once, so that its
// client reconnects — to a healthy node, behind a load balancer that
// follows Ready — and recovers there, rather than wait in silence.
// Connections without subscriptions stay. Logged once per outage.
func (n *Node) HandleOutage(err error) { n.HandlePartialOutage(err, nil) }

// HandlePartialOutage implements PartialBrokerHandler: HandleOutage for the
// channels affects reports (every channel when affects is nil). It counts
// in herald_broker_outages_total like a whole outage: one per lost link.
func (n *Node) HandlePartialOutage(err error, affects func(channel string) bool) {
	n.metrics.brokerOutages.Add(1)
	chans := n.hub.channelCounts()
	closed := 0
	for ch := range chans {
		if affects == nil || affects(ch) {
			n.resubscribeAll(ch)
			closed++
		}
	}
	n.log.Warn("broker link lost: closed subscribers so they resubscribe where the broker is reachable",
		"err", err, "channels", closed, "partial", affects != nil)
}

var _ PartialBrokerHandler = (*Node)(nil)
