package loadtest

import (
	"bytes"
	"context"
	"database/sql"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net/http"
	"net/http/httptest"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"aegis.dev/aegis/decider"
	"aegis.dev/aegis/internal/daemon"
	"aegis.dev/aegis/internal/stream"
	"aegis.dev/aegis/projector/stores"
	"aegis.dev/aegis/schemas/chain"
	"aegis.dev/aegis/schemas/envelope"
)

func TestParseMix(t *testing.T) {
	for _, tc := range []struct {
		name, in string
		want     Mix
		err      bool
	}{
		{name: "empty is the default", in: "", want: DefaultMix},
		{name: "override one kind", in: "denied=5", want: Mix{Model: 6, Tool: 6, Memory: 2, Sanitize: 1, Approval: 1, Handoff: 1, Denied: 5}},
		{name: "several with spaces", in: "model=1, tool=0", want: Mix{Model: 1, Tool: 0, Memory: 2, Sanitize: 1, Approval: 1, Handoff: 1, Denied: 1}},
		{name: "unknown kind", in: "llm=3", err: true},
		{name: "negative weight", in: "tool=-1", err: true},
		{name: "not a number", in: "tool=x", err: true},
		{name: "all zero", in: "model=0,tool=0,memory=0,sanitize=0,approval=0,handoff=0,denied=0", err: true},
	} {
		t.Run(tc.name, func(t *testing.T) {
			got, err := ParseMix(tc.in)
			if (err != nil) != tc.err {
				t.Fatalf("err = %v, want error %v", err, tc.err)
			}
			if !tc.err && got != tc.want {
				t.Fatalf("got %+v, want %+v", got, tc.want)
			}
		})
	}
}

// TestScript checks the generated sessions: valid envelopes, every event
// type of the mix present, a denial for each reason, no tool sequence the
// loop detector would catch, and the same seed giving the same session.
func TestScript(t *testing.T) {
	seen := map[envelope.Type]int{}
	wants := map[string]int{}
	for seed := uint64(0); seed < 200; seed++ {
		sid := fmt.Sprintf("s%d", seed)
		evs := script(DefaultMix, seed, sid)
		if evs[0].typ != envelope.SanitizedText || evs[len(evs)-1].typ != envelope.Termination {
			t.Fatalf("seed %d: starts with %s, ends with %s", seed, evs[0].typ, evs[len(evs)-1].typ)
		}
		var tools []string
		for i, ev := range evs {
			v := fmt.Sprintf(`{"tenant_id":"default","session_id":%q,"seq":%d,"ts_unix_ms":1767225600000,"event_type":%q,"payload":%s}`, sid, i+1, ev.typ, ev.payload)
			e, err := envelope.Decode([]byte(v))
			if err != nil {
				t.Fatalf("seed %d event %d: %v\n%s", seed, i+1, err, v)
			}
			seen[ev.typ]++
			if ev.want != "" {
				wants[ev.want]++
				tc, err := e.ToolCall()
				if err != nil {
					t.Fatalf("seed %d event %d: %v", seed, i+1, err)
				}
				if repeats(tools, tc.ToolName) {
					t.Fatalf("seed %d event %d: %s after %v repeats a sequence", seed, i+1, tc.ToolName, tools)
				}
				tools = append(tools, tc.ToolName)
			}
		}
		if len(evs) > maxSessionEvents {
			t.Fatalf("seed %d: %d events, more than maxSessionEvents %d", seed, len(evs), maxSessionEvents)
		}
		if again := script(DefaultMix, seed, sid); fmt.Sprint(again) != fmt.Sprint(evs) {
			t.Fatalf("seed %d: not deterministic", seed)
		}
	}
	for _, typ := range []envelope.Type{envelope.ModelCallStarted, envelope.ToolCallProposed, envelope.ToolCallExecuted, envelope.ToolResult,
		envelope.MemoryRead, envelope.MemoryWrite, envelope.SanitizedText, envelope.ApprovalRequested, envelope.ApprovalDecided,
		envelope.HandoffRequested, envelope.ToolCallDenied, envelope.Termination} {
		if seen[typ] == 0 {
			t.Errorf("no %s in 200 sessions", typ)
		}
	}
	for _, w := range []string{"allow/OK", "require_approval/APPROVAL_REQUIRED", "deny/PERMISSION_UNDECLARED", "deny/EGRESS_DENY", "deny/EXEC_DENY"} {
		if wants[w] == 0 {
			t.Errorf("no proposal expecting %s in 200 sessions", w)
		}
	}
}

