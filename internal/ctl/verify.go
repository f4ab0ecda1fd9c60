package ctl

import (
	"bufio"
	"bytes"
	"context"
	"crypto/sha256"
	"encoding/json"
	"errors"
	"fmt"
	"hash"
	"hash/maphash"
	"os"
	"runtime"
	"sort"
	"strconv"
	"sync"
	"time"

	"aegis.dev/aegis/decider/session"
	"aegis.dev/aegis/projector"
	"aegis.dev/aegis/projector/stores"
	"aegis.dev/aegis/schemas/chain"
	"aegis.dev/aegis/schemas/envelope"
)

// ReasonColumnMismatch is the failure reason, beyond the chain's own, for a
// stored row whose filter columns (tool_name, call_id, outcome, reason,
// policy_revision) disagree with the payload and decision the chain hashes:
// someone edited what auditors filter on.
const ReasonColumnMismatch = "COLUMN_MISMATCH"

// ReasonHeadMissing is the verify --store failure of a session whose
// records are stored but which has no chain head: the sealer writes a head
// for every session it seals, so on a drained store such a session was not
// written by the pipeline (or its head was deleted).
const ReasonHeadMissing = "HEAD_MISSING"

// ReasonDecisionsMismatch is the verify --store failure of a session whose
// verified chain is intact but whose decisions rows (the table auditors
// count outcomes and reasons in) are not the rows its records derive: a
// row edited, deleted or added.
const ReasonDecisionsMismatch = "DECISIONS_MISMATCH"

// ReasonSnapshotMismatch is the verify --store failure of a session whose
// verified chain is intact but whose session_snapshots row (the table
// auditors ask which sessions are tainted, looping or terminated) is not
// the row its records fold into: a column edited, the row deleted, a stale
// row (another last_seq than the session's last record), or a row for a
// session with no stored record.
const ReasonSnapshotMismatch = "SNAPSHOT_MISMATCH"

// VerifyReport is what `aegisctl verify --json` prints.
type VerifyReport struct {
	OK       bool            `json:"ok"`
	Events   int64           `json:"events"`
	Sessions int             `json:"sessions"`
	Failures []chain.Failure `json:"failures"`
	// Heads are the verified heads of the sessions read (VerifyStore only;
	// not printed).
	Heads []chain.Head `json:"-"`
}

func runVerify(ctx context.Context, env IO, args []string) int {
	fs := newFlags(env, "verify", "(--file FILE [--heads FILE] | --store URL [--tenant T] [--session S] [--since T]) [--json]")
	file := fs.String("file", "", "sealed NDJSON to verify")
	headsFile := fs.String("heads", "", "with --file: NDJSON of expected chain heads {tenant_id, session_id, seq, hash}: detects truncated or missing sessions")
	store := fs.String("store", "", "audit store to verify: sqlite:PATH or clickhouse://HOST:PORT/DB (checks heads against the stored chain heads)")
	tenant := fs.String("tenant", "", "with --store: only this tenant")
	sessionID := fs.String("session", "", "with --store: only this session")
	since := fs.String("since", "", "with --store: only sessions with an event at or after this time (RFC 3339, Unix ms, or a duration such as 24h before now)")
	asJSON := fs.Bool("json", false, "print a JSON report instead of text")
	if code, ok := parse(fs, args); !ok {
		return code
	}
	if fs.NArg() > 0 {
		return fail(env, ExitUsage, "verify: unexpected argument %q", fs.Arg(0))
	}
	var rep VerifyReport
	switch {
	case *file != "" && *store == "":
		if *tenant != "" || *sessionID != "" || *since != "" {
			return fail(env, ExitUsage, "verify: --tenant, --session and --since apply to --store only")
		}
		var code int
		if rep, code = verifyFile(env, *file, *headsFile); code != ExitOK {
			return code
		}
	case *store != "" && *file == "" && *headsFile == "":
		f := projector.Filter{TenantID: *tenant, SessionID: *sessionID}
		if *since != "" {
			ms, err := parseSince(*since, time.Now())
			if err != nil {
				return fail(env, ExitUsage, "verify: --since: %v", err)
			}
			f.SinceUnixMs = ms
		}
		st, err := stores.OpenExisting(ctx, *store)
		if err != nil {
			return fail(env, ExitRuntime, "verify: %v", err)
		}
		defer func() { _ = st.Close() }()
		if rep, err = VerifyStore(ctx, st, f, 0); err != nil {
			return fail(env, ExitRuntime, "verify: %v", err)
		}
	default:
		fs.Usage()
		return ExitUsage
	}
	return printVerify(env, rep, *asJSON)
}

