package envelope

import (
	"encoding/json"
	"os"
	"reflect"
	"sort"
	"testing"
)

// eventSchema is what the tests read of schemas/event.schema.json.
type eventSchema struct {
	Required   []string `json:"required"`
	Properties map[string]struct {
		Enum []string `json:"enum"`
	} `json:"properties"`
	AllOf []struct {
		If struct {
			Properties struct {
				EventType struct {
					Const string `json:"const"`
				} `json:"event_type"`
			} `json:"properties"`
		} `json:"if"`
		Then struct {
			Properties struct {
				Payload struct {
					Properties map[string]json.RawMessage `json:"properties"`
					Required   []string                   `json:"required"`
				} `json:"payload"`
			} `json:"properties"`
		} `json:"then"`
	} `json:"allOf"`
}

func readEventSchema(t *testing.T) eventSchema {
	t.Helper()
	raw, err := os.ReadFile("../event.schema.json")
	if err != nil {
		t.Fatal(err)
	}
	var schema eventSchema
	if err := json.Unmarshal(raw, &schema); err != nil {
		t.Fatal(err)
	}
	return schema
}

// TestJSONSchemaMatchesDecoder keeps schemas/event.schema.json, which other
// languages validate against, in step with the decoder's rules.
func TestJSONSchemaMatchesDecoder(t *testing.T) {
	schema := readEventSchema(t)
	var types []string
	for _, ty := range Types {
		types = append(types, string(ty))
	}
	if !reflect.DeepEqual(schema.Properties["event_type"].Enum, types) {
		t.Fatalf("event_type enum %v, decoder %v", schema.Properties["event_type"].Enum, types)
	}
	if want := []string{"tenant_id", "session_id", "seq", "ts_unix_ms", "event_type"}; !reflect.DeepEqual(schema.Required, want) {
		t.Fatalf("required %v", schema.Required)
	}
	wire := map[string]bool{}
	for _, f := range wireFields {
		wire[f] = true
	}
	for name := range schema.Properties {
		if !wire[name] {
			t.Errorf("schema property %q is not an envelope field", name)
		}
		delete(wire, name)
	}
	if len(wire) != 0 {
		t.Errorf("envelope fields missing from the schema: %v", wire)
	}
	seen := 0
	for _, c := range schema.AllOf {
		ty := Type(c.If.Properties.EventType.Const)
		rules, ok := payloadRules[ty]
		if !ok {
			t.Errorf("schema has payload rules for unknown type %q", ty)
			continue
		}
		seen++
		var fields, required []string
		for _, r := range rules {
			fields = append(fields, r.name)
			if r.required {
				required = append(required, r.name)
			}
		}
		var sFields []string
		for f := range c.Then.Properties.Payload.Properties {
			sFields = append(sFields, f)
		}
		sort.Strings(fields)
		sort.Strings(sFields)
		sort.Strings(required)
		sReq := append([]string(nil), c.Then.Properties.Payload.Required...)
		sort.Strings(sReq)
		if !reflect.DeepEqual(fields, sFields) || !reflect.DeepEqual(required, sReq) && len(required)+len(sReq) > 0 {
			t.Errorf("%s: schema fields %v required %v; decoder fields %v required %v", ty, sFields, sReq, fields, required)
		}
	}
	if seen != len(Types) {
		t.Errorf("schema covers %d of %d event types", seen, len(Types))
	}
}

// TestJSONSchemaGrantPattern keeps the schema's pattern of an
// APPROVAL_DECIDED grant equal to the decoder's.
func TestJSONSchemaGrantPattern(t *testing.T) {
	schema := readEventSchema(t)
	for _, c := range schema.AllOf {
		if c.If.Properties.EventType.Const == string(ApprovalDecided) {
			var grant struct {
				Pattern string `json:"pattern"`
			}
			if err := json.Unmarshal(c.Then.Properties.Payload.Properties["grant"], &grant); err != nil || grant.Pattern != GrantPattern {
				t.Fatalf("schema grant pattern %q (%v), decoder %q", grant.Pattern, err, GrantPattern)
			}
			return
		}
	}
	t.Fatal("no APPROVAL_DECIDED rules in the schema")
}
