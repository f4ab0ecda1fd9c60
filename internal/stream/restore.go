package stream

import (
	"bytes"
	"cmp"
	"context"
	"errors"
	"fmt"
	"log/slog"
	"maps"
	"slices"
	"time"

	"github.com/twmb/franz-go/pkg/kadm"
	"github.com/twmb/franz-go/pkg/kgo"
)

// restoreBudget bounds the bytes of state values readLatest holds while it
// reads a partition set; past it readLatest keeps only each key's latest
// offset and reads the partitions a second time. A variable for tests.
var restoreBudget = 64 << 20

// restorePoll bounds one poll of a restore, so that a restore waiting for an
// open transaction still reports progress.
const restorePoll = time.Second

// latestValue is what readLatest knows of one key: the offset of its
// latest value and, while within the budget, a copy of that value.
type latestValue struct {
	offset int64
	value  []byte
}

// readLatest passes the latest value of every key of the given partitions
// of a compacted topic that is not tombstoned to emit, per partition in the
// offset order of those values. It reads from the start to the high
// watermark observed on entry, read_committed, with a dedicated
// direct-assignment client.
//
// Memory stays bounded by the keys, not the values: values are held (as
// copies, not as views into fetch buffers) up to restoreBudget bytes; a
// state larger than that is read twice, the first pass keeping only each
// key's latest offset and the second emitting the records at those
// offsets as they stream by. Processors spill what they restore beyond
// their own bound (--state-sessions), so a restore never holds a whole
// partition's state.
//
// A read ends only once a record at or past high watermark − 1 has been
// seen. Control records are kept for that purpose: the last offset of a
// transactional log is a commit or abort marker, and a read_committed
// consumer cannot pass an open transaction, so a transaction still open on
// entry (a previous owner finishing) is waited for and then included or
// excluded according to its outcome. Both passes read the same committed
// records below the same targets, and compaction never removes a key's
// latest record, so the second pass finds every offset the first chose.
//
// progress, if not nil, is called at least every restorePoll while the read
// goes on, including while it waits for an open transaction: the stage's
// stall watchdog counts a restore that waits on the broker as alive.
func readLatest(ctx context.Context, adm *kadm.Client, seed []kgo.Opt, topic string, parts []int32, log *slog.Logger,
	progress func(), emit func(p int32, key, value []byte) error) error {
	starts, err := adm.ListStartOffsets(ctx, topic)
	if err == nil {
		err = starts.Error()
	}
	if err != nil {
		return fmt.Errorf("stream: restore %s: list start offsets: %w: %w", topic, ErrBroker, err)
	}
	if progress != nil {
		progress()
	}
	ends, err := adm.ListEndOffsets(ctx, topic)
	if err == nil {
		err = ends.Error()
	}
	if err != nil {
		return fmt.Errorf("stream: restore %s: list end offsets: %w: %w", topic, ErrBroker, err)
	}
	if progress != nil {
		progress()
	}
	targets := map[int32]int64{}
	assign := map[int32]kgo.Offset{}
	for _, p := range parts {
		s, ok1 := starts.Lookup(topic, p)
		e, ok2 := ends.Lookup(topic, p)
		if !ok1 || !ok2 {
			return fmt.Errorf("stream: restore %s/%d: partition not found: %w", topic, p, ErrBroker)
		}
		if e.Offset > s.Offset {
			targets[p] = e.Offset
			assign[p] = kgo.NewOffset().At(s.Offset)
		}
	}
	if len(assign) == 0 {
		return nil
	}

	// read streams the committed keyed records of the assigned partitions
	// below their targets to fn.
	read := func(fn func(r *kgo.Record) error) error {
		cl, err := kgo.NewClient(append(slices.Clip(seed),
			kgo.WithLogger(kgoLogger{log.WithGroup("kafka")}),
			kgo.ConsumePartitions(map[string]map[int32]kgo.Offset{topic: assign}),
			kgo.FetchIsolationLevel(kgo.ReadCommitted()),
			kgo.KeepControlRecords(),
			kgo.FetchMaxWait(defaultFetchMaxWait),
		)...)
		if err != nil {
			return fmt.Errorf("stream: restore %s: client: %w: %w", topic, ErrConfig, err)
		}
		defer cl.Close()
		open := maps.Clone(targets)
		for len(open) > 0 {
			pollCtx, cancel := context.WithTimeout(ctx, restorePoll)
			fetches := cl.PollFetches(pollCtx)
			cancel()
			if ctx.Err() != nil {
				return fmt.Errorf("stream: restore %s: %w", topic, ctx.Err())
			}
			if progress != nil {
				progress()
			}
			var ferr error
			fetches.EachError(func(_ string, p int32, err error) {
				if errors.Is(err, context.DeadlineExceeded) {
					return // the poll's own timeout
				}
				ferr = errors.Join(ferr, fmt.Errorf("partition %d: %w", p, err))
			})
			if ferr != nil {
				return fmt.Errorf("stream: restore %s: fetch: %w: %w", topic, ErrBroker, ferr)
			}
			for it := fetches.RecordIter(); !it.Done(); {
				r := it.Next()
				target, ok := open[r.Partition]
				if !ok {
					continue
				}
				if !r.Attrs.IsControl() && r.Key != nil {
					if err := fn(r); err != nil {
						return err
					}
				}
				if r.Offset >= target-1 {
					delete(open, r.Partition)
				}
			}
		}
		return nil
	}

	latest := make(map[int32]map[string]*latestValue, len(assign))
	for p := range assign {
		latest[p] = map[string]*latestValue{}
	}
	held, spilled := 0, false
	err = read(func(r *kgo.Record) error {
		m := latest[r.Partition]
		lv := m[string(r.Key)]
		if r.Value == nil { // a tombstone
			if lv != nil {
				held -= len(lv.value)
				delete(m, string(r.Key))
			}
			return nil
		}
		if lv == nil {
			lv = &latestValue{}
			m[string(r.Key)] = lv
		}
		held -= len(lv.value)
		lv.offset, lv.value = r.Offset, nil
		if spilled {
			return nil
		}
		lv.value = bytes.Clone(r.Value)
		if held += len(lv.value); held > restoreBudget {
			spilled, held = true, 0
			for _, m := range latest {
				for _, lv := range m {
					lv.value = nil
				}
			}
		}
		return nil
	})
	if err != nil {
		return err
	}
	if spilled {
		log.Info("state larger than the restore budget: reading it a second time", "topic", topic, "partitions", parts, "budget_bytes", restoreBudget)
		want, got := 0, 0
		for _, m := range latest {
			want += len(m)
		}
		err := read(func(r *kgo.Record) error {
			if r.Value == nil {
				return nil
			}
			if lv := latest[r.Partition][string(r.Key)]; lv != nil && lv.offset == r.Offset {
				got++
				return emit(r.Partition, r.Key, r.Value)
			}
			return nil
		})
		if err == nil && got != want {
			// Not expected (both passes read the same committed records),
			// but a state silently left out would be a wrong decision.
			err = fmt.Errorf("stream: restore %s: the second read found %d of the %d latest values: %w", topic, got, want, ErrBroker)
		}
		return err
	}
	for _, p := range slices.Sorted(maps.Keys(latest)) {
		m := latest[p]
		keys := slices.Collect(maps.Keys(m))
		slices.SortFunc(keys, func(a, b string) int { return cmp.Compare(m[a].offset, m[b].offset) })
		for _, k := range keys {
			if err := emit(p, []byte(k), m[k].value); err != nil {
				return err
			}
		}
	}
	return nil
}
