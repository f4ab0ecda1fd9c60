package ctl

import (
	"bytes"
	"context"
	"crypto/rand"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	iofs "io/fs"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strings"
	"syscall"
	"time"

	"aegis.dev/aegis/conformance"
	"aegis.dev/aegis/internal/grant"
	"aegis.dev/aegis/internal/pipeline"
)

// keyFlags collects --api-key values: KEY (every tenant) or TENANT=KEY.
type keyFlags map[string]string

func (k keyFlags) String() string { return fmt.Sprintf("%d keys", len(k)) }

func (k keyFlags) Set(v string) error {
	tenant, key, ok := strings.Cut(v, "=")
	if !ok {
		tenant, key = "", v
	}
	if key == "" {
		return errors.New("empty API key")
	}
	k[tenant] = key
	return nil
}

// runConformance is `aegisctl conformance run` and `aegisctl conformance
// policy`.
func runConformance(ctx context.Context, env IO, args []string) int {
	if len(args) > 0 && args[0] == "policy" {
		return runConformancePolicy(env, args[1:])
	}
	if len(args) == 0 || args[0] != "run" {
		return fail(env, ExitUsage, "conformance: usage: aegisctl conformance run [--target URL] [--api-key [TENANT=]KEY]... [--packs DIR] [--report FILE] [--junit FILE] | aegisctl conformance policy --out DIR")
	}
	fs := newFlags(env, "conformance run", "[--target URL] [--api-key [TENANT=]KEY]... [--brokers HOST:PORT[,...]] [--topic-prefix P] [--approval-secret-file FILE] [--packs DIR] [--report FILE] [--junit FILE] [--aegisd PATH]")
	target := fs.String("target", "", "base URL of a running aegisd's HTTP API; empty: start an embedded aegisd (--aegisd) with its own data dir, keys and manifests")
	keys := keyFlags{}
	fs.Var(keys, "api-key", "API key for every tenant (KEY) or for one tenant (TENANT=KEY); repeatable. None: no credentials (aegisd --dev)")
	packsDir := fs.String("packs", "", "directory of *.yaml packs (default: the packs built into aegisctl)")
	report := fs.String("report", "", "write the JSON compliance report to FILE")
	junit := fs.String("junit", "", "write JUnit XML to FILE")
	aegisd := fs.String("aegisd", "", "aegisd binary for the embedded run (default: aegisd next to aegisctl, then on PATH)")
	concurrency := fs.Int("concurrency", 8, "cases run at once")
	provides := fs.String("provides", "", "comma-separated target capabilities cases may require: short-approval-ttl (aegisd --approval-ttl <= 10s), conformance-policy (aegisd --policy with the bundle of 'aegisctl conformance policy'); auth is implied by --api-key, kafka by --brokers, approval-secret by --approval-secret-file")
	brokers := fs.String("brokers", "", "comma-separated Kafka seed brokers of the target, for the cases that publish to its events topic (requires: [kafka]); none: those cases are skipped")
	topicPrefix := fs.String("topic-prefix", pipeline.DefaultTopicPrefix, "prefix of the target's topic names (aegisd --topic-prefix)")
	secretFile := fs.String("approval-secret-file", "", "the target's approval secret (aegisd --approval-secret-file), for the cases that sign approvals (requires: [approval-secret]); none: those cases are skipped")
	ksec := kafkaSecurity(fs)
	if code, ok := parse(fs, args[1:]); !ok {
		return code
	}
	if fs.NArg() > 0 {
		return fail(env, ExitUsage, "conformance run: unexpected argument %q", fs.Arg(0))
	}
	var packs []*conformance.Pack
	var err error
	if *packsDir != "" {
		packs, err = conformance.Load(*packsDir)
	} else {
		packs, err = conformance.Builtin()
	}
	if err != nil {
		return fail(env, readErrorCode(err), "conformance run: %v", err)
	}
	opts := conformance.Options{Target: *target, Keys: keys, Concurrency: *concurrency, TopicPrefix: *topicPrefix}
	for _, p := range strings.Split(*provides, ",") {
		if p = strings.TrimSpace(p); p != "" {
			opts.Provides = append(opts.Provides, p)
		}
	}
	for _, b := range strings.Split(*brokers, ",") {
		if b = strings.TrimSpace(b); b != "" {
			opts.Brokers = append(opts.Brokers, b)
		}
	}
	if err := pipeline.ValidatePrefix(*topicPrefix); err != nil {
		return fail(env, ExitUsage, "conformance run: --topic-prefix: %v", err)
	}
	if err := ksec.Validate(); err != nil {
		return fail(env, ExitUsage, "conformance run: %v", err)
	}
	if opts.KafkaSecurity, err = ksec.Load(); err != nil {
		return fail(env, ExitRuntime, "conformance run: %v", err)
	}
	if *secretFile != "" {
		if opts.ApprovalSecret, err = grant.LoadSecret(*secretFile); err != nil {
			return fail(env, readErrorCode(err), "conformance run: %v", err)
		}
	}
	if *target == "" {
		if len(opts.Brokers) > 0 || opts.ApprovalSecret != nil || *topicPrefix != pipeline.DefaultTopicPrefix || ksec.Enabled() {
			return fail(env, ExitUsage, "conformance run: --brokers, --topic-prefix, --kafka-tls*, --kafka-sasl-* and --approval-secret-file describe a --target; the embedded run uses its own aegisd's")
		}
		stop, err := startEmbeddedAegisd(ctx, env, *aegisd, packs, &opts)
		if err != nil {
			return fail(env, ExitRuntime, "conformance run: %v", err)
		}
		defer stop()
	}
	// Replays decide with the policy the target runs: the conformance
	// bundle when the target provides it.
	policyDir := ""
	if slices.Contains(opts.Provides, conformance.RequireConformancePolicy) {
		dir, err := os.MkdirTemp("", "aegis-conformance-policy-")
		if err != nil {
			return fail(env, ExitRuntime, "conformance run: %v", err)
		}
		defer func() { _ = os.RemoveAll(dir) }()
		if err := conformance.WritePolicy(dir); err != nil {
			return fail(env, ExitRuntime, "conformance run: %v", err)
		}
		policyDir = dir
	}
	opts.DecideLog = decideLogFunc(policyDir)
	rep, err := conformance.Run(ctx, packs, opts)
	if err != nil {
		return fail(env, ExitRuntime, "conformance run: %v", err)
	}
	if *report != "" {
		if err := writeFileWith(*report, rep.WriteJSON); err != nil {
			return fail(env, ExitRuntime, "conformance run: %v", err)
		}
	}
	if *junit != "" {
		if err := writeFileWith(*junit, rep.WriteJUnit); err != nil {
			return fail(env, ExitRuntime, "conformance run: %v", err)
		}
	}
	for _, c := range rep.Cases {
		if c.Status == conformance.StatusFail {
			fmt.Fprintf(env.Stderr, "FAIL %s (%s): %s\n", c.ID, c.Requirement, c.Message)
		}
	}
	fmt.Fprintf(env.Stdout, "conformance: %d passed, %d failed, %d skipped, %d requirements, %d ms\n",
		rep.Passed, rep.Failed, rep.Skipped, len(rep.Requirements), rep.DurationMs)
	if !rep.OK() {
		return ExitFailed
	}
	return ExitOK
}

