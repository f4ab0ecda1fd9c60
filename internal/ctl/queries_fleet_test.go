package ctl

import (
	"cmp"
	"context"
	"encoding/json"
	"fmt"
	"math/rand/v2"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"testing"
	"time"

	"aegis.dev/aegis/decider"
	"aegis.dev/aegis/decider/policy"
	"aegis.dev/aegis/decider/session"
	"aegis.dev/aegis/projector"
	"aegis.dev/aegis/projector/stores"
	"aegis.dev/aegis/projector/storetest"
	"aegis.dev/aegis/schemas/canon"
	"aegis.dev/aegis/schemas/chain"
	"aegis.dev/aegis/schemas/envelope"
	"aegis.dev/aegis/schemas/manifest"
)

// fleetManifest declares some tools, one needing approval, with a budget
// that long sessions reach.
const fleetManifest = `{
  "schema": "aegis.dev/manifest/v0.1", "name": "fleet-bot", "version": "1.0.0", "publisher": "acme",
  "permissions": {
    "tools": ["search", "web_fetch", "exec", "send_email", "write_file"],
    "net": {"domains": ["api.example.com"]},
    "exec": {"allowed_bins": ["ls"]},
    "approval_required": ["send_email"],
    "budgets": {"max_tool_calls": 7}
  },
  "sandbox": {"required": true}, "integrity": {}
}`

// sealedFleet generates a fleet history and runs it through the decider's
// engine and the chain, as the pipeline does: the sealed records the
// projector reads. Sessions start on several days, some across midnight
// UTC, some within the last minute and some hours ago, so that every
// documented query has rows to find and rows to leave out.
func sealedFleet(t testing.TB, now time.Time) []*envelope.Event {
	t.Helper()
	path := filepath.Join(t.TempDir(), "fleet.json")
	if err := os.WriteFile(path, []byte(fleetManifest), 0o600); err != nil {
		t.Fatal(err)
	}
	m, err := manifest.Load(path)
	if err != nil {
		t.Fatal(err)
	}
	pe, err := policy.New(policy.Default())
	if err != nil {
		t.Fatal(err)
	}
	eng := decider.NewEngine(pe, staticManifest{m})
	rng := rand.New(rand.NewPCG(7, 11))
	starts := []int64{
		time.Date(2026, 1, 1, 23, 59, 40, 0, time.UTC).UnixMilli(), // crosses midnight
		time.Date(2026, 3, 15, 12, 0, 0, 0, time.UTC).UnixMilli(),
		now.Add(-3 * time.Hour).UnixMilli(),
		now.Add(-time.Minute).UnixMilli(),
	}
	// Tool names beyond the manifest: unicode, quotes, a control byte.
	undeclared := []string{"deploy", "日本語ツール", `q"uote`, "nul\x00tool", "Zebra"}
	var sealed []*envelope.Event
	for _, tenant := range []string{"acme", "globex", "initech"} {
		for s := range 14 {
			sid := fmt.Sprintf("s-%02d", s)
			ts := starts[rng.IntN(len(starts))] + rng.Int64N(5000)
			var head *chain.Head
			var approvals []string // call ids that required approval
			calls := 0
			snap := session.New(tenant, sid)
			n := 3 + rng.IntN(16)
			for seq := uint64(1); seq <= uint64(n); seq++ {
				var typ envelope.Type
				var payload any
				switch r := rng.IntN(100); {
				case r < 50:
					typ = envelope.ToolCallProposed
					calls++
					callID := fmt.Sprintf("c%d", calls)
					var tool string
					args := map[string]any{}
					switch k := rng.IntN(10); {
					case k < 2:
						tool, args["q"] = "search", fmt.Sprintf("q%d", rng.IntN(3))
					case k < 4:
						tool, args["url"] = "web_fetch", []string{"https://api.example.com/x", "https://evil.example.net/y"}[rng.IntN(2)]
					case k < 5:
						tool, args["bin"] = "exec", []string{"ls", "rm"}[rng.IntN(2)]
					case k < 8:
						tool, args["to"] = "send_email", []string{"a@example.com", "b@example.com"}[rng.IntN(2)]
						if len(approvals) > 0 && rng.IntN(2) == 0 {
							callID = approvals[rng.IntN(len(approvals))] // proposed again
						}
					default:
						tool = undeclared[rng.IntN(len(undeclared))]
					}
					payload = map[string]any{"tool_name": tool, "call_id": callID, "args": args}
				case r < 62:
					typ, payload = []envelope.Type{envelope.ModelCallStarted, envelope.ModelCallFinished}[rng.IntN(2)], map[string]any{"model": "m"}
				case r < 72:
					typ, payload = envelope.ToolResult, map[string]any{"tool_name": "web_fetch", "call_id": fmt.Sprintf("c%d", calls)}
				case r < 75:
					typ, payload = envelope.MemoryRead, map[string]any{"key": "k"}
				case r < 90 && len(approvals) > 0:
					typ, payload = envelope.ApprovalDecided, map[string]any{"call_id": approvals[rng.IntN(len(approvals))],
						"decision": []string{"allow", "allow", "deny"}[rng.IntN(3)]}
				case r < 92:
					typ, payload = envelope.Termination, map[string]any{}
				default:
					typ, payload = envelope.ModelCallStarted, map[string]any{"model": "m"}
				}
				raw, err := json.Marshal(payload)
				if err == nil {
					raw, err = canon.Append(nil, raw)
				}
				if err != nil {
					t.Fatal(err)
				}
				ts += 1 + rng.Int64N(4000)
				ev := &envelope.Event{V: 1, TenantID: tenant, SessionID: sid, Seq: seq, TsUnixMs: ts, Type: typ, Payload: raw}
				if err := eng.Step(context.Background(), snap, ev); err != nil {
					t.Fatalf("%s/%s/%d: %v", tenant, sid, seq, err)
				}
				if ev.Decision != nil && ev.Decision.Outcome == envelope.RequireApproval {
					tc, _ := ev.ToolCall()
					if !slices.Contains(approvals, tc.CallID) {
						approvals = append(approvals, tc.CallID)
					}
				}
				h, err := chain.Link(head, ev)
				if err != nil {
					t.Fatal(err)
				}
				head = &h
				sealed = append(sealed, ev)
			}
		}
	}
	// The projector reads partitions interleaved: shuffle sessions'
	// records while keeping each session in order.
	return interleave(rng, sealed)
}

