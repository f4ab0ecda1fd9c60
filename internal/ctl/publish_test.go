package ctl

import (
	"bytes"
	"context"
	"encoding/base64"
	"errors"
	"fmt"
	"io"
	"math/rand/v2"
	"net"
	"path/filepath"
	"strings"
	"testing"
	"testing/iotest"
	"time"

	"aegis.dev/aegis/internal/grant"
	"aegis.dev/aegis/internal/pipeline"
	"aegis.dev/aegis/internal/stream"
	"aegis.dev/aegis/schemas/envelope"
)

// TestPublishSignsApprovals: with --approval-secret-file, publish sets
// the grant of each APPROVAL_DECIDED (replacing one it carries) and
// leaves other events as they are.
func TestPublishSignsApprovals(t *testing.T) {
	secret := bytes.Repeat([]byte("p"), 32)
	line := []byte(`{"tenant_id":"acme","session_id":"s1","seq":2,"ts_unix_ms":5,"event_type":"APPROVAL_DECIDED","payload":{"call_id":"c1","decision":"allow","tool_name":"send_email","args_digest":"` + strings.Repeat("0", 64) + `","grant":"` + string(bytes.Repeat([]byte("A"), 43)) + `"}}`)
	out, err := signApproval(secret, line)
	if err != nil {
		t.Fatal(err)
	}
	ev, err := envelope.Decode(out)
	if err != nil {
		t.Fatal(err)
	}
	if err := grant.VerifyEvent(secret, ev); err != nil {
		t.Fatalf("%s: %v", out, err)
	}
	// An approval that does not name its call's tool and arguments is
	// not signed: publish stops at its line (exit 1).
	if _, err := signApproval(secret, []byte(`{"tenant_id":"acme","session_id":"s1","seq":2,"ts_unix_ms":5,"event_type":"APPROVAL_DECIDED","payload":{"call_id":"c1","decision":"allow"}}`)); !errors.Is(err, grant.ErrUnbound) {
		t.Fatalf("unbound approval: %v", err)
	}
	other := []byte(`{"tenant_id":"acme","session_id":"s1","seq":1,"ts_unix_ms":5,"event_type":"MODEL_CALL_STARTED"}`)
	if got, err := signApproval(secret, other); err != nil || !bytes.Equal(got, other) {
		t.Fatalf("other event: %s %v", got, err)
	}
}

// TestPublishStopsAtUnreadableKey: a line without the exact members
// tenant_id and session_id stops publish at that line with exit 1 and
// nothing sent, as docs/cli.md says (encoding/json alone would read
// "TENANT_ID" as tenant_id).
func TestPublishStopsAtUnreadableKey(t *testing.T) {
	for _, line := range []string{
		`not json`,
		`{"tenant_id":"acme"}`,
		`{"TENANT_ID":"acme","Session_Id":"s1","seq":1}`,
		`{"tenant_id":"acme","session_Id":"s1","seq":1}`,
	} {
		ctx, cancel := context.WithTimeout(context.Background(), 3*time.Second)
		var out, stderr bytes.Buffer
		code := Main(ctx, IO{Stdin: strings.NewReader(line + "\n"), Stdout: &out, Stderr: &stderr}, []string{"publish", "--brokers", "127.0.0.1:1"})
		cancel()
		if code != ExitFailed || !strings.Contains(stderr.String(), "line 1: cannot read tenant_id and session_id") {
			t.Errorf("%s: exit %d, stderr %q", line, code, stderr.String())
		}
	}
}

// TestPublishMissingSecretFile: an approval secret file that cannot be
// read is an environment error (exit 3), not a usage error.
func TestPublishMissingSecretFile(t *testing.T) {
	code, _, stderr := run(t, "", "publish", "--brokers", "127.0.0.1:1", "--approval-secret-file", filepath.Join(t.TempDir(), "nope"))
	if code != ExitRuntime {
		t.Errorf("exit %d, want %d (stderr %q)", code, ExitRuntime, stderr)
	}
}

// TestPublishBrokerFailureIsRuntime: events that cannot be acknowledged
// are an environment error (exit 3), told apart from a bad line (exit 1).
func TestPublishBrokerFailureIsRuntime(t *testing.T) {
	ctx, cancel := context.WithTimeout(context.Background(), time.Second)
	defer cancel()
	var out, stderr bytes.Buffer
	line := `{"tenant_id":"acme","session_id":"s1","seq":1}` + "\n"
	if code := Main(ctx, IO{Stdin: strings.NewReader(line), Stdout: &out, Stderr: &stderr}, []string{"publish", "--brokers", "127.0.0.1:1"}); code != ExitRuntime {
		t.Errorf("exit %d, want %d (stderr %q)", code, ExitRuntime, stderr.String())
	}
}

