package ctl

import (
	"context"
	"database/sql"
	"encoding/json"
	"fmt"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"aegis.dev/aegis/decider/session"
	"aegis.dev/aegis/projector"
	"aegis.dev/aegis/projector/stores"
	"aegis.dev/aegis/projector/storetest"
	"aegis.dev/aegis/schemas/chain"
	"aegis.dev/aegis/schemas/envelope"
)

var chDB atomic.Int64

// storeURLs returns a constructor of empty stores per backend: SQLite
// always, ClickHouse for integration runs.
func sqliteURL(t testing.TB) string {
	return "sqlite:" + filepath.Join(t.TempDir(), "audit.db")
}

func clickhouseURL(t testing.TB) string {
	t.Helper()
	base := storetest.ServiceAddr(t, "AEGIS_TEST_CLICKHOUSE")
	url := fmt.Sprintf("%s_ctl_%d_%d", base, time.Now().UnixNano(), chDB.Add(1))
	t.Cleanup(func() {
		st, err := stores.Open(context.Background(), url)
		if err == nil {
			_ = st.(interface{ DropDatabase(context.Context) error }).DropDatabase(context.Background())
			_ = st.Close()
		}
	})
	return url
}

func writeStore(t testing.TB, url string, b *projector.Batch) {
	t.Helper()
	st, err := stores.Open(context.Background(), url)
	if err != nil {
		t.Fatal(err)
	}
	defer st.Close()
	if err := st.Write(context.Background(), b); err != nil {
		t.Fatal(err)
	}
}

func cloneEvent(e *envelope.Event) *envelope.Event {
	c := *e
	if e.Decision != nil {
		d := *e.Decision
		c.Decision = &d
	}
	return &c
}

// tamperCases edit the golden vectors the way an attacker with write access
// to the store would; each names the reason verify must report and the seq
// of the first bad record of the first vector session.
func tamperCases(t testing.TB) []struct {
	name   string
	edit   func(b *projector.Batch)
	reason string
} {
	vec := storetest.Vectors(t)
	first := vec[0]
	var idx []int // positions of the first session's events
	for i, e := range vec {
		if e.TenantID == first.TenantID && e.SessionID == first.SessionID {
			idx = append(idx, i)
		}
	}
	if len(idx) < 3 {
		t.Fatalf("first vector session has %d events, need 3", len(idx))
	}
	lastI := idx[len(idx)-1]
	without := func(b *projector.Batch, drop func(i int) bool) {
		var keep []projector.EventRow
		for i, r := range b.Events {
			if !drop(i) {
				keep = append(keep, r)
			}
		}
		b.Events = keep
	}
	return []struct {
		name   string
		edit   func(b *projector.Batch)
		reason string
	}{
		{"edited payload", func(b *projector.Batch) {
			e := cloneEvent(b.Events[1].Event)
			e.Payload = json.RawMessage(`{"call_id":"m1","model":"gpt-y"}`)
			b.Events[1].Event = e
		}, chain.ReasonHashMismatch},
		{"edited decision", func(b *projector.Batch) {
			for i, r := range b.Events {
				if r.Event.Decision != nil {
					e := cloneEvent(r.Event)
					e.Decision.Outcome = envelope.Deny
					e.Decision.Reason = envelope.ReasonEgressDeny
					b.Events[i] = projector.NewEventRow(e, 0, 0)
					return
				}
			}
			panic("no decision in the vectors")
		}, chain.ReasonHashMismatch},
		{"edited filter column only", func(b *projector.Batch) { b.Events[0].ToolName = "shell" }, ReasonColumnMismatch},
		// event_date is what auditors select days by (and ClickHouse
		// partitions on): it must be the day of ts_unix_ms.
		{"edited event_date", func(b *projector.Batch) { b.Events[1].EventDate = "2020-02-29" }, ReasonColumnMismatch},
		{"payload stored in another spelling", func(b *projector.Batch) {
			// Same content and hash, but the first string value's first
			// letter escaped: a text search no longer finds it.
			e := cloneEvent(b.Events[0].Event)
			p := string(e.Payload)
			i := strings.Index(p, `":"`) + 3
			e.Payload = json.RawMessage(p[:i] + fmt.Sprintf(`\u%04x`, p[i]) + p[i+1:])
			b.Events[0].Event = e
		}, ReasonColumnMismatch},
		{"edited and re-hashed tail", func(b *projector.Batch) {
			e := cloneEvent(b.Events[lastI].Event)
			e.TsUnixMs++
			h, _ := chain.Hash(e)
			e.Hash = h
			b.Events[lastI].Event = e
		}, chain.ReasonHeadMismatch},
		{"deleted middle record", func(b *projector.Batch) { without(b, func(i int) bool { return i == idx[1] }) }, chain.ReasonSeqGap},
		{"deleted tail", func(b *projector.Batch) { without(b, func(i int) bool { return i == lastI }) }, chain.ReasonTruncated},
		{"deleted session", func(b *projector.Batch) {
			without(b, func(i int) bool { return slices.Contains(idx, i) })
		}, chain.ReasonMissingSession},
		{"inserted record", func(b *projector.Batch) {
			last := b.Events[lastI].Event
			e := &envelope.Event{V: 1, TenantID: last.TenantID, SessionID: last.SessionID, Seq: last.Seq + 1, TsUnixMs: last.TsUnixMs + 1,
				Type: envelope.ErrorRaised, Payload: json.RawMessage(`{}`)}
			if _, err := chain.Link(&chain.Head{TenantID: last.TenantID, SessionID: last.SessionID, Seq: last.Seq, Hash: last.Hash}, e); err != nil {
				panic(err)
			}
			b.Events = append(b.Events, projector.NewEventRow(e, 0, 0))
		}, chain.ReasonHeadMismatch},
		{"reordered records", func(b *projector.Batch) {
			x, y := cloneEvent(b.Events[0].Event), cloneEvent(b.Events[1].Event)
			x.Seq, y.Seq = y.Seq, x.Seq
			b.Events[0].Event, b.Events[1].Event = x, y
		}, chain.ReasonHashMismatch},
		{"session without its head (forged, or its head deleted)", func(b *projector.Batch) {
			var keep []chain.Head
			for _, h := range b.Heads {
				if h.TenantID != first.TenantID || h.SessionID != first.SessionID {
					keep = append(keep, h)
				}
			}
			b.Heads = keep
		}, ReasonHeadMissing},
		// The decisions table is what auditors count outcomes in
		// (docs/audit-queries.md): its rows must be the ones the
		// verified records derive.
		{"edited decisions row", func(b *projector.Batch) {
			d := firstDecision(b)
			if d.Outcome == envelope.Allow {
				d.Outcome, d.Reason = envelope.Deny, envelope.ReasonEgressDeny
			} else {
				d.Outcome, d.Reason = envelope.Allow, envelope.ReasonOK
			}
		}, ReasonDecisionsMismatch},
		{"decisions row with another taint", func(b *projector.Batch) {
			firstDecision(b).Tainted = !firstDecision(b).Tainted
		}, ReasonDecisionsMismatch},
		{"deleted decisions row", func(b *projector.Batch) {
			d := firstDecision(b)
			b.Decisions = slices.DeleteFunc(b.Decisions, func(x projector.DecisionRow) bool {
				return x.Seq == d.Seq && x.SessionID == d.SessionID && x.TenantID == d.TenantID
			})
		}, ReasonDecisionsMismatch},
		{"forged decisions row", func(b *projector.Batch) {
			d := *firstDecision(b)
			d.Seq = b.Events[idx[0]].Event.Seq // the session's first record, not a proposal
			if d.Seq == firstDecision(b).Seq {
				d.Seq = b.Events[lastI].Event.Seq
			}
			b.Decisions = append(b.Decisions, d)
		}, ReasonDecisionsMismatch},
		// session_snapshots is where auditors ask which sessions are
		// tainted, looping or terminated: its row must be the one the
		// verified records fold into.
		{"snapshot row with another taint", func(b *projector.Batch) {
			firstSnapshot(b).Tainted = !firstSnapshot(b).Tainted
		}, ReasonSnapshotMismatch},
		{"snapshot row no longer terminated", func(b *projector.Batch) {
			firstSnapshot(b).Terminated = !firstSnapshot(b).Terminated
		}, ReasonSnapshotMismatch},
		{"snapshot row with another count", func(b *projector.Batch) { firstSnapshot(b).ToolCalls++ }, ReasonSnapshotMismatch},
		{"snapshot JSON edited", func(b *projector.Batch) {
			r := firstSnapshot(b)
			edited := strings.Replace(r.JSON, `"terminated":true`, `"terminated":false`, 1)
			if edited == r.JSON {
				panic("the first vector session's snapshot is not terminated")
			}
			r.JSON = edited
		}, ReasonSnapshotMismatch},
		{"snapshot_hash edited", func(b *projector.Batch) {
			firstSnapshot(b).Hash = "sha256:" + strings.Repeat("0", 64)
		}, ReasonSnapshotMismatch},
		{"deleted snapshot row", func(b *projector.Batch) {
			r := firstSnapshot(b)
			b.Snapshots = slices.DeleteFunc(b.Snapshots, func(x projector.SnapshotRow) bool {
				return x.TenantID == r.TenantID && x.SessionID == r.SessionID
			})
		}, ReasonSnapshotMismatch},
		{"stale snapshot row (an earlier batch's)", func(b *projector.Batch) {
			*firstSnapshot(b) = snapshotThrough(b, b.Events[idx[1]].Event.Seq)
		}, ReasonSnapshotMismatch},
		{"snapshot row ahead of the records", func(b *projector.Batch) { firstSnapshot(b).LastSeq++ }, ReasonSnapshotMismatch},
		{"spliced into another tenant", func(b *projector.Batch) {
			e := cloneEvent(b.Events[1].Event)
			e.TenantID = "mallory"
			b.Events[1].Event = e
		}, chain.ReasonSeqGap},
	}
}

