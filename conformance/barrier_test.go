package conformance_test

import (
	"context"
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"io"
	"net/http"
	"net/http/httptest"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	"aegis.dev/aegis/conformance"
)

// seqTarget is a fake aegisd, enough for cases that propose with explicit
// seqs and read their sessions back. Its "decider" applies the sequence
// rule to proposals (POST /v1/sessions/{s}/proposals) and events (POST
// /v1/events) and allows every accepted proposal; its "store" is a list of
// rows that become visible in order, storeLag after they were written, as
// a projector writes asynchronously and in order. The session reads
// (snapshot, events, verify) show the visible rows, one per seq.
//
// Its bugs, the kind the barriers exist to catch, each make an exact retry
// leave a second record that the store shows only late (lateBy after the
// retry, and so do the rows after it):
//   - dupDecided: the decider accepts the retry again at the next seq (as
//     well as answering it with the recorded decision);
//   - dupStored: the decider drops the retry, as it should, but the store
//     writes it again under the next seq.
//
// With dupOnNext, the decider instead holds the retry and accepts it again
// at the session's next seq only when it next processes an event of
// another session (a retry stuck behind the partition's next record).
type seqTarget struct {
	storeLag, lateBy time.Duration
	dupDecided       bool
	dupStored        bool
	dupOnNext        bool

	held *heldRetry // dupOnNext: the retry not yet accepted again

	mu       sync.Mutex
	sessions map[string]*seqSession // by tenant/session
}

type heldRetry struct {
	key string
	ev  seqEvent
}

type seqSession struct {
	accepted []string // payloads the decider accepted, by seq-1
	hashes   []string
	rows     []seqRow
}

type seqRow struct {
	rec     map[string]any
	visible time.Time
}

func newSeqTarget(tb testing.TB, t *seqTarget) string {
	t.sessions = make(map[string]*seqSession)
	mux := http.NewServeMux()
	mux.HandleFunc("POST /v1/sessions/{session}/proposals", t.propose)
	mux.HandleFunc("POST /v1/events", t.events)
	mux.HandleFunc("GET /v1/sessions/{session}", t.read)
	mux.HandleFunc("GET /v1/sessions/{session}/events", t.read)
	mux.HandleFunc("GET /v1/sessions/{session}/verify", t.read)
	srv := httptest.NewServer(mux)
	tb.Cleanup(srv.Close)
	return srv.URL
}

func writeJSON(w http.ResponseWriter, status int, v any) {
	w.Header().Set("Content-Type", "application/json")
	w.WriteHeader(status)
	_ = json.NewEncoder(w).Encode(v)
}

type seqEvent struct {
	TenantID  string          `json:"tenant_id"`
	SessionID string          `json:"session_id"`
	Seq       int             `json:"seq"`
	Type      string          `json:"event_type"`
	Payload   json.RawMessage `json:"payload"`
}

// apply runs the sequence rule: the verdict's status (200 accepted or a
// retry, 409 otherwise), the expected seq, and whether it was a retry.
func (t *seqTarget) apply(ev seqEvent) (status, expected int, retry bool) {
	k := ev.TenantID + "/" + ev.SessionID
	if h := t.held; h != nil && h.key != k {
		t.held = nil
		hs := t.sessions[h.key]
		t.store(hs, h.ev, len(hs.accepted)+1, false, time.Now().Add(t.storeLag))
	}
	s := t.sessions[k]
	if s == nil {
		s = &seqSession{}
		t.sessions[k] = s
	}
	next := len(s.accepted) + 1
	switch {
	case ev.Seq > next:
		return 409, next, false
	case ev.Seq < next && s.accepted[ev.Seq-1] != string(ev.Payload):
		return 409, next, false
	case ev.Seq < next:
		if t.dupOnNext {
			t.held = &heldRetry{key: k, ev: ev}
		}
		if t.dupDecided || t.dupStored {
			t.store(s, ev, next, !t.dupDecided, time.Now().Add(t.lateBy))
		}
		return 200, next, true
	}
	t.store(s, ev, ev.Seq, false, time.Now().Add(t.storeLag))
	return 200, next + 1, false
}

// store writes a row at seq; unless rowOnly, the decider accepted it.
func (t *seqTarget) store(s *seqSession, ev seqEvent, seq int, rowOnly bool, visible time.Time) {
	prev := ""
	if seq > 1 {
		prev = s.hashes[seq-2]
	}
	sum := sha256.Sum256([]byte(prev + strconv.Itoa(seq) + string(ev.Payload)))
	hash := hex.EncodeToString(sum[:])
	if !rowOnly {
		s.accepted = append(s.accepted, string(ev.Payload))
		s.hashes = append(s.hashes, hash)
	}
	if n := len(s.rows); n > 0 && s.rows[n-1].visible.After(visible) {
		visible = s.rows[n-1].visible // the store writes in order
	}
	s.rows = append(s.rows, seqRow{rec: map[string]any{"seq": seq, "event_type": ev.Type, "payload": ev.Payload, "prev_hash": prev, "hash": hash}, visible: visible})
}

