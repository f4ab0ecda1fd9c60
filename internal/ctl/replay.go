package ctl

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"slices"
	"sort"
	"strings"
	"sync"
	"time"

	"aegis.dev/aegis/decider/policy"
	"aegis.dev/aegis/internal/pipeline"
	"aegis.dev/aegis/internal/stream"
	"aegis.dev/aegis/projector"
	"aegis.dev/aegis/projector/stores"
	"aegis.dev/aegis/replayer"
	"aegis.dev/aegis/schemas/chain"
	"aegis.dev/aegis/schemas/envelope"
	"aegis.dev/aegis/schemas/manifest"
)

// replaySessionsPerScan bounds the sessions named in one store scan when a
// selection resolves to explicit sessions (--until, --where, several
// --session ids), keeping each query's parameter list small.
const replaySessionsPerScan = 2000

// replayOptions are the parsed flags of `aegisctl replay`.
type replayOptions struct {
	mode                   replayer.Mode
	store, brokers, prefix string
	kafka                  *stream.SecurityConfig // with brokers
	tenant, where          string
	sessions               []string
	since, until           int64
	policyDir, manifestDir string
	archive, report        string
	asJSON                 bool
	workers                int
}

func runReplay(ctx context.Context, env IO, args []string) int {
	fs := newFlags(env, "replay", "(--store URL | --brokers HOST:PORT) --mode verify|exact|what-if [selection] [--policy DIR] [--manifests DIR] [--policy-archive DIR] [--report FILE]")
	var o replayOptions
	mode := fs.String("mode", "", "verify (recompute the chain), exact (re-decide under the recorded revisions; must be identical) or what-if (re-decide under --policy/--manifests)")
	fs.StringVar(&o.store, "store", "", "audit store: sqlite:PATH or clickhouse://HOST:PORT/DB")
	fs.StringVar(&o.brokers, "brokers", "", "read the sealed topic instead of a store: comma-separated Kafka seed brokers")
	fs.StringVar(&o.prefix, "topic-prefix", pipeline.DefaultTopicPrefix, "with --brokers: prefix of the pipeline's topic names")
	fs.StringVar(&o.tenant, "tenant", "", "only this tenant")
	sessions := fs.String("session", "", "only these sessions (comma-separated ids)")
	since := fs.String("since", "", "only sessions with an event at or after this time (RFC 3339, Unix ms, or a duration before now)")
	until := fs.String("until", "", "only sessions with an event before this time (same forms as --since)")
	fs.StringVar(&o.where, "where", "", "with --store: only sessions with an event matching this SQL predicate on audit_events (run read-only)")
	fs.StringVar(&o.policyDir, "policy", "", "what-if: the candidate policy bundle directory")
	fs.StringVar(&o.manifestDir, "manifests", "", "what-if: candidate manifests, DIR/TENANT/NAME.json (default: the manifests the decisions recorded)")
	fs.StringVar(&o.archive, "policy-archive", "", "archive of recorded bundles and manifests by digest (default for sqlite:PATH: <dir of PATH>/policy-archive)")
	fs.StringVar(&o.report, "report", "", "write the JSON report (what-if: the DiffReport) to this file")
	fs.BoolVar(&o.asJSON, "json", false, "print the JSON report on stdout instead of the summary")
	fs.IntVar(&o.workers, "workers", 0, "sessions replayed at once (default: one per CPU)")
	o.kafka = kafkaSecurity(fs)
	if code, ok := parse(fs, args); !ok {
		return code
	}
	o.mode = replayer.Mode(*mode)
	if fs.NArg() > 0 || (o.store == "") == (o.brokers == "") {
		fs.Usage()
		return ExitUsage
	}
	switch o.mode {
	case replayer.ModeVerify, replayer.ModeExact:
		if o.policyDir != "" || o.manifestDir != "" {
			return fail(env, ExitUsage, "replay: --policy and --manifests apply to --mode what-if")
		}
	case replayer.ModeWhatIf:
		if o.policyDir == "" && o.manifestDir == "" {
			return fail(env, ExitUsage, "replay: --mode what-if needs --policy DIR and/or --manifests DIR")
		}
	default:
		return fail(env, ExitUsage, "replay: --mode must be verify, exact or what-if")
	}
	if o.brokers != "" && o.where != "" {
		return fail(env, ExitUsage, "replay: --where applies to --store")
	}
	if strings.Contains(o.where, ";") {
		return fail(env, ExitUsage, "replay: --where must be one predicate (no ';')")
	}
	now := time.Now()
	for _, t := range []struct {
		s   string
		dst *int64
	}{{*since, &o.since}, {*until, &o.until}} {
		if t.s == "" {
			continue
		}
		ms, err := parseSince(t.s, now)
		if err != nil {
			return fail(env, ExitUsage, "replay: %v", err)
		}
		*t.dst = ms
	}
	if *sessions != "" {
		o.sessions = strings.Split(*sessions, ",")
	}
	if o.archive == "" && o.store != "" {
		if k, err := stores.Parse(o.store); err == nil && k == stores.SQLite {
			o.archive = filepath.Join(filepath.Dir(strings.TrimPrefix(o.store, "sqlite:")), "policy-archive")
		}
	}
	return replay(ctx, env, o)
}

