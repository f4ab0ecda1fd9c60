package daemon

// The harness of the fault tests in fault_integration_test.go: aegisd built
// once per test binary and run as real processes against a real Kafka
// broker, a publisher that knows exactly which events the broker
// acknowledged, and a checker that holds the output topics to the
// architecture's invariants (exactly once, verifiable chains, heads that
// agree with the chains).

import (
	"bufio"
	"bytes"
	"context"
	"crypto/rand"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"sort"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"aegis.dev/aegis/decider"
	"aegis.dev/aegis/internal/pipeline"
	"aegis.dev/aegis/internal/stream"
	"aegis.dev/aegis/schemas/chain"
	"aegis.dev/aegis/schemas/envelope"
	"aegis.dev/aegis/sealer"
)

// kafkaEnv names the environment variable with the seed brokers of the real
// Kafka the integration tests run against (the Makefile exports it).
const kafkaEnv = "AEGIS_TEST_KAFKA"

// faultPartitions is the partition count of every fault test's topics.
const faultPartitions = 6

// faultSessionTimeout is the group session timeout the stage processes run
// with: the broker's minimum, so that the partitions of a SIGKILLed process
// move after 6 s instead of the default 45 s.
const faultSessionTimeout = "6s"

// integrationBrokers returns the brokers named by AEGIS_TEST_KAFKA. Under
// -short (the hermetic suite) the test is skipped; otherwise a missing
// variable fails it, so that a misconfigured run never passes silently.
func integrationBrokers(tb testing.TB) []string {
	tb.Helper()
	if testing.Short() {
		tb.Skip("integration test against real Kafka; runs without -short (make test-integration)")
	}
	v := os.Getenv(kafkaEnv)
	if v == "" {
		tb.Fatalf("%s is not set: start Kafka with `deploy/kafka/kafka.sh start && deploy/kafka/kafka.sh wait` "+
			"(or `make services`) and run `%s=127.0.0.1:19092 go test -run Integration ./internal/daemon` (or `make test-integration`)", kafkaEnv, kafkaEnv)
	}
	var brokers []string
	for _, b := range strings.Split(v, ",") {
		if b = strings.TrimSpace(b); b != "" {
			brokers = append(brokers, b)
		}
	}
	return brokers
}

// aegisdBuild is the aegisd binary built once for the whole test binary and
// removed by TestMain.
var aegisdBuild struct {
	once sync.Once
	dir  string
	path string
	err  error
}

func TestMain(m *testing.M) {
	code := m.Run()
	if aegisdBuild.dir != "" {
		os.RemoveAll(aegisdBuild.dir)
	}
	os.Exit(code)
}

// aegisdBinary builds cmd/aegisd (once per test binary) and returns its path.
func aegisdBinary(tb testing.TB, root string) string {
	tb.Helper()
	b := &aegisdBuild
	b.once.Do(func() {
		if b.dir, b.err = os.MkdirTemp("", "aegisd-it-"); b.err != nil {
			return
		}
		b.path = filepath.Join(b.dir, "aegisd")
		cmd := exec.Command("go", "build", "-o", b.path, "./cmd/aegisd")
		cmd.Dir = root
		if out, err := cmd.CombinedOutput(); err != nil {
			b.err = fmt.Errorf("go build ./cmd/aegisd: %w\n%s", err, out)
		}
	})
	if b.err != nil {
		tb.Fatal(b.err)
	}
	return b.path
}

// moduleRoot is the directory holding go.mod, found upwards from the
// package directory.
func moduleRoot(tb testing.TB) string {
	tb.Helper()
	dir, err := os.Getwd()
	if err != nil {
		tb.Fatal(err)
	}
	for {
		if _, err := os.Stat(filepath.Join(dir, "go.mod")); err == nil {
			return dir
		}
		parent := filepath.Dir(dir)
		if parent == dir {
			tb.Fatal("no go.mod above the test directory")
		}
		dir = parent
	}
}

func randomSuffix(tb testing.TB) string {
	var b [4]byte
	if _, err := rand.Read(b[:]); err != nil {
		tb.Fatal(err)
	}
	return hex.EncodeToString(b[:])
}

