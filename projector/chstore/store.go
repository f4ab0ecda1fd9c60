// Package chstore is the ClickHouse audit store, the only package that
// imports clickhouse-go. It speaks the native protocol (the HTTP mode of
// clickhouse-go does not work with ClickHouse 18.16) and applies the
// migrations of schemas/clickhouse.
//
// Deduplication is at merge time: every table is a ReplacingMergeTree keyed
// by the row's identity, so a redelivered row is a second identical copy
// until a background merge collapses it. Queries that must count each row
// once read with FINAL (docs/audit-queries.md); Events passes copies
// adjacently. docs/store.md explains the choice.
package chstore

import (
	"cmp"
	"context"
	"errors"
	"fmt"
	"net/url"
	"reflect"
	"slices"
	"sort"
	"strings"
	"time"

	"github.com/ClickHouse/clickhouse-go/v2"
	"github.com/ClickHouse/clickhouse-go/v2/lib/driver"

	"aegis.dev/aegis/internal/redact"
	"aegis.dev/aegis/projector"
	"aegis.dev/aegis/schemas/chain"
	chschema "aegis.dev/aegis/schemas/clickhouse"
	"aegis.dev/aegis/schemas/envelope"
)

var (
	_ projector.Store          = (*Store)(nil)
	_ projector.HeadReader     = (*Store)(nil)
	_ projector.Querier        = (*Store)(nil)
	_ projector.DecisionReader = (*Store)(nil)
	_ projector.SnapshotReader = (*Store)(nil)
)

// Store is a ClickHouse audit store. It is safe for concurrent use.
type Store struct {
	conn     driver.Conn
	database string
}

// Config locates the server.
type Config struct {
	// Addr is host:port of the native protocol.
	Addr string
	// Database is created if it does not exist.
	Database string
	// User and Password authenticate (default user "default", no
	// password).
	User, Password string
	// DialTimeout bounds connecting (default 5s).
	DialTimeout time.Duration
	// Existing opens only a database that holds the current schema:
	// Open then never creates or migrates anything (readers such as
	// `aegisctl sql`, for which a mistyped name must not become a new,
	// empty store).
	Existing bool
}

// readTimeout bounds how long a request waits for the server's next packet.
const readTimeout = 30 * time.Second

// ParseURL parses clickhouse://[user[:password]@]HOST:PORT/DB.
func ParseURL(raw string) (Config, error) {
	u, err := url.Parse(raw)
	if err != nil || u.Scheme != "clickhouse" || u.Host == "" {
		return Config{}, fmt.Errorf("chstore: %q is not clickhouse://HOST:PORT/DB: %w", redact.URL(raw), projector.ErrStore)
	}
	cfg := Config{Addr: u.Host, Database: strings.Trim(u.Path, "/")}
	if cfg.Database == "" || strings.Contains(cfg.Database, "/") {
		return Config{}, fmt.Errorf("chstore: %q names no database: %w", redact.URL(raw), projector.ErrStore)
	}
	if u.Port() == "" {
		cfg.Addr += ":9000"
	}
	if u.User != nil {
		cfg.User = u.User.Username()
		cfg.Password, _ = u.User.Password()
	}
	return cfg, nil
}