func (t *seqTarget) propose(w http.ResponseWriter, r *http.Request) {
	b, _ := io.ReadAll(r.Body)
	var ev seqEvent
	if err := json.Unmarshal(b, &ev); err != nil || ev.Seq < 1 {
		writeJSON(w, 400, map[string]any{"error": map[string]any{"code": "MALFORMED_REQUEST"}})
		return
	}
	t.mu.Lock()
	status, expected, _ := t.apply(ev)
	t.mu.Unlock()
	if status != 200 {
		code := "SEQ_CONFLICT"
		if ev.Seq > expected {
			code = "SEQ_GAP"
		}
		writeJSON(w, status, map[string]any{"error": map[string]any{"code": code, "expected_seq": expected}})
		return
	}
	sum := sha256.Sum256(append([]byte(strconv.Itoa(ev.Seq)), ev.Payload...))
	writeJSON(w, 200, map[string]any{"seq": ev.Seq, "outcome": "allow", "reason": "OK", "input_digest": "sha256:" + hex.EncodeToString(sum[:])})
}

func (t *seqTarget) events(w http.ResponseWriter, r *http.Request) {
	b, _ := io.ReadAll(r.Body)
	var evs []seqEvent
	if err := json.Unmarshal(b, &evs); err != nil {
		writeJSON(w, 400, map[string]any{"error": map[string]any{"code": "INVALID_JSON"}})
		return
	}
	t.mu.Lock()
	for _, ev := range evs {
		t.apply(ev) // a rejection is not the publisher's answer
	}
	t.mu.Unlock()
	writeJSON(w, 202, map[string]any{"accepted": len(evs)})
}

func (t *seqTarget) read(w http.ResponseWriter, r *http.Request) {
	t.mu.Lock()
	var stored []map[string]any
	if s := t.sessions[r.URL.Query().Get("tenant_id")+"/"+r.PathValue("session")]; s != nil {
		for _, row := range s.rows {
			if time.Now().Before(row.visible) {
				break
			}
			if n := len(stored); n == 0 || stored[n-1]["seq"].(int) < row.rec["seq"].(int) {
				stored = append(stored, row.rec) // one row per seq, as the session reads do
			}
		}
	}
	t.mu.Unlock()
	if len(stored) == 0 && !strings.HasSuffix(r.URL.Path, "/events") {
		writeJSON(w, 404, map[string]any{"error": map[string]any{"code": "NOT_FOUND"}})
		return
	}
	switch {
	case strings.HasSuffix(r.URL.Path, "/events"):
		after, _ := strconv.Atoi(r.URL.Query().Get("after_seq"))
		page := []map[string]any{}
		for _, rec := range stored {
			if rec["seq"].(int) > after {
				page = append(page, rec)
			}
		}
		writeJSON(w, 200, map[string]any{"events": page, "next_cursor": ""})
	case strings.HasSuffix(r.URL.Path, "/verify"):
		writeJSON(w, 200, map[string]any{"valid": true, "events": len(stored), "failures": []any{}})
	default:
		writeJSON(w, 200, map[string]any{"snapshot": map[string]any{"events": len(stored), "last_seq": len(stored)}})
	}
}

// retryPack checks that an exact retry stores nothing, with the retry
// followed directly by the count (ING-SEQ-001 puts a SEQ_GAP question in
// between, whose expected_seq already shows a duplicate the decider
// accepted).
const retryPack = `name: retry
cases:
  - id: RETRY-001
    requirement: REQ-INGEST-SEQUENCE
    description: an exact retry is answered with the recorded decision and stores nothing
    scenario:
      steps:
        - {session: "{{sid}}", propose: {seq: 1, payload: {tool_name: search, call_id: c1, args: {}}}, expect: {outcome: allow}}
        - {session: "{{sid}}", propose: {seq: 1, payload: {tool_name: search, call_id: c1, args: {}}}, expect: {outcome: allow}}
        - {session: "{{sid}}", verify: true, expect: {fields: {valid: true, events: 1}}}
        - {session: "{{sid}}", snapshot: true, expect: {fields: {snapshot.events: 1}}}
`

