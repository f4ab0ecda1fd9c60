package sealer

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io/fs"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"testing"

	"aegis.dev/aegis/internal/pipeline"
	"aegis.dev/aegis/internal/stream"
	"aegis.dev/aegis/schemas/chain"
	"aegis.dev/aegis/schemas/envelope"
)

const partitions = 4

var topics = pipeline.NewTopics("aegis.")

func decided(session string, seq uint64, typ envelope.Type, extra string) *stream.Record {
	key := "acme/" + session
	v := fmt.Sprintf(`{"tenant_id":"acme","session_id":%q,"seq":%d,"ts_unix_ms":%d,"event_type":%q,"payload":{"tool_name":"t","call_id":"c%d"}%s}`, session, seq, 1000+seq, typ, seq, extra)
	return &stream.Record{Topic: topics.Decided, Partition: stream.Partition([]byte(key), partitions), Key: []byte(key), Value: []byte(v)}
}

const decision = `,"decision":{"outcome":"allow","reason":"OK","constraints":{},"policy_revision":"p","manifest_digest":"m","input_digest":"i"}`

func run(tb testing.TB, p stream.Processor, recs ...*stream.Record) []stream.Output {
	tb.Helper()
	var out []stream.Output
	if err := p.Process(context.Background(), recs, func(o stream.Output) { out = append(out, o) }); err != nil {
		tb.Fatal(err)
	}
	return out
}

func byTopic(outs []stream.Output, topic string) []stream.Output {
	var r []stream.Output
	for _, o := range outs {
		if o.Topic == topic {
			r = append(r, o)
		}
	}
	return r
}

func reasons(tb testing.TB, outs []stream.Output) []string {
	var r []string
	for _, o := range byTopic(outs, topics.Rejected) {
		var rej pipeline.Rejection
		if err := json.Unmarshal(o.Value, &rej); err != nil {
			tb.Fatal(err)
		}
		r = append(r, rej.Reason)
	}
	return r
}

func TestSealerChainsAndRejects(t *testing.T) {
	st := New(Config{Topics: topics, Partitions: partitions}, nil, nil)
	p := st.NewProcessor(0)
	outs := run(t, p,
		decided("s1", 1, envelope.ModelCallStarted, ""),
		decided("s1", 2, envelope.ToolCallProposed, decision),
		decided("s1", 2, envelope.ToolCallProposed, decision), // retry: dropped
		decided("s1", 2, envelope.ModelCallStarted, ""),       // same seq, other content
		decided("s1", 5, envelope.ModelCallStarted, ""),       // gap
		decided("s1", 3, envelope.ToolCallProposed, ""),       // undecided proposal
		decided("s1", 3, envelope.ModelCallStarted, decision), // decision on a non-proposal
		decided("s2", 1, envelope.ModelCallStarted, ""),
	)
	sealed := byTopic(outs, topics.Sealed)
	if len(sealed) != 3 {
		t.Fatalf("%d sealed", len(sealed))
	}
	v := chain.NewVerifier()
	for _, o := range sealed {
		ev, err := envelope.Decoder{Sealed: true}.Decode(o.Value)
		if err != nil {
			t.Fatal(err)
		}
		if f := v.Add(ev); f != nil {
			t.Fatal(f)
		}
	}
	want := []string{pipeline.ReasonSeqConflict, pipeline.ReasonSeqGap, pipeline.ReasonMissingDecision, pipeline.ReasonUnexpectedDecision}
	if got := reasons(t, outs); fmt.Sprint(got) != fmt.Sprint(want) {
		t.Fatalf("rejections %v, want %v", got, want)
	}
	heads := byTopic(outs, topics.ChainHeads)
	if len(heads) != 2 {
		t.Fatalf("%d head records for 2 sessions", len(heads))
	}

	// A fresh processor restored from the heads continues the chains.
	p2 := st.NewProcessor(0)
	for _, h := range heads {
		if err := p2.Restore(h.Key, h.Value); err != nil {
			t.Fatal(err)
		}
	}
	outs = run(t, p2, decided("s1", 2, envelope.ToolCallProposed, decision), decided("s1", 3, envelope.Termination, ""))
	sealed = byTopic(outs, topics.Sealed)
	if len(sealed) != 1 || len(reasons(t, outs)) != 0 {
		t.Fatalf("after restore: %d sealed, rejections %v", len(sealed), reasons(t, outs))
	}
	ev, _ := envelope.Decoder{Sealed: true}.Decode(sealed[0].Value)
	if f := v.Add(ev); f != nil {
		t.Fatalf("chain broken across restore: %v", f)
	}
}

