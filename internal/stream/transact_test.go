package stream

import (
	"context"
	"crypto/rand"
	"errors"
	"fmt"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/twmb/franz-go/pkg/kerr"
	"github.com/twmb/franz-go/pkg/kmsg"
)

// failOnce returns a counter hook that fails the first time it sees the
// record value, and whether it did.
func failOnce(value string) (func(context.Context, *Record) error, *atomic.Bool) {
	var failed atomic.Bool
	return func(_ context.Context, r *Record) error {
		if string(r.Value) == value && failed.CompareAndSwap(false, true) {
			return errors.New("injected processing failure")
		}
		return nil
	}, &failed
}

func TestTransactExactlyOnceThroughProcessError(t *testing.T) {
	e := startBroker(t)
	tp := newTopology(t, e, 4)
	want := map[string]int{}
	produceInputs(t, e, tp.input, 24, 600, want)

	// The first time session-05's record 7 is processed, fail after the
	// processor already emitted other records of the batch: the
	// transaction must abort and the rebuilt processors must not count
	// those records twice.
	hook, failed := failOnce("session-05/7")
	reg := prometheus.NewRegistry()
	tr, err := NewTransactor(tp.config(e, "txn-a"), tp.counters(hook), WithRegisterer(reg), WithLogger(testLogger()))
	if err != nil {
		t.Fatal(err)
	}
	stop := runAsync(t, tr)
	out := readAtLeast(t, e, tp.output, sum(want), 20*time.Second, 300*time.Millisecond)
	if err := stop(); err != nil {
		t.Fatalf("Run: %v", err)
	}
	if !failed.Load() {
		t.Fatal("the failure was never injected")
	}
	checkExactlyOnce(t, out, want, tp.partitions)
	if n := metricValue(tr.m.aborted); n < 1 {
		t.Fatalf("aborted transactions = %v, want >= 1", n)
	}
}

func TestTransactGivesUpAfterMaxProcessRetries(t *testing.T) {
	e := startBroker(t)
	tp := newTopology(t, e, 2)
	produceInputs(t, e, tp.input, 4, 20, map[string]int{})

	var attempts atomic.Int32
	hook := func(_ context.Context, r *Record) error {
		if string(r.Value) == "session-01/3" {
			attempts.Add(1)
			return errors.New("poison")
		}
		return nil
	}
	cfg := tp.config(e, "txn-a")
	cfg.MaxProcessRetries = 2
	err := RunTransact(context.Background(), cfg, tp.counters(hook), WithLogger(testLogger()))
	if !errors.Is(err, ErrProcess) || !strings.Contains(err.Error(), "poison") {
		t.Fatalf("RunTransact = %v, want ErrProcess wrapping the processor's error", err)
	}
	if n := attempts.Load(); n != 3 {
		t.Fatalf("poison record processed %d times, want 3 (first try + 2 retries)", n)
	}
	// Nothing of the poison record's partition past it was committed:
	// records are never skipped.
	out := readAtLeast(t, e, tp.output, 0, time.Second, 200*time.Millisecond)
	for _, r := range out {
		if string(r.Key) == "session-01" && strings.HasPrefix(string(r.Value), "session-01/3") {
			t.Fatalf("poison record output committed: %q", r.Value)
		}
	}
}

// TestTransactExactlyOnceThroughRestart stops a stage in the middle of a
// batch (after it emitted part of it) and starts a new instance with the same
// transactional ID: the open transaction is aborted and the new instance
// continues from committed offsets and restored state.
func TestTransactExactlyOnceThroughRestart(t *testing.T) {
	e := startBroker(t)
	tp := newTopology(t, e, 4)
	want := map[string]int{}
	produceInputs(t, e, tp.input, 24, 800, want)

	ctx, cancel := context.WithCancel(context.Background())
	var seen atomic.Int32
	hook := func(ctx context.Context, _ *Record) error {
		if seen.Add(1) == 333 {
			cancel() // shutdown arrives mid-batch
		}
		return ctx.Err()
	}
	if err := RunTransact(ctx, tp.config(e, "txn-a"), tp.counters(hook), WithLogger(testLogger())); err != nil {
		t.Fatalf("first run: %v", err)
	}
	// The first run ended, so what it committed is readable: wait for it
	// as long as a loaded machine needs, then read on briefly for the rest.
	first := readAtLeast(t, e, tp.output, 1, 10*time.Second, 200*time.Millisecond)
	if len(first) == 0 || len(first) >= sum(want) {
		t.Fatalf("first run committed %d of %d outputs, want a strict part", len(first), sum(want))
	}

	tr, err := NewTransactor(tp.config(e, "txn-a"), tp.counters(nil), WithLogger(testLogger()))
	if err != nil {
		t.Fatal(err)
	}
	stop := runAsync(t, tr)
	out := readAtLeast(t, e, tp.output, sum(want), 20*time.Second, 300*time.Millisecond)
	checkExactlyOnce(t, out, want, tp.partitions)
	waitFor(t, "ready", 5*time.Second, tr.Ready)
	if err := stop(); err != nil {
		t.Fatalf("second run: %v", err)
	}
}

