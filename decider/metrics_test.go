package decider

import (
	"fmt"
	"testing"

	"github.com/prometheus/client_golang/prometheus"

	"aegis.dev/aegis/decider/policy"
	"aegis.dev/aegis/internal/stream"
)

// TestReasonLabelsBounded: a policy may carry its own reason codes through,
// even codes built from input; an agent choosing that input must not grow
// the decider's metrics without bound, one series per distinct reason.
func TestReasonLabelsBounded(t *testing.T) {
	files := map[string]string{"decide.rego": "package aegis.decide\n\ndecision := {\"outcome\": \"deny\", \"reason\": sprintf(\"X_%s\", [input.event.payload.args.q])}\n",
		"index.rego": "package aegis.manifest\n\nindex := {}\n"}
	bundle := &policy.Bundle{Revision: policy.ComputeRevision(files), Files: files}
	reg := prometheus.NewRegistry()
	stage := NewStage(newEngine(t, bundle), StageConfig{Topics: topics, Partitions: 3,
		Shadow: newEngine(t, policy.Default()), ShadowTopic: "aegis.shadow-diffs"}, reg, nil)
	p := stage.NewProcessor(0)
	const n = 3 * maxReasonLabels
	var recs []*stream.Record
	for i := range n {
		recs = append(recs, rec(uint64(i+1), fmt.Sprint(i)))
	}
	out := process(t, p, recs...)
	if len(out[topics.Decisions]) != n {
		t.Fatalf("%d replies, want %d", len(out[topics.Decisions]), n)
	}
	p.(stream.Committer).Committed() // the batch's transaction committed
	families, err := reg.Gather()
	if err != nil {
		t.Fatal(err)
	}
	for _, f := range families {
		switch f.GetName() {
		case "aegis_decider_decisions_total", "aegis_decider_shadow_disagreements_total":
			var total float64
			for _, m := range f.GetMetric() {
				total += m.GetCounter().GetValue()
			}
			if len(f.GetMetric()) > maxReasonLabels+1 || total != n {
				t.Errorf("%s: %d series counting %v decisions, want at most %d series counting %d", f.GetName(), len(f.GetMetric()), total, maxReasonLabels+1, n)
			}
		}
	}
}
