package ingest

import (
	"encoding/json"
	"fmt"
	"os"
	"path/filepath"
	"regexp"
	"slices"
	"strconv"
	"strings"
	"testing"

	"aegis.dev/aegis/internal/yamldoc"
)

// TestOpenAPIDocumentsEveryRoute guards schemas/openapi.yaml against
// drifting from the routes the server registers.
func TestOpenAPIDocumentsEveryRoute(t *testing.T) {
	t.Parallel()
	raw, err := os.ReadFile("../schemas/openapi.yaml")
	if err != nil {
		t.Fatal(err)
	}
	doc := string(raw)
	paths := map[string]string{} // path -> its block
	re := regexp.MustCompile(`(?m)^  (/\S*):\n`)
	locs := re.FindAllStringSubmatchIndex(doc, -1)
	for i, l := range locs {
		end := len(doc)
		if i+1 < len(locs) {
			end = locs[i+1][0]
		}
		paths[doc[l[2]:l[3]]] = doc[l[1]:end]
	}
	s := &Server{}
	for _, rt := range s.routes() {
		block, ok := paths[rt.path]
		if !ok || !strings.Contains(block, "    "+strings.ToLower(rt.method)+":") {
			t.Errorf("%s %s is not in schemas/openapi.yaml", rt.method, rt.path)
		}
		delete(paths, rt.path)
	}
	for _, p := range []string{"/healthz", "/readyz", "/metrics"} {
		delete(paths, p)
	}
	for p := range paths {
		t.Errorf("schemas/openapi.yaml documents %s, which the server does not serve", p)
	}
}

// openAPISpec is schemas/openapi.yaml with the JSON Schemas it refers to,
// enough to check responses against it (see conforms).
type openAPISpec struct {
	doc   map[string]any
	files map[string]map[string]any
}

func loadOpenAPI(tb testing.TB) *openAPISpec {
	tb.Helper()
	raw, err := os.ReadFile("../schemas/openapi.yaml")
	if err != nil {
		tb.Fatal(err)
	}
	s := &openAPISpec{files: map[string]map[string]any{}}
	if err := yamldoc.DecodeStrict(raw, &s.doc); err != nil {
		tb.Fatal(err)
	}
	return s
}

// node follows a JSON pointer ("/a/b") from root.
func node(root any, pointer string) any {
	for _, p := range strings.Split(strings.TrimPrefix(pointer, "/"), "/") {
		if p == "" {
			continue
		}
		m, _ := root.(map[string]any)
		root = m[strings.NewReplacer("~1", "/", "~0", "~").Replace(p)]
	}
	return root
}

// resolve follows $ref, in the spec itself or in a schema file next to it.
func (s *openAPISpec) resolve(tb testing.TB, schema map[string]any) map[string]any {
	tb.Helper()
	for {
		ref, ok := schema["$ref"].(string)
		if !ok {
			return schema
		}
		file, pointer, _ := strings.Cut(ref, "#")
		root := any(s.doc)
		if file != "" {
			if s.files[file] == nil {
				raw, err := os.ReadFile(filepath.Join("../schemas", file))
				if err != nil {
					tb.Fatal(err)
				}
				var m map[string]any
				if err := json.Unmarshal(raw, &m); err != nil {
					tb.Fatal(err)
				}
				s.files[file] = m
			}
			root = s.files[file]
		}
		next, ok := node(root, pointer).(map[string]any)
		if !ok {
			tb.Fatalf("$ref %s does not resolve", ref)
		}
		schema = next
	}
}

