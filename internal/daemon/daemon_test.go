package daemon

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net"
	"net/http"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"aegis.dev/aegis/internal/pipeline"
	"aegis.dev/aegis/internal/stream"
	"aegis.dev/aegis/schemas/chain"
	"aegis.dev/aegis/schemas/envelope"
)

// startDaemon runs a daemon with cfg until the test ends.
func startDaemon(tb testing.TB, cfg Config) *Daemon {
	tb.Helper()
	if err := cfg.Validate(); err != nil {
		tb.Fatal(err)
	}
	d := New(cfg, slog.New(slog.NewTextHandler(io.Discard, nil)))
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- d.Run(ctx) }()
	tb.Cleanup(func() {
		cancel()
		if err := <-done; err != nil {
			tb.Errorf("daemon: %v", err)
		}
	})
	if d.Brokers() == nil {
		cancel()
		tb.Fatalf("daemon did not start: %v", <-done)
	}
	return d
}

func embeddedConfig(tb testing.TB) Config {
	cfg := Defaults()
	cfg.DataDir = tb.TempDir()
	cfg.KafkaAddr = "127.0.0.1:0"
	cfg.HTTPAddr = "127.0.0.1:0"
	cfg.Partitions = 3
	cfg.Instance = "test"
	cfg.Manifests = "testdata/manifests"
	return cfg
}

func event(tenant, session string, seq uint64, typ envelope.Type, payload string) []byte {
	return []byte(fmt.Sprintf(`{"tenant_id":%q,"session_id":%q,"seq":%d,"ts_unix_ms":%d,"event_type":%q,"payload":%s}`,
		tenant, session, seq, 1767225600000+int64(seq)*10, typ, payload))
}

func msg(topic, key string, value []byte) stream.Message {
	return stream.Message{Topic: topic, Key: []byte(key), Value: value}
}

// collect reads topic from the beginning until want records arrived (or
// the deadline), then a little longer to catch extras.
func collect(tb testing.TB, brokers []string, topic string, want int) []*stream.Record {
	tb.Helper()
	c, err := stream.NewConsumer(stream.ConsumerConfig{Brokers: brokers, Topics: []string{topic}})
	if err != nil {
		tb.Fatal(err)
	}
	defer c.Close()
	var out []*stream.Record
	deadline := time.Now().Add(60 * time.Second)
	settle := time.Time{}
	for time.Now().Before(deadline) {
		if len(out) >= want {
			if settle.IsZero() {
				settle = time.Now().Add(time.Second)
			} else if time.Now().After(settle) {
				break
			}
		}
		ctx, cancel := context.WithTimeout(context.Background(), 300*time.Millisecond)
		recs, err := c.Poll(ctx)
		cancel()
		if err != nil && ctx.Err() == nil {
			tb.Fatal(err)
		}
		out = append(out, recs...)
	}
	if len(out) < want {
		tb.Fatalf("%s: got %d records, want %d", topic, len(out), want)
	}
	return out
}

