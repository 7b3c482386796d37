package httphooks

import (
	"encoding/json"
	"os"
	"reflect"
	"slices"
	"strings"
	"testing"

	"github.com/heraldhq/herald"
)

// TestOpenAPIWebhooks keeps httpapi/openapi.json's webhooks true to the
// wire: one per hook, and each request's and result's properties are the
// JSON fields of the types here.
func TestOpenAPIWebhooks(t *testing.T) {
	t.Parallel()
	b, err := os.ReadFile("../httpapi/openapi.json")
	if err != nil {
		t.Fatal(err)
	}
	type schema struct {
		Properties map[string]json.RawMessage `json:"properties"`
	}
	var doc struct {
		Webhooks map[string]struct {
			Post struct {
				RequestBody struct {
					Content map[string]struct{ Schema schema } `json:"content"`
				} `json:"requestBody"`
				Responses map[string]struct {
					Content map[string]struct {
						Schema struct {
							Properties struct{ Result schema } `json:"properties"`
						}
					} `json:"content"`
				} `json:"responses"`
			} `json:"post"`
		} `json:"webhooks"`
	}
	if err := json.Unmarshal(b, &doc); err != nil {
		t.Fatal(err)
	}
	fields := func(v any) []string {
		var names []string
		typ := reflect.TypeOf(v)
		for i := 0; i < typ.NumField(); i++ {
			names = append(names, strings.Split(typ.Field(i).Tag.Get("json"), ",")[0])
		}
		slices.Sort(names)
		return names
	}
	keys := func(s schema) []string {
		var names []string
		for k := range s.Properties {
			names = append(names, k)
		}
		slices.Sort(names)
		return names
	}
	for _, tc := range []struct {
		hook        string
		req, result any
	}{
		{"connect", ConnectRequest{}, ConnectResult{}},
		{"refresh", RefreshRequest{}, RefreshResult{}},
		{"subscribe", SubscribeRequest{}, SubscribeResult{}},
		{"publish", PublishRequest{}, PublishResult{}},
		{"rpc", RPCRequest{}, RPCResult{}},
		{"disconnected", DisconnectedRequest{}, nil},
		{"unsubscribed", UnsubscribedRequest{}, nil},
	} {
		w, ok := doc.Webhooks[tc.hook]
		if !ok {
			t.Errorf("no webhook %s", tc.hook)
			continue
		}
		if got, want := keys(w.Post.RequestBody.Content["application/json"].Schema), fields(tc.req); !slices.Equal(got, want) {
			t.Errorf("%s request: documented %v, sent %v", tc.hook, got, want)
		}
		if tc.result != nil {
			res := w.Post.Responses["200"].Content["application/json"].Schema.Properties.Result
			if got, want := keys(res), fields(tc.result); !slices.Equal(got, want) {
				t.Errorf("%s result: documented %v, read %v", tc.hook, got, want)
			}
		}
	}
	// The events batch: {"events":[herald.Event...]}.
	var batch struct {
		Webhooks map[string]struct {
			Post struct {
				RequestBody struct {
					Content map[string]struct {
						Schema struct {
							Properties struct {
								Events struct{ Items schema } `json:"events"`
							} `json:"properties"`
						}
					} `json:"content"`
				} `json:"requestBody"`
			} `json:"post"`
		} `json:"webhooks"`
	}
	if err := json.Unmarshal(b, &batch); err != nil {
		t.Fatal(err)
	}
	if ev, ok := doc.Webhooks["events"]; !ok {
		t.Error("no webhook events")
	} else if got, want := keys(ev.Post.RequestBody.Content["application/json"].Schema), fields(WebhookBatch{}); !slices.Equal(got, want) {
		t.Errorf("events batch: documented %v, sent %v", got, want)
	}
	items := batch.Webhooks["events"].Post.RequestBody.Content["application/json"].Schema.Properties.Events.Items
	if got, want := keys(items), fields(herald.Event{}); !slices.Equal(got, want) {
		t.Errorf("event: documented %v, sent %v", got, want)
	}
	if len(doc.Webhooks) != len(hookNames)+1 {
		t.Errorf("%d webhooks documented, %d hooks and the events batch", len(doc.Webhooks), len(hookNames))
	}
}
