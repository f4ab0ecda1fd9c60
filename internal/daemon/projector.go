package daemon

import (
	"context"
	"fmt"
	"log/slog"
	"time"

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
func (d *Daemon) newProjector(ctx context.Context, brokers []string) (stageRunner, error) {
	cfg := d.cfg
	st, err := openRetrying(ctx, func() (stores.Store, error) { return stores.Open(context.Background(), cfg.StoreURL()) },
		storeOpenBudget, d.log)
	if err != nil {
		return nil, fmt.Errorf("aegisd: projector: %w", err)
	}
	p, err := projector.New(projector.Config{Brokers: brokers, Group: cfg.TopicPrefix + TargetProjector, Topics: d.topics,
		BatchSize: cfg.StoreBatch, BatchBytes: cfg.StoreBatchBytes, MaxEventBytes: pipeline.SealedMaxBytes(cfg.MaxEventBytes), SessionTimeout: cfg.SessionTimeout,
		CachedSessions: cfg.StateSessions, Security: d.sec}, st, d.reg, d.log)
	if err != nil {
		_ = st.Close()
		return nil, fmt.Errorf("aegisd: projector: %w", err)
	}
	d.log.Info("audit store opened", "store", redactURL(cfg.StoreURL()))
	return &projectorStage{p: p, store: st}, nil
}

// redactURL hides the secrets of a URL (redact.URL).
func redactURL(raw string) string { return redact.URL(raw) }

// storeOpenBudget bounds how long the projector retries opening its store
// at start: a ClickHouse server that is restarting refuses connections
// for a few seconds, and the projector retries its writes anyway.
const storeOpenBudget = time.Minute

// openRetrying calls open until it succeeds or budget has passed, waiting
// 0.5 s, then twice as long up to 5 s, between attempts; it returns the
// last error, or ctx's once ctx is done (a shutdown stops the retries).
func openRetrying(ctx context.Context, open func() (stores.Store, error), budget time.Duration, log *slog.Logger) (stores.Store, error) {
	deadline := time.Now().Add(budget)
	wait := 500 * time.Millisecond
	for {
		st, err := open()
		if err == nil || time.Now().Add(wait).After(deadline) {
			return st, err
		}
		log.Warn("audit store not reachable yet; retrying", "err", err, "in", wait)
		select {
		case <-ctx.Done():
			return nil, ctx.Err()
		case <-time.After(wait):
		}
		wait = min(2*wait, 5*time.Second)
	}
}
