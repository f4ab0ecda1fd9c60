package manifest

import (
	"encoding/json"
	"os"
	"path/filepath"
	"reflect"
	"regexp"
	"slices"
	"strings"
	"testing"
	"unicode/utf8"
)

// jsonSchema is the subset of JSON Schema that schemas/manifest.schema.json
// uses.
type jsonSchema struct {
	Type                 any                    `json:"type"`
	Const                string                 `json:"const"`
	Required             []string               `json:"required"`
	Properties           map[string]*jsonSchema `json:"properties"`
	AdditionalProperties *bool                  `json:"additionalProperties"`
	Items                *jsonSchema            `json:"items"`
	UniqueItems          bool                   `json:"uniqueItems"`
	AnyOf                []*jsonSchema          `json:"anyOf"`
	Not                  *jsonSchema            `json:"not"`
	Pattern              string                 `json:"pattern"`
	MinLength            *int                   `json:"minLength"`
	MaxLength            *int                   `json:"maxLength"`
	Minimum              *int64                 `json:"minimum"`
	Maximum              *int64                 `json:"maximum"`
}

func loadSchema(tb testing.TB) *jsonSchema {
	tb.Helper()
	data, err := os.ReadFile(filepath.Join("..", "manifest.schema.json"))
	if err != nil {
		tb.Fatal(err)
	}
	var s jsonSchema
	if err := json.Unmarshal(data, &s); err != nil {
		tb.Fatal(err)
	}
	return &s
}

// accepts reports whether s accepts the string v, for the keywords the
// manifest schema uses on strings. Lengths are counted in characters, as
// JSON Schema does.
func (s *jsonSchema) accepts(tb testing.TB, v string) bool {
	tb.Helper()
	if s.Const != "" && v != s.Const {
		return false
	}
	n := utf8.RuneCountInString(v)
	if s.MinLength != nil && n < *s.MinLength || s.MaxLength != nil && n > *s.MaxLength {
		return false
	}
	if s.Pattern != "" && !regexp.MustCompile(s.Pattern).MatchString(v) {
		return false
	}
	if s.Not != nil && s.Not.accepts(tb, v) {
		return false
	}
	if len(s.AnyOf) > 0 {
		return slices.ContainsFunc(s.AnyOf, func(sub *jsonSchema) bool { return sub.accepts(tb, v) })
	}
	return true
}

// TestSchemaMatchesTypes checks that the schema describes exactly the
// fields of types.go, closed at every level.
func TestSchemaMatchesTypes(t *testing.T) {
	var walk func(path string, s *jsonSchema, typ reflect.Type)
	walk = func(path string, s *jsonSchema, typ reflect.Type) {
		switch typ.Kind() {
		case reflect.Struct:
			if s.AdditionalProperties == nil || *s.AdditionalProperties {
				t.Errorf("%s: additionalProperties is not false", path)
			}
			fields := jsonFields(typ)
			var want, got []string
			for name := range fields {
				want = append(want, name)
			}
			for name := range s.Properties {
				got = append(got, name)
			}
			slices.Sort(want)
			slices.Sort(got)
			if !slices.Equal(got, want) {
				t.Errorf("%s: schema properties %v, Go fields %v", path, got, want)
			}
			for name, idx := range fields {
				if sub := s.Properties[name]; sub != nil {
					walk(joinPath(path, name), sub, typ.Field(idx).Type)
				}
			}
		case reflect.Slice:
			if !reflect.DeepEqual(s.Type, []any{"array", "null"}) || !s.UniqueItems || s.Items == nil {
				t.Errorf("%s: want type [array, null], uniqueItems and items", path)
				return
			}
			walk(path+"[]", s.Items, typ.Elem())
		case reflect.String:
			if s.Type != "string" && s.Const == "" {
				t.Errorf("%s: type %v, want string", path, s.Type)
			}
		case reflect.Int64:
			if s.Type != "integer" || s.Minimum == nil || *s.Minimum != 0 || s.Maximum == nil {
				t.Errorf("%s: want an integer with minimum 0 and a maximum", path)
			}
		case reflect.Bool:
			if s.Type != "boolean" {
				t.Errorf("%s: type %v, want boolean", path, s.Type)
			}
		}
	}
	s := loadSchema(t)
	walk("", s, reflect.TypeFor[Manifest]())
	if got := strings.Join(s.Required, ","); got != "schema,name,version,publisher" {
		t.Errorf("required = %s", got)
	}
	if s.Properties["schema"].Const != Schema {
		t.Errorf("schema const = %q, want %q", s.Properties["schema"].Const, Schema)
	}
	maxima := map[string]int64{
		"max_steps": MaxMaxSteps, "max_tool_calls": MaxMaxToolCalls, "max_wall_time_ms": MaxMaxWallTimeMs,
		"max_output_bytes": MaxMaxOutputBytes, "timeout_ms": MaxTimeoutMs, "max_identical_calls": MaxMaxIdenticalCalls,
	}
	for name, max := range maxima {
		if got := *s.Properties["permissions"].Properties["budgets"].Properties[name].Maximum; got != max {
			t.Errorf("budgets.%s maximum = %d, want %d", name, got, max)
		}
	}
}