// faultEnv is one fault test's world: its own topics (a fresh prefix, so
// concurrent tests and reruns never see each other's data), hence its own
// consumer groups and transactional IDs, and the aegisd processes it
// started, which are all killed when the test ends.
type faultEnv struct {
	t         *testing.T
	root      string
	bin       string
	manifests string
	brokers   []string
	prefix    string
	topics    pipeline.Topics
	dir       string // process directories (data dir, log)

	mu    sync.Mutex
	procs []*stageProc
	seq   map[string]int // restarts per stage/instance, for log names
}

func newFaultEnv(t *testing.T, name string) *faultEnv {
	t.Helper()
	brokers := integrationBrokers(t)
	root := moduleRoot(t)
	e := &faultEnv{
		t: t, root: root, bin: aegisdBinary(t, root), brokers: brokers,
		manifests: filepath.Join(root, "internal", "daemon", "testdata", "manifests"),
		prefix:    "it-" + name + "-" + randomSuffix(t) + ".",
		seq:       map[string]int{},
	}
	e.topics = pipeline.NewTopics(e.prefix)
	// Process directories live under one made before cleanup is
	// registered: cleanups run last-in first-out, so the logs still exist
	// when cleanup prints their tails.
	e.dir = t.TempDir()
	// Every stage process gets the same approval secret: a decider on
	// external brokers without one does not start.
	if err := os.WriteFile(filepath.Join(e.dir, "approval.secret"), []byte("fault-harness-approval-secret-0123456789"), 0o600); err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	defer cancel()
	// Created up front so that publishing can start before any stage.
	if err := stream.EnsureTopics(ctx, brokers, e.topics.Specs(faultPartitions, envelope.DefaultMaxEventBytes)); err != nil {
		t.Fatalf("create topics on %v: %v (is Kafka up? deploy/kafka/kafka.sh start && deploy/kafka/kafka.sh wait)", brokers, err)
	}
	t.Logf("topic prefix %s", e.prefix)
	t.Cleanup(e.cleanup)
	return e
}

// cleanup kills what still runs and, if the test failed, logs the tail of
// every process's log.
func (e *faultEnv) cleanup() {
	e.mu.Lock()
	procs := e.procs
	e.mu.Unlock()
	if e.t.Failed() {
		// A stage that is still running when the test failed may be
		// stuck: SIGQUIT makes the Go runtime write every goroutine's
		// stack to its log before it exits.
		for _, p := range procs {
			if !p.exited() && p.cmd.Process.Signal(syscall.SIGQUIT) == nil {
				p.wait(10 * time.Second)
			}
		}
	}
	for _, p := range procs {
		p.kill()
	}
	for _, p := range procs {
		// A stall the watchdog healed does not fail the test (nothing was
		// lost), but where the client hung is worth seeing.
		for line := range strings.SplitSeq(p.log(), "\n") {
			if strings.Contains(line, "code=stream_stalled") {
				e.t.Logf("--- %s: the stall watchdog fired:\n%s", p.label, strings.NewReplacer(`\n`, "\n", `\t`, "\t").Replace(line))
			}
		}
	}
	if e.t.Failed() {
		for _, p := range procs {
			log, stacks := splitGoroutineDump(p.log())
			e.t.Logf("--- %s (%s) last lines:\n%s", p.label, p.exitState(), lastLines(log, 30))
			if stacks != "" {
				e.t.Logf("--- %s goroutines in the pipeline's code at SIGQUIT:\n%s", p.label, stacks)
			}
		}
		e.t.Logf("topics kept for inspection: %s*", e.prefix)
		return
	}
	deleteTopics(e.t, e.brokers, e.prefix)
}

// dropTopicsOnCleanup deletes the topics under prefix once the test and
// everything it started have stopped (register it before starting them:
// cleanups run last-registered first). A failed test keeps them for
// inspection.
func dropTopicsOnCleanup(tb testing.TB, brokers []string, prefix string) {
	tb.Cleanup(func() {
		if tb.Failed() {
			tb.Logf("topics kept for inspection: %s*", prefix)
			return
		}
		deleteTopics(tb, brokers, prefix)
	})
}

