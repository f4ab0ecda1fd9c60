package daemon

import (
	"context"
	"crypto/rand"
	"crypto/tls"
	"encoding/json"
	"errors"
	"fmt"
	"io/fs"
	"log/slog"
	"net"
	"net/http"
	"net/http/pprof"
	"os"
	"path/filepath"
	"slices"
	"sync"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/collectors"
	"github.com/prometheus/client_golang/prometheus/promhttp"

	"aegis.dev/aegis/decider"
	"aegis.dev/aegis/decider/policy"
	"aegis.dev/aegis/ingest"
	"aegis.dev/aegis/internal/grant"
	"aegis.dev/aegis/internal/pipeline"
	"aegis.dev/aegis/internal/statecache"
	"aegis.dev/aegis/internal/stream"
	"aegis.dev/aegis/projector/stores"
	"aegis.dev/aegis/replayer"
	"aegis.dev/aegis/schemas/manifest"
	"aegis.dev/aegis/sealer"
)

// Daemon is a running aegisd. Create it with New, run it with Run.
type Daemon struct {
	cfg    Config
	log    *slog.Logger
	reg    *prometheus.Registry
	topics pipeline.Topics

	// sec is how the clients reach --brokers (set by Run before any
	// client starts; zero for the embedded broker).
	sec stream.Security

	mu          sync.Mutex
	brokers     []string
	transactors map[string]stageRunner
	httpAddr    net.Addr
	started     chan struct{}
	readStore   stores.Store // the audit store the HTTP API reads, if any
	startOnce   sync.Once

	// wrapStage, if set (tests), wraps each stage Run starts.
	wrapStage func(name string, t stageRunner) stageRunner
}

// New returns a daemon for cfg (which must be valid). Metrics are
// registered on a registry of the daemon's own, served at /metrics.
func New(cfg Config, log *slog.Logger) *Daemon {
	reg := prometheus.NewRegistry()
	reg.MustRegister(collectors.NewGoCollector(), collectors.NewProcessCollector(collectors.ProcessCollectorOpts{}))
	return &Daemon{cfg: cfg, log: log, reg: reg, topics: pipeline.NewTopics(cfg.TopicPrefix),
		transactors: make(map[string]stageRunner), started: make(chan struct{})}
}

// Brokers returns the brokers the stages use, once Run has started them
// (nil if Run failed before).
func (d *Daemon) Brokers() []string {
	<-d.started
	d.mu.Lock()
	defer d.mu.Unlock()
	return d.brokers
}

// HTTPAddr returns the address the HTTP server listens on, once started.
func (d *Daemon) HTTPAddr() string {
	<-d.started
	d.mu.Lock()
	defer d.mu.Unlock()
	if d.httpAddr == nil {
		return ""
	}
	return d.httpAddr.String()
}

// MCPAddr returns the address the MCP proxy target listens on for agents
// ("" when the target is off, in stdio mode, or before it listens), so
// --mcp-addr can name port 0.
func (d *Daemon) MCPAddr() string {
	d.mu.Lock()
	s, ok := d.transactors[TargetMCPProxy].(*mcpStage)
	d.mu.Unlock()
	if !ok {
		return ""
	}
	return s.p.Addr()
}

// Ready reports whether every stage has caught up with its input.
func (d *Daemon) Ready() bool {
	d.mu.Lock()
	defer d.mu.Unlock()
	if len(d.transactors) == 0 {
		return false
	}
	for _, t := range d.transactors {
		if !t.Ready() {
			return false
		}
	}
	return true
}

