package daemon

import (
	"context"
	"io"
	"log/slog"
	"net"
	"net/http"
	"os"
	"path/filepath"
	"runtime"
	"strings"
	"testing"
	"time"

	"aegis.dev/aegis/ingest"
)

// TestReferenceRequestsAgainstDevDaemon sends the reference
// implementation's quick-start requests, unchanged, to aegisd --dev.
func TestReferenceRequestsAgainstDevDaemon(t *testing.T) {
	cfg := embeddedConfig(t)
	cfg.Dev = true
	referenceRequests(t, startDaemon(t, cfg))
}

// TestReferenceRequestsIntegration runs the same requests through aegisd
// --dev on real Kafka: HTTP API, pipeline, projector and session reads.
func TestReferenceRequestsIntegration(t *testing.T) {
	brokers := integrationBrokers(t)
	cfg := embeddedConfig(t)
	cfg.Dev = true
	cfg.Brokers = brokers
	cfg.TopicPrefix = "it-ref-" + randomSuffix(t) + "."
	cfg.SessionTimeout = 6 * time.Second
	dropTopicsOnCleanup(t, brokers, cfg.TopicPrefix)
	referenceRequests(t, startDaemon(t, cfg))
}

func referenceRequests(t *testing.T, d *Daemon) {
	base := "http://" + d.HTTPAddr()
	get := func(path string) (int, string) {
		resp, err := http.Get(base + path)
		if err != nil {
			t.Fatal(err)
		}
		defer resp.Body.Close()
		b, _ := io.ReadAll(resp.Body)
		return resp.StatusCode, string(b)
	}
	post := func(path, body string) (int, string) {
		resp, err := http.Post(base+path, "application/json", strings.NewReader(body))
		if err != nil {
			t.Fatal(err)
		}
		defer resp.Body.Close()
		b, _ := io.ReadAll(resp.Body)
		return resp.StatusCode, string(b)
	}
	if code, body := get("/healthz"); code != 200 {
		t.Fatalf("healthz: %d %s", code, body)
	}
	deadline := time.Now().Add(30 * time.Second)
	for code, _ := get("/readyz"); code != 200; code, _ = get("/readyz") {
		if time.Now().After(deadline) {
			t.Fatal("readyz never answered 200")
		}
		time.Sleep(50 * time.Millisecond)
	}
	code, body := post("/v1/events", `{"tenant_id":"acme","session_id":"sess-001","seq":0,"ts_unix_ms":1700000000000,"event_type":"TOOL_CALL_PROPOSED","payload":{"tool_name":"read_file","call_id":"c1","args":{}}}`)
	if code != 202 || !strings.Contains(body, `"status":"accepted"`) {
		t.Fatalf("events: %d %s", code, body)
	}
	code, body = post("/v1/policy/decide", `{"event":{"event_type":"TOOL_CALL_PROPOSED","payload":{"tool_name":"read_file","call_id":"c1","args":{}}},"snapshot":{"steps_consumed":3,"tool_calls_consumed":2,"wall_time_ms":5000},"manifest":{"schema":"aegis.dev/manifest/v0.1","name":"my-skill","version":"0.1.0","publisher":"acme","permissions":{"tools":["read_file"],"budgets":{"max_steps":24,"max_tool_calls":12,"max_wall_time_ms":120000}},"sandbox":{"required":false},"integrity":{}}}`)
	if code != 200 || !strings.Contains(body, `"outcome":"allow"`) {
		t.Fatalf("decide: %d %s", code, body)
	}
	if code, body := get("/metrics"); code != 200 || !strings.Contains(body, "aegis_ingest_events_total") {
		t.Fatalf("metrics: %d", code)
	}
	// Paths and methods the API does not serve get its error format too.
	if code, body := get("/v1/no-such-endpoint"); code != 404 || !strings.Contains(body, `"code":"ROUTE_NOT_FOUND"`) {
		t.Fatalf("unknown path: %d %s", code, body)
	}
	if code, body := get("/v1/events"); code != 405 || !strings.Contains(body, `"code":"METHOD_NOT_ALLOWED"`) {
		t.Fatalf("GET /v1/events: %d %s", code, body)
	}
	// The accepted event goes all the way: sealed, projected into the
	// embedded store, and served back by the session endpoints.
	deadline = time.Now().Add(30 * time.Second)
	for {
		code, body = get("/v1/sessions/sess-001/events?tenant_id=acme")
		if code == 200 && strings.Contains(body, `"hash"`) {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("session events never served: %d %s", code, body)
		}
		time.Sleep(100 * time.Millisecond)
	}
	if code, body := get("/v1/sessions/sess-001/verify?tenant_id=acme"); code != 200 || !strings.Contains(body, `"valid":true`) {
		t.Fatalf("verify: %d %s", code, body)
	}
	if code, body := get("/v1/sessions/sess-001?tenant_id=acme"); code != 200 || !strings.Contains(body, `"tool_calls":1`) {
		t.Fatalf("snapshot: %d %s", code, body)
	}
	// A synchronous proposal waits for its decision from the decider (up to
	// 30 s: on a broker that has just started, the first transactions wait
	// for the coordinator to load its partitions).
	code, body = post("/v1/sessions/sess-002/proposals?tenant_id=acme&timeout_ms=30000", `{"tenant_id":"acme","payload":{"tool_name":"rm_rf","call_id":"c9","args":{}}}`)
	if code != 200 || !strings.Contains(body, `"outcome":"deny"`) || !strings.Contains(body, `"seq":1`) {
		t.Fatalf("proposal: %d %s", code, body)
	}
}

