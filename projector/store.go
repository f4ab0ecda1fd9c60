package projector

import (
	"context"
	"errors"
	"fmt"
	"io/fs"
	"sort"
	"strconv"
	"strings"

	"aegis.dev/aegis/schemas/chain"
)

// Store is what the projector needs from an audit store. Implementations
// (projector/chstore, projector/sqlstore) assert `var _ projector.Store =
// (*Store)(nil)` and pass projector/storetest.
type Store interface {
	// Write stores every row of b. It is idempotent: writing rows that
	// are already stored (a redelivery) leaves every documented query's
	// result unchanged. An error means some rows may not be stored; the
	// caller writes the whole batch again.
	Write(ctx context.Context, b *Batch) error
	// Events calls fn with the stored rows of audit_events that match f,
	// ordered by (tenant_id, session_id, seq). Stores that deduplicate at
	// merge time may pass a row more than once until then; copies share
	// their seq, so they are adjacent. fn may keep the row. An error from fn stops
	// the scan and is returned.
	Events(ctx context.Context, f Filter, fn func(*EventRow) error) error
}

// Filter selects sessions of the audit store. The zero Filter selects all.
type Filter struct {
	TenantID  string
	SessionID string
	// SinceUnixMs, if positive, selects sessions with at least one event
	// at or after it; their whole chains are returned.
	SinceUnixMs int64
	// Sessions, if not empty, selects only these sessions.
	Sessions []SessionKey
	// AfterSeq, if positive, selects the events after it (a page of one
	// session's events), so that paging does not read the session from
	// its start each time. At most 1<<53 (the largest seq).
	AfterSeq uint64
	// Limit, if positive, ends an events scan after this many rows (a
	// page): the store sends no more, rather than the reader stopping
	// after reading them.
	Limit int
}

// HeadReader is implemented by stores that keep the sealer's chain heads.
type HeadReader interface {
	// Heads returns the latest chain head of every session matching f,
	// ordered by tenant and session.
	Heads(ctx context.Context, f Filter) ([]chain.Head, error)
}

// RowStreamer is a Querier that can pass rows on as they arrive (both
// audit stores are): fn gets the column names first with a nil row, then
// each row; an error from fn ends the query with it.
type RowStreamer interface {
	QueryEach(ctx context.Context, sql string, fn func(columns []string, row []any) error) error
}

// Querier runs read-only SQL for `aegisctl sql` and the documented audit
// queries.
type Querier interface {
	// Query runs one SELECT and returns the column names and every row,
	// each value a string, an integer, a float, a time.Time or nil (a
	// ClickHouse array: a []any of these).
	Query(ctx context.Context, sql string) (columns []string, rows [][]any, err error)
}

// ErrStore reports a failure of the store itself (connection, SQL,
// schema); stores wrap every such error in it.
var ErrStore = errors.New("projector_store")

// Migration is one numbered DDL file.
type Migration struct {
	Version    int
	Name       string
	Statements []string
}

// Migrations reads a DDL directory (schemas/clickhouse, schemas/sqlite):
// the bootstrap statements of schema_version.sql and the migrations
// NNNN_name.sql in version order. Statements are separated by a ';' that
// ends a line; lines starting with "--" are comments.
func Migrations(fsys fs.FS) (bootstrap []string, migrations []Migration, err error) {
	raw, err := fs.ReadFile(fsys, "schema_version.sql")
	if err != nil {
		return nil, nil, fmt.Errorf("projector: migrations: %w", err)
	}
	bootstrap = splitStatements(string(raw))
	names, err := fs.Glob(fsys, "[0-9][0-9][0-9][0-9]_*.sql")
	if err != nil {
		return nil, nil, fmt.Errorf("projector: migrations: %w", err)
	}
	sort.Strings(names)
	for _, name := range names {
		v, _ := strconv.Atoi(name[:4])
		if len(migrations) > 0 && migrations[len(migrations)-1].Version == v {
			return nil, nil, fmt.Errorf("projector: migrations: version %d appears twice", v)
		}
		b, err := fs.ReadFile(fsys, name)
		if err != nil {
			return nil, nil, fmt.Errorf("projector: migrations: %w", err)
		}
		migrations = append(migrations, Migration{Version: v, Name: strings.TrimSuffix(name, ".sql"), Statements: splitStatements(string(b))})
	}
	return bootstrap, migrations, nil
}

func splitStatements(sql string) []string {
	var out []string
	var cur strings.Builder
	for _, line := range strings.Split(sql, "\n") {
		t := strings.TrimSpace(line)
		if t == "" || strings.HasPrefix(t, "--") {
			continue
		}
		cur.WriteString(line)
		cur.WriteByte('\n')
		if strings.HasSuffix(t, ";") {
			out = append(out, strings.TrimSuffix(strings.TrimSpace(cur.String()), ";"))
			cur.Reset()
		}
	}
	if s := strings.TrimSpace(cur.String()); s != "" {
		out = append(out, s)
	}
	return out
}
