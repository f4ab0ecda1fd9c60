package daemon

import (
	"context"
	"errors"
	"fmt"
	"slices"
	"strings"

	"aegis.dev/aegis/ingest"
	"aegis.dev/aegis/mcpproxy"
	"aegis.dev/aegis/schemas/manifest"
)

// errStdioEnded is returned by the MCP proxy target in stdio mode when the
// agent closed its stdin: aegisd then stops as after a clean shutdown.
var errStdioEnded = errors.New("aegisd: the MCP stdio session ended")

// mcpStage runs the MCP proxy as an aegisd target.
type mcpStage struct {
	p     *mcpproxy.Proxy
	stdio bool
}

func (s *mcpStage) Ready() bool { return s.p.Ready() }

func (s *mcpStage) Run(ctx context.Context) error {
	err := s.p.Run(ctx)
	if err == nil && s.stdio && ctx.Err() == nil {
		return errStdioEnded
	}
	return err
}

// newMCPProxy builds the MCP proxy on the HTTP gateway api (its in-process
// Propose and Record), with the gateway's API keys for HTTP sessions and
// the manifest registry for tools/list.
func (d *Daemon) newMCPProxy(api *ingest.Server) (stageRunner, error) {
	cfg := d.cfg
	if api == nil {
		return nil, errors.New("aegisd: mcp-proxy: needs the HTTP gateway (--api-keys or --dev)")
	}
	opts := []mcpproxy.Option{mcpproxy.WithLogger(d.log), mcpproxy.WithRegisterer(d.reg)}
	if cfg.Ingest.APIKeys != "" {
		keys, err := ingest.LoadKeys(cfg.Ingest.APIKeys)
		if err != nil {
			return nil, fmt.Errorf("aegisd: mcp-proxy: %w", err)
		}
		opts = append(opts, mcpproxy.WithKeys(keys))
	}
	// The proxy's port takes the same TLS as the HTTP API: agents send
	// their API keys to it.
	tc, err := cfg.Ingest.TLSConfig()
	if err != nil {
		return nil, fmt.Errorf("aegisd: mcp-proxy: %w", err)
	}
	if tc != nil {
		opts = append(opts, mcpproxy.WithTLS(tc))
	}
	var manifests mcpproxy.Manifests
	if cfg.Manifests != "" {
		reg, err := manifest.LoadDir(cfg.Manifests)
		if err != nil {
			return nil, fmt.Errorf("aegisd: mcp-proxy: manifests: %w", err)
		}
		manifests = reg
	}
	p, err := mcpproxy.New(cfg.MCP, api, manifests, opts...)
	if err != nil {
		return nil, fmt.Errorf("aegisd: mcp-proxy: %w", err)
	}
	return &mcpStage{p: p, stdio: cfg.MCP.Stdio}, nil
}

// mcpRedacted returns the MCP proxy configuration as log attributes (the
// upstream URL without a password), or nil when the target is off.
func (c Config) mcpRedacted() map[string]any {
	if targets, _ := c.Targets(); !slices.Contains(targets, TargetMCPProxy) {
		return nil
	}
	m := c.MCP
	// The command's arguments may carry a token: only the program and
	// how many arguments follow it are logged.
	cmd := ""
	if argv := strings.Fields(m.UpstreamCmd); len(argv) > 0 {
		cmd = argv[0]
		if len(argv) > 1 {
			cmd += fmt.Sprintf(" (%d arguments)", len(argv)-1)
		}
	}
	return map[string]any{"upstream_cmd": cmd, "upstream_url": redactURL(m.UpstreamURL), "addr": m.Addr, "path": m.Path,
		"stdio": m.Stdio, "tenant": m.Tenant, "session": m.Session, "manifest": m.Manifest, "decision_timeout": m.DecisionTimeout.String(),
		"max_sessions": m.MaxSessions, "idle_timeout": m.IdleTimeout.String()}
}
