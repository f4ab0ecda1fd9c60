package manifest

import (
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"slices"
	"sort"
	"strings"
)

// DefaultFile is the file name, in a tenant directory, of the manifest that
// serves the tenant's sessions that name no manifest.
const DefaultFile = "default.json"

// MaxTenantLen bounds a tenant directory name; it equals the envelope's
// bound on tenant_id.
const MaxTenantLen = 128

// Registry holds the manifests of every tenant. It is immutable once built
// (it keeps deep copies of what it was given) and safe for concurrent use.
// The manifests it returns are shared: callers must not modify them (use
// Clone). A nil *Registry holds nothing: every Resolve fails with
// ErrUnknown.
type Registry struct {
	tenants  map[string]*tenantSet
	byDigest map[string]*Manifest
}

// tenantSet is one tenant's manifests.
type tenantSet struct {
	def    *Manifest
	byRef  map[string]*Manifest // "name@version", exact
	latest map[string]*Manifest // name -> what Resolve(name) returns
	all    []*Manifest          // by name, then descending precedence
}

// source is one manifest offered to build, with where it came from.
type source struct {
	tenant    string
	origin    string // file path, or NewRegistry entry label
	m         *Manifest
	isDefault bool
}

// LoadDir loads a registry from dir, laid out as
//
//	<dir>/<tenant>/<name>.json            a manifest whose name is <name>
//	<dir>/<tenant>/<name>@<version>.json  a manifest whose ref is <name>@<version>
//	<dir>/<tenant>/default.json           the tenant's default manifest (any name)
//
// Tenant directory names follow the envelope's tenant_id rule (1..128 of
// A-Z a-z 0-9 . _ : @ -). Entries whose names start with "." are ignored at
// both levels (so Kubernetes ConfigMap mounts and editor files are harmless),
// as are files not ending in ".json" inside tenant directories; symbolic
// links are followed. A ".json" file directly in dir and a directory inside
// a tenant directory are errors.
//
// Loading is all or nothing: if any file is bad, LoadDir returns a nil
// registry and a *LoadError that names every bad file with all of its field
// errors. An empty dir yields an empty registry (every session is then
// denied with MANIFEST_UNKNOWN). A dir that cannot be read is reported as a
// plain wrapped error.
func LoadDir(dir string) (*Registry, error) {
	entries, err := os.ReadDir(dir)
	if err != nil {
		return nil, fmt.Errorf("load manifests: %w", err)
	}
	var (
		srcs     []source
		problems []*SourceError
	)
	fail := func(path string, err error) {
		problems = append(problems, &SourceError{Source: path, Err: err})
	}
	for _, e := range entries {
		if strings.HasPrefix(e.Name(), ".") {
			continue
		}
		path := filepath.Join(dir, e.Name())
		fi, err := os.Stat(path)
		if err != nil {
			fail(path, err)
			continue
		}
		if !fi.IsDir() {
			if strings.HasSuffix(e.Name(), ".json") {
				fail(path, errors.New("manifest outside a tenant directory: expected <dir>/<tenant>/<name>.json"))
			}
			continue
		}
		if err := checkTenant(e.Name()); err != nil {
			fail(path, err)
			continue
		}
		tsrcs, tproblems := loadTenant(e.Name(), path)
		srcs = append(srcs, tsrcs...)
		problems = append(problems, tproblems...)
	}
	if len(problems) > 0 {
		return nil, &LoadError{Problems: problems}
	}
	return build(srcs)
}

// loadTenant reads one tenant directory.
func loadTenant(tenant, dir string) ([]source, []*SourceError) {
	entries, err := os.ReadDir(dir)
	if err != nil {
		return nil, []*SourceError{{Source: dir, Err: err}}
	}
	var (
		srcs     []source
		problems []*SourceError
	)
	for _, e := range entries {
		name := e.Name()
		if strings.HasPrefix(name, ".") {
			continue
		}
		path := filepath.Join(dir, name)
		fi, err := os.Stat(path)
		if err != nil {
			problems = append(problems, &SourceError{Source: path, Err: err})
			continue
		}
		if fi.IsDir() {
			problems = append(problems, &SourceError{Source: path, Err: errors.New("unexpected directory: tenant directories hold manifest files only")})
			continue
		}
		stem, ok := strings.CutSuffix(name, ".json")
		if !ok {
			continue
		}
		data, err := readFile(path)
		if err != nil {
			problems = append(problems, &SourceError{Source: path, Err: err})
			continue
		}
		m, errs := parse(data, current)
		isDefault := name == DefaultFile
		if m != nil && !isDefault && stem != m.Name && stem != m.Ref() {
			errs = append(errs, FieldError{
				Path:    "name",
				Code:    CodeNameMismatch,
				Problem: fmt.Sprintf("%q does not match the file name %q (expected %s.json or %s.json)", m.Name, name, m.Name, m.Ref()),
			})
		}
		if len(errs) > 0 {
			problems = append(problems, &SourceError{Source: path, Err: &ValidationError{Errors: errs}})
			continue
		}
		srcs = append(srcs, source{tenant: tenant, origin: path, m: m, isDefault: isDefault})
	}
	return srcs, problems
}

