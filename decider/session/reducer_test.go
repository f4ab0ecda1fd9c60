package session

import (
	"encoding/json"
	"errors"
	"fmt"
	"reflect"
	"strings"
	"testing"

	"aegis.dev/aegis/schemas/canon"
	"aegis.dev/aegis/schemas/envelope"
	"aegis.dev/aegis/schemas/manifest"
)

// ev builds the next event of session t/s.
func ev(seq uint64, ts int64, typ envelope.Type, payload string) *envelope.Event {
	return &envelope.Event{V: 1, TenantID: "t", SessionID: "s", Seq: seq, TsUnixMs: ts, Type: typ, Payload: json.RawMessage(payload)}
}

func proposal(seq uint64, ts int64, tool, callID string, d envelope.Decision) *envelope.Event {
	e := ev(seq, ts, envelope.ToolCallProposed, fmt.Sprintf(`{"tool_name":%q,"call_id":%q,"args":{"q":1}}`, tool, callID))
	e.Decision = &d
	return e
}

var allow = envelope.Decision{Outcome: envelope.Allow, Reason: envelope.ReasonOK}

func apply(tb testing.TB, s *Snapshot, evs ...*envelope.Event) {
	tb.Helper()
	for _, e := range evs {
		if err := s.Apply(e); err != nil {
			tb.Fatalf("apply seq %d: %v", e.Seq, err)
		}
	}
}

func TestCounters(t *testing.T) {
	s := New("t", "s")
	first := ev(1, 1000, envelope.ModelCallStarted, `{}`)
	first.Manifest = "bot@1.0.0"
	apply(t, s,
		first,
		ev(2, 1100, envelope.ModelCallFinished, `{}`),
		proposal(3, 1200, "search", "c1", allow),
		ev(4, 900, envelope.ToolCallExecuted, `{"call_id":"c1"}`), // clock went backwards
		ev(5, 1300, envelope.ToolResult, `{"call_id":"c1","is_error":true}`),
		proposal(6, 1400, "search", "c2", allow),
	)
	want := Snapshot{TenantID: "t", SessionID: "s", Manifest: "bot@1.0.0", LastSeq: 6, FirstTsMs: 1000, LastTsMs: 1400,
		Events: 6, Steps: 3, ModelCalls: 1, ToolCalls: 2, Tainted: true, TaintSources: []string{"TOOL_RESULT"},
		Calls: s.Calls, RecentTools: []string{"search", "search"}, ConsecutiveErrors: 1}
	if !reflect.DeepEqual(*s, want) {
		t.Fatalf("got  %+v\nwant %+v", *s, want)
	}
	if len(s.Calls) != 1 {
		t.Fatalf("identical calls must share a digest: %v", s.Calls)
	}
	for _, n := range s.Calls {
		if n != 2 {
			t.Fatalf("count %d", n)
		}
	}
}

func TestManifestOnlyFromFirstEvent(t *testing.T) {
	s := New("t", "s")
	second := ev(2, 2, envelope.ModelCallStarted, `{}`)
	second.Manifest = "other@9.9.9"
	apply(t, s, ev(1, 1, envelope.ModelCallStarted, `{}`), second)
	if s.Manifest != "" {
		t.Fatalf("manifest %q taken from a later event", s.Manifest)
	}
}

