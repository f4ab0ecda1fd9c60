package conformance_test

import (
	"bytes"
	"context"
	"fmt"
	"io"
	"log/slog"
	"net/http"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"aegis.dev/aegis/conformance"
	"aegis.dev/aegis/internal/ctl"
	"aegis.dev/aegis/internal/daemon"
)

// decideLog replays through `aegisctl decide --events` with the
// conformance policy bundle, which startEmbedded's aegisd runs.
func decideLog(tb testing.TB) conformance.DecideLogFunc {
	tb.Helper()
	dir := tb.TempDir()
	if err := conformance.WritePolicy(dir); err != nil {
		tb.Fatal(err)
	}
	return func(ctx context.Context, events, manifests string) ([]byte, error) {
		var out, errb bytes.Buffer
		if code := ctl.Main(ctx, ctl.IO{Stdin: strings.NewReader(""), Stdout: &out, Stderr: &errb}, []string{"decide", "--events", events, "--manifests", manifests, "--policy", dir}); code != ctl.ExitOK {
			return nil, fmt.Errorf("aegisctl decide exited %d: %s", code, errb.String())
		}
		return out.Bytes(), nil
	}
}

// embeddedProvides is what startEmbedded's aegisd provides.
var embeddedProvides = []string{conformance.RequireShortApprovalTTL, conformance.RequireConformancePolicy}

// embeddedTarget is an aegisd started by startEmbedded.
type embeddedTarget struct {
	Base, Store string // the HTTP API's base URL, the SQLite audit store
	Keys        map[string]string
	Brokers     []string // the embedded broker, or the configured ones
	TopicPrefix string
	Secret      []byte // the approval secret
}

// options are the run options of every capability the target provides
// (without the store, which only TestPacksEmbedded owns).
func (e embeddedTarget) options(tb testing.TB) conformance.Options {
	return conformance.Options{Target: e.Base, Keys: e.Keys, Provides: embeddedProvides, DecideLog: decideLog(tb), Concurrency: 12,
		Brokers: e.Brokers, TopicPrefix: e.TopicPrefix, ApprovalSecret: e.Secret}
}

// startEmbedded runs aegisd in-process (temp data dir, the packs'
// manifests, the conformance policy bundle, one operator key per tenant,
// a 10 s approval TTL, an approval secret file).
func startEmbedded(tb testing.TB, packs []*conformance.Pack, mutate func(*daemon.Config)) embeddedTarget {
	tb.Helper()
	dir := tb.TempDir()
	mdir := filepath.Join(dir, "manifests")
	if err := conformance.WriteManifests(mdir, packs); err != nil {
		tb.Fatal(err)
	}
	cfg := daemon.Defaults()
	cfg.DataDir = filepath.Join(dir, "data")
	cfg.KafkaAddr = "127.0.0.1:0"
	cfg.HTTPAddr = "127.0.0.1:0"
	cfg.Partitions = 3
	cfg.Instance = "conformance"
	cfg.Manifests = mdir
	cfg.Policy = filepath.Join(dir, "policy")
	if err := conformance.WritePolicy(cfg.Policy); err != nil {
		tb.Fatal(err)
	}
	keyFile, keys, err := conformance.Credentials(packs)
	if err != nil {
		tb.Fatal(err)
	}
	cfg.Ingest.APIKeys = filepath.Join(dir, "keys.json")
	if err := os.WriteFile(cfg.Ingest.APIKeys, keyFile, 0o600); err != nil {
		tb.Fatal(err)
	}
	cfg.Ingest.ApprovalSecretFile = filepath.Join(dir, "approval.secret")
	secret := []byte("conformance-approval-secret-0123456789abcdef")
	if err := os.WriteFile(cfg.Ingest.ApprovalSecretFile, secret, 0o600); err != nil {
		tb.Fatal(err)
	}
	// Short enough for the expiry case to see an approval expire, long
	// enough for the other approval cases to settle theirs.
	cfg.Ingest.ApprovalTTL = 10 * time.Second // the most short-approval-ttl allows: room for the approving cases on a loaded machine
	if mutate != nil {
		mutate(&cfg)
	}
	if err := cfg.Validate(); err != nil {
		tb.Fatal(err)
	}
	d := daemon.New(cfg, slog.New(slog.NewTextHandler(io.Discard, nil)))
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- d.Run(ctx) }()
	if d.Brokers() == nil {
		cancel()
		tb.Fatalf("aegisd did not start: %v", <-done)
	}
	tb.Cleanup(func() {
		cancel()
		if err := <-done; err != nil {
			tb.Errorf("aegisd: %v", err)
		}
	})
	base := "http://" + d.HTTPAddr()
	waitReady(tb, base)
	return embeddedTarget{Base: base, Store: strings.TrimPrefix(cfg.StoreURL(), "sqlite:"), Keys: keys,
		Brokers: d.Brokers(), TopicPrefix: cfg.TopicPrefix, Secret: secret}
}

