package ingest

import (
	"bytes"
	"context"
	"encoding/base64"
	"encoding/json"
	"errors"
	"net/http/httptest"
	"os"
	"path/filepath"
	"runtime/pprof"
	"strings"
	"testing"
	"time"

	"aegis.dev/aegis/decider"
	"aegis.dev/aegis/internal/ctl"
	"aegis.dev/aegis/internal/stream"
	"aegis.dev/aegis/schemas/envelope"
)

func proposal(tool, call, args string) string {
	return `{"payload":{"tool_name":"` + tool + `","call_id":"` + call + `","args":` + args + `}}`
}

// TestReplyTailStartsOnFirstWait: a gateway that serves no waiting request
// reads none of the reply topics; the first proposal starts the tail and
// still gets its decision.
func TestReplyTailStartsOnFirstWait(t *testing.T) {
	t.Parallel()
	h := newHarness(t, harnessOpts{})
	var out ProposalResponse
	if r := h.do(t, "POST", "/v1/events", "acme-agent", "application/json", ev("acme", "t1", 1, "MODEL_CALL_STARTED", `{}`), nil); r.StatusCode != 202 {
		t.Fatalf("event with a client seq: %d", r.StatusCode)
	}
	if h.srv.tailOpen.Load() {
		t.Fatal("the reply tail runs before any request waited for a verdict")
	}
	if r := h.do(t, "POST", "/v1/sessions/t2/proposals", "acme-agent", "application/json", proposal("read_file", "c1", `{"path":"/a"}`), &out); r.StatusCode != 200 || out.Reason != "OK" {
		t.Fatalf("first proposal: %d %+v", r.StatusCode, out)
	}
	if !h.srv.tailOpen.Load() || !h.srv.Ready() {
		t.Fatalf("after a proposal: tail open %v, ready %v", h.srv.tailOpen.Load(), h.srv.Ready())
	}
}

// TestVerdictWhenTheReplyTailStartsLate: a request that waits for a
// verdict publishes nothing before the reply tail has listed the offsets it
// starts from, so its verdict cannot land below them however late the tail
// connects. Here the tail's Run starts only after the proposal came in, and
// the gateway's clock is an hour ahead of the clocks that stamp the reply
// records: where the tail starts does not depend on timestamps.
func TestVerdictWhenTheReplyTailStartsLate(t *testing.T) {
	t.Parallel()
	h := newHarness(t, harnessOpts{lateRun: true})
	defer h.run() // a failed test still lets the request finish
	h.clock.set(time.Now().Add(time.Hour))
	type answer struct {
		status int
		out    ProposalResponse
	}
	done := make(chan answer, 1)
	go func() {
		var out ProposalResponse
		r := h.do(t, "POST", "/v1/sessions/late/proposals?timeout_ms=30000", "acme-agent", "application/json", proposal("read_file", "c1", `{"path":"/a"}`), &out)
		done <- answer{r.StatusCode, out}
	}()
	// The request asked for the tail: the gateway is not ready until it runs.
	deadline := time.Now().Add(10 * time.Second)
	for h.srv.Ready() && time.Now().Before(deadline) {
		time.Sleep(10 * time.Millisecond)
	}
	if h.srv.Ready() {
		t.Fatal("the proposal did not ask for the reply tail")
	}
	c, err := stream.NewConsumer(stream.ConsumerConfig{Brokers: h.brokers, Topics: []string{h.topics.Events}})
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	ctx, cancel := context.WithTimeout(context.Background(), 3*time.Second)
	recs, err := c.Poll(ctx)
	cancel()
	if len(recs) != 0 {
		t.Fatalf("the proposal was published before the reply tail listed its start offsets (%d records on %s)", len(recs), h.topics.Events)
	}
	if !errors.Is(err, context.DeadlineExceeded) {
		t.Fatalf("events topic: %v", err)
	}
	h.run()
	res := <-done
	if res.status != 200 || res.out.Outcome != envelope.Allow || res.out.Seq != 1 || res.out.CallID != "c1" {
		t.Fatalf("after the tail started: %d %+v", res.status, res.out)
	}
}

