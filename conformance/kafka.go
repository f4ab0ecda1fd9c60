package conformance

import (
	"bytes"
	"context"
	"encoding/base64"
	"encoding/json"
	"errors"
	"fmt"
	"sync"
	"time"
	"unicode/utf8"

	"aegis.dev/aegis/internal/grant"
	"aegis.dev/aegis/internal/pipeline"
	"aegis.dev/aegis/internal/stream"
	"aegis.dev/aegis/schemas/envelope"
)

// Kafka events steps (Step.Via "kafka") publish the way a fleet does:
// straight to the events topic with the project's producer (idempotent,
// acks=all, murmur2 on the key "<tenant_id>/<session_id>"), each record
// acknowledged before the step ends. The barriers need nothing else: the
// probe, published through the gateway to the same key, lands on the same
// partition behind every record Kafka acknowledged before it, whoever
// produced them, and the decider answers it only after them
// (barrier.go).
//
// A rejection of a Kafka-published record has no HTTP caller to answer;
// it goes to the rejected topic, which is what a Kafka publisher reads.
// expect.rejected waits there for the rejection of exactly the published
// record: the one whose topic, partition and offset are the record's
// (every rejection carries its source's), on the same partition of the
// rejected topic (co-partitioned, docs/pipeline.md), reading from the end
// offsets listed before the record was produced.

// kafkaEvidence is the Evidence method of Kafka exchanges.
const kafkaEvidence = "KAFKA"

// kafkaClient is a run's connection to the target's brokers.
type kafkaClient struct {
	brokers []string
	sec     stream.Option // the cluster's security, for every client
	topics  pipeline.Topics
	prod    *stream.Producer

	// The partition count of the events topic, listed once, when a case
	// first pins a record (Step.Partition).
	countOnce sync.Once
	count     int32
	countErr  error
}

// partitions returns the partition count of the events topic.
func (k *kafkaClient) partitions(ctx context.Context) (int32, error) {
	k.countOnce.Do(func() {
		offs, err := stream.EndOffsets(ctx, k.brokers, k.topics.Events, k.sec)
		switch {
		case err != nil:
			k.countErr = fmt.Errorf("list the partitions of %s: %w", k.topics.Events, err)
		case len(offs) == 0:
			k.countErr = fmt.Errorf("%s has no partitions", k.topics.Events)
		default:
			k.count = int32(len(offs))
		}
	})
	return k.count, k.countErr
}

func newKafkaClient(brokers []string, sec stream.Security, prefix string) (*kafkaClient, error) {
	if prefix == "" {
		prefix = pipeline.DefaultTopicPrefix
	}
	if err := pipeline.ValidatePrefix(prefix); err != nil {
		return nil, fmt.Errorf("conformance: %w", err)
	}
	// Records up to the events topic's limit for the default
	// --max-event-bytes, so that a record over that limit (pad_to)
	// reaches the decider, which rejects it TOO_LARGE.
	p, err := stream.NewProducer(stream.ProducerConfig{Brokers: brokers, MaxRecordBytes: pipeline.MaxRecordBytes(envelope.DefaultMaxEventBytes)},
		stream.WithStage("conformance"), stream.WithSecurity(sec))
	if err != nil {
		return nil, fmt.Errorf("conformance: kafka: %w", err)
	}
	return &kafkaClient{brokers: brokers, sec: stream.WithSecurity(sec), topics: pipeline.NewTopics(prefix), prod: p}, nil
}

func (k *kafkaClient) close() { k.prod.Close() }

// published is where one record of a Kafka step was written. Key is
// absent for a record without a key.
type published struct {
	Topic     string  `json:"topic"`
	Partition int32   `json:"partition"`
	Offset    int64   `json:"offset"`
	Key       *string `json:"key,omitempty"`
}

// record is what a Kafka step writes: its key (nil: none), its value, and
// the partition it is pinned to (pin false: the key's murmur2 partition).
type record struct {
	key       []byte
	value     []byte
	pin       bool
	partition int32
}

// kafkaValue is the value of the record of e: the raw bytes, or the
// envelope of the short form (signed with sign), padded to e.PadTo.
func (cr *caseRun) kafkaValue(e *Event, tenant, session string, sign bool) ([]byte, error) {
	var b []byte
	switch {
	case e.Raw != "":
		b = []byte(cr.str(e.Raw))
	case e.RawBase64 != "":
		var err error
		if b, err = base64.StdEncoding.DecodeString(e.RawBase64); err != nil {
			return nil, fmt.Errorf("raw_base64: %w", err)
		}
	default:
		env := cr.envelope(tenant, session, e, true)
		var err error
		if b, err = json.Marshal(env); err != nil {
			return nil, err
		}
		if sign && env["event_type"] == "APPROVAL_DECIDED" {
			if b, err = signEvent(cr.r.opts.ApprovalSecret, tenant, session, b); err != nil {
				return nil, fmt.Errorf("sign: %w", err)
			}
		}
	}
	if e.PadTo > 0 {
		if len(b) > e.PadTo {
			return nil, fmt.Errorf("pad_to %d: the record is already %d bytes", e.PadTo, len(b))
		}
		b = append(b, bytes.Repeat([]byte{' '}, e.PadTo-len(b))...)
	}
	return b, nil
}

