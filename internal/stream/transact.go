package stream

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"maps"
	"runtime"
	"runtime/pprof"
	"slices"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/twmb/franz-go/pkg/kadm"
	"github.com/twmb/franz-go/pkg/kerr"
	"github.com/twmb/franz-go/pkg/kgo"
)

// Processor owns one input partition of a transactional stage. RunTransact
// creates it when the partition is assigned (and again after every abort),
// calls Restore once per key of the partition's state before any input, then
// calls Process with the partition's input batches in offset order.
//
// A Processor is used by one goroutine at a time; different partitions'
// processors run concurrently. It must keep no state outside itself: after an
// abort it is dropped and a fresh one is restored from committed state. A
// Processor that holds resources (files) implements io.Closer; it is closed
// when dropped.
type Processor interface {
	// Restore receives the latest value of one key of the state topic's
	// partition (tombstoned keys are not passed), in the offset order of
	// those latest values. An error discards the partially restored
	// processors; restoring is retried up to MaxProcessRetries times, then
	// Run returns the error wrapped in ErrRestore.
	Restore(key, value []byte) error

	// Process handles a batch of input records of its partition, in
	// offset order, never empty. Every Output passed to emit lands in the
	// same transaction as the batch's consumed offsets: either all of them
	// and the offsets commit, or none do. emit must only be called before
	// Process returns. An error aborts the transaction; the batch is
	// retried from committed state up to MaxProcessRetries times, then
	// RunTransact returns the error wrapped in ErrProcess. ctx is
	// cancelled on shutdown; returning its error aborts the transaction.
	Process(ctx context.Context, batch []*Record, emit func(Output)) error
}

// Committer is a Processor that is told when its outputs are committed:
// Committed is called once after each transaction that committed a batch
// of it, before its next Process. A processor whose transaction aborted is
// discarded instead (and rebuilt from committed state), so what it counted
// while processing an aborted batch is never reported.
type Committer interface {
	Committed()
}

// TransactConfig is the operator configuration of a transactional stage.
type TransactConfig struct {
	// Brokers are the seed brokers (host:port).
	Brokers []string
	// Group is the consumer group; instances of one stage share it.
	Group string
	// TransactionalID must be unique per instance and stable across its
	// restarts (e.g. stage name plus instance name): a restarted
	// instance then fences its previous incarnation and aborts the
	// transaction it left open at once, instead of waiting for the
	// transaction timeout.
	TransactionalID string
	// Input is the topic consumed.
	Input string
	// State is the compacted state topic, or empty for a stateless stage.
	State string
	// Outputs are the topics processors may emit to (besides State).
	Outputs []string
	// Partitions, if positive, is the partition count every topic must
	// have; zero accepts any count common to all of them.
	Partitions int32
	// MaxBatch caps the records of one transaction (default 1000).
	MaxBatch int
	// MaxRecordBytes bounds one produced record batch, and so the largest
	// output record (default 1,000,012, Kafka's default
	// max.message.bytes). Batches to a topic whose max.message.bytes,
	// read when Run starts, is lower are bounded by that instead.
	MaxRecordBytes int
	// MaxProcessRetries is how many times a batch whose Process failed,
	// or a restore whose Restore failed, is retried before RunTransact
	// gives up (default 3).
	MaxProcessRetries int
	// RetryBackoff is the first wait after a failure, doubling up to
	// MaxRetryBackoff (defaults 100ms and 5s).
	RetryBackoff    time.Duration
	MaxRetryBackoff time.Duration
	// TransactionTimeout is the broker-side timeout of an open
	// transaction (default 40s, franz-go's).
	TransactionTimeout time.Duration
	// SessionTimeout is the consumer group session timeout (default 45s,
	// franz-go's).
	SessionTimeout time.Duration
	// FetchMaxWait bounds how long the broker holds a fetch that has no
	// data yet (default 500ms, the Java consumer's fetch.max.wait.ms;
	// franz-go's own default is 5s). It also bounds how late a record is
	// seen if the broker fails to wake the fetch up when data arrives.
	FetchMaxWait time.Duration
	// BatchWait, if positive, lets the broker hold each fetch until
	// BatchWait has passed or batchWaitBytes are waiting, instead of
	// answering as soon as anything arrives; it replaces FetchMaxWait.
	// Records then wait up to BatchWait longer, and the stage commits
	// fewer, larger transactions, each of which costs the broker about
	// ten requests and log appends whatever its size. At least 10ms
	// (the broker's and franz-go's floor).
	BatchWait time.Duration
	// HeartbeatInterval is how often the group member heartbeats, which
	// bounds how fast it notices a rebalance (default 3s, franz-go's).
	HeartbeatInterval time.Duration
	// Compression of produced batches: none, snappy (default), lz4, zstd
	// or gzip.
	Compression string
	// StallTimeout is how long the stage's loop may go without progress
	// (a poll, a restore read, a broker request answered, a transaction
	// ended) before the stall watchdog replaces its Kafka client. The
	// default is the larger of 2m and TransactionTimeout + 30s; a value
	// set is used as it is, and below TransactionTimeout it can take a
	// slow but live End for a stall. See Run.
	StallTimeout time.Duration
}

