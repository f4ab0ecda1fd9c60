package policy

import (
	"bytes"
	"encoding/json"
	"fmt"
	"strconv"
	"strings"
	"unicode"
	"unicode/utf8"

	"github.com/open-policy-agent/opa/v1/ast"

	"aegis.dev/aegis/decider/session"
	"aegis.dev/aegis/schemas/envelope"
	"aegis.dev/aegis/schemas/manifest"
)

// The builders below produce, straight from the typed structs, the same
// ast.Value that OPA would obtain from the struct's encoding/json form
// (same keys, same omitempty rules, numbers equal). TestInputMatchesJSON
// holds them to that, with every field of every struct populated.

// Input keys and reused terms.
var (
	keyEvent         = ast.StringTerm("event")
	keySnapshot      = ast.StringTerm("snapshot")
	keyManifest      = ast.StringTerm("manifest")
	keyManifestIndex = ast.StringTerm("manifest_index")
	keyCallDigest    = ast.StringTerm("call_digest")
)

// buildInput assembles the policy input object. manifestValue is the cached
// value of the manifest (ast.Null when there is none); index is the cached
// manifest index or nil.
func buildInput(in Input, manifestValue, index ast.Value) (ast.Value, error) {
	ev, err := eventValue(in.Event)
	if err != nil {
		return nil, err
	}
	snap := in.Snapshot
	if snap == nil {
		snap = &session.Snapshot{}
	}
	terms := [][2]*ast.Term{
		{keyEvent, ast.NewTerm(ev)},
		{keySnapshot, ast.NewTerm(snapshotValue(snap))},
		{keyManifest, ast.NewTerm(manifestValue)},
		{keyCallDigest, ast.StringTerm(in.CallDigest)},
	}
	if index != nil {
		terms = append(terms, [2]*ast.Term{keyManifestIndex, ast.NewTerm(index)})
	}
	return ast.NewObject(terms...), nil
}

// object is a small helper to build an ast object field by field.
type object struct{ o ast.Object }

func newObject(n int) object { return object{ast.NewObjectWithCapacity(n)} }

// keyTerms holds one immutable term per field name the builders write, so
// that building an input does not allocate its keys. Never modified after
// package initialisation.
var keyTerms = func() map[string]*ast.Term {
	m := make(map[string]*ast.Term)
	for _, k := range []string{
		// envelope.Event, envelope.Decision, envelope.Constraints
		"v", "tenant_id", "session_id", "seq", "ts_unix_ms", "event_type", "manifest",
		"payload", "decision", "prev_hash", "hash", "outcome", "reason", "constraints",
		"max_output_bytes", "timeout_ms", "policy_revision", "manifest_digest", "input_digest",
		// session.Snapshot and its parts
		"last_seq", "first_ts_ms", "last_ts_ms", "events", "steps", "model_calls",
		"tool_calls", "tainted", "taint_sources", "sanitizer_keys", "handoff", "state",
		"from", "to", "approvals", "tool_name", "args_digest", "requested_seq",
		"requested_ts_ms", "calls", "recent_tools", "consecutive_errors", "loop",
		"detected", "terminated",
		// manifest.Manifest
		"schema", "name", "version", "publisher", "permissions", "tools", "net", "domains",
		"exec", "allowed_bins", "approval_required", "budgets", "max_steps", "max_tool_calls",
		"max_wall_time_ms", "max_identical_calls", "sandbox", "required", "image",
		"integrity", "tree_sha256", "signature",
		// payload keys the default policy reads
		"call_id", "args", "domain", "url", "bin", "path",
	} {
		m[k] = ast.StringTerm(k)
	}
	return m
}()

// keyTerm returns the term for an object key, shared when it is a known key.
func keyTerm(k string) *ast.Term {
	if t, ok := keyTerms[k]; ok {
		return t
	}
	return ast.StringTerm(k)
}

