package ingest

import (
	"fmt"
	"net/http"
	"testing"
	"time"
)

// TestMaxClockSkew: with --max-clock-skew, an event stamped further than
// that from the gateway's clock is 400 CLOCK_SKEW over POST /v1/events and
// the proposals endpoint, and nothing of its request is published; an
// event within the bound, or a proposal the gateway stamps itself,
// passes. Without the flag any time is accepted.
func TestMaxClockSkew(t *testing.T) {
	t.Parallel()
	h := newHarness(t, harnessOpts{cfg: func(c *Config) { c.MaxClockSkew = time.Minute }})
	now := time.UnixMilli(1767225600000 + 3600_000)
	h.clock.set(now)
	at := func(session string, seq int, ts time.Time) string {
		return fmt.Sprintf(`{"tenant_id":"acme","session_id":%q,"seq":%d,"ts_unix_ms":%d,"event_type":"MODEL_CALL_STARTED","payload":{}}`, session, seq, ts.UnixMilli())
	}
	for _, tc := range []struct {
		name   string
		ts     time.Time
		status int
	}{
		{"now", now, http.StatusAccepted},
		{"a minute early", now.Add(-time.Minute), http.StatusAccepted},
		{"a minute late", now.Add(time.Minute), http.StatusAccepted},
		{"an hour early (a stopped clock)", now.Add(-time.Hour), http.StatusBadRequest},
		{"just past the bound ahead", now.Add(time.Minute + time.Millisecond), http.StatusBadRequest},
	} {
		t.Run(tc.name, func(t *testing.T) {
			var resp EventsResponse
			session := fmt.Sprintf("skew-%d", tc.ts.UnixMilli())
			r := h.do(t, "POST", "/v1/events", "acme-agent", "application/x-ndjson", at(session, 1, now)+"\n"+at(session, 2, tc.ts)+"\n", &resp)
			if r.StatusCode != tc.status {
				t.Fatalf("status %d, want %d (%+v)", r.StatusCode, tc.status, resp.Error)
			}
			if tc.status == http.StatusBadRequest {
				if resp.Error == nil || resp.Error.Code != CodeClockSkew || resp.Accepted != 0 || resp.Results[0].Status != "not_published" {
					t.Fatalf("error %+v, accepted %d, results %+v", resp.Error, resp.Accepted, resp.Results)
				}
			}
		})
	}
	var out struct {
		Error    ErrorDetail `json:"error"`
		Decision struct {
			Outcome string `json:"outcome"`
		} `json:"decision"`
	}
	stale := fmt.Sprintf(`{"ts_unix_ms":%d,"payload":{"tool_name":"search","call_id":"c1","args":{}}}`, now.Add(-2*time.Minute).UnixMilli())
	if r := h.do(t, "POST", "/v1/sessions/skew-prop/proposals", "acme-agent", "application/json", stale, &out); r.StatusCode != http.StatusBadRequest || out.Error.Code != CodeClockSkew {
		t.Fatalf("stale proposal: %d %+v", r.StatusCode, out.Error)
	}
	if r := h.do(t, "POST", "/v1/sessions/skew-prop/proposals", "acme-agent", "application/json", proposal("search", "c1", `{}`), &out); r.StatusCode != http.StatusOK {
		t.Fatalf("proposal stamped by the gateway: %d %+v", r.StatusCode, out.Error)
	}

	// Without the bound, an old time is accepted (imports of recorded sessions).
	open := newHarness(t, harnessOpts{})
	open.clock.set(now)
	var resp EventsResponse
	if r := open.do(t, "POST", "/v1/events", "acme-agent", "application/json", at("noskew", 1, now.Add(-24*time.Hour)), &resp); r.StatusCode != http.StatusAccepted {
		t.Fatalf("without --max-clock-skew: %d %+v", r.StatusCode, resp.Error)
	}
}
