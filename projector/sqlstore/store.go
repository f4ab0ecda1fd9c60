// Package sqlstore is the embedded audit store: pure-Go SQLite
// (modernc.org/sqlite), the only package that imports it. It holds the same
// logical tables as the ClickHouse store (schemas/sqlite, docs/store.md) and
// is what the embedded aegisd writes by default.
//
// Deduplication is on write: every table's primary key is the row's
// identity, events, decisions and rejections are inserted with ON CONFLICT
// DO NOTHING, and snapshots and heads are replaced only by a later seq. A
// Batch is written in one transaction.
package sqlstore

import (
	"context"
	"database/sql"
	"errors"
	"fmt"
	"net/url"
	"os"
	"time"

	"modernc.org/sqlite" // also registers the "sqlite" database/sql driver
	sqlite3 "modernc.org/sqlite/lib"

	"aegis.dev/aegis/projector"
	"aegis.dev/aegis/schemas/chain"
	"aegis.dev/aegis/schemas/envelope"
	sqlschema "aegis.dev/aegis/schemas/sqlite"
)

var (
	_ projector.Store          = (*Store)(nil)
	_ projector.HeadReader     = (*Store)(nil)
	_ projector.Querier        = (*Store)(nil)
	_ projector.DecisionReader = (*Store)(nil)
	_ projector.SnapshotReader = (*Store)(nil)
)

// Store is a SQLite audit store. It is safe for concurrent use; writes are
// serialized by SQLite.
type Store struct {
	db *sql.DB
	// ro serves Query: connections opened read-only at the file level,
	// which no statement can turn writable (PRAGMA query_only can be
	// switched off by the statement it is meant to contain).
	ro *sql.DB
}

// Open opens (creating if needed) the database file at path and applies
// the pending migrations of schemas/sqlite.
func Open(ctx context.Context, path string) (*Store, error) {
	if path == "" {
		return nil, fmt.Errorf("sqlstore: empty path: %w", projector.ErrStore)
	}
	// synchronous(FULL): the projector commits a batch's offsets once
	// Write returns, so the batch must be on disk by then; in WAL mode
	// NORMAL syncs only at checkpoints, and a power loss could roll back
	// batches whose offsets were committed. FULL costs one sync per batch.
	dsn := "file:" + (&url.URL{Path: path}).EscapedPath() +
		"?_pragma=busy_timeout(10000)&_pragma=journal_mode(WAL)&_pragma=synchronous(FULL)&_pragma=foreign_keys(1)"
	db, err := sql.Open("sqlite", dsn)
	if err != nil {
		return nil, fmt.Errorf("sqlstore: open %s: %w: %w", path, projector.ErrStore, err)
	}
	s := &Store{db: db}
	if err := s.migrate(ctx); err != nil {
		_ = db.Close()
		return nil, err
	}
	ro, err := sql.Open("sqlite", "file:"+(&url.URL{Path: path}).EscapedPath()+"?mode=ro&_pragma=busy_timeout(10000)&_pragma=query_only(1)")
	if err != nil {
		_ = db.Close()
		return nil, fmt.Errorf("sqlstore: open %s read-only: %w: %w", path, projector.ErrStore, err)
	}
	s.ro = ro
	return s, nil
}