// TestProposalBeforeTheReplyTailStarts: a request whose deadline passes
// before the reply tail listed its start offsets publishes nothing and
// fails as a broker failure (503 BROKER_UNAVAILABLE), not as a recorded
// proposal whose decision is late (504); in process likewise.
func TestProposalBeforeTheReplyTailStarts(t *testing.T) {
	t.Parallel()
	h := newHarness(t, harnessOpts{noDecider: true, lateRun: true})
	defer h.run() // Run closes the producer when the test ends
	var out errResp
	r := h.do(t, "POST", "/v1/sessions/early/proposals?timeout_ms=500", "acme-agent", "application/json", `{"seq":1,`+proposal("read_file", "c1", `{}`)[1:], &out)
	if r.StatusCode != 503 || out.Error.Code != CodeBrokerUnavailable {
		t.Fatalf("HTTP: got %d %+v, want 503 %s", r.StatusCode, out, CodeBrokerUnavailable)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 500*time.Millisecond)
	defer cancel()
	_, err := h.srv.Propose(ctx, &envelope.Event{TenantID: "acme", SessionID: "early", Type: envelope.ToolCallProposed,
		Payload: json.RawMessage(`{"tool_name":"read_file","call_id":"c2","args":{}}`)})
	var ae *apiError
	if errors.Is(err, ErrDecisionTimeout) || !errors.As(err, &ae) || ae.Status != 503 || ae.Code != CodeBrokerUnavailable {
		t.Fatalf("in process: %v, want a broker failure", err)
	}
	c, err := stream.NewConsumer(stream.ConsumerConfig{Brokers: h.brokers, Topics: []string{h.topics.Events}})
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	pctx, pcancel := context.WithTimeout(context.Background(), 3*time.Second)
	defer pcancel()
	if recs, err := c.Poll(pctx); len(recs) != 0 || !errors.Is(err, context.DeadlineExceeded) {
		t.Fatalf("events topic: %d records, %v; want none", len(recs), err)
	}
}

func TestProposalDecisions(t *testing.T) {
	t.Parallel()
	h := newHarness(t, harnessOpts{})
	path := "/v1/sessions/p1/proposals"
	for _, tc := range []struct {
		name, key, body string
		status          int
		code            string
		seq             uint64
		outcome         envelope.Outcome
		reason          string
	}{
		{"allowed, seq assigned", "acme-agent", proposal("read_file", "c1", `{"path":"/a"}`), 200, "", 1, envelope.Allow, "OK"},
		{"undeclared", "acme-agent", proposal("exec", "c2", `{}`), 200, "", 2, envelope.Deny, "PERMISSION_UNDECLARED"},
		{"client seq", "acme-agent", `{"seq":3,"ts_unix_ms":1767225600000,` + proposal("search", "c3", `{}`)[1:], 200, "", 3, envelope.Allow, "OK"},
		{"seq conflict", "acme-agent", `{"seq":3,"ts_unix_ms":1767225600000,` + proposal("search", "c4", `{}`)[1:], 409, "SEQ_CONFLICT", 0, "", ""},
		{"seq gap", "acme-agent", `{"seq":9,` + proposal("search", "c5", `{}`)[1:], 409, "SEQ_GAP", 0, "", ""},
		{"exact retry gets the same decision", "acme-agent", `{"seq":3,"ts_unix_ms":1767225600000,` + proposal("search", "c3", `{}`)[1:], 200, "", 3, envelope.Allow, "OK"},
		{"null members are filled in", "acme-agent", `{"tenant_id":null,"session_id":null,"event_type":null,"seq":null,"ts_unix_ms":null,` + proposal("search", "c10", `{"q":10}`)[1:], 200, "", 4, envelope.Allow, "OK"},
		{"seq 0.0 is assigned, members escaped", "acme-agent", `{"seq":0.0,"session_id":"p\u0031","event_type":"TOOL_CALL_PROPOSE\u0044",` + proposal("search", "c11", `{"q":11}`)[1:], 200, "", 5, envelope.Allow, "OK"},
		{"seq -0 is assigned", "acme-agent", `{"seq":-0,` + proposal("search", "c12", `{"q":12}`)[1:], 200, "", 6, envelope.Allow, "OK"},
		{"session of the path only", "acme-agent", `{"session_id":"other",` + proposal("search", "c6", `{}`)[1:], 400, CodeMalformedRequest, 0, "", ""},
		{"foreign tenant in body", "acme-agent", `{"tenant_id":"globex",` + proposal("search", "c6", `{}`)[1:], 403, CodeTenantMismatch, 0, "", ""},
		{"not a proposal", "acme-agent", `{"event_type":"TOOL_RESULT","payload":{}}`, 400, CodeMalformedRequest, 0, "", ""},
		{"auditor may not propose", "acme-auditor", proposal("search", "c7", `{}`), 403, CodeForbidden, 0, "", ""},
	} {
		t.Run(tc.name, func(t *testing.T) {
			var out struct {
				ProposalResponse
				Error ErrorDetail `json:"error"`
			}
			r := h.do(t, "POST", path, tc.key, "application/json", tc.body, &out)
			if r.StatusCode != tc.status || out.Error.Code != tc.code || out.Seq != tc.seq || out.Outcome != tc.outcome || out.Reason != tc.reason {
				t.Fatalf("got %d %q seq %d %s/%s, want %d %q seq %d %s/%s", r.StatusCode, out.Error.Code, out.Seq, out.Outcome, out.Reason,
					tc.status, tc.code, tc.seq, tc.outcome, tc.reason)
			}
			if tc.code == "SEQ_CONFLICT" && out.Error.ExpectedSeq != 4 {
				t.Fatalf("expected_seq %d, want 4", out.Error.ExpectedSeq)
			}
		})
	}
	// Tenants do not share sessions: globex's p1 is a new session.
	var out ProposalResponse
	if r := h.do(t, "POST", path, "globex-agent", "application/json", proposal("read_file", "c1", `{}`), &out); r.StatusCode != 200 || out.TenantID != "globex" || out.Seq != 1 {
		t.Fatalf("globex: %d %+v", r.StatusCode, out)
	}
}

