package stream

import (
	"context"
	"errors"
	"log/slog"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/twmb/franz-go/pkg/kerr"
	"github.com/twmb/franz-go/pkg/kmsg"

	"aegis.dev/aegis/internal/testutil"
)

// TestTransactStallHealsWhenTheSessionEnds wedges one Process call until
// its context ends, as a call blocked on the network would: the watchdog
// must cancel the session after StallTimeout, and a new session must
// finish the input exactly once.
func TestTransactStallHealsWhenTheSessionEnds(t *testing.T) {
	e := startBroker(t)
	tp := newTopology(t, e, 2)
	want := map[string]int{}
	produceInputs(t, e, tp.input, 8, 200, want)

	var wedged atomic.Bool
	hook := func(ctx context.Context, r *Record) error {
		if string(r.Value) == "session-03/5" && wedged.CompareAndSwap(false, true) {
			<-ctx.Done()
			return ctx.Err()
		}
		return nil
	}
	cfg := tp.config(e, "txn-stall")
	cfg.StallTimeout = 500 * time.Millisecond
	reg := prometheus.NewRegistry()
	tr, err := NewTransactor(cfg, tp.counters(hook), WithRegisterer(reg), WithLogger(testLogger()))
	if err != nil {
		t.Fatal(err)
	}
	stop := runAsync(t, tr)
	out := readAtLeast(t, e, tp.output, sum(want), 20*time.Second, 300*time.Millisecond)
	if !wedged.Load() {
		t.Fatal("the wedge was never injected")
	}
	checkExactlyOnce(t, out, want, tp.partitions)
	if n := metricValue(tr.m.stalls); n != 1 {
		t.Fatalf("stalls = %v, want 1", n)
	}
	if err := stop(); err != nil {
		t.Fatalf("Run: %v", err)
	}
}

// TestTransactStallEndsRunWhenTheSessionHangs wedges a Process call for
// good (it ignores its context): Run must give up with ErrStalled once the
// grace after closing the client has passed, instead of hanging.
func TestTransactStallEndsRunWhenTheSessionHangs(t *testing.T) {
	tr, _ := hungTransactor(t, "txn-hang", 500*time.Millisecond)
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	start := time.Now()
	err := tr.Run(ctx)
	if !errors.Is(err, ErrStalled) {
		t.Fatalf("Run = %v after %s, want ErrStalled", err, time.Since(start).Round(time.Millisecond))
	}
	if n := metricValue(tr.m.stalls); n != 1 {
		t.Fatalf("stalls = %v, want 1", n)
	}
}

// TestStallClockSkipsAPausedProcess: a tick that comes long after the
// previous one (the process was stopped) is not a stall, however old the
// loop's last beat, and the count starts over from it.
func TestStallClockSkipsAPausedProcess(t *testing.T) {
	t0 := time.Unix(1000, 0)
	c := stallClock{timeout: 10 * time.Second, interval: time.Second, last: t0}
	if _, stalled, paused := c.check(t0.Add(time.Second), t0); stalled || paused {
		t.Fatalf("1s after the beat: stalled %v, paused %v", stalled, paused)
	}
	// The process stood still for 5 minutes, the loop with it.
	if _, stalled, paused := c.check(t0.Add(5*time.Minute), t0); stalled || !paused {
		t.Fatalf("first tick after a pause: stalled %v, paused %v; want a pause, not a stall", stalled, paused)
	}
	beat := t0.Add(5 * time.Minute) // what the caller records on a pause
	now := beat
	for range 9 {
		now = now.Add(time.Second)
		if _, stalled, _ := c.check(now, beat); stalled {
			t.Fatalf("stall %s after the pause", now.Sub(beat))
		}
	}
	now = now.Add(time.Second)
	if idle, stalled, paused := c.check(now, beat); !stalled || paused || idle != 10*time.Second {
		t.Fatalf("10s of regular ticks without a beat: idle %s, stalled %v, paused %v; want a stall", idle, stalled, paused)
	}
}