func TestRepeats(t *testing.T) {
	for _, tc := range []struct {
		name  string
		tools []string
		next  string
		want  bool
	}{
		{name: "short history", tools: []string{"a", "a"}, next: "a", want: false},
		{name: "length 3 twice", tools: []string{"a", "b", "c", "a", "b"}, next: "c", want: true},
		{name: "same tool six times", tools: []string{"a", "a", "a", "a", "a"}, next: "a", want: true},
		{name: "length 7 twice", tools: strings.Split("a b c d e f g a b c d e f", " "), next: "g", want: true},
		{name: "no repetition", tools: []string{"a", "b", "c", "a", "b"}, next: "d", want: false},
	} {
		t.Run(tc.name, func(t *testing.T) {
			if got := repeats(tc.tools, tc.next); got != tc.want {
				t.Fatalf("repeats(%v, %s) = %v", tc.tools, tc.next, got)
			}
		})
	}
}

// startDaemon runs an embedded aegisd (broker, stages, projector into
// SQLite, HTTP API in dev mode) for the test.
func startDaemon(t testing.TB) (brokers, httpURL, dataDir string) {
	t.Helper()
	cfg := daemon.Defaults()
	cfg.DataDir = t.TempDir()
	cfg.KafkaAddr, cfg.HTTPAddr = "127.0.0.1:0", "127.0.0.1:0"
	cfg.Partitions = 4
	cfg.Instance = "loadtest"
	cfg.Manifests = "../deploy/manifests"
	cfg.Dev = true
	// The mix publishes APPROVAL_DECIDED straight to Kafka: the load
	// tester signs them with the daemon's approval secret
	// (--approval-secret-file DATA-DIR/approval.secret).
	cfg.Ingest.ApprovalSecretFile = filepath.Join(cfg.DataDir, "approval.secret")
	if err := os.WriteFile(cfg.Ingest.ApprovalSecretFile, []byte("loadtest-approval-secret-0123456789abcdef"), 0o600); err != nil {
		t.Fatal(err)
	}
	d := daemon.New(cfg, slog.New(slog.NewTextHandler(io.Discard, nil)))
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- d.Run(ctx) }()
	t.Cleanup(func() {
		cancel()
		if err := <-done; err != nil {
			t.Errorf("daemon: %v", err)
		}
	})
	if d.Brokers() == nil {
		t.Fatalf("daemon did not start: %v", <-done)
	}
	deadline := time.Now().Add(20 * time.Second)
	for !d.Ready() {
		if time.Now().After(deadline) {
			t.Fatal("daemon not ready")
		}
		time.Sleep(50 * time.Millisecond)
	}
	return strings.Join(d.Brokers(), ","), "http://" + d.HTTPAddr(), cfg.DataDir
}

