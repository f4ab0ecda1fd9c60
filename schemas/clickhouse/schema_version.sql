-- schema_version: one row per applied migration (NNNN_name.sql in this
-- directory). The store creates this table first, applies every migration
-- whose version is above max(version), in order, and records it. Migrations
-- are idempotent (IF NOT EXISTS), so two processes migrating at once are
-- harmless; ReplacingMergeTree collapses their duplicate rows.
CREATE TABLE IF NOT EXISTS schema_version (
    version          UInt32,
    name             String,
    applied_unix_ms  Int64
) ENGINE = ReplacingMergeTree()
ORDER BY version;