// kafkaKey is the record key of a Kafka step: "<tenant>/<session>", or
// the step's key (templates expanded), or none.
func (cr *caseRun) kafkaKey(s *Step, tenant, session string) []byte {
	switch {
	case s.NoKey:
		return nil
	case s.Key != nil:
		return append([]byte{}, cr.str(*s.Key)...) // "" is an empty key, not none
	}
	return []byte(tenant + "/" + session)
}

// kafkaPartition is where a Kafka step pins its records with key, if it
// does.
func (cr *caseRun) kafkaPartition(ctx context.Context, s *Step, key []byte) (pin bool, partition int32, err error) {
	if s.Partition == nil {
		return false, 0, nil
	}
	n, err := cr.r.kafka.partitions(ctx)
	if err != nil {
		return false, 0, err
	}
	if s.Partition.Wrong {
		if n < 2 {
			return false, 0, fmt.Errorf("partition: %s needs two partitions or more; %s has %d", PartitionWrong, cr.r.kafka.topics.Events, n)
		}
		return true, (stream.Partition(key, n) + 1) % n, nil
	}
	if s.Partition.N >= n {
		return false, 0, fmt.Errorf("partition %d: %s has %d partitions", s.Partition.N, cr.r.kafka.topics.Events, n)
	}
	return true, s.Partition.N, nil
}

// kafkaEvents is an events step with via: kafka. It returns the
// rejection (for expect.rejected) or the records written, as the step's
// response for templates.
func (cr *caseRun) kafkaEvents(ctx context.Context, s *Step, tenant, session string, want Expect) (*response, error) {
	k := cr.r.kafka
	key := cr.kafkaKey(s, tenant, session)
	pin, partition, err := cr.kafkaPartition(ctx, s, key)
	if err != nil {
		return nil, err
	}
	recs := make([]record, len(s.Events))
	for i, e := range s.Events {
		b, err := cr.kafkaValue(e, tenant, session, s.Sign)
		if err != nil {
			return nil, err
		}
		recs[i] = record{key: key, value: b, pin: pin, partition: partition}
	}
	var start map[int32]int64
	if want.Rejected != "" {
		var err error
		if start, err = stream.EndOffsets(ctx, k.brokers, k.topics.Rejected, k.sec); err != nil {
			cr.ev = append(cr.ev, Evidence{Step: cr.where, Method: kafkaEvidence, Path: k.topics.Rejected, Error: err.Error()})
			return nil, fmt.Errorf("list the end offsets of %s: %w", k.topics.Rejected, err)
		}
	}
	cr.wrote(tenant, session)
	done, err := k.produce(ctx, recs)
	ev := Evidence{Step: cr.where, Method: kafkaEvidence, Path: k.topics.Events + " " + describeKey(key, pin, partition), Request: evidenceValues(recs)}
	if err != nil {
		ev.Error = err.Error()
		cr.ev = append(cr.ev, ev)
		return nil, fmt.Errorf("publish to %s: %w", k.topics.Events, err)
	}
	ev.Response = mustJSON(done)
	cr.ev = append(cr.ev, ev)
	if want.Rejected == "" {
		var out any
		_ = json.Unmarshal([]byte(mustJSON(map[string]any{"records": done})), &out)
		return &response{json: out}, nil
	}
	rec := done[0]
	rj, err := cr.rejection(ctx, rec, start[rec.Partition])
	if err != nil {
		return nil, err
	}
	want.Fields = withField(want.Fields, "reason", want.Rejected)
	return rj, checkFields(want.Fields, rj)
}

func withField(m map[string]any, k string, v any) map[string]any {
	out := make(map[string]any, len(m)+1)
	for f, x := range m {
		out[f] = x
	}
	out[k] = v
	return out
}

// describeKey says how a step's records are keyed and placed, for the
// evidence.
func describeKey(key []byte, pin bool, partition int32) string {
	d := "no key"
	if key != nil {
		d = fmt.Sprintf("key %q", key)
	}
	if pin {
		d += fmt.Sprintf(" pinned to partition %d", partition)
	}
	return d
}