// TestTransactInitProducerIDIsBounded answers every InitProducerID with
// CONCURRENT_TRANSACTIONS, which the Kafka client retries for as long as
// its context lasts: the session must give up after the transaction timeout
// and say so, instead of waiting silently for ever.
func TestTransactInitProducerIDIsBounded(t *testing.T) {
	e := startBroker(t)
	tp := newTopology(t, e, 1)
	var inits atomic.Int32
	e.c.ControlKey(int16(kmsg.InitProducerID), func(req kmsg.Request) (kmsg.Response, error, bool) {
		e.c.KeepControl()
		inits.Add(1)
		resp := req.ResponseKind().(*kmsg.InitProducerIDResponse)
		resp.ErrorCode = kerr.ConcurrentTransactions.Code
		return resp, nil, true
	})
	var logs testutil.SyncBuffer
	cfg := tp.config(e, "txn-init")
	cfg.TransactionTimeout = time.Second
	cfg.StallTimeout = time.Minute // not the watchdog: the bound itself
	tr, err := NewTransactor(cfg, tp.counters(nil), WithLogger(slog.New(slog.NewTextHandler(&logs, nil))))
	if err != nil {
		t.Fatal(err)
	}
	runAsync(t, tr)
	waitFor(t, "the session to report its failed producer ID", 10*time.Second, func() bool {
		return strings.Contains(logs.String(), "init producer id")
	})
	if inits.Load() < 2 {
		t.Fatalf("%d InitProducerID requests, want the client's retries", inits.Load())
	}
}

// TestStallBeatIsMonotonic: the watchdog compares the loop's last beat with
// a monotonic now; the beat must carry a monotonic reading too, or the idle
// time follows wall-clock steps (NTP, a resumed VM): a step forward fires a
// spurious stall, a step back blinds the watchdog for as long.
func TestStallBeatIsMonotonic(t *testing.T) {
	var tr Transactor
	tr.progress()
	if b := tr.lastBeat(); !strings.Contains(b.String(), " m=") {
		t.Fatalf("last beat %s has no monotonic clock reading", b)
	}
}

// TestTransactShutdownIsBounded wedges a Process call for good, then shuts
// the stage down: Run must return (ErrStalled) once the transaction timeout
// and the grace have passed, instead of holding the process's exit.
func TestTransactShutdownIsBounded(t *testing.T) {
	// An hour: not the stall watchdog, the shutdown bound.
	tr, entered := hungTransactor(t, "txn-shutdown", time.Hour)
	ctx, cancel := context.WithCancel(context.Background())
	res := make(chan error, 1)
	go func() { res <- tr.Run(ctx) }()
	select {
	case <-entered:
	case <-time.After(20 * time.Second):
		t.Fatal("Process was never called")
	}
	cancel()
	select {
	case err := <-res:
		if !errors.Is(err, ErrStalled) {
			t.Fatalf("Run after a shutdown with a hung session = %v, want ErrStalled", err)
		}
	case <-time.After(20 * time.Second):
		t.Fatal("Run did not return within 20s of the shutdown")
	}
}

// hungTransactor returns a stage over one input partition holding three
// records whose Process call blocks, ignoring its context, until the test
// ends; entered receives once it has been called. The transaction timeout
// is 1s and the grace after a stall 300ms (both bound how long Run waits
// for the hung session), and the stall timeout is stall.
func hungTransactor(t *testing.T, txnID string, stall time.Duration) (tr *Transactor, entered <-chan struct{}) {
	t.Helper()
	g := stallGrace
	stallGrace = 300 * time.Millisecond
	t.Cleanup(func() { stallGrace = g })
	e := startBroker(t)
	tp := newTopology(t, e, 1)
	produceInputs(t, e, tp.input, 1, 3, map[string]int{})

	release := make(chan struct{})
	in := make(chan struct{}, 1)
	hook := func(context.Context, *Record) error {
		select {
		case in <- struct{}{}:
		default:
		}
		<-release
		return nil
	}
	cfg := tp.config(e, txnID)
	cfg.StallTimeout = stall
	cfg.TransactionTimeout = time.Second
	tr, err := NewTransactor(cfg, tp.counters(hook), WithLogger(testLogger()))
	if err != nil {
		t.Fatal(err)
	}
	// Registered last, so run first: the hung call returns before the
	// broker closes.
	t.Cleanup(func() { close(release) })
	return tr, in
}