func TestPipelineEmbedded(t *testing.T) {
	d := startDaemon(t, embeddedConfig(t))
	brokers := d.Brokers()
	topics := pipeline.NewTopics(pipeline.DefaultTopicPrefix)
	p, err := stream.NewProducer(stream.ProducerConfig{Brokers: brokers, MaxRecordBytes: 4 << 20})
	if err != nil {
		t.Fatal(err)
	}
	defer p.Close()
	ctx := context.Background()

	// 20 sessions × 10 events: model call, proposals and results.
	const sessions, perSession = 20, 10
	var msgs []stream.Message
	for s := 0; s < sessions; s++ {
		sid := fmt.Sprintf("s%02d", s)
		for seq := uint64(1); seq <= perSession; seq++ {
			var v []byte
			switch seq % 3 {
			case 0:
				v = event("acme", sid, seq, envelope.ModelCallStarted, `{"model":"m"}`)
			case 1:
				v = event("acme", sid, seq, envelope.ToolCallProposed, fmt.Sprintf(`{"tool_name":"search","call_id":"c%d","args":{"q":%d}}`, seq, seq))
			default:
				v = event("acme", sid, seq, envelope.ToolResult, fmt.Sprintf(`{"tool_name":"search","call_id":"c%d"}`, seq-1))
			}
			msgs = append(msgs, msg(topics.Events, "acme/"+sid, v))
		}
	}
	if err := p.Produce(ctx, msgs...); err != nil {
		t.Fatal(err)
	}
	// Bad input and sequence problems, each with its expected reason.
	bad := []struct {
		m      stream.Message
		reason string
	}{
		{msg(topics.Events, "acme/x1", []byte(`not json`)), envelope.CodeInvalidJSON},
		{msg(topics.Events, "acme/x2", event("acme", "x2", 1, "NOPE", `{}`)), envelope.CodeUnknownEventType},
		{msg(topics.Events, "acme/x3", []byte(`{"session_id":"x3","seq":1,"ts_unix_ms":1,"event_type":"TERMINATION"}`)), envelope.CodeMissingField},
		{msg(topics.Events, "acme/s00", event("acme", "other", 1, envelope.Termination, `{}`)), pipeline.ReasonKeyMismatch},
		{msg(topics.Events, "acme/s01", event("acme", "s01", 5, envelope.Termination, `{"reason":"conflict"}`)), pipeline.ReasonSeqConflict},
		{msg(topics.Events, "acme/s02", event("acme", "s02", 99, envelope.Termination, `{}`)), pipeline.ReasonSeqGap},
		{msg(topics.Events, "acme/x4", []byte(`{"tenant_id":"acme","session_id":"x4","seq":1,"ts_unix_ms":1,"event_type":"TERMINATION","payload":{"blob":"`+strings.Repeat("x", 1200<<10)+`"}}`)), envelope.CodeTooLarge},
	}
	wrong := stream.Message{Topic: topics.Events, Key: []byte("acme/x5"), Value: event("acme", "x5", 1, envelope.Termination, `{}`), Pin: true}
	wrong.Partition = (stream.Partition(wrong.Key, 3) + 1) % 3
	bad = append(bad, struct {
		m      stream.Message
		reason string
	}{wrong, pipeline.ReasonWrongPartition})
	for _, b := range bad {
		if err := p.Produce(ctx, b.m); err != nil {
			t.Fatal(err)
		}
	}
	// Exact retries of accepted events: dropped, not sealed twice.
	if err := p.Produce(ctx, msgs[0], msgs[5], msgs[len(msgs)-1]); err != nil {
		t.Fatal(err)
	}

	sealed := collect(t, brokers, topics.Sealed, sessions*perSession)
	if len(sealed) != sessions*perSession {
		t.Fatalf("sealed %d records, want %d", len(sealed), sessions*perSession)
	}
	v := chain.NewVerifier()
	proposals := 0
	for _, r := range sealed {
		ev, err := envelope.Decoder{Sealed: true}.Decode(r.Value)
		if err != nil {
			t.Fatal(err)
		}
		if string(r.Key) != string(ev.Key()) || r.Partition != stream.Partition(r.Key, 3) {
			t.Fatalf("sealed record %s on partition %d with key %s", ev.Key(), r.Partition, r.Key)
		}
		if f := v.Add(ev); f != nil {
			t.Fatalf("chain: %v", f)
		}
		if ev.Type == envelope.ToolCallProposed {
			proposals++
			if ev.Decision == nil || ev.Decision.Outcome != envelope.Allow && ev.Decision.Reason != envelope.ReasonBudgetExceeded && ev.Decision.Reason != envelope.ReasonLoopDetected {
				t.Fatalf("proposal %s/%d decision %+v", ev.SessionID, ev.Seq, ev.Decision)
			}
		}
	}
	if len(v.Heads()) != sessions {
		t.Fatalf("%d sessions sealed", len(v.Heads()))
	}
	replies := collect(t, brokers, topics.Decisions, proposals)
	if len(replies) != proposals {
		t.Fatalf("%d decision replies for %d proposals", len(replies), proposals)
	}

	rejected := collect(t, brokers, topics.Rejected, len(bad))
	got := map[string]int{}
	for _, r := range rejected {
		var rej pipeline.Rejection
		if err := json.Unmarshal(r.Value, &rej); err != nil {
			t.Fatal(err)
		}
		if rej.Stage != "decider" || rej.Original == "" && rej.OriginalBase64 == nil {
			t.Fatalf("rejection %+v", rej)
		}
		got[rej.Reason]++
	}
	for _, b := range bad {
		if got[b.reason] != 1 {
			t.Errorf("reason %s: %d rejections (all: %v)", b.reason, got[b.reason], got)
		}
	}
	if len(rejected) != len(bad) {
		t.Errorf("%d rejections, want %d: %v", len(rejected), len(bad), got)
	}

	// Heads on the chain-heads topic match the sealed chains.
	heads := collect(t, brokers, topics.ChainHeads, 1)
	latest := map[string]chain.Head{}
	for _, r := range heads {
		var h chain.Head
		if err := json.Unmarshal(r.Value, &h); err != nil {
			t.Fatal(err)
		}
		latest[string(r.Key)] = h
	}
	var want []chain.Head
	for _, h := range latest {
		want = append(want, h)
	}
	if fs := v.CheckHeads(want); len(fs) != 0 || len(want) != sessions {
		t.Fatalf("heads: %d, failures %v", len(want), fs)
	}

	// Ready, metrics.
	// The duplicates produce no output: poll until the decider counted them.
	waitReady(t, d)
	wantMetrics := []string{`aegis_pipeline_rejected_total{reason="SEQ_GAP",stage="decider"} 1`, `aegis_pipeline_duplicates_total{stage="decider"} 3`, "aegis_stream_transactions_total"}
	for deadline := time.Now().Add(30 * time.Second); ; time.Sleep(100 * time.Millisecond) {
		body := httpGet(t, "http://"+d.HTTPAddr()+"/metrics")
		var missing []string
		for _, m := range wantMetrics {
			if !strings.Contains(body, m) {
				missing = append(missing, m)
			}
		}
		if len(missing) == 0 {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("metrics lack %v", missing)
		}
	}
}