// TestMainEmbedded runs the documented command against an embedded aegisd:
// over Kafka with the store polled, over HTTP, and with a deliberately
// broken publisher whose misplaced events must be reported lost.
func TestMainEmbedded(t *testing.T) {
	brokers, httpURL, dataDir := startDaemon(t)
	for _, tc := range []struct {
		name     string
		args     []string
		wantExit int
		check    func(t *testing.T, rep *Report)
	}{
		{name: "kafka with store", args: []string{"--rate", "300", "--duration", "3s", "--sessions", "20", "--store-sample", "1", "--store", "sqlite:" + filepath.Join(dataDir, "audit.db")},
			wantExit: ExitOK, check: func(t *testing.T, rep *Report) {
				if rep.Mode != "kafka" || rep.EventsStored != rep.EventsPublished || rep.Latency["publish_stored"].Count != rep.EventsPublished {
					t.Errorf("store: mode %s, stored %d, stored latencies %d, published %d", rep.Mode, rep.EventsStored, rep.Latency["publish_stored"].Count, rep.EventsPublished)
				}
				// 300/s is far below what the embedded stack seals: in
				// the second half of publishing it keeps up with the
				// schedule (half of the 900 events, give or take the
				// events in flight at each end of the window). The
				// bounds catch a wrong window or unit, and leave room
				// for a stall of a second on a loaded machine.
				if rep.SteadyEPS < 100 || rep.SteadyEPS > 600 {
					t.Errorf("steady rate %.0f events/s, want about 300", rep.SteadyEPS)
				}
			}},
		// Sampled: latency from a quarter of the sessions, the stored
		// count still exact (every session is checked after publishing).
		{name: "kafka with sampled store probe", args: []string{"--rate", "300", "--duration", "3s", "--sessions", "20", "--store-sample", "4", "--store", "sqlite:" + filepath.Join(dataDir, "audit.db")},
			wantExit: ExitOK, check: func(t *testing.T, rep *Report) {
				n := rep.Latency["publish_stored"].Count
				if rep.EventsStored != rep.EventsPublished || n == 0 || n >= rep.EventsPublished {
					t.Errorf("sampled store: stored %d of %d published, %d latencies (want a strict subset)", rep.EventsStored, rep.EventsPublished, n)
				}
			}},
		// Warm-up: events due in the first second are published, sealed
		// and checked but left out of every latency.
		{name: "kafka with warm-up", args: []string{"--rate", "300", "--duration", "2s", "--warmup", "1s", "--sessions", "20"},
			wantExit: ExitOK, check: func(t *testing.T, rep *Report) {
				if rep.WarmupS != 1 || rep.EventsSealed != rep.EventsPublished {
					t.Errorf("warm-up %v s, sealed %d of %d", rep.WarmupS, rep.EventsSealed, rep.EventsPublished)
				}
				// 600 events over 2s, the first 300 due in the warm-up.
				if n := rep.Latency["publish_sealed"].Count; n < 250 || n > 350 || rep.Latency["publish_ack"].Count != n {
					t.Errorf("latencies of %d sealed / %d acknowledged events, want the ~300 due after the warm-up", n, rep.Latency["publish_ack"].Count)
				}
			}},
		{name: "http", args: []string{"--http", httpURL, "--http-batch", "20", "--rate", "300", "--duration", "2s", "--sessions", "20"},
			wantExit: ExitOK, check: func(t *testing.T, rep *Report) {
				if rep.Mode != "http" {
					t.Errorf("mode %s", rep.Mode)
				}
			}},
		{name: "bad keys are reported lost", args: []string{"--rate", "300", "--duration", "2s", "--sessions", "10", "--fault-bad-key", "4", "--drain-timeout", "6s"},
			wantExit: ExitFailed, check: func(t *testing.T, rep *Report) {
				if rep.Lost != 4 || rep.OK || rep.Rejected["KEY_MISMATCH"] != 4 || rep.FaultsInjected != 4 {
					t.Errorf("lost %d, ok %v, rejected %v, injected %d; want 4 injected and lost by KEY_MISMATCH", rep.Lost, rep.OK, rep.Rejected, rep.FaultsInjected)
				}
			}},
		// 20 sessions for 600 events (30 each, of 41 or more): none reaches
		// its last event, so nothing is injected; the run must not pass as
		// if the check had run.
		{name: "bad keys never injected", args: []string{"--rate", "300", "--duration", "2s", "--sessions", "20", "--fault-bad-key", "4"},
			wantExit: ExitFailed, check: func(t *testing.T, rep *Report) {
				if rep.OK || rep.FaultsInjected != 0 || !slices.ContainsFunc(rep.Problems, func(p string) bool { return strings.Contains(p, "injected nothing") }) {
					t.Errorf("ok %v, injected %d, problems %q", rep.OK, rep.FaultsInjected, rep.Problems)
				}
			}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			file := filepath.Join(t.TempDir(), "report.json")
			var out, errOut bytes.Buffer
			args := append([]string{"--brokers", brokers, "--report", file, "--approval-secret-file", filepath.Join(dataDir, "approval.secret")}, tc.args...)
			if code := Main(context.Background(), args, &out, &errOut); code != tc.wantExit {
				t.Fatalf("exit %d, want %d\n%s%s", code, tc.wantExit, out.String(), errOut.String())
			}
			raw, err := os.ReadFile(file)
			if err != nil {
				t.Fatal(err)
			}
			var fields map[string]any
			if err := json.Unmarshal(raw, &fields); err != nil {
				t.Fatal(err)
			}
			for _, f := range []string{"events_published", "events_sealed", "lost", "duplicated", "throughput_eps", "latency_ms"} {
				if _, ok := fields[f]; !ok {
					t.Errorf("report lacks %q", f)
				}
			}
			var rep Report
			if err := json.Unmarshal(raw, &rep); err != nil {
				t.Fatal(err)
			}
			if rep.EventsPublished == 0 || rep.EventsPublished != rep.EventsScheduled || rep.Duplicated != 0 || rep.ChainFailures != 0 || !rep.DecisionsOK {
				t.Errorf("published %d of %d scheduled, duplicated %d, chain failures %d, decisions ok %v",
					rep.EventsPublished, rep.EventsScheduled, rep.Duplicated, rep.ChainFailures, rep.DecisionsOK)
			}
			if rep.EventsSealed+rep.Lost != rep.EventsPublished || rep.ChainsVerified != rep.SessionsRun {
				t.Errorf("sealed %d + lost %d != published %d, or %d chains for %d sessions", rep.EventsSealed, rep.Lost, rep.EventsPublished, rep.ChainsVerified, rep.SessionsRun)
			}
			for _, k := range []string{"proposal_decision", "publish_sealed", "publish_ack"} {
				p := rep.Latency[k]
				if p.Count == 0 || p.P50 <= 0 || p.P50 > p.P90 || p.P90 > p.P99 || p.P99 > p.P999 || p.P999 > p.Max {
					t.Errorf("latency %s: %+v", k, p)
				}
			}
			if tc.check != nil {
				tc.check(t, &rep)
			}
			if !strings.Contains(out.String(), "latency (ms)") {
				t.Errorf("text report:\n%s", out.String())
			}
		})
	}
}

