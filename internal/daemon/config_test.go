package daemon

import (
	"bytes"
	"context"
	"errors"
	"io"
	"log/slog"
	"os"
	"path/filepath"
	"reflect"
	"strings"
	"testing"
	"time"

	"aegis.dev/aegis/internal/stream"
	"aegis.dev/aegis/projector/stores"
)

// TestKafkaSecurityFromFileAndFlags: the Kafka security settings are read
// from the file's kafka_* keys and the flags like every other setting, and
// the start log names files, never a secret.
func TestKafkaSecurityFromFileAndFlags(t *testing.T) {
	path := filepath.Join(t.TempDir(), "aegis.yaml")
	yaml := "brokers: [k1:9093]\ntarget: sealer\nkafka_tls_ca_file: /etc/aegis/ca.pem\nkafka_sasl_mechanism: SCRAM-SHA-512\nkafka_sasl_username: aegis\nkafka_sasl_password_file: /etc/aegis/kafka.password\n"
	if err := os.WriteFile(path, []byte(yaml), 0o600); err != nil {
		t.Fatal(err)
	}
	cfg, err := Load([]string{"--config", path, "--kafka-sasl-username", "aegis-sealer"}, io.Discard)
	if err != nil {
		t.Fatal(err)
	}
	want := stream.SecurityConfig{TLSCAFile: "/etc/aegis/ca.pem", SASLMechanism: "SCRAM-SHA-512", SASLUsername: "aegis-sealer", SASLPasswordFile: "/etc/aegis/kafka.password"}
	if cfg.KafkaSecurity != want {
		t.Fatalf("kafka security %+v, want %+v", cfg.KafkaSecurity, want)
	}
	// --dev lets the embedded broker listen beyond loopback (with a
	// warning at start).
	if _, err := Load([]string{"--dev", "--kafka-addr", "0.0.0.0:9092"}, io.Discard); err != nil {
		t.Fatal(err)
	}
}

func TestLoadFileThenFlags(t *testing.T) {
	path := filepath.Join(t.TempDir(), "aegis.yaml")
	yaml := "target: decider\nbrokers: [k1:9092, k2:9092]\npartitions: 12\ninstance: from-file\nmanifests: /etc/aegis/m\nmax_batch: 200\nstore_batch: 7000\nsealer_batch_wait: 50ms\napproval_secret_file: /etc/aegis/approval.secret\n"
	if err := os.WriteFile(path, []byte(yaml), 0o600); err != nil {
		t.Fatal(err)
	}
	cfg, err := Load([]string{"--config", path, "--instance", "from-flag", "--partitions", "3"}, io.Discard)
	if err != nil {
		t.Fatal(err)
	}
	if cfg.Target != "decider" || strings.Join(cfg.Brokers, ",") != "k1:9092,k2:9092" || cfg.Ingest.ApprovalSecretFile != "/etc/aegis/approval.secret" || cfg.Manifests != "/etc/aegis/m" || cfg.MaxBatch != 200 || cfg.StoreBatch != 7000 || cfg.SealerBatchWait != 50*time.Millisecond {
		t.Fatalf("file values lost: %+v", cfg)
	}
	if cfg.Instance != "from-flag" || cfg.Partitions != 3 {
		t.Fatalf("flags did not override the file: %+v", cfg)
	}
	if cfg.HTTPAddr != "127.0.0.1:8080" || cfg.DataDir != "./data" {
		t.Fatalf("defaults lost: %+v", cfg)
	}
}

// TestLoadEmptyFile: a file with no setting (empty, or every line a
// comment) leaves the defaults, like no file.
func TestLoadEmptyFile(t *testing.T) {
	for _, body := range []string{"", "# nothing set yet\n"} {
		path := filepath.Join(t.TempDir(), "aegis.yaml")
		if err := os.WriteFile(path, []byte(body), 0o600); err != nil {
			t.Fatal(err)
		}
		cfg, err := Load([]string{"--config", path, "--instance", "i1"}, io.Discard)
		if err != nil {
			t.Fatalf("file %q: %v", body, err)
		}
		if cfg.Instance != "i1" || cfg.HTTPAddr != "127.0.0.1:8080" {
			t.Fatalf("file %q: %+v", body, cfg)
		}
	}
}

