// Package storetest is the test suite every audit store passes (the
// watermill pub/sub test suite pattern): Run exercises a store through the
// projector.Store, HeadReader and Querier contracts, with the golden chain
// vectors of schemas/testdata/chain.
package storetest

import (
	"bufio"
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"os"
	"path/filepath"
	"runtime"
	"slices"
	"strings"
	"testing"
	"time"

	"aegis.dev/aegis/decider/session"
	"aegis.dev/aegis/internal/pipeline"
	"aegis.dev/aegis/projector"
	"aegis.dev/aegis/schemas/chain"
	"aegis.dev/aegis/schemas/envelope"
)

// Store is what the suite tests: a projector store that also serves heads,
// session_snapshots rows and SQL.
type Store interface {
	projector.Store
	projector.HeadReader
	projector.SnapshotReader
	projector.Querier
}

// Dialect tells the suite how the store's SQL differs.
type Dialect struct {
	// Final is appended to a table name to read each row once ("FINAL"
	// for ReplacingMergeTree tables, "" for stores that deduplicate on
	// write).
	Final string
}

// Run runs the suite. open returns an empty store that the suite may
// write; it is called once per subtest and must register its own cleanup.
func Run(t *testing.T, d Dialect, open func(t testing.TB) Store) {
	t.Run("RoundTripRebuildsSealedRecords", func(t *testing.T) { testRoundTrip(t, open(t)) })
	t.Run("RedeliveryIsInvisible", func(t *testing.T) { testRedelivery(t, d, open(t)) })
	t.Run("SnapshotsAndHeadsOnlyMoveForward", func(t *testing.T) { testForward(t, d, open(t)) })
	t.Run("SnapshotsReadBackLatest", func(t *testing.T) { testSnapshotsRead(t, open(t)) })
	t.Run("Filters", func(t *testing.T) { testFilters(t, open(t)) })
	t.Run("QueryTypesAndReadOnly", func(t *testing.T) { testQuery(t, open(t)) })
	t.Run("AnyClientTime", func(t *testing.T) { testClientTimes(t, d, open(t)) })
	t.Run("FirstDayOfTheEpochVerifies", func(t *testing.T) { testFirstDay(t, open(t)) })
	t.Run("RejectionWithoutKafkaTimestamp", func(t *testing.T) { testNoTimestamp(t, d, open(t)) })
	t.Run("LongSessionLists", func(t *testing.T) { testLongSessionLists(t, open(t)) })
}

