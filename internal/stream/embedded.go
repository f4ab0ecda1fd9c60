package stream

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"os"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"sync"
	"time"

	"github.com/twmb/franz-go/pkg/kadm"
	"github.com/twmb/franz-go/pkg/kfake"
	"github.com/twmb/franz-go/pkg/kgo"
)

// DefaultEmbeddedAddr is where the embedded broker listens by default.
const DefaultEmbeddedAddr = "127.0.0.1:9092"

// EmbeddedConfig configures the embedded broker.
type EmbeddedConfig struct {
	// DataDir, if set, persists the broker's state there: topics and
	// their configs, record segments, consumer group offsets, producer
	// IDs and transaction state. A broker started on an existing DataDir
	// reloads it, so committed records, offsets and transactions survive
	// a restart; after a crash (the broker was not closed) the
	// transactions that were open are aborted before it accepts clients
	// (see StartEmbedded). Empty keeps everything in memory.
	DataDir string
	// SyncWrites fsyncs every produced batch before acknowledging it.
	// Without it, segments are synced on roll and on Close (like Kafka's
	// default), and a crash of the process may lose acknowledged
	// batches that the OS had not written.
	SyncWrites bool
	// Addr is the host:port to listen on (default DefaultEmbeddedAddr);
	// port 0 picks a free port (see Embedded.Addr). Any Kafka client can
	// connect to it; it is advertised as is in metadata.
	Addr string
	// Partitions is the partition count of topics created with the
	// broker default (auto-created, or CreateTopics with -1); default 10.
	Partitions int32
}

// Embedded is an in-process single-node Kafka-compatible broker (franz-go's
// kfake) with transactions, consumer groups and compaction. It is what the
// embedded mode and the hermetic tests run against. Persistence is
// kfake's own, not Kafka's on-disk format.
type Embedded struct {
	c         *kfake.Cluster
	addr      string
	closeOnce sync.Once
	stop      chan struct{}
	done      chan struct{}
}

// runningFile exists in a DataDir while a broker runs on it: found at start,
// it says the previous broker did not close. lockFile is locked by the
// broker running on the DataDir.
const (
	runningFile = "aegis.running"
	lockFile    = "aegis.lock"
)

