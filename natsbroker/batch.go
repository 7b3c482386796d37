package natsbroker

import (
	"context"
	"fmt"
	"slices"

	"github.com/nats-io/nats.go/jetstream"

	"github.com/heraldhq/herald"
	"github.com/heraldhq/herald/internal/pubcodec"
)

var _ herald.BatchPublisher = (*Broker)(nil)

// PublishBatch implements herald.BatchPublisher.
//
// Publications with history are pipelined: each round sends the next
// publication of every channel in the batch as an asynchronous JetStream
// publish, each expecting its channel's last sequence, then waits for all
// their acknowledgements. A channel's next publication must expect the
// sequence its previous one got, so a batch takes as many round trips as
// the most publications one channel has in it, instead of one each. An
// answer other than a plain acknowledgement (another node published to the
// channel meanwhile, a duplicate) is settled as Publish settles it, for that
// publication alone, before the channel's next one is sent; an error fails
// that publication alone. The stripes of the batch's channels are held for
// the whole batch (taken in stripe order, so two batches cannot deadlock),
// which keeps this node's publications of one channel in order, as Publish
// does. Channels with a publication without history (a presence event, a
// namespace without history) are published one at a time, as Publish does.
func (b *Broker) PublishBatch(ctx context.Context, pubs []*herald.Publication, opts []herald.PublishOptions, res []herald.PublishResult, errs []error) {
	fail := func(err error) {
		for i := range pubs {
			res[i], errs[i] = herald.PublishResult{}, err
		}
	}
	if err := ctx.Err(); err != nil {
		fail(err)
		return
	}
	if err := b.Healthy(); err != nil {
		fail(fmt.Errorf("natsbroker: failed to publish: %w", err))
		return
	}
	queues := b.batchQueues(pubs, opts)
	var hist []*chanQueue
	for _, q := range queues {
		if q.plain {
			for _, i := range q.idx {
				res[i], errs[i] = b.Publish(ctx, pubs[i], opts[i])
			}
			continue
		}
		hist = append(hist, q)
	}
	if len(hist) == 0 {
		return
	}
	unlock := b.lockStripes(hist)
	defer unlock()
	bodies := make([][]byte, len(pubs))
	for _, q := range hist {
		for _, i := range q.idx {
			bodies[i] = pubcodec.Append(make([]byte, 0, pubcodec.Size(pubs[i])), pubs[i])
		}
	}
	type sent struct {
		q    *chanQueue
		i    int
		last lastMsg
		f    jetstream.PubAckFuture
	}
	round := make([]sent, 0, len(hist))
	for {
		round = round[:0]
		for _, q := range hist {
			if len(q.idx) == 0 {
				continue
			}
			i := q.idx[0]
			q.idx = q.idx[1:]
			last, ok := q.st.last[q.ch]
			if !ok {
				var err error
				if last, err = b.lastMsg(ctx, q.subj); err != nil {
					res[i], errs[i] = herald.PublishResult{}, err
					continue
				}
			}
			msg, popts := b.historyMsg(q.subj, pubs[i], bodies[i], opts[i], last)
			f, err := b.js.PublishMsgAsync(msg, popts...)
			if err != nil {
				// Not sent (the connection is closed, or too many
				// publishes await their acknowledgement): as Publish.
				res[i], errs[i] = b.publishHistoryLocked(ctx, q.st, pubs[i], bodies[i], opts[i])
				continue
			}
			round = append(round, sent{q: q, i: i, last: last, f: f})
		}
		if len(round) == 0 {
			return
		}
		for _, s := range round {
			i, ch := s.i, s.q.ch
			var (
				ack *jetstream.PubAck
				err error
			)
			select {
			case ack = <-s.f.Ok():
			case err = <-s.f.Err():
			case <-ctx.Done():
				err = ctx.Err()
			}
			switch {
			case err == nil && !ack.Duplicate:
				res[i] = s.q.st.stored(pubs[i], s.last, ack.Sequence)
			case err == nil || isWrongLastSeq(err):
				// A duplicate, or another node published first: nothing
				// was stored, so Publish's retries settle it.
				delete(s.q.st.last, ch)
				res[i], errs[i] = b.publishHistoryLocked(ctx, s.q.st, pubs[i], bodies[i], opts[i])
			default:
				// It may have been stored all the same.
				delete(s.q.st.last, ch)
				b.storeLost(err)
				res[i], errs[i] = herald.PublishResult{}, fmt.Errorf("natsbroker: failed to publish to history: %w", err)
			}
		}
	}
}

// chanQueue is the publications of one channel in a batch: their indexes,
// in batch order.
type chanQueue struct {
	ch    string
	subj  string // the channel's history subject
	st    *stripe
	sti   int // st's index in Broker.stripes
	idx   []int
	plain bool // one of them has no history
}

// batchQueues groups a batch's publications by channel, in the order of
// each channel's first publication.
func (b *Broker) batchQueues(pubs []*herald.Publication, opts []herald.PublishOptions) []*chanQueue {
	var queues []*chanQueue
	byCh := make(map[string]*chanQueue, len(pubs))
	for i, pub := range pubs {
		q := byCh[pub.Channel]
		if q == nil {
			sti := b.stripeIndex(pub.Channel)
			q = &chanQueue{ch: pub.Channel, subj: b.subjHistory + token(pub.Channel), st: &b.stripes[sti], sti: sti}
			byCh[pub.Channel] = q
			queues = append(queues, q)
		}
		q.idx = append(q.idx, i)
		if opts[i].HistorySize <= 0 || pub.Kind != herald.KindPublication || b.stream == nil {
			q.plain = true
		}
	}
	return queues
}

// lockStripes locks the stripes of queues, each once, in index order, and
// returns the function that unlocks them.
func (b *Broker) lockStripes(queues []*chanQueue) (unlock func()) {
	idx := make([]int, 0, len(queues))
	for _, q := range queues {
		idx = append(idx, q.sti)
	}
	slices.Sort(idx)
	idx = slices.Compact(idx)
	for _, i := range idx {
		b.stripes[i].mu.Lock()
	}
	return func() {
		for _, i := range idx {
			b.stripes[i].mu.Unlock()
		}
	}
}
