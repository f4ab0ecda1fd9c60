package ingest

import (
	"encoding/json"
	"testing"
	"time"

	"aegis.dev/aegis/decider"
)

// TestLaterReproposalOfAPendingCallWins: a call_id proposed with
// arguments A (seq 1), B (seq 2) and A again (seq 3) leaves the decider
// waiting for an approval of A, requested at seq 3. When the reply of seq
// 3 reaches the registry before that of seq 2, A's approval stays the
// pending one and B's is superseded on arrival; B must not supersede A
// on the strength of A's first request at seq 1.
func TestLaterReproposalOfAPendingCallWins(t *testing.T) {
	a := newApprovals([]byte("secret"), 10)
	expires := time.Now().Add(time.Hour)
	open := func(seq uint64, args string) *approvalEntry {
		t.Helper()
		rep := &decider.Reply{TenantID: "acme", SessionID: "s", Seq: seq, CallID: "c", ToolName: "deploy"}
		e, err := a.open(rep, json.RawMessage(args), expires)
		if err != nil {
			t.Fatalf("open seq %d: %v", seq, err)
		}
		return e
	}
	first := open(1, `{"v":"A"}`)
	again := open(3, `{"v":"A"}`)
	if again != first {
		t.Fatalf("the re-proposal of the same arguments opened another approval")
	}
	b := open(2, `{"v":"B"}`)
	if b.State != ApprovalSuperseded {
		t.Errorf("B (seq 2) is %s, want superseded by A's request at seq 3", b.State)
	}
	if first.State != ApprovalPending || first.RequestedSeq != 3 {
		t.Errorf("A is %s requested at seq %d, want pending at seq 3", first.State, first.RequestedSeq)
	}
	if got := a.list("acme", ApprovalPending); len(got) != 1 || got[0].ID != first.ID {
		t.Errorf("pending approvals %+v, want only A's", got)
	}
}
