package projector

import (
	"cmp"
	"context"
	"encoding/json"
	"fmt"
	"slices"
	"strings"
	"testing"
	"time"

	"aegis.dev/aegis/internal/pipeline"
	"aegis.dev/aegis/internal/stream"
	"aegis.dev/aegis/schemas/chain"
	"aegis.dev/aegis/schemas/envelope"
)

// memStore is a Store in memory: the rows written, read back as a store
// reads them.
type memStore struct{ events []EventRow }

func (m *memStore) Write(_ context.Context, b *Batch) error {
	m.events = append(m.events, b.Events...)
	return nil
}

func (m *memStore) Events(_ context.Context, f Filter, fn func(*EventRow) error) error {
	rows := slices.Clone(m.events)
	slices.SortStableFunc(rows, func(a, b EventRow) int {
		return cmp.Or(strings.Compare(a.Event.TenantID, b.Event.TenantID), strings.Compare(a.Event.SessionID, b.Event.SessionID),
			cmp.Compare(a.Event.Seq, b.Event.Seq))
	})
	for i := range rows {
		if f.Sessions != nil && !slices.Contains(f.Sessions, SessionKey{rows[i].Event.TenantID, rows[i].Event.SessionID}) {
			continue
		}
		ev := *rows[i].Event
		r := rows[i]
		r.Event = &ev
		if err := fn(&r); err != nil {
			return err
		}
	}
	return nil
}

// chainOf seals a session of n events: a model call, a proposal, a tool
// result (which taints the session), then proposals.
func chainOf(t *testing.T, tenant, sessionID string, n int) []*envelope.Event {
	t.Helper()
	var head *chain.Head
	var out []*envelope.Event
	for i := 1; i <= n; i++ {
		e := &envelope.Event{V: 1, TenantID: tenant, SessionID: sessionID, Seq: uint64(i), TsUnixMs: 1767225600000 + int64(i)*1000}
		switch i {
		case 1:
			e.Type, e.Payload = envelope.ModelCallStarted, json.RawMessage(`{"call_id":"m","model":"gpt-x"}`)
		case 3:
			e.Type, e.Payload = envelope.ToolResult, json.RawMessage(`{"call_id":"c2","tool_name":"web_fetch"}`)
		default:
			e.Type, e.Payload = envelope.ToolCallProposed, json.RawMessage(fmt.Sprintf(`{"args":{},"call_id":"c%d","tool_name":"web_fetch"}`, i))
			e.Decision = &envelope.Decision{Outcome: envelope.Deny, Reason: envelope.ReasonEgressDeny, PolicyRevision: "sha256:p",
				ManifestDigest: "sha256:m", InputDigest: "sha256:i"}
		}
		h, err := chain.Link(head, e)
		if err != nil {
			t.Fatal(err)
		}
		head = &h
		out = append(out, e)
	}
	return out
}

func sealedRecord(t *testing.T, topics pipeline.Topics, e *envelope.Event, offset int64) *stream.Record {
	t.Helper()
	v, err := e.AppendCanonical(nil, true)
	if err != nil {
		t.Fatal(err)
	}
	return &stream.Record{Topic: topics.Sealed, Key: e.Key(), Value: v, Offset: offset, Timestamp: time.UnixMilli(e.TsUnixMs)}
}

