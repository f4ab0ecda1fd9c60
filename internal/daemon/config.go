// Package daemon is aegisd: it runs any set of Aegis stages in one process,
// against configured Kafka brokers or, with none configured, against an
// embedded broker persisted under the data directory. cmd/aegisd is a thin
// main around Run.
package daemon

import (
	"errors"
	"flag"
	"fmt"
	"io"
	"log/slog"
	"os"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"time"

	"aegis.dev/aegis/ingest"
	"aegis.dev/aegis/internal/pipeline"
	"aegis.dev/aegis/internal/stream"
	"aegis.dev/aegis/internal/yamldoc"
	"aegis.dev/aegis/mcpproxy"
	"aegis.dev/aegis/projector/stores"
	"aegis.dev/aegis/schemas/envelope"
)

// Stage names accepted by --target.
const (
	TargetAll     = "all"
	TargetDecider = "decider"
	TargetSealer  = "sealer"
	// TargetProjector writes the audit store (--store); it starts last
	// and drains last.
	TargetProjector = "projector"
	// TargetMCPProxy is the MCP proxy (package mcpproxy, --mcp-* flags).
	// It is not part of "all": run it with "all,mcp-proxy", or alone
	// against brokers where the stages run. It starts first and stops
	// first, like the HTTP API.
	TargetMCPProxy = "mcp-proxy"
)

// Stages lists, in start order, every stage "all" runs.
var Stages = []string{TargetDecider, TargetSealer, TargetProjector}