func replay(ctx context.Context, env IO, o replayOptions) int {
	var (
		st      stores.Store
		filters []projector.Filter
		src     replayer.Source
		bad     badRecords // undecodable records of the sealed topic
		err     error
	)
	if o.store != "" {
		if st, err = stores.OpenExisting(ctx, o.store); err != nil {
			return fail(env, ExitRuntime, "replay: %v", err)
		}
		defer func() { _ = st.Close() }()
		if filters, err = replayFilters(ctx, st, o); err != nil {
			// A predicate of the user's the store refused is a finding
			// about the selection (exit 1); without one, the store failed.
			code := ExitRuntime
			if o.where != "" {
				code = ExitFailed
			}
			return fail(env, code, "replay: selection: %v", err)
		}
		if len(filters) == 0 {
			// A selection that matches no session replays none (StoreSource
			// without filters would read every session).
			src = replayer.EventsSource(nil)
		} else {
			src = replayer.StoreSource(st, filters...)
		}
	} else {
		cluster, code := clusterOption(env, "replay", o.kafka)
		if cluster == nil {
			return code
		}
		src = kafkaSource(strings.Split(o.brokers, ","), []stream.Option{cluster}, pipeline.NewTopics(o.prefix).Sealed, o, &bad)
	}
	if o.mode == replayer.ModeVerify {
		return replayVerify(ctx, env, o, st, filters, src, &bad)
	}
	cfg := replayer.Config{Mode: o.mode, Workers: o.workers, Progress: progress(env)}
	if o.archive != "" {
		cfg.Archive = &replayer.Archive{Dir: o.archive}
	}
	if o.policyDir != "" {
		if cfg.Candidate, err = policy.LoadDir(o.policyDir); err != nil {
			return fail(env, ExitRuntime, "replay: %v", err)
		}
	}
	if o.manifestDir != "" {
		if cfg.Manifests, err = manifest.LoadDir(o.manifestDir); err != nil {
			return fail(env, ExitRuntime, "replay: %v", err)
		}
	}
	var snapshots map[projector.SessionKey]storedSnapshot
	var replayed sync.Map // exact mode: the sessions the source yielded
	if o.mode == replayer.ModeExact && st != nil {
		if snapshots, err = snapshotHashes(ctx, st, filters); err != nil {
			return fail(env, ExitRuntime, "replay: %v", err)
		}
		cfg.SnapshotHash = func(t, s string) (uint64, string, bool) {
			h, ok := snapshots[projector.SessionKey{TenantID: t, SessionID: s}]
			return h.seq, h.hash, ok
		}
		inner := src
		src = func(ctx context.Context, fn func(*replayer.Session) error) error {
			return inner(ctx, func(s *replayer.Session) error {
				replayed.Store(projector.SessionKey{TenantID: s.TenantID, SessionID: s.SessionID}, true)
				return fn(s)
			})
		}
	}
	rep, err := replayer.Run(ctx, cfg, src)
	clearProgress(env)
	if err != nil {
		// A missing revision, a damaged archive, a bad bundle or a store
		// failure: the replay could not be carried out.
		return fail(env, ExitRuntime, "replay: %v", err)
	}
	for _, b := range bad.all() {
		rep.Differences = append(rep.Differences, replayer.Difference{TenantID: b.tenant, SessionID: b.session, Field: "event",
			Recorded: "an undecodable record at " + b.where + ": " + b.err.Error()})
		rep.Identical = false
	}
	if o.mode == replayer.ModeExact && st != nil {
		// A stored snapshot of a selected session that has no stored
		// event left: its events were deleted.
		for k, h := range snapshots {
			if _, ok := replayed.Load(k); !ok {
				rep.Differences = append(rep.Differences, replayer.Difference{TenantID: k.TenantID, SessionID: k.SessionID, Seq: h.seq,
					Field: "snapshot_hash", Recorded: fmt.Sprintf("stored after seq %d", h.seq), Replayed: "no stored events"})
				rep.Identical = false
			}
		}
	}
	// The findings added here (undecodable records of the sealed topic,
	// snapshots without events) join the replay's own in the report's
	// order: by tenant, session and seq.
	sort.SliceStable(rep.Differences, func(i, j int) bool {
		a, b := rep.Differences[i], rep.Differences[j]
		if a.TenantID != b.TenantID {
			return a.TenantID < b.TenantID
		}
		if a.SessionID != b.SessionID {
			return a.SessionID < b.SessionID
		}
		return a.Seq < b.Seq
	})
	if o.report != "" {
		if err := writeReportFile(o.report, rep); err != nil {
			return fail(env, ExitRuntime, "replay: %v", err)
		}
	}
	if o.asJSON {
		if code := writeJSON(env, rep); code != ExitOK {
			return code
		}
	} else {
		printReplay(env, rep)
	}
	// What-if succeeds with changes (they are its result); only rows that
	// could not be replayed fail it. Exact fails on any difference.
	if len(rep.Differences) > 0 || (o.mode == replayer.ModeExact && !rep.Identical) {
		return ExitFailed
	}
	return ExitOK
}

