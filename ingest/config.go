// Package ingest is the HTTP gateway of Aegis: agents and operators that do
// not speak Kafka publish events, ask for decisions, wait for the decision
// of a proposal, settle approvals and read the audit store over HTTP. Every
// write goes through the pipeline (aegis.events → decider → sealer); nothing
// bypasses the decider or the sealer. docs/api.md is the user's reference
// and schemas/openapi.yaml the machine-readable contract.
//
// A Server is mounted on aegisd's HTTP listener (Routes) and runs its
// background work (the shared reply tail, approval expiry) in Run.
package ingest

import (
	"errors"
	"flag"
	"fmt"
	"math"
	"time"
)

// Config is the operator configuration of the gateway. aegisd embeds it in
// its own Config (flags and YAML keys as named below); --http-addr,
// --max-event-bytes and --dev belong to aegisd and are passed to New.
type Config struct {
	// APIKeys is a JSON file of API keys, stored hashed (see KeyFile).
	// Without it (and outside dev mode) the API is not served.
	APIKeys string `yaml:"api_keys"`
	// TLSCert and TLSKey, when both set, serve HTTPS (TLS 1.2 or later).
	TLSCert string `yaml:"tls_cert"`
	TLSKey  string `yaml:"tls_key"`
	// TLSClientCA, when set, requires a client certificate signed by one of
	// its PEM certificates (mTLS). A key file entry with client_cn then
	// authenticates a client by its certificate's common name.
	TLSClientCA string `yaml:"tls_client_ca"`
	// ApprovalSecretFile holds the HMAC secret of approval tokens (at least
	// 32 bytes; never logged). Required with APIKeys; in dev mode without
	// it, a random per-process secret is used.
	ApprovalSecretFile string `yaml:"approval_secret_file"`
	// ApprovalTTL is how long an approval stays open before it is denied
	// with APPROVAL_EXPIRED (default 10m).
	ApprovalTTL time.Duration `yaml:"approval_ttl"`
	// ProposalTimeout is how long POST /v1/sessions/{session}/proposals
	// waits for the decision by default (default 10s; a request may ask for
	// less or more with ?timeout_ms=, up to 60s).
	ProposalTimeout time.Duration `yaml:"proposal_timeout"`
	// RateLimit is the sustained events per second one tenant may send
	// (default 20000); RateBurst the bucket size (default 40000). Zero
	// RateLimit disables rate limiting.
	RateLimit float64 `yaml:"rate_limit"`
	RateBurst int     `yaml:"rate_burst"`
	// MaxBodyBytes bounds one request body (default 16 MiB); each event in
	// it is bounded by aegisd's --max-event-bytes.
	MaxBodyBytes int64 `yaml:"max_body_bytes"`
	// MaxBatchEvents bounds the events of one request (default 5000).
	MaxBatchEvents int `yaml:"max_batch_events"`
	// MaxPendingApprovals bounds the approvals one tenant may have pending
	// on this gateway (default 10000); a require_approval answer that would
	// open one more is 429 TOO_MANY_APPROVALS.
	MaxPendingApprovals int `yaml:"max_pending_approvals"`
	// MaxClockSkew, if positive, refuses an event whose ts_unix_ms is
	// further than this from the gateway's clock (400 CLOCK_SKEW). The
	// decider's time rules (the wall-time budget) read the publisher's
	// timestamps and never a clock, so that replays are exact; this bound
	// keeps agents that publish over HTTP from stopping their own clock.
	// 0 (the default) accepts any time, for imports of recorded sessions.
	MaxClockSkew time.Duration `yaml:"max_clock_skew"`
}

// Defaults returns the configuration with every default applied.
func Defaults() Config {
	return Config{
		ApprovalTTL:     10 * time.Minute,
		ProposalTimeout: 10 * time.Second,
		RateLimit:       20000,
		RateBurst:       40000,
		MaxBodyBytes:    16 << 20,
		MaxBatchEvents:  5000,

		MaxPendingApprovals: 10000,
	}
}

