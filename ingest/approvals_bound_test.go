package ingest

import (
	"encoding/json"
	"fmt"
	"testing"
	"time"

	"aegis.dev/aegis/decider"
	"aegis.dev/aegis/schemas/envelope"
)

// TestSupersededApprovalsAreBounded: an agent that re-proposes one call_id
// with ever new arguments supersedes its approval each time; the registry
// keeps at most --max-pending-approvals decided approvals per tenant
// besides the pending ones, forgetting the oldest first.
func TestSupersededApprovalsAreBounded(t *testing.T) {
	const max = 5
	a := newApprovals([]byte("secret"), max)
	expires := time.Now().Add(time.Hour)
	var last *approvalEntry
	for i := range 1000 {
		rep := &decider.Reply{TenantID: "acme", SessionID: "s", Seq: uint64(i + 1), CallID: "c", ToolName: "deploy"}
		e, err := a.open(rep, json.RawMessage(fmt.Sprintf(`{"n":%d}`, i)), expires)
		if err != nil {
			t.Fatalf("open %d: %v", i, err)
		}
		last = e
	}
	if n := len(a.byID); n > max+1 {
		t.Fatalf("%d approvals kept after 1000 re-proposals, want at most %d decided + 1 pending", n, max)
	}
	if got := a.byID[last.ID]; got != last || got.State != ApprovalPending {
		t.Fatalf("the latest approval is not pending: %+v", got)
	}
	if n := len(a.list("acme", ApprovalSuperseded)); n != max {
		t.Errorf("%d superseded approvals listed, want the newest %d", n, max)
	}
	// Another tenant's decided approvals do not push acme's out.
	for i := range 3 {
		rep := &decider.Reply{TenantID: "other", SessionID: "s", Seq: uint64(i + 1), CallID: "c", ToolName: "deploy"}
		if _, err := a.open(rep, json.RawMessage(fmt.Sprintf(`{"n":%d}`, i)), expires); err != nil {
			t.Fatal(err)
		}
	}
	if n := len(a.list("acme", ApprovalSuperseded)); n != max {
		t.Errorf("after another tenant's: %d of acme's superseded approvals listed, want %d", n, max)
	}
}

// TestDrainEndsApprovalWaits: a proposal waiting for its approval
// (approval_wait_ms) answers as soon as the server drains for shutdown,
// with the require_approval decision and the pending approval, instead of
// holding http.Server.Shutdown until its wait runs out.
func TestDrainEndsApprovalWaits(t *testing.T) {
	t.Parallel()
	h := newHarness(t, harnessOpts{})
	done, _ := proposeAwaitingApproval(t, h, "d1", 600000)
	h.srv.Drain()
	select {
	case res := <-done:
		if res.status != 200 || res.out.Outcome != envelope.RequireApproval || res.out.Approval == nil || res.out.Approval.State != ApprovalPending {
			t.Fatalf("after Drain: %d %+v", res.status, res.out)
		}
	case <-time.After(10 * time.Second):
		t.Fatal("the approval wait did not end when the server drained")
	}
}

// waited is the answer to a proposal that waited for its approval.
type waited struct {
	status int
	out    ProposalResponse
}

// proposeAwaitingApproval proposes send_email (which needs an approval) in
// session with approval_wait_ms=waitMs, and returns once its approval is
// pending: the answer arrives on the channel, the approval is returned.
func proposeAwaitingApproval(t *testing.T, h *harness, session string, waitMs int) (<-chan waited, Approval) {
	t.Helper()
	done := make(chan waited, 1)
	go func() {
		var out ProposalResponse
		r := h.do(t, "POST", fmt.Sprintf("/v1/sessions/%s/proposals?approval_wait_ms=%d", session, waitMs), "acme-agent", "application/json",
			proposal("send_email", "m1", `{"to":"x"}`), &out)
		done <- waited{r.StatusCode, out}
	}()
	var list struct {
		Approvals []Approval `json:"approvals"`
	}
	for deadline := time.Now().Add(10 * time.Second); len(list.Approvals) == 0 && time.Now().Before(deadline); {
		time.Sleep(20 * time.Millisecond)
		h.do(t, "GET", "/v1/approvals", "acme-operator", "", "", &list)
	}
	if len(list.Approvals) != 1 {
		t.Fatal("no pending approval appeared")
	}
	return done, list.Approvals[0]
}