func TestSealerRestoreRejectsInconsistentHeads(t *testing.T) {
	p := New(Config{Topics: topics, Partitions: partitions}, nil, nil).NewProcessor(0)
	for name, v := range map[string]string{
		"not json":       `{`,
		"window behind":  `{"tenant_id":"acme","session_id":"s","seq":3,"hash":"` + chain.Genesis + `","window":{"last_seq":2}}`,
		"truncated hash": `{"tenant_id":"acme","session_id":"s","seq":1,"hash":"ab","window":{"last_seq":1}}`,
		// 64 characters, but not what chain.Link writes: written back
		// verbatim, the quote would make the next head record invalid
		// JSON, which no restore could read.
		"quote in hash":   `{"tenant_id":"acme","session_id":"s","seq":1,"hash":"\"` + chain.Genesis[1:] + `","window":{"last_seq":1}}`,
		"upper-case hash": `{"tenant_id":"acme","session_id":"s","seq":1,"hash":"` + strings.ToUpper(chain.Genesis[:62]) + `AB","window":{"last_seq":1}}`,
		// The sealer writes a head only once it sealed seq 1: a head at
		// seq 0 would link the session's first record onto its hash
		// instead of the genesis value, a chain no verifier accepts.
		"seq 0": `{"tenant_id":"acme","session_id":"s","seq":0,"hash":"` + strings.Repeat("ab", 32) + `","window":{"last_seq":0}}`,
	} {
		if err := p.Restore([]byte("acme/s"), []byte(v)); err == nil {
			t.Errorf("%s: accepted", name)
		}
	}
}

// TestSpilledHeadsSealAlike seals interleaved sessions (with retries and a
// conflicting event) through a processor that may keep only two heads in
// memory and through one that keeps all: the outputs must be identical.
func TestSpilledHeadsSealAlike(t *testing.T) {
	var recs []*stream.Record
	for seq := uint64(1); seq <= 6; seq++ {
		for s := range 10 {
			r := decided(fmt.Sprint("s", s), seq, envelope.ModelCallStarted, "")
			r.Partition = 0
			recs = append(recs, r)
			if s == 3 { // a retry of the previous event: dropped
				recs = append(recs, r)
			}
		}
		if seq > 1 { // other content at an accepted seq: SEQ_CONFLICT
			r := decided("s5", seq-1, envelope.ErrorRaised, "")
			r.Partition = 0
			recs = append(recs, r)
		}
	}
	run := func(sessions int) ([]stream.Output, *processor) {
		st := New(Config{Topics: topics, State: pipeline.StateConfig{Sessions: sessions, Dir: t.TempDir()}}, nil, nil)
		p := st.NewProcessor(0).(*processor)
		t.Cleanup(func() { p.Close() })
		var out []stream.Output
		for i := 0; i < len(recs); i += 7 {
			out = append(out, run(t, p, recs[i:min(i+7, len(recs))]...)...)
		}
		return out, p
	}
	all, _ := run(1000)
	spilled, p := run(2)
	if p.heads.Stats().Loaded == 0 {
		t.Fatal("nothing was read back from the spill file")
	}
	if n, r := len(byTopic(all, topics.Sealed)), reasons(t, all); n != 60 || len(r) != 5 || slices.ContainsFunc(r, func(s string) bool { return s != pipeline.ReasonSeqConflict }) {
		t.Fatalf("%d sealed, rejections %v; want 60 and 5 SEQ_CONFLICT", n, r)
	}
	if len(all) != len(spilled) {
		t.Fatalf("%d outputs with spilling, %d without", len(spilled), len(all))
	}
	for i := range all {
		if all[i].Topic != spilled[i].Topic || string(all[i].Value) != string(spilled[i].Value) {
			t.Fatalf("output %d differs:\n%s\n%s", i, all[i].Value, spilled[i].Value)
		}
	}
}