// testLongSessionLists: a filter may name many sessions (aegisctl replay
// names up to 2,000 in one scan), each id up to envelope.MaxIDLen bytes.
// Every read takes such a list, in any order, and returns the selected
// sessions' rows in (tenant, session, seq) order. ClickHouse parses at
// most 256 KiB of a query (max_query_size), which a list of 2,000 such
// sessions alone exceeds.
func testLongSessionLists(t *testing.T, s Store) {
	ctx := context.Background()
	const n = 2000
	keys := make([]projector.SessionKey, n)
	for i := range keys {
		keys[i] = projector.SessionKey{TenantID: strings.Repeat("t", envelope.MaxIDLen), SessionID: fmt.Sprintf("%0*d", envelope.MaxIDLen, i)}
	}
	vec := Vectors(t)
	var events []*envelope.Event
	var want []string
	for _, i := range []int{0, n / 2, n - 1} {
		var head *chain.Head
		for _, v := range []*envelope.Event{vec[0], vec[2]} { // a model call, a decided proposal
			ev := *v
			ev.TenantID, ev.SessionID, ev.Seq = keys[i].TenantID, keys[i].SessionID, uint64(len(want)%2+1)
			if ev.Decision != nil {
				d := *ev.Decision
				ev.Decision = &d
			}
			h, err := chain.Link(head, &ev)
			if err != nil {
				t.Fatal(err)
			}
			head = &h
			events = append(events, &ev)
			want = append(want, fmt.Sprintf("%s/%d", ev.SessionID[len(ev.SessionID)-4:], ev.Seq))
		}
	}
	if err := s.Write(ctx, BatchOf(t, events)); err != nil {
		t.Fatal(err)
	}
	reversed := slices.Clone(keys)
	slices.Reverse(reversed)
	f := projector.Filter{Sessions: reversed}
	var got []string
	err := s.Events(ctx, f, func(r *projector.EventRow) error {
		if k := fmt.Sprintf("%s/%d", r.Event.SessionID[len(r.Event.SessionID)-4:], r.Event.Seq); len(got) == 0 || got[len(got)-1] != k {
			got = append(got, k)
		}
		return nil
	})
	if err != nil || !slices.Equal(got, want) {
		t.Errorf("events: %v, %v; want %v", got, err, want)
	}
	page := f
	page.Limit = 1
	got = nil
	if err := s.Events(ctx, page, func(r *projector.EventRow) error { got = append(got, r.Event.SessionID); return nil }); err != nil || len(got) != 1 {
		t.Errorf("a page of 1: %d rows, %v", len(got), err)
	}
	sessions := func(ids []string) []string {
		var out []string
		for _, id := range ids {
			if id = id[len(id)-4:]; len(out) == 0 || out[len(out)-1] != id {
				out = append(out, id)
			}
		}
		return out
	}
	wantSessions := []string{keys[0].SessionID[envelope.MaxIDLen-4:], keys[n/2].SessionID[envelope.MaxIDLen-4:], keys[n-1].SessionID[envelope.MaxIDLen-4:]}
	var ids []string
	if err := s.Snapshots(ctx, f, func(r *projector.StoredSnapshot) error { ids = append(ids, r.SessionID); return nil }); err != nil || !slices.Equal(sessions(ids), wantSessions) {
		t.Errorf("snapshots: %v, %v; want %v", sessions(ids), err, wantSessions)
	}
	heads, err := s.Heads(ctx, f)
	ids = nil
	for _, h := range heads {
		ids = append(ids, h.SessionID)
	}
	if err != nil || !slices.Equal(sessions(ids), wantSessions) {
		t.Errorf("heads: %v, %v; want %v", sessions(ids), err, wantSessions)
	}
	if dr, ok := s.(projector.DecisionReader); ok {
		ids = nil
		if err := dr.Decisions(ctx, f, func(r *projector.StoredDecision) error { ids = append(ids, r.SessionID); return nil }); err != nil || !slices.Equal(sessions(ids), wantSessions) {
			t.Errorf("decisions: %v, %v; want %v", sessions(ids), err, wantSessions)
		}
	}
}

// testClientTimes: ts_unix_ms is the client's, any positive int64. One
// batch spanning 150 months (ClickHouse refuses more than 100 partitions in
// one insert block by default) and a time past the Date type's range is
// written whole; ts_unix_ms is kept exactly and event_date stops at
// projector.LastDate.
func testClientTimes(t *testing.T, d Dialect, s Store) {
	ctx := context.Background()
	first := Vectors(t)[0]
	if first.Seq != 1 {
		t.Fatalf("first vector has seq %d", first.Seq)
	}
	var events []*envelope.Event
	for i := range 151 {
		ev := *first
		ev.SessionID = fmt.Sprintf("times-%03d", i)
		ev.TsUnixMs = time.Date(1971+i/12, time.Month(1+i%12), 15, 0, 0, 0, 0, time.UTC).UnixMilli()
		if i == 150 {
			ev.TsUnixMs = 1<<53 - 1 // the largest the envelope takes: year 287396
		}
		events = append(events, &ev)
	}
	if err := s.Write(ctx, BatchOf(t, events)); err != nil {
		t.Fatal(err)
	}
	if n := count(t, s, "SELECT count() FROM audit_events "+d.Final+" WHERE session_id LIKE 'times-%'"); n != 151 {
		t.Fatalf("%d events stored, want 151", n)
	}
	if n := count(t, s, "SELECT count() FROM session_snapshots "+d.Final+" WHERE session_id LIKE 'times-%'"); n != 151 {
		t.Fatalf("%d snapshots stored, want 151", n)
	}
	_, rows, err := s.Query(ctx, "SELECT ts_unix_ms, event_date FROM audit_events WHERE session_id IN ('times-000', 'times-150') ORDER BY session_id")
	if err != nil {
		t.Fatal(err)
	}
	if fmt.Sprint(rows) != "[[32745600000 1971-01-15] [9007199254740991 2105-12-31]]" {
		t.Fatalf("ts_unix_ms, event_date = %v", rows)
	}
}