// Run starts the broker (embedded mode), the HTTP server and the stages,
// and blocks until ctx is cancelled or a stage fails. Shutdown order: the
// HTTP server stops accepting first, then the stages drain in their start
// order (decider before sealer, so the sealer can finish what the decider
// committed), and the embedded broker closes last.
func (d *Daemon) Run(ctx context.Context) error {
	defer d.markStarted()
	cfg := d.cfg
	targets, err := cfg.Targets()
	if err != nil {
		return err
	}
	if cfg.Dev {
		d.log.Warn("DEVELOPMENT MODE: security is relaxed; never run --dev in production")
	}
	d.log.Info("starting aegisd", "config", cfg.redacted())
	for _, w := range cfg.openSecretFiles() {
		d.log.Warn("a secret file is readable by every user of this machine; make it readable by aegisd's user only (chmod 600, or defaultMode 0400 for a mounted secret)",
			"setting", w.setting, "file", w.path, "mode", w.mode.String())
	}

	if cfg.AddrFile != "" {
		// A file left by an earlier run must not name this run's ports.
		if err := os.Remove(cfg.AddrFile); err != nil && !errors.Is(err, fs.ErrNotExist) {
			return fmt.Errorf("aegisd: addr file: %w", err)
		}
	}
	brokers := cfg.Brokers
	if len(brokers) > 0 {
		if d.sec, err = cfg.KafkaSecurity.Load(); err != nil {
			return fmt.Errorf("aegisd: %w", err)
		}
		d.log.Info("kafka brokers", "brokers", brokers, "security", d.sec.String())
	}
	var emb *stream.Embedded
	if len(brokers) == 0 {
		// The broker outlives ctx (the stages end their transactions on
		// it at shutdown; emb.Close stops it), but a shutdown while it
		// starts, recovering from a crash, stops the start.
		brokerCtx, stopBroker := context.WithCancel(context.WithoutCancel(ctx))
		defer stopBroker()
		stopWatch := context.AfterFunc(ctx, stopBroker)
		emb, err = stream.StartEmbedded(brokerCtx, stream.EmbeddedConfig{
			DataDir: filepath.Join(cfg.DataDir, "kafka"), Addr: cfg.KafkaAddr, Partitions: cfg.Partitions, SyncWrites: cfg.KafkaSyncWrites,
		}, stream.WithLogger(d.log), stream.WithRegisterer(d.reg))
		if !stopWatch() {
			// Shut down while the broker started: nothing runs on it
			// yet. An interrupted crash recovery runs again at the next
			// start.
			if err == nil {
				emb.Close()
			} else if !errors.Is(err, context.Canceled) {
				return fmt.Errorf("aegisd: embedded broker: %w", err)
			}
			d.log.Info("shutdown requested while the embedded broker started")
			return nil
		}
		if err != nil {
			return fmt.Errorf("aegisd: embedded broker: %w", err)
		}
		defer emb.Close()
		brokers = emb.Brokers()
		d.log.Info("embedded Kafka broker listening", "addr", emb.Addr(), "data_dir", filepath.Join(cfg.DataDir, "kafka"))
		if !loopback(cfg.KafkaAddr) {
			d.log.Warn("DEVELOPMENT MODE: the embedded Kafka broker listens on a non-loopback address without TLS, authentication or ACLs; anyone who reaches it may write any topic", "flag", "--kafka-addr", "addr", cfg.KafkaAddr)
		}
	}
	specs := d.topics.Specs(cfg.Partitions, cfg.MaxEventBytes)
	if cfg.ShadowPolicy != "" {
		// Co-partitioned with the events topic: the decider writes each
		// disagreement to its event's partition.
		specs = append(specs, stream.TopicSpec{Name: cfg.shadowTopic(), Partitions: cfg.Partitions, Cleanup: stream.CleanupDelete})
	}
	if err := stream.EnsureTopics(ctx, brokers, specs, stream.WithSecurity(d.sec)); err != nil {
		return fmt.Errorf("aegisd: topics: %w", err)
	}

	api, err := d.newIngest(brokers)
	if err != nil {
		return err
	}
	type stage struct {
		name string
		t    stageRunner
	}
	var stages []stage
	// abandon releases what was opened when Run fails before the stages
	// and the API run (they release their own once they do).
	abandon := func() {
		if api != nil {
			api.Close()
		}
		if d.readStore != nil {
			_ = d.readStore.Close()
			d.readStore = nil
		}
		for _, s := range stages {
			if c, ok := s.t.(interface{ Close() error }); ok {
				_ = c.Close()
			}
		}
	}
	ln, err := d.listen()
	if err != nil {
		abandon()
		return err
	}
	srv := &http.Server{Handler: d.handler(api), ReadHeaderTimeout: 10 * time.Second,
		ReadTimeout: httpReadTimeout, IdleTimeout: 2 * time.Minute}

	for _, name := range targets {
		t, err := d.newStage(ctx, name, brokers, api)
		if err != nil {
			_ = ln.Close()
			abandon()
			if errors.Is(err, context.Canceled) && ctx.Err() != nil {
				d.log.Info("shutdown requested while aegisd started", "stage", name)
				return nil
			}
			return err
		}
		if d.wrapStage != nil {
			t = d.wrapStage(name, t)
		}
		stages = append(stages, stage{name, t})
	}
	d.mu.Lock()
	d.brokers, d.httpAddr = brokers, ln.Addr()
	for _, s := range stages {
		d.transactors[s.name] = s.t
	}
	d.mu.Unlock()
	d.markStarted()

	runCtx, cancel := context.WithCancel(ctx)
	defer cancel()
	errc := make(chan error, len(stages)+3)
	apiCtx, apiStop := context.WithCancel(context.WithoutCancel(runCtx))
	apiDone := make(chan struct{})
	go func() {
		defer close(apiDone)
		if api == nil {
			return
		}
		if err := api.Run(apiCtx); err != nil {
			errc <- fmt.Errorf("aegisd: ingest: %w", err)
		}
	}()
	go func() {
		if err := srv.Serve(ln); err != nil && !errors.Is(err, http.ErrServerClosed) {
			errc <- fmt.Errorf("aegisd: http: %w", err)
		}
	}()
	d.log.Info("http server listening", "addr", ln.Addr().String())

	stageCtx := make([]context.CancelFunc, len(stages))
	done := make([]chan struct{}, len(stages))
	for i, s := range stages {
		sctx, scancel := context.WithCancel(context.WithoutCancel(runCtx))
		stageCtx[i], done[i] = scancel, make(chan struct{})
		go func() {
			defer close(done[i])
			if err := s.t.Run(sctx); err != nil {
				errc <- fmt.Errorf("aegisd: %s: %w", s.name, err)
			}
		}()
		d.log.Info("stage started", "stage", s.name)
	}

	if cfg.AddrFile != "" {
		embAddr := ""
		if emb != nil {
			embAddr = emb.Addr()
		}
		go func() {
			if err := d.writeAddrFile(runCtx, embAddr, slices.Contains(targets, TargetMCPProxy) && !cfg.MCP.Stdio); err != nil {
				errc <- err
			}
		}()
		defer func() { _ = os.Remove(cfg.AddrFile) }()
	}

	var runErr error
	select {
	case <-ctx.Done():
	case runErr = <-errc:
		if errors.Is(runErr, errStdioEnded) {
			d.log.Info("the MCP stdio session ended; stopping")
			runErr = nil
			break
		}
		d.log.Error("stopping after a failure", "err", runErr)
	}
	shutdownCtx, stop := context.WithTimeout(context.WithoutCancel(ctx), 30*time.Second)
	defer stop()
	// The MCP proxy publishes through the gateway: it stops first (its
	// server waits for the calls in flight, whose execution must still be
	// recorded), while the gateway's producer is open.
	stopped := make([]bool, len(stages))
	for i, s := range stages {
		if s.name == TargetMCPProxy {
			stageCtx[i]()
			<-done[i]
			stopped[i] = true
			d.log.Info("stage stopped", "stage", s.name)
		}
	}
	if api != nil {
		api.Drain() // approval waits would hold Shutdown for up to --approval-ttl
	}
	_ = srv.Shutdown(shutdownCtx)
	apiStop()
	<-apiDone
	if d.readStore != nil {
		_ = d.readStore.Close()
	}
	for i := range stages {
		if stopped[i] {
			continue
		}
		stageCtx[i]()
		<-done[i]
		d.log.Info("stage stopped", "stage", stages[i].name)
	}
	// A stage whose session did not stop at shutdown was abandoned
	// (stream_stalled): the exit status says so.
drain:
	for runErr == nil {
		select {
		case err := <-errc:
			if errors.Is(err, stream.ErrStalled) {
				d.log.Error("a stage did not stop cleanly", "err", err)
				runErr = err
			}
		default:
			break drain
		}
	}
	return runErr
}

