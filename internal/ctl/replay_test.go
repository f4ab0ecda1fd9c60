package ctl_test

import (
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"io"
	"log/slog"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"aegis.dev/aegis/decider/policy"
	"aegis.dev/aegis/internal/ctl"
	"aegis.dev/aegis/internal/daemon"
	"aegis.dev/aegis/internal/stream"
	"aegis.dev/aegis/projector/stores"
	"aegis.dev/aegis/replayer"
)

const replaySessions = 2000

// replayEvents returns the NDJSON of n sessions of six events each: a
// model call, an allowed search (arguments unique per session), its
// result, an allowed web_fetch, an exec denied EXEC_DENY and a
// termination.
func replayEvents(n int) []byte {
	var b bytes.Buffer
	for i := range n {
		sid := fmt.Sprintf("s%05d", i)
		ts := 1767225600000 + int64(i)*1000
		line := func(seq int, typ, payload string) {
			fmt.Fprintf(&b, `{"tenant_id":"acme","session_id":%q,"seq":%d,"ts_unix_ms":%d,"event_type":%q,"payload":%s}`+"\n",
				sid, seq, ts+int64(seq), typ, payload)
		}
		line(1, "MODEL_CALL_STARTED", `{"model":"m"}`)
		line(2, "TOOL_CALL_PROPOSED", fmt.Sprintf(`{"tool_name":"search","call_id":"c2","args":{"q":"find-%s"}}`, sid))
		line(3, "TOOL_RESULT", `{"tool_name":"search","call_id":"c2"}`)
		line(4, "TOOL_CALL_PROPOSED", `{"tool_name":"web_fetch","call_id":"c4","args":{"url":"https://api.example.com/v1"}}`)
		line(5, "TOOL_CALL_PROPOSED", `{"tool_name":"exec","call_id":"c5","args":{"bin":"rm"}}`)
		line(6, "TERMINATION", `{}`)
	}
	return b.Bytes()
}

// recordStore runs the embedded stack, publishes n sessions, waits until
// the projector stored all of them, calls live with the broker address and
// the stack's policy archive, and stops the stack. It returns the store URL;
// the policy archive is the stack's default, next to it.
func recordStore(t *testing.T, n int, live func(brokers, archive string)) string {
	t.Helper()
	cfg := daemon.Defaults()
	cfg.DataDir = t.TempDir()
	cfg.KafkaAddr, cfg.HTTPAddr = "127.0.0.1:0", "127.0.0.1:0"
	cfg.Partitions, cfg.Instance = 3, "test"
	cfg.Manifests = "testdata/replay/manifests"
	if err := cfg.Validate(); err != nil {
		t.Fatal(err)
	}
	d := daemon.New(cfg, slog.New(slog.NewTextHandler(io.Discard, nil)))
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- d.Run(ctx) }()
	stop := func() {
		cancel()
		if err := <-done; err != nil {
			t.Errorf("daemon: %v", err)
		}
	}
	if d.Brokers() == nil {
		cancel()
		t.Fatalf("daemon did not start: %v", <-done)
	}
	var out, errOut bytes.Buffer
	env := ctl.IO{Stdin: bytes.NewReader(replayEvents(n)), Stdout: &out, Stderr: &errOut}
	if code := ctl.Main(context.Background(), env, []string{"publish", "--brokers", strings.Join(d.Brokers(), ",")}); code != ctl.ExitOK {
		stop()
		t.Fatalf("publish: exit %d: %s", code, errOut.String())
	}
	url := cfg.StoreURL()
	st, err := stores.Open(context.Background(), url)
	if err != nil {
		stop()
		t.Fatal(err)
	}
	defer func() { _ = st.Close() }()
	want := fmt.Sprintf("%d/%d/%d", n*6, n, n)
	got := ""
	for deadline := time.Now().Add(60 * time.Second); time.Now().Before(deadline); time.Sleep(200 * time.Millisecond) {
		_, rows, err := st.Query(context.Background(), `SELECT (SELECT count(*) FROM audit_events), (SELECT count(*) FROM session_snapshots WHERE last_seq = 6), (SELECT count(*) FROM chain_heads WHERE seq = 6)`)
		if err != nil {
			stop()
			t.Fatal(err)
		}
		if got = fmt.Sprintf("%v/%v/%v", rows[0][0], rows[0][1], rows[0][2]); got == want {
			break
		}
	}
	if got != want {
		stop()
		t.Fatalf("store has events/snapshots/heads %s, want %s", got, want)
	}
	live(strings.Join(d.Brokers(), ","), cfg.ArchiveDir())
	stop()
	return url
}