func (c *TransactConfig) validate() error {
	switch {
	case len(c.Brokers) == 0:
		return fmt.Errorf("stream: transact: no brokers: %w", ErrConfig)
	case c.Group == "":
		return fmt.Errorf("stream: transact: no group: %w", ErrConfig)
	case c.TransactionalID == "":
		return fmt.Errorf("stream: transact: no transactional id: %w", ErrConfig)
	case c.Input == "":
		return fmt.Errorf("stream: transact: no input topic: %w", ErrConfig)
	case c.MaxBatch < 0 || c.MaxProcessRetries < 0 || c.Partitions < 0:
		return fmt.Errorf("stream: transact: negative MaxBatch, MaxProcessRetries or Partitions: %w", ErrConfig)
	case c.State != "" && (c.State == c.Input || slices.Contains(c.Outputs, c.State)):
		return fmt.Errorf("stream: transact: state topic %s is also an input or output: %w", c.State, ErrConfig)
	}
	if c.MaxBatch == 0 {
		c.MaxBatch = 1000
	}
	if c.MaxProcessRetries == 0 {
		c.MaxProcessRetries = 3
	}
	if c.RetryBackoff <= 0 {
		c.RetryBackoff = 100 * time.Millisecond
	}
	if c.MaxRetryBackoff < c.RetryBackoff {
		c.MaxRetryBackoff = max(5*time.Second, c.RetryBackoff)
	}
	if c.FetchMaxWait <= 0 {
		c.FetchMaxWait = defaultFetchMaxWait
	}
	if c.BatchWait != 0 && c.BatchWait < 10*time.Millisecond {
		return fmt.Errorf("stream: transact: batch wait %s is below 10ms: %w", c.BatchWait, ErrConfig)
	}
	if _, err := compression(c.Compression); err != nil {
		return err
	}
	if c.TransactionTimeout <= 0 {
		c.TransactionTimeout = 40 * time.Second
	}
	if c.StallTimeout < 0 {
		return fmt.Errorf("stream: transact: negative stall timeout: %w", ErrConfig)
	}
	if c.StallTimeout == 0 {
		c.StallTimeout = max(2*time.Minute, c.TransactionTimeout+30*time.Second)
	}
	return nil
}

// topics returns input, state and outputs: the co-partitioned set.
func (c *TransactConfig) topics() []string {
	ts := []string{c.Input}
	if c.State != "" {
		ts = append(ts, c.State)
	}
	for _, o := range c.Outputs {
		if !slices.Contains(ts, o) {
			ts = append(ts, o)
		}
	}
	return ts
}

// Transactor runs a transactional consume → process → produce stage. Create
// it with NewTransactor, run it with Run, and watch it with Ready and Lag
// from any goroutine.
type Transactor struct {
	cfg     TransactConfig
	newProc func(partition int32) Processor
	log     *slog.Logger
	m       *metrics

	evMu   sync.Mutex
	events []assignEvent // assignment changes from group callbacks, applied by Run

	sec Security // how the clients reach the cluster

	partitions      int32            // common partition count, set by Run before the first session
	batchBytes      map[string]int32 // per produced topic, the largest batch it takes; set by Run like partitions
	restoreFailures int              // consecutive failed restores; reset by a successful one, used by one goroutine at a time (Run, its session)

	beat atomic.Int64 // when the session's loop last made progress: nanoseconds since beatEpoch (monotonic)

	viewMu  sync.Mutex
	view    map[int32]partView
	joined  bool
	running bool
}

type assignEvent struct {
	assigned bool // false: revoked or lost
	lost     bool // the group session ended (a failed join included)
	parts    []int32
	// all, if known, is the whole assignment an assigned event comes
	// with: the partitions held and not in it were revoked without the
	// session reporting it.
	all   []int32
	known bool
}

// syncTracker is the group balancer that remembers the whole assignment of
// the input topic the last sync gave this member. GroupTransactSession
// reports only the first revocation of a transaction to the stage and
// swallows the next ones until the transaction ends: members joining one
// after the other while a long transaction runs take partitions away
// twice. The assignment that every join completes with tells the stage
// what it still owns.
type syncTracker struct {
	kgo.GroupBalancer
	topic string

	mu    sync.Mutex
	last  []int32
	known bool
}

func (b *syncTracker) ParseSyncAssignment(assignment []byte) (map[string][]int32, error) {
	m, err := b.GroupBalancer.ParseSyncAssignment(assignment)
	if err == nil {
		b.mu.Lock()
		b.last, b.known = slices.Clone(m[b.topic]), true
		b.mu.Unlock()
	}
	return m, err
}

// assigned returns the last synced assignment, if any.
func (b *syncTracker) assigned() ([]int32, bool) {
	b.mu.Lock()
	defer b.mu.Unlock()
	return slices.Clone(b.last), b.known
}

// partView is the readiness view of one owned partition.
type partView struct {
	restored bool
	pos      int64 // next input offset committed by this instance
	target   int64 // read_committed end offset observed at assignment
	end      int64 // latest read_committed end offset seen
}

// RunTransact is NewTransactor followed by Run.
func RunTransact(ctx context.Context, cfg TransactConfig, newProcessor func(partition int32) Processor, opts ...Option) error {
	t, err := NewTransactor(cfg, newProcessor, opts...)
	if err != nil {
		return err
	}
	return t.Run(ctx)
}

// NewTransactor validates cfg and registers metrics; it does not connect.
func NewTransactor(cfg TransactConfig, newProcessor func(partition int32) Processor, opts ...Option) (*Transactor, error) {
	if err := cfg.validate(); err != nil {
		return nil, err
	}
	if newProcessor == nil {
		return nil, fmt.Errorf("stream: transact: nil processor constructor: %w", ErrConfig)
	}
	o := buildOptions(cfg.Group, opts)
	m, err := newMetrics(o.registerer, o.stage)
	if err != nil {
		return nil, fmt.Errorf("stream: register metrics: %w: %w", ErrConfig, err)
	}
	cfg.Brokers = slices.Clone(cfg.Brokers)
	cfg.Outputs = slices.Clone(cfg.Outputs)
	return &Transactor{
		cfg:     cfg,
		newProc: newProcessor,
		log:     o.logger.With("stage", o.stage),
		sec:     o.security,
		m:       m,
		view:    map[int32]partView{},
	}, nil
}

// Ready reports whether the stage is caught up: it is running, has joined
// its group, and every partition it owns has been restored and has committed
// input up to the end offset observed when the partition was assigned. A
// stage that owns no partition is ready once it has joined.
func (t *Transactor) Ready() bool {
	t.viewMu.Lock()
	defer t.viewMu.Unlock()
	if !t.running || !t.joined {
		return false
	}
	for _, v := range t.view {
		if !v.restored || v.pos < v.target {
			return false
		}
	}
	return true
}

// Lag returns, per owned partition, how many input offsets lie between the
// committed position and the latest end offset seen (control records
// included, so it is an upper bound on unprocessed records).
func (t *Transactor) Lag() map[int32]int64 {
	t.viewMu.Lock()
	defer t.viewMu.Unlock()
	out := make(map[int32]int64, len(t.view))
	for p, v := range t.view {
		out[p] = v.lag()
	}
	return out
}

