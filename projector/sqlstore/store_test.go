package sqlstore_test

import (
	"context"
	"path/filepath"
	"testing"

	"aegis.dev/aegis/projector/sqlstore"
	"aegis.dev/aegis/projector/storetest"
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