// conforms checks v against schema for the keywords the spec uses (type,
// properties, required, additionalProperties: false, items, enum, const,
// allOf, anyOf) and returns the violations.
func (s *openAPISpec) conforms(tb testing.TB, schema map[string]any, v any, at string) []string {
	tb.Helper()
	schema = s.resolve(tb, schema)
	var errs []string
	for _, sub := range asSlice(schema["allOf"]) {
		errs = append(errs, s.conforms(tb, sub.(map[string]any), v, at)...)
	}
	if branches := asSlice(schema["anyOf"]); len(branches) > 0 {
		var all []string
		for _, sub := range branches {
			e := s.conforms(tb, sub.(map[string]any), v, at)
			if len(e) == 0 {
				all = nil
				break
			}
			all = append(all, e...)
		}
		errs = append(errs, all...)
	}
	if e, ok := schema["enum"]; ok && !slices.ContainsFunc(asSlice(e), func(x any) bool { return fmt.Sprint(x) == fmt.Sprint(v) }) {
		errs = append(errs, fmt.Sprintf("%s: %v is not one of %v", at, v, e))
	}
	if c, ok := schema["const"]; ok && fmt.Sprint(c) != fmt.Sprint(v) {
		errs = append(errs, fmt.Sprintf("%s: %v is not %v", at, v, c))
	}
	switch schema["type"] {
	case "object":
		m, ok := v.(map[string]any)
		if !ok {
			return append(errs, fmt.Sprintf("%s: not an object", at))
		}
		props, _ := schema["properties"].(map[string]any)
		for _, r := range asSlice(schema["required"]) {
			if _, ok := m[r.(string)]; !ok {
				errs = append(errs, fmt.Sprintf("%s: %s is required", at, r))
			}
		}
		for k, x := range m {
			p, ok := props[k].(map[string]any)
			if !ok {
				if schema["additionalProperties"] == false {
					errs = append(errs, fmt.Sprintf("%s: %s is not allowed (additionalProperties: false)", at, k))
				}
				continue
			}
			errs = append(errs, s.conforms(tb, p, x, at+"."+k)...)
		}
	case "array":
		a, ok := v.([]any)
		if !ok {
			return append(errs, fmt.Sprintf("%s: not an array", at))
		}
		if items, ok := schema["items"].(map[string]any); ok {
			for i, x := range a {
				errs = append(errs, s.conforms(tb, items, x, fmt.Sprintf("%s[%d]", at, i))...)
			}
		}
	case "string":
		if _, ok := v.(string); !ok {
			errs = append(errs, fmt.Sprintf("%s: not a string", at))
		}
	case "integer":
		if f, ok := v.(float64); !ok || f != float64(int64(f)) {
			errs = append(errs, fmt.Sprintf("%s: not an integer", at))
		}
	case "boolean":
		if _, ok := v.(bool); !ok {
			errs = append(errs, fmt.Sprintf("%s: not a boolean", at))
		}
	}
	return errs
}

func asSlice(v any) []any { s, _ := v.([]any); return s }

// checkResponse checks a JSON response body against what the spec says
// method path answers with status.
func (s *openAPISpec) checkResponse(tb testing.TB, method, path string, status int, body []byte) {
	tb.Helper()
	op, _ := node(s.doc, "/paths/"+strings.ReplaceAll(path, "/", "~1")+"/"+strings.ToLower(method)).(map[string]any)
	if op == nil {
		tb.Fatalf("%s %s is not in the spec", method, path)
	}
	resp, ok := node(op, "/responses/"+strconv.Itoa(status)).(map[string]any)
	if !ok {
		tb.Errorf("%s %s: status %d is not in the spec", method, path, status)
		return
	}
	resp = s.resolve(tb, resp)
	schema, ok := node(resp, "/content/application~1json/schema").(map[string]any)
	if !ok {
		tb.Errorf("%s %s %d: no application/json schema", method, path, status)
		return
	}
	var v any
	if err := json.Unmarshal(body, &v); err != nil {
		tb.Fatalf("%s %s %d: %v", method, path, status, err)
	}
	for _, e := range s.conforms(tb, schema, v, "body") {
		tb.Errorf("%s %s %d: %s", method, path, status, e)
	}
}

