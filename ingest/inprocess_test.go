package ingest

import (
	"context"
	"encoding/json"
	"errors"
	"testing"
	"time"

	"aegis.dev/aegis/schemas/envelope"
)

func TestInProcessProposeAndRecord(t *testing.T) {
	t.Parallel()
	h := newHarness(t, harnessOpts{})
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
	defer cancel()
	propose := func(tool, callID string) (*ProposalResponse, error) {
		return h.srv.Propose(ctx, &envelope.Event{TenantID: "acme", SessionID: "inproc", Type: envelope.ToolCallProposed,
			Payload: json.RawMessage(`{"tool_name":"` + tool + `","call_id":"` + callID + `","args":{}}`)})
	}

	allowed, err := propose("read_file", "c1")
	if err != nil {
		t.Fatal(err)
	}
	if allowed.Outcome != envelope.Allow || allowed.Seq != 1 || allowed.Approval != nil {
		t.Fatalf("read_file: %+v, want allow at seq 1", allowed)
	}
	seq, err := h.srv.Record(ctx, &envelope.Event{TenantID: "acme", SessionID: "inproc", Type: envelope.ToolCallExecuted,
		Payload: json.RawMessage(`{"tool_name":"read_file","call_id":"c1"}`)})
	if err != nil || seq != 2 {
		t.Fatalf("Record: seq %d, %v; want 2", seq, err)
	}
	denied, err := propose("rm_rf", "c2")
	if err != nil {
		t.Fatal(err)
	}
	if denied.Outcome != envelope.Deny || denied.Reason != envelope.ReasonPermissionUndeclared || denied.Seq != 3 {
		t.Fatalf("rm_rf: %+v, want deny PERMISSION_UNDECLARED at seq 3", denied)
	}
	held, err := propose("send_email", "c3")
	if err != nil {
		t.Fatal(err)
	}
	if held.Outcome != envelope.RequireApproval || held.Approval == nil || held.Approval.State != ApprovalPending || held.Approval.CallID != "c3" {
		t.Fatalf("send_email: %+v, want require_approval with a pending approval", held)
	}
	if _, err := h.srv.Record(ctx, &envelope.Event{TenantID: "acme", SessionID: "inproc", Type: envelope.ToolCallProposed,
		Payload: json.RawMessage(`{"tool_name":"read_file","call_id":"c4"}`)}); err == nil {
		t.Fatal("Record accepted a proposal")
	}
	var envErr *envelope.Error
	if _, err := h.srv.Record(ctx, &envelope.Event{TenantID: "acme/x", SessionID: "inproc", Type: envelope.ToolResult}); !errors.As(err, &envErr) {
		t.Fatalf("Record with an invalid tenant: %v, want an envelope error", err)
	}
}

func TestInProcessDecisionTimeout(t *testing.T) {
	t.Parallel()
	h := newHarness(t, harnessOpts{noDecider: true})
	// Started here, the reply tail's start is not part of the deadline
	// (TestProposalBeforeTheReplyTailStarts).
	h.tailStarted(t)
	// The deadline also bounds the publish, so it must leave a slow broker
	// time to acknowledge; without a decider the wait after it always
	// times out.
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Second)
	defer cancel()
	_, err := h.srv.Propose(ctx, &envelope.Event{TenantID: "acme", SessionID: "inproc-timeout", Type: envelope.ToolCallProposed,
		Payload: json.RawMessage(`{"tool_name":"read_file","call_id":"c1","args":{}}`)})
	if !errors.Is(err, ErrDecisionTimeout) {
		t.Fatalf("Propose without a decider: %v, want ErrDecisionTimeout", err)
	}
}