func interleave(rng *rand.Rand, evs []*envelope.Event) []*envelope.Event {
	queues := map[string][]*envelope.Event{}
	var keys []string
	for _, e := range evs {
		k := e.TenantID + "/" + e.SessionID
		if queues[k] == nil {
			keys = append(keys, k)
		}
		queues[k] = append(queues[k], e)
	}
	var out []*envelope.Event
	for len(keys) > 0 {
		i := rng.IntN(len(keys))
		k := keys[i]
		out = append(out, queues[k][0])
		if queues[k] = queues[k][1:]; len(queues[k]) == 0 {
			keys = slices.Delete(keys, i, i+1)
		}
	}
	return out
}

// fleetBatches returns the batches a projector would write for the fleet
// (two, cut mid-stream, the first redelivered after the second) and the
// audit_events rows left after an attacker edited the store: a middle row
// deleted, a tail deleted, a whole session's rows deleted, a forged
// prev_hash on a middle row and on a first row.
func fleetBatches(t testing.TB, sealed []*envelope.Event) (writes []*projector.Batch, stored []projector.EventRow, final *projector.Batch) {
	t.Helper()
	cut := len(sealed) / 2
	first := storetest.BatchOf(t, sealed[:cut])
	final = storetest.BatchOf(t, sealed)
	second := &projector.Batch{Snapshots: final.Snapshots, Heads: final.Heads}
	inFirst := map[string]bool{}
	for _, r := range first.Events {
		inFirst[r.Event.Hash] = true
	}
	for _, r := range final.Events {
		if !inFirst[r.Event.Hash] {
			second.Events = append(second.Events, r)
		}
	}
	for _, d := range final.Decisions {
		if !inFirst[d.Hash] {
			second.Decisions = append(second.Decisions, d)
		}
	}
	last := map[string]uint64{}
	for _, e := range sealed {
		last[e.TenantID+"/"+e.SessionID] = max(last[e.TenantID+"/"+e.SessionID], e.Seq)
	}
	tamper := func(rows []projector.EventRow) []projector.EventRow {
		var out []projector.EventRow
		for _, r := range rows {
			e := r.Event
			k := e.TenantID + "/" + e.SessionID
			switch {
			case k == "acme/s-01" && e.Seq == 2, // deleted middle row
				k == "globex/s-02" && e.Seq == last[k], // deleted tail
				k == "initech/s-03":                    // whole session deleted
				continue
			case k == "acme/s-04" && e.Seq == 2, k == "globex/s-05" && e.Seq == 1: // forged link
				c := *e
				c.PrevHash = strings.Repeat("ab", 32)
				r.Event = &c
			}
			out = append(out, r)
		}
		return out
	}
	first.Events, second.Events = tamper(first.Events), tamper(second.Events)
	stored = append(append(stored, first.Events...), second.Events...)
	return []*projector.Batch{first, second, first}, stored, final
}

