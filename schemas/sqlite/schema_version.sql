-- schema_version: one row per applied migration (NNNN_name.sql in this
-- directory). The store creates this table first and applies, in one
-- transaction each, every migration whose version is above max(version).
CREATE TABLE IF NOT EXISTS schema_version (
    version          INTEGER PRIMARY KEY,
    name             TEXT NOT NULL,
    applied_unix_ms  INTEGER NOT NULL
);
