package conformance_test

import (
	"encoding/json"
	"os"
	"reflect"
	"slices"
	"sort"
	"strings"
	"testing"

	"aegis.dev/aegis/conformance"
)

// TestSchemaMatchesTypes: schemas/conformance-pack.schema.json names
// exactly the fields the Go decoder accepts, object by object, and the
// values of requires it accepts.
func TestSchemaMatchesTypes(t *testing.T) {
	b, err := os.ReadFile("../schemas/conformance-pack.schema.json")
	if err != nil {
		t.Fatal(err)
	}
	var schema struct {
		Properties map[string]json.RawMessage `json:"properties"`
		Defs       map[string]struct {
			Properties map[string]json.RawMessage `json:"properties"`
		} `json:"$defs"`
	}
	if err := json.Unmarshal(b, &schema); err != nil {
		t.Fatal(err)
	}
	stepProps := schema.Defs["step"].Properties
	var approve struct {
		Properties map[string]json.RawMessage `json:"properties"`
	}
	var httpDef struct {
		Properties map[string]json.RawMessage `json:"properties"`
	}
	if err := json.Unmarshal(stepProps["approve"], &approve); err != nil {
		t.Fatal(err)
	}
	if err := json.Unmarshal(stepProps["http"], &httpDef); err != nil {
		t.Fatal(err)
	}
	t.Run("requires", func(t *testing.T) {
		var requires struct {
			Items struct {
				Enum []string `json:"enum"`
			} `json:"items"`
		}
		if err := json.Unmarshal(schema.Defs["case"].Properties["requires"], &requires); err != nil {
			t.Fatal(err)
		}
		got, want := slices.Sorted(slices.Values(requires.Items.Enum)), slices.Sorted(slices.Values(conformance.Requires()))
		if !reflect.DeepEqual(got, want) {
			t.Errorf("schema requires %v, the decoder accepts %v", got, want)
		}
	})
	for _, tc := range []struct {
		name  string
		typ   any
		props map[string]json.RawMessage
	}{
		{"pack", conformance.Pack{}, schema.Properties},
		{"case", conformance.Case{}, schema.Defs["case"].Properties},
		{"decide", conformance.Decide{}, schema.Defs["decide"].Properties},
		{"scenario", conformance.Scenario{}, schema.Defs["scenario"].Properties},
		{"step", conformance.Step{}, stepProps},
		{"event", conformance.Event{}, schema.Defs["event"].Properties},
		{"expect", conformance.Expect{}, schema.Defs["expect"].Properties},
		{"approve", conformance.Approve{}, approve.Properties},
		{"http", conformance.HTTP{}, httpDef.Properties},
	} {
		t.Run(tc.name, func(t *testing.T) {
			var fields, props []string
			rt := reflect.TypeOf(tc.typ)
			for i := range rt.NumField() {
				tag, _, _ := strings.Cut(rt.Field(i).Tag.Get("yaml"), ",")
				if tag != "" && tag != "-" {
					fields = append(fields, tag)
				}
			}
			for p := range tc.props {
				props = append(props, p)
			}
			sort.Strings(fields)
			sort.Strings(props)
			if !reflect.DeepEqual(fields, props) {
				t.Errorf("Go fields %v, schema properties %v", fields, props)
			}
		})
	}
}