// TestPublishBatchesFitTheEventsTopic: publish sends batches no larger
// than the events topic takes. Many events of one session go to one
// partition; gathered into a batch over the topic's max.message.bytes
// (~2 MiB by default) they would be refused as a whole, though each fits.
func TestPublishBatchesFitTheEventsTopic(t *testing.T) {
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	broker, err := stream.StartEmbedded(ctx, stream.EmbeddedConfig{Addr: "127.0.0.1:0"})
	if err != nil {
		t.Fatal(err)
	}
	defer broker.Close()
	topics := pipeline.NewTopics(pipeline.DefaultTopicPrefix)
	if err := stream.EnsureTopics(ctx, broker.Brokers(), topics.Specs(1, envelope.DefaultMaxEventBytes)); err != nil {
		t.Fatal(err)
	}
	var in strings.Builder
	const n = 3000
	rnd := rand.New(rand.NewPCG(1, 2))
	raw := make([]byte, 3000)
	for i := 1; i <= n; i++ {
		for j := range raw {
			raw[j] = byte(rnd.Uint32())
		}
		// Incompressible, so batches are as large compressed as not.
		fmt.Fprintf(&in, `{"tenant_id":"acme","session_id":"s1","seq":%d,"ts_unix_ms":5,"event_type":"MODEL_CALL_STARTED","payload":{"pad":"%s"}}`+"\n", i, base64.StdEncoding.EncodeToString(raw))
	}
	var out, stderr bytes.Buffer
	code := Main(ctx, IO{Stdin: strings.NewReader(in.String()), Stdout: &out, Stderr: &stderr}, []string{"publish", "--brokers", broker.Addr()})
	if code != ExitOK {
		t.Fatalf("publish of %d events of 4 KB: exit %d: %s", n, code, stderr.String())
	}
	ends, err := stream.EndOffsets(ctx, broker.Brokers(), topics.Events)
	if err != nil || ends[0] != n {
		t.Fatalf("events topic holds %v (%v), want %d", ends, err, n)
	}
}

// TestPublishGivesUpOnUnreachableBrokers: brokers that never acknowledge
// (here: nothing listens) end publish with exit 3 once a batch has waited
// --timeout, instead of retrying for ever.
func TestPublishGivesUpOnUnreachableBrokers(t *testing.T) {
	var out, stderr bytes.Buffer
	line := `{"tenant_id":"acme","session_id":"s1","seq":1}` + "\n"
	done := make(chan int, 1)
	go func() {
		done <- Main(context.Background(), IO{Stdin: strings.NewReader(line), Stdout: &out, Stderr: &stderr}, []string{"publish", "--brokers", "127.0.0.1:1", "--timeout", "500ms"})
	}()
	select {
	case code := <-done:
		if code != ExitRuntime || !strings.Contains(stderr.String(), "0 events acknowledged before") {
			t.Errorf("exit %d, want %d (stderr %q)", code, ExitRuntime, stderr.String())
		}
	case <-time.After(20 * time.Second):
		t.Fatal("publish to unreachable brokers did not give up")
	}
}

// TestPublishGivesUpOnSilentBrokers: a broker that accepts connections but
// never answers holds the first request, for the events topic's size
// limit; publish gives up there with exit 3 after --timeout, reading no
// line, rather than waiting --timeout again for the first batch, and says
// how many events were acknowledged (none), as every exit 3 of a broker
// failure does (docs/cli.md).
func TestPublishGivesUpOnSilentBrokers(t *testing.T) {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	go func() {
		for {
			c, err := ln.Accept()
			if err != nil {
				return
			}
			defer c.Close() // held open, never answered
		}
	}()
	var out, stderr bytes.Buffer
	line := `{"tenant_id":"acme","session_id":"s1","seq":1}` + "\n"
	code := Main(context.Background(), IO{Stdin: strings.NewReader(line), Stdout: &out, Stderr: &stderr}, []string{"publish", "--brokers", ln.Addr().String(), "--timeout", "500ms"})
	if code != ExitRuntime || !strings.Contains(stderr.String(), "did not answer within --timeout 500ms") || !strings.Contains(stderr.String(), "(0 events acknowledged before)") {
		t.Fatalf("exit %d, want %d (stderr %q)", code, ExitRuntime, stderr.String())
	}
}

// TestUnreadableStdinIsRuntime: standard input that fails while it is read
// is an environment error (exit 3) for publish and seal, as docs/cli.md
// says, not invalid input (exit 1).
func TestUnreadableStdinIsRuntime(t *testing.T) {
	line := `{"tenant_id":"acme","session_id":"s1","seq":1,"ts_unix_ms":1000,"event_type":"MODEL_CALL_STARTED","payload":{}}` + "\n"
	for _, args := range [][]string{{"publish", "--brokers", "127.0.0.1:1", "--timeout", "2s"}, {"seal"}} {
		ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
		var out, stderr bytes.Buffer
		in := io.MultiReader(strings.NewReader(line), iotest.ErrReader(errors.New("input/output error")))
		code := Main(ctx, IO{Stdin: in, Stdout: &out, Stderr: &stderr}, args)
		cancel()
		if code != ExitRuntime || !strings.Contains(stderr.String(), "input/output error") {
			t.Errorf("%s: exit %d, stderr %q; want %d", args[0], code, stderr.String(), ExitRuntime)
		}
	}
}
