package projector_test

import (
	"context"
	"encoding/json"
	"fmt"
	"io"
	"log/slog"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"

	"aegis.dev/aegis/decider/session"
	"aegis.dev/aegis/internal/ctl"
	"aegis.dev/aegis/internal/pipeline"
	"aegis.dev/aegis/internal/stream"
	"aegis.dev/aegis/projector"
	"aegis.dev/aegis/projector/sqlstore"
	"aegis.dev/aegis/schemas/canon"
	"aegis.dev/aegis/schemas/chain"
	"aegis.dev/aegis/schemas/envelope"
)

// kafka is an embedded broker with the pipeline's topics under a prefix.
type kafka struct {
	brokers []string
	topics  pipeline.Topics
	prefix  string
}

func startKafka(tb testing.TB, partitions int32) kafka {
	tb.Helper()
	emb, err := stream.StartEmbedded(context.Background(), stream.EmbeddedConfig{Addr: "127.0.0.1:0", DataDir: tb.TempDir(), Partitions: partitions})
	if err != nil {
		tb.Fatal(err)
	}
	tb.Cleanup(emb.Close)
	return newTopics(tb, emb.Brokers(), partitions, fmt.Sprintf("ptest%d.", time.Now().UnixNano()))
}

func newTopics(tb testing.TB, brokers []string, partitions int32, prefix string) kafka {
	tb.Helper()
	t := pipeline.NewTopics(prefix)
	if err := stream.EnsureTopics(context.Background(), brokers, t.Specs(partitions, envelope.DefaultMaxEventBytes)); err != nil {
		tb.Fatal(err)
	}
	return kafka{brokers: brokers, topics: t, prefix: prefix}
}

// sealedSessions seals sessions×perSession events shaped like agent
// traffic (proposals with decisions, tool results that taint).
func sealedSessions(tb testing.TB, tenant string, sessions, from, to int) []*envelope.Event {
	tb.Helper()
	var out []*envelope.Event
	for s := range sessions {
		var head *chain.Head
		for i := 1; i <= to; i++ {
			e := &envelope.Event{V: 1, TenantID: tenant, SessionID: fmt.Sprintf("s%05d", s), Seq: uint64(i), TsUnixMs: 1767225600000 + int64(i)*1000}
			switch i % 4 {
			case 1:
				e.Type, e.Payload = envelope.ModelCallStarted, json.RawMessage(`{"call_id":"m","model":"gpt-x"}`)
			case 2:
				e.Type, e.Payload = envelope.ToolCallProposed, json.RawMessage(fmt.Sprintf(`{"args":{},"call_id":"c%d","tool_name":"web_fetch"}`, i))
				e.Decision = &envelope.Decision{Outcome: envelope.Deny, Reason: envelope.ReasonEgressDeny, PolicyRevision: "sha256:p", ManifestDigest: "sha256:m", InputDigest: "sha256:i"}
			case 3:
				e.Type, e.Payload = envelope.ToolResult, json.RawMessage(`{"call_id":"c","tool_name":"web_fetch"}`)
			default:
				e.Type, e.Payload = envelope.MemoryWrite, json.RawMessage(`{"key":"k"}`)
			}
			h, err := chain.Link(head, e)
			if err != nil {
				tb.Fatal(err)
			}
			head = &h
			if i >= from {
				out = append(out, e)
			}
		}
	}
	return out
}

// produce writes sealed events and their heads as the sealer would.
func produce(tb testing.TB, k kafka, events []*envelope.Event) {
	tb.Helper()
	p, err := stream.NewProducer(stream.ProducerConfig{Brokers: k.brokers, Linger: 5 * time.Millisecond})
	if err != nil {
		tb.Fatal(err)
	}
	defer p.Close()
	ctx := context.Background()
	var msgs []stream.Message
	heads := map[string]chain.Head{}
	var order []string
	for _, e := range events {
		v, err := e.AppendCanonical(nil, true)
		if err != nil {
			tb.Fatal(err)
		}
		msgs = append(msgs, stream.Message{Topic: k.topics.Sealed, Key: e.Key(), Value: v})
		if _, ok := heads[string(e.Key())]; !ok {
			order = append(order, string(e.Key()))
		}
		heads[string(e.Key())] = chain.Head{TenantID: e.TenantID, SessionID: e.SessionID, Seq: e.Seq, Hash: e.Hash}
		if len(msgs) == 5000 {
			if err := p.Produce(ctx, msgs...); err != nil {
				tb.Fatal(err)
			}
			msgs = msgs[:0]
		}
	}
	for _, key := range order {
		v, _ := json.Marshal(heads[key])
		msgs = append(msgs, stream.Message{Topic: k.topics.ChainHeads, Key: []byte(key), Value: v})
	}
	if err := p.Produce(ctx, msgs...); err != nil {
		tb.Fatal(err)
	}
}