// TestAPIDisabledWithoutKeys: outside dev mode and without --api-keys only
// the operational endpoints are served.
func TestAPIDisabledWithoutKeys(t *testing.T) {
	d := startDaemon(t, embeddedConfig(t))
	resp, err := http.Post("http://"+d.HTTPAddr()+"/v1/events", "application/json", strings.NewReader(`{}`))
	if err != nil {
		t.Fatal(err)
	}
	resp.Body.Close()
	if resp.StatusCode != http.StatusNotFound {
		t.Fatalf("status %d, want 404", resp.StatusCode)
	}
}

// TestPprofOnlyWhenAsked: the profiling endpoints are off by default and
// served with --pprof, never /debug/pprof/cmdline (the command line may
// hold the store's password), and behind an operator key when the API is
// enabled.
func TestPprofOnlyWhenAsked(t *testing.T) {
	get := func(d *Daemon, path, key string) int {
		t.Helper()
		req, _ := http.NewRequest(http.MethodGet, "http://"+d.HTTPAddr()+path, nil)
		if key != "" {
			req.Header.Set("Authorization", "Bearer "+key)
		}
		resp, err := http.DefaultClient.Do(req)
		if err != nil {
			t.Fatal(err)
		}
		_, _ = io.Copy(io.Discard, resp.Body)
		resp.Body.Close()
		return resp.StatusCode
	}
	for _, on := range []bool{false, true} {
		cfg := embeddedConfig(t)
		cfg.Pprof = on
		d := startDaemon(t, cfg)
		if got := get(d, "/debug/pprof/heap", "") == http.StatusOK; got != on {
			t.Fatalf("--pprof=%v: GET /debug/pprof/heap answered %d", on, get(d, "/debug/pprof/heap", ""))
		}
		if code := get(d, "/debug/pprof/cmdline", ""); code != http.StatusNotFound {
			t.Fatalf("--pprof=%v: GET /debug/pprof/cmdline answered %d, want 404", on, code)
		}
	}

	dir := t.TempDir()
	keys := filepath.Join(dir, "keys.json")
	secret := filepath.Join(dir, "secret")
	if err := os.WriteFile(keys, []byte(`{"keys":[`+
		`{"id":"ops","tenant":"acme","role":"operator","sha256":"`+ingest.HashKey("ops-key")+`"},`+
		`{"id":"bot","tenant":"acme","role":"agent","sha256":"`+ingest.HashKey("agent-key")+`"}]}`), 0o600); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(secret, []byte(strings.Repeat("s", 32)), 0o600); err != nil {
		t.Fatal(err)
	}
	cfg := embeddedConfig(t)
	cfg.Pprof = true
	cfg.Ingest.APIKeys, cfg.Ingest.ApprovalSecretFile = keys, secret
	d := startDaemon(t, cfg)
	for _, c := range []struct {
		key  string
		want int
	}{{"", http.StatusUnauthorized}, {"wrong", http.StatusUnauthorized}, {"agent-key", http.StatusForbidden}, {"ops-key", http.StatusOK}} {
		if code := get(d, "/debug/pprof/heap", c.key); code != c.want {
			t.Errorf("API keys on, key %q: GET /debug/pprof/heap answered %d, want %d", c.key, code, c.want)
		}
	}
	if code := get(d, "/debug/pprof/cmdline", "ops-key"); code != http.StatusNotFound {
		t.Errorf("API keys on: GET /debug/pprof/cmdline answered %d, want 404", code)
	}
}

