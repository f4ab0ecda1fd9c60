package ctl

import (
	"bufio"
	"context"
	"fmt"
	"strings"
	"time"

	"aegis.dev/aegis/internal/pipeline"
	"aegis.dev/aegis/internal/stream"
)

// exportTopics maps the names `aegisctl export --topic` accepts to the
// topics under prefix.
func exportTopics(prefix string) map[string]string {
	t := pipeline.NewTopics(prefix)
	return map[string]string{
		"events": t.Events, "decided": t.Decided, "decisions": t.Decisions, "sealed": t.Sealed,
		"rejected": t.Rejected, "decider-state": t.DeciderState, "chain-heads": t.ChainHeads,
		"shadow-diffs": pipeline.ShadowTopic(prefix),
	}
}

func runExport(ctx context.Context, env IO, args []string) int {
	fs := newFlags(env, "export", "--brokers HOST:PORT [--topic sealed] [--topic-prefix aegis.] [--latest-per-key] > records.ndjson")
	brokers := fs.String("brokers", "", "comma-separated Kafka seed brokers (required)")
	prefix := fs.String("topic-prefix", pipeline.DefaultTopicPrefix, "prefix of the pipeline's topic names")
	topic := fs.String("topic", "sealed", "which topic: events, decided, decisions, sealed, rejected, decider-state, chain-heads, shadow-diffs")
	latest := fs.Bool("latest-per-key", false, "print only the latest value of each key (for the compacted state topics, e.g. chain-heads for verify --heads)")
	timeout := fs.Duration("timeout", 5*time.Minute, "give up when the export takes longer")
	ksec := kafkaSecurity(fs)
	if code, ok := parse(fs, args); !ok {
		return code
	}
	if *brokers == "" || fs.NArg() > 0 || *timeout <= 0 {
		fs.Usage()
		return ExitUsage
	}
	cluster, code := clusterOption(env, "export", ksec)
	if cluster == nil {
		return code
	}
	name, ok := exportTopics(*prefix)[*topic]
	if !ok {
		return fail(env, ExitUsage, "export: unknown topic %q", *topic)
	}
	ctx, cancel := context.WithTimeout(ctx, *timeout)
	defer cancel()
	st, err := Export(ctx, strings.Split(*brokers, ","), name, *latest, env, cluster)
	if err != nil {
		return fail(env, ExitRuntime, "export %s: %v", name, err)
	}
	fmt.Fprintf(env.Stderr, "aegisctl: exported %d records from %s", st.Records, name)
	if st.Tombstones > 0 {
		fmt.Fprintf(env.Stderr, " (%d tombstones not written)", st.Tombstones)
	}
	fmt.Fprintln(env.Stderr)
	return ExitOK
}

// ExportStats counts what Export read: the records it wrote and the
// tombstones (records with a null value) it did not.
type ExportStats struct {
	Records    int
	Tombstones int
}

// Export writes the value of every committed record of topic, one per line,
// partition by partition in offset order, up to the end offsets observed
// when it starts; memory stays bounded whatever the topic's size. A
// tombstone has no value to write and is counted instead: no line stands
// for it. With latestPerKey it writes only the last value of each key (keys
// in the order first seen), which holds one value per key in memory; a key
// whose last record is a tombstone is deleted and not written.
func Export(ctx context.Context, brokers []string, topic string, latestPerKey bool, env IO, opts ...stream.Option) (ExportStats, error) {
	var st ExportStats
	ends, err := stream.EndOffsets(ctx, brokers, topic, opts...)
	if err != nil {
		return st, err
	}
	// A partition that retention emptied holds no record below its end:
	// reading it would wait for one forever.
	starts, err := stream.StartOffsets(ctx, brokers, topic, opts...)
	if err != nil {
		return st, err
	}
	w := bufio.NewWriterSize(env.Stdout, 256<<10)
	write := func(v []byte) error {
		st.Records++
		if _, err := w.Write(v); err != nil {
			return err
		}
		return w.WriteByte('\n')
	}
	var keys []string
	latest := map[string][]byte{}
	for p := int32(0); p < int32(len(ends)); p++ {
		start, end := starts[p], ends[p]
		if end <= 0 || start >= end {
			continue
		}
		err := readPartition(ctx, brokers, topic, p, start, end, opts, func(r *stream.Record) error {
			if r.Value == nil {
				st.Tombstones++
			}
			if !latestPerKey {
				if r.Value == nil {
					return nil
				}
				return write(r.Value)
			}
			if _, seen := latest[string(r.Key)]; !seen {
				keys = append(keys, string(r.Key))
			}
			latest[string(r.Key)] = r.Value
			return nil
		})
		if err != nil {
			return st, err
		}
	}
	for _, k := range keys {
		if latest[k] == nil {
			continue
		}
		if err := write(latest[k]); err != nil {
			return st, err
		}
	}
	return st, w.Flush()
}

// readPartition calls fn with every committed record of one partition from
// start to below end, in offset order.
func readPartition(ctx context.Context, brokers []string, topic string, p int32, start, end int64, opts []stream.Option, fn func(*stream.Record) error) error {
	c, err := stream.NewConsumer(stream.ConsumerConfig{Brokers: brokers, Start: stream.FromOffsets(map[string]map[int32]int64{topic: {p: start}})}, opts...)
	if err != nil {
		return err
	}
	defer c.Close()
	for c.Position(topic, p) < end {
		recs, err := c.Poll(ctx)
		if err != nil {
			return err
		}
		for _, r := range recs {
			if r.Offset >= end {
				continue
			}
			if err := fn(r); err != nil {
				return err
			}
		}
	}
	return nil
}
