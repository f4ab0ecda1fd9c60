// Package mcpproxy is the Aegis MCP proxy: it sits between agents and an
// MCP server and puts every tools/call through the Aegis pipeline before
// the server sees it.
//
// Downstream, agents connect over the Streamable HTTP transport (one
// endpoint, POST with JSON responses, Mcp-Session-Id sessions) or launch
// the proxy as a stdio MCP server. Upstream, the proxy spawns the MCP
// server as a subprocess (stdio) or reaches it over Streamable HTTP; each
// downstream session gets its own upstream session. Each MCP session is an
// Aegis session: tools/call becomes a TOOL_CALL_PROPOSED decided by the
// decider; deny answers JSON-RPC error CodeDenied, require_approval answers
// CodeApprovalRequired with the approval token, allow forwards the call and
// records TOOL_CALL_EXECUTED (before sending it) and TOOL_RESULT. tools/list
// shows only the tools the session's manifest declares; the other MCP
// methods are forwarded and recorded, and any other method is refused.
// docs/mcp-proxy.md is the user's reference.
//
// The proxy publishes through the ingest gateway's in-process API
// (ingest.Server.Propose and Record): the same producer, seq allocation and
// reply tail as the HTTP API, no second Kafka client.
package mcpproxy

import (
	"context"
	"crypto/rand"
	"crypto/tls"
	"encoding/hex"
	"errors"
	"flag"
	"fmt"
	"io"
	"log/slog"
	"net"
	"net/http"
	"os"
	"strings"
	"sync"
	"time"

	"github.com/prometheus/client_golang/prometheus"

	"aegis.dev/aegis/ingest"
	"aegis.dev/aegis/schemas/envelope"
	"aegis.dev/aegis/schemas/manifest"
)

// Config is the operator configuration of the proxy. aegisd embeds it
// (flags prefixed "mcp-", YAML keys as named); field docs name each default.
type Config struct {
	// UpstreamCmd is the MCP server to spawn for each session, its argv
	// separated by spaces (no shell quoting). Exactly one of UpstreamCmd and
	// UpstreamURL is required.
	UpstreamCmd string `yaml:"mcp_upstream_cmd"`
	// UpstreamURL is the Streamable HTTP endpoint of the MCP server.
	UpstreamURL string `yaml:"mcp_upstream_url"`
	// Addr is where agents connect over Streamable HTTP (default
	// 127.0.0.1:8090), at Path (default /mcp).
	Addr string `yaml:"mcp_addr"`
	Path string `yaml:"mcp_path"`
	// Stdio serves one MCP session on the process's stdin and stdout
	// instead of listening on Addr.
	Stdio bool `yaml:"mcp_stdio"`
	// Tenant is the tenant of sessions that present no API key (stdio, and
	// HTTP without API keys; default "default"). With API keys, an HTTP
	// session belongs to the key's tenant.
	Tenant string `yaml:"mcp_tenant"`
	// Session is the Aegis session id of the stdio session (default
	// "mcp-" and 32 random hex digits). HTTP sessions are "mcp-" and their
	// Mcp-Session-Id.
	Session string `yaml:"mcp_session"`
	// Manifest is the manifest reference of the proxy's sessions ("name" or
	// "name@version"; default: the tenant's default manifest).
	Manifest string `yaml:"mcp_manifest"`
	// DecisionTimeout bounds the wait for each decision and audit record
	// (default 10s). A tools/call without a decision in time is not
	// forwarded.
	DecisionTimeout time.Duration `yaml:"mcp_decision_timeout"`
	// MaxSessions bounds the open HTTP sessions (default 1024); IdleTimeout
	// closes a session unused that long (default 30m).
	MaxSessions int           `yaml:"mcp_max_sessions"`
	IdleTimeout time.Duration `yaml:"mcp_idle_timeout"`
	// MaxTenantSessions bounds the open HTTP sessions of one tenant
	// (default 256, at most MaxSessions), so that one tenant's agents
	// cannot take every session.
	MaxTenantSessions int `yaml:"mcp_max_tenant_sessions"`
	// MaxMessageBytes bounds one message from an agent (default 4 MiB).
	MaxMessageBytes int64 `yaml:"mcp_max_message_bytes"`
	// MaxUpstreamBytes bounds one message from the upstream server
	// (default 16 MiB). A larger answer is an error for the agent (HTTP
	// upstream) or ends the upstream session (stdio, whose framing is
	// lost).
	MaxUpstreamBytes int64 `yaml:"mcp_max_upstream_bytes"`
	// AllowedHosts are host names (besides IP literals and localhost)
	// that requests may name in their Host header when the proxy runs
	// without API keys: a web page that rebinds its own name to the proxy's
	// address sends its own name, and is refused.
	AllowedHosts []string `yaml:"mcp_allowed_hosts"`
	// UpstreamTimeout bounds the wait for the server's answer to a request
	// that has no shorter bound (a tools/call without the decision's
	// timeout_ms, initialize, resources/read, …; default 10m).
	UpstreamTimeout time.Duration `yaml:"mcp_upstream_timeout"`
}