// TestEventJSON: the hand-written envelope is what fmt made before, and
// decodes.
func TestEventJSON(t *testing.T) {
	for seq, ev := range script(DefaultMix, 7, "run-a1-s2") {
		seq++
		manifest := ""
		if seq == 1 {
			manifest = `,"manifest":"` + Manifest + `"`
		}
		want := fmt.Sprintf(`{"tenant_id":%q,"session_id":%q,"seq":%d,"ts_unix_ms":%d,"event_type":%q%s,"payload":%s}`,
			Tenant, "run-a1-s2", seq, 1767225600000+int64(seq), ev.typ, manifest, ev.payload)
		got := eventJSON("run-a1-s2", seq, 1767225600000+int64(seq), ev.typ, seq == 1, ev.payload)
		if string(got) != want {
			t.Fatalf("seq %d:\n got %s\nwant %s", seq, got, want)
		}
		if _, err := envelope.Decode(got); err != nil {
			t.Fatalf("seq %d: %v", seq, err)
		}
	}
}

// TestSessionsMustEndWithinTheWallTimeBudget: a fleet so large for its
// rate that a session would outlast code-agent's wall-time budget is a
// configuration error (its last proposals would be BUDGET_EXCEEDED, not
// the decisions the mix expects); the same fleet in a run too short for
// that, or at a higher rate, is not. WallTimeBudget is the manifest's.
func TestSessionsMustEndWithinTheWallTimeBudget(t *testing.T) {
	for _, tc := range []struct {
		sessions int
		rate     float64
		duration time.Duration
		ok       bool
	}{
		{5000, 200, 30 * time.Minute, false}, // an event per session every 25 s: ~19 min per session
		{5000, 200, 10 * time.Minute, true},  // cut off by the end of the run first
		{5000, 1000, 30 * time.Minute, true}, // every 5 s: under 4 min
		{500, 5000, time.Hour, true},         // the memory runs' fleet
	} {
		cfg := Config{Brokers: []string{"127.0.0.1:1"}, Rate: tc.rate, Duration: tc.duration, Sessions: tc.sessions}
		err := cfg.defaults()
		if tc.ok != (err == nil) || (err != nil && (!errors.Is(err, ErrConfig) || !strings.Contains(err.Error(), "wall-time budget"))) {
			t.Errorf("%d sessions at %g/s for %s: %v", tc.sessions, tc.rate, tc.duration, err)
		}
	}
	raw, err := os.ReadFile("../deploy/manifests/default/code-agent.json")
	if err != nil {
		t.Fatal(err)
	}
	var m struct {
		Permissions struct {
			Budgets struct {
				MaxWallTimeMs int64 `json:"max_wall_time_ms"`
			} `json:"budgets"`
		} `json:"permissions"`
	}
	if err := json.Unmarshal(raw, &m); err != nil || time.Duration(m.Permissions.Budgets.MaxWallTimeMs)*time.Millisecond != WallTimeBudget {
		t.Fatalf("code-agent's max_wall_time_ms %d (%v), WallTimeBudget %s", m.Permissions.Budgets.MaxWallTimeMs, err, WallTimeBudget)
	}
}

func TestWarmupMustEndBeforeTheRun(t *testing.T) {
	for _, w := range []time.Duration{-time.Second, 2 * time.Second, 3 * time.Second} {
		cfg := Config{Brokers: []string{"127.0.0.1:1"}, Rate: 100, Duration: 2 * time.Second, Sessions: 1, Warmup: w}
		if _, err := Run(context.Background(), cfg, nil); !errors.Is(err, ErrConfig) || !strings.Contains(err.Error(), "warm-up") {
			t.Errorf("warm-up %v: %v, want a warm-up ErrConfig", w, err)
		}
	}
}

