package ingest

import (
	"net/http"
	"os"
	"path/filepath"
	"strings"
	"testing"
)

// TestKeyBoundToManifests: a key with a manifests list publishes only
// events that name one of them, over POST /v1/events and the proposals
// endpoint alike; naming another manifest, or none (the tenant's
// default), is 403 MANIFEST_FORBIDDEN and nothing is published. A key
// without a list names any manifest of its tenant.
func TestKeyBoundToManifests(t *testing.T) {
	t.Parallel()
	h := newHarness(t, harnessOpts{})
	withManifest := func(session, ref string) string {
		e := ev("acme", session, 1, "MODEL_CALL_STARTED", `{}`)
		if ref == "" {
			return e
		}
		return strings.Replace(e, `"event_type"`, `"manifest":"`+ref+`","event_type"`, 1)
	}
	for _, tc := range []struct {
		name, key, ref string
		status         int
	}{
		{"its manifest", "acme-support", "support", http.StatusAccepted},
		{"a version of its manifest", "acme-support", "support@1.4.0", http.StatusAccepted},
		{"the version it may use", "acme-support", "triage@2.0.0", http.StatusAccepted},
		{"another version", "acme-support", "triage@2.1.0", http.StatusForbidden},
		{"another agent manifest", "acme-support", "deploy-bot", http.StatusForbidden},
		{"the tenant default", "acme-support", "", http.StatusForbidden},
		{"a name that only starts like its own", "acme-support", "supporter", http.StatusForbidden},
		{"a key without a list", "acme-agent", "deploy-bot", http.StatusAccepted},
	} {
		t.Run(tc.name, func(t *testing.T) {
			var resp EventsResponse
			r := h.do(t, "POST", "/v1/events", tc.key, "application/json", withManifest("mk-"+strings.ReplaceAll(tc.name, " ", "-"), tc.ref), &resp)
			if r.StatusCode != tc.status {
				t.Fatalf("status %d, want %d (%+v)", r.StatusCode, tc.status, resp.Error)
			}
			if tc.status == http.StatusForbidden && (resp.Error == nil || resp.Error.Code != CodeManifestForbidden || resp.Accepted != 0) {
				t.Fatalf("error %+v, accepted %d", resp.Error, resp.Accepted)
			}
		})
	}
	var out struct {
		Error ErrorDetail `json:"error"`
	}
	if r := h.do(t, "POST", "/v1/sessions/mk-prop/proposals", "acme-support", "application/json", proposal("send_email", "c1", `{}`), &out); r.StatusCode != http.StatusForbidden || out.Error.Code != CodeManifestForbidden {
		t.Fatalf("proposal under the tenant's default: %d %+v", r.StatusCode, out.Error)
	}
	if r := h.do(t, "POST", "/v1/sessions/mk-prop/proposals", "acme-support", "application/json",
		`{"manifest":"support","payload":{"tool_name":"send_email","call_id":"c1","args":{}}}`, &out); r.StatusCode != http.StatusOK {
		t.Fatalf("proposal under its manifest: %d %+v", r.StatusCode, out.Error)
	}
	if _, err := NewKeys([]KeyEntry{{ID: "x", Tenant: "acme", Role: RoleAgent, SHA256: HashKey("x"), Manifests: []string{""}}}); err == nil {
		t.Fatal("an empty manifest reference was accepted")
	}
}

// TestKeyEmptyManifestsList: "manifests": [] in the keys file binds the
// key to no manifest at all; it must not be read as no list (any
// manifest of the tenant), so the file is refused.
func TestKeyEmptyManifestsList(t *testing.T) {
	t.Parallel()
	path := filepath.Join(t.TempDir(), "keys.json")
	file := `{"keys": [{"id": "bot", "tenant": "acme", "role": "agent", "sha256": "` + HashKey("bot-key") + `", "manifests": []}]}`
	if err := os.WriteFile(path, []byte(file), 0o600); err != nil {
		t.Fatal(err)
	}
	keys, err := LoadKeys(path)
	if err == nil {
		r, _ := http.NewRequest("POST", "/v1/events", nil)
		r.Header.Set("Authorization", "Bearer bot-key")
		p, _ := keys.Authenticate(r)
		t.Fatalf("an empty manifests list was accepted: the key may name any manifest (deploy-bot allowed: %v)", p.AllowsManifest("deploy-bot"))
	}
	if !strings.Contains(err.Error(), "manifests") {
		t.Fatalf("error %q does not name the manifests list", err)
	}
}