func TestProposalTimeoutStillRecorded(t *testing.T) {
	t.Parallel()
	h := newHarness(t, harnessOpts{noDecider: true})
	// The first waiting request also waits for the reply tail to list its
	// start offsets (TestProposalBeforeTheReplyTailStarts): started here,
	// timeout_ms bounds the publish and the wait for the decision.
	h.tailStarted(t)
	// timeout_ms also bounds the publish, so it leaves a slow broker time
	// to acknowledge; without a decider the wait after it always times out.
	var out TimeoutResponse
	r := h.do(t, "POST", "/v1/sessions/t1/proposals?timeout_ms=2000", "acme-agent", "application/json", `{"seq":1,`+proposal("read_file", "c1", `{}`)[1:], &out)
	if r.StatusCode != 504 || out.Error.Code != CodeDecisionTimeout || !out.Recorded || out.Seq != 1 {
		t.Fatalf("got %d %+v", r.StatusCode, out)
	}
	c, err := stream.NewConsumer(stream.ConsumerConfig{Brokers: h.brokers, Topics: []string{h.topics.Events}})
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	recs, err := c.Poll(ctx)
	if err != nil || len(recs) != 1 || string(recs[0].Key) != "acme/t1" {
		t.Fatalf("events topic: %v %d records", err, len(recs))
	}
	if _, err := envelope.Decode(recs[0].Value); err != nil {
		t.Fatalf("recorded proposal: %v", err)
	}
}

// requireApproval proposes send_email and returns the approval token.
func requireApproval(t *testing.T, h *harness, key, session, call, args string) ProposalResponse {
	t.Helper()
	var out ProposalResponse
	r := h.do(t, "POST", "/v1/sessions/"+session+"/proposals", key, "application/json", proposal("send_email", call, args), &out)
	if r.StatusCode != 200 || out.Outcome != envelope.RequireApproval || out.Approval == nil || out.Approval.State != ApprovalPending {
		t.Fatalf("got %d %+v", r.StatusCode, out)
	}
	return out
}