// replayVerify is --mode verify: the store through VerifyStore (the code of
// `aegisctl verify --store`), the sealed topic through chain.Verifier.
func replayVerify(ctx context.Context, env IO, o replayOptions, st stores.Store, filters []projector.Filter, src replayer.Source, bad *badRecords) int {
	var total VerifyReport
	if st != nil {
		for _, f := range filters {
			rep, err := VerifyStore(ctx, st, f, o.workers)
			if err != nil {
				return fail(env, ExitRuntime, "replay: %v", err)
			}
			total.Events += rep.Events
			total.Sessions += rep.Sessions
			total.Failures = append(total.Failures, rep.Failures...)
		}
	} else {
		v := chain.NewVerifier()
		err := src(ctx, func(s *replayer.Session) error {
			for _, ev := range s.Events {
				_ = v.Add(ev) // failures are collected by the verifier
			}
			return nil
		})
		if err != nil {
			return fail(env, ExitRuntime, "replay: %v", err)
		}
		total = VerifyReport{Events: v.Events(), Sessions: len(v.Heads()), Failures: v.Failures()}
		for _, b := range bad.all() {
			total.Failures = append(total.Failures, chain.Failure{TenantID: b.tenant, SessionID: b.session, Seq: b.seq, Reason: chain.ReasonMalformed,
				Detail: b.where + ": " + b.err.Error()})
		}
		total.Failures = firstPerSession(total.Failures)
	}
	total.OK = len(total.Failures) == 0
	if total.Failures == nil {
		total.Failures = []chain.Failure{} // [] in the report, as printVerify prints it
	}
	if o.report != "" {
		if err := writeReportFile(o.report, total); err != nil {
			return fail(env, ExitRuntime, "replay: %v", err)
		}
	}
	return printVerify(env, total, o.asJSON)
}

