package ingest

import (
	"context"
	"fmt"
	"io"
	"net/http"
	"path/filepath"
	"strings"
	"testing"

	"aegis.dev/aegis/projector"
	"aegis.dev/aegis/projector/sqlstore"
	"aegis.dev/aegis/schemas/chain"
	"aegis.dev/aegis/schemas/envelope"
)

// TestSessionEventsPageIsBoundedInBytes: a page of sealed records is cut
// by its size as well as by limit, so that one read of a session of
// large events (each up to --max-event-bytes, a thousand to a page) does
// not make the gateway hold a gigabyte; next_cursor still walks them all.
func TestSessionEventsPageIsBoundedInBytes(t *testing.T) {
	t.Parallel()
	ctx := context.Background()
	st, err := sqlstore.Open(ctx, filepath.Join(t.TempDir(), "audit.db"))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = st.Close() })
	const n, blob = 24, 900 << 10
	var b projector.Batch
	var head *chain.Head
	for seq := 1; seq <= n; seq++ {
		e, err := envelope.Decode([]byte(ev("acme", "big", seq, "MODEL_CALL_STARTED", fmt.Sprintf(`{"model":"m","blob":%q}`, strings.Repeat("x", blob)))))
		if err != nil {
			t.Fatal(err)
		}
		h, err := chain.Link(head, e)
		if err != nil {
			t.Fatal(err)
		}
		head = &h
		b.Events = append(b.Events, projector.NewEventRow(e, 0, int64(seq)))
	}
	b.Heads = append(b.Heads, *head)
	if err := st.Write(ctx, &b); err != nil {
		t.Fatal(err)
	}
	h := newHarness(t, harnessOpts{noDecider: true, store: st})

	var seqs []uint64
	cursor := "0"
	for pages := 0; cursor != "" && pages < n+1; pages++ {
		req, _ := http.NewRequest("GET", h.url+"/v1/sessions/big/events?limit=1000&after_seq="+cursor, nil)
		req.Header.Set("Authorization", "Bearer acme-auditor")
		resp, err := http.DefaultClient.Do(req)
		if err != nil {
			t.Fatal(err)
		}
		raw, err := io.ReadAll(resp.Body)
		resp.Body.Close()
		if err != nil || resp.StatusCode != 200 {
			t.Fatalf("page after %s: %d %v", cursor, resp.StatusCode, err)
		}
		if len(raw) > maxPageBytes+2*blob {
			t.Fatalf("page after %s is %d bytes, want at most %d and one more record", cursor, len(raw), maxPageBytes)
		}
		var page EventsPage
		if err := decodeStrict(raw, &page); err != nil {
			t.Fatal(err)
		}
		for _, r := range page.Events {
			e, err := envelope.Decoder{Sealed: true}.Decode(r)
			if err != nil {
				t.Fatal(err)
			}
			seqs = append(seqs, e.Seq)
		}
		cursor = page.NextCursor
	}
	if len(seqs) != n || seqs[0] != 1 || seqs[n-1] != n {
		t.Fatalf("seqs %v", seqs)
	}
}
