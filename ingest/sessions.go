package ingest

import (
	"context"
	"encoding/json"
	"errors"
	"net/http"
	"strconv"

	"aegis.dev/aegis/decider/session"
	"aegis.dev/aegis/internal/ctl"
	"aegis.dev/aegis/projector"
	"aegis.dev/aegis/schemas/chain"
)

// Store is what the session endpoints read: the audit store's sealed
// events (projector.Store satisfies it). A store that also implements
// projector.HeadReader lets verify check each chain against the sealer's
// head, which catches a truncated tail; one that implements
// projector.DecisionReader and projector.SnapshotReader (both audit stores
// do) has the session's decisions and session_snapshots rows checked too.
type Store interface {
	Events(ctx context.Context, f projector.Filter, fn func(*projector.EventRow) error) error
}

// WithStore sets the audit store read by the session endpoints (default:
// none; they answer 501 STORE_NOT_CONFIGURED).
func WithStore(st Store) Option { return func(s *Server) { s.store = st } }

// Page bounds of GET /v1/sessions/{session}/events.
const (
	defaultPageSize = 100
	maxPageSize     = 1000
	// maxPageBytes bounds the records of one page: a page ends early
	// (with next_cursor) once they reach it, so that a page of a
	// thousand records of up to --max-event-bytes each is not held in
	// memory at once. A page holds at least one record whatever its size.
	maxPageBytes = 8 << 20
)

// EventsPage is a page of a session's sealed events.
type EventsPage struct {
	Events []json.RawMessage `json:"events"`
	// NextCursor, when not empty, is the after_seq of the next page; empty
	// means this page ends the session's stored events.
	NextCursor string `json:"next_cursor"`
}

// VerifyResult is the body of GET /v1/sessions/{session}/verify.
type VerifyResult struct {
	Valid    bool            `json:"valid"`
	Events   int64           `json:"events"`
	Head     *chain.Head     `json:"head,omitempty"`
	Failures []chain.Failure `json:"failures"`
}

var errStop = errors.New("ingest: page full")

// sessionScope resolves the (tenant, session) a read acts on.
func (s *Server) sessionScope(r *http.Request, p Principal) (projector.Filter, error) {
	if s.store == nil {
		return projector.Filter{}, errf(http.StatusNotImplemented, CodeNoStore, "session reads need the audit store")
	}
	tenant, err := tenantOf(r, p)
	if err != nil {
		return projector.Filter{}, err
	}
	return projector.Filter{TenantID: tenant, SessionID: r.PathValue("session")}, nil
}

// storeError is the answer to a failed read of the audit store. The cause
// (file paths, server addresses) goes to the gateway's log, not to the
// client.
func (s *Server) storeError(err error) error {
	s.log.Warn("audit store read failed", "err", err)
	return &apiError{Status: http.StatusServiceUnavailable, Code: CodeStoreUnavailable, Message: "the audit store failed; the gateway's log has the cause"}
}

// scan calls fn with the session's rows in seq order, once per seq (stores
// that deduplicate at merge time may repeat a row). A row whose columns do
// not rebuild a record ends the scan with 409 MALFORMED.
func (s *Server) scan(ctx context.Context, f projector.Filter, fn func(*projector.EventRow) error) error {
	_, err := s.scanRows(ctx, f, fn)
	return err
}

// scanRows is scan that also counts the rows the store sent, repeats
// included (a scan with f.Limit that got f.Limit rows may have more).
func (s *Server) scanRows(ctx context.Context, f projector.Filter, fn func(*projector.EventRow) error) (int, error) {
	var last uint64
	n := 0
	err := s.store.Events(ctx, f, func(row *projector.EventRow) error {
		n++
		if row.Event.Seq == last && last != 0 {
			return nil
		}
		last = row.Event.Seq
		if row.Invalid != nil {
			return malformed(row.Event.Seq, row.Invalid)
		}
		return fn(row)
	})
	return n, err
}

// malformed is the answer to a stored row that is not a sealed record.
func malformed(seq uint64, err error) error {
	return errf(http.StatusConflict, chain.ReasonMalformed, "stored seq %d is not a sealed record: %v (run verify)", seq, err)
}

// handleSnapshot is GET /v1/sessions/{session}: the session snapshot after
// its stored events, rebuilt by the decider's reducer from the sealed log.
func (s *Server) handleSnapshot(w http.ResponseWriter, r *http.Request, p Principal) {
	f, err := s.sessionScope(r, p)
	if err != nil {
		writeError(w, err)
		return
	}
	snap := session.New(f.TenantID, f.SessionID)
	err = s.scan(r.Context(), f, func(row *projector.EventRow) error {
		if err := snap.Apply(row.Event); err != nil {
			return errf(http.StatusConflict, chain.ReasonMalformed, "stored seq %d does not apply: %v (run verify)", row.Event.Seq, err)
		}
		return nil
	})
	var ae *apiError
	switch {
	case errors.As(err, &ae):
		writeError(w, err)
		return
	case err != nil:
		writeError(w, s.storeError(err))
		return
	case snap.Events == 0:
		writeError(w, errf(http.StatusNotFound, CodeNotFound, "no stored events for session %q", f.SessionID))
		return
	}
	hash, err := snap.Hash()
	if err != nil {
		writeError(w, err)
		return
	}
	writeJSON(w, http.StatusOK, map[string]any{"snapshot": snap, "snapshot_hash": hash})
}