// openSQLite opens an audit store in a temp dir, closed when the test ends.
func openSQLite(tb testing.TB) *sqlstore.Store {
	tb.Helper()
	st, err := sqlstore.Open(context.Background(), filepath.Join(tb.TempDir(), "audit.db"))
	if err != nil {
		tb.Fatal(err)
	}
	tb.Cleanup(func() { _ = st.Close() })
	return st
}

// runProjector runs a projector until the test ends or stop is called.
func runProjector(tb testing.TB, k kafka, group string, st projector.Store) (stop func()) {
	tb.Helper()
	return startProjector(tb, projector.Config{Brokers: k.brokers, Group: group, Topics: k.topics, BatchSize: 700,
		FlushInterval: 100 * time.Millisecond, RetryBackoff: 10 * time.Millisecond}, st, nil)
}

// startProjector runs a projector with cfg, its metrics in reg (may be
// nil), until the test ends or stop is called; stop reports Run's error.
func startProjector(tb testing.TB, cfg projector.Config, st projector.Store, reg prometheus.Registerer) (stop func()) {
	tb.Helper()
	p, err := projector.New(cfg, st, reg, slog.New(slog.NewTextHandler(io.Discard, nil)))
	if err != nil {
		tb.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- p.Run(ctx) }()
	var stopped bool
	stop = func() {
		if stopped {
			return
		}
		stopped = true
		cancel()
		if err := <-done; err != nil {
			tb.Errorf("projector: %v", err)
		}
	}
	tb.Cleanup(stop)
	return stop
}

func queryInt(tb testing.TB, q projector.Querier, sql string) int64 {
	tb.Helper()
	_, rows, err := q.Query(context.Background(), sql)
	if err != nil {
		tb.Fatalf("%s: %v", sql, err)
	}
	return rows[0][0].(int64)
}

func waitFor(tb testing.TB, what string, timeout time.Duration, cond func() bool) {
	tb.Helper()
	deadline := time.Now().Add(timeout)
	for !cond() {
		if time.Now().After(deadline) {
			tb.Fatalf("timed out after %s waiting for %s", timeout, what)
		}
		time.Sleep(50 * time.Millisecond)
	}
}

// snapshotHash folds the events of one session as the decider does.
func snapshotHash(tb testing.TB, events []*envelope.Event, tenant, sessionID string) string {
	s := session.New(tenant, sessionID)
	for _, e := range events {
		if e.TenantID == tenant && e.SessionID == sessionID {
			if err := s.Apply(e); err != nil {
				tb.Fatal(err)
			}
		}
	}
	h, err := s.Hash()
	if err != nil {
		tb.Fatal(err)
	}
	return h
}

// TestProjectorExactlyOnceSQLite: every sealed record lands once; a second
// group re-reading everything (a full redelivery) changes nothing; a
// restarted projector rebuilds snapshots from the store and continues them
// exactly; undecodable records land in rejected_records, never skipped.
func TestProjectorExactlyOnceSQLite(t *testing.T) {
	k := startKafka(t, 3)
	st := openSQLite(t)
	const sessions = 40
	first := sealedSessions(t, "acme", sessions, 1, 30)
	produce(t, k, first)
	bad := stream.Message{Topic: k.topics.Sealed, Key: []byte("acme/zz"), Value: []byte(`{"not":"sealed"}`)}
	rej, _ := json.Marshal(pipeline.Rejection{V: 1, Stage: "decider", Reason: "SEQ_GAP", TenantID: "acme", SessionID: "s00001", Seq: 99, Topic: k.topics.Events, Offset: 7})
	p, err := stream.NewProducer(stream.ProducerConfig{Brokers: k.brokers})
	if err != nil {
		t.Fatal(err)
	}
	if err := p.Produce(context.Background(), bad, stream.Message{Topic: k.topics.Rejected, Key: []byte("acme/s00001"), Value: rej}); err != nil {
		t.Fatal(err)
	}
	p.Close()

	stop := runProjector(t, k, k.prefix+"projector", st)
	waitFor(t, "the first 1200 events", 30*time.Second, func() bool {
		return queryInt(t, st, "SELECT count(*) FROM audit_events") == int64(len(first))
	})
	waitFor(t, "rejections", 10*time.Second, func() bool { return queryInt(t, st, "SELECT count(*) FROM rejected_records") == 2 })
	stop()

	// A second group reads everything again: nothing visible changes.
	stop2 := runProjector(t, k, k.prefix+"projector-replay", st)
	time.Sleep(2 * time.Second)
	stop2()

	// The first group resumes with new events: snapshots continue from the
	// stored history.
	all := sealedSessions(t, "acme", sessions, 1, 45)
	produce(t, k, sealedSessions(t, "acme", sessions, 31, 45))
	runProjector(t, k, k.prefix+"projector", st)
	waitFor(t, "all events", 30*time.Second, func() bool {
		return queryInt(t, st, "SELECT count(*) FROM audit_events") == int64(len(all))
	})
	waitFor(t, "snapshots", 10*time.Second, func() bool {
		return queryInt(t, st, "SELECT count(*) FROM session_snapshots WHERE last_seq = 45") == sessions
	})
	checks := map[string]int64{
		"SELECT count(*) FROM audit_events":                                                                int64(len(all)),
		"SELECT count(*) FROM decisions":                                                                   int64(sessions * 11),
		"SELECT count(*) FROM decisions WHERE tainted = 1":                                                 int64(sessions * 10),
		"SELECT count(*) FROM chain_heads WHERE seq = 45":                                                  sessions,
		"SELECT count(*) FROM rejected_records WHERE stage = 'projector' AND reason = 'BAD_SEALED_RECORD'": 1,
		"SELECT count(*) FROM rejected_records WHERE stage = 'decider'":                                    1,
	}
	for q, want := range checks {
		if got := queryInt(t, st, q); got != want {
			t.Errorf("%s = %d, want %d", q, got, want)
		}
	}
	_, rows, err := st.Query(context.Background(), "SELECT snapshot_hash FROM session_snapshots WHERE session_id = 's00007'")
	if err != nil {
		t.Fatal(err)
	}
	if want := snapshotHash(t, all, "acme", "s00007"); len(rows) != 1 || rows[0][0] != want {
		t.Errorf("snapshot after a restart: %v, want %s", rows, want)
	}
}