// readErrorCode is the exit code of a flag's file or directory that could
// not be loaded: 3 when it cannot be read, 2 when its content is not
// what the flag takes.
func readErrorCode(err error) int {
	var pathErr *iofs.PathError
	if errors.As(err, &pathErr) {
		return ExitRuntime
	}
	return ExitUsage
}

func writeFileWith(path string, write func(w io.Writer) error) error {
	f, err := os.Create(path)
	if err != nil {
		return err
	}
	if err := write(f); err != nil {
		_ = f.Close()
		return err
	}
	return f.Close()
}

// runConformancePolicy is `aegisctl conformance policy --out DIR`: it
// writes the conformance policy bundle, for a live target whose operator
// wants the cases that require conformance-policy to run.
func runConformancePolicy(env IO, args []string) int {
	fs := newFlags(env, "conformance policy", "--out DIR")
	out := fs.String("out", "", "directory to write the bundle into (aegisd --policy DIR)")
	if code, ok := parse(fs, args); !ok {
		return code
	}
	if fs.NArg() > 0 || *out == "" {
		return fail(env, ExitUsage, "conformance policy: usage: aegisctl conformance policy --out DIR")
	}
	if err := conformance.WritePolicy(*out); err != nil {
		return fail(env, ExitRuntime, "conformance policy: %v", err)
	}
	b, err := conformance.PolicyBundle()
	if err != nil {
		return fail(env, ExitRuntime, "conformance policy: %v", err)
	}
	fmt.Fprintf(env.Stdout, "conformance policy bundle %s written to %s: run aegisd --policy %s, then aegisctl conformance run --provides %s\n",
		b.Revision, *out, *out, conformance.RequireConformancePolicy)
	return ExitOK
}

