package daemon

import (
	"bytes"
	"context"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"aegis.dev/aegis/internal/ctl"
	"aegis.dev/aegis/loadtest"
)

// secureKafkaEnv names the SASL_SSL listener of the integration Kafka
// (deploy/kafka/kafka.sh: TLS with its own CA, SCRAM-SHA-512 user aegis),
// and secureKafkaDirEnv the directory with its ca.pem and sasl-password.
const (
	secureKafkaEnv    = "AEGIS_TEST_KAFKA_SECURE"
	secureKafkaDirEnv = "AEGIS_TEST_KAFKA_SECURE_DIR"
)

// TestSecuredKafkaIntegration: aegisd's stages, the load tester (kafka-go
// publishing, franz-go reading) and aegisctl all reach a real broker that
// takes only TLS + SCRAM connections, through the same --kafka-tls* and
// --kafka-sasl-* flags; every event is sealed once, decided as expected,
// stored and verified. Without the flags a client gets nowhere.
func TestSecuredKafkaIntegration(t *testing.T) {
	e := newFaultEnv(t, "secure") // its topics are made and dropped on the plaintext listener of the same broker
	addr, dir := os.Getenv(secureKafkaEnv), os.Getenv(secureKafkaDirEnv)
	if addr == "" || dir == "" {
		t.Fatalf("%s and %s are not set (the Makefile exports them; deploy/kafka/kafka.sh serves the listener)", secureKafkaEnv, secureKafkaDirEnv)
	}
	for _, f := range []string{"ca.pem", "sasl-password"} {
		if _, err := os.Stat(filepath.Join(dir, f)); err != nil {
			t.Fatalf("%v: deploy/kafka/kafka.sh writes it when it starts the broker; a broker it reused (started from another checkout) has its files there", err)
		}
	}
	sec := []string{
		"--kafka-tls-ca-file", filepath.Join(dir, "ca.pem"),
		"--kafka-sasl-mechanism", "SCRAM-SHA-512",
		"--kafka-sasl-username", "aegis",
		"--kafka-sasl-password-file", filepath.Join(dir, "sasl-password"),
	}
	store := "sqlite:" + filepath.Join(e.dir, "audit.db")
	// The last --brokers wins: the stage reaches the broker through the
	// secure listener only. The load tester's agents use the example
	// manifests.
	p := e.start(TargetAll, "a", append([]string{"--brokers", addr, "--store", store, "--manifests", filepath.Join(e.root, "deploy", "manifests")}, sec...)...)
	p.waitReady(t, 90*time.Second)
	if log := p.log(); !strings.Contains(log, "security=\"tls sasl SCRAM-SHA-512 user aegis\"") {
		t.Fatalf("aegisd does not say how it reaches the brokers:\n%s", lastLines(log, 20))
	}

	var out, errOut bytes.Buffer
	args := append([]string{"--brokers", addr, "--topic-prefix", e.prefix, "--rate", "400", "--duration", "5s", "--sessions", "20",
		"--store", store, "--approval-secret-file", filepath.Join(e.dir, "approval.secret"), "--report", filepath.Join(e.dir, "report.json")}, sec...)
	if code := loadtest.Main(context.Background(), args, &out, &errOut); code != loadtest.ExitOK {
		t.Fatalf("load test over TLS + SCRAM: exit %d\n%s\n%s", code, out.String(), lastLines(errOut.String(), 20))
	}
	if !strings.Contains(out.String(), "result: OK") || !strings.Contains(out.String(), "lost 0, duplicated 0") {
		t.Fatalf("load test report:\n%s", out.String())
	}

	ctlRun := func(args ...string) (int, string, string) {
		var o, eo bytes.Buffer
		code := ctl.Main(context.Background(), ctl.IO{Stdin: strings.NewReader(""), Stdout: &o, Stderr: &eo}, args)
		return code, o.String(), eo.String()
	}
	code, stdout, stderr := ctlRun(append([]string{"replay", "--brokers", addr, "--topic-prefix", e.prefix, "--mode", "verify"}, sec...)...)
	if code != ctl.ExitOK || !strings.Contains(stdout, "verified") {
		t.Fatalf("aegisctl replay --mode verify over TLS + SCRAM: exit %d\n%s%s", code, stdout, stderr)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
	defer cancel()
	var o, eo bytes.Buffer
	if code := ctl.Main(ctx, ctl.IO{Stdin: strings.NewReader(""), Stdout: &o, Stderr: &eo},
		[]string{"export", "--brokers", addr, "--topic-prefix", e.prefix, "--topic", "sealed", "--timeout", "10s"}); code == ctl.ExitOK {
		t.Fatalf("export without the security flags reached the secure listener: %s", eo.String())
	}
}
