package ctl

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"aegis.dev/aegis/schemas/envelope"
)

// run executes aegisctl with stdin and returns exit code, stdout, stderr.
func run(tb testing.TB, stdin string, args ...string) (int, string, string) {
	tb.Helper()
	var out, errOut bytes.Buffer
	code := Main(context.Background(), IO{Stdin: strings.NewReader(stdin), Stdout: &out, Stderr: &errOut}, args)
	return code, out.String(), errOut.String()
}

func TestUsage(t *testing.T) {
	if code, _, stderr := run(t, ""); code != ExitUsage || !strings.Contains(stderr, "commands:") {
		t.Fatalf("code %d stderr %s", code, stderr)
	}
	if code, _, _ := run(t, "", "frobnicate"); code != ExitUsage {
		t.Fatalf("unknown command exit %d", code)
	}
	if code, _, _ := run(t, "", "verify"); code != ExitUsage {
		t.Fatalf("verify without --file exit %d", code)
	}
}

func TestCanon(t *testing.T) {
	cases := []struct {
		name, in, out string
		code          int
	}{
		{"sorts and formats", `{"b": 1.50, "a": [1e2, "\u00e9"], "c": -0}`, `{"a":[100,"é"],"b":1.5,"c":0}`, ExitOK},
		{"duplicate key", `{"a":1,"a":2}`, "", ExitFailed},
		{"huge integer", `[9007199254740993]`, "", ExitFailed},
		{"trailing garbage", `{} {}`, "", ExitFailed},
		{"invalid utf8", "\"\xff\"", "", ExitFailed},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			code, out, stderr := run(t, tc.in, "canon")
			if code != tc.code || out != tc.out {
				t.Fatalf("code %d out %q stderr %q", code, out, stderr)
			}
			if code != ExitOK && !strings.Contains(stderr, "invalid input") {
				t.Fatalf("no message: %q", stderr)
			}
		})
	}
}

func decisionsByKey(tb testing.TB, out string) map[string]DecisionLine {
	tb.Helper()
	m := map[string]DecisionLine{}
	for _, line := range strings.Split(strings.TrimSpace(out), "\n") {
		var d DecisionLine
		if err := json.Unmarshal([]byte(line), &d); err != nil {
			tb.Fatalf("%q: %v", line, err)
		}
		m[d.TenantID+"/"+d.SessionID+"/"+d.CallID] = d
	}
	return m
}

func TestDecideEvents(t *testing.T) {
	code, out, stderr := run(t, "", "decide", "--events", "testdata/events.ndjson", "--manifests", "testdata/manifests")
	if code != ExitOK {
		t.Fatalf("exit %d: %s", code, stderr)
	}
	got := decisionsByKey(t, out)
	want := map[string][2]string{
		"acme/s1/c1":   {"allow", "OK"},
		"acme/s2/c1":   {"deny", "PERMISSION_UNDECLARED"},
		"acme/s1/c2":   {"deny", "EGRESS_DENY"},
		"acme/s1/c3":   {"deny", "PERMISSION_UNDECLARED"}, // "EXEC" is not the declared "exec"
		"acme/s1/c4":   {"deny", "TAINTED_TO_HIGH_RISK"},  // tainted by the TOOL_RESULT at seq 4
		"acme/s1/c5":   {"deny", "BUDGET_EXCEEDED"},       // 5th proposal, max_tool_calls 4
		"globex/s1/c1": {"deny", "MANIFEST_UNKNOWN"},
	}
	if len(got) != len(want) {
		t.Fatalf("got %d decisions, want %d:\n%s", len(got), len(want), out)
	}
	for k, w := range want {
		d := got[k]
		if string(d.Outcome) != w[0] || d.Reason != w[1] {
			t.Errorf("%s: got %s %s, want %s %s", k, d.Outcome, d.Reason, w[0], w[1])
		}
		if !strings.HasPrefix(d.PolicyRevision, "sha256:") || !strings.HasPrefix(d.InputDigest, "sha256:") {
			t.Errorf("%s: digests missing: %+v", k, d)
		}
	}
	if ok := got["acme/s1/c1"]; ok.Constraints.MaxOutputBytes != 1048576 || ok.Constraints.TimeoutMs != 30000 || ok.Seq != 2 || ok.ToolName != "web_fetch" {
		t.Errorf("allow line %+v", ok)
	}
	if got["globex/s1/c1"].ManifestDigest != "" || got["acme/s1/c1"].ManifestDigest == "" {
		t.Errorf("manifest digests wrong")
	}
	// Determinism: a second run prints the same bytes.
	_, out2, _ := run(t, "", "decide", "--events", "testdata/events.ndjson", "--manifests", "testdata/manifests")
	if out2 != out {
		t.Fatal("decide --events is not deterministic")
	}
}

