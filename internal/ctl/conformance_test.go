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
	// A fake aegisd: writes the test server's address to --addr-file,
	// then ignores SIGTERM.
	script := "#!/bin/sh\nwhile [ $# -gt 0 ]; do if [ \"$1\" = --addr-file ]; then f=$2; fi; shift; done\n" +
		"echo $$ > " + pidFile + "\nprintf '{\"http\":\"%s\"}' " + strings.TrimPrefix(srv.URL, "http://") + " > \"$f\"\ntrap '' TERM\nexec sleep 300\n"
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
