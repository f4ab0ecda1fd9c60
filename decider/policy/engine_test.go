package policy

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"maps"
	"os"
	"slices"
	"strings"
	"testing"
	"unicode/utf8"

	"github.com/open-policy-agent/opa/v1/ast"

	"aegis.dev/aegis/decider/session"
	"aegis.dev/aegis/schemas/envelope"
	"aegis.dev/aegis/schemas/manifest"
)

const testTs = 1_700_000_000_000

// testManifest is the manifest most cases run under. Tool names mix letter
// case on purpose: declarations match exactly, classifications do not.
func testManifest() *manifest.Manifest {
	return &manifest.Manifest{
		Schema: manifest.Schema, Name: "support-agent", Version: "1.2.0", Publisher: "acme",
		Permissions: manifest.Permissions{
			Tools: []string{
				"search", "read_file", "Write_File", "send_email", "deploy",
				"http_get", "Web_Search", "net.dial", "exec", "EXEC", "shell", "Exec_Python",
			},
			Net:              manifest.Net{Domains: []string{"api.example.com", "*.example.org", "Docs.Example.NET."}},
			Exec:             manifest.Exec{AllowedBins: []string{"ls", "/usr/bin/git"}},
			ApprovalRequired: []string{"Send_Email", "deploy"},
			Budgets: manifest.Budgets{
				MaxSteps: 10, MaxToolCalls: 5, MaxWallTimeMs: 60000,
				MaxOutputBytes: 4096, TimeoutMs: 5000, MaxIdenticalCalls: 2,
			},
		},
	}
}

// defaultsManifest leaves every budget unset.
func defaultsManifest() *manifest.Manifest {
	return &manifest.Manifest{
		Schema: manifest.Schema, Name: "defaults", Version: "1", Publisher: "acme",
		Permissions: manifest.Permissions{Tools: []string{"search"}},
	}
}

// proposal returns a TOOL_CALL_PROPOSED event with the given raw payload.
func proposalRaw(payload string) *envelope.Event {
	return &envelope.Event{
		V: envelope.Version, TenantID: "t1", SessionID: "s1", Seq: 7, TsUnixMs: testTs,
		Type: envelope.ToolCallProposed, Payload: json.RawMessage(payload),
	}
}

// proposal returns a proposal of tool with args (a JSON object or "").
func proposal(tool, args string) *envelope.Event {
	if args == "" {
		return proposalRaw(fmt.Sprintf(`{"tool_name":%q,"call_id":"c1"}`, tool))
	}
	return proposalRaw(fmt.Sprintf(`{"tool_name":%q,"call_id":"c1","args":%s}`, tool, args))
}

// snapshot returns a session that has seen a few events and is within
// every budget of testManifest.
func snapshot() *session.Snapshot {
	return &session.Snapshot{
		TenantID: "t1", SessionID: "s1", LastSeq: 6,
		FirstTsMs: testTs - 1000, LastTsMs: testTs - 10,
		Events: 6, Steps: 3, ModelCalls: 1, ToolCalls: 2,
	}
}

// callDigest is session.CallDigest of e's tool call.
func callDigest(tb testing.TB, e *envelope.Event) string {
	tb.Helper()
	var tc envelope.ToolCall
	if err := json.Unmarshal(e.Payload, &tc); err != nil {
		return ""
	}
	d, err := session.CallDigest(tc.ToolName, tc.Args)
	if err != nil {
		tb.Fatalf("call digest: %v", err)
	}
	return d
}

// newEngine compiles the default bundle.
func newEngine(tb testing.TB) *Engine {
	tb.Helper()
	e, err := New(Default())
	if err != nil {
		tb.Fatalf("New(Default()): %v", err)
	}
	return e
}

var (
	allowTest = Result{Outcome: envelope.Allow, Reason: envelope.ReasonOK,
		Constraints: envelope.Constraints{MaxOutputBytes: 4096, TimeoutMs: 5000}}
	allowDefaults = Result{Outcome: envelope.Allow, Reason: envelope.ReasonOK,
		Constraints: envelope.Constraints{MaxOutputBytes: manifest.DefaultMaxOutputBytes, TimeoutMs: manifest.DefaultTimeoutMs}}
)

func deny(reason string) Result { return Result{Outcome: envelope.Deny, Reason: reason} }

// decisionCase is one row of the default-bundle decision table.
type decisionCase struct {
	name     string
	manifest func() *manifest.Manifest // nil: testManifest
	noMan    bool                      // evaluate without a manifest
	event    *envelope.Event
	snap     func(*session.Snapshot) // edits snapshot()
	digest   func(string) string     // edits the computed call digest
	want     Result
}

func approvalFor(tool string, state string) func(*session.Snapshot) {
	return func(s *session.Snapshot) {
		s.Approvals = map[string]session.Approval{"c1": {
			ToolName: tool, State: state, RequestedSeq: 5, RequestedTsMs: testTs - 100,
			ArgsDigest: "will be replaced",
		}}
	}
}

