package stream

import (
	"context"
	"errors"
	"fmt"
	"net"
	"os"
	"path/filepath"
	"slices"
	"syscall"
	"testing"
	"time"

	"github.com/twmb/franz-go/pkg/kgo"
)

func freeAddr(tb testing.TB) string {
	tb.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		tb.Fatal(err)
	}
	defer ln.Close()
	return ln.Addr().String()
}

func TestEmbeddedListensOnAddrAndClosesOnCancel(t *testing.T) {
	ctx, cancel := context.WithCancel(context.Background())
	// The test needs a fixed address; another process may take a port
	// between freeAddr closing it and the broker binding it, so retry.
	var (
		addr string
		e    *Embedded
		err  error
	)
	for range 5 {
		addr = freeAddr(t)
		if e, err = StartEmbedded(ctx, EmbeddedConfig{Addr: addr, Partitions: 3}); err == nil || !errors.Is(err, syscall.EADDRINUSE) {
			break
		}
	}
	if err != nil {
		t.Fatal(err)
	}
	defer e.Close()
	if e.Addr() != addr {
		t.Fatalf("Addr() = %s, want %s", e.Addr(), addr)
	}
	p, err := NewProducer(ProducerConfig{Brokers: []string{addr}})
	if err != nil {
		t.Fatal(err)
	}
	if err := EnsureTopics(ctx, []string{addr}, []TopicSpec{{Name: "l", Partitions: 3}}); err != nil {
		t.Fatal(err)
	}
	if err := p.Produce(ctx, Message{Topic: "l", Key: []byte("k"), Value: []byte("v")}); err != nil {
		t.Fatalf("produce to %s: %v", addr, err)
	}
	p.Close()

	cancel()
	e.Close() // waits for the cancel-triggered shutdown
	if c, err := net.DialTimeout("tcp", addr, time.Second); err == nil {
		c.Close()
		t.Fatal("broker still accepts connections after ctx was cancelled")
	}
}

// TestEmbeddedPersistsAcrossRestart runs a transactional stage on a broker
// with a data dir, restarts the broker on the same dir, and checks that
// committed outputs, group offsets and state survived: the stage continues
// exactly where it stopped.
func TestEmbeddedPersistsAcrossRestart(t *testing.T) {
	for _, sync := range []bool{false, true} {
		t.Run(fmt.Sprintf("sync writes %v", sync), func(t *testing.T) { testEmbeddedPersistsAcrossRestart(t, sync) })
	}
}

func testEmbeddedPersistsAcrossRestart(t *testing.T, sync bool) {
	dir := t.TempDir()
	start := func() *Embedded {
		e, err := StartEmbedded(context.Background(), EmbeddedConfig{DataDir: dir, Addr: "127.0.0.1:0", SyncWrites: sync}, WithLogger(testLogger()))
		if err != nil {
			t.Fatal(err)
		}
		return e
	}
	e := start()
	marker := filepath.Join(dir, runningFile)
	if _, err := os.Stat(marker); err != nil {
		t.Fatalf("running marker while the broker runs: %v", err)
	}
	tp := newTopology(t, e, 3)
	want := map[string]int{}
	produceInputs(t, e, tp.input, 9, 90, want)
	tr, err := NewTransactor(tp.config(e, "txn-p"), tp.counters(nil), WithLogger(testLogger()))
	if err != nil {
		t.Fatal(err)
	}
	stop := runAsync(t, tr)
	readAtLeast(t, e, tp.output, sum(want), 10*time.Second, 0)
	waitFor(t, "ready", 5*time.Second, tr.Ready)
	if err := stop(); err != nil {
		t.Fatal(err)
	}
	e.Close()
	if _, err := os.Stat(marker); !os.IsNotExist(err) {
		t.Fatalf("running marker after a clean stop: %v, want none", err)
	}

	e = start()
	defer e.Close()
	produceInputs(t, e, tp.input, 9, 90, want)
	tr, err = NewTransactor(tp.config(e, "txn-p"), tp.counters(nil), WithLogger(testLogger()))
	if err != nil {
		t.Fatal(err)
	}
	stop = runAsync(t, tr)
	out := readAtLeast(t, e, tp.output, sum(want), 10*time.Second, 300*time.Millisecond)
	checkExactlyOnce(t, out, want, tp.partitions)
	if err := stop(); err != nil {
		t.Fatal(err)
	}
}

// copyDir copies a data dir as it is on disk while its broker runs: what a
// kill -9 leaves behind (the broker writes through to the files).
func copyDir(tb testing.TB, src, dst string) {
	tb.Helper()
	err := filepath.WalkDir(src, func(p string, d os.DirEntry, err error) error {
		if err != nil {
			return err
		}
		rel, err := filepath.Rel(src, p)
		if err != nil {
			return err
		}
		if d.IsDir() {
			return os.MkdirAll(filepath.Join(dst, rel), 0o755)
		}
		b, err := os.ReadFile(p)
		if err != nil {
			return err
		}
		return os.WriteFile(filepath.Join(dst, rel), b, 0o644)
	})
	if err != nil {
		tb.Fatal(err)
	}
}

