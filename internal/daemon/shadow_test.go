package daemon

import (
	"context"
	"encoding/json"
	"fmt"
	"maps"
	"os"
	"path/filepath"
	"testing"

	"aegis.dev/aegis/decider"
	"aegis.dev/aegis/decider/policy"
	"aegis.dev/aegis/internal/pipeline"
	"aegis.dev/aegis/internal/stream"
	"aegis.dev/aegis/schemas/envelope"
)

// TestShadowPolicyEmbedded runs aegisd with --shadow-policy: the active
// decisions are those of the active bundle, and the proposals the candidate
// decides differently arrive on aegis.shadow-diffs, on their event's
// partition.
func TestShadowPolicyEmbedded(t *testing.T) {
	dir := t.TempDir()
	files := maps.Clone(policy.Default().Files)
	files["shadow.rego"] = "package aegis.decide\n\nviolations contains 1 if input.event.payload.call_id == \"c1\"\n"
	for name, content := range files {
		p := filepath.Join(dir, filepath.FromSlash(name))
		if err := os.MkdirAll(filepath.Dir(p), 0o755); err != nil {
			t.Fatal(err)
		}
		if err := os.WriteFile(p, []byte(content), 0o644); err != nil {
			t.Fatal(err)
		}
	}
	cfg := embeddedConfig(t)
	cfg.ShadowPolicy = dir
	d := startDaemon(t, cfg)
	topics := pipeline.NewTopics(pipeline.DefaultTopicPrefix)
	p, err := stream.NewProducer(stream.ProducerConfig{Brokers: d.Brokers(), MaxRecordBytes: 4 << 20})
	if err != nil {
		t.Fatal(err)
	}
	defer p.Close()
	const sessions = 5
	var msgs []stream.Message
	for s := range sessions {
		sid := fmt.Sprintf("s%d", s)
		for seq := uint64(1); seq <= 2; seq++ {
			msgs = append(msgs, msg(topics.Events, "acme/"+sid, event("acme", sid, seq, envelope.ToolCallProposed,
				fmt.Sprintf(`{"tool_name":"search","call_id":"c%d","args":{"q":%d}}`, seq, seq))))
		}
	}
	if err := p.Produce(context.Background(), msgs...); err != nil {
		t.Fatal(err)
	}
	for _, r := range collect(t, d.Brokers(), topics.Decisions, 2*sessions) {
		var rep decider.Reply
		if err := json.Unmarshal(r.Value, &rep); err != nil || rep.Reason != envelope.ReasonOK {
			t.Fatalf("active decision changed by the shadow: %s", r.Value)
		}
	}
	diffs := collect(t, d.Brokers(), "aegis.shadow-diffs", sessions)
	if len(diffs) != sessions {
		t.Fatalf("%d shadow records, want %d", len(diffs), sessions)
	}
	for _, r := range diffs {
		var sd decider.ShadowDiff
		if err := json.Unmarshal(r.Value, &sd); err != nil {
			t.Fatal(err)
		}
		if sd.Seq != 1 || sd.Active.Reason != envelope.ReasonOK || sd.Shadow.Reason != "PERMISSION_UNDECLARED" ||
			r.Partition != stream.Partition([]byte(sd.TenantID+"/"+sd.SessionID), cfg.Partitions) {
			t.Fatalf("shadow record %s on partition %d", r.Value, r.Partition)
		}
	}
}