func TestDecideEventsReportsBadLines(t *testing.T) {
	dir := t.TempDir()
	path := filepath.Join(dir, "e.ndjson")
	lines := `{"tenant_id":"acme","session_id":"s1","seq":1,"ts_unix_ms":1,"event_type":"TOOL_CALL_PROPOSED","payload":{"tool_name":"search","call_id":"c1"}}
not json
{"tenant_id":"acme","session_id":"s1","seq":5,"ts_unix_ms":2,"event_type":"MODEL_CALL_STARTED"}
{"tenant_id":"acme","session_id":"s1","seq":2,"ts_unix_ms":3,"event_type":"TOOL_CALL_PROPOSED","payload":{"tool_name":"search","call_id":"c2"}}
`
	if err := os.WriteFile(path, []byte(lines), 0o600); err != nil {
		t.Fatal(err)
	}
	code, out, stderr := run(t, "", "decide", "--events", path, "--manifests", "testdata/manifests")
	if code != ExitFailed {
		t.Fatalf("exit %d", code)
	}
	if !strings.Contains(stderr, "line 2: INVALID_JSON") || !strings.Contains(stderr, "line 3:") || !strings.Contains(stderr, "seq gap") {
		t.Fatalf("stderr %s", stderr)
	}
	if n := len(decisionsByKey(t, out)); n != 2 {
		t.Fatalf("good lines still decided: got %d", n)
	}
}

func TestDecideStateless(t *testing.T) {
	m, err := os.ReadFile("testdata/manifests/acme/default.json")
	if err != nil {
		t.Fatal(err)
	}
	event := `{"tenant_id":"acme","session_id":"s9","seq":3,"ts_unix_ms":1767225600000,"event_type":"TOOL_CALL_PROPOSED","payload":{"tool_name":"exec","call_id":"c1","args":{"bin":"rm"}}}`
	cases := []struct {
		name, req string
		code      int
		outcome   string
		reason    string
	}{
		{"exec not allowed", `{"event":` + event + `,"manifest":` + string(m) + `}`, ExitOK, "deny", "EXEC_DENY"},
		{"exec allowed", `{"event":` + strings.Replace(event, `"rm"`, `"ls"`, 1) + `,"manifest":` + string(m) + `}`, ExitOK, "allow", "OK"},
		{"snapshot over budget", `{"event":` + strings.Replace(event, `"rm"`, `"ls"`, 1) + `,"snapshot":{"tool_calls":4,"events":2,"first_ts_ms":1767225600000},"manifest":` + string(m) + `}`, ExitOK, "deny", "BUDGET_EXCEEDED"},
		{"no manifest", `{"event":` + event + `}`, ExitOK, "deny", "MANIFEST_UNKNOWN"},
		{"invalid manifest", `{"event":` + event + `,"manifest":{"schema":"nope"}}`, ExitFailed, "", ""},
		{"snapshot of another session", `{"event":` + event + `,"snapshot":{"tenant_id":"acme","session_id":"other"}}`, ExitFailed, "", ""},
		{"not a proposal", `{"event":{"tenant_id":"a","session_id":"b","seq":1,"ts_unix_ms":1,"event_type":"MODEL_CALL_STARTED"}}`, ExitFailed, "", ""},
		{"unknown request field", `{"event":` + event + `,"evnt":1}`, ExitFailed, "", ""},
		{"trailing garbage", `{"event":` + event + `} x`, ExitFailed, "", ""},
	}
	// A request over the bound is refused as too large, not cut and then
	// misreported as malformed JSON.
	big := `{"event":` + event + `,"snapshot":{"tenant_id":"acme","session_id":"s9","pad":"` + strings.Repeat("x", maxDecideRequest) + `"}}`
	if code, _, stderr := run(t, big, "decide"); code != ExitFailed || !strings.Contains(stderr, "larger than") {
		t.Fatalf("oversize request: exit %d, stderr %q", code, stderr)
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			code, out, stderr := run(t, tc.req, "decide")
			if code != tc.code {
				t.Fatalf("exit %d, stderr %s", code, stderr)
			}
			if tc.code != ExitOK {
				return
			}
			var d envelope.Decision
			if err := json.Unmarshal([]byte(out), &d); err != nil {
				t.Fatal(err)
			}
			if string(d.Outcome) != tc.outcome || d.Reason != tc.reason {
				t.Fatalf("got %s %s", d.Outcome, d.Reason)
			}
		})
	}
}

