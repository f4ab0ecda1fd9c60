package stream

import (
	"errors"

	"github.com/prometheus/client_golang/prometheus"
)

// metrics are the collectors of one Transactor. Every series carries a
// constant "stage" label.
type metrics struct {
	consumed     prometheus.Counter
	produced     prometheus.Counter
	batchRecords prometheus.Histogram
	handle       prometheus.Histogram
	phase        *prometheus.HistogramVec
	committed    prometheus.Counter
	aborted      prometheus.Counter
	restore      prometheus.Histogram
	lag          *prometheus.GaugeVec
	stalls       prometheus.Counter
}

// Metric names, documented for dashboards and alerts.
const (
	metricConsumed     = "aegis_stream_records_consumed_total"
	metricProduced     = "aegis_stream_records_produced_total"
	metricBatchRecords = "aegis_stream_batch_records"
	metricHandle       = "aegis_stream_handle_seconds"
	metricPhase        = "aegis_stream_transaction_phase_seconds"
	metricTransactions = "aegis_stream_transactions_total"
	metricRestore      = "aegis_stream_restore_seconds"
	metricLag          = "aegis_stream_lag_records"
	metricStalls       = "aegis_stream_stalls_total"
)

func newMetrics(reg prometheus.Registerer, stage string) (*metrics, error) {
	cl := prometheus.Labels{"stage": stage}
	txns := prometheus.NewCounterVec(prometheus.CounterOpts{
		Name: metricTransactions, Help: "Transactions ended, by result (committed or aborted).", ConstLabels: cl,
	}, []string{"result"})
	m := &metrics{
		consumed: prometheus.NewCounter(prometheus.CounterOpts{
			Name: metricConsumed, Help: "Input records handed to processors (control records excluded).", ConstLabels: cl,
		}),
		produced: prometheus.NewCounter(prometheus.CounterOpts{
			Name: metricProduced, Help: "Records emitted by processors in committed transactions.", ConstLabels: cl,
		}),
		batchRecords: prometheus.NewHistogram(prometheus.HistogramOpts{
			Name: metricBatchRecords, Help: "Input records per transaction.", ConstLabels: cl,
			Buckets: prometheus.ExponentialBuckets(1, 4, 8),
		}),
		handle: prometheus.NewHistogram(prometheus.HistogramOpts{
			Name: metricHandle, Help: "Time from a poll returning to its transaction ending.", ConstLabels: cl,
			Buckets: prometheus.ExponentialBuckets(0.0001, 4, 10),
		}),
		phase: prometheus.NewHistogramVec(prometheus.HistogramOpts{
			Name: metricPhase, Help: "Time spent in each phase of a transaction: process (processors running), flush (outputs acknowledged), end (offsets committed and transaction ended).", ConstLabels: cl,
			Buckets: prometheus.ExponentialBuckets(0.0001, 4, 10),
		}, []string{"phase"}),
		restore: prometheus.NewHistogram(prometheus.HistogramOpts{
			Name: metricRestore, Help: "Time to restore the state of newly owned partitions.", ConstLabels: cl,
			Buckets: prometheus.ExponentialBuckets(0.001, 4, 10),
		}),
		lag: prometheus.NewGaugeVec(prometheus.GaugeOpts{
			Name: metricLag, Help: "Committed input records behind the last seen end offset, per owned partition.", ConstLabels: cl,
		}, []string{"partition"}),
		stalls: prometheus.NewCounter(prometheus.CounterOpts{
			Name: metricStalls, Help: "Sessions the stall watchdog replaced because their loop made no progress for the stall timeout.", ConstLabels: cl,
		}),
	}
	if reg != nil {
		var err error
		if m.consumed, err = register(reg, m.consumed); err != nil {
			return nil, err
		}
		if m.produced, err = register(reg, m.produced); err != nil {
			return nil, err
		}
		if m.batchRecords, err = register(reg, m.batchRecords); err != nil {
			return nil, err
		}
		if m.handle, err = register(reg, m.handle); err != nil {
			return nil, err
		}
		if m.phase, err = register(reg, m.phase); err != nil {
			return nil, err
		}
		if txns, err = register(reg, txns); err != nil {
			return nil, err
		}
		if m.restore, err = register(reg, m.restore); err != nil {
			return nil, err
		}
		if m.lag, err = register(reg, m.lag); err != nil {
			return nil, err
		}
		if m.stalls, err = register(reg, m.stalls); err != nil {
			return nil, err
		}
	}
	m.committed = txns.WithLabelValues("committed")
	m.aborted = txns.WithLabelValues("aborted")
	return m, nil
}

// register registers c on reg, or returns the equal collector registered
// earlier (a restarted stage keeps counting on the same series).
func register[C prometheus.Collector](reg prometheus.Registerer, c C) (C, error) {
	if err := reg.Register(c); err != nil {
		if are, ok := errors.AsType[prometheus.AlreadyRegisteredError](err); ok {
			if existing, ok := are.ExistingCollector.(C); ok {
				return existing, nil
			}
		}
		var zero C
		return zero, err
	}
	return c, nil
}
