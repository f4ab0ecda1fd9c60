package decider

import (
	"context"
	"encoding/json"
	"fmt"
	"io"
	"testing"

	"github.com/prometheus/client_golang/prometheus"

	"aegis.dev/aegis/decider/policy"
	"aegis.dev/aegis/internal/pipeline"
	"aegis.dev/aegis/internal/stream"
)

var topics = pipeline.NewTopics("aegis.")

func rec(seq uint64, tool string) *stream.Record {
	key := []byte("acme/s")
	v := fmt.Sprintf(`{"tenant_id":"acme","session_id":"s","seq":%d,"ts_unix_ms":%d,"event_type":"TOOL_CALL_PROPOSED","payload":{"tool_name":"search","call_id":"c%d","args":{"q":%q}}}`, seq, 1000+seq, seq, tool)
	return &stream.Record{Topic: topics.Events, Partition: stream.Partition(key, 3), Key: key, Value: []byte(v)}
}

func process(tb testing.TB, p stream.Processor, recs ...*stream.Record) map[string][]stream.Output {
	tb.Helper()
	out := map[string][]stream.Output{}
	if err := p.Process(context.Background(), recs, func(o stream.Output) { out[o.Topic] = append(out[o.Topic], o) }); err != nil {
		tb.Fatal(err)
	}
	return out
}

// TestStateRestoreContinuesSession guards the decider's checkpointing: a
// processor restored from the state it emitted decides exactly as one that
// never stopped.
func TestStateRestoreContinuesSession(t *testing.T) {
	stage := NewStage(newEngine(t, policy.Default()), StageConfig{Topics: topics, Partitions: 3}, nil, nil)
	// Queries: the third "a" is the 3rd identical call (LOOP_DETECTED),
	// which then sticks; max_tool_calls 4 exceeds the budget first later.
	tools := []string{"a", "b", "a", "a", "c", "d", "e"}
	var recs []*stream.Record
	for i, tool := range tools {
		recs = append(recs, rec(uint64(i+1), tool))
	}

	straight := process(t, stage.NewProcessor(0), recs...)

	first := stage.NewProcessor(0)
	out1 := process(t, first, recs[:3]...)
	if len(out1[topics.DeciderState]) != 1 {
		t.Fatalf("%d state records for one session", len(out1[topics.DeciderState]))
	}
	second := stage.NewProcessor(0)
	st := out1[topics.DeciderState][0]
	if err := second.Restore(st.Key, st.Value); err != nil {
		t.Fatal(err)
	}
	out2 := process(t, second, append([]*stream.Record{recs[1]}, recs[3:]...)...) // a retry, then the rest

	joined := append(append([]stream.Output(nil), out1[topics.Decisions]...), out2[topics.Decisions]...)
	if len(joined) != len(straight[topics.Decisions]) {
		t.Fatalf("%d replies after restore, %d straight", len(joined), len(straight[topics.Decisions]))
	}
	for i := range joined {
		if string(joined[i].Value) != string(straight[topics.Decisions][i].Value) {
			t.Fatalf("reply %d differs:\n%s\n%s", i, joined[i].Value, straight[topics.Decisions][i].Value)
		}
	}
	var reasons []string
	for _, o := range straight[topics.Decisions] {
		var r Reply
		_ = json.Unmarshal(o.Value, &r)
		reasons = append(reasons, r.Reason)
	}
	if want := "[OK OK OK LOOP_DETECTED BUDGET_EXCEEDED BUDGET_EXCEEDED BUDGET_EXCEEDED]"; fmt.Sprint(reasons) != want {
		t.Fatalf("reasons %v, want %s", reasons, want)
	}
	if len(out2[topics.Rejected]) != 0 {
		t.Fatalf("retry after restore was rejected: %s", out2[topics.Rejected][0].Value)
	}
}