func TestTaint(t *testing.T) {
	cases := []struct {
		name        string
		events      []*envelope.Event
		wantTainted bool
		wantSources []string
	}{
		{"tool result taints", []*envelope.Event{ev(1, 1, envelope.ToolResult, `{"tool_name":"web_fetch"}`)}, true, []string{"TOOL_RESULT:web_fetch"}},
		{"memory read taints", []*envelope.Event{ev(1, 1, envelope.MemoryRead, `{"key":"notes"}`)}, true, []string{"MEMORY_READ:notes"}},
		{"memory write does not", []*envelope.Event{ev(1, 1, envelope.MemoryWrite, `{"key":"notes"}`)}, false, nil},
		{"registered sanitizer key", []*envelope.Event{
			ev(1, 1, envelope.SanitizedText, `{"key":"k1"}`),
			ev(2, 2, envelope.ToolResult, `{"tool_name":"web_fetch","sanitizer_key":"k1"}`),
		}, false, nil},
		{"sanitizer key registered later does not count", []*envelope.Event{
			ev(1, 1, envelope.ToolResult, `{"tool_name":"web_fetch","sanitizer_key":"k1"}`),
			ev(2, 2, envelope.SanitizedText, `{"key":"k1"}`),
		}, true, []string{"TOOL_RESULT:web_fetch"}},
		{"unknown sanitizer key", []*envelope.Event{
			ev(1, 1, envelope.SanitizedText, `{"key":"k1"}`),
			ev(2, 2, envelope.MemoryRead, `{"key":"m","sanitizer_key":"K1"}`),
		}, true, []string{"MEMORY_READ:m"}},
		{"termination clears", []*envelope.Event{
			ev(1, 1, envelope.ToolResult, `{"tool_name":"a"}`),
			ev(2, 2, envelope.Termination, `{}`),
		}, false, nil},
		{"sources are a sorted set", []*envelope.Event{
			ev(1, 1, envelope.ToolResult, `{"tool_name":"b"}`),
			ev(2, 2, envelope.ToolResult, `{"tool_name":"a"}`),
			ev(3, 3, envelope.ToolResult, `{"tool_name":"b"}`),
		}, true, []string{"TOOL_RESULT:a", "TOOL_RESULT:b"}},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			s := New("t", "s")
			apply(t, s, tc.events...)
			if s.Tainted != tc.wantTainted || !reflect.DeepEqual(s.TaintSources, tc.wantSources) {
				t.Fatalf("tainted=%v sources=%v", s.Tainted, s.TaintSources)
			}
		})
	}
}

func TestSequenceErrors(t *testing.T) {
	base := func() *Snapshot {
		s := New("t", "s")
		apply(t, s, ev(1, 1, envelope.ModelCallStarted, `{}`), ev(2, 2, envelope.ModelCallFinished, `{}`))
		return s
	}
	other := ev(3, 3, envelope.ModelCallStarted, `{}`)
	other.SessionID = "x"
	noDecision := ev(3, 3, envelope.ToolCallProposed, `{"tool_name":"a","call_id":"c"}`)
	cases := []struct {
		name string
		e    *envelope.Event
		want error
	}{
		{"gap", ev(4, 4, envelope.ModelCallStarted, `{}`), ErrSeqGap},
		{"duplicate", ev(2, 2, envelope.ModelCallFinished, `{}`), ErrSeqDuplicate},
		{"backwards", ev(1, 2, envelope.ModelCallFinished, `{}`), ErrSeqDuplicate},
		{"other session", other, ErrWrongSession},
		{"proposal without decision", noDecision, ErrNoDecision},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			s := base()
			before := s.Clone()
			err := s.Apply(tc.e)
			if !errors.Is(err, tc.want) {
				t.Fatalf("got %v, want %v", err, tc.want)
			}
			if !reflect.DeepEqual(s, before) {
				t.Fatalf("snapshot changed on error")
			}
		})
	}
}

func TestApprovals(t *testing.T) {
	req := envelope.Decision{Outcome: envelope.RequireApproval, Reason: envelope.ReasonApprovalRequired}
	s := New("t", "s")
	apply(t, s,
		proposal(1, 10, "send_email", "c1", req),
		proposal(2, 20, "send_email", "c2", req),
		proposal(3, 30, "send_email", "c3", req),
		ev(4, 40, envelope.ApprovalDecided, `{"call_id":"c1","decision":"allow","approver":"ops@acme"}`),
		ev(5, 50, envelope.ApprovalDecided, `{"call_id":"c2","decision":"deny"}`),
		ev(6, 60, envelope.ApprovalDecided, `{"call_id":"nope","decision":"allow"}`),
		ev(7, 70, envelope.ApprovalDecided, `{"call_id":"c2","decision":"allow"}`), // already decided: no change
	)
	got := map[string]string{}
	for id, a := range s.Approvals {
		got[id] = a.State
	}
	want := map[string]string{"c1": ApprovalApproved, "c2": ApprovalDenied, "c3": ApprovalPending}
	if !reflect.DeepEqual(got, want) {
		t.Fatalf("approvals %v", got)
	}
	a := s.Approvals["c3"]
	if a.ToolName != "send_email" || a.RequestedSeq != 3 || a.RequestedTsMs != 30 || len(a.ArgsDigest) != 64 {
		t.Fatalf("approval %+v", a)
	}
	// Re-proposing an approved call keeps the approval.
	apply(t, s, proposal(8, 80, "send_email", "c1", req))
	if s.Approvals["c1"].State != ApprovalApproved {
		t.Fatal("approval lost on re-proposal")
	}
}