// OpenExisting opens the store at path for reading only: the file must
// exist and hold the current schema. Nothing is created, migrated or
// changed, not even the journal mode (readers such as `aegisctl sql`, for
// which a mistyped path must not become a new store, nor a query migrate
// one). Writes through the Store fail.
func OpenExisting(ctx context.Context, path string) (*Store, error) {
	if _, err := os.Stat(path); err != nil {
		return nil, fmt.Errorf("sqlstore: %w: %w", projector.ErrStore, err)
	}
	dsn := "file:" + (&url.URL{Path: path}).EscapedPath() + "?mode=ro&_pragma=busy_timeout(10000)&_pragma=query_only(1)"
	db, err := sql.Open("sqlite", dsn)
	if err != nil {
		return nil, fmt.Errorf("sqlstore: open %s read-only: %w: %w", path, projector.ErrStore, err)
	}
	ro, err := sql.Open("sqlite", dsn)
	if err != nil {
		_ = db.Close()
		return nil, fmt.Errorf("sqlstore: open %s read-only: %w: %w", path, projector.ErrStore, err)
	}
	s := &Store{db: db, ro: ro}
	_, migrations, err := projector.Migrations(sqlschema.Files())
	if err != nil {
		_ = s.Close()
		return nil, err
	}
	have, err := s.SchemaVersion(ctx)
	if err == nil && len(migrations) > 0 && have < migrations[len(migrations)-1].Version {
		err = fmt.Errorf("schema version %d, current is %d", have, migrations[len(migrations)-1].Version)
	}
	if err != nil {
		_ = s.Close()
		return nil, fmt.Errorf("sqlstore: %s does not hold the current audit schema (created and migrated by the projector, not by readers): %w: %w",
			path, projector.ErrStore, err)
	}
	return s, nil
}

// Close closes the database.
func (s *Store) Close() error { return errors.Join(s.ro.Close(), s.db.Close()) }

func wrap(op string, err error) error {
	if err == nil {
		return nil
	}
	if errors.Is(err, context.Canceled) || errors.Is(err, context.DeadlineExceeded) {
		return fmt.Errorf("sqlstore: %s: %w", op, err)
	}
	return fmt.Errorf("sqlstore: %s: %w: %w", op, projector.ErrStore, err)
}

// SchemaVersion returns the highest applied migration.
func (s *Store) SchemaVersion(ctx context.Context) (int, error) {
	var v sql.NullInt64
	err := s.db.QueryRowContext(ctx, "SELECT max(version) FROM schema_version").Scan(&v)
	return int(v.Int64), wrap("schema version", err)
}

func (s *Store) migrate(ctx context.Context) error {
	bootstrap, migrations, err := projector.Migrations(sqlschema.Files())
	if err != nil {
		return err
	}
	for _, stmt := range bootstrap {
		if _, err := s.db.ExecContext(ctx, stmt); err != nil {
			return wrap("migrate: schema_version", err)
		}
	}
	have, err := s.SchemaVersion(ctx)
	if err != nil {
		return err
	}
	for _, m := range migrations {
		if m.Version <= have {
			continue
		}
		tx, err := s.db.BeginTx(ctx, nil)
		if err != nil {
			return wrap("migrate", err)
		}
		for _, stmt := range m.Statements {
			if _, err := tx.ExecContext(ctx, stmt); err != nil {
				_ = tx.Rollback()
				return wrap("migrate: "+m.Name, err)
			}
		}
		if _, err := tx.ExecContext(ctx, "INSERT INTO schema_version (version, name, applied_unix_ms) VALUES (?, ?, ?) ON CONFLICT (version) DO NOTHING",
			m.Version, m.Name, time.Now().UnixMilli()); err != nil {
			_ = tx.Rollback()
			return wrap("migrate: "+m.Name, err)
		}
		if err := tx.Commit(); err != nil {
			return wrap("migrate: "+m.Name, err)
		}
	}
	return nil
}

