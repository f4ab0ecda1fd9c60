package manifest

import (
	"crypto/sha256"
	"encoding/hex"
	"flag"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"aegis.dev/aegis/schemas/canon"
)

var update = flag.Bool("update", false, "rewrite the golden files in testdata")

// golden compares got with testdata/name, or rewrites the file with -update.
func golden(tb testing.TB, name string, got []byte) {
	tb.Helper()
	path := filepath.Join("testdata", name)
	if *update {
		if err := os.WriteFile(path, got, 0o644); err != nil {
			tb.Fatal(err)
		}
		return
	}
	want, err := os.ReadFile(path)
	if err != nil {
		tb.Fatal(err)
	}
	if string(got) != string(want) {
		tb.Errorf("%s differs from the golden file:\ngot:  %s\nwant: %s", path, got, want)
	}
}

func mustParse(tb testing.TB, data []byte) *Manifest {
	tb.Helper()
	m, err := Parse(data)
	if err != nil {
		tb.Fatal(err)
	}
	return m
}

// TestDigestGolden pins the canonical form and the digest of
// testdata/example.json: a change to either breaks every recorded
// manifest_digest, so it must be deliberate.
func TestDigestGolden(t *testing.T) {
	m := mustParse(t, readTestdata(t, "example.json"))
	c, err := canon.Append(nil, mustMarshal(t, m))
	if err != nil {
		t.Fatal(err)
	}
	golden(t, "example.canonical.json", c)
	golden(t, "example.digest", []byte(m.Digest()+"\n"))

	// The digest is re-derivable from the canonical bytes alone.
	sum := sha256.Sum256(readTestdata(t, "example.canonical.json"))
	if got, want := DigestPrefix+hex.EncodeToString(sum[:]), strings.TrimSpace(string(readTestdata(t, "example.digest"))); got != want {
		t.Errorf("sha256 of example.canonical.json = %s, want %s", got, want)
	}
}

func TestDigestIgnoresFormatting(t *testing.T) {
	want := mustParse(t, readTestdata(t, "example.json")).Digest()
	// Keys in another order, other whitespace, escapes, an explicit 0 budget.
	if got := mustParse(t, readTestdata(t, "example-reordered.json")).Digest(); got != want {
		t.Errorf("reordered file digest = %s, want %s", got, want)
	}
}

func TestDigestEquivalentLists(t *testing.T) {
	base := `{"schema":"aegis.dev/manifest/v0.1","name":"a","version":"0.1.0","publisher":"p"%s}`
	variants := map[string]string{
		"absent":        "",
		"empty lists":   `,"permissions":{"tools":[],"net":{"domains":[]},"exec":{"allowed_bins":[]},"approval_required":[]}`,
		"null lists":    `,"permissions":{"tools":null,"net":{"domains":null},"exec":{"allowed_bins":null},"approval_required":null}`,
		"empty objects": `,"permissions":{"net":{},"exec":{},"budgets":{}},"sandbox":{},"integrity":{}`,
		"zero budgets":  `,"permissions":{"budgets":{"max_steps":0,"max_tool_calls":0,"max_wall_time_ms":0,"max_output_bytes":0,"timeout_ms":0,"max_identical_calls":0}}`,
		"sandbox off":   `,"sandbox":{"required":false,"image":""}`,
	}
	want := mustParse(t, []byte(strings.Replace(base, "%s", "", 1))).Digest()
	for name, v := range variants {
		t.Run(name, func(t *testing.T) {
			if got := mustParse(t, []byte(strings.Replace(base, "%s", v, 1))).Digest(); got != want {
				t.Errorf("digest = %s, want %s", got, want)
			}
		})
	}
}

func TestDigestChangesWithContent(t *testing.T) {
	base := mustParse(t, readTestdata(t, "example.json"))
	tests := []struct {
		name   string
		mutate func(m *Manifest)
	}{
		{"budget", func(m *Manifest) { m.Permissions.Budgets.MaxSteps = 41 }},
		{"budget set to its default", func(m *Manifest) { m.Permissions.Budgets.MaxWallTimeMs = DefaultMaxWallTimeMs }},
		{"tool added", func(m *Manifest) { m.Permissions.Tools = append(m.Permissions.Tools, "exec") }},
		{"tool order", func(m *Manifest) {
			t := m.Permissions.Tools
			t[0], t[1] = t[1], t[0]
		}},
		{"domain", func(m *Manifest) { m.Permissions.Net.Domains[0] = "api2.example.com" }},
		{"bin", func(m *Manifest) { m.Permissions.Exec.AllowedBins = []string{"git"} }},
		{"approval", func(m *Manifest) { m.Permissions.ApprovalRequired = nil }},
		{"version", func(m *Manifest) { m.Version = "1.4.1" }},
		{"publisher", func(m *Manifest) { m.Publisher = "Other" }},
		{"sandbox", func(m *Manifest) { m.Sandbox.Required = false }},
		{"integrity", func(m *Manifest) { m.Integrity.Signature = "sig" }},
	}
	seen := map[string]string{base.Digest(): "base"}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			m := base.Clone()
			tt.mutate(m)
			d := m.Digest()
			if prev, dup := seen[d]; dup {
				t.Fatalf("digest %s equals that of %q", d, prev)
			}
			seen[d] = tt.name
		})
	}
	if got := mustParse(t, readTestdata(t, "example.json")).Digest(); got != base.Digest() {
		t.Error("mutating a clone changed the original")
	}
}

func TestDigestUnrepresentableBudget(t *testing.T) {
	m := validManifest(t)
	m.Permissions.Budgets.MaxOutputBytes = 1 << 60 // beyond 2^53: Validate rejects it
	if m.Validate() == nil {
		t.Fatal("Validate accepted a budget of 2^60")
	}
	if d := m.Digest(); d != "" {
		t.Errorf("Digest() = %q, want \"\" for a budget canonical JSON cannot carry", d)
	}
}

func TestMarshalWritesEmptyLists(t *testing.T) {
	m := &Manifest{Schema: Schema, Name: "a", Version: "1.0.0", Publisher: "p"}
	got := string(mustMarshal(t, m))
	want := `{"schema":"aegis.dev/manifest/v0.1","name":"a","version":"1.0.0","publisher":"p","permissions":{"tools":[],"net":{"domains":[]},"exec":{"allowed_bins":[]},"approval_required":[],"budgets":{}},"sandbox":{"required":false},"integrity":{}}`
	if got != want {
		t.Errorf("json.Marshal = %s\nwant          %s", got, want)
	}
	if got2 := string(mustMarshal(t, *m)); got2 != got {
		t.Errorf("value and pointer encode differently: %s", got2)
	}
	if m.Permissions.Tools != nil {
		t.Error("MarshalJSON modified the manifest")
	}
}

func BenchmarkDigest(b *testing.B) {
	m := mustParse(b, readTestdata(b, "example.json"))
	b.ReportAllocs()
	for b.Loop() {
		if m.Digest() == "" {
			b.Fatal("empty digest")
		}
	}
}

func BenchmarkParse(b *testing.B) {
	data := readTestdata(b, "example.json")
	b.SetBytes(int64(len(data)))
	b.ReportAllocs()
	for b.Loop() {
		if _, err := Parse(data); err != nil {
			b.Fatal(err)
		}
	}
}
