package stream

import (
	"context"
	"fmt"
	"net"
	"sync"

	"github.com/twmb/franz-go/pkg/kfake"
)

// DefaultEmbeddedAddr is where the embedded broker listens by default.
const DefaultEmbeddedAddr = "127.0.0.1:9092"

// EmbeddedConfig configures the embedded broker.
type EmbeddedConfig struct {
	// DataDir, if set, persists the broker's state there: topics and
	// their configs, record segments, consumer group offsets, producer
	// IDs and transaction state. A broker started on an existing DataDir
	// reloads it, so committed records, offsets and transactions survive
	// a restart. Empty keeps everything in memory.
	DataDir string
	// SyncWrites fsyncs every produced batch before acknowledging it.
	// Without it, segments are synced on roll and on Close (like Kafka's
	// default), and a crash of the process may lose acknowledged
	// batches that the OS had not written.
	SyncWrites bool
	// Addr is the host:port to listen on (default DefaultEmbeddedAddr);
	// port 0 picks a free port (see Embedded.Addr). Any Kafka client can
	// connect to it; it is advertised as is in metadata.
	Addr string
	// Partitions is the partition count of topics created with the
	// broker default (auto-created, or CreateTopics with -1); default 10.
	Partitions int32
}

// Embedded is an in-process single-node Kafka-compatible broker (franz-go's
// kfake) with transactions, consumer groups and compaction. It is what the
// embedded mode and the hermetic tests run against. Persistence is
// kfake's own, not Kafka's on-disk format.
type Embedded struct {
	c         *kfake.Cluster
	addr      string
	closeOnce sync.Once
	stop      chan struct{}
	done      chan struct{}
}

// StartEmbedded starts the broker. It closes when ctx is cancelled or Close
// is called, whichever comes first; Close waits for the state to be
// persisted.
func StartEmbedded(ctx context.Context, cfg EmbeddedConfig, opts ...Option) (*Embedded, error) {
	o := buildOptions("embedded", opts)
	addr := cfg.Addr
	if addr == "" {
		addr = DefaultEmbeddedAddr
	}
	if cfg.Partitions < 0 {
		return nil, fmt.Errorf("stream: embedded: %d partitions: %w", cfg.Partitions, ErrConfig)
	}
	kopts := []kfake.Opt{
		kfake.NumBrokers(1),
		kfake.WithLogger(kfakeLogger{o.logger.With("stage", o.stage)}),
		// kfake listens on 127.0.0.1 with the port it is given; the
		// listen function substitutes the configured address.
		kfake.ListenFn(func(network, _ string) (net.Listener, error) { return net.Listen(network, addr) }),
	}
	if cfg.Partitions > 0 {
		kopts = append(kopts, kfake.DefaultNumPartitions(int(cfg.Partitions)))
	}
	if cfg.DataDir != "" {
		kopts = append(kopts, kfake.DataDir(cfg.DataDir))
		if cfg.SyncWrites {
			kopts = append(kopts, kfake.SyncWrites())
		}
	}
	c, err := kfake.NewCluster(kopts...)
	if err != nil {
		return nil, fmt.Errorf("stream: embedded broker on %s: %w: %w", addr, ErrBroker, err)
	}
	e := &Embedded{c: c, addr: c.ListenAddrs()[0], stop: make(chan struct{}), done: make(chan struct{})}
	go func() {
		defer close(e.done)
		select {
		case <-ctx.Done():
		case <-e.stop:
		}
		c.Close()
	}()
	return e, nil
}

// Addr is the host:port the broker listens on.
func (e *Embedded) Addr() string { return e.addr }

// Brokers is Addr as a seed broker list.
func (e *Embedded) Brokers() []string { return []string{e.addr} }

// Close stops the broker, persisting its state if it has a DataDir, and
// waits until it has stopped. It is safe to call more than once.
func (e *Embedded) Close() {
	e.closeOnce.Do(func() { close(e.stop) })
	<-e.done
}

// Compact runs log compaction now on every topic with cleanup.policy=compact
// (kfake otherwise compacts on its own schedule).
func (e *Embedded) Compact() { e.c.Compact() }