// TestBoundKeyCannotActInAnotherManifestsSession: a bound key that knows
// the id of a session opened under another manifest cannot act in it:
// its events must name its own manifest, and the decider refuses an
// event naming another manifest than its session's (409
// MANIFEST_MISMATCH, nothing recorded).
func TestBoundKeyCannotActInAnotherManifestsSession(t *testing.T) {
	t.Parallel()
	h := newHarness(t, harnessOpts{})
	var out ProposalResponse
	if r := h.do(t, "POST", "/v1/sessions/shared/proposals", "acme-agent", "application/json", proposal("send_email", "c1", `{}`), &out); r.StatusCode != http.StatusOK {
		t.Fatalf("the session opens under the tenant's default: %d", r.StatusCode)
	}
	var e struct {
		Error ErrorDetail `json:"error"`
	}
	if r := h.do(t, "POST", "/v1/sessions/shared/proposals", "acme-support", "application/json",
		`{"manifest":"support","payload":{"tool_name":"send_email","call_id":"c2","args":{}}}`, &e); r.StatusCode != http.StatusConflict || e.Error.Code != "MANIFEST_MISMATCH" {
		t.Fatalf("a bound key in a session of another manifest: %d %+v", r.StatusCode, e.Error)
	}
}

// TestBoundKeyDecidesUnderItsManifests: a bound key asks stateless
// decisions only under its manifests, as it publishes.
func TestBoundKeyDecidesUnderItsManifests(t *testing.T) {
	t.Parallel()
	h := newHarness(t, harnessOpts{})
	for ref, want := range map[string]int{"": http.StatusForbidden, "deploy-bot": http.StatusForbidden, "support": http.StatusOK} {
		body := `{"event":{"event_type":"TOOL_CALL_PROPOSED","payload":{"tool_name":"read_file","call_id":"c1","args":{}}}}`
		if ref != "" {
			body = strings.Replace(body, `"event_type"`, `"manifest":"`+ref+`","event_type"`, 1)
		}
		var out struct {
			Error *ErrorDetail `json:"error"`
		}
		r := h.do(t, "POST", "/v1/policy/decide", "acme-support", "application/json", body, &out)
		if r.StatusCode != want || (want == http.StatusForbidden && (out.Error == nil || out.Error.Code != CodeManifestForbidden)) {
			t.Errorf("manifest %q: %d %+v, want %d", ref, r.StatusCode, out.Error, want)
		}
	}
}

// TestBoundKeyDecidesUnderItsManifestsWhateverTheSnapshot: a stateless
// decision is made under the snapshot's manifest once the snapshot has
// events (the session's first event named it), so a bound key may not
// send a snapshot of another manifest's session, nor of one without
// manifest (the tenant's default), beside an event naming its own.
func TestBoundKeyDecidesUnderItsManifestsWhateverTheSnapshot(t *testing.T) {
	t.Parallel()
	h := newHarness(t, harnessOpts{})
	for snap, want := range map[string]int{
		`{"manifest":"deploy-bot","events":1,"last_seq":1}`: http.StatusForbidden,
		`{"events":1,"last_seq":1}`:                         http.StatusForbidden,
		`{"steps_consumed":1}`:                              http.StatusForbidden,
		`{"manifest":"support","events":1,"last_seq":1}`:    http.StatusOK,
		`{"events":0}`:                                      http.StatusOK,
	} {
		body := `{"event":{"manifest":"support","event_type":"TOOL_CALL_PROPOSED","payload":{"tool_name":"read_file","call_id":"c1","args":{}}},"snapshot":` + snap + `}`
		var out struct {
			Error *ErrorDetail `json:"error"`
		}
		r := h.do(t, "POST", "/v1/policy/decide", "acme-support", "application/json", body, &out)
		if r.StatusCode != want || (want == http.StatusForbidden && (out.Error == nil || out.Error.Code != CodeManifestForbidden)) {
			t.Errorf("snapshot %s: %d %+v, want %d", snap, r.StatusCode, out.Error, want)
		}
	}
}
