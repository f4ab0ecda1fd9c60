// Package loadtest simulates agent fleets publishing to Aegis. It is the
// publisher side of the project and the only package that uses kafka-go, the
// way many agent runtimes publish: a plain Kafka client with the murmur2
// balancer, knowing nothing of Aegis beyond the envelope and the key.
package loadtest

import (
	"context"
	"fmt"
	"time"

	kafka "github.com/segmentio/kafka-go"
	"github.com/segmentio/kafka-go/sasl/plain"
	"github.com/segmentio/kafka-go/sasl/scram"

	"aegis.dev/aegis/internal/stream"
)

// Publisher writes events to the events topic with kafka-go, keyed by
// "<tenant_id>/<session_id>" and partitioned by kafka-go's Murmur2Balancer,
// which places keys exactly like the Java client and franz-go.
type Publisher struct {
	w *kafka.Writer
}

// PublisherConfig configures a Publisher.
type PublisherConfig struct {
	Brokers []string
	Topic   string
	// Security is how the writer reaches the brokers (TLS, SASL; zero:
	// plaintext).
	Security stream.Security
	// BatchTimeout is how long a partial batch waits (default 5ms; kafka-go's
	// own default of 1s would dominate latency figures).
	BatchTimeout time.Duration
	// Async returns from Publish without waiting for acknowledgements.
	Async bool
	// Completion, with Async, receives each batch's messages and error.
	Completion func(msgs []kafka.Message, err error)
}

// NewPublisher returns a Publisher. It acknowledges with acks=all
// (kafka-go's default is none, which would hide loss).
func NewPublisher(cfg PublisherConfig) (*Publisher, error) {
	bt := cfg.BatchTimeout
	if bt <= 0 {
		bt = 5 * time.Millisecond
	}
	transport, err := kafkaTransport(cfg.Security)
	if err != nil {
		return nil, err
	}
	return &Publisher{w: &kafka.Writer{
		Transport:    transport,
		Addr:         kafka.TCP(cfg.Brokers...),
		Topic:        cfg.Topic,
		Balancer:     &kafka.Murmur2Balancer{},
		RequiredAcks: kafka.RequireAll,
		BatchTimeout: bt,
		BatchSize:    1000,
		Async:        cfg.Async,
		Completion:   cfg.Completion,
	}}, nil
}

// kafkaTransport returns kafka-go's transport for sec: nil (kafka-go's
// default) for plaintext, else one with its TLS and SASL.
func kafkaTransport(sec stream.Security) (kafka.RoundTripper, error) {
	if sec.TLS == nil && sec.SASL.Mechanism == "" {
		return nil, nil
	}
	t := &kafka.Transport{TLS: sec.TLS}
	a := sec.SASL
	switch a.Mechanism {
	case "":
	case stream.SASLPlain:
		t.SASL = plain.Mechanism{Username: a.Username, Password: a.Password}
	case stream.SASLScramSHA256, stream.SASLScramSHA512:
		algo := scram.SHA256
		if a.Mechanism == stream.SASLScramSHA512 {
			algo = scram.SHA512
		}
		m, err := scram.Mechanism(algo, a.Username, a.Password)
		if err != nil {
			return nil, fmt.Errorf("loadtest: SASL %s: %w", a.Mechanism, err)
		}
		t.SASL = m
	default:
		return nil, fmt.Errorf("loadtest: SASL mechanism %q: want one of %v", a.Mechanism, stream.SASLMechanisms)
	}
	return t, nil
}

// Message is one event to publish.
type Message struct {
	Key   []byte
	Value []byte
}

// Publish writes msgs; without Async it returns once all are acknowledged.
func (p *Publisher) Publish(ctx context.Context, msgs ...Message) error {
	km := make([]kafka.Message, len(msgs))
	for i, m := range msgs {
		km[i] = kafka.Message{Key: m.Key, Value: m.Value}
	}
	if err := p.w.WriteMessages(ctx, km...); err != nil {
		return fmt.Errorf("loadtest: publish: %w", err)
	}
	return nil
}

// Close flushes pending messages and closes the writer.
func (p *Publisher) Close() error { return p.w.Close() }

// Partition returns the partition kafka-go's Murmur2Balancer picks for key
// among n partitions.
func Partition(key []byte, n int) int {
	parts := make([]int, n)
	for i := range parts {
		parts[i] = i
	}
	return (&kafka.Murmur2Balancer{}).Balance(kafka.Message{Key: key}, parts...)
}