func (o object) str(k, v string) { o.o.Insert(keyTerm(k), ast.StringTerm(v)) }
func (o object) strOmit(k, v string) {
	if v != "" {
		o.str(k, v)
	}
}
func (o object) i64(k string, v int64) { o.o.Insert(keyTerm(k), intTerm(v)) }
func (o object) i64Omit(k string, v int64) {
	if v != 0 {
		o.i64(k, v)
	}
}
func (o object) u64(k string, v uint64) { o.o.Insert(keyTerm(k), uintTerm(v)) }
func (o object) u64Omit(k string, v uint64) {
	if v != 0 {
		o.u64(k, v)
	}
}
func (o object) boolean(k string, v bool)  { o.o.Insert(keyTerm(k), ast.InternedTerm(v)) }
func (o object) val(k string, v ast.Value) { o.o.Insert(keyTerm(k), ast.NewTerm(v)) }

func intTerm(v int64) *ast.Term {
	if v >= 0 && v <= 512 {
		return ast.InternedTerm(int(v))
	}
	return ast.NumberTerm(json.Number(strconv.FormatInt(v, 10)))
}

func uintTerm(v uint64) *ast.Term {
	if v <= 512 {
		return ast.InternedTerm(int(v))
	}
	return ast.NumberTerm(json.Number(strconv.FormatUint(v, 10)))
}

// stringsValue encodes a []string as an array; nil is the empty array, as
// manifest.Manifest's MarshalJSON writes it (snapshot lists are omitempty
// and never reach here empty).
func stringsValue(s []string) ast.Value {
	terms := make([]*ast.Term, len(s))
	for i, v := range s {
		terms[i] = ast.StringTerm(v)
	}
	return ast.NewArray(terms...)
}

// eventValue encodes an envelope.Event.
func eventValue(e *envelope.Event) (ast.Value, error) {
	if e == nil {
		return nil, fmt.Errorf("%w: nil event", ErrInput)
	}
	payload, err := jsonValue(e.Payload)
	if err != nil {
		return nil, fmt.Errorf("%w: event %s/%s/%d payload: %w", ErrInput, e.TenantID, e.SessionID, e.Seq, err)
	}
	o := newObject(12)
	o.i64("v", int64(e.V))
	o.str("tenant_id", e.TenantID)
	o.str("session_id", e.SessionID)
	o.u64("seq", e.Seq)
	o.i64("ts_unix_ms", e.TsUnixMs)
	o.str("event_type", string(e.Type))
	o.strOmit("manifest", e.Manifest)
	o.val("payload", payload)
	if d := e.Decision; d != nil {
		dec := newObject(6)
		dec.str("outcome", string(d.Outcome))
		dec.str("reason", d.Reason)
		c := newObject(2)
		c.i64Omit("max_output_bytes", d.Constraints.MaxOutputBytes)
		c.i64Omit("timeout_ms", d.Constraints.TimeoutMs)
		dec.val("constraints", c.o)
		dec.str("policy_revision", d.PolicyRevision)
		dec.str("manifest_digest", d.ManifestDigest)
		dec.str("input_digest", d.InputDigest)
		o.val("decision", dec.o)
	}
	o.strOmit("prev_hash", e.PrevHash)
	o.strOmit("hash", e.Hash)
	return o.o, nil
}

