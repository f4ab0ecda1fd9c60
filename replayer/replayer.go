// Package replayer re-runs recorded sessions through the decider's
// deterministic core (decider.Engine: reducer + policy) without calling any
// model or tool.
//
// Two modes are implemented here (chain verification is `aegisctl verify`'s
// code, shared by `aegisctl replay --mode verify`):
//
//   - ModeExact re-decides every proposal with the policy revision and the
//     manifest digest its recorded decision names, loaded from an Archive,
//     on the snapshot of the recorded events before it. Every decision must
//     be byte-identical (canonical JSON, input_digest included) and the final
//     snapshot hash must equal the stored one when the store keeps one. A
//     revision missing from the archive is ErrMissingRevision, never a
//     fallback.
//   - ModeWhatIf re-decides the same proposals under a candidate bundle
//     (and/or candidate manifests) and reports each decision whose outcome
//     or reason changes. The candidate's decisions are folded into the
//     session state (an approval it requires is pending, a loop it detects
//     is sticky), while the events themselves are the recorded ones.
//
// Sessions are replayed in parallel by a bounded worker pool, each session
// by one goroutine in seq order; a Source streams sessions one at a time, so
// memory is bounded by the sessions in flight, not by the job.
package replayer

import (
	"context"
	"errors"
	"fmt"
	"runtime"
	"sort"
	"sync"
	"sync/atomic"
	"time"

	"aegis.dev/aegis/decider"
	"aegis.dev/aegis/decider/policy"
	"aegis.dev/aegis/decider/session"
	"aegis.dev/aegis/projector"
	"aegis.dev/aegis/schemas/envelope"
	"aegis.dev/aegis/schemas/manifest"
)

// Mode is a replay mode.
type Mode string

// Replay modes (ModeVerify is run by `aegisctl verify`'s code).
const (
	ModeVerify Mode = "verify"
	ModeExact  Mode = "exact"
	ModeWhatIf Mode = "what-if"
)

// Session is one recorded session: its events in seq order, as sealed.
type Session struct {
	TenantID, SessionID string
	Events              []*envelope.Event
	// Invalid holds rows of the session a source could not rebuild into a
	// sealed event (keyed by seq); they are reported as differences.
	Invalid map[uint64]error
}

// Source streams the selected sessions, one at a time, each in seq order.
// fn may keep the Session. An error from fn stops the scan and is returned.
type Source func(ctx context.Context, fn func(*Session) error) error

// Config configures a replay.
type Config struct {
	Mode Mode
	// Archive holds the bundles and manifests decisions were made under:
	// required in ModeExact, and in ModeWhatIf without Manifests.
	Archive *Archive
	// Candidate is the what-if bundle (nil: each decision's recorded
	// revision, so only Manifests change).
	Candidate *policy.Bundle
	// Manifests are the what-if manifests, resolved as the decider does
	// (nil: the manifest each decision recorded, from the Archive).
	Manifests *manifest.Registry
	// SnapshotHash, if set, returns the stored snapshot of a session (none:
	// a difference, as is one of another seq than the last event): its
	// last seq and hash; exact mode compares the replayed final snapshot
	// with it when the seqs agree.
	SnapshotHash func(tenant, session string) (lastSeq uint64, hash string, ok bool)
	// Workers bounds the sessions replayed at once (0: GOMAXPROCS).
	Workers int
	// Progress, if set, is called after each replayed session with the
	// running totals (from several goroutines: it must be safe for that).
	Progress func(sessions, events int64)
}

// Difference is one exact-mode mismatch: the recorded value of a field and
// the replayed one.
type Difference struct {
	TenantID  string `json:"tenant_id"`
	SessionID string `json:"session_id"`
	Seq       uint64 `json:"seq"`
	// Field is a decision member (outcome, reason, constraints,
	// policy_revision, manifest_digest, input_digest), "decision" (absent
	// on one side), "snapshot_hash", or "event" (a row that does not
	// rebuild or does not follow its session).
	Field    string `json:"field"`
	Recorded string `json:"recorded"`
	Replayed string `json:"replayed"`
}

// Change is one what-if decision whose outcome or reason changes.
type Change struct {
	TenantID   string             `json:"tenant_id"`
	SessionID  string             `json:"session_id"`
	Seq        uint64             `json:"seq"`
	CallID     string             `json:"call_id"`
	Tool       string             `json:"tool"`
	ArgsDigest string             `json:"args_digest"`
	Before     *envelope.Decision `json:"before"`
	After      *envelope.Decision `json:"after"`
}

// Counts tallies changed decisions. ByReason is keyed "before->after".
type Counts struct {
	ByReason map[string]int64 `json:"by_reason"`
	ByTool   map[string]int64 `json:"by_tool"`
	ByTenant map[string]int64 `json:"by_tenant"`
}

