package stream

import (
	"context"
	"fmt"
	"log/slog"
	"os"
	"slices"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	dto "github.com/prometheus/client_model/go"
)

// testLogger logs to stderr when STREAM_TEST_LOG is set, else nowhere.
func testLogger() *slog.Logger {
	if os.Getenv("STREAM_TEST_LOG") != "" {
		return slog.New(slog.NewTextHandler(os.Stderr, &slog.HandlerOptions{Level: slog.LevelDebug}))
	}
	return slog.New(slog.DiscardHandler)
}

// startBroker starts an in-memory embedded broker on a free port, closed at
// the end of the test.
func startBroker(tb testing.TB) *Embedded {
	tb.Helper()
	e, err := StartEmbedded(context.Background(), EmbeddedConfig{Addr: "127.0.0.1:0"}, WithLogger(testLogger()))
	if err != nil {
		tb.Fatalf("start broker: %v", err)
	}
	tb.Cleanup(e.Close)
	return e
}

// topology names the topics of one test stage.
type topology struct {
	input, state, output string
	partitions           int32
}

func newTopology(tb testing.TB, e *Embedded, partitions int32) topology {
	tb.Helper()
	name := strings.NewReplacer("/", "-", " ", "-").Replace(tb.Name())
	tp := topology{input: name + ".in", state: name + ".state", output: name + ".out", partitions: partitions}
	err := EnsureTopics(context.Background(), e.Brokers(), []TopicSpec{
		{Name: tp.input, Partitions: partitions},
		{Name: tp.state, Partitions: partitions, Cleanup: CleanupCompact},
		{Name: tp.output, Partitions: partitions},
	})
	if err != nil {
		tb.Fatalf("ensure topics: %v", err)
	}
	return tp
}

func (tp topology) config(e *Embedded, txnID string) TransactConfig {
	return TransactConfig{
		Brokers:           e.Brokers(),
		Group:             "g-" + tp.input,
		TransactionalID:   txnID,
		Input:             tp.input,
		State:             tp.state,
		Outputs:           []string{tp.output},
		MaxBatch:          50,
		RetryBackoff:      10 * time.Millisecond,
		SessionTimeout:    6 * time.Second,
		HeartbeatInterval: 100 * time.Millisecond,
	}
}

// inputs produces n records over keys session-00..session-(keys-1); the
// value of a key's i-th record is "<key>/<i>", counting from start[key].
func produceInputs(tb testing.TB, e *Embedded, topic string, keys, n int, next map[string]int) {
	tb.Helper()
	p, err := NewProducer(ProducerConfig{Brokers: e.Brokers()})
	if err != nil {
		tb.Fatal(err)
	}
	defer p.Close()
	msgs := make([]Message, n)
	for i := range n {
		k := fmt.Sprintf("session-%02d", i%keys)
		msgs[i] = Message{Topic: topic, Key: []byte(k), Value: fmt.Appendf(nil, "%s/%d", k, next[k])}
		next[k]++
	}
	if err := p.Produce(context.Background(), msgs...); err != nil {
		tb.Fatalf("produce inputs: %v", err)
	}
}

// counter is the test Processor: it counts records per key (its state),
// emits "<input value>|<count>" to the output and the count to the state
// topic. A lost or doubled state or input shows up as a wrong count.
type counter struct {
	out, state string
	counts     map[string]int
	hook       func(ctx context.Context, r *Record) error // called before each record, may fail
	restored   int
}

func (c *counter) Restore(k, v []byte) error {
	n, err := strconv.Atoi(string(v))
	if err != nil {
		return err
	}
	c.counts[string(k)] = n
	c.restored++
	return nil
}

func (c *counter) Process(ctx context.Context, batch []*Record, emit func(Output)) error {
	for _, r := range batch {
		if c.hook != nil {
			if err := c.hook(ctx, r); err != nil {
				return err
			}
		}
		k := string(r.Key)
		c.counts[k]++
		emit(Output{Topic: c.out, Partition: -1, Key: r.Key, Value: fmt.Appendf(nil, "%s|%d", r.Value, c.counts[k])})
		emit(Output{Topic: c.state, Partition: -1, Key: r.Key, Value: []byte(strconv.Itoa(c.counts[k]))})
	}
	return nil
}