// fleetWant computes, in Go from the rows written, what each documented
// query means (docs/audit-queries.md), at time now.
func fleetWant(stored []projector.EventRow, final *projector.Batch, now time.Time) map[string][][]any {
	want := map[string][][]any{}
	type key3 struct{ a, b, c string }
	decs := final.Decisions
	day := func(ms int64) string { return projector.Date(ms).Format(time.DateOnly) }
	sortRows := func(rows [][]any, cmpf func(a, b []any) int) [][]any { slices.SortFunc(rows, cmpf); return rows }
	str := func(v any) string { return v.(string) }
	i64 := func(v any) int64 { return v.(int64) }

	denials := map[key3]int64{}
	for _, d := range decs {
		if d.Outcome == envelope.Deny {
			denials[key3{d.TenantID, day(d.TsUnixMs), d.Reason}]++
		}
	}
	for k, n := range denials {
		want["denials-by-reason"] = append(want["denials-by-reason"], []any{k.a, k.b, k.c, n})
	}
	want["denials-by-reason"] = sortRows(want["denials-by-reason"], func(a, b []any) int {
		return cmp.Or(cmp.Compare(str(a[0]), str(b[0])), cmp.Compare(str(a[1]), str(b[1])), cmp.Compare(i64(b[3]), i64(a[3])), cmp.Compare(str(a[2]), str(b[2])))
	})

	type budget struct{ n, first int64 }
	budgets := map[key3]*budget{}
	for _, d := range decs {
		if d.Reason == envelope.ReasonBudgetExceeded {
			k := key3{d.TenantID, d.SessionID, ""}
			if budgets[k] == nil {
				budgets[k] = &budget{first: int64(d.Seq)}
			}
			budgets[k].n++
			budgets[k].first = min(budgets[k].first, int64(d.Seq))
		}
	}
	for k, b := range budgets {
		want["budget-sessions"] = append(want["budget-sessions"], []any{k.a, k.b, b.n, b.first})
	}
	want["budget-sessions"] = sortRows(want["budget-sessions"], func(a, b []any) int {
		return cmp.Or(cmp.Compare(str(a[0]), str(b[0])), cmp.Compare(str(a[1]), str(b[1])))
	})

	for _, d := range decs {
		if d.Tainted {
			want["tainted-proposals"] = append(want["tainted-proposals"], []any{d.TenantID, d.SessionID, int64(d.Seq), d.ToolName, string(d.Outcome), d.Reason})
		}
	}
	want["tainted-proposals"] = sortRows(want["tainted-proposals"], func(a, b []any) int {
		return cmp.Or(cmp.Compare(str(a[0]), str(b[0])), cmp.Compare(str(a[1]), str(b[1])), cmp.Compare(i64(a[2]), i64(b[2])))
	})

	for _, s := range final.Snapshots {
		if s.Tainted {
			want["tainted-sessions"] = append(want["tainted-sessions"], []any{s.TenantID, s.SessionID, int64(s.LastSeq), s.ToolCalls})
		}
	}
	want["tainted-sessions"] = sortRows(want["tainted-sessions"], func(a, b []any) int {
		return cmp.Or(cmp.Compare(str(a[0]), str(b[0])), cmp.Compare(str(a[1]), str(b[1])))
	})

	// pending-approvals: each call's latest require_approval with no
	// stored APPROVAL_DECIDED for it after it, requested over 10 min ago.
	latest := map[key3]projector.DecisionRow{}
	for _, d := range decs {
		if d.Outcome == envelope.RequireApproval {
			k := key3{d.TenantID, d.SessionID, d.CallID}
			if d.Seq > latest[k].Seq {
				latest[k] = d
			}
		}
	}
	for k, d := range latest {
		decided := false
		for _, r := range stored {
			e := r.Event
			if e.Type == envelope.ApprovalDecided && e.TenantID == k.a && e.SessionID == k.b && r.CallID == k.c && e.Seq > d.Seq {
				decided = true
			}
		}
		if !decided && d.TsUnixMs < now.UnixMilli()-600000 {
			want["pending-approvals"] = append(want["pending-approvals"], []any{k.a, k.b, k.c, d.ToolName, d.TsUnixMs})
		}
	}
	want["pending-approvals"] = sortRows(want["pending-approvals"], func(a, b []any) int {
		return cmp.Or(cmp.Compare(str(a[0]), str(b[0])), cmp.Compare(str(a[1]), str(b[1])), cmp.Compare(str(a[2]), str(b[2])))
	})

	type seqKey struct {
		k   string
		seq uint64
	}
	hashes := map[seqKey]string{}
	lastSeq := map[string]uint64{}
	for _, r := range stored {
		k := r.Event.TenantID + "\x01" + r.Event.SessionID
		hashes[seqKey{k, r.Event.Seq}] = r.Event.Hash
		lastSeq[k] = max(lastSeq[k], r.Event.Seq)
	}
	for _, r := range stored {
		e := r.Event
		k := e.TenantID + "\x01" + e.SessionID
		if e.Seq == 1 && e.PrevHash != chain.Genesis || e.Seq > 1 && hashes[seqKey{k, e.Seq - 1}] != e.PrevHash {
			want["broken-links"] = append(want["broken-links"], []any{e.TenantID, e.SessionID, int64(e.Seq)})
		}
	}
	want["broken-links"] = sortRows(want["broken-links"], func(a, b []any) int {
		return cmp.Or(cmp.Compare(str(a[0]), str(b[0])), cmp.Compare(str(a[1]), str(b[1])), cmp.Compare(i64(a[2]), i64(b[2])))
	})

	for _, h := range final.Heads {
		k := h.TenantID + "\x01" + h.SessionID
		if s := lastSeq[k]; s != h.Seq || hashes[seqKey{k, s}] != h.Hash {
			want["head-mismatches"] = append(want["head-mismatches"], []any{h.TenantID, h.SessionID, int64(h.Seq), int64(s)})
		}
	}
	want["head-mismatches"] = sortRows(want["head-mismatches"], func(a, b []any) int {
		return cmp.Or(cmp.Compare(str(a[0]), str(b[0])), cmp.Compare(str(a[1]), str(b[1])))
	})

	type tools struct{ n, denied int64 }
	byTool := map[key3]*tools{}
	for _, d := range decs {
		k := key3{d.TenantID, d.ToolName, ""}
		if byTool[k] == nil {
			byTool[k] = &tools{}
		}
		byTool[k].n++
		if d.Outcome == envelope.Deny {
			byTool[k].denied++
		}
	}
	for k, v := range byTool {
		want["top-tools"] = append(want["top-tools"], []any{k.a, k.b, v.n, v.denied})
	}
	want["top-tools"] = sortRows(want["top-tools"], func(a, b []any) int {
		return cmp.Or(cmp.Compare(str(a[0]), str(b[0])), cmp.Compare(i64(b[2]), i64(a[2])), cmp.Compare(str(a[1]), str(b[1])))
	})
	return want
}