// printVerify prints rep and returns the exit code: the same output for
// files and stores.
func printVerify(env IO, rep VerifyReport, asJSON bool) int {
	if rep.Failures == nil {
		rep.Failures = []chain.Failure{}
	}
	if asJSON {
		if code := writeJSON(env, rep); code != ExitOK {
			return code
		}
	} else if rep.OK {
		fmt.Fprintf(env.Stdout, "OK: %d events in %d sessions verified\n", rep.Events, rep.Sessions)
	} else {
		for _, f := range rep.Failures {
			fmt.Fprintf(env.Stderr, "FAIL %s/%s seq %d: %s: %s\n", f.TenantID, f.SessionID, f.Seq, f.Reason, f.Detail)
		}
		fmt.Fprintf(env.Stderr, "verification failed: %d session(s) bad, %d events read\n", len(rep.Failures), rep.Events)
	}
	if !rep.OK {
		return ExitFailed
	}
	return ExitOK
}

func verifyFile(env IO, file, headsFile string) (VerifyReport, int) {
	f, err := os.Open(file)
	if err != nil {
		return VerifyReport{}, fail(env, ExitRuntime, "verify: %v", err)
	}
	defer f.Close()
	v := chain.NewVerifier()
	dec := envelope.Decoder{Sealed: true, MaxBytes: maxLine}
	var malformed []chain.Failure
	err = eachLine(f, func(n int, line []byte) error {
		ev, err := dec.Decode(line)
		if err != nil {
			malformed = append(malformed, chain.Failure{Reason: chain.ReasonMalformed, Detail: fmt.Sprintf("line %d: %v", n, err)})
			return nil
		}
		if err := isCanonicalRecord(ev, line); err != nil {
			malformed = append(malformed, chain.Failure{TenantID: ev.TenantID, SessionID: ev.SessionID, Seq: ev.Seq, Reason: chain.ReasonMalformed,
				Detail: fmt.Sprintf("line %d: %v", n, err)})
		}
		_ = v.Add(ev) // failures are collected by the verifier
		return nil
	})
	tooLong := errors.Is(err, bufio.ErrTooLong)
	switch {
	case tooLong:
		// Longer than any sealed record: invalid input, which ends the
		// reading (the expected heads are not compared then: the
		// sessions after it were not read).
		malformed = append(malformed, chain.Failure{Reason: chain.ReasonMalformed,
			Detail: fmt.Sprintf("%v (a sealed record is at most %d bytes); the lines after it were not verified", err, maxLine)})
	case err != nil:
		return VerifyReport{}, fail(env, ExitRuntime, "verify: %s: %v", file, err)
	}
	if headsFile != "" {
		heads, err := readHeads(headsFile)
		if err != nil {
			// A file that cannot be read is an environment error; one
			// that is not NDJSON heads is invalid input.
			code := ExitFailed
			if errors.As(err, new(*os.PathError)) {
				code = ExitRuntime
			}
			return VerifyReport{}, fail(env, code, "verify: %v", err)
		}
		if !tooLong {
			v.CheckHeads(heads)
		}
	}
	failures := firstPerSession(append(malformed, v.Failures()...))
	return VerifyReport{OK: len(failures) == 0, Events: v.Events(), Sessions: len(v.Heads()), Failures: failures}, ExitOK
}

// firstPerSession keeps the first bad record of each session (the lowest
// seq; failures of lines that name no session are all kept): a line not
// written canonically is found apart from the chain, which goes on
// checking the session's later records and its expected head.
func firstPerSession(failures []chain.Failure) []chain.Failure {
	first := map[projector.SessionKey]int{}
	for i, f := range failures {
		k := projector.SessionKey{TenantID: f.TenantID, SessionID: f.SessionID}
		if k == (projector.SessionKey{}) {
			continue
		}
		if j, ok := first[k]; !ok || f.Seq < failures[j].Seq {
			first[k] = i
		}
	}
	out := failures[:0:0]
	for i, f := range failures {
		k := projector.SessionKey{TenantID: f.TenantID, SessionID: f.SessionID}
		if j, ok := first[k]; !ok || j == i {
			out = append(out, f)
		}
	}
	return out
}

