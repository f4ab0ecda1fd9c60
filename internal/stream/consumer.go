package stream

import (
	"context"
	"errors"
	"fmt"
	"sync/atomic"
	"time"

	"github.com/twmb/franz-go/pkg/kgo"
)

// Start is where a Consumer begins reading each partition. The zero value
// is the beginning of the log.
type Start struct {
	end     bool
	at      time.Time
	offsets map[string]map[int32]int64
}

// FromBeginning reads every retained record.
func FromBeginning() Start { return Start{} }

// FromEnd reads only records written after the Consumer starts.
func FromEnd() Start { return Start{end: true} }

// FromTime reads records with a timestamp at or after t. The offset for t
// is looked up per partition when the consumer starts; a record committed
// while that lookup is in flight can be skipped, so a reader that must see
// everything published after some point should list the end offsets at that
// point and start FromOffsets.
func FromTime(t time.Time) Start { return Start{at: t} }

// FromOffsets reads only the listed partitions, each from its offset
// (ConsumerConfig.Topics is then ignored and may be empty).
func FromOffsets(offsets map[string]map[int32]int64) Start { return Start{offsets: offsets} }

func (s Start) offset() kgo.Offset {
	switch {
	case s.end:
		return kgo.NewOffset().AtEnd()
	case !s.at.IsZero():
		return kgo.NewOffset().AfterMilli(s.at.UnixMilli())
	}
	return kgo.NewOffset().AtStart()
}

// ConsumerConfig is the operator configuration of a Consumer.
type ConsumerConfig struct {
	// Brokers are the seed brokers (host:port).
	Brokers []string
	// Topics are read in full (every partition).
	Topics []string
	// Start is where reading begins (default: the beginning). With a
	// Group, it applies only to partitions the group has no offset for.
	Start Start
	// Group, if set, shares the topics' partitions among the group's
	// members. Offsets are committed only by Commit (at-least-once: a
	// consumer that stops before committing hands its records to the
	// next owner again). FromOffsets is not allowed with a Group.
	Group string
	// SessionTimeout is the group session timeout: how long a crashed
	// member keeps its partitions (default 45s, franz-go's). Members
	// heartbeat every third of it, at most every 3s. Group only.
	SessionTimeout time.Duration
	// FetchMaxWait bounds how long the broker holds a fetch that has no
	// data yet (default 500ms, the Java consumer's).
	FetchMaxWait time.Duration
	// ReadUncommitted reads records of open and aborted transactions too
	// (default false: read_committed).
	ReadUncommitted bool
}

// Consumer reads topics from a start position: the tail helper for tests,
// reply waiters and exports, and, with a Group, for at-least-once sinks that
// commit after their own write. Poll and Commit must be called from one
// goroutine; Close may be called from any.
type Consumer struct {
	cl *kgo.Client
	// next is, per topic and partition, the offset after the last record
	// polled, control records (transaction markers) included.
	next map[string]map[int32]int64
	// joined is whether a group consumer is in its group: set by an
	// assignment (even of no partition), cleared by a loss (a failed join
	// included).
	joined atomic.Bool
	group  bool
	// atEnd is whether the last Poll that returned records reached, in
	// each partition it returned records of, the end the broker
	// reported with them (AtEnd).
	atEnd bool
}

// NewConsumer returns a Consumer; it connects lazily.
func NewConsumer(cfg ConsumerConfig, opts ...Option) (*Consumer, error) {
	switch {
	case len(cfg.Brokers) == 0:
		return nil, fmt.Errorf("stream: consumer: no brokers: %w", ErrConfig)
	case len(cfg.Topics) == 0 && cfg.Start.offsets == nil:
		return nil, fmt.Errorf("stream: consumer: no topics: %w", ErrConfig)
	case cfg.Group != "" && cfg.Start.offsets != nil:
		return nil, fmt.Errorf("stream: consumer: FromOffsets with a group: %w", ErrConfig)
	}
	o := buildOptions("consumer", opts)
	kopts := append(o.security.seed(cfg.Brokers),
		kgo.WithLogger(kgoLogger{o.logger.With("stage", o.stage).WithGroup("kafka")}),
		// Markers are fetched so that Position moves past them; Poll
		// never returns them.
		kgo.KeepControlRecords(),
	)
	if cfg.ReadUncommitted {
		kopts = append(kopts, kgo.FetchIsolationLevel(kgo.ReadUncommitted()))
	} else {
		kopts = append(kopts, kgo.FetchIsolationLevel(kgo.ReadCommitted()))
	}
	if cfg.FetchMaxWait > 0 {
		kopts = append(kopts, kgo.FetchMaxWait(cfg.FetchMaxWait))
	} else {
		kopts = append(kopts, kgo.FetchMaxWait(defaultFetchMaxWait))
	}
	if cfg.Start.offsets != nil {
		parts := map[string]map[int32]kgo.Offset{}
		for topic, m := range cfg.Start.offsets {
			parts[topic] = map[int32]kgo.Offset{}
			for p, off := range m {
				parts[topic][p] = kgo.NewOffset().At(off)
			}
		}
		kopts = append(kopts, kgo.ConsumePartitions(parts))
		cl, err := kgo.NewClient(kopts...)
		if err != nil {
			return nil, fmt.Errorf("stream: consumer: %w: %w", ErrConfig, err)
		}
		return &Consumer{cl: cl, next: map[string]map[int32]int64{}}, nil
	}
	kopts = append(kopts, kgo.ConsumeTopics(cfg.Topics...), kgo.ConsumeResetOffset(cfg.Start.offset()))
	c := &Consumer{next: map[string]map[int32]int64{}, group: cfg.Group != ""}
	if cfg.Group != "" {
		kopts = append(kopts, kgo.ConsumerGroup(cfg.Group), kgo.DisableAutoCommit(),
			kgo.OnPartitionsAssigned(func(context.Context, *kgo.Client, map[string][]int32) { c.joined.Store(true) }),
			kgo.OnPartitionsLost(func(context.Context, *kgo.Client, map[string][]int32) { c.joined.Store(false) }))
		if cfg.SessionTimeout > 0 {
			kopts = append(kopts, kgo.SessionTimeout(cfg.SessionTimeout), kgo.HeartbeatInterval(min(cfg.SessionTimeout/3, 3*time.Second)))
		}
	}
	cl, err := kgo.NewClient(kopts...)
	if err != nil {
		return nil, fmt.Errorf("stream: consumer: %w: %w", ErrConfig, err)
	}
	c.cl = cl
	return c, nil
}

