package ingest

import (
	"net/http"
	"strings"
	"testing"

	"aegis.dev/aegis/schemas/envelope"
)

// quickStartDecide is the reference implementation's getting-started decide
// request, unchanged.
const quickStartDecide = `{
    "event": {
      "event_type": "TOOL_CALL_PROPOSED",
      "payload": {"tool_name": "read_file", "call_id": "c1", "args": {}}
    },
    "snapshot": {
      "steps_consumed":      3,
      "tool_calls_consumed": 2,
      "wall_time_ms":        5000
    },
    "manifest": {
      "schema":    "aegis.dev/manifest/v0.1",
      "name":      "my-skill",
      "version":   "0.1.0",
      "publisher": "acme",
      "permissions": {
        "tools":   ["read_file"],
        "budgets": {"max_steps": 24, "max_tool_calls": 12, "max_wall_time_ms": 120000}
      },
      "sandbox":   {"required": false},
      "integrity": {}
    }
  }`

func TestDecideQuickStartRequest(t *testing.T) {
	t.Parallel()
	h := newHarness(t, harnessOpts{dev: true, noDecider: true})
	var d envelope.Decision
	r := h.do(t, "POST", "/v1/policy/decide", "", "application/json", quickStartDecide, &d)
	if r.StatusCode != 200 || d.Outcome != envelope.Allow || d.Reason != "OK" || d.Constraints.MaxOutputBytes != 1048576 || d.Constraints.TimeoutMs != 30000 {
		t.Fatalf("status %d, decision %+v", r.StatusCode, d)
	}
	if d.InputDigest == "" || d.PolicyRevision == "" || d.ManifestDigest == "" {
		t.Fatalf("decision lacks its digests: %+v", d)
	}
}

func TestDecideRolesAndManifests(t *testing.T) {
	t.Parallel()
	h := newHarness(t, harnessOpts{noDecider: true})
	undeclared := `{"event":{"tenant_id":"acme","session_id":"d","seq":1,"ts_unix_ms":1767225600000,"event_type":"TOOL_CALL_PROPOSED","payload":{"tool_name":"exec","call_id":"c1","args":{}}}}`
	for _, tc := range []struct {
		name, key, body string
		status          int
		code            string
		outcome         envelope.Outcome
		reason          string
	}{
		{"agent under the registry", "acme-agent", `{"event":{"event_type":"TOOL_CALL_PROPOSED","payload":{"tool_name":"read_file","call_id":"c1"}}}`, 200, "", envelope.Allow, "OK"},
		{"registry denies undeclared", "acme-agent", undeclared, 200, "", envelope.Deny, "PERMISSION_UNDECLARED"},
		{"null members are filled in", "acme-agent", `{"event":{"tenant_id":null,"session_id":null,"seq":null,"ts_unix_ms":null,"event_type":"TOOL_CALL_PROPOSED","payload":{"tool_name":"read_file","call_id":"c1"}}}`, 200, "", envelope.Allow, "OK"},
		{"agent may not bring a manifest", "acme-agent", quickStartDecide, 403, CodeManifestNotAllowed, "", ""},
		{"operator may test a manifest", "acme-operator", quickStartDecide, 200, "", envelope.Allow, "OK"},
		{"auditor asks under the registry", "acme-auditor", undeclared, 200, "", envelope.Deny, "PERMISSION_UNDECLARED"},
		{"foreign tenant", "globex-agent", undeclared, 403, CodeTenantMismatch, "", ""},
		{"no key", "", undeclared, 401, CodeUnauthenticated, "", ""},
		{"trailing garbage", "acme-agent", undeclared + "x", 400, CodeMalformedRequest, "", ""},
		{"bad event", "acme-agent", `{"event":{"event_type":"NOPE"}}`, 400, "UNKNOWN_EVENT_TYPE", "", ""},
		{"no event", "acme-agent", `{}`, 400, CodeMalformedRequest, "", ""},
	} {
		t.Run(tc.name, func(t *testing.T) {
			var out struct {
				envelope.Decision
				Error ErrorDetail `json:"error"`
			}
			r := h.do(t, "POST", "/v1/policy/decide", tc.key, "application/json", tc.body, &out)
			if r.StatusCode != tc.status || out.Error.Code != tc.code || out.Outcome != tc.outcome || out.Reason != tc.reason {
				t.Fatalf("got %d %q %s/%s, want %d %q %s/%s", r.StatusCode, out.Error.Code, out.Outcome, out.Reason, tc.status, tc.code, tc.outcome, tc.reason)
			}
		})
	}
}

func TestDecideSameAsAegisctl(t *testing.T) {
	t.Parallel()
	h := newHarness(t, harnessOpts{dev: true, noDecider: true})
	req := `{"event":{"tenant_id":"acme","session_id":"x","seq":3,"ts_unix_ms":1767225600000,"event_type":"TOOL_CALL_PROPOSED","payload":{"tool_name":"search","call_id":"c9","args":{"q":1}}},` +
		`"snapshot":{"tenant_id":"acme","session_id":"x","last_seq":2,"first_ts_ms":1767225500000,"last_ts_ms":1767225500000,"events":2,"steps":2,"tool_calls":2,"tainted":false,"handoff":{},"consecutive_errors":0,"loop":{"detected":false},"terminated":false}}`
	var d envelope.Decision
	if r := h.do(t, "POST", "/v1/policy/decide", "", "application/json", req, &d); r.StatusCode != http.StatusOK {
		t.Fatalf("status %d", r.StatusCode)
	}
	want, err := ctlDecide(h, []byte(req))
	if err != nil {
		t.Fatal(err)
	}
	if d != *want {
		t.Fatalf("http %+v\nctl  %+v", d, *want)
	}
}

// TestDecideReferenceSnapshotAtDecodedTime: a reference-shape snapshot is
// translated at the event time the decoder reads, however the client
// spells the number (1.7672256e12 is 1767225600000), so one event gets
// one decision.
func TestDecideReferenceSnapshotAtDecodedTime(t *testing.T) {
	t.Parallel()
	h := newHarness(t, harnessOpts{dev: true, noDecider: true})
	var want envelope.Decision
	for i, ts := range []string{`1767225600000`, `1.7672256e12`, `1767225600000.0`} {
		body := strings.Replace(quickStartDecide, `"event_type": "TOOL_CALL_PROPOSED",`, `"event_type": "TOOL_CALL_PROPOSED", "ts_unix_ms": `+ts+`,`, 1)
		var d envelope.Decision
		if r := h.do(t, "POST", "/v1/policy/decide", "", "application/json", body, &d); r.StatusCode != http.StatusOK {
			t.Fatalf("ts %s: status %d", ts, r.StatusCode)
		}
		if i == 0 {
			if d.Outcome != envelope.Allow {
				t.Fatalf("ts %s: %+v", ts, d)
			}
			want = d
		} else if d != want {
			t.Fatalf("ts %s: %+v, want %+v", ts, d, want)
		}
	}
}