// TestApprovalWaitAsLongAsTheApprovalEndsExpired: a proposal held for as
// long as its approval lives (approval_wait_ms = --approval-ttl, the most
// it may ask) answers with the approval's expiry, recorded: deny
// APPROVAL_EXPIRED, not require_approval with an approval that is past
// its expiry but not yet swept. No sweep runs here: the wait itself must
// record the expiry.
func TestApprovalWaitAsLongAsTheApprovalEndsExpired(t *testing.T) {
	t.Parallel()
	h := newHarness(t, harnessOpts{noExpirySweep: true, cfg: func(c *Config) { c.ApprovalTTL = time.Second }})
	var out ProposalResponse
	r := h.do(t, "POST", "/v1/sessions/w1/proposals?approval_wait_ms=1000", "acme-agent", "application/json",
		proposal("send_email", "m1", `{"to":"x"}`), &out)
	if r.StatusCode != 200 || out.Outcome != envelope.Deny || out.Reason != envelope.ReasonApprovalExpired ||
		out.Approval == nil || out.Approval.State != ApprovalExpired || out.Approval.Approver != approverExpiry || out.Approval.DecidedSeq != 2 {
		t.Fatalf("held for the approval's whole life: %d %+v %+v", r.StatusCode, out, out.Approval)
	}
	// The expiry is in the log: the same call asks for approval again, at seq 3.
	var p ProposalResponse
	if h.do(t, "POST", "/v1/sessions/w1/proposals", "acme-agent", "application/json", proposal("send_email", "m1", `{"to":"x"}`), &p); p.Outcome != envelope.RequireApproval || p.Seq != 3 {
		t.Fatalf("after the expiry: %+v", p)
	}
}

// TestApprovalWaitBeyondTheTTLIsCapped: approval_wait_ms longer than
// --approval-ttl (which a client cannot know) holds the request as long
// as the approval lives, as documented, rather than refusing it; it then
// ends with the recorded expiry.
func TestApprovalWaitBeyondTheTTLIsCapped(t *testing.T) {
	t.Parallel()
	h := newHarness(t, harnessOpts{noExpirySweep: true, cfg: func(c *Config) { c.ApprovalTTL = time.Second }})
	var out ProposalResponse
	start := time.Now()
	r := h.do(t, "POST", "/v1/sessions/w2/proposals?approval_wait_ms=600000", "acme-agent", "application/json",
		proposal("send_email", "m1", `{"to":"x"}`), &out)
	if r.StatusCode != 200 || out.Outcome != envelope.Deny || out.Reason != envelope.ReasonApprovalExpired {
		t.Fatalf("approval_wait_ms over the TTL: %d %+v", r.StatusCode, out)
	}
	if d := time.Since(start); d > 15*time.Second {
		t.Errorf("held %s, not capped at the 1s TTL", d)
	}
	for _, bad := range []string{"-1", "x", "99999999999999999999"} {
		var e struct {
			Error ErrorDetail `json:"error"`
		}
		if r := h.do(t, "POST", "/v1/sessions/w3/proposals?approval_wait_ms="+bad, "acme-agent", "application/json",
			proposal("search", "s1", `{}`), &e); r.StatusCode != 400 || e.Error.Code != CodeMalformedRequest {
			t.Errorf("approval_wait_ms=%s: %d %+v", bad, r.StatusCode, e)
		}
	}
}