// writeAddrFile writes the bound addresses to Config.AddrFile (JSON object
// with "http", "kafka" when embedded, "mcp" when the MCP proxy serves
// HTTP), once the MCP proxy listens. The file appears whole (rename).
func (d *Daemon) writeAddrFile(ctx context.Context, kafka string, mcp bool) error {
	addrs := map[string]string{"http": d.HTTPAddr()}
	if kafka != "" {
		addrs["kafka"] = kafka
	}
	if mcp {
		for d.MCPAddr() == "" {
			select {
			case <-ctx.Done():
				return nil
			case <-time.After(10 * time.Millisecond):
			}
		}
		addrs["mcp"] = d.MCPAddr()
	}
	b, err := json.Marshal(addrs)
	if err != nil {
		return err
	}
	tmp := d.cfg.AddrFile + ".tmp"
	if err := os.WriteFile(tmp, append(b, '\n'), 0o644); err != nil {
		return fmt.Errorf("aegisd: addr file: %w", err)
	}
	if err := os.Rename(tmp, d.cfg.AddrFile); err != nil {
		return fmt.Errorf("aegisd: addr file: %w", err)
	}
	d.log.Info("listen addresses written", "file", d.cfg.AddrFile, "addrs", addrs)
	return nil
}

// markStarted releases Brokers and HTTPAddr callers, once.
func (d *Daemon) markStarted() { d.startOnce.Do(func() { close(d.started) }) }

