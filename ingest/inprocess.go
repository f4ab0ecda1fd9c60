package ingest

// The in-process API: programs that run next to the gateway in the same
// process (the MCP proxy) publish through the gateway's producer, seq
// allocation and shared reply tail, exactly as the HTTP handlers do, without
// a second Kafka client path.

import (
	"context"
	"errors"
	"fmt"

	"aegis.dev/aegis/schemas/envelope"
)

// ErrDecisionTimeout reports that an event was published (Kafka
// acknowledged it) but the decider's verdict did not arrive before the
// context's deadline. The event is recorded; its decision will be sealed.
var ErrDecisionTimeout = errWaitTimeout

// RejectedError is the decider's rejection of an event the gateway
// published (SEQ_CONFLICT, SEQ_GAP, SEQ_STALE once the seq retries are
// exhausted, or an envelope code).
type RejectedError struct {
	Reason string
	Detail string
	// ExpectedSeq is the seq the session expects next, for SEQ_* reasons.
	ExpectedSeq uint64
}

func (e *RejectedError) Error() string {
	return fmt.Sprintf("ingest: rejected by the decider: %s: %s", e.Reason, e.Detail)
}

// Propose publishes ev, a TOOL_CALL_PROPOSED of ev.TenantID's session,
// at the session's next seq (the seq allocation rule of docs/api.md: ev.Seq
// is ignored and overwritten) and waits for its decision until ctx is done.
// A zero ev.V is set to 1 and a zero ev.TsUnixMs to the gateway's clock. The event is validated
// like a client's and charged to the tenant's rate limit.
//
// For require_approval the response carries the approval request with its
// single-use token, exactly as POST /v1/sessions/{session}/proposals
// answers. Errors: ErrDecisionTimeout (ctx's deadline passed; the proposal
// is recorded), *RejectedError, an *envelope.Error for an invalid event,
// a rate limit or broker failure, or ctx's error. Safe for concurrent use:
// concurrent writers of one session choose and publish their seqs one
// after the other.
func (s *Server) Propose(ctx context.Context, ev *envelope.Event) (*ProposalResponse, error) {
	if ev.Type != envelope.ToolCallProposed {
		return nil, fmt.Errorf("ingest: Propose: event type %s, want %s", ev.Type, envelope.ToolCallProposed)
	}
	if err := s.prepare(ev); err != nil {
		return nil, err
	}
	v, err := s.submit(ctx, ev, true, "proposal")
	if err != nil {
		return nil, err
	}
	if rj := v.Rejection; rj != nil {
		return nil, &RejectedError{Reason: rj.Reason, Detail: rj.Detail, ExpectedSeq: rj.Expected}
	}
	resp := &ProposalResponse{Reply: *v.Reply}
	if resp.Outcome != envelope.RequireApproval {
		return resp, nil
	}
	tc, _ := ev.ToolCall()
	e, err := s.appr.open(v.Reply, tc.Args, s.now().Add(s.cfg.ApprovalTTL))
	if err != nil {
		return nil, fmt.Errorf("ingest: open approval: %w", err)
	}
	s.appr.mu.Lock()
	a := e.Approval
	s.appr.mu.Unlock()
	resp.Approval = &a
	return resp, nil
}

// Record publishes ev (any event type but TOOL_CALL_PROPOSED) at the
// session's next seq, like Propose, and returns the seq it got once the
// decider accepted it. Errors are those of Propose.
func (s *Server) Record(ctx context.Context, ev *envelope.Event) (uint64, error) {
	if ev.Type == envelope.ToolCallProposed {
		return 0, errors.New("ingest: Record: proposals go through Propose")
	}
	if ev.Type == envelope.ApprovalDecided {
		// Record publishes for programs acting for agents (the MCP
		// proxy): it never signs, so a decider with the approval secret
		// would refuse it anyway.
		return 0, errors.New("ingest: Record: approvals are settled through the approvals API")
	}
	if err := s.prepare(ev); err != nil {
		return 0, err
	}
	v, err := s.submit(ctx, ev, true, "event")
	if err != nil {
		return 0, err
	}
	if rj := v.Rejection; rj != nil {
		return 0, &RejectedError{Reason: rj.Reason, Detail: rj.Detail, ExpectedSeq: rj.Expected}
	}
	return ev.Seq, nil
}

// prepare fills in the version and time, validates ev as the decoder would a client's
// event (with a placeholder seq, which submit replaces) and charges the
// tenant's rate limit.
func (s *Server) prepare(ev *envelope.Event) error {
	if ev.V == 0 {
		ev.V = 1
	}
	if ev.TsUnixMs == 0 {
		ev.TsUnixMs = s.now().UnixMilli()
	}
	ev.Seq, ev.Decision, ev.PrevHash, ev.Hash = 1, nil, "", ""
	raw, err := ev.AppendCanonical(nil, false)
	if err != nil {
		return fmt.Errorf("ingest: encode: %w", err)
	}
	if _, err := s.dec.Decode(raw); err != nil {
		return err
	}
	return s.admit(ev.TenantID, 1)
}