func decisionCases() []decisionCase {
	reqApproval := Result{Outcome: envelope.RequireApproval, Reason: envelope.ReasonApprovalRequired}
	egress := deny(envelope.ReasonEgressDeny)
	budget := deny(envelope.ReasonBudgetExceeded)
	loop := deny(envelope.ReasonLoopDetected)
	tainted := deny(envelope.ReasonTaintedToHighRisk)
	execDeny := deny(envelope.ReasonExecDeny)
	undeclared := deny(envelope.ReasonPermissionUndeclared)
	invalid := deny(envelope.ReasonInvalidProposal)
	recent := func(tools ...string) func(*session.Snapshot) {
		return func(s *session.Snapshot) { s.RecentTools = tools }
	}
	set := func(f func(*session.Snapshot)) func(*session.Snapshot) { return f }
	domain := func(d string) *envelope.Event { return proposal("http_get", fmt.Sprintf(`{"domain":%q}`, d)) }
	url := func(u string) *envelope.Event { return proposal("http_get", fmt.Sprintf(`{"url":%q}`, u)) }

	return []decisionCase{
		// 0. guards
		{name: "manifest/nil proposal", noMan: true, event: proposal("search", `{}`), want: deny(envelope.ReasonManifestUnknown)},
		{name: "manifest/nil non-proposal", noMan: true, event: &envelope.Event{Type: envelope.ModelCallStarted, TsUnixMs: testTs, Payload: json.RawMessage(`{}`)}, want: deny(envelope.ReasonManifestUnknown)},
		{name: "non-proposal allowed", event: &envelope.Event{Type: envelope.ToolResult, TsUnixMs: testTs, Payload: json.RawMessage(`{"call_id":"c1"}`)}, want: allowTest},
		{name: "non-proposal allowed past budgets", event: &envelope.Event{Type: envelope.ModelCallStarted, TsUnixMs: testTs}, snap: set(func(s *session.Snapshot) { s.Steps = 100 }), want: allowTest},
		{name: "invalid/missing tool_name", event: proposalRaw(`{"call_id":"c1"}`), want: invalid},
		{name: "invalid/numeric tool_name", event: proposalRaw(`{"tool_name":42}`), want: invalid},
		{name: "invalid/empty tool_name", event: proposalRaw(`{"tool_name":""}`), want: invalid},
		{name: "invalid/null payload", event: proposalRaw(`null`), want: invalid},
		{name: "invalid/array payload", event: proposalRaw(`["search"]`), want: invalid},

		// 1. declared tools
		{name: "declared tool allowed", event: proposal("search", `{"q":"x"}`), want: allowTest},
		{name: "undeclared tool", event: proposal("rm_rf", `{}`), want: undeclared},
		{name: "undeclared/case differs from declaration", event: proposal("Search", `{}`), want: undeclared},
		{name: "undeclared/beats egress", event: proposal("curl", `{"url":"https://evil.com"}`), want: undeclared},

		// 2. egress
		{name: "egress/exact domain", event: domain("api.example.com"), want: allowTest},
		{name: "egress/exact domain upper case and trailing dot", event: domain("API.Example.COM."), want: allowTest},
		{name: "egress/two trailing dots", event: domain("api.example.com.."), want: egress},
		{name: "egress/manifest pattern normalised", event: domain("docs.example.net"), want: allowTest},
		{name: "egress/unlisted domain", event: domain("evil.com"), want: egress},
		{name: "egress/sub-domain of exact entry", event: domain("x.api.example.com"), want: egress},
		{name: "egress/suffix one level", event: domain("a.example.org"), want: allowTest},
		{name: "egress/suffix two levels", event: domain("a.b.example.org"), want: allowTest},
		{name: "egress/suffix apex not matched", event: domain("example.org"), want: egress},
		{name: "egress/suffix as prefix of attacker domain", event: domain("example.org.evil.com"), want: egress},
		{name: "egress/suffix without dot boundary", event: domain("badexample.org"), want: egress},
		{name: "egress/exact without dot boundary", event: domain("badapi.example.com"), want: egress},
		{name: "egress/empty label before suffix", event: domain(".example.org"), want: egress},
		{name: "egress/empty inner label", event: domain("a..example.org"), want: egress},
		{name: "egress/domain with port", event: domain("api.example.com:443"), want: egress},
		{name: "egress/domain with path", event: domain("api.example.com/x"), want: egress},
		{name: "egress/empty domain", event: domain(""), want: egress},
		{name: "egress/non-string domain", event: proposal("http_get", `{"domain":["api.example.com"]}`), want: egress},
		{name: "egress/null domain", event: proposal("http_get", `{"domain":null}`), want: egress},
		{name: "egress/url allowed", event: url("https://api.example.com/v1/items?q=1#f"), want: allowTest},
		{name: "egress/url with userinfo and port", event: url("https://u:p@api.example.com:8443/x"), want: allowTest},
		{name: "egress/url upper case", event: url("HTTPS://API.Example.com"), want: allowTest},
		{name: "egress/url suffix", event: url("http://cdn.example.org"), want: allowTest},
		{name: "egress/url userinfo disguise", event: url("https://api.example.com@evil.com/"), want: egress},
		{name: "egress/url backslash disguise", event: url(`https://evil.com\@api.example.com/`), want: egress},
		{name: "egress/url fragment disguise", event: url("https://evil.com#@api.example.com"), want: egress},
		{name: "egress/url query disguise", event: url("https://evil.com?@api.example.com"), want: egress},
		{name: "egress/url attacker suffix", event: url("https://api.example.com.evil.com/"), want: egress},
		{name: "egress/url without authority", event: url("http:api.example.com"), want: egress},
		{name: "egress/url scheme-relative", event: url("//api.example.com/x"), want: egress},
		{name: "egress/url bare host", event: url("api.example.com"), want: egress},
		{name: "egress/url file", event: url("file:///etc/passwd"), want: egress},
		{name: "egress/url leading space", event: url(" https://api.example.com"), want: egress},
		{name: "egress/url percent-encoded host", event: url("https://api%2Eexample.com"), want: egress},
		{name: "egress/non-string url", event: proposal("http_get", `{"url":{"host":"api.example.com"}}`), want: egress},
		{name: "egress/domain allowed but url not", event: proposal("http_get", `{"domain":"api.example.com","url":"https://evil.com"}`), want: egress},
		{name: "egress/non-network tool with destination", event: proposal("search", `{"domain":"evil.com"}`), want: egress},
		{name: "egress/non-network tool with allowed destination", event: proposal("search", `{"url":"https://x.example.org/a"}`), want: allowTest},
		{name: "egress/network tool without destination", event: proposal("http_get", `{}`), want: egress},
		{name: "egress/network tool without args", event: proposal("http_get", ""), want: egress},
		{name: "egress/network tool name in mixed case", event: proposal("Web_Search", `{"q":"x"}`), want: egress},
		{name: "egress/network tool net. prefix", event: proposal("net.dial", `{}`), want: egress},
		{name: "egress/network tool with allowed destination", event: proposal("Web_Search", `{"domain":"docs.example.net"}`), want: allowTest},
		// A server that decodes keys case-insensitively (Go's encoding/json
		// into a struct) takes "URL" or "Domain" as its url or domain.
		{name: "egress/url key in other case beside allowed domain", event: proposal("http_get", `{"domain":"api.example.com","URL":"https://evil.com/"}`), want: egress},
		{name: "egress/domain key in other case beside allowed url", event: proposal("http_get", `{"url":"https://api.example.com/","Domain":"evil.com"}`), want: egress},
		{name: "egress/url key in other case on non-network tool", event: proposal("search", `{"Url":"https://x.example.org/"}`), want: egress},
		{name: "egress/destination-like keys are not destinations", event: proposal("search", `{"urls":"https://evil.com/","domain_hint":"evil.com","q":"url"}`), want: allowTest},
		{name: "egress/beats budget", event: domain("evil.com"), snap: set(func(s *session.Snapshot) { s.Steps = 10 }), want: egress},

		// 3. budgets (testManifest: steps 10, tool calls 5, wall 60000)
		{name: "budget/steps one below", event: proposal("search", `{}`), snap: set(func(s *session.Snapshot) { s.Steps = 9 }), want: allowTest},
		{name: "budget/steps at limit", event: proposal("search", `{}`), snap: set(func(s *session.Snapshot) { s.Steps = 10 }), want: budget},
		{name: "budget/tool calls one below", event: proposal("search", `{}`), snap: set(func(s *session.Snapshot) { s.ToolCalls = 4 }), want: allowTest},
		{name: "budget/tool calls at limit", event: proposal("search", `{}`), snap: set(func(s *session.Snapshot) { s.ToolCalls = 5 }), want: budget},
		{name: "budget/wall time one below", event: proposal("search", `{}`), snap: set(func(s *session.Snapshot) { s.FirstTsMs = testTs - 59999 }), want: allowTest},
		{name: "budget/wall time at limit", event: proposal("search", `{}`), snap: set(func(s *session.Snapshot) { s.FirstTsMs = testTs - 60000 }), want: budget},
		{name: "budget/wall time ignored on first event", event: proposal("search", `{}`), snap: set(func(s *session.Snapshot) { *s = session.Snapshot{FirstTsMs: 1} }), want: allowTest},
		{name: "budget/nil snapshot is a new session", event: proposal("search", `{}`), snap: set(func(s *session.Snapshot) { *s = session.Snapshot{} }), want: allowTest},
		{name: "budget/default steps one below", manifest: defaultsManifest, event: proposal("search", `{}`), snap: set(func(s *session.Snapshot) { s.Steps = 23 }), want: allowDefaults},
		{name: "budget/default steps at limit", manifest: defaultsManifest, event: proposal("search", `{}`), snap: set(func(s *session.Snapshot) { s.Steps = 24 }), want: budget},
		{name: "budget/default tool calls one below", manifest: defaultsManifest, event: proposal("search", `{}`), snap: set(func(s *session.Snapshot) { s.ToolCalls = 11 }), want: allowDefaults},
		{name: "budget/default tool calls at limit", manifest: defaultsManifest, event: proposal("search", `{}`), snap: set(func(s *session.Snapshot) { s.ToolCalls = 12 }), want: budget},
		{name: "budget/default wall time one below", manifest: defaultsManifest, event: proposal("search", `{}`), snap: set(func(s *session.Snapshot) { s.FirstTsMs = testTs - 119999 }), want: allowDefaults},
		{name: "budget/default wall time at limit", manifest: defaultsManifest, event: proposal("search", `{}`), snap: set(func(s *session.Snapshot) { s.FirstTsMs = testTs - 120000 }), want: budget},
		{name: "budget/beats loop", event: proposal("search", `{}`), snap: set(func(s *session.Snapshot) { s.Steps = 10; s.Loop.Detected = true }), want: budget},

		// 4. loops
		{name: "loop/sticky", event: proposal("search", `{}`), snap: set(func(s *session.Snapshot) { s.Loop = session.Loop{Detected: true, Seq: 3} }), want: loop},
		{name: "loop/identical call below limit", event: proposal("search", `{"q":"x"}`), snap: set(func(s *session.Snapshot) { s.Calls = map[string]int64{"DIGEST": 1} }), want: allowTest},
		{name: "loop/identical call at limit", event: proposal("search", `{"q":"x"}`), snap: set(func(s *session.Snapshot) { s.Calls = map[string]int64{"DIGEST": 2} }), want: loop},
		{name: "loop/other call at limit", event: proposal("search", `{"q":"y"}`), snap: set(func(s *session.Snapshot) { s.Calls = map[string]int64{"0000": 9} }), want: allowTest},
		{name: "loop/sequence of 3 repeated", event: proposal("search", `{}`), snap: recent("read_file", "deploy", "search", "read_file", "deploy"), want: loop},
		{name: "loop/sequence of 4 repeated", event: proposal("search", `{}`), snap: recent("x", "a", "b", "c", "search", "a", "b", "c"), want: loop},
		{name: "loop/sequence of 7 repeated", event: proposal("search", `{}`), snap: recent("a", "b", "c", "d", "e", "f", "search", "a", "b", "c", "d", "e", "f"), want: loop},
		{name: "loop/sequence of 3 broken", event: proposal("search", `{}`), snap: recent("read_file", "deploy", "search", "read_file", "exec"), want: allowTest},
		{name: "loop/sequence of 3 not back to back", event: proposal("search", `{}`), snap: recent("a", "b", "search", "x", "a", "b"), want: allowTest},
		{name: "loop/sequence of 2 is not a loop", event: proposal("search", `{}`), snap: recent("a", "search", "a", "search", "a"), want: allowTest},
		{name: "loop/sequence of 8 is not checked", event: proposal("search", `{}`), snap: recent("a", "b", "c", "d", "e", "f", "g", "search", "a", "b", "c", "d", "e", "f", "g"), want: allowTest},
		{name: "loop/sequence case sensitive", event: proposal("search", `{}`), snap: recent("read_file", "deploy", "Search", "read_file", "deploy"), want: allowTest},
		{name: "loop/short history", event: proposal("search", `{}`), snap: recent("search", "search"), want: allowTest},
		{name: "loop/errors below limit", event: proposal("search", `{}`), snap: set(func(s *session.Snapshot) { s.ConsecutiveErrors = 2 }), want: allowTest},
		{name: "loop/errors at limit", event: proposal("search", `{}`), snap: set(func(s *session.Snapshot) { s.ConsecutiveErrors = 3 }), want: loop},
		{name: "loop/beats taint", event: proposal("Write_File", `{}`), snap: set(func(s *session.Snapshot) { s.Tainted = true; s.ConsecutiveErrors = 3 }), want: loop},

		// 5. taint
		{name: "taint/high-risk tool", event: proposal("Write_File", `{"path":"/tmp/x"}`), snap: set(func(s *session.Snapshot) { s.Tainted = true }), want: tainted},
		{name: "taint/exec family upper case", event: proposal("EXEC", `{"bin":"ls"}`), snap: set(func(s *session.Snapshot) { s.Tainted = true }), want: tainted},
		{name: "taint/exec prefix", event: proposal("Exec_Python", `{"bin":"ls"}`), snap: set(func(s *session.Snapshot) { s.Tainted = true }), want: tainted},
		{name: "taint/low-risk tool", event: proposal("search", `{}`), snap: set(func(s *session.Snapshot) { s.Tainted = true }), want: allowTest},
		{name: "taint/untainted high-risk tool", event: proposal("Write_File", `{}`), want: allowTest},
		{name: "taint/beats exec", event: proposal("exec", `{"bin":"rm"}`), snap: set(func(s *session.Snapshot) { s.Tainted = true }), want: tainted},
		{name: "taint/beats approval", event: proposal("deploy", `{}`), snap: set(func(s *session.Snapshot) { s.Tainted = true }), want: tainted},

		// 6. exec
		{name: "exec/allowed bin", event: proposal("exec", `{"bin":"ls"}`), want: allowTest},
		{name: "exec/allowed absolute bin", event: proposal("shell", `{"bin":"/usr/bin/git"}`), want: allowTest},
		{name: "exec/unlisted bin", event: proposal("exec", `{"bin":"rm"}`), want: execDeny},
		{name: "exec/path of allowed basename", event: proposal("exec", `{"bin":"/tmp/ls"}`), want: execDeny},
		{name: "exec/basename of allowed path", event: proposal("exec", `{"bin":"git"}`), want: execDeny},
		{name: "exec/bin case differs", event: proposal("exec", `{"bin":"LS"}`), want: execDeny},
		{name: "exec/missing bin", event: proposal("exec", `{"cmd":"ls"}`), want: execDeny},
		{name: "exec/no args", event: proposal("exec", ""), want: execDeny},
		{name: "exec/non-string bin", event: proposal("exec", `{"bin":["ls"]}`), want: execDeny},
		{name: "exec/upper-case tool", event: proposal("EXEC", `{"bin":"rm"}`), want: execDeny},
		{name: "exec/prefix tool", event: proposal("Exec_Python", `{}`), want: execDeny},
		{name: "exec/other shells", event: proposal("zsh", `{"bin":"rm"}`), manifest: withTools("zsh"), want: execDeny},
		{name: "exec/other shells, listed bin", event: proposal("PowerShell", `{"bin":"ls"}`), manifest: withTools("PowerShell"), want: allowTest},
		{name: "exec/terminal tool without bin", event: proposal("run_terminal_cmd", `{"command":"rm -rf /"}`), manifest: withTools("run_terminal_cmd"), want: execDeny},
		{name: "taint/code runner", event: proposal("python", `{"code":"1"}`), manifest: withTools("python"),
			snap: set(func(s *session.Snapshot) { s.Tainted = true }), want: tainted},
		{name: "taint/file edit", event: proposal("Edit_File", `{"path":"a"}`), manifest: withTools("Edit_File"),
			snap: set(func(s *session.Snapshot) { s.Tainted = true }), want: tainted},
		{name: "exec/beats approval", event: proposal("exec", `{"bin":"rm"}`), manifest: func() *manifest.Manifest {
			m := testManifest()
			m.Permissions.ApprovalRequired = []string{"EXEC"}
			return m
		}, want: execDeny},

		// 7. approvals
		{name: "approval/required case-insensitive", event: proposal("send_email", `{"to":"a@b"}`), want: reqApproval},
		{name: "approval/required exact", event: proposal("deploy", `{}`), want: reqApproval},
		{name: "approval/granted", event: proposal("send_email", `{"to":"a@b"}`), snap: approvalFor("send_email", "approved"), want: allowTest},
		{name: "approval/pending", event: proposal("send_email", `{"to":"a@b"}`), snap: approvalFor("send_email", "pending"), want: reqApproval},
		{name: "approval/denied", event: proposal("send_email", `{"to":"a@b"}`), snap: approvalFor("send_email", "denied"), want: reqApproval},
		{name: "approval/other tool", event: proposal("send_email", `{"to":"a@b"}`), snap: approvalFor("deploy", "approved"), want: reqApproval},
		{name: "approval/other args", event: proposal("send_email", `{"to":"a@b"}`), snap: approvalFor("send_email", "approved"), digest: func(string) string { return "other" }, want: reqApproval},
		{name: "approval/empty digest never matches", event: proposal("send_email", `{"to":"a@b"}`), snap: approvalFor("send_email", "approved"), digest: func(string) string { return "" }, want: reqApproval},
		{name: "approval/other call id", event: proposalRaw(`{"tool_name":"send_email","call_id":"c2","args":{"to":"a@b"}}`), snap: approvalFor("send_email", "approved"), want: reqApproval},
	}
}