// handleSessionEvents is GET /v1/sessions/{session}/events?after_seq=N&limit=M:
// the sealed records with seq > after_seq, in seq order, at most limit
// (default 100, at most 1000), and no more once they reach maxPageBytes. A
// page is never cut silently: next_cursor is set whenever more records
// follow.
// maxSeq is the largest seq an event may carry (the largest integer JSON
// carries exactly, as the event schema says).
const maxSeq = 1<<53 - 1

func (s *Server) handleSessionEvents(w http.ResponseWriter, r *http.Request, p Principal) {
	f, err := s.sessionScope(r, p)
	if err != nil {
		writeError(w, err)
		return
	}
	q := r.URL.Query()
	var after uint64
	if v := q.Get("after_seq"); v != "" {
		if after, err = strconv.ParseUint(v, 10, 64); err != nil {
			writeError(w, errf(http.StatusBadRequest, CodeMalformedRequest, "after_seq %q: want a seq", v))
			return
		}
	}
	limit := defaultPageSize
	if v := q.Get("limit"); v != "" {
		if limit, err = strconv.Atoi(v); err != nil || limit < 1 || limit > maxPageSize {
			writeError(w, errf(http.StatusBadRequest, CodeMalformedRequest, "limit %q: want 1..%d", v, maxPageSize))
			return
		}
	}
	page := EventsPage{Events: []json.RawMessage{}}
	if after >= maxSeq {
		writeJSON(w, http.StatusOK, page) // no seq is larger
		return
	}
	// The store sends at most limit+1 rows a query: the page and one more
	// that says whether a next page exists. Repeats of a row (ClickHouse
	// before its merges) take places in that count, so a query that got
	// all it asked for without filling the page is followed by another
	// after the last seq it saw.
	lastSeq := after
	size := 0
	for {
		f.AfterSeq, f.Limit = lastSeq, limit+1
		var rows int
		rows, err = s.scanRows(r.Context(), f, func(row *projector.EventRow) error {
			if row.Event.Seq <= lastSeq {
				return nil
			}
			if len(page.Events) == limit || size >= maxPageBytes {
				page.NextCursor = strconv.FormatUint(lastSeq, 10)
				return errStop
			}
			b, err := row.Event.AppendCanonical(nil, true)
			if err != nil {
				return malformed(row.Event.Seq, err)
			}
			page.Events, lastSeq, size = append(page.Events, b), row.Event.Seq, size+len(b)
			return nil
		})
		if err != nil || rows < f.Limit || lastSeq >= maxSeq {
			break
		}
	}
	var ae *apiError
	switch {
	case errors.As(err, &ae):
		writeError(w, err)
		return
	case err != nil && !errors.Is(err, errStop):
		writeError(w, s.storeError(err))
		return
	}
	writeJSON(w, http.StatusOK, page)
}

// handleVerify is GET /v1/sessions/{session}/verify: the session checked
// exactly as `aegisctl verify --store` checks it (ctl.VerifyStore): every
// stored record re-hashed and re-linked, the filter columns checked against
// the records, identical redelivered copies tolerated, when the store
// keeps chain heads, the last record checked against the sealer's head,
// and, when it reads them back, the session's decisions and
// session_snapshots rows checked against the rows its records derive.
func (s *Server) handleVerify(w http.ResponseWriter, r *http.Request, p Principal) {
	f, err := s.sessionScope(r, p)
	if err != nil {
		writeError(w, err)
		return
	}
	src, ok := s.store.(ctl.ChainSource)
	if !ok {
		src = withoutHeads{s.store}
	}
	rep, err := ctl.VerifyStore(r.Context(), src, f, 1)
	if err != nil {
		writeError(w, s.storeError(err))
		return
	}
	res := VerifyResult{Events: rep.Events, Failures: rep.Failures}
	if res.Events == 0 && len(res.Failures) == 0 {
		writeError(w, errf(http.StatusNotFound, CodeNotFound, "no stored events for session %q", f.SessionID))
		return
	}
	if len(rep.Heads) == 1 {
		res.Head = &rep.Heads[0]
	}
	if res.Failures == nil {
		res.Failures = []chain.Failure{}
	}
	res.Valid = len(res.Failures) == 0
	writeJSON(w, http.StatusOK, res)
}

// withoutHeads serves a store that keeps no chain heads: verification then
// checks the stored chain alone.
type withoutHeads struct{ Store }

func (withoutHeads) Heads(context.Context, projector.Filter) ([]chain.Head, error) { return nil, nil }