func (v partView) lag() int64 {
	return max(0, max(v.end, v.target)-v.pos)
}

// Run joins the group and processes until ctx is cancelled, then returns nil
// after the shutdown sequence in the package documentation; or returns an
// error when the stage cannot go on: a configuration or co-partitioning
// error before joining (ErrConfig also when the cluster does not authorize
// the transactional ID), ErrProcess after a processor kept failing,
// ErrRestore after restores kept failing in a row, ErrFenced when a newer
// instance took over the transactional ID, ErrStalled when a stalled
// session could not be ended. Broker failures, reading the state topic
// included, are retried with backoff and do not end Run. Run must not be
// called twice at once on the same Transactor.
//
// A watchdog guards each session: if its loop makes no progress for
// StallTimeout (a call into the Kafka client that does not return), the
// session's context is cancelled and its client closed, which ends the
// client's pending calls, and a new session starts. The stall is logged at
// error level with the stacks of the stage's goroutines and counted in
// aegis_stream_stalls_total. A session that still does not end within
// stallGrace (or TransactionTimeout, if longer) is abandoned and Run
// returns ErrStalled: the process should exit and be restarted; the
// Transactor must not be run again, as the abandoned session may still
// touch it. After ctx is cancelled, a session that has not stopped within
// TransactionTimeout + stallGrace is abandoned the same way.
func (t *Transactor) Run(ctx context.Context) error {
	adm, closeAdm, err := newAdmin(t.cfg.Brokers, t.sec, kgo.WithLogger(kgoLogger{t.log.WithGroup("kafka")}))
	if err != nil {
		return err
	}
	defer closeAdm()
	n, err := checkCoPartitioned(ctx, adm, t.cfg.topics(), t.cfg.Partitions)
	if err != nil {
		return err
	}
	t.partitions = n
	if t.batchBytes, err = topicBatchBytes(ctx, adm, t.cfg.topics(), t.maxRecordBytes()); err != nil {
		return err
	}
	t.restoreFailures = 0
	t.setRunning(true)
	defer t.setRunning(false)

	backoff := t.cfg.RetryBackoff
	for {
		err := t.watched(ctx, adm)
		if errors.Is(err, ErrStalled) {
			return err // a session was abandoned, at shutdown too
		}
		if ctx.Err() != nil {
			return nil
		}
		if errors.Is(err, ErrProcess) || errors.Is(err, ErrFenced) || errors.Is(err, ErrConfig) || errors.Is(err, ErrStalled) {
			return err
		}
		if errors.Is(err, ErrRestore) {
			if t.restoreFailures++; t.restoreFailures > t.cfg.MaxProcessRetries {
				return fmt.Errorf("stream: %d restore attempts: %w", t.restoreFailures, err)
			}
		}
		t.log.Warn("transactional session failed; starting a new one", "error", err, "backoff", backoff)
		if !sleep(ctx, backoff) {
			return nil
		}
		backoff = min(2*backoff, t.cfg.MaxRetryBackoff)
	}
}

func (t *Transactor) setRunning(r bool) {
	t.viewMu.Lock()
	defer t.viewMu.Unlock()
	t.running = r
	t.joined = false
	for p := range t.view {
		t.m.lag.DeleteLabelValues(strconv.Itoa(int(p)))
	}
	clear(t.view)
}

func sleep(ctx context.Context, d time.Duration) bool {
	tm := time.NewTimer(d)
	defer tm.Stop()
	select {
	case <-ctx.Done():
		return false
	case <-tm.C:
		return true
	}
}

// stallGrace is how long a stalled session has to end once its context is
// cancelled and its client closed.
var stallGrace = 30 * time.Second // a variable for tests

// beatEpoch anchors progress beats on the monotonic clock: a beat stored as
// Unix nanoseconds would lose the monotonic reading, and the watchdog would
// then measure idleness on the wall clock, which NTP steps and suspends move.
var beatEpoch = time.Now()

// progress records that the session's loop is alive.
func (t *Transactor) progress() { t.beat.Store(int64(time.Since(beatEpoch))) }

// lastBeat returns when the session's loop last made progress, with a
// monotonic clock reading.
func (t *Transactor) lastBeat() time.Time { return beatEpoch.Add(time.Duration(t.beat.Load())) }

// watched runs one session under the stall watchdog described at Run. A
// stalled session that ends once its client is closed returns an error
// wrapping ErrBroker (Run starts a new one); one that does not returns
// ErrStalled.
func (t *Transactor) watched(ctx context.Context, adm *kadm.Client) error {
	sctx, cancel := context.WithCancel(ctx)
	defer cancel()
	closer := &sessionCloser{}
	done := make(chan error, 1)
	t.progress()
	go func() { done <- t.session(sctx, adm, closer) }()
	clock := stallClock{timeout: t.cfg.StallTimeout, interval: max(t.cfg.StallTimeout/10, 10*time.Millisecond), last: time.Now()}
	tick := time.NewTicker(clock.interval)
	defer tick.Stop()
	shutdownIn := ctx.Done()
	var shutdownOver <-chan time.Time
	for {
		select {
		case err := <-done:
			return err
		case <-shutdownIn:
			// A shutdown is not a stall: the session ends or aborts
			// its open transaction within TransactionTimeout, then
			// leaves its group. One that takes longer than that and
			// the grace is abandoned, so that the process can exit.
			shutdownIn = nil
			over := time.NewTimer(t.cfg.TransactionTimeout + stallGrace)
			defer over.Stop()
			shutdownOver = over.C
			continue
		case <-shutdownOver:
			t.log.Error("session did not stop at shutdown", "code", ErrStalled.Error(), "goroutines", streamStacks())
			return fmt.Errorf("stream: the session did not stop within %s of the shutdown: %w", t.cfg.TransactionTimeout+stallGrace, ErrStalled)
		case <-tick.C:
		}
		if ctx.Err() != nil {
			continue
		}
		now := time.Now()
		idle, stalled, paused := clock.check(now, t.lastBeat())
		if paused {
			t.progress()
		}
		if !stalled {
			continue
		}
		t.m.stalls.Inc()
		t.log.Error("stage made no progress: closing its Kafka client and starting a new session",
			"code", ErrStalled.Error(), "idle", idle.Round(time.Second), "goroutines", streamStacks())
		cancel()
		// Closing the client ends its pending calls, except a
		// transaction's End: the client leaves its group only after
		// End returns, which its own deadline (TransactionTimeout)
		// bounds. The grace covers that.
		go closer.close()
		graceFor := max(stallGrace, t.cfg.TransactionTimeout)
		grace := time.NewTimer(graceFor)
		select {
		case err := <-done:
			grace.Stop()
			return fmt.Errorf("stream: no progress for %s, session replaced: %w (it ended with: %w)", idle.Round(time.Second), ErrBroker, err)
		case <-grace.C:
			// The session's goroutine is abandoned with the client it
			// holds; Run ends, and so should the process.
			t.log.Error("stalled session did not end after its client was closed", "code", ErrStalled.Error(), "goroutines", streamStacks())
			return fmt.Errorf("stream: no progress for %s, and the session did not end within %s of its client being closed: %w", idle.Round(time.Second), graceFor, ErrStalled)
		}
	}
}

