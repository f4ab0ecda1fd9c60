package ingest

import (
	"context"
	"crypto/rand"
	"crypto/tls"
	"crypto/x509"
	"errors"
	"fmt"
	"log/slog"
	"net/http"
	"os"
	"sync"
	"sync/atomic"
	"time"

	"github.com/prometheus/client_golang/prometheus"

	"aegis.dev/aegis/decider"
	"aegis.dev/aegis/internal/grant"
	"aegis.dev/aegis/internal/pipeline"
	"aegis.dev/aegis/internal/stream"
	"aegis.dev/aegis/schemas/envelope"
)

// Env is what the program running the gateway provides: where the
// pipeline is and how it is configured.
type Env struct {
	// Brokers are the Kafka seed brokers.
	Brokers []string
	// Topics are the pipeline's topics.
	Topics pipeline.Topics
	// MaxEventBytes bounds one event (aegisd's --max-event-bytes; 0 means
	// envelope.DefaultMaxEventBytes).
	MaxEventBytes int
	// Dev disables authentication (every caller is an operator of every
	// tenant) and allows caller-supplied manifests. The caller announces it.
	Dev bool
	// Engine answers stateless decisions with the server's policy and
	// manifest registry.
	Engine *decider.Engine
	// Compression of the batches the gateway publishes (aegisd's
	// --kafka-compression; "" is snappy).
	Compression string
	// Security is how the gateway's clients reach the brokers (TLS,
	// SASL; zero: plaintext).
	Security stream.Security
}

// Option sets a program-level dependency of a Server.
type Option func(*Server)

// WithLogger sets the logger (default: discard).
func WithLogger(l *slog.Logger) Option { return func(s *Server) { s.log = l } }

// WithRegisterer registers the gateway's metrics on reg (default: none).
func WithRegisterer(reg prometheus.Registerer) Option { return func(s *Server) { s.reg = reg } }

// WithClock sets the wall clock used for rate limits, approval expiry and
// the timestamps of server-originated events (default time.Now).
func WithClock(now func() time.Time) Option { return func(s *Server) { s.now = now } }

// Server is the HTTP gateway. Create it with New, mount Routes on a mux,
// and keep Run running while the mux serves: Run owns the producer, the
// shared reply tail and approval expiry.
type Server struct {
	cfg     Config
	env     Env
	log     *slog.Logger
	reg     prometheus.Registerer
	now     func() time.Time
	store   Store
	keys    *Keys
	secret  []byte
	limit   *limiter
	dec     envelope.Decoder
	replies *replies
	prod    *stream.Producer
	appr    *approvals
	metrics *metrics

	hintMu   sync.Mutex
	hints    map[string]uint64 // session key -> highest seq seen accepted
	seqLocks seqLocks

	tailOnce   sync.Once
	tailWanted chan struct{} // closed by startTail
	tailFixed  chan struct{} // closed by Run once the tail's start offsets are listed
	tailOpen   atomic.Bool   // the tail's consumer exists

	// life ends when Run returns; background confirmations of approval
	// decisions (bg) run under it.
	life    context.Context
	endLife context.CancelFunc
	bgMu    sync.Mutex // orders bg.Add before endLife
	bg      sync.WaitGroup

	// draining is closed by Drain: requests waiting for an approval
	// answer with what they have instead of holding the shutdown.
	draining  chan struct{}
	drainOnce sync.Once

	// noExpirySweep turns off Run's once-a-second expireApprovals, for
	// tests that move the clock past an approval's expiry and must act
	// before anything settles it; they call expireApprovals themselves.
	noExpirySweep bool
}

