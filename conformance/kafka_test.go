package conformance_test

import (
	"context"
	"encoding/json"
	"errors"
	"slices"
	"strings"
	"testing"
	"time"

	"aegis.dev/aegis/conformance"
	"aegis.dev/aegis/internal/daemon"
	"aegis.dev/aegis/internal/stream"
)

// kafkaOnlyPack is a case that talks to the target over Kafka alone: a
// proposal at seq 1, then one at seq 3, which the decider can reject
// SEQ_GAP with expected_seq 2 only after it accepted the first.
const kafkaOnlyPack = `name: kafka-only
cases:
  - id: KONLY-001
    requirement: REQ-KAFKA-INGEST
    description: two records over Kafka, the second one rejected
    requires: [kafka]
    scenario:
      steps:
        - {tenant: conf-a, session: "{{sid}}", via: kafka, events: [{seq: 1, type: TOOL_CALL_PROPOSED, manifest: conf-kafka, payload: {tool_name: search, call_id: c1, args: {}}}]}
        - {name: r, tenant: conf-a, session: "{{sid}}", via: kafka, events: [{seq: 3, type: TOOL_CALL_PROPOSED, payload: {tool_name: search, call_id: c3, args: {}}}], expect: {rejected: SEQ_GAP, fields: {expected_seq: 2, topic: aegis.events}}}
`

// TestKafkaStepsPublishToTheBroker: a Kafka events step reaches the
// pipeline over Kafka and nothing else. The run's HTTP target is an
// address nothing listens on, so any HTTP exchange would fail the case;
// the decider must have accepted the first record (the rejection of the
// second names expected_seq 2), and both records are on the events topic
// at the partition and offset the evidence names, keyed
// "<tenant>/<session>" and on their key's murmur2 partition.
func TestKafkaStepsPublishToTheBroker(t *testing.T) {
	packs, err := conformance.Builtin()
	if err != nil {
		t.Fatal(err)
	}
	target := startEmbedded(t, packs, nil)
	pack, err := conformance.Parse([]byte(kafkaOnlyPack))
	if err != nil {
		t.Fatal(err)
	}
	pack.Name = "kafka-only"
	rep, err := conformance.Run(context.Background(), []*conformance.Pack{pack}, conformance.Options{
		Target: "http://127.0.0.1:1", Brokers: target.Brokers, TopicPrefix: target.TopicPrefix, PollTimeout: 20 * time.Second})
	if err != nil {
		t.Fatal(err)
	}
	c := rep.Cases[0]
	if c.Status != conformance.StatusPass {
		t.Fatalf("%s: %s %s\n%+v", c.ID, c.Status, c.Message, c.Evidence)
	}
	type record struct {
		Topic     string `json:"topic"`
		Partition int32  `json:"partition"`
		Offset    int64  `json:"offset"`
		Key       string `json:"key"`
	}
	var recs []record
	for _, ev := range c.Evidence {
		if ev.Method != "KAFKA" {
			t.Errorf("evidence of a non-Kafka exchange: %+v", ev)
		}
		var rs []record
		if json.Unmarshal([]byte(ev.Response), &rs) == nil && len(rs) > 0 && strings.HasPrefix(ev.Path, "aegis.events ") {
			recs = append(recs, rs...)
		}
	}
	if len(recs) != 2 {
		t.Fatalf("published records in the evidence: %+v", c.Evidence)
	}
	session := "konly-001-" + rep.RunID
	for i, r := range recs {
		if r.Topic != "aegis.events" || r.Key != "conf-a/"+session || r.Partition != stream.Partition([]byte(r.Key), 3) {
			t.Errorf("record %d: %+v", i, r)
		}
		c, err := stream.NewConsumer(stream.ConsumerConfig{Brokers: target.Brokers,
			Start: stream.FromOffsets(map[string]map[int32]int64{r.Topic: {r.Partition: r.Offset}})})
		if err != nil {
			t.Fatal(err)
		}
		ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
		got, err := c.Poll(ctx)
		cancel()
		c.Close()
		if err != nil || len(got) == 0 {
			t.Fatalf("record %d: %v", i, err)
		}
		var ev struct {
			SessionID string `json:"session_id"`
			Seq       uint64 `json:"seq"`
		}
		if string(got[0].Key) != r.Key || json.Unmarshal(got[0].Value, &ev) != nil || ev.SessionID != session || ev.Seq != []uint64{1, 3}[i] {
			t.Errorf("record %d on the events topic: key %q value %s", i, got[0].Key, got[0].Value)
		}
	}
}

