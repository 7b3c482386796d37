package herald

import (
	"context"
	"testing"

	"go.uber.org/goleak"

	"github.com/heraldhq/herald/protocol"
)

func TestMain(m *testing.M) { goleak.VerifyTestMain(m) }

func TestPublishSubscribe(t *testing.T) {
	t.Parallel()
	ts := newTestServer(t, Config{})
	a, b := ts.client(t), ts.client(t)
	a.subscribe("chat")
	b.mustOK(protocol.Command{Cmd: "publish", Channel: "chat", Data: []byte(`{"text":"hi"}`)})
	m := a.readJSON()
	if m.Push != "pub" || m.Channel != "chat" || string(m.Data) != `{"text":"hi"}` {
		t.Fatalf("got %+v", m)
	}
	if _, err := ts.node.Publish(context.Background(), "chat", []byte(`"from go"`)); err != nil {
		t.Fatal(err)
	}
	if m := a.readJSON(); string(m.Data) != `"from go"` {
		t.Fatalf("got %+v", m)
	}
}
