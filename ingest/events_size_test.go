package ingest

import (
	"net/http"
	"strings"
	"testing"

	"aegis.dev/aegis/schemas/canon"
	"aegis.dev/aegis/schemas/envelope"
)

// TestAssignedSeqOverTheLimitIsRejected: an event at the size limit with a
// one-digit seq grows past it when the gateway assigns a two-digit seq. That
// is the client's to fix (413 TOO_LARGE, "rejected"), not a broker failure:
// a 503 with Retry-After invites resending the same bytes forever.
func TestAssignedSeqOverTheLimitIsRejected(t *testing.T) {
	t.Parallel()
	h := newHarness(t, harnessOpts{dev: true})
	var lines []string
	for range 9 {
		lines = append(lines, ev("acme", "edge", 0, "MODEL_CALL_STARTED", `{}`))
	}
	var first EventsResponse
	if r := h.do(t, "POST", "/v1/events", "", "application/x-ndjson", strings.Join(lines, "\n"), &first); r.StatusCode != 202 || first.Accepted != 9 {
		t.Fatalf("first nine: %d %+v", r.StatusCode, first)
	}
	// Pad the event so that its canonical form at seq 1 is exactly the limit.
	pad := func(n int) string {
		return ev("acme", "edge", 0, "MODEL_CALL_STARTED", `{"x":"`+strings.Repeat("a", n)+`"}`)
	}
	size := func(body string) int {
		c, err := canon.Append(nil, []byte(strings.Replace(body, `"seq":0`, `"seq":1`, 1)))
		if err != nil {
			t.Fatal(err)
		}
		return len(c)
	}
	n := 1000
	n += envelope.DefaultMaxEventBytes - size(pad(n))
	body := pad(n)
	if size(body) != envelope.DefaultMaxEventBytes {
		t.Fatalf("padding: %d bytes", size(body))
	}
	var resp EventsResponse
	r := h.do(t, "POST", "/v1/events", "", "application/json", body, &resp)
	if r.StatusCode != http.StatusRequestEntityTooLarge || r.Header.Get("Retry-After") != "" || resp.Error == nil || resp.Error.Code != envelope.CodeTooLarge ||
		resp.Results[0].Status != "rejected" {
		t.Fatalf("status %d, Retry-After %q, %+v %+v", r.StatusCode, r.Header.Get("Retry-After"), resp.Error, resp.Results)
	}
}