// deleteTopics deletes the topics under prefix, so that reruns do not fill
// the broker's disk. Failing to delete is logged, not fatal.
func deleteTopics(tb testing.TB, brokers []string, prefix string) {
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	if _, err := stream.DeleteTopicsWithPrefix(ctx, brokers, prefix); err != nil {
		tb.Logf("topics %s* not deleted: %v", prefix, err)
	}
}

// stageProc is one aegisd process running one stage.
type stageProc struct {
	label    string
	cmd      *exec.Cmd
	logPath  string
	done     chan struct{}
	waitErr  error // set before done is closed
	httpOnce sync.Once
	httpAddr string
}

// start runs aegisd --target stage --instance instance against the env's
// broker and topics. Extra flags may be appended.
func (e *faultEnv) start(stage, instance string, extra ...string) *stageProc {
	e.t.Helper()
	e.mu.Lock()
	id := stage + "-" + instance
	e.seq[id]++
	label := fmt.Sprintf("%s#%d", id, e.seq[id])
	e.mu.Unlock()
	dir, err := os.MkdirTemp(e.dir, label)
	if err != nil {
		e.t.Fatal(err)
	}
	logPath := filepath.Join(dir, "aegisd.log")
	logFile, err := os.Create(logPath)
	if err != nil {
		e.t.Fatal(err)
	}
	args := append([]string{
		"--brokers", strings.Join(e.brokers, ","),
		"--target", stage,
		"--instance", instance,
		"--topic-prefix", e.prefix,
		"--partitions", strconv.Itoa(faultPartitions),
		"--http-addr", "127.0.0.1:0",
		"--manifests", e.manifests,
		"--session-timeout", faultSessionTimeout,
		// The shortest allowed: a stalled Kafka client is replaced
		// within the tests' verification windows.
		"--stall-timeout", "1m",
		"--data-dir", dir,
		"--approval-secret-file", filepath.Join(e.dir, "approval.secret"),
	}, extra...)
	cmd := exec.Command(e.bin, args...)
	cmd.Dir = dir
	cmd.Stdout, cmd.Stderr = logFile, logFile
	if err := cmd.Start(); err != nil {
		logFile.Close()
		e.t.Fatalf("start %s: %v", label, err)
	}
	p := &stageProc{label: label, cmd: cmd, logPath: logPath, done: make(chan struct{})}
	go func() {
		p.waitErr = cmd.Wait()
		logFile.Close()
		close(p.done)
	}()
	e.mu.Lock()
	e.procs = append(e.procs, p)
	e.mu.Unlock()
	return p
}

func (p *stageProc) exited() bool {
	select {
	case <-p.done:
		return true
	default:
		return false
	}
}

func (p *stageProc) exitState() string {
	if !p.exited() {
		return "running"
	}
	return p.cmd.ProcessState.String()
}

func (p *stageProc) signal(tb testing.TB, sig syscall.Signal) {
	tb.Helper()
	if err := p.cmd.Process.Signal(sig); err != nil && !p.exited() {
		tb.Fatalf("%s: signal %v: %v", p.label, sig, err)
	}
}

// kill SIGKILLs the process (continuing it first if it was stopped) and
// waits for it to exit.
func (p *stageProc) kill() {
	if p.exited() {
		return
	}
	_ = p.cmd.Process.Signal(syscall.SIGKILL)
	<-p.done
}

// wait waits up to d for the process to exit and reports whether it did.
func (p *stageProc) wait(d time.Duration) bool {
	select {
	case <-p.done:
		return true
	case <-time.After(d):
		return false
	}
}

// terminate sends SIGTERM and waits for a clean exit (exit status 0).
func (p *stageProc) terminate(tb testing.TB, d time.Duration) {
	tb.Helper()
	p.signal(tb, syscall.SIGTERM)
	if !p.wait(d) {
		tb.Fatalf("%s did not stop within %s of SIGTERM", p.label, d)
	}
	if p.waitErr != nil {
		tb.Fatalf("%s: exit after SIGTERM: %v\n%s", p.label, p.waitErr, p.tail(20))
	}
}