// testFirstDay: an event of 1970-01-01 (ts_unix_ms 1, the smallest the
// envelope takes) reads back with event_date 1970-01-01, so its columns
// still match what was hashed (ClickHouse 18.16 prints that day, day 0 of
// Date, as 0000-00-00 with toString).
func testFirstDay(t *testing.T, s Store) {
	ctx := context.Background()
	ev := *Vectors(t)[0]
	ev.TsUnixMs = 1
	if err := s.Write(ctx, BatchOf(t, []*envelope.Event{&ev})); err != nil {
		t.Fatal(err)
	}
	rows := all(t, s, projector.Filter{})
	if len(rows) != 1 {
		t.Fatalf("%d rows", len(rows))
	}
	if col, ok := rows[0].ColumnsMatch(); !ok || rows[0].EventDate != "1970-01-01" {
		t.Errorf("event_date %q: column %s disagrees with the record", rows[0].EventDate, col)
	}
}

// testNoTimestamp: a Kafka record may carry no timestamp (-1, which Kafka
// accepts from any producer), and a rejection's event_date is the day of
// its record's timestamp: both stores hold the first day a Date has,
// 1970-01-01, rather than a day before it (which ClickHouse's Date wraps
// to 2149-06-06).
func testNoTimestamp(t *testing.T, d Dialect, s Store) {
	ctx := context.Background()
	r := rejection()
	r.RejectedUnixMs = -1
	if err := s.Write(ctx, &projector.Batch{Rejected: []projector.RejectedRow{r}}); err != nil {
		t.Fatal(err)
	}
	_, rows, err := s.Query(ctx, "SELECT rejected_unix_ms, event_date FROM rejected_records "+d.Final)
	if err != nil {
		t.Fatal(err)
	}
	if fmt.Sprint(rows) != "[[-1 1970-01-01]]" {
		t.Errorf("rejected_unix_ms, event_date = %v, want [[-1 1970-01-01]]", rows)
	}
}

// Vectors returns the sealed records of schemas/testdata/chain/vectors.ndjson.
func Vectors(t testing.TB) []*envelope.Event {
	t.Helper()
	_, file, _, _ := runtime.Caller(0)
	f, err := os.Open(filepath.Join(filepath.Dir(file), "..", "..", "schemas", "testdata", "chain", "vectors.ndjson"))
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	var out []*envelope.Event
	sc := bufio.NewScanner(f)
	sc.Buffer(nil, 1<<20)
	dec := envelope.Decoder{Sealed: true}
	for sc.Scan() {
		var v struct {
			Record json.RawMessage `json:"record"`
		}
		if err := json.Unmarshal(sc.Bytes(), &v); err != nil {
			t.Fatal(err)
		}
		ev, err := dec.Decode(v.Record)
		if err != nil {
			t.Fatal(err)
		}
		out = append(out, ev)
	}
	if len(out) == 0 {
		t.Fatal("no vectors")
	}
	return out
}

// BatchOf builds the rows the projector would write for sealed events
// (each session's events in order, from its first): events, decisions,
// the final snapshot of each session and its head.
func BatchOf(t testing.TB, events []*envelope.Event) *projector.Batch {
	t.Helper()
	b := &projector.Batch{}
	snaps := map[projector.SessionKey]*session.Snapshot{}
	var order []projector.SessionKey
	for i, ev := range events {
		k := projector.SessionKey{TenantID: ev.TenantID, SessionID: ev.SessionID}
		s := snaps[k]
		if s == nil {
			s = session.New(ev.TenantID, ev.SessionID)
			snaps[k] = s
			order = append(order, k)
		}
		b.Events = append(b.Events, projector.NewEventRow(ev, 0, int64(i)))
		if d, ok := projector.DecisionRowOf(s, ev); ok {
			b.Decisions = append(b.Decisions, d)
		}
		if err := s.Apply(ev); err != nil {
			t.Fatal(err)
		}
	}
	for _, k := range order {
		r, err := projector.NewSnapshotRow(snaps[k])
		if err != nil {
			t.Fatal(err)
		}
		b.Snapshots = append(b.Snapshots, r)
		b.Heads = append(b.Heads, chain.Head{TenantID: k.TenantID, SessionID: k.SessionID, Seq: snaps[k].LastSeq, Hash: lastHash(events, k)})
	}
	return b
}