// TestApprovalWaitEndsWithTheOperatorsDeny: a proposal held on its
// approval (approval_wait_ms) answers deny APPROVAL_DENIED, with the
// approval denied, as soon as an operator denies it (the conformance
// suite, whose steps run one after the other, cannot settle an approval
// while a step waits on it).
func TestApprovalWaitEndsWithTheOperatorsDeny(t *testing.T) {
	t.Parallel()
	h := newHarness(t, harnessOpts{noExpirySweep: true, cfg: func(c *Config) { c.ApprovalTTL = time.Minute }})
	done, a := proposeAwaitingApproval(t, h, "wd1", 60000)
	var settled struct {
		Approval Approval `json:"approval"`
	}
	if r := h.do(t, "POST", "/v1/approvals/"+a.Token, "acme-operator", "application/json", `{"decision":"deny","reason":"no"}`, &settled); r.StatusCode != 200 {
		t.Fatalf("deny: %d %+v", r.StatusCode, settled)
	}
	select {
	case res := <-done:
		if res.status != 200 || res.out.Outcome != envelope.Deny || res.out.Reason != envelope.ReasonApprovalDenied ||
			res.out.Approval == nil || res.out.Approval.State != ApprovalDenied || res.out.Approval.Approver != "acme-operator" {
			t.Fatalf("held proposal after the deny: %d %+v %+v", res.status, res.out, res.out.Approval)
		}
	case <-time.After(20 * time.Second):
		t.Fatal("the held proposal did not answer after the deny")
	}
}

// TestRetryAfterTheApprovalIsDecidedGetsThatApproval: an exact retry of a
// proposal whose approval was decided since (the client lost the first
// answer) is answered with that approval, not with a new pending one that
// the pipeline does not wait for: held (approval_wait_ms), the retry of an
// approved call gets the call proposed again and allowed at once, and
// that of a denied one deny APPROVAL_DENIED, instead of waiting until a
// stray approval expires; deciding a stray token would be answered as
// approved or denied while the session's approval stays as it was.
func TestRetryAfterTheApprovalIsDecidedGetsThatApproval(t *testing.T) {
	t.Parallel()
	h := newHarness(t, harnessOpts{noExpirySweep: true, cfg: func(c *Config) { c.ApprovalTTL = time.Minute }})
	ts := time.Now().UnixMilli()
	body := func(call string) string {
		return fmt.Sprintf(`{"seq":1,"ts_unix_ms":%d,"payload":{"tool_name":"send_email","call_id":%q,"args":{"to":"x"}}}`, ts, call)
	}
	for _, tc := range []struct {
		session, decision string
		outcome           envelope.Outcome
		reason            string
		state             string
		seq               uint64
	}{
		{"rd1", "allow", envelope.Allow, "OK", ApprovalApproved, 3},
		{"rd2", "deny", envelope.Deny, envelope.ReasonApprovalDenied, ApprovalDenied, 1},
	} {
		var first ProposalResponse
		if r := h.do(t, "POST", "/v1/sessions/"+tc.session+"/proposals", "acme-agent", "application/json", body("m1"), &first); r.StatusCode != 200 || first.Approval == nil {
			t.Fatalf("%s: %d %+v", tc.session, r.StatusCode, first)
		}
		if r := h.do(t, "POST", "/v1/approvals/"+first.Approval.Token, "acme-operator", "application/json", `{"decision":"`+tc.decision+`"}`, nil); r.StatusCode != 200 {
			t.Fatalf("%s: settle: %d", tc.session, r.StatusCode)
		}
		start := time.Now()
		var retry ProposalResponse
		r := h.do(t, "POST", "/v1/sessions/"+tc.session+"/proposals?approval_wait_ms=20000", "acme-agent", "application/json", body("m1"), &retry)
		if r.StatusCode != 200 || retry.Outcome != tc.outcome || retry.Reason != tc.reason || retry.Seq != tc.seq {
			t.Errorf("%s: held retry after %s: %d %+v", tc.session, tc.decision, r.StatusCode, retry)
		}
		if retry.Approval != nil && (retry.Approval.ID != first.Approval.ID || retry.Approval.State != tc.state) {
			t.Errorf("%s: retry's approval %+v, want %s %s", tc.session, retry.Approval, first.Approval.ID, tc.state)
		}
		if d := time.Since(start); d > 10*time.Second {
			t.Errorf("%s: the retry was held %s", tc.session, d)
		}
		var list struct {
			Approvals []Approval `json:"approvals"`
		}
		if h.do(t, "GET", "/v1/approvals", "acme-operator", "", "", &list); len(list.Approvals) != 0 {
			t.Errorf("%s: pending after the retry: %+v", tc.session, list.Approvals)
		}
	}
}