func (p *stageProc) log() string {
	b, _ := os.ReadFile(p.logPath)
	return string(b)
}

func (p *stageProc) tail(n int) string { return lastLines(p.log(), n) }

// lastLines returns the last n lines of s.
func lastLines(s string, n int) string {
	lines := strings.Split(strings.TrimRight(s, "\n"), "\n")
	if len(lines) > n {
		lines = lines[len(lines)-n:]
	}
	return strings.Join(lines, "\n")
}

// splitGoroutineDump splits a process log into what the process logged and,
// if it ended with the Go runtime's SIGQUIT dump, the dump's
// stream.PipelineStacks: where a stuck stage waits.
func splitGoroutineDump(log string) (logged, stacks string) {
	i := strings.Index(log, "SIGQUIT: quit")
	if i < 0 {
		return log, ""
	}
	return log[:i], stream.PipelineStacks(log[i:])
}

var httpAddrLine = regexp.MustCompile(`msg="http server listening" addr=(\S+)`)

// addr waits for the process to log its HTTP address.
func (p *stageProc) addr(tb testing.TB) string {
	tb.Helper()
	deadline := time.Now().Add(30 * time.Second)
	for p.httpAddr == "" {
		if m := httpAddrLine.FindStringSubmatch(p.log()); m != nil {
			p.httpOnce.Do(func() { p.httpAddr = m[1] })
			break
		}
		if p.exited() || time.Now().After(deadline) {
			tb.Fatalf("%s never served HTTP (%s):\n%s", p.label, p.exitState(), p.tail(20))
		}
		time.Sleep(50 * time.Millisecond)
	}
	return p.httpAddr
}

// waitReady waits until the process reports /readyz 200: it joined its
// group and caught up with its input.
func (p *stageProc) waitReady(tb testing.TB, d time.Duration) {
	tb.Helper()
	url := "http://" + p.addr(tb) + "/readyz"
	deadline := time.Now().Add(d)
	for time.Now().Before(deadline) {
		if resp, err := http.Get(url); err == nil {
			resp.Body.Close()
			if resp.StatusCode == http.StatusOK {
				return
			}
		}
		if p.exited() {
			break
		}
		time.Sleep(100 * time.Millisecond)
	}
	tb.Fatalf("%s not ready within %s (%s):\n%s", p.label, d, p.exitState(), p.tail(20))
}

// metric returns the value of the sample whose name and labels are exactly
// series, e.g. `aegis_stream_transactions_total{result="committed",stage="sealer"}`,
// or an error if the process does not answer. A series not exported yet
// is 0.
func (p *stageProc) metric(series string) (float64, error) {
	if p.httpAddr == "" {
		return 0, errors.New("no HTTP address yet")
	}
	client := http.Client{Timeout: 2 * time.Second}
	resp, err := client.Get("http://" + p.httpAddr + "/metrics")
	if err != nil {
		return 0, err
	}
	defer resp.Body.Close()
	sc := bufio.NewScanner(resp.Body)
	sc.Buffer(make([]byte, 0, 64<<10), 1<<20)
	for sc.Scan() {
		if rest, ok := strings.CutPrefix(sc.Text(), series+" "); ok {
			return strconv.ParseFloat(strings.TrimSpace(rest), 64)
		}
	}
	return 0, sc.Err()
}

// eventID identifies an accepted event: what "exactly once" is counted on.
type eventID struct {
	tenant, session string
	seq             uint64
}

func (id eventID) String() string { return fmt.Sprintf("%s/%s#%d", id.tenant, id.session, id.seq) }

// workload is a set of sessions with a fixed number of events each.
type workload struct {
	topic    string
	sessions []eventID // tenant and session of each; seq unused
	events   int
}