func lastHash(events []*envelope.Event, k projector.SessionKey) string {
	h := ""
	for _, ev := range events {
		if ev.TenantID == k.TenantID && ev.SessionID == k.SessionID {
			h = ev.Hash
		}
	}
	return h
}

func rejection() projector.RejectedRow {
	return projector.RejectedRow{RejectedUnixMs: 1767225600000, Rejection: pipeline.Rejection{V: 1, Stage: "decider", Reason: "SEQ_GAP",
		Detail: "expected seq 3", TenantID: "acme", SessionID: "sess-1", Seq: 5, Expected: 3, Topic: "aegis.events",
		Partition: 2, Offset: 41, Key: "acme/sess-1", OriginalBase64: []byte{0xff, 0x00}}}
}

func all(t testing.TB, s Store, f projector.Filter) []*projector.EventRow {
	t.Helper()
	var out []*projector.EventRow
	if err := s.Events(context.Background(), f, func(r *projector.EventRow) error { out = append(out, r); return nil }); err != nil {
		t.Fatal(err)
	}
	return out
}

func count(t testing.TB, s Store, query string) int64 {
	t.Helper()
	_, rows, err := s.Query(context.Background(), query)
	if err != nil {
		t.Fatalf("%s: %v", query, err)
	}
	if len(rows) != 1 || len(rows[0]) != 1 {
		t.Fatalf("%s: %d rows", query, len(rows))
	}
	n, ok := rows[0][0].(int64)
	if !ok {
		t.Fatalf("%s: %T %v, want int64", query, rows[0][0], rows[0][0])
	}
	return n
}

func testRoundTrip(t *testing.T, s Store) {
	ctx := context.Background()
	vec := Vectors(t)
	if err := s.Write(ctx, BatchOf(t, vec)); err != nil {
		t.Fatal(err)
	}
	rows := all(t, s, projector.Filter{})
	if len(rows) != len(vec) {
		t.Fatalf("read %d rows, wrote %d", len(rows), len(vec))
	}
	want := map[string][]byte{}
	for _, ev := range vec {
		b, err := ev.AppendCanonical(nil, true)
		if err != nil {
			t.Fatal(err)
		}
		want[ev.Hash] = b
	}
	v := chain.NewVerifier()
	for _, r := range rows {
		if r.Invalid != nil {
			t.Fatalf("seq %d: %v", r.Event.Seq, r.Invalid)
		}
		if col, ok := r.ColumnsMatch(); !ok {
			t.Errorf("%s/%d: column %s disagrees with the record", r.Event.SessionID, r.Event.Seq, col)
		}
		got, err := r.Event.AppendCanonical(nil, true)
		if err != nil {
			t.Fatal(err)
		}
		if !bytes.Equal(got, want[r.Event.Hash]) {
			t.Errorf("rebuilt record differs:\n got %s\nwant %s", got, want[r.Event.Hash])
		}
		if f := v.Add(r.Event); f != nil {
			t.Errorf("rebuilt chain fails: %v", f)
		}
	}
	heads, err := s.Heads(ctx, projector.Filter{})
	if err != nil {
		t.Fatal(err)
	}
	if fs := v.CheckHeads(heads); len(fs) != 0 || len(heads) != len(v.Heads()) {
		t.Errorf("heads %v: failures %v", heads, fs)
	}
}

