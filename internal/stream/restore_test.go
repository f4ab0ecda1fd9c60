package stream

import (
	"context"
	"fmt"
	"math/rand/v2"
	"runtime"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"github.com/twmb/franz-go/pkg/kadm"
	"github.com/twmb/franz-go/pkg/kgo"
)

// TestReadLatestWithinAndPastTheBudget: the latest value of every key that
// is not tombstoned, per partition in the offset order of those values,
// whether the state fits the restore budget (one pass) or not (two).
func TestReadLatestWithinAndPastTheBudget(t *testing.T) {
	ctx := context.Background()
	const topic = "restore.state"
	// Keys k0..k9, three versions each; k3 is tombstoned, k4 tombstoned
	// and written again, k5 last written after everything else.
	var msgs []Message
	put := func(part int32, key, value string) {
		m := Message{Topic: topic, Partition: part, Pin: true, Key: []byte(key)}
		if value != "" {
			m.Value = []byte(value)
		}
		msgs = append(msgs, m)
	}
	for v := range 3 {
		for k := range 10 {
			put(int32(k%2), fmt.Sprintf("k%d", k), fmt.Sprintf("k%d/v%d|%0100d", k, v, 0))
		}
	}
	put(1, "k3", "")
	put(0, "k4", "")
	put(0, "k4", "k4/again")
	put(1, "k5", "k5/last")
	e, adm := stateTopic(t, topic, 2, msgs)
	want := map[int32]string{
		0: "k0=k0/v2 k2=k2/v2 k6=k6/v2 k8=k8/v2 k4=k4/again",
		1: "k1=k1/v2 k7=k7/v2 k9=k9/v2 k5=k5/last",
	}
	for _, budget := range []int{1 << 20, 500} {
		old := restoreBudget
		restoreBudget = budget
		got := map[int32]string{}
		err := readLatest(ctx, adm, Security{}.seed(e.Brokers()), topic, []int32{0, 1}, testLogger(), nil, func(p int32, key, value []byte) error {
			if got[p] != "" {
				got[p] += " "
			}
			v, _, _ := strings.Cut(string(value), "|") // without the padding
			got[p] += string(key) + "=" + v
			return nil
		})
		restoreBudget = old
		if err != nil {
			t.Fatal(err)
		}
		if fmt.Sprint(got) != fmt.Sprint(want) {
			t.Errorf("budget %d:\n got %v\nwant %v", budget, got, want)
		}
	}
}

// BenchmarkReadLatest reads 20,000 keys of ~1 KB, three versions each, in
// one pass (within the budget) and in two (past it).
func BenchmarkReadLatest(b *testing.B) {
	ctx := context.Background()
	const topic = "restore.bench"
	rnd := rand.New(rand.NewPCG(1, 2))
	var msgs []Message
	for range 3 {
		for k := range 20000 {
			value := make([]byte, 1000) // incompressible, like hashes and digests
			for i := range value {
				value[i] = byte(rnd.Uint32())
			}
			msgs = append(msgs, Message{Topic: topic, Key: fmt.Appendf(nil, "tenant/session-%05d", k), Value: value})
		}
	}
	e, adm := stateTopic(b, topic, 1, msgs)
	for _, c := range []struct {
		name   string
		budget int
	}{{"one-pass", 64 << 20}, {"two-pass", 1 << 20}} {
		b.Run(c.name, func(b *testing.B) {
			old := restoreBudget
			restoreBudget = c.budget
			defer func() { restoreBudget = old }()
			var heap uint64
			for b.Loop() {
				n := 0
				err := readLatest(ctx, adm, Security{}.seed(e.Brokers()), topic, []int32{0}, testLogger(), nil, func(int32, []byte, []byte) error {
					if n++; n == 10000 { // halfway through handing over: what the read holds
						runtime.GC()
						var ms runtime.MemStats
						runtime.ReadMemStats(&ms)
						heap = max(heap, ms.HeapAlloc)
					}
					return nil
				})
				if err != nil || n != 20000 {
					b.Fatalf("%d keys, %v", n, err)
				}
			}
			b.ReportMetric(float64(heap)/(1<<20), "heap-MiB")
		})
	}
}

// stateTopic starts a broker with a compacted topic of the given
// partitions holding msgs, and returns it with an admin client.
func stateTopic(tb testing.TB, topic string, partitions int32, msgs []Message) (*Embedded, *kadm.Client) {
	tb.Helper()
	e := startBroker(tb)
	ctx := context.Background()
	if err := EnsureTopics(ctx, e.Brokers(), []TopicSpec{{Name: topic, Partitions: partitions, Cleanup: CleanupCompact}}); err != nil {
		tb.Fatal(err)
	}
	p, err := NewProducer(ProducerConfig{Brokers: e.Brokers()})
	if err != nil {
		tb.Fatal(err)
	}
	defer p.Close()
	if err := p.Produce(ctx, msgs...); err != nil {
		tb.Fatal(err)
	}
	adm, closeAdm, err := newAdmin(e.Brokers(), Security{})
	if err != nil {
		tb.Fatal(err)
	}
	tb.Cleanup(closeAdm)
	return e, adm
}

// TestReadLatestReportsProgressWhileWaiting keeps a transaction on the state
// topic open for 2.5 s: the read waits for it, and must report progress
// while it waits, so that the stage's stall watchdog does not take the wait
// for a hung client.
func TestReadLatestReportsProgressWhileWaiting(t *testing.T) {
	const topic = "restore.wait"
	e, adm := stateTopic(t, topic, 1, []Message{{Topic: topic, Key: []byte("a"), Value: []byte("1")}})
	ctx := context.Background()
	cl, err := kgo.NewClient(kgo.SeedBrokers(e.Brokers()...), kgo.TransactionalID("restore-wait"),
		kgo.DefaultProduceTopic(topic), kgo.RecordPartitioner(kgo.ManualPartitioner()))
	if err != nil {
		t.Fatal(err)
	}
	defer cl.Close()
	if err := cl.BeginTransaction(); err != nil {
		t.Fatal(err)
	}
	if err := cl.ProduceSync(ctx, &kgo.Record{Key: []byte("b"), Value: []byte("2")}).FirstErr(); err != nil {
		t.Fatal(err)
	}
	go func() {
		time.Sleep(2500 * time.Millisecond)
		if err := cl.EndTransaction(ctx, kgo.TryCommit); err != nil {
			t.Error(err)
		}
	}()
	var beats atomic.Int32
	got := map[string]string{}
	err = readLatest(ctx, adm, Security{}.seed(e.Brokers()), topic, []int32{0}, testLogger(), func() { beats.Add(1) }, func(_ int32, k, v []byte) error {
		got[string(k)] = string(v)
		return nil
	})
	if err != nil {
		t.Fatal(err)
	}
	if got["a"] != "1" || got["b"] != "2" {
		t.Fatalf("restored %v, want a=1 and the committed b=2", got)
	}
	if n := beats.Load(); n < 3 { // the first record, two idle polls, the commit
		t.Fatalf("progress reported %d times in a 2.5 s wait, want at least 3", n)
	}
}
