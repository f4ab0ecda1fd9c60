package projector

import (
	"bytes"
	"context"
	"encoding/base64"
	"encoding/json"
	"fmt"
	"strconv"
	"time"

	"aegis.dev/aegis/decider/session"
	"aegis.dev/aegis/internal/pipeline"
	"aegis.dev/aegis/schemas/canon"
	"aegis.dev/aegis/schemas/chain"
	"aegis.dev/aegis/schemas/envelope"
)

// SessionKey names a session.
type SessionKey struct {
	TenantID  string
	SessionID string
}

// EventRow is one row of audit_events: a sealed record plus the columns
// auditors filter on. Event carries everything the chain hashes, so the
// sealed record is rebuilt from the row alone (docs/store.md).
type EventRow struct {
	Event *envelope.Event
	// Filter columns, derived from Event by NewEventRow. Verification
	// checks that they still agree with Event (ColumnsMatch).
	ToolName       string
	CallID         string
	Outcome        string
	Reason         string
	PolicyRevision string
	// EventDate is the event_date column, YYYY-MM-DD: Date(ts_unix_ms).
	// Auditors select days by it and ClickHouse partitions on it.
	EventDate string
	// Where the record was read from (informational; not part of the
	// row's identity).
	Partition int32
	Offset    int64
	// Invalid is set by stores when the stored columns do not rebuild a
	// record (a decision column that is not a canonical decision); Event
	// then holds what could be read.
	Invalid error
}

// NewEventRow derives the row of a sealed event.
// Day is the event_date the row is written with: EventDate (as NewEventRow
// sets it), or Date(ts_unix_ms) when it is empty or not a date.
func (r *EventRow) Day() time.Time {
	if d, err := time.Parse(time.DateOnly, r.EventDate); err == nil {
		return d
	}
	return Date(r.Event.TsUnixMs)
}

func NewEventRow(ev *envelope.Event, partition int32, offset int64) EventRow {
	r := EventRow{Event: ev, Partition: partition, Offset: offset, EventDate: Date(ev.TsUnixMs).Format(time.DateOnly)}
	r.ToolName, r.CallID, r.Outcome, r.Reason, r.PolicyRevision = filterColumns(ev)
	return r
}

func filterColumns(ev *envelope.Event) (tool, callID, outcome, reason, revision string) {
	var p struct {
		ToolName json.RawMessage `json:"tool_name"`
		CallID   json.RawMessage `json:"call_id"`
	}
	var vals [2][]byte
	if envelope.FlatMembers(ev.Payload, toolFieldNames, vals[:]) {
		p.ToolName, p.CallID = vals[0], vals[1]
		tool, callID = jsonString(p.ToolName), jsonString(p.CallID)
	} else if json.Unmarshal(ev.Payload, &p) == nil {
		tool, callID = jsonString(p.ToolName), jsonString(p.CallID)
	}
	if d := ev.Decision; d != nil {
		outcome, reason, revision = string(d.Outcome), d.Reason, d.PolicyRevision
	}
	return tool, callID, outcome, reason, revision
}

var toolFieldNames = []string{"tool_name", "call_id"}

// jsonString returns the value of a JSON string, or "" for anything else:
// free-form payloads may carry a non-string tool_name.
func jsonString(raw json.RawMessage) string {
	if s, ok := envelope.FlatString(raw); ok {
		return s
	}
	var s string
	if len(raw) == 0 || raw[0] != '"' || json.Unmarshal(raw, &s) != nil {
		return ""
	}
	return s
}

var headNames = []string{"tenant_id", "session_id", "seq", "hash"}

// decodeHead reads the chain head from a record of the chain-heads topic
// (the sealer's state record: the head and its sequence window) exactly as
// json.Unmarshal into a chain.Head would, without reflection when the
// record allows (envelope.FlatMembers).
func decodeHead(data []byte) (chain.Head, error) {
	var vals [4][]byte
	if envelope.FlatMembers(data, headNames, vals[:]) {
		var h chain.Head
		ok := true
		for i, dst := range [...]*string{&h.TenantID, &h.SessionID, nil, &h.Hash} {
			if vals[i] == nil || dst == nil {
				continue
			}
			*dst, ok = envelope.FlatString(vals[i])
			if !ok {
				break
			}
		}
		if ok && vals[2] != nil {
			var err error
			h.Seq, err = strconv.ParseUint(string(vals[2]), 10, 64)
			ok = err == nil
		}
		if ok {
			return h, nil
		}
	}
	var h chain.Head
	err := json.Unmarshal(data, &h)
	return h, err
}

