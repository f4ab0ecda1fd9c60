package decider

import (
	"context"
	"encoding/json"
	"fmt"
	"math/rand"
	"testing"

	"aegis.dev/aegis/decider/policy"
	"aegis.dev/aegis/internal/pipeline"
	"aegis.dev/aegis/internal/stream"
	"aegis.dev/aegis/schemas/envelope"
)

// TestProcessOutputsMatchEncoders checks the records the stage writes
// without the general encoders against those encoders, on a random stream
// of every event type with escapes, HTML and non-ASCII text, duplicates,
// conflicts, gaps, bad records and spilled sessions: each decided event
// must be the canonical form of itself (Event.AppendCanonical), each reply
// json.Marshal of NewReply of its decided event, each state record the
// appendJSON of what decodeState reads back.
func TestProcessOutputsMatchEncoders(t *testing.T) {
	r := rand.New(rand.NewSource(7))
	stage := NewStage(newEngine(t, policy.Default()), StageConfig{Topics: topics, Partitions: 1, State: pipeline.StateConfig{Sessions: 7, Dir: t.TempDir()}}, nil, nil)
	p := stage.NewProcessor(0)
	js := func(s string) string { b, _ := json.Marshal(s); return string(b) }
	strs := []string{"a", "<x>&", "\u2028z", "é", "q\"uote", "back\\slash", "tab\t", "ctl\u0001", "\U0001F600", "search"}
	pick := func() string { return strs[r.Intn(len(strs))] }
	seqs := map[int]int{}
	var sent []string
	counts := map[string]int{}
	for b := range 200 {
		var batch []*stream.Record
		for i := range 1 + r.Intn(12) {
			s := r.Intn(25)
			sid := fmt.Sprintf("s%d", s)
			key := "acme/" + sid
			seq := seqs[s] + 1
			switch x := r.Intn(40); {
			case x == 0:
				seq += 2
			case x == 1 && len(sent) > 0:
				batch = append(batch, &stream.Record{Topic: topics.Events, Key: []byte(key), Value: []byte(sent[r.Intn(len(sent))])})
				continue
			case x == 2:
				batch = append(batch, &stream.Record{Topic: topics.Events, Key: []byte(key), Value: []byte(`{"tenant_id":"acme"`)})
				continue
			case x == 3:
				key = "acme/other"
			}
			var typ, payload string
			switch r.Intn(10) {
			case 0, 1, 2, 3:
				typ = "TOOL_CALL_PROPOSED"
				args := fmt.Sprintf(`{"q":%s, "n": %d.0}`, js(pick()), r.Intn(3))
				if r.Intn(4) == 0 {
					args = fmt.Sprintf(`{"url":"https://%s/x","timeout_ms":%d}`, []string{"api.example.com", "evil.com"}[r.Intn(2)], r.Intn(3000))
				}
				payload = fmt.Sprintf(`{"tool_name":%s,"call_id":%s,"args":%s}`, js([]string{"search", "web_fetch", "send_email", "nope"}[r.Intn(4)]), js("c"+pick()), args)
			case 4:
				typ, payload = "MODEL_CALL_STARTED", `{"model":"m","input_tokens":120}`
			case 5:
				typ = "TOOL_RESULT"
				payload = fmt.Sprintf(`{"tool_name":%s,"is_error":%v,"sanitizer_key":%s}`, js(pick()), r.Intn(2) == 0, js([]string{"", "k1"}[r.Intn(2)]))
			case 6:
				typ, payload = "SANITIZED_TEXT", `{"key":"k1"}`
			case 7:
				typ, payload = "APPROVAL_DECIDED", fmt.Sprintf(`{"call_id":%s,"decision":%s}`, js("c"+pick()), js([]string{"allow", "deny"}[r.Intn(2)]))
			case 8:
				typ, payload = "HANDOFF_REQUESTED", fmt.Sprintf(`{"from_agent":%s,"to_agent":%s}`, js(pick()), js(pick()))
			case 9:
				typ, payload = "ERROR_RAISED", `{"message":"m","extra":[1,{"z":null,"a":true}]}`
			}
			man := ""
			if seq == 1 && r.Intn(2) == 0 {
				man = `"manifest":"support-bot",`
			}
			v := fmt.Sprintf(`{"tenant_id":"acme","session_id":%s,%s"seq":%d,"ts_unix_ms":%d,"event_type":%s,"payload":%s}`, js(sid), man, seq, 1000+b*10+i, js(typ), payload)
			if key == "acme/"+sid && seq == seqs[s]+1 {
				seqs[s] = seq
			}
			sent = append(sent, v)
			batch = append(batch, &stream.Record{Topic: topics.Events, Key: []byte(key), Value: []byte(v)})
		}
		var decided *envelope.Event
		err := p.Process(context.Background(), batch, func(o stream.Output) {
			counts[o.Topic]++
			switch o.Topic {
			case topics.Decided:
				ev, err := envelope.Decoder{Sealed: true}.Decode(o.Value)
				if err != nil {
					t.Fatalf("decided %s: %v", o.Value, err)
				}
				if want, _ := ev.AppendCanonical(nil, false); string(want) != string(o.Value) {
					t.Fatalf("decided event\n got %s\nwant %s", o.Value, want)
				}
				decided = ev
			case topics.Decisions:
				if want, _ := json.Marshal(NewReply(decided)); string(want) != string(o.Value) {
					t.Fatalf("reply\n got %s\nwant %s", o.Value, want)
				}
			case topics.DeciderState:
				st, err := decodeState(string(o.Key), o.Value)
				if err != nil {
					t.Fatalf("state %s: %v", o.Value, err)
				}
				if want, _ := st.appendJSON(nil); string(want) != string(o.Value) {
					t.Fatalf("state record\n got %s\nwant %s", o.Value, want)
				}
			}
		})
		if err != nil {
			t.Fatal(err)
		}
	}
	for _, topic := range []string{topics.Decided, topics.Decisions, topics.DeciderState, topics.Rejected} {
		if counts[topic] < 50 {
			t.Fatalf("only %d records on %s: %v", counts[topic], topic, counts)
		}
	}
}
