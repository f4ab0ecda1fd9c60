package projector

import (
	"strconv"
	"strings"
)

// EventColumns is the column list, in order, of the audit_events rows both
// stores read back into StoredEvent; each store appends event_date as a
// YYYY-MM-DD string (a Date in ClickHouse, text in SQLite).
const EventColumns = `v, tenant_id, session_id, seq, ts_unix_ms, event_type, manifest, payload,
	decision, prev_hash, hash, tool_name, call_id, outcome, reason, policy_revision, kafka_partition, kafka_offset`

// DecisionColumns is the column list, in order, of the decisions rows both
// stores write and read back into StoredDecision.
const DecisionColumns = `tenant_id, session_id, seq, ts_unix_ms, event_date, manifest, tool_name, call_id,
	outcome, reason, max_output_bytes, timeout_ms, policy_revision, manifest_digest, input_digest, tainted, hash`

// SnapshotColumns is the column list, in order, of the session_snapshots
// rows both stores write and read back into StoredSnapshot.
const SnapshotColumns = `tenant_id, session_id, last_seq, first_ts_unix_ms, last_ts_unix_ms, first_event_date, manifest,
	events, steps, model_calls, tool_calls, tainted, loop_detected, terminated, pending_approvals, handoff_state,
	snapshot, snapshot_hash`

// Where builds the WHERE clause (with a leading space, or empty) and its
// arguments that select f over tables with tenant_id and session_id
// columns, with ? placeholders. tuples turns the "(?, ?), …" list of
// f.Sessions into the operand of IN: ClickHouse takes the list as it is,
// SQLite needs it as a VALUES list. f.Limit is not part of it
// (LimitClause).
func (f Filter) Where(tuples func(list string) string) (string, []any) {
	var conds []string
	var args []any
	if f.TenantID != "" {
		conds, args = append(conds, "tenant_id = ?"), append(args, f.TenantID)
	}
	if f.SessionID != "" {
		conds, args = append(conds, "session_id = ?"), append(args, f.SessionID)
	}
	if f.SinceUnixMs > 0 {
		conds = append(conds, "(tenant_id, session_id) IN (SELECT tenant_id, session_id FROM audit_events WHERE ts_unix_ms >= ?)")
		args = append(args, f.SinceUnixMs)
	}
	if f.AfterSeq > 0 {
		conds, args = append(conds, "seq > ?"), append(args, f.AfterSeq)
	}
	if len(f.Sessions) > 0 {
		vals := make([]string, len(f.Sessions))
		for i, k := range f.Sessions {
			vals[i] = "(?, ?)"
			args = append(args, k.TenantID, k.SessionID)
		}
		conds = append(conds, "(tenant_id, session_id) IN ("+tuples(strings.Join(vals, ", "))+")")
	}
	if len(conds) == 0 {
		return "", nil
	}
	return " WHERE " + strings.Join(conds, " AND "), args
}

// LimitClause is the " LIMIT n" of f.Limit for an events scan, or "".
func (f Filter) LimitClause() string {
	if f.Limit <= 0 {
		return ""
	}
	return " LIMIT " + strconv.Itoa(f.Limit)
}
