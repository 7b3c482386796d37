package pusherapi

import (
	"encoding/json"
	"reflect"
	"slices"
	"strings"
	"testing"
)

// TestOpenAPI keeps openapi.json true to the code: one operation per
// route and no other, and the webhook event's properties are
// WebhookEvent's JSON fields.
func TestOpenAPI(t *testing.T) {
	t.Parallel()
	var doc struct {
		OpenAPI    string                                `json:"openapi"`
		Paths      map[string]map[string]json.RawMessage `json:"paths"`
		Components struct {
			Schemas map[string]struct {
				Properties map[string]json.RawMessage `json:"properties"`
			} `json:"schemas"`
		} `json:"components"`
	}
	if err := json.Unmarshal(OpenAPI, &doc); err != nil || doc.OpenAPI != "3.1.0" {
		t.Fatalf("openapi.json: %v (version %q)", err, doc.OpenAPI)
	}
	var want, got []string
	for _, rt := range (&api{}).routes() {
		method, path, _ := strings.Cut(rt.pattern, " ")
		want = append(want, strings.ToLower(method)+" "+path)
	}
	for path, ops := range doc.Paths {
		for method := range ops {
			got = append(got, method+" "+path)
		}
	}
	slices.Sort(want)
	slices.Sort(got)
	if !slices.Equal(got, want) {
		t.Errorf("openapi.json describes %v\nthe handler serves %v", got, want)
	}
	var fields, props []string
	typ := reflect.TypeOf(WebhookEvent{})
	for i := 0; i < typ.NumField(); i++ {
		fields = append(fields, strings.Split(typ.Field(i).Tag.Get("json"), ",")[0])
	}
	for p := range doc.Components.Schemas["WebhookEvent"].Properties {
		props = append(props, p)
	}
	slices.Sort(fields)
	slices.Sort(props)
	if !slices.Equal(fields, props) {
		t.Errorf("WebhookEvent in openapi.json: %v, in Go: %v", props, fields)
	}
}
