package decider

import (
	"bytes"
	"encoding/json"
	"fmt"
	"strings"
	"testing"

	"aegis.dev/aegis/decider/policy"
	"aegis.dev/aegis/decider/session"
	"aegis.dev/aegis/internal/grant"
	"aegis.dev/aegis/internal/pipeline"
	"aegis.dev/aegis/internal/stream"
)

var approvalSecret = bytes.Repeat([]byte("a"), 32)

func eventRec(session string, seq uint64, typ, payload string) *stream.Record {
	key := []byte("acme/" + session)
	v := fmt.Sprintf(`{"tenant_id":"acme","session_id":%q,"seq":%d,"ts_unix_ms":%d,"event_type":%q,"payload":%s}`, session, seq, 1767225600000+seq, typ, payload)
	return &stream.Record{Topic: topics.Events, Partition: stream.Partition(key, 3), Key: key, Value: []byte(v)}
}

const sendEmail = `{"tool_name":"send_email","call_id":"c1","args":{"to":"a@example.com"}}`

func signed(tb testing.TB, secret []byte, session, payload string) string {
	tb.Helper()
	p, err := grant.Sign(secret, "acme", session, []byte(payload))
	if err != nil {
		tb.Fatal(err)
	}
	return string(p)
}

// TestApprovalNeedsGrant: with the approval secret, the decider applies
// an APPROVAL_DECIDED only with a grant of that secret for that session
// and that exact payload. Anything else is rejected
// APPROVAL_UNAUTHENTICATED without taking the seq, and the call still
// needs approval.
func TestApprovalNeedsGrant(t *testing.T) {
	digest, err := session.CallDigest("send_email", json.RawMessage(`{"to":"a@example.com"}`))
	if err != nil {
		t.Fatal(err)
	}
	call := `"tool_name":"send_email","args_digest":"` + digest + `"`
	allow := `{"call_id":"c1","decision":"allow","approver":"ops",` + call + `}`
	deny := `{"call_id":"c1","decision":"deny","approver":"ops",` + call + `}`
	// The secret's MAC over a decision that names only the call_id (what
	// a holder of the secret could produce by mistake): it would settle
	// whatever is pending under c1, arguments nobody saw included.
	bare := `{"call_id":"c1","decision":"allow","approver":"ops"}`
	bareMAC, err := grant.Compute(approvalSecret, "acme", "s", []byte(bare))
	if err != nil {
		t.Fatal(err)
	}
	forged := []struct{ name, payload string }{
		{"unsigned", allow},
		{"wrong secret", signed(t, bytes.Repeat([]byte("b"), 32), "s", allow)},
		{"deny made allow", strings.Replace(signed(t, approvalSecret, "s", deny), `"deny"`, `"allow"`, 1)},
		{"other call_id", strings.Replace(signed(t, approvalSecret, "s", strings.Replace(allow, `"c1"`, `"c9"`, 1)), `"c9"`, `"c1"`, 1)},
		{"copied from another session", signed(t, approvalSecret, "other", allow)},
		{"null grant", `{"call_id":"c1","decision":"allow","approver":"ops","grant":null}`},
		{"well-shaped garbage", `{"call_id":"c1","decision":"allow","approver":"ops","grant":"` + strings.Repeat("A", 43) + `"}`},
		{"the secret's grant of a decision without tool and arguments", `{"call_id":"c1","decision":"allow","approver":"ops","grant":"` + bareMAC + `"}`},
	}
	stage := NewStage(newEngine(t, policy.Default()), StageConfig{Topics: topics, Partitions: 3, ApprovalSecret: approvalSecret}, nil, nil)
	for _, tc := range forged {
		t.Run(tc.name, func(t *testing.T) {
			p := stage.NewProcessor(stream.Partition([]byte("acme/s"), 3))
			out := process(t, p,
				eventRec("s", 1, "TOOL_CALL_PROPOSED", sendEmail),
				eventRec("s", 2, "APPROVAL_DECIDED", tc.payload),
				// The forged decision took no seq: the call is proposed
				// again at 2, and still needs approval.
				eventRec("s", 2, "TOOL_CALL_PROPOSED", sendEmail))
			if n := len(out[topics.Rejected]); n != 1 {
				t.Fatalf("%d rejections, want 1", n)
			}
			var rj pipeline.Rejection
			if err := json.Unmarshal(out[topics.Rejected][0].Value, &rj); err != nil {
				t.Fatal(err)
			}
			if rj.Reason != pipeline.ReasonApprovalUnauthenticated || rj.Stage != StageName || rj.Seq != 2 || rj.SessionID != "s" {
				t.Fatalf("rejection %+v", rj)
			}
			if len(out[topics.Decided]) != 2 {
				t.Fatalf("%d decided events, want the two proposals", len(out[topics.Decided]))
			}
			for _, d := range out[topics.Decided] {
				if bytes.Contains(d.Value, []byte("APPROVAL_DECIDED")) {
					t.Fatalf("forged approval decided: %s", d.Value)
				}
			}
			reasons := replyReasons(t, out)
			if want := "[APPROVAL_REQUIRED APPROVAL_REQUIRED]"; fmt.Sprint(reasons) != want {
				t.Fatalf("reasons %v, want %s", reasons, want)
			}
		})
	}
	t.Run("granted", func(t *testing.T) {
		p := stage.NewProcessor(stream.Partition([]byte("acme/s"), 3))
		out := process(t, p,
			eventRec("s", 1, "TOOL_CALL_PROPOSED", sendEmail),
			eventRec("s", 2, "APPROVAL_DECIDED", signed(t, approvalSecret, "s", allow)),
			eventRec("s", 3, "TOOL_CALL_PROPOSED", sendEmail))
		if len(out[topics.Rejected]) != 0 {
			t.Fatalf("rejected: %s", out[topics.Rejected][0].Value)
		}
		if want := "[APPROVAL_REQUIRED OK]"; fmt.Sprint(replyReasons(t, out)) != want {
			t.Fatalf("reasons %v, want %s", replyReasons(t, out), want)
		}
		// The sealed log keeps the grant: the decided event is the
		// accepted one.
		if !bytes.Contains(out[topics.Decided][1].Value, []byte(`"grant":"`)) {
			t.Fatalf("decided approval without its grant: %s", out[topics.Decided][1].Value)
		}
	})
	t.Run("granted deny", func(t *testing.T) {
		p := stage.NewProcessor(stream.Partition([]byte("acme/s"), 3))
		out := process(t, p,
			eventRec("s", 1, "TOOL_CALL_PROPOSED", sendEmail),
			eventRec("s", 2, "APPROVAL_DECIDED", signed(t, approvalSecret, "s", deny)),
			eventRec("s", 3, "TOOL_CALL_PROPOSED", sendEmail))
		if len(out[topics.Rejected]) != 0 || len(out[topics.Decided]) != 3 {
			t.Fatalf("%d rejected, %d decided; want 0 and 3", len(out[topics.Rejected]), len(out[topics.Decided]))
		}
	})
	t.Run("no secret honours any", func(t *testing.T) {
		// The explicit opt-out (aegisd --unauthenticated-approvals): what
		// every decider did before grants.
		plain := NewStage(newEngine(t, policy.Default()), StageConfig{Topics: topics, Partitions: 3}, nil, nil)
		out := process(t, plain.NewProcessor(stream.Partition([]byte("acme/s"), 3)),
			eventRec("s", 1, "TOOL_CALL_PROPOSED", sendEmail),
			eventRec("s", 2, "APPROVAL_DECIDED", allow),
			eventRec("s", 3, "TOOL_CALL_PROPOSED", sendEmail))
		if want := "[APPROVAL_REQUIRED OK]"; fmt.Sprint(replyReasons(t, out)) != want {
			t.Fatalf("reasons %v, want %s", replyReasons(t, out), want)
		}
	})
}