// TestTransactZombieIsFenced leaves an instance hanging inside Process with
// an open transaction, starts its replacement with the same transactional
// ID, then lets the zombie go on: it must be fenced, and the output must
// still hold every input exactly once.
func TestTransactZombieIsFenced(t *testing.T) {
	e := startBroker(t)
	tp := newTopology(t, e, 2)
	want := map[string]int{}
	produceInputs(t, e, tp.input, 8, 200, want)

	release := make(chan struct{})
	var blocked sync.Once
	inside := make(chan struct{})
	hook := func(_ context.Context, r *Record) error {
		if string(r.Value) == "session-03/4" {
			blocked.Do(func() {
				close(inside)
				<-release
			})
		}
		return nil
	}
	zctx, zcancel := context.WithCancel(context.Background())
	defer zcancel()
	zombie := make(chan error, 1)
	go func() {
		zombie <- RunTransact(zctx, tp.config(e, "txn-a"), tp.counters(hook), WithLogger(testLogger()))
	}()
	select {
	case <-inside:
	case <-time.After(10 * time.Second):
		t.Fatal("zombie never reached the blocking record")
	}

	tr, err := NewTransactor(tp.config(e, "txn-a"), tp.counters(nil), WithLogger(testLogger()))
	if err != nil {
		t.Fatal(err)
	}
	stop := runAsync(t, tr)
	// The replacement has initialised its producer (fencing the zombie)
	// once it has committed anything.
	waitFor(t, "replacement commits", 10*time.Second, func() bool { return metricValue(tr.m.committed) > 0 })
	close(release)
	select {
	case err := <-zombie:
		if !errors.Is(err, ErrFenced) {
			t.Fatalf("zombie Run = %v, want ErrFenced", err)
		}
	case <-time.After(15 * time.Second):
		t.Fatal("zombie was not fenced")
	}
	out := readAtLeast(t, e, tp.output, sum(want), 20*time.Second, 300*time.Millisecond)
	checkExactlyOnce(t, out, want, tp.partitions)
	if err := stop(); err != nil {
		t.Fatalf("replacement: %v", err)
	}
}

// TestTransactRestoresStateOnReassignment runs two instances in one group;
// when one leaves, the other takes its partitions over, restores their
// state from the state topic and continues the per-key counts.
func TestTransactRestoresStateOnReassignment(t *testing.T) {
	e := startBroker(t)
	tp := newTopology(t, e, 4)
	want := map[string]int{}
	produceInputs(t, e, tp.input, 16, 320, want)

	var restoredB atomic.Int32
	newB := func(p int32) Processor {
		return &restoreCounting{counter: &counter{out: tp.output, state: tp.state, counts: map[string]int{}}, n: &restoredB}
	}
	a, err := NewTransactor(tp.config(e, "txn-a"), tp.counters(nil), WithLogger(testLogger()))
	if err != nil {
		t.Fatal(err)
	}
	b, err := NewTransactor(tp.config(e, "txn-b"), newB, WithLogger(testLogger()))
	if err != nil {
		t.Fatal(err)
	}
	stopA := runAsync(t, a)
	stopB := runAsync(t, b)
	waitFor(t, "both instances own partitions", 15*time.Second, func() bool {
		return len(a.Lag()) > 0 && len(b.Lag()) > 0 && len(a.Lag())+len(b.Lag()) == int(tp.partitions)
	})
	readAtLeast(t, e, tp.output, sum(want), 20*time.Second, 0)
	waitFor(t, "both ready", 5*time.Second, func() bool { return a.Ready() && b.Ready() })
	ownedByA := len(a.Lag())
	if err := stopA(); err != nil {
		t.Fatalf("instance a: %v", err)
	}
	before := restoredB.Load()

	produceInputs(t, e, tp.input, 16, 320, want)
	out := readAtLeast(t, e, tp.output, sum(want), 20*time.Second, 300*time.Millisecond)
	checkExactlyOnce(t, out, want, tp.partitions)
	if got := restoredB.Load() - before; got < int32(ownedByA) {
		t.Fatalf("b restored %d keys after taking over %d partitions, want at least one per partition", got, ownedByA)
	}
	waitFor(t, "b owns all and is caught up", 5*time.Second, func() bool {
		lag := b.Lag()
		for _, l := range lag {
			if l != 0 {
				return false
			}
		}
		return len(lag) == int(tp.partitions) && b.Ready()
	})
	if err := stopB(); err != nil {
		t.Fatalf("instance b: %v", err)
	}
}