// TestRebuildEndsAtAStoredRowThatFailsVerification: a resumed session's
// history ends before a stored row whose hash is not its record's (an
// edited row) or that does not link to the row before it: the snapshot is
// not folded over it, so no decision row or snapshot is derived from an
// edited record, and the next record is rejected as past the history.
func TestRebuildEndsAtAStoredRowThatFailsVerification(t *testing.T) {
	topics := pipeline.NewTopics("t.")
	for name, edit := range map[string]func(e *envelope.Event){
		// The tool result that tainted the session, stored as a memory
		// write: the hash no longer matches.
		"edited": func(e *envelope.Event) { e.Type, e.Payload = envelope.MemoryWrite, json.RawMessage(`{"key":"k"}`) },
		// A record of another chain spliced in, hashed consistently.
		"relinked": func(e *envelope.Event) {
			e.Type, e.Payload = envelope.MemoryWrite, json.RawMessage(`{"key":"k"}`)
			if _, err := chain.Link(&chain.Head{TenantID: e.TenantID, SessionID: e.SessionID, Seq: 2, Hash: chain.Genesis}, e); err != nil {
				t.Fatal(err)
			}
		},
	} {
		t.Run(name, func(t *testing.T) {
			evs := chainOf(t, "acme", "s1", 4)
			st := &memStore{}
			for i, e := range evs[:3] {
				c := *e
				if i == 2 {
					edit(&c)
				}
				st.events = append(st.events, NewEventRow(&c, 0, int64(i)))
			}
			p, err := New(Config{Brokers: []string{"x"}, Group: "g", Topics: topics}, st, nil, nil)
			if err != nil {
				t.Fatal(err)
			}
			b, err := p.build(context.Background(), []*stream.Record{sealedRecord(t, topics, evs[3], 3)})
			if err != nil {
				t.Fatal(err)
			}
			if len(b.Events) != 0 || len(b.Decisions) != 0 || len(b.Snapshots) != 0 {
				t.Errorf("rows derived over a stored row that fails verification: %d events, decisions %+v, %d snapshots",
					len(b.Events), b.Decisions, len(b.Snapshots))
			}
			if len(b.Rejected) != 1 || b.Rejected[0].Reason != ReasonBadSealed || !strings.Contains(b.Rejected[0].Detail, "ends at seq 2") {
				t.Errorf("rejected %+v, want seq 4 rejected past a history that ends at seq 2", b.Rejected)
			}
		})
	}
}

// TestHeadRecordsThatAreNoHeads: a chain-heads record that lacks a
// member of a head, or whose hash is not one (the sealer itself refuses
// such a head record), is a BAD_HEAD_RECORD whose detail says what is
// wrong; it never replaces the session's stored head.
func TestHeadRecordsThatAreNoHeads(t *testing.T) {
	topics := pipeline.NewTopics("t.")
	hash := strings.Repeat("ab", 32)
	for value, want := range map[string]string{
		`{"tenant_id":"acme","session_id":"s","seq":3}`:                         "hash",
		`{"tenant_id":"acme","session_id":"s","seq":3,"hash":""}`:               "hash",
		`{"tenant_id":"acme","session_id":"s","seq":3,"hash":"sha256:ab"}`:      "hash",
		`{"session_id":"s","seq":3,"hash":"` + hash + `"}`:                      "tenant_id",
		`{"tenant_id":"acme","seq":3,"hash":"` + hash + `"}`:                    "session_id",
		`{"tenant_id":"acme","session_id":"s","hash":"` + hash + `"}`:           "seq",
		`{"tenant_id":"acme","session_id":"s","seq":"3","hash":"` + hash + `"}`: "seq",
	} {
		p, err := New(Config{Brokers: []string{"x"}, Group: "g", Topics: topics}, &memStore{}, nil, nil)
		if err != nil {
			t.Fatal(err)
		}
		b, err := p.build(context.Background(), []*stream.Record{{Topic: topics.ChainHeads, Key: []byte("acme/s"), Value: []byte(value)}})
		if err != nil {
			t.Fatal(err)
		}
		if len(b.Heads) != 0 || len(b.Rejected) != 1 || b.Rejected[0].Reason != ReasonBadHead {
			t.Errorf("%s: heads %+v, rejected %+v, want one %s", value, b.Heads, b.Rejected, ReasonBadHead)
			continue
		}
		if d := b.Rejected[0].Detail; !strings.Contains(d, want) || strings.Contains(d, "<nil>") {
			t.Errorf("%s: detail %q does not name %s", value, d, want)
		}
	}
}

