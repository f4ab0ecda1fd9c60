package policy

import (
	"context"
	"encoding/json"
	"fmt"
	"slices"
	"strings"
	"sync"
	"time"
	"unicode"
	"unicode/utf8"

	"github.com/open-policy-agent/opa/v1/ast"
	"github.com/open-policy-agent/opa/v1/metrics"
	"github.com/open-policy-agent/opa/v1/rego"
	"github.com/open-policy-agent/opa/v1/storage/inmem"

	"aegis.dev/aegis/decider/session"
	"aegis.dev/aegis/schemas/envelope"
	"aegis.dev/aegis/schemas/manifest"
)

// Queries the engine evaluates.
const (
	// DecisionQuery yields the decision object for one event.
	DecisionQuery = "data.aegis.decide.decision"
	// IndexQuery yields the per-manifest index (input: {"manifest": M}). A
	// bundle that does not define it simply gets no input.manifest_index.
	IndexQuery = "data.aegis.manifest.index"
)

// manifestCacheSize bounds the per-manifest cache (entries, one per
// distinct *manifest.Manifest).
const manifestCacheSize = 1024

// Input is what one decision is made from. See docs/policy.md for the JSON
// form the policy sees.
type Input struct {
	// Event is the event being decided; required.
	Event *envelope.Event
	// Snapshot is the session state from all events before Event; nil is
	// read as the empty session.
	Snapshot *session.Snapshot
	// Manifest is the manifest the session runs under, nil when none
	// resolved (the decision is then never allow). A manifest must not be
	// modified once passed to Eval: the engine caches its policy form per
	// pointer.
	Manifest *manifest.Manifest
	// CallDigest is the hex SHA-256 identifying (tool_name, canonical args)
	// of a TOOL_CALL_PROPOSED event, as keyed in Snapshot.Calls and
	// Approval.ArgsDigest.
	CallDigest string
}

// Result is a policy decision.
type Result struct {
	Outcome envelope.Outcome
	Reason  string
	// Constraints are set on allow only.
	Constraints envelope.Constraints
}

// policyError is the result of every failed evaluation.
var policyError = Result{Outcome: envelope.Deny, Reason: envelope.ReasonPolicyError}

// Engine evaluates one compiled bundle. It is safe for concurrent use; the
// bundle is compiled and the queries prepared once, in New.
type Engine struct {
	revision  string
	decide    rego.PreparedEvalQuery
	index     rego.PreparedEvalQuery
	manifests manifestCache
}

// New compiles b and prepares its queries. Parse and compile errors
// (including calls to builtins that are unavailable to policies, see
// Capabilities), and a b.Revision that is set but is not
// ComputeRevision(b.Files), are returned wrapping ErrBundle; the caller
// must not run without a policy.
func New(b *Bundle) (*Engine, error) {
	if b == nil {
		return nil, fmt.Errorf("%w: nil bundle", ErrBundle)
	}
	// The revision names the files: a decision must never record one
	// whose archived content decides otherwise.
	e := &Engine{revision: ComputeRevision(b.Files)}
	if b.Revision != "" && b.Revision != e.revision {
		return nil, fmt.Errorf("%w: revision %s is not that of the files (%s)", ErrBundle, b.Revision, e.revision)
	}
	compiler, err := compile(b.Files)
	if err != nil {
		return nil, err
	}
	prepare := func(query string) (rego.PreparedEvalQuery, error) {
		pq, err := rego.New(
			rego.Query(query),
			rego.Compiler(compiler),
			rego.Store(inmem.New()),
			rego.Capabilities(Capabilities()),
			rego.StrictBuiltinErrors(true),
			rego.GenerateJSON(rawValue),
		).PrepareForEval(context.Background())
		if err != nil {
			return pq, fmt.Errorf("%w: prepare %s: %w", ErrBundle, query, err)
		}
		return pq, nil
	}
	if e.decide, err = prepare(DecisionQuery); err != nil {
		return nil, err
	}
	if e.index, err = prepare(IndexQuery); err != nil {
		return nil, err
	}
	e.manifests.entries = make(map[*manifest.Manifest]manifestEntry)
	return e, nil
}

// Capabilities returns the OPA capabilities policies are compiled against:
// those of the linked OPA version minus every builtin OPA marks as
// nondeterministic (http.send, net.lookup_ip_addr, opa.runtime, rand.intn,
// uuid.rfc4122, io.jwt.encode_sign, ...), except time.now_ns, which Eval
// pins to the event's timestamp, and minus the certificate-chain checks,
// which OPA does not mark but which verify against the wall clock. A
// policy that calls a removed builtin does not compile.
func Capabilities() *ast.Capabilities {
	c := ast.CapabilitiesForThisVersion()
	c.Builtins = slices.DeleteFunc(c.Builtins, func(b *ast.Builtin) bool {
		return b.Nondeterministic && b.Name != ast.NowNanos.Name || wallClock[b.Name]
	})
	c.AllowNet = []string{}
	return c
}