func TestApprovalTokens(t *testing.T) {
	t.Parallel()
	h := newHarness(t, harnessOpts{})
	args := `{"to":"a@example.com"}`
	p := requireApproval(t, h, "acme-agent", "ap1", "m1", args)
	token := p.Approval.Token
	allow := `{"decision":"allow","reason":"looks fine"}`

	// The token names its claims; altering them breaks the MAC.
	parts := strings.Split(token, ".")
	claims, _ := base64.RawURLEncoding.DecodeString(parts[1])
	forged := parts[0] + "." + base64.RawURLEncoding.EncodeToString([]byte(strings.Replace(string(claims), p.Approval.ArgsDigest, strings.Repeat("0", 64), 1))) + "." + parts[2]

	var list struct {
		Approvals []Approval `json:"approvals"`
	}
	if h.do(t, "GET", "/v1/approvals?state=pending", "acme-operator", "", "", &list); len(list.Approvals) != 1 || list.Approvals[0].Token != token {
		t.Fatalf("acme pending: %+v", list)
	}
	if h.do(t, "GET", "/v1/approvals", "globex-op", "", "", &list); len(list.Approvals) != 0 {
		t.Fatalf("globex sees acme's approvals: %+v", list)
	}
	for _, tc := range []struct {
		name, key, token, body string
		status                 int
		code                   string
	}{
		{"agent may not approve", "acme-agent", token, allow, 403, CodeForbidden},
		{"auditor may not list or approve", "acme-auditor", token, allow, 403, CodeForbidden},
		{"another tenant's operator", "globex-op", token, allow, 403, CodeTenantMismatch},
		{"forged claims", "acme-operator", forged, allow, 404, CodeApprovalInvalid},
		{"garbage token", "acme-operator", "apv1.x.y", allow, 404, CodeApprovalInvalid},
		{"other args", "acme-operator", token, `{"decision":"allow","args":{"to":"b@example.com"}}`, 409, CodeApprovalMismatch},
		{"other tool", "acme-operator", token, `{"decision":"allow","tool_name":"search"}`, 409, CodeApprovalMismatch},
		{"bad decision", "acme-operator", token, `{"decision":"maybe"}`, 400, CodeMalformedRequest},
		{"approve", "acme-operator", token, `{"decision":"allow","reason":"ok","tool_name":"send_email","args":` + args + `}`, 200, ""},
		{"replay", "acme-operator", token, allow, 409, CodeApprovalNotPending},
	} {
		t.Run(tc.name, func(t *testing.T) {
			var out struct {
				Error    ErrorDetail `json:"error"`
				Approval Approval    `json:"approval"`
			}
			r := h.do(t, "POST", "/v1/approvals/"+tc.token, tc.key, "application/json", tc.body, &out)
			if r.StatusCode != tc.status || out.Error.Code != tc.code {
				t.Fatalf("got %d %q, want %d %q", r.StatusCode, out.Error.Code, tc.status, tc.code)
			}
			if tc.code == "" && (out.Approval.State != ApprovalApproved || out.Approval.Approver != "acme-operator" || out.Approval.DecidedSeq != 2) {
				t.Fatalf("approval %+v", out.Approval)
			}
		})
	}
	// The approved call passes; other arguments need a new approval.
	var out ProposalResponse
	if h.do(t, "POST", "/v1/sessions/ap1/proposals", "acme-agent", "application/json", proposal("send_email", "m1", args), &out); out.Outcome != envelope.Allow || out.Seq != 3 {
		t.Fatalf("approved call: %+v", out)
	}
	if h.do(t, "POST", "/v1/sessions/ap1/proposals", "acme-agent", "application/json", proposal("send_email", "m1", `{"to":"b@example.com"}`), &out); out.Outcome != envelope.RequireApproval {
		t.Fatalf("other args: %+v", out)
	}
}

func TestApprovalExpiry(t *testing.T) {
	t.Parallel()
	// Without Run's sweep: a tick between moving the clock and the late
	// POST would expire "late" as the gateway's, not the operator's.
	h := newHarness(t, harnessOpts{noExpirySweep: true, cfg: func(c *Config) { c.ApprovalTTL = time.Minute }})
	start := time.Now()
	h.clock.set(start)
	late := requireApproval(t, h, "acme-agent", "ex1", "m1", `{}`)
	swept := requireApproval(t, h, "acme-agent", "ex2", "m1", `{}`)
	h.clock.set(start.Add(90 * time.Second))

	var out struct {
		Error    ErrorDetail `json:"error"`
		Approval Approval    `json:"approval"`
	}
	r := h.do(t, "POST", "/v1/approvals/"+late.Approval.Token, "acme-operator", "application/json", `{"decision":"allow"}`, &out)
	if r.StatusCode != 410 || out.Error.Code != CodeApprovalExpired || out.Approval.State != ApprovalExpired {
		t.Fatalf("late approval: %d %+v", r.StatusCode, out)
	}
	h.srv.expireApprovals(context.Background())
	var list struct {
		Approvals []Approval `json:"approvals"`
	}
	h.do(t, "GET", "/v1/approvals?state=expired", "acme-operator", "", "", &list)
	approvers := map[string]string{}
	for _, a := range list.Approvals {
		approvers[a.ID] = a.Approver
	}
	if len(list.Approvals) != 2 || approvers[swept.Approval.ID] != approverExpiry || approvers[late.Approval.ID] != "acme-operator" {
		t.Fatalf("expired: %+v", list)
	}
	// The expiry is in the log: the same call is denied approval again, not allowed.
	var p ProposalResponse
	if h.do(t, "POST", "/v1/sessions/ex1/proposals", "acme-agent", "application/json", proposal("send_email", "m1", `{}`), &p); p.Outcome != envelope.RequireApproval || p.Seq != 3 {
		t.Fatalf("after expiry: %+v", p)
	}
}

