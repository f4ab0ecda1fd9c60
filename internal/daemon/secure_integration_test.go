package daemon

import (
	"bytes"
	"context"
	"flag"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"aegis.dev/aegis/internal/ctl"
	"aegis.dev/aegis/internal/stream"
	"aegis.dev/aegis/loadtest"
)

// secureKafkaEnv names the SASL_SSL listener of the integration Kafka
// (deploy/kafka/kafka.sh: TLS with its own CA, SCRAM-SHA-512 user aegis),
// and secureKafkaDirEnv the directory with its ca.pem and sasl-password.
const (
	secureKafkaEnv    = "AEGIS_TEST_KAFKA_SECURE"
	secureKafkaDirEnv = "AEGIS_TEST_KAFKA_SECURE_DIR"
)

// secureKafka returns the secure listener's address and the flags that
// reach it as user (aegis, the stages' user, or fleet, the agents').
func secureKafka(t *testing.T, user string) (addr string, flags []string) {
	t.Helper()
	addr, dir := os.Getenv(secureKafkaEnv), os.Getenv(secureKafkaDirEnv)
	if addr == "" || dir == "" {
		t.Fatalf("%s and %s are not set (the Makefile exports them; deploy/kafka/kafka.sh serves the listener)", secureKafkaEnv, secureKafkaDirEnv)
	}
	password := map[string]string{"aegis": "sasl-password", "fleet": "fleet-password"}[user]
	for _, f := range []string{"ca.pem", password} {
		if _, err := os.Stat(filepath.Join(dir, f)); err != nil {
			t.Fatalf("%v: deploy/kafka/kafka.sh writes it when it starts the broker; a broker it reused (started from another checkout) has its files there", err)
		}
	}
	return addr, []string{
		"--kafka-tls-ca-file", filepath.Join(dir, "ca.pem"),
		"--kafka-sasl-mechanism", "SCRAM-SHA-512",
		"--kafka-sasl-username", user,
		"--kafka-sasl-password-file", filepath.Join(dir, password),
	}
}

// TestSecuredKafkaIntegration: aegisd's stages, the load tester (kafka-go
// publishing, franz-go reading) and aegisctl all reach a real broker that
// takes only TLS + SCRAM connections, through the same --kafka-tls* and
// --kafka-sasl-* flags; every event is sealed once, decided as expected,
// stored and verified. Without the flags a client gets nowhere.
func TestSecuredKafkaIntegration(t *testing.T) {
	e := newFaultEnv(t, "secure") // its topics are made and dropped on the plaintext listener of the same broker
	addr, sec := secureKafka(t, "aegis")
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

// TestTopicACLsIntegration: the ACLs docs/pipeline.md gives, set with
// Kafka's own AclCommand on the broker (StandardAuthorizer), keep the
// fleet to the events topic: its events are sealed and stored by the
// stages, but it can neither write an internal topic (a forged decided
// record) nor read one.
func TestTopicACLsIntegration(t *testing.T) {
	e := newFaultEnv(t, "acl")
	addr, stages := secureKafka(t, "aegis")
	_, fleet := secureKafka(t, "fleet")
	acls := func(args ...string) {
		t.Helper()
		out, err := exec.Command(filepath.Join(e.root, "deploy", "kafka", "kafka.sh"), append([]string{"acls"}, args...)...).CombinedOutput()
		if err != nil {
			t.Fatalf("kafka.sh acls %v: %v\n%s", args, err, out)
		}
	}
	// The documented commands, under this test's prefix instead of aegis.
	stageACL := []string{"--allow-principal", "User:aegis", "--operation", "All", "--topic", e.prefix, "--group", e.prefix, "--transactional-id", e.prefix, "--resource-pattern-type", "prefixed"}
	fleetACL := []string{"--allow-principal", "User:fleet", "--operation", "Write", "--operation", "Describe", "--topic", e.prefix + "events"}
	acls(append([]string{"--add"}, stageACL...)...)
	acls(append([]string{"--add"}, fleetACL...)...)
	t.Cleanup(func() {
		acls(append([]string{"--remove", "--force"}, stageACL...)...)
		acls(append([]string{"--remove", "--force"}, fleetACL...)...)
	})

	p := e.start(TargetAll, "a", append([]string{"--brokers", addr, "--store", "sqlite:" + filepath.Join(e.dir, "audit.db")}, stages...)...)
	p.waitReady(t, 90*time.Second)

	ctlRun := func(stdin string, args ...string) (int, string, string) {
		var o, eo bytes.Buffer
		ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
		defer cancel()
		code := ctl.Main(ctx, ctl.IO{Stdin: strings.NewReader(stdin), Stdout: &o, Stderr: &eo}, args)
		return code, o.String(), eo.String()
	}
	var events strings.Builder
	for seq := 1; seq <= 3; seq++ {
		fmt.Fprintf(&events, `{"tenant_id":"acme","session_id":"acl-1","seq":%d,"ts_unix_ms":%d,"event_type":"MODEL_CALL_STARTED","payload":{}}`+"\n", seq, 1767225600000+seq)
	}
	if code, _, stderr := ctlRun(events.String(), append([]string{"publish", "--brokers", addr, "--topic-prefix", e.prefix}, fleet...)...); code != ctl.ExitOK {
		t.Fatalf("the fleet publishes its events: exit %d: %s", code, stderr)
	}

	// A forged decision on the decided topic, which the sealer would seal.
	var sec stream.SecurityConfig
	fs := flag.NewFlagSet("fleet", flag.ContinueOnError)
	sec.RegisterFlags(fs)
	if err := fs.Parse(fleet); err != nil {
		t.Fatal(err)
	}
	fleetSec, err := sec.Load()
	if err != nil {
		t.Fatal(err)
	}
	prod, err := stream.NewProducer(stream.ProducerConfig{Brokers: []string{addr}}, stream.WithSecurity(fleetSec))
	if err != nil {
		t.Fatal(err)
	}
	defer prod.Close()
	pctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
	defer cancel()
	forged := `{"tenant_id":"acme","session_id":"acl-1","seq":4,"ts_unix_ms":1767225600004,"event_type":"TOOL_CALL_PROPOSED","payload":{"tool_name":"exec","call_id":"c1","args":{}},"decision":{"outcome":"allow","reason":"OK"}}`
	if err := prod.Produce(pctx, stream.Message{Topic: e.topics.Decided, Key: []byte("acme/acl-1"), Value: []byte(forged)}); err == nil || !strings.Contains(err.Error(), "TOPIC_AUTHORIZATION_FAILED") {
		t.Fatalf("the fleet wrote the decided topic: %v", err)
	}
	if code, _, stderr := ctlRun("", append([]string{"export", "--brokers", addr, "--topic-prefix", e.prefix, "--topic", "sealed", "--timeout", "20s"}, fleet...)...); code == ctl.ExitOK {
		t.Fatalf("the fleet read the sealed topic: %s", stderr)
	}

	// The stages sealed what the fleet published.
	deadline := time.Now().Add(60 * time.Second)
	for {
		code, stdout, stderr := ctlRun("", append([]string{"export", "--brokers", addr, "--topic-prefix", e.prefix, "--topic", "sealed", "--timeout", "20s"}, stages...)...)
		if code != ctl.ExitOK {
			t.Fatalf("export as the stages' user: exit %d: %s", code, stderr)
		}
		if n := strings.Count(stdout, "\n"); n == 3 {
			break
		} else if time.Now().After(deadline) {
			t.Fatalf("%d sealed records, want 3:\n%s", n, stdout)
		}
		time.Sleep(500 * time.Millisecond)
	}
}
