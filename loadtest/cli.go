package loadtest

import (
	"context"
	"encoding/json"
	"errors"
	"flag"
	"fmt"
	"io"
	"os"
	"runtime/debug"
	"runtime/pprof"
	"strings"
	"time"

	"aegis.dev/aegis/internal/grant"
	"aegis.dev/aegis/internal/stream"
)

// Exit codes of Main.
const (
	ExitOK      = 0
	ExitFailed  = 1 // the run completed and something was lost, duplicated, mis-decided, unanswered or did not verify
	ExitUsage   = 2
	ExitRuntime = 3 // the run could not be carried out
)

// Main is aegis-loadtest:
//
//	aegis-loadtest --brokers HOST:PORT --rate EVENTS_PER_S --duration 30s --sessions N --report FILE
//
// It prints the text report on stdout, writes the JSON report to --report,
// shows progress on stderr and returns an exit code.
func Main(ctx context.Context, args []string, stdout, stderr io.Writer) int {
	fs := flag.NewFlagSet("aegis-loadtest", flag.ContinueOnError)
	fs.SetOutput(stderr)
	brokers := fs.String("brokers", "", "comma-separated Kafka seed brokers (required: the outcome is read from the sealed topic)")
	prefix := fs.String("topic-prefix", "aegis.", "prefix of the pipeline's topic names")
	httpURL := fs.String("http", "", "publish through this aegisd HTTP API (POST /v1/events) instead of Kafka")
	apiKey := fs.String("api-key", "", "API key for --http: an operator of tenant \"default\" (the mix records APPROVAL_DECIDED, which an agent key may not; with --mix approval=0 an agent key will do)")
	batch := fs.Int("http-batch", 100, "events per HTTP request")
	conc := fs.Int("http-concurrency", 8, "concurrent HTTP connections")
	rate := fs.Float64("rate", 1000, "target events/s (open loop)")
	ramp := fs.Duration("ramp", 0, "ramp linearly from 0 to --rate over this long")
	duration := fs.Duration("duration", 30*time.Second, "how long to publish")
	warmup := fs.Duration("warmup", 0, "leave events due in this first part of the run out of the latencies (still published and checked)")
	sessions := fs.Int("sessions", 100, "concurrent simulated agents (each runs ~40-event sessions back to back)")
	mix := fs.String("mix", "", "step weights, e.g. model=6,tool=6,memory=2,sanitize=1,approval=1,handoff=1,denied=1 (the default)")
	store := fs.String("store", "", "audit store to poll for publish → queryable latency: sqlite:PATH or clickhouse://HOST:PORT/DB")
	storeSample := fs.Int("store-sample", 10, "while publishing, poll the store for one session in this many (latency sample); after publishing, every session is checked")
	drain := fs.Duration("drain-timeout", 30*time.Second, "after publishing, wait at most this long without progress for the pipeline to catch up")
	report := fs.String("report", "", "write the JSON report to this file")
	runID := fs.String("run-id", "", "session-id prefix of this run (default: unique per run)")
	cpuProfile := fs.String("cpuprofile", "", "write the load tester's own CPU profile to this file (go tool pprof)")
	batchTimeout := fs.Duration("batch-timeout", 5*time.Millisecond, "Kafka publishing: how long a partition's partial batch waits before it is sent (kafka-go's BatchTimeout)")
	secretFile := fs.String("approval-secret-file", "", "sign the mix's APPROVAL_DECIDED events with this approval secret (aegisd's --approval-secret-file); a decider refuses unsigned approvals published to Kafka")
	badKey := fs.Int("fault-bad-key", 0, "publish the last event of this many sessions under a wrong key (Kafka only), to check that loss is reported")
	var ksec stream.SecurityConfig
	ksec.RegisterFlags(fs)
	if err := fs.Parse(args); err != nil {
		if errors.Is(err, flag.ErrHelp) {
			return ExitOK
		}
		return ExitUsage
	}
	m, err := ParseMix(*mix)
	if err != nil || fs.NArg() > 0 || *brokers == "" {
		if err != nil {
			fmt.Fprintln(stderr, err)
		}
		fs.Usage()
		return ExitUsage
	}
	cfg := Config{Brokers: strings.Split(*brokers, ","), TopicPrefix: *prefix, HTTP: *httpURL, APIKey: *apiKey,
		HTTPBatch: *batch, HTTPConcurrency: *conc, Rate: *rate, Ramp: *ramp, Duration: *duration, Warmup: *warmup, Sessions: *sessions,
		Mix: m, Store: *store, StoreSample: *storeSample, DrainTimeout: *drain, RunID: *runID, FaultBadKey: *badKey, BatchTimeout: *batchTimeout}
	if err := ksec.Validate(); err != nil {
		fmt.Fprintf(stderr, "aegis-loadtest: %v\n", err)
		return ExitUsage
	}
	if cfg.KafkaSecurity, err = ksec.Load(); err != nil {
		fmt.Fprintf(stderr, "aegis-loadtest: %v\n", err)
		return ExitRuntime
	}
	if *secretFile != "" {
		if cfg.ApprovalSecret, err = grant.LoadSecret(*secretFile); err != nil {
			fmt.Fprintf(stderr, "aegis-loadtest: %v\n", err)
			return ExitUsage
		}
	}
	if os.Getenv("GOGC") == "" {
		// The load tester shares the machine with the system it measures:
		// trading memory for GC work leaves that CPU to the pipeline
		// (15 % less CPU for the load tester at 10,000 events/s; 530 MB
		// peak RSS after 30 s at 20,000 events/s). GOGC overrides.
		debug.SetGCPercent(400)
	}
	if *cpuProfile != "" {
		f, err := os.Create(*cpuProfile)
		if err == nil {
			err = pprof.StartCPUProfile(f)
		}
		if err != nil {
			fmt.Fprintf(stderr, "aegis-loadtest: cpuprofile: %v\n", err)
			return ExitUsage
		}
		defer func() {
			pprof.StopCPUProfile()
			f.Close()
		}()
	}
	rep, err := Run(ctx, cfg, progressWriter(stderr))
	if err != nil {
		fmt.Fprintf(stderr, "aegis-loadtest: %v\n", err)
		if errors.Is(err, ErrConfig) {
			return ExitUsage
		}
		return ExitRuntime
	}
	rep.WriteText(stdout)
	if *report != "" {
		b, _ := json.MarshalIndent(rep, "", "  ")
		if err := os.WriteFile(*report, append(b, '\n'), 0o644); err != nil {
			fmt.Fprintf(stderr, "aegis-loadtest: report: %v\n", err)
			return ExitRuntime
		}
	}
	if !rep.OK {
		return ExitFailed
	}
	return ExitOK
}

// progressWriter returns the progress callback: a line rewritten in place
// when w is a terminal, a plain line every 5 seconds otherwise.
func progressWriter(w io.Writer) func(Progress) {
	tty := false
	if f, ok := w.(*os.File); ok {
		if st, err := f.Stat(); err == nil && st.Mode()&os.ModeCharDevice != 0 {
			tty = true
		}
	}
	var last time.Duration
	return func(p Progress) {
		line := fmt.Sprintf("%6.1fs scheduled %d published %d sealed %d decided %d failed %d",
			p.Elapsed.Seconds(), p.Scheduled, p.Published, p.Sealed, p.Decided, p.Failed)
		if tty {
			fmt.Fprintf(w, "\r\033[K%s", line)
			return
		}
		if p.Elapsed-last >= 5*time.Second {
			last = p.Elapsed
			fmt.Fprintln(w, line)
		}
	}
}