// TestSchemaAgreesWithValidator runs the same strings through the schema's
// string rules and through Validate: both must accept or both reject.
func TestSchemaAgreesWithValidator(t *testing.T) {
	s := loadSchema(t)
	perm := s.Properties["permissions"]
	long := func(n int, c string) string { return strings.Repeat(c, n) }
	fields := []struct {
		path   string
		schema *jsonSchema
		set    func(m *Manifest, v string)
		values []string
	}{
		{"name", s.Properties["name"], func(m *Manifest, v string) { m.Name = v },
			[]string{"a", "agent-1", "a.b_c-d", "0", long(64, "a"), long(65, "a"), "", "A", "-a", ".a", "a@b", "a/b", "a b", "é"}},
		{"version", s.Properties["version"], func(m *Manifest, v string) { m.Version = v },
			[]string{"0.0.0", "1.2.3", "10.20.30", "1.0.0-alpha", "1.0.0-alpha.1", "1.0.0-0.3.7", "1.0.0-x.7.z.92", "1.0.0+20130313144700", "1.0.0-beta+exp.sha.5114f85", "1.0.0--", "1.0.0-a-b",
				"", "1", "1.2", "1.2.3.4", "v1.2.3", "01.2.3", "1.02.3", "1.2.03", "1.2.3-", "1.2.3+", "1.2.3-01", "1.2.3-a..b", "1.2.3+a..b", "1.2.3-é", "1.2.3-" + long(58, "a"), "1.2.3-" + long(59, "a")}},
		{"publisher", s.Properties["publisher"], func(m *Manifest, v string) { m.Publisher = v },
			[]string{"p", "Example Corp <sec@example.com>", "Ünïcødé", long(256, "p"), "", " ", "\t", "a\nb", "a\x7fb", "a\u0085b", long(257, "p")}},
		{"permissions.tools[0]", perm.Properties["tools"].Items, func(m *Manifest, v string) { m.Permissions.Tools = []string{v} },
			[]string{"search", "fs.read", "mcp/server:tool", "é", long(256, "t"), "", "*", "a*", "a b", "a\tb", "a\u00a0b", "a\u3000b", long(257, "t")}},
		{"permissions.net.domains[0]", perm.Properties["net"].Properties["domains"].Items, func(m *Manifest, v string) { m.Permissions.Net.Domains = []string{v} },
			[]string{"example.com", "a.b.c.example.com", "localhost", "10.0.0.1", "xn--bcher-kva.example", "a-b.example.com", "*.example.com", "*.a.example.com",
				long(63, "a") + ".com", strings.Repeat(long(62, "a")+".", 4) + "a", "*." + strings.Repeat(long(62, "a")+".", 4) + "a",
				"", "*", "*.", "*.com", "*example.com", "a.*.com", "*.*.example.com", "EXAMPLE.com", "example.com.", ".example.com", "a..b", "-a.com", "a-.com", "a_b.com",
				"https://example.com", "example.com:443", "example.com/x", "::1", "[::1]", "*.0.1", "*.169.254", "*.example.123", "*.example.x1", "*.0.0x1", "*.a.0x", "*.a.0xg", long(64, "a") + ".com", strings.Repeat(long(62, "a")+".", 4) + "ab", "é.com"}},
		{"permissions.exec.allowed_bins[0]", perm.Properties["exec"].Properties["allowed_bins"].Items, func(m *Manifest, v string) { m.Permissions.Exec.AllowedBins = []string{v} },
			[]string{"git", "/usr/bin/python3", "*", "", "a b", "a\nb"}},
		{"sandbox.image", s.Properties["sandbox"].Properties["image"], func(m *Manifest, v string) { m.Sandbox.Image = v },
			[]string{"ghcr.io/x/y:1", "x@sha256:abc", "a b"}},
		{"integrity.tree_sha256", s.Properties["integrity"].Properties["tree_sha256"], func(m *Manifest, v string) { m.Integrity.TreeSHA256 = v },
			[]string{long(64, "a"), long(32, "0f"), long(63, "a"), long(65, "a"), long(64, "A"), long(64, "g")}},
		{"integrity.signature", s.Properties["integrity"].Properties["signature"], func(m *Manifest, v string) { m.Integrity.Signature = v },
			[]string{"MEUCIQ+/=", "a b"}},
	}
	for _, f := range fields {
		t.Run(f.path, func(t *testing.T) {
			if f.schema == nil {
				t.Fatalf("schema has no %s", f.path)
			}
			for _, v := range f.values {
				m := validManifest(t)
				m.Permissions.ApprovalRequired = nil
				f.set(m, v)
				validOK := true
				if err := m.Validate(); err != nil {
					for _, fe := range err.(*ValidationError).Errors {
						if fe.Path == f.path {
							validOK = false
						}
					}
				}
				if schemaOK := f.schema.accepts(t, v); schemaOK != validOK {
					t.Errorf("%q: schema accepts = %v, validator accepts = %v", v, schemaOK, validOK)
				}
			}
		})
	}
}