// TestApprovalsBounded: a session tracks at most MaxApprovals approvals;
// past that the one requested earliest is forgotten, and its decision, when
// it comes, changes nothing. Re-proposing a tracked call adds none.
func TestApprovalsBounded(t *testing.T) {
	req := envelope.Decision{Outcome: envelope.RequireApproval, Reason: envelope.ReasonApprovalRequired}
	s := New("t", "s")
	seq := uint64(0)
	next := func() uint64 { seq++; return seq }
	for i := range MaxApprovals + 10 {
		apply(t, s, proposal(next(), int64(seq), "send_email", fmt.Sprintf("c%05d", i), req))
		if i == 20 {
			apply(t, s, proposal(next(), int64(seq), "send_email", "c00000", req))
		}
	}
	if len(s.Approvals) != MaxApprovals {
		t.Fatalf("%d approvals tracked, want %d", len(s.Approvals), MaxApprovals)
	}
	for i := range 10 {
		if _, ok := s.Approvals[fmt.Sprintf("c%05d", i+1)]; ok {
			t.Fatalf("c%05d still tracked", i+1)
		}
	}
	// c00000 was requested again after c00020: younger than c00001..c00010.
	if _, ok := s.Approvals["c00000"]; !ok {
		t.Fatal("c00000 forgotten")
	}
	apply(t, s, ev(next(), int64(seq), envelope.ApprovalDecided, `{"call_id":"c00001","decision":"allow"}`))
	if _, ok := s.Approvals["c00001"]; ok || len(s.Approvals) != MaxApprovals {
		t.Fatal("a forgotten approval came back")
	}
	b, err := s.AppendCanonical(nil)
	if err != nil {
		t.Fatal(err)
	}
	if len(b) > 512<<10 {
		t.Fatalf("snapshot of %d bytes", len(b))
	}
}

func TestLoopIsSticky(t *testing.T) {
	loop := envelope.Decision{Outcome: envelope.Deny, Reason: envelope.ReasonLoopDetected}
	s := New("t", "s")
	apply(t, s, proposal(1, 1, "a", "c1", allow), proposal(2, 2, "a", "c2", loop), proposal(3, 3, "b", "c3", allow))
	if !s.Loop.Detected || s.Loop.Seq != 2 {
		t.Fatalf("loop %+v", s.Loop)
	}
}

func TestRecentToolsBounded(t *testing.T) {
	s := New("t", "s")
	for i := uint64(1); i <= 40; i++ {
		apply(t, s, proposal(i, int64(i), fmt.Sprintf("tool%d", i), fmt.Sprintf("c%d", i), allow))
	}
	if len(s.RecentTools) != MaxRecentTools || s.RecentTools[0] != "tool28" || s.RecentTools[12] != "tool40" {
		t.Fatalf("recent %v", s.RecentTools)
	}
}

func TestCallDigest(t *testing.T) {
	a, _ := CallDigest("search", json.RawMessage(`{"b":1,"a":[1,2]}`))
	b, _ := CallDigest("search", json.RawMessage(`{ "a":[1,2], "b":1.0 }`))
	c, _ := CallDigest("search", json.RawMessage(`{"a":[2,1],"b":1}`))
	d, _ := CallDigest("Search", json.RawMessage(`{"b":1,"a":[1,2]}`))
	e, _ := CallDigest("search", nil)
	f, _ := CallDigest("search", json.RawMessage(`{}`))
	if a != b || a == c || a == d || e != f {
		t.Fatalf("digests a=%s b=%s c=%s d=%s e=%s f=%s", a, b, c, d, e, f)
	}
	if _, err := CallDigest("x", json.RawMessage(`{"a":1,"a":2}`)); err == nil {
		t.Fatal("duplicate keys accepted")
	}
}