// snapshotValue encodes a session.Snapshot.
func snapshotValue(s *session.Snapshot) ast.Value {
	o := newObject(24)
	o.str("tenant_id", s.TenantID)
	o.str("session_id", s.SessionID)
	o.strOmit("manifest", s.Manifest)
	o.u64("last_seq", s.LastSeq)
	o.i64("first_ts_ms", s.FirstTsMs)
	o.i64("last_ts_ms", s.LastTsMs)
	o.i64("events", s.Events)
	o.i64("steps", s.Steps)
	o.i64("model_calls", s.ModelCalls)
	o.i64("tool_calls", s.ToolCalls)
	o.boolean("tainted", s.Tainted)
	if len(s.TaintSources) > 0 {
		o.val("taint_sources", stringsValue(s.TaintSources))
	}
	if len(s.SanitizerKeys) > 0 {
		o.val("sanitizer_keys", stringsValue(s.SanitizerKeys))
	}
	h := newObject(3)
	h.strOmit("state", s.Handoff.State)
	h.strOmit("from", s.Handoff.From)
	h.strOmit("to", s.Handoff.To)
	o.val("handoff", h.o)
	if len(s.Approvals) > 0 {
		ap := ast.NewObjectWithCapacity(len(s.Approvals))
		for id, a := range s.Approvals {
			v := newObject(5)
			v.str("tool_name", a.ToolName)
			v.str("args_digest", a.ArgsDigest)
			v.str("state", a.State)
			v.u64("requested_seq", a.RequestedSeq)
			v.i64("requested_ts_ms", a.RequestedTsMs)
			ap.Insert(ast.StringTerm(id), ast.NewTerm(v.o))
		}
		o.val("approvals", ap)
	}
	if len(s.Calls) > 0 {
		calls := ast.NewObjectWithCapacity(len(s.Calls))
		for d, n := range s.Calls {
			calls.Insert(ast.StringTerm(d), intTerm(n))
		}
		o.val("calls", calls)
	}
	if len(s.RecentTools) > 0 {
		o.val("recent_tools", stringsValue(s.RecentTools))
	}
	o.i64("consecutive_errors", s.ConsecutiveErrors)
	l := newObject(2)
	l.boolean("detected", s.Loop.Detected)
	l.u64Omit("seq", s.Loop.Seq)
	o.val("loop", l.o)
	o.boolean("terminated", s.Terminated)
	return o.o
}

// manifestValue encodes a manifest.Manifest; nil is null.
func manifestValue(m *manifest.Manifest) ast.Value {
	if m == nil {
		return ast.Null{}
	}
	p := m.Permissions
	perms := newObject(5)
	perms.val("tools", stringsValue(p.Tools))
	net := newObject(1)
	net.val("domains", stringsValue(p.Net.Domains))
	perms.val("net", net.o)
	exec := newObject(1)
	exec.val("allowed_bins", stringsValue(p.Exec.AllowedBins))
	perms.val("exec", exec.o)
	perms.val("approval_required", stringsValue(p.ApprovalRequired))
	b := newObject(6)
	b.i64Omit("max_steps", p.Budgets.MaxSteps)
	b.i64Omit("max_tool_calls", p.Budgets.MaxToolCalls)
	b.i64Omit("max_wall_time_ms", p.Budgets.MaxWallTimeMs)
	b.i64Omit("max_output_bytes", p.Budgets.MaxOutputBytes)
	b.i64Omit("timeout_ms", p.Budgets.TimeoutMs)
	b.i64Omit("max_identical_calls", p.Budgets.MaxIdenticalCalls)
	perms.val("budgets", b.o)

	sb := newObject(2)
	sb.boolean("required", m.Sandbox.Required)
	sb.strOmit("image", m.Sandbox.Image)
	in := newObject(2)
	in.strOmit("tree_sha256", m.Integrity.TreeSHA256)
	in.strOmit("signature", m.Integrity.Signature)

	o := newObject(7)
	o.str("schema", m.Schema)
	o.str("name", m.Name)
	o.str("version", m.Version)
	o.str("publisher", m.Publisher)
	o.val("permissions", perms.o)
	o.val("sandbox", sb.o)
	o.val("integrity", in.o)
	return o.o
}

// maxJSONDepth bounds the nesting of payloads turned into policy input.
const maxJSONDepth = 64

