package policy

import (
	"bytes"
	"context"
	"errors"
	"os"
	"path/filepath"
	"strings"
	"testing"
)

// TestBundleUnitTests runs the default bundle's Rego unit tests the way
// `aegisctl policy test` does.
func TestBundleUnitTests(t *testing.T) {
	var out bytes.Buffer
	passed, failed, err := Test(context.Background(), "bundle", &out)
	if err != nil {
		t.Fatalf("Test: %v\n%s", err, out.String())
	}
	if failed != 0 || passed < 15 {
		t.Fatalf("passed %d, failed %d\n%s", passed, failed, out.String())
	}
}

// writeBundle writes files into a fresh directory and returns it.
func writeBundle(tb testing.TB, files map[string]string) string {
	tb.Helper()
	dir := tb.TempDir()
	for name, src := range files {
		p := filepath.Join(dir, filepath.FromSlash(name))
		if err := os.MkdirAll(filepath.Dir(p), 0o755); err != nil {
			tb.Fatal(err)
		}
		if err := os.WriteFile(p, []byte(src), 0o644); err != nil {
			tb.Fatal(err)
		}
	}
	return dir
}

func TestTestCounts(t *testing.T) {
	dir := writeBundle(t, map[string]string{
		"decide.rego": "package aegis.decide\n\n" + allowAll + "\n",
		"decide_test.rego": `package aegis.decide_test

import data.aegis.decide

test_allows if decide.decision.outcome == "allow"

test_denies if decide.decision.outcome == "deny"

test_errors if to_number("x") == 1
`,
	})
	var out bytes.Buffer
	passed, failed, err := Test(context.Background(), dir, &out)
	if err != nil {
		t.Fatalf("Test: %v", err)
	}
	if passed != 1 || failed != 2 {
		t.Errorf("passed %d, failed %d; want 1, 2\n%s", passed, failed, out.String())
	}
	for _, want := range []string{"test_allows: PASS", "test_denies: FAIL", "eval_builtin_error: to_number", "ERROR: 1/3"} {
		if !strings.Contains(out.String(), want) {
			t.Errorf("report lacks %q:\n%s", want, out.String())
		}
	}
}

func TestTestErrors(t *testing.T) {
	for _, tc := range []struct {
		name    string
		files   map[string]string
		wantErr error
	}{
		{"unparsable policy", map[string]string{"decide.rego": "package aegis.decide\n\ndecision := {", "decide_test.rego": "package x\n\ntest_a if true"}, ErrBundle},
		{"unparsable test", map[string]string{"decide.rego": "package aegis.decide\n\n" + allowAll, "decide_test.rego": "package x\n\ntest_a if {"}, ErrBundle},
		{"nondeterministic builtin in test", map[string]string{"decide.rego": "package aegis.decide\n\n" + allowAll, "decide_test.rego": "package x\n\ntest_a if rand.intn(\"a\", 2) < 2"}, ErrBundle},
		{"no policy files", map[string]string{"decide_test.rego": "package x\n\ntest_a if true"}, ErrBundle},
		{"no tests", map[string]string{"decide.rego": "package aegis.decide\n\n" + allowAll}, nil},
	} {
		t.Run(tc.name, func(t *testing.T) {
			_, _, err := Test(context.Background(), writeBundle(t, tc.files), &bytes.Buffer{})
			if err == nil {
				t.Fatal("Test succeeded")
			}
			if tc.wantErr != nil && !errors.Is(err, tc.wantErr) {
				t.Errorf("err = %v, want %v", err, tc.wantErr)
			}
		})
	}
}
