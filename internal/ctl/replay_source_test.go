package ctl

import (
	"context"
	"strconv"
	"strings"
	"testing"

	"aegis.dev/aegis/internal/pipeline"
	"aegis.dev/aegis/internal/stream"
	"aegis.dev/aegis/replayer"
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