// verifyStoreAt runs VerifyStore over the whole store at url.
func verifyStoreAt(t testing.TB, url string) VerifyReport {
	t.Helper()
	st, err := stores.Open(context.Background(), url)
	if err != nil {
		t.Fatal(err)
	}
	defer st.Close()
	rep, err := VerifyStore(context.Background(), st, projector.Filter{}, 1)
	if err != nil {
		t.Fatal(err)
	}
	return rep
}

// firstDecision returns the batch's first decisions row, which belongs to
// the first vector session.
func firstDecision(b *projector.Batch) *projector.DecisionRow {
	if len(b.Decisions) == 0 || b.Decisions[0].SessionID != b.Events[0].Event.SessionID || b.Decisions[0].TenantID != b.Events[0].Event.TenantID {
		panic("the vectors' first session has no decision first")
	}
	return &b.Decisions[0]
}

// firstSnapshot returns the batch's first session_snapshots row, which
// belongs to the first vector session.
func firstSnapshot(b *projector.Batch) *projector.SnapshotRow {
	if len(b.Snapshots) == 0 || b.Snapshots[0].SessionID != b.Events[0].Event.SessionID || b.Snapshots[0].TenantID != b.Events[0].Event.TenantID {
		panic("the vectors' first session has no snapshot row first")
	}
	return &b.Snapshots[0]
}

// snapshotThrough is the session_snapshots row of the batch's first
// session after its records up to seq: the row a projector batch ending
// there wrote.
func snapshotThrough(b *projector.Batch, seq uint64) projector.SnapshotRow {
	first := b.Events[0].Event
	sn := session.New(first.TenantID, first.SessionID)
	for _, r := range b.Events {
		if r.Event.TenantID == first.TenantID && r.Event.SessionID == first.SessionID && r.Event.Seq <= seq {
			if err := sn.Apply(r.Event); err != nil {
				panic(err)
			}
		}
	}
	row, err := projector.NewSnapshotRow(sn)
	if err != nil {
		panic(err)
	}
	return row
}

