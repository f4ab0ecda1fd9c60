package manifest

import (
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"testing"
)

// manifestJSON returns the text of a valid manifest with the given name and
// version and one tool, tool.
func manifestJSON(name, version, tool string) string {
	return fmt.Sprintf(`{"schema":%q,"name":%q,"version":%q,"publisher":"p","permissions":{"tools":[%q]}}`, Schema, name, version, tool)
}

// writeTree creates files (path relative to the returned dir -> content) in
// a fresh temporary directory.
func writeTree(tb testing.TB, files map[string]string) string {
	tb.Helper()
	dir := tb.TempDir()
	for rel, content := range files {
		path := filepath.Join(dir, filepath.FromSlash(rel))
		if err := os.MkdirAll(filepath.Dir(path), 0o755); err != nil {
			tb.Fatal(err)
		}
		if err := os.WriteFile(path, []byte(content), 0o644); err != nil {
			tb.Fatal(err)
		}
	}
	return dir
}

// fixtureDir is a registry with two tenants.
func fixtureDir(tb testing.TB) string {
	tb.Helper()
	return writeTree(tb, map[string]string{
		"acme/default.json":              manifestJSON("helper", "1.0.0", "acme_default"),
		"acme/helper.json":               manifestJSON("helper", "1.0.0", "acme_default"), // same content as default.json
		"acme/coder.json":                manifestJSON("coder", "2.0.0", "coder_2"),
		"acme/coder@1.5.0.json":          manifestJSON("coder", "1.5.0", "coder_1_5"),
		"acme/coder@2.1.0-rc.1.json":     manifestJSON("coder", "2.1.0-rc.1", "coder_rc"),
		"acme/notes.txt":                 "ignored",
		"acme/.default.json.swp":         "ignored",
		"globex/default.json":            manifestJSON("globex-bot", "0.1.0", "globex_default"),
		"globex/secret-agent.json":       manifestJSON("secret-agent", "1.0.0", "globex_secret"),
		"no-default/only-named.json":     manifestJSON("only-named", "1.0.0", "named"),
		"rc-only/beta@1.0.0-beta.1.json": manifestJSON("beta", "1.0.0-beta.1", "beta_1"),
		"rc-only/beta@1.0.0-beta.2.json": manifestJSON("beta", "1.0.0-beta.2", "beta_2"),
		".git/HEAD":                      "ignored",
		"README.md":                      "ignored",
		"..2024_01_01/acme/default.json": "ignored: Kubernetes ConfigMap internals",
	})
}

func TestResolve(t *testing.T) {
	r, err := LoadDir(fixtureDir(t))
	if err != nil {
		t.Fatal(err)
	}
	tests := []struct {
		name     string
		tenant   string
		ref      string
		wantTool string // first tool of the resolved manifest; "" = ErrUnknown
	}{
		{"default", "acme", "", "acme_default"},
		{"default of another tenant", "globex", "", "globex_default"},
		{"default by its name", "acme", "helper", "acme_default"},
		{"by name: highest release, not a higher pre-release", "acme", "coder", "coder_2"},
		{"by name: pre-release when there is no release", "rc-only", "beta", "beta_2"},
		{"by exact ref", "acme", "coder@1.5.0", "coder_1_5"},
		{"by exact pre-release ref", "acme", "coder@2.1.0-rc.1", "coder_rc"},
		{"named manifest of a tenant without default", "no-default", "only-named", "named"},

		{"unknown tenant", "initech", "", ""},
		{"unknown tenant with ref", "initech", "coder", ""},
		{"unknown name", "acme", "nobody", ""},
		{"unknown version", "acme", "coder@9.9.9", ""},
		{"version without name", "acme", "@2.0.0", ""},
		{"name with empty version", "acme", "coder@", ""},
		{"ref differing in case", "acme", "Coder", ""},
		{"tenant without default", "no-default", "", ""},
		{"tenant differing in case", "ACME", "", ""},
		{"hidden directory is not a tenant", "..2024_01_01", "", ""},
		{"isolation: other tenant's name", "acme", "secret-agent", ""},
		{"isolation: other tenant's ref", "acme", "secret-agent@1.0.0", ""},
		{"isolation: other tenant's default name", "acme", "globex-bot", ""},
		{"isolation: reverse direction", "globex", "coder", ""},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			m, err := r.Resolve(tt.tenant, tt.ref)
			if tt.wantTool == "" {
				if !errors.Is(err, ErrUnknown) || m != nil {
					t.Fatalf("Resolve(%q, %q) = %v, %v; want ErrUnknown", tt.tenant, tt.ref, m, err)
				}
				if !strings.Contains(err.Error(), fmt.Sprintf("%q", tt.tenant)) {
					t.Errorf("error %q does not name the tenant", err)
				}
				return
			}
			if err != nil {
				t.Fatalf("Resolve(%q, %q): %v", tt.tenant, tt.ref, err)
			}
			if got := m.Permissions.Tools[0]; got != tt.wantTool {
				t.Errorf("Resolve(%q, %q) = %s with tool %q, want tool %q", tt.tenant, tt.ref, m.Ref(), got, tt.wantTool)
			}
		})
	}
}