// TestApprovalRecordedOnce: a decision whose APPROVAL_DECIDED is published
// but not yet confirmed (the decider is down) answers 504, and the approval
// stays taken: neither a second decision nor the expiry sweep publishes a
// contradictory one, and once the decider is back the first decision holds.
func TestApprovalRecordedOnce(t *testing.T) {
	t.Parallel()
	h := newHarness(t, harnessOpts{noExpirySweep: true, cfg: func(c *Config) { c.ApprovalTTL, c.ProposalTimeout = time.Minute, 2*time.Second }})
	start := time.Now()
	h.clock.set(start)
	p := requireApproval(t, h, "acme-agent", "once1", "m1", `{}`)
	h.stopDecider()

	var out struct {
		Error    ErrorDetail `json:"error"`
		Approval Approval    `json:"approval"`
	}
	if r := h.do(t, "POST", "/v1/approvals/"+p.Approval.Token, "acme-operator", "application/json", `{"decision":"allow"}`, &out); r.StatusCode != 504 || out.Error.Code != CodeDecisionTimeout {
		t.Fatalf("allow without a decider: %d %+v", r.StatusCode, out)
	}
	if r := h.do(t, "POST", "/v1/approvals/"+p.Approval.Token, "acme-operator", "application/json", `{"decision":"deny"}`, &out); r.StatusCode != 409 || out.Error.Code != CodeApprovalNotPending {
		t.Fatalf("a second decision: %d %+v", r.StatusCode, out)
	}
	h.clock.set(start.Add(2 * time.Minute))
	h.srv.expireApprovals(context.Background())
	h.clock.set(start)

	h.startDecider()
	var list struct {
		Approvals []Approval `json:"approvals"`
	}
	deadline := time.Now().Add(30 * time.Second)
	for {
		h.do(t, "GET", "/v1/approvals?state=all", "acme-operator", "", "", &list)
		if len(list.Approvals) == 1 && list.Approvals[0].State != ApprovalPending || time.Now().After(deadline) {
			break
		}
		time.Sleep(50 * time.Millisecond)
	}
	if len(list.Approvals) != 1 || list.Approvals[0].State != ApprovalApproved || list.Approvals[0].DecidedSeq != 2 {
		t.Fatalf("approvals: %+v", list)
	}
	// One APPROVAL_DECIDED, at seq 2: the approved call is next, at seq 3.
	var pr ProposalResponse
	if h.do(t, "POST", "/v1/sessions/once1/proposals?timeout_ms=30000", "acme-agent", "application/json", proposal("send_email", "m1", `{}`), &pr); pr.Outcome != envelope.Allow || pr.Seq != 3 {
		t.Fatalf("approved call: %+v", pr)
	}
}

// TestApprovalConfirmationEndsWithRun: the wait for an unconfirmed
// APPROVAL_DECIDED ends when the gateway's Run returns; it does not outlive
// the server for the approval TTL.
func TestApprovalConfirmationEndsWithRun(t *testing.T) {
	t.Cleanup(func() { // after the harness's cleanup, which stops Run
		deadline := time.Now().Add(5 * time.Second)
		for {
			var b strings.Builder
			_ = pprof.Lookup("goroutine").WriteTo(&b, 1)
			n := strings.Count(b.String(), "ingest.(*Server).settle.func")
			if n == 0 {
				return
			}
			if time.Now().After(deadline) {
				t.Errorf("%d settle goroutines still running after Run returned", n)
				return
			}
			time.Sleep(50 * time.Millisecond)
		}
	})
	h := newHarness(t, harnessOpts{noExpirySweep: true, cfg: func(c *Config) { c.ApprovalTTL, c.ProposalTimeout = 5*time.Minute, time.Second }})
	p := requireApproval(t, h, "acme-agent", "leak1", "m1", `{}`)
	h.stopDecider()
	var out struct {
		Error ErrorDetail `json:"error"`
	}
	if r := h.do(t, "POST", "/v1/approvals/"+p.Approval.Token, "acme-operator", "application/json", `{"decision":"allow"}`, &out); r.StatusCode != 504 {
		t.Fatalf("allow without a decider: %d %+v", r.StatusCode, out)
	}
}

