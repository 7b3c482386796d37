package natsbroker

import (
	"context"
	"errors"
	"fmt"
	"slices"
	"strconv"
	"time"

	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"

	"github.com/heraldhq/herald"
	"github.com/heraldhq/herald/internal/pubcodec"
)

// History implements herald.Broker.
//
// It reads the channel's last message (one round trip; on a channel without
// any it first stores a position-only message with a new epoch, which fixes
// the epoch from the first read), then walks the channel's messages from
// the oldest stored, one direct get each, keeping MemoryBroker's rules:
// the last HistorySize offsets (HistorySize of the newest publish), minus
// the expired prefix (each publication carries its expiry). With Limit 0 it
// stops at the first kept message, which gives Oldest.
func (b *Broker) History(ctx context.Context, channel string, opts herald.HistoryOptions) (herald.HistoryResult, error) {
	if err := ctx.Err(); err != nil {
		return herald.HistoryResult{}, err
	}
	if b.stream == nil {
		return herald.HistoryResult{}, ErrNoJetStream
	}
	if err := b.Healthy(); err != nil {
		return herald.HistoryResult{}, fmt.Errorf("natsbroker: failed to read history: %w", err)
	}
	subj := b.subjHistory + token(channel)
	last, err := b.lastOrCreate(ctx, subj)
	if err != nil {
		return herald.HistoryResult{}, err
	}
	top, _ := strconv.ParseUint(last.Header.Get(hdrOffset), 10, 64)
	epoch := last.Header.Get(hdrEpoch)
	res := herald.HistoryResult{Position: herald.StreamPosition{Offset: top, Epoch: epoch}}
	size, _ := strconv.ParseUint(last.Header.Get(hdrSize), 10, 64)
	if size == 0 || top == 0 {
		return res, nil // nothing published with history yet
	}
	lo := uint64(1)
	if top > size {
		lo = top - size + 1
	}
	onlyOldest := opts.Limit == 0 || (opts.Since != nil && opts.Since.Epoch != epoch)
	now := time.Now().UnixMilli()
	var kept []*jetstream.RawStreamMsg
	for seq := uint64(1); seq <= last.Sequence; {
		m, err := b.stream.GetMsg(ctx, seq, jetstream.WithGetMsgSubject(subj))
		if errors.Is(err, jetstream.ErrMsgNotFound) {
			break
		}
		if err != nil {
			b.storeLost(err)
			return res, fmt.Errorf("natsbroker: failed to read history: %w", err)
		}
		seq = m.Sequence + 1
		if m.Header.Get(hdrMeta) != "" || m.Header.Get(hdrEpoch) != epoch {
			continue
		}
		off, _ := strconv.ParseUint(m.Header.Get(hdrOffset), 10, 64)
		if off < lo || off > top {
			continue
		}
		if len(kept) == 0 {
			if exp, _ := strconv.ParseInt(m.Header.Get(hdrExpires), 10, 64); exp <= now {
				continue // the expired prefix
			}
			res.Oldest = off
			if onlyOldest {
				return res, nil
			}
		}
		kept = append(kept, m)
	}
	if onlyOldest {
		return res, nil
	}
	if opts.Since != nil {
		i := 0
		for i < len(kept) && offsetOf(kept[i]) <= opts.Since.Offset {
			i++
		}
		kept = kept[i:]
	}
	if opts.Limit >= 0 && len(kept) > opts.Limit {
		if opts.Reverse {
			kept = kept[len(kept)-opts.Limit:]
		} else {
			kept = kept[:opts.Limit]
		}
	}
	res.Publications = make([]*herald.Publication, 0, len(kept))
	for _, m := range kept {
		pub, err := pubcodec.Decode(channel, offsetOf(m), m.Data)
		if err != nil {
			return res, fmt.Errorf("natsbroker: malformed history message: %w", err)
		}
		pub.Epoch = epoch
		res.Publications = append(res.Publications, pub)
	}
	if opts.Reverse {
		slices.Reverse(res.Publications)
	}
	return res, nil
}

func offsetOf(m *jetstream.RawStreamMsg) uint64 {
	off, _ := strconv.ParseUint(m.Header.Get(hdrOffset), 10, 64)
	return off
}

// lastOrCreate returns the subject's last message, storing a position-only
// message with a new epoch if it has none (expecting none: if another node
// stores one first, it reads that one).
func (b *Broker) lastOrCreate(ctx context.Context, subj string) (*jetstream.RawStreamMsg, error) {
	for attempt := 0; attempt < maxAttempts; attempt++ {
		m, err := b.stream.GetLastMsgForSubject(ctx, subj)
		if err == nil {
			return m, nil
		}
		if !errors.Is(err, jetstream.ErrMsgNotFound) {
			b.storeLost(err)
			return nil, fmt.Errorf("natsbroker: failed to read history: %w", err)
		}
		hdr := nats.Header{}
		hdr.Set(hdrMeta, "1")
		hdr.Set(hdrOffset, "0")
		hdr.Set(hdrEpoch, b.newEpoch())
		popts := []jetstream.PublishOpt{jetstream.WithExpectLastSequencePerSubject(0)}
		if b.opts.Replicas > 1 { // see offsetMsgID: one first message per subject
			popts = append(popts, jetstream.WithMsgID("m."+subj))
		}
		ack, err := b.js.PublishMsg(ctx, &nats.Msg{Subject: subj, Header: hdr}, popts...)
		if isWrongLastSeq(err) || (err == nil && ack.Duplicate) {
			continue
		}
		if err != nil {
			b.storeLost(err)
			return nil, fmt.Errorf("natsbroker: failed to store the channel's epoch: %w", err)
		}
		return &jetstream.RawStreamMsg{Subject: subj, Sequence: ack.Sequence, Header: hdr}, nil
	}
	return nil, fmt.Errorf("natsbroker: failed to read history of %s: too many conflicts", subj)
}