// ColumnsMatch reports whether the columns auditors read agree with the
// event, and names the first that does not: the filter columns, and the
// payload, which must be stored as its canonical bytes (the hash covers the
// canonical form, so a payload rewritten with other escapes would hash the
// same while a text search no longer finds what it holds).
func (r *EventRow) ColumnsMatch() (string, bool) {
	if c, err := canon.Append(nil, r.Event.Payload); err != nil || !bytes.Equal(c, r.Event.Payload) {
		return "payload", false
	}
	tool, callID, outcome, reason, revision := filterColumns(r.Event)
	for _, c := range [...]struct{ name, got, want string }{
		{"tool_name", r.ToolName, tool},
		{"call_id", r.CallID, callID},
		{"outcome", r.Outcome, outcome},
		{"reason", r.Reason, reason},
		{"policy_revision", r.PolicyRevision, revision},
		{"event_date", r.EventDate, Date(r.Event.TsUnixMs).Format(time.DateOnly)},
	} {
		if c.got != c.want {
			return c.name, false
		}
	}
	return "", true
}

// DecisionJSON returns the decision column: the RFC 8785 canonical JSON of
// the event's decision, or "" when it has none.
func DecisionJSON(ev *envelope.Event) (string, error) {
	if ev.Decision == nil {
		return "", nil
	}
	raw, err := json.Marshal(ev.Decision)
	if err == nil {
		raw, err = canon.Append(nil, raw)
	}
	if err != nil {
		return "", fmt.Errorf("projector: decision of %s/%s/%d: %w", ev.TenantID, ev.SessionID, ev.Seq, err)
	}
	return string(raw), nil
}

// ParseDecision is the inverse of DecisionJSON, for stores rebuilding a
// record: "" is no decision. It fails if s is not exactly the canonical
// JSON of a decision (an edited or extended decision column).
func ParseDecision(s string) (*envelope.Decision, error) {
	if s == "" {
		return nil, nil
	}
	// Unknown members need no strict decoder: re-encoding drops them, and
	// the comparison below fails.
	var d envelope.Decision
	if err := json.Unmarshal([]byte(s), &d); err != nil {
		return nil, fmt.Errorf("decision column: %w", err)
	}
	back, err := DecisionJSON(&envelope.Event{Type: envelope.ToolCallProposed, Decision: &d})
	if err != nil {
		return nil, err
	}
	if back != s {
		return nil, fmt.Errorf("decision column is not canonical JSON of a decision")
	}
	return &d, nil
}

// StoredEvent holds the audit_events columns a sealed record is rebuilt
// from, as stores read them.
type StoredEvent struct {
	V                   int
	TenantID, SessionID string
	Seq                 uint64
	TsUnixMs            int64
	EventType           string
	Manifest            string
	Payload             string
	Decision            string
	PrevHash, Hash      string
	ToolName, CallID    string
	Outcome, Reason     string
	PolicyRevision      string
	Partition           int32
	Offset              int64
	EventDate           string // YYYY-MM-DD
}

// Row rebuilds the sealed record of a stored row exactly as the sealer
// hashed it (docs/chain.md): empty optional members stay absent. A decision
// column that does not parse back to the same canonical JSON sets Invalid.
func (s *StoredEvent) Row() *EventRow {
	ev := &envelope.Event{V: s.V, TenantID: s.TenantID, SessionID: s.SessionID, Seq: s.Seq, TsUnixMs: s.TsUnixMs,
		Type: envelope.Type(s.EventType), Manifest: s.Manifest, Payload: []byte(s.Payload), PrevHash: s.PrevHash, Hash: s.Hash}
	r := &EventRow{Event: ev, ToolName: s.ToolName, CallID: s.CallID, Outcome: s.Outcome, Reason: s.Reason,
		PolicyRevision: s.PolicyRevision, Partition: s.Partition, Offset: s.Offset, EventDate: s.EventDate}
	ev.Decision, r.Invalid = ParseDecision(s.Decision)
	return r
}

// DecisionRow is one row of the decisions table.
type DecisionRow struct {
	TenantID, SessionID string
	Seq                 uint64
	TsUnixMs            int64
	Manifest            string
	ToolName, CallID    string
	envelope.Decision
	// Tainted is the session's taint state before the proposal.
	Tainted bool
	Hash    string
}

