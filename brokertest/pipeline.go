package brokertest

import (
	"encoding/binary"
	"encoding/json"
	"fmt"
	"strings"
	"testing"

	"github.com/heraldhq/herald"
)

// RunPipelinedPublish runs two herald.Nodes joined by brokers from
// newBroker and checks, with real WebSocket clients, what a client that
// sends its publish commands back to back (without waiting for replies)
// gets: 150 publishes to two channels in one write on node A, every tenth
// repeating an earlier idempotency key. The publisher's replies come in
// the order of its commands, with each channel's offsets contiguous and a
// repeat answered as a duplicate of its original; a subscriber on node B
// receives every publication that is not a duplicate, in order, with those
// offsets. Where the broker is a herald.BatchPublisher the publishes went
// in batches (herald_publish_batches_total on node A).
func RunPipelinedPublish(t *testing.T, newBroker func(t *testing.T) herald.Broker) {
	b := newBroker(t)
	nodeA, nodeB := startNodeHistory(t, b, 1000), startNodeHistory(t, newBroker(t), 1000)
	pipelined(t, b, nodeA, nodeB)
}

// RunPipelinedPublishOneNode is RunPipelinedPublish on one node, for a
// single-node broker (such as herald.MemoryBroker): the subscriber is on
// the publisher's node, and its deliveries are allowed a socket write each
// besides the replies' one per batch.
func RunPipelinedPublishOneNode(t *testing.T, newBroker func(t *testing.T) herald.Broker) {
	b := newBroker(t)
	node := startNodeHistory(t, b, 1000)
	pipelined(t, b, node, node)
}

// pipelined is RunPipelinedPublish's test, the publisher on nodeA and the
// subscriber on nodeB (which may be nodeA).
func pipelined(t *testing.T, b herald.Broker, nodeA, nodeB *testNode) {
	_, batching := b.(herald.BatchPublisher)
	base := "chat:" + strings.NewReplacer("/", ".", "#", "@").Replace(t.Name())
	chans := []string{base + ".a", base + ".b"}
	bob := dialNode(t, nodeB, "bob")
	for _, ch := range chans {
		bob.call(t, map[string]any{"cmd": "subscribe", "channel": ch})
	}
	alice := dialNode(t, nodeA, "alice")
	alice.call(t, map[string]any{"cmd": "ping"}) // the connection is up

	const total = 150
	var wire []byte
	for i := range total {
		cmd := map[string]any{"id": i + 100, "cmd": "publish", "channel": chans[i%2], "data": map[string]int{"n": i}}
		switch i % 10 {
		case 4:
			cmd["idempotency_key"] = fmt.Sprint("k", i)
		case 8: // the same channel as i-4
			cmd["idempotency_key"] = fmt.Sprint("k", i-4)
		}
		payload, _ := json.Marshal(cmd)
		wire = appendMaskedText(wire, payload)
	}
	writes0 := metric(t, nodeA, "herald_socket_writes_total")
	if _, err := alice.ws.NetConn().Write(wire); err != nil {
		t.Fatal(err)
	}

	type pos struct {
		Offset    uint64 `json:"offset"`
		Duplicate bool   `json:"duplicate"`
	}
	results := make([]pos, total)
	next := map[string]uint64{chans[0]: 1, chans[1]: 1}
	want := map[string][]string{}
	for i := range total {
		f := alice.read(t)
		if f.ID != uint64(i+100) {
			t.Fatalf("reply %d has id %d, want %d: replies must come in the order of the commands", i, f.ID, i+100)
		}
		if f.Error != nil {
			t.Fatalf("publish %d: %s: %s", i, f.Error.Code, f.Error.Message)
		}
		if err := json.Unmarshal(f.Result, &results[i]); err != nil {
			t.Fatalf("publish %d: result %s: %v", i, f.Result, err)
		}
		ch := chans[i%2]
		if i%10 == 8 {
			if r := results[i]; !r.Duplicate || r.Offset != results[i-4].Offset {
				t.Errorf("publish %d repeats the key of %d: %+v, want offset %d marked duplicate", i, i-4, r, results[i-4].Offset)
			}
			continue
		}
		if r := results[i]; r.Duplicate || r.Offset != next[ch] {
			t.Errorf("publish %d to %s: %+v, want offset %d", i, ch, r, next[ch])
		}
		next[ch]++
		want[ch] = append(want[ch], fmt.Sprintf(`{"n":%d}`, i))
	}
	got := map[string][]string{}
	for len(got[chans[0]])+len(got[chans[1]]) < len(want[chans[0]])+len(want[chans[1]]) {
		f := bob.waitPush(t, "pub")
		if exp := uint64(len(got[f.Channel]) + 1); f.Offset != exp {
			t.Fatalf("bob got offset %d on %s, want %d", f.Offset, f.Channel, exp)
		}
		got[f.Channel] = append(got[f.Channel], string(f.Data))
	}
	for _, ch := range chans {
		if fmt.Sprint(got[ch]) != fmt.Sprint(want[ch]) {
			t.Errorf("bob got on %s:\n%v\nwant\n%v", ch, got[ch], want[ch])
		}
	}
	if batching {
		batches := int(metric(t, nodeA, "herald_publish_batches_total"))
		if batches == 0 || batches*2 > total {
			t.Errorf("%d publishes in one write went in %d batches; want at least one, of two or more on average", total, batches)
		}
		// A batch's replies go out in one write (a heartbeat ping may add
		// one). On two nodes Alice is node A's only client, so its writes
		// are her replies; on one, Bob's deliveries take a write each at
		// most.
		allowed := batches + 1
		if nodeB == nodeA {
			allowed += len(want[chans[0]]) + len(want[chans[1]])
		}
		if writes := int(metric(t, nodeA, "herald_socket_writes_total") - writes0); writes > allowed {
			t.Errorf("the replies to %d publishes in %d batches (and the deliveries on this node) took %d socket writes; want at most %d, one a batch", total, batches, writes, allowed)
		}
	}
}

// appendMaskedText appends a client's text frame of payload: masked, as a
// client's must be, with a zero key (which leaves the bytes as they are).
func appendMaskedText(b, payload []byte) []byte {
	b = append(b, 0x81)
	switch n := len(payload); {
	case n < 126:
		b = append(b, 0x80|byte(n))
	default:
		b = append(b, 0x80|126)
		b = binary.BigEndian.AppendUint16(b, uint16(n))
	}
	b = append(b, 0, 0, 0, 0)
	return append(b, payload...)
}