func (d *Daemon) newStage(ctx context.Context, name string, brokers []string, api *ingest.Server) (stageRunner, error) {
	cfg := d.cfg
	switch name {
	case TargetProjector:
		return d.newProjector(ctx, brokers)
	case TargetMCPProxy:
		return d.newMCPProxy(api)
	}
	var tc stream.TransactConfig
	var newProcessor func(int32) stream.Processor
	state := pipeline.StateConfig{Sessions: cfg.StateSessions, Bytes: cfg.StateBytes, Dir: cfg.SpillDir()}
	if err := os.MkdirAll(state.Dir, 0o700); err != nil {
		return nil, fmt.Errorf("aegisd: %s: spill directory: %w", name, err)
	}
	if err := statecache.CheckDir(state.Dir); err != nil {
		return nil, fmt.Errorf("aegisd: %s: spill directory: %w", name, err)
	}
	switch name {
	case TargetDecider:
		eng, err := d.engine()
		if err != nil {
			return nil, err
		}
		secret, err := d.deciderApprovalSecret(api)
		if err != nil {
			return nil, err
		}
		sc := decider.StageConfig{Topics: d.topics, Partitions: cfg.Partitions, MaxEventBytes: cfg.MaxEventBytes, State: state, ApprovalSecret: secret}
		if cfg.ShadowPolicy != "" {
			if sc.Shadow, err = d.shadowEngine(); err != nil {
				return nil, err
			}
			sc.ShadowTopic = cfg.shadowTopic()
		}
		st := decider.NewStage(eng, sc, d.reg, d.log)
		tc, newProcessor = st.TransactConfig(), st.NewProcessor
	case TargetSealer:
		// A decided event is the accepted event plus its decision: the
		// sealer must take every event the decider accepted, or the
		// session's chain would stop at the first large one.
		st := sealer.New(sealer.Config{Topics: d.topics, Partitions: cfg.Partitions, MaxEventBytes: pipeline.DecidedMaxBytes(cfg.MaxEventBytes),
			MaxRecordBytes: pipeline.MaxRecordBytes(cfg.MaxEventBytes), State: state}, d.reg, d.log)
		tc, newProcessor = st.TransactConfig(), st.NewProcessor
		tc.BatchWait = cfg.SealerBatchWait
	default:
		return nil, fmt.Errorf("aegisd: unknown stage %q", name)
	}
	tc.Brokers = brokers
	tc.MaxRecordBytes = pipeline.StageMaxRecordBytes(cfg.MaxEventBytes)
	tc.MaxBatch = cfg.MaxBatch
	tc.Compression = cfg.KafkaCompression
	tc.Group = cfg.TopicPrefix + name
	tc.TransactionalID = cfg.TopicPrefix + name + "-" + cfg.Instance
	tc.SessionTimeout = cfg.SessionTimeout
	tc.StallTimeout = cfg.StallTimeout
	tc.HeartbeatInterval = min(3*time.Second, cfg.SessionTimeout/3)
	t, err := stream.NewTransactor(tc, newProcessor, stream.WithLogger(d.log), stream.WithRegisterer(d.reg), stream.WithStage(name), stream.WithSecurity(d.sec))
	if err != nil {
		return nil, fmt.Errorf("aegisd: %s: %w", name, err)
	}
	return t, nil
}

