package policy

import (
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"reflect"
	"strings"
	"testing"
	"time"

	"github.com/open-policy-agent/opa/v1/ast"
	"github.com/open-policy-agent/opa/v1/rego"

	"aegis.dev/aegis/decider/session"
	"aegis.dev/aegis/schemas/envelope"
	"aegis.dev/aegis/schemas/manifest"
)

// naiveInput is the policy input the straightforward way: the typed values
// marshalled with encoding/json and decoded into map[string]any.
func naiveInput(tb testing.TB, in Input) map[string]any {
	tb.Helper()
	snap := in.Snapshot
	if snap == nil {
		snap = &session.Snapshot{}
	}
	raw, err := json.Marshal(struct {
		Event      *envelope.Event    `json:"event"`
		Snapshot   *session.Snapshot  `json:"snapshot"`
		Manifest   *manifest.Manifest `json:"manifest"`
		CallDigest string             `json:"call_digest"`
	}{in.Event, snap, in.Manifest, in.CallDigest})
	if err != nil {
		tb.Fatalf("marshal input: %v", err)
	}
	var m map[string]any
	dec := json.NewDecoder(bytes.NewReader(raw))
	dec.UseNumber()
	if err := dec.Decode(&m); err != nil {
		tb.Fatalf("unmarshal input: %v", err)
	}
	return m
}

// evalNaive evaluates the decision query with a Go-value input
// (rego.EvalInput), which OPA converts on every call.
func (e *Engine) evalNaive(ctx context.Context, input any, tsMs int64) (Result, error) {
	rs, err := e.decide.Eval(ctx,
		rego.EvalInput(input),
		rego.EvalTime(time.UnixMilli(tsMs)),
		rego.EvalSeed(zeroReader{}),
	)
	if err != nil {
		return policyError, err
	}
	if len(rs) != 1 || len(rs[0].Expressions) != 1 {
		return policyError, ErrUndefined
	}
	return parseDecision(rs[0].Expressions[0].Value)
}

// fill sets every field reachable from v (a pointer) to a non-zero value
// derived from seed, so that a field the ast builders forget shows up.
func fill(v reflect.Value, seed *int) {
	*seed++
	switch v.Kind() {
	case reflect.Pointer:
		if v.IsNil() {
			v.Set(reflect.New(v.Type().Elem()))
		}
		fill(v.Elem(), seed)
	case reflect.Struct:
		for i := range v.NumField() {
			fill(v.Field(i), seed)
		}
	case reflect.String:
		v.SetString(fmt.Sprintf("s%d", *seed))
	case reflect.Bool:
		v.SetBool(true)
	case reflect.Int, reflect.Int64, reflect.Int32:
		v.SetInt(int64(1000 + *seed))
	case reflect.Uint64, reflect.Uint32, reflect.Uint:
		v.SetUint(uint64(2000 + *seed))
	case reflect.Slice:
		if v.Type() == reflect.TypeFor[json.RawMessage]() {
			v.SetBytes([]byte(`{"tool_name":"x","args":{"n":[1,2.5,-3e2,true,null,"\u00e9\n"]}}`))
			return
		}
		s := reflect.MakeSlice(v.Type(), 2, 2)
		fill(s.Index(0), seed)
		fill(s.Index(1), seed)
		v.Set(s)
	case reflect.Map:
		m := reflect.MakeMap(v.Type())
		for range 2 {
			k := reflect.New(v.Type().Key()).Elem()
			fill(k, seed)
			e := reflect.New(v.Type().Elem()).Elem()
			fill(e, seed)
			m.SetMapIndex(k, e)
		}
		v.Set(m)
	default:
		panic(fmt.Sprintf("fill: unhandled kind %s", v.Kind()))
	}
}

// TestInputMatchesJSON holds the typed ast builders to the encoding/json
// form of the structs: with every field set, with every field zero, and
// for the decision table's inputs.
func TestInputMatchesJSON(t *testing.T) {
	full := func() Input {
		var in Input
		seed := 0
		in.Event, in.Snapshot, in.Manifest = &envelope.Event{}, &session.Snapshot{}, &manifest.Manifest{}
		fill(reflect.ValueOf(in.Event), &seed)
		fill(reflect.ValueOf(in.Snapshot), &seed)
		fill(reflect.ValueOf(in.Manifest), &seed)
		in.CallDigest = "abc"
		return in
	}
	cases := []struct {
		name string
		in   Input
	}{
		{"every field set", full()},
		{"zero values", Input{Event: &envelope.Event{}, Snapshot: &session.Snapshot{}, Manifest: &manifest.Manifest{}}},
		{"nil snapshot and manifest", Input{Event: &envelope.Event{Payload: json.RawMessage(`[]`)}}},
	}
	for _, c := range decisionCases() {
		cases = append(cases, struct {
			name string
			in   Input
		}{"table/" + c.name, c.input(t)})
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			fast, err := buildInput(c.in, manifestValue(c.in.Manifest), nil)
			if err != nil {
				t.Fatalf("buildInput: %v", err)
			}
			want, err := ast.InterfaceToValue(naiveInput(t, c.in))
			if err != nil {
				t.Fatal(err)
			}
			if fast.Compare(want) != 0 {
				t.Errorf("ast input differs from JSON input\n fast: %v\n json: %v", fast, want)
			}
		})
	}
}

