package ingest

import (
	"encoding/json"
	"fmt"
	"testing"
	"time"

	"aegis.dev/aegis/decider"
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
