package replayer

import (
	"context"
	"fmt"

	"aegis.dev/aegis/projector"
)

// StoreSource streams the sessions of an audit store selected by each of
// filters in turn (none: every session), using the store's ordered scan
// (tenant, session, seq): one session is assembled at a time and handed on
// before the next is read. Identical copies of a row (ClickHouse before a
// merge) count once; a different row with the same seq (even one that keeps
// the hash column: every column is compared), or a row that does
// not rebuild a sealed record, is marked Invalid so that a replay reports it.
func StoreSource(st projector.Store, filters ...projector.Filter) Source {
	if len(filters) == 0 {
		filters = []projector.Filter{{}}
	}
	return func(ctx context.Context, fn func(*Session) error) error {
		for _, f := range filters {
			var cur *Session
			var last *projector.EventRow
			err := st.Events(ctx, f, func(r *projector.EventRow) error {
				ev := r.Event
				if cur != nil && (cur.TenantID != ev.TenantID || cur.SessionID != ev.SessionID) {
					if err := fn(cur); err != nil {
						return err
					}
					cur = nil
				}
				if cur == nil {
					cur = &Session{TenantID: ev.TenantID, SessionID: ev.SessionID}
				}
				if n := len(cur.Events); n > 0 && cur.Events[n-1].Seq == ev.Seq {
					if !projector.SameRow(last, r) {
						cur.invalid(ev.Seq, fmt.Errorf("two different rows with seq %d", ev.Seq))
					}
					return nil
				}
				last = r
				if r.Invalid != nil {
					cur.invalid(ev.Seq, r.Invalid)
				} else if col, ok := r.ColumnsMatch(); !ok {
					cur.invalid(ev.Seq, fmt.Errorf("column %s disagrees with the hashed payload and decision", col))
				}
				cur.Events = append(cur.Events, ev)
				return nil
			})
			if err != nil {
				return err
			}
			if cur != nil {
				if err := fn(cur); err != nil {
					return err
				}
			}
		}
		return nil
	}
}

func (s *Session) invalid(seq uint64, err error) {
	if s.Invalid == nil {
		s.Invalid = map[uint64]error{}
	}
	if _, dup := s.Invalid[seq]; !dup {
		s.Invalid[seq] = err
	}
}

// EventsSource streams sessions already grouped by the caller (for example
// read from one partition of the sealed topic), in the order given.
func EventsSource(sessions []*Session) Source {
	return func(_ context.Context, fn func(*Session) error) error {
		for _, s := range sessions {
			if err := fn(s); err != nil {
				return err
			}
		}
		return nil
	}
}