type restoreCounting struct {
	*counter
	n *atomic.Int32
}

func (r *restoreCounting) Restore(k, v []byte) error {
	r.n.Add(1)
	return r.counter.Restore(k, v)
}

func TestRunTransactRefusesCoPartitionMismatch(t *testing.T) {
	e := startBroker(t)
	ctx := context.Background()
	if err := EnsureTopics(ctx, e.Brokers(), []TopicSpec{
		{Name: "cp.in4", Partitions: 4},
		{Name: "cp.state4", Partitions: 4, Cleanup: CleanupCompact},
		{Name: "cp.state2", Partitions: 2, Cleanup: CleanupCompact},
		{Name: "cp.out4", Partitions: 4},
		{Name: "cp.out3", Partitions: 3},
	}); err != nil {
		t.Fatal(err)
	}
	tests := []struct {
		name       string
		state      string
		outputs    []string
		partitions int32
		wantErr    error
		wantMsg    []string
	}{
		{name: "state differs", state: "cp.state2", outputs: []string{"cp.out4"}, wantErr: ErrCoPartition,
			wantMsg: []string{"cp.in4=4", "cp.state2=2", "cp.out4=4"}},
		{name: "output differs", state: "cp.state4", outputs: []string{"cp.out4", "cp.out3"}, wantErr: ErrCoPartition,
			wantMsg: []string{"cp.out3=3"}},
		{name: "configured count differs", state: "cp.state4", outputs: []string{"cp.out4"}, partitions: 8, wantErr: ErrCoPartition,
			wantMsg: []string{"configured for 8 partitions"}},
		{name: "topic missing", state: "cp.state4", outputs: []string{"cp.nope"}, wantErr: ErrTopicMissing,
			wantMsg: []string{"cp.nope"}},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			var created atomic.Int32
			cfg := TransactConfig{
				Brokers: e.Brokers(), Group: "cp", TransactionalID: "cp", Input: "cp.in4",
				State: tc.state, Outputs: tc.outputs, Partitions: tc.partitions,
			}
			err := RunTransact(ctx, cfg, func(int32) Processor { created.Add(1); return nil })
			if !errors.Is(err, tc.wantErr) {
				t.Fatalf("RunTransact = %v, want %v", err, tc.wantErr)
			}
			for _, m := range tc.wantMsg {
				if !strings.Contains(err.Error(), m) {
					t.Errorf("error %q does not name %q", err, m)
				}
			}
			if created.Load() != 0 {
				t.Error("a processor was created before the check")
			}
		})
	}
}

func TestTransactConfigValidation(t *testing.T) {
	base := TransactConfig{Brokers: []string{"x:1"}, Group: "g", TransactionalID: "t", Input: "in", State: "st", Outputs: []string{"out"}}
	tests := []struct {
		name   string
		mutate func(*TransactConfig)
	}{
		{"no brokers", func(c *TransactConfig) { c.Brokers = nil }},
		{"no group", func(c *TransactConfig) { c.Group = "" }},
		{"no transactional id", func(c *TransactConfig) { c.TransactionalID = "" }},
		{"no input", func(c *TransactConfig) { c.Input = "" }},
		{"state is input", func(c *TransactConfig) { c.State = "in" }},
		{"state is output", func(c *TransactConfig) { c.Outputs = []string{"st"} }},
		{"negative batch", func(c *TransactConfig) { c.MaxBatch = -1 }},
		{"batch wait below the broker's floor", func(c *TransactConfig) { c.BatchWait = 5 * time.Millisecond }},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			cfg := base
			tc.mutate(&cfg)
			if _, err := NewTransactor(cfg, func(int32) Processor { return nil }); !errors.Is(err, ErrConfig) {
				t.Fatalf("NewTransactor = %v, want ErrConfig", err)
			}
		})
	}
	if _, err := NewTransactor(base, func(int32) Processor { return nil }); err != nil {
		t.Fatalf("valid config rejected: %v", err)
	}
}