// Defaults returns the configuration with every default applied.
func Defaults() Config {
	return Config{Addr: "127.0.0.1:8090", Path: "/mcp", Tenant: "default", DecisionTimeout: 10 * time.Second,
		MaxSessions: 1024, MaxTenantSessions: 256, IdleTimeout: 30 * time.Minute, MaxMessageBytes: 4 << 20, MaxUpstreamBytes: 16 << 20,
		UpstreamTimeout: 10 * time.Minute}
}

// RegisterFlags binds every field to a flag on fs (prefixed "mcp-"), with
// the field's current value as the default.
func (c *Config) RegisterFlags(fs *flag.FlagSet) {
	fs.StringVar(&c.UpstreamCmd, "mcp-upstream-cmd", c.UpstreamCmd, "MCP proxy: the MCP server command to spawn per session (argv separated by spaces)")
	fs.StringVar(&c.UpstreamURL, "mcp-upstream-url", c.UpstreamURL, "MCP proxy: the Streamable HTTP endpoint of the MCP server")
	fs.StringVar(&c.Addr, "mcp-addr", c.Addr, "MCP proxy: listen address for agents (Streamable HTTP)")
	fs.StringVar(&c.Path, "mcp-path", c.Path, "MCP proxy: the endpoint path")
	fs.BoolVar(&c.Stdio, "mcp-stdio", c.Stdio, "MCP proxy: serve one session on stdin/stdout instead of --mcp-addr")
	fs.StringVar(&c.Tenant, "mcp-tenant", c.Tenant, "MCP proxy: tenant of sessions without an API key")
	fs.StringVar(&c.Session, "mcp-session", c.Session, "MCP proxy: Aegis session id of the stdio session (default: random)")
	fs.StringVar(&c.Manifest, "mcp-manifest", c.Manifest, "MCP proxy: manifest reference of its sessions (default: the tenant's default)")
	fs.DurationVar(&c.DecisionTimeout, "mcp-decision-timeout", c.DecisionTimeout, "MCP proxy: wait for a decision or an audit record")
	fs.IntVar(&c.MaxSessions, "mcp-max-sessions", c.MaxSessions, "MCP proxy: most open HTTP sessions")
	fs.IntVar(&c.MaxTenantSessions, "mcp-max-tenant-sessions", c.MaxTenantSessions, "MCP proxy: most open HTTP sessions of one tenant (at most --mcp-max-sessions)")
	fs.DurationVar(&c.IdleTimeout, "mcp-idle-timeout", c.IdleTimeout, "MCP proxy: close sessions idle that long")
	fs.Int64Var(&c.MaxMessageBytes, "mcp-max-message-bytes", c.MaxMessageBytes, "MCP proxy: largest message from an agent")
	fs.Int64Var(&c.MaxUpstreamBytes, "mcp-max-upstream-bytes", c.MaxUpstreamBytes, "MCP proxy: largest message from the upstream server")
	fs.DurationVar(&c.UpstreamTimeout, "mcp-upstream-timeout", c.UpstreamTimeout, "MCP proxy: longest wait for the server's answer to a request without a shorter bound")
	fs.Func("mcp-allowed-hosts", "MCP proxy without API keys: comma-separated host names requests may use besides IP addresses and localhost", func(v string) error {
		c.AllowedHosts = nil
		for _, h := range strings.Split(v, ",") {
			if h = strings.TrimSpace(h); h != "" {
				c.AllowedHosts = append(c.AllowedHosts, h)
			}
		}
		return nil
	})
}