// resolve builds the Input of a case.
func (c decisionCase) input(tb testing.TB) Input {
	tb.Helper()
	in := Input{Event: c.event, Snapshot: snapshot()}
	if !c.noMan {
		if c.manifest != nil {
			in.Manifest = c.manifest()
		} else {
			in.Manifest = testManifest()
		}
	}
	in.CallDigest = callDigest(tb, c.event)
	if c.snap != nil {
		c.snap(in.Snapshot)
	}
	// Placeholders in the snapshot refer to this call's digest.
	if n, ok := in.Snapshot.Calls["DIGEST"]; ok {
		delete(in.Snapshot.Calls, "DIGEST")
		in.Snapshot.Calls[in.CallDigest] = n
	}
	for id, a := range in.Snapshot.Approvals {
		a.ArgsDigest = in.CallDigest
		in.Snapshot.Approvals[id] = a
	}
	if c.digest != nil {
		in.CallDigest = c.digest(in.CallDigest)
	}
	return in
}

func TestDefaultDecisions(t *testing.T) {
	e := newEngine(t)
	ctx := context.Background()
	for _, c := range decisionCases() {
		t.Run(c.name, func(t *testing.T) {
			got, err := e.Eval(ctx, c.input(t))
			if err != nil {
				t.Fatalf("Eval: %v", err)
			}
			if got != c.want {
				t.Errorf("got %+v, want %+v", got, c.want)
			}
		})
	}
}

