package stores_test

import (
	"context"
	"errors"
	"path/filepath"
	"testing"

	"aegis.dev/aegis/projector"
	"aegis.dev/aegis/projector/stores"
)

func TestParse(t *testing.T) {
	cases := []struct {
		name, url string
		want      stores.Kind
	}{
		{"sqlite", "sqlite:./data/audit.db", stores.SQLite},
		{"sqlite absolute", "sqlite:/var/lib/aegis/audit.db", stores.SQLite},
		{"clickhouse", "clickhouse://127.0.0.1:19000/aegis", stores.ClickHouse},
		{"sqlite without path", "sqlite:", ""},
		{"clickhouse without db", "clickhouse://127.0.0.1:19000", ""},
		{"unknown scheme", "postgres://x/y", ""},
		{"bare path", "./audit.db", ""},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			got, err := stores.Parse(c.url)
			if got != c.want || (err == nil) != (c.want != "") {
				t.Errorf("Parse(%q) = %q, %v; want %q", c.url, got, err, c.want)
			}
			if err != nil && !errors.Is(err, projector.ErrStore) {
				t.Errorf("error %v does not wrap ErrStore", err)
			}
		})
	}
}

func TestOpenSQLite(t *testing.T) {
	s, err := stores.Open(context.Background(), "sqlite:"+filepath.Join(t.TempDir(), "a.db"))
	if err != nil {
		t.Fatal(err)
	}
	defer s.Close()
	if _, rows, err := s.Query(context.Background(), "SELECT count(*) FROM audit_events"); err != nil || rows[0][0] != int64(0) {
		t.Errorf("empty store: %v, %v", rows, err)
	}
}