// TestSnapshotIsAPureFunction guards invariant 4: the same events give the
// same snapshot bytes, and a snapshot survives a JSON round trip (the state
// topic) with its hash unchanged.
func TestSnapshotIsAPureFunction(t *testing.T) {
	build := func() *Snapshot {
		s := New("t", "s")
		req := envelope.Decision{Outcome: envelope.RequireApproval, Reason: envelope.ReasonApprovalRequired}
		apply(t, s,
			ev(1, 5, envelope.SanitizedText, `{"key":"z"}`),
			ev(2, 6, envelope.SanitizedText, `{"key":"a"}`),
			proposal(3, 7, "x", "c1", req),
			proposal(4, 8, "y", "c2", req),
			ev(5, 9, envelope.ToolResult, `{"tool_name":"x"}`),
			ev(6, 10, envelope.HandoffRequested, `{"from_agent":"a","to_agent":"b"}`),
		)
		return s
	}
	s1, s2 := build(), build()
	h1, err := s1.Hash()
	if err != nil {
		t.Fatal(err)
	}
	h2, _ := s2.Hash()
	if h1 != h2 {
		t.Fatalf("same events, different hashes %s %s", h1, h2)
	}
	raw, _ := json.Marshal(s1)
	var restored Snapshot
	if err := json.Unmarshal(raw, &restored); err != nil {
		t.Fatal(err)
	}
	if h3, _ := restored.Hash(); h3 != h1 {
		t.Fatalf("hash changed across a JSON round trip")
	}
	apply(t, s2, ev(7, 11, envelope.HandoffCompleted, `{}`))
	if h4, _ := s2.Hash(); h4 == h1 {
		t.Fatal("hash did not change with the state")
	}
	if s2.Handoff != (Handoff{State: "completed", From: "a", To: "b"}) {
		t.Fatalf("handoff %+v", s2.Handoff)
	}
}

func BenchmarkApplyProposal(b *testing.B) {
	e := proposal(1, 1, "web_fetch", "c1", allow)
	e.Payload = json.RawMessage(`{"args":{"domain":"api.example.com","url":"https://api.example.com/v1/items?limit=10"},"call_id":"c-7","tool_name":"web_fetch"}`)
	b.ReportAllocs()
	for i := 0; i < b.N; i++ {
		s := New("t", "s")
		if err := s.Apply(e); err != nil {
			b.Fatal(err)
		}
	}
}

// Identifiers the snapshot keeps are bounded: a longer one is ErrPayload and
// the snapshot is unchanged, whatever the event type.
func TestNamesBounded(t *testing.T) {
	long := strings.Repeat("n", MaxNameBytes+1)
	ok := strings.Repeat("n", MaxNameBytes)
	for _, e := range []*envelope.Event{
		proposal(2, 2000, long, "c1", allow),
		proposal(2, 2000, "search", long, allow),
		ev(2, 2000, envelope.ToolResult, `{"tool_name":"`+long+`"}`),
		ev(2, 2000, envelope.ToolResult, `{"tool_name":"t","sanitizer_key":"`+long+`"}`),
		ev(2, 2000, envelope.MemoryRead, `{"key":"`+long+`"}`),
		ev(2, 2000, envelope.SanitizedText, `{"key":"`+long+`"}`),
		ev(2, 2000, envelope.HandoffRequested, `{"from_agent":"a","to_agent":"`+long+`"}`),
		ev(2, 2000, envelope.ModelCallStarted, `{"call_id":"`+long+`"}`),
	} {
		s := New("t", "s")
		apply(t, s, ev(1, 1000, envelope.ModelCallStarted, `{}`))
		before := s.Clone()
		if err := s.Apply(e); !errors.Is(err, ErrPayload) {
			t.Fatalf("%s %s: %v, want ErrPayload", e.Type, e.Payload, err)
		}
		if !reflect.DeepEqual(s, before) {
			t.Fatalf("%s: snapshot changed", e.Type)
		}
	}
	s := New("t", "s")
	apply(t, s, proposal(1, 1000, ok, ok, allow), ev(2, 2000, envelope.MemoryRead, `{"key":"`+ok+`"}`))
}