// TestProjectorStoresLastHeadOfBatch: of several heads of a session in one
// batch only the last is decoded and written; a tombstone records nothing
// and a malformed head is rejected, and in both cases the head before it
// counts.
func TestProjectorStoresLastHeadOfBatch(t *testing.T) {
	k := startKafka(t, 1)
	st := openSQLite(t)
	head := func(sid string, seq uint64) stream.Message {
		v, _ := json.Marshal(chain.Head{TenantID: "acme", SessionID: sid, Seq: seq, Hash: fmt.Sprintf("%064d", seq)})
		return stream.Message{Topic: k.topics.ChainHeads, Key: []byte("acme/" + sid), Value: v}
	}
	msgs := []stream.Message{head("a", 1), head("a", 2), head("a", 3), head("b", 4), head("b", 5),
		{Topic: k.topics.ChainHeads, Key: []byte("acme/b")}, // tombstone
		head("c", 6), {Topic: k.topics.ChainHeads, Key: []byte("acme/c"), Value: []byte(`{"seq":"x"}`)}}
	produceMessages(t, k.brokers, msgs...)
	reg := prometheus.NewRegistry()
	stop := startProjector(t, projector.Config{Brokers: k.brokers, Group: k.prefix + "projector", Topics: k.topics, BatchSize: len(msgs),
		FlushInterval: 5 * time.Second}, st, reg)
	waitFor(t, "the rejection", 20*time.Second, func() bool { return queryInt(t, st, "SELECT count(*) FROM rejected_records") == 1 })
	stop()
	heads, err := st.Heads(context.Background(), projector.Filter{})
	if err != nil {
		t.Fatal(err)
	}
	if got := fmt.Sprint(heads); len(heads) != 3 || heads[0].SessionID != "a" || heads[0].Seq != 3 ||
		heads[1].SessionID != "b" || heads[1].Seq != 5 || heads[2].SessionID != "c" || heads[2].Seq != 6 {
		t.Errorf("heads = %s, want a@3, b@5 and c@6", got)
	}
	if got := queryInt(t, st, "SELECT count(*) FROM rejected_records WHERE reason = '"+projector.ReasonBadHead+"'"); got != 1 {
		t.Errorf("bad head rejections = %d, want 1", got)
	}
	if written := rowsWritten(t, reg, "chain_heads"); written != 3 {
		t.Errorf("chain_heads rows written = %v, want 3 (one per session)", written)
	}
}