// TestApprovalGrantCasesCatchForgeries: the cases of REQ-APPROVAL-GRANT
// that expect a refusal fail against a decider that honours every
// APPROVAL_DECIDED (--unauthenticated-approvals), and the one of a signed
// approval fails when the runner signs with another secret than the
// deployment's: they show the grant check, not a payload the decider
// would refuse anyway.
func TestApprovalGrantCasesCatchForgeries(t *testing.T) {
	packs, err := conformance.Builtin()
	if err != nil {
		t.Fatal(err)
	}
	run := func(ids []string, mutate func(*daemon.Config), secret []byte) *conformance.Report {
		t.Helper()
		var cases []*conformance.Pack
		for _, id := range ids {
			cases = append(cases, filterCases(packs, id)...)
		}
		target := startEmbedded(t, packs, mutate)
		opts := target.options(t)
		if secret != nil {
			opts.ApprovalSecret = secret
		}
		opts.PollTimeout = 3 * time.Second
		rep, err := conformance.Run(context.Background(), cases, opts)
		if err != nil {
			t.Fatal(err)
		}
		if len(rep.Cases) != len(ids) {
			t.Fatalf("%d cases, want %v", len(rep.Cases), ids)
		}
		for _, c := range rep.Cases {
			if c.Status != conformance.StatusFail {
				t.Errorf("%s %s, want fail", c.ID, c.Status)
			}
		}
		return rep
	}
	rep := run([]string{"APPR-KAFKA-001", "APPR-KAFKA-002", "APPR-KAFKA-003", "APPR-KAFKA-004"}, func(c *daemon.Config) { c.UnauthenticatedApprovals = true }, nil)
	for _, c := range rep.Cases {
		if !strings.Contains(c.Message, "no rejection of the record") {
			t.Errorf("%s: %s", c.ID, c.Message)
		}
	}
	run([]string{"APPR-KAFKA-005"}, nil, []byte("not the deployment's approval secret, 32+ bytes"))
}

// TestKafkaCasesSkipWithoutBrokers: without brokers the cases that
// publish to Kafka are skipped and say which flag provides them; without
// the approval secret the signing case is skipped; the others run.
func TestKafkaCasesSkipWithoutBrokers(t *testing.T) {
	packs, err := conformance.Builtin()
	if err != nil {
		t.Fatal(err)
	}
	packs = append(filterCases(packs, "KAFKA-"), filterCases(packs, "APPR-KAFKA-")...)
	unused := func(context.Context, string, string) ([]byte, error) { return nil, errors.New("not reached") }
	rep, err := conformance.Run(context.Background(), packs, conformance.Options{Target: "http://127.0.0.1:1", PollTimeout: time.Millisecond,
		DecideLog: unused, ApprovalSecret: []byte("0123456789abcdef0123456789abcdef")})
	if err != nil {
		t.Fatal(err)
	}
	if len(rep.Cases) < 10 {
		t.Fatalf("%d cases", len(rep.Cases))
	}
	for _, c := range rep.Cases {
		if c.Status != conformance.StatusSkip || !strings.Contains(c.Message, "--brokers") {
			t.Errorf("%s: %s %q", c.ID, c.Status, c.Message)
		}
	}
	// Brokers (nothing listens there) but no secret: only the signing
	// case is skipped for it.
	rep, err = conformance.Run(context.Background(), filterCases(packs, "APPR-KAFKA-"), conformance.Options{Target: "http://127.0.0.1:1",
		PollTimeout: time.Millisecond, Brokers: []string{"127.0.0.1:1"}})
	if err != nil {
		t.Fatal(err)
	}
	requires := map[string][]string{}
	for _, p := range packs {
		for _, c := range p.Cases {
			requires[c.ID] = c.Requires
		}
	}
	for _, c := range rep.Cases {
		needs := slices.Contains(requires[c.ID], conformance.RequireApprovalSecret)
		if (c.Status == conformance.StatusSkip) != needs || (needs && !strings.Contains(c.Message, "--approval-secret-file")) {
			t.Errorf("%s: %s %q", c.ID, c.Status, c.Message)
		}
	}
}

// TestWrongPartitionCaseSkipsOnOnePartition: on an events topic of one
// partition every partition is every key's, so the case of a record off
// its key's partition is skipped (saying why) rather than failed; the
// other raw-record cases run there as everywhere.
func TestWrongPartitionCaseSkipsOnOnePartition(t *testing.T) {
	packs, err := conformance.Builtin()
	if err != nil {
		t.Fatal(err)
	}
	target := startEmbedded(t, packs, func(c *daemon.Config) { c.Partitions = 1 })
	var pick []*conformance.Case
	var kafka *conformance.Pack
	for _, p := range packs {
		for _, c := range p.Cases {
			if c.ID == "KAFKA-RAW-011" || c.ID == "KAFKA-RAW-010" {
				pick = append(pick, c)
				kafka = p
			}
		}
	}
	if len(pick) != 2 {
		t.Fatalf("found %d of KAFKA-RAW-010 and -011", len(pick))
	}
	one := *kafka
	one.Cases = pick
	opts := target.options(t)
	rep, err := conformance.Run(context.Background(), []*conformance.Pack{&one}, opts)
	if err != nil {
		t.Fatal(err)
	}
	for _, c := range rep.Cases {
		want := conformance.StatusPass
		if c.ID == "KAFKA-RAW-011" {
			want = conformance.StatusSkip
		}
		if c.Status != want || (want == conformance.StatusSkip && !strings.Contains(c.Message, "two partitions")) {
			t.Errorf("%s: %s %s, want %s", c.ID, c.Status, c.Message, want)
		}
	}
}