// TestPendingApprovalsBounded: a tenant may have --max-pending-approvals
// pending on a gateway; past that a require_approval answer is 429
// TOO_MANY_APPROVALS, until one is decided. Other tenants are not affected,
// and the same call proposed again gets the approval already open.
func TestPendingApprovalsBounded(t *testing.T) {
	t.Parallel()
	h := newHarness(t, harnessOpts{cfg: func(c *Config) { c.MaxPendingApprovals = 2 }})
	first := requireApproval(t, h, "acme-agent", "cap1", "m1", `{}`)
	requireApproval(t, h, "acme-agent", "cap2", "m1", `{}`)
	var out struct {
		ProposalResponse
		Error ErrorDetail `json:"error"`
	}
	r := h.do(t, "POST", "/v1/sessions/cap3/proposals", "acme-agent", "application/json", proposal("send_email", "m1", `{}`), &out)
	if r.StatusCode != 429 || out.Error.Code != CodeTooManyApprovals || r.Header.Get("Retry-After") == "" {
		t.Fatalf("third pending approval: %d %+v", r.StatusCode, out)
	}
	if again := requireApproval(t, h, "acme-agent", "cap1", "m1", `{}`); again.Approval.ID != first.Approval.ID {
		t.Fatalf("the same call opened approval %s, want %s", again.Approval.ID, first.Approval.ID)
	}
	requireApproval(t, h, "globex-agent", "cap1", "m1", `{}`)
	if r := h.do(t, "POST", "/v1/approvals/"+first.Approval.Token, "acme-operator", "application/json", `{"decision":"deny"}`, nil); r.StatusCode != 200 {
		t.Fatalf("deny: %d", r.StatusCode)
	}
	requireApproval(t, h, "acme-agent", "cap4", "m1", `{}`)
}

// TestApprovalExpirySweptInBackground: Run expires a pending approval past
// its TTL on its own, within a few of its one-second ticks.
func TestApprovalExpirySweptInBackground(t *testing.T) {
	t.Parallel()
	h := newHarness(t, harnessOpts{cfg: func(c *Config) { c.ApprovalTTL = time.Minute }})
	start := time.Now()
	h.clock.set(start)
	p := requireApproval(t, h, "acme-agent", "bg1", "m1", `{}`)
	h.clock.set(start.Add(90 * time.Second))

	var list struct {
		Approvals []Approval `json:"approvals"`
	}
	deadline := time.Now().Add(10 * time.Second)
	for {
		h.do(t, "GET", "/v1/approvals?state=expired", "acme-operator", "", "", &list)
		if len(list.Approvals) > 0 || time.Now().After(deadline) {
			break
		}
		time.Sleep(50 * time.Millisecond)
	}
	if len(list.Approvals) != 1 || list.Approvals[0].ID != p.Approval.ID || list.Approvals[0].Approver != approverExpiry {
		t.Fatalf("expired approvals after 10s: %+v", list)
	}
}

