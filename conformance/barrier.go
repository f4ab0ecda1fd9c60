package conformance

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"net/http"
	"net/url"
	"slices"
	"strconv"
	"strings"
	"time"
)

// Barriers make reads of the audit store final: an exact count or an
// absence ("4 events", "valid with 1 event", "tainted: false") must not
// pass in the moment before a wrongly added record is stored. A check
// passes only once the target has demonstrably processed everything the
// case published before it. docs/conformance.md#barriers describes them;
// everything goes over the public HTTP API.
//
// The barrier of a read step, for its session (tenant, session):
//
//  1. A probe: a proposal at seq BarrierSeq, which no session of a run
//     reaches, published through POST /v1/sessions/{session}/proposals.
//     It travels the session's Kafka partition behind every event
//     published to the session before it, by any publisher, and the
//     decider answers it only after them: 409 SEQ_GAP with expected_seq,
//     one past the last seq it accepted for the session. A rejected event
//     changes no state and seals nothing.
//  2. A wait until the audit store holds that last accepted seq: the
//     sealer and the projector keep a session's order, so everything the
//     decider accepted before the probe is then stored.
//  3. The step's read once more: it passes only if its expectation holds
//     on that read. (The step first polls until the expectation holds, as
//     a state may still be on its way and the gateway itself publishes
//     approval expiries.)
//
// The end barrier, after the last step of a case, for every session a
// barrier was passed on (unless the case tampered with the store): a
// sentinel event, accepted this time, at the session's next seq, which
// must come out of the sealer and the projector at exactly that seq,
// chained to the record the last barrier saw when the case wrote nothing
// to the session since; then the session must verify with exactly that many records.
// This catches what the decider never saw: a record that the sealer or
// the store adds on their own after the read steps passed.

// BarrierSeq is the seq of the barrier's probe: the largest seq an event
// may carry (2^53-1), never the next seq of a conformance session.
const BarrierSeq uint64 = 1<<53 - 1

// Barrier events: the probe proposes barrierToolName (the decider rejects
// it on its seq before any policy sees it); the end barrier's sentinel is
// a CHECKPOINT_CREATED whose checkpoint_id starts with BarrierCheckpoint.
const (
	barrierToolName   = "conformance.barrier"
	BarrierCheckpoint = "conformance-barrier-"
)

// sessionKey names a session: the same name in two tenants is two
// sessions.
type sessionKey struct{ tenant, session string }

// barrierMark is what the last barrier of a session saw: the case's write
// generation then, the last stored seq and its record's hash.
type barrierMark struct {
	gen  int
	last uint64
	hash string
	step string
}

// settle passes the barrier of the session (tenant, session) unless it was
// passed after the case's last write step.
func (cr *caseRun) settle(ctx context.Context, tenant, session string) error {
	k := sessionKey{tenant, session}
	if m, ok := cr.marks[k]; ok && m.gen == cr.gen {
		return nil
	}
	return cr.barrier(ctx, k)
}

// settled reports whether the barrier of the session was passed after the
// case's last write step.
func (cr *caseRun) settled(tenant, session string) bool {
	m, ok := cr.marks[sessionKey{tenant, session}]
	return ok && m.gen == cr.gen
}

// settleWritten passes the barrier of every session the case wrote with
// events or propose steps and has not settled since (before a tamper step:
// the statements must find the rows they change, written in full).
func (cr *caseRun) settleWritten(ctx context.Context) error {
	for _, k := range cr.written {
		if err := cr.settle(ctx, k.tenant, k.session); err != nil {
			return err
		}
	}
	return nil
}

// wrote notes that a step publishes events to the session.
func (cr *caseRun) wrote(tenant, session string) {
	cr.gen++
	k := sessionKey{tenant, session}
	cr.wroteAt[k] = cr.gen
	for _, w := range cr.written {
		if w == k {
			return
		}
	}
	cr.written = append(cr.written, k)
}

// httpWrites returns the sessions an http step's request names as those it
// writes: the path's session of a proposal (in the tenant of ?tenant_id=,
// or the step's), the tenant_id and session_id of each event of a JSON
// body of POST /v1/events (the step's tenant when it names none). A
// request that names none, or that the target refuses, may still write:
// the step counts as a write of any session too (wroteAny).
func httpWrites(path, tenant string, body []byte) []sessionKey {
	u, err := url.Parse(path)
	if err != nil {
		return nil
	}
	if t := u.Query().Get("tenant_id"); t != "" {
		tenant = t
	}
	if rest, ok := strings.CutPrefix(u.Path, "/v1/sessions/"); ok {
		if s, ok := strings.CutSuffix(rest, "/proposals"); ok && s != "" && !strings.Contains(s, "/") {
			return []sessionKey{{tenant, s}}
		}
		return nil
	}
	if u.Path != "/v1/events" {
		return nil
	}
	var evs []map[string]any
	if json.Unmarshal(body, &evs) != nil {
		var ev map[string]any
		if json.Unmarshal(body, &ev) != nil {
			return nil
		}
		evs = []map[string]any{ev}
	}
	var keys []sessionKey
	for _, ev := range evs {
		s, _ := ev["session_id"].(string)
		t, ok := ev["tenant_id"].(string)
		if !ok {
			t = tenant
		}
		if s != "" && t != "" && !slices.Contains(keys, sessionKey{t, s}) {
			keys = append(keys, sessionKey{t, s})
		}
	}
	return keys
}

