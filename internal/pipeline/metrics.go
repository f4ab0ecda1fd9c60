package pipeline

import (
	"errors"

	"github.com/prometheus/client_golang/prometheus"
)

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
		m.Rejected = Register(reg, m.Rejected)
		m.Duplicates = Register(reg, m.Duplicates)
		m.Accepted = Register(reg, m.Accepted)
	}
	return m
}

// Register registers c on reg, reusing an identical collector that is
// already registered (a stage restarted in the same process).
func Register[C prometheus.Collector](reg prometheus.Registerer, c C) C {
	if err := reg.Register(c); err != nil {
		var are prometheus.AlreadyRegisteredError
		if errors.As(err, &are) {
			if existing, ok := are.ExistingCollector.(C); ok {
				return existing
			}
		}
		panic(err)
	}
	return c
}