func TestRegistryListing(t *testing.T) {
	r, err := LoadDir(fixtureDir(t))
	if err != nil {
		t.Fatal(err)
	}
	if got, want := strings.Join(r.Tenants(), ","), "acme,globex,no-default,rc-only"; got != want {
		t.Errorf("Tenants() = %s, want %s", got, want)
	}
	var refs []string
	for _, m := range r.Manifests("acme") {
		refs = append(refs, m.Ref())
	}
	if got, want := strings.Join(refs, ","), "coder@2.1.0-rc.1,coder@2.0.0,coder@1.5.0,helper@1.0.0"; got != want {
		t.Errorf("Manifests(acme) = %s, want %s", got, want)
	}
	if got := r.Manifests("initech"); got != nil {
		t.Errorf("Manifests(initech) = %v, want nil", got)
	}
	// default.json and helper.json hold the same manifest: one value.
	def, _ := r.Resolve("acme", "")
	named, _ := r.Resolve("acme", "helper@1.0.0")
	if def != named {
		t.Error("identical default.json and helper.json resolve to different values")
	}
}

func TestByDigest(t *testing.T) {
	r, err := LoadDir(fixtureDir(t))
	if err != nil {
		t.Fatal(err)
	}
	for _, tenant := range r.Tenants() {
		for _, m := range r.Manifests(tenant) {
			got, ok := r.ByDigest(m.Digest())
			if !ok || got.Digest() != m.Digest() {
				t.Errorf("ByDigest(%s) of %s/%s = %v, %v", m.Digest(), tenant, m.Ref(), got, ok)
			}
		}
	}
	if m, ok := r.ByDigest("sha256:" + strings.Repeat("0", 64)); ok || m != nil {
		t.Errorf("ByDigest(unknown) = %v, %v", m, ok)
	}
	if _, ok := r.ByDigest(""); ok {
		t.Error("ByDigest(\"\") found a manifest")
	}
}

func TestNilRegistryResolvesNothing(t *testing.T) {
	var r *Registry
	if _, err := r.Resolve("acme", ""); !errors.Is(err, ErrUnknown) {
		t.Errorf("Resolve on nil registry: %v, want ErrUnknown", err)
	}
	if _, ok := r.ByDigest("x"); ok {
		t.Error("ByDigest on nil registry found a manifest")
	}
	if r.Tenants() != nil || r.Manifests("acme") != nil {
		t.Error("nil registry lists something")
	}
}

func TestLoadDirEmpty(t *testing.T) {
	r, err := LoadDir(t.TempDir())
	if err != nil {
		t.Fatal(err)
	}
	if _, err := r.Resolve("default", ""); !errors.Is(err, ErrUnknown) {
		t.Errorf("Resolve on empty registry: %v, want ErrUnknown", err)
	}
}

