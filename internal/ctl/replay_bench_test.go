package ctl

import (
	"context"
	"encoding/json"
	"fmt"
	"testing"
	"time"

	"aegis.dev/aegis/decider"
	"aegis.dev/aegis/decider/policy"
	"aegis.dev/aegis/decider/session"
	"aegis.dev/aegis/projector"
	"aegis.dev/aegis/projector/stores"
	"aegis.dev/aegis/projector/storetest"
	"aegis.dev/aegis/replayer"
	"aegis.dev/aegis/schemas/chain"
	"aegis.dev/aegis/schemas/envelope"
	"aegis.dev/aegis/schemas/manifest"
)

// replayBenchStore fills a SQLite store with sessions×per events decided by
// the default bundle (a third of them proposals, as in benchBatch), with the
// decisions and session_snapshots rows the projector writes for them, and
// returns it with the archive those decisions name.
func replayBenchStore(b *testing.B, sessions, per int) (stores.Store, *replayer.Archive) {
	b.Helper()
	reg, err := manifest.LoadDir("testdata/replay/manifests")
	if err != nil {
		b.Fatal(err)
	}
	pe, err := policy.New(policy.Default())
	if err != nil {
		b.Fatal(err)
	}
	arch := &replayer.Archive{Dir: b.TempDir()}
	if err := arch.PutBundle(policy.Default()); err != nil {
		b.Fatal(err)
	}
	if err := arch.PutRegistry(reg); err != nil {
		b.Fatal(err)
	}
	eng := decider.NewEngine(pe, reg)
	st, err := stores.Open(context.Background(), sqliteURL(b))
	if err != nil {
		b.Fatal(err)
	}
	batch := &projector.Batch{}
	flush := func() {
		if err := st.Write(context.Background(), batch); err != nil {
			b.Fatal(err)
		}
		batch = &projector.Batch{}
	}
	var events []*envelope.Event
	for s := range sessions {
		sid := fmt.Sprintf("session-%06d", s)
		snap := session.New("acme", sid)
		var head *chain.Head
		for i := range per {
			e := &envelope.Event{V: 1, TenantID: "acme", SessionID: sid, Seq: uint64(i + 1), TsUnixMs: day0 + int64(i)*1000}
			switch i % 3 {
			case 0:
				e.Type, e.Payload = envelope.ModelCallStarted, json.RawMessage(`{"call_id":"m1","model":"gpt-x"}`)
			case 1:
				e.Type = envelope.ToolCallProposed
				e.Payload = json.RawMessage(fmt.Sprintf(`{"args":{"url":"https://api.example.com/v1/items/%d"},"call_id":"c%d","tool_name":"web_fetch"}`, i, i))
			default:
				e.Type, e.Payload = envelope.ToolResult, json.RawMessage(fmt.Sprintf(`{"call_id":"c%d","output_bytes":512,"tool_name":"web_fetch"}`, i-1))
			}
			if err := eng.Step(context.Background(), snap, e); err != nil {
				b.Fatal(err)
			}
			h, err := chain.Link(head, e)
			if err != nil {
				b.Fatal(err)
			}
			head = &h
			events = append(events, e)
		}
		if len(events) >= 5000 {
			// The rows the projector writes for them.
			batch = storetest.BatchOf(b, events)
			flush()
			events = events[:0]
		}
	}
	batch = storetest.BatchOf(b, events)
	flush()
	return st, arch
}

// BenchmarkReplaySQLite measures, on one store of 2,000 sessions × 30
// events: reading the sessions alone (the store's share), exact replay
// (read + re-decide + compare) and verify mode (VerifyStore).
func BenchmarkReplaySQLite(b *testing.B) {
	const sessions, per = 2000, 30
	st, arch := replayBenchStore(b, sessions, per)
	defer func() { _ = st.Close() }()
	src := replayer.StoreSource(st)
	run := func(b *testing.B, fn func() int64) {
		start := time.Now()
		var events int64
		for b.Loop() {
			events += fn()
		}
		b.ReportMetric(float64(events)/time.Since(start).Seconds(), "events/s")
	}
	b.Run("read", func(b *testing.B) {
		run(b, func() int64 {
			var n int64
			if err := src(context.Background(), func(s *replayer.Session) error { n += int64(len(s.Events)); return nil }); err != nil || n != sessions*per {
				b.Fatalf("%d events, %v", n, err)
			}
			return n
		})
	})
	b.Run("exact", func(b *testing.B) {
		cfg := replayer.Config{Mode: replayer.ModeExact, Archive: arch}
		run(b, func() int64 {
			rep, err := replayer.Run(context.Background(), cfg, src)
			if err != nil || !rep.Identical || rep.Events != sessions*per {
				b.Fatalf("%+v %v", rep, err)
			}
			return rep.Events
		})
	})
	b.Run("verify", func(b *testing.B) {
		run(b, func() int64 {
			rep, err := VerifyStore(context.Background(), st, projector.Filter{}, 0)
			if err != nil || !rep.OK || rep.Events != sessions*per {
				b.Fatalf("%+v %v", rep, err)
			}
			return rep.Events
		})
	})
}
