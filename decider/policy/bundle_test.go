package policy

import (
	"crypto/sha256"
	"encoding/hex"
	"errors"
	"maps"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"testing"
)

// TestComputeRevisionGolden pins the revision framing documented at
// ComputeRevision with a vector built by hand here.
func TestComputeRevisionGolden(t *testing.T) {
	files := map[string]string{"b/c.rego": "yz", "a.rego": "x", "a_test.rego": "ignored"}
	frame := func(p, c string) string {
		be := func(n int) string { return string([]byte{0, 0, 0, 0, 0, 0, 0, byte(n)}) }
		return be(len(p)) + p + be(len(c)) + c
	}
	sum := sha256.Sum256([]byte(frame("a.rego", "x") + frame("b/c.rego", "yz")))
	want := "sha256:" + hex.EncodeToString(sum[:])
	if got := ComputeRevision(files); got != want {
		t.Errorf("ComputeRevision = %s, want %s", got, want)
	}
	golden, err := os.ReadFile("testdata/revision.golden")
	if err != nil {
		t.Fatal(err)
	}
	if strings.TrimSpace(string(golden)) != want {
		t.Errorf("testdata/revision.golden = %s, want %s", golden, want)
	}
}

func TestRevisionIgnoresTestsOnly(t *testing.T) {
	base := map[string]string{"a.rego": "package a\n", "a_test.rego": "package a_test\n"}
	for _, tc := range []struct {
		name  string
		edit  func(map[string]string)
		equal bool
	}{
		{"test file edited", func(f map[string]string) { f["a_test.rego"] += "# x\n" }, true},
		{"test file added", func(f map[string]string) { f["b_test.rego"] = "package b_test\n" }, true},
		{"policy edited", func(f map[string]string) { f["a.rego"] += "# x\n" }, false},
		{"policy renamed", func(f map[string]string) { f["b.rego"] = f["a.rego"]; delete(f, "a.rego") }, false},
		{"content moved between files", func(f map[string]string) { f["a.rego"] = "package"; f["b.rego"] = " a\n" }, false},
	} {
		t.Run(tc.name, func(t *testing.T) {
			files := map[string]string{}
			for k, v := range base {
				files[k] = v
			}
			tc.edit(files)
			if got := ComputeRevision(files) == ComputeRevision(base); got != tc.equal {
				t.Errorf("revisions equal = %v, want %v", got, tc.equal)
			}
		})
	}
}

func TestDefaultBundle(t *testing.T) {
	a, b := Default(), Default()
	if a.Revision != b.Revision || a.Revision != ComputeRevision(a.Files) {
		t.Fatalf("unstable default revision: %s %s", a.Revision, b.Revision)
	}
	for _, f := range []string{"decide.rego", "manifest.rego", "tools.rego", "decide_test.rego"} {
		if a.Files[f] == "" {
			t.Errorf("default bundle lacks %s", f)
		}
	}
	a.Files["decide.rego"] = ""
	if b.Files["decide.rego"] == "" {
		t.Error("Default returned shared Files")
	}
	d, err := LoadDir("bundle")
	if err != nil {
		t.Fatal(err)
	}
	if d.Revision != b.Revision {
		t.Errorf("LoadDir(bundle) revision %s, Default %s", d.Revision, b.Revision)
	}
}

func TestLoadDir(t *testing.T) {
	dir := writeBundle(t, map[string]string{
		"decide.rego":         "package aegis.decide\n\n" + allowAll + "\n",
		"lib/util.rego":       "package aegis.util\n\nx := 1\n",
		"decide_test.rego":    "package aegis.decide_test\n\ntest_x if true\n",
		"README.md":           "not policy",
		".git/hooks/x.rego":   "not loaded",
		".hidden.rego":        "not loaded",
		"lib/.swap/skip.rego": "not loaded",
	})
	b, err := LoadDir(dir)
	if err != nil {
		t.Fatal(err)
	}
	want := "decide.rego decide_test.rego lib/util.rego"
	if g := strings.Join(slices.Sorted(maps.Keys(b.Files)), " "); g != want {
		t.Errorf("files %q, want %q", g, want)
	}
	if _, err := New(b); err != nil {
		t.Errorf("New: %v", err)
	}
	for _, tc := range []struct {
		name string
		dir  string
	}{
		{"missing", filepath.Join(dir, "nope")},
		{"only tests", writeBundle(t, map[string]string{"x_test.rego": "package x\n"})},
		{"empty", t.TempDir()},
	} {
		t.Run(tc.name, func(t *testing.T) {
			if _, err := LoadDir(tc.dir); !errors.Is(err, ErrBundle) {
				t.Errorf("LoadDir: err = %v, want ErrBundle", err)
			}
		})
	}
}
