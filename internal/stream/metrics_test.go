package stream

import (
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"
)

func TestMetricsRegisteredOnCustomRegistry(t *testing.T) {
	e := startBroker(t)
	tp := newTopology(t, e, 2)
	want := map[string]int{}
	produceInputs(t, e, tp.input, 4, 40, want)

	reg := prometheus.NewRegistry()
	tr, err := NewTransactor(tp.config(e, "txn-m"), tp.counters(nil), WithRegisterer(reg), WithStage("decider"))
	if err != nil {
		t.Fatal(err)
	}
	stop := runAsync(t, tr)
	readAtLeast(t, e, tp.output, sum(want), 10*time.Second, 0)
	waitFor(t, "ready", 5*time.Second, tr.Ready)

	families, err := reg.Gather()
	if err != nil {
		t.Fatal(err)
	}
	got := map[string]float64{}
	for _, f := range families {
		for _, m := range f.GetMetric() {
			stage := ""
			for _, l := range m.GetLabel() {
				if l.GetName() == "stage" {
					stage = l.GetValue()
				}
			}
			if stage != "decider" {
				t.Errorf("%s has stage label %q, want decider", f.GetName(), stage)
			}
			switch {
			case m.Counter != nil:
				got[f.GetName()] += m.Counter.GetValue()
			case m.Histogram != nil:
				got[f.GetName()] += float64(m.Histogram.GetSampleCount())
			case m.Gauge != nil:
				got[f.GetName()] += 1
			}
		}
	}
	tests := []struct {
		name string
		min  float64
	}{
		{metricConsumed, float64(sum(want))},
		{metricProduced, float64(2 * sum(want))}, // output + state per input
		{metricBatchRecords, 1},
		{metricHandle, 1},
		{metricTransactions, 1},
		{metricRestore, 1},
		{metricLag, 2}, // one series per owned partition
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			if got[tc.name] < tc.min {
				t.Fatalf("%s = %v, want >= %v", tc.name, got[tc.name], tc.min)
			}
		})
	}

	// A restarted stage on the same registry reuses the series.
	if err := stop(); err != nil {
		t.Fatal(err)
	}
	if _, err := NewTransactor(tp.config(e, "txn-m"), tp.counters(nil), WithRegisterer(reg), WithStage("decider")); err != nil {
		t.Fatalf("second transactor on the same registry: %v", err)
	}
}

func TestMetricsNotRegisteredGlobally(t *testing.T) {
	before, err := prometheus.DefaultGatherer.Gather()
	if err != nil {
		t.Fatal(err)
	}
	cfg := TransactConfig{Brokers: []string{"127.0.0.1:1"}, Group: "g", TransactionalID: "t", Input: "in"}
	if _, err := NewTransactor(cfg, func(int32) Processor { return nil }); err != nil {
		t.Fatal(err)
	}
	after, err := prometheus.DefaultGatherer.Gather()
	if err != nil {
		t.Fatal(err)
	}
	if len(after) != len(before) {
		t.Fatalf("default registry went from %d to %d metric families", len(before), len(after))
	}
}