func TestProposalWaitsForApproval(t *testing.T) {
	t.Parallel()
	h := newHarness(t, harnessOpts{})
	done, pending := proposeAwaitingApproval(t, h, "w1", 20000)
	// The operator approves with aegisctl.
	keyFile := filepath.Join(t.TempDir(), "key")
	if err := os.WriteFile(keyFile, []byte("acme-operator\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	var stdout, stderr bytes.Buffer
	code := ctl.Main(context.Background(), ctl.IO{Stdin: strings.NewReader(""), Stdout: &stdout, Stderr: &stderr},
		[]string{"approve", pending.Token, "--allow", "--reason", "ticket 42", "--server", h.url, "--api-key-file", keyFile})
	if code != ctl.ExitOK || !strings.Contains(stdout.String(), `"approver":"acme-operator"`) || !strings.Contains(stdout.String(), `"reason":"ticket 42"`) {
		t.Fatalf("aegisctl approve: exit %d, stdout %s, stderr %s", code, stdout.String(), stderr.String())
	}
	// A second use of the token fails with the server's code.
	stderr.Reset()
	code = ctl.Main(context.Background(), ctl.IO{Stdin: strings.NewReader(""), Stdout: &stdout, Stderr: &stderr},
		[]string{"approve", pending.Token, "--deny", "--server", h.url, "--api-key-file", keyFile})
	if code != ctl.ExitFailed || !strings.Contains(stderr.String(), CodeApprovalNotPending) {
		t.Fatalf("replayed aegisctl approve: exit %d, stderr %s", code, stderr.String())
	}
	res := <-done
	// seq 1 the proposal, 2 the APPROVAL_DECIDED, 3 the same call proposed again.
	if res.status != 200 || res.out.Outcome != envelope.Allow || res.out.Seq != 3 || res.out.Approval != nil {
		b, _ := json.Marshal(res.out)
		t.Fatalf("waiting caller: %d %s", res.status, b)
	}
}

// TestReplyOnlyForItsOwnContent: a decision is handed only to the request
// that published the proposal it decides. Here an allowed read_file at seq 1
// with call_id X was published with a client seq (which leaves the gateway's
// seq hint alone), and its decision is remembered by the reply tail; then a
// proposal for an undeclared tool reusing call_id X gets seq 1 assigned. It
// must not be answered with read_file's allow: it is decided on its own
// content, at the seq the decider expects.
func TestReplyOnlyForItsOwnContent(t *testing.T) {
	t.Parallel()
	h := newHarness(t, harnessOpts{})
	var out ProposalResponse
	if r := h.do(t, "POST", "/v1/sessions/m0/proposals", "acme-agent", "application/json", proposal("read_file", "c0", `{"path":"/a"}`), &out); r.StatusCode != 200 {
		t.Fatalf("starting the tail: %d %+v", r.StatusCode, out)
	}
	first := `{"tenant_id":"acme","session_id":"m1","seq":1,"ts_unix_ms":1767225600000,"event_type":"TOOL_CALL_PROPOSED",` + proposal("read_file", "X", `{"path":"/a"}`)[1:]
	if r := h.do(t, "POST", "/v1/events", "acme-agent", "application/json", first, nil); r.StatusCode != 202 {
		t.Fatalf("client-seq proposal: %d", r.StatusCode)
	}
	k := seqKey{"acme/m1", 1}
	for deadline := time.Now().Add(30 * time.Second); ; time.Sleep(10 * time.Millisecond) {
		h.srv.replies.mu.Lock()
		rep := h.srv.replies.recent[k]
		h.srv.replies.mu.Unlock()
		if rep != nil {
			if rep.ToolName != "read_file" || rep.Outcome != envelope.Allow || rep.ContentDigest == "" {
				t.Fatalf("remembered reply %+v", rep)
			}
			break
		}
		if time.Now().After(deadline) {
			t.Fatal("the reply tail never saw the first decision")
		}
	}
	out = ProposalResponse{}
	r := h.do(t, "POST", "/v1/sessions/m1/proposals", "acme-agent", "application/json", proposal("exec", "X", `{"cmd":"rm -rf /"}`), &out)
	if r.StatusCode != 200 || out.Seq != 2 || out.ToolName != "exec" || out.Outcome != envelope.Deny || out.Reason != "PERMISSION_UNDECLARED" {
		t.Fatalf("proposal reusing call_id X: %d seq %d %s %s/%s", r.StatusCode, out.Seq, out.ToolName, out.Outcome, out.Reason)
	}
}

// A reply is matched on content; one without a digest (an older decider)
// on call_id and tool name.
func TestWaiterAnsweredBy(t *testing.T) {
	w := &waiter{proposal: true, callID: "X", toolName: "read_file", digest: "d1"}
	for _, tc := range []struct {
		rep  decider.Reply
		want bool
	}{
		{decider.Reply{CallID: "X", ToolName: "read_file", ContentDigest: "d1"}, true},
		{decider.Reply{CallID: "X", ToolName: "read_file", ContentDigest: "d2"}, false},
		{decider.Reply{CallID: "Y", ToolName: "read_file", ContentDigest: "d1"}, false},
		{decider.Reply{CallID: "X", ToolName: "read_file"}, true},
		{decider.Reply{CallID: "X", ToolName: "exec"}, false},
	} {
		if got := w.answeredBy(&tc.rep); got != tc.want {
			t.Errorf("%+v: %v, want %v", tc.rep, got, tc.want)
		}
	}
	if (&waiter{callID: "X", toolName: "read_file", digest: "d1"}).answeredBy(&decider.Reply{CallID: "X", ToolName: "read_file", ContentDigest: "d1"}) {
		t.Error("a non-proposal waiter took a decision")
	}
}

// TestApprovalBoundToItsArguments: a call_id proposed twice with other
// arguments gets two tokens; the first is superseded (the decider keeps one
// approval per call_id, the newer one), so approving it is refused instead
// of reported as approved, and it cannot allow either call. The second
// token approves the second arguments only.
func TestApprovalBoundToItsArguments(t *testing.T) {
	t.Parallel()
	h := newHarness(t, harnessOpts{})
	argsA, argsB := `{"to":"a@example.com"}`, `{"to":"attacker@example.com"}`
	pa := requireApproval(t, h, "acme-agent", "bind1", "m1", argsA)
	pb := requireApproval(t, h, "acme-agent", "bind1", "m1", argsB)
	var e errResp
	if r := h.do(t, "POST", "/v1/approvals/"+pa.Approval.Token, "acme-operator", "application/json", `{"decision":"allow"}`, &e); r.StatusCode != 409 || e.Error.Code != CodeApprovalNotPending {
		t.Fatalf("approve the superseded token: %d %+v", r.StatusCode, e)
	}
	var list struct {
		Approvals []Approval `json:"approvals"`
	}
	h.do(t, "GET", "/v1/approvals?state=superseded", "acme-operator", "", "", &list)
	if len(list.Approvals) != 1 || list.Approvals[0].ID != pa.Approval.ID {
		t.Fatalf("superseded approvals: %+v", list.Approvals)
	}
	var out ProposalResponse
	var ap struct {
		Approval Approval `json:"approval"`
	}
	if r := h.do(t, "POST", "/v1/approvals/"+pb.Approval.Token, "acme-operator", "application/json", `{"decision":"allow"}`, &ap); r.StatusCode != 200 {
		t.Fatalf("approve B: %d %+v", r.StatusCode, ap)
	}
	h.do(t, "POST", "/v1/sessions/bind1/proposals", "acme-agent", "application/json", proposal("send_email", "m1", argsB), &out)
	if out.Outcome != envelope.Allow {
		t.Fatalf("arguments B after their approval: %s/%s", out.Outcome, out.Reason)
	}
}

// TestDurationParamBounds: a wait parameter outside 0..limit is a 400, also
// when it is too large to be a time.Duration (it used to wrap to a negative
// wait that passed the check).
func TestDurationParamBounds(t *testing.T) {
	for v, ok := range map[string]bool{"0": true, "60000": true, "60001": false, "-1": false, "x": false,
		"9223372036855": false, "9223372036854775807": false} {
		r := httptest.NewRequest("POST", "/v1/sessions/s/proposals?timeout_ms="+v, nil)
		d, err := durationParam(r, "timeout_ms", time.Second, time.Minute)
		if ok != (err == nil) || (ok && (d < 0 || d > time.Minute)) {
			t.Errorf("timeout_ms=%s: %v, %v", v, d, err)
		}
	}
}

// TestApprovalDecisionOverEventLimit: an approver's reason that makes
// APPROVAL_DECIDED larger than the event limit is the request's fault, 413
// TOO_LARGE, with nothing published; it used to be offered to the producer
// and answered 503 BROKER_UNAVAILABLE, inviting retries that could never
// succeed (and, under the topic's record limit, published an event the
// decider must reject). The approval stays pending.
func TestApprovalDecisionOverEventLimit(t *testing.T) {
	t.Parallel()
	h := newHarness(t, harnessOpts{})
	p := requireApproval(t, h, "acme-agent", "big1", "m1", `{}`)
	reason := strings.Repeat("x", 2*envelope.DefaultMaxEventBytes+(64<<10))
	var e errResp
	r := h.do(t, "POST", "/v1/approvals/"+p.Approval.Token, "acme-operator", "application/json", `{"decision":"allow","reason":"`+reason+`"}`, &e)
	if r.StatusCode != 413 || e.Error.Code != envelope.CodeTooLarge || r.Header.Get("Retry-After") != "" {
		t.Fatalf("got %d %+v (Retry-After %q), want 413 %s", r.StatusCode, e, r.Header.Get("Retry-After"), envelope.CodeTooLarge)
	}
	var ap struct {
		Approval Approval `json:"approval"`
	}
	if r := h.do(t, "POST", "/v1/approvals/"+p.Approval.Token, "acme-operator", "application/json", `{"decision":"allow","reason":"ok"}`, &ap); r.StatusCode != 200 ||
		ap.Approval.State != ApprovalApproved || ap.Approval.DecidedSeq != 2 {
		t.Fatalf("then approving it: %d %+v", r.StatusCode, ap.Approval)
	}
}
