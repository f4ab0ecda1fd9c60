package daemon

import (
	"context"
	"fmt"
	"io"
	"log/slog"
	"math/rand/v2"
	"os"
	"path/filepath"
	"slices"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"aegis.dev/aegis/internal/pipeline"
	"aegis.dev/aegis/internal/stream"
)

// The pipeline benchmarks run the broker (embedded, or real Kafka when
// AEGIS_TEST_KAFKA is set), both stages, the publisher and the readers in
// this one process on this machine, and print figures side by side with the
// raw produce → consume floor on the same broker:
//
//	go test -run '^$' -bench Pipeline -benchtime 100000x ./internal/daemon
//	AEGIS_TEST_KAFKA=127.0.0.1:19092 go test -run '^$' -bench Pipeline -benchtime 100000x ./internal/daemon

const benchSessions = 1000

type benchTarget struct {
	name    string
	brokers []string // nil: embedded
}

func benchTargets() []benchTarget {
	t := []benchTarget{{name: "kfake"}}
	if addr := os.Getenv("AEGIS_TEST_KAFKA"); addr != "" {
		t = append(t, benchTarget{name: "kafka", brokers: []string{addr}})
	}
	return t
}

// benchDaemon starts a daemon on fresh topics and returns its brokers and
// topics.
func benchDaemon(b *testing.B, target benchTarget) ([]string, pipeline.Topics) {
	cfg := Defaults()
	cfg.DataDir = b.TempDir()
	cfg.KafkaAddr, cfg.HTTPAddr = "127.0.0.1:0", "127.0.0.1:0"
	cfg.Brokers = target.brokers
	cfg.TopicPrefix = fmt.Sprintf("bench-%d-%d.", time.Now().UnixNano(), rand.IntN(1e6))
	cfg.Instance = "bench"
	cfg.Manifests = "testdata/manifests"
	// A decider on external brokers checks approval grants with the
	// gateways' secret.
	cfg.Ingest.ApprovalSecretFile = filepath.Join(cfg.DataDir, "approval.secret")
	if err := os.WriteFile(cfg.Ingest.ApprovalSecretFile, []byte("bench-approval-secret-0123456789abcdef"), 0o600); err != nil {
		b.Fatal(err)
	}
	if err := cfg.Validate(); err != nil {
		b.Fatal(err)
	}
	if target.brokers != nil {
		dropTopicsOnCleanup(b, target.brokers, cfg.TopicPrefix)
	}
	d := New(cfg, slog.New(slog.NewTextHandler(io.Discard, nil)))
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- d.Run(ctx) }()
	b.Cleanup(func() { cancel(); <-done })
	if d.Brokers() == nil {
		b.Fatalf("daemon: %v", <-done)
	}
	return d.Brokers(), pipeline.NewTopics(cfg.TopicPrefix)
}

// benchEvent returns event i of the workload: sessions round-robin, one in
// four events a proposal.
func benchEvent(i int, seqs []uint64) (key string, value []byte, proposal bool) {
	s := i % benchSessions
	seqs[s]++
	seq := seqs[s]
	sid := fmt.Sprintf("sess-%04d", s)
	if seq%4 == 1 {
		return "acme/" + sid, fmt.Appendf(nil, `{"tenant_id":"acme","session_id":%q,"seq":%d,"ts_unix_ms":%d,"event_type":"TOOL_CALL_PROPOSED","payload":{"tool_name":"search","call_id":"c%d","args":{"q":"item %d","limit":10}}}`, sid, seq, 1767225600000+int64(seq), seq, seq), true
	}
	return "acme/" + sid, fmt.Appendf(nil, `{"tenant_id":"acme","session_id":%q,"seq":%d,"ts_unix_ms":%d,"event_type":"TOOL_RESULT","payload":{"tool_name":"search","call_id":"c%d","is_error":false,"output_bytes":2048,"sanitizer_key":"k"}}`, sid, seq, 1767225600000+int64(seq), seq), false
}

// drain reads topic until n records arrived.
func drain(ctx context.Context, b *testing.B, brokers []string, topic string, n int, each func(*stream.Record)) {
	c, err := stream.NewConsumer(stream.ConsumerConfig{Brokers: brokers, Topics: []string{topic}})
	if err != nil {
		b.Error(err)
		return
	}
	defer c.Close()
	for got := 0; got < n; {
		recs, err := c.Poll(ctx)
		if err != nil {
			if ctx.Err() == nil {
				b.Error(err)
			}
			return
		}
		for _, r := range recs {
			if each != nil {
				each(r)
			}
		}
		got += len(recs)
	}
}

// BenchmarkPipelineThroughput publishes b.N events as fast as the producer
// takes them and measures publish → sealed throughput, beside the raw
// produce → consume floor on the same broker.
func BenchmarkPipelineThroughput(b *testing.B) {
	for _, target := range benchTargets() {
		b.Run(target.name+"/floor", func(b *testing.B) {
			brokers, topics := benchDaemon(b, target)
			benchFloor(b, brokers, topics.Events+"floor")
		})
		b.Run(target.name+"/sealed", func(b *testing.B) {
			brokers, topics := benchDaemon(b, target)
			p, err := stream.NewProducer(stream.ProducerConfig{Brokers: brokers, Linger: 5 * time.Millisecond, MaxBufferedRecords: 100000})
			if err != nil {
				b.Fatal(err)
			}
			defer p.Close()
			ctx, cancel := context.WithTimeout(context.Background(), 10*time.Minute)
			defer cancel()
			seqs := make([]uint64, benchSessions)
			b.ResetTimer()
			start := time.Now()
			var wg sync.WaitGroup
			wg.Add(1)
			go func() { defer wg.Done(); drain(ctx, b, brokers, topics.Sealed, b.N, nil) }()
			var failed atomic.Int64
			for i := 0; i < b.N; i++ {
				key, v, _ := benchEvent(i, seqs)
				p.ProduceAsync(ctx, stream.Message{Topic: topics.Events, Key: []byte(key), Value: v}, func(_ *stream.Record, err error) {
					if err != nil {
						failed.Add(1)
					}
				})
			}
			if err := p.Flush(ctx); err != nil {
				b.Fatal(err)
			}
			wg.Wait()
			el := time.Since(start)
			b.StopTimer()
			if failed.Load() > 0 {
				b.Fatalf("%d publishes failed", failed.Load())
			}
			b.ReportMetric(float64(b.N)/el.Seconds(), "events/s")
		})
	}
}

