package stream

import "errors"

// Sentinel errors. Every error returned by this package wraps exactly one of
// them (test with errors.Is); the sentinel's text is the stable code that
// logs and operators can match on.
var (
	// ErrConfig reports an invalid TransactConfig, ProducerConfig,
	// ConsumerConfig, EmbeddedConfig or TopicSpec, or a transactional ID
	// the cluster does not authorize the stage to use.
	ErrConfig = errors.New("stream_config")

	// ErrTopicMissing reports that a topic a stage needs does not exist.
	ErrTopicMissing = errors.New("stream_topic_missing")

	// ErrTopicMismatch reports that an existing topic differs from its
	// TopicSpec (partition count or cleanup.policy).
	ErrTopicMismatch = errors.New("stream_topic_mismatch")

	// ErrCoPartition reports that the input, state and output topics of a
	// transactional stage do not all have the same partition count.
	ErrCoPartition = errors.New("stream_copartition_mismatch")

	// ErrProcess reports that a Processor kept failing on the same input
	// after the configured number of retries; the input was not skipped.
	ErrProcess = errors.New("stream_process_failed")

	// ErrRestore reports that a Processor kept rejecting its partition's
	// state (Restore returned an error) after the configured retries.
	ErrRestore = errors.New("stream_restore_failed")

	// ErrFenced reports that another producer with the same transactional
	// ID took over: this instance is a zombie and must stop.
	ErrFenced = errors.New("stream_fenced")

	// ErrStalled reports that a transactional stage's loop made no
	// progress for its stall timeout, and that its session did not end
	// even after its Kafka client was closed: the process should exit and
	// be restarted.
	ErrStalled = errors.New("stream_stalled")

	// ErrProduce reports records that the broker did not acknowledge.
	ErrProduce = errors.New("stream_produce_failed")

	// ErrBroker reports any other failure talking to the brokers.
	ErrBroker = errors.New("stream_broker")

	// ErrClosed reports use of a Producer or Consumer after Close.
	ErrClosed = errors.New("stream_closed")
)
