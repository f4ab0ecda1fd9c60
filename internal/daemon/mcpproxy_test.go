package daemon

import (
	"context"
	"encoding/json"
	"errors"
	"io"
	"io/fs"
	"log/slog"
	"maps"
	"net/http"
	"net/http/httptest"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"
)

// fakeMCPServer is a minimal Streamable HTTP MCP server: initialize,
// tools/list (search and rm_rf) and tools/call (echoes the tool name).
func fakeMCPServer() http.Handler {
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if r.Method != http.MethodPost {
			w.WriteHeader(http.StatusMethodNotAllowed)
			return
		}
		var m struct {
			ID     json.RawMessage `json:"id"`
			Method string          `json:"method"`
			Params struct {
				Name string `json:"name"`
			} `json:"params"`
		}
		_ = json.NewDecoder(r.Body).Decode(&m)
		if len(m.ID) == 0 {
			w.WriteHeader(http.StatusAccepted)
			return
		}
		var result any
		switch m.Method {
		case "initialize":
			w.Header().Set("Mcp-Session-Id", "up-1")
			result = map[string]any{"protocolVersion": "2025-06-18", "capabilities": map[string]any{}, "serverInfo": map[string]any{"name": "fake", "version": "1"}}
		case "tools/list":
			result = map[string]any{"tools": []map[string]any{{"name": "search", "inputSchema": map[string]any{}}, {"name": "rm_rf", "inputSchema": map[string]any{}}}}
		default:
			result = map[string]any{"content": []map[string]any{{"type": "text", "text": "ran " + m.Params.Name}}}
		}
		w.Header().Set("Content-Type", "application/json")
		_ = json.NewEncoder(w).Encode(map[string]any{"jsonrpc": "2.0", "id": m.ID, "result": result})
	})
}

// TestMCPProxyTarget runs aegisd --dev --target all,mcp-proxy in front of
// a Streamable HTTP MCP server and calls a declared and an undeclared tool.
func TestMCPProxyTarget(t *testing.T) {
	up := httptest.NewServer(fakeMCPServer())
	defer up.Close()
	cfg := embeddedConfig(t)
	cfg.Dev, cfg.Target = true, "all,"+TargetMCPProxy
	cfg.MCP.UpstreamURL, cfg.MCP.Addr, cfg.MCP.Tenant = up.URL, "127.0.0.1:0", "acme"
	cfg.AddrFile = filepath.Join(t.TempDir(), "addrs.json")
	if err := os.WriteFile(cfg.AddrFile, []byte(`{"http":"stale"}`), 0o644); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { // runs after the daemon stopped
		if _, err := os.Stat(cfg.AddrFile); !errors.Is(err, fs.ErrNotExist) {
			t.Errorf("addr file after shutdown: %v, want it removed", err)
		}
	})
	d := startDaemon(t, cfg)
	waitReady(t, d) // ready includes the MCP proxy listening
	if d.MCPAddr() == "" {
		t.Fatal("ready, but the MCP proxy reports no address")
	}
	var addrs map[string]string
	for deadline := time.Now().Add(10 * time.Second); ; time.Sleep(20 * time.Millisecond) {
		b, err := os.ReadFile(cfg.AddrFile)
		if err == nil && json.Unmarshal(b, &addrs) == nil && addrs["http"] != "stale" {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("addr file: %s, %v", b, err)
		}
	}
	want := map[string]string{"http": d.HTTPAddr(), "kafka": d.Brokers()[0], "mcp": d.MCPAddr()}
	if !maps.Equal(addrs, want) {
		t.Fatalf("addr file %v, want %v", addrs, want)
	}
	c := &mcpClient{url: "http://" + d.MCPAddr() + "/mcp"}
	c.initialize(t)
	post := func(body string) string {
		t.Helper()
		got, err := c.post(body)
		if err != nil {
			t.Fatal(err)
		}
		return got
	}
	if got := post(`{"jsonrpc":"2.0","id":2,"method":"tools/list"}`); !strings.Contains(got, `"search"`) || strings.Contains(got, "rm_rf") {
		t.Fatalf("tools/list: %s, want search only", got)
	}
	if got := post(`{"jsonrpc":"2.0","id":3,"method":"tools/call","params":{"name":"search","arguments":{"q":"x"}}}`); !strings.Contains(got, "ran search") {
		t.Fatalf("allowed call: %s", got)
	}
	if got := post(`{"jsonrpc":"2.0","id":4,"method":"tools/call","params":{"name":"rm_rf","arguments":{}}}`); !strings.Contains(got, `"code":-32000`) || !strings.Contains(got, "PERMISSION_UNDECLARED") {
		t.Fatalf("undeclared call: %s", got)
	}
	if got := httpGet(t, "http://"+d.HTTPAddr()+"/metrics"); !strings.Contains(got, `aegis_mcp_tool_calls_total{outcome="allow"} 1`) {
		t.Fatal("metrics: no aegis_mcp_tool_calls_total for the allowed call")
	}
}