// Validate checks the configuration.
func (c *Config) Validate() error {
	var errs []error
	if (c.UpstreamCmd == "") == (c.UpstreamURL == "") {
		errs = append(errs, errors.New("mcp: exactly one of mcp-upstream-cmd and mcp-upstream-url is required"))
	}
	if c.UpstreamCmd != "" && len(strings.Fields(c.UpstreamCmd)) == 0 {
		errs = append(errs, errors.New("mcp-upstream-cmd: empty"))
	}
	if c.UpstreamURL != "" && !strings.HasPrefix(c.UpstreamURL, "http://") && !strings.HasPrefix(c.UpstreamURL, "https://") {
		errs = append(errs, fmt.Errorf("mcp-upstream-url %q: want an http:// or https:// URL", c.UpstreamURL))
	}
	if !c.Stdio && c.Addr == "" {
		errs = append(errs, errors.New("mcp-addr: required unless mcp-stdio"))
	}
	if !strings.HasPrefix(c.Path, "/") {
		errs = append(errs, fmt.Errorf("mcp-path %q: must start with /", c.Path))
	}
	if !validID(c.Tenant) {
		errs = append(errs, fmt.Errorf("mcp-tenant %q: 1-128 of A-Z a-z 0-9 . _ : @ -", c.Tenant))
	}
	if c.Session != "" && !validID(c.Session) {
		errs = append(errs, fmt.Errorf("mcp-session %q: 1-128 of A-Z a-z 0-9 . _ : @ -", c.Session))
	}
	if c.DecisionTimeout < 10*time.Millisecond || c.DecisionTimeout > time.Minute {
		errs = append(errs, fmt.Errorf("mcp-decision-timeout %s: must be 10ms..1m", c.DecisionTimeout))
	}
	if c.MaxTenantSessions < 1 {
		errs = append(errs, fmt.Errorf("mcp-max-tenant-sessions %d: must be at least 1", c.MaxTenantSessions))
	}
	if c.MaxSessions < 1 {
		errs = append(errs, fmt.Errorf("mcp-max-sessions %d: must be at least 1", c.MaxSessions))
	}
	if c.IdleTimeout < time.Second {
		errs = append(errs, fmt.Errorf("mcp-idle-timeout %s: must be at least 1s", c.IdleTimeout))
	}
	if c.MaxMessageBytes < 1024 || c.MaxMessageBytes > 1<<30 {
		errs = append(errs, fmt.Errorf("mcp-max-message-bytes %d: must be 1024..%d", c.MaxMessageBytes, 1<<30))
	}
	if c.MaxUpstreamBytes < 1024 || c.MaxUpstreamBytes > 1<<30 {
		errs = append(errs, fmt.Errorf("mcp-max-upstream-bytes %d: must be 1024..%d", c.MaxUpstreamBytes, 1<<30))
	}
	if c.UpstreamTimeout < time.Second {
		errs = append(errs, fmt.Errorf("mcp-upstream-timeout %s: must be at least 1s", c.UpstreamTimeout))
	}
	return errors.Join(errs...)
}