// TestFastMatchesNaive evaluates every case a second time the slow way
// (input as a map from an encoding/json round trip, no manifest index) and
// requires the same result, so both input paths and both index paths agree.
func TestFastMatchesNaive(t *testing.T) {
	e := newEngine(t)
	ctx := context.Background()
	for _, c := range decisionCases() {
		t.Run(c.name, func(t *testing.T) {
			in := c.input(t)
			fast, err := e.Eval(ctx, in)
			if err != nil {
				t.Fatalf("Eval: %v", err)
			}
			naive, err := e.evalNaive(ctx, naiveInput(t, in), in.Event.TsUnixMs)
			if err != nil {
				t.Fatalf("naive: %v", err)
			}
			if fast != naive {
				t.Errorf("fast %+v, naive %+v", fast, naive)
			}
		})
	}
}

func TestEvalRejectsUnreadablePayload(t *testing.T) {
	e := newEngine(t)
	for _, tc := range []struct{ name, payload string }{
		{"duplicate key", `{"tool_name":"exec","args":{"bin":"ls","bin":"rm"}}`},
		{"duplicate tool_name", `{"tool_name":"search","tool_name":"exec"}`},
		{"truncated", `{"tool_name":"search"`},
		{"too deep", `{"tool_name":"search","args":` + strings.Repeat("[", 100) + strings.Repeat("]", 100) + `}`},
	} {
		t.Run(tc.name, func(t *testing.T) {
			got, err := e.Eval(context.Background(), Input{Event: proposalRaw(tc.payload), Snapshot: snapshot(), Manifest: testManifest()})
			if !errors.Is(err, ErrInput) {
				t.Fatalf("err = %v, want ErrInput", err)
			}
			if want := deny(envelope.ReasonInvalidProposal); got != want {
				t.Errorf("got %+v, want %+v", got, want)
			}
		})
	}
}