func testVerifyStore(t *testing.T, newURL func(testing.TB) string) {
	t.Run("intact", func(t *testing.T) {
		url := newURL(t)
		b := storetest.BatchOf(t, storetest.Vectors(t))
		writeStore(t, url, b)
		writeStore(t, url, b) // a redelivery changes nothing
		code, out, stderr := run(t, "", "verify", "--store", url)
		if code != ExitOK || !strings.Contains(out, fmt.Sprintf("OK: %d events in %d sessions", len(b.Events), len(b.Heads))) {
			t.Fatalf("code %d out %q stderr %q", code, out, stderr)
		}
	})
	for _, c := range tamperCases(t) {
		t.Run(c.name, func(t *testing.T) {
			url := newURL(t)
			vec := storetest.Vectors(t)
			b := storetest.BatchOf(t, vec)
			c.edit(b)
			writeStore(t, url, b)
			code, out, stderr := run(t, "", "verify", "--store", url, "--json")
			var rep VerifyReport
			if err := json.Unmarshal([]byte(out), &rep); err != nil {
				t.Fatalf("code %d out %q stderr %q: %v", code, out, stderr, err)
			}
			if code != ExitFailed || rep.OK || len(rep.Failures) == 0 {
				t.Fatalf("tampering not detected: code %d report %+v", code, rep)
			}
			f := rep.Failures[0]
			if f.Reason != c.reason || f.TenantID != vec[0].TenantID || f.SessionID != vec[0].SessionID {
				t.Errorf("first failure %+v, want reason %s in %s/%s", f, c.reason, vec[0].TenantID, vec[0].SessionID)
			}
			// Text mode names the record and the reason on stderr.
			code, _, stderr = run(t, "", "verify", "--store", url)
			if code != ExitFailed || !strings.Contains(stderr, "FAIL "+f.TenantID+"/"+f.SessionID) || !strings.Contains(stderr, c.reason) {
				t.Errorf("text mode: code %d stderr %q", code, stderr)
			}
		})
	}
	t.Run("filters", func(t *testing.T) {
		url := newURL(t)
		vec := storetest.Vectors(t)
		b := storetest.BatchOf(t, vec)
		tamperCases(t)[0].edit(b) // breaks the first session only
		writeStore(t, url, b)
		var other *envelope.Event
		for _, e := range vec {
			if e.TenantID != vec[0].TenantID {
				other = e
			}
		}
		cases := []struct {
			name string
			args []string
			code int
		}{
			{"broken tenant", []string{"--tenant", vec[0].TenantID}, ExitFailed},
			{"broken session", []string{"--tenant", vec[0].TenantID, "--session", vec[0].SessionID}, ExitFailed},
			{"intact session", []string{"--tenant", other.TenantID, "--session", other.SessionID}, ExitOK},
			{"since the future", []string{"--since", "2100-01-01T00:00:00Z"}, ExitOK},
			{"since the epoch", []string{"--since", "1"}, ExitFailed},
			{"bad since", []string{"--since", "yesterday"}, ExitUsage},
		}
		for _, c := range cases {
			t.Run(c.name, func(t *testing.T) {
				if code, out, stderr := run(t, "", append([]string{"verify", "--store", url}, c.args...)...); code != c.code {
					t.Errorf("code %d, want %d; out %q stderr %q", code, c.code, out, stderr)
				}
			})
		}
	})
}

func TestVerifyStoreSQLite(t *testing.T) { testVerifyStore(t, sqliteURL) }

func TestIntegrationVerifyStoreClickHouse(t *testing.T) { testVerifyStore(t, clickhouseURL) }

func TestVerifyUsage(t *testing.T) {
	cases := [][]string{
		{"verify"},
		{"verify", "--file", "x", "--store", "sqlite:y"},
		{"verify", "--store", "sqlite:y", "--heads", "h"},
		{"verify", "--file", "x", "--tenant", "t"},
	}
	for _, args := range cases {
		if code, _, _ := run(t, "", args...); code != ExitUsage {
			t.Errorf("%v: exit %d, want %d", args, code, ExitUsage)
		}
	}
}

func TestParseSince(t *testing.T) {
	now := time.Date(2026, 1, 2, 0, 0, 0, 0, time.UTC)
	cases := []struct {
		in   string
		want int64
		ok   bool
	}{
		{"2026-01-01T00:00:00Z", 1767225600000, true},
		{"1767225600000", 1767225600000, true},
		{"24h", 1767225600000, true},
		{"-1h", 0, false},
		{"0", 0, false},
		{"soon", 0, false},
	}
	for _, c := range cases {
		got, err := parseSince(c.in, now)
		if (err == nil) != c.ok || got != c.want {
			t.Errorf("parseSince(%q) = %d, %v; want %d ok=%v", c.in, got, err, c.want, c.ok)
		}
	}
}

// TestIntegrationCopiesThatKeepTheHash: ClickHouse keeps a second row with
// the same key until a merge. A forged copy that keeps the hash column but
// changes the payload is reported by verify --store and replay --mode
// verify, whichever of the two copies was written first (replayer's
// TestStoreSourceCopies covers the re-deciding modes).
func TestIntegrationCopiesThatKeepTheHash(t *testing.T) {
	vec := storetest.Vectors(t)
	forged := cloneEvent(vec[1])
	forged.Payload = json.RawMessage(`{"call_id":"m1","model":"gpt-y"}`)
	forgery := &projector.Batch{Events: []projector.EventRow{projector.NewEventRow(forged, 0, 0)}}
	for _, forgedFirst := range []bool{false, true} {
		url := clickhouseURL(t)
		if forgedFirst {
			writeStore(t, url, forgery)
		}
		writeStore(t, url, storetest.BatchOf(t, vec))
		if !forgedFirst {
			writeStore(t, url, forgery)
		}
		for _, args := range [][]string{
			{"verify", "--store", url},
			{"replay", "--store", url, "--mode", "verify"},
		} {
			code, out, stderr := run(t, "", args...)
			if code != ExitFailed {
				t.Errorf("forgery written first %v: %v: exit %d, want %d\n%s%s", forgedFirst, args, code, ExitFailed, out, stderr)
			}
		}
	}
}

