package replayer_test

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"aegis.dev/aegis/decider"
	"aegis.dev/aegis/decider/policy"
	"aegis.dev/aegis/decider/session"
	"aegis.dev/aegis/replayer"
	"aegis.dev/aegis/schemas/envelope"
	"aegis.dev/aegis/schemas/manifest"
)

func registry(tb testing.TB) *manifest.Registry {
	tb.Helper()
	reg, err := manifest.LoadDir("testdata/manifests")
	if err != nil {
		tb.Fatal(err)
	}
	return reg
}

// archive returns an archive holding the default bundle and the test
// registry, as aegisd writes it at start.
func archive(tb testing.TB) *replayer.Archive {
	tb.Helper()
	a := &replayer.Archive{Dir: tb.TempDir()}
	if err := a.PutBundle(policy.Default()); err != nil {
		tb.Fatal(err)
	}
	if err := a.PutRegistry(registry(tb)); err != nil {
		tb.Fatal(err)
	}
	return a
}

// record decides n sessions with the default bundle, as the decider stage
// does, and returns them with their decisions.
func record(tb testing.TB, n int) []*replayer.Session {
	tb.Helper()
	pe, err := policy.New(policy.Default())
	if err != nil {
		tb.Fatal(err)
	}
	eng := decider.NewEngine(pe, registry(tb))
	var out []*replayer.Session
	for i := range n {
		sid := fmt.Sprintf("s%04d", i)
		s := &replayer.Session{TenantID: "acme", SessionID: sid}
		snap := session.New("acme", sid)
		payloads := []struct {
			typ     envelope.Type
			payload string
		}{
			{envelope.ModelCallStarted, `{"model":"m"}`},
			{envelope.ToolCallProposed, fmt.Sprintf(`{"tool_name":"search","call_id":"c2","args":{"q":"find-%s"}}`, sid)},
			{envelope.ToolCallProposed, `{"tool_name":"send_email","call_id":"c3","args":{"to":"a@example.com"}}`},
			{envelope.ToolResult, `{"tool_name":"search","call_id":"c2"}`},
			{envelope.ToolCallProposed, `{"tool_name":"web_fetch","call_id":"c4","args":{"url":"https://api.example.com/v1"}}`},
			{envelope.ToolCallProposed, `{"tool_name":"exec","call_id":"c5","args":{"bin":"rm"}}`},
			{envelope.Termination, `{}`},
		}
		for j, p := range payloads {
			ev, err := envelope.Decode(fmt.Appendf(nil, `{"tenant_id":"acme","session_id":%q,"seq":%d,"ts_unix_ms":%d,"event_type":%q,"payload":%s}`,
				sid, j+1, 1767225600000+int64(i*100+j), p.typ, p.payload))
			if err != nil {
				tb.Fatal(err)
			}
			if err := eng.Step(context.Background(), snap, ev); err != nil {
				tb.Fatal(err)
			}
			s.Events = append(s.Events, ev)
		}
		out = append(out, s)
	}
	return out
}