func TestSealThenVerify(t *testing.T) {
	sealed := sealTestdata(t)
	lines := strings.Split(strings.TrimSpace(sealed), "\n")
	if len(lines) != 9 {
		t.Fatalf("%d sealed lines", len(lines))
	}
	dir := t.TempDir()
	file := filepath.Join(dir, "sealed.ndjson")
	write := func(s string) {
		if err := os.WriteFile(file, []byte(s), 0o600); err != nil {
			t.Fatal(err)
		}
	}
	write(sealed)
	code, out, stderr := run(t, "", "verify", "--file", file)
	if code != ExitOK || !strings.Contains(out, "9 events in 3 sessions") {
		t.Fatalf("verify exit %d out %q err %q", code, out, stderr)
	}
	// Re-sealing sealed output (without --decide) is the identity.
	if code, again, _ := run(t, sealed, "seal"); code != ExitOK || again != sealed {
		t.Fatal("re-sealing changed the log")
	}

	// Tamper: flip a deny into an allow.
	write(strings.Replace(sealed, `"outcome":"deny","policy_revision"`, `"outcome":"allow","policy_revision"`, 1))
	code, _, stderr = run(t, "", "verify", "--file", file)
	if code != ExitFailed || !strings.Contains(stderr, "HASH_MISMATCH") {
		t.Fatalf("edited decision: exit %d stderr %s", code, stderr)
	}

	// Truncate: drop the last line of acme/s1, detected with heads.
	var heads bytes.Buffer
	for _, l := range lines {
		var e struct {
			TenantID  string `json:"tenant_id"`
			SessionID string `json:"session_id"`
			Seq       uint64 `json:"seq"`
			Hash      string `json:"hash"`
		}
		_ = json.Unmarshal([]byte(l), &e)
		if e.TenantID == "acme" && e.SessionID == "s1" && e.Seq == 7 {
			b, _ := json.Marshal(e)
			heads.Write(append(b, '\n'))
		}
	}
	headsFile := filepath.Join(dir, "heads.ndjson")
	if err := os.WriteFile(headsFile, heads.Bytes(), 0o600); err != nil {
		t.Fatal(err)
	}
	var kept []string
	for _, l := range lines {
		if !strings.Contains(l, `"seq":7,"session_id":"s1","tenant_id":"acme"`) {
			kept = append(kept, l)
		}
	}
	write(strings.Join(kept, "\n") + "\n")
	if code, _, _ := run(t, "", "verify", "--file", file); code != ExitOK {
		t.Fatal("a truncated chain without heads still verifies by itself")
	}
	code, out, _ = run(t, "", "verify", "--file", file, "--heads", headsFile, "--json")
	var rep VerifyReport
	if err := json.Unmarshal([]byte(out), &rep); err != nil {
		t.Fatal(err)
	}
	if code != ExitFailed || rep.OK || len(rep.Failures) != 1 || rep.Failures[0].Reason != "TRUNCATED" || rep.Failures[0].Seq != 7 {
		t.Fatalf("truncation: exit %d report %+v", code, rep)
	}

	// Malformed line.
	write(sealed + "{oops\n")
	if code, _, stderr := run(t, "", "verify", "--file", file); code != ExitFailed || !strings.Contains(stderr, "MALFORMED") {
		t.Fatalf("malformed: %d %s", code, stderr)
	}
}