// wallClock names the builtins that read the host's clock although OPA
// does not mark them nondeterministic: a replay after a certificate
// expired would decide otherwise.
var wallClock = map[string]bool{
	"crypto.x509.parse_and_verify_certificates":              true,
	"crypto.x509.parse_and_verify_certificates_with_options": true,
}

// compile parses and compiles the policy files (tests excluded).
func compile(files map[string]string) (*ast.Compiler, error) {
	modules, err := parseModules(files, false)
	if err != nil {
		return nil, err
	}
	c := newCompiler()
	if c.Compile(modules); c.Failed() {
		return nil, fmt.Errorf("%w: compile: %w", ErrBundle, c.Errors)
	}
	return c, nil
}

func newCompiler() *ast.Compiler {
	return ast.NewCompiler().
		WithCapabilities(Capabilities()).
		WithDefaultRegoVersion(ast.RegoV1)
}

// parseModules parses the bundle's Rego files as Rego v1, the test files
// too when withTests is set.
func parseModules(files map[string]string, withTests bool) (map[string]*ast.Module, error) {
	modules := make(map[string]*ast.Module, len(files))
	opts := ast.ParserOptions{RegoVersion: ast.RegoV1, Capabilities: Capabilities(), ProcessAnnotation: true}
	for path, src := range files {
		if isTestFile(path) && !withTests {
			continue
		}
		m, err := ast.ParseModuleWithOpts(path, src, opts)
		if err != nil {
			return nil, fmt.Errorf("%w: parse %s: %w", ErrBundle, path, err)
		}
		modules[path] = m
	}
	if len(modules) == 0 {
		return nil, fmt.Errorf("%w: no policy files", ErrBundle)
	}
	return modules, nil
}

// Revision returns the revision of the engine's bundle ("sha256:<hex>").
func (e *Engine) Revision() string { return e.revision }

// Eval decides one event. On an evaluation error, an undefined decision or a
// decision that does not have the documented shape, it returns a deny with
// reason POLICY_ERROR together with an error wrapping ErrEval, ErrUndefined
// or ErrMalformed. A payload that cannot be read as policy input (invalid
// JSON, duplicate keys, nesting deeper than 64) is a deny with reason
// INVALID_PROPOSAL and an error wrapping ErrInput; a nil in.Event is a
// POLICY_ERROR deny wrapping ErrInput. Eval never allows when in.Manifest
// is nil, whatever the policy says.
//
// Evaluation is deterministic: time.now_ns returns the event's timestamp.
// Cancelling ctx aborts the evaluation with an error.
func (e *Engine) Eval(ctx context.Context, in Input) (Result, error) {
	if in.Event == nil {
		return policyError, fmt.Errorf("%w: nil event", ErrInput)
	}
	if err := ctx.Err(); err != nil {
		return policyError, fmt.Errorf("%w: %w", ErrEval, err)
	}
	entry, err := e.manifestEntry(ctx, in.Manifest)
	if err != nil {
		return policyError, err
	}
	input, err := buildInput(in, entry.value, entry.index)
	if err != nil {
		return Result{Outcome: envelope.Deny, Reason: envelope.ReasonInvalidProposal}, err
	}
	res, err := e.evalDecision(ctx, input, in.Event.TsUnixMs)
	if err != nil {
		return policyError, err
	}
	if in.Manifest == nil && res.Outcome == envelope.Allow {
		return Result{Outcome: envelope.Deny, Reason: envelope.ReasonManifestUnknown}, nil
	}
	return res, nil
}

func (e *Engine) evalDecision(ctx context.Context, input ast.Value, tsMs int64) (Result, error) {
	rs, err := e.decide.Eval(ctx,
		rego.EvalParsedInput(input),
		rego.EvalTime(time.UnixMilli(tsMs)),
		rego.EvalSeed(zeroReader{}),
		// Nothing reads the evaluation's metrics; without this option OPA
		// allocates and times a fresh set on every call.
		rego.EvalMetrics(noMetrics),
	)
	if err != nil {
		return policyError, fmt.Errorf("%w: %w", ErrEval, err)
	}
	if len(rs) == 0 || len(rs[0].Expressions) == 0 {
		return policyError, fmt.Errorf("%w: %s", ErrUndefined, DecisionQuery)
	}
	if len(rs) > 1 {
		return policyError, fmt.Errorf("%w: %s has %d results", ErrMalformed, DecisionQuery, len(rs))
	}
	return parseDecision(rs[0].Expressions[0].Value)
}

// noMetrics discards evaluation metrics. It is stateless and shared.
var noMetrics = metrics.NoOp()

// rawValue makes query results ast.Values: the engine reads the decision
// and keeps the manifest index without converting them to Go values.
func rawValue(t *ast.Term, _ *rego.EvalContext) (any, error) { return t.Value, nil }

