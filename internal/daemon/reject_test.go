package daemon

import (
	"context"
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"io"
	"net/http"
	"strings"
	"testing"
	"time"

	"aegis.dev/aegis/internal/pipeline"
	"aegis.dev/aegis/internal/stream"
	"aegis.dev/aegis/schemas/envelope"
)

// Records whose rejection quotes to more than the topics carry — a payload
// of '<', a record of '"' near the topic limit — are rejected with a
// bounded rejection instead of stalling their partition, at the decider
// and at the sealer, and the sessions behind them go on being sealed.
func TestRejectionsOfRecordsThatQuoteLarge(t *testing.T) {
	d := startDaemon(t, embeddedConfig(t))
	brokers := d.Brokers()
	topics := pipeline.NewTopics(pipeline.DefaultTopicPrefix)
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
	p := largeProducer(t, d, 4<<20)

	limit := pipeline.MaxRecordBytes(envelope.DefaultMaxEventBytes)
	angles := event("acme", "q1", 7, envelope.Termination, `{"reason":"`+strings.Repeat("<", 400<<10)+`"}`) // SEQ_GAP, quoted whole
	quotes := []byte(strings.Repeat(`"`, limit-4<<10))                                                      // TOO_LARGE, 2x when quoted
	for _, m := range []stream.Message{
		msg(topics.Events, "acme/q1", angles),
		msg(topics.Events, "acme/q2", quotes),
		msg(topics.Decided, "acme/q3", quotes), // straight to the sealer's input
		msg(topics.Events, "acme/q1", event("acme", "q1", 1, envelope.Termination, `{}`)),
		msg(topics.Events, "acme/q2", event("acme", "q2", 1, envelope.Termination, `{}`)),
		msg(topics.Events, "acme/q3", event("acme", "q3", 1, envelope.Termination, `{}`)),
	} {
		if err := p.Produce(ctx, m); err != nil {
			t.Fatal(err)
		}
	}

	sealed := collect(t, brokers, topics.Sealed, 3)
	if len(sealed) != 3 {
		t.Fatalf("sealed %d records, want 3", len(sealed))
	}
	rejected := collect(t, brokers, topics.Rejected, 3)
	if len(rejected) != 3 {
		t.Fatalf("%d rejections, want 3", len(rejected))
	}
	sum := sha256.Sum256(quotes)
	for _, r := range rejected {
		if len(r.Key)+len(r.Value) > limit {
			t.Fatalf("rejection of %s is %d bytes, topic limit %d", r.Key, len(r.Key)+len(r.Value), limit)
		}
		var rej pipeline.Rejection
		if err := json.Unmarshal(r.Value, &rej); err != nil {
			t.Fatal(err)
		}
		switch string(r.Key) {
		case "acme/q1":
			if rej.Stage != "decider" || rej.Reason != pipeline.ReasonSeqGap || rej.Original != string(angles) || rej.OriginalTruncated {
				t.Fatalf("q1: %s %s truncated=%v, original intact %v", rej.Stage, rej.Reason, rej.OriginalTruncated, rej.Original == string(angles))
			}
		case "acme/q2", "acme/q3":
			stage := map[string]string{"acme/q2": "decider", "acme/q3": "sealer"}[string(r.Key)]
			if rej.Stage != stage || rej.Reason != envelope.CodeTooLarge || !rej.OriginalTruncated || rej.OriginalBytes != len(quotes) ||
				rej.OriginalSHA256 != hex.EncodeToString(sum[:]) || rej.Original != string(quotes[:pipeline.TruncatedOriginalBytes]) {
				t.Fatalf("%s: stage %s reason %s truncated %v bytes %d sha %s prefix %d", r.Key, rej.Stage, rej.Reason, rej.OriginalTruncated, rej.OriginalBytes, rej.OriginalSHA256, len(rej.Original))
			}
		default:
			t.Fatalf("rejection with key %q", r.Key)
		}
	}
}

// With a larger max_event_bytes, an event the decider accepts is sealed
// too: the sealer takes the same limit (plus room for the decision).
func TestLargeEventsAreSealed(t *testing.T) {
	cfg := embeddedConfig(t)
	cfg.MaxEventBytes = 3 << 20
	d := startDaemon(t, cfg)
	topics := pipeline.NewTopics(pipeline.DefaultTopicPrefix)
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	p := largeProducer(t, d, 8<<20)
	big := event("acme", "big", 1, envelope.ModelCallStarted, `{"model":"m","prompt":"`+strings.Repeat("x", 2<<20)+`"}`)
	if err := p.Produce(ctx, msg(topics.Events, "acme/big", big), msg(topics.Events, "acme/big", event("acme", "big", 2, envelope.Termination, `{}`))); err != nil {
		t.Fatal(err)
	}
	sealed := collect(t, d.Brokers(), topics.Sealed, 2)
	if len(sealed) != 2 || len(sealed[0].Value) < len(big) {
		t.Fatalf("sealed %d records", len(sealed))
	}
}