func TestJSONValue(t *testing.T) {
	for _, tc := range []struct {
		name, in string
		ok       bool
	}{
		{"object", `{"a":1,"b":[true,false,null],"c":{"d":"e"}}`, true},
		{"whitespace", " \t\n{ \"a\" : [ 1 , 2 ] }\r\n", true},
		{"escapes", `"a\"b\\c\/d\u00e9\ud83d\ude00\n"`, true},
		{"invalid utf-8", "\"a\xffb\"", true},
		{"numbers", `[0,-0,1.5,-2e10,3E+2,4e-2,12345678901234567890123]`, true},
		{"empty containers", `[{},[],""]`, true},
		{"duplicate key", `{"a":1,"a":2}`, false},
		{"duplicate key after unescape", `{"a":1,"\u0061":2}`, false},
		// Keys that differ only in letter case: a case-insensitive
		// decoder (Go's encoding/json into a struct) reads the last.
		{"case variant key", `{"url":"https://api.example.com/","URL":"https://evil.example.net/"}`, false},
		{"case variant key, nested", `{"args":{"a":{"bin":"ls","BIN":"rm"}}}`, false},
		{"kelvin sign", `{"k":1,"\u212a":2}`, false},
		{"long s", `{"s":1,"\u017f":2}`, false},
		{"case variant past eight keys", `{"a":1,"b":2,"c":3,"d":4,"e":5,"f":6,"g":7,"h":8,"i":9,"B":10}`, false},
		{"kelvin past eight keys", `{"a":1,"b":2,"c":3,"d":4,"e":5,"f":6,"g":7,"h":8,"\u212a":9,"K":10}`, false},
		{"distinct keys past eight", `{"a":1,"b":2,"c":3,"d":4,"e":5,"f":6,"g":7,"h":8,"i":9,"j":10,"é":11,"ß":12}`, true},
		{"trailing comma", `[1,]`, false},
		{"leading zero", `01`, false},
		{"bare dot", `1.`, false},
		{"bad exponent", `1e`, false},
		{"plus sign", `+1`, false},
		{"control char", "\"a\x01\"", false},
		{"bad escape", `"\x"`, false},
		{"unterminated", `"abc`, false},
		{"trailing data", `{} {}`, false},
		{"bad literal", `tru`, false},
		{"missing colon", `{"a" 1}`, false},
		{"non-string key", `{1:2}`, false},
	} {
		t.Run(tc.name, func(t *testing.T) {
			got, err := jsonValue([]byte(tc.in))
			if !tc.ok {
				if err == nil {
					t.Fatalf("accepted %q as %v", tc.in, got)
				}
				return
			}
			if err != nil {
				t.Fatalf("rejected %q: %v", tc.in, err)
			}
			v := decodeUseNumber(t, []byte(tc.in))
			want, err := ast.InterfaceToValue(v)
			if err != nil {
				t.Fatal(err)
			}
			if got.Compare(want) != 0 {
				t.Errorf("got %v, want %v", got, want)
			}
		})
	}
}

// FuzzJSONValue: valid JSON is read to the value encoding/json reads (or
// rejected for a duplicate key or excessive nesting); invalid JSON is
// rejected.
func FuzzJSONValue(f *testing.F) {
	for _, s := range []string{`{"a":[1,"x",null]}`, `"\u00e9"`, `1e5`, `{"a":1,"a":2}`, `[`, "\"\xff\""} {
		f.Add([]byte(s))
	}
	f.Fuzz(func(t *testing.T, data []byte) {
		got, err := jsonValue(data)
		if len(data) == 0 {
			return
		}
		if !json.Valid(data) {
			if err == nil {
				t.Fatalf("accepted invalid JSON %q", data)
			}
			return
		}
		if err != nil {
			// Stricter than encoding/json on purpose, for these reasons only.
			if msg := err.Error(); !strings.Contains(msg, "duplicate object key") && !strings.Contains(msg, "nesting deeper") &&
				!strings.Contains(msg, "differ only in letter case") {
				t.Fatalf("rejected valid JSON %q: %v", data, err)
			}
			return
		}
		want, err := ast.InterfaceToValue(decodeUseNumber(t, data))
		if err != nil {
			t.Fatal(err)
		}
		if got.Compare(want) != 0 {
			t.Fatalf("%q: got %v, want %v", data, got, want)
		}
	})
}

// decodeUseNumber decodes one JSON document keeping numbers as written.
func decodeUseNumber(tb testing.TB, data []byte) any {
	tb.Helper()
	var v any
	dec := json.NewDecoder(bytes.NewReader(data))
	dec.UseNumber()
	if err := dec.Decode(&v); err != nil {
		tb.Fatalf("decode %q: %v", data, err)
	}
	return v
}

// TestFoldKeyMatchesEqualFold: two keys have the same folded form exactly
// when strings.EqualFold says they are equal.
func TestFoldKeyMatchesEqualFold(t *testing.T) {
	words := []string{"k", "K", "\u212a", "s", "S", "\u017f", "url", "URL", "Url", "ß", "SS", "é", "É", "σ", "ς", "Σ", "ǅ", "ǆ", "Ǆ", "a1", "A1", "", "x-y", "X-Y"}
	for _, a := range words {
		for _, b := range words {
			if (foldKey(a) == foldKey(b)) != strings.EqualFold(a, b) {
				t.Errorf("%q %q: foldKey %q %q, EqualFold %v", a, b, foldKey(a), foldKey(b), strings.EqualFold(a, b))
			}
		}
	}
}