// TestEmbeddedAbortsTransactionsOpenAtACrash restarts the broker on the
// image of a data dir taken while a transaction was open (a kill -9). The
// restore of that partition must end, without the open transaction, and
// the next transaction the same transactional ID commits there must be
// visible to read_committed readers. kfake alone reloads the open
// transaction as aborted without a marker: the restore waited forever for
// the end of the partition, and the next commit was dropped as aborted.
func TestEmbeddedAbortsTransactionsOpenAtACrash(t *testing.T) {
	ctx := context.Background()
	dir, crashed := t.TempDir(), t.TempDir()
	e, err := StartEmbedded(ctx, EmbeddedConfig{DataDir: dir, Addr: "127.0.0.1:0"}, WithLogger(testLogger()))
	if err != nil {
		t.Fatal(err)
	}
	if err := EnsureTopics(ctx, e.Brokers(), []TopicSpec{{Name: "state", Partitions: 1, Cleanup: CleanupCompact}}); err != nil {
		t.Fatal(err)
	}
	txn := func(brokers []string, value string, commit bool) *kgo.Client {
		t.Helper()
		cl, err := kgo.NewClient(kgo.SeedBrokers(brokers...), kgo.TransactionalID("stage-1"), kgo.DefaultProduceTopic("state"))
		if err != nil {
			t.Fatal(err)
		}
		if err := cl.BeginTransaction(); err != nil {
			t.Fatal(err)
		}
		if err := cl.ProduceSync(ctx, &kgo.Record{Key: []byte("k"), Value: []byte(value)}).FirstErr(); err != nil {
			t.Fatal(err)
		}
		if commit {
			if err := cl.EndTransaction(ctx, kgo.TryCommit); err != nil {
				t.Fatal(err)
			}
		}
		return cl
	}
	txn(e.Brokers(), "committed", true).Close()
	open := txn(e.Brokers(), "open at the crash", false)
	copyDir(t, dir, crashed)
	open.Close()
	e.Close()

	// A start whose context ends during the recovery (aegisd shut down
	// while starting) stops, and leaves the recovery to the next start.
	cancelled, cancel := context.WithCancel(ctx)
	cancel()
	if e, err := StartEmbedded(cancelled, EmbeddedConfig{DataDir: crashed, Addr: "127.0.0.1:0"}, WithLogger(testLogger())); err == nil {
		e.Close()
		t.Fatal("a start with an ended context recovered the data dir and started")
	} else if !errors.Is(err, context.Canceled) {
		// aegisd tells a start stopped by its shutdown from a failed one
		// by this.
		t.Fatalf("start with an ended context: %v, want it to wrap context.Canceled", err)
	}

	e, err = StartEmbedded(ctx, EmbeddedConfig{DataDir: crashed, Addr: "127.0.0.1:0"}, WithLogger(testLogger()))
	if err != nil {
		t.Fatal(err)
	}
	defer e.Close()
	if restored, want := restoreState(ctx, t, e), []string{"committed"}; !slices.Equal(restored, want) {
		t.Fatalf("restored %q, want %q", restored, want)
	}

	txn(e.Brokers(), "after the restart", true).Close()
	cl, err := kgo.NewClient(kgo.SeedBrokers(e.Brokers()...), kgo.ConsumeTopics("state"),
		kgo.ConsumeResetOffset(kgo.NewOffset().AtStart()), kgo.FetchIsolationLevel(kgo.ReadCommitted()))
	if err != nil {
		t.Fatal(err)
	}
	defer cl.Close()
	var read []string
	pctx, pcancel := context.WithTimeout(ctx, 5*time.Second)
	defer pcancel()
	for pctx.Err() == nil && !slices.Contains(read, "after the restart") {
		cl.PollFetches(pctx).EachRecord(func(r *kgo.Record) { read = append(read, string(r.Value)) })
	}
	if want := []string{"committed", "after the restart"}; !slices.Equal(read, want) {
		t.Fatalf("read_committed after the restart: %q, want %q", read, want)
	}
}

// TestEmbeddedRefusesADataDirInUse starts a second broker on the data dir of
// a running one: it must refuse instead of appending to the same segment
// files at the same offsets, and start once the first has closed.
func TestEmbeddedRefusesADataDirInUse(t *testing.T) {
	dir := t.TempDir()
	start := func() (*Embedded, error) {
		return StartEmbedded(context.Background(), EmbeddedConfig{DataDir: dir, Addr: "127.0.0.1:0"}, WithLogger(testLogger()))
	}
	first, err := start()
	if err != nil {
		t.Fatal(err)
	}
	if second, err := start(); err == nil {
		second.Close()
		first.Close()
		t.Fatal("a second broker started on a data dir in use")
	} else if !errors.Is(err, ErrConfig) {
		t.Fatalf("second broker: %v, want %v", err, ErrConfig)
	}
	first.Close()
	again, err := start()
	if err != nil {
		t.Fatalf("after the first closed: %v", err)
	}
	again.Close()
}