// DecisionRowOf returns the decisions row of ev, a sealed record applied
// next to sn (the session's state before it), and whether ev has one: a
// decided TOOL_CALL_PROPOSED. The projector writes exactly these rows, and
// verify recomputes them to check the table.
func DecisionRowOf(sn *session.Snapshot, ev *envelope.Event) (DecisionRow, bool) {
	if ev.Decision == nil || ev.Type != envelope.ToolCallProposed {
		return DecisionRow{}, false
	}
	manifest := sn.Manifest // the manifest the session runs under: named by its first event
	if sn.LastSeq == 0 {
		manifest = ev.Manifest
	}
	tc, _ := ev.ToolCall()
	return DecisionRow{TenantID: ev.TenantID, SessionID: ev.SessionID, Seq: ev.Seq, TsUnixMs: ev.TsUnixMs, Manifest: manifest,
		ToolName: tc.ToolName, CallID: tc.CallID, Decision: *ev.Decision, Tainted: sn.Tainted, Hash: ev.Hash}, true
}

// Diff names the first column in which the decisions rows r and o differ
// (with r's and o's values), or ok when they are the same row.
func (r *DecisionRow) Diff(o *DecisionRow) (column, mine, theirs string, ok bool) {
	if *r == *o {
		return "", "", "", true
	}
	u, i, b := strconv.FormatUint, strconv.FormatInt, strconv.FormatBool
	if column, mine, theirs, ok := firstDiff(
		columnPair{"tenant_id", r.TenantID, o.TenantID},
		columnPair{"session_id", r.SessionID, o.SessionID},
		columnPair{"seq", u(r.Seq, 10), u(o.Seq, 10)},
		columnPair{"ts_unix_ms", i(r.TsUnixMs, 10), i(o.TsUnixMs, 10)},
		columnPair{"manifest", r.Manifest, o.Manifest},
		columnPair{"tool_name", r.ToolName, o.ToolName},
		columnPair{"call_id", r.CallID, o.CallID},
		columnPair{"outcome", string(r.Outcome), string(o.Outcome)},
		columnPair{"reason", r.Reason, o.Reason},
		columnPair{"policy_revision", r.PolicyRevision, o.PolicyRevision},
		columnPair{"manifest_digest", r.ManifestDigest, o.ManifestDigest},
		columnPair{"input_digest", r.InputDigest, o.InputDigest},
		columnPair{"max_output_bytes", fmt.Sprint(r.Constraints.MaxOutputBytes), fmt.Sprint(o.Constraints.MaxOutputBytes)},
		columnPair{"timeout_ms", fmt.Sprint(r.Constraints.TimeoutMs), fmt.Sprint(o.Constraints.TimeoutMs)},
		columnPair{"tainted", b(r.Tainted), b(o.Tainted)},
		columnPair{"hash", r.Hash, o.Hash},
	); !ok {
		return column, mine, theirs, false
	}
	return "decision", fmt.Sprintf("%+v", r.Decision), fmt.Sprintf("%+v", o.Decision), false
}

// StoredDecision is a decisions row as a store reads it: the row, and its
// event_date ("YYYY-MM-DD").
type StoredDecision struct {
	DecisionRow
	EventDate string
	// Invalid names a column whose stored value is not of its type
	// (SQLite keeps such an edit); the row then matches no record.
	Invalid string
}

// AppendDigest appends the row's stored columns to b in a fixed framing
// (each value length-prefixed), with eventDate as its event_date: equal
// columns give equal bytes.
func (d *DecisionRow) AppendDigest(b []byte, eventDate string) []byte {
	for _, s := range [...]string{d.TenantID, d.SessionID, strconv.FormatUint(d.Seq, 10), strconv.FormatInt(d.TsUnixMs, 10), eventDate,
		d.Manifest, d.ToolName, d.CallID, string(d.Outcome), d.Reason, strconv.FormatInt(d.Constraints.MaxOutputBytes, 10),
		strconv.FormatInt(d.Constraints.TimeoutMs, 10), d.PolicyRevision, d.ManifestDigest, d.InputDigest,
		strconv.FormatBool(d.Tainted), d.Hash} {
		b = strconv.AppendInt(b, int64(len(s)), 10)
		b = append(b, ':')
		b = append(b, s...)
	}
	return b
}

// DecisionReader reads the decisions table.
type DecisionReader interface {
	// Decisions passes the decisions rows selected by f to fn, ordered
	// by tenant, session and seq.
	Decisions(ctx context.Context, f Filter, fn func(*StoredDecision) error) error
}