// parseDecision checks the shape of a decision value: an object with an
// outcome among the three outcomes, a reason string of 1 to maxReasonBytes
// bytes of valid UTF-8 without surrounding spaces or control characters
// (it is written into the decided event's canonical form, which takes
// nothing else) and, on allow, constraints with positive integer
// max_output_bytes and timeout_ms. Other keys are ignored.
func parseDecision(v any) (Result, error) {
	obj, ok := v.(ast.Object)
	if !ok {
		return policyError, fmt.Errorf("%w: decision is %v, not an object", ErrMalformed, v)
	}
	outcome, _ := getValue(obj, "outcome").(ast.String)
	reason, _ := getValue(obj, "reason").(ast.String)
	r := Result{Outcome: envelope.Outcome(outcome), Reason: string(reason)}
	switch r.Outcome {
	case envelope.Allow, envelope.Deny, envelope.RequireApproval:
	default:
		return policyError, fmt.Errorf("%w: outcome %v", ErrMalformed, getValue(obj, "outcome"))
	}
	if r.Reason == "" || strings.TrimSpace(r.Reason) != r.Reason || len(r.Reason) > maxReasonBytes ||
		!utf8.ValidString(r.Reason) || strings.ContainsFunc(r.Reason, unicode.IsControl) {
		return policyError, fmt.Errorf("%w: reason %v", ErrMalformed, getValue(obj, "reason"))
	}
	if r.Outcome != envelope.Allow {
		return r, nil
	}
	c, ok := getValue(obj, "constraints").(ast.Object)
	if !ok {
		return policyError, fmt.Errorf("%w: allow without constraints object", ErrMalformed)
	}
	var err error
	if r.Constraints.MaxOutputBytes, err = positiveInt(c, "max_output_bytes"); err != nil {
		return policyError, err
	}
	if r.Constraints.TimeoutMs, err = positiveInt(c, "timeout_ms"); err != nil {
		return policyError, err
	}
	return r, nil
}

// maxReasonBytes bounds a reason code; the built-in codes are at most 21.
const maxReasonBytes = 128

func getValue(obj ast.Object, key string) ast.Value {
	t := obj.Get(ast.InternedTerm(key))
	if t == nil {
		return nil
	}
	return t.Value
}

func positiveInt(obj ast.Object, key string) (int64, error) {
	n, ok := getValue(obj, key).(ast.Number)
	if !ok {
		return 0, fmt.Errorf("%w: constraints.%s is %v, not a number", ErrMalformed, key, getValue(obj, key))
	}
	i, err := json.Number(n).Int64()
	if err != nil || i <= 0 {
		return 0, fmt.Errorf("%w: constraints.%s = %s, not a positive integer", ErrMalformed, key, n)
	}
	return i, nil
}

// zeroReader is the fixed seed of every evaluation. No builtin left in
// Capabilities reads it; it is set so that nothing can fall back to a
// random source.
type zeroReader struct{}

func (zeroReader) Read(p []byte) (int, error) {
	clear(p)
	return len(p), nil
}

// manifestEntry is the cached policy form of one manifest.
type manifestEntry struct {
	value ast.Value // the manifest as input.manifest
	index ast.Value // data.aegis.manifest.index for it; nil if undefined
}

// manifestCache maps manifests (by pointer) to their policy form. When it
// is full, an arbitrary entry makes room: a miss costs one index evaluation.
type manifestCache struct {
	mu      sync.RWMutex
	entries map[*manifest.Manifest]manifestEntry
}

var nullEntry = manifestEntry{value: ast.Null{}}

// manifestEntry returns the cached entry for m, computing it on a miss.
func (e *Engine) manifestEntry(ctx context.Context, m *manifest.Manifest) (manifestEntry, error) {
	if m == nil {
		return nullEntry, nil
	}
	c := &e.manifests
	c.mu.RLock()
	entry, ok := c.entries[m]
	c.mu.RUnlock()
	if ok {
		return entry, nil
	}
	entry.value = manifestValue(m)
	rs, err := e.index.Eval(ctx,
		rego.EvalParsedInput(ast.NewObject([2]*ast.Term{keyManifest, ast.NewTerm(entry.value)})),
		rego.EvalTime(time.Unix(0, 0)),
		rego.EvalSeed(zeroReader{}),
	)
	if err != nil {
		return manifestEntry{}, fmt.Errorf("%w: %s for manifest %s@%s: %w", ErrEval, IndexQuery, m.Name, m.Version, err)
	}
	if len(rs) == 1 && len(rs[0].Expressions) == 1 {
		entry.index, _ = rs[0].Expressions[0].Value.(ast.Value)
	}
	c.mu.Lock()
	if len(c.entries) >= manifestCacheSize {
		for k := range c.entries {
			delete(c.entries, k)
			break
		}
	}
	c.entries[m] = entry
	c.mu.Unlock()
	return entry, nil
}
