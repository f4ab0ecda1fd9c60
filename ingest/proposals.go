package ingest

import (
	"context"
	"encoding/json"
	"errors"
	"net/http"
	"strconv"
	"time"

	"aegis.dev/aegis/decider"
	"aegis.dev/aegis/schemas/canon"
	"aegis.dev/aegis/schemas/envelope"
)

// ProposalResponse is the body of a decided proposal: the decision reply of
// the decider (as on aegis.decisions) and, for require_approval, the
// approval request with its token.
type ProposalResponse struct {
	decider.Reply
	Approval *Approval `json:"approval,omitempty"`
}

// TimeoutResponse is the 504 body of a proposal whose decision did not
// arrive in time: the proposal is recorded (Kafka acknowledged it) and its
// decision will be sealed; read it later from the session's events.
type TimeoutResponse struct {
	ErrorBody
	TenantID  string `json:"tenant_id"`
	SessionID string `json:"session_id"`
	Seq       uint64 `json:"seq"`
	Recorded  bool   `json:"recorded"`
}

// handleProposal is POST /v1/sessions/{session}/proposals: publish a
// TOOL_CALL_PROPOSED into the pipeline and answer with its decision.
//
// The body is an event envelope; tenant_id, session_id (the path's),
// event_type (TOOL_CALL_PROPOSED), seq (gateway-assigned when absent or 0)
// and ts_unix_ms (server time when absent) may be left out. Query
// parameters: timeout_ms (the wait for the decision, default
// --proposal-timeout, at most 60000) and approval_wait_ms: on
// require_approval, hold the request until the approval is settled (at
// most that long, and at most as long as the approval lives), then answer
// with the final outcome — after an approval, the decision of the same
// call proposed again by the gateway.
func (s *Server) handleProposal(w http.ResponseWriter, r *http.Request, p Principal) {
	_, body, err := s.readBody(w, r, mediaJSON)
	if err != nil {
		writeError(w, err)
		return
	}
	tenant, err := tenantOf(r, p)
	if err != nil {
		writeError(w, err)
		return
	}
	wait, err := durationParam(r, "timeout_ms", s.cfg.ProposalTimeout, maxProposalWait)
	if err == nil && wait <= 0 {
		// No time to publish, let alone to wait: every such request
		// would fail, and not for a reason a retry fixes.
		err = errf(http.StatusBadRequest, CodeMalformedRequest, "timeout_ms 0: want 1..%d", maxProposalWait.Milliseconds())
	}
	if err != nil {
		writeError(w, err)
		return
	}
	// No approval outlives --approval-ttl, which the client cannot know:
	// a longer wait is held as long as the approval lives.
	approvalWait, err := durationParam(r, "approval_wait_ms", 0, maxApprovalTTL)
	if err != nil {
		writeError(w, err)
		return
	}
	approvalWait = min(approvalWait, s.cfg.ApprovalTTL)
	sessionID := r.PathValue("session")
	assign := false
	fixed, err := s.normalize(body, func(m map[string]json.RawMessage) error {
		set := func(k string, v any) error {
			want, _ := json.Marshal(v)
			if c, err := canon.Append(nil, want); err == nil {
				want = c
			}
			if got, ok := given(m, k); ok && string(got) != string(want) {
				return errf(http.StatusBadRequest, CodeMalformedRequest, "%s %s does not match the request (%s)", k, got, want)
			}
			m[k] = want
			return nil
		}
		if err := set("session_id", sessionID); err != nil {
			return err
		}
		if t, ok := m["tenant_id"]; ok && p.Tenant == "" {
			_ = json.Unmarshal(t, &tenant)
		}
		if err := set("tenant_id", tenant); err != nil {
			if p.Tenant != "" {
				return errf(http.StatusForbidden, CodeTenantMismatch, "credentials of tenant %q may not write another tenant", p.Tenant)
			}
			return err
		}
		if err := set("event_type", envelope.ToolCallProposed); err != nil {
			return err
		}
		if v, ok := given(m, "seq"); !ok || string(v) == "0" {
			assign, m["seq"] = true, json.RawMessage("1")
		}
		if _, ok := given(m, "ts_unix_ms"); !ok {
			m["ts_unix_ms"], _ = json.Marshal(s.now().UnixMilli())
		}
		return nil
	})
	if err != nil {
		st, d := eventError(err)
		writeJSON(w, st, ErrorBody{Error: d})
		return
	}
	ev, err := s.dec.Decode(fixed)
	if err != nil {
		st, d := eventError(err)
		writeJSON(w, st, ErrorBody{Error: d})
		return
	}
	if !p.AllowsManifest(ev.Manifest) {
		writeError(w, p.manifestError(ev.Manifest))
		return
	}
	if err := s.checkClock(ev); err != nil {
		writeError(w, err)
		return
	}
	if err := s.admit(ev.TenantID, 1); err != nil {
		writeError(w, err)
		return
	}
	s.propose(w, r.Context(), ev, assign, wait, approvalWait)
}