// TestProjectorRejectsSeqsNoEventCanHave: a chain head or a rejection that
// names a seq above 2^53-1 (no envelope has one; only another Kafka writer
// can put it there) is rejected, not stored: SQLite would have stored a seq
// above 2^63 as a negative number and ClickHouse as the number itself.
func TestProjectorRejectsSeqsNoEventCanHave(t *testing.T) {
	k := startKafka(t, 1)
	st := openSQLite(t)
	head := func(sid string, seq uint64) stream.Message {
		v, _ := json.Marshal(chain.Head{TenantID: "acme", SessionID: sid, Seq: seq, Hash: fmt.Sprintf("%064d", 1)})
		return stream.Message{Topic: k.topics.ChainHeads, Key: []byte("acme/" + sid), Value: v}
	}
	rejection := func(seq, expected uint64) stream.Message {
		v, _ := json.Marshal(pipeline.Rejection{V: 1, Stage: "sealer", Reason: "SEQ_GAP", TenantID: "acme", SessionID: "r", Seq: seq, Expected: expected, Topic: k.topics.Decided})
		return stream.Message{Topic: k.topics.Rejected, Key: []byte("acme/r"), Value: v}
	}
	msgs := []stream.Message{
		head("a", 7), head("a", 1<<63+1), // the forged head is rejected, a@7 counts
		head("b", canon.MaxSafeInteger),
		rejection(1<<63+1, 0), rejection(3, 1<<63), rejection(canon.MaxSafeInteger, canon.MaxSafeInteger+1),
	}
	produceMessages(t, k.brokers, msgs...)
	stop := startProjector(t, projector.Config{Brokers: k.brokers, Group: k.prefix + "projector", Topics: k.topics, BatchSize: len(msgs),
		FlushInterval: 5 * time.Second}, st, prometheus.NewRegistry())
	waitFor(t, "the rows", 20*time.Second, func() bool { return queryInt(t, st, "SELECT count(*) FROM rejected_records") == 4 })
	stop()
	heads, err := st.Heads(context.Background(), projector.Filter{})
	if err != nil {
		t.Fatal(err)
	}
	if got := fmt.Sprint(heads); len(heads) != 2 || heads[0].Seq != 7 || heads[1].Seq != canon.MaxSafeInteger {
		t.Errorf("heads = %s, want a@7 and b@2^53-1", got)
	}
	for q, want := range map[string]int64{
		"SELECT count(*) FROM rejected_records WHERE reason = '" + projector.ReasonBadHead + "'":      1,
		"SELECT count(*) FROM rejected_records WHERE reason = '" + projector.ReasonBadRejection + "'": 2,
		"SELECT count(*) FROM rejected_records WHERE reason = 'SEQ_GAP' AND seq = 9007199254740991":   1,
		"SELECT count(*) FROM rejected_records WHERE seq < 0 OR expected_seq < 0":                     0,
	} {
		if got := queryInt(t, st, q); got != want {
			t.Errorf("%s = %d, want %d", q, got, want)
		}
	}
}

// TestProjectorRejectsJSONThatIsNoRejection: a record on the rejected topic
// that is JSON but names no stage, reason or source topic (null, {}, an
// object of other members; only another Kafka writer can put it there) is
// a BAD_REJECTION_RECORD that keeps its bytes, like one that is not JSON.
// Stored as a rejection it kept nothing of the record, and every such
// record had the same identity, so all but one of them vanished.
func TestProjectorRejectsJSONThatIsNoRejection(t *testing.T) {
	k := startKafka(t, 1)
	st := openSQLite(t)
	good, _ := json.Marshal(pipeline.Rejection{V: 1, Stage: "decider", Reason: "SEQ_GAP", TenantID: "acme", SessionID: "r", Seq: 3, Expected: 2,
		Topic: k.topics.Events, Offset: 9})
	var msgs []stream.Message
	for _, v := range []string{`null`, `{}`, `{"note":"not a rejection"}`, `{"stage":"decider","reason":"SEQ_GAP"}`, string(good)} {
		msgs = append(msgs, stream.Message{Topic: k.topics.Rejected, Key: []byte("acme/r"), Value: []byte(v)})
	}
	produceMessages(t, k.brokers, msgs...)
	stop := startProjector(t, projector.Config{Brokers: k.brokers, Group: k.prefix + "projector", Topics: k.topics, BatchSize: len(msgs),
		FlushInterval: 5 * time.Second}, st, prometheus.NewRegistry())
	waitFor(t, "the good rejection", 20*time.Second, func() bool {
		return queryInt(t, st, "SELECT count(*) FROM rejected_records WHERE stage = 'decider' AND source_offset = 9") == 1
	})
	stop()
	_, rows, err := st.Query(context.Background(), "SELECT original FROM rejected_records WHERE stage = 'projector' AND reason = '"+
		projector.ReasonBadRejection+"' ORDER BY source_offset")
	if err != nil {
		t.Fatal(err)
	}
	want := fmt.Sprint([][]any{{"null"}, {"{}"}, {`{"note":"not a rejection"}`}, {`{"stage":"decider","reason":"SEQ_GAP"}`}})
	if got := fmt.Sprint(rows); got != want {
		t.Errorf("%s rows keep %s, want %s", projector.ReasonBadRejection, got, want)
	}
	if n := queryInt(t, st, "SELECT count(*) FROM rejected_records"); n != 5 {
		t.Errorf("%d rejected_records rows for 5 records", n)
	}
}