// TestStalledRequestBodyIsCut: a client that sends headers and then stops
// sending its body gets 408 REQUEST_TIMEOUT and loses the connection after
// the read timeout; a request that was read whole may take longer.
func TestStalledRequestBodyIsCut(t *testing.T) {
	old := httpReadTimeout
	httpReadTimeout = time.Second
	t.Cleanup(func() { httpReadTimeout = old })
	cfg := embeddedConfig(t)
	cfg.Dev = true
	d := startDaemon(t, cfg)
	conn, err := net.Dial("tcp", d.HTTPAddr())
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close()
	if _, err := io.WriteString(conn, "POST /v1/events HTTP/1.1\r\nHost: aegis\r\nContent-Type: application/json\r\nContent-Length: 100\r\n\r\n{"); err != nil {
		t.Fatal(err)
	}
	_ = conn.SetReadDeadline(time.Now().Add(20 * time.Second))
	start := time.Now()
	b, err := io.ReadAll(conn)
	if err != nil {
		t.Fatalf("connection still open after %v: %v (read %q)", time.Since(start), err, b)
	}
	if !strings.HasPrefix(string(b), "HTTP/1.1 408 ") || !strings.Contains(string(b), `"code":"REQUEST_TIMEOUT"`) {
		t.Fatalf("answer %q, want 408 REQUEST_TIMEOUT", b)
	}
	// A request whose body arrived may wait longer than the read timeout:
	// a proposal waiting 2.5 s for its approval gets its answer.
	start = time.Now()
	resp, err := http.Post("http://"+d.HTTPAddr()+"/v1/sessions/rt1/proposals?tenant_id=acme&timeout_ms=30000&approval_wait_ms=2500",
		"application/json", strings.NewReader(`{"payload":{"tool_name":"send_email","call_id":"c1","args":{}}}`))
	if err != nil {
		t.Fatal(err)
	}
	b, _ = io.ReadAll(resp.Body)
	resp.Body.Close()
	if resp.StatusCode != http.StatusOK || !strings.Contains(string(b), `"require_approval"`) || time.Since(start) < 2500*time.Millisecond {
		t.Fatalf("after %v: %d %s", time.Since(start), resp.StatusCode, b)
	}
}

// TestFailedStartReleasesClients: when Run fails after the HTTP API was
// built (here: its port is taken), the API's Kafka client and audit store
// are released, not left running in the embedding process.
func TestFailedStartReleasesClients(t *testing.T) {
	taken, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer taken.Close()
	settle := func() int {
		n := runtime.NumGoroutine()
		for range 50 {
			time.Sleep(20 * time.Millisecond)
			m := runtime.NumGoroutine()
			if m == n {
				break
			}
			n = m
		}
		return n
	}
	before := settle()
	cfg := embeddedConfig(t)
	cfg.Dev = true
	cfg.HTTPAddr = taken.Addr().String()
	err = New(cfg, slog.New(slog.NewTextHandler(io.Discard, nil))).Run(context.Background())
	if err == nil || !strings.Contains(err.Error(), "http listener") {
		t.Fatalf("Run: %v, want an http listener error", err)
	}
	deadline := time.Now().Add(10 * time.Second)
	after := settle()
	for after > before && time.Now().Before(deadline) {
		after = settle()
	}
	if after > before {
		buf := make([]byte, 1<<20)
		t.Fatalf("%d goroutines before Run, %d after it failed:\n%s", before, after, buf[:runtime.Stack(buf, true)])
	}
}