// parseSince reads --since: RFC 3339, Unix milliseconds, or a duration
// before now.
func parseSince(s string, now time.Time) (int64, error) {
	if t, err := time.Parse(time.RFC3339, s); err == nil {
		return t.UnixMilli(), nil
	}
	if ms, err := strconv.ParseInt(s, 10, 64); err == nil && ms > 0 {
		return ms, nil
	}
	if d, err := time.ParseDuration(s); err == nil && d > 0 {
		return now.Add(-d).UnixMilli(), nil
	}
	return 0, fmt.Errorf("%q is neither RFC 3339, Unix milliseconds nor a positive duration", s)
}

// AuditStore is a store aegisctl writes results to and reads from.
type AuditStore interface {
	projector.Store
	projector.HeadReader
}

// ChainSource is what VerifyStore reads: the stored events and, where the
// store keeps them, the sealer's chain heads.
type ChainSource interface {
	Events(ctx context.Context, f projector.Filter, fn func(*projector.EventRow) error) error
	projector.HeadReader
}

// VerifyStore recomputes every hash of the stored sessions selected by f
// from their rows (docs/chain.md), checks the filter columns against the
// hashed payload and decision, and compares each session with its stored
// chain head. Where the store reads them back (projector.DecisionReader,
// projector.SnapshotReader), the decisions and session_snapshots rows of
// each verified session are compared with the rows its records derive
// (DECISIONS_MISMATCH, SNAPSHOT_MISMATCH). Sessions are verified in
// parallel by workers goroutines (0: one per CPU); each session's first
// failure is reported, sorted by tenant and session. Identical copies of a
// row (a ClickHouse redelivery not yet merged) count once; a different row
// with the same seq fails SEQ_ORDER.
func VerifyStore(ctx context.Context, st ChainSource, f projector.Filter, workers int) (VerifyReport, error) {
	if workers <= 0 {
		workers = runtime.GOMAXPROCS(0)
	}
	type worker struct {
		in       chan []*projector.EventRow
		v        *chain.Verifier
		extra    []chain.Failure
		last     map[projector.SessionKey]*projector.EventRow
		failedAt map[projector.SessionKey]bool
		// The decisions rows the verified records derive, as a digest
		// per session (decisionDigest), folded over the session's
		// state as the projector does.
		decisions map[projector.SessionKey]decisionDigest
		// cutoff is the seq of a verified record the session state
		// refuses (sealed by an older pipeline whose reducer took it):
		// the decisions rows from it on cannot be derived and are not
		// checked.
		cutoff map[projector.SessionKey]uint64
		// The session_snapshots row the verified records fold into,
		// per session (see expectedSnapshot).
		snapshots map[projector.SessionKey]expectedSnapshot
		cur       projector.SessionKey
		sn        *session.Snapshot
		dd        decisionDigest
		stopped   bool
	}
	ws := make([]*worker, workers)
	var wg sync.WaitGroup
	for i := range ws {
		w := &worker{in: make(chan []*projector.EventRow, 4), v: chain.NewVerifier(),
			last: map[projector.SessionKey]*projector.EventRow{}, failedAt: map[projector.SessionKey]bool{},
			decisions: map[projector.SessionKey]decisionDigest{}, cutoff: map[projector.SessionKey]uint64{},
			snapshots: map[projector.SessionKey]expectedSnapshot{}}
		ws[i] = w
		wg.Add(1)
		go func() {
			defer wg.Done()
			// A session's rows come one after another (the store reads
			// them in session order), so one session is folded at a time.
			endSession := func() {
				if w.sn != nil {
					w.decisions[w.cur] = w.dd.done()
					if !w.failedAt[w.cur] {
						w.snapshots[w.cur] = newExpectedSnapshot(w.sn, w.stopped, w.last[w.cur].Event.Seq)
					}
				}
				w.sn = nil
			}
			defer endSession()
			for rows := range w.in {
				for _, r := range rows {
					k := projector.SessionKey{TenantID: r.Event.TenantID, SessionID: r.Event.SessionID}
					if prev := w.last[k]; prev != nil && prev.Event.Seq == r.Event.Seq && projector.SameRow(prev, r) {
						continue // an identical copy
					}
					w.last[k] = r
					if k != w.cur || w.sn == nil {
						endSession()
						w.cur, w.sn, w.dd, w.stopped = k, session.New(k.TenantID, k.SessionID), newDecisionDigest(), false
					}
					if w.failedAt[k] {
						continue
					}
					switch col, ok := r.ColumnsMatch(); {
					case r.Invalid != nil:
						w.failedAt[k] = true
						w.extra = append(w.extra, chain.Failure{TenantID: k.TenantID, SessionID: k.SessionID, Seq: r.Event.Seq,
							Reason: chain.ReasonMalformed, Detail: r.Invalid.Error()})
						continue
					case !ok:
						w.failedAt[k] = true
						w.extra = append(w.extra, chain.Failure{TenantID: k.TenantID, SessionID: k.SessionID, Seq: r.Event.Seq,
							Reason: ReasonColumnMismatch, Detail: "column " + col + " disagrees with the record"})
						continue
					}
					if w.v.Add(r.Event) != nil {
						w.failedAt[k] = true
						continue
					}
					if w.stopped {
						continue
					}
					d, decided := projector.DecisionRowOf(w.sn, r.Event)
					if err := w.sn.Apply(r.Event); err != nil {
						// A sealed, chained record the current reducer
						// refuses was stored by an older pipeline (e.g.
						// identifiers over 256 bytes before they were
						// bounded): its chain is intact, but the rows
						// that pipeline derived from here on cannot be
						// recomputed.
						w.stopped, w.cutoff[k] = true, r.Event.Seq
						continue
					}
					if decided {
						w.dd.add(&d, projector.Date(d.TsUnixMs).Format(time.DateOnly), "")
					}
				}
			}
		}()
	}
	seed := maphash.MakeSeed()
	route := func(tenant, session string) int {
		var h maphash.Hash
		h.SetSeed(seed)
		h.WriteString(tenant)
		h.WriteByte('/')
		h.WriteString(session)
		return int(h.Sum64() % uint64(workers))
	}
	const chunk = 256
	pending := make([][]*projector.EventRow, workers)
	err := st.Events(ctx, f, func(r *projector.EventRow) error {
		i := route(r.Event.TenantID, r.Event.SessionID)
		pending[i] = append(pending[i], r)
		if len(pending[i]) == chunk {
			select {
			case ws[i].in <- pending[i]:
			case <-ctx.Done():
				return ctx.Err()
			}
			pending[i] = make([]*projector.EventRow, 0, chunk)
		}
		return nil
	})
	for i, w := range ws {
		if err == nil && len(pending[i]) > 0 {
			w.in <- pending[i]
		}
		close(w.in)
	}
	wg.Wait()
	if err != nil {
		return VerifyReport{}, err
	}
	// With --since, sessions are chosen by their recent events, so a
	// session whose recent tail was deleted would not be chosen at all:
	// every head of the scope is read, and those of sessions not scanned
	// are compared with the stored tail instead (sinceTails).
	hf := f
	hf.SinceUnixMs = 0
	heads, err := st.Heads(ctx, hf)
	if err != nil {
		return VerifyReport{}, err
	}
	byWorker := make([][]chain.Head, workers)
	var unscanned []chain.Head
	for _, h := range heads {
		i := route(h.TenantID, h.SessionID)
		if _, scanned := ws[i].last[projector.SessionKey{TenantID: h.TenantID, SessionID: h.SessionID}]; f.SinceUnixMs > 0 && !scanned {
			unscanned = append(unscanned, h)
			continue
		}
		byWorker[i] = append(byWorker[i], h)
	}
	var rep VerifyReport
	if len(unscanned) > 0 {
		fs, err := sinceTails(ctx, st, unscanned)
		if err != nil {
			return VerifyReport{}, err
		}
		rep.Failures = append(rep.Failures, fs...)
	}
	for i, w := range ws {
		// Sessions that failed a column check never reached the
		// verifier; keep CheckHeads from calling them missing.
		w.v.CheckHeads(filterHeads(byWorker[i], w.failedAt))
		headed := make(map[projector.SessionKey]bool, len(byWorker[i]))
		for _, h := range byWorker[i] {
			headed[projector.SessionKey{TenantID: h.TenantID, SessionID: h.SessionID}] = true
		}
		failed := make(map[projector.SessionKey]bool)
		for _, f := range w.v.Failures() {
			failed[projector.SessionKey{TenantID: f.TenantID, SessionID: f.SessionID}] = true
		}
		for k, r := range w.last {
			if !headed[k] && !failed[k] && !w.failedAt[k] {
				w.extra = append(w.extra, chain.Failure{TenantID: k.TenantID, SessionID: k.SessionID, Seq: r.Event.Seq, Reason: ReasonHeadMissing,
					Detail: "records stored without a chain head (verify a drained store: the projector writes heads after the records)"})
			}
		}
		rep.Failures = append(rep.Failures, w.extra...)
		rep.Failures = append(rep.Failures, w.v.Failures()...)
		rep.Events += w.v.Events()
		rep.Sessions += len(w.last)
		rep.Heads = append(rep.Heads, w.v.Heads()...)
	}
	// The derived tables are checked for the sessions whose chain
	// verified; a session reports its first failure only.
	failed := map[projector.SessionKey]bool{}
	for _, fl := range rep.Failures {
		failed[projector.SessionKey{TenantID: fl.TenantID, SessionID: fl.SessionID}] = true
	}
	if dr, ok := st.(projector.DecisionReader); ok {
		expected := func(k projector.SessionKey) (decisionDigest, uint64, bool) {
			w := ws[route(k.TenantID, k.SessionID)]
			_, scanned := w.last[k]
			return w.decisions[k], w.cutoff[k], scanned
		}
		fs, seen, err := checkDecisions(ctx, dr, f, expected, failed)
		if err != nil {
			return VerifyReport{}, err
		}
		// Sessions whose records decide something but that have no row.
		for _, w := range ws {
			for k, want := range w.decisions {
				if want.n > 0 && !seen[k] && !failed[k] {
					fs = append(fs, chain.Failure{TenantID: k.TenantID, SessionID: k.SessionID, Reason: ReasonDecisionsMismatch,
						Detail: fmt.Sprintf("%d decisions rows expected, none stored", want.n)})
				}
			}
		}
		// The digests say which sessions differ; a second read of those
		// (few) sessions says where.
		for i := range fs {
			k := projector.SessionKey{TenantID: fs[i].TenantID, SessionID: fs[i].SessionID}
			if _, _, scanned := expected(k); !scanned || i >= maxLocated {
				continue
			}
			seq, detail, err := locateDecisions(ctx, st, dr, k, ws[route(k.TenantID, k.SessionID)].cutoff[k])
			if err != nil {
				return VerifyReport{}, err
			}
			if detail != "" {
				fs[i].Seq, fs[i].Detail = seq, detail
			}
		}
		rep.Failures = append(rep.Failures, fs...)
		for _, fl := range rep.Failures {
			failed[projector.SessionKey{TenantID: fl.TenantID, SessionID: fl.SessionID}] = true
		}
	}
	if sr, ok := st.(projector.SnapshotReader); ok {
		expected := func(k projector.SessionKey) (expectedSnapshot, bool) {
			w := ws[route(k.TenantID, k.SessionID)]
			want, scanned := w.snapshots[k]
			return want, scanned
		}
		fs, seen, err := checkSnapshots(ctx, sr, f, expected, failed)
		if err != nil {
			return VerifyReport{}, err
		}
		rep.Failures = append(rep.Failures, fs...)
		// Sessions whose records are stored but whose row is not.
		for _, w := range ws {
			for k, want := range w.snapshots {
				if !seen[k] && !failed[k] {
					rep.Failures = append(rep.Failures, chain.Failure{TenantID: k.TenantID, SessionID: k.SessionID, Reason: ReasonSnapshotMismatch,
						Detail: fmt.Sprintf("no session_snapshots row; the verified records end at seq %d", want.row.LastSeq)})
				}
			}
		}
	}
	sort.SliceStable(rep.Failures, func(i, j int) bool {
		a, b := rep.Failures[i], rep.Failures[j]
		if a.TenantID != b.TenantID {
			return a.TenantID < b.TenantID
		}
		return a.SessionID < b.SessionID
	})
	rep.OK = len(rep.Failures) == 0
	return rep, nil
}