// Report is the result of a replay; in ModeWhatIf it is the DiffReport
// (schemas/diffreport.schema.json).
type Report struct {
	Mode      Mode   `json:"mode"`
	Sessions  int64  `json:"sessions"`
	Events    int64  `json:"events"`
	Decisions int64  `json:"decisions"`
	Identical bool   `json:"identical"`
	Candidate string `json:"candidate_revision,omitempty"`
	// Differences (ModeExact) and Changes (ModeWhatIf), sorted by tenant,
	// session and seq.
	Differences []Difference `json:"differences"`
	Changes     []Change     `json:"changes"`
	Counts      Counts       `json:"counts"`
	// Seconds is the wall time of the replay, store reads included.
	Seconds float64 `json:"seconds"`
}

// Run replays every session src yields. It returns an error (wrapping
// ErrMissingRevision, ErrArchive, policy.ErrBundle, or the source's error)
// when the replay could not be carried out; differences are results, in
// the Report.
func Run(ctx context.Context, cfg Config, src Source) (*Report, error) {
	r, err := newRunner(cfg)
	if err != nil {
		return nil, err
	}
	workers := cfg.Workers
	if workers <= 0 {
		workers = runtime.GOMAXPROCS(0)
	}
	start := time.Now()
	ctx, cancel := context.WithCancelCause(ctx)
	defer cancel(nil)
	in := make(chan *Session, workers)
	var wg sync.WaitGroup
	results := make([]partial, workers)
	for i := range workers {
		wg.Add(1)
		go func() {
			defer wg.Done()
			res := &results[i]
			for s := range in {
				if err := r.session(ctx, s, res); err != nil {
					cancel(err)
					for range in {
					}
					return
				}
				if cfg.Progress != nil {
					cfg.Progress(r.sessions.Add(1), r.events.Add(int64(len(s.Events))))
				}
			}
		}()
	}
	srcErr := src(ctx, func(s *Session) error {
		select {
		case in <- s:
			return nil
		case <-ctx.Done():
			return context.Cause(ctx)
		}
	})
	close(in)
	wg.Wait()
	if err := context.Cause(ctx); err != nil {
		return nil, err
	}
	if srcErr != nil {
		return nil, srcErr
	}
	rep := &Report{Mode: cfg.Mode, Differences: []Difference{}, Changes: []Change{},
		Counts: Counts{ByReason: map[string]int64{}, ByTool: map[string]int64{}, ByTenant: map[string]int64{}}}
	if r.candidate != nil {
		rep.Candidate = r.candidate.Revision()
	}
	for _, p := range results {
		rep.Sessions += p.sessions
		rep.Events += p.events
		rep.Decisions += p.decisions
		rep.Differences = append(rep.Differences, p.diffs...)
		rep.Changes = append(rep.Changes, p.changes...)
	}
	sort.SliceStable(rep.Differences, func(i, j int) bool {
		a, b := rep.Differences[i], rep.Differences[j]
		return less(a.TenantID, a.SessionID, a.Seq, b.TenantID, b.SessionID, b.Seq)
	})
	sort.Slice(rep.Changes, func(i, j int) bool {
		a, b := rep.Changes[i], rep.Changes[j]
		return less(a.TenantID, a.SessionID, a.Seq, b.TenantID, b.SessionID, b.Seq)
	})
	for _, c := range rep.Changes {
		rep.Counts.ByReason[reasonOf(c.Before)+"->"+reasonOf(c.After)]++
		rep.Counts.ByTool[c.Tool]++
		rep.Counts.ByTenant[c.TenantID]++
	}
	rep.Identical = len(rep.Differences) == 0 && len(rep.Changes) == 0
	rep.Seconds = time.Since(start).Seconds()
	return rep, nil
}

func less(t1, s1 string, q1 uint64, t2, s2 string, q2 uint64) bool {
	if t1 != t2 {
		return t1 < t2
	}
	if s1 != s2 {
		return s1 < s2
	}
	return q1 < q2
}

func reasonOf(d *envelope.Decision) string {
	if d == nil {
		return "NONE"
	}
	return d.Reason
}

// partial is one worker's share of the report.
type partial struct {
	sessions, events, decisions int64
	diffs                       []Difference
	changes                     []Change
}

// runner holds the compiled policies and engines, shared by the workers.
type runner struct {
	cfg       Config
	candidate *policy.Engine

	mu       sync.Mutex
	policies map[string]*policy.Engine
	engines  map[[2]string]*decider.Engine

	sessions, events atomic.Int64
}

