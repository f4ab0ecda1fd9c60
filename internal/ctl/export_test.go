package ctl

import (
	"context"
	"strings"
	"testing"

	"aegis.dev/aegis/internal/pipeline"
	"aegis.dev/aegis/internal/stream"
)

// TestExportShadowDiffs: the shadow policy's topic (aegisd --shadow-policy,
// docs/replay.md#shadow-mode) is one of the topics export reads, under the
// same prefix rule as the others.
func TestExportShadowDiffs(t *testing.T) {
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	broker, err := stream.StartEmbedded(ctx, stream.EmbeddedConfig{Addr: "127.0.0.1:0"})
	if err != nil {
		t.Fatal(err)
	}
	defer broker.Close()
	const prefix = "t."
	topic := pipeline.ShadowTopic(prefix)
	if topic != "t.shadow-diffs" {
		t.Fatalf("shadow topic %q", topic)
	}
	if err := stream.EnsureTopics(ctx, broker.Brokers(), []stream.TopicSpec{{Name: topic, Partitions: 2}}); err != nil {
		t.Fatal(err)
	}
	p, err := stream.NewProducer(stream.ProducerConfig{Brokers: broker.Brokers()})
	if err != nil {
		t.Fatal(err)
	}
	defer p.Close()
	value := `{"tenant_id":"acme","session_id":"s1","seq":1,"call_id":"c1","tool_name":"search","active":{"outcome":"allow","reason":"OK"},"shadow":{"outcome":"deny","reason":"PERMISSION_UNDECLARED"}}`
	if err := p.Produce(ctx, stream.Message{Topic: topic, Key: []byte("acme/s1"), Value: []byte(value)}); err != nil {
		t.Fatal(err)
	}
	code, stdout, stderr := run(t, "", "export", "--brokers", broker.Addr(), "--topic-prefix", prefix, "--topic", "shadow-diffs")
	if code != ExitOK || stdout != value+"\n" {
		t.Fatalf("export --topic shadow-diffs: exit %d, stdout %q, stderr %s", code, stdout, stderr)
	}
	if code, _, stderr := run(t, "", "export", "--brokers", broker.Addr(), "--topic", "shadow"); code != ExitUsage || !strings.Contains(stderr, "unknown topic") {
		t.Fatalf("unknown topic: exit %d: %s", code, stderr)
	}
}
