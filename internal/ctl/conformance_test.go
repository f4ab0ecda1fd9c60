package ctl

import (
	"net/http"
	"net/http/httptest"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"
)

// TestConformanceEmbeddedStopIsBounded: an embedded aegisd that ignores
// SIGTERM is killed once the stop grace period has passed; the run ends
// instead of waiting for it forever.
func TestConformanceEmbeddedStopIsBounded(t *testing.T) {
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		w.Header().Set("Content-Type", "application/json")
		if r.URL.Path == "/v1/policy/decide" {
			_, _ = w.Write([]byte(`{"outcome":"deny","reason":"PERMISSION_UNDECLARED"}`))
		}
	}))
	defer srv.Close()
	dir := t.TempDir()
	pidFile := filepath.Join(dir, "pid")
	// A fake aegisd: writes the test server's address to --addr-file
	// (and a broker nothing listens on: the pack has no Kafka case),
	// then ignores SIGTERM.
	script := "#!/bin/sh\nwhile [ $# -gt 0 ]; do if [ \"$1\" = --addr-file ]; then f=$2; fi; shift; done\n" +
		"echo $$ > " + pidFile + "\nprintf '{\"http\":\"%s\",\"kafka\":\"127.0.0.1:1\"}' " + strings.TrimPrefix(srv.URL, "http://") + " > \"$f\"\ntrap '' TERM\nexec sleep 300\n"
	bin := filepath.Join(dir, "aegisd")
	if err := os.WriteFile(bin, []byte(script), 0o755); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		if b, err := os.ReadFile(pidFile); err == nil {
			if pid, err := strconv.Atoi(strings.TrimSpace(string(b))); err == nil {
				_ = syscall.Kill(pid, syscall.SIGKILL)
			}
		}
	})
	packs := filepath.Join(dir, "packs")
	if err := os.MkdirAll(packs, 0o755); err != nil {
		t.Fatal(err)
	}
	pack := "cases:\n  - {id: STOP-001, requirement: REQ-DENY-DEFAULT, description: d, decide: {request: {event: {}}, expect: {outcome: deny}}}\n"
	if err := os.WriteFile(filepath.Join(packs, "stop.yaml"), []byte(pack), 0o644); err != nil {
		t.Fatal(err)
	}
	defer func(d time.Duration) { embeddedStopGrace = d }(embeddedStopGrace)
	embeddedStopGrace = time.Second

	type result struct {
		code           int
		stdout, stderr string
	}
	done := make(chan result, 1)
	go func() {
		code, stdout, stderr := run(t, "", "conformance", "run", "--aegisd", bin, "--packs", packs)
		done <- result{code, stdout, stderr}
	}()
	select {
	case r := <-done:
		if r.code != ExitOK || !strings.Contains(r.stdout, "1 passed") {
			t.Fatalf("exit %d\n%s%s", r.code, r.stdout, r.stderr)
		}
	case <-time.After(20 * time.Second):
		t.Fatal("conformance run did not return: it waits for an aegisd that ignores SIGTERM")
	}
}

// TestConformancePolicyWritesTheBundle: `aegisctl conformance policy --out
// DIR` writes a bundle that aegisd and `aegisctl decide --policy` load: the
// default one plus the conformance rules, which deny POLICY_ERROR for
// their tools and leave other decisions as they were.
func TestConformancePolicyWritesTheBundle(t *testing.T) {
	dir := filepath.Join(t.TempDir(), "policy")
	if code, stdout, stderr := run(t, "", "conformance", "policy", "--out", dir); code != ExitOK || !strings.Contains(stdout, "--provides conformance-policy") {
		t.Fatalf("exit %d\n%s%s", code, stdout, stderr)
	}
	for _, f := range []string{"conformance.rego", "decide.rego", "manifest.rego", "tools.rego"} {
		if _, err := os.Stat(filepath.Join(dir, f)); err != nil {
			t.Error(err)
		}
	}
	const m = `{"schema":"aegis.dev/manifest/v0.1","name":"p","version":"1.0.0","publisher":"c","permissions":{"tools":["search","conformance.builtin_error","conformance.conflict"]}}`
	for tool, want := range map[string]string{"search": `"reason":"OK"`, "conformance.builtin_error": `"reason":"POLICY_ERROR"`, "conformance.conflict": `"reason":"POLICY_ERROR"`} {
		req := `{"manifest":` + m + `,"event":{"tenant_id":"t","session_id":"s","seq":1,"ts_unix_ms":1767225601000,"event_type":"TOOL_CALL_PROPOSED","payload":{"tool_name":"` + tool + `","call_id":"c1","args":{}}}}`
		code, stdout, stderr := run(t, req, "decide", "--policy", dir)
		if code != ExitOK || !strings.Contains(stdout, want) {
			t.Errorf("%s: exit %d, want %s\n%s%s", tool, code, want, stdout, stderr)
		}
	}
	if code, _, stderr := run(t, "", "conformance", "policy"); code != ExitUsage {
		t.Errorf("without --out: exit %d: %s", code, stderr)
	}
}

// TestConformanceKafkaFlags: --brokers, --topic-prefix and
// --approval-secret-file describe a live target; the embedded run uses
// its own aegisd's broker and secret and refuses them, and a bad prefix
// or secret file is a usage error before anything starts.
func TestConformanceKafkaFlags(t *testing.T) {
	short := filepath.Join(t.TempDir(), "short.secret")
	if err := os.WriteFile(short, []byte("too short"), 0o600); err != nil {
		t.Fatal(err)
	}
	for _, args := range [][]string{
		{"--brokers", "127.0.0.1:9092"},
		{"--approval-secret-file", short, "--target", "http://127.0.0.1:1"},
		{"--topic-prefix", "bad prefix/", "--target", "http://127.0.0.1:1"},
	} {
		code, _, stderr := run(t, "", append([]string{"conformance", "run", "--aegisd", "/nonexistent/aegisd"}, args...)...)
		if code != ExitUsage {
			t.Errorf("%v: exit %d, want %d: %s", args, code, ExitUsage, stderr)
		}
	}
}

// TestConformanceMissingFilesAreEnvironmentErrors: a --packs directory or
// an --approval-secret-file that cannot be read is exit 3 (missing file,
// unreadable directory), as for publish; not a usage error.
func TestConformanceMissingFilesAreEnvironmentErrors(t *testing.T) {
	missing := filepath.Join(t.TempDir(), "missing")
	for _, args := range [][]string{
		{"--packs", missing},
		{"--approval-secret-file", missing, "--target", "http://127.0.0.1:1"},
	} {
		code, _, stderr := run(t, "", append([]string{"conformance", "run", "--aegisd", "/nonexistent/aegisd"}, args...)...)
		if code != ExitRuntime {
			t.Errorf("%v: exit %d, want %d: %s", args, code, ExitRuntime, stderr)
		}
	}
}
