// Package sqlschema holds the SQLite DDL of the audit store: the
// schema_version table and the numbered migrations (NNNN_name.sql), embedded
// so that the store applies exactly the files in this directory.
// projector/sqlstore runs them; docs/store.md describes the tables.
package sqlschema

import (
	"embed"
	"io/fs"
)

//go:embed *.sql
var files embed.FS

// Files returns the DDL files: schema_version.sql and NNNN_name.sql.
func Files() fs.FS { return files }