func TestTransactGivesUpWhenRestoreKeepsFailing(t *testing.T) {
	e := startBroker(t)
	tp := newTopology(t, e, 2)
	want := map[string]int{}
	produceInputs(t, e, tp.input, 4, 20, want)
	tr, err := NewTransactor(tp.config(e, "txn-a"), tp.counters(nil))
	if err != nil {
		t.Fatal(err)
	}
	stop := runAsync(t, tr)
	readAtLeast(t, e, tp.output, sum(want), 10*time.Second, 0)
	if err := stop(); err != nil {
		t.Fatal(err)
	}

	var calls atomic.Int32
	cfg := tp.config(e, "txn-a")
	cfg.MaxProcessRetries = 1
	err = RunTransact(context.Background(), cfg, func(int32) Processor { return failingRestore{calls: &calls} })
	if !errors.Is(err, ErrRestore) || !strings.Contains(err.Error(), "corrupt state") {
		t.Fatalf("RunTransact = %v, want ErrRestore wrapping the processor's error", err)
	}
	if n := calls.Load(); n != 2 {
		t.Fatalf("Restore failed %d times, want 2 (first try + 1 retry)", n)
	}
}

type failingRestore struct{ calls *atomic.Int32 }

func (f failingRestore) Restore(_, _ []byte) error {
	f.calls.Add(1)
	return errors.New("corrupt state")
}

func (failingRestore) Process(context.Context, []*Record, func(Output)) error { return nil }

// TestTransactBatchWaitGathersBatches trickles records in one every 10ms
// or so: without BatchWait nearly each gets its own transaction, with it
// the broker holds each fetch for BatchWait and a transaction carries about
// BatchWait's worth.
//
// The bound is derived from the span the records were actually produced
// over, since a loaded machine stretches it: the stage issues a fetch only
// after the previous one returned and the broker holds each for 200ms, so
// the fetches that return records are at least 200ms apart, and every one
// of them but the last returned before the last record was produced. That
// makes at most span/200ms + 2 fetches with records, one transaction each
// (a poll takes up to MaxBatch records, more than the trickle holds). The
// run without BatchWait must exceed its own such bound, which shows the
// check catches a stage that ignores BatchWait.
func TestTransactBatchWaitGathersBatches(t *testing.T) {
	const (
		n    = 40
		wait = 200 * time.Millisecond
	)
	run := func(t *testing.T, batchWait time.Duration) (txns float64, span time.Duration) {
		e := startBroker(t)
		tp := newTopology(t, e, 2)
		cfg := tp.config(e, "txn-"+batchWait.String())
		cfg.BatchWait = batchWait
		tr, err := NewTransactor(cfg, tp.counters(nil), WithRegisterer(prometheus.NewRegistry()), WithLogger(testLogger()))
		if err != nil {
			t.Fatal(err)
		}
		stop := runAsync(t, tr)
		waitFor(t, "ready", 20*time.Second, tr.Ready)
		p, err := NewProducer(ProducerConfig{Brokers: e.Brokers()})
		if err != nil {
			t.Fatal(err)
		}
		defer p.Close()
		want := map[string]int{}
		start := time.Now()
		for i := range n {
			if i > 0 {
				time.Sleep(10 * time.Millisecond)
			}
			k := fmt.Sprintf("session-%02d", i%2)
			m := Message{Topic: tp.input, Key: []byte(k), Value: fmt.Appendf(nil, "%s/%d", k, want[k])}
			want[k]++
			if err := p.Produce(context.Background(), m); err != nil {
				t.Fatalf("produce input %d: %v", i, err)
			}
		}
		span = time.Since(start)
		out := readAtLeast(t, e, tp.output, n, 20*time.Second, 300*time.Millisecond)
		if err := stop(); err != nil {
			t.Fatalf("Run: %v", err)
		}
		checkExactlyOnce(t, out, want, tp.partitions)
		return metricValue(tr.m.committed), span
	}
	bound := func(span time.Duration) float64 { return float64(span)/float64(wait) + 2 }
	got, span := run(t, 0)
	t.Logf("without BatchWait: %v transactions over %v", got, span)
	if got <= bound(span) {
		t.Errorf("without BatchWait: %v transactions for %d records produced over %v, want more than %.1f (the bound with BatchWait %v)",
			got, n, span, bound(span), wait)
	}
	got, span = run(t, wait)
	t.Logf("with BatchWait %v: %v transactions over %v", wait, got, span)
	if got > bound(span) {
		t.Errorf("with BatchWait %v: %v transactions for %d records produced over %v, want at most %.1f", wait, got, n, span, bound(span))
	}
}

