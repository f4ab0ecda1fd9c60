package daemon

// Fault tests of the decider and sealer as real aegisd processes against a
// real Kafka broker (deploy/kafka/kafka.sh). The oracle is the
// architecture's invariants, checked by verifyPipeline on the output topics:
// every event the broker acknowledged is sealed exactly once, every chain
// verifies, the chain heads agree with the chains, and the decider itself
// decided each event exactly once.
//
// Run them with `make test-integration`, or:
//
//	deploy/kafka/kafka.sh start && deploy/kafka/kafka.sh wait
//	AEGIS_TEST_KAFKA=127.0.0.1:19092 go test -count=1 -run Integration ./internal/daemon

import (
	"context"
	"maps"
	"math/rand/v2"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"testing"
	"time"
)

// TestCrashRecoveryIntegration SIGKILLs the decider and the sealer at random
// moments while 1,000 sessions × 100 events (100,000 events) stream in,
// restarts each with the same instance name, and checks exactly-once
// sealing and chain integrity afterwards.
func TestCrashRecoveryIntegration(t *testing.T) {
	e := newFaultEnv(t, "crash")
	seed := uint64(time.Now().UnixNano())
	rng := rand.New(rand.NewPCG(seed, seed>>7))
	t.Logf("random seed %d", seed)

	procs := map[string]*stageProc{
		"decider": e.start("decider", "d1"),
		"sealer":  e.start("sealer", "s1"),
	}
	instance := map[string]string{"decider": "d1", "sealer": "s1"}
	for _, p := range procs {
		p.waitReady(t, 60*time.Second)
	}

	// Publishing is spread over ~35 s (350 ms per round of 1,000
	// events) so that the kills land while events stream in.
	w := newWorkload(e.topics.Events, "crash", 1000, 100)
	ctx, cancel := context.WithTimeout(context.Background(), 3*time.Minute)
	defer cancel()
	start := time.Now()
	var publishing atomic.Bool
	publishing.Store(true)
	pubc := make(chan *published, 1)
	var pubWG sync.WaitGroup
	pubWG.Add(1)
	go func() {
		defer pubWG.Done()
		defer publishing.Store(false)
		pubc <- publish(ctx, t, e.brokers, w, 4, 350*time.Millisecond, 0)
	}()
	// A failing test returns early: stop the publisher before it does, so
	// that nothing reports to a finished test.
	defer func() { cancel(); pubWG.Wait() }()

	// Kill the decider and the sealer in turn, at random moments 1.5–4 s
	// apart, while publishing, then once more each while the backlog
	// drains; restart the killed one after 0–1 s.
	kills := map[string]int{}
	turn := rng.IntN(2)
	kill := func(stage string) {
		procs[stage].kill()
		kills[stage]++
		time.Sleep(time.Duration(rng.Int64N(int64(time.Second))))
		procs[stage] = e.start(stage, instance[stage])
	}
	for publishing.Load() {
		time.Sleep(1500*time.Millisecond + time.Duration(rng.Int64N(int64(2500*time.Millisecond))))
		if !publishing.Load() {
			break
		}
		kill([]string{"decider", "sealer"}[(turn+sum(kills))%2])
	}
	pub := <-pubc
	t.Logf("published %d events in %s", len(pub.accepted), time.Since(start).Round(100*time.Millisecond))
	for _, stage := range []string{"decider", "sealer"} {
		time.Sleep(time.Duration(rng.Int64N(int64(2 * time.Second))))
		kill(stage)
	}
	t.Logf("kills: %v", kills)
	if kills["decider"] < 3 || kills["sealer"] < 3 {
		t.Fatalf("only %v kills: the test did not exercise crash recovery", kills)
	}

	verifyPipeline(t, e, pub, 3*time.Minute)
	for stage, p := range procs {
		if p.exited() {
			t.Errorf("%s exited: %s\n%s", stage, p.exitState(), p.tail(20))
		}
	}
	t.Logf("total %s", time.Since(start).Round(100*time.Millisecond))
}

