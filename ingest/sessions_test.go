package ingest

import (
	"context"
	"database/sql"
	"encoding/json"
	"errors"
	"fmt"
	"net/http"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"testing"

	"aegis.dev/aegis/decider/session"
	"aegis.dev/aegis/internal/ctl"
	"aegis.dev/aegis/projector"
	"aegis.dev/aegis/projector/sqlstore"
	"aegis.dev/aegis/schemas/chain"
	"aegis.dev/aegis/schemas/envelope"
)

// sealedStore returns a SQLite audit store holding sealed sessions:
// acme/s1 with n events, acme/tampered whose seq 2 payload was edited after
// sealing, acme/truncated whose head says one more record than stored,
// acme/gap whose seq 2 was deleted, acme/snapedit whose session_snapshots
// row says it is tainted, and globex/s1. Every session has the snapshot row
// the projector writes for it (projector.NewSnapshotRow).
func sealedStore(tb testing.TB, n int) *sqlstore.Store {
	tb.Helper()
	st, _ := sealedStoreAt(tb, n)
	return st
}

// sealedStoreAt is sealedStore, with the path of its file.
func sealedStoreAt(tb testing.TB, n int) (*sqlstore.Store, string) {
	tb.Helper()
	ctx := context.Background()
	path := filepath.Join(tb.TempDir(), "audit.db")
	st, err := sqlstore.Open(ctx, path)
	if err != nil {
		tb.Fatal(err)
	}
	tb.Cleanup(func() { _ = st.Close() })
	var b projector.Batch
	seal := func(tenant, sess string, count int, edit func(*envelope.Event)) {
		var head *chain.Head
		sn := session.New(tenant, sess)
		defer func() {
			row, err := projector.NewSnapshotRow(sn)
			if err != nil {
				tb.Fatal(err)
			}
			b.Snapshots = append(b.Snapshots, row)
		}()
		for seq := 1; seq <= count; seq++ {
			e, err := envelope.Decode([]byte(ev(tenant, sess, seq, "MODEL_CALL_STARTED", fmt.Sprintf(`{"model":"m%d"}`, seq))))
			if err != nil {
				tb.Fatal(err)
			}
			h, err := chain.Link(head, e)
			if err != nil {
				tb.Fatal(err)
			}
			head = &h
			if err := sn.Apply(e); err != nil {
				tb.Fatal(err)
			}
			if edit != nil && seq == 2 {
				edit(e)
			}
			b.Events = append(b.Events, projector.NewEventRow(e, 0, int64(seq)))
		}
		b.Heads = append(b.Heads, *head)
	}
	seal("acme", "s1", n, nil)
	seal("globex", "s1", 2, nil)
	seal("acme", "tampered", 3, func(e *envelope.Event) { e.Payload = json.RawMessage(`{"model":"evil"}`) })
	seal("acme", "truncated", 3, nil)
	b.Heads[len(b.Heads)-1].Seq, b.Heads[len(b.Heads)-1].Hash = 4, "ff"
	seal("acme", "gap", 3, nil)
	seal("acme", "snapedit", 3, nil)
	b.Snapshots[len(b.Snapshots)-1].Tainted = true
	b.Events = slices.DeleteFunc(b.Events, func(r projector.EventRow) bool { return r.Event.SessionID == "gap" && r.Event.Seq == 2 })
	if err := st.Write(ctx, &b); err != nil {
		tb.Fatal(err)
	}
	return st, path
}

// pageThrough reads every page of path as an auditor of acme, following
// next_cursor (at most 100 pages), and returns the seqs and the page count.
func pageThrough(t *testing.T, h *harness, path string) (seqs []uint64, pages int) {
	t.Helper()
	cursor := ""
	for pages < 100 {
		var page EventsPage
		p := path
		if cursor != "" {
			p += "&after_seq=" + cursor
		}
		if r := h.do(t, "GET", p, "acme-auditor", "", "", &page); r.StatusCode != 200 {
			t.Fatalf("%s: %d", p, r.StatusCode)
		}
		pages++
		for _, raw := range page.Events {
			e, err := envelope.Decoder{Sealed: true}.Decode(raw)
			if err != nil || e.TenantID != "acme" || e.Hash == "" {
				t.Fatalf("record %s: %v", raw, err)
			}
			seqs = append(seqs, e.Seq)
		}
		if page.NextCursor == "" {
			break
		}
		cursor = page.NextCursor
	}
	return seqs, pages
}