// stallClock tells a stalled loop from a paused process. The watchdog's
// ticks come every interval; one that comes more than three intervals
// after the previous means the whole process stood still (SIGSTOP, a
// suspended VM, a starved machine), the loop included, so the count
// starts over instead of replacing a session that had no chance to run:
// a paused instance whose partitions moved must find out it was fenced,
// not start a new session that fences its successor.
type stallClock struct {
	timeout, interval time.Duration
	last              time.Time // the previous tick
}

// check returns, at a tick at now, how long the loop has been idle since
// its last progress beat, whether that is a stall, and whether the process
// was paused since the previous tick (the caller then records progress).
func (c *stallClock) check(now, beat time.Time) (idle time.Duration, stalled, paused bool) {
	paused = now.Sub(c.last) > 3*c.interval
	c.last = now
	if paused {
		return 0, false, true
	}
	idle = now.Sub(beat)
	return idle, idle >= c.timeout, false
}

// sessionCloser closes a session's client once, from the session itself or
// from the stall watchdog, whichever comes first.
type sessionCloser struct {
	mu     sync.Mutex
	s      *kgo.GroupTransactSession
	closed bool
	once   sync.Once
}

// set records the session's client; false means the watchdog closed the
// session before it had one, and s must not be used.
func (c *sessionCloser) set(s *kgo.GroupTransactSession) bool {
	c.mu.Lock()
	defer c.mu.Unlock()
	if c.closed {
		return false
	}
	c.s = s
	return true
}

// close closes the client if there is one and marks the session closed;
// concurrent and later calls wait for the first to finish.
func (c *sessionCloser) close() {
	c.mu.Lock()
	c.closed = true
	s := c.s
	c.mu.Unlock()
	if s != nil {
		c.once.Do(s.Close)
	}
}

// streamStacks returns this process's PipelineStacks, cut to 64 KiB.
func streamStacks() string {
	var buf bytes.Buffer
	if err := pprof.Lookup("goroutine").WriteTo(&buf, 2); err != nil {
		return err.Error()
	}
	out := PipelineStacks(buf.String())
	if len(out) > 64<<10 {
		out = strings.ToValidUTF8(out[:64<<10], "")
	}
	return out
}

// PipelineStacks returns, from a Go goroutine dump (the goroutine profile
// at debug level 2, or the runtime's SIGQUIT output), the stacks of the
// goroutines that run this package's code or the Kafka client's group and
// transaction code: where a stalled stage waits.
func PipelineStacks(dump string) string {
	var keep []string
	for g := range strings.SplitSeq(dump, "\n\n") {
		if strings.HasPrefix(g, "goroutine ") && (strings.Contains(g, "aegis.dev/aegis/internal/stream.") ||
			strings.Contains(g, "kgo.(*groupConsumer)") || strings.Contains(g, "kgo.(*GroupTransactSession)")) {
			keep = append(keep, g)
		}
	}
	return strings.Join(keep, "\n\n")
}

// owned is the run loop's record of one owned partition.
type owned struct {
	proc Processor // nil: must be restored before processing
}

