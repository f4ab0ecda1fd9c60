package envelope

import (
	"errors"
	"strings"
	"testing"
)

const validProposal = `{"tenant_id":"acme","session_id":"s-1","seq":1,"ts_unix_ms":1767225600000,"event_type":"TOOL_CALL_PROPOSED","manifest":"support-bot@1.2.0","payload":{"tool_name":"web_fetch","call_id":"c1","args":{"domain":"api.example.com"}}}`

func TestDecodeValid(t *testing.T) {
	e, err := Decode([]byte(validProposal))
	if err != nil {
		t.Fatal(err)
	}
	if e.V != Version || e.TenantID != "acme" || e.SessionID != "s-1" || e.Seq != 1 || e.Type != ToolCallProposed || e.Manifest != "support-bot@1.2.0" {
		t.Fatalf("decoded %+v", e)
	}
	if got, want := string(e.Payload), `{"args":{"domain":"api.example.com"},"call_id":"c1","tool_name":"web_fetch"}`; got != want {
		t.Fatalf("payload not canonical:\n got %s\nwant %s", got, want)
	}
	if string(e.Key()) != "acme/s-1" {
		t.Fatalf("key %q", e.Key())
	}
	tc, err := e.ToolCall()
	if err != nil || tc.ToolName != "web_fetch" || tc.CallID != "c1" {
		t.Fatalf("tool call %+v %v", tc, err)
	}
}

func TestDecodeDefaultsPayloadAndVersion(t *testing.T) {
	e, err := Decode([]byte(`{"tenant_id":"t","session_id":"s","seq":3,"ts_unix_ms":5,"event_type":"MODEL_CALL_STARTED"}`))
	if err != nil {
		t.Fatal(err)
	}
	if string(e.Payload) != "{}" || e.V != 1 {
		t.Fatalf("payload %s v %d", e.Payload, e.V)
	}
}