// TestStoreGapIsReported: a store that lacks an event in the middle of a
// session (here a trigger drops every seq 5 as it is inserted) must not
// count as fully stored because the session's highest seq is there.
func TestStoreGapIsReported(t *testing.T) {
	brokers, _, dataDir := startDaemon(t)
	file := filepath.Join(dataDir, "audit.db")
	db, err := sql.Open("sqlite", "file:"+file+"?_pragma=busy_timeout(10000)")
	if err != nil {
		t.Fatal(err)
	}
	defer db.Close()
	if _, err := db.Exec(`CREATE TRIGGER lose_seq_5 AFTER INSERT ON audit_events WHEN NEW.seq = 5 BEGIN
		DELETE FROM audit_events WHERE tenant_id = NEW.tenant_id AND session_id = NEW.session_id AND seq = NEW.seq; END`); err != nil {
		t.Fatal(err)
	}
	rep := failingRun(t, "--brokers", brokers, "--approval-secret-file", filepath.Join(dataDir, "approval.secret"), "--rate", "200", "--duration", "2s", "--sessions", "10",
		"--store", "sqlite:"+file, "--store-sample", "1", "--drain-timeout", "3s")
	// Every session of 10 agents over 400 events reaches seq 5 once.
	if rep.EventsSealed != rep.EventsPublished || rep.EventsStored != rep.EventsSealed-10 {
		t.Errorf("sealed %d of %d published, stored %d; want all sealed and 10 fewer stored", rep.EventsSealed, rep.EventsPublished, rep.EventsStored)
	}
}

// TestLatencyBeyondTheHistogramIsCounted: an event acknowledged 20 minutes
// after it was due (a long saturated run) stays in the latencies, at the
// histogram's highest value, instead of silently dropping out of them.
func TestLatencyBeyondTheHistogramIsCounted(t *testing.T) {
	r := &run{cfg: Config{Sessions: 1}, start: time.Now().Add(-time.Hour), sessions: map[string]*session{}, hAck: newHist(), expected: map[string]int64{}}
	sid := "run-a0-s0"
	s := &session{id: sid, key: Tenant + "/" + sid, events: script(DefaultMix, 1, sid)}
	s.sched, s.acked, s.sealed = make([]int64, len(s.events)), make([]bool, len(s.events)), make([]uint8, len(s.events))
	r.sessions[s.key] = s
	due := time.Now().Add(-20 * time.Minute)
	s.sched[0] = due.UnixNano()
	r.acked(s.key, eventJSON(sid, 1, due.UnixMilli(), s.events[0].typ, true, s.events[0].payload), nil)
	if p := percentiles(r.hAck); r.published.Load() != 1 || p.Count != 1 || p.Max < 599_000 {
		t.Fatalf("published %d, publish_ack %+v; want the event counted at the 10 min ceiling", r.published.Load(), p)
	}
}

// TestSealedProposalWithoutReplyFails: a proposal sealed with the expected
// decision whose reply never came on aegis.decisions (what the agent waits
// for) fails the run; it must not just be missing from proposal → decision.
func TestSealedProposalWithoutReplyFails(t *testing.T) {
	r := &run{cfg: Config{Sessions: 1}, start: time.Now(), sessions: map[string]*session{}, hAck: newHist(), hDecision: newHist(), hSealed: newHist(), hStored: newHist(),
		verifier: chain.NewVerifier(), reasons: map[string]int64{}, expected: map[string]int64{}, rejected: map[string]int64{}}
	sid := "run-a0-s0"
	s := &session{id: sid, key: Tenant + "/" + sid, events: script(DefaultMix, 1, sid)}
	s.sched, s.acked, s.sealed, s.replied = make([]int64, len(s.events)), make([]bool, len(s.events)), make([]uint8, len(s.events)), make([]bool, len(s.events))
	r.sessions[s.key] = s
	proposals := 0
	for i, ev := range s.events {
		s.sched[i], s.acked[i], s.sealed[i] = r.start.UnixNano(), true, 1
		if ev.want != "" {
			r.expected[ev.want]++
			r.reasons[ev.want]++
			if proposals++; proposals > 1 {
				s.replied[i] = true // every proposal but the first answered
			}
		}
	}
	if proposals < 2 {
		t.Fatalf("script has %d proposals", proposals)
	}
	rep := r.report(time.Second)
	if rep.OK || !slices.ContainsFunc(rep.Problems, func(p string) bool { return strings.Contains(p, "1 sealed proposals") }) {
		t.Fatalf("ok %v, problems %q; want the unanswered proposal reported", rep.OK, rep.Problems)
	}
}

