package projector_test

import (
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"syscall"
	"testing"
	"time"

	"aegis.dev/aegis/internal/ctl"
	"aegis.dev/aegis/internal/daemon"
	"aegis.dev/aegis/internal/stream"
	"aegis.dev/aegis/projector/chstore"
	"aegis.dev/aegis/projector/storetest"
	"aegis.dev/aegis/schemas/envelope"
)

// child is `aegisd --target projector` as a subprocess.
type child struct {
	cmd *exec.Cmd
	out *bytes.Buffer
}

func startChild(tb testing.TB, args ...string) *child {
	tb.Helper()
	cmd := exec.Command(os.Args[0], args...)
	cmd.Env = append(os.Environ(), childEnv+"=1")
	var out bytes.Buffer
	cmd.Stdout, cmd.Stderr = &out, &out
	if err := cmd.Start(); err != nil {
		tb.Fatal(err)
	}
	c := &child{cmd: cmd, out: &out}
	tb.Cleanup(func() {
		if c.cmd.ProcessState == nil {
			_ = c.cmd.Process.Kill()
			_ = c.cmd.Wait()
		}
	})
	return c
}

// publish produces unsealed events for sessions [from, to) to the events
// topic, n events each.
func publish(tb testing.TB, k kafka, from, to, n int) {
	tb.Helper()
	p, err := stream.NewProducer(stream.ProducerConfig{Brokers: k.brokers, Linger: 5 * time.Millisecond})
	if err != nil {
		tb.Fatal(err)
	}
	defer p.Close()
	var msgs []stream.Message
	for s := from; s < to; s++ {
		for i := 1; i <= n; i++ {
			typ, payload := envelope.ModelCallStarted, `{"call_id":"m","model":"gpt-x"}`
			switch i % 5 {
			case 2:
				typ, payload = envelope.ToolCallProposed, fmt.Sprintf(`{"args":{"url":"https://api.example.com/%d"},"call_id":"c%d","tool_name":"web_fetch"}`, i, i)
			case 3:
				typ, payload = envelope.ToolResult, `{"call_id":"c","tool_name":"web_fetch","output_bytes":100}`
			}
			tenant, sess := fmt.Sprintf("t%d", s%7), fmt.Sprintf("s%06d", s)
			v := fmt.Sprintf(`{"tenant_id":%q,"session_id":%q,"seq":%d,"ts_unix_ms":%d,"event_type":%q,"payload":%s}`,
				tenant, sess, i, 1767225600000+int64(s)*60000+int64(i), typ, payload)
			msgs = append(msgs, stream.Message{Topic: k.topics.Events, Key: []byte(tenant + "/" + sess), Value: []byte(v)})
			if len(msgs) == 5000 {
				if err := p.Produce(context.Background(), msgs...); err != nil {
					tb.Fatal(err)
				}
				msgs = msgs[:0]
			}
		}
	}
	if err := p.Produce(context.Background(), msgs...); err != nil {
		tb.Fatal(err)
	}
}

// sealedHashes reads the sealed topic until it holds n records.
func sealedHashes(tb testing.TB, k kafka, n int) map[string]bool {
	tb.Helper()
	c, err := stream.NewConsumer(stream.ConsumerConfig{Brokers: k.brokers, Topics: []string{k.topics.Sealed}})
	if err != nil {
		tb.Fatal(err)
	}
	defer c.Close()
	ctx, cancel := context.WithTimeout(context.Background(), 3*time.Minute)
	defer cancel()
	out := map[string]bool{}
	records := 0
	for records < n {
		recs, err := c.Poll(ctx)
		if err != nil {
			tb.Fatalf("sealed topic: %d of %d records: %v", records, n, err)
		}
		for _, r := range recs {
			var v struct {
				Hash string `json:"hash"`
			}
			if err := json.Unmarshal(r.Value, &v); err != nil {
				tb.Fatal(err)
			}
			out[v.Hash] = true
			records++
		}
	}
	if records != n || len(out) != n {
		tb.Fatalf("sealed topic: %d records, %d distinct hashes, want %d", records, len(out), n)
	}
	return out
}