func TestRestoreRejectsInconsistentState(t *testing.T) {
	pe, _ := policy.New(policy.Default())
	p := NewStage(NewEngine(pe, nil), StageConfig{Topics: topics, Partitions: 3}, nil, nil).NewProcessor(0)
	for name, v := range map[string]string{
		"not json":      `{`,
		"no snapshot":   `{"window":{"last_seq":1}}`,
		"other session": `{"window":{"last_seq":0},"snapshot":{"tenant_id":"acme","session_id":"x"}}`,
		"window ahead":  `{"window":{"last_seq":3},"snapshot":{"tenant_id":"acme","session_id":"s","last_seq":2}}`,
	} {
		if err := p.Restore([]byte("acme/s"), []byte(v)); err == nil {
			t.Errorf("%s: accepted", name)
		}
	}
}

// TestSpilledStateDecidesAlike runs many interleaved sessions through a
// processor that may keep only two of them in memory, through one whose
// byte bound (--state-bytes) holds only a few, and through one that keeps
// all: every output (decided events, replies, state records) must be
// byte-identical, so spilling is invisible to the log.
func TestSpilledStateDecidesAlike(t *testing.T) {
	eng := newEngine(t, policy.Default())
	var recs []*stream.Record
	tools := []string{"a", "b", "a", "a", "c", "d", "e"}
	for i, tool := range tools {
		for s := range 12 {
			key := []byte(fmt.Sprintf("acme/s%d", s))
			v := fmt.Sprintf(`{"tenant_id":"acme","session_id":"s%d","seq":%d,"ts_unix_ms":%d,"event_type":"TOOL_CALL_PROPOSED","payload":{"tool_name":"search","call_id":"c%d","args":{"q":%q}}}`, s, i+1, 1000+i, i, tool)
			recs = append(recs, &stream.Record{Topic: topics.Events, Key: key, Value: []byte(v)})
		}
	}
	run := func(sessions int, bytes int64) []stream.Output {
		reg := prometheus.NewRegistry()
		stage := NewStage(eng, StageConfig{Topics: topics, State: pipeline.StateConfig{Sessions: sessions, Bytes: bytes, Dir: t.TempDir()}}, reg, nil)
		p := stage.NewProcessor(0)
		defer p.(io.Closer).Close()
		var out []stream.Output
		for i := 0; i < len(recs); i += 5 { // batches that straddle sessions
			batch := process(t, p, recs[i:min(i+5, len(recs))]...)
			for _, topic := range []string{topics.Decided, topics.Decisions, topics.DeciderState, topics.Rejected} {
				out = append(out, batch[topic]...)
			}
		}
		cache := p.(*processor).sessions
		if (sessions < 12 || bytes > 0) && cache.Stats().Loaded == 0 {
			t.Fatalf("with room for %d sessions or %d bytes nothing was read back from the spill file", sessions, bytes)
		}
		if bytes > 0 && cache.HotBytes() > bytes {
			t.Fatalf("%d bytes of state held, bound %d", cache.HotBytes(), bytes)
		}
		return out
	}
	all := run(1000, 0)
	for _, bound := range []struct {
		sessions int
		bytes    int64
	}{{2, 0}, {1000, 4 << 10}} {
		spilled := run(bound.sessions, bound.bytes)
		if len(all) != len(spilled) || len(all) != 3*len(recs) {
			t.Fatalf("%+v: %d outputs with spilling, %d without, want %d", bound, len(spilled), len(all), 3*len(recs))
		}
		for i := range all {
			if all[i].Topic != spilled[i].Topic || string(all[i].Key) != string(spilled[i].Key) || string(all[i].Value) != string(spilled[i].Value) {
				t.Fatalf("%+v: output %d differs:\n%s %s\n%s %s", bound, i, all[i].Topic, all[i].Value, spilled[i].Topic, spilled[i].Value)
			}
		}
	}
}