// Config is the operator configuration of aegisd. It is read from an
// optional YAML file (--config) and then from flags, which override the
// file. Field docs name each default.
type Config struct {
	// Target is "all" or a comma-separated list of stages (default "all").
	Target string `yaml:"target"`
	// Brokers are Kafka seed brokers; empty runs the embedded broker.
	Brokers []string `yaml:"brokers"`
	// DataDir holds the embedded broker's data (default "./data").
	DataDir string `yaml:"data_dir"`
	// KafkaAddr is where the embedded broker listens (default
	// 127.0.0.1:9092).
	KafkaAddr string `yaml:"kafka_addr"`
	// KafkaSyncWrites makes the embedded broker fsync every produced batch
	// before acknowledging it, so that an acknowledged event survives a
	// power loss or OS crash too (default off, as Kafka's own default).
	KafkaSyncWrites bool `yaml:"kafka_sync_writes"`
	// HTTPAddr serves /healthz, /readyz and /metrics (default
	// 127.0.0.1:8080).
	HTTPAddr string `yaml:"http_addr"`
	// AddrFile, if set, is where aegisd writes the addresses it listens on
	// (JSON: http, kafka when embedded, mcp with the MCP proxy over HTTP)
	// once they are bound, so scripts and tests can ask for port 0.
	AddrFile string `yaml:"addr_file"`
	// TopicPrefix starts every topic name (default "aegis.").
	TopicPrefix string `yaml:"topic_prefix"`
	// Partitions is the partition count of the topics aegisd creates and
	// expects (default 6).
	Partitions int32 `yaml:"partitions"`
	// Instance names this process in transactional IDs; it must be unique
	// per running instance of a stage and stable across its restarts
	// (default: the host name).
	Instance string `yaml:"instance"`
	// Manifests is the manifest registry directory (<dir>/<tenant>/<name>.json).
	Manifests string `yaml:"manifests"`
	// Policy is a policy bundle directory (default: the built-in bundle).
	Policy string `yaml:"policy"`
	// Archive is the policy archive: the active bundle and every registry
	// manifest are written there by digest at start, for exact replay
	// (replayer.Archive; default <data-dir>/policy-archive).
	Archive string `yaml:"archive"`
	// ShadowPolicy is a candidate policy bundle directory evaluated beside
	// the active one on every proposal, without affecting outcomes;
	// disagreements go to <prefix>shadow-diffs (docs/replay.md#shadow-mode).
	ShadowPolicy string `yaml:"shadow_policy"`
	// MaxEventBytes bounds one event (default 1 MiB).
	MaxEventBytes int `yaml:"max_event_bytes"`
	// MaxBatch caps the records one stage handles in one transaction
	// (default 5000). Larger batches amortize the transaction commit;
	// the batch is whatever arrived since the last commit, so light load
	// still commits small batches at once.
	MaxBatch int `yaml:"max_batch"`
	// SealerBatchWait lets the broker hold the sealer's fetches until this
	// long has passed or 1 MiB is waiting (default 20ms; 0: return as soon
	// as anything arrives). Fewer, larger sealer transactions leave the
	// broker more time for the decider, whose replies agents wait on
	// (docs/pipeline.md#batching). Kafka's floor is 10ms.
	SealerBatchWait time.Duration `yaml:"sealer_batch_wait"`
	// StoreBatch is the number of records the projector buffers before it
	// writes them to the audit store (default 20,000; a write also happens
	// 1 s after the first buffered record). ClickHouse does best with few,
	// large inserts: each insert makes parts that its merges then rewrite.
	StoreBatch int `yaml:"store_batch"`
	// StoreBatchBytes bounds the record bytes of one such write (default
	// 32 MiB), so that large events cannot make a batch of StoreBatch
	// records gigabytes big.
	StoreBatchBytes int `yaml:"store_batch_bytes"`
	// StateSessions bounds the session states each stage instance keeps
	// decoded in memory (default 10,000): the decider's snapshots, the
	// sealer's chain heads, the projector's cached snapshots. The others
	// are spilled to files under <data-dir>/state-spill (decider, sealer)
	// or rebuilt from the store (projector) when their session comes
	// back, so memory stays flat however many sessions a fleet opens
	// (docs/pipeline.md#session-state-in-memory).
	StateSessions int `yaml:"state_sessions"`
	// StateBytes bounds the encoded size of the session states the
	// decider and the sealer keep in memory (default 128 MiB), so that
	// sessions whose state an agent inflated toward the reducer's limits
	// are spilled sooner instead of multiplying by StateSessions.
	StateBytes int64 `yaml:"state_bytes"`
	// KafkaCompression compresses the batches aegisd produces: none,
	// snappy (default), lz4, zstd or gzip. On loopback or a fast LAN,
	// none saves CPU on both aegisd and the brokers (docs/benchmarks.md).
	KafkaCompression string `yaml:"kafka_compression"`
	// KafkaSecurity is how aegisd reaches brokers that take only TLS or
	// SASL connections (--kafka-tls*, --kafka-sasl-*; kafka_tls*,
	// kafka_sasl_* keys). It applies to --brokers; the embedded broker
	// listens on loopback without either.
	KafkaSecurity stream.SecurityConfig `yaml:",inline"`
	// SessionTimeout is the consumer group session timeout of the stages
	// (default 45s): how long the partitions of a crashed instance stay
	// unowned before the group hands them to a live one. The broker
	// bounds it (group.min.session.timeout.ms, 6s by default; the embedded
	// broker takes 6s..5m). Members heartbeat every third of it, at most
	// every 3s.
	SessionTimeout time.Duration `yaml:"session_timeout"`
	// StallTimeout is how long a stage's loop may make no progress before
	// its Kafka client is replaced (default 2m; docs/pipeline.md).
	StallTimeout time.Duration `yaml:"stall_timeout"`
	// UnauthenticatedApprovals makes the decider honour every
	// APPROVAL_DECIDED, grant or not (internal/grant): whoever can write
	// the events topic can then approve any call. Without it a decider
	// checks grants with the approval secret: --approval-secret-file, or
	// the secret of the HTTP gateway in its process; a decider with
	// neither, on external brokers, refuses to start.
	UnauthenticatedApprovals bool `yaml:"unauthenticated_approvals"`
	// Dev relaxes security for local development and says so loudly.
	Dev bool `yaml:"dev"`
	// Pprof serves Go's profiling endpoints under /debug/pprof/ on the HTTP
	// listener (default off: they expose internals and cost CPU when used).
	Pprof bool `yaml:"pprof"`
	// LogLevel is debug, info, warn or error (default info).
	LogLevel string `yaml:"log_level"`
	// Store is the audit store the projector writes: sqlite:PATH or
	// clickhouse://HOST:PORT/DB (default: sqlite:<data-dir>/audit.db).
	Store string `yaml:"store"`
	// Ingest configures the HTTP API served on HTTPAddr (API keys, TLS,
	// approvals, rate limits); its keys sit at the top level of the file.
	Ingest ingest.Config `yaml:",inline"`
	// MCP configures the MCP proxy target (--mcp-* flags, mcp_* keys).
	MCP mcpproxy.Config `yaml:",inline"`
}

