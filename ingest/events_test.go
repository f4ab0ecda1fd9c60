package ingest

import (
	"errors"
	"fmt"
	"net/http"
	"runtime"
	"strings"
	"testing"
	"time"
)

// quickStartEvent is the reference implementation's quick-start request
// (issue 5, "Compatibility check"), byte for byte.
const quickStartEvent = `{"tenant_id":"acme","session_id":"sess-001","seq":0,"ts_unix_ms":1700000000000,"event_type":"TOOL_CALL_PROPOSED","payload":{"tool_name":"read_file","call_id":"c1","args":{}}}`

func ev(tenant, session string, seq int, typ, payload string) string {
	return fmt.Sprintf(`{"tenant_id":%q,"session_id":%q,"seq":%d,"ts_unix_ms":%d,"event_type":%q,"payload":%s}`,
		tenant, session, seq, 1767225600000+seq, typ, payload)
}

func TestQuickStartRequestWorksAsWritten(t *testing.T) {
	t.Parallel()
	h := newHarness(t, harnessOpts{dev: true})
	var resp EventsResponse
	r := h.do(t, "POST", "/v1/events", "", "application/json", quickStartEvent, &resp)
	if r.StatusCode != http.StatusAccepted || resp.Accepted != 1 {
		t.Fatalf("status %d, body %+v", r.StatusCode, resp)
	}
	// seq 0 asks the gateway to assign the session's next seq: 1 for a new session.
	if got := resp.Results[0]; got.Status != "accepted" || got.Seq != 1 {
		t.Fatalf("result %+v, want accepted at seq 1", got)
	}
	// The same request again is the session's second event.
	r = h.do(t, "POST", "/v1/events", "", "application/json", quickStartEvent, &resp)
	if r.StatusCode != http.StatusAccepted || resp.Results[0].Seq != 2 {
		t.Fatalf("second: status %d, body %+v", r.StatusCode, resp)
	}
}

func TestEventsAuthAndTenants(t *testing.T) {
	t.Parallel()
	h := newHarness(t, harnessOpts{})
	for _, tc := range []struct {
		name, key, body string
		status          int
		code            string
	}{
		{"no key", "", ev("acme", "a1", 1, "MODEL_CALL_STARTED", `{}`), 401, CodeUnauthenticated},
		{"unknown key", "nope", ev("acme", "a1", 1, "MODEL_CALL_STARTED", `{}`), 401, CodeUnauthenticated},
		{"auditor may not write", "acme-auditor", ev("acme", "a1", 1, "MODEL_CALL_STARTED", `{}`), 403, CodeForbidden},
		{"agent writes into another tenant", "acme-agent", ev("globex", "a1", 1, "MODEL_CALL_STARTED", `{}`), 403, CodeTenantMismatch},
		{"batch with one foreign event", "globex-agent", "[" + ev("globex", "a1", 1, "MODEL_CALL_STARTED", `{}`) + "," + ev("acme", "a1", 1, "MODEL_CALL_STARTED", `{}`) + "]", 403, CodeTenantMismatch},
		{"agent of its tenant", "acme-agent", ev("acme", "a1", 1, "MODEL_CALL_STARTED", `{}`), 202, ""},
		{"operator of its tenant", "acme-operator", ev("acme", "a1", 2, "MODEL_CALL_STARTED", `{}`), 202, ""},
		{"agent settles an approval", "acme-agent", ev("acme", "a1", 3, "APPROVAL_DECIDED", `{"call_id":"m1","decision":"allow","approver":"acme-operator"}`), 403, CodeForbidden},
		{"batch with an agent's approval", "acme-agent", "[" + ev("acme", "a1", 3, "MODEL_CALL_STARTED", `{}`) + "," + ev("acme", "a1", 4, "APPROVAL_DECIDED", `{"call_id":"m1","decision":"allow"}`) + "]", 403, CodeForbidden},
		{"operator records an approval", "acme-operator", ev("acme", "a1", 3, "APPROVAL_DECIDED", `{"call_id":"m1","decision":"deny","tool_name":"send_email","args_digest":"`+strings.Repeat("0", 64)+`"}`), 202, ""},
	} {
		t.Run(tc.name, func(t *testing.T) {
			var resp EventsResponse
			r := h.do(t, "POST", "/v1/events", tc.key, "application/json", tc.body, &resp)
			if r.StatusCode != tc.status {
				t.Fatalf("status %d, want %d (%+v)", r.StatusCode, tc.status, resp)
			}
			if tc.code != "" && (resp.Error == nil || resp.Error.Code != tc.code) {
				t.Fatalf("error %+v, want %s", resp.Error, tc.code)
			}
			if tc.code == "" && resp.Accepted != 1 {
				t.Fatalf("accepted %d, want 1", resp.Accepted)
			}
		})
	}
}

