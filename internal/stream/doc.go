// Package stream is the one Kafka runtime of Aegis: the only package that
// imports the Kafka client (franz-go), its admin client (kadm) and its
// in-process broker (kfake). Stages plug their record handling into it.
//
// # Transactional stages
//
// The decider and the sealer are transactional stages: a Transactor (or
// RunTransact) consumes an input topic in a consumer group, hands each
// owned partition's records to that partition's Processor, and writes
// everything the processors emit together with the consumed offsets in one
// Kafka transaction (franz-go's GroupTransactSession, read_committed,
// stable offset fetches). It guarantees:
//
//   - Exactly once: an input record's outputs and state updates are
//     committed if and only if its offset is, across crashes, restarts and
//     rebalances. Readers that read read_committed see each exactly once.
//   - Order: a partition's records reach its Processor in offset order, and
//     a Processor's emits to one partition keep their order.
//   - One writer: a partition is owned by one instance at a time. A
//     restarted instance (same TransactionalID) fences its previous
//     incarnation before it restores anything, so a zombie can neither
//     commit nor hold the state topic back.
//   - No skipping: a failing Processor stops the stage after bounded
//     retries (ErrProcess); nothing is ever committed past a record that
//     was not processed.
//   - Co-partitioning: input, state and output topics must have the same
//     partition count; Run refuses to start otherwise (ErrCoPartition).
//
// Each poll (up to MaxBatch records) is one transaction. The partitions in
// it are processed concurrently, one goroutine per partition, and joined
// before the transaction ends.
//
// # State and the abort/rebuild rule
//
// A partition's state lives in the compacted state topic, at the same
// partition number, written by the Processor as ordinary emits in the same
// transaction as its input. When a partition is assigned, a fresh Processor
// is created and fed, through Restore, the latest value of every key of
// that state partition, read read_committed to its end by a separate
// direct-assignment client; only then does it see input.
//
// Whenever a transaction does not commit (Process error, failed produce,
// rebalance, broker error), every Processor of the instance is discarded,
// because its memory saw input whose effects were rolled back. All owned
// partitions are restored again and processing resumes from the committed
// offsets (the session rewinds its positions on abort). A Processor
// therefore never needs undo logic; it must only keep all its state in
// itself and in its emits.
//
// # Failures
//
// Broker failures are retried forever with exponential backoff (a new
// session each time). A transaction that aborts with no processor failing
// is retried at once (a rebalance); a second one in a row and the next
// (the group coordinator refusing the offsets) back off the same way. Process errors are retried MaxProcessRetries times,
// Restore errors likewise; then Run returns ErrProcess or ErrRestore. A
// produce error that no retry can cure (a record over the topic's
// max.message.bytes, an invalid record) counts as a Process error, so the
// stage stops loudly instead of retrying one batch forever.
// ErrFenced (another instance took the transactional ID) and configuration
// errors end Run at once.
//
// # Shutdown order
//
// Cancelling Run's context is the only stop signal. Run then: stops
// polling; lets the processors of the current batch return (they see the
// cancelled context); aborts the open transaction, unless the cancellation
// came after all of them had returned, in which case the transaction is
// finished normally; leaves the consumer group so that the partitions move
// at once; and returns nil. A pipeline stops its producers (ingest) first and its
// sinks (projectors) last, so that each stage drains what the one before
// it committed.
//
// # Other helpers
//
// Producer writes idempotently with acks=all through the murmur2
// partitioner that Partition exposes; Consumer reads topics read_committed
// from a start position, optionally in a group with explicit commits;
// EnsureTopics creates and checks topics; StartEmbedded runs a
// single-node broker with transactions, persisted to a data directory, that
// any Kafka client can connect to.
//
// # Metrics
//
// With WithRegisterer, a Transactor registers, all labelled stage=<name>:
// aegis_stream_records_consumed_total, aegis_stream_records_produced_total,
// aegis_stream_batch_records, aegis_stream_handle_seconds,
// aegis_stream_transaction_phase_seconds{phase=process|flush|end},
// aegis_stream_transactions_total{result}, aegis_stream_restore_seconds and
// aegis_stream_lag_records{partition}.
package stream