// TestIntegrationProjectorClickHouseExactlyOnce sends 100,000 events
// through decider and sealer and projects them into the real ClickHouse
// with `aegisd --target projector` in a subprocess that is SIGKILLed
// mid-stream and whose ClickHouse is restarted mid-stream. The audit table
// must end with exactly the sealed topic's records: the same count and the
// same set of hashes, and verify --store must pass.
func TestIntegrationProjectorClickHouseExactlyOnce(t *testing.T) {
	chURL := fmt.Sprintf("%s_proj_%d", storetest.ServiceAddr(t, "AEGIS_TEST_CLICKHOUSE"), time.Now().UnixNano())
	cfg, err := chstore.ParseURL(chURL)
	if err != nil {
		t.Fatal(err)
	}
	st, err := chstore.Open(context.Background(), cfg)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		if s, err := chstore.Open(context.Background(), cfg); err == nil {
			_ = s.DropDatabase(context.Background())
			_ = s.Close()
		}
	})
	defer st.Close()
	const sessions, perSession, total = 2000, 50, 100000

	k := startKafka(t, 3)
	dcfg := daemon.Defaults()
	dcfg.Target, dcfg.Brokers, dcfg.TopicPrefix, dcfg.Partitions = "decider,sealer", k.brokers, k.prefix, 3
	dcfg.DataDir, dcfg.HTTPAddr, dcfg.Instance, dcfg.LogLevel = t.TempDir(), "127.0.0.1:0", "it", "error"
	// A decider on external brokers checks approval grants with the
	// gateways' secret.
	dcfg.Ingest.ApprovalSecretFile = filepath.Join(dcfg.DataDir, "approval.secret")
	if err := os.WriteFile(dcfg.Ingest.ApprovalSecretFile, []byte("projector-it-approval-secret-0123456789"), 0o600); err != nil {
		t.Fatal(err)
	}
	if err := dcfg.Validate(); err != nil {
		t.Fatal(err)
	}
	dctx, dstop := context.WithCancel(context.Background())
	ddone := make(chan error, 1)
	go func() { ddone <- daemon.New(dcfg, discard()).Run(dctx) }()
	defer func() {
		dstop()
		if err := <-ddone; err != nil {
			t.Errorf("decider/sealer: %v", err)
		}
	}()

	args := []string{"--target", "projector", "--brokers", k.brokers[0], "--topic-prefix", k.prefix, "--partitions", "3",
		"--store", chURL, "--data-dir", t.TempDir(), "--http-addr", "127.0.0.1:0", "--instance", "proj", "--store-batch", "2000",
		"--log-level", "warn"}
	raw := func() int64 { // rows stored, copies included; -1 while ClickHouse is down
		_, rows, err := st.Query(context.Background(), "SELECT count(*) FROM audit_events")
		if err != nil {
			return -1
		}
		return rows[0][0].(int64)
	}
	start := time.Now()
	progress, stopProgress := context.WithCancel(context.Background())
	progressDone := make(chan struct{})
	defer func() { stopProgress(); <-progressDone }() // no Logf after the test
	go func() {
		defer close(progressDone)
		for progress.Err() == nil {
			select {
			case <-progress.Done():
			case <-time.After(5 * time.Second):
				t.Logf("%s: %d rows stored", time.Since(start).Round(time.Second), raw())
			}
		}
	}()
	publish(t, k, 0, sessions*2/5, perSession)
	a := startChild(t, args...)
	waitFor(t, "20,000 stored rows", 3*time.Minute, func() bool { return raw() >= 20000 })
	if err := a.cmd.Process.Signal(syscall.SIGKILL); err != nil {
		t.Fatal(err)
	}
	_ = a.cmd.Wait()
	t.Logf("projector SIGKILLed with %d rows stored after %s", raw(), time.Since(start).Round(time.Millisecond))

	// The partitions of the killed member move after the group session
	// timeout (45 s, the consumer's default).
	b := startChild(t, args...)
	waitFor(t, "the first 40,000 events", 3*time.Minute, func() bool { return raw() >= 40000 })
	// ClickHouse goes down mid-stream: the rest of the events arrive while
	// it is down, the projector holds them (backpressure) and retries.
	script := filepath.Join("..", "deploy", "clickhouse", "clickhouse.sh")
	clickhouse := func(cmd string) {
		if out, err := exec.Command(script, cmd).CombinedOutput(); err != nil {
			t.Fatalf("clickhouse.sh %s: %v: %s", cmd, err, out)
		}
	}
	clickhouse("stop")
	if raw() != -1 {
		t.Fatal("ClickHouse still answers after clickhouse.sh stop (a server this script did not start?)")
	}
	publish(t, k, sessions*2/5, sessions, perSession)
	time.Sleep(2 * time.Second)
	clickhouse("start")
	clickhouse("wait")
	t.Logf("ClickHouse restarted mid-stream after %s", time.Since(start).Round(time.Millisecond))
	final := func() int64 {
		_, rows, err := st.Query(context.Background(), "SELECT count(*) FROM audit_events FINAL")
		if err != nil {
			return -1
		}
		return rows[0][0].(int64)
	}
	defer func() {
		if t.Failed() {
			t.Logf("projector output:\n%s", b.out)
		}
	}()
	waitFor(t, "100,000 events in ClickHouse", 5*time.Minute, func() bool { return final() >= total })
	stopProgress()
	t.Logf("all %d events projected after %s (%d rows stored before merges)", total, time.Since(start).Round(time.Millisecond), raw())
	if err := b.cmd.Process.Signal(syscall.SIGTERM); err != nil {
		t.Fatal(err)
	}
	if err := b.cmd.Wait(); err != nil {
		t.Errorf("projector exit: %v\n%s", err, b.out)
	}

	want := sealedHashes(t, k, total)
	_, rows, err := st.Query(context.Background(), "SELECT hash FROM audit_events FINAL")
	if err != nil {
		t.Fatal(err)
	}
	if len(rows) != total {
		t.Errorf("ClickHouse holds %d events, the sealed topic %d", len(rows), total)
	}
	for _, r := range rows {
		h := r[0].(string)
		if !want[h] {
			t.Fatalf("stored hash %s is not on the sealed topic", h)
		}
		delete(want, h)
	}
	if len(want) != 0 {
		t.Errorf("%d sealed records missing from ClickHouse", len(want))
	}
	for q, n := range map[string]int64{
		"SELECT count(*) FROM session_snapshots FINAL WHERE last_seq = 50": sessions,
		"SELECT count(*) FROM chain_heads FINAL WHERE seq = 50":            sessions,
		"SELECT count(*) FROM decisions FINAL":                             sessions * 10,
	} {
		_, rows, err := st.Query(context.Background(), q)
		if err != nil || rows[0][0].(int64) != n {
			t.Errorf("%s = %v (%v), want %d", q, rows, err, n)
		}
	}
	var out, errOut bytes.Buffer
	if code := ctl.Main(context.Background(), ctl.IO{Stdout: &out, Stderr: &errOut}, []string{"verify", "--store", chURL}); code != ctl.ExitOK {
		t.Errorf("verify --store: exit %d: %s%s", code, out.String(), errOut.String())
	}
}