func TestEventsBadInput(t *testing.T) {
	t.Parallel()
	h := newHarness(t, harnessOpts{dev: true, cfg: func(c *Config) { c.MaxBodyBytes = 3 << 20; c.MaxBatchEvents = 10 }})
	good := ev("acme", "b1", 1, "MODEL_CALL_STARTED", `{}`)
	big := ev("acme", "b1", 1, "MODEL_CALL_STARTED", `{"blob":"`+strings.Repeat("x", 1<<20)+`"}`)
	for _, tc := range []struct {
		name, ctype, body string
		status            int
		code              string
	}{
		{"malformed", "application/json", `{"tenant_id":`, 400, "INVALID_JSON"},
		{"trailing garbage", "application/json", good + `garbage`, 400, "INVALID_JSON"},
		{"two objects", "application/json", good + good, 400, "INVALID_JSON"},
		{"trailing no-break space", "application/json", good + "\u00a0", 400, "INVALID_JSON"},
		{"leading vertical tab", "application/json", "\v" + good, 400, "INVALID_JSON"},
		{"ndjson line with a trailing line separator", "application/x-ndjson", good + "\u2028\n", 400, "INVALID_JSON"},
		{"array trailing garbage", "application/json", "[" + good + "]x", 400, "INVALID_JSON"},
		{"empty", "application/json", "", 400, CodeMalformedRequest},
		{"not an object", "application/json", `42`, 400, "INVALID_JSON"},
		{"wrong type", "application/json", strings.Replace(good, `"seq":1`, `"seq":"1"`, 1), 400, "INVALID_FIELD"},
		{"unknown event type", "application/json", ev("acme", "b1", 1, "TOOL_CALL_MAYBE", `{}`), 400, "UNKNOWN_EVENT_TYPE"},
		{"missing tenant", "application/json", strings.Replace(good, `"tenant_id":"acme",`, ``, 1), 400, "MISSING_FIELD"},
		{"forged decision", "application/json", strings.Replace(good, `"payload"`, `"decision":{},"payload"`, 1), 400, "UNKNOWN_FIELD"},
		{"duplicate key", "application/json", strings.Replace(good, `"seq":1`, `"seq":1,"seq":2`, 1), 400, "DUPLICATE_KEY"},
		{"event over 1 MiB", "application/json", big, 413, "TOO_LARGE"},
		{"body over the limit", "application/json", "[" + big + "," + big + "," + big + "]", 413, CodeBodyTooLarge},
		{"too many events", "application/x-ndjson", strings.Repeat(good+"\n", 11), 413, CodeTooManyEvents},
		{"too many in an array", "application/json", "[" + strings.Repeat("{},", 10) + "{}]", 413, CodeTooManyEvents},
		{"text/plain", "text/plain", good, 415, CodeUnsupportedMedia},
		{"no content type", "", good, 415, CodeUnsupportedMedia},
		{"form", "application/x-www-form-urlencoded", good, 415, CodeUnsupportedMedia},
	} {
		t.Run(tc.name, func(t *testing.T) {
			var resp errResp
			r := h.do(t, "POST", "/v1/events", "", tc.ctype, tc.body, &resp)
			if r.StatusCode != tc.status || resp.Error.Code != tc.code {
				t.Fatalf("got %d %s, want %d %s (%+v)", r.StatusCode, resp.Error.Code, tc.status, tc.code, resp.Error)
			}
		})
	}
	// Nothing above was published: an event whose seq the gateway assigns,
	// which waits for the decider, is the session's first (a probe that
	// reached Kafka at seq 1 would push it to seq 2).
	var resp EventsResponse
	if r := h.do(t, "POST", "/v1/events", "", "application/json", strings.Replace(good, `"seq":1`, `"seq":0`, 1), &resp); r.StatusCode != 202 ||
		len(resp.Results) != 1 || resp.Results[0].Seq != 1 {
		t.Fatalf("after the probes: %d %+v", r.StatusCode, resp)
	}
}

