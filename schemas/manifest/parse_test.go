package manifest

import (
	"bytes"
	"encoding/json"
	"errors"
	"io/fs"
	"os"
	"path/filepath"
	"strings"
	"testing"
)

// readTestdata returns the contents of testdata/name.
func readTestdata(tb testing.TB, name string) []byte {
	tb.Helper()
	data, err := os.ReadFile(filepath.Join("testdata", name))
	if err != nil {
		tb.Fatal(err)
	}
	return data
}

// minimal is the smallest valid manifest text.
const minimal = `{"schema":"aegis.dev/manifest/v0.1","name":"a","version":"0.1.0","publisher":"p"}`

func TestParseExample(t *testing.T) {
	m, err := Parse(readTestdata(t, "example.json"))
	if err != nil {
		t.Fatal(err)
	}
	if got, want := m.Ref(), "research-agent@1.4.0"; got != want {
		t.Errorf("Ref() = %q, want %q", got, want)
	}
	if got := m.Permissions.Budgets; got != (Budgets{MaxSteps: 40, MaxToolCalls: 20, TimeoutMs: 15000}) {
		t.Errorf("budgets = %+v", got)
	}
	if m.Permissions.Exec.AllowedBins == nil {
		t.Error("an empty array decoded to a nil slice")
	}
	if !m.Sandbox.Required || m.Sandbox.Image != "ghcr.io/example/sandbox:1.2" {
		t.Errorf("sandbox = %+v", m.Sandbox)
	}
}

func TestParseMinimal(t *testing.T) {
	m, err := Parse([]byte(minimal))
	if err != nil {
		t.Fatal(err)
	}
	if got := m.Permissions.Budgets.WithDefaults(); got.MaxSteps != DefaultMaxSteps || got.MaxIdenticalCalls != DefaultMaxIdenticalCalls {
		t.Errorf("defaults = %+v", got)
	}
}

func TestParseRejects(t *testing.T) {
	// replace returns minimal with old replaced by new (once).
	replace := func(old, new string) string {
		if !strings.Contains(minimal, old) {
			t.Fatalf("minimal has no %q", old)
		}
		return strings.Replace(minimal, old, new, 1)
	}
	withPerm := func(perm string) string { return replace(`"publisher":"p"`, `"publisher":"p","permissions":`+perm) }
	tests := []struct {
		name  string
		input string
		want  []want
	}{
		{"empty input", ``, []want{{"", CodeSyntax, "unexpected end of input"}}},
		{"truncated", minimal[:20], []want{{"", CodeSyntax, "unexpected end of input"}}},
		{"not JSON", `schema: x`, []want{{"", CodeSyntax, "invalid JSON at byte"}}},
		{"not an object", `["a"]`, []want{{"", CodeWrongType, "must be an object, got an array"}}},
		{"top-level null", `null`, []want{{"", CodeWrongType, "must be an object, not null"}}},
		{"trailing object", minimal + `{}`, []want{{"", CodeSyntax, "unexpected data after the top-level object"}}},
		{"trailing garbage", minimal + ` x`, []want{{"", CodeSyntax, "invalid JSON"}}},
		{"invalid UTF-8", replace(`"p"`, "\"p\xff\""), []want{{"", CodeSyntax, "not valid UTF-8"}}},
		{"too large", replace(`"p"`, `"`+strings.Repeat("p", MaxSize)+`"`), []want{{"", CodeSyntax, "larger than 1048576 bytes"}}},

		{"unknown top-level field", replace(`"name"`, `"nmae":"x","name"`), []want{{"nmae", CodeUnknownField, `unknown field "nmae"`}}},
		{"unknown nested field", withPerm(`{"net":{"domains":[],"ports":[443]}}`), []want{{"permissions.net.ports", CodeUnknownField, `unknown field "ports"`}}},
		{"field in wrong case", replace(`"name"`, `"Name"`), []want{{"Name", CodeUnknownField, `did you mean "name"`}}},
		{"duplicate key", replace(`"name":"a"`, `"name":"a","name":"b"`), []want{{"name", CodeDuplicateKey, `duplicate key "name"`}}},
		{"duplicate key spelled with an escape", replace(`"name":"a"`, `"name":"a","n\u0061me":"b"`), []want{{"name", CodeDuplicateKey, `duplicate key "name"`}}},
		{"duplicate nested key", withPerm(`{"budgets":{"max_steps":1,"max_steps":2000000}}`), []want{{"permissions.budgets.max_steps", CodeDuplicateKey, "duplicate key"}}},

		{"string for array", withPerm(`{"tools":"search"}`), []want{{"permissions.tools", CodeWrongType, "must be an array of strings, got a string"}}},
		{"number in string array", withPerm(`{"tools":["a",7]}`), []want{{"permissions.tools[1]", CodeWrongType, "must be a string, got a number"}}},
		{"null in string array", withPerm(`{"tools":[null]}`), []want{{"permissions.tools[0]", CodeWrongType, "must be a string, not null"}}},
		{"null object", withPerm(`null`), []want{{"permissions", CodeWrongType, "must be an object, not null"}}},
		{"null string", replace(`"p"`, `null`), []want{{"publisher", CodeWrongType, "must be a string, not null"}}},
		{"null integer", withPerm(`{"budgets":{"max_steps":null}}`), []want{{"permissions.budgets.max_steps", CodeWrongType, "must be an integer, not null"}}},
		{"number for name", replace(`"a"`, `1`), []want{{"name", CodeWrongType, "must be a string, got a number"}}},
		{"string for budget", withPerm(`{"budgets":{"max_steps":"10"}}`), []want{{"permissions.budgets.max_steps", CodeWrongType, "must be an integer, got a string"}}},
		{"fraction budget", withPerm(`{"budgets":{"max_steps":1.5}}`), []want{{"permissions.budgets.max_steps", CodeWrongType, "must be an integer written without fraction or exponent"}}},
		{"exponent budget", withPerm(`{"budgets":{"max_steps":1e3}}`), []want{{"permissions.budgets.max_steps", CodeWrongType, "without fraction or exponent"}}},
		{"budget beyond int64", withPerm(`{"budgets":{"max_steps":99999999999999999999}}`), []want{{"permissions.budgets.max_steps", CodeOutOfRange, "64-bit integer range"}}},
		{"string for boolean", `{"schema":"aegis.dev/manifest/v0.1","name":"a","version":"0.1.0","publisher":"p","sandbox":{"required":"yes"}}`,
			[]want{{"sandbox.required", CodeWrongType, "must be a boolean, got a string"}}},
		{"array for object", withPerm(`[]`), []want{{"permissions", CodeWrongType, "must be an object, got an array"}}},

		{"every structural problem is listed", `{"schema":"aegis.dev/manifest/v0.1","name":1,"x":{"y":[1,{}]},"version":"0.1.0","version":"0.1.1","publisher":"p","permissions":{"tools":[1]}}`, []want{
			{"name", CodeWrongType, "must be a string"},
			{"x", CodeUnknownField, `unknown field "x"`},
			{"version", CodeDuplicateKey, "duplicate key"},
			{"permissions.tools[0]", CodeWrongType, "must be a string"},
		}},
		{"validation runs after decoding", replace(`"0.1.0"`, `"one"`), []want{{"version", CodeInvalidValue, "not a semantic version"}}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			m, err := Parse([]byte(tt.input))
			if m != nil {
				t.Errorf("Parse returned a manifest with error %v", err)
			}
			checkErrors(t, err, tt.want)
		})
	}
}

