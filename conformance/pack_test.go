package conformance_test

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"io"
	"net/http"
	"net/http/httptest"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"

	"aegis.dev/aegis/conformance"
)

const onePack = `name: one
cases:
  - {id: ONE-001, requirement: REQ-DENY-DEFAULT, description: d, decide: {request: {event: {}}, expect: {outcome: deny}}}
`

// TestParseRejectsSecondDocument: a file holding a second YAML document
// (after "---") is an error, not a pack whose later cases silently never
// run.
func TestParseRejectsSecondDocument(t *testing.T) {
	for _, ok := range []string{onePack, "---\n" + onePack, onePack + "---\n", onePack + "...\n"} {
		if _, err := conformance.Parse([]byte(ok)); err != nil {
			t.Errorf("%q: %v", ok, err)
		}
	}
	two := onePack + "---\ncases:\n  - {id: ONE-002, requirement: REQ-DENY-DEFAULT, description: d, decide: {request: {event: {}}, expect: {outcome: allow}}}\n"
	p, err := conformance.Parse([]byte(two))
	if !errors.Is(err, conformance.ErrPack) {
		t.Fatalf("Parse of two documents: %v, %+v", err, p)
	}
}

// TestParseRejectsEmptyTamperAndReplay: a tamper or replay step must name
// at least one statement or session (the schema's minItems); an empty one
// would otherwise pass without doing anything.
func TestParseRejectsEmptyTamperAndReplay(t *testing.T) {
	for _, step := range []string{"{tamper: []}", "{replay: []}",
		// expect on a step that checks nothing would be silently ignored
		"{tamper: [\"DELETE FROM audit_events\"], expect: {status: 200}}", "{tenant: t, replay: [s], expect: {outcome: deny}}"} {
		pack := "cases:\n  - {id: ONE-001, requirement: REQ-TAMPER-EDIT, description: d, scenario: {steps: [" + step + "]}}\n"
		if p, err := conformance.Parse([]byte(pack)); !errors.Is(err, conformance.ErrPack) {
			t.Errorf("%s: %v, %+v", step, err, p)
		}
	}
}

// TestParseRequires: requires takes the capabilities the runner knows and
// nothing else (a misspelt one would otherwise skip the case forever).
func TestParseRequires(t *testing.T) {
	for _, req := range conformance.Requires() {
		pack := "cases:\n  - {id: ONE-001, requirement: REQ-DENY-DEFAULT, description: d, requires: [" + req + "], decide: {request: {event: {}}, expect: {outcome: deny}}}\n"
		if _, err := conformance.Parse([]byte(pack)); err != nil {
			t.Errorf("requires %s: %v", req, err)
		}
	}
	pack := "cases:\n  - {id: ONE-001, requirement: REQ-DENY-DEFAULT, description: d, requires: [conformance-polcy], decide: {request: {event: {}}, expect: {outcome: deny}}}\n"
	if p, err := conformance.Parse([]byte(pack)); !errors.Is(err, conformance.ErrPack) {
		t.Errorf("requires conformance-polcy: %v, %+v", err, p)
	}
}