// TestApprovalSecretOfSplitDecider: a decider on external brokers with no
// gateway in its process needs the approval secret, or the explicit
// opt-out; with the gateway (--dev here), or on the embedded broker, it
// has one of its own.
func TestApprovalSecretOfSplitDecider(t *testing.T) {
	for _, args := range [][]string{
		{"--brokers", "k1:9092", "--target", "decider", "--approval-secret-file", "/etc/aegis/approval.secret"},
		{"--brokers", "k1:9092", "--target", "decider", "--unauthenticated-approvals"},
		{"--brokers", "k1:9092", "--target", "decider", "--dev"},
		{"--brokers", "k1:9092", "--target", "sealer,projector"},
		{"--target", "decider"},
		{},
	} {
		if _, err := Load(args, io.Discard); err != nil {
			t.Errorf("%v: %v", args, err)
		}
	}
}

func TestLoadRejects(t *testing.T) {
	dir := t.TempDir()
	unknown := filepath.Join(dir, "unknown.yaml")
	_ = os.WriteFile(unknown, []byte("partitons: 3\n"), 0o600)
	twoDocs := filepath.Join(dir, "two.yaml")
	_ = os.WriteFile(twoDocs, []byte("target: sealer\n---\npartitons: 3\n"), 0o600)
	cases := []struct {
		name string
		args []string
		want string
	}{
		{"unknown stage", []string{"--target", "decider,frobnicator"}, `unknown stage`},
		{"zero partitions", []string{"--partitions", "0"}, "partitions 0"},
		{"partitions with a unit", []string{"--partitions", "12x"}, "-partitions"},
		{"bad prefix", []string{"--topic-prefix", "a/b"}, "topic prefix"},
		{"bad log level", []string{"--log-level", "loud"}, "log-level"},
		{"tiny events", []string{"--max-event-bytes", "10"}, "max-event-bytes"},
		{"unknown yaml key", []string{"--config", unknown}, "partitons"},
		{"second yaml document", []string{"--config", twoDocs}, "one YAML document"},
		{"missing file", []string{"--config", filepath.Join(dir, "nope.yaml")}, "no such file"},
		{"unknown flag", []string{"--brokerz", "x"}, "not defined"},
		// A boolean flag takes no separate value: "false" ended the flags,
		// and --brokers after it was dropped with --pprof on.
		{"value after a boolean flag", []string{"--pprof", "false", "--brokers", "k1:9092", "--target", "sealer"}, `argument "false"`},
		{"argument after the flags", []string{"--target", "sealer", "decider"}, `argument "decider"`},
		{"argument after the flags with a file", []string{"--config", unknown, "decider"}, `argument "decider"`},
		{"unknown compression", []string{"--kafka-compression", "brotli"}, "kafka-compression"},
		{"no state in memory", []string{"--state-sessions", "0"}, "state-sessions"},
		{"empty store batch", []string{"--store-batch", "0"}, "store-batch"},
		{"sync writes on external brokers", []string{"--brokers", "k1:9092", "--kafka-sync-writes"}, "kafka-sync-writes"},
		{"store batch bytes below one event", []string{"--store-batch-bytes", "1000"}, "store-batch-bytes"},
		{"store batch bytes unbounded", []string{"--store-batch-bytes", "4294967296"}, "store-batch-bytes"},
		{"sealer batch wait below Kafka's floor", []string{"--sealer-batch-wait", "5ms"}, "sealer-batch-wait"},
		{"sealer batch wait too long", []string{"--sealer-batch-wait", "2s"}, "sealer-batch-wait"},
		{"stall timeout below the transaction timeout", []string{"--stall-timeout", "30s"}, "stall-timeout"},
		{"stall timeout that never fires", []string{"--stall-timeout", "0"}, "stall-timeout"},
		{"session timeout below the embedded broker's minimum", []string{"--session-timeout", "2s"}, "session-timeout 2s"},
		{"session timeout above the embedded broker's maximum", []string{"--session-timeout", "10m"}, "session-timeout 10m0s"},
		{"split decider without the approval secret", []string{"--brokers", "k1:9092", "--target", "decider"}, "approval-secret-file"},
		{"split stages with the decider without the approval secret", []string{"--brokers", "k1:9092", "--target", "decider,sealer"}, "unauthenticated-approvals"},
		{"embedded broker on every interface", []string{"--kafka-addr", "0.0.0.0:9092"}, "kafka-addr 0.0.0.0:9092"},
		{"embedded broker on a LAN address", []string{"--kafka-addr", "10.1.2.3:9092"}, "no TLS, authentication or ACLs"},
		{"Kafka security for the embedded broker", []string{"--kafka-sasl-mechanism", "PLAIN", "--kafka-sasl-username", "u", "--kafka-sasl-password-file", "/p"}, "only with --brokers"},
		{"SASL user without a mechanism", []string{"--brokers", "k1:9092", "--target", "sealer", "--kafka-sasl-username", "u"}, "kafka-sasl-mechanism"},
		{"unknown SASL mechanism", []string{"--brokers", "k1:9092", "--target", "sealer", "--kafka-sasl-mechanism", "GSSAPI", "--kafka-sasl-username", "u", "--kafka-sasl-password-file", "/p"}, "GSSAPI"},
		{"client certificate without its key", []string{"--brokers", "k1:9092", "--target", "sealer", "--kafka-tls-cert-file", "/c.pem"}, "kafka-tls-key-file"},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			_, err := Load(tc.args, io.Discard)
			if err == nil || !strings.Contains(err.Error(), tc.want) {
				t.Fatalf("got %v, want an error containing %q", err, tc.want)
			}
		})
	}
	// External brokers have their own bounds, checked when a stage joins.
	if _, err := Load([]string{"--brokers", "k1:9092", "--target", "sealer", "--session-timeout", "2s"}, io.Discard); err != nil {
		t.Errorf("session timeout of 2s on external brokers: %v", err)
	}
}

