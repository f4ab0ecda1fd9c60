package sqlstore_test

import (
	"context"
	"database/sql"
	"path/filepath"
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