// Joined reports whether a consumer with a Group is in its group, with
// its partitions assigned; one without a Group always is.
func (c *Consumer) Joined() bool { return !c.group || c.joined.Load() }

// Poll blocks until records are available or ctx is done, and returns them
// in offset order per partition. It returns ctx's error when ctx is done,
// ErrClosed after Close, and ErrBroker wrapping fetch errors that the client
// does not retry by itself (records fetched alongside are still returned).
func (c *Consumer) Poll(ctx context.Context) ([]*Record, error) {
	fetches := c.cl.PollFetches(ctx)
	if fetches.IsClientClosed() {
		return nil, fmt.Errorf("stream: poll: %w", ErrClosed)
	}
	var errs []error
	fetches.EachError(func(topic string, p int32, err error) {
		if errors.Is(err, context.Canceled) || errors.Is(err, context.DeadlineExceeded) {
			return
		}
		errs = append(errs, fmt.Errorf("%s/%d: %w", topic, p, err))
	})
	recs := make([]*Record, 0, fetches.NumRecords())
	fetches.EachRecord(func(r *kgo.Record) {
		pos := c.next[r.Topic]
		if pos == nil {
			pos = map[int32]int64{}
			c.next[r.Topic] = pos
		}
		pos[r.Partition] = r.Offset + 1
		if !r.Attrs.IsControl() {
			recs = append(recs, fromKgo(r))
		}
	})
	if len(recs) > 0 {
		c.atEnd = true
		fetches.EachPartition(func(p kgo.FetchTopicPartition) {
			end := p.LastStableOffset // read_committed: the end of committed records
			if end < 0 {
				end = p.HighWatermark
			}
			if pos, ok := c.next[p.Topic][p.Partition]; p.Err == nil && len(p.Records) > 0 && ok && pos < end {
				c.atEnd = false
			}
		})
	}
	if len(errs) > 0 {
		return recs, fmt.Errorf("stream: poll: %w: %w", ErrBroker, errors.Join(errs...))
	}
	if len(recs) == 0 && ctx.Err() != nil {
		return nil, ctx.Err()
	}
	return recs, nil
}

// AtEnd reports whether the last Poll that returned records returned, of
// every partition it returned records of, everything up to the end offset
// the broker reported with them (the last stable offset when reading
// read_committed): a reader that has handled them has caught up with its
// input as it was then, even while more keeps arriving.
func (c *Consumer) AtEnd() bool { return c.atEnd }

// Position returns the offset after the last record Poll fetched from the
// partition, transaction markers included, or -1 before the first. A reader
// is done with a partition once Position reaches EndOffsets.
func (c *Consumer) Position(topic string, partition int32) int64 {
	if off, ok := c.next[topic][partition]; ok {
		return off
	}
	return -1
}

// Commit commits, for a group Consumer, the offsets just past the given
// records (the highest per partition), synchronously. Records of a
// partition the consumer no longer owns are committed too, as long as it is
// still a member of the group: neither the client nor the broker checks
// ownership, so the partition's offset can move back behind what its new
// owner committed (which then reads those records again) or ahead of what
// the new owner has read. Either is safe for a sink that commits only
// records it has written; a commit after the consumer left the group fails.
func (c *Consumer) Commit(ctx context.Context, recs ...*Record) error {
	if len(recs) == 0 {
		return nil
	}
	krs := make([]*kgo.Record, len(recs))
	for i, r := range recs {
		krs[i] = &kgo.Record{Topic: r.Topic, Partition: r.Partition, Offset: r.Offset, LeaderEpoch: -1}
	}
	if err := c.cl.CommitRecords(ctx, krs...); err != nil {
		return fmt.Errorf("stream: commit: %w: %w", ErrBroker, err)
	}
	return nil
}

// Close leaves the group, if any, without committing, and releases the
// client. A Poll blocked in another goroutine returns ErrClosed.
func (c *Consumer) Close() { c.cl.Close() }