func waitReady(tb testing.TB, d *Daemon) {
	tb.Helper()
	deadline := time.Now().Add(30 * time.Second)
	for time.Now().Before(deadline) {
		resp, err := http.Get("http://" + d.HTTPAddr() + "/readyz")
		if err == nil {
			resp.Body.Close()
			if resp.StatusCode == http.StatusOK {
				return
			}
		}
		time.Sleep(100 * time.Millisecond)
	}
	tb.Fatal("daemon never became ready")
}

func httpGet(tb testing.TB, url string) string {
	tb.Helper()
	resp, err := http.Get(url)
	if err != nil {
		tb.Fatal(err)
	}
	defer resp.Body.Close()
	b, _ := io.ReadAll(resp.Body)
	return string(b)
}

// TestEmbeddedSurvivesRestart guards the embedded mode's persistence: the
// broker's data dir keeps topics, records, offsets and stage state, so
// sessions continue their chains after aegisd restarts.
func TestEmbeddedSurvivesRestart(t *testing.T) {
	cfg := embeddedConfig(t)
	topics := pipeline.NewTopics(pipeline.DefaultTopicPrefix)
	publish := func(brokers []string, from, to uint64) {
		p, err := stream.NewProducer(stream.ProducerConfig{Brokers: brokers})
		if err != nil {
			t.Fatal(err)
		}
		defer p.Close()
		var msgs []stream.Message
		for seq := from; seq <= to; seq++ {
			for _, sid := range []string{"a", "b"} {
				msgs = append(msgs, msg(topics.Events, "acme/"+sid, event("acme", sid, seq, envelope.ToolCallProposed, fmt.Sprintf(`{"tool_name":"search","call_id":"c%d","args":{"q":%d}}`, seq, seq))))
			}
		}
		if err := p.Produce(context.Background(), msgs...); err != nil {
			t.Fatal(err)
		}
	}
	runOnce := func(from, to uint64, wantSealed int) []*stream.Record {
		d := New(cfg, slog.New(slog.NewTextHandler(io.Discard, nil)))
		ctx, cancel := context.WithCancel(context.Background())
		done := make(chan error, 1)
		go func() { done <- d.Run(ctx) }()
		defer func() {
			cancel()
			if err := <-done; err != nil {
				t.Errorf("daemon: %v", err)
			}
		}()
		if d.Brokers() == nil {
			t.Fatalf("daemon did not start")
		}
		publish(d.Brokers(), from, to)
		return collect(t, d.Brokers(), topics.Sealed, wantSealed)
	}
	first := runOnce(1, 3, 6)
	if len(first) != 6 {
		t.Fatalf("first run sealed %d", len(first))
	}
	all := runOnce(4, 6, 12)
	if len(all) != 12 {
		t.Fatalf("after restart the sealed topic holds %d records, want 12", len(all))
	}
	v := chain.NewVerifier()
	for _, r := range all {
		ev, err := envelope.Decoder{Sealed: true}.Decode(r.Value)
		if err != nil {
			t.Fatal(err)
		}
		if f := v.Add(ev); f != nil {
			t.Fatalf("chain broken across the restart: %v", f)
		}
		// The decider's state survived: with max_tool_calls 4, the 5th
		// and 6th proposals of each session exceed the budget.
		if want := ev.Seq > 4; (ev.Decision.Reason == envelope.ReasonBudgetExceeded) != want {
			t.Fatalf("%s seq %d: %s", ev.SessionID, ev.Seq, ev.Decision.Reason)
		}
	}
}

