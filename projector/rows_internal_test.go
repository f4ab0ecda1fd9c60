package projector

import (
	"encoding/json"
	"math/rand/v2"
	"reflect"
	"testing"

	"aegis.dev/aegis/schemas/chain"
	"aegis.dev/aegis/schemas/envelope"
)

// TestDecodeHeadMatchesUnmarshal: decodeHead gives exactly what
// json.Unmarshal into a chain.Head gives (value and whether it fails), on
// sealer state records and on variations of them: escaped, case-folded,
// duplicated and missing names, other types, numbers json rejects for a
// uint64, white space and broken JSON.
func TestDecodeHeadMatchesUnmarshal(t *testing.T) {
	r := rand.New(rand.NewPCG(1, 2))
	names := []string{`"tenant_id"`, `"session_id"`, `"seq"`, `"hash"`, `"window"`, `"Seq"`, `"tenant\u005fid"`, `"x"`}
	values := []string{`"acme"`, `"s-1"`, `"sha256:00ff"`, `"a\"b"`, `"é"`, `"\u00e9"`, `7`, `0`, `-1`, `1.5`, `1e2`,
		`18446744073709551616`, `null`, `true`, `{"last_seq":3,"recent":[{"seq":3,"digest":"ab"}]}`, `[]`, `"`}
	docs := []string{
		`{"tenant_id":"acme","session_id":"s","seq":42,"hash":"sha256:ab","window":{"last_seq":42,"recent":[{"seq":42,"digest":"0f"}]}}`,
		`{}`, `[]`, `null`, ``, `{"seq":1}`, `{ "seq" : 1 }`,
	}
	for range 20000 {
		docs = append(docs, string(randomObject(r, names, values, 6)))
	}
	for _, d := range docs {
		got, gotErr := decodeHead([]byte(d))
		var want chain.Head
		wantErr := json.Unmarshal([]byte(d), &want)
		if (gotErr == nil) != (wantErr == nil) || gotErr == nil && !reflect.DeepEqual(got, want) {
			t.Fatalf("%s: decodeHead %+v, %v; json.Unmarshal %+v, %v", d, got, gotErr, want, wantErr)
		}
	}
}

// TestFilterColumnsMatchUnmarshal: the tool columns are what decoding the
// payload with json.Unmarshal gives.
func TestFilterColumnsMatchUnmarshal(t *testing.T) {
	r := rand.New(rand.NewPCG(3, 4))
	names := []string{`"tool_name"`, `"call_id"`, `"Tool_Name"`, `"call\u005fid"`, `"args"`, `"q"`}
	values := []string{`"search"`, `"c1"`, `"a\"b"`, `"\u00e9"`, `7`, `null`, `{"tool_name":"n"}`, `[]`, `""`}
	for i := range 20000 {
		b := randomObject(r, names, values, 5)
		var p struct {
			ToolName json.RawMessage `json:"tool_name"`
			CallID   json.RawMessage `json:"call_id"`
		}
		var wantTool, wantCall string
		if json.Unmarshal(b, &p) == nil {
			_ = json.Unmarshal(p.ToolName, &wantTool)
			_ = json.Unmarshal(p.CallID, &wantCall)
		}
		tool, callID, _, _, _ := filterColumns(&envelope.Event{Payload: b})
		if tool != wantTool || callID != wantCall {
			t.Fatalf("%d %s: got %q %q, want %q %q", i, b, tool, callID, wantTool, wantCall)
		}
	}
}

// randomObject returns a JSON object of fewer than maxMembers members, each
// a random name and value from the given raw JSON snippets (which may make
// it invalid JSON on purpose).
func randomObject(r *rand.Rand, names, values []string, maxMembers int) []byte {
	b := []byte{'{'}
	for i := range r.IntN(maxMembers) {
		if i > 0 {
			b = append(b, ',')
		}
		b = append(b, names[r.IntN(len(names))]...)
		b = append(b, ':')
		b = append(b, values[r.IntN(len(values))]...)
	}
	return append(b, '}')
}