// newWorkload returns n sessions of events each. Most sessions belong to
// tenant acme, which has a manifest; every seventh to globex, which has
// none, so its proposals are denied MANIFEST_UNKNOWN.
func newWorkload(topic, run string, n, events int) workload {
	w := workload{topic: topic, events: events}
	for i := range n {
		tenant := "acme"
		if i%7 == 6 {
			tenant = "globex"
		}
		w.sessions = append(w.sessions, eventID{tenant: tenant, session: fmt.Sprintf("%s-s%04d", run, i)})
	}
	return w
}

// message is event seq of session s: a realistic agent loop of model calls,
// tool proposals with arguments (allowed, denied by egress or exec rules,
// requiring approval, and over budget after the fourth call), executions,
// results and memory access, ending with TERMINATION.
func (w workload) message(s eventID, seq uint64) stream.Message {
	call := fmt.Sprintf("c%d", seq)
	var typ envelope.Type
	var payload string
	switch {
	case seq == uint64(w.events):
		typ, payload = envelope.Termination, `{"reason":"done"}`
	default:
		switch seq % 10 {
		case 1:
			typ, payload = envelope.ModelCallStarted, fmt.Sprintf(`{"model":"gpt-x","call_id":"m%d","prompt_tokens":%d}`, seq, 100+seq)
		case 2:
			typ, payload = envelope.ModelCallFinished, fmt.Sprintf(`{"model":"gpt-x","call_id":"m%d","completion_tokens":%d,"stop":"tool_use"}`, seq-1, 20+seq)
		case 3:
			typ, payload = envelope.ToolCallProposed, fmt.Sprintf(`{"tool_name":"search","call_id":%q,"args":{"q":"status of order %d","limit":10,"filters":{"lang":"en"}}}`, call, seq)
		case 4:
			typ, payload = envelope.ToolCallExecuted, fmt.Sprintf(`{"tool_name":"search","call_id":"c%d"}`, seq-1)
		case 5:
			typ, payload = envelope.ToolResult, fmt.Sprintf(`{"tool_name":"search","call_id":"c%d","output_bytes":%d,"is_error":false}`, seq-2, 512+seq)
		case 6:
			typ, payload = envelope.ToolCallProposed, fmt.Sprintf(`{"tool_name":"web_fetch","call_id":%q,"args":{"url":"https://%s/v1/items/%d","method":"GET"}}`, call, []string{"api.example.com", "evil.example.net", "a.docs.example.com"}[seq%3], seq)
		case 7:
			typ, payload = envelope.MemoryRead, fmt.Sprintf(`{"key":"notes/%d"}`, seq)
		case 8:
			typ, payload = envelope.ToolCallProposed, fmt.Sprintf(`{"tool_name":%q,"call_id":%q,"args":{"argv":["ls","-l","/tmp/%d"],"to":"ops@example.com"}}`, []string{"exec", "send_email", "delete_db"}[seq%3], call, seq)
		case 9:
			typ, payload = envelope.MemoryWrite, fmt.Sprintf(`{"key":"notes/%d","value":"step %d done"}`, seq, seq)
		default:
			typ, payload = envelope.CheckpointCreated, fmt.Sprintf(`{"checkpoint_id":"cp%d"}`, seq)
		}
	}
	key := s.tenant + "/" + s.session
	return stream.Message{Topic: w.topic, Key: []byte(key), Value: event(s.tenant, s.session, seq, typ, payload)}
}

// published is the publisher's exact account: every event the broker
// acknowledged (accepted) and every event ever sent (attempted), with how
// many sends failed and were retried.
type published struct {
	mu        sync.Mutex
	accepted  map[eventID]bool
	attempted map[eventID]bool
	failures  int
	slowest   time.Duration // the longest round, retries included
}