// Open connects, creates the database if needed and applies the pending
// migrations.
func Open(ctx context.Context, cfg Config) (*Store, error) {
	if cfg.DialTimeout <= 0 {
		cfg.DialTimeout = 5 * time.Second
	}
	for _, c := range cfg.Database {
		if !(c >= 'a' && c <= 'z' || c >= 'A' && c <= 'Z' || c >= '0' && c <= '9' || c == '_') {
			return nil, fmt.Errorf("chstore: database %q: only letters, digits and _: %w", cfg.Database, projector.ErrStore)
		}
	}
	opts := func(db string) *clickhouse.Options {
		return &clickhouse.Options{
			Addr:        []string{cfg.Addr},
			Auth:        clickhouse.Auth{Database: db, Username: cfg.User, Password: cfg.Password},
			DialTimeout: cfg.DialTimeout,
			// clickhouse-go waits 5 minutes for a reply by default: a
			// write whose connection died with a restarting server would
			// hold the projector that long before its retry. The server
			// sends progress packets while a query runs, so 30 s of
			// silence means the connection is gone.
			ReadTimeout: readTimeout,
			Protocol:    clickhouse.Native,
		}
	}
	// A store whose schema is current is used as it is, without any DDL,
	// so that an account with a read-only profile (an auditor's) can open
	// it; otherwise the database and tables are created or migrated.
	if conn, err := clickhouse.Open(opts(cfg.Database)); err == nil {
		s := &Store{conn: conn, database: cfg.Database}
		if current, err := s.schemaCurrent(ctx); err == nil && current {
			return s, nil
		}
		_ = conn.Close()
	}
	if cfg.Existing {
		return nil, fmt.Errorf("chstore: database %s does not hold the current audit schema (created and migrated by the projector, not by readers): %w",
			cfg.Database, projector.ErrStore)
	}
	boot, err := clickhouse.Open(opts("default"))
	if err != nil {
		return nil, wrap("connect", err)
	}
	err = boot.Exec(ctx, "CREATE DATABASE IF NOT EXISTS "+cfg.Database)
	_ = boot.Close()
	if err != nil {
		return nil, wrap("create database", err)
	}
	conn, err := clickhouse.Open(opts(cfg.Database))
	if err != nil {
		return nil, wrap("connect", err)
	}
	s := &Store{conn: conn, database: cfg.Database}
	if err := s.migrate(ctx); err != nil {
		_ = conn.Close()
		return nil, err
	}
	return s, nil
}

// Close closes the connections.
func (s *Store) Close() error { return s.conn.Close() }

func wrap(op string, err error) error {
	if err == nil {
		return nil
	}
	if errors.Is(err, context.Canceled) || errors.Is(err, context.DeadlineExceeded) {
		return fmt.Errorf("chstore: %s: %w", op, err)
	}
	return fmt.Errorf("chstore: %s: %w: %w", op, projector.ErrStore, err)
}

// SchemaVersion returns the highest applied migration.
func (s *Store) SchemaVersion(ctx context.Context) (int, error) {
	var v uint32
	err := s.conn.QueryRow(ctx, "SELECT max(version) FROM schema_version").Scan(&v)
	return int(v), wrap("schema version", err)
}

// schemaCurrent reports whether every migration has been applied.
func (s *Store) schemaCurrent(ctx context.Context) (bool, error) {
	_, migrations, err := projector.Migrations(chschema.Files())
	if err != nil {
		return false, err
	}
	have, err := s.SchemaVersion(ctx)
	if err != nil {
		return false, err
	}
	return len(migrations) > 0 && have >= migrations[len(migrations)-1].Version, nil
}