// decisionDigest sums a session's decisions rows in seq order: their count
// and a SHA-256 over their columns (DecisionRow.AppendDigest).
type decisionDigest struct {
	h    hash.Hash
	buf  []byte
	n    int
	sum  [sha256.Size]byte
	last []byte // the previous row's bytes, to pass over identical copies
}

func newDecisionDigest() decisionDigest { return decisionDigest{h: sha256.New()} }

// add folds one row in; an identical copy of the row before it (a
// ClickHouse redelivery not merged yet) counts once.
func (d *decisionDigest) add(r *projector.DecisionRow, eventDate, invalid string) {
	d.buf = r.AppendDigest(d.buf[:0], eventDate)
	if invalid != "" {
		d.buf = append(d.buf, "invalid:"...)
		d.buf = append(d.buf, invalid...)
	}
	if d.n > 0 && bytes.Equal(d.buf, d.last) {
		return
	}
	d.last = append(d.last[:0], d.buf...)
	d.h.Write(d.buf)
	d.n++
}

// done returns the digest with its sum taken and its buffers dropped.
func (d decisionDigest) done() decisionDigest {
	out := decisionDigest{n: d.n}
	if d.h != nil {
		d.h.Sum(out.sum[:0])
	}
	return out
}

// checkDecisions reads the decisions rows selected by f and reports each
// session whose rows are not the ones its verified records derive
// (expected; scanned is false for a session with no stored record), and
// returns the sessions that have rows. Sessions that already failed are
// not checked again.
func checkDecisions(ctx context.Context, dr projector.DecisionReader, f projector.Filter,
	expected func(projector.SessionKey) (decisionDigest, uint64, bool), failed map[projector.SessionKey]bool) ([]chain.Failure, map[projector.SessionKey]bool, error) {
	var out []chain.Failure
	seen := map[projector.SessionKey]bool{}
	var want decisionDigest
	var cutoff uint64
	var scanned bool
	compare := func(k projector.SessionKey, got decisionDigest) {
		seen[k] = true
		if failed[k] {
			return
		}
		switch {
		case !scanned:
			out = append(out, chain.Failure{TenantID: k.TenantID, SessionID: k.SessionID, Reason: ReasonDecisionsMismatch,
				Detail: fmt.Sprintf("%d decisions rows of a session with no stored record", got.n)})
		case want.n != got.n || want.sum != got.sum:
			out = append(out, chain.Failure{TenantID: k.TenantID, SessionID: k.SessionID, Reason: ReasonDecisionsMismatch,
				Detail: fmt.Sprintf("the decisions rows are not those of the verified records (%d expected, %d stored, or a column differs): "+
					"join decisions with audit_events on hash to find them", want.n, got.n)})
		}
	}
	var cur projector.SessionKey
	var dd decisionDigest
	started := false
	err := dr.Decisions(ctx, f, func(d *projector.StoredDecision) error {
		k := projector.SessionKey{TenantID: d.TenantID, SessionID: d.SessionID}
		if !started || k != cur {
			if started {
				compare(cur, dd.done())
			}
			cur, dd, started = k, newDecisionDigest(), true
			want, cutoff, scanned = expected(k)
		}
		if cutoff > 0 && d.Seq >= cutoff && d.Invalid == "" {
			return nil // derived by an older reducer (see VerifyStore)
		}
		dd.add(&d.DecisionRow, d.EventDate, d.Invalid)
		return nil
	})
	if err != nil {
		return nil, nil, err
	}
	if started {
		compare(cur, dd.done())
	}
	return out, seen, nil
}