// TestLoopIdenticalCaseSendsDifferentSpellings: LOOP-SCN-001 claims that
// the same arguments in another key order and number spelling are one
// call; its proposals must reach the target spelled differently, or a
// target that digests the raw bytes would pass it.
func TestLoopIdenticalCaseSendsDifferentSpellings(t *testing.T) {
	packs, err := conformance.Builtin()
	if err != nil {
		t.Fatal(err)
	}
	packs = filterCases(packs, "LOOP-SCN-001")
	var mu sync.Mutex
	var args []string
	var sentinel string // the end barrier's event, stored at seq 5
	n := 0
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		w.Header().Set("Content-Type", "application/json")
		b, _ := io.ReadAll(r.Body)
		mu.Lock()
		defer mu.Unlock()
		switch {
		case r.URL.Path == "/v1/events": // the end barrier's sentinel
			var evs []struct {
				Payload json.RawMessage `json:"payload"`
			}
			_ = json.Unmarshal(b, &evs)
			sentinel = string(evs[0].Payload)
			w.WriteHeader(http.StatusAccepted)
			_, _ = w.Write([]byte(`{"accepted":1}`))
			return
		case strings.HasSuffix(r.URL.Path, "/events"): // the barriers' store reads
			if r.URL.Query().Get("after_seq") == "3" {
				_, _ = w.Write([]byte(`{"events":[{"seq":4,"hash":"h4"}]}`))
			} else {
				_, _ = w.Write([]byte(`{"events":[{"seq":5,"prev_hash":"h4","payload":` + sentinel + `}]}`))
			}
			return
		case strings.HasSuffix(r.URL.Path, "/verify"):
			_, _ = w.Write([]byte(`{"valid":true,"events":5}`))
			return
		case !strings.HasSuffix(r.URL.Path, "/proposals"):
			_, _ = w.Write([]byte(`{"snapshot":{"events":4,"loop":{"detected":true,"seq":3}}}`))
			return
		case bytes.Contains(b, []byte(`"seq":9007199254740991`)): // the barriers' probe
			w.WriteHeader(http.StatusConflict)
			_, _ = w.Write([]byte(`{"error":{"code":"SEQ_GAP","expected_seq":5}}`))
			return
		}
		n++
		if i := bytes.Index(b, []byte(`"args":`)); i >= 0 {
			if j := bytes.IndexByte(b[i:], '}'); j >= 0 { // the args are a flat object
				args = append(args, string(b[i:i+j+1]))
			}
		}
		if n <= 2 {
			_, _ = w.Write([]byte(`{"outcome":"allow","reason":"OK"}`))
			return
		}
		_, _ = w.Write([]byte(`{"outcome":"deny","reason":"LOOP_DETECTED"}`))
	}))
	defer srv.Close()
	rep, err := conformance.Run(context.Background(), packs, conformance.Options{Target: srv.URL, PollTimeout: time.Second})
	if err != nil {
		t.Fatal(err)
	}
	if rep.Failed != 0 || len(args) < 3 {
		t.Fatalf("%d failed, %d proposals: %+v", rep.Failed, len(args), rep.Cases)
	}
	if args[0] == args[1] || args[0] == args[2] || args[1] == args[2] {
		t.Errorf("the three identical calls were sent with the same bytes:\n%s\n%s\n%s", args[0], args[1], args[2])
	}
}

// TestConformancePolicyCasesSkipWithoutIt: without --provides
// conformance-policy, the cases that need the conformance policy bundle
// are skipped and say how to provide it; the others run.
func TestConformancePolicyCasesSkipWithoutIt(t *testing.T) {
	packs, err := conformance.Builtin()
	if err != nil {
		t.Fatal(err)
	}
	packs = filterCases(packs, "POL-")
	needs := make(map[string]bool)
	for _, p := range packs {
		for _, c := range p.Cases {
			needs[c.ID] = slices.Contains(c.Requires, conformance.RequireConformancePolicy)
		}
	}
	// Nothing listens on the target: a case that runs fails, one that is
	// skipped does not reach it.
	unused := func(context.Context, string, string) ([]byte, error) { return nil, errors.New("not reached") }
	rep, err := conformance.Run(context.Background(), packs, conformance.Options{Target: "http://127.0.0.1:1", PollTimeout: time.Millisecond, DecideLog: unused})
	if err != nil {
		t.Fatal(err)
	}
	var skipped []string
	for _, c := range rep.Cases {
		if (c.Status == conformance.StatusSkip) != needs[c.ID] {
			t.Errorf("%s: %s %s", c.ID, c.Status, c.Message)
		}
		if c.Status == conformance.StatusSkip {
			skipped = append(skipped, c.ID)
			if !strings.Contains(c.Message, "aegisctl conformance policy") {
				t.Errorf("%s skipped with %q", c.ID, c.Message)
			}
		}
	}
	if len(skipped) < 4 {
		t.Errorf("skipped %v, want the four POL-ERR cases", skipped)
	}
}