func TestEventsBatchShapes(t *testing.T) {
	t.Parallel()
	h := newHarness(t, harnessOpts{dev: true})
	e := func(seq int) string { return ev("acme", "shape", seq, "MODEL_CALL_STARTED", `{"model":"m"}`) }
	for _, tc := range []struct {
		name, ctype, body string
		n                 int
	}{
		{"single", "application/json; charset=utf-8", e(1), 1},
		{"array", "application/json", "[" + e(2) + ",\n " + e(3) + "]", 2},
		{"ndjson with blank lines", "application/x-ndjson", e(4) + "\n\n" + e(5) + "\r\n" + e(6) + "\n", 3},
	} {
		t.Run(tc.name, func(t *testing.T) {
			var resp EventsResponse
			r := h.do(t, "POST", "/v1/events", "", tc.ctype, tc.body, &resp)
			if r.StatusCode != 202 || resp.Accepted != tc.n || len(resp.Results) != tc.n {
				t.Fatalf("status %d, body %+v", r.StatusCode, resp)
			}
			for i, res := range resp.Results {
				if res.Index != i || res.Status != "accepted" || res.SessionID != "shape" {
					t.Fatalf("result %d: %+v", i, res)
				}
			}
		})
	}
	// A batch with one invalid event publishes nothing and reports each.
	var resp EventsResponse
	r := h.do(t, "POST", "/v1/events", "", "application/json", "["+e(7)+`,{"nope":1}]`, &resp)
	if r.StatusCode != 400 || resp.Results[0].Status != "not_published" || resp.Results[1].Status != "rejected" || resp.Accepted != 0 {
		t.Fatalf("status %d, body %+v", r.StatusCode, resp)
	}
}

// TestEventsSeqNullOrZeroIsAssigned: a null member counts as absent
// (docs/envelope.md), and 0 is 0 however it is spelt, so "seq": null, -0
// and 0.0 ask for a gateway-assigned seq like an absent seq and 0 do.
func TestEventsSeqNullOrZeroIsAssigned(t *testing.T) {
	t.Parallel()
	h := newHarness(t, harnessOpts{dev: true})
	good := ev("acme", "z1", 1, "MODEL_CALL_STARTED", `{}`)
	for i, seq := range []string{`"seq":0,`, `"seq":null,`, `"seq":-0,`, `"seq":0.0,`, `"seq":0e3,`, ``} {
		var resp EventsResponse
		r := h.do(t, "POST", "/v1/events", "", "application/json", strings.Replace(good, `"seq":1,`, seq, 1), &resp)
		if r.StatusCode != 202 || len(resp.Results) != 1 || resp.Results[0].Seq != uint64(i+1) {
			t.Fatalf("%s: status %d, body %+v %+v", seq, r.StatusCode, resp, resp.Error)
		}
	}
	// Any other seq is the client's own, and must be valid.
	for _, seq := range []string{`"seq":-1,`, `"seq":0.5,`, `"seq":"0",`} {
		var resp errResp
		if r := h.do(t, "POST", "/v1/events", "", "application/json", strings.Replace(good, `"seq":1,`, seq, 1), &resp); r.StatusCode != 400 || resp.Error.Code != "INVALID_FIELD" {
			t.Fatalf("%s: got %d %+v", seq, r.StatusCode, resp.Error)
		}
	}
}

