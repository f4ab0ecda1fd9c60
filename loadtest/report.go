package loadtest

import (
	"fmt"
	"io"
	"maps"
	"slices"
	"time"

	hdr "github.com/HdrHistogram/hdrhistogram-go"
)

// Report is the outcome of a run; its JSON form is the --report file.
type Report struct {
	RunID      string  `json:"run_id"`
	Mode       string  `json:"mode"` // "kafka" or "http"
	TargetRate float64 `json:"target_rate_eps"`
	DurationS  float64 `json:"duration_s"`
	// WarmupS: events due in the first WarmupS seconds are not in the
	// latencies (they are in every count and check).
	WarmupS  float64 `json:"warmup_s,omitempty"`
	Sessions int     `json:"sessions"`

	EventsScheduled int64 `json:"events_scheduled"`
	// EventsPublished counts events acknowledged by Kafka (or by a 202).
	EventsPublished int64 `json:"events_published"`
	PublishFailed   int64 `json:"publish_failed"`
	// EventsSealed counts distinct (session, seq) on the sealed topic.
	EventsSealed int64 `json:"events_sealed"`
	// Lost counts acknowledged events never sealed; Duplicated counts
	// sealed records beyond the first of a (session, seq); Unexpected
	// counts sealed records of the run that were never published: under a
	// key of the run's that no session has, at a seq not sent, or not the
	// event sent at that key and seq (another session's, another type).
	Lost       int64 `json:"lost"`
	Duplicated int64 `json:"duplicated"`
	Unexpected int64 `json:"unexpected"`
	// FaultsInjected counts the events published under a wrong key
	// (--fault-bad-key), each of which must show up as lost.
	FaultsInjected int64 `json:"faults_injected,omitempty"`
	// EventsStored counts events seen in the audit store (with --store).
	EventsStored int64 `json:"events_stored,omitempty"`
	// ThroughputEPS is events sealed per second, from the start of the
	// run to the last sealed record; PublishEPS is events acknowledged per
	// second of the publishing phase.
	ThroughputEPS float64 `json:"throughput_eps"`
	PublishEPS    float64 `json:"publish_eps"`
	// SteadyEPS is events sealed per second in the second half of the
	// publishing phase (after any ramp): the rate the pipeline sustains,
	// free of the start-up and of the final drain that ThroughputEPS
	// includes. It equals the target rate when the pipeline keeps up.
	SteadyEPS   float64 `json:"steady_eps"`
	SessionsRun int     `json:"sessions_run"`

	ChainsVerified int `json:"chains_verified"`
	ChainFailures  int `json:"chain_failures"`
	// Decisions maps "outcome/REASON" to the count expected from the mix
	// and the count found on the sealed proposals.
	DecisionsExpected map[string]int64 `json:"decisions_expected"`
	DecisionsSealed   map[string]int64 `json:"decisions_sealed"`
	DecisionsOK       bool             `json:"decisions_ok"`
	Rejected          map[string]int64 `json:"rejected"`
	Problems          []string         `json:"problems,omitempty"`

	// Latency in milliseconds, measured from each event's scheduled send
	// time (coordinated-omission safe).
	Latency map[string]Percentiles `json:"latency_ms"`

	OK bool `json:"ok"`
}

// Percentiles of one latency, in milliseconds.
type Percentiles struct {
	Count int64   `json:"count"`
	P50   float64 `json:"p50"`
	P90   float64 `json:"p90"`
	P99   float64 `json:"p99"`
	P999  float64 `json:"p99_9"`
	Max   float64 `json:"max"`
}

func percentiles(h *hdr.Histogram) Percentiles {
	ms := func(q float64) float64 { return float64(h.ValueAtQuantile(q)) / 1000 }
	return Percentiles{Count: h.TotalCount(), P50: ms(50), P90: ms(90), P99: ms(99), P999: ms(99.9), Max: float64(h.Max()) / 1000}
}

