package stream

import (
	"context"
	"crypto/tls"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"github.com/twmb/franz-go/pkg/kfake"
	"github.com/twmb/franz-go/pkg/kmsg"

	"aegis.dev/aegis/internal/testutil"
)

// securedCluster starts an in-process cluster that takes only TLS
// connections (a self-signed certificate for 127.0.0.1, written to the
// returned file for clients to trust) authenticated with SASL: SCRAM-SHA-512 user "aegis" and
// PLAIN user "plain", both with password "s3cret".
func securedCluster(t *testing.T) (addrs []string, caFile string) {
	t.Helper()
	caFile, _, cert, _ := testutil.SelfSignedCert(t)
	c, err := kfake.NewCluster(kfake.NumBrokers(1),
		kfake.EnableSASL(),
		kfake.Superuser(SASLScramSHA512, "aegis", "s3cret"),
		kfake.Superuser(SASLPlain, "plain", "s3cret"),
		kfake.TLS(&tls.Config{Certificates: []tls.Certificate{cert}, MinVersion: tls.VersionTLS12}))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(c.Close)
	return c.ListenAddrs(), caFile
}

func passwordFile(t *testing.T, content string) string {
	t.Helper()
	p := filepath.Join(t.TempDir(), "password")
	if err := os.WriteFile(p, []byte(content), 0o600); err != nil {
		t.Fatal(err)
	}
	return p
}