// TestBarrierCatchesLateDuplicate: cases that expect an exact retry to
// store nothing ("valid with 1 event") run against a target that stores
// the retry again as a second record, which the store shows only 1.5 s
// after the count first holds. Polling until the count holds passes them
// (the runner before the barriers did); the barriers make the runner wait
// until the target has processed and stored everything it accepted before
// the check, and the cases fail — whether the decider accepted the
// duplicate (the read's probe catches it) or only the store wrote it (the
// end barrier's sentinel cannot land at its seq). Against the same target
// without the bug both cases pass.
func TestBarrierCatchesLateDuplicate(t *testing.T) {
	builtin, err := conformance.Builtin()
	if err != nil {
		t.Fatal(err)
	}
	retry, err := conformance.Parse([]byte(retryPack))
	if err != nil {
		t.Fatal(err)
	}
	retry.Name = "retry"
	packs := append(filterCases(builtin, "ING-SEQ-001"), retry)
	const lateBy = 1500 * time.Millisecond
	for _, tc := range []struct {
		name   string
		target *seqTarget
		want   map[string]string // case id → "" (pass) or what its failure says
	}{
		{"correct", &seqTarget{}, map[string]string{"ING-SEQ-001": "", "RETRY-001": ""}},
		{"duplicate accepted by the decider", &seqTarget{lateBy: lateBy, dupDecided: true}, map[string]string{
			// ING-SEQ-001 fails at its SEQ_GAP step whatever the runner
			"ING-SEQ-001": "step 3: error.expected_seq = 3, want 2",
			"RETRY-001":   "step 3: after the barrier: events = 2, want 1",
		}},
		{"duplicate written by the store", &seqTarget{lateBy: lateBy, dupStored: true}, map[string]string{
			"ING-SEQ-001": "seq 2 holds another record than the sentinel",
			"RETRY-001":   "seq 2 holds another record than the sentinel",
		}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			tc.target.storeLag = 50 * time.Millisecond
			url := newSeqTarget(t, tc.target)
			start := time.Now()
			rep, err := conformance.Run(context.Background(), packs, conformance.Options{Target: url, PollTimeout: 10 * time.Second})
			if err != nil {
				t.Fatal(err)
			}
			for _, c := range rep.Cases {
				t.Logf("%s: %s %s", c.ID, c.Status, c.Message)
				want := tc.want[c.ID]
				switch {
				case want == "" && c.Status != conformance.StatusPass:
					t.Errorf("%s: %s: %s", c.ID, c.Status, c.Message)
				case want != "" && (c.Status != conformance.StatusFail || !strings.Contains(c.Message, want)):
					t.Errorf("%s: %s %q, want a failure saying %q", c.ID, c.Status, c.Message, want)
				}
			}
			if tc.target.lateBy == 0 && time.Since(start) > lateBy {
				t.Errorf("the correct target took %s", time.Since(start))
			}
		})
	}
}

// twoSessionRetryPack is retryPack's check followed by a write and a read
// of a second session.
const twoSessionRetryPack = `name: retry2
cases:
  - id: RETRY-002
    requirement: REQ-INGEST-SEQUENCE
    description: an exact retry stores nothing, and another session is written after the check
    scenario:
      steps:
        - {session: "{{sid}}", propose: {seq: 1, payload: {tool_name: search, call_id: c1, args: {}}}, expect: {outcome: allow}}
        - {session: "{{sid}}", propose: {seq: 1, payload: {tool_name: search, call_id: c1, args: {}}}, expect: {outcome: allow}}
        - {session: "{{sid}}", verify: true, expect: {fields: {valid: true, events: 1}}}
        - {session: "{{sid}}-b", propose: {seq: 1, payload: {tool_name: search, call_id: c1, args: {}}}, expect: {outcome: allow}}
        - {session: "{{sid}}-b", verify: true, expect: {fields: {valid: true, events: 1}}}
`

