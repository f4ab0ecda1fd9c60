package chstore_test

import (
	"context"
	"encoding/json"
	"fmt"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"aegis.dev/aegis/projector"
	"aegis.dev/aegis/projector/chstore"
	"aegis.dev/aegis/projector/storetest"
)

var dbSeq atomic.Int64

// openFresh opens a store on a new database named after the one in
// AEGIS_TEST_CLICKHOUSE, dropped when the test ends.
func openFresh(t testing.TB) *chstore.Store {
	t.Helper()
	cfg, err := chstore.ParseURL(storetest.ServiceAddr(t, "AEGIS_TEST_CLICKHOUSE"))
	if err != nil {
		t.Fatal(err)
	}
	cfg.Database = fmt.Sprintf("%s_%d_%d", cfg.Database, time.Now().UnixNano(), dbSeq.Add(1))
	ctx := context.Background()
	s, err := chstore.Open(ctx, cfg)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		_ = s.DropDatabase(context.Background())
		_ = s.Close()
	})
	return s
}

func TestIntegrationStoreSuite(t *testing.T) {
	storetest.Run(t, storetest.Dialect{Final: "FINAL"}, func(t testing.TB) storetest.Store { return openFresh(t) })
}

func TestIntegrationMigrationsAreIdempotent(t *testing.T) {
	s := openFresh(t)
	cfg, _ := chstore.ParseURL(storetest.ServiceAddr(t, "AEGIS_TEST_CLICKHOUSE"))
	cfg.Database = s.Database()
	again, err := chstore.Open(context.Background(), cfg)
	if err != nil {
		t.Fatal(err)
	}
	defer again.Close()
	v, err := again.SchemaVersion(context.Background())
	if err != nil || v != 1 {
		t.Errorf("schema version %d, %v; want 1", v, err)
	}
}

func TestParseURL(t *testing.T) {
	cases := []struct {
		name, url, want string
		ok              bool
	}{
		{"host port db", "clickhouse://127.0.0.1:19000/aegis", "127.0.0.1:19000 aegis  ", true},
		{"default port", "clickhouse://ch.internal/audit", "ch.internal:9000 audit  ", true},
		{"credentials", "clickhouse://auditor:s3cret@ch:9000/audit", "ch:9000 audit auditor s3cret", true},
		{"no database", "clickhouse://127.0.0.1:19000/", "", false},
		{"nested path", "clickhouse://127.0.0.1:19000/a/b", "", false},
		{"wrong scheme", "http://127.0.0.1:18123/aegis", "", false},
		{"sqlite url", "sqlite:/tmp/x.db", "", false},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			cfg, err := chstore.ParseURL(c.url)
			if (err == nil) != c.ok {
				t.Fatalf("err %v, want ok=%v", err, c.ok)
			}
			if got := strings.Join([]string{cfg.Addr, cfg.Database, cfg.User, cfg.Password}, " "); c.ok && got != c.want {
				t.Errorf("got %q, want %q", got, c.want)
			}
		})
	}
}

// TestIntegrationReadOnlyUserOpensAStore: an auditor's account is usually
// read-only (readonly=1 in its profile; deploy/clickhouse/users.xml has one,
// `auditor`). It must be able to open a store the projector created, read
// it and query it; only writing fails.
func TestIntegrationReadOnlyUserOpensAStore(t *testing.T) {
	s := openFresh(t)
	ctx := context.Background()
	vec := storetest.Vectors(t)
	if err := s.Write(ctx, storetest.BatchOf(t, vec)); err != nil {
		t.Fatal(err)
	}
	cfg, _ := chstore.ParseURL(storetest.ServiceAddr(t, "AEGIS_TEST_CLICKHOUSE"))
	cfg.Database, cfg.User = s.Database(), "auditor"
	ro, err := chstore.Open(ctx, cfg)
	if err != nil {
		t.Fatalf("read-only user: %v", err)
	}
	defer ro.Close()
	_, rows, err := ro.Query(ctx, "SELECT count() FROM audit_events")
	if err != nil || len(rows) != 1 || fmt.Sprint(rows[0][0]) != fmt.Sprint(len(vec)) {
		t.Fatalf("query: %v %v, want %d events", rows, err, len(vec))
	}
	heads, err := ro.Heads(ctx, projector.Filter{})
	if err != nil || len(heads) == 0 {
		t.Fatalf("heads: %d, %v", len(heads), err)
	}
	if err := ro.Write(ctx, storetest.BatchOf(t, vec)); err == nil {
		t.Error("a read-only user wrote")
	}
	// A database that was never created is an error that says so.
	cfg.Database = s.Database() + "_absent"
	if st, err := chstore.Open(ctx, cfg); err == nil {
		_ = st.Close()
		t.Error("read-only user opened a database that does not exist")
	}
}

// TestIntegrationQueryArrays: arrays read by a query hold plain values, so
// `aegisctl sql --format json` writes the numbers and days a query returns
// (an Array(UInt8) was a base64 string).
func TestIntegrationQueryArrays(t *testing.T) {
	s := openFresh(t)
	_, rows, err := s.Query(context.Background(), "SELECT [toUInt8(1), toUInt8(0)] AS flags, [toDate('2026-01-01')] AS days")
	if err != nil {
		t.Fatal(err)
	}
	if b, err := json.Marshal(rows); err != nil || string(b) != `[[[1,0],["2026-01-01"]]]` {
		t.Errorf("rows %s (%v), want [[[1,0],[\"2026-01-01\"]]]", b, err)
	}
}