func TestLoadDirMissing(t *testing.T) {
	_, err := LoadDir(filepath.Join(t.TempDir(), "nope"))
	if !errors.Is(err, os.ErrNotExist) {
		t.Fatalf("err = %v, want os.ErrNotExist", err)
	}
}

// TestLoadDirReportsEveryBadFile checks that one LoadDir call names every
// bad file with all of its problems, and loads nothing.
func TestLoadDirReportsEveryBadFile(t *testing.T) {
	dir := writeTree(t, map[string]string{
		"acme/default.json":       manifestJSON("anything", "1.0.0", "t"), // fine: default.json may have any name
		"acme/good.json":          manifestJSON("good", "1.0.0", "t"),
		"acme/wrong-name.json":    manifestJSON("other", "1.0.0", "t"),
		"acme/other@2.0.0.json":   manifestJSON("other", "1.0.0", "t"),
		"acme/broken.json":        `{"schema":`,
		"acme/many.json":          `{"schema":"x","name":"many","version":"1","publisher":"p","permissions":{"net":{"domains":["*"]},"budgets":{"max_steps":-1}}}`,
		"acme/strict.json":        `{"schema":"aegis.dev/manifest/v0.1","name":"strict","name":"strict","version":"1.0.0","publisher":"p","extra":true}`,
		"acme/sub/x.json":         manifestJSON("x", "1.0.0", "t"),
		"bad tenant/default.json": manifestJSON("a", "1.0.0", "t"),
		"stray.json":              manifestJSON("stray", "1.0.0", "t"),
		"globex/default.json":     manifestJSON("g", "1.0.0", "t"),
		"globex/g.json":           manifestJSON("g", "1.0.0", "different"), // same ref, other content
		"globex/h.json":           manifestJSON("h", "1.0.0", "t"),
		"globex/h@1.0.0+b2.json":  manifestJSON("h", "1.0.0+b2", "t"), // same precedence as h@1.0.0
	})
	r, err := LoadDir(dir)
	if r != nil {
		t.Error("LoadDir returned a registry with an error")
	}
	var le *LoadError
	if !errors.As(err, &le) {
		t.Fatalf("err = %v (%T), want *LoadError", err, err)
	}
	var ve *ValidationError
	if !errors.As(err, &ve) || !errors.Is(err, ErrInvalid) {
		t.Error("a *LoadError does not unwrap to its *ValidationError values")
	}
	// Structural problems: reported per file, file by file.
	wantFiles := map[string][]want{
		"acme/wrong-name.json":  {{"name", CodeNameMismatch, `"other" does not match the file name "wrong-name.json"`}},
		"acme/other@2.0.0.json": {{"name", CodeNameMismatch, "expected other.json or other@1.0.0.json"}},
		"acme/broken.json":      {{"", CodeSyntax, "unexpected end of input"}},
		"acme/many.json": {
			{"schema", CodeInvalidValue, "must be"},
			{"version", CodeInvalidValue, "not a semantic version"},
			{"permissions.net.domains[0]", CodeInvalidValue, `bare "*"`},
			{"permissions.budgets.max_steps", CodeOutOfRange, "must be >= 0"},
		},
		"acme/strict.json": {
			{"name", CodeDuplicateKey, "duplicate key"},
			{"extra", CodeUnknownField, "unknown field"},
		},
	}
	wantOther := map[string]string{
		"acme/sub":   "unexpected directory",
		"bad tenant": "is not allowed",
		"stray.json": "outside a tenant directory",
	}
	got := map[string]*SourceError{}
	for _, p := range le.Problems {
		rel, err := filepath.Rel(dir, p.Source)
		if err != nil {
			t.Fatal(err)
		}
		got[filepath.ToSlash(rel)] = p
	}
	for file, wants := range wantFiles {
		p := got[file]
		if p == nil {
			t.Errorf("%s is not reported", file)
			continue
		}
		checkErrors(t, p.Err, wants)
		if !strings.Contains(err.Error(), p.Source) {
			t.Errorf("LoadError text does not name %s", p.Source)
		}
	}
	for file, problem := range wantOther {
		if p := got[file]; p == nil || !strings.Contains(p.Err.Error(), problem) {
			t.Errorf("%s: got %v, want a problem containing %q", file, p, problem)
		}
	}
	if n := len(wantFiles) + len(wantOther); len(le.Problems) != n {
		t.Errorf("got %d problems, want %d:\n%v", len(le.Problems), n, err)
	}
	for _, okFile := range []string{"acme/default.json", "acme/good.json"} {
		if got[okFile] != nil {
			t.Errorf("valid file %s reported: %v", okFile, got[okFile])
		}
	}

	// Conflicts are found once every file parses.
	for _, f := range []string{"acme/wrong-name.json", "acme/other@2.0.0.json", "acme/broken.json", "acme/many.json", "acme/strict.json", "stray.json"} {
		if err := os.Remove(filepath.Join(dir, f)); err != nil {
			t.Fatal(err)
		}
	}
	for _, d := range []string{"acme/sub", "bad tenant"} {
		if err := os.RemoveAll(filepath.Join(dir, d)); err != nil {
			t.Fatal(err)
		}
	}
	_, err = LoadDir(dir)
	if !errors.As(err, &le) {
		t.Fatalf("err = %v, want *LoadError", err)
	}
	conflicts := map[string]string{
		"globex/g.json":          "g@1.0.0 has other content than",
		"globex/h@1.0.0+b2.json": `resolving "h" would be ambiguous`,
	}
	if len(le.Problems) != len(conflicts) {
		t.Fatalf("got %d problems, want %d:\n%v", len(le.Problems), len(conflicts), err)
	}
	for _, p := range le.Problems {
		rel, _ := filepath.Rel(dir, p.Source)
		problem, ok := conflicts[filepath.ToSlash(rel)]
		if !ok {
			t.Errorf("unexpected problem %v", p)
			continue
		}
		checkErrors(t, p.Err, []want{{"version", CodeConflict, problem}})
	}
}