func newRunner(cfg Config) (*runner, error) {
	r := &runner{cfg: cfg, policies: map[string]*policy.Engine{}, engines: map[[2]string]*decider.Engine{}}
	switch cfg.Mode {
	case ModeExact:
		if cfg.Archive == nil {
			return nil, fmt.Errorf("%w: exact replay needs a policy archive", ErrMissingRevision)
		}
	case ModeWhatIf:
		if cfg.Candidate == nil && cfg.Manifests == nil {
			return nil, errors.New("replayer: what-if needs a candidate bundle or candidate manifests")
		}
		if (cfg.Manifests == nil || cfg.Candidate == nil) && cfg.Archive == nil {
			return nil, fmt.Errorf("%w: what-if reads the recorded policy or manifests it does not replace from a policy archive", ErrMissingRevision)
		}
		if cfg.Candidate != nil {
			pe, err := policy.New(cfg.Candidate)
			if err != nil {
				return nil, err
			}
			r.candidate = pe
			r.policies[pe.Revision()] = pe
		}
	default:
		return nil, fmt.Errorf("replayer: mode %q is not exact or what-if", cfg.Mode)
	}
	return r, nil
}

// policy returns the compiled bundle of a revision: the candidate's or the
// archive's.
func (r *runner) policy(revision string) (*policy.Engine, error) {
	if pe, ok := r.policies[revision]; ok {
		return pe, nil
	}
	if r.cfg.Archive == nil {
		return nil, fmt.Errorf("%w: policy revision %s (no archive)", ErrMissingRevision, revision)
	}
	b, err := r.cfg.Archive.Bundle(revision)
	if err != nil {
		return nil, err
	}
	pe, err := policy.New(b)
	if err != nil {
		return nil, fmt.Errorf("%w: revision %s: %w", ErrArchive, revision, err)
	}
	r.policies[revision] = pe
	return pe, nil
}

// engine returns the engine deciding under a policy revision and a fixed
// manifest digest ("" for none), or under the candidate manifests when
// the what-if replay has them.
func (r *runner) engine(revision, manifestDigest string) (*decider.Engine, error) {
	r.mu.Lock()
	defer r.mu.Unlock()
	if r.cfg.Mode == ModeWhatIf {
		if r.candidate != nil {
			revision = r.candidate.Revision()
		}
		if r.cfg.Manifests != nil {
			manifestDigest = "registry"
		}
	}
	key := [2]string{revision, manifestDigest}
	if e, ok := r.engines[key]; ok {
		return e, nil
	}
	pe, err := r.policy(revision)
	if err != nil {
		return nil, err
	}
	var e *decider.Engine
	switch {
	case manifestDigest == "registry":
		e = decider.NewEngine(pe, r.cfg.Manifests)
	case manifestDigest == "":
		e = decider.NewEngine(pe, nil)
	default:
		m, err := r.cfg.Archive.Manifest(manifestDigest)
		if err != nil {
			return nil, err
		}
		e = decider.NewEngine(pe, fixed{m})
	}
	r.engines[key] = e
	return e, nil
}

// fixed resolves every session to one manifest: the one a decision
// recorded.
type fixed struct{ m *manifest.Manifest }

func (f fixed) Resolve(string, string) (*manifest.Manifest, error) { return f.m, nil }

