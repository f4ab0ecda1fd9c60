package ingest

import (
	"net/http"
	"testing"
)

// TestProposalZeroTimeoutIsMalformed: timeout_ms=0 leaves no time to
// publish, let alone to wait. It used to be answered 503
// BROKER_UNAVAILABLE (with a warning in the log that Kafka did not
// acknowledge), which invites retrying a request that can never succeed.
func TestProposalZeroTimeoutIsMalformed(t *testing.T) {
	t.Parallel()
	h := newHarness(t, harnessOpts{dev: true})
	h.tailStarted(t)
	var out errResp
	r := h.do(t, "POST", "/v1/sessions/zero/proposals?timeout_ms=0", "", "application/json", proposal("read_file", "c0", `{"path":"/a"}`), &out)
	if r.StatusCode != http.StatusBadRequest || out.Error.Code != CodeMalformedRequest || r.Header.Get("Retry-After") != "" {
		t.Fatalf("timeout_ms=0: %d %+v Retry-After %q, want 400 MALFORMED_REQUEST", r.StatusCode, out.Error, r.Header.Get("Retry-After"))
	}
	var ok ProposalResponse
	if r := h.do(t, "POST", "/v1/sessions/zero/proposals?timeout_ms=10000", "", "application/json", proposal("read_file", "c1", `{"path":"/a"}`), &ok); r.StatusCode != 200 || ok.Seq != 1 {
		t.Fatalf("then: %d seq %d, want 200 at seq 1 (nothing published before)", r.StatusCode, ok.Seq)
	}
}