// TestSealerRebalanceIntegration runs two sealer instances through forced
// rebalances: a second instance joins mid-stream, later the first one is
// stopped with SIGTERM. A session with two writers would fork its chain:
// a seq sealed twice, or a chain that does not verify.
func TestSealerRebalanceIntegration(t *testing.T) {
	e := newFaultEnv(t, "rebalance")
	d := e.start("decider", "d1")
	s1 := e.start("sealer", "s1")
	d.waitReady(t, 60*time.Second)
	s1.waitReady(t, 60*time.Second)

	// 400 sessions × 60 events over ~15 s.
	w := newWorkload(e.topics.Events, "rebalance", 400, 60)
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
	pubc := make(chan *published, 1)
	var pubWG sync.WaitGroup
	pubWG.Add(1)
	go func() { defer pubWG.Done(); pubc <- publish(ctx, t, e.brokers, w, 4, 250*time.Millisecond, 0) }()
	// A failing test returns early: stop the publisher before it does, so
	// that nothing reports to a finished test.
	defer func() { cancel(); pubWG.Wait() }()

	time.Sleep(4 * time.Second)
	s2 := e.start("sealer", "s2")
	s2.waitReady(t, 60*time.Second)
	// Both instances must have sealed records while both ran (the
	// workload goes on for ~15 s; s2 seals once it owns partitions).
	consumed := `aegis_stream_records_consumed_total{stage="sealer"}`
	var n1, n2 float64
	for deadline := time.Now().Add(30 * time.Second); ; time.Sleep(200 * time.Millisecond) {
		var err1, err2 error
		n1, err1 = s1.metric(consumed)
		n2, err2 = s2.metric(consumed)
		if err1 != nil || err2 != nil {
			t.Fatalf("metrics: %v, %v", err1, err2)
		}
		if n1 > 0 && n2 > 0 {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("both sealers must have sealed records for the rebalance to be exercised: s1 %v, s2 %v", n1, n2)
		}
	}
	t.Logf("records consumed before SIGTERM: s1 %v, s2 %v", n1, n2)
	s1.terminate(t, 60*time.Second)
	pub := <-pubc

	verifyPipeline(t, e, pub, 2*time.Minute)
	if d.exited() || s2.exited() {
		t.Fatalf("a stage exited: decider %s, s2 %s", d.exitState(), s2.exitState())
	}
}

// TestBrokerRestartIntegration restarts the Kafka broker (kafka.sh restart,
// data kept) while events stream in. The publisher retries what the broker
// did not acknowledge; everything acknowledged must be sealed exactly once
// and verify, and both stages must ride out the outage.
func TestBrokerRestartIntegration(t *testing.T) {
	e := newFaultEnv(t, "restart")
	pidFile := filepath.Join(e.root, ".cache", "kafka", "kafka.pid")
	pidBefore, err := os.ReadFile(pidFile)
	if err != nil {
		t.Fatalf("this test restarts the broker with deploy/kafka/kafka.sh, so the broker must have been started by it (%v)", err)
	}
	d := e.start("decider", "d1")
	s := e.start("sealer", "s1")
	d.waitReady(t, 60*time.Second)
	s.waitReady(t, 60*time.Second)

	// 300 sessions × 60 events over ~20 s; the restart takes ~10–20 s
	// in the middle of it.
	w := newWorkload(e.topics.Events, "restart", 300, 60)
	ctx, cancel := context.WithTimeout(context.Background(), 3*time.Minute)
	defer cancel()
	pubc := make(chan *published, 1)
	// Sends time out after 2 s, so the outage fails some of them and the
	// publisher retries them, as a client would.
	var pubWG sync.WaitGroup
	pubWG.Add(1)
	go func() {
		defer pubWG.Done()
		pubc <- publish(ctx, t, e.brokers, w, 4, 330*time.Millisecond, 2*time.Second)
	}()
	// A failing test returns early: stop the publisher before it does, so
	// that nothing reports to a finished test.
	defer func() { cancel(); pubWG.Wait() }()

	time.Sleep(5 * time.Second)
	restarted := time.Now()
	cmd := exec.Command(filepath.Join(e.root, "deploy", "kafka", "kafka.sh"), "restart")
	cmd.Dir = e.root
	if out, err := cmd.CombinedOutput(); err != nil {
		t.Fatalf("kafka.sh restart: %v\n%s", err, out)
	}
	pidAfter, err := os.ReadFile(pidFile)
	if err != nil || strings.TrimSpace(string(pidAfter)) == strings.TrimSpace(string(pidBefore)) {
		t.Fatalf("the broker was not restarted (pid %q before, %q after, %v)", pidBefore, pidAfter, err)
	}
	t.Logf("broker restarted in %s", time.Since(restarted).Round(100*time.Millisecond))
	pub := <-pubc

	verifyPipeline(t, e, pub, 2*time.Minute)
	if d.exited() || s.exited() {
		t.Fatalf("a stage did not survive the broker restart: decider %s, sealer %s\n%s\n%s", d.exitState(), s.exitState(), d.tail(20), s.tail(20))
	}
}

