package herald

import (
	"context"
	"encoding/binary"
	"encoding/json"
	"fmt"
	"testing"
	"time"

	"github.com/heraldhq/herald/protocol"
)

// TestPipelinedPublishMemory: with the in-memory broker (a BatchPublisher),
// 150 publishes a client sends back to back in one write, to two channels,
// every tenth repeating an earlier idempotency key, are answered in the
// order of the commands with each channel's offsets contiguous and a repeat
// as a duplicate of its original; a subscriber gets every publication that
// is not a duplicate, in order; and the replies go out one write per batch,
// not one each (brokertest.RunPipelinedPublish checks the same through the
// networked brokers, across two nodes).
func TestPipelinedPublishMemory(t *testing.T) {
	t.Parallel()
	s := newTestServer(t, Config{Namespaces: []Namespace{
		{Name: ""},
		{Name: "chat", HistorySize: 1000, HistoryTTL: time.Minute},
	}})
	chans := []string{"chat:pipe.a", "chat:pipe.b"}
	bob := s.client(t)
	for _, ch := range chans {
		bob.subscribe(ch)
	}
	alice := s.client(t)
	alice.mustOK(protocol.Command{Cmd: "ping"}) // the connection is up

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
	before := scrape(t, s.node)
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
		m := alice.readJSON()
		if m.ID != uint64(i+100) {
			t.Fatalf("reply %d has id %d, want %d: replies must come in the order of the commands", i, m.ID, i+100)
		}
		if m.Error != nil {
			t.Fatalf("publish %d: %s: %s", i, m.Error.Code, m.Error.Message)
		}
		if err := json.Unmarshal(m.Result, &results[i]); err != nil {
			t.Fatalf("publish %d: result %s: %v", i, m.Result, err)
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
	delivered := len(want[chans[0]]) + len(want[chans[1]])
	for range delivered {
		m := bob.readJSON()
		if m.Push != "pub" {
			t.Fatalf("bob got %+v, want a publication", m)
		}
		got[m.Channel] = append(got[m.Channel], string(m.Data))
	}
	for _, ch := range chans {
		if fmt.Sprint(got[ch]) != fmt.Sprint(want[ch]) {
			t.Errorf("bob got on %s:\n%v\nwant\n%v", ch, got[ch], want[ch])
		}
	}
	after := scrape(t, s.node)
	batches := int(after["herald_publish_batches_total"] - before["herald_publish_batches_total"])
	if batches == 0 || batches*2 > total {
		t.Errorf("%d publishes in one write went in %d batches; want at least one, of two or more on average", total, batches)
	}
	// Bob's deliveries take a write each at most; alice's replies take one
	// a batch (a heartbeat ping may add one), where one each would be 150.
	if writes := int(after["herald_socket_writes_total"] - before["herald_socket_writes_total"]); writes > delivered+batches+1 {
		t.Errorf("%d deliveries and the replies to %d publishes in %d batches took %d socket writes; want at most one a delivery and one a batch", delivered, total, batches, writes)
	}
}

// TestPipelinedPublishHookNotHeld: a publish that goes to the publish hook
// does not hold back the publishes read before it in the same write. The
// first publish (to a channel the hook does not cover) reaches its
// subscriber and its reply is sent while the hook is still deciding on the
// second; without the flush before the hook, both would wait for it.
func TestPipelinedPublishHookNotHeld(t *testing.T) {
	t.Parallel()
	asked := make(chan struct{})
	release := make(chan struct{})
	s := newTestServer(t, Config{Namespaces: hookNamespaces, Hooks: Hooks{
		PublishNamespaces: []string{"h"},
		Publish: func(ctx context.Context, e *PublishEvent) (*PublishReply, error) {
			close(asked)
			select {
			case <-release:
				return nil, nil
			case <-ctx.Done():
				return nil, ctx.Err()
			}
		},
	}})
	bob := s.client(t)
	bob.subscribe("room")
	alice := s.client(t)
	alice.mustOK(protocol.Command{Cmd: "ping"})
	var wire []byte
	for i, ch := range []string{"room", "h:kept"} {
		payload, _ := json.Marshal(map[string]any{"id": i + 100, "cmd": "publish", "channel": ch, "data": i})
		wire = appendMaskedText(wire, payload)
	}
	if _, err := alice.ws.NetConn().Write(wire); err != nil {
		t.Fatal(err)
	}
	<-asked
	if m := bob.readJSON(); m.Push != "pub" || string(m.Data) != "0" {
		t.Fatalf("bob got %+v, want the first publication while the hook decides on the second", m)
	}
	if m := alice.readJSON(); m.ID != 100 || m.Error != nil {
		t.Fatalf("alice got %+v, want the reply to her first publish while the hook decides on the second", m)
	}
	close(release)
	if m := alice.readJSON(); m.ID != 101 || m.Error != nil {
		t.Fatalf("alice got %+v, want the reply to her second publish", m)
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