// TestTransactScaleUpAndDownWhileIdle: an idle instance sees two
// rebalances in a row (b joins, then c). franz-go's GroupTransactSession
// reports only the first revocation until a transaction ends, so the
// instance used to keep a partition it had lost, with its processor, and
// resumed it with stale state when it came back. Each instance must own
// only what the group gave it, and after scaling back down every key's
// count must be exact.
func TestTransactScaleUpAndDownWhileIdle(t *testing.T) {
	e := startBroker(t)
	tp := newTopology(t, e, 6)
	const keys = 24
	want := map[string]int{}
	produceInputs(t, e, tp.input, keys, 240, want)
	mk := func(id string) *Transactor {
		tr, err := NewTransactor(tp.config(e, id), tp.counters(nil), WithLogger(testLogger()))
		if err != nil {
			t.Fatal(err)
		}
		return tr
	}
	a, b, c := mk("txn-a"), mk("txn-b"), mk("txn-c")
	runAsync(t, a)
	readAtLeast(t, e, tp.output, sum(want), 20*time.Second, 0)
	waitFor(t, "a owns every partition", 10*time.Second, func() bool { return a.Ready() && len(a.Lag()) == 6 })
	stopB := runAsync(t, b)
	waitFor(t, "b owns some", 15*time.Second, func() bool { return len(b.Lag()) > 0 && len(a.Lag())+len(b.Lag()) == 6 })
	stopC := runAsync(t, c)
	// No input meanwhile: a is idle through both rebalances.
	waitFor(t, "a, b and c own disjoint partitions", 20*time.Second, func() bool {
		la, lb, lc := a.Lag(), b.Lag(), c.Lag()
		if len(la) == 0 || len(lb) == 0 || len(lc) == 0 || len(la)+len(lb)+len(lc) != 6 {
			return false
		}
		for p := range la {
			if _, ok := lb[p]; ok {
				return false
			}
			if _, ok := lc[p]; ok {
				return false
			}
		}
		return a.Ready() && b.Ready() && c.Ready()
	})
	// Every partition moves on under its owner, then b and c leave.
	produceInputs(t, e, tp.input, keys, 240, want)
	readAtLeast(t, e, tp.output, sum(want), 20*time.Second, 500*time.Millisecond)
	if err := stopB(); err != nil {
		t.Fatal(err)
	}
	if err := stopC(); err != nil {
		t.Fatal(err)
	}
	waitFor(t, "a owns every partition again", 20*time.Second, func() bool { return len(a.Lag()) == 6 && a.Ready() })
	produceInputs(t, e, tp.input, keys, 240, want)
	out := readAtLeast(t, e, tp.output, sum(want), 20*time.Second, 500*time.Millisecond)
	checkExactlyOnce(t, out, want, tp.partitions)
}

// oversizeEmitter emits, for each record, an output too large for the
// output topic (random bytes, which compression cannot shrink).
type oversizeEmitter struct {
	out   string
	calls *atomic.Int32
}

func (*oversizeEmitter) Restore(_, _ []byte) error { return nil }

func (o *oversizeEmitter) Process(_ context.Context, batch []*Record, emit func(Output)) error {
	o.calls.Add(1)
	for _, r := range batch {
		v := make([]byte, 16<<10)
		_, _ = rand.Read(v)
		emit(Output{Topic: o.out, Partition: r.Partition, Key: r.Key, Value: v})
	}
	return nil
}