// TestProjectorNamesWhyAnUnsealedRecordIsRejected: a valid event without
// the sealer's hash on the sealed topic is a BAD_SEALED_RECORD whose detail
// names the missing hash, not INVALID_JSON with a nil error.
func TestProjectorNamesWhyAnUnsealedRecordIsRejected(t *testing.T) {
	k := startKafka(t, 1)
	st := openSQLite(t)
	ev := `{"event_type":"MODEL_CALL_STARTED","payload":{"call_id":"m","model":"gpt-x"},"seq":1,"session_id":"s1","tenant_id":"acme","ts_unix_ms":1767225600000,"v":1}`
	produceMessages(t, k.brokers, stream.Message{Topic: k.topics.Sealed, Key: []byte("acme/s1"), Value: []byte(ev)})
	stop := startProjector(t, projector.Config{Brokers: k.brokers, Group: k.prefix + "projector", Topics: k.topics, BatchSize: 1,
		FlushInterval: 50 * time.Millisecond}, st, prometheus.NewRegistry())
	waitFor(t, "the rejection", 20*time.Second, func() bool { return queryInt(t, st, "SELECT count(*) FROM rejected_records") == 1 })
	stop()
	_, rows, err := st.Query(context.Background(), "SELECT reason, detail, original FROM rejected_records")
	if err != nil {
		t.Fatal(err)
	}
	if r := rows[0]; r[0] != projector.ReasonBadSealed || !strings.HasPrefix(r[1].(string), envelope.CodeMissingField+": ") ||
		!strings.Contains(r[1].(string), "hash") || r[2] != ev {
		t.Errorf("rejected as %q", r)
	}
}

// rowsWritten returns the rows-written counter of table from reg.
func rowsWritten(t *testing.T, reg *prometheus.Registry, table string) float64 {
	t.Helper()
	mfs, err := reg.Gather()
	if err != nil {
		t.Fatal(err)
	}
	for _, mf := range mfs {
		if mf.GetName() != "aegis_projector_rows_written_total" {
			continue
		}
		for _, m := range mf.GetMetric() {
			for _, l := range m.GetLabel() {
				if l.GetValue() == table {
					return m.GetCounter().GetValue()
				}
			}
		}
	}
	t.Fatalf("no aegis_projector_rows_written_total{table=%q}", table)
	return 0
}

// TestMain lets the integration test run this binary as an aegisd
// subprocess (see childEnv).
func TestMain(m *testing.M) {
	if os.Getenv(childEnv) != "" {
		os.Exit(runChild(os.Args[1:]))
	}
	os.Exit(m.Run())
}

// TestEventRowToolColumns: tool_name and call_id columns come from the
// payload's top-level members only, read as encoding/json reads them
// (escaped and case-folded names included).
func TestEventRowToolColumns(t *testing.T) {
	for _, tc := range []struct{ payload, tool, callID string }{
		{`{"model":"m","input_tokens":3}`, "", ""},
		{`{"args":{"q":"x"},"call_id":"c1","tool_name":"search"}`, "search", "c1"},
		{`{"tool\u005fname":"search","call\u005fid":"c2"}`, "search", "c2"},
		{`{"args":{"tool_name":"nested","call_id":"n"}}`, "", ""},
		{`{"tool_name":7,"call_id":"c3"}`, "", "c3"},
		{`{"note":"a \"tool_name\" in a string"}`, "", ""},
		{`{"Tool_Name":"search","CALL_ID":"c4"}`, "search", "c4"}, // encoding/json matches names case-insensitively
	} {
		r := projector.NewEventRow(&envelope.Event{Type: envelope.ToolResult, Payload: json.RawMessage(tc.payload)}, 0, 0)
		if r.ToolName != tc.tool || r.CallID != tc.callID {
			t.Errorf("%s: tool_name %q call_id %q, want %q %q", tc.payload, r.ToolName, r.CallID, tc.tool, tc.callID)
		}
	}
}

// TestProjectorRebuildsOnlyResumedSessions: sessions that start in the
// projector's input (seq 1) never ask the store for their history; after a
// restart, each session that continues is rebuilt from the store once, and
// its snapshot goes on from the stored events.
func TestProjectorRebuildsOnlyResumedSessions(t *testing.T) {
	k := startKafka(t, 2)
	st := openSQLite(t)
	const sessions = 25
	run := func(total int) (rebuilds float64) {
		reg := prometheus.NewRegistry()
		stop := startProjector(t, projector.Config{Brokers: k.brokers, Group: k.prefix + "projector", Topics: k.topics, BatchSize: 100,
			FlushInterval: 50 * time.Millisecond}, st, reg)
		waitFor(t, fmt.Sprintf("%d events", total), 30*time.Second, func() bool {
			return queryInt(t, st, "SELECT count(*) FROM audit_events") == int64(total)
		})
		stop()
		return counterValue(t, reg, "aegis_projector_snapshot_rebuilds_total")
	}
	produce(t, k, sealedSessions(t, "acme", sessions, 1, 12))
	if got := run(sessions * 12); got != 0 {
		t.Errorf("rebuilds with every session starting at seq 1: %v, want 0", got)
	}
	produce(t, k, sealedSessions(t, "acme", sessions, 13, 20))
	if got := run(sessions * 20); got != sessions {
		t.Errorf("rebuilds after a restart: %v, want %d (one per continued session)", got, sessions)
	}
	all := sealedSessions(t, "acme", sessions, 1, 20)
	_, rows, err := st.Query(context.Background(), "SELECT snapshot_hash FROM session_snapshots WHERE session_id = 's00011' ORDER BY last_seq DESC")
	if err != nil {
		t.Fatal(err)
	}
	if want := snapshotHash(t, all, "acme", "s00011"); len(rows) == 0 || rows[0][0] != want {
		t.Errorf("snapshot after the restart: %v, want %s first", rows, want)
	}
}