func TestArchive(t *testing.T) {
	a := archive(t)
	rev := policy.Default().Revision
	b, err := a.Bundle(rev)
	if err != nil || b.Revision != rev {
		t.Fatalf("Bundle(%s) = %v, %v", rev, b, err)
	}
	m := registry(t).Manifests("acme")[0]
	got, err := a.Manifest(m.Digest())
	if err != nil || got.Digest() != m.Digest() {
		t.Fatalf("Manifest(%s) = %v, %v", m.Digest(), got, err)
	}
	if err := a.PutBundle(policy.Default()); err != nil {
		t.Fatalf("second PutBundle: %v", err)
	}
	if err := a.PutManifest(m); err != nil {
		t.Fatalf("second PutManifest: %v", err)
	}

	missing := "sha256:" + fmt.Sprintf("%064x", 7)
	for _, c := range []struct {
		name string
		load func() error
		want error
	}{
		{"unknown revision", func() error { _, err := a.Bundle(missing); return err }, replayer.ErrMissingRevision},
		{"unknown manifest", func() error { _, err := a.Manifest(missing); return err }, replayer.ErrMissingRevision},
		{"revision naming a path", func() error { _, err := a.Bundle("sha256:../../etc"); return err }, replayer.ErrMissingRevision},
		{"empty manifest digest", func() error { _, err := a.Manifest(""); return err }, replayer.ErrMissingRevision},
	} {
		t.Run(c.name, func(t *testing.T) {
			if err := c.load(); !errors.Is(err, c.want) {
				t.Fatalf("got %v, want %v", err, c.want)
			}
		})
	}

	t.Run("bundle whose revision is not its files'", func(t *testing.T) {
		a := &replayer.Archive{Dir: t.TempDir()}
		b := policy.Default()
		b.Files["decide.rego"] += "\n# edited\n"
		if err := a.PutBundle(b); !errors.Is(err, replayer.ErrArchive) {
			t.Fatalf("PutBundle: %v, want ErrArchive", err)
		}
		if _, err := a.Bundle(rev); !errors.Is(err, replayer.ErrMissingRevision) {
			t.Fatalf("Bundle after a refused put: %v, want ErrMissingRevision", err)
		}
	})
	t.Run("edited bundle", func(t *testing.T) {
		a := archive(t)
		dir := filepath.Join(a.Dir, "policies", rev[len("sha256:"):])
		if err := os.WriteFile(filepath.Join(dir, "extra.rego"), []byte("package aegis.decide\n"), 0o644); err != nil {
			t.Fatal(err)
		}
		if _, err := a.Bundle(rev); !errors.Is(err, replayer.ErrArchive) {
			t.Fatalf("got %v, want ErrArchive", err)
		}
	})
	t.Run("edited manifest", func(t *testing.T) {
		a := archive(t)
		p := filepath.Join(a.Dir, "manifests", m.Digest()[len("sha256:"):]+".json")
		other := registry(t).Manifests("acme")[0].Clone()
		other.Version = "9.9.9"
		b, err := other.MarshalJSON()
		if err != nil {
			t.Fatal(err)
		}
		if err := os.WriteFile(p, b, 0o644); err != nil {
			t.Fatal(err)
		}
		if _, err := a.Manifest(m.Digest()); !errors.Is(err, replayer.ErrArchive) {
			t.Fatalf("got %v, want ErrArchive", err)
		}
	})
}

