package ingest

import (
	"github.com/prometheus/client_golang/prometheus"

	"aegis.dev/aegis/internal/pipeline"
)

type metrics struct {
	events      *prometheus.CounterVec // result
	rateLimited prometheus.Counter
	waits       *prometheus.HistogramVec // kind
	timeouts    prometheus.Counter
}

func newMetrics(reg prometheus.Registerer) *metrics {
	m := &metrics{
		events: prometheus.NewCounterVec(prometheus.CounterOpts{Name: "aegis_ingest_events_total",
			Help: "Events received over HTTP, by result (accepted, invalid, failed)."}, []string{"result"}),
		rateLimited: prometheus.NewCounter(prometheus.CounterOpts{Name: "aegis_ingest_rate_limited_total",
			Help: "Requests refused with 429 by the per-tenant rate limit."}),
		waits: prometheus.NewHistogramVec(prometheus.HistogramOpts{Name: "aegis_ingest_wait_seconds",
			Help:    "Time from publishing a record to the pipeline's verdict on it, by kind (proposal, event, approval).",
			Buckets: prometheus.ExponentialBuckets(0.001, 2, 14)}, []string{"kind"}),
		timeouts: prometheus.NewCounter(prometheus.CounterOpts{Name: "aegis_ingest_wait_timeouts_total",
			Help: "Waits for a verdict that timed out (504)."}),
	}
	if reg != nil {
		m.events = pipeline.Register(reg, m.events)
		m.rateLimited = pipeline.Register(reg, m.rateLimited)
		m.waits = pipeline.Register(reg, m.waits)
		m.timeouts = pipeline.Register(reg, m.timeouts)
	}
	return m
}