func TestEvalNilEvent(t *testing.T) {
	got, err := newEngine(t).Eval(context.Background(), Input{Manifest: testManifest()})
	if !errors.Is(err, ErrInput) || got != deny(envelope.ReasonPolicyError) {
		t.Fatalf("got %+v, %v; want POLICY_ERROR deny and ErrInput", got, err)
	}
}

func TestEvalCancelledContext(t *testing.T) {
	e := newEngine(t)
	ctx, cancel := context.WithCancel(context.Background())
	cancel()
	got, err := e.Eval(ctx, Input{Event: proposal("search", `{}`), Snapshot: snapshot(), Manifest: testManifest()})
	if !errors.Is(err, ErrEval) || got != deny(envelope.ReasonPolicyError) {
		t.Fatalf("got %+v, %v; want POLICY_ERROR deny and ErrEval", got, err)
	}
}

// operatorBundle is a one-file bundle with the given decide package body.
func operatorBundle(body string) *Bundle {
	files := map[string]string{"decide.rego": "package aegis.decide\n\n" + body + "\n"}
	return &Bundle{Revision: ComputeRevision(files), Files: files}
}

const allowAll = `decision := {"outcome": "allow", "reason": "OK", "constraints": {"max_output_bytes": 10, "timeout_ms": 10}}`