func TestExact(t *testing.T) {
	ctx := context.Background()
	cfg := replayer.Config{Mode: replayer.ModeExact, Archive: archive(t), Workers: 3}
	rep, err := replayer.Run(ctx, cfg, replayer.EventsSource(record(t, 50)))
	if err != nil {
		t.Fatal(err)
	}
	if !rep.Identical || rep.Sessions != 50 || rep.Events != 350 || rep.Decisions != 200 {
		t.Fatalf("report %+v", rep)
	}

	cases := []struct {
		name  string
		edit  func(s []*replayer.Session)
		field string
		seq   uint64
	}{
		{"reason", func(s []*replayer.Session) { s[3].Events[4].Decision.Reason = "EGRESS_DENY" }, "reason", 5},
		{"outcome", func(s []*replayer.Session) { s[3].Events[5].Decision.Outcome = envelope.Allow }, "outcome", 6},
		{"input digest", func(s []*replayer.Session) { s[3].Events[1].Decision.InputDigest = "sha256:" + fmt.Sprintf("%064x", 1) }, "input_digest", 2},
		{"payload", func(s []*replayer.Session) {
			s[3].Events[1].Payload = []byte(`{"tool_name":"search","call_id":"c2","args":{"q":"x"}}`)
		}, "input_digest", 2},
		{"earlier event", func(s []*replayer.Session) { s[3].Events[0].TsUnixMs -= 1 }, "input_digest", 2},
		{"decision removed", func(s []*replayer.Session) { s[3].Events[1].Decision = nil }, "decision", 2},
		// A row the pipeline could not have sealed is this session's
		// difference; the job goes on.
		{"undecidable proposal", func(s []*replayer.Session) {
			s[3].Events[1].Payload = []byte(`{"tool_name":5,"call_id":"c2","args":{}}`)
		}, "event", 2},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			sessions := record(t, 5)
			c.edit(sessions)
			rep, err := replayer.Run(ctx, cfg, replayer.EventsSource(sessions))
			if err != nil {
				t.Fatal(err)
			}
			if rep.Identical || len(rep.Differences) == 0 {
				t.Fatalf("differences %+v", rep.Differences)
			}
			d := rep.Differences[0]
			if d.SessionID != "s0003" || d.Seq != c.seq || d.Field != c.field {
				t.Fatalf("difference %+v, want s0003 seq %d %s", d, c.seq, c.field)
			}
		})
	}

	t.Run("snapshot hash", func(t *testing.T) {
		// s0000: no stored snapshot; s0001: another hash; s0002: a
		// snapshot of an earlier seq; s0003: the replayed one.
		sessions := record(t, 4)
		rep, err := replayer.Run(ctx, cfg, replayer.EventsSource(record(t, 4)))
		if err != nil {
			t.Fatal(err)
		}
		good := map[string]string{}
		cfg := cfg
		cfg.SnapshotHash = func(_, s string) (uint64, string, bool) {
			switch s {
			case "s0001":
				return 7, "sha256:" + fmt.Sprintf("%064x", 2), true
			case "s0002":
				return 6, good[s], true
			case "s0003":
				return 7, good[s], true
			}
			return 0, "", false
		}
		for _, s := range sessions {
			sn := session.New(s.TenantID, s.SessionID)
			for _, ev := range s.Events {
				if err := sn.Apply(ev); err != nil {
					t.Fatal(err)
				}
			}
			good[s.SessionID], _ = sn.Hash()
		}
		if !rep.Identical {
			t.Fatalf("without snapshots: %+v", rep.Differences)
		}
		rep, err = replayer.Run(ctx, cfg, replayer.EventsSource(sessions))
		if err != nil {
			t.Fatal(err)
		}
		got := map[string]string{}
		for _, d := range rep.Differences {
			if d.Field != "snapshot_hash" {
				t.Fatalf("difference %+v", d)
			}
			got[d.SessionID] = d.Recorded
		}
		if len(got) != 3 || got["s0000"] != "absent" || got["s0002"] != "stored after seq 6" || !strings.HasPrefix(got["s0001"], "sha256:0000") {
			t.Fatalf("differences %+v", rep.Differences)
		}
	})

	t.Run("missing revision", func(t *testing.T) {
		cfg := cfg
		cfg.Archive = &replayer.Archive{Dir: t.TempDir()}
		if _, err := replayer.Run(ctx, cfg, replayer.EventsSource(record(t, 3))); !errors.Is(err, replayer.ErrMissingRevision) {
			t.Fatalf("got %v, want ErrMissingRevision", err)
		}
	})
}

func TestWhatIf(t *testing.T) {
	ctx := context.Background()
	candidate := policy.Default()
	files := map[string]string{"deny_search.rego": "package aegis.decide\n\nviolations contains 1 if input.event.payload.tool_name == \"search\"\n"}
	for k, v := range candidate.Files {
		files[k] = v
	}
	candidate = &policy.Bundle{Revision: policy.ComputeRevision(files), Files: files}

	reg := registry(t)
	noEmail := reg.Manifests("acme")[0].Clone()
	noEmail.Permissions.ApprovalRequired = nil
	candidateReg, err := manifest.NewRegistry(map[string][]*manifest.Manifest{"acme": {noEmail}}, map[string]*manifest.Manifest{"acme": noEmail})
	if err != nil {
		t.Fatal(err)
	}

	for _, c := range []struct {
		name      string
		cfg       replayer.Config
		byReason  map[string]int64
		tool      string
		candidate bool
	}{
		{"candidate bundle", replayer.Config{Candidate: candidate, Archive: archive(t)},
			map[string]int64{"OK->PERMISSION_UNDECLARED": 20}, "search", true},
		{"candidate manifests", replayer.Config{Manifests: candidateReg, Archive: archive(t)},
			map[string]int64{"APPROVAL_REQUIRED->OK": 20}, "send_email", false},
		{"same policy", replayer.Config{Candidate: policy.Default(), Archive: archive(t)}, map[string]int64{}, "", true},
	} {
		t.Run(c.name, func(t *testing.T) {
			c.cfg.Mode = replayer.ModeWhatIf
			rep, err := replayer.Run(ctx, c.cfg, replayer.EventsSource(record(t, 20)))
			if err != nil {
				t.Fatal(err)
			}
			if fmt.Sprint(rep.Counts.ByReason) != fmt.Sprint(c.byReason) {
				t.Fatalf("by reason %v, want %v", rep.Counts.ByReason, c.byReason)
			}
			if c.tool != "" && rep.Counts.ByTool[c.tool] != 20 || rep.Counts.ByTenant["acme"] != int64(len(rep.Changes)) {
				t.Fatalf("counts %+v", rep.Counts)
			}
			if (rep.Candidate != "") != c.candidate {
				t.Fatalf("candidate revision %q", rep.Candidate)
			}
			for _, ch := range rep.Changes {
				if ch.Tool != c.tool || ch.ArgsDigest == "" || ch.CallID == "" || ch.Before == nil || ch.After == nil {
					t.Fatalf("change %+v", ch)
				}
			}
		})
	}
}

