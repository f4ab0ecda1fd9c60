package sealer

import (
	"testing"

	"github.com/prometheus/client_golang/prometheus"
	dto "github.com/prometheus/client_model/go"

	"aegis.dev/aegis/internal/stream"
	"aegis.dev/aegis/schemas/envelope"
)

func counterValue(tb testing.TB, c prometheus.Counter) float64 {
	tb.Helper()
	var m dto.Metric
	if err := c.Write(&m); err != nil {
		tb.Fatal(err)
	}
	return m.GetCounter().GetValue()
}

// TestSealerCountsOnlyCommittedBatches: the record counters count a batch
// once its transaction commits (stream.Committer), not while processing
// it, so a batch processed again after an aborted transaction is counted
// once, not once per attempt.
func TestSealerCountsOnlyCommittedBatches(t *testing.T) {
	st := New(Config{Topics: topics, Partitions: partitions}, prometheus.NewRegistry(), nil)
	first := decided("m1", 1, envelope.ModelCallStarted, "")
	batch := []*stream.Record{first, decided("m1", 1, envelope.ModelCallStarted, ""), decided("m1", 3, envelope.ModelCallStarted, "")}
	run(t, st.NewProcessor(first.Partition), batch...) // an attempt whose transaction aborted: its processor is discarded
	p := st.NewProcessor(first.Partition)
	run(t, p, batch...)
	counts := func() [3]float64 {
		return [3]float64{counterValue(t, st.metrics.Accepted), counterValue(t, st.metrics.Duplicates), counterValue(t, st.metrics.Rejected.WithLabelValues("SEQ_GAP"))}
	}
	if got := counts(); got != [3]float64{} {
		t.Fatalf("before the commit: accepted, duplicates, SEQ_GAP = %v, want none", got)
	}
	p.(stream.Committer).Committed()
	if got := counts(); got != [3]float64{1, 1, 1} {
		t.Fatalf("after the commit: accepted, duplicates, SEQ_GAP = %v, want 1 each", got)
	}
	p.(stream.Committer).Committed()
	if got := counts(); got != [3]float64{1, 1, 1} {
		t.Fatalf("a second Committed with nothing processed: %v", got)
	}
}