func testRedelivery(t *testing.T, d Dialect, s Store) {
	ctx := context.Background()
	b := BatchOf(t, Vectors(t))
	b.Rejected = []projector.RejectedRow{rejection()}
	for range 3 {
		if err := s.Write(ctx, b); err != nil {
			t.Fatal(err)
		}
	}
	for table, want := range map[string]int{"audit_events": len(b.Events), "decisions": len(b.Decisions),
		"session_snapshots": len(b.Snapshots), "rejected_records": 1, "chain_heads": len(b.Heads)} {
		if got := count(t, s, fmt.Sprintf("SELECT count(*) FROM %s %s", table, d.Final)); got != int64(want) {
			t.Errorf("%s: %d rows visible after 3 writes, want %d", table, got, want)
		}
	}
	_, rows, err := s.Query(ctx, "SELECT original_base64, source_offset, expected_seq FROM rejected_records "+d.Final)
	if err != nil {
		t.Fatal(err)
	}
	if fmt.Sprint(rows) != "[[/wA= 41 3]]" {
		t.Errorf("rejected row %v", rows)
	}
}

func testForward(t *testing.T, d Dialect, s Store) {
	ctx := context.Background()
	vec := Vectors(t)
	var first []*envelope.Event
	for _, ev := range vec {
		if ev.TenantID == vec[0].TenantID && ev.SessionID == vec[0].SessionID {
			first = append(first, ev)
		}
	}
	if len(first) < 2 {
		t.Fatal("the first vector session needs two events")
	}
	full := BatchOf(t, first)
	older := BatchOf(t, first[:1])
	for _, b := range []*projector.Batch{full, {Snapshots: older.Snapshots, Heads: older.Heads}} {
		if err := s.Write(ctx, b); err != nil {
			t.Fatal(err)
		}
	}
	_, rows, err := s.Query(ctx, "SELECT last_seq, events, snapshot_hash FROM session_snapshots "+d.Final)
	if err != nil {
		t.Fatal(err)
	}
	want := fmt.Sprint([][]any{{int64(len(first)), int64(len(first)), full.Snapshots[0].Hash}})
	if fmt.Sprint(rows) != want {
		t.Errorf("snapshot after an older write: %v, want %v", rows, want)
	}
	heads, err := s.Heads(ctx, projector.Filter{})
	if err != nil {
		t.Fatal(err)
	}
	if len(heads) != 1 || heads[0] != full.Heads[0] {
		t.Errorf("heads after an older write: %v, want %v", heads, full.Heads)
	}
}

// snapshots reads every session_snapshots row f selects.
func snapshots(t testing.TB, s Store, f projector.Filter) []projector.StoredSnapshot {
	t.Helper()
	var out []projector.StoredSnapshot
	if err := s.Snapshots(context.Background(), f, func(r *projector.StoredSnapshot) error { out = append(out, *r); return nil }); err != nil {
		t.Fatal(err)
	}
	return out
}

// testSnapshotsRead: the session_snapshots rows read back exactly as
// written, the latest version of each session only (an older one written
// after it, as a redelivered earlier batch is, included), selected as the
// events are.
func testSnapshotsRead(t *testing.T, s Store) {
	ctx := context.Background()
	vec := Vectors(t)
	b := BatchOf(t, vec)
	first := b.Snapshots[0]
	older := BatchOf(t, vec[:1]).Snapshots[0]
	if older.TenantID != first.TenantID || older.SessionID != first.SessionID || older.LastSeq >= first.LastSeq {
		t.Fatal("the first vector has no later event in its session")
	}
	for _, w := range []*projector.Batch{{Snapshots: []projector.SnapshotRow{older}}, b, b, {Snapshots: []projector.SnapshotRow{older}}} {
		if err := s.Write(ctx, w); err != nil {
			t.Fatal(err)
		}
	}
	got := snapshots(t, s, projector.Filter{})
	// Identical copies of the latest version may come back (ClickHouse
	// before a merge); the distinct rows are the written ones, in order.
	got = slices.CompactFunc(got, func(a, b projector.StoredSnapshot) bool { return a == b })
	if len(got) != len(b.Snapshots) {
		t.Fatalf("%d rows read, %d sessions written: %+v", len(got), len(b.Snapshots), got)
	}
	want := slices.Clone(b.Snapshots)
	slices.SortFunc(want, func(x, y projector.SnapshotRow) int {
		if x.TenantID != y.TenantID {
			return strings.Compare(x.TenantID, y.TenantID)
		}
		return strings.Compare(x.SessionID, y.SessionID)
	})
	for i := range got {
		if got[i].Invalid != "" || got[i].SnapshotRow != want[i] {
			t.Errorf("row %d read back as %+v, written %+v", i, got[i], want[i])
		}
	}
	last := vec[len(vec)-1]
	var maxTs int64
	for _, ev := range vec {
		maxTs = max(maxTs, ev.TsUnixMs)
	}
	for _, c := range []struct {
		name string
		f    projector.Filter
	}{
		{"tenant", projector.Filter{TenantID: last.TenantID}},
		{"session", projector.Filter{TenantID: last.TenantID, SessionID: last.SessionID, AfterSeq: 1}},
		{"sessions", projector.Filter{Sessions: []projector.SessionKey{{TenantID: last.TenantID, SessionID: last.SessionID}, {TenantID: "none", SessionID: "x"}}}},
		{"since", projector.Filter{SinceUnixMs: maxTs}},
		{"nothing", projector.Filter{TenantID: "nobody"}},
	} {
		var keys, rowKeys []string
		for _, r := range all(t, s, c.f) {
			if k := r.Event.TenantID + "/" + r.Event.SessionID; !slices.Contains(keys, k) {
				keys = append(keys, k)
			}
		}
		for _, r := range snapshots(t, s, c.f) {
			if k := r.TenantID + "/" + r.SessionID; !slices.Contains(rowKeys, k) {
				rowKeys = append(rowKeys, k)
			}
		}
		if !slices.Equal(rowKeys, keys) {
			t.Errorf("%s: snapshots of %v, events of %v", c.name, rowKeys, keys)
		}
	}
}