// replayFilters turns the selection flags into store scans. Tenant, one
// session and --since map onto projector.Filter directly; --until, --where
// and several sessions are resolved to explicit session keys by one
// read-only query (the store's Querier runs in a read-only transaction on
// SQLite and with readonly=1 on ClickHouse), scanned in chunks; none when
// no session matches.
func replayFilters(ctx context.Context, st stores.Store, o replayOptions) ([]projector.Filter, error) {
	base := projector.Filter{TenantID: o.tenant, SinceUnixMs: o.since}
	if len(o.sessions) == 1 {
		base.SessionID = o.sessions[0]
	}
	if o.until == 0 && o.where == "" && len(o.sessions) <= 1 {
		return []projector.Filter{base}, nil
	}
	kind, _ := stores.Parse(o.store)
	var conds []string
	if o.tenant != "" {
		conds = append(conds, "tenant_id = "+sqlString(kind, o.tenant))
	}
	if len(o.sessions) > 0 {
		quoted := make([]string, len(o.sessions))
		for i, s := range o.sessions {
			quoted[i] = sqlString(kind, s)
		}
		conds = append(conds, "session_id IN ("+strings.Join(quoted, ", ")+")")
	}
	if o.since > 0 {
		conds = append(conds, fmt.Sprintf("ts_unix_ms >= %d", o.since))
	}
	if o.until > 0 {
		conds = append(conds, fmt.Sprintf("ts_unix_ms < %d", o.until))
	}
	if o.where != "" {
		conds = append(conds, "("+o.where+")")
	}
	q := "SELECT DISTINCT tenant_id, session_id FROM audit_events WHERE " + strings.Join(conds, " AND ") + " ORDER BY tenant_id, session_id"
	_, rows, err := st.Query(ctx, q)
	if err != nil {
		return nil, err
	}
	if len(o.sessions) > 0 && o.since == 0 && o.until == 0 && o.where == "" {
		// Sessions named explicitly are also those with a chain head
		// and no stored event left: verify must report them missing,
		// not skip them. (conds then name tenant and sessions only.)
		_, heads, err := st.Query(ctx, "SELECT DISTINCT tenant_id, session_id FROM chain_heads WHERE "+strings.Join(conds, " AND "))
		if err != nil {
			return nil, err
		}
		key := func(r []any) string { return fmt.Sprint(r[0]) + "\x00" + fmt.Sprint(r[1]) }
		seen := make(map[string]bool, len(rows))
		for _, r := range rows {
			seen[key(r)] = true
		}
		for _, r := range heads {
			if !seen[key(r)] {
				seen[key(r)] = true
				rows = append(rows, r)
			}
		}
		sort.Slice(rows, func(i, j int) bool { return key(rows[i]) < key(rows[j]) })
	}
	var out []projector.Filter
	for i := 0; i < len(rows); i += replaySessionsPerScan {
		chunk := rows[i:min(i+replaySessionsPerScan, len(rows))]
		f := projector.Filter{Sessions: make([]projector.SessionKey, len(chunk))}
		for j, r := range chunk {
			f.Sessions[j] = projector.SessionKey{TenantID: fmt.Sprint(r[0]), SessionID: fmt.Sprint(r[1])}
		}
		out = append(out, f)
	}
	return out, nil
}