// publish sends every event of w from workers goroutines, each owning a
// share of the sessions and sending one event of each of its sessions per
// round, all rounds in order. A session's next event is sent only once its
// previous one was acknowledged, and a failed send is retried (same bytes,
// so a send that failed after the broker stored it is dropped downstream as
// a duplicate) until it is acknowledged or ctx ends. round, if positive, is
// the least time a round takes, to spread publishing over time. attempt,
// if positive, bounds each send: a send still buffered then fails (and is
// retried), as with a client's delivery timeout. publish may run in its
// own goroutine: it reports failures with tb.Errorf.
func publish(ctx context.Context, tb testing.TB, brokers []string, w workload, workers int, round, attempt time.Duration) *published {
	tb.Helper()
	acc := &published{accepted: map[eventID]bool{}, attempted: map[eventID]bool{}}
	p, err := stream.NewProducer(stream.ProducerConfig{Brokers: brokers, Linger: 5 * time.Millisecond})
	if err != nil {
		tb.Errorf("publish: %v", err)
		return acc
	}
	defer p.Close()
	var wg sync.WaitGroup
	errs := make(chan error, workers)
	for k := range workers {
		var mine []eventID
		for i, s := range w.sessions {
			if i%workers == k {
				mine = append(mine, s)
			}
		}
		wg.Go(func() {
			for seq := uint64(1); seq <= uint64(w.events); seq++ {
				start := time.Now()
				if err := acc.sendRound(ctx, p, w, mine, seq, attempt); err != nil {
					errs <- err
					return
				}
				acc.mu.Lock()
				acc.slowest = max(acc.slowest, time.Since(start))
				acc.mu.Unlock()
				if wait := round - time.Since(start); wait > 0 {
					select {
					case <-ctx.Done():
						errs <- ctx.Err()
						return
					case <-time.After(wait):
					}
				}
			}
		})
	}
	wg.Wait()
	close(errs)
	if err := <-errs; err != nil {
		tb.Errorf("publish: %v (accepted %d)", err, len(acc.accepted))
	}
	return acc
}

// sendRound sends event seq of every session in sessions and retries the
// failed ones until all are acknowledged.
func (acc *published) sendRound(ctx context.Context, p *stream.Producer, w workload, sessions []eventID, seq uint64, attempt time.Duration) error {
	pending := sessions
	backoff := 50 * time.Millisecond
	for len(pending) > 0 {
		actx, cancel := ctx, context.CancelFunc(func() {})
		if attempt > 0 {
			actx, cancel = context.WithTimeout(ctx, attempt)
		}
		var mu sync.Mutex
		var failed []eventID
		var wg sync.WaitGroup
		for _, s := range pending {
			id := eventID{s.tenant, s.session, seq}
			acc.mu.Lock()
			acc.attempted[id] = true
			acc.mu.Unlock()
			wg.Add(1)
			p.ProduceAsync(actx, w.message(s, seq), func(_ *stream.Record, err error) {
				defer wg.Done()
				acc.mu.Lock()
				defer acc.mu.Unlock()
				if err != nil {
					acc.failures++
					mu.Lock()
					failed = append(failed, s)
					mu.Unlock()
					return
				}
				acc.accepted[id] = true
			})
		}
		wg.Wait()
		cancel()
		if len(failed) > 0 {
			if ctx.Err() != nil {
				return fmt.Errorf("round %d: %d sends unacknowledged: %w", seq, len(failed), ctx.Err())
			}
			time.Sleep(backoff)
			backoff = min(2*backoff, 2*time.Second)
		}
		pending = failed
	}
	return nil
}