// TestRecordConflictingWithAStoredRowIsRejected: a sealed record at a seq
// whose stored row has another hash (a record of another writer, read
// again after the sealer's own was stored) is rejected, not written: the
// ClickHouse store would otherwise keep whichever copy a merge finds last,
// and the stored sealed record would be lost, while SQLite keeps the
// first. The session goes on with the records that match the store.
func TestRecordConflictingWithAStoredRowIsRejected(t *testing.T) {
	topics := pipeline.NewTopics("t.")
	evs := chainOf(t, "acme", "s1", 5)
	st := &memStore{}
	for i, e := range evs {
		st.events = append(st.events, NewEventRow(e, 0, int64(i)))
	}
	// Another seq 3, linked to seq 2 like the sealed one.
	other := *evs[2]
	other.Type, other.Payload = envelope.MemoryWrite, json.RawMessage(`{"key":"k"}`)
	if _, err := chain.Link(&chain.Head{TenantID: "acme", SessionID: "s1", Seq: 2, Hash: evs[1].Hash}, &other); err != nil {
		t.Fatal(err)
	}
	p, err := New(Config{Brokers: []string{"x"}, Group: "g", Topics: topics}, st, nil, nil)
	if err != nil {
		t.Fatal(err)
	}
	b, err := p.build(context.Background(), []*stream.Record{sealedRecord(t, topics, &other, 10), sealedRecord(t, topics, evs[2], 2),
		sealedRecord(t, topics, evs[3], 3)})
	if err != nil {
		t.Fatal(err)
	}
	for _, r := range b.Events {
		if r.Event.Seq == 3 && r.Event.Hash != evs[2].Hash {
			t.Errorf("the conflicting seq 3 is written over the stored one")
		}
	}
	if len(b.Rejected) != 1 || b.Rejected[0].Reason != ReasonBadSealed || b.Rejected[0].Offset != 10 ||
		!strings.Contains(b.Rejected[0].Detail, "SEQ_CONFLICT") {
		t.Errorf("rejected %+v, want the record at offset 10 rejected SEQ_CONFLICT", b.Rejected)
	}
	if len(b.Events) != 2 || len(b.Snapshots) != 1 || b.Snapshots[0].LastSeq != 4 || !b.Snapshots[0].Tainted {
		t.Errorf("%d events, snapshots %+v; want seq 3 and 4 as stored, and the tainted snapshot after seq 4", len(b.Events), b.Snapshots)
	}
}

// TestSecondRecordOfASeqInABatchIsRejected: of two different records at
// one seq of a session in one batch, the second is rejected SEQ_CONFLICT:
// it was neither stored nor a redelivery, and dropping it silently would
// commit its offset with no row anywhere. An identical copy is a
// redelivery and leaves no trace.
func TestSecondRecordOfASeqInABatchIsRejected(t *testing.T) {
	topics := pipeline.NewTopics("t.")
	evs := chainOf(t, "acme", "s1", 3)
	other := *evs[1]
	other.Payload = json.RawMessage(`{"args":{"x":1},"call_id":"c2","tool_name":"web_fetch"}`)
	if _, err := chain.Link(&chain.Head{TenantID: "acme", SessionID: "s1", Seq: 1, Hash: evs[0].Hash}, &other); err != nil {
		t.Fatal(err)
	}
	p, err := New(Config{Brokers: []string{"x"}, Group: "g", Topics: topics}, &memStore{}, nil, nil)
	if err != nil {
		t.Fatal(err)
	}
	b, err := p.build(context.Background(), []*stream.Record{sealedRecord(t, topics, evs[0], 0), sealedRecord(t, topics, evs[1], 1),
		sealedRecord(t, topics, evs[1], 2), sealedRecord(t, topics, &other, 3), sealedRecord(t, topics, evs[2], 4)})
	if err != nil {
		t.Fatal(err)
	}
	if len(b.Events) != 3 || len(b.Rejected) != 1 || b.Rejected[0].Offset != 3 || !strings.Contains(b.Rejected[0].Detail, "SEQ_CONFLICT") {
		t.Errorf("%d events, rejected %+v; want 3 events and the record at offset 3 rejected SEQ_CONFLICT", len(b.Events), b.Rejected)
	}
}

