package sqlstore

import (
	"context"
	"path/filepath"
	"testing"
)

// TestWritesAreDurableWhenTheyReturn: the projector commits a batch's Kafka
// offsets as soon as Write returns, so the transaction must be on disk by
// then. In WAL mode synchronous=NORMAL syncs the WAL only at checkpoints: a
// power loss or OS crash rolled back batches whose offsets were already
// committed, and those rows were never projected again (their sessions'
// next records then did not follow the stored history). FULL syncs the WAL
// at every commit.
func TestWritesAreDurableWhenTheyReturn(t *testing.T) {
	ctx := context.Background()
	s, err := Open(ctx, filepath.Join(t.TempDir(), "audit.db"))
	if err != nil {
		t.Fatal(err)
	}
	defer s.Close()
	// Every connection of the pool is opened with the same pragmas; hold
	// several at once so that more than one is checked.
	for i := range 3 {
		conn, err := s.db.Conn(ctx)
		if err != nil {
			t.Fatal(err)
		}
		defer conn.Close()
		var mode string
		var sync int
		if err := conn.QueryRowContext(ctx, "PRAGMA journal_mode").Scan(&mode); err != nil {
			t.Fatal(err)
		}
		if err := conn.QueryRowContext(ctx, "PRAGMA synchronous").Scan(&sync); err != nil {
			t.Fatal(err)
		}
		if mode != "wal" || sync != 2 {
			t.Errorf("connection %d: journal_mode %s, synchronous %d; want wal and 2 (FULL)", i, mode, sync)
		}
	}
}