// readTopic reads topic read_committed from the beginning, handing each
// record to each, until complete reports true and then no record arrived
// for quiet, which catches extras such as duplicates written after the
// expected set was complete. It gives up, reporting false, when the set is
// still incomplete after within, or after stall without any new record.
func readTopic(tb testing.TB, brokers []string, topic string, within, quiet time.Duration, complete func() bool, each func(*stream.Record)) bool {
	tb.Helper()
	// A transaction a stage had open when the broker went down blocks
	// read_committed readers, the stage's own state restore included,
	// until the broker aborts it: the stages' transaction timeout (40 s)
	// after it began, at the broker's next check for timed-out
	// transactions (every 10 s), so a broker restart can hold the sealed
	// log still for the restart plus ~50 s.
	const stall = 90 * time.Second
	c, err := stream.NewConsumer(stream.ConsumerConfig{Brokers: brokers, Topics: []string{topic}, FetchMaxWait: 200 * time.Millisecond})
	if err != nil {
		tb.Fatal(err)
	}
	defer c.Close()
	deadline := time.Now().Add(within)
	lastRecord := time.Now()
	for {
		done := complete()
		if done && time.Since(lastRecord) >= quiet {
			return true
		}
		if !done && (time.Now().After(deadline) || time.Since(lastRecord) > stall) {
			return false
		}
		ctx, cancel := context.WithTimeout(context.Background(), 300*time.Millisecond)
		recs, err := c.Poll(ctx)
		cancel()
		if err != nil && ctx.Err() == nil {
			tb.Fatalf("%s: %v", topic, err)
		}
		for _, r := range recs {
			each(r)
		}
		if len(recs) > 0 {
			lastRecord = time.Now()
		}
	}
}