func TestDecodeRejects(t *testing.T) {
	base := func(mod string) string { return strings.Replace(validProposal, `"seq":1`, mod, 1) }
	cases := []struct {
		name  string
		in    string
		code  string
		field string
	}{
		{"not json", `hello`, CodeInvalidJSON, ""},
		{"array", `[1,2]`, CodeInvalidJSON, ""},
		{"trailing garbage", validProposal + ` x`, CodeInvalidJSON, ""},
		{"two objects", validProposal + validProposal, CodeInvalidJSON, ""},
		{"invalid utf8", strings.Replace(validProposal, "web_fetch", "web\xff", 1), CodeInvalidUTF8, ""},
		{"duplicate key", base(`"seq":1,"seq":2`), CodeDuplicateKey, ""},
		{"huge seq", base(`"seq":9007199254740993`), CodeNumberOutOfRange, ""},
		{"huge number in payload", strings.Replace(validProposal, `"c1"`, `"c1","n":18446744073709551616`, 1), CodeNumberOutOfRange, ""},
		{"number spelt beyond 2^53", strings.Replace(validProposal, `"c1"`, `"c1","n":1e20`, 1), CodeNumberOutOfRange, ""},
		{"nested too deep", strings.Replace(validProposal, `"c1"`, `"c1","n":`+strings.Repeat("[", 127)+strings.Repeat("]", 127), 1), CodeInvalidJSON, ""},
		{"unknown field", base(`"seq":1,"sequence":1`), CodeUnknownField, "sequence"},
		{"missing tenant", strings.Replace(validProposal, `"tenant_id":"acme",`, ``, 1), CodeMissingField, "tenant_id"},
		{"empty tenant", strings.Replace(validProposal, `"acme"`, `""`, 1), CodeInvalidField, "tenant_id"},
		{"slash in session", strings.Replace(validProposal, `"s-1"`, `"a/b"`, 1), CodeInvalidField, "session_id"},
		{"long session", strings.Replace(validProposal, `"s-1"`, `"`+strings.Repeat("s", 129)+`"`, 1), CodeInvalidField, "session_id"},
		{"missing seq", strings.Replace(validProposal, `"seq":1,`, ``, 1), CodeMissingField, "seq"},
		{"zero seq", base(`"seq":0`), CodeInvalidField, "seq"},
		{"negative seq", base(`"seq":-1`), CodeInvalidField, "seq"},
		{"fractional seq", base(`"seq":1.5`), CodeInvalidField, "seq"},
		{"string seq", base(`"seq":"1"`), CodeInvalidField, "seq"},
		{"missing ts", strings.Replace(validProposal, `"ts_unix_ms":1767225600000,`, ``, 1), CodeMissingField, "ts_unix_ms"},
		{"zero ts", strings.Replace(validProposal, `1767225600000`, `0`, 1), CodeInvalidField, "ts_unix_ms"},
		{"unknown type", strings.Replace(validProposal, `TOOL_CALL_PROPOSED`, `TOOL_CALL_MAYBE`, 1), CodeUnknownEventType, "event_type"},
		{"lowercase type", strings.Replace(validProposal, `TOOL_CALL_PROPOSED`, `tool_call_proposed`, 1), CodeUnknownEventType, "event_type"},
		{"missing type", strings.Replace(validProposal, `"event_type":"TOOL_CALL_PROPOSED",`, ``, 1), CodeMissingField, "event_type"},
		{"bad version", base(`"seq":1,"v":2`), CodeUnsupportedVersion, "v"},
		{"version not an integer", base(`"seq":1,"v":"1"`), CodeInvalidField, "v"},
		{"payload not object", strings.Replace(validProposal, `{"tool_name":"web_fetch","call_id":"c1","args":{"domain":"api.example.com"}}`, `[1]`, 1), CodeInvalidField, "payload"},
		{"proposal without tool", strings.Replace(validProposal, `"tool_name":"web_fetch",`, ``, 1), CodeMissingField, "payload.tool_name"},
		{"proposal tool not string", strings.Replace(validProposal, `"web_fetch"`, `7`, 1), CodeInvalidField, "payload.tool_name"},
		{"proposal empty call id", strings.Replace(validProposal, `"c1"`, `""`, 1), CodeInvalidField, "payload.call_id"},
		{"proposal args not object", strings.Replace(validProposal, `{"domain":"api.example.com"}`, `"x"`, 1), CodeInvalidField, "payload.args"},
		{"client decision", base(`"seq":1,"decision":{"outcome":"allow"}`), CodeUnknownField, "decision"},
		{"client hash", base(`"seq":1,"hash":"00"`), CodeUnknownField, "hash"},
		{"client prev_hash", base(`"seq":1,"prev_hash":"00"`), CodeUnknownField, "prev_hash"},
		{"bad manifest ref", strings.Replace(validProposal, `support-bot@1.2.0`, `a b`, 1), CodeInvalidField, "manifest"},
		{"approval bad decision", `{"tenant_id":"t","session_id":"s","seq":1,"ts_unix_ms":5,"event_type":"APPROVAL_DECIDED","payload":{"call_id":"c","decision":"maybe"}}`, CodeInvalidField, "payload.decision"},
		{"approval grant not string", `{"tenant_id":"t","session_id":"s","seq":1,"ts_unix_ms":5,"event_type":"APPROVAL_DECIDED","payload":{"call_id":"c","decision":"allow","grant":7}}`, CodeInvalidField, "payload.grant"},
		{"approval grant short", `{"tenant_id":"t","session_id":"s","seq":1,"ts_unix_ms":5,"event_type":"APPROVAL_DECIDED","payload":{"call_id":"c","decision":"allow","grant":"` + strings.Repeat("A", 42) + `"}}`, CodeInvalidField, "payload.grant"},
		{"approval grant long", `{"tenant_id":"t","session_id":"s","seq":1,"ts_unix_ms":5,"event_type":"APPROVAL_DECIDED","payload":{"call_id":"c","decision":"allow","grant":"` + strings.Repeat("A", 44) + `"}}`, CodeInvalidField, "payload.grant"},
		{"approval grant padded", `{"tenant_id":"t","session_id":"s","seq":1,"ts_unix_ms":5,"event_type":"APPROVAL_DECIDED","payload":{"call_id":"c","decision":"allow","grant":"` + strings.Repeat("A", 43) + `="}}`, CodeInvalidField, "payload.grant"},
		{"approval grant std alphabet", `{"tenant_id":"t","session_id":"s","seq":1,"ts_unix_ms":5,"event_type":"APPROVAL_DECIDED","payload":{"call_id":"c","decision":"allow","grant":"` + strings.Repeat("+", 42) + `A"}}`, CodeInvalidField, "payload.grant"},
		{"approval grant spare bits", `{"tenant_id":"t","session_id":"s","seq":1,"ts_unix_ms":5,"event_type":"APPROVAL_DECIDED","payload":{"call_id":"c","decision":"allow","grant":"` + strings.Repeat("A", 42) + `B"}}`, CodeInvalidField, "payload.grant"},
		{"tool result is_error string", `{"tenant_id":"t","session_id":"s","seq":1,"ts_unix_ms":5,"event_type":"TOOL_RESULT","payload":{"is_error":"yes"}}`, CodeInvalidField, "payload.is_error"},
		{"sanitized without key", `{"tenant_id":"t","session_id":"s","seq":1,"ts_unix_ms":5,"event_type":"SANITIZED_TEXT","payload":{}}`, CodeMissingField, "payload.key"},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			_, err := Decode([]byte(tc.in))
			var e *Error
			if !errors.As(err, &e) {
				t.Fatalf("want *Error %s, got %v", tc.code, err)
			}
			if e.Code != tc.code || (tc.field != "" && e.Field != tc.field) {
				t.Fatalf("got code %s field %q (%v), want %s %q", e.Code, e.Field, err, tc.code, tc.field)
			}
			if Code(err) != tc.code {
				t.Fatalf("Code() = %s", Code(err))
			}
		})
	}
}