func TestLoadDirFollowsSymlinks(t *testing.T) {
	// The layout of a Kubernetes ConfigMap volume: visible names are
	// symbolic links into a hidden, versioned directory.
	dir := writeTree(t, map[string]string{
		"..data_v1/default.json": manifestJSON("k8s", "1.0.0", "t"),
	})
	if err := os.Mkdir(filepath.Join(dir, "acme"), 0o755); err != nil {
		t.Fatal(err)
	}
	if err := os.Symlink(filepath.Join(dir, "..data_v1", "default.json"), filepath.Join(dir, "acme", "default.json")); err != nil {
		t.Fatal(err)
	}
	r, err := LoadDir(dir)
	if err != nil {
		t.Fatal(err)
	}
	if m, err := r.Resolve("acme", ""); err != nil || m.Name != "k8s" {
		t.Errorf("Resolve = %v, %v", m, err)
	}
}

// TestDeployManifests loads the registry that `make run` uses.
func TestDeployManifests(t *testing.T) {
	r, err := LoadDir(filepath.Join("..", "..", "deploy", "manifests"))
	if err != nil {
		t.Fatal(err)
	}
	if _, err := r.Resolve("default", ""); err != nil {
		t.Fatal(err)
	}
	if len(r.Manifests("default")) < 2 {
		t.Errorf("deploy/manifests/default holds %d manifests, want a default and a named one", len(r.Manifests("default")))
	}
	for _, m := range r.Manifests("default") {
		if got, err := r.Resolve("default", m.Ref()); err != nil || got != m {
			t.Errorf("Resolve(default, %s) = %v, %v", m.Ref(), got, err)
		}
	}
}