// counterValue returns the value of the unlabelled counter name from reg.
func counterValue(t *testing.T, reg *prometheus.Registry, name string) float64 {
	t.Helper()
	mfs, err := reg.Gather()
	if err != nil {
		t.Fatal(err)
	}
	for _, mf := range mfs {
		if mf.GetName() == name && len(mf.GetMetric()) == 1 {
			return mf.GetMetric()[0].GetCounter().GetValue()
		}
	}
	t.Fatalf("no counter %s", name)
	return 0
}

// TestProjectorRejectsRecordsPastTheHistory: a sealed record whose seq
// jumps past what the cache and the store hold (written by something other
// than the sealer, or after the store lost rows) is rejected on its own;
// its session goes on with the records that follow and every other
// session is stored as usual. A store that was emptied under committed
// offsets rejects the continued sessions' records and keeps storing new
// sessions, instead of stopping the projector.
func TestProjectorRejectsRecordsPastTheHistory(t *testing.T) {
	k := startKafka(t, 1)
	st := openSQLite(t)
	const sessions = 5
	produce(t, k, sealedSessions(t, "acme", sessions, 1, 10))
	var forged []*envelope.Event
	for _, e := range sealedSessions(t, "acme", sessions, 15, 15) {
		if e.SessionID == "s00003" {
			forged = append(forged, e)
		}
	}
	produce(t, k, forged)
	produce(t, k, sealedSessions(t, "acme", sessions, 11, 20))

	reg := prometheus.NewRegistry()
	cfg := projector.Config{Brokers: k.brokers, Group: k.prefix + "projector", Topics: k.topics, BatchSize: 7,
		FlushInterval: 50 * time.Millisecond, RetryBackoff: 10 * time.Millisecond}
	stop := startProjector(t, cfg, st, reg)
	waitFor(t, "every session at seq 20", 30*time.Second, func() bool {
		return queryInt(t, st, "SELECT count(*) FROM session_snapshots WHERE last_seq = 20") == sessions
	})
	stop()
	all := sealedSessions(t, "acme", sessions, 1, 20)
	checks := map[string]int64{
		"SELECT count(*) FROM audit_events": sessions * 20,
		"SELECT count(*) FROM rejected_records WHERE stage = 'projector' AND reason = 'BAD_SEALED_RECORD' AND tenant_id = 'acme' AND session_id = 's00003' AND seq = 15 AND detail LIKE 'SEQ_GAP: acme/s00003 seq 15 %'": 1,
		"SELECT count(*) FROM rejected_records": 1,
	}
	for q, want := range checks {
		if got := queryInt(t, st, q); got != want {
			t.Errorf("%s = %d, want %d", q, got, want)
		}
	}
	_, rows, err := st.Query(context.Background(), "SELECT snapshot_hash FROM session_snapshots WHERE session_id = 's00003' ORDER BY last_seq DESC")
	if err != nil {
		t.Fatal(err)
	}
	if want := snapshotHash(t, all, "acme", "s00003"); len(rows) == 0 || rows[0][0] != want {
		t.Errorf("snapshot of the session with the rejected record: %v, want %s first", rows, want)
	}
	if got := counterValue(t, reg, "aegis_projector_history_gaps_total"); got != 1 {
		t.Errorf("aegis_projector_history_gaps_total = %v, want 1", got)
	}

	// The same group on an empty store: acme's sessions continue at seq
	// 21, whose history is gone; globex's start at seq 1.
	empty := openSQLite(t)
	produce(t, k, sealedSessions(t, "acme", sessions, 21, 22))
	produce(t, k, sealedSessions(t, "globex", 3, 1, 4))
	stop = startProjector(t, cfg, empty, prometheus.NewRegistry())
	waitFor(t, "globex's events and acme's rejections", 30*time.Second, func() bool {
		return queryInt(t, empty, "SELECT count(*) FROM audit_events WHERE tenant_id = 'globex'") == 12 &&
			queryInt(t, empty, "SELECT count(*) FROM rejected_records WHERE detail LIKE 'SEQ_GAP: acme/%'") == sessions*2
	})
	stop()
	if got := queryInt(t, empty, "SELECT count(*) FROM audit_events WHERE tenant_id = 'acme'"); got != 0 {
		t.Errorf("%d acme events stored without their history", got)
	}
}