func TestMCPProxyTargetConfig(t *testing.T) {
	cases := []struct {
		name string
		edit func(*Config)
		want string
	}{
		{"all plus proxy", func(c *Config) { c.Dev, c.Target, c.MCP.UpstreamCmd = true, "all,mcp-proxy", "server" }, ""},
		{"proxy needs an upstream", func(c *Config) { c.Dev, c.Target = true, "mcp-proxy" }, "mcp-upstream"},
		{"proxy needs the gateway", func(c *Config) { c.Target, c.MCP.UpstreamCmd = "mcp-proxy", "server" }, "--api-keys or --dev"},
		{"upstream flags unused without the target", func(c *Config) {}, ""},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			c := Defaults()
			tc.edit(&c)
			err := c.Validate()
			if (tc.want == "") != (err == nil) || (err != nil && !strings.Contains(err.Error(), tc.want)) {
				t.Fatalf("Validate: %v, want %q", err, tc.want)
			}
		})
	}
	c := Defaults()
	c.Target = "sealer,all,mcp-proxy"
	got, err := c.Targets()
	if err != nil || strings.Join(got, ",") != "mcp-proxy,decider,sealer,projector" {
		t.Fatalf("Targets: %v %v, want the proxy first, then every stage in order", got, err)
	}
}

// TestMCPCallInFlightAtShutdown: a call allowed and running at the server
// when aegisd is told to stop still has its execution and result recorded,
// and its answer reaches the agent: the proxy stops before the gateway it
// publishes through.
func TestMCPCallInFlightAtShutdown(t *testing.T) {
	running := make(chan struct{}, 1)
	fake := fakeMCPServer()
	up := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		b, _ := io.ReadAll(r.Body)
		if strings.Contains(string(b), `"tools/call"`) {
			select {
			case running <- struct{}{}:
			default:
			}
			time.Sleep(time.Second) // the tool takes a while
		}
		r.Body = io.NopCloser(strings.NewReader(string(b)))
		fake.ServeHTTP(w, r)
	}))
	defer up.Close()
	cfg := embeddedConfig(t)
	cfg.Dev, cfg.Target = true, "all,"+TargetMCPProxy
	cfg.MCP.UpstreamURL, cfg.MCP.Addr, cfg.MCP.Tenant = up.URL, "127.0.0.1:0", "acme"
	if err := cfg.Validate(); err != nil {
		t.Fatal(err)
	}
	d := New(cfg, slog.New(slog.NewTextHandler(io.Discard, nil)))
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- d.Run(ctx) }()
	defer func() { cancel(); <-done }()
	waitReady(t, d)
	c := &mcpClient{url: "http://" + d.MCPAddr() + "/mcp"}
	c.initialize(t)
	got := make(chan string, 1)
	go func() {
		r, err := c.post(`{"jsonrpc":"2.0","id":3,"method":"tools/call","params":{"name":"search","arguments":{"q":"x"}}}`)
		if err != nil {
			r = err.Error()
		}
		got <- r
	}()
	select {
	case <-running:
	case <-time.After(20 * time.Second):
		t.Fatal("the call never reached the server")
	}
	cancel() // SIGTERM while the tool runs
	if r := <-got; !strings.Contains(r, "ran search") {
		t.Errorf("an allowed call whose tool ran was not answered (its audit records failed?): %s", r)
	}
	if err := <-done; err != nil {
		t.Errorf("daemon: %v", err)
	}
	done <- nil // for the deferred wait
}

// mcpClient talks Streamable HTTP to the proxy and keeps the session id
// it is given.
type mcpClient struct {
	url, session string
	client       *http.Client // nil: http.DefaultClient
}

func (c *mcpClient) post(body string) (string, error) {
	req, _ := http.NewRequest(http.MethodPost, c.url, strings.NewReader(body))
	req.Header.Set("Content-Type", "application/json")
	req.Header.Set("Accept", "application/json, text/event-stream")
	if c.session != "" {
		req.Header.Set("Mcp-Session-Id", c.session)
	}
	hc := c.client
	if hc == nil {
		hc = http.DefaultClient
	}
	resp, err := hc.Do(req)
	if err != nil {
		return "", err
	}
	defer resp.Body.Close()
	if s := resp.Header.Get("Mcp-Session-Id"); s != "" {
		c.session = s
	}
	b, err := io.ReadAll(resp.Body)
	return string(b), err
}

// initialize opens the session, retrying while the proxy comes up.
func (c *mcpClient) initialize(tb testing.TB) {
	tb.Helper()
	var got string
	var err error
	for deadline := time.Now().Add(10 * time.Second); ; time.Sleep(50 * time.Millisecond) {
		if got, err = c.post(mcpInitialize); err == nil && strings.Contains(got, `"serverInfo"`) {
			return
		}
		if time.Now().After(deadline) {
			tb.Fatalf("initialize through aegisd never succeeded: %v %s", err, got)
		}
	}
}

const mcpInitialize = `{"jsonrpc":"2.0","id":1,"method":"initialize","params":{"protocolVersion":"2025-06-18","capabilities":{},"clientInfo":{"name":"t","version":"1"}}}`