func TestHeadRecordJSONMatchesEncodingJSON(t *testing.T) {
	p := New(Config{Topics: topics}, nil, nil).NewProcessor(0)
	defer p.(*processor).Close()
	var recs []*stream.Record
	for seq := uint64(1); seq <= 20; seq++ {
		recs = append(recs, decided("s.1:x-y_Z", seq, envelope.ModelCallStarted, ""))
		recs[len(recs)-1].Partition = 0
	}
	outs := run(t, p, recs...)
	heads := byTopic(outs, topics.ChainHeads)
	if len(heads) != 1 {
		t.Fatalf("%d head records for one session; rejections %v", len(heads), reasons(t, outs))
	}
	for _, o := range heads {
		var h HeadRecord
		if err := json.Unmarshal(o.Value, &h); err != nil {
			t.Fatal(err)
		}
		if want, _ := json.Marshal(&h); string(o.Value) != string(want) {
			t.Fatalf("head record %s, encoding/json %s", o.Value, want)
		}
		if h.Seq != 20 || h.SessionID != "s.1:x-y_Z" || len(h.Window.Recent) != pipeline.WindowSize {
			t.Fatalf("head %+v", h)
		}
	}
}

// TestSealerRefusesRecordsThatOutgrowTheSealedLimit: a decided record the
// decider did not write can be within the sealer's input limit and grow
// past what the sealed topic's readers take once canonical (1e15 is 16
// bytes). It is rejected TOO_LARGE without moving the head, and the
// session's next event is sealed as if it had never come.
func TestSealerRefusesRecordsThatOutgrowTheSealedLimit(t *testing.T) {
	const maxEvent = 128 << 10 // the decided limit of this stage
	st := New(Config{Topics: topics, Partitions: partitions, MaxEventBytes: maxEvent}, nil, nil)
	rec := decided("s1", 1, envelope.ModelCallStarted, "")
	rec.Value = []byte(fmt.Sprintf(`{"tenant_id":"acme","session_id":"s1","seq":1,"ts_unix_ms":1001,"event_type":"MODEL_CALL_STARTED","payload":{"n":[%s1]}}`,
		strings.Repeat("1e15,", 100<<10/5)))
	if len(rec.Value) > maxEvent {
		t.Fatalf("the record is %d bytes, over the input limit", len(rec.Value))
	}
	p := st.NewProcessor(rec.Partition)
	out := run(t, p, rec)
	if got := reasons(t, out); len(got) != 1 || got[0] != envelope.CodeTooLarge || len(byTopic(out, topics.Sealed)) != 0 {
		t.Fatalf("rejections %v, %d sealed", got, len(byTopic(out, topics.Sealed)))
	}
	out = run(t, p, decided("s1", 1, envelope.ModelCallStarted, ""))
	sealed := byTopic(out, topics.Sealed)
	if len(sealed) != 1 || len(reasons(t, out)) != 0 {
		t.Fatalf("the next event: %d sealed, rejections %v", len(sealed), reasons(t, out))
	}
	ev, err := (&envelope.Decoder{Sealed: true}).Decode(sealed[0].Value)
	if err != nil || ev.Seq != 1 || ev.PrevHash != chain.Genesis {
		t.Fatalf("sealed %+v, %v: want seq 1 after genesis", ev, err)
	}
}

// TestSealerRejectsADecisionWithoutOutcome: a proposal on the decided topic
// whose decision has no outcome was not written by the decider (it always
// decides allow, deny or require_approval). It is rejected instead of being
// sealed with an empty outcome, and the head does not move.
func TestSealerRejectsADecisionWithoutOutcome(t *testing.T) {
	p := New(Config{Topics: topics, Partitions: partitions}, nil, nil).NewProcessor(0)
	for _, d := range []string{`,"decision":{}`, `,"decision":{"reason":"OK","constraints":{},"policy_revision":"p","manifest_digest":"m","input_digest":"i"}`} {
		out := run(t, p, decided("s1", 1, envelope.ToolCallProposed, d))
		if got := reasons(t, out); len(got) != 1 || got[0] != pipeline.ReasonMissingDecision || len(byTopic(out, topics.Sealed)) != 0 {
			t.Fatalf("decision %s: rejections %v, %d sealed", d, got, len(byTopic(out, topics.Sealed)))
		}
	}
	out := run(t, p, decided("s1", 1, envelope.ToolCallProposed, decision))
	if sealed := byTopic(out, topics.Sealed); len(sealed) != 1 || len(reasons(t, out)) != 0 {
		t.Fatalf("the decided proposal: %d sealed, rejections %v", len(sealed), reasons(t, out))
	}
}