func TestTargetsKeepStartOrder(t *testing.T) {
	cfg := Defaults()
	cfg.Target = "sealer, decider,sealer"
	got, err := cfg.Targets()
	if err != nil || strings.Join(got, ",") != "decider,sealer" {
		t.Fatalf("%v %v", got, err)
	}
	cfg.Target = "all"
	if got, _ := cfg.Targets(); strings.Join(got, ",") != strings.Join(Stages, ",") {
		t.Fatalf("all = %v", got)
	}
}

// TestSecretsStayOutOfErrorsAndTheStartLog: a mistyped store URL does not
// print its password, and the start log shows neither the MCP upstream's
// password nor a token in its query, even when the URL does not parse.
func TestSecretsStayOutOfErrorsAndTheStartLog(t *testing.T) {
	for _, store := range []string{
		"clickhouse://aegis:S3cretPW@ch.example:9000",        // no database
		"clickhouse://aegis:S3cretPW%@ch.example:9000/audit", // '%' in the password
		"ClickHouse://aegis:S3cretPW@ch.example:9000/audit",  // scheme case
	} {
		if _, err := Load([]string{"--store", store}, io.Discard); err == nil || strings.Contains(err.Error(), "S3cretPW") {
			t.Errorf("store %q: %v", store, err)
		}
	}
	for _, upstream := range []string{"https://bob:50%off@mcp.example/mcp", "https://mcp.example/mcp?api_key=TOKEN123", "cmd:mcp-server --token TOKEN123"} {
		cfg := Defaults()
		cfg.Dev, cfg.Target = true, "all,"+TargetMCPProxy
		if cmd, ok := strings.CutPrefix(upstream, "cmd:"); ok {
			cfg.MCP.UpstreamCmd = cmd
		} else {
			cfg.MCP.UpstreamURL = upstream
		}
		var buf bytes.Buffer
		slog.New(slog.NewTextHandler(&buf, nil)).Info("starting aegisd", "config", cfg.redacted())
		if strings.Contains(buf.String(), "50%off") || strings.Contains(buf.String(), "TOKEN123") {
			t.Errorf("start log shows a secret: %s", buf.String())
		}
	}
}

