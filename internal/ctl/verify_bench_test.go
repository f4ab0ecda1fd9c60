package ctl

import (
	"context"
	"encoding/json"
	"fmt"
	"testing"
	"time"

	"aegis.dev/aegis/projector"
	"aegis.dev/aegis/projector/stores"
	"aegis.dev/aegis/projector/storetest"
	"aegis.dev/aegis/schemas/chain"
	"aegis.dev/aegis/schemas/envelope"
)

// benchBatch is sessions×perSession sealed events shaped like agent traffic:
// model calls, proposals with decisions, tool results (~300-byte records).
func benchBatch(tb testing.TB, sessions, perSession int) *projector.Batch {
	tb.Helper()
	events := make([]*envelope.Event, 0, sessions*perSession)
	for s := range sessions {
		var head *chain.Head
		for i := range perSession {
			e := &envelope.Event{V: 1, TenantID: fmt.Sprintf("tenant-%d", s%10), SessionID: fmt.Sprintf("session-%06d", s),
				Seq: uint64(i + 1), TsUnixMs: day0 + int64(i)*1000, Manifest: "support-bot@1.0.0"}
			switch i % 3 {
			case 0:
				e.Type, e.Payload = envelope.ModelCallStarted, json.RawMessage(`{"call_id":"m1","model":"gpt-x"}`)
			case 1:
				e.Type = envelope.ToolCallProposed
				e.Payload = json.RawMessage(fmt.Sprintf(`{"args":{"url":"https://api.example.com/v1/items/%d"},"call_id":"c%d","tool_name":"web_fetch"}`, i, i))
				e.Decision = &envelope.Decision{Outcome: envelope.Allow, Reason: envelope.ReasonOK, Constraints: envelope.Constraints{MaxOutputBytes: 1 << 20, TimeoutMs: 30000},
					PolicyRevision: "sha256:4f2a", ManifestDigest: "sha256:9c1d", InputDigest: "sha256:77e0"}
			default:
				e.Type, e.Payload = envelope.ToolResult, json.RawMessage(fmt.Sprintf(`{"call_id":"c%d","output_bytes":512,"tool_name":"web_fetch"}`, i-1))
			}
			h, err := chain.Link(head, e)
			if err != nil {
				tb.Fatal(err)
			}
			head = &h
			events = append(events, e)
		}
	}
	// The rows the projector writes for them.
	return storetest.BatchOf(tb, events)
}

// writeInParts writes batch to st as the projector's batches would reach
// it, at most 5,000 rows of a table per write, heads last.
func writeInParts(tb testing.TB, st stores.Store, batch *projector.Batch) {
	tb.Helper()
	const part = 5000
	var parts []*projector.Batch
	for i := 0; i < len(batch.Events); i += part {
		parts = append(parts, &projector.Batch{Events: batch.Events[i:min(i+part, len(batch.Events))]})
	}
	for i := 0; i < len(batch.Decisions); i += part {
		parts = append(parts, &projector.Batch{Decisions: batch.Decisions[i:min(i+part, len(batch.Decisions))]})
	}
	for i := 0; i < len(batch.Snapshots); i += part {
		parts = append(parts, &projector.Batch{Snapshots: batch.Snapshots[i:min(i+part, len(batch.Snapshots))]})
	}
	parts = append(parts, &projector.Batch{Heads: batch.Heads})
	for _, p := range parts {
		if err := st.Write(context.Background(), p); err != nil {
			tb.Fatal(err)
		}
	}
}

func benchVerifyStore(b *testing.B, url string) {
	const sessions, per = 2000, 50
	batch := benchBatch(b, sessions, per)
	st, err := stores.Open(context.Background(), url)
	if err != nil {
		b.Fatal(err)
	}
	defer st.Close()
	writeInParts(b, st, batch)
	b.ResetTimer()
	start := time.Now()
	for b.Loop() {
		rep, err := VerifyStore(context.Background(), st, projector.Filter{}, 0)
		if err != nil || !rep.OK || rep.Events != sessions*per {
			b.Fatalf("%+v %v", rep, err)
		}
	}
	b.ReportMetric(float64(b.N)*sessions*per/time.Since(start).Seconds(), "events/s")
}

func BenchmarkVerifyStoreSQLite(b *testing.B) { benchVerifyStore(b, sqliteURL(b)) }

func BenchmarkIntegrationVerifyStoreClickHouse(b *testing.B) { benchVerifyStore(b, clickhouseURL(b)) }

// BenchmarkVerifySelectionSQLite verifies 20 selected sessions of a store
// that holds 50,000: the cost should follow the selection, not the store.
func BenchmarkVerifySelectionSQLite(b *testing.B) {
	const sessions, per, selected = 50000, 3, 20
	batch := benchBatch(b, sessions, per)
	st, err := stores.Open(context.Background(), sqliteURL(b))
	if err != nil {
		b.Fatal(err)
	}
	defer st.Close()
	writeInParts(b, st, batch)
	var f projector.Filter
	for i := range selected {
		h := batch.Heads[i*sessions/selected]
		f.Sessions = append(f.Sessions, projector.SessionKey{TenantID: h.TenantID, SessionID: h.SessionID})
	}
	b.ResetTimer()
	for b.Loop() {
		rep, err := VerifyStore(context.Background(), st, f, 0)
		if err != nil || !rep.OK || rep.Events != selected*per {
			b.Fatalf("%+v %v", rep, err)
		}
	}
}