func runCtl(t *testing.T, args ...string) (int, string, string) {
	t.Helper()
	var out, errOut bytes.Buffer
	code := ctl.Main(context.Background(), ctl.IO{Stdin: strings.NewReader(""), Stdout: &out, Stderr: &errOut}, args)
	return code, out.String(), errOut.String()
}

// denySearchBundle writes the default bundle plus one rule that declares
// the search tool undeclared: the candidate of the what-if replay.
func denySearchBundle(t *testing.T) string {
	t.Helper()
	dir := t.TempDir()
	files := policy.Default().Files
	files["deny_search.rego"] = "package aegis.decide\n\nviolations contains 1 if input.event.payload.tool_name == \"search\"\n"
	for name, content := range files {
		p := filepath.Join(dir, filepath.FromSlash(name))
		if err := os.MkdirAll(filepath.Dir(p), 0o755); err != nil {
			t.Fatal(err)
		}
		if err := os.WriteFile(p, []byte(content), 0o644); err != nil {
			t.Fatal(err)
		}
	}
	return dir
}

// TestReplayFlow is the CI flow of docs/replay.md on the embedded stack:
// record sessions, what-if a policy that denies one tool (exactly the
// search calls change), exact replay (identical), verify, a missing
// revision (exit 3), then tamper with one row and see exact and verify fail.
func TestReplayFlow(t *testing.T) {
	url := recordStore(t, replaySessions, func(brokers, archive string) {
		// The sealed topic is a source too: every session, or a time range.
		for _, c := range []struct {
			name     string
			args     []string
			sessions int
		}{
			{"exact", []string{"--mode", "exact"}, replaySessions},
			{"exact since", []string{"--mode", "exact", "--since", "1767225600000", "--until", "1767225610000"}, 10},
		} {
			code, out, errOut := runCtl(t, append([]string{"replay", "--brokers", brokers, "--policy-archive", archive, "--json"}, c.args...)...)
			if code != ctl.ExitOK || !strings.Contains(out, fmt.Sprintf(`"sessions":%d,`, c.sessions)) {
				t.Errorf("%s from the sealed topic: exit %d\n%s%s", c.name, code, out, errOut)
			}
		}
		code, out, errOut := runCtl(t, "replay", "--brokers", brokers, "--mode", "verify")
		if code != ctl.ExitOK || !strings.Contains(out, fmt.Sprintf("%d events in %d sessions", 6*replaySessions, replaySessions)) {
			t.Errorf("verify from the sealed topic: exit %d\n%s%s", code, out, errOut)
		}

		// An undecodable record on the sealed topic is a finding of the
		// job (exit 1, naming its session), not a failure to run it.
		p, err := stream.NewProducer(stream.ProducerConfig{Brokers: strings.Split(brokers, ",")})
		if err != nil {
			t.Fatal(err)
		}
		err = p.Produce(context.Background(), stream.Message{Topic: "aegis.sealed", Key: []byte("acme/s00001"), Value: []byte(`{"not":"sealed"}`)})
		p.Close()
		if err != nil {
			t.Fatal(err)
		}
		code, out, errOut = runCtl(t, "replay", "--brokers", brokers, "--mode", "verify", "--session", "s00001")
		if code != ctl.ExitFailed || !strings.Contains(out+errOut, "MALFORMED") || !strings.Contains(out+errOut, "s00001") {
			t.Errorf("verify with a damaged record: exit %d, want %d with MALFORMED\n%s%s", code, ctl.ExitFailed, out, errOut)
		}
		code, out, errOut = runCtl(t, "replay", "--brokers", brokers, "--policy-archive", archive, "--mode", "exact", "--session", "s00001,s00002")
		if code != ctl.ExitFailed || !strings.Contains(out+errOut, "undecodable") {
			t.Errorf("exact with a damaged record: exit %d, want %d\n%s%s", code, ctl.ExitFailed, out, errOut)
		}

		// Such findings are sorted with the others, by tenant, session
		// and seq (0: an undecodable record has none), whatever the
		// partitions they were read from.
		first, second := undecodableOrder(t)
		p, err = stream.NewProducer(stream.ProducerConfig{Brokers: strings.Split(brokers, ",")})
		if err != nil {
			t.Fatal(err)
		}
		for _, s := range []string{first, second} {
			if err = p.Produce(context.Background(), stream.Message{Topic: "aegis.sealed", Key: []byte("acme/" + s), Value: []byte(`{"not":"sealed"}`)}); err != nil {
				break
			}
		}
		p.Close()
		if err != nil {
			t.Fatal(err)
		}
		code, out, errOut = runCtl(t, "replay", "--brokers", brokers, "--policy-archive", archive, "--mode", "exact", "--json", "--session", first+","+second)
		var rep replayer.Report
		if err := json.Unmarshal([]byte(out), &rep); err != nil || code != ctl.ExitFailed {
			t.Fatalf("exact with two damaged records: exit %d, %v\n%s%s", code, err, out, errOut)
		}
		if len(rep.Differences) != 2 || rep.Differences[0].SessionID != first || rep.Differences[1].SessionID != second {
			t.Errorf("differences not sorted by session: %+v", rep.Differences)
		}
	})

	if code, out, errOut := runCtl(t, "replay", "--store", url, "--mode", "exact"); code != ctl.ExitOK || !strings.Contains(out, "identical") {
		t.Fatalf("exact: exit %d\n%s%s", code, out, errOut)
	}
	if code, out, errOut := runCtl(t, "replay", "--store", url, "--mode", "verify"); code != ctl.ExitOK {
		t.Fatalf("verify: exit %d\n%s%s", code, out, errOut)
	}

	report := filepath.Join(t.TempDir(), "diff.json")
	code, out, errOut := runCtl(t, "replay", "--store", url, "--mode", "what-if", "--policy", denySearchBundle(t), "--report", report)
	if code != ctl.ExitOK {
		t.Fatalf("what-if: exit %d\n%s%s", code, out, errOut)
	}
	raw, err := os.ReadFile(report)
	if err != nil {
		t.Fatal(err)
	}
	var rep replayer.Report
	if err := json.Unmarshal(raw, &rep); err != nil {
		t.Fatal(err)
	}
	if rep.Sessions != replaySessions || rep.Events != 6*replaySessions || rep.Decisions != 3*replaySessions || len(rep.Changes) != replaySessions {
		t.Fatalf("what-if report: %d sessions, %d events, %d decisions, %d changes", rep.Sessions, rep.Events, rep.Decisions, len(rep.Changes))
	}
	for _, c := range rep.Changes {
		if c.Seq != 2 || c.Tool != "search" || c.CallID != "c2" || c.ArgsDigest == "" ||
			c.Before.Reason != "OK" || c.After.Reason != "PERMISSION_UNDECLARED" || c.After.PolicyRevision != rep.Candidate {
			t.Fatalf("unexpected change %+v (before %+v, after %+v)", c, c.Before, c.After)
		}
	}
	n := int64(replaySessions)
	if rep.Counts.ByReason["OK->PERMISSION_UNDECLARED"] != n || rep.Counts.ByTool["search"] != n || rep.Counts.ByTenant["acme"] != n {
		t.Fatalf("counts %+v", rep.Counts)
	}
	if !strings.Contains(out, "OK->PERMISSION_UNDECLARED") {
		t.Fatalf("summary lacks the reason table:\n%s", out)
	}

	// The selection narrows the job: one session by SQL predicate.
	code, out, errOut = runCtl(t, "replay", "--store", url, "--mode", "exact", "--where", "session_id = 's00007'", "--json")
	if code != ctl.ExitOK || !strings.Contains(out, `"sessions":1,`) {
		t.Fatalf("exact --where: exit %d\n%s%s", code, out, errOut)
	}
	// A selection that matches nothing replays nothing, not everything.
	for _, sel := range [][]string{{"--session", "nope1,nope2"}, {"--until", "1000"}, {"--where", "tool_name = 'nothing'"}} {
		code, out, errOut = runCtl(t, append([]string{"replay", "--store", url, "--mode", "exact", "--json"}, sel...)...)
		if code != ctl.ExitOK || !strings.Contains(out, `"sessions":0,`) {
			t.Fatalf("exact %v: exit %d\n%s%s", sel, code, out, errOut)
		}
	}
	if code, _, errOut := runCtl(t, "replay", "--store", url, "--mode", "exact", "--where", "1=1; DELETE FROM audit_events"); code != ctl.ExitUsage {
		t.Fatalf("--where with a second statement: exit %d %s", code, errOut)
	}
	if code, _, errOut := runCtl(t, "replay", "--store", url, "--mode", "exact", "--where", "(DELETE FROM audit_events) IS NULL"); code == ctl.ExitOK {
		t.Fatalf("--where that writes: exit %d %s", code, errOut)
	}

	if code, _, errOut := runCtl(t, "replay", "--store", url, "--mode", "exact", "--policy-archive", t.TempDir()); code != ctl.ExitRuntime || !strings.Contains(errOut, "replay_missing_revision") {
		t.Fatalf("missing revision: exit %d %s", code, errOut)
	}

	tamperFile(t, strings.TrimPrefix(url, "sqlite:"), "find-s00042", "FIND-s00042")
	code, out, errOut = runCtl(t, "replay", "--store", url, "--mode", "exact")
	if code != ctl.ExitFailed || !strings.Contains(errOut, "DIFF acme/s00042 seq 2 input_digest") {
		t.Fatalf("exact after tampering: exit %d\n%s%s", code, out, errOut)
	}
	for _, sel := range [][]string{{"--session", "s00041,s00043"}, {"--where", "session_id <> 's00042'"}} {
		code, out, errOut = runCtl(t, append([]string{"replay", "--store", url, "--mode", "verify"}, sel...)...)
		if code != ctl.ExitOK {
			t.Fatalf("verify %v without the tampered session: exit %d\n%s%s", sel, code, out, errOut)
		}
	}
	code, out, errOut = runCtl(t, "replay", "--store", url, "--mode", "verify")
	if code != ctl.ExitFailed || !strings.Contains(errOut, "FAIL acme/s00042 seq 2: HASH_MISMATCH") {
		t.Fatalf("verify after tampering: exit %d\n%s%s", code, out, errOut)
	}
}