// wroteAny notes a step that may write any session (approve, http).
func (cr *caseRun) wroteAny() {
	cr.gen++
	cr.anyAt = cr.gen
}

// quiet reports whether no step of the case may have written the session
// since its barrier m: no events or propose step of the session, no step
// that may write any session. Steps that wrote other sessions only do not
// count.
func (cr *caseRun) quiet(k sessionKey, m barrierMark) bool {
	return cr.wroteAt[k] <= m.gen && cr.anyAt <= m.gen
}

// asBarrier runs fn with the step named "<step> (barrier)" in the
// evidence, and with credentials even on a no_auth step.
func (cr *caseRun) asBarrier(fn func() error) error {
	where, noAuth := cr.where, cr.noAuth
	cr.where, cr.noAuth = where+" (barrier)", false
	defer func() { cr.where, cr.noAuth = where, noAuth }()
	return fn()
}

// barrier runs the probe and the store wait for one session and marks it.
func (cr *caseRun) barrier(ctx context.Context, k sessionKey) error {
	return cr.asBarrier(func() error {
		expected, err := cr.probe(ctx, k)
		if err != nil {
			return fmt.Errorf("barrier on %s/%s: %w", k.tenant, k.session, err)
		}
		m := barrierMark{gen: cr.gen, last: expected - 1, step: cr.where}
		if m.last > 0 {
			rec, err := cr.stored(ctx, k, m.last)
			if err != nil {
				return fmt.Errorf("barrier on %s/%s: the decider accepted seqs up to %d, but the audit store does not hold seq %d: %w", k.tenant, k.session, m.last, m.last, err)
			}
			m.hash, _ = rec["hash"].(string)
		}
		if _, ok := cr.marks[k]; !ok {
			cr.marked = append(cr.marked, k)
		}
		cr.marks[k] = m
		return nil
	})
}

// stored polls the session's sealed records until the store holds seq and
// returns that record.
func (cr *caseRun) stored(ctx context.Context, k sessionKey, seq uint64) (map[string]any, error) {
	p := "/v1/sessions/" + url.PathEscape(k.session) + "/events?tenant_id=" + url.QueryEscape(k.tenant) +
		"&limit=1&after_seq=" + strconv.FormatUint(seq-1, 10)
	resp, err := cr.poll(ctx, http.MethodGet, p, k.tenant, Expect{Fields: map[string]any{"events.0.seq": float64(seq)}})
	if err != nil {
		return nil, err
	}
	rec, _ := lookup(resp.json, "events.0")
	m, _ := rec.(map[string]any)
	return m, nil
}

// probe publishes the barrier's proposal and returns the expected_seq of
// its SEQ_GAP rejection. A gateway timeout (504: the proposal is recorded
// and will be rejected later) or a busy gateway (503, 429) is tried again
// until the poll timeout passes.
func (cr *caseRun) probe(ctx context.Context, k sessionKey) (uint64, error) {
	cr.barriers++
	body, err := json.Marshal(map[string]any{
		"tenant_id": k.tenant, "session_id": k.session, "seq": BarrierSeq, "ts_unix_ms": int64(1767225600000),
		"event_type": "TOOL_CALL_PROPOSED",
		"payload":    map[string]any{"tool_name": barrierToolName, "call_id": cr.barrierID(), "args": map[string]any{}},
	})
	if err != nil {
		return 0, err
	}
	wait := min(cr.r.opts.PollTimeout, 60*time.Second)
	p := "/v1/sessions/" + url.PathEscape(k.session) + "/proposals?tenant_id=" + url.QueryEscape(k.tenant) +
		"&timeout_ms=" + strconv.FormatInt(max(wait.Milliseconds(), 1), 10)
	deadline := time.Now().Add(cr.r.opts.PollTimeout)
	for {
		resp, err := cr.do(ctx, http.MethodPost, p, k.tenant, "application/json", body)
		if err != nil {
			return 0, err
		}
		switch resp.status {
		case http.StatusGatewayTimeout, http.StatusServiceUnavailable, http.StatusTooManyRequests:
			if time.Now().After(deadline) {
				return 0, fmt.Errorf("the probe at seq %d was not answered: status %d: %s", BarrierSeq, resp.status, abbreviate(resp.body))
			}
			select {
			case <-ctx.Done():
				return 0, ctx.Err()
			case <-time.After(150 * time.Millisecond):
			}
			continue
		}
		code, _ := lookup(resp.json, "error.code")
		exp, _ := lookup(resp.json, "error.expected_seq")
		n, ok := exp.(float64)
		if resp.status != http.StatusConflict || code != "SEQ_GAP" || !ok || n < 1 || n != float64(uint64(n)) || uint64(n) >= BarrierSeq {
			return 0, fmt.Errorf("the probe at seq %d was answered %d, want 409 SEQ_GAP with the session's expected_seq: %s", BarrierSeq, resp.status, abbreviate(resp.body))
		}
		return uint64(n), nil
	}
}