// SnapshotRow is one row of session_snapshots: a session's state after its
// last projected event, as the columns both stores write. NewSnapshotRow
// derives it; the projector writes exactly these rows, and verify derives
// them again from the verified records to check the table.
type SnapshotRow struct {
	TenantID, SessionID string
	LastSeq             uint64
	FirstTsUnixMs       int64
	LastTsUnixMs        int64
	// FirstEventDate is the first_event_date column, YYYY-MM-DD:
	// Date(first_ts_unix_ms). ClickHouse partitions the table on it.
	FirstEventDate string
	Manifest       string
	Events         int64
	Steps          int64
	ModelCalls     int64
	ToolCalls      int64
	Tainted        bool
	LoopDetected   bool
	Terminated     bool
	// PendingApprovals counts the snapshot's approvals still pending.
	PendingApprovals uint32
	HandoffState     string
	// JSON is the snapshot column, the snapshot's canonical JSON, and
	// Hash the snapshot_hash column, its "sha256:" digest (the one the
	// decider computes).
	JSON string
	Hash string
}

// NewSnapshotRow derives the session_snapshots row of s.
func NewSnapshotRow(s *session.Snapshot) (SnapshotRow, error) {
	b, err := s.Canonical()
	if err != nil {
		return SnapshotRow{}, fmt.Errorf("projector: snapshot of %s/%s: %w", s.TenantID, s.SessionID, err)
	}
	var pending uint32
	for _, a := range s.Approvals {
		if a.State == session.ApprovalPending {
			pending++
		}
	}
	return SnapshotRow{TenantID: s.TenantID, SessionID: s.SessionID, LastSeq: s.LastSeq, FirstTsUnixMs: s.FirstTsMs,
		LastTsUnixMs: s.LastTsMs, FirstEventDate: Date(s.FirstTsMs).Format(time.DateOnly), Manifest: s.Manifest,
		Events: s.Events, Steps: s.Steps, ModelCalls: s.ModelCalls, ToolCalls: s.ToolCalls, Tainted: s.Tainted,
		LoopDetected: s.Loop.Detected, Terminated: s.Terminated, PendingApprovals: pending, HandoffState: s.Handoff.State,
		JSON: string(b), Hash: session.HashCanonical(b)}, nil
}

// Day is the first_event_date the row is written with: FirstEventDate (as
// NewSnapshotRow sets it), or Date(first_ts_unix_ms) when it is empty or
// not a date.
func (r *SnapshotRow) Day() time.Time {
	if d, err := time.Parse(time.DateOnly, r.FirstEventDate); err == nil {
		return d
	}
	return Date(r.FirstTsUnixMs)
}

// Diff compares r with o column by column, the snapshot column (JSON)
// excepted, and names the first that differs with both values; ok is
// true when every one is equal.
func (r *SnapshotRow) Diff(o *SnapshotRow) (column, mine, theirs string, ok bool) {
	x, y := *r, *o
	x.JSON, y.JSON = "", ""
	if x == y {
		return "", "", "", true
	}
	u, i, b := strconv.FormatUint, strconv.FormatInt, strconv.FormatBool
	return firstDiff(
		columnPair{"tenant_id", r.TenantID, o.TenantID},
		columnPair{"session_id", r.SessionID, o.SessionID},
		columnPair{"last_seq", u(r.LastSeq, 10), u(o.LastSeq, 10)},
		columnPair{"first_ts_unix_ms", i(r.FirstTsUnixMs, 10), i(o.FirstTsUnixMs, 10)},
		columnPair{"last_ts_unix_ms", i(r.LastTsUnixMs, 10), i(o.LastTsUnixMs, 10)},
		columnPair{"first_event_date", r.FirstEventDate, o.FirstEventDate},
		columnPair{"manifest", r.Manifest, o.Manifest},
		columnPair{"events", i(r.Events, 10), i(o.Events, 10)},
		columnPair{"steps", i(r.Steps, 10), i(o.Steps, 10)},
		columnPair{"model_calls", i(r.ModelCalls, 10), i(o.ModelCalls, 10)},
		columnPair{"tool_calls", i(r.ToolCalls, 10), i(o.ToolCalls, 10)},
		columnPair{"tainted", b(r.Tainted), b(o.Tainted)},
		columnPair{"loop_detected", b(r.LoopDetected), b(o.LoopDetected)},
		columnPair{"terminated", b(r.Terminated), b(o.Terminated)},
		columnPair{"pending_approvals", u(uint64(r.PendingApprovals), 10), u(uint64(o.PendingApprovals), 10)},
		columnPair{"handoff_state", r.HandoffState, o.HandoffState},
		columnPair{"snapshot_hash", r.Hash, o.Hash},
	)
}