// undecodableOrder returns two sessions of the recorded ones, first < second,
// whose records are on partitions read in the other order (second's first).
func undecodableOrder(t *testing.T) (first, second string) {
	t.Helper()
	part := func(i int) int32 { return stream.Partition([]byte(fmt.Sprintf("acme/s%05d", i)), 3) }
	for i := 10; i < 100; i++ {
		for j := i + 1; j < 100; j++ {
			if part(j) < part(i) {
				return fmt.Sprintf("s%05d", i), fmt.Sprintf("s%05d", j)
			}
		}
	}
	t.Fatal("no two sessions on partitions in reverse order")
	return "", ""
}

// tamperFile edits the SQLite file in place as an attacker with write
// access to the disk would: one occurrence of old, replaced by new of the
// same length.
func tamperFile(t *testing.T, path, old, new string) {
	t.Helper()
	if fi, err := os.Stat(path + "-wal"); err == nil && fi.Size() > 0 {
		t.Fatalf("%s-wal is not empty: the database was not checkpointed", path)
	}
	b, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	if c := bytes.Count(b, []byte(old)); c != 1 {
		t.Fatalf("%q occurs %d times in %s, want 1", old, c, path)
	}
	if err := os.WriteFile(path, bytes.Replace(b, []byte(old), []byte(new), 1), 0o644); err != nil {
		t.Fatal(err)
	}
}
