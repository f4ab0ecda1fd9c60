package ctl

import (
	"context"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"aegis.dev/aegis/projector/stores"
)

// TestSQLNeverWritesFiles: no statement sent to `aegisctl sql` creates or
// writes a file, not even through ATTACH or VACUUM INTO after ending the
// read-only transaction with a COMMIT of its own.
func TestSQLNeverWritesFiles(t *testing.T) {
	url := sqliteURL(t)
	writeStore(t, url, auditFixture(t))
	dir := t.TempDir()
	for _, q := range []string{
		"ATTACH 'file:" + dir + "/a.db?mode=rwc' AS x",
		"ATTACH '" + dir + "/b.db' AS x",
		"COMMIT; ATTACH 'file:" + dir + "/c.db?mode=rwc' AS x; PRAGMA query_only=0; CREATE TABLE x.t(a); SELECT 1",
		"COMMIT; VACUUM INTO '" + dir + "/d.db'",
	} {
		if code, out, _ := run(t, "", "sql", q, "--store", url); code != ExitFailed {
			t.Errorf("%s: exit %d, want %d (out %q)", q, code, ExitFailed, out)
		}
	}
	if ents, _ := os.ReadDir(dir); len(ents) > 0 {
		t.Errorf("sql wrote %s", ents[0].Name())
	}
}

// TestSQLMissingStore: a store path that names no file is an environment
// error, not a new empty store.
func TestSQLMissingStore(t *testing.T) {
	path := filepath.Join(t.TempDir(), "typo.db")
	code, _, stderr := run(t, "", "sql", "SELECT 1", "--store", "sqlite:"+path)
	if code != ExitRuntime {
		t.Errorf("exit %d, want %d (stderr %q)", code, ExitRuntime, stderr)
	}
	if _, err := os.Stat(path); err == nil {
		t.Errorf("sql created %s", path)
	}
}

// TestIntegrationSQLMissingClickHouseDatabase: a mistyped ClickHouse
// database is an error, not a new, empty store created with its schema.
func TestIntegrationSQLMissingClickHouseDatabase(t *testing.T) {
	base := clickhouseURL(t) // a database of its own, dropped at the end
	st, err := stores.Open(context.Background(), base)
	if err != nil {
		t.Fatal(err)
	}
	_ = st.Close()
	typo := base + "_typo"
	code, _, stderr := run(t, "", "sql", "SELECT count(*) FROM audit_events", "--store", typo)
	if code != ExitRuntime || !strings.Contains(stderr, "does not hold the current audit schema") {
		t.Fatalf("exit %d, want %d (stderr %q)", code, ExitRuntime, stderr)
	}
	// The typo database was not created.
	code, out, stderr := run(t, "", "sql", "SELECT count(*) AS n FROM system.databases WHERE name = '"+typo[strings.LastIndex(typo, "/")+1:]+"'", "--store", base, "--format", "csv")
	if code != ExitOK || !strings.Contains(out, "n\n0") {
		t.Fatalf("exit %d, out %q, stderr %q: the typo database exists", code, out, stderr)
	}
}

// A reader of the store given a path that does not exist fails (exit 3)
// and creates nothing: `verify` of a new, empty store would pass with no
// session verified.
func TestReadersDoNotCreateAStore(t *testing.T) {
	for _, args := range [][]string{
		{"verify", "--store"},
		{"replay", "--mode", "verify", "--store"},
	} {
		path := filepath.Join(t.TempDir(), "typo.db")
		code, _, stderr := run(t, "", append(args, "sqlite:"+path)...)
		if code != ExitRuntime {
			t.Errorf("%v: exit %d, want %d (stderr %q)", args, code, ExitRuntime, stderr)
		}
		if _, err := os.Stat(path); err == nil {
			t.Errorf("%v created %s", args, path)
		}
	}
}