// The session timeouts the embedded broker accepts (kfake's defaults of
// group.min.session.timeout.ms and group.max.session.timeout.ms).
const (
	embeddedMinSessionTimeout = 6 * time.Second
	embeddedMaxSessionTimeout = 5 * time.Minute
)

// Defaults returns the configuration with every default applied.
func Defaults() Config {
	host, _ := os.Hostname()
	if host == "" {
		host = "aegisd"
	}
	return Config{
		Target:           TargetAll,
		DataDir:          "./data",
		KafkaAddr:        "127.0.0.1:9092",
		HTTPAddr:         "127.0.0.1:8080",
		TopicPrefix:      pipeline.DefaultTopicPrefix,
		Partitions:       pipeline.DefaultPartitions,
		Instance:         host,
		MaxEventBytes:    envelope.DefaultMaxEventBytes,
		SessionTimeout:   45 * time.Second,
		StallTimeout:     2 * time.Minute,
		MaxBatch:         5000,
		SealerBatchWait:  20 * time.Millisecond,
		StoreBatch:       20000,
		StoreBatchBytes:  32 << 20,
		StateSessions:    pipeline.DefaultStateSessions,
		StateBytes:       pipeline.DefaultStateBytes,
		KafkaCompression: "snappy",
		LogLevel:         "info",
		Ingest:           ingest.Defaults(),
		MCP:              mcpproxy.Defaults(),
	}
}

