package ingest

import (
	"bytes"
	"context"
	"encoding/json"
	"io"
	"log/slog"
	"net/http"
	"net/http/httptest"
	"os"
	"path/filepath"
	"sync"
	"testing"
	"time"

	"aegis.dev/aegis/decider"
	"aegis.dev/aegis/decider/policy"
	"aegis.dev/aegis/internal/ctl"
	"aegis.dev/aegis/internal/pipeline"
	"aegis.dev/aegis/internal/stream"
	"aegis.dev/aegis/schemas/envelope"
	"aegis.dev/aegis/schemas/manifest"
)

// Test credentials: key → entry.
var testKeys = map[string]KeyEntry{
	"acme-agent":    {ID: "acme-agent", Tenant: "acme", Role: RoleAgent},
	"acme-operator": {ID: "acme-operator", Tenant: "acme", Role: RoleOperator},
	"acme-auditor":  {ID: "acme-auditor", Tenant: "acme", Role: RoleAuditor},
	"globex-agent":  {ID: "globex-agent", Tenant: "globex", Role: RoleAgent},
	"globex-op":     {ID: "globex-op", Tenant: "globex", Role: RoleOperator},
	// An agent key bound to one kind of agent's manifests.
	"acme-support": {ID: "acme-support", Tenant: "acme", Role: RoleAgent, Manifests: []string{"support", "triage@2.0.0"}},
}

// clock is a settable test clock.
type clock struct {
	mu sync.Mutex
	t  time.Time
}

func (c *clock) now() time.Time {
	c.mu.Lock()
	defer c.mu.Unlock()
	if c.t.IsZero() {
		return time.Now()
	}
	return c.t
}

func (c *clock) set(t time.Time) {
	c.mu.Lock()
	defer c.mu.Unlock()
	c.t = t
}

type harness struct {
	srv     *Server
	url     string
	brokers []string
	topics  pipeline.Topics
	clock   *clock
	// run starts the gateway's Run (once), for a harness with lateRun.
	run func()
	// stopDecider stops the decider stage until startDecider runs a new
	// one (with the same transactional ID and group).
	stopDecider, startDecider func()
}

type harnessOpts struct {
	dev       bool
	noDecider bool
	store     Store
	cfg       func(*Config)
	// noExpirySweep: the gateway expires approvals only when the test
	// calls expireApprovals, not on Run's ticker.
	noExpirySweep bool
	// lateRun: the gateway's Run starts only when the test calls
	// harness.run; the HTTP API serves from the start.
	lateRun bool
	// deciderSecret, if set, is the decider's approval secret instead
	// of the gateway's (a misconfigured deployment).
	deciderSecret []byte
}