// TestParseKafkaSteps: via, sign and expect.rejected are checked where
// the pack is loaded: a Kafka step must be declared (requires: [kafka],
// and approval-secret for sign), and its expect can hold only what a
// Kafka publisher can observe, the rejection of one record.
func TestParseKafkaSteps(t *testing.T) {
	const ev = `events: [{seq: 1, type: MODEL_CALL_STARTED}]`
	const two = `events: [{seq: 1, type: MODEL_CALL_STARTED}, {seq: 2, type: MODEL_CALL_STARTED}]`
	for _, tc := range []struct {
		requires, step string
		ok             bool
	}{
		{"[kafka]", `{session: s, via: kafka, ` + ev + `}`, true},
		{"[kafka]", `{session: s, via: kafka, ` + two + `}`, true},
		{"[]", `{session: s, via: http, ` + ev + `}`, true},
		{"[kafka]", `{session: s, via: kafka, ` + ev + `, expect: {rejected: SEQ_GAP, fields: {expected_seq: 1}}}`, true},
		{"[kafka, approval-secret]", `{session: s, via: kafka, sign: true, ` + ev + `}`, true},
		{"[]", `{session: s, via: kafka, ` + ev + `}`, false},                                    // undeclared: a run without brokers would fail it
		{"[kafka]", `{session: s, via: kafka, sign: true, ` + ev + `}`, false},                   // sign without approval-secret
		{"[kafka]", `{session: s, via: mqtt, ` + ev + `}`, false},                                // unknown transport
		{"[kafka]", `{session: s, via: kafka, snapshot: true}`, false},                           // via on a read
		{"[kafka, approval-secret]", `{session: s, sign: true, ` + ev + `}`, false},              // the gateway signs itself
		{"[kafka]", `{session: s, ` + ev + `, expect: {rejected: SEQ_GAP}}`, false},              // the gateway answers itself
		{"[kafka]", `{session: s, via: kafka, ` + two + `, expect: {rejected: SEQ_GAP}}`, false}, // which one?
		{"[kafka]", `{session: s, via: kafka, ` + ev + `, expect: {status: 202}}`, false},        // no HTTP response
		{"[kafka]", `{session: s, via: kafka, ` + ev + `, expect: {fields: {seq: 1}}}`, false},   // fields of what?
		{"[kafka]", `{session: s, via: kafka, no_auth: true, ` + ev + `}`, false},
		// Raw records, keys and partitions.
		{"[kafka]", `{session: s, via: kafka, events: [{raw: '{"v":'}], expect: {rejected: INVALID_JSON}}`, true},
		{"[kafka]", `{session: s, via: kafka, events: [{raw_base64: /w==}], expect: {rejected: INVALID_UTF8}}`, true},
		{"[kafka]", `{session: s, via: kafka, events: [{seq: 1, type: MODEL_CALL_STARTED, pad_to: 2000000}]}`, true},
		{"[kafka]", `{session: s, via: kafka, key: "t/other", ` + ev + `}`, true},
		{"[kafka]", `{session: s, via: kafka, key: "", ` + ev + `}`, true},
		{"[kafka]", `{session: s, via: kafka, no_key: true, ` + ev + `}`, true},
		{"[kafka]", `{session: s, via: kafka, partition: 2, ` + ev + `}`, true},
		{"[kafka]", `{session: s, via: kafka, partition: wrong, events: [{raw: x}]}`, true},
		{"[kafka]", `{session: s, via: kafka, events: [{raw: x, seq: 1}]}`, false},      // raw beside a short-form field
		{"[kafka]", `{session: s, via: kafka, events: [{raw: x, payload: {}}]}`, false}, // the same
		{"[kafka]", `{session: s, via: kafka, events: [{raw_base64: /w==, type: MODEL_CALL_STARTED}]}`, false},
		{"[kafka]", `{session: s, via: kafka, events: [{raw: x, raw_base64: /w==}]}`, false},            // two values
		{"[kafka]", `{session: s, via: kafka, events: [{raw_base64: "not base64!"}]}`, false},           // undecodable
		{"[kafka, approval-secret]", `{session: s, via: kafka, sign: true, events: [{raw: x}]}`, false}, // nothing to sign
		{"[kafka]", `{session: s, via: kafka, events: [{raw: x, pad_to: -1}]}`, false},
		{"[kafka]", `{session: s, via: kafka, key: k, no_key: true, ` + ev + `}`, false}, // a key and none
		{"[kafka]", `{session: s, via: kafka, partition: -1, ` + ev + `}`, false},
		{"[kafka]", `{session: s, via: kafka, partition: elsewhere, ` + ev + `}`, false},
		{"[kafka]", `{session: s, via: kafka, partition: "2", ` + ev + `}`, false}, // a string is not a number
		{"[kafka]", `{session: s, events: [{raw: x}]}`, false},                     // the gateway takes JSON arrays
		{"[kafka]", `{session: s, events: [{seq: 1, pad_to: 10}]}`, false},
		{"[kafka]", `{session: s, key: k, ` + ev + `}`, false}, // the gateway keys itself
		{"[kafka]", `{session: s, via: http, no_key: true, ` + ev + `}`, false},
		{"[kafka]", `{session: s, partition: 0, ` + ev + `}`, false},
	} {
		pack := "cases:\n  - {id: ONE-001, requirement: REQ-KAFKA-INGEST, description: d, requires: " + tc.requires + ", scenario: {steps: [" + tc.step + "]}}\n"
		_, err := conformance.Parse([]byte(pack))
		if tc.ok && err != nil {
			t.Errorf("%s %s: %v", tc.requires, tc.step, err)
		}
		if !tc.ok && !errors.Is(err, conformance.ErrPack) {
			t.Errorf("%s %s: accepted", tc.requires, tc.step)
		}
	}
}