// testSnapshotHashes checks that exact replay reads the snapshot hashes of
// the selected sessions only, whatever characters their ids hold.
func testSnapshotHashes(t *testing.T, newURL func(testing.TB) string) {
	vec := storetest.Vectors(t)
	b := storetest.BatchOf(t, vec)
	odd := b.Snapshots[0]
	odd.SessionID = `it's ?\ odd`
	b.Snapshots = append(b.Snapshots, odd)
	url := newURL(t)
	writeStore(t, url, b)
	st, err := stores.Open(context.Background(), url)
	if err != nil {
		t.Fatal(err)
	}
	defer st.Close()

	first, last := vec[0], vec[len(vec)-1]
	var maxTs int64
	for _, ev := range vec {
		maxTs = max(maxTs, ev.TsUnixMs)
	}
	var newest []string
	for _, ev := range vec {
		if k := ev.TenantID + "/" + ev.SessionID; ev.TsUnixMs == maxTs && !slices.Contains(newest, k) {
			newest = append(newest, k)
		}
	}
	slices.Sort(newest)
	cases := []struct {
		name    string
		filters []projector.Filter
		want    []string
	}{
		{"explicit sessions", []projector.Filter{{Sessions: []projector.SessionKey{
			{TenantID: odd.TenantID, SessionID: odd.SessionID}, {TenantID: last.TenantID, SessionID: last.SessionID}}}},
			[]string{odd.TenantID + "/" + odd.SessionID, last.TenantID + "/" + last.SessionID}},
		{"one session", []projector.Filter{{TenantID: first.TenantID, SessionID: first.SessionID}}, []string{first.TenantID + "/" + first.SessionID}},
		{"odd session", []projector.Filter{{TenantID: odd.TenantID, SessionID: odd.SessionID}}, []string{odd.TenantID + "/" + odd.SessionID}},
		{"since", []projector.Filter{{SinceUnixMs: maxTs}}, newest},
		{"no tenant", []projector.Filter{{TenantID: "o'ther"}}, nil},
	}
	for _, c := range cases {
		got, err := snapshotHashes(context.Background(), st, c.filters)
		if err != nil {
			t.Fatalf("%s: %v", c.name, err)
		}
		var keys []string
		for k, h := range got {
			keys = append(keys, k.TenantID+"/"+k.SessionID)
			if h.hash == "" || h.seq == 0 {
				t.Errorf("%s: %v has seq %d, hash %q", c.name, k, h.seq, h.hash)
			}
		}
		slices.Sort(keys)
		want := slices.Sorted(slices.Values(c.want))
		if !slices.Equal(keys, want) {
			t.Errorf("%s: snapshots of %q, want %q", c.name, keys, want)
		}
	}
}

func TestSnapshotHashesSQLite(t *testing.T) { testSnapshotHashes(t, sqliteURL) }

func TestIntegrationSnapshotHashesClickHouse(t *testing.T) { testSnapshotHashes(t, clickhouseURL) }

// storeWithoutSession is the golden vectors' store with every event of
// acme/sess-1 deleted; its chain head and snapshot stay.
func storeWithoutSession(t *testing.T) string {
	url := sqliteURL(t)
	b := storetest.BatchOf(t, storetest.Vectors(t))
	var keep []projector.EventRow
	for _, r := range b.Events {
		if r.Event.TenantID != "acme" || r.Event.SessionID != "sess-1" {
			keep = append(keep, r)
		}
	}
	if len(keep) == len(b.Events) {
		t.Fatal("the vectors have no acme/sess-1")
	}
	b.Events = keep
	writeStore(t, url, b)
	return url
}

// TestReplayFindsADeletedSession: a session whose events were all deleted
// is reported however the selection names it, not skipped as unselected.
func TestReplayFindsADeletedSession(t *testing.T) {
	url := storeWithoutSession(t)
	for _, args := range [][]string{
		{"--tenant", "acme"},
		{"--tenant", "acme", "--session", "sess-1"},
		{"--tenant", "acme", "--session", "sess-1,sess-2"},
		{"--session", "sess-1,sess-2"},
	} {
		code, out, stderr := run(t, "", append([]string{"replay", "--store", url, "--mode", "verify"}, args...)...)
		if code != ExitFailed || !strings.Contains(out+stderr, "sess-1") {
			t.Errorf("verify %v: exit %d, want %d naming sess-1; out %q stderr %q", args, code, ExitFailed, out, stderr)
		}
	}
	code, out, stderr := run(t, "", "replay", "--store", url, "--mode", "exact", "--tenant", "acme", "--session", "sess-1", "--policy-archive", t.TempDir())
	if code != ExitFailed || !strings.Contains(out+stderr, "no stored events") {
		t.Errorf("exact: exit %d, want %d with the snapshot difference; out %q stderr %q", code, ExitFailed, out, stderr)
	}
}

// TestSQLCannotWriteSQLite: statements that switch query_only off, end
// the transaction or attach another file cannot write through aegisctl sql.
func TestSQLCannotWriteSQLite(t *testing.T) {
	url := sqliteURL(t)
	writeStore(t, url, storetest.BatchOf(t, storetest.Vectors(t)))
	_, before, _ := run(t, "", "sql", "SELECT count(*) AS n FROM audit_events", "--store", url, "--format", "csv")
	other := filepath.Join(t.TempDir(), "other.db")
	for _, q := range []string{
		"PRAGMA query_only = 0; COMMIT; DELETE FROM audit_events WHERE seq > 1; DELETE FROM chain_heads",
		"DELETE FROM audit_events",
		"ATTACH DATABASE '" + other + "' AS o; CREATE TABLE o.t(x)",
	} {
		run(t, "", "sql", q, "--store", url)
	}
	_, after, _ := run(t, "", "sql", "SELECT count(*) AS n FROM audit_events", "--store", url, "--format", "csv")
	_, heads, _ := run(t, "", "sql", "SELECT count(*) AS n FROM chain_heads", "--store", url, "--format", "csv")
	if after != before || strings.TrimSpace(heads) == "n\n0" {
		t.Fatalf("audit_events %q before, %q after; chain_heads %q", before, after, heads)
	}
	if _, err := os.Stat(other); err == nil {
		if b, _ := os.ReadFile(other); len(b) > 0 {
			t.Errorf("ATTACH created and wrote %s", other)
		}
	}
}

// TestVerifySinceSeesDeletedTails: verify --since chooses sessions by
// their recent events; a session whose recent tail (or every event) was
// deleted has none, and must still be reported, while untouched sessions
// without recent events pass.
func TestVerifySinceSeesDeletedTailsSQLite(t *testing.T) { testVerifySince(t, sqliteURL) }

func TestIntegrationVerifySinceSeesDeletedTailsClickHouse(t *testing.T) {
	testVerifySince(t, clickhouseURL)
}

