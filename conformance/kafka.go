package conformance

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"sync"
	"time"

	"aegis.dev/aegis/internal/grant"
	"aegis.dev/aegis/internal/pipeline"
	"aegis.dev/aegis/internal/stream"
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
	topics  pipeline.Topics
	prod    *stream.Producer
}

func newKafkaClient(brokers []string, prefix string) (*kafkaClient, error) {
	if prefix == "" {
		prefix = pipeline.DefaultTopicPrefix
	}
	if err := pipeline.ValidatePrefix(prefix); err != nil {
		return nil, fmt.Errorf("conformance: %w", err)
	}
	p, err := stream.NewProducer(stream.ProducerConfig{Brokers: brokers}, stream.WithStage("conformance"))
	if err != nil {
		return nil, fmt.Errorf("conformance: kafka: %w", err)
	}
	return &kafkaClient{brokers: brokers, topics: pipeline.NewTopics(prefix), prod: p}, nil
}

func (k *kafkaClient) close() { k.prod.Close() }

// published is where one record of a Kafka step was written.
type published struct {
	Topic     string `json:"topic"`
	Partition int32  `json:"partition"`
	Offset    int64  `json:"offset"`
	Key       string `json:"key"`
}

// kafkaEvents is an events step with via: kafka. It returns the
// rejection (for expect.rejected) or the records written, as the step's
// response for templates.
func (cr *caseRun) kafkaEvents(ctx context.Context, s *Step, tenant, session string, want Expect) (*response, error) {
	k := cr.r.kafka
	key := tenant + "/" + session
	values := make([][]byte, len(s.Events))
	for i, e := range s.Events {
		env := cr.envelope(tenant, session, e, true)
		b, err := json.Marshal(env)
		if err != nil {
			return nil, err
		}
		if s.Sign && env["event_type"] == "APPROVAL_DECIDED" {
			if b, err = signEvent(cr.r.opts.ApprovalSecret, tenant, session, b); err != nil {
				return nil, fmt.Errorf("sign: %w", err)
			}
		}
		values[i] = b
	}
	var start map[int32]int64
	if want.Rejected != "" {
		var err error
		if start, err = stream.EndOffsets(ctx, k.brokers, k.topics.Rejected); err != nil {
			cr.ev = append(cr.ev, Evidence{Step: cr.where, Method: kafkaEvidence, Path: k.topics.Rejected, Error: err.Error()})
			return nil, fmt.Errorf("list the end offsets of %s: %w", k.topics.Rejected, err)
		}
	}
	cr.wrote(tenant, session)
	recs, err := k.produce(ctx, key, values)
	ev := Evidence{Step: cr.where, Method: kafkaEvidence, Path: k.topics.Events + " key " + key, Request: string(joinLines(values))}
	if err != nil {
		ev.Error = err.Error()
		cr.ev = append(cr.ev, ev)
		return nil, fmt.Errorf("publish to %s: %w", k.topics.Events, err)
	}
	ev.Response = mustJSON(recs)
	cr.ev = append(cr.ev, ev)
	if want.Rejected == "" {
		var out any
		_ = json.Unmarshal([]byte(mustJSON(map[string]any{"records": recs})), &out)
		return &response{json: out}, nil
	}
	rec := recs[0]
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

func joinLines(vs [][]byte) []byte {
	var out []byte
	for i, v := range vs {
		if i > 0 {
			out = append(out, '\n')
		}
		out = append(out, v...)
	}
	return out
}

// produce writes values under key in order and returns where each was
// written once the brokers acknowledged all of them.
func (k *kafkaClient) produce(ctx context.Context, key string, values [][]byte) ([]published, error) {
	out := make([]published, len(values))
	errs := make([]error, len(values))
	var wg sync.WaitGroup
	wg.Add(len(values))
	for i, v := range values {
		k.prod.ProduceAsync(ctx, stream.Message{Topic: k.topics.Events, Key: []byte(key), Value: v}, func(r *stream.Record, err error) {
			defer wg.Done()
			if err != nil {
				errs[i] = err
				return
			}
			out[i] = published{Topic: r.Topic, Partition: r.Partition, Offset: r.Offset, Key: key}
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
		stream.WithStage("conformance"))
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