// maxLocated bounds the DECISIONS_MISMATCH sessions verify reads again to
// name the first row that differs; the others keep the session's count.
const maxLocated = 1000

// locateDecisions reads session k's records and decisions rows again and
// names the first row in which they differ: its seq and what differs.
// Rows from cutoff on (a record the current reducer refuses, see
// VerifyStore) are not compared. An empty detail: no difference found
// (the store changed between the reads).
func locateDecisions(ctx context.Context, st ChainSource, dr projector.DecisionReader, k projector.SessionKey, cutoff uint64) (uint64, string, error) {
	f := projector.Filter{TenantID: k.TenantID, SessionID: k.SessionID}
	var derived []projector.DecisionRow
	sn := session.New(k.TenantID, k.SessionID)
	var last *projector.EventRow
	stopped := false
	err := st.Events(ctx, f, func(r *projector.EventRow) error {
		if last != nil && last.Event.Seq == r.Event.Seq && projector.SameRow(last, r) {
			return nil
		}
		last = r
		if stopped || (cutoff > 0 && r.Event.Seq >= cutoff) {
			stopped = true
			return nil
		}
		d, decided := projector.DecisionRowOf(sn, r.Event)
		// A record the reducer refuses ends the comparison, as in
		// VerifyStore (its cutoff).
		stopped = sn.Apply(r.Event) != nil
		if decided && !stopped {
			derived = append(derived, d)
		}
		return nil
	})
	if err != nil {
		return 0, "", err
	}
	var stored []projector.StoredDecision
	err = dr.Decisions(ctx, f, func(d *projector.StoredDecision) error {
		if cutoff > 0 && d.Seq >= cutoff && d.Invalid == "" {
			return nil
		}
		if n := len(stored); n > 0 && stored[n-1] == *d {
			return nil // an identical copy
		}
		stored = append(stored, *d)
		return nil
	})
	if err != nil {
		return 0, "", err
	}
	for i := 0; i < len(derived) || i < len(stored); i++ {
		switch {
		case i == len(stored):
			return derived[i].Seq, fmt.Sprintf("seq %d: no decisions row; the record decides %s %s", derived[i].Seq, derived[i].Outcome, derived[i].Reason), nil
		case i == len(derived):
			return stored[i].Seq, fmt.Sprintf("seq %d: a decisions row (%s %s) no verified record derives", stored[i].Seq, stored[i].Outcome, stored[i].Reason), nil
		case stored[i].Invalid != "":
			return stored[i].Seq, fmt.Sprintf("seq %d: decisions.%s is not of its type", stored[i].Seq, stored[i].Invalid), nil
		case stored[i].Seq != derived[i].Seq:
			s := min(stored[i].Seq, derived[i].Seq)
			if stored[i].Seq < derived[i].Seq {
				return s, fmt.Sprintf("seq %d: a decisions row (%s %s) no verified record derives", s, stored[i].Outcome, stored[i].Reason), nil
			}
			return s, fmt.Sprintf("seq %d: no decisions row; the record decides %s %s", s, derived[i].Outcome, derived[i].Reason), nil
		}
		if col, mine, theirs, same := derived[i].Diff(&stored[i].DecisionRow); !same {
			return derived[i].Seq, fmt.Sprintf("seq %d: column %s is %q, the record says %q", derived[i].Seq, col, theirs, mine), nil
		}
		if want := projector.Date(derived[i].TsUnixMs).Format(time.DateOnly); stored[i].EventDate != want {
			return derived[i].Seq, fmt.Sprintf("seq %d: column event_date is %q, the record says %q", derived[i].Seq, stored[i].EventDate, want), nil
		}
	}
	return 0, "", nil
}

