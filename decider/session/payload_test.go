package session

import (
	"encoding/json"
	"math/rand"
	"strings"
	"testing"
)

// TestDecodePayloadMatchesUnmarshal checks the reducer's payload reader
// against json.Unmarshal on payloads around its shape, including what
// json.Unmarshal reads in its own way (case-folded or escaped names,
// duplicates, nulls, escapes, white space, invalid UTF-8, wrong types).
func TestDecodePayloadMatchesUnmarshal(t *testing.T) {
	names := []string{"tool_name", "call_id", "is_error", "sanitizer_key", "key", "decision", "from_agent", "to_agent", "Key", "IS_ERROR", "other", `k\u0065y`, "ſanitizer_key"}
	values := []string{`"x"`, `""`, `"a\"b"`, "\"\xff\"", `"é"`, `null`, `1`, `true`, `false`, ` true`, `{"key":"y"}`, `[true]`, `"allow"`, `{]`}
	r := rand.New(rand.NewSource(1))
	fast := 0
	for range 200000 {
		var b strings.Builder
		b.WriteByte('{')
		for i := range r.Intn(5) {
			if i > 0 {
				b.WriteByte(',')
			}
			b.WriteString(`"` + names[r.Intn(len(names))] + `":` + values[r.Intn(len(values))])
		}
		b.WriteByte('}')
		data := []byte(b.String())
		var want payload
		wantErr := json.Unmarshal(data, &want)
		got, err := decodePayload(data)
		if (err != nil) != (wantErr != nil) {
			t.Fatalf("%s: error %v, json.Unmarshal %v", data, err, wantErr)
		}
		if err == nil && got != want {
			t.Fatalf("%s:\n got %+v\nwant %+v", data, got, want)
		}
		if wantErr == nil && !strings.ContainsAny(string(data), `\ſ`) {
			fast++
		}
	}
	if fast < 10000 {
		t.Fatalf("only %d plain payloads", fast)
	}
}