// TestMistypedPayloadFieldIsRejected: a payload field the envelope does not
// check for the event's type but the reducer reads (here is_error on a model
// call) must not stop the stage: the event is rejected INVALID_FIELD, the
// session is unchanged, and the corrected event is then accepted.
func TestMistypedPayloadFieldIsRejected(t *testing.T) {
	stage := NewStage(newEngine(t, policy.Default()), StageConfig{Topics: topics, Partitions: 3}, nil, nil)
	p := stage.NewProcessor(0)
	ev := func(payload string) *stream.Record {
		key := []byte("acme/s")
		v := fmt.Sprintf(`{"tenant_id":"acme","session_id":"s","seq":1,"ts_unix_ms":1000,"event_type":"MODEL_CALL_STARTED","payload":%s}`, payload)
		return &stream.Record{Topic: topics.Events, Partition: stream.Partition(key, 3), Key: key, Value: []byte(v)}
	}
	for _, bad := range []string{`{"is_error":"x"}`, `{"key":5}`, `{"tool_name":["a"]}`} {
		out := process(t, p, ev(bad))
		if len(out[topics.Rejected]) != 1 || len(out[topics.Decided]) != 0 || len(out[topics.DeciderState]) != 0 {
			t.Fatalf("%s: outputs %v, want one rejection only", bad, out)
		}
		var r pipeline.Rejection
		if err := json.Unmarshal(out[topics.Rejected][0].Value, &r); err != nil || r.Reason != "INVALID_FIELD" || r.Seq != 1 {
			t.Fatalf("%s: rejection %s (%v), want INVALID_FIELD for seq 1", bad, out[topics.Rejected][0].Value, err)
		}
	}
	out := process(t, p, ev(`{"model":"m"}`))
	if len(out[topics.Decided]) != 1 || len(out[topics.Rejected]) != 0 {
		t.Fatalf("corrected event: outputs %v, want it decided", out)
	}
}

// TestRestoredStatesCountTowardTheByteBound: states restored from the
// state topic count toward --state-bytes like decided ones, so an instance
// taking over a partition full of large states does not hold them all;
// the spilled ones decide on exactly as if kept.
func TestRestoredStatesCountTowardTheByteBound(t *testing.T) {
	eng := newEngine(t, policy.Default())
	proposal := func(s, seq int) *stream.Record {
		key := []byte(fmt.Sprintf("acme/s%d", s))
		v := fmt.Sprintf(`{"tenant_id":"acme","session_id":"s%d","seq":%d,"ts_unix_ms":%d,"event_type":"TOOL_CALL_PROPOSED","payload":{"tool_name":"search","call_id":"c%d","args":{"q":"q%d"}}}`, s, seq, 1000+seq, seq, seq)
		return &stream.Record{Topic: topics.Events, Key: key, Value: []byte(v)}
	}
	var first, next []*stream.Record
	for s := range 20 {
		for seq := 1; seq <= 5; seq++ {
			first = append(first, proposal(s, seq))
		}
		next = append(next, proposal(s, 6))
	}
	newProc := func(bytes int64) *processor {
		stage := NewStage(eng, StageConfig{Topics: topics, State: pipeline.StateConfig{Bytes: bytes, Dir: t.TempDir()}}, nil, nil)
		p := stage.NewProcessor(0).(*processor)
		t.Cleanup(func() { _ = p.Close() })
		return p
	}
	kept := newProc(0)
	states := process(t, kept, first...)[topics.DeciderState]
	if len(states) != 20 {
		t.Fatalf("%d state records, want 20", len(states))
	}
	const bound = 4 << 10
	restored := newProc(bound)
	for _, st := range states {
		if err := restored.Restore(st.Key, st.Value); err != nil {
			t.Fatal(err)
		}
	}
	if hot, spilled := restored.sessions.Len(); restored.sessions.HotBytes() > bound || spilled == 0 {
		t.Fatalf("after restoring 20 states (%d bytes each) under a %d-byte bound: %d hot, %d spilled, %d bytes held",
			len(states[0].Value), bound, hot, spilled, restored.sessions.HotBytes())
	}
	want, got := process(t, kept, next...), process(t, restored, next...)
	for _, topic := range []string{topics.Decided, topics.Decisions, topics.DeciderState} {
		if len(got[topic]) != len(want[topic]) || len(want[topic]) != 20 {
			t.Fatalf("%s: %d records after the restore, %d kept", topic, len(got[topic]), len(want[topic]))
		}
		for i := range want[topic] {
			if string(got[topic][i].Value) != string(want[topic][i].Value) {
				t.Fatalf("%s record %d differs:\n%s\n%s", topic, i, got[topic][i].Value, want[topic][i].Value)
			}
		}
	}
}
