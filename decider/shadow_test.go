package decider

import (
	"encoding/json"
	"maps"
	"slices"
	"testing"

	"github.com/prometheus/client_golang/prometheus"

	"aegis.dev/aegis/decider/policy"
	"aegis.dev/aegis/internal/stream"
)

// TestShadowPolicy: a shadow policy that denies one query sees every
// proposal, disagrees on that one only, and changes nothing the active
// policy decides.
func TestShadowPolicy(t *testing.T) {
	files := maps.Clone(policy.Default().Files)
	files["shadow.rego"] = "package aegis.decide\n\nviolations contains 1 if input.event.payload.args.q == \"b\"\n"
	candidate := &policy.Bundle{Revision: policy.ComputeRevision(files), Files: files}
	const shadowTopic = "aegis.shadow-diffs"
	reg := prometheus.NewRegistry()
	shadowed := NewStage(newEngine(t, policy.Default()),
		StageConfig{Topics: topics, Partitions: 3, Shadow: newEngine(t, candidate), ShadowTopic: shadowTopic}, reg, nil)
	plain := NewStage(newEngine(t, policy.Default()), StageConfig{Topics: topics, Partitions: 3}, nil, nil)
	if outs := shadowed.TransactConfig().Outputs; !slices.Contains(outs, shadowTopic) {
		t.Fatalf("outputs %v lack the shadow topic", outs)
	}

	recs := []*stream.Record{rec(1, "a"), rec(2, "b"), rec(3, "c")}
	proc := shadowed.NewProcessor(0)
	got := process(t, proc, recs...)
	want := process(t, plain.NewProcessor(0), recs...)
	for _, topic := range []string{topics.Decided, topics.Decisions, topics.DeciderState} {
		if len(got[topic]) != len(want[topic]) {
			t.Fatalf("%s: %d records with a shadow, %d without", topic, len(got[topic]), len(want[topic]))
		}
		for i := range got[topic] {
			if string(got[topic][i].Value) != string(want[topic][i].Value) {
				t.Fatalf("%s record %d changed by the shadow:\n%s\n%s", topic, i, got[topic][i].Value, want[topic][i].Value)
			}
		}
	}
	diffs := got[shadowTopic]
	if len(diffs) != 1 {
		t.Fatalf("%d shadow records, want 1", len(diffs))
	}
	var d ShadowDiff
	if err := json.Unmarshal(diffs[0].Value, &d); err != nil {
		t.Fatal(err)
	}
	if d.Seq != 2 || d.CallID != "c2" || d.Active.Reason != "OK" || d.Shadow.Reason != "PERMISSION_UNDECLARED" ||
		d.Shadow.PolicyRevision != candidate.Revision || diffs[0].Partition != recs[1].Partition || string(diffs[0].Key) != string(recs[1].Key) {
		t.Fatalf("shadow record %+v (partition %d)", d, diffs[0].Partition)
	}
	disagreements := func() float64 {
		families, err := reg.Gather()
		if err != nil {
			t.Fatal(err)
		}
		var n float64
		for _, f := range families {
			if f.GetName() == "aegis_decider_shadow_disagreements_total" {
				for _, m := range f.GetMetric() {
					n += m.GetCounter().GetValue()
				}
			}
		}
		return n
	}
	// Counted once the batch's transaction commits, not while processing
	// (a batch retried after an abort is processed twice).
	if n := disagreements(); n != 0 {
		t.Fatalf("disagreement metric %v before the commit, want 0", n)
	}
	proc.(stream.Committer).Committed()
	if n := disagreements(); n != 1 {
		t.Fatalf("disagreement metric %v, want 1", n)
	}
}

// TestShadowConstraintsDisagree: a candidate that allows the same calls
// under other constraints (a shorter timeout, a smaller output bound)
// changes what the caller runs: a disagreement, as in replay's what-if.
func TestShadowConstraintsDisagree(t *testing.T) {
	files := map[string]string{
		"decide.rego": "package aegis.decide\n\ndecision := {\"outcome\": \"allow\", \"reason\": \"OK\", \"constraints\": {\"max_output_bytes\": 1048576, \"timeout_ms\": 5}}\n",
		"index.rego":  "package aegis.manifest\n\nindex := {}\n",
	}
	candidate := &policy.Bundle{Revision: policy.ComputeRevision(files), Files: files}
	const shadowTopic = "aegis.shadow-diffs"
	stage := NewStage(newEngine(t, policy.Default()),
		StageConfig{Topics: topics, Partitions: 3, Shadow: newEngine(t, candidate), ShadowTopic: shadowTopic}, nil, nil)
	out := process(t, stage.NewProcessor(0), rec(1, "a"))
	var r Reply
	if err := json.Unmarshal(out[topics.Decisions][0].Value, &r); err != nil || r.Reason != "OK" || r.Constraints.TimeoutMs == 5 {
		t.Fatalf("active reply %s (%v)", out[topics.Decisions][0].Value, err)
	}
	diffs := out[shadowTopic]
	if len(diffs) != 1 {
		t.Fatalf("%d shadow records, want 1 (timeout_ms %d against 5)", len(diffs), r.Constraints.TimeoutMs)
	}
	var d ShadowDiff
	if err := json.Unmarshal(diffs[0].Value, &d); err != nil {
		t.Fatal(err)
	}
	if d.Active.Constraints.TimeoutMs != r.Constraints.TimeoutMs || d.Shadow.Constraints.TimeoutMs != 5 {
		t.Fatalf("shadow record %s", diffs[0].Value)
	}
}