// TestDecodeReadsNumbersByValue: the decoder reads the canonical form, in
// which a number is its double's value (RFC 8785), so an integral value
// with a fraction or exponent is that integer, and nesting within
// canon.MaxDepth is accepted.
func TestDecodeReadsNumbersByValue(t *testing.T) {
	for _, seq := range []string{`1.0`, `1e0`, `0.1e1`, `1.0000000000000001`} {
		e, err := Decode([]byte(strings.Replace(validProposal, `"seq":1`, `"seq":`+seq, 1)))
		if err != nil || e.Seq != 1 {
			t.Fatalf("seq %s: %v", seq, err)
		}
	}
	deep := strings.Replace(validProposal, `"c1"`, `"c1","n":`+strings.Repeat("[", 126)+strings.Repeat("]", 126), 1)
	if _, err := Decode([]byte(deep)); err != nil {
		t.Fatalf("128 levels: %v", err)
	}
}

func TestDecodeTooLarge(t *testing.T) {
	big := strings.Replace(validProposal, `"c1"`, `"c1","blob":"`+strings.Repeat("x", 2048)+`"`, 1)
	_, err := Decoder{MaxBytes: 1024}.Decode([]byte(big))
	if Code(err) != CodeTooLarge {
		t.Fatalf("got %v", err)
	}
	if _, err := (Decoder{MaxBytes: 4096}).Decode([]byte(big)); err != nil {
		t.Fatalf("within limit: %v", err)
	}
}

func TestDecodeSealedAcceptsChainFields(t *testing.T) {
	in := strings.Replace(validProposal, `"seq":1`, `"seq":1,"prev_hash":"ab","hash":"cd","decision":{"outcome":"deny","reason":"EGRESS_DENY","constraints":{},"policy_revision":"p","manifest_digest":"m","input_digest":"i"}`, 1)
	e, err := Decoder{Sealed: true}.Decode([]byte(in))
	if err != nil {
		t.Fatal(err)
	}
	if e.PrevHash != "ab" || e.Hash != "cd" || e.Decision == nil || e.Decision.Reason != "EGRESS_DENY" {
		t.Fatalf("%+v", e)
	}
}

func TestTypesKnown(t *testing.T) {
	if len(Types) != 18 {
		t.Fatalf("%d types", len(Types))
	}
	seen := map[Type]bool{}
	for _, ty := range Types {
		if seen[ty] || !ty.Known() {
			t.Fatalf("type %s duplicated or unknown", ty)
		}
		seen[ty] = true
		if _, ok := payloadRules[ty]; !ok {
			t.Errorf("type %s has no payload rules entry", ty)
		}
	}
}

func FuzzDecode(f *testing.F) {
	f.Add([]byte(validProposal))
	f.Add([]byte(`{"tenant_id":"t","session_id":"s","seq":1,"ts_unix_ms":1,"event_type":"TOOL_RESULT","payload":{"is_error":true}}`))
	f.Add([]byte(`{"seq":1e400}`))
	f.Add([]byte(`{"payload":{"a":"\ud800"}}`))
	f.Fuzz(func(t *testing.T, data []byte) {
		e, err := Decoder{Sealed: true}.Decode(data)
		if err != nil {
			var de *Error
			if !errors.As(err, &de) || de.Code == "" {
				t.Fatalf("untyped error %v", err)
			}
			return
		}
		// A decoded event always has a canonical form, and decoding that
		// form gives the same canonical form back.
		b, err := e.AppendCanonical(nil, true)
		if err != nil {
			t.Fatalf("canonical form of decoded event: %v", err)
		}
		e2, err := Decoder{Sealed: true}.Decode(b)
		if err != nil {
			t.Fatalf("re-decode %s: %v", b, err)
		}
		b2, _ := e2.AppendCanonical(nil, true)
		if string(b) != string(b2) {
			t.Fatalf("canonical form unstable:\n%s\n%s", b, b2)
		}
	})
}