// TestSealedRecordsFitTheSealedTopic: with a small event limit the sealed
// topic carries less than the sealed readers' limit (twice the event limit
// plus 64 KiB against the limit plus 128 KiB). A decided record the
// decider did not write that grows past what the topic carries once
// canonical must be rejected TOO_LARGE, not produced: the broker would
// refuse it and the stage would stop on the same batch after its retries.
func TestSealedRecordsFitTheSealedTopic(t *testing.T) {
	const maxEvent = 1 << 10 // aegisd's smallest --max-event-bytes
	st := New(Config{Topics: topics, Partitions: partitions, MaxEventBytes: pipeline.DecidedMaxBytes(maxEvent),
		MaxRecordBytes: pipeline.MaxRecordBytes(maxEvent)}, nil, nil)
	rec := decided("s1", 1, envelope.ModelCallStarted, "")
	rec.Value = []byte(fmt.Sprintf(`{"tenant_id":"acme","session_id":"s1","seq":1,"ts_unix_ms":1001,"event_type":"MODEL_CALL_STARTED","payload":{"n":[%s1]}}`,
		strings.Repeat("1e15,", 30<<10/5)))
	if len(rec.Value) > pipeline.DecidedMaxBytes(maxEvent) {
		t.Fatalf("the record is %d bytes, over the input limit", len(rec.Value))
	}
	p := st.NewProcessor(rec.Partition)
	defer p.(*processor).Close()
	out := run(t, p, rec)
	for _, o := range out {
		if n := len(o.Key) + len(o.Value); n > pipeline.MaxRecordBytes(maxEvent) {
			t.Fatalf("a %d-byte record on %s, which carries %d", n, o.Topic, pipeline.MaxRecordBytes(maxEvent))
		}
	}
	if got := reasons(t, out); len(got) != 1 || got[0] != envelope.CodeTooLarge {
		t.Fatalf("rejections %v, %d sealed", got, len(byTopic(out, topics.Sealed)))
	}
}