// session runs one GroupTransactSession until ctx is cancelled or an error
// that needs a new session (or ends Run) happens.
func (t *Transactor) session(ctx context.Context, adm *kadm.Client, closer *sessionCloser) (err error) {
	t.evMu.Lock()
	t.events = nil
	t.evMu.Unlock()
	t.setRunning(true)

	// The client syncs, then calls the assigned callback, one join at a
	// time: the callback reads the assignment of its own join.
	tracker := &syncTracker{GroupBalancer: kgo.CooperativeStickyBalancer(), topic: t.cfg.Input}
	opts := append(t.sec.seed(t.cfg.Brokers),
		kgo.WithLogger(kgoLogger{t.log.WithGroup("kafka")}),
		kgo.ConsumerGroup(t.cfg.Group),
		kgo.Balancers(tracker),
		kgo.ConsumeTopics(t.cfg.Input),
		kgo.TransactionalID(t.cfg.TransactionalID),
		kgo.TransactionTimeout(t.cfg.TransactionTimeout),
		kgo.FetchIsolationLevel(kgo.ReadCommitted()),
		kgo.KeepControlRecords(),
		kgo.FetchMaxWait(t.cfg.FetchMaxWait),
		// With transactions v2 (Kafka 4), a produce right after a
		// commit can fail CONCURRENT_TRANSACTIONS while the broker
		// still writes the previous markers. The client retries such
		// batches only after a metadata refresh, which MetadataMinAge
		// (default 5s) rate-limits: each hit would stall the stage 5s.
		kgo.MetadataMinAge(transactMetadataMinAge),
		kgo.RecordPartitioner(kgo.ManualPartitioner()),
		kgo.ProducerBatchMaxBytesFn(t.batchMaxBytes),
		kgo.OnPartitionsAssigned(func(_ context.Context, _ *kgo.Client, m map[string][]int32) {
			all, known := tracker.assigned()
			t.pushEvent(assignEvent{assigned: true, parts: m[t.cfg.Input], all: all, known: known})
		}),
		kgo.OnPartitionsRevoked(func(_ context.Context, _ *kgo.Client, m map[string][]int32) {
			t.pushEvent(assignEvent{parts: m[t.cfg.Input]})
		}),
		// Also called when a join fails (the broker refuses the session
		// timeout, a group ACL is missing): the stage is not in the group.
		kgo.OnPartitionsLost(func(_ context.Context, _ *kgo.Client, m map[string][]int32) {
			t.pushEvent(assignEvent{lost: true, parts: m[t.cfg.Input]})
		}),
	)
	if t.cfg.BatchWait > 0 {
		// Later options win: the batch wait replaces FetchMaxWait.
		opts = append(opts, kgo.FetchMaxWait(t.cfg.BatchWait), kgo.FetchMinBytes(batchWaitBytes))
	}
	if t.cfg.SessionTimeout > 0 {
		opts = append(opts, kgo.SessionTimeout(t.cfg.SessionTimeout))
	}
	if t.cfg.HeartbeatInterval > 0 {
		opts = append(opts, kgo.HeartbeatInterval(t.cfg.HeartbeatInterval))
	}
	if c, _ := compression(t.cfg.Compression); c != nil {
		opts = append(opts, c)
	}
	s, err := kgo.NewGroupTransactSession(opts...)
	if err != nil {
		return fmt.Errorf("stream: transact session: %w: %w", ErrConfig, err)
	}
	if !closer.set(s) {
		s.Close()
		return fmt.Errorf("stream: session closed by the stall watchdog: %w", ErrBroker)
	}
	defer closer.close() // leaves the group after any open transaction was ended below
	workers := newWorkers(runtime.GOMAXPROCS(0))
	defer workers.stop()

	// Initialise the producer ID now, not at the first produce: this
	// fences a previous incarnation with the same transactional ID and
	// aborts the transaction it left open, which would otherwise hold back
	// the state topic's stable offset and stall the restore below until
	// the transaction timeout. The client retries CONCURRENT_TRANSACTIONS
	// for as long as the context lasts, so the wait is bounded.
	initCtx, cancelInit := context.WithTimeout(ctx, t.cfg.TransactionTimeout)
	_, _, err = s.Client().ProducerID(initCtx)
	cancelInit()
	if err != nil {
		if ctx.Err() != nil {
			return ctx.Err()
		}
		if errors.Is(initCtx.Err(), context.DeadlineExceeded) {
			// kgo returns the context's error, not the coordinator's
			// (e.g. CONCURRENT_TRANSACTIONS) that it kept retrying.
			err = fmt.Errorf("no producer ID within %s (the coordinator kept refusing, e.g. CONCURRENT_TRANSACTIONS): %w", t.cfg.TransactionTimeout, err)
		}
		return classify("init producer id", err)
	}

	parts := map[int32]*owned{}
	defer func() {
		for _, o := range parts {
			closeProc(o.proc)
		}
	}()
	failures := 0 // consecutive transactions a processor failed
	aborts := 0   // consecutive transactions that aborted with no processor failing
	backoff := t.cfg.RetryBackoff
	for {
		// Polls wake up at least every idlePoll so that newly assigned
		// partitions with nothing to consume still get restored.
		t.progress()
		pollCtx, cancelPoll := context.WithTimeout(ctx, idlePoll)
		fetches := s.PollRecords(pollCtx, t.cfg.MaxBatch)
		cancelPoll()
		if ctx.Err() != nil {
			return ctx.Err()
		}
		if fetches.IsClientClosed() {
			return fmt.Errorf("stream: the session's client was closed: %w", ErrBroker)
		}
		polled := time.Now()
		var fetchErr error
		fetches.EachError(func(topic string, p int32, err error) {
			if errors.Is(err, context.DeadlineExceeded) || errors.Is(err, context.Canceled) {
				return
			}
			t.log.Warn("fetch failed", "topic", topic, "partition", p, "error", err)
			fetchErr = err
		})
		revoked, err := t.applyEvents(ctx, adm, parts)
		if err != nil {
			return err
		}
		if revoked {
			// franz-go's GroupTransactSession reports one revocation
			// per transaction and swallows the next ones until the
			// transaction ends; ending this (empty) one now keeps the
			// next revocation visible, and rewinds what this poll
			// fetched, which is fetched again.
			if err := t.rewind(ctx, s); err != nil {
				return err
			}
			continue
		}
		if err := t.restore(ctx, adm, parts); err != nil {
			return err
		}

		// Group the poll by partition; remember each partition's last
		// offset (control records included) and end offset.
		batches := map[int32][]*Record{}
		next := map[int32]int64{}
		ends := map[int32]int64{}
		var foreign []int32
		fetches.EachPartition(func(fp kgo.FetchTopicPartition) {
			if fp.Topic != t.cfg.Input || len(fp.Records) == 0 {
				return
			}
			if _, ok := parts[fp.Partition]; !ok {
				foreign = append(foreign, fp.Partition)
				return
			}
			end := fp.LastStableOffset
			if end < 0 {
				end = fp.HighWatermark
			}
			ends[fp.Partition] = end
			for _, r := range fp.Records {
				next[fp.Partition] = r.Offset + 1
				if r.Attrs.IsControl() {
					continue
				}
				batches[fp.Partition] = append(batches[fp.Partition], fromKgo(r))
			}
		})
		// Foreign records are checked first: a poll holding only them
		// would otherwise look empty and their offsets go uncorrected.
		if len(foreign) > 0 {
			// Records of a partition this instance does not own
			// (revoked while they were buffered): they must neither
			// be processed nor have their offsets committed, so the
			// whole poll is rewound.
			t.log.Info("poll returned partitions not owned; rewinding", "partitions", foreign)
			if err := t.rewind(ctx, s); err != nil {
				return err
			}
			continue
		}
		if len(next) == 0 {
			if fetchErr != nil && !sleep(ctx, backoff) {
				return ctx.Err()
			}
			continue
		}

		committed, procErr, err := t.transact(ctx, s, workers, parts, batches)
		switch {
		case err != nil:
			t.discard(parts)
			return err
		case committed:
			for p := range batches {
				if c, ok := parts[p].proc.(Committer); ok {
					c.Committed()
				}
			}
			failures, aborts = 0, 0
			backoff = t.cfg.RetryBackoff
			t.advance(next, ends)
			t.m.handle.Observe(time.Since(polled).Seconds())
			continue
		}
		t.discard(parts)
		if ctx.Err() != nil {
			return ctx.Err()
		}
		if procErr != nil {
			failures++
			t.log.Warn("processing failed; transaction aborted, state rebuilt", "error", procErr, "attempt", failures)
			if failures > t.cfg.MaxProcessRetries {
				return fmt.Errorf("stream: %d attempts: %w: %w", failures, ErrProcess, procErr)
			}
			if !sleep(ctx, backoff) {
				return ctx.Err()
			}
			backoff = min(2*backoff, t.cfg.MaxRetryBackoff)
		} else {
			// One such abort is a rebalance. More in a row are the
			// group coordinator refusing the offsets (an error the
			// client aborts on): each retry rebuilds every processor,
			// so they back off like failures, without counting as ones.
			aborts++
			t.log.Info("transaction aborted (rebalance); state rebuilt from committed offsets", "in_a_row", aborts)
			if aborts > 1 {
				if !sleep(ctx, backoff) {
					return ctx.Err()
				}
				backoff = min(2*backoff, t.cfg.MaxRetryBackoff)
			}
		}
	}
}