// StartEmbedded starts the broker. It closes when ctx is cancelled or Close
// is called, whichever comes first; Close waits for the state to be
// persisted.
//
// A DataDir takes one broker at a time: StartEmbedded fails (ErrConfig)
// while another broker, in this process or another, runs on it. Two would
// both append to the same segment files at the same offsets.
//
// On a DataDir whose previous broker did not close (a crash, kill -9),
// StartEmbedded first writes an abort marker for every transaction that
// was open at the crash. kfake reloads such a transaction as aborted but
// writes no marker: a read_committed reader that must reach the end of the
// partition (a stage restoring its state) then never does, and the first
// transaction the same producer commits there afterwards is dropped as
// aborted by every read_committed client, which keeps the transaction open
// until it sees a marker of that producer.
func StartEmbedded(ctx context.Context, cfg EmbeddedConfig, opts ...Option) (*Embedded, error) {
	o := buildOptions("embedded", opts)
	addr := cfg.Addr
	if addr == "" {
		addr = DefaultEmbeddedAddr
	}
	if cfg.Partitions < 0 {
		return nil, fmt.Errorf("stream: embedded: %d partitions: %w", cfg.Partitions, ErrConfig)
	}
	kopts := []kfake.Opt{
		kfake.NumBrokers(1),
		kfake.WithLogger(kfakeLogger{o.logger.With("stage", o.stage)}),
		// kfake's own compaction schedule is off: Embedded compacts
		// instead, only while no transaction is open (see Compact).
		kfake.BrokerConfigs(map[string]string{"log.cleaner.backoff.ms": strconv.FormatInt(kfakeCompactOff.Milliseconds(), 10)}),
	}
	// kfake listens on 127.0.0.1 with the port it is given; the listen
	// function substitutes the address.
	listenOn := func(a string) kfake.Opt {
		return kfake.ListenFn(func(network, _ string) (net.Listener, error) { return net.Listen(network, a) })
	}
	if cfg.Partitions > 0 {
		kopts = append(kopts, kfake.DefaultNumPartitions(int(cfg.Partitions)))
	}
	if cfg.DataDir != "" {
		kopts = append(kopts, kfake.DataDir(cfg.DataDir))
		if cfg.SyncWrites {
			kopts = append(kopts, kfake.SyncWrites())
		}
	}
	crashed := false
	var lock *os.File
	unlock := func() {
		if lock != nil {
			_ = lock.Close()
		}
	}
	if cfg.DataDir != "" {
		var err error
		if lock, err = lockDataDir(cfg.DataDir); err != nil {
			return nil, err
		}
		_, err = os.Stat(filepath.Join(cfg.DataDir, runningFile))
		crashed = err == nil
		if crashed {
			if err := dropOpenTxnSnapshots(cfg.DataDir); err != nil {
				unlock()
				return nil, fmt.Errorf("stream: embedded broker on %s: recovering %s: %w: %w", addr, cfg.DataDir, ErrConfig, err)
			}
		}
	}
	if crashed {
		// Recovery runs on a broker of its own on an ephemeral loopback
		// port, closed before the real one opens: a client reconnecting
		// to the configured address meanwhile could start a transaction
		// under a producer ID being aborted, and the marker would abort
		// its records too.
		rc, err := kfake.NewCluster(append(slices.Clone(kopts), listenOn("127.0.0.1:0"))...)
		if err != nil {
			unlock()
			return nil, fmt.Errorf("stream: embedded broker: recovering %s: %w: %w", cfg.DataDir, ErrBroker, err)
		}
		err = abortOpenTransactions(ctx, rc.ListenAddrs(), o.logger)
		rc.Close()
		if err != nil {
			unlock()
			return nil, fmt.Errorf("stream: embedded broker on %s: recovering %s: %w", addr, cfg.DataDir, err)
		}
	}
	// The marker that tells the next start this one did not stop cleanly
	// is in place before the broker accepts anything, and with
	// SyncWrites it is on disk too: a power loss must not keep records
	// of an open transaction and lose the marker that has them aborted.
	if cfg.DataDir != "" {
		if err := writeRunningMarker(cfg.DataDir, cfg.SyncWrites); err != nil {
			unlock()
			return nil, fmt.Errorf("stream: embedded broker: %w: %w", ErrConfig, err)
		}
	}
	c, err := kfake.NewCluster(append(kopts, listenOn(addr))...)
	if err != nil {
		if cfg.DataDir != "" && !crashed {
			_ = os.Remove(filepath.Join(cfg.DataDir, runningFile))
		}
		unlock()
		return nil, fmt.Errorf("stream: embedded broker on %s: %w: %w", addr, ErrBroker, err)
	}
	e := &Embedded{c: c, addr: c.ListenAddrs()[0], stop: make(chan struct{}), done: make(chan struct{})}
	go func() {
		defer close(e.done)
		compact := time.NewTimer(compactEvery)
		defer compact.Stop()
	run:
		for {
			select {
			case <-ctx.Done():
				break run
			case <-e.stop:
				break run
			case <-compact.C:
				if e.Compact() {
					compact.Reset(compactEvery)
				} else {
					c.ApplyRetention() // which a compaction includes
					compact.Reset(compactRetry)
				}
			}
		}
		c.Close()
		if cfg.DataDir != "" {
			_ = os.Remove(filepath.Join(cfg.DataDir, runningFile))
		}
		unlock()
	}()
	return e, nil
}

// writeRunningMarker creates dataDir's running marker; with sync, the file
// and its directory entry are fsynced.
func writeRunningMarker(dataDir string, sync bool) error {
	f, err := os.OpenFile(filepath.Join(dataDir, runningFile), os.O_CREATE|os.O_WRONLY, 0o644)
	if err != nil {
		return err
	}
	if sync {
		if err := f.Sync(); err != nil {
			f.Close()
			return err
		}
	}
	if err := f.Close(); err != nil || !sync {
		return err
	}
	d, err := os.Open(dataDir)
	if err != nil {
		return err
	}
	defer d.Close()
	return d.Sync()
}

