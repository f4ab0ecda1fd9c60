package mcpproxy

import (
	"context"
	"fmt"
	"log/slog"
	"net/http"
	"net/http/httptest"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"aegis.dev/aegis/ingest"
	"aegis.dev/aegis/internal/testutil"
	"aegis.dev/aegis/schemas/envelope"
)

// recordingPipeline allows every call and keeps the payloads recorded.
type recordingPipeline struct {
	mu       sync.Mutex
	payloads []string
}

func (p *recordingPipeline) Propose(ctx context.Context, ev *envelope.Event) (*ingest.ProposalResponse, error) {
	return (&scriptedPipeline{outcome: envelope.Allow}).Propose(ctx, ev)
}

func (p *recordingPipeline) Record(_ context.Context, ev *envelope.Event) (uint64, error) {
	p.mu.Lock()
	defer p.mu.Unlock()
	p.payloads = append(p.payloads, string(ev.Type)+" "+string(ev.Payload))
	return 1, nil
}

// TestUpstreamCredentialsStayOut: the upstream URL's user info and query
// (credentials of the operator) reach neither the agent's error, the audit
// records nor the logs when the server fails.
func TestUpstreamCredentialsStayOut(t *testing.T) {
	var fail atomic.Bool
	fake := &fakeHTTPServer{sessions: map[string]bool{}}
	up := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if fail.Load() {
			http.Error(w, "boom", http.StatusBadGateway)
			return
		}
		fake.ServeHTTP(w, r)
	}))
	defer up.Close()
	cfg := Defaults()
	cfg.UpstreamURL, cfg.Addr = strings.Replace(up.URL, "http://", "http://svc:hunter2@", 1)+"/mcp?token=tok-SECRET", "127.0.0.1:0"
	var logs testutil.SyncBuffer
	pipe := &recordingPipeline{}
	p, err := New(cfg, pipe, nil, WithLogger(slog.New(slog.NewTextHandler(&logs, nil))))
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- p.Run(ctx) }()
	for deadline := time.Now().Add(10 * time.Second); !p.Ready(); time.Sleep(10 * time.Millisecond) {
		if time.Now().After(deadline) {
			t.Fatal("proxy not ready")
		}
	}
	c := connect(t, "http://"+p.Addr()+cfg.Path)
	fail.Store(true)
	m := c.request(t, "tools/call", map[string]any{"name": "echo", "arguments": map[string]any{}})
	cancel()
	<-done
	if m.Error == nil || !strings.Contains(m.Error.Message, "502") {
		t.Fatalf("want the server's failure, got %+v", m)
	}
	pipe.mu.Lock()
	audit := strings.Join(pipe.payloads, "\n")
	pipe.mu.Unlock()
	for what, s := range map[string]string{"log": logs.String(), "agent error": m.Error.Message, "audit": audit} {
		if strings.Contains(s, "hunter2") || strings.Contains(s, "tok-SECRET") || strings.Contains(s, "svc:") {
			t.Errorf("%s carries the upstream credentials: %s", what, s)
		}
	}
	if !strings.Contains(logs.String(), up.URL+"/mcp") {
		t.Errorf("the log does not name the upstream at all:\n%s", logs.String())
	}
}

// TestTenantSessionLimit: one tenant's agents cannot take every session;
// another tenant still opens one.
func TestTenantSessionLimit(t *testing.T) {
	keys, err := ingest.NewKeys([]ingest.KeyEntry{
		{ID: "a", Tenant: "acme", Role: ingest.RoleAgent, SHA256: ingest.HashKey("key-acme")},
		{ID: "g", Tenant: "globex", Role: ingest.RoleAgent, SHA256: ingest.HashKey("key-globex")}})
	if err != nil {
		t.Fatal(err)
	}
	url := keyedProxy(t, keys, func(c *Config) { c.MaxSessions, c.MaxTenantSessions = 4, 3 })
	var got []int
	for range 4 {
		got = append(got, initializeWith(t, url, "key-acme"))
	}
	got = append(got, initializeWith(t, url, "key-globex"))
	if want := []int{200, 200, 200, 503, 200}; fmt.Sprint(got) != fmt.Sprint(want) {
		t.Fatalf("statuses %v, want %v (acme stops at 3 of 4 sessions, globex gets the last)", got, want)
	}
}

// TestKeyBoundToOtherManifests: a key bound to manifests (ingest
// KeyEntry.Manifests) may not use a proxy whose --mcp-manifest is not one
// of them: its sessions would be decided under that manifest.
func TestKeyBoundToOtherManifests(t *testing.T) {
	keys, err := ingest.NewKeys([]ingest.KeyEntry{
		{ID: "support", Tenant: "acme", Role: ingest.RoleAgent, SHA256: ingest.HashKey("key-support"), Manifests: []string{"support"}},
		{ID: "deploy", Tenant: "acme", Role: ingest.RoleAgent, SHA256: ingest.HashKey("key-deploy"), Manifests: []string{"deploy-bot"}}})
	if err != nil {
		t.Fatal(err)
	}
	url := keyedProxy(t, keys, func(c *Config) { c.Manifest = "deploy-bot@1.2.0" })
	for key, want := range map[string]int{"key-support": http.StatusForbidden, "key-deploy": http.StatusOK} {
		if got := initializeWith(t, url, key); got != want {
			t.Errorf("%s: status %d, want %d", key, got, want)
		}
	}
}

// keyedProxy serves a proxy that authenticates with keys, over a recording
// upstream, with the config edit applied; it returns its URL.
func keyedProxy(t *testing.T, keys *ingest.Keys, edit func(*Config)) string {
	t.Helper()
	cfg := Defaults()
	cfg.UpstreamCmd = "unused"
	edit(&cfg)
	p, err := New(cfg, &countingPipeline{}, nil, WithKeys(keys))
	if err != nil {
		t.Fatal(err)
	}
	p.dial = func() (upstream, error) { return &recUpstream{}, nil }
	hs := httptest.NewServer(p.Handler())
	t.Cleanup(hs.Close)
	t.Cleanup(p.closeAll)
	return hs.URL
}

// initializeWith sends an initialize with the API key and returns the
// HTTP status.
func initializeWith(t *testing.T, url, key string) int {
	t.Helper()
	req, _ := http.NewRequest("POST", url, strings.NewReader(`{"jsonrpc":"2.0","id":0,"method":"initialize","params":{}}`))
	req.Header.Set("Content-Type", "application/json")
	req.Header.Set("Accept", "application/json, text/event-stream")
	req.Header.Set("Authorization", "Bearer "+key)
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	resp.Body.Close()
	return resp.StatusCode
}

// TestInitializeNotificationOpensNothing: an initialize without an id is
// refused before a session (and its upstream) is opened.
func TestInitializeNotificationOpensNothing(t *testing.T) {
	var dials atomic.Int64
	p, url := inProcess(t, &countingPipeline{}, &recUpstream{}, nil)
	p.dial = func() (upstream, error) { dials.Add(1); return &recUpstream{}, nil }
	for range 3 {
		if st, _, _ := (&client{url: url}).post(t, `{"jsonrpc":"2.0","method":"initialize","params":{}}`); st != http.StatusBadRequest {
			t.Errorf("status %d, want 400", st)
		}
	}
	p.mu.Lock()
	n := len(p.sessions)
	p.mu.Unlock()
	if n != 0 || dials.Load() != 0 {
		t.Errorf("initialize notifications opened %d sessions (%d upstream dials)", n, dials.Load())
	}
}
