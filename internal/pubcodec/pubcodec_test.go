package pubcodec

import (
	"encoding/json"
	"reflect"
	"testing"

	"github.com/heraldhq/herald"
)

func TestRoundTrip(t *testing.T) {
	t.Parallel()
	pubs := []*herald.Publication{
		{Channel: "c", Data: []byte(`{"a":1}`)},
		{Channel: "c", Data: []byte{0, 1, 2, 0xff}, Binary: true, Origin: "client-1", Offset: 7},
		{Channel: "c", Kind: herald.KindJoin, Presence: &herald.ClientPresence{Client: "x", User: "u", Info: json.RawMessage(`{"n":"A"}`)}},
		{Channel: "c", Kind: herald.KindLeave, Presence: &herald.ClientPresence{Client: "x"}},
		{Channel: "c", Data: []byte(`{"px":1}`), Key: "AAPL", Offset: 3},
		{Channel: "c", Data: []byte{1, 2}, Binary: true, Key: "k", Origin: "o"},
	}
	for _, p := range pubs {
		b := Append(nil, p)
		if len(b) != Size(p) {
			t.Errorf("Size = %d, encoding is %d bytes", Size(p), len(b))
		}
		got, err := Decode(p.Channel, p.Offset, b)
		if err != nil {
			t.Fatal(err)
		}
		if !reflect.DeepEqual(got, p) {
			t.Errorf("round trip: got %+v, want %+v", got, p)
		}
	}
}

func FuzzDecode(f *testing.F) {
	f.Add(Append(nil, &herald.Publication{Data: []byte("x"), Origin: "o"}))
	f.Add(Append(nil, &herald.Publication{Kind: herald.KindJoin, Presence: &herald.ClientPresence{Client: "c"}}))
	f.Fuzz(func(t *testing.T, b []byte) {
		p, err := Decode("c", 1, b)
		if err != nil {
			return
		}
		if again := Append(nil, p); string(again) != string(b) && len(b) > 0 {
			// Non-canonical uvarints decode too; re-decoding must agree.
			q, err := Decode("c", 1, again)
			if err != nil || !reflect.DeepEqual(p, q) {
				t.Fatalf("re-encoding changed the publication: %v", err)
			}
		}
	})
}
