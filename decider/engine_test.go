package decider

import (
	"context"
	"encoding/json"
	"fmt"
	"testing"

	"aegis.dev/aegis/decider/policy"
	"aegis.dev/aegis/decider/session"
	"aegis.dev/aegis/schemas/envelope"
	"aegis.dev/aegis/schemas/manifest"
)

func newEngine(tb testing.TB, bundle *policy.Bundle) *Engine {
	tb.Helper()
	pe, err := policy.New(bundle)
	if err != nil {
		tb.Fatal(err)
	}
	reg, err := manifest.LoadDir("testdata/manifests")
	if err != nil {
		tb.Fatal(err)
	}
	return NewEngine(pe, reg)
}

func proposal(tenant string, seq uint64, tool, args string) *envelope.Event {
	return &envelope.Event{V: 1, TenantID: tenant, SessionID: "s", Seq: seq, TsUnixMs: 1767225600000 + int64(seq), Type: envelope.ToolCallProposed,
		Payload: json.RawMessage(fmt.Sprintf(`{"args":%s,"call_id":"c%d","tool_name":%q}`, args, seq, tool))}
}

func TestStepDecidesAndApplies(t *testing.T) {
	e := newEngine(t, policy.Default())
	snap := session.New("acme", "s")
	ctx := context.Background()
	var reasons []string
	for seq := uint64(1); seq <= 6; seq++ {
		ev := proposal("acme", seq, "search", fmt.Sprintf(`{"q":%d}`, seq))
		if err := e.Step(ctx, snap, ev); err != nil {
			t.Fatal(err)
		}
		reasons = append(reasons, ev.Decision.Reason)
	}
	// max_tool_calls is 4 in the test manifest: 4 pass, the 5th and 6th do not.
	if want := "[OK OK OK OK BUDGET_EXCEEDED BUDGET_EXCEEDED]"; fmt.Sprint(reasons) != want {
		t.Fatalf("reasons %v, want %s", reasons, want)
	}
	if snap.ToolCalls != 6 || snap.LastSeq != 6 {
		t.Fatalf("snapshot %+v", snap)
	}
}

func TestDecisionRecordsItsInputs(t *testing.T) {
	e := newEngine(t, policy.Default())
	ctx := context.Background()
	ev := proposal("acme", 1, "search", `{"q":1}`)
	d1, err := e.Decide(ctx, session.New("acme", "s"), ev)
	if err != nil {
		t.Fatal(err)
	}
	m, _ := manifest.Load("testdata/manifests/acme/default.json")
	if d1.PolicyRevision != policy.Default().Revision || d1.ManifestDigest != m.Digest() || len(d1.InputDigest) != len("sha256:")+64 {
		t.Fatalf("decision %+v", d1)
	}
	d2, _ := e.Decide(ctx, session.New("acme", "s"), proposal("acme", 1, "search", `{ "q" : 1.0 }`))
	if *d1 != *d2 {
		t.Fatalf("same canonical input, different decisions:\n%+v\n%+v", d1, d2)
	}
	snap := session.New("acme", "s")
	snap.ModelCalls = 1
	d3, _ := e.Decide(ctx, snap, ev)
	if d3.InputDigest == d1.InputDigest {
		t.Fatal("input digest ignores the snapshot")
	}
	// The digest ignores decision and chain fields of a recorded event.
	rec := *ev
	rec.Decision, rec.PrevHash, rec.Hash = d1, "ab", "cd"
	if dig, _ := InputDigest(session.New("acme", "s"), &rec, d1.ManifestDigest); dig != d1.InputDigest {
		t.Fatal("input digest of a recorded proposal differs")
	}
}