// RegisterFlags binds every field to a flag on fs, with the field's current
// value as the default.
func (c *Config) RegisterFlags(fs *flag.FlagSet) {
	fs.StringVar(&c.Target, "target", c.Target, `stages to run: "all" or a comma-separated list of `+strings.Join(Stages, ",")+` (and mcp-proxy, which "all" does not include)`)
	fs.Func("brokers", "comma-separated Kafka seed brokers (default: run the embedded broker)", func(s string) error {
		c.Brokers = nil
		for _, b := range strings.Split(s, ",") {
			if b = strings.TrimSpace(b); b != "" {
				c.Brokers = append(c.Brokers, b)
			}
		}
		return nil
	})
	fs.StringVar(&c.DataDir, "data-dir", c.DataDir, "data directory of the embedded broker")
	fs.StringVar(&c.KafkaAddr, "kafka-addr", c.KafkaAddr, "listen address of the embedded Kafka broker")
	fs.BoolVar(&c.KafkaSyncWrites, "kafka-sync-writes", c.KafkaSyncWrites, "embedded Kafka broker: fsync every produced batch before acknowledging it (survives power loss; slower)")
	fs.StringVar(&c.HTTPAddr, "http-addr", c.HTTPAddr, "listen address of the HTTP server (/healthz, /readyz, /metrics)")
	fs.StringVar(&c.AddrFile, "addr-file", c.AddrFile, "write the bound listen addresses as JSON to this file once listening (for port 0)")
	fs.StringVar(&c.TopicPrefix, "topic-prefix", c.TopicPrefix, "prefix of every topic name")
	fs.Func("partitions", fmt.Sprintf("partition count of the pipeline topics (default %d)", c.Partitions), func(s string) error {
		n, err := strconv.ParseInt(s, 10, 32)
		if err != nil {
			return err
		}
		c.Partitions = int32(n)
		return nil
	})
	fs.StringVar(&c.Instance, "instance", c.Instance, "instance name, unique per running instance and stable across restarts")
	fs.StringVar(&c.Manifests, "manifests", c.Manifests, "manifest registry directory laid out as DIR/TENANT/NAME.json")
	fs.StringVar(&c.Policy, "policy", c.Policy, "policy bundle directory (default: the built-in bundle)")
	fs.StringVar(&c.ShadowPolicy, "shadow-policy", c.ShadowPolicy, "candidate policy bundle directory decided beside the active one; disagreements are counted and written to <prefix>shadow-diffs, outcomes unchanged")
	fs.StringVar(&c.Archive, "archive", c.Archive, "policy archive directory: bundles and manifests by digest, for aegisctl replay (default <data-dir>/policy-archive)")
	fs.IntVar(&c.MaxEventBytes, "max-event-bytes", c.MaxEventBytes, "largest accepted event in bytes")
	fs.DurationVar(&c.SessionTimeout, "session-timeout", c.SessionTimeout, "consumer group session timeout: how long a crashed instance's partitions wait before moving")
	fs.DurationVar(&c.StallTimeout, "stall-timeout", c.StallTimeout, "how long a stage may make no progress before its Kafka client is replaced (1m..1h)")
	fs.IntVar(&c.MaxBatch, "max-batch", c.MaxBatch, "most records a stage handles in one transaction")
	fs.DurationVar(&c.SealerBatchWait, "sealer-batch-wait", c.SealerBatchWait, "how long the broker may hold the sealer's fetches to gather a larger batch (0 or 10ms..1s)")
	fs.IntVar(&c.StoreBatch, "store-batch", c.StoreBatch, "records the projector buffers before writing them to the audit store (it also writes 1 s after the first)")
	fs.IntVar(&c.StoreBatchBytes, "store-batch-bytes", c.StoreBatchBytes, "most record bytes in one write to the audit store (1 MiB..1 GiB)")
	fs.StringVar(&c.KafkaCompression, "kafka-compression", c.KafkaCompression, "compression of produced batches: "+strings.Join(stream.Compressions, ", "))
	c.KafkaSecurity.RegisterFlags(fs)
	fs.IntVar(&c.StateSessions, "state-sessions", c.StateSessions, "most session states a stage keeps in memory; the others are spilled under DATA-DIR/state-spill and read back when needed")
	fs.Int64Var(&c.StateBytes, "state-bytes", c.StateBytes, "most bytes of session state (encoded) the decider and the sealer keep in memory; beyond that the least recently used are spilled like those beyond --state-sessions")
	fs.BoolVar(&c.Pprof, "pprof", c.Pprof, "serve /debug/pprof/ on the HTTP listener (for diagnosing memory and CPU)")
	fs.BoolVar(&c.UnauthenticatedApprovals, "unauthenticated-approvals", c.UnauthenticatedApprovals, "decider: honour APPROVAL_DECIDED events without a valid grant, so anyone who can write the events topic can approve calls (default: refused with APPROVAL_UNAUTHENTICATED)")
	fs.BoolVar(&c.Dev, "dev", c.Dev, "development mode: relaxed security, loudly announced")
	fs.StringVar(&c.LogLevel, "log-level", c.LogLevel, "debug, info, warn or error")
	fs.StringVar(&c.Store, "store", c.Store, "audit store of the projector: sqlite:PATH or clickhouse://HOST:PORT/DB (default sqlite:DATA-DIR/audit.db)")
	c.Ingest.RegisterFlags(fs)
	c.MCP.RegisterFlags(fs)
}

// Load builds the configuration from args: defaults, then the YAML file
// named by --config (if any), then the flags, which override the file.
func Load(args []string, stderr io.Writer) (Config, error) {
	probe := flag.NewFlagSet("aegisd", flag.ContinueOnError)
	probe.SetOutput(stderr)
	cfg := Defaults()
	configPath := probe.String("config", "", "YAML configuration file; flags override it")
	cfg.RegisterFlags(probe)
	if err := probe.Parse(args); err != nil {
		return Config{}, err
	}
	// Parsing stops at the first argument that is not a flag, and every
	// flag after it would be dropped: "--dev false" sets --dev and ends
	// the flags there.
	if probe.NArg() > 0 {
		return Config{}, fmt.Errorf("unexpected argument %q: aegisd takes flags only (a boolean flag takes its value as --flag=false)", probe.Arg(0))
	}
	if *configPath == "" {
		return cfg, cfg.Validate()
	}
	cfg = Defaults()
	raw, err := os.ReadFile(*configPath)
	if err != nil {
		return Config{}, fmt.Errorf("config: %w", err)
	}
	// A file with no setting yet (empty, or comments only) is no document:
	// the defaults stand. A second document would be ignored, its keys
	// unchecked, so it is refused.
	if err := yamldoc.DecodeStrict(raw, &cfg); err != nil && !errors.Is(err, yamldoc.ErrEmpty) {
		if errors.Is(err, yamldoc.ErrMoreDocuments) {
			return Config{}, fmt.Errorf("config %s: want one YAML document, found more", *configPath)
		}
		return Config{}, fmt.Errorf("config %s: %w", *configPath, err)
	}
	fs := flag.NewFlagSet("aegisd", flag.ContinueOnError)
	fs.SetOutput(stderr)
	fs.String("config", "", "")
	cfg.RegisterFlags(fs)
	if err := fs.Parse(args); err != nil {
		return Config{}, err
	}
	return cfg, cfg.Validate()
}