// Events whose identifiers would make one session's state record larger
// than a Kafka record (three tool results naming 800 KB tools, each a taint
// source the state keeps) are rejected with INVALID_FIELD, and the
// partition goes on.
func TestLongNamesDoNotStallThePartition(t *testing.T) {
	d := startDaemon(t, embeddedConfig(t))
	topics := pipeline.NewTopics(pipeline.DefaultTopicPrefix)
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	p := largeProducer(t, d, 4<<20)
	msgs := []stream.Message{msg(topics.Events, "acme/n1", event("acme", "n1", 1, envelope.ModelCallStarted, `{}`))}
	for i := range 3 {
		name := strings.Repeat(string(rune('a'+i)), 800<<10)
		msgs = append(msgs, msg(topics.Events, "acme/n1", event("acme", "n1", uint64(2+i), envelope.ToolResult, `{"tool_name":"`+name+`"}`)))
	}
	msgs = append(msgs, msg(topics.Events, "acme/n1", event("acme", "n1", 2, envelope.Termination, `{}`)))
	if err := p.Produce(ctx, msgs...); err != nil {
		t.Fatal(err)
	}
	if sealed := collect(t, d.Brokers(), topics.Sealed, 2); len(sealed) != 2 {
		t.Fatalf("sealed %d records, want 2", len(sealed))
	}
	// The first long name is INVALID_FIELD; the two after it are gaps.
	rejected := collect(t, d.Brokers(), topics.Rejected, 3)
	reasons := map[string]int{}
	for _, r := range rejected {
		var rej pipeline.Rejection
		if err := json.Unmarshal(r.Value, &rej); err != nil {
			t.Fatal(err)
		}
		reasons[rej.Reason]++
		if rej.Reason == envelope.CodeInvalidField && (rej.Seq != 2 || !strings.Contains(rej.Detail, "payload.tool_name")) {
			t.Fatalf("rejection of seq %d: %s", rej.Seq, rej.Detail)
		}
	}
	if len(rejected) != 3 || reasons[envelope.CodeInvalidField] != 1 || reasons[pipeline.ReasonSeqGap] != 2 {
		t.Fatalf("rejections %v", reasons)
	}
}

// An event within max_event_bytes whose canonical form is not (70,000
// numbers written 1e15, 17 bytes each once canonical) is rejected TOO_LARGE
// by the decider, before it counts: the session goes on from the same seq,
// and what follows is sealed and projected. (Accepted, it used to reach the
// sealer over the sealer's limit and leave the session unsealable.)
func TestEventsThatGrowWhenCanonicalized(t *testing.T) {
	cfg := embeddedConfig(t)
	cfg.Dev = true
	d := startDaemon(t, cfg)
	topics := pipeline.NewTopics(pipeline.DefaultTopicPrefix)
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	p := largeProducer(t, d, 4<<20)
	grows := event("acme", "g1", 1, envelope.ModelCallStarted, `{"model":"m","n":[`+strings.TrimSuffix(strings.Repeat("1e15,", 70000), ",")+`]}`)
	if len(grows) > cfg.MaxEventBytes {
		t.Fatalf("the event is %d bytes", len(grows))
	}
	if err := p.Produce(ctx,
		msg(topics.Events, "acme/g1", grows),
		msg(topics.Events, "acme/g1", event("acme", "g1", 1, envelope.ModelCallStarted, `{"model":"m"}`)),
		msg(topics.Events, "acme/g1", event("acme", "g1", 2, envelope.Termination, `{}`)),
	); err != nil {
		t.Fatal(err)
	}
	if sealed := collect(t, d.Brokers(), topics.Sealed, 2); len(sealed) != 2 {
		t.Fatalf("sealed %d records, want 2", len(sealed))
	}
	rejected := collect(t, d.Brokers(), topics.Rejected, 1)
	var rej pipeline.Rejection
	if err := json.Unmarshal(rejected[0].Value, &rej); err != nil {
		t.Fatal(err)
	}
	if rej.Stage != "decider" || rej.Reason != envelope.CodeTooLarge || rej.Seq != 1 || !strings.Contains(rej.Detail, "canonical form") {
		t.Fatalf("rejection: %s %s seq %d: %s", rej.Stage, rej.Reason, rej.Seq, rej.Detail)
	}
	deadline := time.Now().Add(30 * time.Second)
	for {
		resp, err := http.Get("http://" + d.HTTPAddr() + "/v1/sessions/g1/verify?tenant_id=acme")
		if err != nil {
			t.Fatal(err)
		}
		b, _ := io.ReadAll(resp.Body)
		resp.Body.Close()
		if resp.StatusCode == 200 && strings.Contains(string(b), `"valid":true`) && strings.Contains(string(b), `"events":2`) {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("session not projected: %d %s", resp.StatusCode, b)
		}
		time.Sleep(100 * time.Millisecond)
	}
}

// largeProducer publishes records of up to maxRecord bytes to d's broker,
// until the test ends.
func largeProducer(t *testing.T, d *Daemon, maxRecord int) *stream.Producer {
	t.Helper()
	p, err := stream.NewProducer(stream.ProducerConfig{Brokers: d.Brokers(), MaxRecordBytes: maxRecord})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(p.Close)
	return p
}
