package mcpproxy

import (
	"context"
	"log/slog"
	"net/http"
	"net/http/httptest"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"aegis.dev/aegis/ingest"
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
	var logs syncBuffer
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