// TestTransactStopsOnAPermanentProduceError: a record over the output
// topic's limit fails on every retry; the stage stops with ErrProcess after
// MaxProcessRetries instead of retrying the batch forever.
func TestTransactStopsOnAPermanentProduceError(t *testing.T) {
	e := startBroker(t)
	ctx := context.Background()
	tp := limitedTopology(t, e, "big", nil, map[string]string{"max.message.bytes": "4096"})
	produceInputs(t, e, tp.input, 1, 1, map[string]int{})
	var calls atomic.Int32
	cfg := tp.config(e, "txn-big")
	cfg.MaxProcessRetries, cfg.RetryBackoff = 2, 10*time.Millisecond
	tr, err := NewTransactor(cfg, func(int32) Processor { return &oversizeEmitter{out: tp.output, calls: &calls} }, WithLogger(testLogger()))
	if err != nil {
		t.Fatal(err)
	}
	runCtx, cancel := context.WithTimeout(ctx, 60*time.Second)
	defer cancel()
	err = tr.Run(runCtx)
	if !errors.Is(err, ErrProcess) || !errors.Is(err, kerr.MessageTooLarge) {
		t.Fatalf("Run: %v after %d attempts, want ErrProcess wrapping MESSAGE_TOO_LARGE", err, calls.Load())
	}
	if n := calls.Load(); n != 3 {
		t.Errorf("%d attempts, want 3 (the first and MaxProcessRetries more)", n)
	}
}

// fanOut emits, for every input record, n records of size bytes to out.
type fanOut struct {
	out     string
	n, size int
}

func (*fanOut) Restore(_, _ []byte) error { return nil }

func (f *fanOut) Process(_ context.Context, batch []*Record, emit func(Output)) error {
	for _, r := range batch {
		for range f.n {
			v := make([]byte, f.size)
			_, _ = rand.Read(v)
			emit(Output{Topic: f.out, Partition: r.Partition, Key: r.Key, Value: v})
		}
	}
	return nil
}

// TestTransactBatchesFitEachTopic: MaxRecordBytes may be larger than an
// output topic's max.message.bytes (a stage's state topic carries larger
// records than its outputs). Many small records of one transaction must
// still be sent to each topic in batches it accepts, not in one batch of
// up to MaxRecordBytes that the broker refuses MESSAGE_TOO_LARGE, which
// stopped the stage though every record fits.
func TestTransactBatchesFitEachTopic(t *testing.T) {
	e := startBroker(t)
	tp := limitedTopology(t, e, "fan", map[string]string{"max.message.bytes": "2097152"}, map[string]string{"max.message.bytes": "65536"})
	const inputs, fan = 20, 100
	produceInputs(t, e, tp.input, 1, inputs, map[string]int{})
	cfg := tp.config(e, "txn-fan")
	cfg.MaxRecordBytes, cfg.Compression = 2<<20, "none"
	cfg.MaxProcessRetries = 1
	tr, err := NewTransactor(cfg, func(int32) Processor { return &fanOut{out: tp.output, n: fan, size: 1 << 10} }, WithLogger(testLogger()))
	if err != nil {
		t.Fatal(err)
	}
	stop := runAsync(t, tr)
	readAtLeast(t, e, tp.output, inputs*fan, 30*time.Second, 0)
	if err := stop(); err != nil {
		t.Fatalf("Run: %v", err)
	}
}

// limitedTopology makes a one-partition topology named name.in, .state
// and .out, with the given configs on its state and output topics.
func limitedTopology(t *testing.T, e *Embedded, name string, state, out map[string]string) topology {
	t.Helper()
	tp := topology{input: name + ".in", state: name + ".state", output: name + ".out", partitions: 1}
	if err := EnsureTopics(context.Background(), e.Brokers(), []TopicSpec{
		{Name: tp.input, Partitions: 1},
		{Name: tp.state, Partitions: 1, Cleanup: CleanupCompact, Configs: state},
		{Name: tp.output, Partitions: 1, Configs: out},
	}); err != nil {
		t.Fatal(err)
	}
	return tp
}