// TestLimitsThatDisableABoundAreRefused: values that would switch a bound
// off or make it useless are configuration errors.
func TestLimitsThatDisableABoundAreRefused(t *testing.T) {
	for _, args := range [][]string{
		{"--max-body-bytes", "9223372036854775807"},
		{"--max-body-bytes", "2048"}, // below one event of --max-event-bytes
		{"--rate-limit", "NaN"},
		{"--max-clock-skew", "-1s"},
		{"--max-clock-skew", "500ms"}, // below the resolution of clocks it is meant for
		{"--rate-limit", "+Inf"},
		{"--dev", "--target", "all,mcp-proxy", "--mcp-upstream-cmd", "server", "--mcp-max-message-bytes", "9223372036854775807"},
		{"--dev", "--target", "all,mcp-proxy", "--mcp-upstream-cmd", "server", "--mcp-max-upstream-bytes", "9223372036854775807"},
	} {
		if _, err := Load(args, io.Discard); err == nil {
			t.Errorf("Load(%v) accepted", args)
		}
	}
	if _, err := Load([]string{"--max-body-bytes", "2048", "--max-event-bytes", "1024"}, io.Discard); err != nil {
		t.Errorf("a body limit over the event limit: %v", err)
	}
}

// TestLoopback tells the addresses --dev may serve on quietly from those
// that expose the unauthenticated API.
func TestLoopback(t *testing.T) {
	for addr, want := range map[string]bool{"127.0.0.1:8080": true, "[::1]:8080": true, "localhost:8080": true, "127.0.0.2:1": true,
		":8080": false, "0.0.0.0:8080": false, "[::]:8080": false, "10.0.0.5:8080": false, "example.com:8080": false, "bad": false} {
		if got := loopback(addr); got != want {
			t.Errorf("loopback(%q) = %v, want %v", addr, got, want)
		}
	}
}

// TestProjectorStoreOpenIsRetried: a store that refuses the first
// connections (a ClickHouse server restarting while the projector starts)
// is opened once it answers, within the budget; past it the last error
// is returned.
func TestProjectorStoreOpenIsRetried(t *testing.T) {
	fails := 2
	open := func() (stores.Store, error) {
		if fails > 0 {
			fails--
			return nil, errors.New("connection reset by peer")
		}
		return stores.Open(context.Background(), "sqlite:"+filepath.Join(t.TempDir(), "audit.db"))
	}
	st, err := openRetrying(context.Background(), open, 10*time.Second, slog.New(slog.DiscardHandler))
	if err != nil {
		t.Fatalf("after two refusals: %v", err)
	}
	_ = st.Close()
	fails = 100
	if _, err := openRetrying(context.Background(), open, time.Second, slog.New(slog.DiscardHandler)); err == nil || fails < 97 {
		t.Fatalf("past the budget: err %v after %d attempts", err, 100-fails)
	}
}

// TestOpenSecretFilesAreNamed: a secret file every user can read is
// named in a warning (setting and path, never the content); one readable
// by its owner only, or by a group, is not.
func TestOpenSecretFilesAreNamed(t *testing.T) {
	dir := t.TempDir()
	write := func(name string, mode os.FileMode) string {
		p := filepath.Join(dir, name)
		if err := os.WriteFile(p, []byte("S3cretS3cretS3cretS3cretS3cretS3cret"), mode); err != nil {
			t.Fatal(err)
		}
		if err := os.Chmod(p, mode); err != nil { // umask
			t.Fatal(err)
		}
		return p
	}
	cfg := Defaults()
	cfg.Ingest.ApprovalSecretFile = write("approval.secret", 0o644)
	cfg.KafkaSecurity.SASLPasswordFile = write("sasl.password", 0o600)
	cfg.KafkaSecurity.TLSKeyFile = write("client.key", 0o640)
	cfg.Ingest.TLSKey = write("server.key", 0o604)
	got := cfg.openSecretFiles()
	want := []openSecret{{"approval-secret-file", cfg.Ingest.ApprovalSecretFile, 0o644}, {"tls-key", cfg.Ingest.TLSKey, 0o604}}
	if !reflect.DeepEqual(got, want) {
		t.Fatalf("open secret files %+v, want %+v", got, want)
	}
	cfg.Ingest.ApprovalSecretFile = filepath.Join(dir, "missing")
	if got := cfg.openSecretFiles(); len(got) != 1 || got[0].setting != "tls-key" {
		t.Fatalf("with a missing file: %+v", got)
	}
}