// expectedSnapshot is the session_snapshots row a verified session's
// records fold into (projector.NewSnapshotRow), kept without its snapshot
// JSON: jsonSum is the JSON's SHA-256. A partial one is of a session the
// state could not fold to its end (a record today's reducer refuses,
// sealed by an older pipeline): only its tenant, session and last_seq
// are known.
type expectedSnapshot struct {
	row     projector.SnapshotRow
	jsonSum [sha256.Size]byte
	partial bool
}

// newExpectedSnapshot derives the row of sn, the state of a verified
// session whose last record is lastSeq; stopped says that sn was not
// folded to its end.
func newExpectedSnapshot(sn *session.Snapshot, stopped bool, lastSeq uint64) expectedSnapshot {
	if !stopped {
		if row, err := projector.NewSnapshotRow(sn); err == nil {
			e := expectedSnapshot{row: row, jsonSum: sha256.Sum256([]byte(row.JSON))}
			e.row.JSON = ""
			return e
		}
		// A state with no canonical form: the projector could not
		// have written it either (it retries such a batch), so it
		// cannot be recomputed; as for a record the state refuses.
	}
	return expectedSnapshot{row: projector.SnapshotRow{TenantID: sn.TenantID, SessionID: sn.SessionID, LastSeq: lastSeq}, partial: true}
}