func TestPolicyTestCommand(t *testing.T) {
	dir := t.TempDir()
	write := func(name, body string) {
		if err := os.WriteFile(filepath.Join(dir, name), []byte(body), 0o600); err != nil {
			t.Fatal(err)
		}
	}
	write("p.rego", "package aegis.decide\n\nimport rego.v1\n\ndecision := {\"outcome\": \"deny\", \"reason\": \"X\"}\n")
	write("p_test.rego", "package aegis.decide_test\n\nimport rego.v1\n\ntest_deny if data.aegis.decide.decision.outcome == \"deny\"\n")
	if code, out, stderr := run(t, "", "policy", "test", dir); code != ExitOK {
		t.Fatalf("passing bundle: exit %d\n%s\n%s", code, out, stderr)
	}
	write("p_test.rego", "package aegis.decide_test\n\nimport rego.v1\n\ntest_allow if data.aegis.decide.decision.outcome == \"allow\"\n")
	if code, _, _ := run(t, "", "policy", "test", dir); code != ExitFailed {
		t.Fatalf("failing bundle: exit %d", code)
	}
	if code, _, _ := run(t, "", "policy", "lint"); code != ExitUsage {
		t.Fatal("unknown policy subcommand accepted")
	}
	// A bundle that does not compile fails the check (1); a directory that
	// cannot be read is an environment error (3), as for every command.
	write("p.rego", "package aegis.decide\n\ndecision := {\n")
	if code, _, stderr := run(t, "", "policy", "test", dir); code != ExitFailed {
		t.Fatalf("bundle that does not compile: exit %d: %s", code, stderr)
	}
	if code, _, stderr := run(t, "", "policy", "test", filepath.Join(dir, "missing")); code != ExitRuntime {
		t.Fatalf("missing directory: exit %d: %s", code, stderr)
	}
}