func replyReasons(tb testing.TB, out map[string][]stream.Output) []string {
	tb.Helper()
	var reasons []string
	for _, o := range out[topics.Decisions] {
		var r Reply
		if err := json.Unmarshal(o.Value, &r); err != nil {
			tb.Fatal(err)
		}
		reasons = append(reasons, r.Reason)
	}
	return reasons
}

// TestManifestMismatchRejected: a session's manifest is its first event's.
// A later event that names another manifest is rejected MANIFEST_MISMATCH
// and takes no seq; one that names the same manifest, or none, is
// accepted.
func TestManifestMismatchRejected(t *testing.T) {
	stage := NewStage(newEngine(t, policy.Default()), StageConfig{Topics: topics, Partitions: 3}, nil, nil)
	withManifest := func(seq uint64, ref, typ, payload string) *stream.Record {
		r := eventRec("m", seq, typ, payload)
		if ref != "" {
			r.Value = bytes.Replace(r.Value, []byte(`"event_type"`), []byte(`"manifest":"`+ref+`","event_type"`), 1)
		}
		return r
	}
	out := process(t, stage.NewProcessor(stream.Partition([]byte("acme/m"), 3)),
		withManifest(1, "support", "MODEL_CALL_STARTED", `{}`),
		withManifest(2, "deploy-bot", "TOOL_CALL_PROPOSED", sendEmail),
		withManifest(2, "support", "MODEL_CALL_STARTED", `{}`),
		withManifest(3, "", "MODEL_CALL_STARTED", `{}`),
		withManifest(4, "support@1.0.0", "MODEL_CALL_STARTED", `{}`))
	var reasons []string
	for _, o := range out[topics.Rejected] {
		var rj pipeline.Rejection
		if err := json.Unmarshal(o.Value, &rj); err != nil {
			t.Fatal(err)
		}
		reasons = append(reasons, fmt.Sprintf("%s@%d", rj.Reason, rj.Seq))
	}
	if want := "[MANIFEST_MISMATCH@2 MANIFEST_MISMATCH@4]"; fmt.Sprint(reasons) != want {
		t.Fatalf("rejections %v, want %s (the same manifest by another reference is another reference)", reasons, want)
	}
	if n := len(out[topics.Decided]); n != 3 {
		t.Fatalf("%d decided events, want 3 (seqs 1, 2 and 3)", n)
	}
}