// engine builds the decision engine: the policy bundle must compile and the
// manifest registry must load, or the daemon refuses to start (deny by
// default would otherwise silently deny everything).
func (d *Daemon) engine() (*decider.Engine, error) {
	bundle := policy.Default()
	if d.cfg.Policy != "" {
		var err error
		if bundle, err = policy.LoadDir(d.cfg.Policy); err != nil {
			return nil, fmt.Errorf("aegisd: policy: %w", err)
		}
	}
	pe, err := policy.New(bundle)
	if err != nil {
		return nil, fmt.Errorf("aegisd: policy: %w", err)
	}
	var reg *manifest.Registry
	if d.cfg.Manifests != "" {
		if reg, err = manifest.LoadDir(d.cfg.Manifests); err != nil {
			return nil, fmt.Errorf("aegisd: manifests: %w", err)
		}
	} else {
		d.log.Warn("no --manifests directory: every tool call will be denied MANIFEST_UNKNOWN")
	}
	d.log.Info("policy loaded", "revision", pe.Revision())
	// The archive keeps what decisions name (policy_revision,
	// manifest_digest), so that aegisctl replay --mode exact can load them.
	archive := &replayer.Archive{Dir: d.cfg.ArchiveDir()}
	if err := archive.PutBundle(bundle); err != nil {
		return nil, fmt.Errorf("aegisd: archive: %w", err)
	}
	if reg != nil {
		if err := archive.PutRegistry(reg); err != nil {
			return nil, fmt.Errorf("aegisd: archive: %w", err)
		}
	}
	if reg == nil {
		return decider.NewEngine(pe, nil), nil
	}
	return decider.NewEngine(pe, reg), nil
}

// shadowEngine builds the engine of --shadow-policy: the candidate bundle
// with the same manifests as the active engine.
func (d *Daemon) shadowEngine() (*decider.Engine, error) {
	bundle, err := policy.LoadDir(d.cfg.ShadowPolicy)
	if err != nil {
		return nil, fmt.Errorf("aegisd: shadow policy: %w", err)
	}
	pe, err := policy.New(bundle)
	if err != nil {
		return nil, fmt.Errorf("aegisd: shadow policy: %w", err)
	}
	d.log.Info("shadow policy loaded", "revision", pe.Revision(), "topic", d.cfg.shadowTopic())
	if d.cfg.Manifests == "" {
		return decider.NewEngine(pe, nil), nil
	}
	reg, err := manifest.LoadDir(d.cfg.Manifests)
	if err != nil {
		return nil, fmt.Errorf("aegisd: manifests: %w", err)
	}
	return decider.NewEngine(pe, reg), nil
}

// httpReadTimeout bounds reading one request, body included, so that a
// client that stops sending holds no connection forever. It does not bound
// a handler's wait once the body is read (net/http clears the deadline
// then): a proposal may wait for its approval far longer.
var httpReadTimeout = 2 * time.Minute

// shadowTopic receives the shadow policy's disagreements.
func (c *Config) shadowTopic() string { return pipeline.ShadowTopic(c.TopicPrefix) }

func (d *Daemon) handler(api *ingest.Server) http.Handler {
	mux := http.NewServeMux()
	if api != nil {
		api.Routes(mux)
	}
	mux.HandleFunc("GET /healthz", func(w http.ResponseWriter, _ *http.Request) {
		w.Header().Set("Content-Type", "application/json")
		_, _ = w.Write([]byte(`{"status":"ok"}` + "\n"))
	})
	mux.HandleFunc("GET /readyz", func(w http.ResponseWriter, _ *http.Request) {
		w.Header().Set("Content-Type", "application/json")
		if !d.Ready() || (api != nil && !api.Ready()) {
			w.WriteHeader(http.StatusServiceUnavailable)
			_, _ = w.Write([]byte(`{"status":"catching up"}` + "\n"))
			return
		}
		_, _ = w.Write([]byte(`{"status":"ready"}` + "\n"))
	})
	mux.Handle("GET /metrics", promhttp.HandlerFor(d.reg, promhttp.HandlerOpts{Registry: d.reg}))
	if d.cfg.Pprof {
		// No /debug/pprof/cmdline: the command line may hold the store
		// URL's password. With the API enabled the profiles need an
		// operator key, like the rest of the API.
		prof := http.NewServeMux()
		prof.HandleFunc("/debug/pprof/", pprof.Index)
		prof.HandleFunc("/debug/pprof/profile", pprof.Profile)
		prof.HandleFunc("/debug/pprof/symbol", pprof.Symbol)
		prof.HandleFunc("/debug/pprof/trace", pprof.Trace)
		var h http.Handler = prof
		if api != nil {
			h = api.Operator(prof)
		}
		mux.Handle("/debug/pprof/", h)
	}
	return ingest.RouteErrors(mux)
}