func TestDenyByDefault(t *testing.T) {
	ctx := context.Background()
	bad, err := policy.LoadDir("testdata/badpolicy")
	if err != nil {
		t.Fatal(err)
	}
	cases := []struct {
		name   string
		engine *Engine
		tenant string
		reason string
	}{
		{"no manifest for the tenant", newEngine(t, policy.Default()), "globex", envelope.ReasonManifestUnknown},
		{"undeclared tool", newEngine(t, policy.Default()), "acme", envelope.ReasonPermissionUndeclared},
		{"evaluation error", newEngine(t, bad), "acme", envelope.ReasonPolicyError},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			tool := "search"
			if tc.reason == envelope.ReasonPermissionUndeclared {
				tool = "format_disk"
			}
			d, err := tc.engine.Decide(ctx, session.New(tc.tenant, "s"), proposal(tc.tenant, 1, tool, `{}`))
			if err != nil {
				t.Fatal(err)
			}
			if d.Outcome != envelope.Deny || d.Reason != tc.reason || d.Constraints != (envelope.Constraints{}) {
				t.Fatalf("decision %+v", d)
			}
		})
	}
	// No registry at all: every proposal is MANIFEST_UNKNOWN.
	pe, _ := policy.New(policy.Default())
	d, err := NewEngine(pe, nil).Decide(ctx, session.New("acme", "s"), proposal("acme", 1, "search", `{}`))
	if err != nil || d.Reason != envelope.ReasonManifestUnknown {
		t.Fatalf("%+v %v", d, err)
	}
}

func TestDecideRejectsNonProposals(t *testing.T) {
	e := newEngine(t, policy.Default())
	ev := proposal("acme", 1, "search", `{}`)
	ev.Type = envelope.ModelCallStarted
	if _, err := e.Decide(context.Background(), session.New("acme", "s"), ev); err == nil {
		t.Fatal("decided a non-proposal")
	}
}

func TestCancelledContextIsNotADecision(t *testing.T) {
	e := newEngine(t, policy.Default())
	ctx, cancel := context.WithCancel(context.Background())
	cancel()
	snap := session.New("acme", "s")
	ev := proposal("acme", 1, "search", `{}`)
	if err := e.Step(ctx, snap, ev); err == nil {
		if ev.Decision.Reason == envelope.ReasonPolicyError {
			t.Fatal("a cancelled evaluation was recorded as POLICY_ERROR")
		}
		return
	}
	if ev.Decision != nil || snap.Events != 0 {
		t.Fatal("failed step changed the event or the snapshot")
	}
}

// TestTerminatedSessionDecidesNothing: after TERMINATION (which clears the
// session's taint) every proposal is denied SESSION_TERMINATED; before the
// rule, a tainted agent could terminate and then run a high-risk tool.
func TestTerminatedSessionDecidesNothing(t *testing.T) {
	e := newEngine(t, policy.Default())
	ctx := context.Background()
	snap := session.New("acme", "s")
	step := func(ev *envelope.Event) {
		t.Helper()
		if err := e.Step(ctx, snap, ev); err != nil {
			t.Fatal(err)
		}
	}
	other := func(seq uint64, typ envelope.Type, payload string) *envelope.Event {
		return &envelope.Event{V: 1, TenantID: "acme", SessionID: "s", Seq: seq, TsUnixMs: 1767225600000 + int64(seq), Type: typ, Payload: json.RawMessage(payload)}
	}
	step(other(1, envelope.ToolResult, `{"tool_name":"web_fetch","call_id":"c0"}`))
	tainted := proposal("acme", 2, "exec", `{"bin":"ls"}`)
	step(tainted)
	if tainted.Decision.Reason != envelope.ReasonTaintedToHighRisk {
		t.Fatalf("tainted exec: %+v", tainted.Decision)
	}
	step(other(3, envelope.Termination, `{}`))
	for i, tool := range []string{"exec", "search"} {
		p := proposal("acme", uint64(4+i), tool, `{"bin":"ls","q":1}`)
		step(p)
		if p.Decision.Outcome != envelope.Deny || p.Decision.Reason != envelope.ReasonSessionTerminated {
			t.Fatalf("%s after TERMINATION: %s %s, want deny SESSION_TERMINATED", tool, p.Decision.Outcome, p.Decision.Reason)
		}
	}
}