func testVerifySince(t *testing.T, newURL func(testing.TB) string) {
	vec := storetest.Vectors(t)
	first := vec[0]
	var idx []int
	for i, e := range vec {
		if e.TenantID == first.TenantID && e.SessionID == first.SessionID {
			idx = append(idx, i)
		}
	}
	lastI := idx[len(idx)-1]
	since := fmt.Sprint(vec[lastI].TsUnixMs)
	for _, c := range []struct {
		name   string
		drop   func(i int) bool
		edit   func(b *projector.Batch)
		code   int
		reason string
	}{
		{"untouched", func(int) bool { return false }, nil, ExitOK, ""},
		{"tail deleted", func(i int) bool { return i == lastI }, nil, ExitFailed, chain.ReasonTruncated},
		{"session deleted", func(i int) bool { return slices.Contains(idx, i) }, nil, ExitFailed, chain.ReasonMissingSession},
		// A session verified whole has its derived rows checked too.
		{"snapshot row edited", func(int) bool { return false }, func(b *projector.Batch) { firstSnapshot(b).Tainted = true },
			ExitFailed, ReasonSnapshotMismatch},
		{"decisions row edited", func(int) bool { return false }, func(b *projector.Batch) { firstDecision(b).Tainted = true },
			ExitFailed, ReasonDecisionsMismatch},
	} {
		url := newURL(t)
		b := storetest.BatchOf(t, vec)
		if c.edit != nil {
			c.edit(b)
		}
		var keep []projector.EventRow
		for i, r := range b.Events {
			if !c.drop(i) {
				keep = append(keep, r)
			}
		}
		b.Events = keep
		writeStore(t, url, b)
		code, out, stderr := run(t, "", "verify", "--store", url, "--tenant", first.TenantID, "--since", since)
		if code != c.code || !strings.Contains(out+stderr, c.reason) {
			t.Errorf("%s: exit %d, want %d with %q\n%s%s", c.name, code, c.code, c.reason, out, stderr)
		}
	}
}

// TestVerifyFileWantsCanonicalLines: a line that decodes to the same
// sealed record but is not written as its canonical form (a null member
// added, an empty member dropped) is not what was hashed: MALFORMED.
func TestVerifyFileWantsCanonicalLines(t *testing.T) {
	lines := vectorLines(t)
	write := func(lines []string) string {
		p := filepath.Join(t.TempDir(), "sealed.ndjson")
		if err := os.WriteFile(p, []byte(strings.Join(lines, "\n")+"\n"), 0o644); err != nil {
			t.Fatal(err)
		}
		return p
	}
	if code, out, stderr := run(t, "", "verify", "--file", write(lines)); code != ExitOK {
		t.Fatalf("canonical lines: exit %d\n%s%s", code, out, stderr)
	}
	i := slices.IndexFunc(lines, func(l string) bool { return !strings.Contains(l, `"manifest"`) })
	edited := slices.Clone(lines)
	edited[i] = `{"manifest":null,` + lines[i][1:]
	code, out, stderr := run(t, "", "verify", "--file", write(edited))
	if code != ExitFailed || !strings.Contains(out+stderr, "MALFORMED") || !strings.Contains(out+stderr, "canonical") {
		t.Fatalf("a line with an added null member: exit %d\n%s%s", code, out, stderr)
	}
}

// TestSQLTimeoutStopsTheQuery: --timeout cancels a statement that runs
// longer (a recursive count to 10^12 here) and fails the command.
func TestSQLTimeoutStopsTheQuery(t *testing.T) {
	url := sqliteURL(t)
	writeStore(t, url, storetest.BatchOf(t, storetest.Vectors(t)))
	q := "WITH RECURSIVE n(i) AS (SELECT 1 UNION ALL SELECT i + 1 FROM n WHERE i < 1000000000000) SELECT count(*) FROM n"
	for _, format := range []string{"table", "csv"} {
		start := time.Now()
		code, out, stderr := run(t, "", "sql", q, "--store", url, "--timeout", "300ms", "--format", format)
		if code != ExitFailed || !strings.Contains(stderr, "interrupt") && !strings.Contains(stderr, "deadline") {
			t.Errorf("%s: code %d out %q stderr %q", format, code, out, stderr)
		}
		if d := time.Since(start); d > 30*time.Second {
			t.Errorf("%s: returned after %v", format, d)
		}
	}
	if code, _, stderr := run(t, "", "sql", "SELECT 1", "--store", url, "--timeout", "-1s"); code != ExitUsage {
		t.Errorf("negative timeout: code %d stderr %q", code, stderr)
	}
}

// TestVerifyOlderSessionTheStateNowRefuses: a session stored before
// identifiers were bounded to 256 bytes (0a5d935) holds a record today's
// session state refuses. Its chain is intact, so it verifies; the decisions
// rows before that record are still checked.
func TestVerifyOlderSessionTheStateNowRefuses(t *testing.T) {
	long := strings.Repeat("t", 300)
	build := func() *projector.Batch {
		var head *chain.Head
		b := &projector.Batch{}
		sn := session.New("acme", "old")
		for i, e := range []*envelope.Event{
			{Type: envelope.ModelCallStarted, Payload: json.RawMessage(`{"call_id":"m","model":"gpt-x"}`)},
			{Type: envelope.ToolCallProposed, Payload: json.RawMessage(`{"args":{},"call_id":"c1","tool_name":"web_fetch"}`),
				Decision: &envelope.Decision{Outcome: envelope.Deny, Reason: envelope.ReasonEgressDeny, PolicyRevision: "sha256:p"}},
			{Type: envelope.ToolResult, Payload: json.RawMessage(fmt.Sprintf(`{"call_id":"c","tool_name":%q}`, long))},
			{Type: envelope.ToolCallProposed, Payload: json.RawMessage(`{"args":{},"call_id":"c2","tool_name":"web_fetch"}`),
				Decision: &envelope.Decision{Outcome: envelope.Allow, Reason: envelope.ReasonOK, PolicyRevision: "sha256:p"}},
		} {
			e.V, e.TenantID, e.SessionID, e.Seq, e.TsUnixMs, e.Manifest = 1, "acme", "old", uint64(i+1), 1764000000000+int64(i), "bot@1"
			h, err := chain.Link(head, e)
			if err != nil {
				t.Fatal(err)
			}
			head = &h
			b.Events = append(b.Events, projector.NewEventRow(e, 0, int64(i)))
			if d, ok := projector.DecisionRowOf(sn, e); ok {
				b.Decisions = append(b.Decisions, d) // as the reducer of the time took them all
			}
			_ = sn.Apply(e)
		}
		b.Heads = []chain.Head{*head}
		// The reducer of the time folded every record into the
		// session's row; today's stops before seq 3, so only the row's
		// presence and last_seq can be checked.
		row, err := projector.NewSnapshotRow(sn)
		if err != nil {
			t.Fatal(err)
		}
		row.LastSeq, row.LastTsUnixMs, row.Events, row.Steps, row.ToolCalls = head.Seq, 1764000000003, 4, 3, 2
		b.Snapshots = []projector.SnapshotRow{row}
		return b
	}
	verify := func(b *projector.Batch) VerifyReport {
		url := sqliteURL(t)
		writeStore(t, url, b)
		return verifyStoreAt(t, url)
	}
	if rep := verify(build()); !rep.OK {
		t.Fatalf("an intact chain stored by an older pipeline fails verify: %+v", rep.Failures)
	}
	b := build()
	b.Decisions[0].Outcome = envelope.Allow // the row before the refused record is still checked
	if rep := verify(b); rep.OK {
		t.Fatalf("edited decisions row before the refused record not detected")
	}
	for name, edit := range map[string]func(b *projector.Batch){
		"stale snapshot row": func(b *projector.Batch) { b.Snapshots[0].LastSeq = 2 },
		"no snapshot row":    func(b *projector.Batch) { b.Snapshots = nil },
	} {
		b := build()
		edit(b)
		if rep := verify(b); rep.OK || rep.Failures[0].Reason != ReasonSnapshotMismatch {
			t.Errorf("%s of a session the state now refuses: %+v, want %s", name, rep.Failures, ReasonSnapshotMismatch)
		}
	}
}