// TestEventsAssignedSeqSizedAsSent: an event whose seq the gateway
// assigns, or a proposal, is held to the size limit as the client wrote it
// (and as canonical JSON writes it), not as json.Marshal rewrites it with
// "<" as the six bytes "\u003c".
func TestEventsAssignedSeqSizedAsSent(t *testing.T) {
	t.Parallel()
	h := newHarness(t, harnessOpts{dev: true})
	blob := strings.Repeat("<&>", 70<<10) // 210 KiB, 1.2 MiB escaped
	for _, seq := range []int{1, 0} {
		var resp EventsResponse
		r := h.do(t, "POST", "/v1/events", "", "application/json", ev("acme", "big", seq, "MODEL_CALL_STARTED", `{"html":"`+blob+`"}`), &resp)
		if r.StatusCode != 202 || resp.Results[0].Seq != uint64(2-seq) {
			t.Fatalf("seq %d: status %d, %+v %+v", seq, r.StatusCode, resp.Results, resp.Error)
		}
	}
	var out struct {
		ProposalResponse
		Error ErrorDetail `json:"error"`
	}
	if r := h.do(t, "POST", "/v1/sessions/big/proposals", "", "application/json", `{"payload":{"tool_name":"search","call_id":"c1","args":{"q":"`+blob+`"}}}`, &out); r.StatusCode != 200 || out.Seq != 1 {
		t.Fatalf("proposal: status %d, %+v", r.StatusCode, out)
	}
}

func TestRateLimitRetryAfter(t *testing.T) {
	t.Parallel()
	h := newHarness(t, harnessOpts{cfg: func(c *Config) { c.RateLimit, c.RateBurst = 0.5, 2 }})
	h.clock.set(h.clock.now())
	for seq := 1; seq <= 2; seq++ {
		if r := h.do(t, "POST", "/v1/events", "acme-agent", "application/json", ev("acme", "rl", seq, "MODEL_CALL_STARTED", `{}`), nil); r.StatusCode != 202 {
			t.Fatalf("event %d: %d", seq, r.StatusCode)
		}
	}
	var resp errResp
	r := h.do(t, "POST", "/v1/events", "acme-agent", "application/json", ev("acme", "rl", 3, "MODEL_CALL_STARTED", `{}`), &resp)
	if r.StatusCode != 429 || resp.Error.Code != CodeRateLimited || r.Header.Get("Retry-After") != "2" {
		t.Fatalf("got %d %s Retry-After %q, want 429 RATE_LIMITED 2", r.StatusCode, resp.Error.Code, r.Header.Get("Retry-After"))
	}
	// Another tenant has its own bucket.
	if r := h.do(t, "POST", "/v1/events", "globex-agent", "application/json", ev("globex", "rl", 1, "MODEL_CALL_STARTED", `{}`), nil); r.StatusCode != 202 {
		t.Fatalf("globex: %d", r.StatusCode)
	}
	h.clock.set(h.clock.now().Add(2 * time.Second))
	if r := h.do(t, "POST", "/v1/events", "acme-agent", "application/json", ev("acme", "rl", 3, "MODEL_CALL_STARTED", `{}`), nil); r.StatusCode != 202 {
		t.Fatalf("after refill: %d", r.StatusCode)
	}
}

// A body of many tiny elements is split only up to the limit: what it
// allocates does not grow with the body.
func TestSplitStopsAtTheLimit(t *testing.T) {
	for _, tc := range []struct{ mt, body string }{
		{mediaNDJSON, strings.Repeat("{}\n", 1<<20)},
		{mediaJSON, "[" + strings.Repeat("{},", 1<<20) + "{}]"},
	} {
		body := []byte(tc.body)
		var before, after runtime.MemStats
		runtime.ReadMemStats(&before)
		_, err := splitEvents(tc.mt, body, 10)
		runtime.ReadMemStats(&after)
		var ae *apiError
		if !errors.As(err, &ae) || ae.Code != CodeTooManyEvents {
			t.Fatalf("%s: %v", tc.mt, err)
		}
		if n := after.TotalAlloc - before.TotalAlloc; n > 1<<20 {
			t.Fatalf("%s: %d bytes allocated splitting a body of %d bytes with a limit of 10", tc.mt, n, len(body))
		}
	}
}