func TestNewRegistry(t *testing.T) {
	a := mustParse(t, []byte(manifestJSON("a", "1.0.0", "ta")))
	b := mustParse(t, []byte(manifestJSON("b", "1.0.0", "tb")))
	r, err := NewRegistry(map[string][]*Manifest{"t1": {a}, "t2": {b}}, map[string]*Manifest{"t1": b})
	if err != nil {
		t.Fatal(err)
	}
	// The default is resolvable by name in its own tenant.
	if m, err := r.Resolve("t1", "b"); err != nil || m.Permissions.Tools[0] != "tb" {
		t.Errorf("Resolve(t1, b) = %v, %v", m, err)
	}
	if _, err := r.Resolve("t2", "a"); !errors.Is(err, ErrUnknown) {
		t.Errorf("Resolve(t2, a): %v, want ErrUnknown", err)
	}
	// The registry keeps its own copies.
	a.Permissions.Tools[0] = "mutated"
	if m, _ := r.Resolve("t1", "a"); m.Permissions.Tools[0] != "ta" {
		t.Error("mutating the caller's manifest changed the registry")
	}

	t.Run("errors", func(t *testing.T) {
		bad := mustParse(t, []byte(manifestJSON("bad", "1.0.0", "t")))
		bad.Permissions.Net.Domains = []string{"*"}
		_, err := NewRegistry(map[string][]*Manifest{"t1": {a, nil, bad}, "bad/tenant": {b}}, map[string]*Manifest{"t1": nil})
		var le *LoadError
		if !errors.As(err, &le) {
			t.Fatalf("err = %v, want *LoadError", err)
		}
		want := []string{
			`defaults["t1"]: nil manifest`,
			`byTenant["bad/tenant"][0]: tenant "bad/tenant": character '/' is not allowed`,
			`byTenant["t1"][1]: nil manifest`,
			`byTenant["t1"][2]: manifest: invalid: permissions.net.domains[0]: a bare "*"`,
		}
		if len(le.Problems) != len(want) {
			t.Fatalf("got %d problems, want %d:\n%v", len(le.Problems), len(want), err)
		}
		for i, w := range want {
			if got := le.Problems[i].Error(); !strings.HasPrefix(got, w) {
				t.Errorf("problem %d = %q, want prefix %q", i, got, w)
			}
		}
	})
}

// TestResolveConcurrent resolves from many goroutines at once; run with
// -race it checks that the registry has no shared mutable state.
func TestResolveConcurrent(t *testing.T) {
	r, err := LoadDir(fixtureDir(t))
	if err != nil {
		t.Fatal(err)
	}
	refs := []struct{ tenant, ref, tool string }{
		{"acme", "", "acme_default"}, {"acme", "coder", "coder_2"}, {"acme", "coder@1.5.0", "coder_1_5"},
		{"globex", "", "globex_default"}, {"acme", "secret-agent", ""},
	}
	var wg sync.WaitGroup
	errs := make(chan error, 8)
	for g := range 8 {
		wg.Go(func() {
			for i := range 2000 {
				q := refs[(g+i)%len(refs)]
				m, err := r.Resolve(q.tenant, q.ref)
				switch {
				case q.tool == "" && !errors.Is(err, ErrUnknown):
					errs <- fmt.Errorf("Resolve(%s, %s) = %v, want ErrUnknown", q.tenant, q.ref, err)
					return
				case q.tool != "" && (err != nil || m.Permissions.Tools[0] != q.tool):
					errs <- fmt.Errorf("Resolve(%s, %s) = %v, %v", q.tenant, q.ref, m, err)
					return
				case q.tool != "":
					if _, ok := r.ByDigest(m.Digest()); !ok {
						errs <- fmt.Errorf("ByDigest of %s failed", m.Ref())
						return
					}
				}
			}
		})
	}
	wg.Wait()
	close(errs)
	for err := range errs {
		t.Error(err)
	}
}

func BenchmarkResolve(b *testing.B) {
	r, err := LoadDir(fixtureDir(b))
	if err != nil {
		b.Fatal(err)
	}
	b.ReportAllocs()
	for b.Loop() {
		if _, err := r.Resolve("acme", "coder"); err != nil {
			b.Fatal(err)
		}
	}
}
