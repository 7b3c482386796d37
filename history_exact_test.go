package herald

import (
	"strconv"
	"strings"
	"testing"

	"github.com/gorilla/websocket"

	"github.com/heraldhq/herald/protocol"
)

// JSON payloads reach clients byte for byte — spacing, key order and
// characters encoding/json would escape — in live pushes, in the history
// command alike (the HTTP API's history: httpapi TestAPIHistoryByteExact).
func TestHistoryByteExact(t *testing.T) {
	t.Parallel()
	s := newTestServer(t, Config{Namespaces: []Namespace{{Name: "h", HistorySize: 10}}})
	payloads := []string{
		`{ "a" : 1 , "b":[1,2 ,3]}`,
		`"<script>&amp;"`,
		`[ "\u00e9", "é" , 1e3 ]`,
		"{\"z\":1,\n\t\"a\":2}", // whitespace inside the value is kept
	}
	sub := s.client(t)
	sub.subscribeSince("h:x", nil)
	pub := s.client(t)
	for i, p := range payloads {
		// By hand: json.Marshal of a Command would compact the data first.
		frame := `{"id":` + strconv.Itoa(100+i) + `,"cmd":"publish","channel":"h:x","data":` + p + `}`
		if err := pub.ws.WriteMessage(websocket.TextMessage, []byte(frame)); err != nil {
			t.Fatal(err)
		}
		if m := pub.readJSON(); m.ID != uint64(100+i) || m.Error != nil {
			t.Fatalf("publish: %+v", m)
		}
	}
	if _, err := s.node.Publish(t.Context(), "h:x", []byte(payloads[0])); err != nil {
		t.Fatal(err)
	}
	want := append(payloads, payloads[0])

	for i, p := range want { // live pushes
		_, b := sub.read()
		if !strings.HasSuffix(string(b), `,"data":`+p+`}`) {
			t.Errorf("push %d: %s, want data %s", i, b, p)
		}
	}

	id := pub.send(protocol.Command{Cmd: "history", Channel: "h:x"})
	op, reply := pub.read()
	if op != websocket.TextMessage {
		t.Fatalf("history reply opcode %d", op)
	}
	checkHistoryBytes(t, "history command", string(reply), want)
	if !strings.HasPrefix(string(reply), `{"id":`+strconv.FormatUint(id, 10)+`,"result":{"publications":[`) {
		t.Errorf("history reply %s", reply)
	}

}

func checkHistoryBytes(t *testing.T, what, got string, want []string) {
	t.Helper()
	for i, p := range want {
		if !strings.Contains(got, `{"offset":`+strconv.Itoa(i+1)+`,"data":`+p+`}`) {
			t.Errorf("%s: publication %d is not byte for byte %s in %s", what, i+1, p, got)
		}
	}
}
