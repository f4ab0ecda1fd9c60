package daemon

import (
	"crypto/tls"
	"net/http"
	"net/http/httptest"
	"strings"
	"testing"
	"time"

	"aegis.dev/aegis/internal/testutil"
)

// TestMCPProxyServesTLSLikeTheAPI: with --tls-cert and --tls-key the MCP
// proxy's port speaks TLS too (agents send their API keys to it), and so
// does the HTTP API; plain HTTP gets nowhere on either.
func TestMCPProxyServesTLSLikeTheAPI(t *testing.T) {
	certFile, keyFile, _, pool := testutil.SelfSignedCert(t)
	up := httptest.NewServer(fakeMCPServer())
	defer up.Close()
	cfg := embeddedConfig(t)
	cfg.Dev, cfg.Target = true, "all,"+TargetMCPProxy
	cfg.Ingest.TLSCert, cfg.Ingest.TLSKey = certFile, keyFile
	cfg.MCP.UpstreamURL, cfg.MCP.Addr, cfg.MCP.Tenant = up.URL, "127.0.0.1:0", "acme"
	d := startDaemon(t, cfg)
	client := &http.Client{Timeout: 10 * time.Second, Transport: &http.Transport{TLSClientConfig: &tls.Config{RootCAs: pool}}}
	for deadline := time.Now().Add(30 * time.Second); ; time.Sleep(100 * time.Millisecond) {
		resp, err := client.Get("https://" + d.HTTPAddr() + "/readyz")
		if err == nil {
			resp.Body.Close()
			if resp.StatusCode == http.StatusOK {
				break
			}
		}
		if time.Now().After(deadline) {
			t.Fatalf("the HTTP API never became ready over https: %v", err)
		}
	}
	(&mcpClient{url: "https://" + d.MCPAddr() + "/mcp", client: client}).initialize(t)
	plain := &mcpClient{url: "http://" + d.MCPAddr() + "/mcp", client: &http.Client{Timeout: 5 * time.Second}}
	if got, err := plain.post(mcpInitialize); err == nil && strings.Contains(got, "serverInfo") {
		t.Errorf("the MCP port answered plain HTTP: %s", got)
	}
	if resp, err := (&http.Client{Timeout: 5 * time.Second}).Get("http://" + d.HTTPAddr() + "/readyz"); err == nil {
		resp.Body.Close()
		if resp.StatusCode == http.StatusOK {
			t.Error("the HTTP API answered plain HTTP")
		}
	}
}