// transactMetadataMinAge bounds how long a retriable produce error (such as
// CONCURRENT_TRANSACTIONS) holds a transaction's batches back.
const transactMetadataMinAge = 25 * time.Millisecond

// batchWaitBytes is how much data ends a TransactConfig.BatchWait early.
const batchWaitBytes = 1 << 20

// defaultFetchMaxWait is the Java consumer's fetch.max.wait.ms.
const defaultFetchMaxWait = 500 * time.Millisecond

// idlePoll bounds how long one poll waits for records.
const idlePoll = 250 * time.Millisecond

// rewind ends an empty transaction with an abort, which resets the
// session's consume positions to the committed offsets.
func (t *Transactor) rewind(ctx context.Context, s *kgo.GroupTransactSession) error {
	if err := s.Begin(); err != nil {
		return classify("begin transaction", err)
	}
	endCtx, cancel := context.WithTimeout(context.WithoutCancel(ctx), t.cfg.TransactionTimeout)
	defer cancel()
	if _, err := s.End(endCtx, kgo.TryAbort); err != nil {
		return classify("end transaction", err)
	}
	t.m.aborted.Inc()
	return nil
}

func (t *Transactor) pushEvent(ev assignEvent) {
	t.evMu.Lock()
	defer t.evMu.Unlock()
	ev.parts = slices.Clone(ev.parts)
	t.events = append(t.events, ev)
}

// applyEvents applies the assignment changes the group callbacks queued:
// revoked partitions are dropped, assigned ones are recorded unrestored with
// their readiness targets.
func (t *Transactor) applyEvents(ctx context.Context, adm *kadm.Client, parts map[int32]*owned) (revoked bool, err error) {
	t.evMu.Lock()
	evs := t.events
	t.events = nil
	t.evMu.Unlock()
	if len(evs) == 0 {
		return false, nil
	}
	var added []int32
	// The stage is in the group after an assignment (even of no
	// partition), and out of it after a loss, until the next one.
	joined, changed := false, false
	drop := func(p int32) { // p was revoked
		revoked = true
		if o, ok := parts[p]; ok {
			closeProc(o.proc)
		}
		delete(parts, p)
		added = slices.DeleteFunc(added, func(q int32) bool { return q == p })
	}
	for _, ev := range evs {
		if ev.assigned || ev.lost {
			joined, changed = ev.assigned, true
		}
		for _, p := range ev.parts {
			if ev.assigned {
				// A partition assigned while held was lost in between
				// (a revocation the session did not report): another
				// member may have moved its state on, so it starts
				// over from committed state like any new one.
				if o, ok := parts[p]; ok {
					closeProc(o.proc)
				}
				parts[p] = &owned{}
				if !slices.Contains(added, p) {
					added = append(added, p)
				}
			} else {
				drop(p)
			}
		}
		if !ev.assigned || !ev.known {
			continue
		}
		// Partitions held but not in the whole assignment were revoked
		// in a report the session swallowed.
		for p := range parts {
			if !slices.Contains(ev.all, p) {
				drop(p)
			}
		}
	}
	views := map[int32]partView{}
	if len(added) > 0 {
		if views, err = t.observe(ctx, adm, added); err != nil {
			return revoked, err
		}
	}
	t.viewMu.Lock()
	defer t.viewMu.Unlock()
	if changed {
		t.joined = joined
	}
	for p := range t.view {
		if _, ok := parts[p]; !ok {
			delete(t.view, p)
			t.m.lag.DeleteLabelValues(strconv.Itoa(int(p)))
		}
	}
	for p, v := range views {
		t.view[p] = v
		t.m.lag.WithLabelValues(strconv.Itoa(int(p))).Set(float64(v.lag()))
	}
	t.log.Info("assignment changed", "added", added, "owned", len(parts))
	return revoked, nil
}

// observe reads, for newly assigned partitions, the committed group offset
// and the read_committed end offset of the input: the readiness target.
func (t *Transactor) observe(ctx context.Context, adm *kadm.Client, added []int32) (map[int32]partView, error) {
	ends, err := adm.ListCommittedOffsets(ctx, t.cfg.Input)
	if err == nil {
		err = ends.Error()
	}
	if err != nil {
		return nil, fmt.Errorf("stream: list end offsets of %s: %w: %w", t.cfg.Input, ErrBroker, err)
	}
	// Each admin request may take the client's retry timeout on a slow
	// broker: an answered one is progress.
	t.progress()
	starts, err := adm.ListStartOffsets(ctx, t.cfg.Input)
	if err == nil {
		err = starts.Error()
	}
	if err != nil {
		return nil, fmt.Errorf("stream: list start offsets of %s: %w: %w", t.cfg.Input, ErrBroker, err)
	}
	t.progress()
	commits, err := adm.FetchOffsets(ctx, t.cfg.Group)
	if err != nil {
		return nil, fmt.Errorf("stream: fetch offsets of group %s: %w: %w", t.cfg.Group, ErrBroker, err)
	}
	views := make(map[int32]partView, len(added))
	for _, p := range added {
		v := partView{pos: -1}
		if o, ok := ends.Lookup(t.cfg.Input, p); ok {
			v.target, v.end = o.Offset, o.Offset
		}
		if o, ok := commits.Lookup(t.cfg.Input, p); ok && o.Err == nil && o.At >= 0 {
			v.pos = o.At
		} else if o, ok := starts.Lookup(t.cfg.Input, p); ok {
			v.pos = o.Offset
		}
		views[p] = v
	}
	return views, nil
}