// repeatingStore sends every row twice, as ClickHouse does with copies it
// has not merged yet, and applies the page limit to what it sends.
type repeatingStore struct{ Store }

func (r repeatingStore) Events(ctx context.Context, f projector.Filter, fn func(*projector.EventRow) error) error {
	limit := f.Limit
	f.Limit = 0
	sent := 0
	return r.Store.Events(ctx, f, func(row *projector.EventRow) error {
		for range 2 {
			if limit > 0 && sent == limit {
				return nil
			}
			sent++
			if err := fn(row); err != nil {
				return err
			}
		}
		return nil
	})
}

// TestSessionPagesSeeEveryRowThroughRepeats: the store sends a page and
// one more row at most; repeated rows take places in that count, and the
// page is still complete and still says when more follow.
func TestSessionPagesSeeEveryRowThroughRepeats(t *testing.T) {
	t.Parallel()
	h := newHarness(t, harnessOpts{noDecider: true, store: repeatingStore{sealedStore(t, 25)}})
	seqs, pages := pageThrough(t, h, "/v1/sessions/s1/events?limit=10")
	if pages != 3 || len(seqs) != 25 {
		t.Fatalf("%d pages, seqs %v", pages, seqs)
	}
	for i := range seqs {
		if seqs[i] != uint64(i+1) {
			t.Fatalf("seqs %v", seqs)
		}
	}
}

func TestSessionReadsPaginateWithoutCap(t *testing.T) {
	t.Parallel()
	h := newHarness(t, harnessOpts{noDecider: true, store: sealedStore(t, 25)})
	seqs, pages := pageThrough(t, h, "/v1/sessions/s1/events?limit=10")
	if pages != 3 || len(seqs) != 25 || seqs[0] != 1 || seqs[24] != 25 {
		t.Fatalf("%d pages, seqs %v", pages, seqs)
	}
	for i := range seqs {
		if seqs[i] != uint64(i+1) {
			t.Fatalf("seqs %v", seqs)
		}
	}
	// An exact multiple of the limit ends without an empty extra page.
	var page EventsPage
	h.do(t, "GET", "/v1/sessions/s1/events?limit=5&after_seq=20", "acme-auditor", "", "", &page)
	if len(page.Events) != 5 || page.NextCursor != "" {
		t.Fatalf("last page: %d events, cursor %q", len(page.Events), page.NextCursor)
	}
	var e errResp
	if r := h.do(t, "GET", "/v1/sessions/s1/events?limit=5000", "acme-auditor", "", "", &e); r.StatusCode != 400 {
		t.Fatalf("limit 5000: %d", r.StatusCode)
	}
}

func TestSessionReadsAreTenantScoped(t *testing.T) {
	t.Parallel()
	h := newHarness(t, harnessOpts{noDecider: true, store: sealedStore(t, 3)})
	for _, tc := range []struct {
		name, key, path string
		status          int
		code            string
		events          int64
	}{
		{"auditor snapshot", "acme-auditor", "/v1/sessions/s1", 200, "", 3},
		{"operator snapshot", "acme-operator", "/v1/sessions/s1", 200, "", 3},
		{"globex sees its own s1", "globex-op", "/v1/sessions/s1", 200, "", 2},
		{"agent may not read", "acme-agent", "/v1/sessions/s1", 403, CodeForbidden, 0},
		{"naming another tenant", "globex-op", "/v1/sessions/s1?tenant_id=acme", 403, CodeTenantMismatch, 0},
		{"another tenant's session", "globex-op", "/v1/sessions/tampered", 404, CodeNotFound, 0},
		{"events of another tenant", "globex-op", "/v1/sessions/truncated/verify", 404, CodeNotFound, 0},
		{"unknown session", "acme-auditor", "/v1/sessions/nope/verify", 404, CodeNotFound, 0},
	} {
		t.Run(tc.name, func(t *testing.T) {
			var out struct {
				Error    ErrorDetail `json:"error"`
				Snapshot struct {
					TenantID string `json:"tenant_id"`
					Events   int64  `json:"events"`
				} `json:"snapshot"`
			}
			r := h.do(t, "GET", tc.path, tc.key, "", "", &out)
			if r.StatusCode != tc.status || out.Error.Code != tc.code || out.Snapshot.Events != tc.events {
				t.Fatalf("got %d %q events %d, want %d %q %d", r.StatusCode, out.Error.Code, out.Snapshot.Events, tc.status, tc.code, tc.events)
			}
		})
	}
}

