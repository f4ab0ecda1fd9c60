package ctl

import (
	"context"
	"encoding/json"
	"fmt"
	"math"
	"os"
	"regexp"
	"strings"
	"testing"
	"time"

	"aegis.dev/aegis/projector"
	"aegis.dev/aegis/projector/stores"
	"aegis.dev/aegis/projector/storetest"
	"aegis.dev/aegis/schemas/chain"
	"aegis.dev/aegis/schemas/envelope"
)

// docQueries returns the queries of docs/audit-queries.md for one dialect,
// by name.
func docQueries(t testing.TB, dialect string) map[string]string {
	t.Helper()
	raw, err := os.ReadFile("../../docs/audit-queries.md")
	if err != nil {
		t.Fatal(err)
	}
	re := regexp.MustCompile("(?s)```sql\n-- (clickhouse|sqlite): ([a-z-]+)\n(.*?)```")
	out := map[string]string{}
	for _, m := range re.FindAllStringSubmatch(string(raw), -1) {
		if m[1] == dialect {
			out[m[2]] = strings.TrimSpace(m[3])
		}
	}
	return out
}

const day0 = 1767225600000 // 2026-01-01T00:00:00Z

// auditFixture is a small fleet history that every documented query has
// something to find in.
func auditFixture(t testing.TB) *projector.Batch {
	t.Helper()
	dec := func(o envelope.Outcome, reason string) *envelope.Decision {
		return &envelope.Decision{Outcome: o, Reason: reason, PolicyRevision: "sha256:p", ManifestDigest: "sha256:m", InputDigest: "sha256:i"}
	}
	type ev struct {
		typ     envelope.Type
		payload string
		d       *envelope.Decision
	}
	prop := func(tool, call string, d *envelope.Decision) ev {
		return ev{envelope.ToolCallProposed, fmt.Sprintf(`{"args":{},"call_id":%q,"tool_name":%q}`, call, tool), d}
	}
	sessions := []struct {
		tenant, session string
		events          []ev
	}{
		{"acme", "s1", []ev{prop("web_fetch", "c1", dec(envelope.Deny, envelope.ReasonEgressDeny)), prop("web_fetch", "c2", dec(envelope.Deny, envelope.ReasonBudgetExceeded))}},
		{"acme", "s2", []ev{{envelope.ToolResult, `{"call_id":"c0","tool_name":"web_fetch"}`, nil}, prop("shell", "c3", dec(envelope.Deny, envelope.ReasonTaintedToHighRisk))}},
		{"acme", "s3", []ev{prop("deploy", "c9", dec(envelope.RequireApproval, envelope.ReasonApprovalRequired))}},
		{"globex", "s1", []ev{prop("deploy", "a1", dec(envelope.RequireApproval, envelope.ReasonApprovalRequired)),
			{envelope.ApprovalDecided, `{"call_id":"a1","decision":"allow"}`, nil},
			prop("deploy", "a1", &envelope.Decision{Outcome: envelope.Allow, Reason: envelope.ReasonOK, Constraints: envelope.Constraints{MaxOutputBytes: 1024, TimeoutMs: 5000}, PolicyRevision: "sha256:p", ManifestDigest: "sha256:m", InputDigest: "sha256:i"})}},
		// c5 approved for staging, then proposed for prod: pending again.
		{"acme", "s4", []ev{{envelope.ToolCallProposed, `{"args":{"env":"staging"},"call_id":"c5","tool_name":"deploy"}`, dec(envelope.RequireApproval, envelope.ReasonApprovalRequired)},
			{envelope.ApprovalDecided, `{"call_id":"c5","decision":"allow"}`, nil},
			{envelope.ToolCallProposed, `{"args":{"env":"prod"},"call_id":"c5","tool_name":"deploy"}`, dec(envelope.RequireApproval, envelope.ReasonApprovalRequired)}}},
		{"globex", "s2", []ev{{envelope.ModelCallStarted, `{}`, nil}, {envelope.ModelCallStarted, `{}`, nil}, {envelope.ModelCallStarted, `{}`, nil}}},
		{"globex", "s3", []ev{{envelope.ModelCallStarted, `{}`, nil}, {envelope.ModelCallStarted, `{}`, nil}}},
	}
	var sealed []*envelope.Event
	for _, s := range sessions {
		var head *chain.Head
		for i, e := range s.events {
			x := &envelope.Event{V: 1, TenantID: s.tenant, SessionID: s.session, Seq: uint64(i + 1), TsUnixMs: day0 + int64(i)*1000,
				Type: e.typ, Payload: json.RawMessage(e.payload), Decision: e.d}
			h, err := chain.Link(head, x)
			if err != nil {
				t.Fatal(err)
			}
			head = &h
			sealed = append(sealed, x)
		}
	}
	b := storetest.BatchOf(t, sealed)
	// globex/s2 loses its seq 2, globex/s3 its tail: heads stay.
	var keep []projector.EventRow
	for _, r := range b.Events {
		e := r.Event
		if e.TenantID == "globex" && (e.SessionID == "s2" && e.Seq == 2 || e.SessionID == "s3" && e.Seq == 2) {
			continue
		}
		keep = append(keep, r)
	}
	b.Events = keep
	return b
}