const (
	insertEvent = `INSERT INTO audit_events (tenant_id, session_id, seq, ts_unix_ms, event_date, v, event_type, manifest,
	tool_name, call_id, outcome, reason, policy_revision, payload, decision, prev_hash, hash, kafka_partition, kafka_offset)
VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?) ON CONFLICT DO NOTHING`
	insertDecision = `INSERT INTO decisions (` + projector.DecisionColumns + `)
VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?) ON CONFLICT DO NOTHING`
	upsertSnapshot = `INSERT INTO session_snapshots (` + projector.SnapshotColumns + `)
VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)
ON CONFLICT (tenant_id, session_id) DO UPDATE SET last_seq = excluded.last_seq,
	first_ts_unix_ms = excluded.first_ts_unix_ms, last_ts_unix_ms = excluded.last_ts_unix_ms,
	first_event_date = excluded.first_event_date, manifest = excluded.manifest, events = excluded.events,
	steps = excluded.steps, model_calls = excluded.model_calls, tool_calls = excluded.tool_calls,
	tainted = excluded.tainted, loop_detected = excluded.loop_detected, terminated = excluded.terminated,
	pending_approvals = excluded.pending_approvals, handoff_state = excluded.handoff_state,
	snapshot = excluded.snapshot, snapshot_hash = excluded.snapshot_hash
WHERE excluded.last_seq > session_snapshots.last_seq`
	insertRejected = `INSERT INTO rejected_records (tenant_id, session_id, seq, event_date, rejected_unix_ms, stage, reason,
	detail, expected_seq, source_topic, source_partition, source_offset, record_key, original, original_base64)
VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?) ON CONFLICT DO NOTHING`
	upsertHead = `INSERT INTO chain_heads (tenant_id, session_id, seq, hash) VALUES (?, ?, ?, ?)
ON CONFLICT (tenant_id, session_id) DO UPDATE SET seq = excluded.seq, hash = excluded.hash
WHERE excluded.seq > chain_heads.seq`
)

func day(unixMs int64) string { return projector.Date(unixMs).Format(time.DateOnly) }

func boolInt(b bool) int {
	if b {
		return 1
	}
	return 0
}

// Write stores b in one transaction (see the package doc for why it is
// idempotent).
func (s *Store) Write(ctx context.Context, b *projector.Batch) error {
	tx, err := s.db.BeginTx(ctx, nil)
	if err != nil {
		return wrap("write", err)
	}
	if err := write(ctx, tx, b); err != nil {
		_ = tx.Rollback()
		return err
	}
	return wrap("write: commit", tx.Commit())
}

func write(ctx context.Context, tx *sql.Tx, b *projector.Batch) error {
	each := func(table, query string, n int, args func(i int) ([]any, error)) error {
		if n == 0 {
			return nil
		}
		st, err := tx.PrepareContext(ctx, query)
		if err != nil {
			return wrap("write "+table, err)
		}
		defer func() { _ = st.Close() }()
		for i := range n {
			a, err := args(i)
			if err != nil {
				return err
			}
			if _, err := st.ExecContext(ctx, a...); err != nil {
				return wrap("write "+table, err)
			}
		}
		return nil
	}
	err := each("audit_events", insertEvent, len(b.Events), func(i int) ([]any, error) {
		r := &b.Events[i]
		e := r.Event
		dec, err := projector.DecisionJSON(e)
		return []any{e.TenantID, e.SessionID, int64(e.Seq), e.TsUnixMs, r.Day().Format(time.DateOnly), e.V, string(e.Type), e.Manifest,
			r.ToolName, r.CallID, r.Outcome, r.Reason, r.PolicyRevision, string(e.Payload), dec, e.PrevHash, e.Hash,
			r.Partition, r.Offset}, err
	})
	if err != nil {
		return err
	}
	err = each("decisions", insertDecision, len(b.Decisions), func(i int) ([]any, error) {
		d := &b.Decisions[i]
		return []any{d.TenantID, d.SessionID, int64(d.Seq), d.TsUnixMs, day(d.TsUnixMs), d.Manifest, d.ToolName, d.CallID,
			string(d.Outcome), d.Reason, d.Constraints.MaxOutputBytes, d.Constraints.TimeoutMs, d.PolicyRevision,
			d.ManifestDigest, d.InputDigest, boolInt(d.Tainted), d.Hash}, nil
	})
	if err != nil {
		return err
	}
	err = each("session_snapshots", upsertSnapshot, len(b.Snapshots), func(i int) ([]any, error) {
		r := &b.Snapshots[i]
		return []any{r.TenantID, r.SessionID, int64(r.LastSeq), r.FirstTsUnixMs, r.LastTsUnixMs, r.Day().Format(time.DateOnly),
			r.Manifest, r.Events, r.Steps, r.ModelCalls, r.ToolCalls, boolInt(r.Tainted), boolInt(r.LoopDetected),
			boolInt(r.Terminated), r.PendingApprovals, r.HandoffState, r.JSON, r.Hash}, nil
	})
	if err != nil {
		return err
	}
	err = each("rejected_records", insertRejected, len(b.Rejected), func(i int) ([]any, error) {
		r := &b.Rejected[i]
		return []any{r.TenantID, r.SessionID, int64(r.Seq), day(r.RejectedUnixMs), r.RejectedUnixMs, r.Stage, r.Reason,
			r.Detail, int64(r.Expected), r.Topic, r.Partition, r.Offset, r.Key, r.Original, projector.Base64(r.OriginalBase64)}, nil
	})
	if err != nil {
		return err
	}
	return each("chain_heads", upsertHead, len(b.Heads), func(i int) ([]any, error) {
		h := &b.Heads[i]
		return []any{h.TenantID, h.SessionID, int64(h.Seq), h.Hash}, nil
	})
}

