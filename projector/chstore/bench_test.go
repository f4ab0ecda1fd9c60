package chstore_test

import (
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"aegis.dev/aegis/projector"
	"aegis.dev/aegis/schemas/chain"
	"aegis.dev/aegis/schemas/envelope"
)

// benchRows is n sealed events (~300 bytes each) as audit_events rows.
func benchRows(tb testing.TB, n int) []projector.EventRow {
	tb.Helper()
	rows := make([]projector.EventRow, 0, n)
	var head *chain.Head
	for i := range n {
		if i%50 == 0 {
			head = nil
		}
		e := &envelope.Event{V: 1, TenantID: "acme", SessionID: fmt.Sprintf("s%06d", i/50), Seq: uint64(i%50 + 1), TsUnixMs: 1767225600000 + int64(i),
			Type: envelope.ToolCallProposed, Payload: json.RawMessage(fmt.Sprintf(`{"args":{"url":"https://api.example.com/v1/items/%d"},"call_id":"c%d","tool_name":"web_fetch"}`, i, i)),
			Decision: &envelope.Decision{Outcome: envelope.Allow, Reason: "OK", Constraints: envelope.Constraints{MaxOutputBytes: 1 << 20, TimeoutMs: 30000}, PolicyRevision: "sha256:p", ManifestDigest: "sha256:m", InputDigest: "sha256:i"}}
		h, err := chain.Link(head, e)
		if err != nil {
			tb.Fatal(err)
		}
		head = &h
		rows = append(rows, projector.NewEventRow(e, 0, int64(i)))
	}
	return rows
}

// BenchmarkIntegrationWrite compares the store's batched inserts (the
// projector's write path, 5000-row batches) with the floor: clickhouse-client
// bulk-inserting the same rows as TSV, in the same run.
func BenchmarkIntegrationWrite(b *testing.B) {
	const n = 50000
	rows := benchRows(b, n)
	s := openFresh(b)
	ctx := context.Background()
	var tsv bytes.Buffer
	for _, r := range rows {
		e := r.Event
		dec, _ := projector.DecisionJSON(e)
		esc := strings.NewReplacer(`\`, `\\`, "\t", `\t`, "\n", `\n`)
		fmt.Fprintf(&tsv, "%s\t%s\t%d\t%d\t%s\t%d\t%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\t%d\t%d\n",
			e.TenantID, e.SessionID, e.Seq, e.TsUnixMs, projector.Date(e.TsUnixMs).Format("2006-01-02"), e.V, e.Type, e.Manifest,
			r.ToolName, r.CallID, r.Outcome, r.Reason, r.PolicyRevision, esc.Replace(string(e.Payload)), esc.Replace(dec), e.PrevHash, e.Hash, r.Partition, r.Offset)
	}
	script := filepath.Join("..", "..", "deploy", "clickhouse", "clickhouse.sh")
	var storeTime, floorTime time.Duration
	for b.Loop() {
		start := time.Now()
		for i := 0; i < n; i += 5000 {
			if err := s.Write(ctx, &projector.Batch{Events: rows[i : i+5000]}); err != nil {
				b.Fatal(err)
			}
		}
		storeTime += time.Since(start)
		start = time.Now()
		cmd := exec.Command(script, "client", "--database", s.Database(), "--query",
			"INSERT INTO audit_events (tenant_id, session_id, seq, ts_unix_ms, event_date, v, event_type, manifest, tool_name, call_id, outcome, reason, policy_revision, payload, decision, prev_hash, hash, kafka_partition, kafka_offset) FORMAT TabSeparated")
		cmd.Stdin = bytes.NewReader(tsv.Bytes())
		if out, err := cmd.CombinedOutput(); err != nil {
			b.Fatalf("clickhouse-client: %v: %s", err, out)
		}
		floorTime += time.Since(start)
	}
	store := float64(b.N*n) / storeTime.Seconds()
	floor := float64(b.N*n) / floorTime.Seconds()
	b.ReportMetric(store, "store-rows/s")
	b.ReportMetric(floor, "client-rows/s")
	b.ReportMetric(100*store/floor, "%-of-floor")
}