// New returns a gateway for cfg (which must be valid for env.Dev). It loads
// the API keys and the approval secret, and creates the producer (which
// connects lazily).
func New(cfg Config, env Env, opts ...Option) (*Server, error) {
	if err := cfg.Validate(env.Dev); err != nil {
		return nil, err
	}
	if !cfg.Enabled(env.Dev) {
		return nil, errors.New("ingest: the API needs api-keys or dev mode")
	}
	if env.Engine == nil || len(env.Brokers) == 0 {
		return nil, errors.New("ingest: Env needs Engine and Brokers")
	}
	if env.MaxEventBytes <= 0 {
		env.MaxEventBytes = envelope.DefaultMaxEventBytes
	}
	s := &Server{cfg: cfg, env: env, log: slog.New(slog.DiscardHandler), now: time.Now,
		dec: envelope.Decoder{MaxBytes: env.MaxEventBytes}, replies: newReplies(env.Topics),
		hints: make(map[string]uint64), tailWanted: make(chan struct{}), tailFixed: make(chan struct{}), draining: make(chan struct{})}
	s.life, s.endLife = context.WithCancel(context.Background())
	for _, o := range opts {
		o(s)
	}
	s.log = s.log.With("component", "ingest")
	s.metrics = newMetrics(s.reg)
	if cfg.RateLimit > 0 {
		s.limit = newLimiter(cfg.RateLimit, cfg.RateBurst)
	}
	var err error
	if cfg.APIKeys != "" {
		if s.keys, err = LoadKeys(cfg.APIKeys); err != nil {
			return nil, err
		}
	}
	if cfg.ApprovalSecretFile != "" {
		if s.secret, err = grant.LoadSecret(cfg.ApprovalSecretFile); err != nil {
			return nil, fmt.Errorf("ingest: %w", err)
		}
	} else {
		s.secret = make([]byte, 32)
		_, _ = rand.Read(s.secret)
	}
	s.appr = newApprovals(s.secret, cfg.MaxPendingApprovals)
	s.prod, err = stream.NewProducer(stream.ProducerConfig{Brokers: env.Brokers, MaxRecordBytes: pipeline.MaxRecordBytes(env.MaxEventBytes), Compression: env.Compression},
		stream.WithLogger(s.log), stream.WithRegisterer(s.reg), stream.WithStage("ingest"), stream.WithSecurity(env.Security))
	if err != nil {
		return nil, fmt.Errorf("ingest: producer: %w", err)
	}
	return s, nil
}

// ApprovalSecret returns the secret the gateway signs approval tokens and
// the grants of the APPROVAL_DECIDED events it publishes with: the file's
// content, or the random secret generated for this process when no
// --approval-secret-file was given. A decider stage in the same process
// checks grants with it. The caller must not modify it.
func (s *Server) ApprovalSecret() []byte { return s.secret }

// GeneratedApprovalSecret reports that the approval secret was generated
// for this process (no --approval-secret-file): no other process can
// sign or check with it.
func (s *Server) GeneratedApprovalSecret() bool { return s.cfg.ApprovalSecretFile == "" }

// TLSConfig returns the listener's TLS configuration, or nil when the
// configuration serves plain HTTP.
func (c *Config) TLSConfig() (*tls.Config, error) {
	if c.TLSCert == "" {
		return nil, nil
	}
	cert, err := tls.LoadX509KeyPair(c.TLSCert, c.TLSKey)
	if err != nil {
		return nil, fmt.Errorf("ingest: tls: %w", err)
	}
	tc := &tls.Config{Certificates: []tls.Certificate{cert}, MinVersion: tls.VersionTLS12}
	if c.TLSClientCA != "" {
		pem, err := os.ReadFile(c.TLSClientCA)
		if err != nil {
			return nil, fmt.Errorf("ingest: tls client ca: %w", err)
		}
		pool := x509.NewCertPool()
		if !pool.AppendCertsFromPEM(pem) {
			return nil, fmt.Errorf("ingest: tls client ca %s: no PEM certificate", c.TLSClientCA)
		}
		tc.ClientCAs, tc.ClientAuth = pool, tls.RequireAndVerifyClientCert
	}
	return tc, nil
}

// Ready reports whether the reply tail reaches the brokers; before the
// first request that waits for a verdict there is no tail, and the gateway
// is ready.
func (s *Server) Ready() bool {
	select {
	case <-s.tailWanted:
		return s.replies.ready.Load()
	default:
		return true
	}
}

// startTail asks Run to start the reply tail.
func (s *Server) startTail() {
	s.tailOnce.Do(func() { close(s.tailWanted) })
}

// awaitTail starts the reply tail if it does not run yet and waits until
// its start offsets are fixed; requests that wait for a verdict call it
// before they publish. The tail begins at the end offsets Run listed
// before it returns, and a verdict is written after the record it answers,
// so the verdict of a record published after awaitTail returned is at or
// past the tail's start however late the tail connects and whatever the
// clocks say. Nothing is published while it waits: its deadline passing is
// a broker failure (503), not a recorded proposal whose decision is late.
func (s *Server) awaitTail(ctx context.Context) error {
	s.startTail()
	select {
	case <-s.tailFixed:
		return nil
	default:
	}
	select {
	case <-s.tailFixed:
		return nil
	case <-ctx.Done():
		if errors.Is(ctx.Err(), context.DeadlineExceeded) {
			return &apiError{Status: http.StatusServiceUnavailable, Code: CodeBrokerUnavailable, RetryAfter: time.Second,
				Message: "the reply tail did not list the reply topics' end offsets before the deadline; nothing was published"}
		}
		return ctx.Err()
	}
}