// report builds the Report; the reader and store poller have stopped.
func (r *run) report(pubEnd time.Duration) *Report {
	r.mu.Lock()
	defer r.mu.Unlock()
	rep := &Report{RunID: r.cfg.RunID, Mode: "kafka", TargetRate: r.cfg.Rate, DurationS: r.cfg.Duration.Seconds(), WarmupS: r.cfg.Warmup.Seconds(), Sessions: r.cfg.Sessions,
		EventsScheduled: r.scheduled.Load(), EventsPublished: r.published.Load(), PublishFailed: r.failed.Load(),
		EventsSealed: r.sealedN.Load(), Duplicated: r.dupN.Load(), Unexpected: r.unexpect, SessionsRun: len(r.sessions),
		DecisionsExpected: maps.Clone(r.expected), DecisionsSealed: maps.Clone(r.reasons), Rejected: maps.Clone(r.rejected),
		Latency: map[string]Percentiles{"publish_ack": percentiles(r.hAck), "proposal_decision": percentiles(r.hDecision), "publish_sealed": percentiles(r.hSealed)}}
	if r.cfg.HTTP != "" {
		rep.Mode = "http"
	}
	if r.cfg.Store != "" {
		rep.EventsStored = r.storedN.Load()
		rep.Latency["publish_stored"] = percentiles(r.hStored)
	}
	var unanswered int
	for _, s := range r.sessions {
		for i, ok := range s.acked {
			if ok && s.sealed[i] == 0 {
				rep.Lost++
			}
			// The decider writes a proposal's reply in the transaction
			// that passes it on to be sealed: a sealed proposal without
			// one is a reply the agent would wait for in vain.
			if s.sealed[i] > 0 && s.events[i].want != "" && !s.replied[i] {
				unanswered++
			}
		}
	}
	if !r.lastSeal.IsZero() {
		rep.ThroughputEPS = float64(rep.EventsSealed) / r.lastSeal.Sub(r.start).Seconds()
	}
	if pubEnd > 0 {
		rep.PublishEPS = float64(rep.EventsPublished) / pubEnd.Seconds()
	}
	if w := r.cfg.Duration - r.steadyFrom(); w > 0 {
		rep.SteadyEPS = float64(r.steadyN) / w.Seconds()
	}
	rep.ChainsVerified = len(r.verifier.Heads())
	rep.ChainFailures = len(r.verifier.Failures())
	rep.DecisionsOK = maps.Equal(r.expected, r.reasons)
	rep.Problems = append(rep.Problems, r.mismatch...)
	if !rep.DecisionsOK {
		rep.Problems = append(rep.Problems, fmt.Sprintf("decisions sealed %v, expected %v", r.reasons, r.expected))
	}
	rep.FaultsInjected = r.faults
	if r.cfg.FaultBadKey > 0 && r.faults == 0 {
		rep.Problems = append(rep.Problems, fmt.Sprintf("--fault-bad-key %d injected nothing: no session reached its last event (fewer --sessions or a longer --duration)", r.cfg.FaultBadKey))
	}
	if rep.Lost > 0 {
		rep.Problems = append(rep.Problems, fmt.Sprintf("%d acknowledged events never sealed (rejections seen: %v)", rep.Lost, r.rejected))
	}
	if unanswered > 0 {
		rep.Problems = append(rep.Problems, fmt.Sprintf("%d sealed proposals without a reply on the decisions topic", unanswered))
	}
	if r.badReplies > 0 {
		rep.Problems = append(rep.Problems, fmt.Sprintf("%d replies on the decisions topic with another decision than the expected one", r.badReplies))
	}
	if rep.PublishFailed > 0 {
		rep.Problems = append(rep.Problems, fmt.Sprintf("%d events not acknowledged by the publisher's target (first error: %v)", rep.PublishFailed, r.pubErr))
	}
	if r.cfg.Store != "" && rep.EventsStored < rep.EventsSealed {
		msg := fmt.Sprintf("%d sealed events not seen in the store", rep.EventsSealed-rep.EventsStored)
		if r.storeErr != nil {
			msg += fmt.Sprintf(" (its last query failed: %v)", r.storeErr)
		}
		rep.Problems = append(rep.Problems, msg)
	}
	rep.OK = rep.Lost == 0 && rep.Duplicated == 0 && rep.Unexpected == 0 && rep.PublishFailed == 0 &&
		rep.ChainFailures == 0 && rep.DecisionsOK && len(rep.Problems) == 0
	return rep
}

// WriteText writes the human-readable report.
func (rep *Report) WriteText(w io.Writer) {
	fmt.Fprintf(w, "aegis-loadtest %s (%s): %d sessions, target %.0f events/s for %.0fs\n", rep.RunID, rep.Mode, rep.Sessions, rep.TargetRate, rep.DurationS)
	fmt.Fprintf(w, "  published %d (failed %d), sealed %d, lost %d, duplicated %d, unexpected %d\n",
		rep.EventsPublished, rep.PublishFailed, rep.EventsSealed, rep.Lost, rep.Duplicated, rep.Unexpected)
	fmt.Fprintf(w, "  throughput %.0f events/s sealed (%.0f/s in the second half of publishing), %.0f events/s published; %d chains verified, %d failures\n",
		rep.ThroughputEPS, rep.SteadyEPS, rep.PublishEPS, rep.ChainsVerified, rep.ChainFailures)
	if rep.EventsStored > 0 {
		fmt.Fprintf(w, "  stored %d\n", rep.EventsStored)
	}
	fmt.Fprintf(w, "  decisions (outcome/reason: sealed / expected):")
	keys := slices.Sorted(maps.Keys(rep.DecisionsExpected))
	for k := range rep.DecisionsSealed {
		if _, ok := rep.DecisionsExpected[k]; !ok {
			keys = append(keys, k)
		}
	}
	for _, k := range keys {
		fmt.Fprintf(w, " %s %d/%d", k, rep.DecisionsSealed[k], rep.DecisionsExpected[k])
	}
	fmt.Fprintln(w)
	if rep.WarmupS > 0 {
		fmt.Fprintf(w, "  latencies of events due after the first %gs (warm-up)\n", rep.WarmupS)
	}
	fmt.Fprintf(w, "  %-18s %9s %9s %9s %9s %9s %9s\n", "latency (ms)", "count", "p50", "p90", "p99", "p99.9", "max")
	for _, k := range slices.Sorted(maps.Keys(rep.Latency)) {
		p := rep.Latency[k]
		fmt.Fprintf(w, "  %-18s %9d %9.2f %9.2f %9.2f %9.2f %9.2f\n", k, p.Count, p.P50, p.P90, p.P99, p.P999, p.Max)
	}
	for _, p := range rep.Problems {
		fmt.Fprintf(w, "  PROBLEM: %s\n", p)
	}
	if rep.OK {
		fmt.Fprintln(w, "  result: OK")
	} else {
		fmt.Fprintln(w, "  result: FAILED")
	}
}