// where builds the WHERE clause of f (see projector.Filter.Where).
func where(f projector.Filter) (string, []any) {
	return f.Where(func(list string) string { return "VALUES " + list })
}

// Events scans audit_events (see projector.Store).
func (s *Store) Events(ctx context.Context, f projector.Filter, fn func(*projector.EventRow) error) error {
	w, args := where(f)
	rows, err := s.db.QueryContext(ctx, `SELECT `+projector.EventColumns+`, event_date
FROM audit_events`+w+` ORDER BY tenant_id, session_id, seq`+f.LimitClause(), args...)
	if err != nil {
		return wrap("events", err)
	}
	defer func() { _ = rows.Close() }()
	for rows.Next() {
		var e projector.StoredEvent
		// SQLite keeps a value that does not convert to the column's
		// type as it is, so an edited INTEGER column can hold text: such
		// a row is a finding (Invalid), not a failure of the whole read.
		var v, seq, ts, partition, offset intColumn
		if err := rows.Scan(&v, &e.TenantID, &e.SessionID, &seq, &ts, &e.EventType, &e.Manifest, &e.Payload,
			&e.Decision, &e.PrevHash, &e.Hash, &e.ToolName, &e.CallID, &e.Outcome, &e.Reason, &e.PolicyRevision,
			&partition, &offset, &e.EventDate); err != nil {
			return wrap("events", err)
		}
		e.V, e.Seq, e.TsUnixMs = int(v.n), uint64(seq.n), ts.n
		e.Partition, e.Offset = int32(partition.n), offset.n
		r := e.Row()
		for _, c := range []struct {
			name string
			col  intColumn
		}{{"v", v}, {"seq", seq}, {"ts_unix_ms", ts}, {"kafka_partition", partition}, {"kafka_offset", offset}} {
			if c.col.bad != "" && r.Invalid == nil {
				r.Invalid = fmt.Errorf("column %s holds %s, not an integer", c.name, c.col.bad)
			}
		}
		if err := fn(r); err != nil {
			return err
		}
	}
	return wrap("events", rows.Err())
}