// restore creates and restores a processor for every owned partition that
// has none.
func (t *Transactor) restore(ctx context.Context, adm *kadm.Client, parts map[int32]*owned) error {
	var need []int32
	for p, o := range parts {
		if o.proc == nil {
			need = append(need, p)
		}
	}
	if len(need) == 0 {
		return nil
	}
	slices.Sort(need)
	start := time.Now()
	procs := make(map[int32]Processor, len(need))
	for _, p := range need {
		procs[p] = t.newProc(p)
	}
	restored := false
	defer func() {
		if !restored {
			for _, proc := range procs {
				closeProc(proc)
			}
		}
	}()
	if t.cfg.State != "" {
		err := readLatest(ctx, adm, t.sec.seed(t.cfg.Brokers), t.cfg.State, need, t.log, t.progress, func(p int32, key, value []byte) error {
			if err := procs[p].Restore(key, value); err != nil {
				return fmt.Errorf("stream: restore %s/%d key %q: %w: %w", t.cfg.State, p, key, ErrRestore, err)
			}
			return nil
		})
		if err != nil {
			return err
		}
	}
	for p, proc := range procs {
		parts[p].proc = proc
	}
	restored = true
	t.restoreFailures = 0 // the failures Run counts are consecutive ones
	t.m.restore.Observe(time.Since(start).Seconds())
	t.viewMu.Lock()
	for _, p := range need {
		if v, ok := t.view[p]; ok {
			v.restored = true
			t.view[p] = v
		}
	}
	t.viewMu.Unlock()
	t.log.Info("restored partitions", "partitions", need, "took", time.Since(start))
	return nil
}

// discard drops every processor: their state saw uncommitted input.
func (t *Transactor) discard(parts map[int32]*owned) {
	for _, o := range parts {
		closeProc(o.proc)
		o.proc = nil
	}
	t.viewMu.Lock()
	defer t.viewMu.Unlock()
	for p, v := range t.view {
		v.restored = false
		t.view[p] = v
	}
}

// closeProc releases a dropped processor's resources if it holds any (it
// implements io.Closer); nil is ignored.
func closeProc(p Processor) {
	if c, ok := p.(io.Closer); ok {
		c.Close()
	}
}

// advance records committed positions after a commit.
func (t *Transactor) advance(next, ends map[int32]int64) {
	t.viewMu.Lock()
	defer t.viewMu.Unlock()
	for p, n := range next {
		v, ok := t.view[p]
		if !ok {
			continue
		}
		v.pos = n
		v.end = max(v.end, ends[p])
		t.view[p] = v
		t.m.lag.WithLabelValues(strconv.Itoa(int(p))).Set(float64(v.lag()))
	}
}

// transact runs one transaction over the polled batches: processors run
// concurrently (one goroutine per partition) and are joined before the
// transaction ends. It returns whether the transaction committed, the
// processing error if a processor failed, and an error if the session must
// be replaced (or, wrapping ErrFenced, Run must end).
func (t *Transactor) transact(ctx context.Context, s *kgo.GroupTransactSession, workers *workers, parts map[int32]*owned, batches map[int32][]*Record) (committed bool, procErr, err error) {
	began := time.Now()
	if err := s.Begin(); err != nil {
		return false, nil, classify("begin transaction", err)
	}
	// Producing and ending use a context that outlives ctx: a shutdown
	// finishes or aborts the open transaction instead of abandoning it.
	endCtx, cancel := context.WithTimeout(context.WithoutCancel(ctx), t.cfg.TransactionTimeout)
	defer cancel()

	var (
		produceMu  sync.Mutex
		produceErr error
		produced   int
	)
	promise := func(_ *kgo.Record, err error) {
		produceMu.Lock()
		defer produceMu.Unlock()
		if err != nil && produceErr == nil {
			produceErr = err
		}
		if err == nil {
			produced++
		}
	}
	errs := make(map[int32]error, len(batches))
	var errsMu sync.Mutex
	var wg sync.WaitGroup
	records := 0
	for p, batch := range batches {
		records += len(batch)
		proc := parts[p].proc
		wg.Add(1)
		workers.run(func() {
			defer wg.Done()
			err := t.processOne(ctx, endCtx, s, proc, p, batch, promise)
			if err != nil {
				errsMu.Lock()
				errs[p] = err
				errsMu.Unlock()
			}
		})
	}
	wg.Wait()
	processed := time.Now()
	t.m.phase.WithLabelValues("process").Observe(processed.Sub(began).Seconds())
	t.m.consumed.Add(float64(records))
	t.m.batchRecords.Observe(float64(records))

	for _, p := range slices.Sorted(maps.Keys(errs)) {
		procErr = fmt.Errorf("partition %d: %w", p, errs[p])
		break
	}
	if procErr == nil && ctx.Err() != nil {
		procErr = ctx.Err()
	}
	if procErr == nil {
		if err := s.Client().Flush(endCtx); err != nil {
			procErr = err
		}
	}
	flushed := time.Now()
	t.m.phase.WithLabelValues("flush").Observe(flushed.Sub(processed).Seconds())
	produceMu.Lock()
	pErr := produceErr
	produceMu.Unlock()
	commit := procErr == nil && pErr == nil
	ok, err := s.End(endCtx, kgo.TransactionEndTry(commit))
	t.m.phase.WithLabelValues("end").Observe(time.Since(flushed).Seconds())
	if ok {
		t.m.committed.Inc()
		t.m.produced.Add(float64(produced))
	} else {
		t.m.aborted.Inc()
	}
	if err != nil {
		return false, procErr, classify("end transaction", err)
	}
	if pErr != nil {
		if permanentProduceError(pErr) {
			// The same batch would fail the same way on every retry:
			// count it as a processing failure, so that the stage
			// stops after MaxProcessRetries instead of retrying forever.
			return false, fmt.Errorf("%w: %w", ErrProduce, pErr), nil
		}
		return false, nil, classify("produce", fmt.Errorf("%w: %w", ErrProduce, pErr))
	}
	return ok, procErr, nil
}