func benchFloor(b *testing.B, brokers []string, topic string) {
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Minute)
	defer cancel()
	if err := stream.EnsureTopics(ctx, brokers, []stream.TopicSpec{{Name: topic, Partitions: pipeline.DefaultPartitions}}); err != nil {
		b.Fatal(err)
	}
	p, err := stream.NewProducer(stream.ProducerConfig{Brokers: brokers, Linger: 5 * time.Millisecond, MaxBufferedRecords: 100000})
	if err != nil {
		b.Fatal(err)
	}
	defer p.Close()
	// Warm up: leaders elected, metadata cached, connections open.
	if err := p.Produce(ctx, stream.Message{Topic: topic, Key: []byte("warm-up"), Value: []byte("{}")}); err != nil {
		b.Fatal(err)
	}
	seqs := make([]uint64, benchSessions)
	b.ResetTimer()
	start := time.Now()
	var wg sync.WaitGroup
	wg.Add(1)
	go func() { defer wg.Done(); drain(ctx, b, brokers, topic, b.N+1, nil) }()
	for i := 0; i < b.N; i++ {
		key, v, _ := benchEvent(i, seqs)
		p.ProduceAsync(ctx, stream.Message{Topic: topic, Key: []byte(key), Value: v}, nil)
	}
	if err := p.Flush(ctx); err != nil {
		b.Fatal(err)
	}
	wg.Wait()
	b.ReportMetric(float64(b.N)/time.Since(start).Seconds(), "events/s")
}

// BenchmarkPipelineDecisionLatency publishes b.N events at a fixed rate
// (5,000 events/s, open loop: the schedule does not wait for the pipeline)
// and reports percentiles of proposal publish → decision reply, measured
// from the scheduled send time so that stalls are not hidden.
func BenchmarkPipelineDecisionLatency(b *testing.B) {
	const rate = 5000
	for _, target := range benchTargets() {
		b.Run(target.name, func(b *testing.B) {
			brokers, topics := benchDaemon(b, target)
			p, err := stream.NewProducer(stream.ProducerConfig{Brokers: brokers, MaxBufferedRecords: 100000})
			if err != nil {
				b.Fatal(err)
			}
			defer p.Close()
			ctx, cancel := context.WithTimeout(context.Background(), 10*time.Minute)
			defer cancel()
			seqs := make([]uint64, benchSessions)
			var sent sync.Map // "key/seq" -> scheduled time
			var mu sync.Mutex
			var lat []time.Duration
			proposals := 0
			// Count proposals of the workload first (every 4th seq of a session).
			tmp := make([]uint64, benchSessions)
			for i := 0; i < b.N; i++ {
				if _, _, prop := benchEvent(i, tmp); prop {
					proposals++
				}
			}
			var wg sync.WaitGroup
			wg.Add(1)
			b.ResetTimer()
			go func() {
				defer wg.Done()
				drain(ctx, b, brokers, topics.Decisions, proposals, func(r *stream.Record) {
					now := time.Now()
					var seq uint64
					// Value starts with {"tenant_id":…,"session_id":…,"seq":N: parse cheaply.
					if _, err := fmt.Sscanf(string(r.Value[findSeq(r.Value):]), `%d`, &seq); err != nil {
						return
					}
					if t0, ok := sent.Load(fmt.Sprintf("%s/%d", r.Key, seq)); ok {
						mu.Lock()
						lat = append(lat, now.Sub(t0.(time.Time)))
						mu.Unlock()
					}
				})
			}()
			start := time.Now()
			interval := time.Second / rate
			for i := 0; i < b.N; i++ {
				at := start.Add(time.Duration(i) * interval)
				if d := time.Until(at); d > 0 {
					time.Sleep(d)
				}
				key, v, prop := benchEvent(i, seqs)
				if prop {
					sent.Store(fmt.Sprintf("%s/%d", key, seqs[i%benchSessions]), at)
				}
				p.ProduceAsync(ctx, stream.Message{Topic: topics.Events, Key: []byte(key), Value: v}, nil)
			}
			if err := p.Flush(ctx); err != nil {
				b.Fatal(err)
			}
			wg.Wait()
			b.StopTimer()
			if len(lat) == 0 {
				b.Fatal("no decisions measured")
			}
			slices.Sort(lat)
			pct := func(q float64) float64 { return float64(lat[int(q*float64(len(lat)-1))].Microseconds()) / 1000 }
			b.ReportMetric(pct(0.50), "p50_ms")
			b.ReportMetric(pct(0.99), "p99_ms")
			b.ReportMetric(pct(1.0), "max_ms")
			b.ReportMetric(float64(len(lat)), "decisions")
		})
	}
}

// findSeq returns the index just after `"seq":` in a decision reply.
func findSeq(v []byte) int {
	const tag = `"seq":`
	for i := 0; i+len(tag) <= len(v); i++ {
		if string(v[i:i+len(tag)]) == tag {
			return i + len(tag)
		}
	}
	return len(v)
}