// BenchmarkExact replays recorded sessions from memory: the replay alone,
// without a store read.
func BenchmarkExact(b *testing.B) {
	sessions := record(b, 500)
	cfg := replayer.Config{Mode: replayer.ModeExact, Archive: archive(b)}
	var events int64
	b.ResetTimer()
	for b.Loop() {
		rep, err := replayer.Run(context.Background(), cfg, replayer.EventsSource(sessions))
		if err != nil || !rep.Identical {
			b.Fatalf("%v %+v", err, rep)
		}
		events += rep.Events
	}
	b.ReportMetric(float64(events)/b.Elapsed().Seconds(), "events/s")
}

// TestReportMatchesSchema holds the JSON of a what-if report to the
// members schemas/diffreport.schema.json declares and requires.
func TestReportMatchesSchema(t *testing.T) {
	raw, err := os.ReadFile("../schemas/diffreport.schema.json")
	if err != nil {
		t.Fatal(err)
	}
	type object struct {
		Required   []string                   `json:"required"`
		Properties map[string]json.RawMessage `json:"properties"`
		Items      *object                    `json:"items"`
	}
	var schema object
	if err := json.Unmarshal(raw, &schema); err != nil {
		t.Fatal(err)
	}
	var changes, differences object
	_ = json.Unmarshal(schema.Properties["changes"], &changes)
	_ = json.Unmarshal(schema.Properties["differences"], &differences)

	candidate := map[string]string{"deny_search.rego": "package aegis.decide\n\nviolations contains 1 if input.event.payload.tool_name == \"search\"\n"}
	for k, v := range policy.Default().Files {
		candidate[k] = v
	}
	sessions := record(t, 2)
	sessions[1].Events[1].Decision.Reason = "EXEC_DENY"
	rep, err := replayer.Run(context.Background(), replayer.Config{Mode: replayer.ModeWhatIf, Archive: archive(t),
		Candidate: &policy.Bundle{Revision: policy.ComputeRevision(candidate), Files: candidate}}, replayer.EventsSource(sessions))
	if err != nil {
		t.Fatal(err)
	}
	exact, err := replayer.Run(context.Background(), replayer.Config{Mode: replayer.ModeExact, Archive: archive(t)}, replayer.EventsSource(sessions))
	if err != nil {
		t.Fatal(err)
	}
	rep.Differences = exact.Differences
	if len(rep.Changes) == 0 || len(rep.Differences) == 0 {
		t.Fatalf("want changes and differences: %+v", rep)
	}
	b, err := json.Marshal(rep)
	if err != nil {
		t.Fatal(err)
	}
	var doc map[string]json.RawMessage
	if err := json.Unmarshal(b, &doc); err != nil {
		t.Fatal(err)
	}
	check := func(what string, got map[string]json.RawMessage, s object) {
		for k := range got {
			if _, ok := s.Properties[k]; !ok {
				t.Errorf("%s: member %q not in the schema", what, k)
			}
		}
		for _, k := range s.Required {
			if _, ok := got[k]; !ok {
				t.Errorf("%s: required member %q missing", what, k)
			}
		}
	}
	check("report", doc, schema)
	for name, s := range map[string]*object{"changes": changes.Items, "differences": differences.Items} {
		var items []map[string]json.RawMessage
		if err := json.Unmarshal(doc[name], &items); err != nil {
			t.Fatal(err)
		}
		check(name, items[0], *s)
	}
}