// validID is the envelope's tenant and session id rule.
func validID(s string) bool {
	if len(s) == 0 || len(s) > 128 {
		return false
	}
	for _, r := range s {
		if !(r >= 'a' && r <= 'z' || r >= 'A' && r <= 'Z' || r >= '0' && r <= '9' || strings.ContainsRune("._:@-", r)) {
			return false
		}
	}
	return true
}

// Pipeline is what the proxy publishes through: *ingest.Server.
type Pipeline interface {
	Propose(ctx context.Context, ev *envelope.Event) (*ingest.ProposalResponse, error)
	Record(ctx context.Context, ev *envelope.Event) (uint64, error)
}

// Manifests resolves a tenant's manifest: *manifest.Registry.
type Manifests interface {
	Resolve(tenant, ref string) (*manifest.Manifest, error)
}

// Option sets a program-level dependency of a Proxy.
type Option func(*Proxy)

// WithLogger sets the logger (default: discard).
func WithLogger(l *slog.Logger) Option { return func(p *Proxy) { p.log = l } }

// WithRegisterer registers the proxy's metrics on reg (default: none).
func WithRegisterer(reg prometheus.Registerer) Option { return func(p *Proxy) { p.reg = reg } }

// WithKeys authenticates HTTP sessions with the gateway's API keys (roles
// agent and operator); each session then belongs to its key's tenant.
// Default: no authentication, every session is Config.Tenant's.
func WithKeys(k *ingest.Keys) Option { return func(p *Proxy) { p.keys = k } }

// WithTLS serves the HTTP transport over TLS with c (aegisd passes the
// gateway's: its certificate and, with --tls-client-ca, client
// certificates, which keys with client_cn authenticate by).
func WithTLS(c *tls.Config) Option { return func(p *Proxy) { p.tls = c } }

// WithStdio sets the streams of the stdio mode (default os.Stdin and
// os.Stdout).
func WithStdio(in io.Reader, out io.Writer) Option {
	return func(p *Proxy) { p.stdin, p.stdout = in, out }
}

// WithUpstreamStderr sets where spawned upstream servers write their
// stderr (default os.Stderr).
func WithUpstreamStderr(w io.Writer) Option { return func(p *Proxy) { p.upStderr = w } }

// refuseRedirect keeps calls on the server --mcp-upstream-url names: a
// redirect would send a decided call, its body and the session's headers
// to a server nobody configured. The redirect is an upstream failure.
func refuseRedirect(req *http.Request, _ []*http.Request) error {
	return fmt.Errorf("mcpproxy: the upstream redirected to %s; calls go only to --mcp-upstream-url", redactURL(req.URL.String()))
}

// WithHTTPClient sets the client of a Streamable HTTP upstream (default: a
// client of its own).
func WithHTTPClient(c *http.Client) Option { return func(p *Proxy) { p.client = c } }

// WithClock sets the clock of idle expiry (default time.Now).
func WithClock(now func() time.Time) Option { return func(p *Proxy) { p.now = now } }

// Proxy is the MCP proxy. Create it with New; Run serves it (HTTP or
// stdio), or mount Handler on a server of your own.
type Proxy struct {
	cfg       Config
	pipe      Pipeline
	manifests Manifests
	log       *slog.Logger
	reg       prometheus.Registerer
	keys      *ingest.Keys
	tls       *tls.Config
	stdin     io.Reader
	stdout    io.Writer
	upStderr  io.Writer
	client    *http.Client
	now       func() time.Time
	metrics   *metrics
	dial      func() (upstream, error)

	mu        sync.Mutex
	sessions  map[string]*session // by Mcp-Session-Id
	opening   map[string]int      // per tenant, sessions counted against the limits while their upstream starts
	ln        net.Listener
	ready     chan struct{}
	readyOnce sync.Once
}

func (p *Proxy) markReady() { p.readyOnce.Do(func() { close(p.ready) }) }