// TestSealerKeepsTenantsApart: two tenants with the same session id are two
// chains, each from the genesis value, with a head each; a record whose key
// is not its value's session, or that sits on another partition than its
// key's, is rejected without touching any chain. The sealer is the chain's
// single writer, so it must not trust the decider's checks alone.
func TestSealerKeepsTenantsApart(t *testing.T) {
	st := New(Config{Topics: topics, Partitions: partitions}, nil, nil)
	of := func(tenant string, seq uint64) *stream.Record {
		r := decided("s1", seq, envelope.ModelCallStarted, "")
		r.Value = []byte(strings.Replace(string(r.Value), `"tenant_id":"acme"`, `"tenant_id":"`+tenant+`"`, 1))
		r.Key = []byte(tenant + "/s1")
		r.Partition = stream.Partition(r.Key, partitions)
		return r
	}
	a1, b1 := of("acme", 1), of("globex", 1)
	if a1.Partition != b1.Partition {
		// Find a second tenant on the same partition, so that one
		// processor holds both sessions.
		for i := 0; a1.Partition != b1.Partition; i++ {
			b1 = of(fmt.Sprint("globex", i), 1)
		}
	}
	other := string(b1.Key[:bytes.IndexByte(b1.Key, '/')])
	p := st.NewProcessor(a1.Partition)
	defer p.(*processor).Close()

	mismatch := of("acme", 3)
	mismatch.Key = b1.Key // the key of the other tenant's session
	wrong := of("acme", 3)
	wrong.Partition = (wrong.Partition + 1) % partitions
	out := run(t, p, a1, b1, of("acme", 2), mismatch, wrong, of(other, 2), of("acme", 2), of("acme", 3))
	if got, want := reasons(t, out), []string{pipeline.ReasonKeyMismatch, pipeline.ReasonWrongPartition}; fmt.Sprint(got) != fmt.Sprint(want) {
		t.Fatalf("rejections %v, want %v", got, want)
	}
	for _, o := range byTopic(out, topics.Rejected) {
		var rej pipeline.Rejection
		if err := json.Unmarshal(o.Value, &rej); err != nil {
			t.Fatal(err)
		}
		src := mismatch
		if rej.Reason == pipeline.ReasonWrongPartition {
			src = wrong
		}
		if rej.Stage != StageName || rej.Topic != topics.Decided || rej.Partition != src.Partition || rej.Key != string(src.Key) ||
			rej.Original != string(src.Value) || rej.TenantID != "acme" || rej.Seq != 3 || o.Partition != src.Partition || string(o.Key) != string(src.Key) {
			t.Fatalf("rejection %s on partition %d with key %s of record %s on partition %d", o.Value, o.Partition, o.Key, src.Key, src.Partition)
		}
	}
	v := chain.NewVerifier()
	count := map[string]int{}
	for _, o := range byTopic(out, topics.Sealed) {
		ev, err := envelope.Decoder{Sealed: true}.Decode(o.Value)
		if err != nil {
			t.Fatal(err)
		}
		if string(o.Key) != string(ev.Key()) {
			t.Fatalf("sealed %s under key %s", ev.Key(), o.Key)
		}
		if f := v.Add(ev); f != nil {
			t.Fatal(f)
		}
		count[ev.TenantID]++
	}
	if count["acme"] != 3 || count[other] != 2 {
		t.Fatalf("sealed per tenant %v, want acme 3 and %s 2", count, other)
	}
	heads := map[string]HeadRecord{}
	for _, o := range byTopic(out, topics.ChainHeads) {
		var h HeadRecord
		if err := json.Unmarshal(o.Value, &h); err != nil {
			t.Fatal(err)
		}
		heads[string(o.Key)] = h
	}
	for _, h := range v.Heads() {
		if got := heads[h.TenantID+"/"+h.SessionID]; got.Head != h {
			t.Fatalf("head record %+v, the verified chain ends at %+v", got.Head, h)
		}
	}
	if len(heads) != 2 {
		t.Fatalf("%d head records, want 2", len(heads))
	}
}

// TestSealerRejectsStaleSeqs: a seq older than the window cannot be told
// from a retry; it is rejected SEQ_STALE with the seq the session expects,
// and a retry within the window is still dropped.
func TestSealerRejectsStaleSeqs(t *testing.T) {
	p := New(Config{Topics: topics}, nil, nil).NewProcessor(0)
	defer p.(*processor).Close()
	var recs []*stream.Record
	for seq := uint64(1); seq <= pipeline.WindowSize+2; seq++ {
		r := decided("s1", seq, envelope.ModelCallStarted, "")
		r.Partition = 0
		recs = append(recs, r)
	}
	_ = run(t, p, recs...)
	// Seqs 1 and 2 are out of the window, 3 and the last are retries.
	out := run(t, p, recs[0], recs[1], recs[2], recs[len(recs)-1])
	if n := len(byTopic(out, topics.Sealed)); n != 0 {
		t.Fatalf("%d sealed", n)
	}
	rej := byTopic(out, topics.Rejected)
	if got := reasons(t, out); len(got) != 2 || got[0] != pipeline.ReasonSeqStale || got[1] != pipeline.ReasonSeqStale {
		t.Fatalf("rejections %v, want SEQ_STALE twice", got)
	}
	var r pipeline.Rejection
	if err := json.Unmarshal(rej[0].Value, &r); err != nil {
		t.Fatal(err)
	}
	if r.Seq != 1 || r.Expected != pipeline.WindowSize+3 {
		t.Fatalf("rejection %s", rej[0].Value)
	}
}

// TestSealerFailsTheBatchWhenAHeadCannotSpill: a head that cannot be kept
// (here its spill file cannot be created) is an infrastructure failure. The
// batch fails, so that its transaction aborts and the partition is rebuilt,
// instead of the record being skipped or sealed without a head behind it.
func TestSealerFailsTheBatchWhenAHeadCannotSpill(t *testing.T) {
	dir := filepath.Join(t.TempDir(), "gone")
	st := New(Config{Topics: topics, State: pipeline.StateConfig{Sessions: 1, Dir: dir}}, nil, nil)
	p := st.NewProcessor(0)
	defer p.(*processor).Close()
	a, b := decided("s1", 1, envelope.ModelCallStarted, ""), decided("s2", 1, envelope.ModelCallStarted, "")
	a.Partition, b.Partition = 0, 0
	var out []stream.Output
	err := p.Process(context.Background(), []*stream.Record{a, b}, func(o stream.Output) { out = append(out, o) })
	if err == nil {
		t.Fatalf("no error; %d outputs", len(out))
	}
	if _, statErr := os.Stat(dir); !errors.Is(statErr, fs.ErrNotExist) {
		t.Fatalf("the spill dir exists: %v", statErr)
	}
}