// session replays one session into res.
func (r *runner) session(ctx context.Context, s *Session, res *partial) error {
	res.sessions++
	res.events += int64(len(s.Events))
	snap := session.New(s.TenantID, s.SessionID)
	diff := func(seq uint64, field, recorded, replayed string) {
		res.diffs = append(res.diffs, Difference{TenantID: s.TenantID, SessionID: s.SessionID, Seq: seq,
			Field: field, Recorded: recorded, Replayed: replayed})
	}
	for _, ev := range s.Events {
		if err, bad := s.Invalid[ev.Seq]; bad {
			diff(ev.Seq, "event", "row does not rebuild a sealed record: "+err.Error(), "")
			return nil
		}
		if ev.Type != envelope.ToolCallProposed {
			if ev.Decision != nil {
				// The sealer refuses such a record: only proposals carry
				// decisions, and replay re-decides proposals only.
				diff(ev.Seq, "event", fmt.Sprintf("a decision on a %s event: only proposals carry decisions", ev.Type), "")
				return nil
			}
			if err := snap.Apply(ev); err != nil {
				diff(ev.Seq, "event", err.Error(), "")
				return nil
			}
			continue
		}
		res.decisions++
		rec := ev.Decision
		if field, recorded, bad := r.unreplayable(rec); bad {
			diff(ev.Seq, field, recorded, "")
			return nil
		}
		var revision, digest string
		if rec != nil {
			revision, digest = rec.PolicyRevision, rec.ManifestDigest
		}
		eng, err := r.engine(revision, digest)
		if err != nil {
			return fmt.Errorf("replayer: %s/%s seq %d: %w", s.TenantID, s.SessionID, ev.Seq, err)
		}
		bare := *ev
		bare.Decision, bare.PrevHash, bare.Hash = nil, "", ""
		d, err := eng.Decide(ctx, snap, &bare)
		if err != nil {
			if ctx.Err() != nil {
				return fmt.Errorf("replayer: %s/%s seq %d: %w", s.TenantID, s.SessionID, ev.Seq, err)
			}
			// Every proposal the pipeline sealed can be decided: this row
			// was not written by it (the decider's decoder refuses such a
			// payload). A difference of this session, not a failed job.
			diff(ev.Seq, "event", "a proposal the decider cannot decide: "+err.Error(), "")
			return nil
		}
		if r.cfg.Mode == ModeExact {
			if field, a, b, ok := compare(rec, d); !ok {
				diff(ev.Seq, field, a, b)
			}
			if err := snap.Apply(ev); err != nil {
				diff(ev.Seq, "event", err.Error(), "")
				return nil
			}
			continue
		}
		// A change is any difference a caller acts on: outcome, reason,
		// or the constraints an allow carries (timeout, output bound).
		if rec == nil || rec.Outcome != d.Outcome || rec.Reason != d.Reason || rec.Constraints != d.Constraints {
			c := Change{TenantID: s.TenantID, SessionID: s.SessionID, Seq: ev.Seq, Before: rec, After: d}
			if tc, err := ev.ToolCall(); err == nil {
				c.CallID, c.Tool = tc.CallID, tc.ToolName
				c.ArgsDigest, _ = session.CallDigest(tc.ToolName, tc.Args)
			}
			res.changes = append(res.changes, c)
		}
		bare.Decision = d
		if err := snap.Apply(&bare); err != nil {
			diff(ev.Seq, "event", err.Error(), "")
			return nil
		}
	}
	if r.cfg.Mode == ModeExact && r.cfg.SnapshotHash != nil && len(s.Events) > 0 {
		last := s.Events[len(s.Events)-1].Seq
		got, err := snap.Hash()
		if err != nil {
			return fmt.Errorf("replayer: %s/%s: %w", s.TenantID, s.SessionID, err)
		}
		// The store's snapshot must be of the session's last event: a
		// missing row, or one of another seq, is a difference too.
		switch seq, want, ok := r.cfg.SnapshotHash(s.TenantID, s.SessionID); {
		case !ok:
			diff(last, "snapshot_hash", "absent", got)
		case seq != last:
			diff(last, "snapshot_hash", fmt.Sprintf("stored after seq %d", seq), got)
		case got != want:
			diff(seq, "snapshot_hash", want, got)
		}
	}
	return nil
}

// unreplayable names what a proposal's recorded decision lacks for it to
// be replayed: the decision itself, or a policy revision or manifest
// digest the replay loads from the archive (those the what-if candidate
// does not replace) that is not a sha256 digest. The decider writes
// nothing else, so such a row is a difference of its session; only a
// well-formed digest that the archive lacks fails the job.
func (r *runner) unreplayable(rec *envelope.Decision) (field, recorded string, bad bool) {
	needRevision := r.cfg.Mode == ModeExact || r.candidate == nil
	needManifest := r.cfg.Mode == ModeExact || r.cfg.Manifests == nil
	switch {
	case rec == nil:
		return "decision", "absent", needRevision || needManifest
	case needRevision && hexOf(rec.PolicyRevision) == "":
		return "policy_revision", rec.PolicyRevision, true
	case needManifest && rec.ManifestDigest != "" && hexOf(rec.ManifestDigest) == "":
		return "manifest_digest", rec.ManifestDigest, true
	}
	return "", "", false
}

// compare reports whether the replayed decision is byte-identical to the
// recorded one (canonical JSON), and otherwise the first differing field.
func compare(rec, got *envelope.Decision) (field, recorded, replayed string, same bool) {
	a, errA := projector.DecisionJSON(&envelope.Event{Decision: rec})
	b, errB := projector.DecisionJSON(&envelope.Event{Decision: got})
	if errA == nil && errB == nil && a == b {
		return "", "", "", true
	}
	switch {
	case rec.Outcome != got.Outcome:
		return "outcome", string(rec.Outcome), string(got.Outcome), false
	case rec.Reason != got.Reason:
		return "reason", rec.Reason, got.Reason, false
	case rec.Constraints != got.Constraints:
		return "constraints", fmt.Sprintf("%+v", rec.Constraints), fmt.Sprintf("%+v", got.Constraints), false
	case rec.PolicyRevision != got.PolicyRevision:
		return "policy_revision", rec.PolicyRevision, got.PolicyRevision, false
	case rec.ManifestDigest != got.ManifestDigest:
		return "manifest_digest", rec.ManifestDigest, got.ManifestDigest, false
	case rec.InputDigest != got.InputDigest:
		return "input_digest", rec.InputDigest, got.InputDigest, false
	}
	return "decision", a, b, false
}