// TestRejectedProposalHasNoDecisionRow: a sealed proposal the reducer
// refuses (a tool_name over 256 bytes) is rejected whole: no event row and
// no decision row, whose counts auditors read.
func TestRejectedProposalHasNoDecisionRow(t *testing.T) {
	k := startKafka(t, 1)
	st := openSQLite(t)
	var head *chain.Head
	var evs []*envelope.Event
	for _, e := range []*envelope.Event{
		{V: 1, TenantID: "acme", SessionID: "s1", Seq: 1, TsUnixMs: 1767225600000, Type: envelope.ModelCallStarted, Payload: json.RawMessage(`{"call_id":"m","model":"gpt-x"}`)},
		{V: 1, TenantID: "acme", SessionID: "s1", Seq: 2, TsUnixMs: 1767225601000, Type: envelope.ToolCallProposed,
			Payload:  json.RawMessage(fmt.Sprintf(`{"args":{},"call_id":"c1","tool_name":%q}`, strings.Repeat("x", 300))),
			Decision: &envelope.Decision{Outcome: envelope.Allow, Reason: "OK", PolicyRevision: "sha256:p", InputDigest: "sha256:i"}},
	} {
		h, err := chain.Link(head, e)
		if err != nil {
			t.Fatal(err)
		}
		head, evs = &h, append(evs, e)
	}
	produce(t, k, evs)
	stop := startProjector(t, projector.Config{Brokers: k.brokers, Group: k.prefix + "projector", Topics: k.topics, BatchSize: 10,
		FlushInterval: 50 * time.Millisecond}, st, prometheus.NewRegistry())
	waitFor(t, "the rejection", 20*time.Second, func() bool { return queryInt(t, st, "SELECT count(*) FROM rejected_records") == 1 })
	stop()
	if n := queryInt(t, st, "SELECT count(*) FROM decisions"); n != 0 {
		t.Errorf("%d decision rows for a proposal that was rejected", n)
	}
	if n := queryInt(t, st, "SELECT count(*) FROM audit_events"); n != 1 {
		t.Errorf("%d events stored, want 1", n)
	}
}

// TestProjectorBoundsBatchBytes: with large records, a write holds at most
// BatchBytes of them however many BatchSize allows, and every record is
// still written once.
func TestProjectorBoundsBatchBytes(t *testing.T) {
	k := startKafka(t, 1)
	st := openSQLite(t)
	const n, size = 20, 100 << 10
	var msgs []stream.Message
	for i := range n {
		// Not a chain head: each becomes one rejected_records row.
		v := fmt.Sprintf(`{"seq":"x","pad":%q}`, strings.Repeat("p", size))
		msgs = append(msgs, stream.Message{Topic: k.topics.ChainHeads, Key: []byte(fmt.Sprintf("acme/s%d", i)), Value: []byte(v)})
	}
	produceMessages(t, k.brokers, msgs...)
	reg := prometheus.NewRegistry()
	stop := startProjector(t, projector.Config{Brokers: k.brokers, Group: k.prefix + "projector", Topics: k.topics, BatchSize: 1000,
		BatchBytes: 3 * size, FlushInterval: 5 * time.Second}, st, reg)
	waitFor(t, "every rejection", 20*time.Second, func() bool { return queryInt(t, st, "SELECT count(*) FROM rejected_records") == n })
	stop()
	mfs, err := reg.Gather()
	if err != nil {
		t.Fatal(err)
	}
	var writes uint64
	for _, mf := range mfs {
		if mf.GetName() == "aegis_projector_flush_seconds" {
			writes = mf.GetMetric()[0].GetHistogram().GetSampleCount()
		}
	}
	// At most 2 records of ~100 KiB fit in 300 KiB.
	if writes < n/2 {
		t.Errorf("%d writes for %d records of %d bytes with BatchBytes %d: a write held more than the bound", writes, n, size, 3*size)
	}
}

// produceMessages writes msgs to the brokers and waits for their
// acknowledgment.
func produceMessages(t *testing.T, brokers []string, msgs ...stream.Message) {
	t.Helper()
	p, err := stream.NewProducer(stream.ProducerConfig{Brokers: brokers})
	if err != nil {
		t.Fatal(err)
	}
	defer p.Close()
	if err := p.Produce(context.Background(), msgs...); err != nil {
		t.Fatal(err)
	}
}

