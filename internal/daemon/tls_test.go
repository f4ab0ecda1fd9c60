package daemon

import (
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/tls"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/pem"
	"math/big"
	"net"
	"net/http"
	"net/http/httptest"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"
)

// selfSigned writes a certificate for 127.0.0.1 and its key, and returns
// their paths and a pool that trusts it.
func selfSigned(t *testing.T) (certFile, keyFile string, pool *x509.CertPool) {
	t.Helper()
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	tmpl := &x509.Certificate{SerialNumber: big.NewInt(1), Subject: pkix.Name{CommonName: "aegisd-test"},
		NotBefore: time.Now().Add(-time.Hour), NotAfter: time.Now().Add(time.Hour),
		IPAddresses: []net.IP{net.ParseIP("127.0.0.1")}, KeyUsage: x509.KeyUsageDigitalSignature, ExtKeyUsage: []x509.ExtKeyUsage{x509.ExtKeyUsageServerAuth}}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, tmpl, &key.PublicKey, key)
	if err != nil {
		t.Fatal(err)
	}
	kder, err := x509.MarshalECPrivateKey(key)
	if err != nil {
		t.Fatal(err)
	}
	dir := t.TempDir()
	certFile, keyFile = filepath.Join(dir, "cert.pem"), filepath.Join(dir, "key.pem")
	if err := os.WriteFile(certFile, pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: der}), 0o600); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(keyFile, pem.EncodeToMemory(&pem.Block{Type: "EC PRIVATE KEY", Bytes: kder}), 0o600); err != nil {
		t.Fatal(err)
	}
	cert, _ := x509.ParseCertificate(der)
	pool = x509.NewCertPool()
	pool.AddCert(cert)
	return certFile, keyFile, pool
}

// TestMCPProxyServesTLSLikeTheAPI: with --tls-cert and --tls-key the MCP
// proxy's port speaks TLS too (agents send their API keys to it), and so
// does the HTTP API; plain HTTP gets nowhere on either.
func TestMCPProxyServesTLSLikeTheAPI(t *testing.T) {
	certFile, keyFile, pool := selfSigned(t)
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