// TestVerifySeesTextColumnsTurnedIntoBlobs: SQLite keeps a BLOB in a TEXT
// column, and the audit queries compare outcome with a text literal, which
// a blob never equals: casting the outcomes to blobs takes rows out of the
// counts while the bytes stay the same. Verify must see it.
func TestVerifySeesTextColumnsTurnedIntoBlobs(t *testing.T) {
	url := sqliteURL(t)
	b := storetest.BatchOf(t, storetest.Vectors(t))
	writeStore(t, url, b)
	path := strings.TrimPrefix(url, "sqlite:")
	db, err := sql.Open("sqlite", path)
	if err != nil {
		t.Fatal(err)
	}
	count := func() (n int) {
		if err := db.QueryRow("SELECT count(*) FROM decisions WHERE outcome IN ('allow', 'deny', 'require_approval')").Scan(&n); err != nil {
			t.Fatal(err)
		}
		return n
	}
	before := count()
	if _, err := db.Exec("UPDATE decisions SET outcome = CAST(outcome AS BLOB), reason = CAST(reason AS BLOB)"); err != nil {
		t.Fatal(err)
	}
	after := count()
	db.Close()
	rep := verifyStoreAt(t, url)
	if before == 0 || after != 0 {
		t.Fatalf("decisions counted: %d before the edit, %d after; want some, then none", before, after)
	}
	if rep.OK {
		t.Fatalf("every decision hidden from the audit counts (%d -> %d) but verify is OK", before, after)
	}
}

// testSnapshotRows: the session_snapshots check beyond the tamper cases:
// a row forged for a session with no record, the column named, and the
// copies ClickHouse keeps until a merge (copies is true for it): an older
// version beside the latest is not a finding, a different row of the
// latest version is, whichever was written first.
func testSnapshotRows(t *testing.T, newURL func(testing.TB) string, copies bool) {
	vec := storetest.Vectors(t)
	verify := func(t *testing.T, url string, args ...string) VerifyReport {
		t.Helper()
		code, out, stderr := run(t, "", append([]string{"verify", "--store", url, "--json"}, args...)...)
		var rep VerifyReport
		if err := json.Unmarshal([]byte(out), &rep); err != nil || (code == ExitOK) != rep.OK {
			t.Fatalf("code %d out %q stderr %q: %v", code, out, stderr, err)
		}
		return rep
	}
	t.Run("row of a session with no record", func(t *testing.T) {
		url := newURL(t)
		b := storetest.BatchOf(t, vec)
		ghost := b.Snapshots[0]
		ghost.SessionID = "ghost"
		b.Snapshots = append(b.Snapshots, ghost)
		writeStore(t, url, b)
		for _, args := range [][]string{nil, {"--tenant", ghost.TenantID}, {"--tenant", ghost.TenantID, "--session", ghost.SessionID}} {
			rep := verify(t, url, args...)
			if len(rep.Failures) != 1 || rep.Failures[0].SessionID != ghost.SessionID || rep.Failures[0].Reason != ReasonSnapshotMismatch {
				t.Errorf("%v: failures %+v, want one %s of %s", args, rep.Failures, ReasonSnapshotMismatch, ghost.SessionID)
			}
		}
	})
	t.Run("the failure names the column", func(t *testing.T) {
		url := newURL(t)
		b := storetest.BatchOf(t, vec)
		firstSnapshot(b).Tainted = true
		writeStore(t, url, b)
		rep := verify(t, url)
		if len(rep.Failures) != 1 || !strings.Contains(rep.Failures[0].Detail, "column tainted") {
			t.Errorf("failures %+v, want one naming column tainted", rep.Failures)
		}
	})
	t.Run("an older version written after the latest", func(t *testing.T) {
		url := newURL(t)
		b := storetest.BatchOf(t, vec)
		writeStore(t, url, b)
		writeStore(t, url, &projector.Batch{Snapshots: []projector.SnapshotRow{snapshotThrough(b, 2)}})
		if rep := verify(t, url); !rep.OK {
			t.Errorf("an older version of a row (a redelivered earlier batch) is a finding: %+v", rep.Failures)
		}
	})
	for _, forgedFirst := range []bool{false, true} {
		t.Run(fmt.Sprintf("another row of the latest version, written first %v", forgedFirst), func(t *testing.T) {
			url := newURL(t)
			b := storetest.BatchOf(t, vec)
			forged := *firstSnapshot(b)
			forged.Tainted = !forged.Tainted
			forgery := &projector.Batch{Snapshots: []projector.SnapshotRow{forged}}
			if forgedFirst {
				writeStore(t, url, forgery)
			}
			writeStore(t, url, b)
			if !forgedFirst {
				writeStore(t, url, forgery)
			}
			rep := verify(t, url)
			// SQLite replaces a row by a later version only, so a
			// forgery written second never reached the table.
			if stored := copies || forgedFirst; stored != !rep.OK || stored && rep.Failures[0].Reason != ReasonSnapshotMismatch {
				t.Errorf("forgery stored %v: failures %+v", stored, rep.Failures)
			}
		})
	}
	t.Run("a newer version than the records", func(t *testing.T) {
		url := newURL(t)
		b := storetest.BatchOf(t, vec)
		writeStore(t, url, b)
		forged := *firstSnapshot(b)
		forged.LastSeq++
		writeStore(t, url, &projector.Batch{Snapshots: []projector.SnapshotRow{forged}})
		if rep := verify(t, url); rep.OK || rep.Failures[0].Reason != ReasonSnapshotMismatch {
			t.Errorf("failures %+v, want %s", rep.Failures, ReasonSnapshotMismatch)
		}
	})
}