// sqlString quotes s as an SQL string literal of the store's dialect:
// quotes doubled; on ClickHouse backslashes escaped too (SQLite has no
// backslash escapes).
func sqlString(kind stores.Kind, s string) string {
	if kind == stores.ClickHouse {
		s = strings.ReplaceAll(s, `\`, `\\`)
	}
	return "'" + strings.ReplaceAll(s, "'", "''") + "'"
}

type storedSnapshot struct {
	seq  uint64
	hash string
}

// snapshotHashes reads the stored snapshot hash of every selected session:
// one string per session, for the final-snapshot comparison. It reads the
// selection's rows only, so its memory follows the selection, not the
// store. It uses the reader verify uses (projector.SnapshotReader): each
// session's latest version, and every unmerged ClickHouse copy of it, so
// that copies which disagree (a forged copy FINAL might pick) or a column
// SQLite holds in another type never pass as the recorded hash.
func snapshotHashes(ctx context.Context, st stores.Store, filters []projector.Filter) (map[projector.SessionKey]storedSnapshot, error) {
	sr, ok := st.(projector.SnapshotReader)
	if !ok {
		return nil, errors.New("the store cannot read session_snapshots")
	}
	out := map[projector.SessionKey]storedSnapshot{}
	for _, f := range filters {
		err := sr.Snapshots(ctx, f, func(r *projector.StoredSnapshot) error {
			k := projector.SessionKey{TenantID: r.TenantID, SessionID: r.SessionID}
			h := r.Hash
			if r.Invalid != "" {
				h = "(session_snapshots." + r.Invalid + " is not of its type)"
			}
			if prev, seen := out[k]; seen && prev.hash != h {
				h = "(copies of the row disagree: " + prev.hash + ", " + h + ")"
			}
			out[k] = storedSnapshot{r.LastSeq, h}
			return nil
		})
		if err != nil {
			return nil, err
		}
	}
	return out, nil
}

// badRecord is a sealed-topic record that does not decode: a result of
// the job (tampering, or a foreign writer), not a failure to run it.
type badRecord struct {
	tenant, session string // from the record key, when it has that form
	seq             uint64 // of a record that decodes; 0 otherwise
	where           string
	err             error
}

// badRecords collects them (kafkaSource calls add from one goroutine).
type badRecords struct {
	mu   sync.Mutex
	list []badRecord
}

func (b *badRecords) add(r badRecord) {
	b.mu.Lock()
	defer b.mu.Unlock()
	b.list = append(b.list, r)
}

func (b *badRecords) all() []badRecord {
	b.mu.Lock()
	defer b.mu.Unlock()
	return slices.Clone(b.list)
}

// kafkaSource reads the sealed topic partition by partition up to the end
// offsets seen at start. A session lives on one partition, and its events
// are interleaved with other sessions' there, so each partition is read
// twice: the first pass notes the offset of each selected session's last
// record (one small entry per session), the second assembles the sessions
// and hands each one to fn as soon as its last record is read. Memory holds
// the sessions whose records are interleaved at a point of the partition
// (the sessions open at once), not the partition. Records that do not
// decode, or are not written as their canonical form, go to bad (in the
// second pass): findings of the job, not failures to run it.
func kafkaSource(brokers []string, opts []stream.Option, topic string, o replayOptions, bad *badRecords) replayer.Source {
	return func(ctx context.Context, fn func(*replayer.Session) error) error {
		ends, err := stream.EndOffsets(ctx, brokers, topic, opts...)
		if err != nil {
			return err
		}
		starts, err := stream.StartOffsets(ctx, brokers, topic, opts...)
		if err != nil {
			return err
		}
		dec := envelope.Decoder{Sealed: true, MaxBytes: maxLine}
		want := map[string]bool{}
		for _, s := range o.sessions {
			want[s] = true
		}
		selected := func(tenant, session string) bool {
			return (o.tenant == "" || tenant == o.tenant) && (len(want) == 0 || want[session])
		}
		type last struct {
			offset  int64
			inRange bool
		}
		for p := int32(0); p < int32(len(ends)); p++ {
			if ends[p] <= 0 || starts[p] >= ends[p] {
				continue // empty, or emptied by retention
			}
			lasts := map[[2]string]last{}
			err := readPartition(ctx, brokers, topic, p, starts[p], ends[p], opts, func(r *stream.Record) error {
				ev, err := dec.Decode(r.Value)
				if err != nil {
					return nil //nolint:nilerr // reported by the second pass
				}
				if !selected(ev.TenantID, ev.SessionID) {
					return nil
				}
				k := [2]string{ev.TenantID, ev.SessionID}
				l := lasts[k]
				l.offset = r.Offset
				l.inRange = l.inRange || ((o.since == 0 || ev.TsUnixMs >= o.since) && (o.until == 0 || ev.TsUnixMs < o.until))
				lasts[k] = l
				return nil
			})
			if err != nil {
				return err
			}
			open := map[[2]string]*replayer.Session{}
			err = readPartition(ctx, brokers, topic, p, starts[p], ends[p], opts, func(r *stream.Record) error {
				ev, err := dec.Decode(r.Value)
				if err != nil {
					tenant, session, _ := strings.Cut(string(r.Key), "/")
					if selected(tenant, session) {
						bad.add(badRecord{tenant: tenant, session: session, where: fmt.Sprintf("%s partition %d offset %d", topic, p, r.Offset), err: err})
					}
					return nil
				}
				k := [2]string{ev.TenantID, ev.SessionID}
				l, ok := lasts[k]
				if !ok {
					return nil
				}
				if err := isCanonicalRecord(ev, r.Value); err != nil {
					bad.add(badRecord{tenant: ev.TenantID, session: ev.SessionID, seq: ev.Seq, where: fmt.Sprintf("%s partition %d offset %d (seq %d)", topic, p, r.Offset, ev.Seq), err: err})
				}
				if !l.inRange {
					return nil
				}
				s := open[k]
				if s == nil {
					s = &replayer.Session{TenantID: ev.TenantID, SessionID: ev.SessionID}
					open[k] = s
				}
				s.Events = append(s.Events, ev)
				if r.Offset != l.offset {
					return nil
				}
				delete(open, k)
				return fn(s)
			})
			if err != nil {
				return err
			}
			if len(open) > 0 {
				// The partition changed between the passes: offsets below
				// the end seen at start are immutable in a log that is only
				// appended to, so this is a topic rewritten under the job.
				return fmt.Errorf("%s partition %d changed while it was read (%d sessions without their last record)", topic, p, len(open))
			}
		}
		return nil
	}
}

// progress returns a progress callback that rewrites one line on stderr,
// at most every 200ms, when stderr is a terminal; nil otherwise.
func progress(env IO) func(sessions, events int64) {
	f, ok := env.Stderr.(*os.File)
	if !ok {
		return nil
	}
	if fi, err := f.Stat(); err != nil || fi.Mode()&os.ModeCharDevice == 0 {
		return nil
	}
	var mu sync.Mutex
	start := time.Now()
	var last time.Time
	return func(sessions, events int64) {
		mu.Lock()
		defer mu.Unlock()
		if now := time.Now(); now.Sub(last) >= 200*time.Millisecond {
			last = now
			rate := float64(events) / now.Sub(start).Seconds()
			fmt.Fprintf(f, "\rreplay: %d sessions, %d events (%.0f events/s)", sessions, events, rate)
		}
	}
}

func clearProgress(env IO) {
	if f, ok := env.Stderr.(*os.File); ok {
		if fi, err := f.Stat(); err == nil && fi.Mode()&os.ModeCharDevice != 0 {
			fmt.Fprint(f, "\r\033[K")
		}
	}
}

func writeReportFile(path string, v any) error {
	b, err := json.MarshalIndent(v, "", "  ")
	if err != nil {
		return err
	}
	return os.WriteFile(path, append(b, '\n'), 0o644)
}

// printReplay prints the summary: totals, then each difference (exact) or
// the changed decisions by reason, tool and tenant (what-if).
func printReplay(env IO, rep *replayer.Report) {
	w := env.Stdout
	fmt.Fprintf(w, "%s replay: %d sessions, %d events, %d decisions in %.2fs\n", rep.Mode, rep.Sessions, rep.Events, rep.Decisions, rep.Seconds)
	if rep.Mode == replayer.ModeExact {
		if rep.Identical {
			fmt.Fprintln(w, "identical: every decision and snapshot hash reproduced")
			return
		}
		for _, d := range rep.Differences {
			fmt.Fprintf(env.Stderr, "DIFF %s/%s seq %d %s: recorded %q, replayed %q\n", d.TenantID, d.SessionID, d.Seq, d.Field, d.Recorded, d.Replayed)
		}
		fmt.Fprintf(env.Stderr, "exact replay failed: %d difference(s)\n", len(rep.Differences))
		return
	}
	fmt.Fprintf(w, "%d decision(s) changed\n", len(rep.Changes))
	for _, d := range rep.Differences {
		fmt.Fprintf(env.Stderr, "BAD %s/%s seq %d %s: %s\n", d.TenantID, d.SessionID, d.Seq, d.Field, d.Recorded)
	}
	for _, t := range []struct {
		title string
		m     map[string]int64
	}{{"before->after", rep.Counts.ByReason}, {"tool", rep.Counts.ByTool}, {"tenant", rep.Counts.ByTenant}} {
		if len(t.m) == 0 {
			continue
		}
		keys := make([]string, 0, len(t.m))
		for k := range t.m {
			keys = append(keys, k)
		}
		sort.Slice(keys, func(i, j int) bool {
			return t.m[keys[i]] > t.m[keys[j]] || (t.m[keys[i]] == t.m[keys[j]] && keys[i] < keys[j])
		})
		fmt.Fprintf(w, "\n%-48s %10s\n", strings.ToUpper(t.title), "CHANGED")
		for _, k := range keys {
			fmt.Fprintf(w, "%-48s %10d\n", k, t.m[k])
		}
	}
}