// dropOpenTxnSnapshots removes, before kfake loads a crashed DataDir, the
// partition snapshots (partitions/<topic>-<p>/snapshot.json, written at
// Close) that were taken while a transaction was open there (last stable
// offset below the high watermark): a transaction open at a clean close and
// restored open by the next start, or open during a Close that did not
// finish. kfake loads a partition from its snapshot when the segments have
// not changed since, and then neither knows the transaction is open nor
// counts it aborted: the abort marker abortOpenTransactions writes would
// not make it aborted either, and its records would read as committed.
// Without the snapshot kfake replays the segments and aborts the
// transaction like any other left open by the crash.
func dropOpenTxnSnapshots(dataDir string) error {
	paths, err := filepath.Glob(filepath.Join(dataDir, "partitions", "*", "snapshot.json"))
	if err != nil {
		return err
	}
	for _, p := range paths {
		b, err := os.ReadFile(p)
		if err != nil {
			return err
		}
		var snap struct {
			HighWatermark    int64 `json:"high_watermark"`
			LastStableOffset int64 `json:"last_stable_offset"`
		}
		if json.Unmarshal(b, &snap) != nil || snap.LastStableOffset >= snap.HighWatermark {
			continue // kfake replays the segments of a snapshot it cannot parse
		}
		if err := os.Remove(p); err != nil {
			return err
		}
	}
	return nil
}

// abortOpenTransactions reads every partition read_uncommitted to its end
// and writes an abort marker for each producer whose last records there are
// transactional with no marker after them: on a broker just reloaded after
// a crash, the transactions that were open when it died.
func abortOpenTransactions(ctx context.Context, brokers []string, log *slog.Logger) error {
	adm, closeAdm, err := newAdmin(brokers, Security{})
	if err != nil {
		return err
	}
	defer closeAdm()
	topics, err := adm.ListTopics(ctx)
	if err == nil {
		err = topics.Error()
	}
	if err != nil {
		return fmt.Errorf("list topics: %w: %w", ErrBroker, err)
	}
	if len(topics) == 0 {
		return nil
	}
	starts, err := adm.ListStartOffsets(ctx, topics.Names()...)
	if err == nil {
		err = starts.Error()
	}
	if err != nil {
		return fmt.Errorf("list start offsets: %w: %w", ErrBroker, err)
	}
	ends, err := adm.ListEndOffsets(ctx, topics.Names()...)
	if err == nil {
		err = ends.Error()
	}
	if err != nil {
		return fmt.Errorf("list end offsets: %w: %w", ErrBroker, err)
	}
	type tp struct {
		topic string
		part  int32
	}
	targets := map[tp]int64{}
	assign := map[string]map[int32]kgo.Offset{}
	ends.Each(func(end kadm.ListedOffset) {
		start, ok := starts.Lookup(end.Topic, end.Partition)
		if !ok || end.Offset <= start.Offset {
			return
		}
		targets[tp{end.Topic, end.Partition}] = end.Offset
		if assign[end.Topic] == nil {
			assign[end.Topic] = map[int32]kgo.Offset{}
		}
		assign[end.Topic][end.Partition] = kgo.NewOffset().At(start.Offset)
	})
	if len(targets) == 0 {
		return nil
	}
	cl, err := kgo.NewClient(
		kgo.SeedBrokers(brokers...),
		kgo.WithLogger(kgoLogger{log.WithGroup("kafka")}),
		kgo.ConsumePartitions(assign),
		kgo.FetchIsolationLevel(kgo.ReadUncommitted()),
		kgo.KeepControlRecords(),
		kgo.FetchMaxWait(defaultFetchMaxWait),
	)
	if err != nil {
		return fmt.Errorf("client: %w: %w", ErrConfig, err)
	}
	defer cl.Close()
	open := map[tp]map[int64]int16{} // producer ID -> epoch of its open transaction
	for len(targets) > 0 {
		fetches := cl.PollFetches(ctx)
		if ctx.Err() != nil {
			return ctx.Err()
		}
		var ferr error
		fetches.EachError(func(t string, p int32, err error) {
			ferr = errors.Join(ferr, fmt.Errorf("%s/%d: %w", t, p, err))
		})
		if ferr != nil {
			return fmt.Errorf("fetch: %w: %w", ErrBroker, ferr)
		}
		for it := fetches.RecordIter(); !it.Done(); {
			r := it.Next()
			k := tp{r.Topic, r.Partition}
			target, ok := targets[k]
			if !ok {
				continue
			}
			switch {
			case r.Attrs.IsControl():
				delete(open[k], r.ProducerID)
			case r.Attrs.IsTransactional():
				if open[k] == nil {
					open[k] = map[int64]int16{}
				}
				open[k][r.ProducerID] = r.ProducerEpoch
			}
			if r.Offset >= target-1 {
				delete(targets, k)
			}
		}
	}
	type pe struct {
		id    int64
		epoch int16
	}
	markers := map[pe]kadm.TopicsSet{}
	for k, pids := range open {
		for id, epoch := range pids {
			ts := markers[pe{id, epoch}]
			if ts == nil {
				ts = kadm.TopicsSet{}
			}
			ts.Add(k.topic, k.part)
			markers[pe{id, epoch}] = ts
		}
	}
	if len(markers) == 0 {
		return nil
	}
	var req []kadm.TxnMarkers
	for p, ts := range markers {
		req = append(req, kadm.TxnMarkers{ProducerID: p.id, ProducerEpoch: p.epoch, Topics: ts})
		log.Warn("embedded broker: aborting a transaction left open by a crash", "producer_id", p.id, "epoch", p.epoch, "partitions", ts.Sorted())
	}
	resps, err := adm.WriteTxnMarkers(ctx, req...)
	if err != nil {
		return fmt.Errorf("abort markers: %w: %w", ErrBroker, err)
	}
	var merr error
	for _, m := range resps {
		for _, t := range m.Topics {
			for _, p := range t.Partitions {
				if p.Err != nil {
					merr = errors.Join(merr, fmt.Errorf("abort marker on %s/%d: %w", p.Topic, p.Partition, p.Err))
				}
			}
		}
	}
	if merr != nil {
		return fmt.Errorf("%w: %w", ErrBroker, merr)
	}
	return nil
}

