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

// Tally counts one processor's records for its stage's counters until the
// transaction they were processed in commits (Flush, from the processor's
// stream.Committer). A processor whose transaction aborts is discarded
// with its tally, so a batch retried after an abort is counted once.
type Tally struct {
	m                    *Metrics
	accepted, duplicates int
	counts               map[tallyKey]int
}

// tallyKey is one labelled counter of a vector (at most three labels).
type tallyKey struct {
	vec    *prometheus.CounterVec
	n      int
	labels [3]string
}

// NewTally returns an empty tally of m's counters.
func (m *Metrics) NewTally() *Tally { return &Tally{m: m, counts: map[tallyKey]int{}} }

// Accept counts an event accepted and passed on.
func (t *Tally) Accept() { t.accepted++ }

// Duplicate counts a retried event dropped as an exact duplicate.
func (t *Tally) Duplicate() { t.duplicates++ }

// Reject counts a record rejected with reason.
func (t *Tally) Reject(reason string) { t.Count(t.m.Rejected, reason) }

// Count counts one in vec's counter of labels (a stage's own counters,
// at most three labels).
func (t *Tally) Count(vec *prometheus.CounterVec, labels ...string) {
	k := tallyKey{vec: vec, n: len(labels)}
	copy(k.labels[:], labels)
	t.counts[k]++
}

// Flush adds what was counted since the last Flush to the counters.
func (t *Tally) Flush() {
	if t.accepted > 0 {
		t.m.Accepted.Add(float64(t.accepted))
	}
	if t.duplicates > 0 {
		t.m.Duplicates.Add(float64(t.duplicates))
	}
	for k, n := range t.counts {
		k.vec.WithLabelValues(k.labels[:k.n]...).Add(float64(n))
	}
	t.accepted, t.duplicates = 0, 0
	clear(t.counts)
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