// TestSecuredCluster: with the Security loaded from a SecurityConfig,
// every kind of client (admin calls, producer, consumer, a transactional
// stage with its state restore) works against a cluster that takes only
// TLS + SASL connections; without it, or with a wrong password, nothing
// gets through.
func TestSecuredCluster(t *testing.T) {
	addrs, caFile := securedCluster(t)
	cfg := SecurityConfig{TLSCAFile: caFile, SASLMechanism: SASLScramSHA512, SASLUsername: "aegis", SASLPasswordFile: passwordFile(t, "s3cret\n")}
	sec, err := cfg.Load()
	if err != nil {
		t.Fatal(err)
	}
	if s := sec.String(); s != "tls sasl SCRAM-SHA-512 user aegis" || strings.Contains(s, "s3cret") {
		t.Fatalf("String() = %q", s)
	}
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	withSec := WithSecurity(sec)

	tp := topology{input: "sec.in", state: "sec.state", output: "sec.out", partitions: 2}
	if err := EnsureTopics(ctx, addrs, []TopicSpec{
		{Name: tp.input, Partitions: 2}, {Name: tp.state, Partitions: 2, Cleanup: CleanupCompact}, {Name: tp.output, Partitions: 2},
	}, withSec); err != nil {
		t.Fatal(err)
	}
	prod, err := NewProducer(ProducerConfig{Brokers: addrs}, withSec)
	if err != nil {
		t.Fatal(err)
	}
	defer prod.Close()
	const n = 20
	for i := range n {
		key := fmt.Sprintf("session-%02d", i%4)
		if err := prod.Produce(ctx, Message{Topic: tp.input, Key: []byte(key), Value: []byte(key)}); err != nil {
			t.Fatal(err)
		}
	}
	tc := TransactConfig{Brokers: addrs, Group: "g-sec", TransactionalID: "sec-1", Input: tp.input, State: tp.state,
		Outputs: []string{tp.output}, MaxBatch: 50, RetryBackoff: 10 * time.Millisecond, SessionTimeout: 6 * time.Second, HeartbeatInterval: 100 * time.Millisecond}
	tr, err := NewTransactor(tc, tp.counters(nil), WithLogger(testLogger()), withSec)
	if err != nil {
		t.Fatal(err)
	}
	stop := runAsync(t, tr)
	total := func() int64 {
		ends, err := EndOffsets(ctx, addrs, tp.output, withSec)
		if err != nil {
			t.Fatal(err)
		}
		var s int64
		for _, e := range ends {
			s += e
		}
		return s
	}
	waitFor(t, "the stage's outputs", 30*time.Second, func() bool { return total() >= n })
	if err := stop(); err != nil {
		t.Fatalf("stage: %v", err)
	}
	// A second incarnation restores the counts from the state topic over
	// the same secured connections and goes on from them.
	for range 4 {
		if err := prod.Produce(ctx, Message{Topic: tp.input, Key: []byte("session-00"), Value: []byte("session-00")}); err != nil {
			t.Fatal(err)
		}
	}
	tr2, err := NewTransactor(tc, tp.counters(nil), WithLogger(testLogger()), withSec)
	if err != nil {
		t.Fatal(err)
	}
	stop = runAsync(t, tr2)
	waitFor(t, "the restarted stage's outputs", 30*time.Second, func() bool { return total() >= n+4 })
	if err := stop(); err != nil {
		t.Fatalf("restarted stage: %v", err)
	}
	cons, err := NewConsumer(ConsumerConfig{Brokers: addrs, Start: FromOffsets(map[string]map[int32]int64{tp.output: {0: 0, 1: 0}})}, withSec)
	if err != nil {
		t.Fatal(err)
	}
	defer cons.Close()
	last := map[string]string{}
	for seen := 0; seen < n+4; {
		recs, err := cons.Poll(ctx)
		if err != nil {
			t.Fatal(err)
		}
		for _, r := range recs {
			last[string(r.Key)] = string(r.Value)
			seen++
		}
	}
	if got := last["session-00"]; got != "session-00|9" {
		t.Fatalf("session-00's last output %q, want its 9th (5 before the restart, 4 after)", got)
	}
	if mb, err := MaxMessageBytes(ctx, addrs, tp.output, withSec); err != nil || mb <= 0 {
		t.Fatalf("max.message.bytes over TLS + SASL: %d, %v", mb, err)
	}

	plain, err := SecurityConfig{TLSCAFile: caFile, SASLMechanism: SASLPlain, SASLUsername: "plain", SASLPasswordFile: passwordFile(t, "s3cret")}.Load()
	if err != nil {
		t.Fatal(err)
	}
	if _, err := EndOffsets(ctx, addrs, tp.output, WithSecurity(plain)); err != nil {
		t.Fatalf("PLAIN: %v", err)
	}

	wrongPass, err := SecurityConfig{TLSCAFile: caFile, SASLMechanism: SASLScramSHA512, SASLUsername: "aegis", SASLPasswordFile: passwordFile(t, "guess")}.Load()
	if err != nil {
		t.Fatal(err)
	}
	noSASL, err := SecurityConfig{TLSCAFile: caFile}.Load()
	if err != nil {
		t.Fatal(err)
	}
	untrusted := sec
	untrusted.TLS = &tls.Config{MinVersion: tls.VersionTLS12} // the system's roots: the test CA is not among them
	for name, s := range map[string]Security{"no security": {}, "wrong password": wrongPass, "TLS without SASL": noSASL, "unverified broker certificate": untrusted} {
		sctx, scancel := context.WithTimeout(ctx, 3*time.Second)
		_, err := EndOffsets(sctx, addrs, tp.output, WithSecurity(s))
		scancel()
		if err == nil {
			t.Errorf("%s: the secured cluster answered", name)
		}
	}
}

