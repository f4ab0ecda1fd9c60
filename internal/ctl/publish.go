package ctl

import (
	"context"
	"encoding/json"
	"fmt"
	"strings"

	"aegis.dev/aegis/internal/pipeline"
	"aegis.dev/aegis/internal/stream"
)

// publishBatch is how many events one Produce call carries.
const publishBatch = 1000

func runPublish(ctx context.Context, env IO, args []string) int {
	fs := newFlags(env, "publish", "--brokers HOST:PORT [--topic-prefix aegis.] < events.ndjson")
	brokers := fs.String("brokers", "", "comma-separated Kafka seed brokers (required)")
	prefix := fs.String("topic-prefix", pipeline.DefaultTopicPrefix, "prefix of the pipeline's topic names")
	if code, ok := parse(fs, args); !ok {
		return code
	}
	if *brokers == "" || fs.NArg() > 0 {
		fs.Usage()
		return ExitUsage
	}
	p, err := stream.NewProducer(stream.ProducerConfig{Brokers: strings.Split(*brokers, ","), MaxRecordBytes: 4 << 20})
	if err != nil {
		return fail(env, ExitRuntime, "publish: %v", err)
	}
	defer p.Close()
	topic := pipeline.NewTopics(*prefix).Events
	var batch []stream.Message
	total := 0
	flush := func() error {
		if len(batch) == 0 {
			return nil
		}
		if err := p.Produce(ctx, batch...); err != nil {
			return err
		}
		total += len(batch)
		batch = batch[:0]
		return nil
	}
	err = eachLine(env.Stdin, func(n int, line []byte) error {
		// Only the key is derived here; the pipeline validates the event
		// and rejects it with a reason if it is bad.
		var k struct {
			TenantID  string `json:"tenant_id"`
			SessionID string `json:"session_id"`
		}
		if err := json.Unmarshal(line, &k); err != nil || k.TenantID == "" || k.SessionID == "" {
			return fmt.Errorf("line %d: cannot read tenant_id and session_id for the record key", n)
		}
		batch = append(batch, stream.Message{Topic: topic, Key: []byte(k.TenantID + "/" + k.SessionID), Value: append([]byte(nil), line...)})
		if len(batch) == publishBatch {
			return flush()
		}
		return nil
	})
	if err == nil {
		err = flush()
	}
	if err != nil {
		return fail(env, ExitFailed, "publish: %v (%d events acknowledged before)", err, total)
	}
	fmt.Fprintf(env.Stderr, "aegisctl: published %d events to %s\n", total, topic)
	return ExitOK
}