// TestEndBarrierCatchesLateAcceptAcrossSessions: a retry the decider
// accepts again only after the session's read (when it next processes
// another session's event) makes the case fail at its end barrier, although
// the case wrote another session after that read: the end barrier's check
// that nothing was accepted since the read concerns the session's own
// writes (and approve and http steps, which may write any session).
func TestEndBarrierCatchesLateAcceptAcrossSessions(t *testing.T) {
	pack, err := conformance.Parse([]byte(twoSessionRetryPack))
	if err != nil {
		t.Fatal(err)
	}
	pack.Name = "retry2"
	for _, tc := range []struct {
		name   string
		target *seqTarget
		want   string
	}{
		{"correct", &seqTarget{}, ""},
		{"retry accepted after the read", &seqTarget{dupOnNext: true}, "end: barrier on default/retry-002-"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			tc.target.storeLag = 50 * time.Millisecond
			url := newSeqTarget(t, tc.target)
			rep, err := conformance.Run(context.Background(), []*conformance.Pack{pack}, conformance.Options{Target: url, PollTimeout: 10 * time.Second})
			if err != nil {
				t.Fatal(err)
			}
			c := rep.Cases[0]
			t.Logf("%s: %s %s", c.ID, c.Status, c.Message)
			switch {
			case tc.want == "" && c.Status != conformance.StatusPass:
				t.Errorf("%s: %s: %s", c.ID, c.Status, c.Message)
			case tc.want != "" && (c.Status != conformance.StatusFail || !strings.Contains(c.Message, tc.want) || !strings.Contains(c.Message, "accepted seqs 2..2")):
				t.Errorf("%s: %s %q, want a failure of the end barrier saying the decider accepted seq 2", c.ID, c.Status, c.Message)
			}
		})
	}
}

// httpReadPack checks an exact retry with an http step's read of the
// session, which is sent once, not polled.
const httpReadPack = `name: httpread
cases:
  - id: RETRY-HTTP-001
    requirement: REQ-INGEST-SEQUENCE
    description: an exact retry stores nothing, read by an http step
    scenario:
      steps:
        - {session: "{{sid}}", propose: {seq: 1, payload: {tool_name: search, call_id: c1, args: {}}}, expect: {outcome: allow}}
        - {session: "{{sid}}", propose: {seq: 1, payload: {tool_name: search, call_id: c1, args: {}}}, expect: {outcome: allow}}
        - {http: {method: GET, path: "/v1/sessions/{{sid}}?tenant_id=default"}, expect: {fields: {snapshot.events: 1}}}
  - id: RETRY-HTTP-002
    requirement: REQ-INGEST-SEQUENCE
    description: an event written by an http step is stored before an http step reads the session
    scenario:
      steps:
        - {http: {method: POST, path: /v1/events, body: [{tenant_id: default, session_id: "{{sid}}", seq: 1, ts_unix_ms: 1767225601000, event_type: MODEL_CALL_STARTED, payload: {}}]}, expect: {status: 202}}
        - {http: {method: GET, path: "/v1/sessions/{{sid}}?tenant_id=default"}, expect: {fields: {snapshot.events: 1}}}
`

// TestHTTPReadPassesTheBarrier: an http step that reads a session is sent
// once; it is decided only after the barrier of every session the case
// wrote, so that it neither passes before a late duplicate is stored
// (RETRY-HTTP-001 against a target whose decider accepts the retry again,
// seen 1.5 s late) nor fails before the store has caught up with what the
// case wrote (RETRY-HTTP-002 against a store 300 ms behind, the event
// written by an http step).
func TestHTTPReadPassesTheBarrier(t *testing.T) {
	pack, err := conformance.Parse([]byte(httpReadPack))
	if err != nil {
		t.Fatal(err)
	}
	pack.Name = "httpread"
	for _, tc := range []struct {
		name   string
		target *seqTarget
		want   map[string]string
	}{
		{"correct", &seqTarget{storeLag: 300 * time.Millisecond}, map[string]string{"RETRY-HTTP-001": "", "RETRY-HTTP-002": ""}},
		{"duplicate accepted by the decider", &seqTarget{lateBy: 1500 * time.Millisecond, dupDecided: true}, map[string]string{
			"RETRY-HTTP-001": "step 3: snapshot.events = 2, want 1", "RETRY-HTTP-002": ""}},
		{"duplicate written by the store", &seqTarget{lateBy: 1500 * time.Millisecond, dupStored: true}, map[string]string{
			"RETRY-HTTP-001": "seq 2 holds another record than the sentinel", "RETRY-HTTP-002": ""}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			url := newSeqTarget(t, tc.target)
			rep, err := conformance.Run(context.Background(), []*conformance.Pack{pack}, conformance.Options{Target: url, PollTimeout: 10 * time.Second})
			if err != nil {
				t.Fatal(err)
			}
			for _, c := range rep.Cases {
				t.Logf("%s: %s %s", c.ID, c.Status, c.Message)
				want := tc.want[c.ID]
				switch {
				case want == "" && c.Status != conformance.StatusPass:
					t.Errorf("%s: %s: %s", c.ID, c.Status, c.Message)
				case want != "" && (c.Status != conformance.StatusFail || !strings.Contains(c.Message, want)):
					t.Errorf("%s: %s %q, want a failure saying %q", c.ID, c.Status, c.Message, want)
				}
			}
		})
	}
}
