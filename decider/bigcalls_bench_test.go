package decider

import (
	"context"
	"fmt"
	"testing"

	"aegis.dev/aegis/decider/policy"
	"aegis.dev/aegis/decider/session"
)

// BenchmarkStepFullCallTable: BenchmarkStep on a session whose
// identical-call table is full (session.MaxCallDigests distinct calls).
func BenchmarkStepFullCallTable(b *testing.B) {
	e := newEngine(b, policy.Default())
	ctx := context.Background()
	base := session.New("acme", "s")
	base.Calls = make(map[string]int64, session.MaxCallDigests)
	for i := range session.MaxCallDigests {
		base.Calls[fmt.Sprintf("%064x", i)] = 1
	}
	base.LastSeq, base.FirstTsMs, base.LastTsMs = 3, 1767225600000, 1767225600000
	ev := proposal("acme", 4, "web_fetch", `{"url":"https://api.example.com/v1/search?q=weather","timeout_ms":2000}`)
	b.ReportAllocs()
	for b.Loop() {
		snap := base.Clone()
		ev.Decision = nil
		if err := e.Step(ctx, snap, ev); err != nil {
			b.Fatal(err)
		}
	}
}