// jsonValue parses one JSON document into an ast.Value. It accepts exactly
// what encoding/json accepts, reads strings as encoding/json does (invalid
// UTF-8 becomes U+FFFD), and in addition rejects duplicate object keys
// (which JSON parsers resolve differently, so the policy and the tool could
// otherwise see different arguments) and nesting deeper than maxJSONDepth.
// An empty document is null, as encoding/json writes a nil RawMessage.
func jsonValue(data []byte) (ast.Value, error) {
	if len(data) == 0 {
		return ast.Null{}, nil
	}
	p := jsonParser{data: data}
	v, err := p.value(0)
	if err != nil {
		return nil, err
	}
	p.space()
	if p.pos != len(p.data) {
		return nil, p.errorf("trailing data")
	}
	return v, nil
}

type jsonParser struct {
	data []byte
	pos  int
}

func (p *jsonParser) errorf(format string, args ...any) error {
	return fmt.Errorf("json at offset %d: %s", p.pos, fmt.Sprintf(format, args...))
}

func (p *jsonParser) space() {
	for p.pos < len(p.data) {
		switch p.data[p.pos] {
		case ' ', '\t', '\n', '\r':
			p.pos++
		default:
			return
		}
	}
}

func (p *jsonParser) value(depth int) (ast.Value, error) {
	if depth > maxJSONDepth {
		return nil, p.errorf("nesting deeper than %d", maxJSONDepth)
	}
	p.space()
	if p.pos >= len(p.data) {
		return nil, p.errorf("unexpected end")
	}
	switch c := p.data[p.pos]; {
	case c == '{':
		return p.object(depth)
	case c == '[':
		return p.array(depth)
	case c == '"':
		s, err := p.string()
		if err != nil {
			return nil, err
		}
		return ast.String(s), nil
	case c == 't':
		return p.literal("true", ast.Boolean(true))
	case c == 'f':
		return p.literal("false", ast.Boolean(false))
	case c == 'n':
		return p.literal("null", ast.Null{})
	case c == '-' || (c >= '0' && c <= '9'):
		return p.number()
	default:
		return nil, p.errorf("unexpected %q", c)
	}
}

func (p *jsonParser) literal(lit string, v ast.Value) (ast.Value, error) {
	if !bytes.HasPrefix(p.data[p.pos:], []byte(lit)) {
		return nil, p.errorf("invalid literal")
	}
	p.pos += len(lit)
	return v, nil
}

func (p *jsonParser) object(depth int) (ast.Value, error) {
	p.pos++ // '{'
	obj := ast.NewObject()
	p.space()
	if p.pos < len(p.data) && p.data[p.pos] == '}' {
		p.pos++
		return obj, nil
	}
	// Keys seen so far, to refuse two that differ only in letter case:
	// compared directly while the object is small, by folded form after.
	var small [8]string
	var nsmall int
	var folded map[string]string
	for {
		p.space()
		if p.pos >= len(p.data) || p.data[p.pos] != '"' {
			return nil, p.errorf("expected object key")
		}
		k, err := p.string()
		if err != nil {
			return nil, err
		}
		p.space()
		if p.pos >= len(p.data) || p.data[p.pos] != ':' {
			return nil, p.errorf("expected ':'")
		}
		p.pos++
		v, err := p.value(depth + 1)
		if err != nil {
			return nil, err
		}
		key := keyTerm(k)
		if obj.Get(key) != nil {
			return nil, p.errorf("duplicate object key %q", k)
		}
		if nsmall < len(small) {
			for _, o := range small[:nsmall] {
				if strings.EqualFold(o, k) {
					return nil, p.errorf("object keys %q and %q differ only in letter case", o, k)
				}
			}
			small[nsmall] = k
			nsmall++
		} else {
			if folded == nil {
				folded = make(map[string]string, 2*len(small))
				for _, o := range small {
					folded[foldKey(o)] = o
				}
			}
			fk := foldKey(k)
			if o, ok := folded[fk]; ok {
				return nil, p.errorf("object keys %q and %q differ only in letter case", o, k)
			}
			folded[fk] = k
		}
		obj.Insert(key, ast.NewTerm(v))
		p.space()
		if p.pos >= len(p.data) {
			return nil, p.errorf("unexpected end in object")
		}
		switch p.data[p.pos] {
		case ',':
			p.pos++
		case '}':
			p.pos++
			return obj, nil
		default:
			return nil, p.errorf("expected ',' or '}'")
		}
	}
}