// tailStart lists where the reply tail begins: per partition of the
// decisions, decided and rejected topics, the end offset a read_committed
// reader has now (the last stable offset). The topics are listed at once:
// the first waiting request waits for the slowest. It retries until the
// brokers answer; ok is false if ctx is done first.
func (s *Server) tailStart(ctx context.Context) (start map[string]map[int32]int64, ok bool) {
	t := s.env.Topics
	topics := []string{t.Decisions, t.Decided, t.Rejected}
	for {
		ends := make([]map[int32]int64, len(topics))
		errs := make([]error, len(topics))
		var wg sync.WaitGroup
		for i, topic := range topics {
			wg.Add(1)
			go func() {
				defer wg.Done()
				ends[i], errs[i] = stream.EndOffsets(ctx, s.env.Brokers, topic, stream.WithSecurity(s.env.Security))
			}()
		}
		wg.Wait()
		err := errors.Join(errs...)
		if err == nil {
			start = make(map[string]map[int32]int64, len(topics))
			for i, topic := range topics {
				start[topic] = ends[i]
			}
			return start, true
		}
		if ctx.Err() != nil {
			return nil, false
		}
		s.log.Warn("reply tail: listing the end offsets failed; retrying", "err", err)
		select {
		case <-ctx.Done():
			return nil, false
		case <-time.After(time.Second):
		}
	}
}

// Run tails the decisions, decided and rejected topics for waiting
// requests and expires approvals, until ctx is cancelled; then it flushes
// and closes the producer. The tail starts with the first request that
// waits for a verdict (a synchronous proposal, an event with a
// gateway-assigned seq), at the topics' end offsets listed before that
// request publishes (see awaitTail): a process that serves none — a
// sealer or a projector that only exposes /metrics — reads nothing. Stop
// the HTTP server before cancelling ctx, so that no handler is left
// waiting (shutdown order: ingest stops accepting first).
func (s *Server) Run(ctx context.Context) error {
	defer func() {
		// Before the producer closes: pending confirmations stop waiting
		// (their approvals stay pending) instead of outliving the server.
		s.bgMu.Lock()
		s.endLife()
		s.bgMu.Unlock()
		s.bg.Wait()
		fctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), 10*time.Second)
		defer cancel()
		_ = s.prod.Flush(fctx)
		s.prod.Close()
	}()
	ctx, stop := context.WithCancel(ctx)
	var wg sync.WaitGroup
	defer wg.Wait()
	defer stop() // before wg.Wait: ends the expiry loop on an early return
	if !s.noExpirySweep {
		wg.Add(1)
		go func() {
			defer wg.Done()
			tick := time.NewTicker(time.Second)
			defer tick.Stop()
			for {
				select {
				case <-ctx.Done():
					return
				case <-tick.C:
					s.expireApprovals(ctx)
				}
			}
		}()
	}
	select {
	case <-ctx.Done():
		return nil
	case <-s.tailWanted:
	}
	// Explicit offsets, not a start time: a consumer positioned by
	// timestamp lists the offset of the first record at or after that
	// time and, when none is committed yet, the end offset in a second
	// request, so a verdict committed between the two listings would lie
	// below its start and never be read.
	start, ok := s.tailStart(ctx)
	if !ok {
		return nil
	}
	c, err := stream.NewConsumer(stream.ConsumerConfig{Brokers: s.env.Brokers, Start: stream.FromOffsets(start)},
		stream.WithLogger(s.log), stream.WithStage("ingest-replies"), stream.WithSecurity(s.env.Security))
	if err != nil {
		return fmt.Errorf("ingest: reply tail: %w", err)
	}
	defer c.Close()
	s.tailOpen.Store(true)
	close(s.tailFixed)
	s.log.Info("reply tail started")
	if err := s.replies.run(ctx, c); err != nil && ctx.Err() == nil {
		return fmt.Errorf("ingest: reply tail: %w", err)
	}
	return nil
}

// Drain ends the waits for an approval (approval_wait_ms) in progress and
// to come: each answers at once, as if its wait had run out, with the
// require_approval decision and its pending approval. Call it before
// http.Server.Shutdown, which waits for handlers, and an approval wait may
// last up to --approval-ttl. Requests waiting for a decision are bounded
// by --proposal-timeout and are left to finish.
func (s *Server) Drain() { s.drainOnce.Do(func() { close(s.draining) }) }

// Close releases the Kafka client New opened, for a Server whose Run is
// never called (Run releases it when it returns).
func (s *Server) Close() { s.prod.Close() }

// Routes registers the API's endpoints on mux. /healthz, /readyz and
// /metrics stay with the program.
func (s *Server) Routes(mux *http.ServeMux) {
	for _, rt := range s.routes() {
		mux.Handle(rt.method+" "+rt.path, s.authed(rt.h, rt.roles...))
	}
}

