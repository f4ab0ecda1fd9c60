package pipeline

import "github.com/prometheus/client_golang/prometheus"

// Metrics are the record-level counters every pipeline stage keeps.
type Metrics struct {
	Rejected   *prometheus.CounterVec
	Duplicates prometheus.Counter
	Accepted   prometheus.Counter
}

// NewMetrics registers the stage's counters on reg (nil: not registered),
// labelled stage=<stage>.
func NewMetrics(reg prometheus.Registerer, stage string) *Metrics {
	m := &Metrics{
		Rejected: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "aegis_pipeline_rejected_total", Help: "Records rejected to the rejected topic, by reason.",
			ConstLabels: prometheus.Labels{"stage": stage},
		}, []string{"reason"}),
		Duplicates: prometheus.NewCounter(prometheus.CounterOpts{
			Name: "aegis_pipeline_duplicates_total", Help: "Retried events dropped as exact duplicates.",
			ConstLabels: prometheus.Labels{"stage": stage},
		}),
		Accepted: prometheus.NewCounter(prometheus.CounterOpts{
			Name: "aegis_pipeline_accepted_total", Help: "Events accepted and passed on.",
			ConstLabels: prometheus.Labels{"stage": stage},
		}),
	}
	if reg != nil {
		m.Rejected = register(reg, m.Rejected)
		m.Duplicates = register(reg, m.Duplicates)
		m.Accepted = register(reg, m.Accepted)
	}
	return m
}

// register registers c on reg, reusing an identical collector that is
// already registered (a stage restarted in the same process).
func register[C prometheus.Collector](reg prometheus.Registerer, c C) C {
	if err := reg.Register(c); err != nil {
		if are, ok := err.(prometheus.AlreadyRegisteredError); ok {
			if existing, ok := are.ExistingCollector.(C); ok {
				return existing
			}
		}
		panic(err)
	}
	return c
}