// TestEmbeddedAbortsATransactionOpenAtACleanCloseAndACrash closes the broker
// cleanly while a transaction is open, restarts it (the transaction is
// restored open), and crashes it before that partition is written again.
// kfake reloads the unchanged partition from the snapshot taken at the
// clean close, which knows nothing of the transaction; the abort marker
// alone did not make it aborted, and its record was restored as committed.
func TestEmbeddedAbortsATransactionOpenAtACleanCloseAndACrash(t *testing.T) {
	ctx := context.Background()
	dir, crashed := t.TempDir(), t.TempDir()
	start := func(dir string) *Embedded {
		t.Helper()
		e, err := StartEmbedded(ctx, EmbeddedConfig{DataDir: dir, Addr: "127.0.0.1:0"}, WithLogger(testLogger()))
		if err != nil {
			t.Fatal(err)
		}
		return e
	}
	e := start(dir)
	if err := EnsureTopics(ctx, e.Brokers(), []TopicSpec{{Name: "state", Partitions: 1, Cleanup: CleanupCompact}}); err != nil {
		t.Fatal(err)
	}
	cl, err := kgo.NewClient(kgo.SeedBrokers(e.Brokers()...), kgo.TransactionalID("stage-1"), kgo.DefaultProduceTopic("state"))
	if err != nil {
		t.Fatal(err)
	}
	for _, v := range []string{"committed", "open at the close"} {
		if err := cl.BeginTransaction(); err != nil {
			t.Fatal(err)
		}
		if err := cl.ProduceSync(ctx, &kgo.Record{Key: []byte("k"), Value: []byte(v)}).FirstErr(); err != nil {
			t.Fatal(err)
		}
		if v == "committed" {
			if err := cl.EndTransaction(ctx, kgo.TryCommit); err != nil {
				t.Fatal(err)
			}
		}
	}
	e.Close()
	cl.Close()
	e = start(dir)
	copyDir(t, dir, crashed)
	e.Close()

	e = start(crashed)
	defer e.Close()
	if restored, want := restoreState(ctx, t, e), []string{"committed"}; !slices.Equal(restored, want) {
		t.Fatalf("restored %q, want %q", restored, want)
	}
}

// restoreState reads partition 0 of topic "state" from e as a stage
// restores its state (read_committed, to the end), within 10 s.
func restoreState(ctx context.Context, t *testing.T, e *Embedded) []string {
	t.Helper()
	adm, closeAdm, err := newAdmin(e.Brokers(), Security{})
	if err != nil {
		t.Fatal(err)
	}
	defer closeAdm()
	rctx, cancel := context.WithTimeout(ctx, 10*time.Second)
	defer cancel()
	var restored []string
	if err := readLatest(rctx, adm, Security{}.seed(e.Brokers()), "state", []int32{0}, testLogger(), nil, func(_ int32, _, v []byte) error {
		restored = append(restored, string(v))
		return nil
	}); err != nil {
		t.Fatalf("restore after the crash: %v", err)
	}
	return restored
}

// TestEmbeddedCompactionKeepsStateUnderAnOpenTransaction compacts a state
// topic while a transaction that rewrites a key is open, then aborts that
// transaction: the key's committed value must still be restored.
func TestEmbeddedCompactionKeepsStateUnderAnOpenTransaction(t *testing.T) {
	ctx := context.Background()
	e := startBroker(t)
	if err := EnsureTopics(ctx, e.Brokers(), []TopicSpec{{Name: "state", Partitions: 1, Cleanup: CleanupCompact}}); err != nil {
		t.Fatal(err)
	}
	cl, err := kgo.NewClient(kgo.SeedBrokers(e.Brokers()...), kgo.TransactionalID("stage-1"), kgo.DefaultProduceTopic("state"))
	if err != nil {
		t.Fatal(err)
	}
	defer cl.Close()
	produce := func(k, v string) {
		t.Helper()
		if err := cl.ProduceSync(ctx, &kgo.Record{Key: []byte(k), Value: []byte(v)}).FirstErr(); err != nil {
			t.Fatal(err)
		}
	}
	if err := cl.BeginTransaction(); err != nil {
		t.Fatal(err)
	}
	produce("k", "committed")
	if err := cl.EndTransaction(ctx, kgo.TryCommit); err != nil {
		t.Fatal(err)
	}
	if err := cl.BeginTransaction(); err != nil {
		t.Fatal(err)
	}
	produce("k", "aborted")
	produce("other", "aborted") // the open transaction's first batch is not the last one
	if e.Compact() {
		t.Error("compacted while a transaction was open")
	}
	if err := cl.EndTransaction(ctx, kgo.TryAbort); err != nil {
		t.Fatal(err)
	}
	if !e.Compact() {
		t.Error("did not compact once no transaction was open")
	}
	if restored, want := restoreState(ctx, t, e), []string{"committed"}; !slices.Equal(restored, want) {
		t.Fatalf("restored %q, want %q", restored, want)
	}
}