// TestZombieSealerFencedIntegration freezes a sealer (SIGSTOP) mid-stream,
// starts a new process with the same --instance (so the same transactional
// ID), lets it take over the partitions, then resumes the old one
// (SIGCONT) with more input pending. The resumed zombie must commit
// nothing: it must exit with stream_fenced, and the sealed log must
// show neither duplicates nor forks.
func TestZombieSealerFencedIntegration(t *testing.T) {
	e := newFaultEnv(t, "zombie")
	d := e.start("decider", "d1")
	// Debug logging makes the client log every transaction it ends.
	zombie := e.start("sealer", "z", "--log-level", "debug")
	d.waitReady(t, 60*time.Second)
	zombie.waitReady(t, 60*time.Second)

	w := newWorkload(e.topics.Events, "zombie", 300, 60)
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
	pubc := make(chan *published, 1)
	var pubWG sync.WaitGroup
	pubWG.Add(1)
	go func() { defer pubWG.Done(); pubc <- publish(ctx, t, e.brokers, w, 4, 200*time.Millisecond, 0) }()
	// A failing test returns early: stop the publisher before it does, so
	// that nothing reports to a finished test.
	defer func() { cancel(); pubWG.Wait() }()

	// Freeze it while it works (most likely inside a transaction).
	time.Sleep(3 * time.Second)
	zombie.signal(t, syscall.SIGSTOP)
	stopped := time.Now()
	successor := e.start("sealer", "z")
	// The successor gets the partitions once the frozen member's session
	// (6 s) expires, and is ready when it has caught up.
	successor.waitReady(t, 60*time.Second)
	time.Sleep(2 * time.Second)
	resumed := time.Now()
	zombie.signal(t, syscall.SIGCONT)
	t.Logf("zombie frozen for %s", resumed.Sub(stopped).Round(100*time.Millisecond))
	// Input after the resume, whenever the first workload ends: a zombie
	// frozen between transactions makes no transactional call until it
	// has records to seal, and is fenced only then.
	after := publish(ctx, t, e.brokers, newWorkload(e.topics.Events, "zombie-after", 60, 10), 2, 100*time.Millisecond, 0)

	if !zombie.wait(60 * time.Second) {
		t.Fatalf("the resumed zombie neither exited nor was fenced within 60s:\n%s", zombie.tail(30))
	}
	log := zombie.log()
	if zombie.cmd.ProcessState.ExitCode() != 1 || !strings.Contains(log, "stream_fenced") {
		t.Errorf("zombie exit %s; want exit 1 with stream_fenced in its log:\n%s", zombie.exitState(), zombie.tail(30))
	}
	if commitsSince(t, log, time.Time{}) == 0 {
		t.Fatalf("no committed transaction found in the zombie's debug log: the log check below could not see one either")
	}
	if commits := commitsSince(t, log, resumed); commits > 0 {
		t.Errorf("the zombie committed %d transactions after it was resumed", commits)
	}
	pub := <-pubc
	after.mu.Lock()
	pub.mu.Lock()
	maps.Copy(pub.accepted, after.accepted)
	maps.Copy(pub.attempted, after.attempted)
	pub.mu.Unlock()
	after.mu.Unlock()

	verifyPipeline(t, e, pub, 2*time.Minute)
	if successor.exited() {
		t.Fatalf("the successor exited (%s): the zombie fenced it\n%s", successor.exitState(), successor.tail(20))
	}
}

var (
	commitSent = regexp.MustCompile(`^time=(\S+) .*msg="ending transaction".* kafka\.commit=true`)
	commitDone = regexp.MustCompile(`msg="end transaction response successfully received".* kafka\.commit=true`)
)

// commitsSince counts the committed transactions a debug-level aegisd log
// records whose commit request was sent at or after t: a commit sent just
// before a SIGSTOP is logged as received only after the SIGCONT.
func commitsSince(tb testing.TB, log string, t time.Time) int {
	tb.Helper()
	n := 0
	var sent string // time of the last commit request, until its response
	for _, line := range strings.Split(log, "\n") {
		if m := commitSent.FindStringSubmatch(line); m != nil {
			sent = m[1]
			continue
		}
		if !commitDone.MatchString(line) {
			continue
		}
		if sent == "" {
			tb.Fatalf("a commit response without its request in the log: %s", line)
		}
		ts, err := time.Parse(time.RFC3339Nano, sent)
		if err != nil {
			tb.Fatalf("log time %q: %v", sent, err)
		}
		sent = ""
		if !ts.Before(t.Truncate(time.Millisecond)) {
			n++
		}
	}
	return n
}

func sum(m map[string]int) int {
	n := 0
	for _, v := range m {
		n += v
	}
	return n
}