// Targets returns the stages to run, in start order.
func (c *Config) Targets() ([]string, error) {
	if c.Target == TargetAll {
		return Stages, nil
	}
	var out []string
	for _, t := range strings.Split(c.Target, ",") {
		t = strings.TrimSpace(t)
		if t == TargetAll {
			for _, st := range Stages {
				if !slices.Contains(out, st) {
					out = append(out, st)
				}
			}
			continue
		}
		if !slices.Contains(Stages, t) && t != TargetMCPProxy {
			return nil, fmt.Errorf("target %q: unknown stage (known: all, %s, %s)", t, strings.Join(Stages, ", "), TargetMCPProxy)
		}
		if !slices.Contains(out, t) {
			out = append(out, t)
		}
	}
	// Keep the documented start order whatever the flag's order.
	slices.SortFunc(out, func(a, b string) int { return slices.Index(Stages, a) - slices.Index(Stages, b) })
	return out, nil
}

// ArchiveDir is Archive, or the default under DataDir.
func (c *Config) ArchiveDir() string {
	if c.Archive != "" {
		return c.Archive
	}
	return filepath.Join(c.DataDir, "policy-archive")
}

// SpillDir is where the stages spill session states that do not fit in
// memory.
func (c *Config) SpillDir() string { return filepath.Join(c.DataDir, "state-spill") }

// StoreURL is Store, or the embedded default under DataDir.
func (c *Config) StoreURL() string {
	if c.Store != "" {
		return c.Store
	}
	return "sqlite:" + filepath.Join(c.DataDir, "audit.db")
}