// Addr is the host:port the broker listens on.
func (e *Embedded) Addr() string { return e.addr }

// Brokers is Addr as a seed broker list.
func (e *Embedded) Brokers() []string { return []string{e.addr} }

// Close stops the broker, persisting its state if it has a DataDir, and
// waits until it has stopped. It is safe to call more than once.
func (e *Embedded) Close() {
	e.closeOnce.Do(func() { close(e.stop) })
	<-e.done
}

// compactEvery is how often the embedded broker compacts its compacted
// topics (kfake's own default); compactRetry is how soon it tries again
// after a compaction was put off by an open transaction.
var compactEvery, compactRetry = time.Hour, time.Minute

// kfakeCompactOff is kfake's compaction interval, so long that it never
// compacts on its own.
const kfakeCompactOff = 100 * 365 * 24 * time.Hour

// Compact runs log compaction now on every topic with cleanup.policy=compact
// and reports whether it did; the broker also runs it every compactEvery.
// It does not while a transaction is open on a partition of such a topic:
// kfake's compaction counts the records of an open transaction as the
// latest of their keys and drops the committed values before them, so a
// transaction that then aborted took its keys' committed state (a stage's
// sessions) with it. A transaction that begins between the check and the
// compaction is not seen; the check narrows that window to one request.
func (e *Embedded) Compact() bool {
	topics, ok := e.compactTopics()
	if !ok {
		return false
	}
	for _, topic := range topics {
		for _, p := range e.c.PartitionInfos(topic) {
			if p.LastStableOffset < p.HighWatermark {
				return false
			}
		}
	}
	e.c.Compact()
	return true
}

// DeleteRecordsBefore deletes the records of topic's partition below
// offset, as retention does on a real broker: the partition's start offset
// becomes offset. For tests of readers that must cope with it.
func (e *Embedded) DeleteRecordsBefore(ctx context.Context, topic string, partition int32, offset int64) error {
	adm, closeAdm, err := newAdmin(e.Brokers(), Security{})
	if err != nil {
		return err
	}
	defer closeAdm()
	var at kadm.Offsets
	at.Add(kadm.Offset{Topic: topic, Partition: partition, At: offset, LeaderEpoch: -1})
	resp, err := adm.DeleteRecords(ctx, at)
	if err == nil {
		err = resp.Error()
	}
	if err != nil {
		return fmt.Errorf("stream: delete records of %s/%d below %d: %w", topic, partition, offset, err)
	}
	return nil
}

// compactTopics returns the topics with cleanup.policy=compact, as kfake
// tells them, or false if they could not be listed.
func (e *Embedded) compactTopics() ([]string, bool) {
	adm, closeAdm, err := newAdmin(e.Brokers(), Security{})
	if err != nil {
		return nil, false
	}
	defer closeAdm()
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	listed, err := adm.ListTopics(ctx)
	if err == nil {
		err = listed.Error()
	}
	if err != nil {
		return nil, false
	}
	var out []string
	for _, name := range listed.Names() {
		if ti := e.c.TopicInfo(name); ti != nil {
			if v := ti.Configs["cleanup.policy"]; v != nil && strings.Contains(*v, "compact") {
				out = append(out, name)
			}
		}
	}
	return out, true
}