// columnPair is one column of two rows, its values written as text.
type columnPair struct{ name, mine, theirs string }

// firstDiff names the first of cols whose two values differ; ok when none
// does.
func firstDiff(cols ...columnPair) (column, mine, theirs string, ok bool) {
	for _, c := range cols {
		if c.mine != c.theirs {
			return c.name, c.mine, c.theirs, false
		}
	}
	return "", "", "", true
}

// StoredSnapshot is a session_snapshots row as a store reads it.
type StoredSnapshot struct {
	SnapshotRow
	// Invalid names a column whose stored value is not of its type
	// (SQLite keeps such an edit); the row then matches no session.
	Invalid string
}

// SnapshotReader reads the session_snapshots table.
type SnapshotReader interface {
	// Snapshots passes the session_snapshots rows of the sessions
	// selected by f (f.AfterSeq aside: a row is a whole session's) to
	// fn, ordered by tenant and session: each session's row with the
	// highest last_seq, the one a query with FINAL or argMax reads. A
	// store that keeps copies until a merge passes every copy of that
	// version as stored, so that a different one with the same version
	// (a forgery) is seen; older versions are not passed.
	Snapshots(ctx context.Context, f Filter, fn func(*StoredSnapshot) error) error
}

// RejectedRow is one row of rejected_records.
type RejectedRow struct {
	pipeline.Rejection
	// RejectedUnixMs is the Kafka timestamp of the rejection record.
	RejectedUnixMs int64
}

// SameRow reports whether two rows hold the same record and columns.
func SameRow(a, b *EventRow) bool {
	x, y := a.Event, b.Event
	if x.V != y.V || x.TsUnixMs != y.TsUnixMs || x.Type != y.Type || x.Manifest != y.Manifest ||
		string(x.Payload) != string(y.Payload) || x.PrevHash != y.PrevHash || x.Hash != y.Hash ||
		a.ToolName != b.ToolName || a.CallID != b.CallID || a.Outcome != b.Outcome || a.Reason != b.Reason ||
		a.PolicyRevision != b.PolicyRevision || a.EventDate != b.EventDate || (a.Invalid == nil) != (b.Invalid == nil) {
		return false
	}
	if (x.Decision == nil) != (y.Decision == nil) {
		return false
	}
	return x.Decision == nil || *x.Decision == *y.Decision
}

// LastDate is the latest event_date: the last day every supported
// ClickHouse version stores and shows as a Date (18.16 shows days after it
// as 0000-00-00; current versions stop at 2149-06-06). Both stores cap at
// it so that they hold the same rows.
var LastDate = time.Date(2105, time.December, 31, 0, 0, 0, 0, time.UTC)

// Date returns the UTC calendar day of a millisecond timestamp, the
// event_date column (and what tables are partitioned by), at most
// LastDate: ts_unix_ms is the client's, any positive integer up to 2^53-1
// (year 287396), and keeps the exact time in its own column. A time
// before 1970 (a rejection's Kafka record without a timestamp, -1) is the
// first day a ClickHouse Date holds, 1970-01-01; ClickHouse would wrap
// an earlier day to 2149-06-06.
func Date(unixMs int64) time.Time {
	if unixMs >= LastDate.UnixMilli() {
		return LastDate
	}
	if unixMs < 0 {
		return time.Date(1970, time.January, 1, 0, 0, 0, 0, time.UTC)
	}
	t := time.UnixMilli(unixMs).UTC()
	return time.Date(t.Year(), t.Month(), t.Day(), 0, 0, 0, 0, time.UTC)
}

// Batch is one store write: rows of every table, produced from a run of
// consumed records. Stores write it idempotently (Store.Write).
type Batch struct {
	Events    []EventRow
	Decisions []DecisionRow
	Snapshots []SnapshotRow
	Rejected  []RejectedRow
	Heads     []chain.Head
}

// Len is the number of rows in b.
func (b *Batch) Len() int {
	return len(b.Events) + len(b.Decisions) + len(b.Snapshots) + len(b.Rejected) + len(b.Heads)
}

// Base64 is the original_base64 column: standard base64, "" for none.
func Base64(b []byte) string {
	if len(b) == 0 {
		return ""
	}
	return base64.StdEncoding.EncodeToString(b)
}