// Validate checks the configuration.
func (c *Config) Validate() error {
	var errs []error
	if _, err := c.Targets(); err != nil {
		errs = append(errs, err)
	}
	if c.Partitions < 1 || c.Partitions > 10000 {
		errs = append(errs, fmt.Errorf("partitions %d: must be 1..10000", c.Partitions))
	}
	if err := pipeline.ValidatePrefix(c.TopicPrefix); err != nil {
		errs = append(errs, err)
	}
	if c.Instance == "" {
		errs = append(errs, errors.New("instance: must not be empty"))
	}
	if c.MaxEventBytes < 1024 || c.MaxEventBytes > 64<<20 {
		errs = append(errs, fmt.Errorf("max-event-bytes %d: must be 1024..%d", c.MaxEventBytes, 64<<20))
	} else if c.Ingest.MaxBodyBytes < int64(c.MaxEventBytes) {
		errs = append(errs, fmt.Errorf("max-body-bytes %d: must be at least max-event-bytes (%d), or no event of that size could be sent", c.Ingest.MaxBodyBytes, c.MaxEventBytes))
	}
	if c.SessionTimeout < time.Second || c.SessionTimeout > 30*time.Minute {
		errs = append(errs, fmt.Errorf("session-timeout %s: must be 1s..30m", c.SessionTimeout))
	} else if len(c.Brokers) == 0 && (c.SessionTimeout < embeddedMinSessionTimeout || c.SessionTimeout > embeddedMaxSessionTimeout) {
		// The embedded broker refuses every join outside its bounds: the
		// stages would start and never own a partition.
		errs = append(errs, fmt.Errorf("session-timeout %s: the embedded broker takes %s..%s", c.SessionTimeout, embeddedMinSessionTimeout, embeddedMaxSessionTimeout))
	}
	if c.StallTimeout < time.Minute || c.StallTimeout > time.Hour {
		errs = append(errs, fmt.Errorf("stall-timeout %s: must be 1m..1h", c.StallTimeout))
	}
	if !slices.Contains(stream.Compressions, c.KafkaCompression) {
		errs = append(errs, fmt.Errorf("kafka-compression %q: want one of %s", c.KafkaCompression, strings.Join(stream.Compressions, ", ")))
	}
	if c.StateBytes < 1<<20 {
		errs = append(errs, fmt.Errorf("state-bytes %d: must be at least 1 MiB (1048576)", c.StateBytes))
	}
	if c.StateSessions < 1 {
		errs = append(errs, fmt.Errorf("state-sessions %d: must be at least 1", c.StateSessions))
	}
	if c.MaxBatch < 1 || c.MaxBatch > 100000 {
		errs = append(errs, fmt.Errorf("max-batch %d: must be 1..100000", c.MaxBatch))
	}
	if c.SealerBatchWait != 0 && (c.SealerBatchWait < 10*time.Millisecond || c.SealerBatchWait > time.Second) {
		errs = append(errs, fmt.Errorf("sealer-batch-wait %s: must be 0 or 10ms..1s", c.SealerBatchWait))
	}
	if c.StoreBatch < 1 || c.StoreBatch > 1000000 {
		errs = append(errs, fmt.Errorf("store-batch %d: must be 1..1000000", c.StoreBatch))
	}
	if c.StoreBatchBytes < 1<<20 || c.StoreBatchBytes > 1<<30 {
		errs = append(errs, fmt.Errorf("store-batch-bytes %d: must be %d..%d", c.StoreBatchBytes, 1<<20, 1<<30))
	}
	if len(c.Brokers) == 0 && c.DataDir == "" {
		errs = append(errs, errors.New("data-dir: required for the embedded broker"))
	}
	if err := c.KafkaSecurity.Validate(); err != nil {
		errs = append(errs, err)
	}
	if len(c.Brokers) == 0 && !c.Dev && !loopback(c.KafkaAddr) {
		// Deny by default: the embedded broker authenticates no one, and
		// whoever reaches it can write every topic, the decisions the
		// sealer seals included.
		errs = append(errs, fmt.Errorf("kafka-addr %s: the embedded broker has no TLS, authentication or ACLs, so anyone who reaches it could write any topic; "+
			"listen on loopback, or run external brokers (--brokers with --kafka-tls*, --kafka-sasl-* and ACLs), or pass --dev", c.KafkaAddr))
	}
	if len(c.Brokers) == 0 && c.KafkaSecurity.Enabled() {
		errs = append(errs, errors.New("kafka-tls*, kafka-sasl-*: only with --brokers (the embedded broker listens on loopback without TLS or SASL)"))
	}
	if len(c.Brokers) > 0 && c.KafkaSyncWrites {
		errs = append(errs, errors.New("kafka-sync-writes: only for the embedded broker (with --brokers, durability is the brokers' setting)"))
	}
	var lvl slog.Level
	if err := lvl.UnmarshalText([]byte(c.LogLevel)); err != nil {
		errs = append(errs, fmt.Errorf("log-level %q: %w", c.LogLevel, err))
	}
	if _, err := stores.Parse(c.StoreURL()); err != nil {
		errs = append(errs, fmt.Errorf("store: %w", err))
	}
	if err := c.Ingest.Validate(c.Dev); err != nil {
		errs = append(errs, err)
	}
	if targets, _ := c.Targets(); slices.Contains(targets, TargetDecider) && len(c.Brokers) > 0 && !c.Ingest.Enabled(c.Dev) &&
		c.Ingest.ApprovalSecretFile == "" && !c.UnauthenticatedApprovals {
		// Deny by default: the gateway that signs approvals runs in
		// another process, and a secret made up here would refuse them
		// all, silently.
		errs = append(errs, errors.New("approval-secret-file: a decider without the HTTP gateway in its process checks the grants of APPROVAL_DECIDED with the gateway's secret; "+
			"give it the gateways' --approval-secret-file (or --unauthenticated-approvals to honour approvals from anyone who can write the events topic)"))
	}
	if targets, _ := c.Targets(); slices.Contains(targets, TargetMCPProxy) {
		if err := c.MCP.Validate(); err != nil {
			errs = append(errs, err)
		}
		if !c.Ingest.Enabled(c.Dev) {
			errs = append(errs, errors.New("target mcp-proxy: publishes through the HTTP gateway, which needs --api-keys or --dev"))
		}
	}
	return errors.Join(errs...)
}
