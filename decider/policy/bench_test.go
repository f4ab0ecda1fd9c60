package policy

import (
	"context"
	"encoding/json"
	"fmt"
	"testing"

	"github.com/open-policy-agent/opa/v1/ast"

	"aegis.dev/aegis/decider/session"
	"aegis.dev/aegis/schemas/envelope"
)

// benchInput is a typical mid-session proposal that passes every rule, so
// that every rule is evaluated: an allowed network call with a URL, a
// session with history, calls, an approval and recent tools.
func benchInput(tb testing.TB) Input {
	tb.Helper()
	ev := proposal("http_get", `{"url":"https://api.example.com/v1/search?q=weather","method":"GET","headers":{"accept":"application/json"},"timeout_ms":2000}`)
	snap := snapshot()
	snap.Events, snap.Steps, snap.ToolCalls, snap.ModelCalls = 9, 4, 4, 3
	snap.RecentTools = []string{"search", "read_file", "http_get", "search"}
	snap.Calls = map[string]int64{}
	for i := range 4 {
		snap.Calls[fmt.Sprintf("%064x", i)] = 1
	}
	snap.Approvals = map[string]session.Approval{"c0": {ToolName: "deploy", ArgsDigest: "ab", State: "approved", RequestedSeq: 2}}
	snap.TaintSources = []string{"tool_result:c0"}
	in := Input{Event: ev, Snapshot: snap, Manifest: testManifest()}
	in.CallDigest = callDigest(tb, ev)
	return in
}

func checkAllow(tb testing.TB, r Result, err error) {
	if err != nil || r.Outcome != envelope.Allow {
		tb.Fatalf("benchmark input not allowed: %+v, %v", r, err)
	}
}

// BenchmarkEvalFast is the production path: Eval with the input built as
// ast values from the typed structs and the manifest's value and index
// cached.
func BenchmarkEvalFast(b *testing.B) {
	e := newEngine(b)
	in := benchInput(b)
	ctx := context.Background()
	r, err := e.Eval(ctx, in)
	checkAllow(b, r, err)
	b.ReportAllocs()
	for b.Loop() {
		_, _ = e.Eval(ctx, in)
	}
}

// BenchmarkEvalNaive evaluates the same prepared query the straightforward
// way: the input marshalled to JSON, decoded into map[string]any and passed
// with rego.EvalInput; the manifest index is derived by the Rego on every
// evaluation (no input.manifest_index).
func BenchmarkEvalNaive(b *testing.B) {
	e := newEngine(b)
	in := benchInput(b)
	ctx := context.Background()
	r, err := e.evalNaive(ctx, naiveInput(b, in), in.Event.TsUnixMs)
	checkAllow(b, r, err)
	b.ReportAllocs()
	for b.Loop() {
		_, _ = e.evalNaive(ctx, naiveInput(b, in), in.Event.TsUnixMs)
	}
}

// BenchmarkEvalNaiveIndexed is the naive input path with the cached index
// added to the map: it separates the cost of the input conversion from the
// cost of deriving the index.
func BenchmarkEvalNaiveIndexed(b *testing.B) {
	e := newEngine(b)
	in := benchInput(b)
	ctx := context.Background()
	entry, err := e.manifestEntry(ctx, in.Manifest)
	if err != nil {
		b.Fatal(err)
	}
	idxGo, err := ast.JSON(entry.index)
	if err != nil {
		b.Fatal(err)
	}
	idxJSON, err := json.Marshal(idxGo)
	if err != nil {
		b.Fatal(err)
	}
	build := func() map[string]any {
		m := naiveInput(b, in)
		var idx any
		if err := json.Unmarshal(idxJSON, &idx); err != nil {
			b.Fatal(err)
		}
		m["manifest_index"] = idx
		return m
	}
	r, err := e.evalNaive(ctx, build(), in.Event.TsUnixMs)
	checkAllow(b, r, err)
	b.ReportAllocs()
	for b.Loop() {
		_, _ = e.evalNaive(ctx, build(), in.Event.TsUnixMs)
	}
}

// BenchmarkEvalFastParallel runs Eval from GOMAXPROCS goroutines on one
// engine.
func BenchmarkEvalFastParallel(b *testing.B) {
	e := newEngine(b)
	in := benchInput(b)
	ctx := context.Background()
	r, err := e.Eval(ctx, in)
	checkAllow(b, r, err)
	b.ReportAllocs()
	b.RunParallel(func(pb *testing.PB) {
		for pb.Next() {
			_, _ = e.Eval(ctx, in)
		}
	})
	b.ReportMetric(float64(b.N)/b.Elapsed().Seconds(), "decisions/s")
}

// BenchmarkBuildInput is the cost of the typed ast input alone.
func BenchmarkBuildInput(b *testing.B) {
	in := benchInput(b)
	mv := manifestValue(in.Manifest)
	b.ReportAllocs()
	for b.Loop() {
		if _, err := buildInput(in, mv, nil); err != nil {
			b.Fatal(err)
		}
	}
}