// verifyPipeline checks the invariants on everything the test published:
//
//   - sealed: every accepted event exactly once, nothing never sent, each
//     record on its key's partition, every chain verifies (schemas/chain);
//   - decided: every accepted event exactly once (the decider's own
//     exactly-once, which the sealer's retry window would otherwise hide);
//   - decisions: one reply per sealed proposal, agreeing with the sealed
//     decision;
//   - chain-heads: the latest head of every session equals the head of its
//     verified chain;
//   - rejected: empty (every event was valid and published in order).
//
// within bounds how long the pipeline may take to finish after the call.
func verifyPipeline(tb testing.TB, e *faultEnv, pub *published, within time.Duration) {
	tb.Helper()
	start := time.Now()
	pub.mu.Lock()
	accepted, attempted := pub.accepted, pub.attempted
	pub.mu.Unlock()
	lastSeq := map[string]uint64{}
	for id := range accepted {
		k := id.tenant + "/" + id.session
		lastSeq[k] = max(lastSeq[k], id.seq)
	}
	dec := envelope.Decoder{Sealed: true}

	// Sealed log.
	sealedCount := map[eventID]int{}
	sealedDecisions := map[eventID]envelope.Decision{}
	missing := len(accepted)
	v := chain.NewVerifier()
	var problems []string
	nproblems := 0
	problem := func(format string, args ...any) {
		if nproblems++; len(problems) < 20 {
			problems = append(problems, fmt.Sprintf(format, args...))
		}
	}
	complete := readTopic(tb, e.brokers, e.topics.Sealed, within, 2*time.Second, func() bool { return missing == 0 }, func(r *stream.Record) {
		ev, err := dec.Decode(r.Value)
		if err != nil {
			problem("sealed %d/%d: %v", r.Partition, r.Offset, err)
			return
		}
		id := eventID{ev.TenantID, ev.SessionID, ev.Seq}
		if !bytes.Equal(r.Key, ev.Key()) || r.Partition != stream.Partition(r.Key, faultPartitions) {
			problem("sealed %s: key %q on partition %d", id, r.Key, r.Partition)
		}
		sealedCount[id]++
		if sealedCount[id] == 1 && accepted[id] {
			missing--
		}
		if ev.Decision != nil {
			sealedDecisions[id] = *ev.Decision
		}
		v.Add(ev)
	})
	if complete {
		tb.Logf("sealed log complete %s after publishing ended", time.Since(start).Round(100*time.Millisecond))
	} else {
		// Report what is there, then fail with the details below.
		within = 5 * time.Second
	}
	if missing > 0 {
		var ids []string
		for id := range accepted {
			if sealedCount[id] == 0 && len(ids) < 10 {
				ids = append(ids, id.String())
			}
		}
		sort.Strings(ids)
		problem("%d accepted events not sealed, e.g. %v", missing, ids)
	}
	for id, n := range sealedCount {
		switch {
		case n > 1:
			problem("sealed %s %d times", id, n)
		case !attempted[id]:
			problem("sealed %s, which was never published", id)
		}
	}
	for _, f := range v.Failures() {
		problem("chain: %v", &f)
	}
	if len(v.Failures()) == 0 && int(v.Events()) != len(sealedCount) {
		problem("verifier saw %d events, %d distinct sealed", v.Events(), len(sealedCount))
	}

	// Decided events: exactly once too.
	decidedCount := map[eventID]int{}
	readTopic(tb, e.brokers, e.topics.Decided, within, time.Second, func() bool { return len(decidedCount) >= len(sealedCount) }, func(r *stream.Record) {
		ev, err := dec.Decode(r.Value)
		if err != nil {
			problem("decided %d/%d: %v", r.Partition, r.Offset, err)
			return
		}
		decidedCount[eventID{ev.TenantID, ev.SessionID, ev.Seq}]++
	})
	for id, n := range decidedCount {
		if n > 1 {
			problem("decided %s %d times", id, n)
		}
		if sealedCount[id] == 0 {
			problem("decided %s but not sealed", id)
		}
	}

	// Decision replies: one per sealed proposal.
	replies := map[eventID]int{}
	readTopic(tb, e.brokers, e.topics.Decisions, within, time.Second, func() bool { return len(replies) >= len(sealedDecisions) }, func(r *stream.Record) {
		var rep decider.Reply
		if err := json.Unmarshal(r.Value, &rep); err != nil {
			problem("decision reply %d/%d: %v", r.Partition, r.Offset, err)
			return
		}
		id := eventID{rep.TenantID, rep.SessionID, rep.Seq}
		replies[id]++
		if d, ok := sealedDecisions[id]; !ok || d.Outcome != rep.Outcome || d.Reason != rep.Reason {
			problem("reply %s (%s %s) does not match the sealed decision %+v", id, rep.Outcome, rep.Reason, d)
		}
	})
	for id, n := range replies {
		if n > 1 {
			problem("%d replies for %s", n, id)
		}
	}
	if len(replies) != len(sealedDecisions) {
		problem("%d proposals replied to, %d sealed", len(replies), len(sealedDecisions))
	}

	// Chain heads: the latest record per session agrees with the chain.
	heads := map[string]chain.Head{}
	readTopic(tb, e.brokers, e.topics.ChainHeads, within, time.Second, func() bool {
		for k, want := range lastSeq {
			if heads[k].Seq < want {
				return false
			}
		}
		return true
	}, func(r *stream.Record) {
		var h sealer.HeadRecord
		if err := json.Unmarshal(r.Value, &h); err != nil {
			problem("chain head %d/%d: %v", r.Partition, r.Offset, err)
			return
		}
		heads[string(r.Key)] = h.Head
	})
	var want []chain.Head
	for k, h := range heads {
		if h.Seq != lastSeq[k] {
			problem("head of %s at seq %d, last accepted %d", k, h.Seq, lastSeq[k])
		}
		want = append(want, h)
	}
	for _, f := range v.CheckHeads(want) {
		problem("heads: %v", &f)
	}
	if len(heads) != len(v.Heads()) {
		problem("%d chain heads, %d sealed sessions", len(heads), len(v.Heads()))
	}

	// Rejections: none expected.
	reasons := map[string]int{}
	readTopic(tb, e.brokers, e.topics.Rejected, within, time.Second, func() bool { return true }, func(r *stream.Record) {
		var rej pipeline.Rejection
		_ = json.Unmarshal(r.Value, &rej)
		reasons[rej.Stage+":"+rej.Reason]++
		problem("rejected %s/%s#%d by %s: %s %s", rej.TenantID, rej.SessionID, rej.Seq, rej.Stage, rej.Reason, rej.Detail)
	})

	tb.Logf("verified: %d accepted (%d sends retried, slowest round %s), %d sealed in %d chains, %d decided, %d replies, %d heads, rejections %v",
		len(accepted), pub.failures, pub.slowest.Round(time.Millisecond), len(sealedCount), len(v.Heads()), len(decidedCount), len(replies), len(heads), reasons)
	if len(problems) > 0 {
		tb.Fatalf("%d invariant violations (first %d):\n  %s", nproblems, len(problems), strings.Join(problems, "\n  "))
	}
}