// redacted returns the configuration as log attributes. It holds no
// secrets today; fields that will (API keys, TLS keys) must be left out here.
func (c Config) redacted() map[string]any {
	return map[string]any{
		"target": c.Target, "brokers": c.Brokers, "data_dir": c.DataDir, "kafka_addr": c.KafkaAddr, "kafka_sync_writes": c.KafkaSyncWrites,
		"http_addr": c.HTTPAddr, "addr_file": c.AddrFile, "topic_prefix": c.TopicPrefix, "partitions": c.Partitions,
		"instance": c.Instance, "manifests": c.Manifests, "policy": c.Policy, "unauthenticated_approvals": c.UnauthenticatedApprovals,
		"store": redactURL(c.StoreURL()), "max_event_bytes": c.MaxEventBytes, "max_batch": c.MaxBatch, "store_batch": c.StoreBatch, "store_batch_bytes": c.StoreBatchBytes, "session_timeout": c.SessionTimeout.String(), "dev": c.Dev, "pprof": c.Pprof,
		"ingest": c.Ingest.Redacted(),
		"mcp":    c.mcpRedacted(),
		// Paths and the user name only: the password stays in its file.
		"kafka_tls": c.KafkaSecurity.TLS, "kafka_tls_ca_file": c.KafkaSecurity.TLSCAFile, "kafka_tls_cert_file": c.KafkaSecurity.TLSCertFile,
		"kafka_tls_key_file": c.KafkaSecurity.TLSKeyFile, "kafka_tls_server_name": c.KafkaSecurity.TLSServerName,
		"kafka_sasl_mechanism": c.KafkaSecurity.SASLMechanism, "kafka_sasl_username": c.KafkaSecurity.SASLUsername,
		"kafka_sasl_password_file": c.KafkaSecurity.SASLPasswordFile,
	}
}

// openSecret is a secret file that every user of the machine can read.
type openSecret struct {
	setting, path string
	mode          fs.FileMode
}

// openSecretFiles lists the configured files holding secrets (the approval
// secret, the Kafka SASL password, the TLS private keys) that other users
// can read. They are warned about rather than refused: a mounted secret is
// often world-readable by default, and refusing would stop a deployment
// that works. Files that cannot be read are left to the code that reads
// them, which names the error.
func (c Config) openSecretFiles() []openSecret {
	var open []openSecret
	for _, f := range []struct{ setting, path string }{
		{"approval-secret-file", c.Ingest.ApprovalSecretFile},
		{"kafka-sasl-password-file", c.KafkaSecurity.SASLPasswordFile},
		{"kafka-tls-key-file", c.KafkaSecurity.TLSKeyFile},
		{"tls-key", c.Ingest.TLSKey},
	} {
		if f.path == "" {
			continue
		}
		if st, err := os.Stat(f.path); err == nil && st.Mode().IsRegular() && st.Mode().Perm()&0o004 != 0 {
			open = append(open, openSecret{f.setting, f.path, st.Mode().Perm()})
		}
	}
	return open
}