func TestVerifySnapshotRowsSQLite(t *testing.T) { testSnapshotRows(t, sqliteURL, false) }

func TestIntegrationVerifySnapshotRowsClickHouse(t *testing.T) {
	testSnapshotRows(t, clickhouseURL, true)
}

// TestVerifySeesSnapshotColumnsOfAnotherType: SQLite keeps a value that
// does not convert to its column's type. A session_snapshots column edited
// that way is a finding, not a failed read: text, a real or a value out of
// range in an integer column (a tainted of 2 is in no "tainted = 1" count;
// a pending_approvals of 2^32 would read back as 0), a blob in a text one.
func TestVerifySeesSnapshotColumnsOfAnotherType(t *testing.T) {
	for _, set := range []string{
		"tainted = 'no'", "tainted = 2", "terminated = 0.5", "last_seq = 'six'", "events = 6.5",
		"pending_approvals = 4294967296", "snapshot = CAST(snapshot AS BLOB)", "handoff_state = CAST(handoff_state AS BLOB)",
	} {
		t.Run(set, func(t *testing.T) {
			url := sqliteURL(t)
			writeStore(t, url, storetest.BatchOf(t, storetest.Vectors(t)))
			db, err := sql.Open("sqlite", strings.TrimPrefix(url, "sqlite:"))
			if err != nil {
				t.Fatal(err)
			}
			res, err := db.Exec("UPDATE session_snapshots SET " + set + " WHERE tenant_id = 'acme' AND session_id = 'sess-1'")
			if n, _ := res.RowsAffected(); err != nil || n != 1 {
				t.Fatalf("%d rows: %v", n, err)
			}
			db.Close()
			rep := verifyStoreAt(t, url)
			if rep.OK || len(rep.Failures) != 1 || rep.Failures[0].Reason != ReasonSnapshotMismatch || rep.Failures[0].SessionID != "sess-1" {
				t.Errorf("failures %+v, want one %s of acme/sess-1", rep.Failures, ReasonSnapshotMismatch)
			}
		})
	}
}

// TestIntegrationSnapshotHashesSeeForgedCopyClickHouse: until a merge,
// ClickHouse keeps every copy of a session_snapshots row, and FINAL
// returns the last one inserted. A forged copy of the latest version
// inserted before the genuine one was invisible to the exact replay's
// snapshot comparison; copies that disagree never pass as the hash now.
func TestIntegrationSnapshotHashesSeeForgedCopyClickHouse(t *testing.T) {
	url := clickhouseURL(t)
	b := storetest.BatchOf(t, storetest.Vectors(t))
	genuine := *firstSnapshot(b)
	forged := genuine
	forged.Hash = "sha256:" + strings.Repeat("0", 64)
	writeStore(t, url, &projector.Batch{Snapshots: []projector.SnapshotRow{forged}})
	writeStore(t, url, b)
	ctx := context.Background()
	st, err := stores.Open(ctx, url)
	if err != nil {
		t.Fatal(err)
	}
	defer st.Close()
	got, err := snapshotHashes(ctx, st, []projector.Filter{{TenantID: genuine.TenantID, SessionID: genuine.SessionID}})
	if err != nil {
		t.Fatal(err)
	}
	h := got[projector.SessionKey{TenantID: genuine.TenantID, SessionID: genuine.SessionID}]
	if h.seq != genuine.LastSeq || h.hash == genuine.Hash || !strings.Contains(h.hash, "disagree") {
		t.Fatalf("stored snapshot %+v: a forged copy passed as the genuine hash %s", h, genuine.Hash)
	}
}

// testDecisionsMismatchNamesTheRow: a DECISIONS_MISMATCH names the first
// row that differs, by seq, and what differs, not only the session.
func testDecisionsMismatchNamesTheRow(t *testing.T, newURL func(testing.TB) string) {
	vec := storetest.Vectors(t)
	for _, tc := range []struct {
		name   string
		tamper func(b *projector.Batch) uint64 // returns the seq to name
		detail string
	}{
		{"outcome edited", func(b *projector.Batch) uint64 {
			d := firstDecision(b)
			if d.Outcome == envelope.Allow {
				d.Outcome, d.Reason = envelope.Deny, envelope.ReasonEgressDeny
			} else {
				d.Outcome, d.Reason = envelope.Allow, envelope.ReasonOK
			}
			return d.Seq
		}, "column outcome is"},
		{"taint edited", func(b *projector.Batch) uint64 {
			d := firstDecision(b)
			d.Tainted = !d.Tainted
			return d.Seq
		}, "column tainted is"},
		{"row deleted", func(b *projector.Batch) uint64 {
			d := *firstDecision(b)
			b.Decisions = b.Decisions[1:]
			return d.Seq
		}, "no decisions row; the record decides"},
		{"row forged", func(b *projector.Batch) uint64 {
			d := *firstDecision(b)
			d.Seq = b.Events[0].Event.Seq // the session's first record, not a proposal
			b.Decisions = append(b.Decisions, d)
			return d.Seq
		}, "a decisions row (" + ""},
	} {
		t.Run(tc.name, func(t *testing.T) {
			url := newURL(t)
			b := storetest.BatchOf(t, vec)
			seq := tc.tamper(b)
			writeStore(t, url, b)
			rep := verifyStoreAt(t, url)
			if len(rep.Failures) != 1 || rep.Failures[0].Reason != ReasonDecisionsMismatch {
				t.Fatalf("failures %+v, want one %s", rep.Failures, ReasonDecisionsMismatch)
			}
			t.Log(rep.Failures[0].Detail)
			if f := rep.Failures[0]; f.Seq != seq || !strings.Contains(f.Detail, fmt.Sprintf("seq %d: ", seq)) || !strings.Contains(f.Detail, tc.detail) {
				t.Errorf("failure %+v: want seq %d and %q", f, seq, tc.detail)
			}
		})
	}
}

