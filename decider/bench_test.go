package decider

import (
	"context"
	"fmt"
	"testing"

	"aegis.dev/aegis/decider/policy"
	"aegis.dev/aegis/decider/session"
	"aegis.dev/aegis/internal/stream"
	"aegis.dev/aegis/schemas/envelope"
)

// BenchmarkStep is one proposal through the decider's deterministic core:
// manifest resolution, call digest, input digest, policy evaluation (the
// default bundle) and the reducer step, on a session with history. Compare
// with BenchmarkEvalNaive in decider/policy, run in the same command:
//
//	go test -run '^$' -bench 'Step|EvalFast|EvalNaive' -count 5 ./decider/...
func BenchmarkStep(b *testing.B) {
	e := newEngine(b, policy.Default())
	ctx := context.Background()
	base := session.New("acme", "s")
	for seq := uint64(1); seq <= 3; seq++ {
		if err := e.Step(ctx, base, proposal("acme", seq, "search", fmt.Sprintf(`{"q":%d}`, seq))); err != nil {
			b.Fatal(err)
		}
	}
	ev := proposal("acme", 4, "web_fetch", `{"url":"https://api.example.com/v1/search?q=weather","timeout_ms":2000}`)
	b.ReportAllocs()
	for b.Loop() {
		snap := base.Clone()
		ev.Decision = nil
		if err := e.Step(ctx, snap, ev); err != nil {
			b.Fatal(err)
		}
		if ev.Decision.Outcome != envelope.Allow {
			b.Fatalf("benchmark proposal not allowed: %+v", ev.Decision)
		}
	}
}

// BenchmarkProcessBatch is the decider stage's per-record cost as the
// pipeline sees it: a transaction's batch of 100 records over 50 sessions
// (two events each: a model call and a proposal), with decode, sequence
// window, decision, canonical encoding, reply and one state record per
// touched session. Sessions end after 40 events, like the load test's, and
// new ones start. ns/op is per batch; divide by 100 for a record.
func BenchmarkProcessBatch(b *testing.B) {
	stage := NewStage(newEngine(b, policy.Default()), StageConfig{Topics: topics}, nil, nil)
	p := stage.NewProcessor(0)
	emit := func(stream.Output) {}
	seq, gen := uint64(0), 0
	batch := make([]*stream.Record, 0, 100)
	next := func() []*stream.Record {
		batch = batch[:0]
		if seq += 2; seq > 40 {
			seq, gen = 2, gen+1
		}
		for s := range 50 {
			sid := fmt.Sprintf("s%d-%d", s, gen)
			key := []byte("acme/" + sid)
			model := fmt.Sprintf(`{"tenant_id":"acme","session_id":%q,"seq":%d,"ts_unix_ms":%d,"event_type":"MODEL_CALL_STARTED","payload":{"model":"m","input_tokens":120}}`, sid, seq-1, 1000+seq)
			prop := fmt.Sprintf(`{"tenant_id":"acme","session_id":%q,"seq":%d,"ts_unix_ms":%d,"event_type":"TOOL_CALL_PROPOSED","payload":{"tool_name":"search","call_id":"c%d","args":{"q":"q%d"}}}`, sid, seq, 1001+seq, seq, seq)
			batch = append(batch, &stream.Record{Topic: topics.Events, Key: key, Value: []byte(model)},
				&stream.Record{Topic: topics.Events, Key: key, Value: []byte(prop)})
		}
		return batch
	}
	b.ReportAllocs()
	for b.Loop() {
		if err := p.Process(context.Background(), next(), emit); err != nil {
			b.Fatal(err)
		}
	}
}
