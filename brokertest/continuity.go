package brokertest

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"sync"
	"testing"
	"time"

	"github.com/gorilla/websocket"

	"github.com/heraldhq/herald"
)

// RunLiveSubscribe runs one herald.Node with a broker from newBroker, a
// publisher that publishes to a channel with history every 2 ms, and
// fresh subscribers that subscribe one after another while it does. It
// checks that no subscriber is closed (a false "broker outage", close
// 4006, once cut about 2 in 10 of them on NATS) and that each receives
// the publications after its subscribe position in order, with no gap and
// no duplicate.
func RunLiveSubscribe(t *testing.T, newBroker func(t *testing.T) herald.Broker) {
	node := startNode(t, newBroker(t))
	const ch = "chat:live"
	ctx, cancel := context.WithCancel(context.Background())
	var wg sync.WaitGroup
	defer func() { cancel(); wg.Wait() }()
	var pubErr error
	wg.Go(func() {
		tick := time.NewTicker(2 * time.Millisecond)
		defer tick.Stop()
		for i := 0; ; i++ {
			select {
			case <-ctx.Done():
				return
			case <-tick.C:
			}
			pctx, pcancel := context.WithTimeout(ctx, waitFor)
			_, err := node.Publish(pctx, ch, fmt.Appendf(nil, "%d", i))
			pcancel()
			if err != nil && ctx.Err() == nil {
				pubErr = err
				return
			}
		}
	})

	const subscribers, each = 40, 15
	for i := range subscribers {
		c := dialNode(t, node, fmt.Sprintf("sub%d", i))
		rep := c.call(t, map[string]any{"cmd": "subscribe", "channel": ch})
		var pos struct{ Offset uint64 }
		if err := json.Unmarshal(rep.Result, &pos); err != nil {
			t.Fatalf("subscribe result %s: %v", rep.Result, err)
		}
		next := pos.Offset + 1
		for got := 0; got < each; got++ {
			f, err := c.readPush()
			var ce *websocket.CloseError
			if errors.As(err, &ce) {
				t.Fatalf("subscriber %d closed with %d %q after %d publications: no fault was made", i, ce.Code, ce.Text, got)
			}
			if err != nil {
				t.Fatalf("subscriber %d: %v", i, err)
			}
			if f.Offset != next {
				t.Fatalf("subscriber %d got offset %d, want %d (subscribed at %d)", i, f.Offset, next, pos.Offset)
			}
			next++
		}
		_ = c.ws.Close()
	}
	cancel()
	wg.Wait()
	if pubErr != nil {
		t.Fatalf("publish: %v", pubErr)
	}
}

// readPush returns the next push (kept or read), or the read's error.
func (c *wsClient) readPush() (frame, error) {
	if len(c.pushes) > 0 {
		f := c.pushes[0]
		c.pushes = c.pushes[1:]
		return f, nil
	}
	_ = c.ws.SetReadDeadline(time.Now().Add(waitFor))
	_, b, err := c.ws.ReadMessage()
	if err != nil {
		return frame{}, err
	}
	var f frame
	if err := json.Unmarshal(b, &f); err != nil {
		return frame{}, fmt.Errorf("bad frame %s: %w", b, err)
	}
	return f, nil
}