func TestLoad(t *testing.T) {
	t.Run("ok", func(t *testing.T) {
		m, err := Load(filepath.Join("testdata", "example.json"))
		if err != nil || m.Name != "research-agent" {
			t.Fatalf("Load = %v, %v", m, err)
		}
	})
	t.Run("missing file", func(t *testing.T) {
		_, err := Load(filepath.Join(t.TempDir(), "nope.json"))
		if !errors.Is(err, fs.ErrNotExist) {
			t.Fatalf("err = %v, want fs.ErrNotExist", err)
		}
	})
	t.Run("invalid file names its path", func(t *testing.T) {
		path := filepath.Join(t.TempDir(), "bad.json")
		if err := os.WriteFile(path, []byte(`{"schema":"x"}`), 0o600); err != nil {
			t.Fatal(err)
		}
		_, err := Load(path)
		var ve *ValidationError
		if !errors.As(err, &ve) || !strings.Contains(err.Error(), path) {
			t.Fatalf("err = %v, want a *ValidationError naming %s", err, path)
		}
	})
}

// TestParseRoundTrip checks that what json.Marshal writes for a parsed
// manifest parses back to an equal manifest with the same digest.
func TestParseRoundTrip(t *testing.T) {
	m, err := Parse(readTestdata(t, "example.json"))
	if err != nil {
		t.Fatal(err)
	}
	b, err := json.Marshal(m)
	if err != nil {
		t.Fatal(err)
	}
	m2, err := Parse(b)
	if err != nil {
		t.Fatalf("re-parse of %s: %v", b, err)
	}
	if m.Digest() != m2.Digest() {
		t.Errorf("digest changed across a round trip: %s vs %s", m.Digest(), m2.Digest())
	}
}

func FuzzParse(f *testing.F) {
	f.Add([]byte(minimal))
	f.Add(readTestdata(f, "example.json"))
	f.Add(readTestdata(f, "example-reordered.json"))
	f.Add([]byte(`{"permissions":{"net":{"domains":["*.a.b",1,null,{}]}},"x":[[[{}]]]}`))
	f.Add([]byte(`{"name":"a","name":"a"}`))
	f.Add([]byte(`[1,2,{"a":`))
	f.Fuzz(func(t *testing.T, data []byte) {
		m, err := Parse(data)
		if err != nil {
			var ve *ValidationError
			if m != nil || !errors.As(err, &ve) || len(ve.Errors) == 0 {
				t.Fatalf("Parse error contract broken: m=%v err=%v", m, err)
			}
			return
		}
		// A manifest that parses has a digest and survives a round trip.
		d := m.Digest()
		if !strings.HasPrefix(d, DigestPrefix) || len(d) != len(DigestPrefix)+64 {
			t.Fatalf("Digest() = %q", d)
		}
		b, err := json.Marshal(m)
		if err != nil {
			t.Fatal(err)
		}
		m2, err := Parse(b)
		if err != nil {
			t.Fatalf("re-parse of %s: %v", b, err)
		}
		if m2.Digest() != d {
			t.Fatalf("digest changed across a round trip")
		}
		if !bytes.Equal(b, mustMarshal(t, m2)) {
			t.Fatalf("encoding changed across a round trip")
		}
	})
}

func mustMarshal(tb testing.TB, v any) []byte {
	tb.Helper()
	b, err := json.Marshal(v)
	if err != nil {
		tb.Fatal(err)
	}
	return b
}