func testFilters(t *testing.T, s Store) {
	ctx := context.Background()
	vec := Vectors(t)
	if err := s.Write(ctx, BatchOf(t, vec)); err != nil {
		t.Fatal(err)
	}
	keys := func(rows []*projector.EventRow) []string {
		var out []string
		for _, r := range rows {
			k := r.Event.TenantID + "/" + r.Event.SessionID
			if !slices.Contains(out, k) {
				out = append(out, k)
			}
		}
		return out
	}
	last := vec[len(vec)-1]
	var maxTs int64
	for _, ev := range vec {
		maxTs = max(maxTs, ev.TsUnixMs)
	}
	cases := []struct {
		name string
		f    projector.Filter
		want int // events
	}{
		{"all", projector.Filter{}, len(vec)},
		{"tenant", projector.Filter{TenantID: vec[0].TenantID}, countIf(vec, func(e *envelope.Event) bool { return e.TenantID == vec[0].TenantID })},
		{"session", projector.Filter{TenantID: last.TenantID, SessionID: last.SessionID}, countIf(vec, func(e *envelope.Event) bool {
			return e.TenantID == last.TenantID && e.SessionID == last.SessionID
		})},
		{"sessions", projector.Filter{Sessions: []projector.SessionKey{{TenantID: last.TenantID, SessionID: last.SessionID}, {TenantID: "none", SessionID: "x"}}},
			countIf(vec, func(e *envelope.Event) bool { return e.TenantID == last.TenantID && e.SessionID == last.SessionID })},
		{"since keeps whole sessions", projector.Filter{SinceUnixMs: maxTs}, countIf(vec, func(e *envelope.Event) bool {
			for _, o := range vec {
				if o.TsUnixMs == maxTs && o.TenantID == e.TenantID && o.SessionID == e.SessionID {
					return true
				}
			}
			return false
		})},
		{"nothing", projector.Filter{TenantID: "nobody"}, 0},
		{"after seq", projector.Filter{TenantID: last.TenantID, SessionID: last.SessionID, AfterSeq: 1}, countIf(vec, func(e *envelope.Event) bool {
			return e.TenantID == last.TenantID && e.SessionID == last.SessionID && e.Seq > 1
		})},
		{"a page: after seq, at most 2", projector.Filter{TenantID: last.TenantID, SessionID: last.SessionID, AfterSeq: 1, Limit: 2}, min(2, countIf(vec, func(e *envelope.Event) bool {
			return e.TenantID == last.TenantID && e.SessionID == last.SessionID && e.Seq > 1
		}))},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			rows := all(t, s, c.f)
			if len(rows) != c.want {
				t.Errorf("%d rows (sessions %v), want %d", len(rows), keys(rows), c.want)
			}
			for i := 1; i < len(rows); i++ {
				a, b := rows[i-1].Event, rows[i].Event
				if a.TenantID > b.TenantID || a.TenantID == b.TenantID && (a.SessionID > b.SessionID || a.SessionID == b.SessionID && a.Seq >= b.Seq) {
					t.Errorf("rows out of order at %d", i)
				}
			}
			// Heads select the same sessions as the events: a verify
			// of a selection reads only the selection's heads.
			heads, err := s.Heads(context.Background(), c.f)
			if err != nil {
				t.Fatal(err)
			}
			var hk []string
			for _, h := range heads {
				hk = append(hk, h.TenantID+"/"+h.SessionID)
			}
			if !slices.Equal(hk, keys(rows)) {
				t.Errorf("heads of sessions %v, want %v", hk, keys(rows))
			}
		})
	}
}