// TestTransactTwoRevocationsInOneTransaction has a second instance join, and
// then a third, while the first is inside one long transaction: franz-go
// reports only the first of the two revocations to the stage, which must
// still drop every partition it no longer owns.
func TestTransactTwoRevocationsInOneTransaction(t *testing.T) {
	e := startBroker(t)
	tp := newTopology(t, e, 6)
	const keys = 24
	want := map[string]int{}
	produceInputs(t, e, tp.input, keys, 240, want)
	var block atomic.Bool
	block.Store(true)
	entered := make(chan struct{})
	var enteredOnce sync.Once
	release := make(chan struct{})
	hook := func(ctx context.Context, _ *Record) error {
		if !block.Load() {
			return nil
		}
		enteredOnce.Do(func() { close(entered) })
		select {
		case <-release:
		case <-ctx.Done():
			return ctx.Err()
		}
		return nil
	}
	mk := func(id string, hook func(context.Context, *Record) error) *Transactor {
		tr, err := NewTransactor(tp.config(e, id), tp.counters(hook), WithLogger(testLogger()))
		if err != nil {
			t.Fatal(err)
		}
		return tr
	}
	a, b, c := mk("txn-a", hook), mk("txn-b", nil), mk("txn-c", nil)
	runAsync(t, a)
	select {
	case <-entered:
	case <-time.After(15 * time.Second):
		t.Fatal("a never processed")
	}
	runAsync(t, b)
	waitFor(t, "b owns some", 15*time.Second, func() bool { return len(b.Lag()) > 0 })
	runAsync(t, c)
	waitFor(t, "c owns some", 15*time.Second, func() bool { return len(c.Lag()) > 0 })
	block.Store(false)
	close(release)
	waitFor(t, "a, b and c own disjoint partitions", 20*time.Second, func() bool {
		la, lb, lc := a.Lag(), b.Lag(), c.Lag()
		if len(la) == 0 || len(lb) == 0 || len(lc) == 0 || len(la)+len(lb)+len(lc) != 6 {
			return false
		}
		return a.Ready() && b.Ready() && c.Ready()
	})
	produceInputs(t, e, tp.input, keys, 240, want)
	out := readAtLeast(t, e, tp.output, sum(want), 20*time.Second, 500*time.Millisecond)
	checkExactlyOnce(t, out, want, tp.partitions)
}

// TestTransactRestoreRetriesCountOnlyConsecutiveFailures has an idle stage
// (nothing to commit) fail one restore, restore fine, and fail one more
// after a rebalance: two failures with a successful restore between them
// are not MaxProcessRetries consecutive ones, and the stage goes on.
func TestTransactRestoreRetriesCountOnlyConsecutiveFailures(t *testing.T) {
	e := startBroker(t)
	tp := newTopology(t, e, 2)
	p, err := NewProducer(ProducerConfig{Brokers: e.Brokers()})
	if err != nil {
		t.Fatal(err)
	}
	for part := range tp.partitions {
		if err := p.Produce(context.Background(), Message{Topic: tp.state, Key: []byte("k"), Value: []byte("1"), Pin: true, Partition: part}); err != nil {
			t.Fatal(err)
		}
	}
	p.Close()
	var failNext atomic.Bool
	failNext.Store(true)
	newA := func(int32) Processor {
		return &flakyRestore{counter: &counter{out: tp.output, state: tp.state, counts: map[string]int{}}, fail: &failNext}
	}
	cfg := tp.config(e, "txn-a")
	cfg.MaxProcessRetries = 1
	a, err := NewTransactor(cfg, newA, WithLogger(testLogger()))
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	done := make(chan error, 1)
	go func() { done <- a.Run(ctx) }()
	waitFor(t, "a owns both partitions, restored", 15*time.Second, func() bool { return len(a.Lag()) == 2 && a.Ready() })

	b, err := NewTransactor(tp.config(e, "txn-b"), tp.counters(nil), WithLogger(testLogger()))
	if err != nil {
		t.Fatal(err)
	}
	stopB := runAsync(t, b)
	waitFor(t, "b owns one partition", 15*time.Second, func() bool { return len(b.Lag()) == 1 && len(a.Lag()) == 1 })
	failNext.Store(true)
	if err := stopB(); err != nil {
		t.Fatal(err)
	}
	waitFor(t, "a owns both partitions again, restored", 15*time.Second, func() bool {
		select {
		case err := <-done:
			t.Fatalf("Run ended: %v", err)
		default:
		}
		return len(a.Lag()) == 2 && a.Ready()
	})
	cancel()
	if err := <-done; err != nil {
		t.Fatalf("Run: %v", err)
	}
}

// flakyRestore fails one Restore each time fail is set.
type flakyRestore struct {
	*counter
	fail *atomic.Bool
}

func (f *flakyRestore) Restore(k, v []byte) error {
	if f.fail.CompareAndSwap(true, false) {
		return errors.New("transient")
	}
	return f.counter.Restore(k, v)
}