func waitReady(tb testing.TB, base string) {
	tb.Helper()
	deadline := time.Now().Add(60 * time.Second)
	for {
		resp, err := http.Get(base + "/readyz")
		if err == nil {
			resp.Body.Close()
			if resp.StatusCode == http.StatusOK {
				return
			}
		}
		if time.Now().After(deadline) {
			tb.Fatalf("%s never became ready", base)
		}
		time.Sleep(100 * time.Millisecond)
	}
}

// failures fails tb for every failed case, and for every skipped case
// unless allowSkip accepts it.
func failures(tb testing.TB, rep *conformance.Report, allowSkip func(conformance.CaseResult) bool) {
	tb.Helper()
	for _, c := range rep.Cases {
		switch {
		case c.Status == conformance.StatusFail:
			tb.Errorf("%s (%s): %s", c.ID, c.Requirement, c.Message)
		case c.Status == conformance.StatusSkip && (allowSkip == nil || !allowSkip(c)):
			tb.Errorf("%s (%s) skipped: %s", c.ID, c.Requirement, c.Message)
		}
	}
	if rep.Passed == 0 {
		tb.Error("no case passed")
	}
}

// TestPacksEmbedded runs every shipped pack against the embedded stack.
func TestPacksEmbedded(t *testing.T) {
	packs, err := conformance.Builtin()
	if err != nil {
		t.Fatal(err)
	}
	if only := os.Getenv("AEGIS_CONFORMANCE_CASES"); only != "" {
		packs = filterCases(packs, only)
	}
	target := startEmbedded(t, packs, nil)
	opts := target.options(t)
	opts.StorePath = target.Store
	rep, err := conformance.Run(context.Background(), packs, opts)
	if err != nil {
		t.Fatal(err)
	}
	failures(t, rep, nil)
	if len(rep.Cases) < 120 && os.Getenv("AEGIS_CONFORMANCE_CASES") == "" {
		t.Errorf("%d cases, want at least 120", len(rep.Cases))
	}
	t.Logf("%d passed, %d failed, %d skipped in %d ms", rep.Passed, rep.Failed, rep.Skipped, rep.DurationMs)
}

func filterCases(packs []*conformance.Pack, prefix string) []*conformance.Pack {
	var out []*conformance.Pack
	for _, p := range packs {
		q := *p
		q.Cases = nil
		for _, c := range p.Cases {
			if strings.HasPrefix(c.ID, prefix) {
				q.Cases = append(q.Cases, c)
			}
		}
		if len(q.Cases) > 0 {
			out = append(out, &q)
		}
	}
	return out
}

// TestSharedKeySkipsIsolationCases: with one key for every tenant (an
// operator's), the cases that check tenant isolation are skipped and say
// why, instead of failing against a correct target; a case whose
// credentialed steps all have their tenant's own key, or that sends none
// (TEN-AUTH-005), still runs.
func TestSharedKeySkipsIsolationCases(t *testing.T) {
	packs, err := conformance.Builtin()
	if err != nil {
		t.Fatal(err)
	}
	var cases []*conformance.Case
	for _, p := range packs {
		for _, c := range p.Cases {
			if strings.HasPrefix(c.ID, "TEN-AUTH-") {
				cases = append(cases, c)
			}
		}
	}
	if len(cases) != 6 {
		t.Fatalf("%d TEN-AUTH cases, want 6", len(cases))
	}
	pack := &conformance.Pack{Name: "auth", Cases: cases}
	for _, tc := range []struct {
		keys    map[string]string
		skipped []string
	}{
		{map[string]string{"": "operator"}, []string{"TEN-AUTH-001", "TEN-AUTH-002", "TEN-AUTH-003", "TEN-AUTH-004", "TEN-AUTH-006"}},
		{map[string]string{"": "operator", "conf-a": "ka"}, []string{"TEN-AUTH-004", "TEN-AUTH-006"}},
		{map[string]string{"conf-a": "ka", "conf-b": "kb"}, nil},
	} {
		// Nothing listens on the target: a case that runs fails, one
		// that is skipped does not reach it.
		rep, err := conformance.Run(context.Background(), []*conformance.Pack{pack}, conformance.Options{
			Target: "http://127.0.0.1:1", Keys: tc.keys, PollTimeout: time.Millisecond})
		if err != nil {
			t.Fatal(err)
		}
		var skipped []string
		for _, c := range rep.Cases {
			if c.Status == conformance.StatusSkip {
				skipped = append(skipped, c.ID)
				if !strings.Contains(c.Message, "own") {
					t.Errorf("keys %v: %s skipped with %q", tc.keys, c.ID, c.Message)
				}
			}
		}
		if fmt.Sprint(skipped) != fmt.Sprint(tc.skipped) {
			t.Errorf("keys %v: skipped %v, want %v", tc.keys, skipped, tc.skipped)
		}
	}
}
