package conformance_test

import (
	"context"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"aegis.dev/aegis/conformance"
	"aegis.dev/aegis/internal/daemon"
	"aegis.dev/aegis/internal/stream"
)

// requireEnv returns the environment variable name; under -short the test
// is skipped, otherwise a missing variable fails it, so that a
// misconfigured run never passes silently.
func requireEnv(tb testing.TB, name, hint string) string {
	tb.Helper()
	if testing.Short() {
		tb.Skip("integration test against real services; runs without -short (make test)")
	}
	v := os.Getenv(name)
	if v == "" {
		tb.Fatalf("%s is not set: %s", name, hint)
	}
	return v
}

// TestPacksIntegration runs every pack against aegisd on real Kafka
// (AEGIS_TEST_KAFKA, topics under a unique prefix) with the audit store in
// real ClickHouse (AEGIS_TEST_CLICKHOUSE). The runner does not own a
// ClickHouse store, so the tamper cases are the embedded run's
// (TestPacksEmbedded); every other case must pass.
func TestPacksIntegration(t *testing.T) {
	brokers := requireEnv(t, "AEGIS_TEST_KAFKA", "start Kafka with `deploy/kafka/kafka.sh start && deploy/kafka/kafka.sh wait` and set AEGIS_TEST_KAFKA=127.0.0.1:19092")
	store := requireEnv(t, "AEGIS_TEST_CLICKHOUSE", "start ClickHouse with `deploy/clickhouse/clickhouse.sh start && deploy/clickhouse/clickhouse.sh wait` and set AEGIS_TEST_CLICKHOUSE=clickhouse://127.0.0.1:19000/aegis_test")
	packs, err := conformance.Builtin()
	if err != nil {
		t.Fatal(err)
	}
	prefix := topicPrefix(t, "conformance-", brokers)
	target := startEmbedded(t, packs, func(c *daemon.Config) {
		c.Brokers = strings.Split(brokers, ",")
		c.TopicPrefix = prefix
		c.Store = store
		c.Instance = prefix + "it"
	})
	// The Kafka cases publish to the real brokers, under the prefix.
	rep, err := conformance.Run(context.Background(), packs, target.options(t))
	if err != nil {
		t.Fatal(err)
	}
	failures(t, rep, func(c conformance.CaseResult) bool {
		return strings.HasPrefix(c.ID, "TAMP-") && c.ID != "TAMP-BASE-001"
	})
	t.Logf("%d passed, %d failed, %d skipped in %d ms", rep.Passed, rep.Failed, rep.Skipped, rep.DurationMs)
}

// TestPacksSecuredKafkaIntegration runs the cases that publish to Kafka
// against aegisd on the real broker's SASL_SSL listener (TLS + SCRAM,
// AEGIS_TEST_KAFKA_SECURE), the runner's Kafka clients reaching it with
// the same security: the runner's path of `aegisctl conformance run
// --brokers … --kafka-tls-ca-file … --kafka-sasl-*`.
func TestPacksSecuredKafkaIntegration(t *testing.T) {
	addr := requireEnv(t, "AEGIS_TEST_KAFKA_SECURE", "the Makefile exports it; deploy/kafka/kafka.sh serves the listener")
	dir := requireEnv(t, "AEGIS_TEST_KAFKA_SECURE_DIR", "the Makefile exports it: deploy/kafka/kafka.sh writes ca.pem and sasl-password there")
	plain := requireEnv(t, "AEGIS_TEST_KAFKA", "set AEGIS_TEST_KAFKA=127.0.0.1:19092")
	packs, err := conformance.Builtin()
	if err != nil {
		t.Fatal(err)
	}
	packs = append(filterCases(packs, "KAFKA-"), filterCases(packs, "APPR-KAFKA-")...)
	if n := countCases(packs); n < 20 {
		t.Fatalf("%d Kafka cases, want at least 20", n)
	}
	sec := stream.SecurityConfig{TLSCAFile: filepath.Join(dir, "ca.pem"), SASLMechanism: stream.SASLScramSHA512,
		SASLUsername: "aegis", SASLPasswordFile: filepath.Join(dir, "sasl-password")}
	security, err := sec.Load()
	if err != nil {
		t.Fatal(err)
	}
	prefix := topicPrefix(t, "conformance-sec-", plain)
	target := startEmbedded(t, packs, func(c *daemon.Config) {
		c.Brokers = []string{addr}
		c.KafkaSecurity = sec
		c.TopicPrefix = prefix
		c.Instance = prefix + "it"
	})
	opts := target.options(t)
	opts.KafkaSecurity = security
	rep, err := conformance.Run(context.Background(), packs, opts)
	if err != nil {
		t.Fatal(err)
	}
	failures(t, rep, nil)
	if rep.Skipped > 0 {
		t.Errorf("%d cases skipped", rep.Skipped)
	}
	t.Logf("%d passed, %d failed, %d skipped in %d ms", rep.Passed, rep.Failed, rep.Skipped, rep.DurationMs)
}

func countCases(packs []*conformance.Pack) int {
	n := 0
	for _, p := range packs {
		n += len(p.Cases)
	}
	return n
}

// topicPrefix returns a topic prefix of its own for the test, whose
// topics are deleted (through the plaintext brokers) when it ends: call it
// before the daemon starts, so that the deletion runs after the daemon has
// stopped. A failed test keeps its topics for inspection.
func topicPrefix(t *testing.T, name, brokers string) string {
	t.Helper()
	prefix := fmt.Sprintf("%s%d.", name, time.Now().UnixNano())
	t.Cleanup(func() {
		if t.Failed() {
			return
		}
		ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
		defer cancel()
		if _, err := stream.DeleteTopicsWithPrefix(ctx, strings.Split(brokers, ","), prefix); err != nil {
			t.Logf("topics %s* not deleted: %v", prefix, err)
		}
	})
	return prefix
}
