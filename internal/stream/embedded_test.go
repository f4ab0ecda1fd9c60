package stream

import (
	"context"
	"errors"
	"net"
	"syscall"
	"testing"
	"time"
)

func freeAddr(tb testing.TB) string {
	tb.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		tb.Fatal(err)
	}
	defer ln.Close()
	return ln.Addr().String()
}

func TestEmbeddedListensOnAddrAndClosesOnCancel(t *testing.T) {
	ctx, cancel := context.WithCancel(context.Background())
	// The test needs a fixed address; another process may take a port
	// between freeAddr closing it and the broker binding it, so retry.
	var (
		addr string
		e    *Embedded
		err  error
	)
	for range 5 {
		addr = freeAddr(t)
		if e, err = StartEmbedded(ctx, EmbeddedConfig{Addr: addr, Partitions: 3}); err == nil || !errors.Is(err, syscall.EADDRINUSE) {
			break
		}
	}
	if err != nil {
		t.Fatal(err)
	}
	defer e.Close()
	if e.Addr() != addr {
		t.Fatalf("Addr() = %s, want %s", e.Addr(), addr)
	}
	p, err := NewProducer(ProducerConfig{Brokers: []string{addr}})
	if err != nil {
		t.Fatal(err)
	}
	if err := EnsureTopics(ctx, []string{addr}, []TopicSpec{{Name: "l", Partitions: 3}}); err != nil {
		t.Fatal(err)
	}
	if err := p.Produce(ctx, Message{Topic: "l", Key: []byte("k"), Value: []byte("v")}); err != nil {
		t.Fatalf("produce to %s: %v", addr, err)
	}
	p.Close()

	cancel()
	e.Close() // waits for the cancel-triggered shutdown
	if c, err := net.DialTimeout("tcp", addr, time.Second); err == nil {
		c.Close()
		t.Fatal("broker still accepts connections after ctx was cancelled")
	}
}

// TestEmbeddedPersistsAcrossRestart runs a transactional stage on a broker
// with a data dir, restarts the broker on the same dir, and checks that
// committed outputs, group offsets and state survived: the stage continues
// exactly where it stopped.
func TestEmbeddedPersistsAcrossRestart(t *testing.T) {
	dir := t.TempDir()
	start := func() *Embedded {
		e, err := StartEmbedded(context.Background(), EmbeddedConfig{DataDir: dir, Addr: "127.0.0.1:0"}, WithLogger(testLogger()))
		if err != nil {
			t.Fatal(err)
		}
		return e
	}
	e := start()
	tp := newTopology(t, e, 3)
	want := map[string]int{}
	produceInputs(t, e, tp.input, 9, 90, want)
	tr, err := NewTransactor(tp.config(e, "txn-p"), tp.counters(nil), WithLogger(testLogger()))
	if err != nil {
		t.Fatal(err)
	}
	stop := runAsync(t, tr)
	readAtLeast(t, e, tp.output, sum(want), 10*time.Second, 0)
	waitFor(t, "ready", 5*time.Second, tr.Ready)
	if err := stop(); err != nil {
		t.Fatal(err)
	}
	e.Close()

	e = start()
	defer e.Close()
	produceInputs(t, e, tp.input, 9, 90, want)
	tr, err = NewTransactor(tp.config(e, "txn-p"), tp.counters(nil), WithLogger(testLogger()))
	if err != nil {
		t.Fatal(err)
	}
	stop = runAsync(t, tr)
	out := readAtLeast(t, e, tp.output, sum(want), 10*time.Second, 300*time.Millisecond)
	checkExactlyOnce(t, out, want, tp.partitions)
	if err := stop(); err != nil {
		t.Fatal(err)
	}
}