// TestTransactConfigNamesEveryTopicWritten: the runtime checks that the
// input, the state topic and every output are co-partitioned, and refuses
// an emit to any other topic; the stage's configuration must name every
// topic its processors write, with the pipeline's partition count.
func TestTransactConfigNamesEveryTopicWritten(t *testing.T) {
	st := New(Config{Topics: topics, Partitions: partitions}, nil, nil)
	tc := st.TransactConfig()
	if tc.Input != topics.Decided || tc.State != topics.ChainHeads || tc.Partitions != partitions {
		t.Fatalf("input %s, state %s, %d partitions", tc.Input, tc.State, tc.Partitions)
	}
	rec := decided("s1", 1, envelope.ModelCallStarted, "")
	p := st.NewProcessor(rec.Partition)
	defer p.(*processor).Close()
	written := map[string]bool{}
	for _, o := range run(t, p, rec, decided("s1", 3, envelope.ModelCallStarted, "")) {
		written[o.Topic] = true
	}
	if len(written) != 3 {
		t.Fatalf("wrote %v, want the sealed, rejected and state topics", written)
	}
	for topic := range written {
		if topic != tc.State && !slices.Contains(tc.Outputs, topic) {
			t.Fatalf("writes %s, which the transact configuration does not name: %+v", topic, tc)
		}
	}
}

// TestSealerWritesTheChainVectors: the sealer's records are the sealed form
// docs/chain.md specifies byte for byte, which an auditor's verifier is
// tested against: sealing schemas/testdata/chain/events.ndjson (two
// tenants with one session id, proposals with decisions, numbers and
// strings that canonicalization rewrites) writes exactly the records of
// vectors.ndjson, in order.
func TestSealerWritesTheChainVectors(t *testing.T) {
	lines := func(name string) [][]byte {
		b, err := os.ReadFile(filepath.Join("..", "schemas", "testdata", "chain", name))
		if err != nil {
			t.Fatal(err)
		}
		return bytes.Split(bytes.TrimSpace(b), []byte("\n"))
	}
	st := New(Config{Topics: topics, Partitions: partitions}, nil, nil)
	procs := map[int32]stream.Processor{}
	var sealed [][]byte
	for i, line := range lines("events.ndjson") {
		var id struct {
			TenantID  string `json:"tenant_id"`
			SessionID string `json:"session_id"`
		}
		if err := json.Unmarshal(line, &id); err != nil {
			t.Fatal(err)
		}
		key := []byte(id.TenantID + "/" + id.SessionID)
		rec := &stream.Record{Topic: topics.Decided, Partition: stream.Partition(key, partitions), Offset: int64(i), Key: key, Value: line}
		p := procs[rec.Partition]
		if p == nil {
			p = st.NewProcessor(rec.Partition)
			defer p.(*processor).Close()
			procs[rec.Partition] = p
		}
		out := run(t, p, rec)
		if r := reasons(t, out); len(r) != 0 {
			t.Fatalf("line %d rejected %v", i+1, r)
		}
		for _, o := range byTopic(out, topics.Sealed) {
			sealed = append(sealed, o.Value)
		}
	}
	vectors := lines("vectors.ndjson")
	if len(sealed) != len(vectors) {
		t.Fatalf("%d sealed records, %d vectors", len(sealed), len(vectors))
	}
	for i, line := range vectors {
		var v struct {
			Record json.RawMessage `json:"record"`
		}
		if err := json.Unmarshal(line, &v); err != nil {
			t.Fatal(err)
		}
		if !bytes.Equal(sealed[i], v.Record) {
			t.Fatalf("record %d:\n sealed %s\n vector %s", i+1, sealed[i], v.Record)
		}
	}
}