// fleetColumns are the columns each documented query returns, the same
// in both spellings.
var fleetColumns = map[string]string{
	"denials-by-reason": "[tenant_id day reason denials]",
	"budget-sessions":   "[tenant_id session_id budget_denials first_seq]",
	"tainted-proposals": "[tenant_id session_id seq tool_name outcome reason]",
	"tainted-sessions":  "[tenant_id session_id last_seq tool_calls]",
	"pending-approvals": "[tenant_id session_id call_id tool_name requested_unix_ms]",
	"broken-links":      "[tenant_id session_id seq]",
	"head-mismatches":   "[tenant_id session_id head_seq stored_seq]",
	"top-tools":         "[tenant_id tool_name proposals denied]",
}

// testDocQueriesFleet runs every documented query of one dialect on a
// store the store API filled with a decided and sealed fleet history (two
// batches and a redelivery, then edited), and compares each answer with
// what the page says it means, computed from the rows in Go.
func testDocQueriesFleet(t *testing.T, dialect, url string) {
	now := time.Now()
	sealed := sealedFleet(t, now)
	writes, stored, final := fleetBatches(t, sealed)
	for _, b := range writes {
		writeStore(t, url, b)
	}
	want := fleetWant(stored, final, now)
	st, err := stores.Open(context.Background(), url)
	if err != nil {
		t.Fatal(err)
	}
	defer st.Close()
	queries := docQueries(t, dialect)
	if len(queries) != len(wantQueries) {
		t.Fatalf("docs/audit-queries.md has %d %s queries, the test knows %d", len(queries), dialect, len(wantQueries))
	}
	for name, q := range queries {
		t.Run(name, func(t *testing.T) {
			if len(want[name]) == 0 {
				t.Fatalf("the fleet gives query %s nothing to find", name)
			}
			cols, rows, err := st.Query(context.Background(), q)
			if err != nil {
				t.Fatal(err)
			}
			if fmt.Sprint(cols) != fleetColumns[name] {
				t.Errorf("columns %v, want %s", cols, fleetColumns[name])
			}
			if got, w := fmt.Sprintf("%#v", rows), fmt.Sprintf("%#v", want[name]); got != w {
				t.Errorf("%d rows, want %d\ngot  %s\nwant %s", len(rows), len(want[name]), got, w)
			}
		})
	}
}

func TestDocQueriesFleetSQLite(t *testing.T) { testDocQueriesFleet(t, "sqlite", sqliteURL(t)) }

func TestIntegrationDocQueriesFleetClickHouse(t *testing.T) {
	testDocQueriesFleet(t, "clickhouse", clickhouseURL(t))
}