// newHarness runs an embedded broker, the decider stage (unless
// noDecider) and a gateway behind an httptest server, until the test ends.
func newHarness(tb testing.TB, o harnessOpts) *harness {
	tb.Helper()
	ctx, cancel := context.WithCancel(context.Background())
	// The broker outlives ctx: the stages must finish or abort their open
	// transactions against it while they stop; Cleanup closes it last.
	emb, err := stream.StartEmbedded(context.Background(), stream.EmbeddedConfig{Addr: "127.0.0.1:0", Partitions: 3})
	if err != nil {
		tb.Fatal(err)
	}
	topics := pipeline.NewTopics("aegis.")
	if err := stream.EnsureTopics(ctx, emb.Brokers(), topics.Specs(3, 1<<20)); err != nil {
		tb.Fatal(err)
	}
	pe, err := policy.New(policy.Default())
	if err != nil {
		tb.Fatal(err)
	}
	reg, err := manifest.LoadDir("testdata/manifests")
	if err != nil {
		tb.Fatal(err)
	}
	eng := decider.NewEngine(pe, reg)
	var wg sync.WaitGroup
	var tr *stream.Transactor
	var stopDecider func()
	// The decider checks approval grants with the gateway's secret, as in
	// an all-in-one aegisd; it starts once the gateway (and its secret)
	// exists.
	var approvalSecret []byte
	startDecider := func() {
		st := decider.NewStage(eng, decider.StageConfig{Topics: topics, Partitions: 3, ApprovalSecret: approvalSecret}, nil, nil)
		tc := st.TransactConfig()
		tc.Brokers, tc.Group, tc.TransactionalID = emb.Brokers(), "aegis.decider", "aegis.decider-test"
		tc.SessionTimeout, tc.HeartbeatInterval = 6*time.Second, time.Second
		if tr, err = stream.NewTransactor(tc, st.NewProcessor); err != nil {
			tb.Fatal(err)
		}
		dctx, dcancel := context.WithCancel(ctx)
		done := make(chan struct{})
		wg.Add(1)
		go func(tr *stream.Transactor) {
			defer wg.Done()
			defer close(done)
			if err := tr.Run(dctx); err != nil {
				tb.Errorf("decider: %v", err)
			}
		}(tr)
		stopDecider = func() { dcancel(); <-done }
	}
	cfg := Defaults()
	if !o.dev {
		dir := tb.TempDir()
		var f KeyFile
		for key, e := range testKeys {
			e.SHA256 = HashKey(key)
			f.Keys = append(f.Keys, e)
		}
		b, _ := json.Marshal(f)
		cfg.APIKeys = filepath.Join(dir, "keys.json")
		cfg.ApprovalSecretFile = filepath.Join(dir, "secret")
		if err := os.WriteFile(cfg.APIKeys, b, 0o600); err != nil {
			tb.Fatal(err)
		}
		if err := os.WriteFile(cfg.ApprovalSecretFile, bytes.Repeat([]byte("s"), 32), 0o600); err != nil {
			tb.Fatal(err)
		}
	}
	if o.cfg != nil {
		o.cfg(&cfg)
	}
	clk := &clock{}
	srv, err := New(cfg, Env{Brokers: emb.Brokers(), Topics: topics, Dev: o.dev, Engine: eng},
		WithClock(clk.now), WithLogger(slog.New(slog.NewTextHandler(io.Discard, nil))), WithStore(o.store))
	if err != nil {
		tb.Fatal(err)
	}
	srv.noExpirySweep = o.noExpirySweep
	approvalSecret = srv.ApprovalSecret()
	if o.deciderSecret != nil {
		approvalSecret = o.deciderSecret
	}
	if !o.noDecider {
		startDecider()
	}
	sctx, scancel := context.WithCancel(context.Background())
	var runOnce sync.Once
	run := func() {
		runOnce.Do(func() {
			wg.Add(1)
			go func() {
				defer wg.Done()
				if err := srv.Run(sctx); err != nil {
					tb.Errorf("ingest: %v", err)
				}
			}()
		})
	}
	if !o.lateRun {
		run()
	}
	mux := http.NewServeMux()
	srv.Routes(mux)
	hs := httptest.NewServer(mux)
	tb.Cleanup(func() {
		hs.Close()
		scancel()
		cancel()
		wg.Wait()
		emb.Close()
	})
	deadline := time.Now().Add(30 * time.Second)
	for (!srv.Ready() || (tr != nil && !tr.Ready())) && time.Now().Before(deadline) {
		time.Sleep(20 * time.Millisecond)
	}
	if !srv.Ready() || (tr != nil && !tr.Ready()) {
		tb.Fatal("pipeline did not become ready")
	}
	h := &harness{srv: srv, url: hs.URL, brokers: emb.Brokers(), topics: topics, clock: clk, run: run}
	h.stopDecider = func() { stopDecider() }
	h.startDecider = func() {
		startDecider()
		deadline := time.Now().Add(30 * time.Second)
		for !tr.Ready() && time.Now().Before(deadline) {
			time.Sleep(20 * time.Millisecond)
		}
	}
	return h
}

// tailStarted starts the gateway's reply tail and waits until its start
// offsets are listed, so that a test's deadline covers only the publish and
// the wait for the verdict.
func (h *harness) tailStarted(tb testing.TB) {
	tb.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	if err := h.srv.awaitTail(ctx); err != nil {
		tb.Fatalf("reply tail: %v", err)
	}
}

// result is a finished response: status and headers (the body is read).
type result struct {
	StatusCode int
	Header     http.Header
}

// do sends a request and decodes the JSON response into out (if not nil).
func (h *harness) do(tb testing.TB, method, path, key, contentType, body string, out any) result {
	tb.Helper()
	req, err := http.NewRequest(method, h.url+path, bytes.NewBufferString(body))
	if err != nil {
		tb.Fatal(err)
	}
	if contentType != "" {
		req.Header.Set("Content-Type", contentType)
	}
	if key != "" {
		req.Header.Set("Authorization", "Bearer "+key)
	}
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		tb.Fatal(err)
	}
	defer resp.Body.Close()
	raw, err := io.ReadAll(resp.Body)
	if err != nil {
		tb.Fatal(err)
	}
	if out != nil {
		if err := json.Unmarshal(raw, out); err != nil {
			tb.Fatalf("%s %s: %d %s: %v", method, path, resp.StatusCode, raw, err)
		}
	}
	return result{resp.StatusCode, resp.Header}
}

// errorCode returns the error code of a response body.
type errResp struct {
	Error ErrorDetail `json:"error"`
}

// ctlDecide answers a decide request the way `aegisctl decide` does, with
// the harness's engine.
func ctlDecide(h *harness, body []byte) (*envelope.Decision, error) {
	return ctl.DecideOne(context.Background(), h.srv.env.Engine, body, true)
}