func TestDecisionsMismatchNamesTheRowSQLite(t *testing.T) {
	testDecisionsMismatchNamesTheRow(t, sqliteURL)
}

func TestIntegrationDecisionsMismatchNamesTheRowClickHouse(t *testing.T) {
	testDecisionsMismatchNamesTheRow(t, clickhouseURL)
}

// TestReplayVerifyReportIsTheJSONReport: replay --mode verify --report
// writes the report --json prints (aegisctl verify --json's), an empty
// failures list included, not null.
func TestReplayVerifyReportIsTheJSONReport(t *testing.T) {
	url := sqliteURL(t)
	writeStore(t, url, storetest.BatchOf(t, storetest.Vectors(t)))
	report := filepath.Join(t.TempDir(), "verify.json")
	code, _, stderr := run(t, "", "replay", "--store", url, "--mode", "verify", "--report", report)
	if code != ExitOK {
		t.Fatalf("exit %d: %s", code, stderr)
	}
	code, out, stderr := run(t, "", "replay", "--store", url, "--mode", "verify", "--json")
	if code != ExitOK {
		t.Fatalf("--json: exit %d: %s", code, stderr)
	}
	b, err := os.ReadFile(report)
	if err != nil {
		t.Fatal(err)
	}
	var fromFile, printed map[string]any
	if err := json.Unmarshal(b, &fromFile); err != nil {
		t.Fatal(err)
	}
	if err := json.Unmarshal([]byte(out), &printed); err != nil {
		t.Fatal(err)
	}
	if fmt.Sprint(fromFile) != fmt.Sprint(printed) {
		t.Errorf("--report wrote %s, --json printed %s", b, out)
	}
}

// TestVerifyFileOneFailurePerSession: a session reports its first bad
// record only, as docs/cli.md says, also when that record is a line not
// written canonically and a later record or the expected head fails too;
// "N session(s) bad" counts sessions.
func TestVerifyFileOneFailurePerSession(t *testing.T) {
	lines := vectorLines(t)
	var heads []string
	first, err := (&envelope.Decoder{Sealed: true}).Decode([]byte(lines[0]))
	if err != nil {
		t.Fatal(err)
	}
	n := 0
	for _, l := range lines {
		ev, err := (&envelope.Decoder{Sealed: true}).Decode([]byte(l))
		if err != nil {
			t.Fatal(err)
		}
		if ev.TenantID == first.TenantID && ev.SessionID == first.SessionID {
			n++
			h, _ := json.Marshal(chain.Head{TenantID: ev.TenantID, SessionID: ev.SessionID, Seq: ev.Seq + 1, Hash: ev.Hash})
			heads = []string{string(h)}
		}
	}
	if n < 2 {
		t.Fatalf("the first session has %d records", n)
	}
	dir := t.TempDir()
	file, headsFile := filepath.Join(dir, "sealed.ndjson"), filepath.Join(dir, "heads.ndjson")
	edited := slices.Clone(lines)
	edited[0] = "{ " + lines[0][1:] // not canonical, same record
	if err := os.WriteFile(file, []byte(strings.Join(edited, "\n")+"\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	// An expected head one record beyond the file: the session is also truncated.
	if err := os.WriteFile(headsFile, []byte(strings.Join(heads, "\n")+"\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	code, out, stderr := run(t, "", "verify", "--file", file, "--heads", headsFile, "--json")
	var rep VerifyReport
	if err := json.Unmarshal([]byte(out), &rep); err != nil {
		t.Fatalf("%v: %s%s", err, out, stderr)
	}
	if code != ExitFailed || len(rep.Failures) != 1 || rep.Failures[0].Reason != chain.ReasonMalformed || rep.Failures[0].Seq != first.Seq {
		t.Fatalf("exit %d, failures %+v", code, rep.Failures)
	}
}

// TestVerifyFileInvalidInputIsAFailure: a line longer than any sealed
// record, or a --heads file that is not NDJSON heads, is invalid input
// (exit 1, the check failed), not an environment error (exit 3): a file
// someone made unreadable to verify must not pass for an I/O problem.
func TestVerifyFileInvalidInputIsAFailure(t *testing.T) {
	lines := vectorLines(t)
	dir := t.TempDir()
	file, headsFile := filepath.Join(dir, "sealed.ndjson"), filepath.Join(dir, "heads.ndjson")
	write := func(path string, lines ...string) {
		if err := os.WriteFile(path, []byte(strings.Join(lines, "\n")+"\n"), 0o600); err != nil {
			t.Fatal(err)
		}
	}
	defer func(n int) { maxLine = n }(maxLine)
	maxLine = 64 << 10
	write(file, append(slices.Clone(lines), `{"tenant_id":"acme","pad":"`+strings.Repeat("x", maxLine)+`"}`)...)
	if code, out, stderr := run(t, "", "verify", "--file", file); code != ExitFailed || !strings.Contains(stderr, "MALFORMED") {
		t.Errorf("a line too long: exit %d, want %d with MALFORMED\n%s%s", code, ExitFailed, out, stderr)
	}
	write(file, lines...)
	write(headsFile, `{"tenant_id":"acme",`)
	if code, out, stderr := run(t, "", "verify", "--file", file, "--heads", headsFile); code != ExitFailed {
		t.Errorf("a heads file that does not parse: exit %d, want %d\n%s%s", code, ExitFailed, out, stderr)
	}
}

// vectorLines returns the sealed test vectors, one canonical line each.
func vectorLines(t *testing.T) []string {
	t.Helper()
	var lines []string
	for _, ev := range storetest.Vectors(t) {
		b, err := ev.AppendCanonical(nil, true)
		if err != nil {
			t.Fatal(err)
		}
		lines = append(lines, string(b))
	}
	return lines
}
