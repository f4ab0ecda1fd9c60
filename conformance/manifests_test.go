package conformance_test

import (
	"bytes"
	"io/fs"
	"os"
	"path/filepath"
	"regexp"
	"sort"
	"testing"

	"aegis.dev/aegis/conformance"
)

// TestShippedManifestsMatchPacks: conformance/manifests, which operators
// install on a live target (aegisd --manifests conformance/manifests), is
// exactly the manifests the shipped packs' scenarios run under. Regenerate
// with AEGIS_UPDATE_MANIFESTS=1.
func TestShippedManifestsMatchPacks(t *testing.T) {
	packs, err := conformance.Builtin()
	if err != nil {
		t.Fatal(err)
	}
	want, err := conformance.ManifestSet(packs)
	if err != nil {
		t.Fatal(err)
	}
	if os.Getenv("AEGIS_UPDATE_MANIFESTS") == "1" {
		if err := os.RemoveAll("manifests"); err != nil {
			t.Fatal(err)
		}
		if err := conformance.WriteManifests("manifests", packs); err != nil {
			t.Fatal(err)
		}
	}
	got := make(map[string][]byte)
	err = filepath.WalkDir("manifests", func(p string, d fs.DirEntry, err error) error {
		if err != nil || d.IsDir() {
			return err
		}
		b, err := os.ReadFile(p)
		rel, _ := filepath.Rel("manifests", p)
		got[filepath.ToSlash(rel)] = b
		return err
	})
	if err != nil {
		t.Fatal(err)
	}
	var names []string
	for k := range want {
		names = append(names, k)
	}
	sort.Strings(names)
	for _, k := range names {
		if !bytes.Equal(got[k], want[k]) {
			t.Errorf("manifests/%s differs from the packs' (AEGIS_UPDATE_MANIFESTS=1 go test -run TestShippedManifestsMatchPacks ./conformance)", k)
		}
		delete(got, k)
	}
	for k := range got {
		t.Errorf("manifests/%s is used by no pack", k)
	}
}

// TestRequirementsDocumented: every requirement a shipped case names is in
// docs/requirements.md, and every requirement listed there has a case.
func TestRequirementsDocumented(t *testing.T) {
	packs, err := conformance.Builtin()
	if err != nil {
		t.Fatal(err)
	}
	doc, err := os.ReadFile("../docs/requirements.md")
	if err != nil {
		t.Fatal(err)
	}
	listed := make(map[string]bool)
	for _, m := range regexp.MustCompile("(?m)^\\| `(REQ-[A-Z0-9-]+)` \\|").FindAllSubmatch(doc, -1) {
		listed[string(m[1])] = true
	}
	used := make(map[string]bool)
	n := 0
	for _, p := range packs {
		for _, c := range p.Cases {
			used[c.Requirement] = true
			n++
			if !listed[c.Requirement] {
				t.Errorf("%s: requirement %s is not in docs/requirements.md", c.ID, c.Requirement)
			}
		}
	}
	for id := range listed {
		if !used[id] {
			t.Errorf("docs/requirements.md lists %s, which no case checks", id)
		}
	}
	if n < 120 {
		t.Errorf("%d cases, want at least 120", n)
	}
}
