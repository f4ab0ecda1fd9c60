-- Aegis audit store, ClickHouse, migration 1: the audit tables.
--
-- Runs unchanged on ClickHouse 18.16 and on current releases: only MergeTree
-- family engines, String / UInt* / Int* / Date columns (no DateTime64,
-- LowCardinality, Nullable or JSON), and CREATE ... IF NOT EXISTS. Every
-- insert names its columns. docs/store.md explains every table.
--
-- Deduplication: the projector delivers at least once, so every table is a
-- ReplacingMergeTree whose sorting key is the row's identity. A redelivered
-- row is identical to the first copy; background merges collapse the copies,
-- and queries that must not double count read with FINAL
-- (docs/audit-queries.md). Partitions are by month of a date that never
-- changes for a given key, so copies always meet in the same partition.

-- audit_events: one row per sealed record (aegis.sealed). The sealed record
-- is rebuilt byte for byte from v, tenant_id, session_id, seq, ts_unix_ms,
-- event_type, manifest, payload (canonical JSON), decision (canonical JSON,
-- '' when absent) and prev_hash, so `aegisctl verify --store` recomputes
-- hash from the row. tool_name, call_id, outcome, reason and policy_revision
-- are copies for filtering; verify checks them against payload and decision.
CREATE TABLE IF NOT EXISTS audit_events (
    tenant_id        String,
    session_id       String,
    seq              UInt64,
    ts_unix_ms       Int64,
    event_date       Date,
    v                UInt8,
    event_type       String,
    manifest         String,
    tool_name        String,
    call_id          String,
    outcome          String,
    reason           String,
    policy_revision  String,
    payload          String,
    decision         String,
    prev_hash        String,
    hash             String,
    kafka_partition  Int32,
    kafka_offset     Int64
) ENGINE = ReplacingMergeTree()
PARTITION BY toYYYYMM(event_date)
ORDER BY (tenant_id, session_id, seq);

-- decisions: one row per TOOL_CALL_PROPOSED, with the decision's fields as
-- columns and the session's taint state before the proposal.
CREATE TABLE IF NOT EXISTS decisions (
    tenant_id         String,
    session_id        String,
    seq               UInt64,
    ts_unix_ms        Int64,
    event_date        Date,
    manifest          String,
    tool_name         String,
    call_id           String,
    outcome           String,
    reason            String,
    max_output_bytes  Int64,
    timeout_ms        Int64,
    policy_revision   String,
    manifest_digest   String,
    input_digest      String,
    tainted           UInt8,
    hash              String
) ENGINE = ReplacingMergeTree()
PARTITION BY toYYYYMM(event_date)
ORDER BY (tenant_id, session_id, seq);

-- session_snapshots: the latest decider/session snapshot of each session,
-- folded by the projector over the sealed events. Version column last_seq:
-- FINAL (or argMax(..., last_seq)) keeps the latest. Partitioned by the
-- month of the session's first event, which never changes.
CREATE TABLE IF NOT EXISTS session_snapshots (
    tenant_id           String,
    session_id          String,
    last_seq            UInt64,
    first_ts_unix_ms    Int64,
    last_ts_unix_ms     Int64,
    first_event_date    Date,
    manifest            String,
    events              Int64,
    steps               Int64,
    model_calls         Int64,
    tool_calls          Int64,
    tainted             UInt8,
    loop_detected       UInt8,
    terminated          UInt8,
    pending_approvals   UInt32,
    handoff_state       String,
    snapshot            String,
    snapshot_hash       String
) ENGINE = ReplacingMergeTree(last_seq)
PARTITION BY toYYYYMM(first_event_date)
ORDER BY (tenant_id, session_id);

-- rejected_records: one row per record on aegis.rejected. The identity is
-- the rejected record's origin (stage, topic, partition, offset); tenant,
-- session and seq are empty / 0 when the original could not be decoded.
-- event_date is the day of the rejection record's Kafka timestamp.
CREATE TABLE IF NOT EXISTS rejected_records (
    tenant_id         String,
    session_id        String,
    seq               UInt64,
    event_date        Date,
    rejected_unix_ms  Int64,
    stage             String,
    reason            String,
    detail            String,
    expected_seq      UInt64,
    source_topic      String,
    source_partition  Int32,
    source_offset     Int64,
    record_key        String,
    original          String,
    original_base64   String
) ENGINE = ReplacingMergeTree()
PARTITION BY toYYYYMM(event_date)
ORDER BY (tenant_id, session_id, seq, stage, source_topic, source_partition, source_offset);

-- chain_heads: the sealer's head of each session (aegis.chain-heads),
-- version column seq: FINAL (or argMax(hash, seq)) keeps the latest.
CREATE TABLE IF NOT EXISTS chain_heads (
    tenant_id   String,
    session_id  String,
    seq         UInt64,
    hash        String
) ENGINE = ReplacingMergeTree(seq)
ORDER BY (tenant_id, session_id);