// Operator guards one of the program's own endpoints (profiling) with the
// API's authentication: only operators reach h, or anyone in dev mode.
func (s *Server) Operator(h http.Handler) http.Handler {
	return s.authed(func(w http.ResponseWriter, r *http.Request, _ Principal) { h.ServeHTTP(w, r) }, RoleOperator)
}

type route struct {
	method, path string
	h            func(http.ResponseWriter, *http.Request, Principal)
	roles        []Role
}

// routes is the API's endpoint table (docs/api.md has the role matrix).
func (s *Server) routes() []route {
	return []route{
		{"POST", "/v1/events", s.handleEvents, []Role{RoleAgent, RoleOperator}},
		{"POST", "/v1/policy/decide", s.handleDecide, []Role{RoleAgent, RoleOperator, RoleAuditor}},
		{"POST", "/v1/sessions/{session}/proposals", s.handleProposal, []Role{RoleAgent, RoleOperator}},
		{"GET", "/v1/approvals", s.handleListApprovals, []Role{RoleOperator}},
		{"POST", "/v1/approvals/{token}", s.handleDecideApproval, []Role{RoleOperator}},
		{"GET", "/v1/sessions/{session}", s.handleSnapshot, []Role{RoleOperator, RoleAuditor}},
		{"GET", "/v1/sessions/{session}/events", s.handleSessionEvents, []Role{RoleOperator, RoleAuditor}},
		{"GET", "/v1/sessions/{session}/verify", s.handleVerify, []Role{RoleOperator, RoleAuditor}},
	}
}

// authed authenticates the request, checks the role and passes the
// principal in the request context.
func (s *Server) authed(h func(http.ResponseWriter, *http.Request, Principal), roles ...Role) http.Handler {
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		var p Principal
		switch {
		case s.env.Dev:
			p = Principal{ID: "dev", Role: RoleOperator}
		case s.keys == nil:
			writeError(w, errf(http.StatusUnauthorized, CodeUnauthenticated, "no credentials are configured"))
			return
		default:
			var ok bool
			if p, ok = s.keys.Authenticate(r); !ok {
				w.Header().Set("WWW-Authenticate", `Bearer realm="aegis"`)
				writeError(w, errf(http.StatusUnauthorized, CodeUnauthenticated, "missing or unknown API key"))
				return
			}
		}
		if !p.can(roles...) {
			writeError(w, errf(http.StatusForbidden, CodeForbidden, "role %s may not call %s %s", p.Role, r.Method, r.URL.Path))
			return
		}
		h(w, r, p)
	})
}

// tenantOf resolves the tenant a session-scoped request acts on: the
// principal's; in dev mode the tenant_id query parameter, else "default".
// A tenant_id parameter naming another tenant than the credentials' is
// refused.
func tenantOf(r *http.Request, p Principal) (string, error) {
	q := r.URL.Query().Get("tenant_id")
	if p.Tenant == "" {
		if q == "" {
			return "default", nil
		}
		return q, nil
	}
	if q != "" && q != p.Tenant {
		return "", errf(http.StatusForbidden, CodeTenantMismatch, "credentials of tenant %q may not act on tenant %q", p.Tenant, q)
	}
	return p.Tenant, nil
}

// admit charges n events of tenant to its rate limit.
func (s *Server) admit(tenant string, n int) error {
	if wait := s.limit.take(tenant, n, s.now()); wait > 0 {
		s.metrics.rateLimited.Inc()
		e := errf(http.StatusTooManyRequests, CodeRateLimited, "tenant %q is over its rate limit of %g events/s", tenant, s.cfg.RateLimit)
		e.RetryAfter = wait
		return e
	}
	return nil
}

// hint returns the highest seq the gateway saw accepted for a session.
func (s *Server) hint(key string) uint64 {
	s.hintMu.Lock()
	defer s.hintMu.Unlock()
	return s.hints[key]
}

// maxHints bounds the seq hints; when full they are dropped (hints only
// save a round trip).
const maxHints = 1 << 16

// resetHint sets the session's hint to seq, lower or higher.
func (s *Server) resetHint(key string, seq uint64) {
	s.hintMu.Lock()
	defer s.hintMu.Unlock()
	if len(s.hints) >= maxHints {
		clear(s.hints)
	}
	s.hints[key] = seq
}

func (s *Server) setHint(key string, seq uint64) {
	s.hintMu.Lock()
	defer s.hintMu.Unlock()
	if len(s.hints) >= maxHints {
		clear(s.hints)
	}
	if seq > s.hints[key] {
		s.hints[key] = seq
	}
}