// TestWhatIfReportsConstraintChanges: a candidate manifest that changes
// only timeout_ms changes every allow's constraints; each is a change.
func TestWhatIfReportsConstraintChanges(t *testing.T) {
	reg := registry(t)
	m := reg.Manifests("acme")[0].Clone()
	m.Permissions.Budgets.TimeoutMs = 1000
	cand, err := manifest.NewRegistry(map[string][]*manifest.Manifest{"acme": {m}}, map[string]*manifest.Manifest{"acme": m})
	if err != nil {
		t.Fatal(err)
	}
	rep, err := replayer.Run(context.Background(), replayer.Config{Mode: replayer.ModeWhatIf, Manifests: cand, Archive: archive(t)},
		replayer.EventsSource(record(t, 5)))
	if err != nil {
		t.Fatal(err)
	}
	if len(rep.Changes) == 0 || rep.Identical {
		t.Fatalf("%d changes, identical %v: want every allow changed", len(rep.Changes), rep.Identical)
	}
	for _, c := range rep.Changes {
		if c.Before.Outcome == "allow" && (c.After.Constraints.TimeoutMs != 1000 || c.Before.Constraints.TimeoutMs == 1000) {
			t.Errorf("change %+v -> %+v", c.Before, c.After)
		}
	}
}

// TestUnreplayableRowIsAFinding: a proposal whose recorded decision does
// not name what it must be replayed under (no decision, or a revision or
// manifest digest that is not a sha256 digest, which the decider never
// writes) is a difference of its session, not a failure of the job: the
// other sessions are still replayed.
func TestUnreplayableRowIsAFinding(t *testing.T) {
	candidate := policy.Default()
	reg := registry(t)
	for _, c := range []struct {
		name  string
		cfg   replayer.Config
		edit  func(d **envelope.Decision)
		field string
	}{
		{"what-if manifests, no decision", replayer.Config{Mode: replayer.ModeWhatIf, Manifests: reg},
			func(d **envelope.Decision) { *d = nil }, "decision"},
		{"what-if policy, no decision", replayer.Config{Mode: replayer.ModeWhatIf, Candidate: candidate},
			func(d **envelope.Decision) { *d = nil }, "decision"},
		{"exact, revision not a digest", replayer.Config{Mode: replayer.ModeExact},
			func(d **envelope.Decision) { (*d).PolicyRevision = "rev-1" }, "policy_revision"},
		{"exact, manifest digest not a digest", replayer.Config{Mode: replayer.ModeExact},
			func(d **envelope.Decision) { (*d).ManifestDigest = "registry" }, "manifest_digest"},
		{"what-if manifests, revision not a digest", replayer.Config{Mode: replayer.ModeWhatIf, Manifests: reg},
			func(d **envelope.Decision) { (*d).PolicyRevision = "sha256:../x" }, "policy_revision"},
		{"what-if policy, manifest digest not a digest", replayer.Config{Mode: replayer.ModeWhatIf, Candidate: candidate},
			func(d **envelope.Decision) { (*d).ManifestDigest = "sha256:" }, "manifest_digest"},
	} {
		t.Run(c.name, func(t *testing.T) {
			sessions := record(t, 5)
			c.edit(&sessions[3].Events[1].Decision)
			c.cfg.Archive = archive(t)
			rep, err := replayer.Run(context.Background(), c.cfg, replayer.EventsSource(sessions))
			if err != nil {
				t.Fatalf("Run: %v", err)
			}
			if rep.Sessions != 5 || len(rep.Differences) != 1 {
				t.Fatalf("%d sessions, differences %+v", rep.Sessions, rep.Differences)
			}
			if d := rep.Differences[0]; d.SessionID != "s0003" || d.Seq != 2 || d.Field != c.field {
				t.Fatalf("difference %+v, want s0003 seq 2 %s", d, c.field)
			}
		})
	}
	// With both a candidate bundle and candidate manifests nothing
	// recorded is needed: a proposal without a decision is replayed, its
	// change has no "before".
	sessions := record(t, 5)
	sessions[3].Events[1].Decision = nil
	rep, err := replayer.Run(context.Background(), replayer.Config{Mode: replayer.ModeWhatIf, Candidate: candidate, Manifests: reg},
		replayer.EventsSource(sessions))
	if err != nil || len(rep.Differences) != 0 || len(rep.Changes) != 1 || rep.Changes[0].Before != nil {
		t.Fatalf("both replaced: %v, %+v", err, rep)
	}
}