// Decisions scans the decisions table (see projector.DecisionReader).
func (s *Store) Decisions(ctx context.Context, f projector.Filter, fn func(*projector.StoredDecision) error) error {
	w, args := where(f)
	rows, err := s.db.QueryContext(ctx, `SELECT `+projector.DecisionColumns+`
FROM decisions`+w+` ORDER BY tenant_id, session_id, seq`, args...)
	if err != nil {
		return wrap("decisions", err)
	}
	defer func() { _ = rows.Close() }()
	for rows.Next() {
		var d projector.StoredDecision
		var seq, ts, maxOut, timeout, tainted intColumn
		// A TEXT column edited to hold a BLOB reads back as the same
		// bytes, but no text literal an audit query compares it with
		// (outcome = 'deny') ever equals it: such a row is a finding.
		var tenant, sess, date, manifest, tool, call, outcome, reason, policy, mdigest, idigest, hash textColumn
		if err := rows.Scan(&tenant, &sess, &seq, &ts, &date, &manifest, &tool, &call,
			&outcome, &reason, &maxOut, &timeout, &policy, &mdigest, &idigest, &tainted, &hash); err != nil {
			return wrap("decisions", err)
		}
		d.TenantID, d.SessionID, d.EventDate, d.Manifest, d.ToolName, d.CallID = tenant.s, sess.s, date.s, manifest.s, tool.s, call.s
		d.Reason, d.PolicyRevision, d.ManifestDigest, d.InputDigest, d.Hash = reason.s, policy.s, mdigest.s, idigest.s, hash.s
		for _, c := range []struct {
			name string
			col  textColumn
		}{{"tenant_id", tenant}, {"session_id", sess}, {"event_date", date}, {"manifest", manifest}, {"tool_name", tool},
			{"call_id", call}, {"outcome", outcome}, {"reason", reason}, {"policy_revision", policy},
			{"manifest_digest", mdigest}, {"input_digest", idigest}, {"hash", hash}} {
			if c.col.bad != "" && d.Invalid == "" {
				d.Invalid = fmt.Sprintf("column %s holds %s, not text", c.name, c.col.bad)
			}
		}
		d.Seq, d.TsUnixMs, d.Outcome = uint64(seq.n), ts.n, envelope.Outcome(outcome.s)
		d.Constraints.MaxOutputBytes, d.Constraints.TimeoutMs, d.Tainted = maxOut.n, timeout.n, tainted.n != 0
		for _, c := range []struct {
			name string
			col  intColumn
		}{{"seq", seq}, {"ts_unix_ms", ts}, {"max_output_bytes", maxOut}, {"timeout_ms", timeout}, {"tainted", tainted}} {
			if c.col.bad != "" && d.Invalid == "" {
				d.Invalid = fmt.Sprintf("column %s holds %s, not an integer", c.name, c.col.bad)
			}
		}
		if tainted.n != 0 && tainted.n != 1 && d.Invalid == "" {
			d.Invalid = fmt.Sprintf("column tainted holds %d, not 0 or 1", tainted.n)
		}
		if err := fn(&d); err != nil {
			return err
		}
	}
	return wrap("decisions", rows.Err())
}

