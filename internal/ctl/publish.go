package ctl

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	iofs "io/fs"
	"strings"
	"time"

	"aegis.dev/aegis/internal/grant"
	"aegis.dev/aegis/internal/pipeline"
	"aegis.dev/aegis/internal/stream"
	"aegis.dev/aegis/schemas/canon"
	"aegis.dev/aegis/schemas/envelope"
)

// publishBatch is how many events one Produce call carries.
const publishBatch = 1000

func runPublish(ctx context.Context, env IO, args []string) int {
	fs := newFlags(env, "publish", "--brokers HOST:PORT [--topic-prefix aegis.] [--approval-secret-file FILE] [--timeout 2m] < events.ndjson")
	brokers := fs.String("brokers", "", "comma-separated Kafka seed brokers (required)")
	prefix := fs.String("topic-prefix", pipeline.DefaultTopicPrefix, "prefix of the pipeline's topic names")
	secretFile := fs.String("approval-secret-file", "", "sign each APPROVAL_DECIDED with this approval secret (aegisd's --approval-secret-file), replacing any grant it carries; a decider refuses unsigned approvals")
	timeout := fs.Duration("timeout", 2*time.Minute, "give up when the brokers have not acknowledged a batch within this long")
	ksec := kafkaSecurity(fs)
	if code, ok := parse(fs, args); !ok {
		return code
	}
	if *brokers == "" || fs.NArg() > 0 || *timeout <= 0 {
		fs.Usage()
		return ExitUsage
	}
	cluster, code := clusterOption(env, "publish", ksec)
	if cluster == nil {
		return code
	}
	var secret []byte
	if *secretFile != "" {
		var err error
		if secret, err = grant.LoadSecret(*secretFile); err != nil {
			var pathErr *iofs.PathError
			if errors.As(err, &pathErr) {
				return fail(env, ExitRuntime, "publish: %v", err)
			}
			return fail(env, ExitUsage, "publish: %v", err)
		}
	}
	topic := pipeline.NewTopics(*prefix).Events
	// Batches no larger than the events topic takes: one over its
	// max.message.bytes is refused as a whole. When the broker cannot say
	// (no topic yet), the size aegisd gives the topic by default.
	mctx, cancel := context.WithTimeout(ctx, *timeout)
	batchBytes, err := stream.MaxMessageBytes(mctx, strings.Split(*brokers, ","), topic, cluster)
	timedOut := mctx.Err() != nil && ctx.Err() == nil
	cancel()
	if err != nil && timedOut {
		// Unreachable brokers: waiting as long again for the first
		// batch would double --timeout.
		return fail(env, ExitRuntime, "publish: the brokers did not answer within --timeout %s: %v (0 events acknowledged before)", *timeout, err)
	}
	if err != nil {
		batchBytes = pipeline.MaxRecordBytes(envelope.DefaultMaxEventBytes)
	}
	p, err := stream.NewProducer(stream.ProducerConfig{Brokers: strings.Split(*brokers, ","), MaxRecordBytes: batchBytes}, cluster)
	if err != nil {
		return fail(env, ExitRuntime, "publish: %v", err)
	}
	defer p.Close()
	var batch []stream.Message
	total := 0
	var produceErr error // a broker failure, as opposed to a bad line
	flush := func() error {
		if len(batch) == 0 {
			return nil
		}
		// The client retries unreachable brokers for ever; the
		// deadline turns that into exit 3.
		bctx, cancel := context.WithTimeout(ctx, *timeout)
		defer cancel()
		if err := p.Produce(bctx, batch...); err != nil {
			produceErr = err
			return err
		}
		total += len(batch)
		batch = batch[:0]
		return nil
	}
	err = eachLine(env.Stdin, func(n int, line []byte) error {
		// Only the key is derived here; the pipeline validates the event
		// and rejects it with a reason if it is bad.
		// The members are matched exactly: encoding/json would also
		// take "TENANT_ID" for tenant_id, which the pipeline does not.
		var m map[string]json.RawMessage
		var k struct{ TenantID, SessionID string }
		if json.Unmarshal(line, &m) != nil || json.Unmarshal(m["tenant_id"], &k.TenantID) != nil ||
			json.Unmarshal(m["session_id"], &k.SessionID) != nil || k.TenantID == "" || k.SessionID == "" {
			return fmt.Errorf("line %d: cannot read tenant_id and session_id for the record key", n)
		}
		value := append([]byte(nil), line...)
		if secret != nil {
			var err error
			if value, err = signApproval(secret, value); err != nil {
				return fmt.Errorf("line %d: %w", n, err)
			}
		}
		batch = append(batch, stream.Message{Topic: topic, Key: []byte(k.TenantID + "/" + k.SessionID), Value: value})
		if len(batch) == publishBatch {
			return flush()
		}
		return nil
	})
	if err == nil {
		err = flush()
	}
	if err != nil {
		code := inputCode(err)
		if produceErr != nil {
			code = ExitRuntime
		}
		return fail(env, code, "publish: %v (%d events acknowledged before)", err, total)
	}
	fmt.Fprintf(env.Stderr, "aegisctl: published %d events to %s\n", total, topic)
	return ExitOK
}

// signApproval returns event with its payload's grant set when it is an
// APPROVAL_DECIDED (internal/grant), in canonical form; other events are
// returned as they are.
func signApproval(secret, event []byte) ([]byte, error) {
	c, err := canon.Append(nil, event)
	if err != nil {
		return nil, err
	}
	var m map[string]json.RawMessage
	if err := json.Unmarshal(c, &m); err != nil {
		return nil, errors.New("not a JSON object")
	}
	var typ, tenant, session string
	_ = json.Unmarshal(m["event_type"], &typ)
	if typ != string(envelope.ApprovalDecided) {
		return event, nil
	}
	_ = json.Unmarshal(m["tenant_id"], &tenant)
	_ = json.Unmarshal(m["session_id"], &session)
	if m["payload"], err = grant.Sign(secret, tenant, session, m["payload"]); err != nil {
		return nil, err
	}
	b, err := json.Marshal(m)
	if err != nil {
		return nil, err
	}
	return canon.Append(nil, b)
}