// TestTransactBacksOffWhileCommitsKeepAborting has the group coordinator
// refuse every transaction's offsets with an error the client aborts the
// transaction for (UNKNOWN_SERVER_ERROR): no processing failed and no
// rebalance is going on, so the stage must back off between attempts
// instead of rebuilding its state and aborting as fast as it can.
func TestTransactBacksOffWhileCommitsKeepAborting(t *testing.T) {
	e := startBroker(t)
	tp := newTopology(t, e, 1)
	want := map[string]int{}
	produceInputs(t, e, tp.input, 4, 40, want)
	var refuse atomic.Bool
	refuse.Store(true)
	var refused atomic.Int32
	e.c.ControlKey(int16(kmsg.TxnOffsetCommit), func(req kmsg.Request) (kmsg.Response, error, bool) {
		e.c.KeepControl()
		if !refuse.Load() {
			return nil, nil, false
		}
		refused.Add(1)
		r := req.(*kmsg.TxnOffsetCommitRequest)
		resp := r.ResponseKind().(*kmsg.TxnOffsetCommitResponse)
		for _, rt := range r.Topics {
			st := kmsg.NewTxnOffsetCommitResponseTopic()
			st.Topic = rt.Topic
			for _, rp := range rt.Partitions {
				sp := kmsg.NewTxnOffsetCommitResponseTopicPartition()
				sp.Partition = rp.Partition
				sp.ErrorCode = kerr.UnknownServerError.Code
				st.Partitions = append(st.Partitions, sp)
			}
			resp.Topics = append(resp.Topics, st)
		}
		return resp, nil, true
	})
	cfg := tp.config(e, "txn-refused")
	cfg.RetryBackoff = 50 * time.Millisecond
	cfg.MaxRetryBackoff = time.Second
	tr, err := NewTransactor(cfg, tp.counters(nil), WithLogger(testLogger()))
	if err != nil {
		t.Fatal(err)
	}
	stop := runAsync(t, tr)
	waitFor(t, "a refused commit", 10*time.Second, func() bool { return refused.Load() > 0 })
	time.Sleep(2 * time.Second)
	// Backing off from 50ms, doubling up to 1s, leaves room for about 7
	// attempts in 2s.
	if n := refused.Load(); n > 12 {
		t.Errorf("%d refused commits in about 2s: the stage did not back off", n)
	}
	refuse.Store(false)
	out := readAtLeast(t, e, tp.output, sum(want), 20*time.Second, 300*time.Millisecond)
	checkExactlyOnce(t, out, want, tp.partitions)
	if err := stop(); err != nil {
		t.Fatal(err)
	}
}

// committingCounter is a counter that also tallies its records and adds
// the tally to total only when told its transaction committed.
type committingCounter struct {
	counter
	pending   int64
	total     *atomic.Int64
	committed *atomic.Int64
}

func (c *committingCounter) Process(ctx context.Context, batch []*Record, emit func(Output)) error {
	if err := c.counter.Process(ctx, batch, emit); err != nil {
		return err
	}
	c.pending += int64(len(batch))
	return nil
}

func (c *committingCounter) Committed() {
	c.total.Add(c.pending)
	c.committed.Add(1)
	c.pending = 0
}

// TestTransactCommittedCountsEachRecordOnce: a Committer hears of every
// committed batch and of no aborted one, so what it counts while
// processing adds up to the input exactly, through an aborted transaction
// whose batch is processed twice.
func TestTransactCommittedCountsEachRecordOnce(t *testing.T) {
	e := startBroker(t)
	tp := newTopology(t, e, 4)
	want := map[string]int{}
	produceInputs(t, e, tp.input, 24, 600, want)
	hook, failed := failOnce("session-05/7")
	var total, commits atomic.Int64
	newProc := func(int32) Processor {
		return &committingCounter{counter: counter{out: tp.output, state: tp.state, counts: map[string]int{}, hook: hook}, total: &total, committed: &commits}
	}
	tr, err := NewTransactor(tp.config(e, "txn-a"), newProc, WithRegisterer(prometheus.NewRegistry()), WithLogger(testLogger()))
	if err != nil {
		t.Fatal(err)
	}
	stop := runAsync(t, tr)
	out := readAtLeast(t, e, tp.output, sum(want), 20*time.Second, 300*time.Millisecond)
	if err := stop(); err != nil {
		t.Fatalf("Run: %v", err)
	}
	checkExactlyOnce(t, out, want, tp.partitions)
	if !failed.Load() || metricValue(tr.m.aborted) < 1 {
		t.Fatal("no transaction was aborted")
	}
	if total.Load() != int64(sum(want)) || commits.Load() == 0 {
		t.Fatalf("committed tally %d over %d calls, want %d records", total.Load(), commits.Load(), sum(want))
	}
}