// TestReportIndependentOfWorkers: sessions replayed by any number of
// workers give the same report bytes, wall time aside (docs/replay.md).
func TestReportIndependentOfWorkers(t *testing.T) {
	files := map[string]string{"deny_search.rego": "package aegis.decide\n\nviolations contains 1 if input.event.payload.tool_name == \"search\"\n"}
	for k, v := range policy.Default().Files {
		files[k] = v
	}
	candidate := &policy.Bundle{Files: files}
	sessions := record(t, 60)
	for i := 0; i < len(sessions); i += 3 {
		sessions[i].Events[4].Decision.Reason = "EGRESS_DENY"
	}
	a := archive(t)
	for _, mode := range []replayer.Mode{replayer.ModeExact, replayer.ModeWhatIf} {
		var want []byte
		for _, workers := range []int{1, 4, 16} {
			cfg := replayer.Config{Mode: mode, Archive: a, Workers: workers}
			if mode == replayer.ModeWhatIf {
				cfg.Candidate = candidate
			}
			rep, err := replayer.Run(context.Background(), cfg, replayer.EventsSource(sessions))
			if err != nil {
				t.Fatal(err)
			}
			rep.Seconds = 0
			got, err := json.Marshal(rep)
			if err != nil {
				t.Fatal(err)
			}
			if want == nil {
				want = got
			} else if string(got) != string(want) {
				t.Fatalf("%s with %d workers: report differs from 1 worker's", mode, workers)
			}
		}
	}
}

// TestArchiveReadsManifestsOfEarlierBuilds: an archived manifest stays
// loadable after an upgrade that tightens validation, so the decisions made
// under it can still be replayed. Until 2026-11-29 a manifest could set
// max_tool_calls up to 100000 and list a suffix pattern ending in a number
// ("*.0.1"); aegisd archived such manifests as it loaded them.
func TestArchiveReadsManifestsOfEarlierBuilds(t *testing.T) {
	a := archive(t)
	old := registry(t).Manifests("acme")[0].Clone()
	old.Version = "1.0.1"
	old.Permissions.Budgets.MaxToolCalls = 100000
	old.Permissions.Net.Domains = append(old.Permissions.Net.Domains, "*.0.1")
	if err := a.PutManifest(old); err != nil {
		t.Fatal(err)
	}
	got, err := a.Manifest(old.Digest())
	if err != nil {
		t.Fatalf("manifest archived by an earlier build: %v", err)
	}
	if got.Digest() != old.Digest() {
		t.Fatalf("digest %s, want %s", got.Digest(), old.Digest())
	}

	// What is refused in every build still is: a negative budget.
	bad := old.Clone()
	bad.Version = "1.0.2"
	bad.Permissions.Budgets.MaxIdenticalCalls = -1
	if err := a.PutManifest(bad); err != nil {
		t.Fatal(err)
	}
	if _, err := a.Manifest(bad.Digest()); !errors.Is(err, replayer.ErrArchive) {
		t.Fatalf("negative budget: %v, want ErrArchive", err)
	}
}

// TestDecisionOnNonProposalIsAFinding: only proposals carry decisions (the
// sealer refuses any other record with one), so a decision on another
// event is a row that does not rebuild a sealed record: an `event`
// difference, never an identical replay.
func TestDecisionOnNonProposalIsAFinding(t *testing.T) {
	candidate := policy.Default()
	for _, mode := range []replayer.Mode{replayer.ModeExact, replayer.ModeWhatIf} {
		sessions := record(t, 3)
		d := *sessions[1].Events[1].Decision
		sessions[1].Events[3].Decision = &d // the TOOL_RESULT, seq 4
		cfg := replayer.Config{Mode: mode, Archive: archive(t)}
		if mode == replayer.ModeWhatIf {
			cfg.Candidate = candidate
		}
		rep, err := replayer.Run(context.Background(), cfg, replayer.EventsSource(sessions))
		if err != nil {
			t.Fatal(err)
		}
		if rep.Sessions != 3 || len(rep.Differences) != 1 || rep.Identical {
			t.Fatalf("%s: %d sessions, identical %v, differences %+v", mode, rep.Sessions, rep.Identical, rep.Differences)
		}
		if got := rep.Differences[0]; got.SessionID != "s0001" || got.Seq != 4 || got.Field != "event" {
			t.Fatalf("%s: difference %+v, want s0001 seq 4 event", mode, got)
		}
	}
}