// decideLogFunc replays through `aegisctl decide --events`, in process,
// with the policy bundle in policyDir ("": the built-in one).
func decideLogFunc(policyDir string) conformance.DecideLogFunc {
	return func(ctx context.Context, events, manifests string) ([]byte, error) {
		var out, errb bytes.Buffer
		args := []string{"--events", events, "--manifests", manifests}
		if policyDir != "" {
			args = append(args, "--policy", policyDir)
		}
		code := runDecide(ctx, IO{Stdin: strings.NewReader(""), Stdout: &out, Stderr: &errb}, args)
		if code != ExitOK {
			return nil, fmt.Errorf("aegisctl decide --events exited %d: %s", code, strings.TrimSpace(errb.String()))
		}
		return out.Bytes(), nil
	}
}

// embeddedStopGrace is how long the embedded aegisd has to exit after
// SIGTERM before it is killed.
var embeddedStopGrace = 30 * time.Second

// startEmbeddedAegisd starts aegisd as a child process on loopback with a
// temporary data dir, the packs' manifests, the conformance policy bundle,
// one operator key per tenant, and a short approval TTL, and points opts
// at it (target, keys, store, what it provides).
func startEmbeddedAegisd(ctx context.Context, env IO, bin string, packs []*conformance.Pack, opts *conformance.Options) (func(), error) {
	if bin == "" {
		if self, err := os.Executable(); err == nil {
			if p := filepath.Join(filepath.Dir(self), "aegisd"); fileExists(p) {
				bin = p
			}
		}
	}
	if bin == "" {
		p, err := exec.LookPath("aegisd")
		if err != nil {
			return nil, fmt.Errorf("no aegisd for the embedded run (build ./cmd/aegisd, pass --aegisd PATH, or --target URL): %w", err)
		}
		bin = p
	}
	dir, err := os.MkdirTemp("", "aegis-conformance-")
	if err != nil {
		return nil, err
	}
	cleanup := func() { _ = os.RemoveAll(dir) }
	mdir, pdir := filepath.Join(dir, "manifests"), filepath.Join(dir, "policy")
	if err := conformance.WriteManifests(mdir, packs); err != nil {
		cleanup()
		return nil, err
	}
	if err := conformance.WritePolicy(pdir); err != nil {
		cleanup()
		return nil, err
	}
	keyFile, keys, err := conformance.Credentials(packs)
	if err != nil {
		cleanup()
		return nil, err
	}
	var secret [32]byte
	if _, err := rand.Read(secret[:]); err != nil {
		cleanup()
		return nil, err
	}
	files := map[string][]byte{"keys.json": keyFile, "approval.secret": []byte(hex.EncodeToString(secret[:]))}
	for name, b := range files {
		if err := os.WriteFile(filepath.Join(dir, name), b, 0o600); err != nil {
			cleanup()
			return nil, err
		}
	}
	data, addrFile := filepath.Join(dir, "data"), filepath.Join(dir, "addrs.json")
	cctx, cancel := context.WithCancel(ctx)
	cmd := exec.CommandContext(cctx, bin, "--data-dir", data, "--kafka-addr", "127.0.0.1:0", "--http-addr", "127.0.0.1:0",
		"--addr-file", addrFile, "--partitions", "3", "--instance", "conformance", "--manifests", mdir, "--policy", pdir,
		"--api-keys", filepath.Join(dir, "keys.json"), "--approval-secret-file", filepath.Join(dir, "approval.secret"),
		"--approval-ttl", "10s", "--log-level", "warn")
	cmd.Stderr = env.Stderr
	cmd.Cancel = func() error { return cmd.Process.Signal(syscall.SIGTERM) }
	cmd.WaitDelay = embeddedStopGrace
	if err := cmd.Start(); err != nil {
		cancel()
		cleanup()
		return nil, fmt.Errorf("start %s: %w", bin, err)
	}
	exited := make(chan struct{})
	var waitErr error
	go func() { waitErr = cmd.Wait(); close(exited) }()
	stop := func() {
		cancel() // SIGTERM (cmd.Cancel), and a kill once WaitDelay has passed
		<-exited
		cleanup()
	}
	addr, kafka, err := waitAddr(ctx, addrFile, exited, 90*time.Second)
	if err != nil {
		stop()
		if waitErr != nil {
			err = fmt.Errorf("%w (aegisd: %w)", err, waitErr)
		}
		return nil, err
	}
	base := "http://" + addr
	if err := waitReady(ctx, base, 90*time.Second); err != nil {
		stop()
		return nil, err
	}
	opts.Target, opts.Keys, opts.StorePath = base, keys, filepath.Join(data, "audit.db")
	// The embedded broker and the approval secret aegisd was given: the
	// Kafka cases publish there and the sign steps sign with it.
	opts.Brokers, opts.TopicPrefix = []string{kafka}, pipeline.DefaultTopicPrefix
	if opts.ApprovalSecret, err = grant.LoadSecret(filepath.Join(dir, "approval.secret")); err != nil {
		stop()
		return nil, err
	}
	opts.Provides = append(opts.Provides, conformance.RequireShortApprovalTTL, conformance.RequireConformancePolicy)
	return stop, nil
}

