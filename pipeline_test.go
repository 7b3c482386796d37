package herald

import (
	"context"
	"encoding/json"
	"testing"

	"github.com/heraldhq/herald/protocol"
)

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
		wire = append(wire, rawFrame(true, 0, 1, payload)...) // a final, masked text frame
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