// TestStrayArgumentsAreUsageErrors: flag parsing stops at the first
// argument that is not a flag, so a stray word would silently drop every
// flag after it (`verify --file F x --heads H` verifying without the heads,
// a truncated log passing). verify, seal and canon take no argument.
func TestStrayArgumentsAreUsageErrors(t *testing.T) {
	events, err := os.ReadFile("testdata/events.ndjson")
	if err != nil {
		t.Fatal(err)
	}
	sealed := sealTestdata(t)
	dir := t.TempDir()
	lines := strings.Split(strings.TrimSpace(sealed), "\n")
	last := lines[len(lines)-1]
	var head struct {
		TenantID  string `json:"tenant_id"`
		SessionID string `json:"session_id"`
		Seq       uint64 `json:"seq"`
		Hash      string `json:"hash"`
	}
	if err := json.Unmarshal([]byte(last), &head); err != nil {
		t.Fatal(err)
	}
	h, _ := json.Marshal(head)
	headsFile, file := filepath.Join(dir, "heads.ndjson"), filepath.Join(dir, "sealed.ndjson")
	if err := os.WriteFile(headsFile, append(h, '\n'), 0o600); err != nil {
		t.Fatal(err)
	}
	// The last record deleted.
	if err := os.WriteFile(file, []byte(strings.Join(lines[:len(lines)-1], "\n")+"\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	for _, args := range [][]string{
		{"verify", "--file", file, "stray", "--heads", headsFile},
		{"seal", "stray"},
		{"canon", "stray"},
	} {
		if code, out, stderr := run(t, string(events), args...); code != ExitUsage {
			t.Errorf("%v: exit %d, want %d\n%s%s", args, code, ExitUsage, out, stderr)
		}
	}
}

// TestExclusiveManifestFlagsAreUsageErrors: --manifest with --manifests is
// a usage error (exit 2), not an environment error (exit 3).
func TestExclusiveManifestFlagsAreUsageErrors(t *testing.T) {
	m := "testdata/manifests"
	for _, args := range [][]string{
		{"decide", "--manifest", "x.json", "--manifests", m},
		{"decide", "--events", "testdata/events.ndjson", "--manifest", "x.json", "--manifests", m},
		{"seal", "--decide", "--manifest", "x.json", "--manifests", m},
	} {
		if code, _, stderr := run(t, "", args...); code != ExitUsage || !strings.Contains(stderr, "exclusive") {
			t.Errorf("%v: exit %d, want %d: %s", args, code, ExitUsage, stderr)
		}
	}
}

// TestDecideEventsLineTooLong: a line longer than any event is an invalid
// line (exit 1, reported with its number), not an environment error.
func TestDecideEventsLineTooLong(t *testing.T) {
	events, err := os.ReadFile("testdata/events.ndjson")
	if err != nil {
		t.Fatal(err)
	}
	defer func(n int) { maxLine = n }(maxLine)
	maxLine = 64 << 10
	file := filepath.Join(t.TempDir(), "events.ndjson")
	if err := os.WriteFile(file, append(events, []byte(`{"pad":"`+strings.Repeat("x", maxLine)+`"}`+"\n")...), 0o600); err != nil {
		t.Fatal(err)
	}
	code, _, stderr := run(t, "", "decide", "--events", file, "--manifests", "testdata/manifests")
	if code != ExitFailed || !strings.Contains(stderr, "line 10") {
		t.Fatalf("exit %d, want %d naming line 10: %s", code, ExitFailed, stderr)
	}
}

type failingWriter struct{}

func (failingWriter) Write([]byte) (int, error) { return 0, errors.New("broken pipe") }

// TestSealWriteErrorIsRuntime: output that cannot be written is an
// environment error (exit 3), also when it fails before the last flush.
func TestSealWriteErrorIsRuntime(t *testing.T) {
	var in strings.Builder
	for seq := 1; seq <= 1000; seq++ {
		fmt.Fprintf(&in, `{"tenant_id":"acme","session_id":"s","seq":%d,"ts_unix_ms":1000,"event_type":"MODEL_CALL_STARTED","payload":{}}`+"\n", seq)
	}
	for _, n := range []int{1, 1000} {
		lines := strings.SplitAfterN(in.String(), "\n", n+1)
		var errOut bytes.Buffer
		code := Main(context.Background(), IO{Stdin: strings.NewReader(strings.Join(lines[:n], "")), Stdout: failingWriter{}, Stderr: &errOut}, []string{"seal"})
		if code != ExitRuntime {
			t.Errorf("%d events: exit %d, want %d: %s", n, code, ExitRuntime, errOut.String())
		}
	}
}

// TestSealPolicyFlagsNeedDecide: the policy flags of seal apply to
// --decide; without it they were ignored and the log sealed with the
// decisions it carries, not those the flags name.
func TestSealPolicyFlagsNeedDecide(t *testing.T) {
	events, err := os.ReadFile("testdata/events.ndjson")
	if err != nil {
		t.Fatal(err)
	}
	for _, args := range [][]string{
		{"seal", "--manifests", "testdata/manifests"},
		{"seal", "--policy", "testdata"},
		{"seal", "--manifest", "x.json"},
	} {
		if code, _, stderr := run(t, string(events), args...); code != ExitUsage {
			t.Errorf("%v: exit %d, want %d: %s", args, code, ExitUsage, stderr)
		}
	}
}

// sealTestdata seals testdata/events.ndjson with `seal --decide` and
// returns the sealed NDJSON.
func sealTestdata(t *testing.T) string {
	t.Helper()
	events, err := os.ReadFile("testdata/events.ndjson")
	if err != nil {
		t.Fatal(err)
	}
	code, sealed, stderr := run(t, string(events), "seal", "--decide", "--manifests", "testdata/manifests")
	if code != ExitOK {
		t.Fatalf("seal exit %d: %s", code, stderr)
	}
	return sealed
}
