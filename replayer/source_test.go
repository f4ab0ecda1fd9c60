package replayer

import (
	"context"
	"encoding/json"
	"testing"

	"aegis.dev/aegis/projector"
	"aegis.dev/aegis/projector/storetest"
)

// rowsStore serves fixed rows in the given order, as a store that
// deduplicates at merge time may (copies adjacent).
type rowsStore struct{ rows []*projector.EventRow }

func (s rowsStore) Write(context.Context, *projector.Batch) error { return nil }

func (s rowsStore) Events(_ context.Context, _ projector.Filter, fn func(*projector.EventRow) error) error {
	for _, r := range s.rows {
		if err := fn(r); err != nil {
			return err
		}
	}
	return nil
}

// TestStoreSourceCopies: identical copies of a row count once; a copy that
// keeps the seq and the hash but differs in any column marks the session
// invalid at that seq, whichever copy comes first.
func TestStoreSourceCopies(t *testing.T) {
	vec := storetest.Vectors(t)
	first := vec[0]
	var rows []*projector.EventRow
	for i, e := range vec {
		if e.TenantID == first.TenantID && e.SessionID == first.SessionID {
			r := projector.NewEventRow(e, 0, int64(i))
			rows = append(rows, &r)
		}
	}
	forged := *rows[1].Event
	forged.Payload = json.RawMessage(`{"call_id":"m1","model":"gpt-y"}`)
	forgedRow := projector.NewEventRow(&forged, 0, 1)
	column := *rows[1]
	column.ToolName = "shell"
	same := projector.NewEventRow(rows[1].Event, 0, 1)

	with := func(copyRow *projector.EventRow, copyFirst bool) []*projector.EventRow {
		out := append([]*projector.EventRow{}, rows[:1]...)
		if copyFirst {
			out = append(out, copyRow, rows[1])
		} else {
			out = append(out, rows[1], copyRow)
		}
		return append(out, rows[2:]...)
	}
	for _, c := range []struct {
		name    string
		rows    []*projector.EventRow
		invalid bool
	}{
		{"identical copy", with(&same, false), false},
		{"forged payload after", with(&forgedRow, false), true},
		{"forged payload before", with(&forgedRow, true), true},
		{"forged column after", with(&column, false), true},
	} {
		var got []*Session
		err := StoreSource(rowsStore{c.rows})(context.Background(), func(s *Session) error {
			got = append(got, s)
			return nil
		})
		if err != nil || len(got) != 1 {
			t.Fatalf("%s: %v, %d sessions", c.name, err, len(got))
		}
		s := got[0]
		if len(s.Events) != len(rows) {
			t.Errorf("%s: %d events, want %d", c.name, len(s.Events), len(rows))
		}
		if _, bad := s.Invalid[rows[1].Event.Seq]; bad != c.invalid {
			t.Errorf("%s: invalid %v, want %v", c.name, s.Invalid, c.invalid)
		}
	}
}