// deciderApprovalSecret returns the secret the decider checks approval
// grants with (docs/api.md#approvals): --approval-secret-file; else the
// secret of the gateway in this process (generated for it); nil with
// --unauthenticated-approvals; else, on the embedded broker with no
// gateway in the process, a secret generated here and held by nobody, so
// that no APPROVAL_DECIDED is honoured. A decider on external brokers
// with none of these does not pass Config.Validate.
func (d *Daemon) deciderApprovalSecret(api *ingest.Server) ([]byte, error) {
	cfg := d.cfg
	if cfg.UnauthenticatedApprovals {
		d.log.Warn("UNAUTHENTICATED APPROVALS: the decider honours every APPROVAL_DECIDED, grant or not; anyone who can write the events topic can approve any call (--unauthenticated-approvals)")
		return nil, nil
	}
	if api != nil {
		if api.GeneratedApprovalSecret() && len(cfg.Brokers) > 0 {
			d.log.Warn("approval secret generated for this process: its decider honours only approvals signed by this process's gateway; give every aegisd of the deployment the same --approval-secret-file")
		}
		return api.ApprovalSecret(), nil
	}
	if cfg.Ingest.ApprovalSecretFile != "" {
		s, err := grant.LoadSecret(cfg.Ingest.ApprovalSecretFile)
		if err != nil {
			return nil, fmt.Errorf("aegisd: decider: %w", err)
		}
		return s, nil
	}
	if len(cfg.Brokers) > 0 {
		// Config.Validate refuses this.
		return nil, errors.New("aegisd: decider: no approval secret (--approval-secret-file) and no --unauthenticated-approvals")
	}
	d.log.Info("no HTTP gateway in this process and no --approval-secret-file: the decider honours no APPROVAL_DECIDED (each needs a grant of the approval secret)")
	secret := make([]byte, grant.MinSecretBytes)
	if _, err := rand.Read(secret); err != nil {
		return nil, fmt.Errorf("aegisd: decider: approval secret: %w", err)
	}
	return secret, nil
}

// newIngest builds the HTTP API when it is enabled (--dev or --api-keys);
// nil otherwise. It decides with the same policy and manifests as the
// decider stage.
func (d *Daemon) newIngest(brokers []string) (*ingest.Server, error) {
	if !d.cfg.Ingest.Enabled(d.cfg.Dev) {
		d.log.Info("HTTP API disabled: no --api-keys (only /healthz, /readyz and /metrics are served)")
		return nil, nil
	}
	if d.cfg.Dev {
		d.log.Warn("DEVELOPMENT MODE: the HTTP API runs WITHOUT AUTHENTICATION; any caller may act as any tenant")
		for _, a := range []struct{ flag, addr string }{{"--http-addr", d.cfg.HTTPAddr}, {"--mcp-addr", d.cfg.MCP.Addr}} {
			if targets, _ := d.cfg.Targets(); a.flag == "--mcp-addr" && (!slices.Contains(targets, TargetMCPProxy) || d.cfg.MCP.Stdio) {
				continue
			}
			if !loopback(a.addr) {
				d.log.Warn("DEVELOPMENT MODE on a non-loopback address: anyone who can reach it may act as any tenant", "flag", a.flag, "addr", a.addr)
			}
		}
	}
	eng, err := d.engine()
	if err != nil {
		return nil, err
	}
	// The session endpoints read the audit store the projector writes
	// (this process's or another's) through a handle of their own.
	st, err := stores.Open(context.Background(), d.cfg.StoreURL())
	if err != nil {
		return nil, fmt.Errorf("aegisd: ingest: audit store: %w", err)
	}
	api, err := ingest.New(d.cfg.Ingest, ingest.Env{Brokers: brokers, Topics: d.topics, MaxEventBytes: d.cfg.MaxEventBytes, Dev: d.cfg.Dev, Engine: eng,
		Compression: d.cfg.KafkaCompression, Security: d.sec},
		ingest.WithLogger(d.log), ingest.WithRegisterer(d.reg), ingest.WithStore(st))
	if err != nil {
		_ = st.Close()
		return nil, fmt.Errorf("aegisd: ingest: %w", err)
	}
	d.readStore = st
	return api, nil
}

// listen opens the HTTP listener, with TLS when configured.
func (d *Daemon) listen() (net.Listener, error) {
	ln, err := net.Listen("tcp", d.cfg.HTTPAddr)
	if err != nil {
		return nil, fmt.Errorf("aegisd: http listener: %w", err)
	}
	tc, err := d.cfg.Ingest.TLSConfig()
	if err != nil {
		_ = ln.Close()
		return nil, err
	}
	if tc != nil {
		ln = tls.NewListener(ln, tc)
	}
	return ln, nil
}

// loopback reports whether addr (host:port) listens on loopback only: an
// empty host or 0.0.0.0/:: listen everywhere.
func loopback(addr string) bool {
	host, _, err := net.SplitHostPort(addr)
	if err != nil {
		return false
	}
	if host == "localhost" {
		return true
	}
	ip := net.ParseIP(host)
	return ip != nil && ip.IsLoopback()
}
