package envelope

import (
	"encoding/json"
	"math/rand"
	"reflect"
	"strings"
	"testing"
)

// randomToolPayload returns payloads around the tool call shape, most of
// them canonical, others with what json.Unmarshal reads in its own way:
// case-folded and escaped names, duplicates, nulls, escapes, white space,
// invalid UTF-8, wrong types and broken JSON.
func randomToolPayload(r *rand.Rand) string {
	names := []string{"tool_name", "call_id", "args", "Tool_Name", "CALL_ID", "argſ", `tool\u005fname`, "other", "tool_namex", "is_error", "key", "decision", "from_agent", "to_agent", "sanitizer_key", "Is_Error", "KEY"}
	values := []string{`"search"`, `"c1"`, `""`, `"a\"b"`, `"\u00e9"`, "\"\xff\"", `"é"`, `null`, `1`, ` 2 `, `true`, `false`, `{"q":"x"}`, `{ "q" : 1 }`, `[1,2]`, `{"a":{"b":[]}}`, `"<&>"`, `{]`, `"tab\t"`}
	var b strings.Builder
	b.WriteByte('{')
	for i := range r.Intn(5) {
		if i > 0 {
			b.WriteByte(',')
			if r.Intn(15) == 0 {
				b.WriteByte(' ')
			}
		}
		b.WriteString(`"` + names[r.Intn(len(names))] + `":`)
		b.WriteString(values[r.Intn(len(values))])
	}
	b.WriteByte('}')
	s := b.String()
	switch r.Intn(20) {
	case 0:
		s = " " + s
	case 1:
		s = s[:len(s)-1]
	case 2:
		s = `[` + s + `]`
	case 3:
		s = `"x"`
	}
	return s
}

func TestToolCallMatchesUnmarshal(t *testing.T) {
	r := rand.New(rand.NewSource(1))
	fast := 0
	for range 200000 {
		payload := randomToolPayload(r)
		var want ToolCall
		wantErr := json.Unmarshal([]byte(payload), &want)
		if _, ok := flatToolCall([]byte(payload)); ok {
			fast++
		}
		got, err := (&Event{Payload: json.RawMessage(payload)}).ToolCall()
		if (err != nil) != (wantErr != nil) {
			t.Fatalf("%s: error %v, json.Unmarshal %v", payload, err, wantErr)
		}
		if err == nil && !reflect.DeepEqual(got, want) {
			t.Fatalf("%s:\n got %#v\nwant %#v", payload, got, want)
		}
	}
	if fast < 10000 {
		t.Fatalf("only %d payloads took the direct path", fast)
	}
}

func TestFlatMembers(t *testing.T) {
	names := []string{"a", "b"}
	vals := make([][]byte, 2)
	for _, c := range []struct {
		in   string
		ok   bool
		a, b string
	}{
		{`{"a":1,"b":"x","c":[1]}`, true, `1`, `"x"`},
		{`{"c":{"a":1}}`, true, ``, ``},
		{`{}`, true, ``, ``},
		{`{"a":1,"a":2}`, false, ``, ``},
		{`{"A":1}`, false, ``, ``},
		{`{"\u0061":1}`, false, ``, ``},
		{`{"a" :1}`, false, ``, ``},
		{` {"a":1}`, false, ``, ``},
		{`{"a":1`, false, ``, ``},
		{`[1]`, false, ``, ``},
	} {
		ok := FlatMembers([]byte(c.in), names, vals)
		if ok != c.ok || ok && (string(vals[0]) != c.a || string(vals[1]) != c.b) {
			t.Errorf("%s: ok %v %q %q, want %v %q %q", c.in, ok, vals[0], vals[1], c.ok, c.a, c.b)
		}
	}
}
