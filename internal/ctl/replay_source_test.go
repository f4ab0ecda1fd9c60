package ctl

import (
	"context"
	"encoding/json"
	"strconv"
	"strings"
	"testing"

	"aegis.dev/aegis/internal/pipeline"
	"aegis.dev/aegis/internal/stream"
	"aegis.dev/aegis/replayer"
	"aegis.dev/aegis/schemas/chain"
)

// TestKafkaSourceStreamsSessions: the sealed-topic source hands a session
// to the replay as soon as its last record is read, not after the whole
// partition is in memory, and keeps the time and session selection.
func TestKafkaSourceStreamsSessions(t *testing.T) {
	ctx, topic := context.Background(), pipeline.NewTopics(pipeline.DefaultTopicPrefix).Sealed
	broker, p := topicBroker(t, topic, 1)
	ev := func(session string, seq, ts int) string {
		return `{"tenant_id":"acme","session_id":"` + session + `","seq":` + strconv.Itoa(seq) + `,"ts_unix_ms":` + strconv.Itoa(ts) + `,"event_type":"MODEL_CALL_STARTED","payload":{}}`
	}
	// One partition, sessions interleaved: a opens first and ends last.
	raw := []string{ev("a", 1, 1000), ev("b", 1, 1001), ev("c", 1, 5000), ev("b", 2, 1002), ev("c", 2, 5001), ev("a", 2, 1003)}
	code, sealed, stderr := run(t, strings.Join(raw, "\n")+"\n", "seal")
	if code != ExitOK {
		t.Fatalf("seal: exit %d: %s", code, stderr)
	}
	sessions := []string{"a", "b", "c", "b", "c", "a"}
	for i, line := range strings.Split(strings.TrimSpace(sealed), "\n") {
		session := sessions[i]
		if err := p.Produce(ctx, stream.Message{Topic: topic, Key: []byte("acme/" + session), Value: []byte(line)}); err != nil {
			t.Fatal(err)
		}
	}
	order := func(o replayOptions) string {
		var bad badRecords
		var got []string
		err := kafkaSource(broker.Brokers(), nil, topic, o, &bad)(ctx, func(s *replayer.Session) error {
			seqs := ""
			for _, e := range s.Events {
				seqs += strconv.Itoa(int(e.Seq))
			}
			got = append(got, s.SessionID+":"+seqs)
			return nil
		})
		if err != nil || len(bad.all()) > 0 {
			t.Fatalf("source: %v, bad %v", err, bad.all())
		}
		return strings.Join(got, " ")
	}
	if got, want := order(replayOptions{}), "b:12 c:12 a:12"; got != want {
		t.Fatalf("sessions in order %q, want %q (each as soon as its last record is read)", got, want)
	}
	if got, want := order(replayOptions{since: 1002, until: 2000}), "b:12 a:12"; got != want {
		t.Fatalf("time selection: %q, want %q", got, want)
	}
	if got, want := order(replayOptions{sessions: []string{"a", "c"}}), "c:12 a:12"; got != want {
		t.Fatalf("session selection: %q, want %q", got, want)
	}
}

// TestReplayVerifyBrokersOneFailurePerSession: on the sealed topic too, a
// session reports one failure, also when a record not written canonically
// is followed by a record that breaks the chain.
func TestReplayVerifyBrokersOneFailurePerSession(t *testing.T) {
	ctx, topic := context.Background(), pipeline.NewTopics(pipeline.DefaultTopicPrefix).Sealed
	broker, p := topicBroker(t, topic, 1)
	ev := func(seq int) string {
		return `{"tenant_id":"acme","session_id":"a","seq":` + strconv.Itoa(seq) + `,"ts_unix_ms":1000,"event_type":"MODEL_CALL_STARTED","payload":{}}`
	}
	code, sealed, stderr := run(t, ev(1)+"\n"+ev(2)+"\n"+ev(3)+"\n", "seal")
	if code != ExitOK {
		t.Fatalf("seal: exit %d: %s", code, stderr)
	}
	lines := strings.Split(strings.TrimSpace(sealed), "\n")
	lines[0] = "{ " + lines[0][1:]          // the same record, not canonical
	lines = append(lines[:1], lines[2:]...) // seq 2 deleted
	for _, line := range lines {
		if err := p.Produce(ctx, stream.Message{Topic: topic, Key: []byte("acme/a"), Value: []byte(line)}); err != nil {
			t.Fatal(err)
		}
	}
	code, out, stderr := run(t, "", "replay", "--brokers", strings.Join(broker.Brokers(), ","), "--mode", "verify", "--json")
	var rep VerifyReport
	if err := json.Unmarshal([]byte(out), &rep); err != nil {
		t.Fatalf("%v: %s%s", err, out, stderr)
	}
	if code != ExitFailed || len(rep.Failures) != 1 || rep.Failures[0].Reason != chain.ReasonMalformed {
		t.Fatalf("exit %d, failures %+v", code, rep.Failures)
	}
}