// evidenceValues writes the values of recs one a line, for the evidence:
// a value that is not UTF-8 as "base64:…", and each cut to its first
// evidenceValueBytes (a record padded past the size limit is 1 MiB).
func evidenceValues(recs []record) string {
	var out []byte
	for i, r := range recs {
		if i > 0 {
			out = append(out, '\n')
		}
		v := r.value
		if !utf8.Valid(v) {
			v = []byte("base64:" + base64.StdEncoding.EncodeToString(v))
		}
		if len(v) > evidenceValueBytes {
			v = append(pipeline.TrimPartialRune(v[:evidenceValueBytes:evidenceValueBytes]), fmt.Sprintf("… (%d bytes)", len(r.value))...)
		}
		out = append(out, v...)
	}
	return string(out)
}

const evidenceValueBytes = 4 << 10

// produce writes recs in order and returns where each was written once
// the brokers acknowledged all of them.
func (k *kafkaClient) produce(ctx context.Context, recs []record) ([]published, error) {
	out := make([]published, len(recs))
	errs := make([]error, len(recs))
	var wg sync.WaitGroup
	wg.Add(len(recs))
	for i, rec := range recs {
		m := stream.Message{Topic: k.topics.Events, Key: rec.key, Value: rec.value, Pin: rec.pin, Partition: rec.partition}
		k.prod.ProduceAsync(ctx, m, func(r *stream.Record, err error) {
			defer wg.Done()
			if err != nil {
				errs[i] = err
				return
			}
			out[i] = published{Topic: r.Topic, Partition: r.Partition, Offset: r.Offset}
			if rec.key != nil {
				key := string(rec.key)
				out[i].Key = &key
			}
		})
	}
	wg.Wait()
	if err := errors.Join(errs...); err != nil {
		return nil, err
	}
	return out, nil
}

// rejection reads the rejected topic's partition of rec from offset from
// until the rejection of rec arrives, or the poll timeout passes.
func (cr *caseRun) rejection(ctx context.Context, rec published, from int64) (*response, error) {
	k := cr.r.kafka
	path := fmt.Sprintf("%s partition %d from offset %d: the rejection of %s/%d@%d", k.topics.Rejected, rec.Partition, from, rec.Topic, rec.Partition, rec.Offset)
	ev := Evidence{Step: cr.where, Method: kafkaEvidence, Path: path}
	c, err := stream.NewConsumer(stream.ConsumerConfig{Brokers: k.brokers,
		Start: stream.FromOffsets(map[string]map[int32]int64{k.topics.Rejected: {rec.Partition: from}}), FetchMaxWait: 100 * time.Millisecond},
		stream.WithStage("conformance"), k.sec)
	if err != nil {
		ev.Error = err.Error()
		cr.ev = append(cr.ev, ev)
		return nil, err
	}
	defer c.Close()
	pctx, cancel := context.WithTimeout(ctx, cr.r.opts.PollTimeout)
	defer cancel()
	seen := 0
	for {
		recs, err := c.Poll(pctx)
		for _, r := range recs {
			seen++
			var rj struct {
				Topic     string `json:"topic"`
				Partition int32  `json:"partition"`
				Offset    int64  `json:"offset"`
			}
			if json.Unmarshal(r.Value, &rj) != nil || rj.Topic != rec.Topic || rj.Partition != rec.Partition || rj.Offset != rec.Offset {
				continue
			}
			ev.Response = string(r.Value)
			cr.ev = append(cr.ev, ev)
			resp := &response{body: r.Value}
			_ = json.Unmarshal(r.Value, &resp.json)
			return resp, nil
		}
		if err != nil {
			if pctx.Err() != nil && ctx.Err() == nil {
				err = fmt.Errorf("no rejection of the record within %s (%d other rejections read): it was accepted, or is still on its way", cr.r.opts.PollTimeout, seen)
			}
			ev.Error = err.Error()
			cr.ev = append(cr.ev, ev)
			return nil, fmt.Errorf("%s: %w", path, err)
		}
	}
}

// checkFields compares the fields of want with resp's JSON.
func checkFields(fields map[string]any, resp *response) error {
	return check(Expect{Fields: fields}, resp.status, resp)
}

// signEvent sets the grant of an APPROVAL_DECIDED envelope (JSON) with
// secret, as the gateway and `aegisctl publish --approval-secret-file`
// do.
func signEvent(secret []byte, tenant, session string, event []byte) ([]byte, error) {
	var m map[string]json.RawMessage
	if err := json.Unmarshal(event, &m); err != nil {
		return nil, err
	}
	p, err := grant.Sign(secret, tenant, session, m["payload"])
	if err != nil {
		return nil, err
	}
	m["payload"] = p
	return json.Marshal(m)
}