// foldKey maps s to one representative of its case-folding class: each
// rune becomes the smallest rune of its Unicode simple-folding orbit, so
// foldKey(a) == foldKey(b) exactly when strings.EqualFold(a, b) (the
// Kelvin sign and "k", the long s and "s" included).
func foldKey(s string) string {
	ascii := true
	for i := 0; i < len(s); i++ {
		if s[i] >= utf8.RuneSelf {
			ascii = false
			break
		}
	}
	if ascii {
		return strings.ToUpper(s) // upper case is the smallest of an ASCII letter's orbit
	}
	var b strings.Builder
	for _, r := range s {
		m := r
		for f := unicode.SimpleFold(r); f != r; f = unicode.SimpleFold(f) {
			m = min(m, f)
		}
		b.WriteRune(m)
	}
	return b.String()
}

func (p *jsonParser) array(depth int) (ast.Value, error) {
	p.pos++ // '['
	var terms []*ast.Term
	p.space()
	if p.pos < len(p.data) && p.data[p.pos] == ']' {
		p.pos++
		return ast.NewArray(), nil
	}
	for {
		v, err := p.value(depth + 1)
		if err != nil {
			return nil, err
		}
		terms = append(terms, ast.NewTerm(v))
		p.space()
		if p.pos >= len(p.data) {
			return nil, p.errorf("unexpected end in array")
		}
		switch p.data[p.pos] {
		case ',':
			p.pos++
		case ']':
			p.pos++
			return ast.NewArray(terms...), nil
		default:
			return nil, p.errorf("expected ',' or ']'")
		}
	}
}

// string reads a string token. Plain strings (no escapes, no control
// characters, valid UTF-8) are sliced directly; others are decoded by
// encoding/json so that escapes and invalid bytes are read as it reads them.
func (p *jsonParser) string() (string, error) {
	start := p.pos
	p.pos++ // '"'
	plain := true
	for p.pos < len(p.data) {
		c := p.data[p.pos]
		switch {
		case c == '"':
			p.pos++
			raw := p.data[start:p.pos]
			if plain && utf8.Valid(raw) {
				return string(raw[1 : len(raw)-1]), nil
			}
			var s string
			if err := json.Unmarshal(raw, &s); err != nil {
				p.pos = start
				return "", p.errorf("invalid string: %v", err)
			}
			return s, nil
		case c == '\\':
			plain = false
			p.pos += 2
		case c < 0x20:
			return "", p.errorf("control character in string")
		default:
			p.pos++
		}
	}
	return "", p.errorf("unterminated string")
}

// number reads a number token following the JSON grammar exactly.
func (p *jsonParser) number() (ast.Value, error) {
	start := p.pos
	d := p.data
	if d[p.pos] == '-' {
		p.pos++
	}
	digits := func() int {
		n := 0
		for p.pos < len(d) && d[p.pos] >= '0' && d[p.pos] <= '9' {
			p.pos++
			n++
		}
		return n
	}
	if p.pos < len(d) && d[p.pos] == '0' {
		p.pos++
	} else if digits() == 0 {
		return nil, p.errorf("invalid number")
	}
	if p.pos < len(d) && d[p.pos] == '.' {
		p.pos++
		if digits() == 0 {
			return nil, p.errorf("invalid number")
		}
	}
	if p.pos < len(d) && (d[p.pos] == 'e' || d[p.pos] == 'E') {
		p.pos++
		if p.pos < len(d) && (d[p.pos] == '+' || d[p.pos] == '-') {
			p.pos++
		}
		if digits() == 0 {
			return nil, p.errorf("invalid number")
		}
	}
	return ast.Number(d[start:p.pos]), nil
}