func (s *Store) migrate(ctx context.Context) error {
	bootstrap, migrations, err := projector.Migrations(chschema.Files())
	if err != nil {
		return err
	}
	for _, stmt := range bootstrap {
		if err := s.conn.Exec(ctx, stmt); err != nil {
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
		for _, stmt := range m.Statements {
			if err := s.conn.Exec(ctx, stmt); err != nil {
				return wrap("migrate: "+m.Name, err)
			}
		}
		b, err := s.conn.PrepareBatch(ctx, "INSERT INTO schema_version (version, name, applied_unix_ms)")
		if err != nil {
			return wrap("migrate: "+m.Name, err)
		}
		if err := b.Append(uint32(m.Version), m.Name, time.Now().UnixMilli()); err != nil {
			_ = b.Abort()
			return wrap("migrate: "+m.Name, err)
		}
		if err := b.Send(); err != nil {
			return wrap("migrate: "+m.Name, err)
		}
	}
	return nil
}

func b8(b bool) uint8 {
	if b {
		return 1
	}
	return 0
}

// Write inserts each table's rows as one block (events first, heads last).
// A failed insert leaves the earlier tables written; the caller writes the
// whole batch again, which the ReplacingMergeTree tables absorb.
func (s *Store) Write(ctx context.Context, b *projector.Batch) error {
	block := func(table, cols string, rows []int, row func(i int) ([]any, error)) error {
		batch, err := s.conn.PrepareBatch(ctx, "INSERT INTO "+table+" ("+cols+")")
		if err != nil {
			return wrap("write "+table, err)
		}
		defer func() { _ = batch.Abort() }()
		for _, i := range rows {
			vals, err := row(i)
			if err != nil {
				return err
			}
			if err := batch.Append(vals...); err != nil {
				return wrap("write "+table, err)
			}
		}
		return wrap("write "+table, batch.Send())
	}
	// insert writes a table's rows, in blocks of at most
	// maxPartitionsPerBlock months of date(i) (nil: unpartitioned).
	insert := func(table, cols string, n int, date func(i int) int64, row func(i int) ([]any, error)) error {
		for _, rows := range blocks(n, date) {
			if err := block(table, cols, rows, row); err != nil {
				return err
			}
		}
		return nil
	}
	err := insert("audit_events", "tenant_id, session_id, seq, ts_unix_ms, event_date, v, event_type, manifest, tool_name, call_id, outcome, reason, policy_revision, payload, decision, prev_hash, hash, kafka_partition, kafka_offset",
		len(b.Events), func(i int) int64 { return b.Events[i].Event.TsUnixMs }, func(i int) ([]any, error) {
			r := &b.Events[i]
			e := r.Event
			dec, err := projector.DecisionJSON(e)
			return []any{e.TenantID, e.SessionID, e.Seq, e.TsUnixMs, r.Day(), uint8(e.V), string(e.Type), e.Manifest,
				r.ToolName, r.CallID, r.Outcome, r.Reason, r.PolicyRevision, string(e.Payload), dec, e.PrevHash, e.Hash,
				r.Partition, r.Offset}, err
		})
	if err != nil {
		return err
	}
	err = insert("decisions", "tenant_id, session_id, seq, ts_unix_ms, event_date, manifest, tool_name, call_id, outcome, reason, max_output_bytes, timeout_ms, policy_revision, manifest_digest, input_digest, tainted, hash",
		len(b.Decisions), func(i int) int64 { return b.Decisions[i].TsUnixMs }, func(i int) ([]any, error) {
			d := &b.Decisions[i]
			return []any{d.TenantID, d.SessionID, d.Seq, d.TsUnixMs, projector.Date(d.TsUnixMs), d.Manifest, d.ToolName, d.CallID,
				string(d.Outcome), d.Reason, d.Constraints.MaxOutputBytes, d.Constraints.TimeoutMs, d.PolicyRevision,
				d.ManifestDigest, d.InputDigest, b8(d.Tainted), d.Hash}, nil
		})
	if err != nil {
		return err
	}
	err = insert("session_snapshots", projector.SnapshotColumns,
		len(b.Snapshots), func(i int) int64 { return b.Snapshots[i].Day().UnixMilli() }, func(i int) ([]any, error) {
			r := &b.Snapshots[i]
			return []any{r.TenantID, r.SessionID, r.LastSeq, r.FirstTsUnixMs, r.LastTsUnixMs, r.Day(), r.Manifest,
				r.Events, r.Steps, r.ModelCalls, r.ToolCalls, b8(r.Tainted), b8(r.LoopDetected), b8(r.Terminated),
				r.PendingApprovals, r.HandoffState, r.JSON, r.Hash}, nil
		})
	if err != nil {
		return err
	}
	err = insert("rejected_records", "tenant_id, session_id, seq, event_date, rejected_unix_ms, stage, reason, detail, expected_seq, source_topic, source_partition, source_offset, record_key, original, original_base64",
		len(b.Rejected), func(i int) int64 { return b.Rejected[i].RejectedUnixMs }, func(i int) ([]any, error) {
			r := &b.Rejected[i]
			return []any{r.TenantID, r.SessionID, r.Seq, projector.Date(r.RejectedUnixMs), r.RejectedUnixMs, r.Stage, r.Reason,
				r.Detail, r.Expected, r.Topic, r.Partition, r.Offset, r.Key, r.Original, projector.Base64(r.OriginalBase64)}, nil
		})
	if err != nil {
		return err
	}
	return insert("chain_heads", "tenant_id, session_id, seq, hash", len(b.Heads), nil, func(i int) ([]any, error) {
		h := &b.Heads[i]
		return []any{h.TenantID, h.SessionID, h.Seq, h.Hash}, nil
	})
}

// maxPartitionsPerBlock is how many partitions (months) one insert block
// may touch: current ClickHouse refuses more than 100
// (max_partitions_per_insert_block), and ts_unix_ms is the client's.
const maxPartitionsPerBlock = 100

// blocks splits rows 0..n-1 into insert blocks of at most
// maxPartitionsPerBlock distinct months of date(i) (Unix ms, cut as
// projector.Date cuts it), keeping row order within a block; the usual
// batch, within a few months, is one block of every row in order.
func blocks(n int, date func(i int) int64) [][]int {
	if n == 0 {
		return nil
	}
	all := make([]int, n)
	for i := range all {
		all[i] = i
	}
	if date == nil {
		return [][]int{all}
	}
	month := func(i int) int {
		d := projector.Date(date(i))
		return d.Year()*12 + int(d.Month())
	}
	byMonth := make(map[int][]int)
	var months []int
	for i := range n {
		m := month(i)
		if byMonth[m] == nil {
			months = append(months, m)
		}
		byMonth[m] = append(byMonth[m], i)
	}
	if len(months) <= maxPartitionsPerBlock {
		return [][]int{all}
	}
	var out [][]int
	for len(months) > 0 {
		k := min(len(months), maxPartitionsPerBlock)
		var rows []int
		for _, m := range months[:k] {
			rows = append(rows, byMonth[m]...)
		}
		sort.Ints(rows)
		out = append(out, rows)
		months = months[k:]
	}
	return out
}

// where builds the WHERE clause of f (see projector.Filter.Where).
func where(f projector.Filter) (string, []any) {
	return f.Where(func(list string) string { return list })
}

// maxListBytes bounds the session list one query names. clickhouse-go
// binds the list into the query's text, the server parses at most
// max_query_size of it (256 KiB by default; a read-only account cannot
// raise it), and the snapshots query names the list twice.
const maxListBytes = 96 << 10

// chunks splits the session list of f, when it is too long for one query,
// into lists that fit, in (tenant_id, session_id) order, so that reading
// them one after the other keeps the order of the rows; nil when f fits.
func chunks(f projector.Filter) []projector.Filter {
	// A bound value is quoted, its quotes and backslashes escaped.
	size := func(k projector.SessionKey) int { return 2*(len(k.TenantID)+len(k.SessionID)) + 10 }
	total := 0
	for _, k := range f.Sessions {
		total += size(k)
	}
	if total <= maxListBytes {
		return nil
	}
	keys := slices.Clone(f.Sessions)
	slices.SortFunc(keys, func(a, b projector.SessionKey) int {
		return cmp.Or(strings.Compare(a.TenantID, b.TenantID), strings.Compare(a.SessionID, b.SessionID))
	})
	keys = slices.Compact(keys) // a session named twice is read once
	var out []projector.Filter
	start, n := 0, 0
	for i, k := range keys {
		if i > start && n+size(k) > maxListBytes {
			c := f
			c.Sessions = keys[start:i]
			out = append(out, c)
			start, n = i, 0
		}
		n += size(k)
	}
	f.Sessions = keys[start:]
	return append(out, f)
}

// closeRows ends a scan. A scan stopped before its last row cancels its
// query first: clickhouse-go's Rows.Close reads every remaining row, so a
// page of 100 events of a long session would transfer the rest of it.
func closeRows(rows driver.Rows, cancel context.CancelFunc) {
	cancel()
	_ = rows.Close()
}

// Events scans audit_events without FINAL, so that a second, different row
// with the same key (an inserted forgery not yet merged away) reaches the
// verifier; copies share a seq and so come out adjacent. A session list
// too long for one query is read in several (chunks), in order.
func (s *Store) Events(ctx context.Context, f projector.Filter, fn func(*projector.EventRow) error) error {
	if cs := chunks(f); cs != nil {
		n := 0
		for _, c := range cs {
			if f.Limit > 0 {
				if c.Limit = f.Limit - n; c.Limit <= 0 {
					break
				}
			}
			if err := s.Events(ctx, c, func(r *projector.EventRow) error { n++; return fn(r) }); err != nil {
				return err
			}
		}
		return nil
	}
	w, args := where(f)
	// event_date is read as a Date, not with toString: 18.16 prints day 0
	// (1970-01-01) as 0000-00-00.
	ctx, cancel := context.WithCancel(ctx)
	defer cancel()
	rows, err := s.conn.Query(ctx, `SELECT `+projector.EventColumns+`, event_date
FROM audit_events`+w+` ORDER BY tenant_id, session_id, seq`+f.LimitClause(), args...)
	if err != nil {
		return wrap("events", err)
	}
	defer closeRows(rows, cancel)
	for rows.Next() {
		var e projector.StoredEvent
		var v uint8
		var date time.Time
		if err := rows.Scan(&v, &e.TenantID, &e.SessionID, &e.Seq, &e.TsUnixMs, &e.EventType, &e.Manifest, &e.Payload,
			&e.Decision, &e.PrevHash, &e.Hash, &e.ToolName, &e.CallID, &e.Outcome, &e.Reason, &e.PolicyRevision,
			&e.Partition, &e.Offset, &date); err != nil {
			return wrap("events", err)
		}
		e.V, e.EventDate = int(v), dateString(date)
		if err := fn(e.Row()); err != nil {
			return err
		}
	}
	return wrap("events", rows.Err())
}

// Decisions scans the decisions table (see projector.DecisionReader).
// Copies of a row not merged yet are passed as they are.
func (s *Store) Decisions(ctx context.Context, f projector.Filter, fn func(*projector.StoredDecision) error) error {
	if cs := chunks(f); cs != nil {
		for _, c := range cs {
			if err := s.Decisions(ctx, c, fn); err != nil {
				return err
			}
		}
		return nil
	}
	w, args := where(f)
	ctx, cancel := context.WithCancel(ctx)
	defer cancel()
	rows, err := s.conn.Query(ctx, `SELECT `+projector.DecisionColumns+`
FROM decisions`+w+` ORDER BY tenant_id, session_id, seq`, args...)
	if err != nil {
		return wrap("decisions", err)
	}
	defer closeRows(rows, cancel)
	for rows.Next() {
		var d projector.StoredDecision
		var date time.Time
		var outcome string
		var tainted uint8
		if err := rows.Scan(&d.TenantID, &d.SessionID, &d.Seq, &d.TsUnixMs, &date, &d.Manifest, &d.ToolName, &d.CallID,
			&outcome, &d.Reason, &d.Constraints.MaxOutputBytes, &d.Constraints.TimeoutMs, &d.PolicyRevision, &d.ManifestDigest,
			&d.InputDigest, &tainted, &d.Hash); err != nil {
			return wrap("decisions", err)
		}
		d.EventDate, d.Outcome, d.Tainted = dateString(date), envelope.Outcome(outcome), tainted != 0
		if tainted > 1 {
			d.Invalid = fmt.Sprintf("column tainted holds %d, not 0 or 1", tainted)
		}
		if err := fn(&d); err != nil {
			return err
		}
	}
	return wrap("decisions", rows.Err())
}

// Snapshots scans session_snapshots (see projector.SnapshotReader)
// without FINAL: of each session's rows it reads those with the highest
// last_seq, so that an older version a merge has not removed yet is not
// taken for the session's row, while two different rows of that version
// (a forgery inserted with the projector's version) both reach the caller.
func (s *Store) Snapshots(ctx context.Context, f projector.Filter, fn func(*projector.StoredSnapshot) error) error {
	if cs := chunks(f); cs != nil {
		for _, c := range cs {
			if err := s.Snapshots(ctx, c, fn); err != nil {
				return err
			}
		}
		return nil
	}
	f.AfterSeq = 0
	w, args := where(f)
	cond := " WHERE"
	if w != "" {
		cond = w + " AND"
	}
	ctx, cancel := context.WithCancel(ctx)
	defer cancel()
	rows, err := s.conn.Query(ctx, `SELECT `+projector.SnapshotColumns+`
FROM session_snapshots`+cond+` (tenant_id, session_id, last_seq) IN
	(SELECT tenant_id, session_id, max(last_seq) FROM session_snapshots`+w+` GROUP BY tenant_id, session_id)
ORDER BY tenant_id, session_id`, append(append([]any{}, args...), args...)...)
	if err != nil {
		return wrap("snapshots", err)
	}
	defer closeRows(rows, cancel)
	for rows.Next() {
		var r projector.StoredSnapshot
		var date time.Time
		var tainted, loop, terminated uint8
		if err := rows.Scan(&r.TenantID, &r.SessionID, &r.LastSeq, &r.FirstTsUnixMs, &r.LastTsUnixMs, &date, &r.Manifest,
			&r.Events, &r.Steps, &r.ModelCalls, &r.ToolCalls, &tainted, &loop, &terminated, &r.PendingApprovals,
			&r.HandoffState, &r.JSON, &r.Hash); err != nil {
			return wrap("snapshots", err)
		}
		r.FirstEventDate = dateString(date)
		r.Tainted, r.LoopDetected, r.Terminated = tainted != 0, loop != 0, terminated != 0
		for _, c := range []struct {
			name string
			v    uint8
		}{{"tainted", tainted}, {"loop_detected", loop}, {"terminated", terminated}} {
			if c.v > 1 && r.Invalid == "" {
				r.Invalid = fmt.Sprintf("column %s holds %d, not 0 or 1", c.name, c.v)
			}
		}
		if err := fn(&r); err != nil {
			return err
		}
	}
	return wrap("snapshots", rows.Err())
}

// Heads returns the latest stored chain head of each session (see
// projector.HeadReader).
func (s *Store) Heads(ctx context.Context, f projector.Filter) ([]chain.Head, error) {
	return s.lastPerSession(ctx, "chain_heads", "heads", f)
}

// LastEvents returns each matching session's last stored event, as a head
// (seq and hash).
func (s *Store) LastEvents(ctx context.Context, f projector.Filter) ([]chain.Head, error) {
	return s.lastPerSession(ctx, "audit_events", "last events", f)
}

// lastPerSession reads the highest seq of each session in table (which has
// tenant_id, session_id, seq and hash columns) and the hash stored with it.
func (s *Store) lastPerSession(ctx context.Context, table, op string, f projector.Filter) ([]chain.Head, error) {
	if cs := chunks(f); cs != nil {
		var out []chain.Head
		for _, c := range cs {
			heads, err := s.lastPerSession(ctx, table, op, c)
			if err != nil {
				return nil, err
			}
			out = append(out, heads...)
		}
		return out, nil
	}
	w, args := where(f)
	ctx, cancel := context.WithCancel(ctx)
	defer cancel()
	rows, err := s.conn.Query(ctx, "SELECT tenant_id, session_id, max(seq), argMax(hash, seq) FROM "+table+w+
		" GROUP BY tenant_id, session_id ORDER BY tenant_id, session_id", args...)
	if err != nil {
		return nil, wrap(op, err)
	}
	defer closeRows(rows, cancel)
	var out []chain.Head
	for rows.Next() {
		var h chain.Head
		if err := rows.Scan(&h.TenantID, &h.SessionID, &h.Seq, &h.Hash); err != nil {
			return nil, wrap(op, err)
		}
		out = append(out, h)
	}
	return out, wrap(op, rows.Err())
}

// Query runs one statement with readonly=1 (see projector.Querier).
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
	ctx = clickhouse.Context(ctx, clickhouse.WithSettings(clickhouse.Settings{"readonly": 1}))
	ctx, cancel := context.WithCancel(ctx)
	defer cancel()
	rows, err := s.conn.Query(ctx, query)
	if err != nil {
		return wrap("query", err)
	}
	defer closeRows(rows, cancel)
	cols := rows.Columns()
	types := rows.ColumnTypes()
	if err := fn(cols, nil); err != nil {
		return err
	}
	for rows.Next() {
		ptrs := make([]any, len(types))
		for i, t := range types {
			ptrs[i] = reflect.New(t.ScanType()).Interface()
		}
		if err := rows.Scan(ptrs...); err != nil {
			return wrap("query", err)
		}
		vals := make([]any, len(ptrs))
		for i, p := range ptrs {
			vals[i] = plain(types[i].DatabaseTypeName(), reflect.ValueOf(p).Elem().Interface())
		}
		if err := fn(cols, vals); err != nil {
			return err
		}
	}
	return wrap("query", rows.Err())
}