func TestOperatorBundleFailuresDeny(t *testing.T) {
	for _, tc := range []struct {
		name, body string
		wantErr    error
	}{
		{"builtin error", `decision := {"outcome": "allow", "reason": "OK", "n": to_number("x")}`, ErrEval},
		{"conflicting values", `decision := {"outcome": "allow", "reason": "OK"} if true` + "\n" + `decision := {"outcome": "deny", "reason": "X"} if true`, ErrEval},
		{"division by zero", `decision := {"outcome": "deny", "reason": sprintf("%v", [1 / count(input.event.payload.args)])} if true`, ErrEval},
		{"undefined", `decision := {"outcome": "allow", "reason": "OK"} if input.no_such_field`, ErrUndefined},
		{"no decision rule", `other := 1`, ErrUndefined},
		{"not an object", `decision := "allow"`, ErrMalformed},
		{"unknown outcome", `decision := {"outcome": "maybe", "reason": "OK"}`, ErrMalformed},
		{"empty reason", `decision := {"outcome": "deny", "reason": ""}`, ErrMalformed},
		{"non-string reason", `decision := {"outcome": "deny", "reason": 3}`, ErrMalformed},
		{"reason not UTF-8", `decision := {"outcome": "deny", "reason": base64.decode("/w==")}`, ErrMalformed},
		{"reason with a control character", `decision := {"outcome": "deny", "reason": "A\u0001B"}`, ErrMalformed},
		{"reason over 128 bytes", `decision := {"outcome": "deny", "reason": "` + strings.Repeat("R", 129) + `"}`, ErrMalformed},
		{"allow without constraints", `decision := {"outcome": "allow", "reason": "OK"}`, ErrMalformed},
		{"allow with fractional constraint", `decision := {"outcome": "allow", "reason": "OK", "constraints": {"max_output_bytes": 1.5, "timeout_ms": 10}}`, ErrMalformed},
		{"allow with zero constraint", `decision := {"outcome": "allow", "reason": "OK", "constraints": {"max_output_bytes": 10, "timeout_ms": 0}}`, ErrMalformed},
		{"allow with string constraint", `decision := {"outcome": "allow", "reason": "OK", "constraints": {"max_output_bytes": "10", "timeout_ms": 10}}`, ErrMalformed},
	} {
		t.Run(tc.name, func(t *testing.T) {
			e, err := New(operatorBundle(tc.body))
			if err != nil {
				t.Fatalf("New: %v", err)
			}
			got, err := e.Eval(context.Background(), Input{Event: proposal("search", `{}`), Snapshot: snapshot(), Manifest: testManifest()})
			if !errors.Is(err, tc.wantErr) {
				t.Errorf("err = %v, want %v", err, tc.wantErr)
			}
			if want := deny(envelope.ReasonPolicyError); got != want {
				t.Errorf("got %+v, want %+v", got, want)
			}
		})
	}
}

func TestOperatorBundleNeverAllowsWithoutManifest(t *testing.T) {
	e, err := New(operatorBundle(allowAll))
	if err != nil {
		t.Fatal(err)
	}
	got, err := e.Eval(context.Background(), Input{Event: proposal("search", `{}`), Snapshot: snapshot()})
	if err != nil {
		t.Fatal(err)
	}
	if want := deny(envelope.ReasonManifestUnknown); got != want {
		t.Errorf("got %+v, want %+v", got, want)
	}
	got, err = e.Eval(context.Background(), Input{Event: proposal("search", `{}`), Snapshot: snapshot(), Manifest: testManifest()})
	if err != nil || got.Outcome != envelope.Allow {
		t.Errorf("with manifest: %+v, %v; want allow", got, err)
	}
}

func TestNewRejectsBadBundles(t *testing.T) {
	for _, tc := range []struct {
		name  string
		files map[string]string
	}{
		{"syntax error", map[string]string{"decide.rego": "package aegis.decide\n\ndecision := {"}},
		{"missing package", map[string]string{"decide.rego": `decision := 1`}},
		{"unsafe variable", map[string]string{"decide.rego": "package aegis.decide\n\ndecision := x if { x != 1 }"}},
		{"type error", map[string]string{"decide.rego": "package aegis.decide\n\ndecision := {\"outcome\": upper(1)}"}},
		{"http.send", map[string]string{"decide.rego": "package aegis.decide\n\ndecision := http.send({\"method\": \"GET\", \"url\": \"http://x\"})"}},
		{"net.lookup_ip_addr", map[string]string{"decide.rego": "package aegis.decide\n\ndecision := net.lookup_ip_addr(\"x\")"}},
		{"rand.intn", map[string]string{"decide.rego": "package aegis.decide\n\ndecision := rand.intn(\"x\", 10)"}},
		{"opa.runtime", map[string]string{"decide.rego": "package aegis.decide\n\ndecision := opa.runtime()"}},
		// Certificate verification against the wall clock.
		{"x509 verify", map[string]string{"decide.rego": "package aegis.decide\n\ndecision := crypto.x509.parse_and_verify_certificates(\"x\")"}},
		{"x509 verify with options", map[string]string{"decide.rego": "package aegis.decide\n\ndecision := crypto.x509.parse_and_verify_certificates_with_options(\"x\", {})"}},
		{"only tests", map[string]string{"decide_test.rego": "package aegis.decide_test\n\ntest_x if true"}},
		{"no files", map[string]string{}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			_, err := New(&Bundle{Files: tc.files})
			if !errors.Is(err, ErrBundle) {
				t.Fatalf("New: err = %v, want ErrBundle", err)
			}
		})
	}
	if _, err := New(nil); !errors.Is(err, ErrBundle) {
		t.Errorf("New(nil): err = %v, want ErrBundle", err)
	}
}