// New returns a proxy for cfg (which must be valid) publishing through
// pipe. manifests decides what tools/list shows; nil shows no tool.
func New(cfg Config, pipe Pipeline, manifests Manifests, opts ...Option) (*Proxy, error) {
	if err := cfg.Validate(); err != nil {
		return nil, err
	}
	if pipe == nil {
		return nil, errors.New("mcpproxy: a Pipeline is required")
	}
	p := &Proxy{cfg: cfg, pipe: pipe, manifests: manifests, log: slog.New(slog.DiscardHandler), stdin: os.Stdin, stdout: os.Stdout,
		upStderr: os.Stderr, client: &http.Client{CheckRedirect: refuseRedirect}, now: time.Now, sessions: make(map[string]*session), opening: make(map[string]int), ready: make(chan struct{})}
	for _, o := range opts {
		o(p)
	}
	p.log = p.log.With("component", "mcp-proxy")
	p.metrics = newMetrics(p.reg)
	if cfg.UpstreamCmd != "" {
		argv := strings.Fields(cfg.UpstreamCmd)
		p.dial = func() (upstream, error) {
			return dialStdio(argv, p.upStderr, cfg.MaxUpstreamBytes, cfg.UpstreamTimeout)
		}
	} else {
		p.dial = func() (upstream, error) { return newHTTPUpstream(cfg.UpstreamURL, p.client, cfg.MaxUpstreamBytes), nil }
	}
	return p, nil
}

// declared returns the tool names the proxy's manifest declares for
// tenant; empty when it does not resolve.
func (p *Proxy) declared(tenant string) map[string]bool {
	out := map[string]bool{}
	if p.manifests == nil {
		return out
	}
	m, err := p.manifests.Resolve(tenant, p.cfg.Manifest)
	if err != nil {
		p.log.Warn("tools/list: no manifest, listing no tools", "tenant", tenant, "manifest", p.cfg.Manifest, "err", err)
		return out
	}
	for _, t := range m.Permissions.Tools {
		out[t] = true
	}
	return out
}

// newSession opens the upstream session of a new MCP session.
func (p *Proxy) newSession(tenant, id string) (*session, error) {
	up, err := p.dial()
	if err != nil {
		return nil, err
	}
	s := &session{p: p, tenant: tenant, id: id, up: up, slots: make(chan struct{}, maxSessionInFlight)}
	s.touch()
	return s, nil
}

// randomHex returns n random bytes in hex.
func randomHex(n int) string {
	b := make([]byte, n)
	_, _ = rand.Read(b)
	return hex.EncodeToString(b)
}

// Ready reports whether the proxy serves: its listener is open, or the
// stdio session started.
func (p *Proxy) Ready() bool {
	select {
	case <-p.ready:
		return true
	default:
		return false
	}
}

// Addr returns the HTTP listener's address once Run listens ("" before,
// and in stdio mode).
func (p *Proxy) Addr() string {
	p.mu.Lock()
	defer p.mu.Unlock()
	if p.ln == nil {
		return ""
	}
	return p.ln.Addr().String()
}

