package stream

import (
	"context"
	"errors"
	"fmt"
	"time"

	"github.com/twmb/franz-go/pkg/kgo"
)

// ProducerConfig is the operator configuration of a Producer.
type ProducerConfig struct {
	// Brokers are the seed brokers (host:port).
	Brokers []string
	// Linger is how long a partition's batch waits for more records
	// before it is sent by ProduceAsync (default 0: send as soon as
	// possible). Produce never waits for it.
	Linger time.Duration
	// MaxBufferedRecords bounds records buffered and in flight; beyond
	// it, producing blocks (default 10,000, franz-go's).
	MaxBufferedRecords int
	// MaxRecordBytes bounds one record batch, and so the largest record
	// the producer sends (default 1,000,012, Kafka's default
	// max.message.bytes). Topics must accept records of that size.
	MaxRecordBytes int
	// Compression of produced batches: none, snappy (default), lz4, zstd
	// or gzip.
	Compression string
}

// Producer writes Messages idempotently with acks=all, partitioned by the
// murmur2 partitioner (see Partition). It is safe for concurrent use.
type Producer struct {
	cl *kgo.Client
}

// NewProducer returns a Producer; it connects lazily.
func NewProducer(cfg ProducerConfig, opts ...Option) (*Producer, error) {
	if len(cfg.Brokers) == 0 {
		return nil, fmt.Errorf("stream: producer: no brokers: %w", ErrConfig)
	}
	o := buildOptions("producer", opts)
	kopts := []kgo.Opt{
		kgo.WithLogger(kgoLogger{o.logger.With("stage", o.stage).WithGroup("kafka")}),
		kgo.RequiredAcks(kgo.AllISRAcks()),
		kgo.RecordPartitioner(pinPartitioner{kgo.StickyKeyPartitioner(nil)}),
		kgo.ProducerLinger(cfg.Linger),
	}
	kopts = append(kopts, o.security.seed(cfg.Brokers)...)
	if cfg.MaxRecordBytes > 0 {
		kopts = append(kopts, kgo.ProducerBatchMaxBytes(int32(cfg.MaxRecordBytes)))
	}
	c, err := compression(cfg.Compression)
	if err != nil {
		return nil, err
	}
	if c != nil {
		kopts = append(kopts, c)
	}
	if cfg.MaxBufferedRecords > 0 {
		kopts = append(kopts, kgo.MaxBufferedRecords(cfg.MaxBufferedRecords))
	}
	cl, err := kgo.NewClient(kopts...)
	if err != nil {
		return nil, fmt.Errorf("stream: producer: %w: %w", ErrConfig, err)
	}
	return &Producer{cl: cl}, nil
}

func (m Message) kgo() *kgo.Record {
	r := &kgo.Record{Topic: m.Topic, Key: m.Key, Value: m.Value, Headers: toKgoHeaders(m.Headers)}
	if m.Pin {
		r.Partition = m.Partition
		r.Context = context.WithValue(context.Background(), pinKey{}, true)
	}
	return r
}

type pinKey struct{}

// pinPartitioner is the murmur2 partitioner, except for records marked
// pinned (Message.Pin), which keep the partition they were given.
type pinPartitioner struct{ kgo.Partitioner }

func (p pinPartitioner) ForTopic(topic string) kgo.TopicPartitioner {
	return pinTopicPartitioner{p.Partitioner.ForTopic(topic)}
}

type pinTopicPartitioner struct{ kgo.TopicPartitioner }

func (p pinTopicPartitioner) Partition(r *kgo.Record, n int) int {
	if r.Context != nil && r.Context.Value(pinKey{}) != nil {
		return int(r.Partition)
	}
	return p.TopicPartitioner.Partition(r, n)
}

// Produce writes msgs and returns once every one is acknowledged by all
// in-sync replicas, or returns an error wrapping ErrProduce (or ErrClosed)
// that joins every failure. Messages of one call to the same partition keep
// their order. Cancelling ctx fails messages not yet sent.
func (p *Producer) Produce(ctx context.Context, msgs ...Message) error {
	recs := make([]*kgo.Record, len(msgs))
	for i, m := range msgs {
		recs[i] = m.kgo()
	}
	var errs []error
	for _, r := range p.cl.ProduceSync(ctx, recs...) {
		if r.Err != nil {
			errs = append(errs, fmt.Errorf("%s: %w", r.Record.Topic, r.Err))
		}
	}
	if len(errs) > 0 {
		return wrapProduce(errors.Join(errs...))
	}
	return nil
}

// ProduceAsync buffers msg and returns; done, if not nil, is called once
// with the written record (its Partition, Offset and Timestamp set) or the
// error, from a client goroutine, in produce order per partition. The batch
// lingers up to ProducerConfig.Linger. ProduceAsync blocks while the buffer
// is full.
func (p *Producer) ProduceAsync(ctx context.Context, msg Message, done func(*Record, error)) {
	p.cl.Produce(ctx, msg.kgo(), func(r *kgo.Record, err error) {
		if done == nil {
			return
		}
		if err != nil {
			done(nil, wrapProduce(err))
			return
		}
		done(fromKgo(r), nil)
	})
}

// Flush sends everything buffered and waits until it is acknowledged.
func (p *Producer) Flush(ctx context.Context) error {
	if err := p.cl.Flush(ctx); err != nil {
		return fmt.Errorf("stream: flush: %w: %w", ErrProduce, err)
	}
	return nil
}

// Close flushes nothing: call Flush first to wait for buffered messages,
// which Close otherwise fails with ErrClosed.
func (p *Producer) Close() { p.cl.Close() }

func wrapProduce(err error) error {
	if errors.Is(err, kgo.ErrClientClosed) {
		return fmt.Errorf("stream: produce: %w: %w", ErrClosed, err)
	}
	return fmt.Errorf("stream: produce: %w: %w", ErrProduce, err)
}

// OnNewBatch forwards to the wrapped partitioner, which uses it to move
// keyless records to a new sticky partition.
func (p pinTopicPartitioner) OnNewBatch() {
	if o, ok := p.TopicPartitioner.(kgo.TopicPartitionerOnNewBatch); ok {
		o.OnNewBatch()
	}
}
