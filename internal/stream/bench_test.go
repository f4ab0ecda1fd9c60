package stream

import (
	"context"
	"fmt"
	"testing"
	"time"
)

// passthrough emits every input record unchanged to one output topic, on
// the input's partition.
type passthrough struct{ out string }

func (passthrough) Restore(_, _ []byte) error { return nil }

func (p passthrough) Process(_ context.Context, batch []*Record, emit func(Output)) error {
	for _, r := range batch {
		emit(Output{Topic: p.out, Partition: -1, Key: r.Key, Value: r.Value})
	}
	return nil
}

// BenchmarkTransactHop measures records per second through one
// consume → produce transactional hop on the embedded broker, with 100 and
// 1,000 records per transaction, next to the raw produce → consume floor of
// the same broker. Each op is one 300-byte record; inputs are produced
// concurrently with processing, so the figure is a pipeline's throughput.
// Run with e.g. -benchtime=20000x.
func BenchmarkTransactHop(b *testing.B) {
	b.Run("floor=produce-consume", func(b *testing.B) {
		e := startBroker(b)
		if err := EnsureTopics(context.Background(), e.Brokers(), []TopicSpec{{Name: "floor", Partitions: 4}}); err != nil {
			b.Fatal(err)
		}
		c, err := NewConsumer(ConsumerConfig{Brokers: e.Brokers(), Topics: []string{"floor"}})
		if err != nil {
			b.Fatal(err)
		}
		defer c.Close()
		b.ResetTimer()
		start := time.Now()
		go produceBench(b, e, "floor", b.N)
		pollN(b, c, b.N)
		b.ReportMetric(float64(b.N)/time.Since(start).Seconds(), "records/s")
	})
	for _, batch := range []int{100, 1000} {
		b.Run(fmt.Sprintf("batch=%d", batch), func(b *testing.B) {
			e := startBroker(b)
			ctx := context.Background()
			if err := EnsureTopics(ctx, e.Brokers(), []TopicSpec{{Name: "hop.in", Partitions: 4}, {Name: "hop.out", Partitions: 4}}); err != nil {
				b.Fatal(err)
			}
			cfg := TransactConfig{
				Brokers: e.Brokers(), Group: "hop", TransactionalID: "hop", Input: "hop.in", Outputs: []string{"hop.out"},
				MaxBatch: batch, SessionTimeout: 6 * time.Second, HeartbeatInterval: 100 * time.Millisecond,
			}
			tr, err := NewTransactor(cfg, func(int32) Processor { return passthrough{out: "hop.out"} })
			if err != nil {
				b.Fatal(err)
			}
			stop := runAsync(b, tr)
			waitFor(b, "ready", 10*time.Second, tr.Ready)
			b.ResetTimer()
			start := time.Now()
			go produceBench(b, e, "hop.in", b.N)
			for metricValue(tr.m.produced) < float64(b.N) {
				time.Sleep(200 * time.Microsecond)
			}
			elapsed := time.Since(start)
			b.StopTimer()
			txns := metricValue(tr.m.committed)
			b.ReportMetric(float64(b.N)/elapsed.Seconds(), "records/s")
			b.ReportMetric(float64(b.N)/txns, "records/txn")
			if err := stop(); err != nil {
				b.Fatal(err)
			}
		})
	}
}

// produceBench writes n 300-byte records over 64 keys, asynchronously with
// a 5ms linger.
func produceBench(tb testing.TB, e *Embedded, topic string, n int) {
	p, err := NewProducer(ProducerConfig{Brokers: e.Brokers(), Linger: 5 * time.Millisecond})
	if err != nil {
		tb.Error(err)
		return
	}
	defer p.Close()
	value := make([]byte, 300)
	keys := make([][]byte, 64)
	for i := range keys {
		keys[i] = fmt.Appendf(nil, "tenant-1/session-%02d", i)
	}
	ctx := context.Background()
	for i := range n {
		p.ProduceAsync(ctx, Message{Topic: topic, Key: keys[i%len(keys)], Value: value}, nil)
	}
	if err := p.Flush(ctx); err != nil {
		tb.Error(err)
	}
}