// Snapshots scans session_snapshots (see projector.SnapshotReader): the
// table holds one row per session.
func (s *Store) Snapshots(ctx context.Context, f projector.Filter, fn func(*projector.StoredSnapshot) error) error {
	f.AfterSeq = 0
	w, args := where(f)
	rows, err := s.db.QueryContext(ctx, `SELECT `+projector.SnapshotColumns+`
FROM session_snapshots`+w+` ORDER BY tenant_id, session_id`, args...)
	if err != nil {
		return wrap("snapshots", err)
	}
	defer func() { _ = rows.Close() }()
	for rows.Next() {
		var r projector.StoredSnapshot
		// As for decisions: a value SQLite kept in a column of another
		// type (text in an INTEGER column, a BLOB in a TEXT one) is a
		// finding, not a failed read.
		var seq, firstTs, lastTs, events, steps, models, tools, tainted, loop, terminated, pending intColumn
		var tenant, sess, date, manifest, handoff, snapshot, hash textColumn
		if err := rows.Scan(&tenant, &sess, &seq, &firstTs, &lastTs, &date, &manifest, &events, &steps, &models, &tools,
			&tainted, &loop, &terminated, &pending, &handoff, &snapshot, &hash); err != nil {
			return wrap("snapshots", err)
		}
		r.TenantID, r.SessionID, r.FirstEventDate, r.Manifest = tenant.s, sess.s, date.s, manifest.s
		r.HandoffState, r.JSON, r.Hash = handoff.s, snapshot.s, hash.s
		r.LastSeq, r.FirstTsUnixMs, r.LastTsUnixMs = uint64(seq.n), firstTs.n, lastTs.n
		r.Events, r.Steps, r.ModelCalls, r.ToolCalls = events.n, steps.n, models.n, tools.n
		r.Tainted, r.LoopDetected, r.Terminated, r.PendingApprovals = tainted.n != 0, loop.n != 0, terminated.n != 0, uint32(pending.n)
		for _, c := range []struct {
			name string
			col  textColumn
		}{{"tenant_id", tenant}, {"session_id", sess}, {"first_event_date", date}, {"manifest", manifest},
			{"handoff_state", handoff}, {"snapshot", snapshot}, {"snapshot_hash", hash}} {
			if c.col.bad != "" && r.Invalid == "" {
				r.Invalid = fmt.Sprintf("column %s holds %s, not text", c.name, c.col.bad)
			}
		}
		// Every integer column's value is read whole, and the columns
		// read into narrower types (the 0/1 flags, pending_approvals,
		// the unsigned last_seq) must hold a value of that type: a
		// tainted of 2 counts in no "tainted = 1" query.
		const anything = -1
		for _, c := range []struct {
			name string
			col  intColumn
			max  int64 // anything: no bound
		}{{"last_seq", seq, 1<<63 - 1}, {"first_ts_unix_ms", firstTs, anything}, {"last_ts_unix_ms", lastTs, anything},
			{"events", events, anything}, {"steps", steps, anything}, {"model_calls", models, anything},
			{"tool_calls", tools, anything}, {"tainted", tainted, 1}, {"loop_detected", loop, 1}, {"terminated", terminated, 1},
			{"pending_approvals", pending, 1<<32 - 1}} {
			switch {
			case r.Invalid != "":
			case c.col.bad != "":
				r.Invalid = fmt.Sprintf("column %s holds %s, not an integer", c.name, c.col.bad)
			case c.max != anything && (c.col.n < 0 || c.col.n > c.max):
				r.Invalid = fmt.Sprintf("column %s holds %d, not in 0..%d", c.name, c.col.n, c.max)
			}
		}
		if err := fn(&r); err != nil {
			return err
		}
	}
	return wrap("snapshots", rows.Err())
}

// Heads returns the stored chain heads (see projector.HeadReader).
func (s *Store) Heads(ctx context.Context, f projector.Filter) ([]chain.Head, error) {
	return s.lastPerSession(ctx, "chain_heads", "heads", f)
}

// LastEvents returns each matching session's last stored event, as a head
// (seq and hash).
func (s *Store) LastEvents(ctx context.Context, f projector.Filter) ([]chain.Head, error) {
	return s.lastPerSession(ctx, "audit_events", "last events", f)
}

// lastPerSession reads the highest seq of each session in table (which has
// tenant_id, session_id, seq and hash columns) and the hash stored with it
// (chain_heads holds one row per session anyway).
func (s *Store) lastPerSession(ctx context.Context, table, op string, f projector.Filter) ([]chain.Head, error) {
	w, args := where(f)
	// SQLite takes the bare column hash from the row max(seq) picked.
	rows, err := s.db.QueryContext(ctx, "SELECT tenant_id, session_id, max(seq), hash FROM "+table+w+
		" GROUP BY tenant_id, session_id ORDER BY tenant_id, session_id", args...)
	if err != nil {
		return nil, wrap(op, err)
	}
	defer func() { _ = rows.Close() }()
	var out []chain.Head
	for rows.Next() {
		var h chain.Head
		var seq intColumn
		if err := rows.Scan(&h.TenantID, &h.SessionID, &seq, &h.Hash); err != nil {
			return nil, wrap(op, err)
		}
		// A seq that is not an integer (an edited row) reads as 0, which
		// no verified chain ends at: the session is reported, not the
		// whole read failed.
		h.Seq = uint64(seq.n)
		out = append(out, h)
	}
	return out, wrap(op, rows.Err())
}

