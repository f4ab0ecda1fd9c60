package loadtest

import (
	"bytes"
	"context"
	"fmt"
	"io"
	"log/slog"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"aegis.dev/aegis/internal/ctl"
	"aegis.dev/aegis/internal/daemon"
	"aegis.dev/aegis/internal/pipeline"
	"aegis.dev/aegis/internal/stream"
)

// TestMurmur2AgreesAcrossClients guards invariant 7: kafka-go's
// Murmur2Balancer (the publisher side) and the partitioner the pipeline
// checks against (franz-go's, Java's) put every key on the same partition.
func TestMurmur2AgreesAcrossClients(t *testing.T) {
	for _, n := range []int{1, 3, 6, 7, 12, 64} {
		for i := 0; i < 2000; i++ {
			key := []byte(fmt.Sprintf("tenant-%d/session-%d", i%17, i))
			if got, want := Partition(key, n), int(stream.Partition(key, int32(n))); got != want {
				t.Fatalf("key %q over %d partitions: kafka-go %d, pipeline %d", key, n, got, want)
			}
		}
	}
}

// TestOrdinaryClientToVerifiedExport is the pipeline's acceptance path:
// events published by an ordinary Kafka client (kafka-go) to the embedded
// aegisd come out sealed, and an export of the sealed topic verifies with
// aegisctl, including against an export of the chain heads.
func TestOrdinaryClientToVerifiedExport(t *testing.T) {
	cfg := daemon.Defaults()
	cfg.DataDir = t.TempDir()
	cfg.KafkaAddr, cfg.HTTPAddr = "127.0.0.1:0", "127.0.0.1:0"
	cfg.Partitions = 4
	cfg.Instance = "test"
	cfg.Manifests = "../deploy/manifests"
	d := daemon.New(cfg, slog.New(slog.NewTextHandler(io.Discard, nil)))
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- d.Run(ctx) }()
	defer func() {
		cancel()
		if err := <-done; err != nil {
			t.Errorf("daemon: %v", err)
		}
	}()
	brokers := d.Brokers()
	if brokers == nil {
		t.Fatal("daemon did not start")
	}
	topics := pipeline.NewTopics(pipeline.DefaultTopicPrefix)

	pub, err := NewPublisher(PublisherConfig{Brokers: brokers, Topic: topics.Events})
	if err != nil {
		t.Fatal(err)
	}
	var msgs []Message
	const sessions, perSession = 13, 8 // 12 via kafka-go, 1 via aegisctl publish
	for s := 0; s < sessions-1; s++ {
		sid := fmt.Sprintf("s%d", s)
		for seq := 1; seq <= perSession; seq++ {
			typ, payload := "MODEL_CALL_STARTED", `{"model":"m"}`
			if seq%2 == 0 {
				typ, payload = "TOOL_CALL_PROPOSED", fmt.Sprintf(`{"tool_name":"web_fetch","call_id":"c%d","args":{"url":"https://api.github.com/repos/%d"}}`, seq, seq)
			}
			msgs = append(msgs, Message{Key: []byte("default/" + sid), Value: []byte(fmt.Sprintf(
				`{"tenant_id":"default","session_id":%q,"seq":%d,"ts_unix_ms":%d,"event_type":%q,"payload":%s}`, sid, seq, 1767225600000+int64(seq), typ, payload))})
		}
	}
	if err := pub.Publish(ctx, msgs...); err != nil {
		t.Fatal(err)
	}
	if err := pub.Close(); err != nil {
		t.Fatal(err)
	}
	// One more session through `aegisctl publish`.
	var nd strings.Builder
	for seq := 1; seq <= perSession; seq++ {
		fmt.Fprintf(&nd, `{"tenant_id":"default","session_id":"via-ctl","seq":%d,"ts_unix_ms":%d,"event_type":"MODEL_CALL_STARTED"}`+"\n", seq, 1767225600000+int64(seq))
	}
	var pubOut bytes.Buffer
	if code := ctl.Main(ctx, ctl.IO{Stdin: strings.NewReader(nd.String()), Stdout: &pubOut, Stderr: &pubOut}, []string{"publish", "--brokers", strings.Join(brokers, ",")}); code != 0 {
		t.Fatalf("aegisctl publish: exit %d: %s", code, pubOut.String())
	}

	dir := t.TempDir()
	exportTo := func(args ...string) (string, string) {
		var out, errOut bytes.Buffer
		code := ctl.Main(ctx, ctl.IO{Stdin: strings.NewReader(""), Stdout: &out, Stderr: &errOut}, append([]string{"export", "--brokers", strings.Join(brokers, ",")}, args...))
		if code != 0 {
			t.Fatalf("export %v: exit %d: %s", args, code, errOut.String())
		}
		return out.String(), errOut.String()
	}
	deadline := time.Now().Add(30 * time.Second)
	var sealed string
	for {
		sealed, _ = exportTo("--topic", "sealed")
		if strings.Count(sealed, "\n") >= sessions*perSession || time.Now().After(deadline) {
			break
		}
		time.Sleep(200 * time.Millisecond)
	}
	if n := strings.Count(sealed, "\n"); n != sessions*perSession {
		t.Fatalf("exported %d sealed records, want %d", n, sessions*perSession)
	}
	if !strings.Contains(sealed, `"reason":"OK"`) {
		t.Fatalf("no allowed proposal in the export:\n%.400s", sealed)
	}
	heads, _ := exportTo("--topic", "chain-heads", "--latest-per-key")
	if n := strings.Count(heads, "\n"); n != sessions {
		t.Fatalf("%d heads for %d sessions", n, sessions)
	}
	sealedFile, headsFile := filepath.Join(dir, "sealed.ndjson"), filepath.Join(dir, "heads.ndjson")
	_ = os.WriteFile(sealedFile, []byte(sealed), 0o600)
	_ = os.WriteFile(headsFile, []byte(heads), 0o600)
	var out, errOut bytes.Buffer
	if code := ctl.Main(ctx, ctl.IO{Stdin: strings.NewReader(""), Stdout: &out, Stderr: &errOut}, []string{"verify", "--file", sealedFile, "--heads", headsFile}); code != 0 {
		t.Fatalf("verify: exit %d: %s%s", code, out.String(), errOut.String())
	}
	// Drop the last line: the export still chains, the heads catch it.
	lines := strings.Split(strings.TrimSpace(sealed), "\n")
	_ = os.WriteFile(sealedFile, []byte(strings.Join(lines[:len(lines)-1], "\n")+"\n"), 0o600)
	errOut.Reset()
	if code := ctl.Main(ctx, ctl.IO{Stdin: strings.NewReader(""), Stdout: &out, Stderr: &errOut}, []string{"verify", "--file", sealedFile, "--heads", headsFile}); code != ctl.ExitFailed || !strings.Contains(errOut.String(), "TRUNCATED") {
		t.Fatalf("truncated export: exit %d: %s", code, errOut.String())
	}
}
