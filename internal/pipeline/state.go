package pipeline

import (
	"fmt"

	"github.com/prometheus/client_golang/prometheus"

	"aegis.dev/aegis/internal/statecache"
)

// DefaultStateSessions is the default bound on the session states a stage
// instance keeps decoded in memory, over all its partitions.
const DefaultStateSessions = 10000

// DefaultStateBytes is the default bound on the encoded size of the
// session states a stage instance keeps in memory, over all its
// partitions: far above what DefaultStateSessions ordinary sessions take
// (a few KB each), it binds only when agents inflate their sessions' state
// toward the reducer's limits.
const DefaultStateBytes = 128 << 20

// StateConfig bounds the memory a transactional stage spends on session
// state (docs/pipeline.md#session-state-in-memory).
type StateConfig struct {
	// Sessions bounds the states kept decoded in memory over all
	// partitions of the instance (default DefaultStateSessions); the
	// others are spilled to a local file and read back on their next
	// event.
	Sessions int
	// Bytes bounds the encoded size of the states kept in memory over all
	// partitions of the instance (default DefaultStateBytes); decoded,
	// a state takes about twice its encoded size.
	Bytes int64
	// Dir is where spill files are created (default os.TempDir()).
	Dir string
}

// StateMetrics counts spill traffic of a stage's state caches.
type StateMetrics struct {
	Spilled prometheus.Counter
	Loaded  prometheus.Counter
}

// NewStateMetrics registers the stage's state cache counters on reg (nil:
// not registered).
func NewStateMetrics(reg prometheus.Registerer, stage string) *StateMetrics {
	m := &StateMetrics{
		Spilled: prometheus.NewCounter(prometheus.CounterOpts{
			Name: "aegis_state_spilled_total", Help: "Session states evicted from memory to the spill file.",
			ConstLabels: prometheus.Labels{"stage": stage},
		}),
		Loaded: prometheus.NewCounter(prometheus.CounterOpts{
			Name: "aegis_state_loaded_total", Help: "Session states read back from the spill file.",
			ConstLabels: prometheus.Labels{"stage": stage},
		}),
	}
	if reg != nil {
		m.Spilled = Register(reg, m.Spilled)
		m.Loaded = Register(reg, m.Loaded)
	}
	return m
}

// NewStateCache returns the session state cache of one partition: the
// instance bound divided evenly over the topic's partitions.
func NewStateCache[T any](cfg StateConfig, stage string, partition, partitions int32, codec statecache.Codec[T]) *statecache.Cache[T] {
	total := cfg.Sessions
	if total <= 0 {
		total = DefaultStateSessions
	}
	bytes := cfg.Bytes
	if bytes <= 0 {
		bytes = DefaultStateBytes
	}
	return statecache.New(statecache.Config{
		MaxHot:      max(1, total/int(max(1, partitions))),
		MaxHotBytes: max(1, bytes/int64(max(1, partitions))),
		Dir:         cfg.Dir,
		Name:        fmt.Sprintf("%s-p%d", stage, partition),
	}, codec)
}

// CountState adds the cache's traffic since prev to m and returns the new
// totals.
func (m *StateMetrics) CountState(now, prev statecache.Stats) statecache.Stats {
	m.Spilled.Add(float64(now.Spilled - prev.Spilled))
	m.Loaded.Add(float64(now.Loaded - prev.Loaded))
	return now
}
