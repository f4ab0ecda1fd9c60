package ingest

import (
	"fmt"
	"net/http"
	"strings"
	"testing"

	"aegis.dev/aegis/decider/session"
)

// TestDecideRefusesSnapshotsBeyondTheReducersBounds: a snapshot holds at
// most what the reducer keeps (session.MaxCallDigests calls, …). One of a
// body's worth of entries cost the gateway over a gigabyte of allocations
// and seconds of CPU for a single request of an agent; it is refused
// before the policy runs.
func TestDecideRefusesSnapshotsBeyondTheReducersBounds(t *testing.T) {
	t.Parallel()
	h := newHarness(t, harnessOpts{noDecider: true})
	req := func(field string, n int, entry func(i int) string) string {
		var sb strings.Builder
		sb.WriteString(`{"event":{"event_type":"TOOL_CALL_PROPOSED","payload":{"tool_name":"read_file","call_id":"c1","args":{}}},` +
			`"snapshot":{"tenant_id":"acme","session_id":"stateless","last_seq":1,"events":1,"first_ts_ms":1,"last_ts_ms":1,"` + field + `":`)
		open, end := "[", "]"
		if field == "calls" || field == "approvals" {
			open, end = "{", "}"
		}
		sb.WriteString(open)
		for i := range n {
			if i > 0 {
				sb.WriteString(",")
			}
			sb.WriteString(entry(i))
		}
		sb.WriteString(end + `}}`)
		return sb.String()
	}
	call := func(i int) string { return fmt.Sprintf(`"sha256:%064x":1`, i) }
	name := func(i int) string { return fmt.Sprintf(`"k%d"`, i) }
	approval := func(i int) string {
		return fmt.Sprintf(`"c%d":{"tool_name":"t","args_digest":"sha256:%064x","state":"pending","requested_seq":1,"requested_ts_ms":1}`, i, i)
	}
	for _, tc := range []struct {
		field  string
		n      int
		entry  func(int) string
		status int
	}{
		{"calls", session.MaxCallDigests, call, http.StatusOK},
		{"calls", session.MaxCallDigests + 1, call, http.StatusBadRequest},
		{"calls", 200000, call, http.StatusBadRequest},
		{"approvals", session.MaxApprovals + 1, approval, http.StatusBadRequest},
		{"sanitizer_keys", session.MaxSanitizerKeys + 1, name, http.StatusBadRequest},
		{"taint_sources", session.MaxTaintSources + 1, name, http.StatusBadRequest},
		{"recent_tools", session.MaxRecentTools + 1, name, http.StatusBadRequest},
	} {
		var e errResp
		r := h.do(t, "POST", "/v1/policy/decide", "acme-agent", "application/json", req(tc.field, tc.n, tc.entry), &e)
		if r.StatusCode != tc.status || (tc.status != http.StatusOK && e.Error.Code != CodeMalformedRequest) {
			t.Errorf("%d %s: %d %+v, want %d", tc.n, tc.field, r.StatusCode, e.Error, tc.status)
		}
	}
}