// TestSecurityConfigValidate: settings that cannot work are refused before
// anything is read or dialed, and files are read at Load.
func TestSecurityConfigValidate(t *testing.T) {
	pw := passwordFile(t, "pw\n")
	for name, c := range map[string]SecurityConfig{
		"cert without key":       {TLSCertFile: "c.pem"},
		"key without cert":       {TLSKeyFile: "k.pem"},
		"user without mechanism": {SASLUsername: "u", SASLPasswordFile: pw},
		"unknown mechanism":      {SASLMechanism: "GSSAPI", SASLUsername: "u", SASLPasswordFile: pw},
		"mechanism without user": {SASLMechanism: SASLPlain, SASLPasswordFile: pw},
		"mechanism without file": {SASLMechanism: SASLPlain, SASLUsername: "u"},
		"missing CA file":        {TLSCAFile: filepath.Join(t.TempDir(), "none.pem")},
		"CA file without PEM":    {TLSCAFile: pw},
		"empty password":         {SASLMechanism: SASLPlain, SASLUsername: "u", SASLPasswordFile: passwordFile(t, "\n")},
		"missing password file":  {SASLMechanism: SASLPlain, SASLUsername: "u", SASLPasswordFile: filepath.Join(t.TempDir(), "none")},
	} {
		if _, err := c.Load(); err == nil {
			t.Errorf("%s: loaded", name)
		}
	}
	s, err := SecurityConfig{SASLMechanism: SASLScramSHA256, SASLUsername: "u", SASLPasswordFile: pw}.Load()
	if err != nil || s.TLS != nil || s.SASL != (SASL{Mechanism: SASLScramSHA256, Username: "u", Password: "pw"}) {
		t.Fatalf("SASL without TLS: %+v, %v", s, err)
	}
	if s, err := (SecurityConfig{TLSServerName: "kafka.internal"}).Load(); err != nil || s.TLS == nil || s.TLS.ServerName != "kafka.internal" {
		t.Fatalf("a TLS setting turns TLS on: %+v, %v", s, err)
	}
	if (SecurityConfig{}).Enabled() {
		t.Fatal("the zero config is enabled")
	}
}

// TestTransactWithoutTransactionalIDAccess runs a stage as a user the
// cluster does not allow to use its transactional ID: Run ends at once,
// with the broker's refusal, not a wait for a producer ID that timed out,
// and as a configuration error, not as if another instance had fenced it.
func TestTransactWithoutTransactionalIDAccess(t *testing.T) {
	all := func(r kmsg.ACLResourceType) kfake.ACL {
		return kfake.ACL{Resource: r, Name: "*", Pattern: kmsg.ACLResourcePatternTypeLiteral, Operation: kmsg.ACLOperationAll, Allow: true}
	}
	c, err := kfake.NewCluster(kfake.NumBrokers(1), kfake.EnableSASL(), kfake.EnableACLs(),
		kfake.Superuser(SASLPlain, "admin", "s3cret"),
		kfake.User(SASLPlain, "stage", "s3cret", all(kmsg.ACLResourceTypeTopic), all(kmsg.ACLResourceTypeGroup), all(kmsg.ACLResourceTypeCluster)))
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	addrs := c.ListenAddrs()
	admin := WithSecurity(Security{SASL: SASL{Mechanism: SASLPlain, Username: "admin", Password: "s3cret"}})
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	if err := EnsureTopics(ctx, addrs, []TopicSpec{{Name: "in", Partitions: 1}, {Name: "state", Partitions: 1, Cleanup: CleanupCompact}}, admin); err != nil {
		t.Fatal(err)
	}
	tc := TransactConfig{Brokers: addrs, Group: "g", TransactionalID: "stage-1", Input: "in", State: "state", RetryBackoff: 10 * time.Millisecond}
	err = RunTransact(ctx, tc, func(int32) Processor { return failingRestore{calls: new(atomic.Int32)} },
		WithLogger(testLogger()), WithSecurity(Security{SASL: SASL{Mechanism: SASLPlain, Username: "stage", Password: "s3cret"}}))
	if err == nil || strings.Contains(err.Error(), "no producer ID within") || !strings.Contains(err.Error(), "TRANSACTIONAL_ID_AUTHORIZATION_FAILED") {
		t.Fatalf("Run = %v, want the authorization failure as it is", err)
	}
	if !errors.Is(err, ErrConfig) || errors.Is(err, ErrFenced) {
		t.Fatalf("Run = %v, want %v (and not %v: no other instance took the ID)", err, ErrConfig, ErrFenced)
	}
}
