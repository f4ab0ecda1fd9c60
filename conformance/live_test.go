package conformance_test

import (
	"bytes"
	"context"
	"encoding/json"
	"encoding/xml"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"time"

	"aegis.dev/aegis/conformance"
	"aegis.dev/aegis/internal/ctl"
)

// buildAegisd builds ./cmd/aegisd into a temp dir.
func buildAegisd(tb testing.TB) string {
	tb.Helper()
	bin := filepath.Join(tb.TempDir(), "aegisd")
	cmd := exec.Command("go", "build", "-o", bin, "aegis.dev/aegis/cmd/aegisd")
	if out, err := cmd.CombinedOutput(); err != nil {
		tb.Fatalf("go build aegisd: %v\n%s", err, out)
	}
	return bin
}

// addrFromFile waits for aegisd's --addr-file and returns its HTTP address
// and its embedded broker's.
func addrFromFile(tb testing.TB, file string) (string, string) {
	tb.Helper()
	deadline := time.Now().Add(60 * time.Second)
	for {
		if b, err := os.ReadFile(file); err == nil {
			var addrs struct {
				HTTP  string `json:"http"`
				Kafka string `json:"kafka"`
			}
			if err := json.Unmarshal(b, &addrs); err != nil || addrs.HTTP == "" || addrs.Kafka == "" {
				tb.Fatalf("addr file: %q (%v)", b, err)
			}
			return addrs.HTTP, addrs.Kafka
		}
		if time.Now().After(deadline) {
			tb.Fatalf("aegisd did not write %s", file)
		}
		time.Sleep(50 * time.Millisecond)
	}
}

// TestRunnerAgainstSeparateAegisdIntegration runs `aegisctl conformance run --target`
// against aegisd started as its own process with --dev, the shipped
// manifests and the bundle of `aegisctl conformance policy` (the
// documented preconditions), then `aegisctl conformance run` without a
// target, which starts aegisd itself.
func TestRunnerAgainstSeparateAegisdIntegration(t *testing.T) {
	if testing.Short() {
		t.Skip("builds and starts aegisd processes")
	}
	bin := buildAegisd(t)
	// The conformance policy bundle as an operator writes it.
	policyDir := filepath.Join(t.TempDir(), "policy")
	var pout, perr bytes.Buffer
	if code := ctl.Main(context.Background(), ctl.IO{Stdin: strings.NewReader(""), Stdout: &pout, Stderr: &perr},
		[]string{"conformance", "policy", "--out", policyDir}); code != ctl.ExitOK {
		t.Fatalf("conformance policy: exit %d: %s", code, perr.String())
	}
	addrFile := filepath.Join(t.TempDir(), "addrs.json")
	// The operator's approval secret, given to aegisd and to the runner
	// (the signed-approval case).
	secretFile := filepath.Join(t.TempDir(), "approval.secret")
	if err := os.WriteFile(secretFile, []byte("live-conformance-approval-secret-0123456789"), 0o600); err != nil {
		t.Fatal(err)
	}
	cmd := exec.Command(bin, "--dev", "--data-dir", t.TempDir(), "--kafka-addr", "127.0.0.1:0", "--http-addr", "127.0.0.1:0",
		"--addr-file", addrFile, "--partitions", "3", "--instance", "live", "--manifests", "manifests", "--policy", policyDir,
		"--approval-secret-file", secretFile, "--log-level", "error")
	var stderr bytes.Buffer
	cmd.Stderr = &stderr
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		_ = cmd.Process.Signal(syscall.SIGTERM)
		_ = cmd.Wait()
	})
	addr, kafka := addrFromFile(t, addrFile)
	waitReady(t, "http://"+addr)

	dir := t.TempDir()
	reportFile, junitFile := filepath.Join(dir, "report.json"), filepath.Join(dir, "junit.xml")
	var out, errb bytes.Buffer
	code := ctl.Main(context.Background(), ctl.IO{Stdin: strings.NewReader(""), Stdout: &out, Stderr: &errb},
		[]string{"conformance", "run", "--target", "http://" + addr, "--provides", conformance.RequireConformancePolicy,
			"--brokers", kafka, "--topic-prefix", "aegis.", "--approval-secret-file", secretFile, "--report", reportFile, "--junit", junitFile})
	if code != ctl.ExitOK {
		t.Fatalf("exit %d\n%s\n%s\naegisd: %s", code, out.String(), errb.String(), stderr.String())
	}
	var rep conformance.Report
	b, err := os.ReadFile(reportFile)
	if err != nil {
		t.Fatal(err)
	}
	if err := json.Unmarshal(b, &rep); err != nil {
		t.Fatal(err)
	}
	// Under --dev: cases needing tenant credentials and tamper cases
	// (the store is not the runner's) are skipped, everything else passes.
	failures(t, &rep, func(c conformance.CaseResult) bool {
		return strings.HasPrefix(c.ID, "TAMP-") || strings.Contains(c.Message, "API keys") || c.ID == "APPR-SCN-005" || c.ID == "APPR-WAIT-001"
	})
	if rep.Passed < 100 {
		t.Errorf("%d passed against a --dev target, want at least 100", rep.Passed)
	}
	for _, c := range rep.Cases {
		if c.Status == conformance.StatusPass && len(c.Evidence) == 0 {
			t.Errorf("%s passed without evidence", c.ID)
		}
	}
	var junit struct {
		Tests    int `xml:"tests,attr"`
		Failures int `xml:"failures,attr"`
	}
	jb, err := os.ReadFile(junitFile)
	if err != nil {
		t.Fatal(err)
	}
	if err := xml.Unmarshal(jb, &junit); err != nil {
		t.Fatal(err)
	}
	if junit.Tests != len(rep.Cases) || junit.Failures != 0 {
		t.Errorf("junit: %d tests, %d failures; report: %d cases", junit.Tests, junit.Failures, len(rep.Cases))
	}

	// Without --target, aegisctl starts aegisd itself and owns its store:
	// nothing is skipped.
	out.Reset()
	errb.Reset()
	ctx, cancel := context.WithTimeout(context.Background(), 3*time.Minute)
	defer cancel()
	code = ctl.Main(ctx, ctl.IO{Stdin: strings.NewReader(""), Stdout: &out, Stderr: &errb},
		[]string{"conformance", "run", "--aegisd", bin, "--report", reportFile})
	if code != ctl.ExitOK {
		t.Fatalf("embedded: exit %d\n%s\n%s", code, out.String(), errb.String())
	}
	if !strings.Contains(out.String(), " 0 failed, 0 skipped") {
		t.Errorf("embedded: %s", out.String())
	}
}