func (tp topology) counters(hook func(ctx context.Context, r *Record) error) func(int32) Processor {
	return func(int32) Processor {
		return &counter{out: tp.output, state: tp.state, counts: map[string]int{}, hook: hook}
	}
}

// readAtLeast reads topic read_committed from the beginning until it holds
// n records, then keeps reading for settle to catch extra ones.
func readAtLeast(tb testing.TB, e *Embedded, topic string, n int, timeout, settle time.Duration) []*Record {
	tb.Helper()
	c, err := NewConsumer(ConsumerConfig{Brokers: e.Brokers(), Topics: []string{topic}})
	if err != nil {
		tb.Fatal(err)
	}
	defer c.Close()
	var out []*Record
	deadline := time.Now().Add(timeout)
	for len(out) < n {
		if time.Now().After(deadline) {
			tb.Fatalf("read %s: %d of %d records after %v", topic, len(out), n, timeout)
		}
		ctx, cancel := context.WithDeadline(context.Background(), deadline)
		recs, err := c.Poll(ctx)
		cancel()
		if err != nil && ctx.Err() == nil {
			tb.Fatalf("read %s: %v", topic, err)
		}
		out = append(out, recs...)
	}
	ctx, cancel := context.WithTimeout(context.Background(), settle)
	defer cancel()
	for ctx.Err() == nil {
		recs, _ := c.Poll(ctx)
		out = append(out, recs...)
	}
	return out
}

// checkExactlyOnce asserts that outputs are every input exactly once: per
// key, values "<key>/<i>|<i+1>" for i = 0..want[key]-1 in order, on the
// partition of the key.
func checkExactlyOnce(tb testing.TB, outputs []*Record, want map[string]int, partitions int32) {
	tb.Helper()
	slices.SortStableFunc(outputs, func(a, b *Record) int {
		if a.Partition != b.Partition {
			return int(a.Partition - b.Partition)
		}
		return int(a.Offset - b.Offset)
	})
	got := map[string]int{}
	total := 0
	for _, r := range outputs {
		k := string(r.Key)
		if p := Partition(r.Key, partitions); p != r.Partition {
			tb.Fatalf("key %s on partition %d, want %d", k, r.Partition, p)
		}
		exp := fmt.Sprintf("%s/%d|%d", k, got[k], got[k]+1)
		if string(r.Value) != exp {
			tb.Fatalf("key %s output #%d = %q, want %q (duplicate, loss or reorder)", k, got[k], r.Value, exp)
		}
		got[k]++
		total++
	}
	for k, n := range want {
		if got[k] != n {
			tb.Fatalf("key %s: %d outputs, want %d", k, got[k], n)
		}
	}
	if len(got) != len(want) {
		tb.Fatalf("outputs for %d keys, want %d", len(got), len(want))
	}
}

func sum(m map[string]int) int {
	n := 0
	for _, v := range m {
		n += v
	}
	return n
}

// runAsync runs t in a goroutine and returns a function that cancels it and
// returns Run's result.
func runAsync(tb testing.TB, t *Transactor) (stop func() error) {
	tb.Helper()
	ctx, cancel := context.WithCancel(context.Background())
	ch := make(chan error, 1)
	go func() { ch <- t.Run(ctx) }()
	var res error
	var got bool
	stop = func() error {
		cancel()
		if !got {
			res, got = <-ch, true
		}
		return res
	}
	tb.Cleanup(func() { _ = stop() })
	return stop
}

func waitFor(tb testing.TB, what string, timeout time.Duration, cond func() bool) {
	tb.Helper()
	deadline := time.Now().Add(timeout)
	for !cond() {
		if time.Now().After(deadline) {
			tb.Fatalf("timed out after %v waiting for %s", timeout, what)
		}
		time.Sleep(10 * time.Millisecond)
	}
}

// metricValue reads a counter or gauge.
func metricValue(c prometheus.Metric) float64 {
	var m dto.Metric
	if err := c.Write(&m); err != nil {
		panic(err)
	}
	switch {
	case m.Counter != nil:
		return m.Counter.GetValue()
	case m.Gauge != nil:
		return m.Gauge.GetValue()
	}
	return 0
}