// permanentProduceError reports a produce error that no retry of the same
// records can cure: a record or batch over the topic's limit, or records
// the broker refuses as invalid.
func permanentProduceError(err error) bool {
	return errors.Is(err, kerr.MessageTooLarge) || errors.Is(err, kerr.RecordListTooLarge) ||
		errors.Is(err, kerr.InvalidRecord) || errors.Is(err, kerr.CorruptMessage)
}

// workers runs the partitions' Process calls on goroutines that live as
// long as the group session. A goroutine per call would start on a small
// stack each time and grow it by copying, again and again, to the depth a
// policy evaluation needs: that copying cost the decider an eighth of its
// CPU at 5,000 events/s. Process calls are CPU-bound, so GOMAXPROCS
// goroutines run them as fast as one per partition would.
type workers struct {
	jobs chan func()
	done sync.WaitGroup
}

func newWorkers(n int) *workers {
	w := &workers{jobs: make(chan func())}
	for range max(1, n) {
		w.done.Go(func() {
			for f := range w.jobs {
				f()
			}
		})
	}
	return w
}

// run hands f to a free worker, waiting for one if all are busy.
func (w *workers) run(f func()) { w.jobs <- f }

// stop ends the workers once their current calls return.
func (w *workers) stop() {
	close(w.jobs)
	w.done.Wait()
}

// processOne runs one partition's Process call, routing its emits into the
// transaction. An invalid emit fails the call.
func (t *Transactor) processOne(ctx, produceCtx context.Context, s *kgo.GroupTransactSession, proc Processor, p int32, batch []*Record, promise func(*kgo.Record, error)) error {
	var (
		emitMu  sync.Mutex
		emitErr error
	)
	emit := func(o Output) {
		emitMu.Lock()
		defer emitMu.Unlock()
		if emitErr != nil {
			return
		}
		if o.Topic == "" || o.Topic != t.cfg.State && !slices.Contains(t.cfg.Outputs, o.Topic) {
			emitErr = fmt.Errorf("stream: emit to %q: not the state topic or an output: %w", o.Topic, ErrConfig)
			return
		}
		part := o.Partition
		if part < 0 {
			part = p
		}
		if part >= t.partitions {
			emitErr = fmt.Errorf("stream: emit to %s partition %d of %d: %w", o.Topic, part, t.partitions, ErrConfig)
			return
		}
		s.Produce(produceCtx, &kgo.Record{
			Topic:     o.Topic,
			Partition: part,
			Key:       o.Key,
			Value:     o.Value,
			Headers:   toKgoHeaders(o.Headers),
		}, promise)
	}
	err := proc.Process(ctx, batch, emit)
	emitMu.Lock()
	defer emitMu.Unlock()
	if emitErr != nil {
		return emitErr
	}
	return err
}

// classify wraps a client error: fencing and a transactional ID the
// cluster does not authorize end Run, anything else replaces the session.
func classify(op string, err error) error {
	switch {
	case errors.Is(err, ErrFenced):
		return err
	case errors.Is(err, kerr.ProducerFenced),
		errors.Is(err, kerr.InvalidProducerEpoch):
		return fmt.Errorf("stream: %s: %w: %w", op, ErrFenced, err)
	case errors.Is(err, kerr.TransactionalIDAuthorizationFailed):
		return fmt.Errorf("stream: %s: %w: %w", op, ErrConfig, err)
	case errors.Is(err, ErrProduce):
		return fmt.Errorf("stream: %s: %w", op, err)
	}
	return fmt.Errorf("stream: %s: %w: %w", op, ErrBroker, err)
}

// batchMaxBytes is the largest record batch the session produces to topic.
func (t *Transactor) batchMaxBytes(topic string) int32 {
	if n, ok := t.batchBytes[topic]; ok {
		return n
	}
	return t.maxRecordBytes()
}

// topicBatchBytes returns, for each topic, the largest record batch the
// stage may send it: limit (MaxRecordBytes), or the topic's own
// max.message.bytes where that is lower. One cap for every topic made the
// client gather a transaction's small records into batches of up to limit,
// which a topic with a lower max.message.bytes (an output beside a state
// topic that carries larger records) refused as a whole, MESSAGE_TOO_LARGE,
// though every record fitted: the stage stopped on that batch.
func topicBatchBytes(ctx context.Context, adm *kadm.Client, topics []string, limit int32) (map[string]int32, error) {
	cfgs, err := adm.DescribeTopicConfigs(ctx, topics...)
	if err != nil {
		return nil, fmt.Errorf("stream: describe topic configs: %w: %w", ErrBroker, err)
	}
	out := make(map[string]int32, len(topics))
	for _, topic := range topics {
		rc, err := cfgs.On(topic, nil)
		if err == nil {
			err = rc.Err
		}
		if err != nil {
			return nil, fmt.Errorf("stream: describe topic %s: %w: %w", topic, ErrBroker, err)
		}
		out[topic] = limit
		for _, c := range rc.Configs {
			if c.Key != "max.message.bytes" || c.Value == nil {
				continue
			}
			if n, err := strconv.ParseInt(*c.Value, 10, 32); err == nil && n < int64(limit) {
				// franz-go takes no cap below 512 bytes; a
				// topic that small refuses any record anyway.
				out[topic] = int32(max(n, 512))
			}
		}
	}
	return out, nil
}

func (t *Transactor) maxRecordBytes() int32 {
	if t.cfg.MaxRecordBytes > 0 {
		return int32(t.cfg.MaxRecordBytes)
	}
	return 1000012
}