// dateString formats a Date column as the driver returns it: midnight of
// the day in the server's time zone, so the day is read in that zone.
func dateString(t time.Time) string { return t.Format(time.DateOnly) }

// plain maps driver values to the kinds Querier promises; Date columns
// become "YYYY-MM-DD" strings, as in the SQLite store. A Nullable column
// is scanned as a pointer: NULL becomes nil, any other value what its
// type becomes.
func plain(dbType string, v any) any {
	if p := reflect.ValueOf(v); p.Kind() == reflect.Pointer {
		if p.IsNil() {
			return nil
		}
		return plain(dbType, p.Elem().Interface())
	}
	for _, wrapper := range []string{"LowCardinality(", "Nullable("} {
		if strings.HasPrefix(dbType, wrapper) {
			dbType = strings.TrimSuffix(strings.TrimPrefix(dbType, wrapper), ")")
		}
	}
	// An array's elements are plain values of its element type: an
	// Array(UInt8) would otherwise stay a []uint8, which JSON writes as
	// base64.
	if elem, ok := strings.CutPrefix(dbType, "Array("); ok {
		if s := reflect.ValueOf(v); s.Kind() == reflect.Slice {
			elem = strings.TrimSuffix(elem, ")")
			out := make([]any, s.Len())
			for i := range out {
				out[i] = plain(elem, s.Index(i).Interface())
			}
			return out
		}
	}
	switch x := v.(type) {
	case uint8:
		return int64(x)
	case uint16:
		return int64(x)
	case uint32:
		return int64(x)
	case uint64:
		if x <= 1<<63-1 {
			return int64(x)
		}
		return x
	case int8:
		return int64(x)
	case int16:
		return int64(x)
	case int32:
		return int64(x)
	case float32:
		return float64(x)
	case time.Time:
		if dbType == "Date" {
			return dateString(x)
		}
		return x.UTC()
	}
	return v
}

// Database returns the database the store uses.
func (s *Store) Database() string { return s.database }

// DropDatabase drops the store's database: for tests and benchmarks that
// create throwaway databases.
func (s *Store) DropDatabase(ctx context.Context) error {
	return wrap("drop database", s.conn.Exec(ctx, "DROP DATABASE IF EXISTS "+s.database))
}