// checkSnapshots reads the session_snapshots rows selected by f and
// reports each session whose row is not the one its verified records fold
// into (expected; false for a session with no stored record), and returns
// the sessions that have a row. Sessions that already failed are not
// checked again.
func checkSnapshots(ctx context.Context, sr projector.SnapshotReader, f projector.Filter,
	expected func(projector.SessionKey) (expectedSnapshot, bool), failed map[projector.SessionKey]bool) ([]chain.Failure, map[projector.SessionKey]bool, error) {
	var out []chain.Failure
	seen := map[projector.SessionKey]bool{}
	reported := map[projector.SessionKey]bool{}
	err := sr.Snapshots(ctx, f, func(got *projector.StoredSnapshot) error {
		k := projector.SessionKey{TenantID: got.TenantID, SessionID: got.SessionID}
		seen[k] = true
		if failed[k] || reported[k] {
			return nil
		}
		var detail string
		want, scanned := expected(k)
		switch {
		case !scanned:
			detail = fmt.Sprintf("a session_snapshots row (last_seq %d) of a session with no stored record", got.LastSeq)
		case got.Invalid != "":
			detail = "session_snapshots " + got.Invalid
		case want.partial:
			// Only last_seq can be derived (see expectedSnapshot).
			if got.LastSeq != want.row.LastSeq {
				detail = fmt.Sprintf("the session_snapshots row has last_seq %d; the verified records end at seq %d", got.LastSeq, want.row.LastSeq)
			}
		default:
			if col, w, g, ok := want.row.Diff(&got.SnapshotRow); !ok {
				detail = fmt.Sprintf("session_snapshots column %s is %q; the verified records fold into %q", col, g, w)
			} else if sha256.Sum256([]byte(got.JSON)) != want.jsonSum {
				detail = "session_snapshots column snapshot is not the state the verified records fold into"
			}
		}
		if detail != "" {
			reported[k] = true
			out = append(out, chain.Failure{TenantID: k.TenantID, SessionID: k.SessionID, Reason: ReasonSnapshotMismatch, Detail: detail})
		}
		return nil
	})
	if err != nil {
		return nil, nil, err
	}
	return out, seen, nil
}