// TestReplyWithWrongDecisionFails: a proposal sealed with the expected
// decision whose reply on aegis.decisions (what the agent acts on) carries
// another decision fails the run; a reply must not count merely for being
// there.
func TestReplyWithWrongDecisionFails(t *testing.T) {
	r := &run{cfg: Config{Sessions: 1, RunID: "run"}, start: time.Now(), sessions: map[string]*session{}, hAck: newHist(), hDecision: newHist(), hSealed: newHist(), hStored: newHist(),
		verifier: chain.NewVerifier(), reasons: map[string]int64{}, expected: map[string]int64{}, rejected: map[string]int64{}}
	sid := "run-a0-s0"
	s := &session{id: sid, key: Tenant + "/" + sid, events: script(DefaultMix, 1, sid)}
	s.sched, s.acked, s.sealed, s.replied = make([]int64, len(s.events)), make([]bool, len(s.events)), make([]uint8, len(s.events)), make([]bool, len(s.events))
	r.sessions[s.key] = s
	reply := func(seq int, want string) *stream.Record {
		outcome, reason, _ := strings.Cut(want, "/")
		v, err := json.Marshal(decider.Reply{TenantID: Tenant, SessionID: sid, Seq: uint64(seq), Decision: envelope.Decision{Outcome: envelope.Outcome(outcome), Reason: reason}})
		if err != nil {
			t.Fatal(err)
		}
		return &stream.Record{Topic: r.topics.Decisions, Key: []byte(s.key), Value: v}
	}
	wrong := 0
	for i, ev := range s.events {
		s.sched[i], s.acked[i], s.sealed[i] = r.start.UnixNano(), true, 1
		if ev.want == "" {
			continue
		}
		r.expected[ev.want]++
		r.reasons[ev.want]++
		got := ev.want
		if wrong == 0 {
			wrong = i + 1
			got = "allow/OK"
			if ev.want == got {
				got = "deny/EGRESS_DENY"
			}
		}
		r.onDecision(reply(i+1, got), time.Now())
	}
	if wrong == 0 {
		t.Fatal("script has no proposal")
	}
	rep := r.report(time.Second)
	if rep.OK || !slices.ContainsFunc(rep.Problems, func(p string) bool { return strings.Contains(p, fmt.Sprintf("reply %s seq %d", sid, wrong)) }) {
		t.Fatalf("ok %v, problems %q; want the wrong reply to seq %d reported", rep.OK, rep.Problems, wrong)
	}
}

// TestSealedRecordMustBeTheEventPublished: a sealed record counts as the
// event published at its key and seq only if it is that event. Here the
// first events of two sessions come back sealed under each other's key:
// each chain still verifies on its own, but neither session's event was
// sealed under its key, so both are lost and the records unexpected.
func TestSealedRecordMustBeTheEventPublished(t *testing.T) {
	r := &run{cfg: Config{Sessions: 2, RunID: "run"}, start: time.Now(), sessions: map[string]*session{}, hAck: newHist(), hDecision: newHist(), hSealed: newHist(), hStored: newHist(),
		verifier: chain.NewVerifier(), reasons: map[string]int64{}, expected: map[string]int64{}, rejected: map[string]int64{}}
	var ss []*session
	for _, sid := range []string{"run-a0-s0", "run-a1-s0"} {
		s := &session{id: sid, key: Tenant + "/" + sid, events: script(DefaultMix, sessionSeed(sid), sid)}
		s.sched, s.acked, s.sealed, s.replied = make([]int64, len(s.events)), make([]bool, len(s.events)), make([]uint8, len(s.events)), make([]bool, len(s.events))
		r.sessions[s.key] = s
		s.sched[0] = r.start.UnixNano()
		r.acked(s.key, eventJSON(sid, 1, r.start.UnixMilli(), s.events[0].typ, true, s.events[0].payload), nil)
		ss = append(ss, s)
	}
	dec := envelope.Decoder{Sealed: true}
	r.onSealed(dec, &stream.Record{Key: []byte(ss[0].key), Value: sealedFirst(t, r, ss[1])}, time.Now())
	r.onSealed(dec, &stream.Record{Key: []byte(ss[1].key), Value: sealedFirst(t, r, ss[0])}, time.Now())
	rep := r.report(time.Second)
	if rep.OK || rep.Lost != 2 || rep.Unexpected != 2 || rep.EventsSealed != 0 {
		t.Fatalf("ok %v, lost %d, unexpected %d, sealed %d, chain failures %d; want both events lost and both records unexpected",
			rep.OK, rep.Lost, rep.Unexpected, rep.EventsSealed, rep.ChainFailures)
	}
}

