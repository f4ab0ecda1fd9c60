package ctl

import (
	"context"
	"fmt"
	"strings"
	"testing"

	"aegis.dev/aegis/internal/pipeline"
	"aegis.dev/aegis/internal/stream"
)

// TestExportShadowDiffs: the shadow policy's topic (aegisd --shadow-policy,
// docs/replay.md#shadow-mode) is one of the topics export reads, under the
// same prefix rule as the others.
func TestExportShadowDiffs(t *testing.T) {
	const prefix = "t."
	topic := pipeline.ShadowTopic(prefix)
	if topic != "t.shadow-diffs" {
		t.Fatalf("shadow topic %q", topic)
	}
	broker, p := topicBroker(t, topic, 2)
	ctx := context.Background()
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

// TestExportTombstones: a record with a null value (a tombstone) has no
// line in the export, plain or latest-per-key, where it deletes its key;
// the count on stderr says how many there were.
func TestExportTombstones(t *testing.T) {
	ctx, topic := context.Background(), pipeline.NewTopics(pipeline.DefaultTopicPrefix).ChainHeads
	broker, p := topicBroker(t, topic, 1)
	for _, m := range []struct{ key, value string }{
		{"a/1", `{"h":1}`}, {"b/1", `{"h":2}`}, {"a/1", ""}, {"c/1", `{"h":3}`}, {"c/1", ""}, {"c/1", `{"h":4}`},
	} {
		msg := stream.Message{Topic: topic, Key: []byte(m.key)}
		if m.value != "" {
			msg.Value = []byte(m.value)
		}
		if err := p.Produce(ctx, msg); err != nil {
			t.Fatal(err)
		}
	}
	code, stdout, stderr := run(t, "", "export", "--brokers", broker.Addr(), "--topic", "chain-heads")
	if want := "{\"h\":1}\n{\"h\":2}\n{\"h\":3}\n{\"h\":4}\n"; code != ExitOK || stdout != want {
		t.Fatalf("export: exit %d, stdout %q, want %q, stderr %s", code, stdout, want, stderr)
	}
	if !strings.Contains(stderr, "exported 4 records") || !strings.Contains(stderr, "2 tombstones not written") {
		t.Fatalf("stderr %q", stderr)
	}
	code, stdout, stderr = run(t, "", "export", "--brokers", broker.Addr(), "--topic", "chain-heads", "--latest-per-key")
	if want := "{\"h\":2}\n{\"h\":4}\n"; code != ExitOK || stdout != want {
		t.Fatalf("export --latest-per-key: exit %d, stdout %q, want %q, stderr %s", code, stdout, want, stderr)
	}
}

// topicBroker starts an embedded broker with topic (of partitions
// partitions) and a producer to it, both closed when the test ends.
func topicBroker(t *testing.T, topic string, partitions int32) (*stream.Embedded, *stream.Producer) {
	t.Helper()
	ctx, cancel := context.WithCancel(context.Background())
	t.Cleanup(cancel)
	broker, err := stream.StartEmbedded(ctx, stream.EmbeddedConfig{Addr: "127.0.0.1:0"})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { broker.Close() })
	if err := stream.EnsureTopics(ctx, broker.Brokers(), []stream.TopicSpec{{Name: topic, Partitions: partitions}}); err != nil {
		t.Fatal(err)
	}
	p, err := stream.NewProducer(stream.ProducerConfig{Brokers: broker.Brokers()})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(p.Close)
	return broker, p
}

// TestExportTimeoutMustBePositive: --timeout 0 or below is a usage error
// (exit 2), as for publish, not a deadline that expires at once (exit 3).
func TestExportTimeoutMustBePositive(t *testing.T) {
	for _, d := range []string{"0", "-1s"} {
		if code, _, stderr := run(t, "", "export", "--brokers", "127.0.0.1:1", "--timeout", d); code != ExitUsage {
			t.Errorf("--timeout %s: exit %d, want %d: %s", d, code, ExitUsage, stderr)
		}
	}
}

// TestExportPartitionEmptiedByRetention: a partition whose records
// retention deleted (start offset = end offset > 0) has nothing to export;
// export used to wait for a record there until its --timeout. One whose
// first records were deleted exports the rest.
func TestExportPartitionEmptiedByRetention(t *testing.T) {
	ctx, topic := context.Background(), pipeline.NewTopics(pipeline.DefaultTopicPrefix).Sealed
	broker, p := topicBroker(t, topic, 2)
	for i, part := range []int32{0, 0, 1, 1, 1} {
		m := stream.Message{Topic: topic, Key: []byte("acme/s"), Value: []byte(fmt.Sprintf(`{"n":%d}`, i)), Partition: part, Pin: true}
		if err := p.Produce(ctx, m); err != nil {
			t.Fatal(err)
		}
	}
	if err := broker.DeleteRecordsBefore(ctx, topic, 0, 2); err != nil {
		t.Fatal(err)
	}
	if err := broker.DeleteRecordsBefore(ctx, topic, 1, 1); err != nil {
		t.Fatal(err)
	}
	code, stdout, stderr := run(t, "", "export", "--brokers", broker.Addr(), "--topic", "sealed", "--timeout", "20s")
	if want := "{\"n\":3}\n{\"n\":4}\n"; code != ExitOK || stdout != want {
		t.Fatalf("export: exit %d, stdout %q, want %q, stderr %s", code, stdout, want, stderr)
	}
}
