package decider

import (
	"context"
	"encoding/json"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"aegis.dev/aegis/decider/policy"
	"aegis.dev/aegis/internal/pipeline"
	"aegis.dev/aegis/internal/stream"
	"aegis.dev/aegis/schemas/manifest"
)

// TestWorstCaseStateRecordFitsItsTopic fills one session's state to every
// bound (1,024 approvals, 1,024 sanitizer keys, the identical-call table,
// taint sources, a handoff) with identifiers of the longest canonical form
// allowed, made of control bytes that JSON writes as six bytes each: the
// state record must still fit a record of the state topic. Before
// identifiers were measured in canonical JSON, this record was 3.5 MB
// against a 2.1 MB limit, and the stage retried the batch forever.
func TestWorstCaseStateRecordFitsItsTopic(t *testing.T) {
	dir := t.TempDir()
	if err := os.MkdirAll(filepath.Join(dir, "acme"), 0o755); err != nil {
		t.Fatal(err)
	}
	m := `{"schema":"aegis.dev/manifest/v0.1","name":"m","version":"1.0.0","publisher":"p","permissions":{"tools":["send_email"],` +
		`"approval_required":["send_email"],"budgets":{"max_tool_calls":4096,"max_steps":100000,"max_wall_time_ms":86400000}}}`
	if err := os.WriteFile(filepath.Join(dir, "acme", "default.json"), []byte(m), 0o644); err != nil {
		t.Fatal(err)
	}
	reg, err := manifest.LoadDir(dir)
	if err != nil {
		t.Fatal(err)
	}
	pe, err := policy.New(policy.Default())
	if err != nil {
		t.Fatal(err)
	}
	p := NewStage(NewEngine(pe, reg), StageConfig{Topics: topics, Partitions: 1}, nil, nil).NewProcessor(0)
	// 5 digits + 41 control bytes (246 bytes escaped) + 5 = 256 canonical bytes.
	name := func(i int) string { return fmt.Sprintf("%05d", i) + strings.Repeat("\x01", 41) + "zzzzz" }
	js := func(s string) string { b, _ := json.Marshal(s); return string(b) }
	var events [][2]string
	for i := range 1024 { // interleaved so that no tool sequence repeats
		events = append(events, [2]string{"TOOL_CALL_PROPOSED", `{"tool_name":"send_email","call_id":` + js(name(i)) + fmt.Sprintf(`,"args":{"i":%d}}`, i)})
		events = append(events, [2]string{"TOOL_CALL_PROPOSED", fmt.Sprintf(`{"tool_name":"u%d","call_id":"x","args":{}}`, i)})
	}
	for i := range 1024 {
		events = append(events, [2]string{"SANITIZED_TEXT", `{"key":` + js(name(i)) + `}`})
	}
	for i := range 32 {
		events = append(events, [2]string{"MEMORY_READ", `{"key":` + js(name(i)) + `}`})
	}
	events = append(events, [2]string{"HANDOFF_REQUESTED", `{"from_agent":` + js(name(1)) + `,"to_agent":` + js(name(2)) + `}`})
	largest := 0
	for start := 0; start < len(events); start += 500 {
		var batch []*stream.Record
		for i := start; i < min(start+500, len(events)); i++ {
			v := fmt.Sprintf(`{"tenant_id":"acme","session_id":"s","seq":%d,"ts_unix_ms":%d,"event_type":%q,"payload":%s}`,
				i+1, 1767225600000+int64(i), events[i][0], events[i][1])
			batch = append(batch, &stream.Record{Topic: topics.Events, Key: []byte("acme/s"), Value: []byte(v)})
		}
		err := p.Process(context.Background(), batch, func(o stream.Output) {
			switch o.Topic {
			case topics.Rejected:
				t.Fatalf("rejected: %.300s", o.Value)
			case topics.DeciderState:
				largest = max(largest, len(o.Value))
			}
		})
		if err != nil {
			t.Fatal(err)
		}
	}
	// An identifier of 256 bytes that canonical JSON writes in 1,536 is
	// refused.
	var rejected int
	v := fmt.Sprintf(`{"tenant_id":"acme","session_id":"s","seq":%d,"ts_unix_ms":1767225700000,"event_type":"SANITIZED_TEXT","payload":{"key":%s}}`,
		len(events)+1, js(strings.Repeat("\x01", 256)))
	if err := p.Process(context.Background(), []*stream.Record{{Topic: topics.Events, Key: []byte("acme/s"), Value: []byte(v)}}, func(o stream.Output) {
		if o.Topic == topics.Rejected && strings.Contains(string(o.Value), `"reason":"INVALID_FIELD"`) {
			rejected++
		}
	}); err != nil || rejected != 1 {
		t.Fatalf("a 256-byte key of control bytes: %v, %d INVALID_FIELD rejections", err, rejected)
	}
	limit := pipeline.StateRecordMaxBytes
	t.Logf("largest state record %d bytes, topic record limit %d", largest, limit)
	if largest == 0 || largest > limit {
		t.Fatalf("state record of %d bytes, limit %d", largest, limit)
	}
}