// TestEvalTimeIsEventTime: time.now_ns is the event's timestamp, so a
// decision replays identically.
func TestEvalTimeIsEventTime(t *testing.T) {
	e, err := New(operatorBundle(`decision := {"outcome": "deny", "reason": sprintf("T%d", [time.now_ns()])}`))
	if err != nil {
		t.Fatal(err)
	}
	ev := proposal("search", `{}`)
	got, err := e.Eval(context.Background(), Input{Event: ev, Manifest: testManifest()})
	if err != nil {
		t.Fatal(err)
	}
	if want := fmt.Sprintf("T%d", ev.TsUnixMs*1_000_000); got.Reason != want {
		t.Errorf("reason %q, want %q", got.Reason, want)
	}
}

func TestEngineRevision(t *testing.T) {
	b := Default()
	e := newEngine(t)
	if e.Revision() != b.Revision || !strings.HasPrefix(b.Revision, "sha256:") {
		t.Fatalf("engine revision %q, bundle %q", e.Revision(), b.Revision)
	}
	b.Revision = ""
	e2, err := New(b)
	if err != nil {
		t.Fatal(err)
	}
	if e2.Revision() != e.Revision() {
		t.Errorf("revision of bundle without Revision = %q, want computed %q", e2.Revision(), e.Revision())
	}
}

// TestManifestCacheBounded: distinct manifests beyond the cache size keep
// deciding correctly and the cache stays bounded.
func TestManifestCacheBounded(t *testing.T) {
	e := newEngine(t)
	for i := range manifestCacheSize + 10 {
		m := defaultsManifest()
		m.Permissions.Tools = []string{fmt.Sprintf("tool%d", i)}
		got, err := e.Eval(context.Background(), Input{Event: proposal(fmt.Sprintf("tool%d", i), `{}`), Manifest: m})
		if err != nil || got != allowDefaults {
			t.Fatalf("manifest %d: %+v, %v", i, got, err)
		}
	}
	e.manifests.mu.RLock()
	n := len(e.manifests.entries)
	e.manifests.mu.RUnlock()
	if n > manifestCacheSize {
		t.Errorf("cache holds %d entries, bound is %d", n, manifestCacheSize)
	}
}

// TestEvalConcurrent exercises one engine from several goroutines (run
// with -race).
func TestEvalConcurrent(t *testing.T) {
	e := newEngine(t)
	cases := decisionCases()
	inputs := make([]Input, len(cases))
	for i, c := range cases {
		inputs[i] = c.input(t)
	}
	errs := make(chan error, 4)
	for g := range 4 {
		go func() {
			for i := range cases {
				c := cases[(i+g*7)%len(cases)]
				got, err := e.Eval(context.Background(), inputs[(i+g*7)%len(cases)])
				if err == nil && got != c.want {
					err = fmt.Errorf("%s: got %+v, want %+v", c.name, got, c.want)
				}
				if err != nil {
					errs <- err
					return
				}
			}
			errs <- nil
		}()
	}
	for range 4 {
		if err := <-errs; err != nil {
			t.Error(err)
		}
	}
}

// egressHosts are destinations tried by TestEgressMatchesManifestAllows.
var egressHosts = []string{
	"api.example.com", "API.EXAMPLE.COM", "api.example.com.", "api.example.com..",
	"docs.example.net", "DOCS.example.net.", "a.example.org", "a.b.example.org",
	"example.org", ".example.org", "a..example.org", "badexample.org",
	"example.org.evil.com", "evil.com", "", ".", "a_b.example.org", "-.example.org",
	"x.example.org:443", "x.example.org/", "\u212a.example.org", "\u212aexample.org",
	"ex\u0430mple.org", "a.example.org\x00", " a.example.org", "a.example.org ",
	"[::1]", "127.0.0.1", "localhost", "LOCALHOST.", "localhost.localdomain", "*.example.org", "a.*.example.org", "xn--80ak6aa92e.example.org",
}

// egressManifest declares valid domain entries only (testManifest also has
// one that validation would reject, to show the policy normalises it).
func egressManifest() *manifest.Manifest {
	m := testManifest()
	m.Permissions.Net.Domains = []string{"api.example.com", "*.example.org", "docs.example.net", "localhost"}
	return m
}

// TestEgressMatchesManifestAllows: for args.domain, the default bundle
// allows exactly the hosts manifest.Net.Allows allows, so the Go and Rego
// statements of the matching rules cannot drift apart.
func TestEgressMatchesManifestAllows(t *testing.T) {
	e := newEngine(t)
	m := egressManifest()
	for _, h := range egressHosts {
		t.Run(fmt.Sprintf("%q", h), func(t *testing.T) {
			checkEgress(t, e, m, h)
		})
	}
}

func checkEgress(tb testing.TB, e *Engine, m *manifest.Manifest, host string) {
	tb.Helper()
	args, err := json.Marshal(map[string]string{"domain": host})
	if err != nil {
		tb.Fatal(err)
	}
	ev := proposal("http_get", string(args))
	got, err := e.Eval(context.Background(), Input{Event: ev, Snapshot: snapshot(), Manifest: m, CallDigest: callDigest(tb, ev)})
	if err != nil {
		tb.Fatalf("Eval: %v", err)
	}
	if allowed := got.Outcome == envelope.Allow; allowed != m.Permissions.Net.Allows(host) {
		tb.Errorf("domain %q: policy %+v, manifest.Net.Allows %v", host, got, !allowed)
	}
}

func FuzzEgressMatchesManifestAllows(f *testing.F) {
	for _, h := range egressHosts {
		f.Add(h)
	}
	e := newEngine(f)
	m := egressManifest()
	f.Fuzz(func(t *testing.T, host string) {
		if !utf8.ValidString(host) {
			return // encoding/json would replace the invalid bytes
		}
		checkEgress(t, e, m, host)
	})
}