// TestRecordThatDoesNotLinkIsRejected: a sealed record whose prev_hash is
// not the hash of its session's previous record (one of another chain) is
// rejected PREV_HASH_MISMATCH, whether the previous record is in the
// batch or read from the store; the sealer's record at that seq, after
// it, is stored.
func TestRecordThatDoesNotLinkIsRejected(t *testing.T) {
	topics := pipeline.NewTopics("t.")
	evs := chainOf(t, "acme", "s1", 4)
	spliced := *evs[1]
	spliced.Payload = json.RawMessage(`{"args":{"x":1},"call_id":"c2","tool_name":"web_fetch"}`)
	if _, err := chain.Link(&chain.Head{TenantID: "acme", SessionID: "s1", Seq: 1, Hash: strings.Repeat("0f", 32)}, &spliced); err != nil {
		t.Fatal(err)
	}
	splicedLate := *evs[3]
	splicedLate.Payload = json.RawMessage(`{"args":{"x":2},"call_id":"c4","tool_name":"web_fetch"}`)
	if _, err := chain.Link(&chain.Head{TenantID: "acme", SessionID: "s1", Seq: 3, Hash: strings.Repeat("0f", 32)}, &splicedLate); err != nil {
		t.Fatal(err)
	}
	st := &memStore{}
	p, err := New(Config{Brokers: []string{"x"}, Group: "g", Topics: topics}, st, nil, nil)
	if err != nil {
		t.Fatal(err)
	}
	b, err := p.build(context.Background(), []*stream.Record{sealedRecord(t, topics, evs[0], 0), sealedRecord(t, topics, &spliced, 1),
		sealedRecord(t, topics, evs[1], 2), sealedRecord(t, topics, evs[2], 3)})
	if err != nil {
		t.Fatal(err)
	}
	if len(b.Events) != 3 || b.Events[1].Event.Hash != evs[1].Hash || len(b.Rejected) != 1 || b.Rejected[0].Offset != 1 ||
		!strings.Contains(b.Rejected[0].Detail, "PREV_HASH_MISMATCH") {
		t.Fatalf("%d events, rejected %+v; want seq 1..3 as sealed and the record at offset 1 rejected PREV_HASH_MISMATCH", len(b.Events), b.Rejected)
	}
	if err := st.Write(context.Background(), b); err != nil {
		t.Fatal(err)
	}
	// The same after a restart: the history is read from the store.
	p.dropCache()
	b, err = p.build(context.Background(), []*stream.Record{sealedRecord(t, topics, &splicedLate, 4), sealedRecord(t, topics, evs[3], 5)})
	if err != nil {
		t.Fatal(err)
	}
	if len(b.Events) != 1 || b.Events[0].Event.Hash != evs[3].Hash || len(b.Rejected) != 1 || b.Rejected[0].Offset != 4 ||
		!strings.Contains(b.Rejected[0].Detail, "PREV_HASH_MISMATCH") {
		t.Errorf("after a restart: %d events, rejected %+v; want seq 4 as sealed and the record at offset 4 rejected PREV_HASH_MISMATCH", len(b.Events), b.Rejected)
	}
}

// TestRecordTooLargeForTheProjectorEndsItsSession: a sealed record larger
// than the projector's MaxEventBytes (a projector configured below the
// sealer) is rejected, and so is every later record of its session, which
// no longer follows the stored history (docs/pipeline.md).
func TestRecordTooLargeForTheProjectorEndsItsSession(t *testing.T) {
	topics := pipeline.NewTopics("t.")
	evs := chainOf(t, "acme", "s1", 4)
	recs := make([]*stream.Record, len(evs))
	for i, e := range evs {
		recs[i] = sealedRecord(t, topics, e, int64(i))
	}
	p, err := New(Config{Brokers: []string{"x"}, Group: "g", Topics: topics, MaxEventBytes: len(recs[1].Value) - 1}, &memStore{}, nil, nil)
	if err != nil {
		t.Fatal(err)
	}
	b, err := p.build(context.Background(), recs)
	if err != nil {
		t.Fatal(err)
	}
	var got []string
	for _, r := range b.Rejected {
		got = append(got, fmt.Sprintf("%d %s", r.Offset, strings.SplitN(r.Detail, ":", 2)[0]))
	}
	slices.Sort(got)
	// Seq 4 is a proposal as large as seq 2: too large itself.
	if want := []string{"1 TOO_LARGE", "2 SEQ_GAP", "3 TOO_LARGE"}; len(b.Events) != 1 || !slices.Equal(got, want) {
		t.Errorf("%d events, rejected %q; want seq 1 stored and %q", len(b.Events), got, want)
	}
}