// TestShutdownWhileTheEmbeddedBrokerStarts: a shutdown that arrives while
// the embedded broker starts (here, before: the data dir says the last run
// crashed, so the start recovers it first) ends Run cleanly, without
// running anything, and leaves the crash marker for the next start.
func TestShutdownWhileTheEmbeddedBrokerStarts(t *testing.T) {
	cfg := embeddedConfig(t)
	marker := filepath.Join(cfg.DataDir, "kafka", "aegis.running")
	if err := os.MkdirAll(filepath.Dir(marker), 0o755); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(marker, nil, 0o644); err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	cancel()
	var logs bytes.Buffer
	d := New(cfg, slog.New(slog.NewTextHandler(&logs, nil)))
	if err := d.Run(ctx); err != nil {
		t.Fatalf("Run after a shutdown during the start = %v, want a clean stop\n%s", err, logs.String())
	}
	if !strings.Contains(logs.String(), "shutdown requested while the embedded broker started") {
		t.Errorf("the log does not say the start was stopped:\n%s", logs.String())
	}
	if _, err := os.Stat(marker); err != nil {
		t.Errorf("crash marker after the interrupted start: %v, want it kept", err)
	}
}

// abandonedAtShutdown runs a stage and, once it has stopped, answers as
// stream.Transact does when its session did not stop within its bound.
type abandonedAtShutdown struct{ stageRunner }

func (a abandonedAtShutdown) Run(ctx context.Context) error {
	_ = a.stageRunner.Run(ctx)
	return fmt.Errorf("stream: the session did not stop within 70s of the shutdown: %w", stream.ErrStalled)
}