func fileExists(p string) bool {
	st, err := os.Stat(p)
	return err == nil && !st.IsDir()
}

// waitAddr returns the HTTP address and the embedded broker's address
// aegisd wrote to its --addr-file, once it appears; it fails early when
// the process exited.
func waitAddr(ctx context.Context, file string, exited <-chan struct{}, limit time.Duration) (string, string, error) {
	deadline := time.Now().Add(limit)
	for {
		if b, err := os.ReadFile(file); err == nil {
			var addrs struct {
				HTTP  string `json:"http"`
				Kafka string `json:"kafka"`
			}
			if err := json.Unmarshal(b, &addrs); err != nil || addrs.HTTP == "" || addrs.Kafka == "" {
				return "", "", fmt.Errorf("aegisd addr file %s: %q", file, b)
			}
			return addrs.HTTP, addrs.Kafka, nil
		}
		if time.Now().After(deadline) {
			return "", "", fmt.Errorf("aegisd did not write %s within %s", file, limit)
		}
		select {
		case <-ctx.Done():
			return "", "", ctx.Err()
		case <-exited:
			return "", "", errors.New("aegisd exited before listening")
		case <-time.After(50 * time.Millisecond):
		}
	}
}

// waitReady polls GET /readyz until it answers 200.
func waitReady(ctx context.Context, base string, limit time.Duration) error {
	deadline := time.Now().Add(limit)
	client := &http.Client{Timeout: 2 * time.Second}
	for {
		req, err := http.NewRequestWithContext(ctx, http.MethodGet, base+"/readyz", nil)
		if err != nil {
			return err
		}
		if resp, err := client.Do(req); err == nil {
			_ = resp.Body.Close()
			if resp.StatusCode == http.StatusOK {
				return nil
			}
		}
		if time.Now().After(deadline) {
			return fmt.Errorf("%s/readyz did not answer 200 within %s", base, limit)
		}
		select {
		case <-ctx.Done():
			return ctx.Err()
		case <-time.After(100 * time.Millisecond):
		}
	}
}