// RegisterFlags binds every field to a flag on fs, with the field's current
// value as the default.
func (c *Config) RegisterFlags(fs *flag.FlagSet) {
	fs.StringVar(&c.APIKeys, "api-keys", c.APIKeys, "JSON file of hashed API keys (tenant, role); without it the HTTP API is served only with --dev")
	fs.StringVar(&c.TLSCert, "tls-cert", c.TLSCert, "PEM certificate of the HTTP listener (with --tls-key: serve HTTPS)")
	fs.StringVar(&c.TLSKey, "tls-key", c.TLSKey, "PEM private key of the HTTP listener")
	fs.StringVar(&c.TLSClientCA, "tls-client-ca", c.TLSClientCA, "PEM CA bundle: require client certificates signed by it (mTLS)")
	fs.StringVar(&c.ApprovalSecretFile, "approval-secret-file", c.ApprovalSecretFile, "file holding the HMAC secret of approval tokens (>= 32 bytes); required with --api-keys")
	fs.DurationVar(&c.ApprovalTTL, "approval-ttl", c.ApprovalTTL, "how long an approval stays open before it is denied")
	fs.DurationVar(&c.ProposalTimeout, "proposal-timeout", c.ProposalTimeout, "default wait of a synchronous proposal for its decision")
	fs.Float64Var(&c.RateLimit, "rate-limit", c.RateLimit, "events per second per tenant (0: unlimited)")
	fs.IntVar(&c.RateBurst, "rate-burst", c.RateBurst, "burst of the per-tenant rate limit, in events")
	fs.Int64Var(&c.MaxBodyBytes, "max-body-bytes", c.MaxBodyBytes, "largest HTTP request body in bytes")
	fs.IntVar(&c.MaxBatchEvents, "max-batch-events", c.MaxBatchEvents, "most events in one POST /v1/events")
	fs.IntVar(&c.MaxPendingApprovals, "max-pending-approvals", c.MaxPendingApprovals, "most approvals one tenant may have pending on this gateway")
	fs.DurationVar(&c.MaxClockSkew, "max-clock-skew", c.MaxClockSkew, "refuse events whose ts_unix_ms is further than this from the gateway's clock (400 CLOCK_SKEW; 0: accept any time)")
}

// Enabled reports whether the API is served: in dev mode (without
// authentication) or with API keys.
func (c *Config) Enabled(dev bool) bool { return dev || c.APIKeys != "" }

// Validate checks the configuration; dev is aegisd's --dev.
func (c *Config) Validate(dev bool) error {
	var errs []error
	if !dev && c.APIKeys != "" && c.ApprovalSecretFile == "" {
		errs = append(errs, errors.New("approval-secret-file: required with api-keys unless --dev"))
	}
	if (c.TLSCert == "") != (c.TLSKey == "") {
		errs = append(errs, errors.New("tls-cert and tls-key: set both or neither"))
	}
	if c.TLSClientCA != "" && c.TLSCert == "" {
		errs = append(errs, errors.New("tls-client-ca: needs tls-cert and tls-key"))
	}
	if c.ApprovalTTL < time.Second || c.ApprovalTTL > maxApprovalTTL {
		errs = append(errs, fmt.Errorf("approval-ttl %s: must be 1s..168h", c.ApprovalTTL))
	}
	if c.ProposalTimeout < 10*time.Millisecond || c.ProposalTimeout > maxProposalWait {
		errs = append(errs, fmt.Errorf("proposal-timeout %s: must be 10ms..%s", c.ProposalTimeout, maxProposalWait))
	}
	if c.RateLimit < 0 || math.IsNaN(c.RateLimit) || math.IsInf(c.RateLimit, 0) {
		errs = append(errs, fmt.Errorf("rate-limit %g: must be a number >= 0", c.RateLimit))
	}
	if c.RateLimit > 0 && c.RateBurst < 1 {
		errs = append(errs, fmt.Errorf("rate-burst %d: must be >= 1", c.RateBurst))
	}
	if c.MaxBodyBytes < 1024 || c.MaxBodyBytes > maxBodyLimit {
		errs = append(errs, fmt.Errorf("max-body-bytes %d: must be 1024..%d", c.MaxBodyBytes, int64(maxBodyLimit)))
	}
	if c.MaxBatchEvents < 1 || c.MaxBatchEvents > 100000 {
		errs = append(errs, fmt.Errorf("max-batch-events %d: must be 1..100000", c.MaxBatchEvents))
	}
	if c.MaxClockSkew != 0 && (c.MaxClockSkew < time.Second || c.MaxClockSkew > 7*24*time.Hour) {
		errs = append(errs, fmt.Errorf("max-clock-skew %s: must be 0 or 1s..168h", c.MaxClockSkew))
	}
	if c.MaxPendingApprovals < 1 {
		errs = append(errs, fmt.Errorf("max-pending-approvals %d: must be >= 1", c.MaxPendingApprovals))
	}
	return errors.Join(errs...)
}

// maxBodyLimit is the largest --max-body-bytes: a body is read whole, so
// the bound must stay one.
const maxBodyLimit = 1 << 30

// Redacted returns the configuration as log attributes: file paths only,
// never key hashes or the approval secret.
func (c Config) Redacted() map[string]any {
	return map[string]any{
		"api_keys": c.APIKeys, "tls_cert": c.TLSCert, "tls_client_ca": c.TLSClientCA,
		"approval_secret_file": c.ApprovalSecretFile != "", "approval_ttl": c.ApprovalTTL.String(),
		"proposal_timeout": c.ProposalTimeout.String(), "rate_limit": c.RateLimit, "rate_burst": c.RateBurst,
		"max_body_bytes": c.MaxBodyBytes, "max_batch_events": c.MaxBatchEvents, "max_pending_approvals": c.MaxPendingApprovals,
		"max_clock_skew": c.MaxClockSkew.String(),
	}
}

// maxProposalWait bounds any wait of a synchronous proposal.
const maxProposalWait = 60 * time.Second

// maxApprovalTTL is the longest --approval-ttl, and the longest
// approval_wait_ms a proposal may give (it is held at most --approval-ttl).
const maxApprovalTTL = 7 * 24 * time.Hour