// TestShutdownWithAnAbandonedStageFails checks the daemon's side of a
// stage abandoned at shutdown: every other stage and the API still stop,
// and Run returns the stall, so aegisd exits non-zero and its supervisor
// knows the stop was not clean.
func TestShutdownWithAnAbandonedStageFails(t *testing.T) {
	cfg := embeddedConfig(t)
	cfg.Dev = true
	d := New(cfg, slog.New(slog.NewTextHandler(io.Discard, nil)))
	var wrapped []string
	d.wrapStage = func(name string, s stageRunner) stageRunner {
		wrapped = append(wrapped, name)
		if name == TargetSealer {
			return abandonedAtShutdown{s}
		}
		return s
	}
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	done := make(chan error, 1)
	go func() { done <- d.Run(ctx) }()
	if d.Brokers() == nil {
		t.Fatalf("daemon did not start: %v", <-done)
	}
	if !strings.Contains(strings.Join(wrapped, ","), TargetSealer) {
		t.Fatalf("stages %v: no sealer", wrapped)
	}
	for deadline := time.Now().Add(30 * time.Second); !d.Ready(); time.Sleep(20 * time.Millisecond) {
		if time.Now().After(deadline) {
			t.Fatal("not ready within 30s")
		}
	}
	cancel()
	select {
	case err := <-done:
		if !errors.Is(err, stream.ErrStalled) {
			t.Fatalf("Run = %v, want the stall", err)
		}
	case <-time.After(60 * time.Second):
		t.Fatal("Run did not return after the shutdown")
	}
}

// TestUnwritableSpillDirFailsAtStart: a spill directory where no file can
// be created must stop aegisd at start, not at a stage's first eviction,
// which comes only once a fleet outgrows --state-sessions (possibly hours
// later, at the peak) and then stops the stage.
func TestUnwritableSpillDirFailsAtStart(t *testing.T) {
	cfg := embeddedConfig(t)
	// Root may write anywhere on disk, but nobody creates a regular file
	// at the root of procfs, which every Linux host mounts at /proc.
	if err := os.Symlink("/proc", cfg.SpillDir()); err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	err := New(cfg, slog.New(slog.NewTextHandler(io.Discard, nil))).Run(ctx)
	if err == nil || !strings.Contains(err.Error(), "spill directory") || !strings.Contains(err.Error(), "create spill file") {
		t.Fatalf("Run with an unwritable spill directory: %v; want a spill directory error at start", err)
	}
}

// TestNotReadyBeforeJoining: /readyz stays 503 while a stage cannot join
// its consumer group (here the broker refuses the session timeout, as a
// group ACL missing on a cluster would): the stage owns no partition and
// processes nothing. Each stage, checked alone, must not say ready.
func TestNotReadyBeforeJoining(t *testing.T) {
	for _, target := range Stages {
		t.Run(target, func(t *testing.T) {
			cfg := embeddedConfig(t)
			cfg.Target = target
			cfg.SessionTimeout = 2 * time.Second // below the broker's group.min.session.timeout.ms (6s)
			d := New(cfg, slog.New(slog.NewTextHandler(io.Discard, nil)))
			ctx, cancel := context.WithCancel(context.Background())
			done := make(chan error, 1)
			go func() { done <- d.Run(ctx) }()
			defer func() {
				cancel()
				<-done
			}()
			if d.Brokers() == nil {
				t.Fatalf("daemon did not start: %v", <-done)
			}
			for end := time.Now().Add(4 * time.Second); time.Now().Before(end); time.Sleep(50 * time.Millisecond) {
				if d.Ready() {
					t.Fatalf("%s ready without having joined its group", target)
				}
			}
		})
	}
}

// TestShutdownWhileTheStoreIsRetried: a SIGTERM while the projector waits
// for its audit store at start (a ClickHouse server down) stops aegisd
// then, cleanly, instead of after the minute of retries: a supervisor
// that waits less kills it.
func TestShutdownWhileTheStoreIsRetried(t *testing.T) {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	closed := ln.Addr().String() // nothing listens there once closed
	ln.Close()
	cfg := embeddedConfig(t)
	cfg.Target = TargetProjector
	cfg.Store = "clickhouse://" + closed + "/audit"
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- New(cfg, slog.New(slog.NewTextHandler(io.Discard, nil))).Run(ctx) }()
	time.Sleep(time.Second)
	cancel()
	select {
	case err := <-done:
		if err != nil {
			t.Fatalf("Run = %v, want nil after a shutdown", err)
		}
	case <-time.After(10 * time.Second):
		t.Fatal("Run still retrying the store 10s after the shutdown")
	}
}