// TestDocsExampleBundle: the custom bundle shown in docs/policy.md compiles
// and decides as described there.
func TestDocsExampleBundle(t *testing.T) {
	e, err := New(operatorBundle(`# Allow only read-only tools of declared agents, nothing else.
decision := {"outcome": "allow", "reason": "OK",
             "constraints": {"max_output_bytes": 65536, "timeout_ms": 5000}} if {
	input.manifest != null
	input.event.payload.tool_name in {"search", "read_file"}
	input.event.payload.tool_name in input.manifest.permissions.tools
} else := {"outcome": "deny", "reason": "PERMISSION_UNDECLARED"}`))
	if err != nil {
		t.Fatal(err)
	}
	for _, tc := range []struct {
		tool string
		want Result
	}{
		{"search", Result{Outcome: envelope.Allow, Reason: envelope.ReasonOK, Constraints: envelope.Constraints{MaxOutputBytes: 65536, TimeoutMs: 5000}}},
		{"exec", deny(envelope.ReasonPermissionUndeclared)},
	} {
		got, err := e.Eval(context.Background(), Input{Event: proposal(tc.tool, `{}`), Manifest: testManifest()})
		if err != nil || got != tc.want {
			t.Errorf("%s: %+v, %v; want %+v", tc.tool, got, err, tc.want)
		}
	}
}

// withTools is testManifest with tools declared besides its own.
func withTools(tools ...string) func() *manifest.Manifest {
	return func() *manifest.Manifest {
		m := testManifest()
		m.Permissions.Tools = append(m.Permissions.Tools, tools...)
		return m
	}
}

// TestNewRejectsRevisionOfOtherFiles: a Bundle whose Revision is not that
// of its files (Default() edited in place) does not compile: decisions
// would name a revision whose archived content decides otherwise.
func TestNewRejectsRevisionOfOtherFiles(t *testing.T) {
	b := Default()
	b.Files["decide.rego"] += "\n# edited\n"
	if _, err := New(b); !errors.Is(err, ErrBundle) {
		t.Fatalf("New: err = %v, want ErrBundle", err)
	}
	b.Revision = ComputeRevision(b.Files)
	if _, err := New(b); err != nil {
		t.Fatalf("New with the files' revision: %v", err)
	}
}

// TestCapabilitiesPinned holds the builtins a policy may call to a
// reviewed list for the linked OPA version. Upgrading OPA fails it when
// builtins appear, disappear or change their nondeterministic mark: check
// every new builtin for reads of the host (clock, network, environment,
// files, randomness) and remove any that does (wallClock), then update
// testdata/builtins.golden and the list in docs/policy.md.
func TestCapabilitiesPinned(t *testing.T) {
	var removed, available []string
	allowed := map[string]bool{}
	for _, b := range Capabilities().Builtins {
		allowed[b.Name] = true
		available = append(available, b.Name)
	}
	for _, b := range ast.CapabilitiesForThisVersion().Builtins {
		if !allowed[b.Name] {
			removed = append(removed, b.Name)
		}
	}
	slices.Sort(removed)
	wantRemoved := []string{
		"crypto.x509.parse_and_verify_certificates", "crypto.x509.parse_and_verify_certificates_with_options",
		"http.send", "io.jwt.decode_verify", "io.jwt.encode_sign", "io.jwt.encode_sign_raw",
		"json.match_schema", "json.verify_schema", "net.lookup_ip_addr", "opa.runtime", "rand.intn", "uuid.rfc4122",
	}
	if !slices.Equal(removed, wantRemoved) {
		t.Errorf("removed builtins %q, want %q", removed, wantRemoved)
	}
	slices.Sort(available)
	golden, err := os.ReadFile("testdata/builtins.golden")
	if err != nil {
		t.Fatal(err)
	}
	if want := strings.Fields(string(golden)); !slices.Equal(available, want) {
		added, gone := diffNames(available, want), diffNames(want, available)
		t.Errorf("available builtins changed: new %q, gone %q (review them, then update testdata/builtins.golden)", added, gone)
	}
}

func diffNames(a, b []string) []string {
	var out []string
	for _, x := range a {
		if !slices.Contains(b, x) {
			out = append(out, x)
		}
	}
	return out
}

// A bundle's own violation whose number reasons does not name denies with
// POLICY_ERROR; it never lets the default bundle fall through to allow.
func TestUnnamedViolationDenies(t *testing.T) {
	in := Input{Event: proposal("search", `{}`), Snapshot: snapshot(), Manifest: testManifest()}
	base, err := New(Default())
	if err != nil {
		t.Fatal(err)
	}
	if got, err := base.Eval(context.Background(), in); err != nil || got.Outcome != envelope.Allow {
		t.Fatalf("default bundle: %+v, %v; want allow", got, err)
	}
	for _, tc := range []struct{ rule, want string }{
		{`violations contains 0 if input.event.payload.tool_name == "search"`, envelope.ReasonPolicyError},
		{`violations contains 9 if input.event.payload.tool_name == "search"`, envelope.ReasonPolicyError},
		{`violations contains "mine" if input.event.payload.tool_name == "search"`, envelope.ReasonPolicyError},
		{`violations contains 1 if input.event.payload.tool_name == "search"`, envelope.ReasonPermissionUndeclared},
	} {
		files := maps.Clone(Default().Files)
		files["mine.rego"] = "package aegis.decide\n\n" + tc.rule + "\n"
		e, err := New(&Bundle{Revision: ComputeRevision(files), Files: files})
		if err != nil {
			t.Fatalf("%s: %v", tc.rule, err)
		}
		got, err := e.Eval(context.Background(), in)
		if err != nil || got.Outcome != envelope.Deny || got.Reason != tc.want {
			t.Errorf("%s: %+v, %v; want deny %s", tc.rule, got, err, tc.want)
		}
	}
}