// TestUnresolvedTemplateFailsTheStep: a template naming a value that the
// earlier step's response lacks fails the step before anything is sent.
// Sent as its literal text, it made the altered-token check pass against a
// target that never returned a token (any unknown token is 404).
func TestUnresolvedTemplateFailsTheStep(t *testing.T) {
	pack, err := conformance.Parse([]byte(`name: tmpl
cases:
  - id: TMPL-001
    requirement: REQ-APPROVAL-BINDING
    description: an altered token is 404
    scenario:
      steps:
        - {name: p1, session: "{{sid}}", propose: {seq: 1, payload: {tool_name: send_email, call_id: c1, args: {}}}, expect: {outcome: require_approval}}
        - {approve: {token: "{{p1.approval.token}}x", decision: allow}, expect: {status: 404, code: APPROVAL_TOKEN_INVALID}}
`))
	if err != nil {
		t.Fatal(err)
	}
	var mu sync.Mutex
	var approvals int
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		w.Header().Set("Content-Type", "application/json")
		if strings.HasPrefix(r.URL.Path, "/v1/approvals/") {
			mu.Lock()
			approvals++
			mu.Unlock()
			w.WriteHeader(http.StatusNotFound)
			_, _ = w.Write([]byte(`{"error":{"code":"APPROVAL_TOKEN_INVALID"}}`))
			return
		}
		_, _ = w.Write([]byte(`{"outcome":"require_approval","reason":"APPROVAL_REQUIRED"}`)) // no approval
	}))
	defer srv.Close()
	rep, err := conformance.Run(context.Background(), []*conformance.Pack{pack}, conformance.Options{Target: srv.URL, PollTimeout: time.Second})
	if err != nil {
		t.Fatal(err)
	}
	c := rep.Cases[0]
	if c.Status != conformance.StatusFail || !strings.Contains(c.Message, "step 2: template {{p1.approval.token}}") {
		t.Errorf("%s: %s %q, want a failure of step 2 naming the template", c.ID, c.Status, c.Message)
	}
	if approvals != 0 {
		t.Errorf("%d approval requests sent with an unresolved template", approvals)
	}
}