func TestSessionVerify(t *testing.T) {
	t.Parallel()
	h := newHarness(t, harnessOpts{noDecider: true, store: sealedStore(t, 4)})
	for _, tc := range []struct {
		session string
		valid   bool
		reason  string
	}{
		{"s1", true, ""},
		{"tampered", false, chain.ReasonHashMismatch},
		{"truncated", false, chain.ReasonTruncated},
		{"snapedit", false, ctl.ReasonSnapshotMismatch},
	} {
		t.Run(tc.session, func(t *testing.T) {
			var res VerifyResult
			if r := h.do(t, "GET", "/v1/sessions/"+tc.session+"/verify", "acme-auditor", "", "", &res); r.StatusCode != 200 {
				t.Fatalf("status %d", r.StatusCode)
			}
			if res.Valid != tc.valid || (tc.reason != "" && (len(res.Failures) == 0 || res.Failures[0].Reason != tc.reason)) {
				t.Fatalf("%+v, want valid=%v %s", res, tc.valid, tc.reason)
			}
			if tc.valid && (res.Head == nil || strconv.FormatUint(res.Head.Seq, 10) != "4") {
				t.Fatalf("head %+v", res.Head)
			}
		})
	}
}

func TestSessionReadsWithoutStore(t *testing.T) {
	t.Parallel()
	h := newHarness(t, harnessOpts{dev: true, noDecider: true})
	var e errResp
	if r := h.do(t, "GET", "/v1/sessions/s1", "", "", "", &e); r.StatusCode != 501 || e.Error.Code != CodeNoStore {
		t.Fatalf("got %d %s", r.StatusCode, e.Error.Code)
	}
}

// TestSessionReadsRefuseMalformedRows: a stored row whose columns do not
// rebuild a sealed record (here an integer column edited to hold text) is
// 409 MALFORMED on every session read, as on the snapshot, not a 503 that
// blames the store or a record served as if it were sealed.
func TestSessionReadsRefuseMalformedRows(t *testing.T) {
	t.Parallel()
	st, path := sealedStoreAt(t, 4)
	db, err := sql.Open("sqlite", "file:"+path)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := db.Exec(`UPDATE audit_events SET kafka_offset = 'x' WHERE tenant_id = 'acme' AND session_id = 's1' AND seq = 2`); err != nil {
		t.Fatal(err)
	}
	_ = db.Close()
	h := newHarness(t, harnessOpts{noDecider: true, store: st})
	for _, path := range []string{"/v1/sessions/s1", "/v1/sessions/s1/events", "/v1/sessions/s1/events?after_seq=1"} {
		var body ErrorBody
		if r := h.do(t, "GET", path, "acme-auditor", "", "", &body); r.StatusCode != http.StatusConflict || body.Error.Code != chain.ReasonMalformed {
			t.Errorf("%s: %d %+v, want 409 %s", path, r.StatusCode, body, chain.ReasonMalformed)
		}
	}
	var res VerifyResult
	if r := h.do(t, "GET", "/v1/sessions/s1/verify", "acme-auditor", "", "", &res); r.StatusCode != 200 || res.Valid || len(res.Failures) == 0 || res.Failures[0].Reason != chain.ReasonMalformed {
		t.Errorf("verify: %d %+v", r.StatusCode, res)
	}
}

// failingStore fails every read with an error naming where the store is.
type failingStore struct{ Store }

func (failingStore) Events(context.Context, projector.Filter, func(*projector.EventRow) error) error {
	return errors.New("open /var/lib/aegis/secret-path/audit.db: input/output error")
}

// TestStoreFailureKeepsItsCauseInTheLog: a failed store read is 503
// STORE_UNAVAILABLE, and the cause (here a file path) stays out of the
// answer.
func TestStoreFailureKeepsItsCauseInTheLog(t *testing.T) {
	t.Parallel()
	h := newHarness(t, harnessOpts{noDecider: true, store: failingStore{sealedStore(t, 1)}})
	for _, path := range []string{"/v1/sessions/s1/events", "/v1/sessions/s1"} {
		var out errResp
		r := h.do(t, "GET", path, "acme-auditor", "", "", &out)
		if r.StatusCode != http.StatusServiceUnavailable || out.Error.Code != CodeStoreUnavailable || strings.Contains(out.Error.Message, "secret-path") {
			t.Fatalf("GET %s: %d %+v", path, r.StatusCode, out.Error)
		}
	}
}
