package policy

import (
	"context"
	"fmt"
	"io"
	"slices"
	"strings"

	"github.com/open-policy-agent/opa/v1/storage/inmem"
	"github.com/open-policy-agent/opa/v1/tester"
)

// Test runs the unit tests (rules named test_* in *_test.rego files) of the
// bundle in dir with OPA's test runner, compiled exactly as New compiles
// policies (Rego v1, the same Capabilities, builtin errors raised), and
// writes a human-readable report (one line per test, then failures and a
// summary) to w. passed and failed count the tests;
// a test that errors counts as failed. err is non-nil when the bundle
// cannot be loaded or compiled (wrapping ErrBundle), when it holds no test,
// or when the run itself fails; it is nil when tests merely fail. Each test
// has a 5 s timeout; cancelling ctx stops the run.
//
// It backs `aegisctl policy test DIR`.
func Test(ctx context.Context, dir string, w io.Writer) (passed, failed int, err error) {
	b, err := LoadDir(dir)
	if err != nil {
		return 0, 0, err
	}
	if _, err := New(b); err != nil {
		return 0, 0, err
	}
	modules, err := parseModules(b.Files, true)
	if err != nil {
		return 0, 0, err
	}
	ch, err := tester.NewRunner().
		SetCompiler(newCompiler()).
		SetStore(inmem.New()).
		RaiseBuiltinErrors(true).
		SetParallel(1).
		SetModules(modules).
		RunTests(ctx, nil)
	if err != nil {
		return 0, 0, fmt.Errorf("%w: test %s: %w", ErrBundle, dir, err)
	}
	var results []*tester.Result
	for r := range ch {
		results = append(results, r)
	}
	if len(results) == 0 {
		return 0, 0, fmt.Errorf("policy: test %s: no test_ rules in *_test.rego files", dir)
	}
	slices.SortFunc(results, func(a, b *tester.Result) int {
		if c := strings.Compare(a.Location.File, b.Location.File); c != 0 {
			return c
		}
		return a.Location.Row - b.Location.Row
	})
	report := make(chan *tester.Result, len(results))
	for _, r := range results {
		if r.Pass() {
			passed++
		} else if !r.Skip {
			failed++
		}
		report <- r
	}
	close(report)
	if err := (tester.PrettyReporter{Output: w, Verbose: true, FailureLine: true}).Report(report); err != nil {
		return passed, failed, fmt.Errorf("policy: test %s: report: %w", dir, err)
	}
	return passed, failed, ctx.Err()
}
