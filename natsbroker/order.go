package natsbroker

import (
	"context"
	"errors"
	"slices"
	"strconv"
	"time"

	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"

	"github.com/heraldhq/herald"
)

// Delivery order.
//
// The stream stores a channel's history messages in offset order (each
// publish expects the subject's last sequence), but its republished copies
// can reach a subscriber out of that order when two nodes publish to the
// channel at once: seen as offset 43 delivered before 42, a few times in a
// hundred runs of brokertest's OrderingTwoNodes, on nats-server 2.9 (the
// server republishes each message in the context of the connection that
// published it, and two connections' messages are not ordered with each
// other). herald.Broker promises offset order, and the node takes a jump
// for lost publications, so a swap would cut healthy subscribers.
//
// So each subscribed channel puts its history deliveries back in order: a
// publication ahead of the next expected offset is held until the ones
// before it arrive, or for reorderWait at most — past it, what is missing
// is taken as lost, and the held ones are delivered, so that the node sees
// the gap. The next expected offset comes from the channel's last message,
// read once the subscription is in place (before that, deliveries are
// held). Publications without an offset (no history, presence events) are
// delivered as they come: they have no order across publishers.

// reorderWait bounds how long a publication waits for the ones before it.
// Swaps seen are of adjacent offsets, microseconds apart; a real gap (a
// broker outage) is noticed this much later.
const reorderWait = 500 * time.Millisecond

// chanSub is this node's subscription to one channel. sub is set once;
// the rest is guarded by the channel's deliverLock.
type chanSub struct {
	sub *nats.Subscription

	based bool   // next is known
	next  uint64 // the offset to deliver next (0: take the first that comes)
	epoch string
	held  []*herald.Publication // arrived ahead of next, by offset
	// timer gives up waiting for the ones before held[0]; gen tells the
	// current timer's callback from a stale one.
	timer   *time.Timer
	gen     uint64
	waiting uint64 // the held offset the timer waits for
}

// stop drops what is held. The channel's deliverLock must be held.
func (cs *chanSub) stop() {
	cs.stopTimer()
	cs.held = nil
}

func (cs *chanSub) stopTimer() {
	if cs.timer != nil {
		cs.timer.Stop()
		cs.timer = nil
	}
	cs.gen++
}

// hold keeps pub until the publications before it arrive.
func (cs *chanSub) hold(pub *herald.Publication) {
	i, found := slices.BinarySearchFunc(cs.held, pub.Offset, func(p *herald.Publication, off uint64) int {
		switch {
		case p.Offset < off:
			return -1
		case p.Offset > off:
			return 1
		}
		return 0
	})
	if !found {
		cs.held = slices.Insert(cs.held, i, pub)
	}
}

// inOrder delivers pub, a delivery of the subscription cs, in offset order.
// The channel's deliverLock must be held.
func (b *Broker) inOrder(channel string, cs *chanSub, pub *herald.Publication) {
	if pub.Offset == 0 {
		b.h.HandlePublication(pub)
		return
	}
	if !cs.based {
		cs.hold(pub)
		return
	}
	if cs.epoch != "" && pub.Epoch != "" && pub.Epoch != cs.epoch {
		// The history started over (a server that restarted empty): what
		// is held is of the old epoch, and offsets count from here.
		b.release(cs)
		cs.next = 0
	}
	if pub.Epoch != "" {
		cs.epoch = pub.Epoch
	}
	switch {
	case cs.next == 0 || pub.Offset == cs.next:
		b.h.HandlePublication(pub)
		cs.next = pub.Offset + 1
		b.drain(channel, cs)
	case pub.Offset < cs.next:
		// Delivered already, or stored before the subscription's base was
		// read: the node reads those from history.
	default:
		first := len(cs.held) == 0 || pub.Offset < cs.held[0].Offset
		cs.hold(pub)
		if first {
			b.wait(channel, cs)
		}
	}
}

// wait (re)starts the wait for the publications before the first held one:
// each gets reorderWait from when it became the first.
func (b *Broker) wait(channel string, cs *chanSub) {
	cs.stopTimer()
	gen := cs.gen
	cs.waiting = cs.held[0].Offset
	wait := reorderWait
	if b.reorderWait > 0 {
		wait = b.reorderWait // tests
	}
	cs.timer = time.AfterFunc(wait, func() { b.timedOut(channel, cs, gen) })
}

// drain delivers the held publications that are next in order.
func (b *Broker) drain(channel string, cs *chanSub) {
	for len(cs.held) > 0 && cs.held[0].Offset <= cs.next {
		p := cs.held[0]
		cs.held = cs.held[1:]
		if p.Offset == cs.next {
			b.h.HandlePublication(p)
			cs.next++
		}
	}
	if len(cs.held) == 0 {
		cs.stopTimer()
	} else if cs.held[0].Offset != cs.waiting {
		b.wait(channel, cs) // a new first: its own full wait
	}
}

// release delivers everything held, in order, taking what is missing
// before each as lost.
func (b *Broker) release(cs *chanSub) {
	for _, p := range cs.held {
		if p.Offset >= cs.next {
			b.h.HandlePublication(p)
			cs.next = p.Offset + 1
		}
	}
	cs.stop()
}

// timedOut runs when held publications waited reorderWait: the ones before
// them are not coming.
func (b *Broker) timedOut(channel string, cs *chanSub, gen uint64) {
	l := b.deliverLock(channel)
	l.Lock()
	defer l.Unlock()
	b.mu.Lock()
	current := b.subs[channel] == cs
	b.mu.Unlock()
	if !current || cs.gen != gen {
		return // unsubscribed, or drained or restarted meanwhile
	}
	cs.timer = nil
	if len(cs.held) > 0 {
		b.log.Debug("history deliveries missing: delivering what came after them", "channel", channel, "from", cs.next, "to", cs.held[0].Offset-1)
	}
	b.release(cs)
}

// setBase reads the channel's position once its subscription is in place,
// so that deliveries can be ordered from the first: what was stored before
// it is the node's to read from history. Without JetStream, or when the
// read fails, the first delivery sets the order.
func (b *Broker) setBase(ctx context.Context, channel string, cs *chanSub) {
	var next uint64
	var epoch string
	if b.stream != nil {
		m, err := b.stream.GetLastMsgForSubject(ctx, b.subjHistory+token(channel))
		switch {
		case err == nil:
			off, _ := strconv.ParseUint(m.Header.Get(hdrOffset), 10, 64)
			next, epoch = off+1, m.Header.Get(hdrEpoch)
		case errors.Is(err, jetstream.ErrMsgNotFound):
			next = 1 // a channel with no message yet: its first offset is 1
		default:
			b.log.Debug("failed to read a channel's position: its first delivery sets the order", "channel", channel, "err", err)
		}
	}
	l := b.deliverLock(channel)
	l.Lock()
	defer l.Unlock()
	b.mu.Lock()
	current := b.subs[channel] == cs
	b.mu.Unlock()
	if !current {
		return
	}
	cs.based, cs.next, cs.epoch = true, next, epoch
	held := cs.held
	cs.held = nil
	for _, p := range held {
		b.inOrder(channel, cs, p)
	}
}