// NewRegistry builds a registry from manifests held by a program: byTenant
// lists each tenant's manifests, defaults names each tenant's default
// manifest (which is also resolvable by its name, as if listed in byTenant).
// Every manifest is validated and deep-copied; the caller may reuse its
// values afterwards. Errors are reported as by LoadDir, each source named
// like byTenant["acme"][2] or defaults["acme"].
func NewRegistry(byTenant map[string][]*Manifest, defaults map[string]*Manifest) (*Registry, error) {
	var (
		srcs     []source
		problems []*SourceError
	)
	add := func(tenant, origin string, m *Manifest, isDefault bool) {
		switch {
		case m == nil:
			problems = append(problems, &SourceError{Source: origin, Err: errors.New("nil manifest")})
		case checkTenant(tenant) != nil:
			problems = append(problems, &SourceError{Source: origin, Err: checkTenant(tenant)})
		default:
			if err := m.Validate(); err != nil {
				problems = append(problems, &SourceError{Source: origin, Err: err})
				return
			}
			srcs = append(srcs, source{tenant: tenant, origin: origin, m: m.Clone(), isDefault: isDefault})
		}
	}
	for _, t := range sortedKeys(defaults) {
		add(t, fmt.Sprintf("defaults[%q]", t), defaults[t], true)
	}
	for _, t := range sortedKeys(byTenant) {
		for i, m := range byTenant[t] {
			add(t, fmt.Sprintf("byTenant[%q][%d]", t, i), m, false)
		}
	}
	if len(problems) > 0 {
		return nil, &LoadError{Problems: problems}
	}
	return build(srcs)
}

// build indexes validated manifests. Within a tenant, two sources with the
// same ref must have the same digest (they then share one *Manifest), and
// two versions of one name must differ in precedence, so that resolving by
// name is never ambiguous.
func build(srcs []source) (*Registry, error) {
	type seen struct {
		m      *Manifest
		origin string
		digest string
		ver    semver
	}
	r := &Registry{tenants: make(map[string]*tenantSet), byDigest: make(map[string]*Manifest)}
	refs := make(map[string]map[string]seen) // tenant -> ref -> first source
	var problems []*SourceError
	for _, s := range srcs {
		digest, err := s.m.digest()
		if err != nil {
			problems = append(problems, &SourceError{Source: s.origin, Err: err})
			continue
		}
		ver, _ := parseSemver(s.m.Version) // validated
		ts := r.tenants[s.tenant]
		if ts == nil {
			ts = &tenantSet{byRef: make(map[string]*Manifest), latest: make(map[string]*Manifest)}
			r.tenants[s.tenant] = ts
			refs[s.tenant] = make(map[string]seen)
		}
		m := s.m
		if prev, ok := refs[s.tenant][m.Ref()]; ok {
			if prev.digest != digest {
				problems = append(problems, conflict(s.origin, "%s has other content than %s (%s vs %s)", m.Ref(), prev.origin, digest, prev.digest))
				continue
			}
			m = prev.m // the same manifest listed twice, e.g. default.json and <name>.json
		} else {
			var clash *seen
			for _, o := range refs[s.tenant] {
				if o.m.Name == m.Name && o.ver.compare(ver) == 0 {
					clash = &o
					break
				}
			}
			if clash != nil {
				problems = append(problems, conflict(s.origin, "version %q of %q has the same precedence as version %q in %s: resolving %q would be ambiguous",
					m.Version, m.Name, clash.m.Version, clash.origin, m.Name))
				continue
			}
			refs[s.tenant][m.Ref()] = seen{m: m, origin: s.origin, digest: digest, ver: ver}
			ts.byRef[m.Ref()] = m
			ts.all = append(ts.all, m)
			if l := ts.latest[m.Name]; l == nil || ver.preferred(refs[s.tenant][l.Ref()].ver) {
				ts.latest[m.Name] = m
			}
			if _, ok := r.byDigest[digest]; !ok {
				r.byDigest[digest] = m
			}
		}
		if s.isDefault {
			ts.def = m
		}
	}
	if len(problems) > 0 {
		return nil, &LoadError{Problems: problems}
	}
	for t, ts := range r.tenants {
		sort.Slice(ts.all, func(i, j int) bool {
			a, b := ts.all[i], ts.all[j]
			if a.Name != b.Name {
				return a.Name < b.Name
			}
			return refs[t][a.Ref()].ver.compare(refs[t][b.Ref()].ver) > 0
		})
	}
	return r, nil
}