var wantQueries = map[string]string{
	"denials-by-reason": "[acme 2026-01-01 BUDGET_EXCEEDED 1] [acme 2026-01-01 EGRESS_DENY 1] [acme 2026-01-01 TAINTED_TO_HIGH_RISK 1]",
	"budget-sessions":   "[acme s1 1 2]",
	"tainted-proposals": "[acme s2 2 shell deny TAINTED_TO_HIGH_RISK]",
	"tainted-sessions":  "[acme s2 2 1]",
	"pending-approvals": fmt.Sprintf("[acme s3 c9 deploy %d] [acme s4 c5 deploy %d]", day0, day0+2000),
	"broken-links":      "[globex s2 3]",
	"head-mismatches":   "[globex s3 2 1]",
	"top-tools":         "[acme deploy 3 0] [acme web_fetch 2 2] [acme shell 1 1] [globex deploy 2 0]",
}

func testDocQueries(t *testing.T, dialect, url string) {
	queries := docQueries(t, dialect)
	if len(queries) != len(wantQueries) {
		t.Fatalf("docs/audit-queries.md has %d %s queries, the test knows %d", len(queries), dialect, len(wantQueries))
	}
	b := auditFixture(t)
	writeStore(t, url, b)
	writeStore(t, url, b) // a redelivery must not change any answer
	st, err := stores.Open(context.Background(), url)
	if err != nil {
		t.Fatal(err)
	}
	defer st.Close()
	for name, q := range queries {
		t.Run(name, func(t *testing.T) {
			want, ok := wantQueries[name]
			if !ok {
				t.Fatalf("no expectation for query %s", name)
			}
			_, rows, err := st.Query(context.Background(), q)
			if err != nil {
				t.Fatal(err)
			}
			got := make([]string, len(rows))
			for i, r := range rows {
				got[i] = fmt.Sprint(r)
			}
			if s := strings.Join(got, " "); s != want {
				t.Errorf("got  %s\nwant %s", s, want)
			}
		})
	}
}

func TestDocQueriesSQLite(t *testing.T) { testDocQueries(t, "sqlite", sqliteURL(t)) }

func TestIntegrationDocQueriesClickHouse(t *testing.T) {
	testDocQueries(t, "clickhouse", clickhouseURL(t))
}

