package daemon

import (
	"context"
	"fmt"

	"aegis.dev/aegis/internal/pipeline"
	"aegis.dev/aegis/internal/redact"
	"aegis.dev/aegis/projector"
	"aegis.dev/aegis/projector/stores"
)

// stageRunner is what aegisd runs as a stage: a transactional stage
// (stream.Transactor) or the projector.
type stageRunner interface {
	Run(ctx context.Context) error
	Ready() bool
}

// projectorStage runs the projector and closes its store when it stops.
type projectorStage struct {
	p     *projector.Projector
	store stores.Store
}

func (s *projectorStage) Ready() bool { return s.p.Ready() }

// Close closes the store of a stage that will not run.
func (s *projectorStage) Close() error { return s.store.Close() }

func (s *projectorStage) Run(ctx context.Context) error {
	defer func() { _ = s.store.Close() }()
	return s.p.Run(ctx)
}

// newProjector opens the audit store (creating its schema) and builds the
// projector stage on it.
func (d *Daemon) newProjector(brokers []string) (stageRunner, error) {
	cfg := d.cfg
	st, err := stores.Open(context.Background(), cfg.StoreURL())
	if err != nil {
		return nil, fmt.Errorf("aegisd: projector: %w", err)
	}
	p, err := projector.New(projector.Config{Brokers: brokers, Group: cfg.TopicPrefix + TargetProjector, Topics: d.topics,
		BatchSize: cfg.StoreBatch, BatchBytes: cfg.StoreBatchBytes, MaxEventBytes: pipeline.SealedMaxBytes(cfg.MaxEventBytes), SessionTimeout: cfg.SessionTimeout,
		CachedSessions: cfg.StateSessions}, st, d.reg, d.log)
	if err != nil {
		_ = st.Close()
		return nil, fmt.Errorf("aegisd: projector: %w", err)
	}
	d.log.Info("audit store opened", "store", redactURL(cfg.StoreURL()))
	return &projectorStage{p: p, store: st}, nil
}

// redactURL hides the secrets of a URL (redact.URL).
func redactURL(raw string) string { return redact.URL(raw) }