func conflict(origin, format string, args ...any) *SourceError {
	return &SourceError{Source: origin, Err: &ValidationError{Errors: []FieldError{{
		Path: "version", Code: CodeConflict, Problem: fmt.Sprintf(format, args...),
	}}}}
}

// Resolve returns tenant's manifest for ref:
//
//   - ""             the tenant's default manifest (default.json);
//   - "name"         the highest release version of name by semver
//     precedence; pre-release versions (1.3.0-rc.1) are chosen only when
//     name has no release version, so publishing a release candidate does
//     not move sessions that name no version;
//   - "name@version" exactly that version (compared as strings).
//
// A tenant only ever resolves its own manifests: there is no fallback to
// another tenant, nor to a "default" tenant. Every failure wraps ErrUnknown.
func (r *Registry) Resolve(tenant, ref string) (*Manifest, error) {
	var ts *tenantSet
	if r != nil {
		ts = r.tenants[tenant]
	}
	if ts == nil {
		return nil, fmt.Errorf("%w: tenant %q has no manifests", ErrUnknown, tenant)
	}
	var m *Manifest
	switch {
	case ref == "":
		if m = ts.def; m == nil {
			return nil, fmt.Errorf("%w: tenant %q has no default manifest (%s)", ErrUnknown, tenant, DefaultFile)
		}
		return m, nil
	case strings.Contains(ref, "@"):
		m = ts.byRef[ref]
	default:
		m = ts.latest[ref]
	}
	if m == nil {
		return nil, fmt.Errorf("%w: tenant %q has no manifest %q", ErrUnknown, tenant, ref)
	}
	return m, nil
}

// ByDigest returns the manifest whose Digest is digest, whichever tenant
// holds it (equal digests mean equal content). The replayer uses it to find
// the manifest a recorded decision was made under.
func (r *Registry) ByDigest(digest string) (*Manifest, bool) {
	if r == nil {
		return nil, false
	}
	m, ok := r.byDigest[digest]
	return m, ok
}

// Tenants returns the tenants that have at least one manifest, sorted.
func (r *Registry) Tenants() []string {
	if r == nil {
		return nil
	}
	return sortedKeys(r.tenants)
}

// Manifests returns tenant's manifests sorted by name, then from the highest
// version to the lowest. The slice is the caller's; the manifests are shared.
func (r *Registry) Manifests(tenant string) []*Manifest {
	if r == nil || r.tenants[tenant] == nil {
		return nil
	}
	return slices.Clone(r.tenants[tenant].all)
}

// checkTenant applies the envelope's tenant_id rule to a tenant name.
func checkTenant(t string) error {
	if t == "" || len(t) > MaxTenantLen {
		return fmt.Errorf("tenant %q: must be 1..%d characters", t, MaxTenantLen)
	}
	for i := 0; i < len(t); i++ {
		c := t[i]
		if !('a' <= c && c <= 'z' || 'A' <= c && c <= 'Z' || '0' <= c && c <= '9' || strings.IndexByte("._:@-", c) >= 0) {
			return fmt.Errorf("tenant %q: character %q is not allowed (allowed: A-Z a-z 0-9 . _ : @ -)", t, c)
		}
	}
	return nil
}

func sortedKeys[V any](m map[string]V) []string {
	keys := make([]string, 0, len(m))
	for k := range m {
		keys = append(keys, k)
	}
	sort.Strings(keys)
	return keys
}