// TestRunnerExitsNonZeroOnFailure: a pack whose expectation the target
// does not meet makes the run exit 1 and the report name the case.
func TestRunnerExitsNonZeroOnFailure(t *testing.T) {
	packs := []*conformance.Pack{}
	dir := t.TempDir()
	pack := `name: wrong
cases:
  - {id: WRONG-001, requirement: REQ-DENY-DEFAULT, description: expects an allow for an undeclared tool, decide: {request: {manifest: {schema: aegis.dev/manifest/v0.1, name: x, version: 1.0.0, publisher: p, permissions: {}}, event: {ts_unix_ms: 1767225601000, event_type: TOOL_CALL_PROPOSED, payload: {tool_name: t, call_id: c, args: {}}}}, expect: {outcome: allow, reason: OK}}}
`
	if err := os.WriteFile(filepath.Join(dir, "wrong.yaml"), []byte(pack), 0o644); err != nil {
		t.Fatal(err)
	}
	target := startEmbedded(t, packs, nil)
	base, keys := target.Base, target.Keys
	reportFile := filepath.Join(t.TempDir(), "report.json")
	var out, errb bytes.Buffer
	code := ctl.Main(context.Background(), ctl.IO{Stdin: strings.NewReader(""), Stdout: &out, Stderr: &errb},
		[]string{"conformance", "run", "--target", base, "--api-key", keys["default"], "--packs", dir, "--report", reportFile})
	if code != ctl.ExitFailed {
		t.Fatalf("exit %d, want %d\n%s%s", code, ctl.ExitFailed, out.String(), errb.String())
	}
	if !strings.Contains(errb.String(), "FAIL WRONG-001 (REQ-DENY-DEFAULT)") {
		t.Errorf("stderr: %s", errb.String())
	}
	b, err := os.ReadFile(reportFile)
	if err != nil {
		t.Fatal(err)
	}
	var rep conformance.Report
	if err := json.Unmarshal(b, &rep); err != nil {
		t.Fatal(err)
	}
	if rep.Failed != 1 || len(rep.Requirements) != 1 || rep.Requirements[0].Status != conformance.StatusFail || len(rep.Cases[0].Evidence) != 1 || rep.Cases[0].Evidence[0].Status != 200 {
		t.Errorf("report: %+v", rep)
	}
}
