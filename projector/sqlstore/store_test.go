package sqlstore_test

import (
	"context"
	"database/sql"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"aegis.dev/aegis/internal/ctl"
	"aegis.dev/aegis/projector"
	"aegis.dev/aegis/projector/sqlstore"
	"aegis.dev/aegis/projector/storetest"
	"aegis.dev/aegis/schemas/chain"
)

func open(t testing.TB) *sqlstore.Store {
	t.Helper()
	s, err := sqlstore.Open(context.Background(), filepath.Join(t.TempDir(), "audit.db"))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = s.Close() })
	return s
}

func TestStoreSuite(t *testing.T) {
	storetest.Run(t, storetest.Dialect{}, func(t testing.TB) storetest.Store { return open(t) })
}

func TestMigrationsAreIdempotent(t *testing.T) {
	path := filepath.Join(t.TempDir(), "audit.db")
	for range 2 {
		s, err := sqlstore.Open(context.Background(), path)
		if err != nil {
			t.Fatal(err)
		}
		v, err := s.SchemaVersion(context.Background())
		if err != nil || v != 1 {
			t.Errorf("schema version %d, %v; want 1", v, err)
		}
		_ = s.Close()
	}
}

// TestVerifyReportsTextInIntegerColumns: SQLite keeps a value that does not
// convert to a column's type, so an edited INTEGER column can hold text.
// verify must report that session (exit 1), not stop with a read error.
func TestVerifyReportsTextInIntegerColumns(t *testing.T) {
	vec := storetest.Vectors(t)
	first := vec[0]
	for _, c := range []struct {
		name, edit, reason string
	}{
		// Text sorts after every integer, so the edited row reads last and
		// its session shows a gap where it was.
		{"audit_events.seq", `UPDATE audit_events SET seq = 'two' WHERE tenant_id = ? AND session_id = ? AND seq = 2`, chain.ReasonSeqGap},
		{"audit_events.ts_unix_ms", `UPDATE audit_events SET ts_unix_ms = 1.5 WHERE tenant_id = ? AND session_id = ? AND seq = 1`, chain.ReasonMalformed},
		{"audit_events.kafka_offset", `UPDATE audit_events SET kafka_offset = x'00' WHERE tenant_id = ? AND session_id = ? AND seq = 1`, chain.ReasonMalformed},
		{"chain_heads.seq", `UPDATE chain_heads SET seq = 'many' WHERE tenant_id = ? AND session_id = ?`, chain.ReasonHeadMismatch},
	} {
		t.Run(c.name, func(t *testing.T) {
			path := filepath.Join(t.TempDir(), "audit.db")
			s, err := sqlstore.Open(context.Background(), path)
			if err != nil {
				t.Fatal(err)
			}
			defer s.Close()
			if err := s.Write(context.Background(), storetest.BatchOf(t, vec)); err != nil {
				t.Fatal(err)
			}
			db, err := sql.Open("sqlite", "file:"+path)
			if err != nil {
				t.Fatal(err)
			}
			res, err := db.Exec(c.edit, first.TenantID, first.SessionID)
			if n, _ := res.RowsAffected(); err != nil || n != 1 {
				t.Fatalf("edit: %d rows, %v", n, err)
			}
			_ = db.Close()
			rep, err := ctl.VerifyStore(context.Background(), s, projector.Filter{}, 0)
			if err != nil {
				t.Fatalf("verify stopped instead of reporting the session: %v", err)
			}
			if rep.OK || len(rep.Failures) != 1 {
				t.Fatalf("report %+v, want one failure", rep)
			}
			if f := rep.Failures[0]; f.Reason != c.reason || f.TenantID != first.TenantID || f.SessionID != first.SessionID {
				t.Errorf("failure %+v, want %s in %s/%s", f, c.reason, first.TenantID, first.SessionID)
			}
		})
	}
}

// OpenExisting creates, migrates and changes nothing: a missing file stays
// missing, a store of an older schema stays at it, and a current store
// opens for reading only.
func TestOpenExisting(t *testing.T) {
	ctx := context.Background()
	dir := t.TempDir()
	missing := filepath.Join(dir, "typo.db")
	if _, err := sqlstore.OpenExisting(ctx, missing); err == nil {
		t.Fatal("a missing store opened")
	}
	if _, err := os.Stat(missing); err == nil {
		t.Fatal("OpenExisting created the missing store")
	}

	path := filepath.Join(dir, "audit.db")
	st, err := sqlstore.Open(ctx, path)
	if err != nil {
		t.Fatal(err)
	}
	current, err := st.SchemaVersion(ctx)
	if err != nil {
		t.Fatal(err)
	}
	_ = st.Close()
	ro, err := sqlstore.OpenExisting(ctx, path)
	if err != nil {
		t.Fatalf("a current store: %v", err)
	}
	if _, rows, err := ro.Query(ctx, "SELECT count(*) FROM audit_events"); err != nil || len(rows) != 1 {
		t.Fatalf("query: %v %v", rows, err)
	}
	if err := ro.Write(ctx, &projector.Batch{Heads: []chain.Head{{TenantID: "t", SessionID: "s", Seq: 1, Hash: "sha256:" + strings.Repeat("0", 64)}}}); err == nil {
		t.Fatal("a write through a store opened by OpenExisting succeeded")
	}
	_ = ro.Close()

	// An older schema: the last migration not applied.
	db, err := sql.Open("sqlite", "file:"+path)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := db.Exec("DELETE FROM schema_version WHERE version = ?", current); err != nil {
		t.Fatal(err)
	}
	if _, err := sqlstore.OpenExisting(ctx, path); err == nil || !strings.Contains(err.Error(), "current audit schema") {
		t.Fatalf("an older schema opened: %v", err)
	}
	var n int
	if err := db.QueryRow("SELECT count(*) FROM schema_version WHERE version = ?", current).Scan(&n); err != nil || n != 0 {
		t.Fatalf("OpenExisting migrated the store (%d rows of version %d, %v)", n, current, err)
	}
	_ = db.Close()
}