// Run serves until ctx is cancelled (call it once): on stdin and stdout with Config.Stdio
// (returning early when stdin ends), else over Streamable HTTP on
// Config.Addr. On return every session is closed (stdio upstream servers
// are stopped, HTTP upstream sessions deleted).
func (p *Proxy) Run(ctx context.Context) error {
	defer p.closeAll()
	if p.cfg.Stdio {
		return p.ServeStdio(ctx, p.stdin, p.stdout)
	}
	ln, err := net.Listen("tcp", p.cfg.Addr)
	if err != nil {
		return fmt.Errorf("mcpproxy: listen: %w", err)
	}
	if p.tls != nil {
		ln = tls.NewListener(ln, p.tls)
	}
	p.mu.Lock()
	p.ln = ln
	p.mu.Unlock()
	// Requests run under base, which a shutdown cancels once its grace
	// is over: a call still at the server then ends, is recorded and
	// answered before Run returns (inflight), while the gateway it
	// records through is still open.
	base, cancelBase := context.WithCancel(context.WithoutCancel(ctx))
	defer cancelBase()
	var inflight sync.WaitGroup
	h := p.Handler()
	mux := http.NewServeMux()
	mux.Handle(p.cfg.Path, http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		inflight.Add(1)
		defer inflight.Done()
		h.ServeHTTP(w, r)
	}))
	srv := &http.Server{Handler: mux, ReadHeaderTimeout: 10 * time.Second, ReadTimeout: 2 * time.Minute, IdleTimeout: 2 * time.Minute,
		BaseContext: func(net.Listener) context.Context { return base }}
	errc := make(chan error, 1)
	go func() { errc <- srv.Serve(ln) }()
	p.markReady()
	p.log.Info("MCP proxy listening", "addr", ln.Addr().String(), "path", p.cfg.Path, "upstream", p.upstreamName())
	tick := time.NewTicker(min(p.cfg.IdleTimeout/4, time.Minute))
	defer tick.Stop()
	for {
		select {
		case <-ctx.Done():
			sctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), shutdownGrace)
			defer cancel()
			if srv.Shutdown(sctx) != nil {
				// Requests still in progress are cut short; each records
				// how it ended (bounded by the decision timeout) and is
				// answered.
				cancelBase()
				inflight.Wait()
			}
			return nil
		case err := <-errc:
			return fmt.Errorf("mcpproxy: serve: %w", err)
		case <-tick.C:
			p.expireIdle()
		}
	}
}

func (p *Proxy) upstreamName() string {
	if p.cfg.UpstreamCmd != "" {
		return "stdio:" + strings.Fields(p.cfg.UpstreamCmd)[0]
	}
	return redactURL(p.cfg.UpstreamURL)
}

// expireIdle closes the sessions unused for IdleTimeout: no request in
// progress, and none received or answered since.
func (p *Proxy) expireIdle() {
	cutoff := p.now().Add(-p.cfg.IdleTimeout).UnixMilli()
	var idle []*session
	p.mu.Lock()
	for id, s := range p.sessions {
		if s.active.Load() == 0 && s.lastUsed.Load() < cutoff {
			idle = append(idle, s)
			delete(p.sessions, id)
		}
	}
	p.metrics.sessions.Set(float64(len(p.sessions)))
	p.mu.Unlock()
	for _, s := range idle {
		p.log.Info("MCP session closed after being idle", "tenant", s.tenant, "session", s.id)
		s.close()
	}
}

func (p *Proxy) closeAll() {
	p.mu.Lock()
	all := make([]*session, 0, len(p.sessions))
	for id, s := range p.sessions {
		all = append(all, s)
		delete(p.sessions, id)
	}
	p.metrics.sessions.Set(0)
	p.mu.Unlock()
	for _, s := range all {
		s.close()
	}
}

type metrics struct {
	requests *prometheus.CounterVec
	calls    *prometheus.CounterVec
	sessions prometheus.Gauge
}

func newMetrics(reg prometheus.Registerer) *metrics {
	m := &metrics{
		requests: prometheus.NewCounterVec(prometheus.CounterOpts{Name: "aegis_mcp_messages_total",
			Help: "MCP messages from agents, by method and outcome (ok, error, notification)."}, []string{"method", "outcome"}),
		calls: prometheus.NewCounterVec(prometheus.CounterOpts{Name: "aegis_mcp_tool_calls_total",
			Help: "tools/call requests by decision outcome (allow, deny, require_approval, timeout, error)."}, []string{"outcome"}),
		sessions: prometheus.NewGauge(prometheus.GaugeOpts{Name: "aegis_mcp_sessions", Help: "Open MCP sessions."}),
	}
	if reg != nil {
		reg.MustRegister(m.requests, m.calls, m.sessions)
	}
	return m
}

// shutdownGrace is how long Run lets requests in progress finish at a
// shutdown.
var shutdownGrace = 15 * time.Second