func countIf(vec []*envelope.Event, pred func(*envelope.Event) bool) int {
	n := 0
	for _, e := range vec {
		if pred(e) {
			n++
		}
	}
	return n
}

func testQuery(t *testing.T, s Store) {
	ctx := context.Background()
	if err := s.Write(ctx, BatchOf(t, Vectors(t))); err != nil {
		t.Fatal(err)
	}
	cols, rows, err := s.Query(ctx, "SELECT tenant_id, seq, event_date FROM audit_events WHERE seq = 1 ORDER BY tenant_id, session_id LIMIT 1")
	if err != nil {
		t.Fatal(err)
	}
	if fmt.Sprint(cols) != "[tenant_id seq event_date]" || len(rows) != 1 {
		t.Fatalf("columns %v rows %v", cols, rows)
	}
	if _, ok := rows[0][0].(string); !ok {
		t.Errorf("tenant_id is %T", rows[0][0])
	}
	if rows[0][1] != int64(1) {
		t.Errorf("seq is %T %v, want int64 1", rows[0][1], rows[0][1])
	}
	if d, ok := rows[0][2].(string); !ok || len(d) != len("2006-01-02") {
		t.Errorf("event_date is %T %v, want YYYY-MM-DD", rows[0][2], rows[0][2])
	}
	tenant, day := rows[0][0], rows[0][2]
	// NULLs and nullable columns (ClickHouse's Nullable) are plain values
	// or nil, as for any other column.
	_, rows, err = s.Query(ctx, "SELECT CASE WHEN seq = 1 THEN seq ELSE NULL END AS a, CASE WHEN seq = 1 THEN NULL ELSE seq END AS b, "+
		"CASE WHEN seq = 1 THEN event_date ELSE NULL END AS c, CASE WHEN seq = 1 THEN tenant_id ELSE NULL END AS d, NULL AS e "+
		"FROM audit_events WHERE seq = 1 ORDER BY tenant_id, session_id LIMIT 1")
	if err != nil {
		t.Fatal(err)
	}
	if len(rows) != 1 || rows[0][0] != int64(1) || rows[0][1] != nil || rows[0][2] != day || rows[0][3] != tenant || rows[0][4] != nil {
		t.Errorf("nullable values %#v, want [1 nil %s %s nil]", rows, day, tenant)
	}
	if _, _, err := s.Query(ctx, "INSERT INTO chain_heads (tenant_id, session_id, seq, hash) VALUES ('x', 'y', 1, 'z')"); err == nil {
		t.Error("Query ran a write")
	}
	if _, _, err := s.Query(ctx, "SELECT no_such_column FROM audit_events"); err == nil {
		t.Error("Query accepted a bad column")
	}
}

// ServiceAddr returns the value of the environment variable naming a real
// service (AEGIS_TEST_CLICKHOUSE, AEGIS_TEST_KAFKA) for an integration
// test. Under -short the test is skipped; otherwise a missing variable fails
// it, so `make test` cannot pass without the services it promises.
func ServiceAddr(t testing.TB, env string) string {
	t.Helper()
	if testing.Short() {
		t.Skipf("integration test: needs %s; skipped under -short", env)
	}
	v := os.Getenv(env)
	if v == "" {
		t.Fatalf("integration test: %s is not set (make test sets it and starts the service; use -short to skip)", env)
	}
	return v
}
