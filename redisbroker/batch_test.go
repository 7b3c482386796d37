package redisbroker_test

import (
	"context"
	"fmt"
	"testing"
	"time"

	"github.com/heraldhq/herald"
	"github.com/heraldhq/herald/brokertest"
)

// TestPublishBatchNoScript: a batch sent to a Redis that does not have the
// publish script (as after a restart, here SCRIPT FLUSH) is published all
// the same, in order, each publication once.
func TestPublishBatchNoScript(t *testing.T) {
	b := newBroker(t, testOpts{})
	rec, _ := brokertest.Start(t, b)
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	const ch = "chat:noscript"
	if err := b.Subscribe(ctx, ch); err != nil {
		t.Fatal(err)
	}
	rc := rawClient(t)
	if err := rc.Do(ctx, rc.B().ScriptFlush().Build()).Error(); err != nil {
		t.Fatal(err)
	}
	pubs := make([]*herald.Publication, 5)
	opts := make([]herald.PublishOptions, len(pubs))
	for i := range pubs {
		pubs[i] = &herald.Publication{Channel: ch, Data: []byte(fmt.Sprint(i))}
		opts[i] = herald.PublishOptions{HistorySize: 10, HistoryTTL: time.Minute}
	}
	res := make([]herald.PublishResult, len(pubs))
	errs := make([]error, len(pubs))
	b.PublishBatch(ctx, pubs, opts, res, errs)
	for i := range pubs {
		if errs[i] != nil || res[i].Offset != uint64(i+1) {
			t.Errorf("publication %d: %+v, %v; want offset %d", i, res[i], errs[i], i+1)
		}
	}
	got := rec.WaitPubs(t, ch, len(pubs))
	for i, p := range got {
		if string(p.Data) != fmt.Sprint(i) {
			t.Fatalf("delivery %d is %q, want %d (all: %d delivered)", i, p.Data, i, len(got))
		}
	}
}
