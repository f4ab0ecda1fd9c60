package ingest

import (
	"bytes"
	"encoding/json"
	"net/http"
	"strings"
	"testing"

	"aegis.dev/aegis/decider/session"
	"aegis.dev/aegis/internal/pipeline"
	"aegis.dev/aegis/schemas/envelope"
)

// TestOperatorApprovalEventIsSigned: an operator's APPROVAL_DECIDED on
// POST /v1/events is signed by the gateway, whose grant replaces the one
// the client sent, and the decider (which checks grants with the
// gateway's secret) applies it.
func TestOperatorApprovalEventIsSigned(t *testing.T) {
	t.Parallel()
	h := newHarness(t, harnessOpts{})
	requireApproval(t, h, "acme-agent", "sig1", "m1", `{}`)
	digest, err := session.CallDigest("send_email", json.RawMessage(`{}`))
	if err != nil {
		t.Fatal(err)
	}
	// An approval that does not name the call's tool and arguments is
	// refused: signed, it would settle whatever is pending under m1 by
	// the time it lands, arguments the operator never saw included.
	var unbound EventsResponse
	if r := h.do(t, "POST", "/v1/events", "acme-operator", "application/json",
		ev("acme", "sig1", 0, "APPROVAL_DECIDED", `{"call_id":"m1","decision":"allow","approver":"ops"}`), &unbound); r.StatusCode != http.StatusBadRequest ||
		unbound.Error == nil || unbound.Error.Code != envelope.CodeMissingField {
		t.Fatalf("operator's approval without tool and args digest: %d %+v", r.StatusCode, unbound.Error)
	}
	forged := ev("acme", "sig1", 0, "APPROVAL_DECIDED", `{"call_id":"m1","decision":"allow","approver":"ops","tool_name":"send_email","args_digest":"`+digest+`","grant":"`+strings.Repeat("A", 43)+`"}`)
	var resp EventsResponse
	if r := h.do(t, "POST", "/v1/events", "acme-operator", "application/json", forged, &resp); r.StatusCode != http.StatusAccepted || resp.Results[0].Status != "accepted" {
		t.Fatalf("operator's approval: %d %+v", r.StatusCode, resp)
	}
	var out ProposalResponse
	if r := h.do(t, "POST", "/v1/sessions/sig1/proposals", "acme-agent", "application/json", proposal("send_email", "m1", `{}`), &out); r.StatusCode != 200 || out.Outcome != envelope.Allow {
		t.Fatalf("after the operator's approval: %d %+v", r.StatusCode, out)
	}
}

// TestApprovalRefusedByADeciderWithAnotherSecret: when the decider checks
// grants with another secret than the gateway signs with, settling an
// approval answers 403 APPROVAL_UNAUTHENTICATED and the approval stays
// pending.
func TestApprovalRefusedByADeciderWithAnotherSecret(t *testing.T) {
	t.Parallel()
	h := newHarness(t, harnessOpts{deciderSecret: bytes.Repeat([]byte("x"), 32)})
	p := requireApproval(t, h, "acme-agent", "mis1", "m1", `{}`)
	var out struct {
		Error ErrorDetail `json:"error"`
	}
	if r := h.do(t, "POST", "/v1/approvals/"+p.Approval.Token, "acme-operator", "application/json", `{"decision":"allow"}`, &out); r.StatusCode != http.StatusForbidden || out.Error.Code != pipeline.ReasonApprovalUnauthenticated {
		t.Fatalf("settle: %d %+v", r.StatusCode, out)
	}
	var list struct {
		Approvals []Approval `json:"approvals"`
	}
	h.do(t, "GET", "/v1/approvals?state=pending", "acme-operator", "", "", &list)
	if len(list.Approvals) != 1 || list.Approvals[0].ID != p.Approval.ID {
		t.Fatalf("pending approvals %+v", list.Approvals)
	}
}
