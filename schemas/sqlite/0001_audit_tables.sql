-- Aegis audit store, SQLite, migration 1: the same logical tables as
-- schemas/clickhouse/0001_audit_tables.sql, with the same column names and
-- meanings (docs/store.md). Dates are TEXT 'YYYY-MM-DD' (UTC), booleans
-- INTEGER 0/1. The primary keys are the rows' identities: the projector
-- writes with INSERT ... ON CONFLICT, so a redelivered row never appears
-- twice, and snapshots and heads only move forward.

CREATE TABLE IF NOT EXISTS audit_events (
    tenant_id        TEXT    NOT NULL,
    session_id       TEXT    NOT NULL,
    seq              INTEGER NOT NULL,
    ts_unix_ms       INTEGER NOT NULL,
    event_date       TEXT    NOT NULL,
    v                INTEGER NOT NULL,
    event_type       TEXT    NOT NULL,
    manifest         TEXT    NOT NULL,
    tool_name        TEXT    NOT NULL,
    call_id          TEXT    NOT NULL,
    outcome          TEXT    NOT NULL,
    reason           TEXT    NOT NULL,
    policy_revision  TEXT    NOT NULL,
    payload          TEXT    NOT NULL,
    decision         TEXT    NOT NULL,
    prev_hash        TEXT    NOT NULL,
    hash             TEXT    NOT NULL,
    kafka_partition  INTEGER NOT NULL,
    kafka_offset     INTEGER NOT NULL,
    PRIMARY KEY (tenant_id, session_id, seq)
) WITHOUT ROWID;
CREATE INDEX IF NOT EXISTS audit_events_ts ON audit_events (ts_unix_ms);
CREATE INDEX IF NOT EXISTS audit_events_type ON audit_events (event_type, tenant_id);

CREATE TABLE IF NOT EXISTS decisions (
    tenant_id         TEXT    NOT NULL,
    session_id        TEXT    NOT NULL,
    seq               INTEGER NOT NULL,
    ts_unix_ms        INTEGER NOT NULL,
    event_date        TEXT    NOT NULL,
    manifest          TEXT    NOT NULL,
    tool_name         TEXT    NOT NULL,
    call_id           TEXT    NOT NULL,
    outcome           TEXT    NOT NULL,
    reason            TEXT    NOT NULL,
    max_output_bytes  INTEGER NOT NULL,
    timeout_ms        INTEGER NOT NULL,
    policy_revision   TEXT    NOT NULL,
    manifest_digest   TEXT    NOT NULL,
    input_digest      TEXT    NOT NULL,
    tainted           INTEGER NOT NULL,
    hash              TEXT    NOT NULL,
    PRIMARY KEY (tenant_id, session_id, seq)
) WITHOUT ROWID;
CREATE INDEX IF NOT EXISTS decisions_reason ON decisions (reason, tenant_id);

CREATE TABLE IF NOT EXISTS session_snapshots (
    tenant_id           TEXT    NOT NULL,
    session_id          TEXT    NOT NULL,
    last_seq            INTEGER NOT NULL,
    first_ts_unix_ms    INTEGER NOT NULL,
    last_ts_unix_ms     INTEGER NOT NULL,
    first_event_date    TEXT    NOT NULL,
    manifest            TEXT    NOT NULL,
    events              INTEGER NOT NULL,
    steps               INTEGER NOT NULL,
    model_calls         INTEGER NOT NULL,
    tool_calls          INTEGER NOT NULL,
    tainted             INTEGER NOT NULL,
    loop_detected       INTEGER NOT NULL,
    terminated          INTEGER NOT NULL,
    pending_approvals   INTEGER NOT NULL,
    handoff_state       TEXT    NOT NULL,
    snapshot            TEXT    NOT NULL,
    snapshot_hash       TEXT    NOT NULL,
    PRIMARY KEY (tenant_id, session_id)
) WITHOUT ROWID;

CREATE TABLE IF NOT EXISTS rejected_records (
    tenant_id         TEXT    NOT NULL,
    session_id        TEXT    NOT NULL,
    seq               INTEGER NOT NULL,
    event_date        TEXT    NOT NULL,
    rejected_unix_ms  INTEGER NOT NULL,
    stage             TEXT    NOT NULL,
    reason            TEXT    NOT NULL,
    detail            TEXT    NOT NULL,
    expected_seq      INTEGER NOT NULL,
    source_topic      TEXT    NOT NULL,
    source_partition  INTEGER NOT NULL,
    source_offset     INTEGER NOT NULL,
    record_key        TEXT    NOT NULL,
    original          TEXT    NOT NULL,
    original_base64   TEXT    NOT NULL,
    PRIMARY KEY (tenant_id, session_id, seq, stage, source_topic, source_partition, source_offset)
) WITHOUT ROWID;

CREATE TABLE IF NOT EXISTS chain_heads (
    tenant_id   TEXT    NOT NULL,
    session_id  TEXT    NOT NULL,
    seq         INTEGER NOT NULL,
    hash        TEXT    NOT NULL,
    PRIMARY KEY (tenant_id, session_id)
) WITHOUT ROWID;
