package decider

import (
	"context"
	"fmt"
	"testing"

	"aegis.dev/aegis/decider/policy"
	"aegis.dev/aegis/decider/session"
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