// TestApprovalDecisionBoundToArguments: a decision that names a tool or an
// args digest settles the pending approval only if they are the ones it
// was requested for. A call_id proposed again with other arguments opens a
// new pending approval; a decision carrying the first arguments' digest
// must not approve the second arguments.
func TestApprovalDecisionBoundToArguments(t *testing.T) {
	req := envelope.Decision{Outcome: envelope.RequireApproval, Reason: envelope.ReasonApprovalRequired}
	s := New("t", "s")
	apply(t, s, proposal(1, 10, "send_email", "c1", req))
	first := s.Approvals["c1"].ArgsDigest
	other := ev(2, 20, envelope.ToolCallProposed, `{"tool_name":"send_email","call_id":"c1","args":{"to":"attacker@example.com"}}`)
	other.Decision = &req
	apply(t, s, other)
	second := s.Approvals["c1"].ArgsDigest
	if first == second {
		t.Fatal("the two proposals have the same args digest")
	}
	apply(t, s,
		ev(3, 30, envelope.ApprovalDecided, `{"call_id":"c1","decision":"allow","tool_name":"send_email","args_digest":"`+first+`"}`),
		ev(4, 40, envelope.ApprovalDecided, `{"call_id":"c1","decision":"allow","tool_name":"git_push","args_digest":"`+second+`"}`))
	if st := s.Approvals["c1"].State; st != ApprovalPending {
		t.Fatalf("decisions for other arguments or another tool settled the approval: %s", st)
	}
	apply(t, s, ev(5, 50, envelope.ApprovalDecided, `{"call_id":"c1","decision":"allow","tool_name":"send_email","args_digest":"`+second+`"}`))
	if st := s.Approvals["c1"].State; st != ApprovalApproved {
		t.Fatalf("the matching decision did not settle the approval: %s", st)
	}
}

// TestCanonicalLenMatchesCanon: the identifier bound counts what canonical
// JSON writes, every byte value included.
func TestCanonicalLenMatchesCanon(t *testing.T) {
	var all []byte
	for c := range 128 {
		all = append(all, byte(c))
	}
	for _, s := range []string{"", "plain", string(all), "é\u2028\"\\", strings.Repeat("\x01", 300)} {
		b, err := canon.AppendString(nil, s)
		if err != nil {
			t.Fatal(err)
		}
		if got := canonicalLen(s); got != len(b)-2 {
			t.Errorf("%q: canonicalLen %d, canonical form %d bytes", s, got, len(b)-2)
		}
	}
}

// TestApprovedCallIDWithOtherArguments: a call_id approved for some
// arguments and proposed again with others opens a pending approval for the
// new arguments, which a matching decision then settles (before, the old
// approval stayed and the new call could never be approved).
func TestApprovedCallIDWithOtherArguments(t *testing.T) {
	req := envelope.Decision{Outcome: envelope.RequireApproval, Reason: envelope.ReasonApprovalRequired}
	s := New("t", "s")
	apply(t, s, proposal(1, 10, "send_email", "c1", req))
	apply(t, s, ev(2, 20, envelope.ApprovalDecided, `{"call_id":"c1","decision":"allow","args_digest":"`+s.Approvals["c1"].ArgsDigest+`"}`))
	other := ev(3, 30, envelope.ToolCallProposed, `{"tool_name":"send_email","call_id":"c1","args":{"to":"b@example.com"}}`)
	other.Decision = &req
	apply(t, s, other)
	a := s.Approvals["c1"]
	if a.State != ApprovalPending || a.RequestedSeq != 3 {
		t.Fatalf("after other arguments: %+v, want pending from seq 3", a)
	}
	apply(t, s, ev(4, 40, envelope.ApprovalDecided, `{"call_id":"c1","decision":"allow","args_digest":"`+a.ArgsDigest+`"}`))
	if st := s.Approvals["c1"].State; st != ApprovalApproved {
		t.Fatalf("the decision for the new arguments: %s", st)
	}
}

// TestCallTableHoldsEveryToolCallBudget: the identical-call table holds as
// many distinct calls as the largest tool-call budget a manifest may set.
// Otherwise a session could fill the table with distinct proposals (denied
// ones count too) and then repeat an untracked call without end: the
// policy's max_identical_calls check sees no count for it.
func TestCallTableHoldsEveryToolCallBudget(t *testing.T) {
	if manifest.MaxMaxToolCalls > MaxCallDigests {
		t.Fatalf("manifest.MaxMaxToolCalls = %d exceeds MaxCallDigests = %d: max_identical_calls goes unenforced past the table",
			manifest.MaxMaxToolCalls, MaxCallDigests)
	}
}