// sealedFirst is the sealed record of s's first event as the run sent it.
func sealedFirst(tb testing.TB, r *run, s *session) []byte {
	tb.Helper()
	ev, err := envelope.Decode(eventJSON(s.id, 1, r.start.UnixMilli(), s.events[0].typ, true, s.events[0].payload))
	if err != nil {
		tb.Fatal(err)
	}
	if _, err := chain.Link(nil, ev); err != nil {
		tb.Fatal(err)
	}
	v, err := ev.AppendCanonical(nil, true)
	if err != nil {
		tb.Fatal(err)
	}
	return v
}

// TestManyCopiesOfOneEventStayDuplicates: an event sealed 257 times is
// sealed once and duplicated 256 times. The per-event copy counter is one
// byte; it must saturate, not wrap to "never sealed".
func TestManyCopiesOfOneEventStayDuplicates(t *testing.T) {
	r := &run{cfg: Config{Sessions: 1, RunID: "run"}, start: time.Now(), sessions: map[string]*session{}, hAck: newHist(), hDecision: newHist(), hSealed: newHist(), hStored: newHist(),
		verifier: chain.NewVerifier(), reasons: map[string]int64{}, expected: map[string]int64{}, rejected: map[string]int64{}}
	sid := "run-a0-s0"
	s := &session{id: sid, key: Tenant + "/" + sid, events: script(DefaultMix, sessionSeed(sid), sid)}
	s.sched, s.acked, s.sealed, s.replied = make([]int64, len(s.events)), make([]bool, len(s.events)), make([]uint8, len(s.events)), make([]bool, len(s.events))
	r.sessions[s.key] = s
	s.sched[0] = r.start.UnixNano()
	r.acked(s.key, eventJSON(sid, 1, r.start.UnixMilli(), s.events[0].typ, true, s.events[0].payload), nil)
	v := sealedFirst(t, r, s)
	for range 257 {
		r.onSealed(envelope.Decoder{Sealed: true}, &stream.Record{Key: []byte(s.key), Value: v}, time.Now())
	}
	rep := r.report(time.Second)
	if rep.OK || rep.EventsSealed != 1 || rep.Duplicated != 256 || rep.Lost != 0 {
		t.Fatalf("ok %v, sealed %d, duplicated %d, lost %d; want 1 sealed, 256 duplicates, none lost", rep.OK, rep.EventsSealed, rep.Duplicated, rep.Lost)
	}
}

// TestEveryEventDueIsScheduled: every event due before the end of the
// publishing phase is sent, however late the scheduler wakes up for it
// (here a gateway that acknowledges everything at once, so the count
// depends only on the schedule: 100,000 events/s for 200ms).
func TestEveryEventDueIsScheduled(t *testing.T) {
	brokers, _, _ := startDaemon(t)
	gw := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		_, _ = io.Copy(io.Discard, r.Body)
		w.WriteHeader(http.StatusAccepted)
	}))
	defer gw.Close()
	for range 3 {
		rep, err := Run(context.Background(), Config{Brokers: strings.Split(brokers, ","), HTTP: gw.URL, Rate: 100_000, Duration: 200 * time.Millisecond,
			Sessions: 100, DrainTimeout: 200 * time.Millisecond}, nil)
		if err != nil {
			t.Fatal(err)
		}
		if rep.EventsScheduled != 20_000 || rep.EventsPublished != 20_000 {
			t.Fatalf("scheduled %d, published %d; want the 20,000 due in 200ms at 100,000/s", rep.EventsScheduled, rep.EventsPublished)
		}
	}
}

// TestInterruptStopsHTTPPublishing: Ctrl-C during an HTTP run ends it at
// once, even with thousands of events queued for a slow gateway (here
// 100 ms a request, one request at a time): the request in flight is
// cancelled and the queue is not sent.
func TestInterruptStopsHTTPPublishing(t *testing.T) {
	brokers, _, _ := startDaemon(t)
	var requests atomic.Int32
	gw := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		requests.Add(1)
		_, _ = io.Copy(io.Discard, r.Body)
		select {
		case <-r.Context().Done():
		case <-time.After(100 * time.Millisecond):
		}
		w.WriteHeader(http.StatusAccepted)
	}))
	defer gw.Close()
	ctx, cancel := context.WithCancel(context.Background())
	time.AfterFunc(500*time.Millisecond, cancel)
	start := time.Now()
	_, err := Run(ctx, Config{Brokers: strings.Split(brokers, ","), HTTP: gw.URL, HTTPConcurrency: 1, HTTPBatch: 1,
		Rate: 20_000, Duration: 10 * time.Second, Sessions: 100, DrainTimeout: 200 * time.Millisecond}, nil)
	took := time.Since(start)
	if !errors.Is(err, context.Canceled) {
		t.Fatalf("Run = %v, want the interruption", err)
	}
	if took > 3*time.Second {
		t.Fatalf("Run returned %s after the start, %d requests sent; want it to stop soon after the interrupt at 500ms", took.Round(time.Millisecond), requests.Load())
	}
}