// TestResponsesMatchOpenAPI: what the server answers is what
// schemas/openapi.yaml says it answers, for each endpoint's usual answers.
func TestResponsesMatchOpenAPI(t *testing.T) {
	t.Parallel()
	spec := loadOpenAPI(t)
	h := newHarness(t, harnessOpts{store: sealedStore(t, 3)})
	check := func(method, route, path, key, body string) json.RawMessage {
		t.Helper()
		var raw json.RawMessage
		ct := ""
		if body != "" {
			ct = "application/json"
		}
		r := h.do(t, method, path, key, ct, body, &raw)
		spec.checkResponse(t, method, route, r.StatusCode, raw)
		return raw
	}
	const proposals = "/v1/sessions/{session}/proposals"
	check("POST", proposals, "/v1/sessions/oa1/proposals", "acme-agent", proposal("read_file", "c1", `{"path":"/a"}`))
	var first ProposalResponse
	raw := check("POST", proposals, "/v1/sessions/oa1/proposals", "acme-agent", proposal("send_email", "m1", `{"to":"a@example.com"}`))
	if err := json.Unmarshal(raw, &first); err != nil || first.Approval == nil {
		t.Fatalf("no approval: %s", raw)
	}
	// The same call_id with other arguments supersedes the first approval.
	var second ProposalResponse
	raw = check("POST", proposals, "/v1/sessions/oa1/proposals", "acme-agent", proposal("send_email", "m1", `{"to":"b@example.com"}`))
	if err := json.Unmarshal(raw, &second); err != nil || second.Approval == nil {
		t.Fatalf("no approval: %s", raw)
	}
	check("GET", "/v1/approvals", "/v1/approvals", "acme-operator", "")
	check("GET", "/v1/approvals", "/v1/approvals?state=superseded", "acme-operator", "")
	check("GET", "/v1/approvals", "/v1/approvals?state=bogus", "acme-operator", "")
	check("POST", "/v1/approvals/{token}", "/v1/approvals/"+second.Approval.Token, "acme-operator", `{"decision":"deny","reason":"no"}`)
	check("POST", "/v1/approvals/{token}", "/v1/approvals/"+first.Approval.Token, "acme-operator", `{"decision":"allow"}`)
	check("GET", "/v1/approvals", "/v1/approvals?state=all", "acme-operator", "")
	check("POST", "/v1/events", "/v1/events", "acme-agent", ev("acme", "oa2", 1, "MODEL_CALL_STARTED", `{"model":"m"}`))
	check("POST", "/v1/events", "/v1/events", "acme-agent", ev("globex", "oa2", 1, "MODEL_CALL_STARTED", `{"model":"m"}`))
	check("POST", "/v1/events", "/v1/events", "acme-agent", "[]")
	check("POST", "/v1/events", "/v1/events", "acme-agent", "["+strings.Repeat(ev("acme", "oa2", 1, "MODEL_CALL_STARTED", `{}`)+",", 5000)+"{}]")
	check("POST", "/v1/policy/decide", "/v1/policy/decide", "acme-agent", `{"event":{"event_type":"TOOL_CALL_PROPOSED","payload":{"tool_name":"read_file","call_id":"c","args":{}}}}`)
	check("GET", "/v1/sessions/{session}", "/v1/sessions/s1", "acme-auditor", "")
	check("GET", "/v1/sessions/{session}/events", "/v1/sessions/s1/events?limit=2", "acme-auditor", "")
	check("GET", "/v1/sessions/{session}/verify", "/v1/sessions/tampered/verify", "acme-auditor", "")
	check("GET", "/v1/sessions/{session}", "/v1/sessions/nope", "acme-auditor", "")
	check("GET", "/v1/sessions/{session}", "/v1/sessions/gap", "acme-auditor", "")
	check("GET", "/v1/sessions/{session}/verify", "/v1/sessions/gap/verify", "acme-auditor", "")
	r := h.do(t, "POST", "/v1/approvals/"+first.Approval.Token, "acme-operator", "text/plain", `{"decision":"allow"}`, &raw)
	spec.checkResponse(t, "POST", "/v1/approvals/{token}", r.StatusCode, raw)
	check("GET", "/v1/sessions/{session}", "/v1/sessions/s1", "", "")
}