func (cr *caseRun) barrierID() string {
	return BarrierCheckpoint + cr.r.opts.RunID + "-" + strconv.Itoa(cr.barriers)
}

// endBarrier runs the end barrier on every marked session; a case with
// tamper steps has none (its store was edited on purpose). The sentinels
// of all sessions are published before any is waited for.
func (cr *caseRun) endBarrier(ctx context.Context) error {
	for _, s := range cr.c.Scenario.Steps {
		if s.Tamper != nil {
			return nil
		}
	}
	cr.where = "end"
	return cr.asBarrier(func() error {
		sentinels := make([]sentinel, 0, len(cr.marked))
		for _, k := range cr.marked {
			s, err := cr.publishSentinel(ctx, k, cr.marks[k])
			if err != nil {
				return fmt.Errorf("barrier on %s/%s: %w", k.tenant, k.session, err)
			}
			sentinels = append(sentinels, s)
		}
		for _, s := range sentinels {
			if err := cr.checkSentinel(ctx, s); err != nil {
				return fmt.Errorf("barrier on %s/%s: %w", s.k.tenant, s.k.session, err)
			}
		}
		return nil
	})
}

// sentinel is the end barrier's event in one session.
type sentinel struct {
	k     sessionKey
	m     barrierMark
	quiet bool // the case wrote nothing to the session after its last barrier (cr.quiet)
	seq   uint64
	id    string
}

// publishSentinel publishes the end barrier's event at the session's next
// seq, as the decider answers the probe.
func (cr *caseRun) publishSentinel(ctx context.Context, k sessionKey, m barrierMark) (sentinel, error) {
	next, err := cr.probe(ctx, k)
	if err != nil {
		return sentinel{}, err
	}
	s := sentinel{k: k, m: m, quiet: cr.quiet(k, m), seq: next, id: cr.barrierID()}
	if s.quiet && next != m.last+1 {
		return s, fmt.Errorf("the decider accepted seqs %d..%d after %s, and the case wrote nothing to the session since", m.last+1, next-1, m.step)
	}
	body, err := json.Marshal([]map[string]any{{
		"tenant_id": k.tenant, "session_id": k.session, "seq": next, "ts_unix_ms": int64(1767225600000),
		"event_type": "CHECKPOINT_CREATED", "payload": map[string]any{"checkpoint_id": s.id},
	}})
	if err != nil {
		return s, err
	}
	resp, err := cr.do(ctx, http.MethodPost, "/v1/events", k.tenant, "application/json", body)
	if err != nil {
		return s, err
	}
	if err := check(Expect{}, http.StatusAccepted, resp); err != nil {
		return s, fmt.Errorf("sentinel at seq %d: %w", next, err)
	}
	return s, nil
}

// checkSentinel waits for the sentinel in the store and checks that it is
// stored at its seq, chained to the record the last barrier saw (when the
// case wrote nothing to the session since), and that the session then verifies with
// exactly that many records (which a record before the sentinel cannot
// change any more).
func (cr *caseRun) checkSentinel(ctx context.Context, s sentinel) error {
	rec, err := cr.stored(ctx, s.k, s.seq)
	if err != nil {
		return fmt.Errorf("the sentinel published at seq %d is not stored there: %w", s.seq, err)
	}
	if got, _ := lookup(rec, "payload.checkpoint_id"); got != s.id {
		return fmt.Errorf("seq %d holds another record than the sentinel published there: %s", s.seq, abbreviate([]byte(mustJSON(rec))))
	}
	if prev, _ := rec["prev_hash"].(string); s.quiet && s.m.last > 0 && prev != s.m.hash {
		return fmt.Errorf("the sentinel at seq %d is chained to %s, not to seq %d as %s read it (%s)", s.seq, prev, s.m.last, s.m.step, s.m.hash)
	}
	// Polled: chain heads reach the store on their own topic, so a store
	// that has just written the sentinel may still hold the head before it
	// (HEAD_MISMATCH) or, the other way round, the head before the record.
	p := "/v1/sessions/" + url.PathEscape(s.k.session) + "/verify?tenant_id=" + url.QueryEscape(s.k.tenant)
	if _, err := cr.poll(ctx, http.MethodGet, p, s.k.tenant, Expect{Fields: map[string]any{"valid": true, "events": float64(s.seq)}}); err != nil {
		return errors.New("after the sentinel: " + err.Error())
	}
	return nil
}