// TestPublishErrorIsReported: events the target refused fail the run with
// the reason the target gave, not only with their number.
func TestPublishErrorIsReported(t *testing.T) {
	brokers, _, _ := startDaemon(t)
	gw := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		_, _ = io.Copy(io.Discard, r.Body)
		http.Error(w, `{"error":{"code":"FORBIDDEN","message":"role agent may not record APPROVAL_DECIDED"}}`, http.StatusForbidden)
	}))
	defer gw.Close()
	rep, err := Run(context.Background(), Config{Brokers: strings.Split(brokers, ","), HTTP: gw.URL, Rate: 100, Duration: 200 * time.Millisecond,
		Sessions: 2, DrainTimeout: 200 * time.Millisecond}, nil)
	if err != nil {
		t.Fatal(err)
	}
	if rep.OK || rep.PublishFailed != rep.EventsScheduled || !slices.ContainsFunc(rep.Problems, func(p string) bool { return strings.Contains(p, "403 Forbidden") && strings.Contains(p, "FORBIDDEN") }) {
		t.Fatalf("ok %v, failed %d of %d, problems %q; want the 403 and its body in the report", rep.OK, rep.PublishFailed, rep.EventsScheduled, rep.Problems)
	}
}

// TestStoreErrorIsReported: when the store probe's queries fail, the
// report says why the events were not seen in the store.
func TestStoreErrorIsReported(t *testing.T) {
	brokers, _, dataDir := startDaemon(t)
	// A store whose schema is recorded as applied but whose audit_events
	// table is gone: opening it succeeds, every probe query fails.
	file := filepath.Join(t.TempDir(), "probe.db")
	st, err := stores.Open(context.Background(), "sqlite:"+file)
	if err != nil {
		t.Fatal(err)
	}
	_ = st.Close()
	db, err := sql.Open("sqlite", "file:"+file)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := db.Exec(`DROP TABLE audit_events`); err != nil {
		t.Fatal(err)
	}
	_ = db.Close()
	rep := failingRun(t, "--brokers", brokers, "--approval-secret-file", filepath.Join(dataDir, "approval.secret"), "--rate", "100", "--duration", "1s", "--sessions", "5",
		"--store", "sqlite:"+file, "--drain-timeout", "2s")
	if !slices.ContainsFunc(rep.Problems, func(p string) bool {
		return strings.Contains(p, "not seen in the store") && strings.Contains(p, "no such table")
	}) {
		t.Errorf("problems %q do not give the store's error", rep.Problems)
	}
}

// failingRun runs the load tester with args, which must fail the run
// (ExitFailed), and returns its JSON report.
func failingRun(t *testing.T, args ...string) *Report {
	t.Helper()
	var out, errOut bytes.Buffer
	report := filepath.Join(t.TempDir(), "report.json")
	if code := Main(context.Background(), append(args, "--report", report), &out, &errOut); code != ExitFailed {
		t.Fatalf("exit %d, want %d\n%s%s", code, ExitFailed, out.String(), errOut.String())
	}
	raw, err := os.ReadFile(report)
	if err != nil {
		t.Fatal(err)
	}
	var rep Report
	if err := json.Unmarshal(raw, &rep); err != nil {
		t.Fatal(err)
	}
	return &rep
}

// TestUnsignedApprovalsAreRefused: without the approval secret the mix's
// APPROVAL_DECIDED events, published straight to Kafka, are rejected
// APPROVAL_UNAUTHENTICATED, the approved calls stay unapproved, and the
// run fails on those decisions.
func TestUnsignedApprovalsAreRefused(t *testing.T) {
	brokers, _, _ := startDaemon(t)
	rep := failingRun(t, "--brokers", brokers, "--rate", "200", "--duration", "2s", "--sessions", "10",
		"--mix", "model=1,tool=0,memory=0,sanitize=0,approval=3,handoff=0,denied=0", "--drain-timeout", "3s")
	if rep.Rejected["APPROVAL_UNAUTHENTICATED"] == 0 || rep.DecisionsOK {
		t.Errorf("rejected %v, decisions ok %v; want APPROVAL_UNAUTHENTICATED rejections and wrong decisions", rep.Rejected, rep.DecisionsOK)
	}
}
