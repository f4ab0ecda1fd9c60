package decider

import (
	"context"
	"fmt"
	"math/rand/v2"
	"testing"
	"time"

	"aegis.dev/aegis/decider/policy"
	"aegis.dev/aegis/decider/session"
	"aegis.dev/aegis/internal/pipeline"
	"aegis.dev/aegis/internal/stream"
	"aegis.dev/aegis/loadtest"
	"aegis.dev/aegis/schemas/envelope"
	"aegis.dev/aegis/schemas/manifest"
)

// BenchmarkStep is one proposal through the decider's deterministic core:
// manifest resolution, call digest, input digest, policy evaluation (the
// default bundle) and the reducer step, on a session with history. Compare
// with BenchmarkEvalNaive in decider/policy, run in the same command:
//
//	go test -run '^$' -bench 'Step|EvalFast|EvalNaive' -count 5 ./decider/...
func BenchmarkStep(b *testing.B) {
	e := newEngine(b, policy.Default())
	base := session.New("acme", "s")
	for seq := uint64(1); seq <= 3; seq++ {
		if err := e.Step(context.Background(), base, proposal("acme", seq, "search", fmt.Sprintf(`{"q":%d}`, seq))); err != nil {
			b.Fatal(err)
		}
	}
	benchStep(b, e, base)
}

// BenchmarkStepFullCallTable is BenchmarkStep in a session whose
// identical-call table is full (session.MaxCallDigests distinct calls):
// the input digest and the policy input cover the whole table.
func BenchmarkStepFullCallTable(b *testing.B) {
	base := session.New("acme", "s")
	base.Calls = make(map[string]int64, session.MaxCallDigests)
	for i := range session.MaxCallDigests {
		base.Calls[fmt.Sprintf("%064x", i)] = 1
	}
	base.LastSeq, base.FirstTsMs, base.LastTsMs = 3, 1767225600000, 1767225600000
	benchStep(b, newEngine(b, policy.Default()), base)
}

// benchStep decides an allowed web_fetch proposal, seq 4, on copies of base.
func benchStep(b *testing.B, e *Engine, base *session.Snapshot) {
	ctx := context.Background()
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

// BenchmarkProcessMix is the decider stage's per-record cost on the load
// test's event mix (loadtest.DefaultMix: about one event in five a
// proposal, every event type, allowed, denied and approval-gated calls)
// under the example manifest the load test uses: 300 agents publishing
// interleaved, each running one session after another, cut into
// transactions of 500 records, with a state cache small enough to spill
// finished sessions as it does in a long run. ns/op is per batch; ns/event
// divides it by the batch size; cpu-ns/event is the CPU time the process
// used per record, garbage collection included, which other load on the
// machine disturbs less than elapsed time.
//
//	go test -run '^$' -bench ProcessMix -count 6 ./decider
func BenchmarkProcessMix(b *testing.B) {
	const agents, sessionsPerAgent, batchSize = 300, 8, 500
	pe, err := policy.New(policy.Default())
	if err != nil {
		b.Fatal(err)
	}
	reg, err := manifest.LoadDir("../deploy/manifests")
	if err != nil {
		b.Fatal(err)
	}
	// Each agent's sessions back to back, then the agents interleaved in a
	// shuffled order at every step, as a partition's log would hold them.
	r := rand.New(rand.NewPCG(1, 2))
	streams := make([][]*stream.Record, agents)
	for a := range agents {
		for s := range sessionsPerAgent {
			sid := fmt.Sprintf("bench-a%d-s%d", a, s)
			key := []byte(loadtest.Tenant + "/" + sid)
			for _, v := range loadtest.SessionEvents(loadtest.DefaultMix, sid, 1767225600000+int64(1000*s)) {
				streams[a] = append(streams[a], &stream.Record{Topic: topics.Events, Key: key, Value: v})
			}
		}
	}
	var all []*stream.Record
	for len(all) < agents*sessionsPerAgent*30 {
		for _, a := range r.Perm(agents) {
			if len(streams[a]) > 0 {
				all = append(all, streams[a][0])
				streams[a] = streams[a][1:]
			}
		}
	}
	var batches [][]*stream.Record
	for len(all) >= batchSize {
		batches = append(batches, all[:batchSize])
		all = all[batchSize:]
	}
	stage := NewStage(NewEngine(pe, reg), StageConfig{Topics: topics, Partitions: 1,
		State: pipeline.StateConfig{Sessions: 1000, Dir: b.TempDir()}}, nil, nil)
	outputs := map[string]int{}
	emit := func(o stream.Output) { outputs[o.Topic]++ }
	// The first batches, where every agent is in its first session, only
	// warm the processor up; the timed ones cycle over the rest, starting
	// again from a fresh processor (untimed) when they run out.
	const warm = 40
	var p stream.Processor
	restart := func() {
		if p != nil {
			_ = p.(interface{ Close() error }).Close()
		}
		p = stage.NewProcessor(0)
		for _, batch := range batches[:warm] {
			if err := p.Process(context.Background(), batch, emit); err != nil {
				b.Fatal(err)
			}
		}
	}
	restart()
	clear(outputs)
	n := 0
	var cpu time.Duration
	b.ReportAllocs()
	for b.Loop() {
		i := warm + n%(len(batches)-warm)
		if i == warm && n > 0 {
			b.StopTimer()
			restart()
			b.StartTimer()
		}
		start := processCPU()
		if err := p.Process(context.Background(), batches[i], emit); err != nil {
			b.Fatal(err)
		}
		cpu += processCPU() - start
		n++
	}
	b.ReportMetric(float64(b.Elapsed().Nanoseconds())/float64(n*batchSize), "ns/event")
	if cpu > 0 {
		b.ReportMetric(float64(cpu.Nanoseconds())/float64(n*batchSize), "cpu-ns/event")
	}
	_ = p.(interface{ Close() error }).Close()
	if outputs[topics.Rejected] != 0 || outputs[topics.Decided] < n*batchSize {
		b.Fatalf("outputs %v for %d records", outputs, n*batchSize)
	}
}