// propose submits ev and writes the response.
func (s *Server) propose(w http.ResponseWriter, ctx context.Context, ev *envelope.Event, assign bool, wait, approvalWait time.Duration) {
	wctx, cancel := context.WithTimeout(ctx, wait)
	v, err := s.submit(wctx, ev, assign, "proposal")
	cancel()
	switch {
	case errors.Is(err, errWaitTimeout):
		writeJSON(w, http.StatusGatewayTimeout, TimeoutResponse{
			ErrorBody: ErrorBody{Error: ErrorDetail{Code: CodeDecisionTimeout, Message: "the proposal is recorded; its decision did not arrive in time"}},
			TenantID:  ev.TenantID, SessionID: ev.SessionID, Seq: ev.Seq, Recorded: true})
		return
	case err != nil:
		writeError(w, err)
		return
	case v.Rejection != nil:
		st, b := rejected(v.Rejection)
		writeJSON(w, st, b)
		return
	}
	resp := ProposalResponse{Reply: *v.Reply}
	if resp.Outcome != envelope.RequireApproval {
		writeJSON(w, http.StatusOK, resp)
		return
	}
	tc, _ := ev.ToolCall()
	e, err := s.appr.open(v.Reply, tc.Args, s.now().Add(s.cfg.ApprovalTTL))
	if err != nil {
		writeError(w, err)
		return
	}
	s.appr.mu.Lock() // an operator may settle it already
	a := e.Approval
	s.appr.mu.Unlock()
	resp.Approval = &a
	if approvalWait <= 0 {
		writeJSON(w, http.StatusOK, resp)
		return
	}
	t := time.NewTimer(approvalWait)
	defer t.Stop()
	select {
	case <-e.done:
	case <-t.C:
		s.appr.mu.Lock()
		a = e.Approval
		s.appr.mu.Unlock()
		if a.State == ApprovalPending && s.now().UnixMilli() < a.ExpiresMs {
			writeJSON(w, http.StatusOK, resp)
			return
		}
		// The wait lasted as long as the approval: answer with its end,
		// not with an approval past its expiry that the sweep has yet to
		// record. settle records the expiry (unless a decision or the
		// sweep is being recorded already, which then ends the wait).
		grace := time.NewTimer(s.cfg.ProposalTimeout) // for settle and the wait after it
		defer grace.Stop()
		_, _ = s.settle(ctx, e, false, approverExpiry, envelope.ReasonApprovalExpired)
		select {
		case <-e.done:
		case <-grace.C:
			writeJSON(w, http.StatusOK, resp)
			return
		case <-s.draining:
			writeJSON(w, http.StatusOK, resp)
			return
		case <-ctx.Done():
			return
		}
	case <-s.draining:
		// The server is stopping: the wait ends as if it had run out.
		writeJSON(w, http.StatusOK, resp)
		return
	case <-ctx.Done():
		return
	}
	s.appr.mu.Lock()
	a = e.Approval
	s.appr.mu.Unlock()
	if a.State != ApprovalApproved {
		resp.Approval = &a
		resp.Outcome, resp.Reason = envelope.Deny, envelope.ReasonApprovalDenied
		if a.State == ApprovalExpired {
			resp.Reason = envelope.ReasonApprovalExpired
		}
		writeJSON(w, http.StatusOK, resp)
		return
	}
	// Approved: the same call is proposed again, and the policy decides it
	// under the now approved state (rule 7 passes; every other rule still
	// applies).
	again := *ev
	again.Seq, again.TsUnixMs, again.Decision = 0, s.now().UnixMilli(), nil
	s.propose(w, ctx, &again, true, wait, 0)
}

// durationParam reads a millisecond query parameter.
func durationParam(r *http.Request, name string, def, limit time.Duration) (time.Duration, error) {
	v := r.URL.Query().Get(name)
	if v == "" {
		return def, nil
	}
	ms, err := strconv.ParseInt(v, 10, 64)
	if err != nil || ms < 0 || ms > limit.Milliseconds() { // compared before converting: a huge ms overflows a Duration
		return 0, errf(http.StatusBadRequest, CodeMalformedRequest, "%s %q: want 0..%d", name, v, limit.Milliseconds())
	}
	return time.Duration(ms) * time.Millisecond, nil
}