// TestProjectorStoreVerifies: a store written by the projector over
// batches of several sizes, with its session cache evicting, a restart, and
// a second consumer group re-reading everything, verifies, decisions and
// session_snapshots tables included.
func TestProjectorStoreVerifies(t *testing.T) {
	k := startKafka(t, 3)
	st := openSQLite(t)
	const sessions = 40
	first := sealedSessions(t, "acme", sessions, 1, 30)
	produce(t, k, first)
	stop := startProjector(t, projector.Config{Brokers: k.brokers, Group: k.prefix + "p", Topics: k.topics, BatchSize: 37,
		FlushInterval: 20 * time.Millisecond, CachedSessions: 5}, st, nil)
	waitFor(t, "first", 30*time.Second, func() bool { return queryInt(t, st, "SELECT count(*) FROM audit_events") == int64(len(first)) })
	stop()
	stop2 := runProjector(t, k, k.prefix+"replay", st)
	time.Sleep(2 * time.Second)
	stop2()
	all := sealedSessions(t, "acme", sessions, 1, 45)
	produce(t, k, sealedSessions(t, "acme", sessions, 31, 45))
	stop3 := startProjector(t, projector.Config{Brokers: k.brokers, Group: k.prefix + "p", Topics: k.topics, BatchSize: 13,
		FlushInterval: 20 * time.Millisecond, CachedSessions: 3}, st, nil)
	waitFor(t, "all", 30*time.Second, func() bool { return queryInt(t, st, "SELECT count(*) FROM audit_events") == int64(len(all)) })
	waitFor(t, "heads", 30*time.Second, func() bool { return queryInt(t, st, "SELECT count(*) FROM chain_heads WHERE seq = 45") == sessions })
	stop3()
	rep, err := ctl.VerifyStore(context.Background(), st, projector.Filter{}, 4)
	if err != nil {
		t.Fatal(err)
	}
	if n := queryInt(t, st, "SELECT count(*) FROM decisions"); n == 0 {
		t.Fatal("no decisions rows: the check had nothing to compare")
	}
	if n := queryInt(t, st, "SELECT count(*) FROM session_snapshots WHERE last_seq = 45 AND tainted = 1"); n != sessions {
		t.Fatalf("%d tainted session_snapshots rows at seq 45, want %d: the check had less to compare", n, sessions)
	}
	if !rep.OK {
		t.Fatalf("real projector store does not verify: %+v", rep.Failures)
	}
	// The snapshot check compares what the projector wrote: the same
	// store with one session's row replaced by an untainted one fails.
	var row projector.SnapshotRow
	if err := st.Snapshots(context.Background(), projector.Filter{TenantID: "acme", SessionID: "s00007"}, func(r *projector.StoredSnapshot) error {
		row = r.SnapshotRow
		return nil
	}); err != nil || row.LastSeq != 45 {
		t.Fatalf("snapshot row %+v: %v", row, err)
	}
	row.Tainted, row.LastSeq = false, 46
	if err := st.Write(context.Background(), &projector.Batch{Snapshots: []projector.SnapshotRow{row}}); err != nil {
		t.Fatal(err)
	}
	if rep, err := ctl.VerifyStore(context.Background(), st, projector.Filter{}, 4); err != nil || rep.OK || len(rep.Failures) != 1 ||
		rep.Failures[0].SessionID != "s00007" || rep.Failures[0].Reason != ctl.ReasonSnapshotMismatch {
		t.Fatalf("a replaced snapshot row: %+v %v, want one %s of s00007", rep.Failures, err, ctl.ReasonSnapshotMismatch)
	}
}

// gatedStore holds every write until open is closed.
type gatedStore struct {
	projector.Store
	open chan struct{}
}

func (g *gatedStore) Write(ctx context.Context, b *projector.Batch) error {
	select {
	case <-g.open:
		return g.Store.Write(ctx, b)
	case <-ctx.Done():
		return ctx.Err()
	}
}

// TestProjectorReadyUnderSteadyTraffic: a projector that keeps up with a
// steady trickle of records (a live fleet) reports ready once it has
// written what it found; readiness does not wait for a second without any
// record. It is not ready while records it has read are not written.
func TestProjectorReadyUnderSteadyTraffic(t *testing.T) {
	k := startKafka(t, 1)
	st := &gatedStore{Store: openSQLite(t), open: make(chan struct{})}
	prod, err := stream.NewProducer(stream.ProducerConfig{Brokers: k.brokers})
	if err != nil {
		t.Fatal(err)
	}
	defer prod.Close()
	n := 0
	publish := func() {
		t.Helper()
		rej, _ := json.Marshal(pipeline.Rejection{V: 1, Stage: "decider", Reason: "SEQ_GAP", TenantID: "acme", SessionID: "s", Seq: uint64(n + 2),
			Topic: k.topics.Events, Offset: int64(n)})
		n++
		if err := prod.Produce(context.Background(), stream.Message{Topic: k.topics.Rejected, Key: []byte("acme/s"), Value: rej}); err != nil {
			t.Fatal(err)
		}
	}
	for range 50 {
		publish()
	}
	p, err := projector.New(projector.Config{Brokers: k.brokers, Group: k.prefix + "projector", Topics: k.topics,
		FlushInterval: time.Second, RetryBackoff: 10 * time.Millisecond}, st, nil, nil)
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- p.Run(ctx) }()
	defer func() {
		cancel()
		if err := <-done; err != nil {
			t.Error(err)
		}
	}()
	for end := time.Now().Add(2 * time.Second); time.Now().Before(end); time.Sleep(50 * time.Millisecond) {
		if p.Ready() {
			t.Fatal("ready while the records it read are not written")
		}
	}
	close(st.open)
	deadline := time.Now().Add(8 * time.Second)
	for !p.Ready() {
		if time.Now().After(deadline) {
			t.Fatalf("not ready after %d records, one every 100 ms after the first 50", n)
		}
		publish()
		time.Sleep(100 * time.Millisecond)
	}
	if got := queryInt(t, st.Store.(projector.Querier), "SELECT count(*) FROM rejected_records"); got < 50 {
		t.Errorf("ready with %d of the 50 records found at start written", got)
	}
}