func BenchmarkDecode(b *testing.B) {
	in := []byte(`{"tenant_id":"acme","session_id":"s-42","seq":7,"ts_unix_ms":1767225600123,"event_type":"TOOL_CALL_PROPOSED","payload":{"tool_name":"web_fetch","call_id":"c-7","args":{"url":"https://api.example.com/v1/items?limit=10","domain":"api.example.com","timeout":2.5}}}`)
	b.ReportAllocs()
	for b.Loop() {
		if _, err := Decode(in); err != nil {
			b.Fatal(err)
		}
	}
}

// TestDecodeRejectsCaseVariantPayloadNames guards the typed payload fields
// against members that encoding/json would take for them: it matches names
// case-insensitively, with Unicode folding (ſ is s, K is k), and the last
// match wins. The decoder validates, and the policy reads, the exact name;
// the reducer and ToolCall read through encoding/json. Accepting both would
// let one event show the policy and the sealed record one value and the
// session state another.
func TestDecodeRejectsCaseVariantPayloadNames(t *testing.T) {
	ev := func(typ, payload string) string {
		return `{"tenant_id":"t","session_id":"s","seq":1,"ts_unix_ms":5,"event_type":"` + typ + `","payload":` + payload + `}`
	}
	cases := []struct {
		name, in, field string
	}{
		{"args and argſ", ev("TOOL_CALL_PROPOSED", `{"tool_name":"read_file","call_id":"c","args":{"path":"/tmp/ok"},"argſ":{"path":"/etc/shadow"}}`), "payload.args"},
		{"ARGS alone", ev("TOOL_CALL_PROPOSED", `{"tool_name":"read_file","call_id":"c","ARGS":{"path":"/etc/shadow"}}`), "payload.args"},
		{"decision and deciſion", ev("APPROVAL_DECIDED", `{"call_id":"c","decision":"deny","deciſion":"allow"}`), "payload.decision"},
		{"sanitizer_key and ſanitizer_key", ev("MEMORY_READ", `{"key":"k","sanitizer_key":"a","ſanitizer_key":"b"}`), "payload.sanitizer_key"},
		{"Kelvin key", ev("SANITIZED_TEXT", `{"key":"a","\u212aey":"b"}`), "payload.key"},
		{"Is_Error", ev("TOOL_RESULT", `{"Is_Error":true}`), "payload.is_error"},
		{"args_digest and argſ_digest", ev("APPROVAL_DECIDED", `{"call_id":"c","decision":"deny","args_digest":"a","argſ_digest":"b"}`), "payload.args_digest"},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			_, err := Decode([]byte(tc.in))
			var e *Error
			if !errors.As(err, &e) || e.Code != CodeInvalidField || e.Field != tc.field {
				t.Fatalf("got %v, want %s %s", err, CodeInvalidField, tc.field)
			}
		})
	}
	// Sealed records are read as they were sealed.
	if _, err := (Decoder{Sealed: true}).Decode([]byte(cases[0].in)); err != nil {
		t.Fatalf("sealed decoder: %v", err)
	}
	// Names that merely contain a typed name, and free-form members, stay
	// accepted.
	for _, in := range []string{
		ev("TOOL_CALL_PROPOSED", `{"tool_name":"t","call_id":"c","args":{"ARGS":1},"Tool":"x","keys":1,"argss":2}`),
		ev("ERROR_RAISED", `{"message":"m","Message2":"x"}`),
	} {
		if _, err := Decode([]byte(in)); err != nil {
			t.Fatalf("Decode(%s): %v", in, err)
		}
	}
}

func TestDecodeApprovalGrantShape(t *testing.T) {
	for _, g := range []string{strings.Repeat("A", 43), strings.Repeat("_", 42) + "w", strings.Repeat("-", 42) + "8"} {
		in := `{"tenant_id":"t","session_id":"s","seq":1,"ts_unix_ms":5,"event_type":"APPROVAL_DECIDED","payload":{"call_id":"c","decision":"allow","grant":"` + g + `"}}`
		if _, err := Decode([]byte(in)); err != nil {
			t.Errorf("grant %s: %v", g, err)
		}
	}
	// A null grant counts as absent, like any optional member.
	if _, err := Decode([]byte(`{"tenant_id":"t","session_id":"s","seq":1,"ts_unix_ms":5,"event_type":"APPROVAL_DECIDED","payload":{"call_id":"c","decision":"allow","grant":null}}`)); err != nil {
		t.Error(err)
	}
	// On other event types "grant" is free-form.
	if _, err := Decode([]byte(`{"tenant_id":"t","session_id":"s","seq":1,"ts_unix_ms":5,"event_type":"MEMORY_WRITE","payload":{"grant":7}}`)); err != nil {
		t.Error(err)
	}
}
