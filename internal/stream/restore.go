package stream

import (
	"cmp"
	"context"
	"errors"
	"fmt"
	"log/slog"
	"slices"

	"github.com/twmb/franz-go/pkg/kadm"
	"github.com/twmb/franz-go/pkg/kgo"
)

// keyValue is one key's latest state.
type keyValue struct {
	key, value []byte
	offset     int64
}

// readLatest reads the given partitions of a compacted topic from their start
// to the high watermark observed on entry, read_committed, with a dedicated
// direct-assignment client, and returns per partition the latest value of
// every key that is not tombstoned, in the offset order of those values.
//
// The read ends only once a record at or past high watermark − 1 has been
// seen. Control records are kept for that purpose: the last offset of a
// transactional log is a commit or abort marker, and a read_committed
// consumer cannot pass an open transaction, so a transaction still open on
// entry (a previous owner finishing) is waited for and then included or
// excluded according to its outcome.
func readLatest(ctx context.Context, adm *kadm.Client, brokers []string, topic string, parts []int32, log *slog.Logger) (map[int32][]keyValue, error) {
	starts, err := adm.ListStartOffsets(ctx, topic)
	if err == nil {
		err = starts.Error()
	}
	if err != nil {
		return nil, fmt.Errorf("stream: restore %s: list start offsets: %w: %w", topic, ErrBroker, err)
	}
	ends, err := adm.ListEndOffsets(ctx, topic)
	if err == nil {
		err = ends.Error()
	}
	if err != nil {
		return nil, fmt.Errorf("stream: restore %s: list end offsets: %w: %w", topic, ErrBroker, err)
	}
	targets := map[int32]int64{}
	assign := map[int32]kgo.Offset{}
	for _, p := range parts {
		s, ok1 := starts.Lookup(topic, p)
		e, ok2 := ends.Lookup(topic, p)
		if !ok1 || !ok2 {
			return nil, fmt.Errorf("stream: restore %s/%d: partition not found: %w", topic, p, ErrBroker)
		}
		if e.Offset > s.Offset {
			targets[p] = e.Offset
			assign[p] = kgo.NewOffset().At(s.Offset)
		}
	}
	out := make(map[int32][]keyValue, len(parts))
	if len(assign) == 0 {
		return out, nil
	}

	cl, err := kgo.NewClient(
		kgo.SeedBrokers(brokers...),
		kgo.WithLogger(kgoLogger{log.WithGroup("kafka")}),
		kgo.ConsumePartitions(map[string]map[int32]kgo.Offset{topic: assign}),
		kgo.FetchIsolationLevel(kgo.ReadCommitted()),
		kgo.KeepControlRecords(),
		kgo.FetchMaxWait(defaultFetchMaxWait),
	)
	if err != nil {
		return nil, fmt.Errorf("stream: restore %s: client: %w: %w", topic, ErrConfig, err)
	}
	defer cl.Close()

	latest := make(map[int32]map[string]keyValue, len(assign))
	for p := range assign {
		latest[p] = map[string]keyValue{}
	}
	for len(targets) > 0 {
		fetches := cl.PollFetches(ctx)
		if ctx.Err() != nil {
			return nil, fmt.Errorf("stream: restore %s: %w", topic, ctx.Err())
		}
		var ferr error
		fetches.EachError(func(_ string, p int32, err error) {
			ferr = errors.Join(ferr, fmt.Errorf("partition %d: %w", p, err))
		})
		if ferr != nil {
			return nil, fmt.Errorf("stream: restore %s: fetch: %w: %w", topic, ErrBroker, ferr)
		}
		fetches.EachRecord(func(r *kgo.Record) {
			target, open := targets[r.Partition]
			if !open {
				return
			}
			if !r.Attrs.IsControl() && r.Key != nil {
				if r.Value == nil {
					delete(latest[r.Partition], string(r.Key))
				} else {
					latest[r.Partition][string(r.Key)] = keyValue{key: r.Key, value: r.Value, offset: r.Offset}
				}
			}
			if r.Offset >= target-1 {
				delete(targets, r.Partition)
			}
		})
	}
	for p, m := range latest {
		kvs := make([]keyValue, 0, len(m))
		for _, kv := range m {
			kvs = append(kvs, kv)
		}
		slices.SortFunc(kvs, func(a, b keyValue) int { return cmp.Compare(a.offset, b.offset) })
		out[p] = kvs
	}
	return out, nil
}