// Query runs one read-only statement (see projector.Querier). It runs in a
// read-only transaction on a connection opened read-only, so a statement
// that writes fails.
func (s *Store) Query(ctx context.Context, query string) ([]string, [][]any, error) {
	var cols []string
	var out [][]any
	err := s.QueryEach(ctx, query, func(c []string, row []any) error {
		cols = c
		if row != nil {
			out = append(out, row)
		}
		return nil
	})
	return cols, out, err
}

// QueryEach is Query with each row passed to fn as it arrives (the
// columns first, with a nil row), so that a large result is never held
// whole (see projector.RowStreamer).
func (s *Store) QueryEach(ctx context.Context, query string, fn func(cols []string, row []any) error) error {
	conn, err := s.ro.Conn(ctx)
	if err != nil {
		return wrap("query", err)
	}
	defer func() { _ = conn.Close() }()
	// A query can end its transaction with a COMMIT of its own and go on
	// with further statements; ATTACH (and VACUUM INTO, which attaches)
	// would then create and write other files, which the read-only open
	// of the store does not cover. No database can be attached.
	if _, err := sqlite.Limit(conn, sqlite3.SQLITE_LIMIT_ATTACHED, 0); err != nil {
		return wrap("query", err)
	}
	tx, err := conn.BeginTx(ctx, &sql.TxOptions{ReadOnly: true})
	if err != nil {
		return wrap("query", err)
	}
	defer func() { _ = tx.Rollback() }()
	rows, err := tx.QueryContext(ctx, query)
	if err != nil {
		return wrap("query", err)
	}
	defer func() { _ = rows.Close() }()
	cols, err := rows.Columns()
	if err != nil {
		return wrap("query", err)
	}
	if err := fn(cols, nil); err != nil {
		return err
	}
	for rows.Next() {
		vals := make([]any, len(cols))
		ptrs := make([]any, len(cols))
		for i := range vals {
			ptrs[i] = &vals[i]
		}
		if err := rows.Scan(ptrs...); err != nil {
			return wrap("query", err)
		}
		for i, v := range vals {
			if b, ok := v.([]byte); ok {
				vals[i] = string(b)
			}
		}
		if err := fn(cols, vals); err != nil {
			return err
		}
	}
	return wrap("query", rows.Err())
}

// intColumn scans an INTEGER column that may hold a value of another
// type: n is the integer, or 0 with bad describing what is there instead.
type intColumn struct {
	n   int64
	bad string
}

// textColumn scans a TEXT column; bad names a value SQLite kept as
// another type (a BLOB).
type textColumn struct {
	s   string
	bad string
}

func (c *textColumn) Scan(src any) error {
	switch x := src.(type) {
	case string:
		c.s, c.bad = x, ""
	case []byte:
		c.s, c.bad = string(x), fmt.Sprintf("a blob of %d bytes", len(x))
	case nil:
		c.s, c.bad = "", "NULL"
	default:
		c.s, c.bad = fmt.Sprint(x), fmt.Sprintf("a %T", x)
	}
	return nil
}

func (c *intColumn) Scan(src any) error {
	switch x := src.(type) {
	case int64:
		c.n, c.bad = x, ""
	case nil:
		c.n, c.bad = 0, "NULL"
	case float64:
		c.n, c.bad = 0, fmt.Sprintf("the real %v", x)
	case string:
		c.n, c.bad = 0, fmt.Sprintf("the text %.64q", x)
	case []byte:
		c.n, c.bad = 0, fmt.Sprintf("a blob of %d bytes", len(x))
	default:
		c.n, c.bad = 0, fmt.Sprintf("a %T", x)
	}
	return nil
}