// TestApprovedCallRunsUnderOneIdenticalCall: with max_identical_calls 1,
// an approval-required call runs once after its approval. The proposal
// that asked for the approval is not counted against it; before, the
// approved call was its own second identical call, denied LOOP_DETECTED,
// and the sticky loop flag ended the session.
func TestApprovedCallRunsUnderOneIdenticalCall(t *testing.T) {
	pe, err := policy.New(policy.Default())
	if err != nil {
		t.Fatal(err)
	}
	m := &manifest.Manifest{Schema: manifest.Schema, Name: "once", Version: "1.0.0", Publisher: "acme",
		Permissions: manifest.Permissions{Tools: []string{"send_email"}, ApprovalRequired: []string{"send_email"},
			Budgets: manifest.Budgets{MaxIdenticalCalls: 1}}}
	reg, err := manifest.NewRegistry(nil, map[string]*manifest.Manifest{"acme": m})
	if err != nil {
		t.Fatal(err)
	}
	e := NewEngine(pe, reg)
	ctx := context.Background()
	snap := session.New("acme", "s")
	step := func(ev *envelope.Event) {
		t.Helper()
		if err := e.Step(ctx, snap, ev); err != nil {
			t.Fatal(err)
		}
	}
	ask := proposal("acme", 1, "send_email", `{"to":"a@example.com"}`)
	step(ask)
	if ask.Decision.Outcome != envelope.RequireApproval {
		t.Fatalf("first proposal: %+v, want require_approval", ask.Decision)
	}
	grant := fmt.Sprintf(`{"call_id":"c1","decision":"allow","tool_name":"send_email","args_digest":%q}`, snap.Approvals["c1"].ArgsDigest)
	step(&envelope.Event{V: 1, TenantID: "acme", SessionID: "s", Seq: 2, TsUnixMs: 1767225600002, Type: envelope.ApprovalDecided, Payload: json.RawMessage(grant)})
	run := proposal("acme", 3, "send_email", `{"to":"a@example.com"}`)
	run.Payload = ask.Payload // same call_id, tool and arguments
	step(run)
	if run.Decision.Outcome != envelope.Allow {
		t.Fatalf("approved call: %s %s, want allow", run.Decision.Outcome, run.Decision.Reason)
	}
	again := proposal("acme", 4, "send_email", `{"to":"a@example.com"}`)
	again.Payload = ask.Payload
	step(again)
	if again.Decision.Reason != envelope.ReasonLoopDetected {
		t.Fatalf("second run of the approved call: %s %s, want LOOP_DETECTED", again.Decision.Outcome, again.Decision.Reason)
	}
}

// TestBackdatedProposalStaysOverTheWallTime: once the session's events
// span the wall-time budget, a proposal stamped earlier is still over it.
func TestBackdatedProposalStaysOverTheWallTime(t *testing.T) {
	e := newEngine(t, policy.Default())
	ctx := context.Background()
	snap := session.New("acme", "s")
	at := func(seq uint64, ts int64, typ envelope.Type, payload string) *envelope.Event {
		return &envelope.Event{V: 1, TenantID: "acme", SessionID: "s", Seq: seq, TsUnixMs: ts, Type: typ, Payload: json.RawMessage(payload)}
	}
	const first = int64(1767225600000)
	late := at(3, first+200000, envelope.ToolCallProposed, `{"tool_name":"search","call_id":"c1","args":{"q":1}}`)
	early := at(4, first+1, envelope.ToolCallProposed, `{"tool_name":"search","call_id":"c2","args":{"q":2}}`)
	for _, ev := range []*envelope.Event{at(1, first, envelope.ModelCallStarted, `{}`), at(2, first+200000, envelope.ModelCallStarted, `{}`), late, early} {
		if err := e.Step(ctx, snap, ev); err != nil {
			t.Fatal(err)
		}
	}
	if late.Decision.Reason != envelope.ReasonBudgetExceeded || early.Decision.Reason != envelope.ReasonBudgetExceeded {
		t.Fatalf("late %s, backdated %s: want BUDGET_EXCEEDED for both", late.Decision.Reason, early.Decision.Reason)
	}
}

// TestCaseVariantArgumentsAreInvalid: arguments with two keys that differ
// only in letter case are refused. The policy reads args.url exactly, but
// a tool server decoding case-insensitively (Go's encoding/json into a
// struct) would fetch the other URL.
func TestCaseVariantArgumentsAreInvalid(t *testing.T) {
	e := newEngine(t, policy.Default())
	snap := session.New("acme", "s")
	ev := proposal("acme", 1, "search", `{"q":"x","Q":"y"}`)
	if err := e.Step(context.Background(), snap, ev); err != nil {
		t.Fatal(err)
	}
	if ev.Decision.Outcome != envelope.Deny || ev.Decision.Reason != envelope.ReasonInvalidProposal {
		t.Fatalf("%s %s, want deny INVALID_PROPOSAL", ev.Decision.Outcome, ev.Decision.Reason)
	}
}