func TestSQLFormats(t *testing.T) {
	url := sqliteURL(t)
	writeStore(t, url, auditFixture(t))
	q := "SELECT tenant_id, seq, reason FROM decisions WHERE session_id = 's1' AND tenant_id = 'acme' ORDER BY seq"
	cases := []struct {
		name, format, want string
	}{
		{"table", "table", "tenant_id  seq  reason\nacme       1    EGRESS_DENY\nacme       2    BUDGET_EXCEEDED\n(2 rows)\n"},
		{"csv", "csv", "tenant_id,seq,reason\nacme,1,EGRESS_DENY\nacme,2,BUDGET_EXCEEDED\n"},
		{"json", "json", `{"tenant_id":"acme","seq":1,"reason":"EGRESS_DENY"}` + "\n" + `{"tenant_id":"acme","seq":2,"reason":"BUDGET_EXCEEDED"}` + "\n"},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			code, out, stderr := run(t, "", "sql", q, "--store", url, "--format", c.format)
			if code != ExitOK || out != c.want {
				t.Errorf("code %d stderr %q\ngot  %q\nwant %q", code, stderr, out, c.want)
			}
		})
	}
	errs := []struct {
		name string
		args []string
		code int
	}{
		{"no store", []string{"sql", q}, ExitUsage},
		{"no query", []string{"sql", "--store", url}, ExitUsage},
		{"bad format", []string{"sql", q, "--store", url, "--format", "xml"}, ExitUsage},
		{"bad store", []string{"sql", q, "--store", "mysql://x"}, ExitRuntime},
		{"bad sql", []string{"sql", "SELECT nope FROM decisions", "--store", url}, ExitFailed},
		{"write refused", []string{"sql", "DELETE FROM decisions", "--store", url}, ExitFailed},
	}
	for _, c := range errs {
		t.Run(c.name, func(t *testing.T) {
			if code, _, stderr := run(t, "", c.args...); code != c.code {
				t.Errorf("exit %d, want %d (stderr %q)", code, c.code, stderr)
			}
		})
	}
	// The write was refused: the rows are still there.
	if code, out, _ := run(t, "", "sql", "SELECT count(*) AS n FROM decisions", "--store", url, "--format", "csv"); code != ExitOK || out != "n\n8\n" {
		t.Errorf("after a refused DELETE: %q", out)
	}
}

// TestSQLJSONArrayValues: the elements of an array (what ClickHouse's
// Array columns come back as) are written as single values are: an
// infinite or NaN real as its text, a time as RFC 3339.
func TestSQLJSONArrayValues(t *testing.T) {
	var b strings.Builder
	row := []any{[]any{math.Inf(1), math.NaN(), 1.5, []any{math.Inf(-1)}}, []any{time.Date(2026, 11, 29, 1, 2, 3, 0, time.UTC)}}
	if err := writeRows(&b, "json", []string{"xs", "ts"}, [][]any{row}); err != nil {
		t.Fatal(err)
	}
	if want := `{"xs":["+Inf","NaN",1.5,["-Inf"]],"ts":["2026-11-29T01:02:03Z"]}` + "\n"; b.String() != want {
		t.Fatalf("got  %q\nwant %q", b.String(), want)
	}
}

// TestSQLJSONDuplicateColumns: --format json refuses two columns of one
// name (exit 1, naming it) instead of writing objects with a repeated key;
// the table and CSV print them as they are.
func TestSQLJSONDuplicateColumns(t *testing.T) {
	url := sqliteURL(t)
	writeStore(t, url, auditFixture(t))
	q := "SELECT a.seq, b.seq FROM audit_events a JOIN audit_events b ON a.seq = b.seq LIMIT 1"
	code, out, stderr := run(t, "", "sql", q, "--store", url, "--format", "json")
	if code != ExitFailed || out != "" || !strings.Contains(stderr, `two columns are named "seq"`) {
		t.Fatalf("json: exit %d, out %q, stderr %q", code, out, stderr)
	}
	if code, out, stderr := run(t, "", "sql", q, "--store", url, "--format", "csv"); code != ExitOK || !strings.HasPrefix(out, "seq,seq\n") {
		t.Fatalf("csv: exit %d, out %q, stderr %q", code, out, stderr)
	}
}

// TestSQLJSONInfinity: a real SQLite holds as infinity has no JSON number;
// --format json writes it as the string the table and CSV print, rather
// than failing the query as a write error (exit 3).
func TestSQLJSONInfinity(t *testing.T) {
	url := sqliteURL(t)
	writeStore(t, url, auditFixture(t))
	code, out, stderr := run(t, "", "sql", "SELECT 1e999 AS x, -1e999 AS y, 1.5 AS z", "--store", url, "--format", "json")
	if want := `{"x":"+Inf","y":"-Inf","z":1.5}` + "\n"; code != ExitOK || out != want {
		t.Fatalf("exit %d stderr %q\ngot  %q\nwant %q", code, stderr, out, want)
	}
}