// isCanonicalRecord reports an error unless line is exactly the canonical
// form of the sealed record ev was decoded from. The hash covers that
// form; a line that decodes to the same record but is written otherwise
// (a member dropped because it is empty, a null added) is not what was
// hashed, and a verifier working from docs/chain.md alone would reject it.
func isCanonicalRecord(ev *envelope.Event, line []byte) error {
	want, err := ev.AppendCanonical(nil, true)
	if err != nil {
		return err
	}
	if !bytes.Equal(bytes.TrimRight(line, " \t\r"), want) {
		return errors.New("not written as the canonical form of its sealed record (RFC 8785), which is what was hashed")
	}
	return nil
}

// tailReader is implemented by stores that can list each session's last
// stored event (both audit stores do).
type tailReader interface {
	LastEvents(ctx context.Context, f projector.Filter) ([]chain.Head, error)
}

// sinceTails compares the chain heads of sessions that a --since scan did
// not cover (no event in the window) with their last stored events: a
// session whose events were deleted is MISSING_SESSION, one whose tail was
// deleted TRUNCATED, any other difference HEAD_MISMATCH.
func sinceTails(ctx context.Context, st ChainSource, heads []chain.Head) ([]chain.Failure, error) {
	tr, ok := st.(tailReader)
	if !ok {
		return nil, nil
	}
	var out []chain.Failure
	const chunk = 500
	for i := 0; i < len(heads); i += chunk {
		part := heads[i:min(i+chunk, len(heads))]
		keys := make([]projector.SessionKey, len(part))
		for j, h := range part {
			keys[j] = projector.SessionKey{TenantID: h.TenantID, SessionID: h.SessionID}
		}
		tails, err := tr.LastEvents(ctx, projector.Filter{Sessions: keys})
		if err != nil {
			return nil, err
		}
		last := make(map[projector.SessionKey]chain.Head, len(tails))
		for _, t := range tails {
			last[projector.SessionKey{TenantID: t.TenantID, SessionID: t.SessionID}] = t
		}
		for _, h := range part {
			var f *chain.Failure
			if t, ok := last[projector.SessionKey{TenantID: h.TenantID, SessionID: h.SessionID}]; ok {
				f = chain.CompareHead(&t, h)
			} else {
				f = chain.CompareHead(nil, h)
			}
			if f != nil {
				out = append(out, *f)
			}
		}
	}
	return out, nil
}

// filterHeads drops the heads of sessions that already failed.
func filterHeads(heads []chain.Head, failed map[projector.SessionKey]bool) []chain.Head {
	out := heads[:0]
	for _, h := range heads {
		if !failed[projector.SessionKey{TenantID: h.TenantID, SessionID: h.SessionID}] {
			out = append(out, h)
		}
	}
	return out
}

func readHeads(path string) ([]chain.Head, error) {
	f, err := os.Open(path)
	if err != nil {
		return nil, err
	}
	defer f.Close()
	var heads []chain.Head
	err = eachLine(f, func(n int, line []byte) error {
		var h chain.Head
		if err := json.Unmarshal(line, &h); err != nil {
			return fmt.Errorf("%s line %d: %w", path, n, err)
		}
		heads = append(heads, h)
		return nil
	})
	return heads, err
}