// An event the decider rejects for its content is the client's to fix: 400
// with the reason, no Retry-After, not a 503 that invites sending it again.
func TestEventsRejectedByTheDecider(t *testing.T) {
	t.Parallel()
	h := newHarness(t, harnessOpts{})
	var resp EventsResponse
	body := `{"tenant_id":"acme","session_id":"r1","ts_unix_ms":1767225600000,"event_type":"MODEL_CALL_STARTED","payload":{"model":"m","is_error":"yes"}}`
	r := h.do(t, "POST", "/v1/events", "acme-agent", "application/json", body, &resp)
	if r.StatusCode != http.StatusBadRequest || r.Header.Get("Retry-After") != "" || resp.Error == nil || resp.Error.Code != "INVALID_FIELD" ||
		resp.Results[0].Status != "rejected" {
		t.Fatalf("status %d, Retry-After %q, body %+v", r.StatusCode, r.Header.Get("Retry-After"), resp)
	}
}

// TestAssignedEventsShareOneWait: the events of a batch whose seqs the
// gateway assigns share one --proposal-timeout. With the decider stopped,
// the first is published and times out; the others are not published
// (before, each waited its own timeout and all were published at the same
// seq, so all but one were later rejected with nobody waiting).
func TestAssignedEventsShareOneWait(t *testing.T) {
	t.Parallel()
	h := newHarness(t, harnessOpts{noDecider: true, cfg: func(c *Config) { c.ProposalTimeout = 300 * time.Millisecond }})
	h.tailStarted(t)
	var lines []string
	for i := range 5 {
		lines = append(lines, ev("acme", "wait1", 0, "MODEL_CALL_STARTED", fmt.Sprintf(`{"n":%d}`, i)))
	}
	var resp EventsResponse
	r := h.do(t, "POST", "/v1/events", "acme-agent", "application/x-ndjson", strings.Join(lines, "\n"), &resp)
	if r.StatusCode != http.StatusGatewayTimeout || len(resp.Results) != 5 {
		t.Fatalf("status %d, %+v", r.StatusCode, resp)
	}
	if got := resp.Results[0]; got.Status != "failed" || got.Seq != 1 || got.Error.Code != CodeDecisionTimeout {
		t.Errorf("first: %+v", got)
	}
	for _, got := range resp.Results[1:] {
		if got.Status != "not_published" || got.Error == nil || got.Error.Code != CodeDecisionTimeout {
			t.Errorf("later: %+v", got)
		}
	}
	h.startDecider()
	var next EventsResponse
	h.do(t, "POST", "/v1/events", "acme-agent", "application/json", ev("acme", "wait1", 0, "MODEL_CALL_STARTED", `{"n":99}`), &next)
	if got := next.Results[0]; got.Status != "accepted" || got.Seq != 2 {
		t.Fatalf("next event: %+v, want accepted at seq 2 (one event was published before)", got)
	}
}

// TestTimedOutAssignedSeqsDoNotCollide: two proposals whose waits time out
// while the decider is stopped are both answered "recorded"; both must then
// be decided, at seqs 1 and 2 (before, both were published at seq 1 and
// one was rejected).
func TestTimedOutAssignedSeqsDoNotCollide(t *testing.T) {
	t.Parallel()
	h := newHarness(t, harnessOpts{noDecider: true})
	h.tailStarted(t)
	var a, b TimeoutResponse
	h.do(t, "POST", "/v1/sessions/collide1/proposals?timeout_ms=200", "acme-agent", "application/json", proposal("read_file", "ca", `{"path":"/a"}`), &a)
	h.do(t, "POST", "/v1/sessions/collide1/proposals?timeout_ms=200", "acme-agent", "application/json", proposal("read_file", "cb", `{"path":"/b"}`), &b)
	if !a.Recorded || !b.Recorded || a.Seq == b.Seq {
		t.Fatalf("A %+v, B %+v: want both recorded at distinct seqs", a, b)
	}
	h.startDecider()
	var c ProposalResponse
	h.do(t, "POST", "/v1/sessions/collide1/proposals", "acme-agent", "application/json", proposal("read_file", "cc", `{"path":"/c"}`), &c)
	if c.Seq != 3 {
		t.Fatalf("C decided at seq %d, want 3: one of the recorded proposals was rejected", c.Seq)
	}
}
