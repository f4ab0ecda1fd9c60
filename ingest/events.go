package ingest

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"mime"
	"net"
	"net/http"

	"aegis.dev/aegis/internal/grant"
	"aegis.dev/aegis/schemas/envelope"
)

// EventResult is the outcome of one event of a POST /v1/events request,
// in request order.
type EventResult struct {
	Index int `json:"index"`
	// Status is "accepted" (durably written to aegis.events; for a
	// gateway-assigned seq: accepted by the decider), "rejected" (invalid,
	// or refused by the pipeline), "not_published" (valid, but the request
	// failed as a whole) or "failed" (Kafka did not acknowledge it: retry).
	Status    string       `json:"status"`
	TenantID  string       `json:"tenant_id,omitempty"`
	SessionID string       `json:"session_id,omitempty"`
	Seq       uint64       `json:"seq,omitempty"`
	Error     *ErrorDetail `json:"error,omitempty"`
}

// EventsResponse is the body of POST /v1/events (with Error on failure).
type EventsResponse struct {
	Error    *ErrorDetail  `json:"error,omitempty"`
	Accepted int           `json:"accepted"`
	Results  []EventResult `json:"results"`
}

const (
	mediaJSON   = "application/json"
	mediaNDJSON = "application/x-ndjson"
)

// readBody reads the request body up to the configured limit and checks
// its media type against allowed.
func (s *Server) readBody(w http.ResponseWriter, r *http.Request, allowed ...string) (string, []byte, error) {
	mt, _, err := mime.ParseMediaType(r.Header.Get("Content-Type"))
	ok := false
	for _, a := range allowed {
		ok = ok || (err == nil && mt == a)
	}
	if !ok {
		return "", nil, errf(http.StatusUnsupportedMediaType, CodeUnsupportedMedia, "Content-Type %q: want one of %v", r.Header.Get("Content-Type"), allowed)
	}
	body, err := io.ReadAll(http.MaxBytesReader(w, r.Body, s.cfg.MaxBodyBytes))
	if err != nil {
		var mbe *http.MaxBytesError
		if errors.As(err, &mbe) {
			return "", nil, errf(http.StatusRequestEntityTooLarge, CodeBodyTooLarge, "request body exceeds %d bytes", s.cfg.MaxBodyBytes)
		}
		var ne net.Error
		if errors.As(err, &ne) && ne.Timeout() {
			return "", nil, errf(http.StatusRequestTimeout, CodeRequestTimeout, "the request body did not arrive in time")
		}
		return "", nil, errf(http.StatusBadRequest, CodeMalformedRequest, "read body: %v", err)
	}
	return mt, body, nil
}

// jsonSpace is the white space JSON allows around a value (RFC 8259);
// bytes.TrimSpace would also drop \v, \f, U+0085, U+00A0, U+2028, … so
// that an event with such bytes around it was accepted.
const jsonSpace = " \t\r\n"

// splitEvents splits a body into its events: one JSON object, a JSON
// array of objects, or NDJSON (one object per non-blank line). It stops at
// the first event over max (TOO_MANY_EVENTS), so that a body of millions of
// tiny elements costs no more than max of them.
func splitEvents(mt string, body []byte, max int) ([][]byte, error) {
	tooMany := func() error {
		return errf(http.StatusRequestEntityTooLarge, CodeTooManyEvents, "more than %d events; the limit is %d per request", max, max)
	}
	if mt == mediaNDJSON {
		var out [][]byte
		for line := range bytes.SplitSeq(body, []byte("\n")) {
			if line = bytes.Trim(line, jsonSpace); len(line) > 0 {
				if len(out) == max {
					return nil, tooMany()
				}
				out = append(out, line)
			}
		}
		if len(out) == 0 {
			return nil, errf(http.StatusBadRequest, CodeMalformedRequest, "empty body")
		}
		return out, nil
	}
	trimmed := bytes.Trim(body, jsonSpace)
	if len(trimmed) == 0 {
		return nil, errf(http.StatusBadRequest, CodeMalformedRequest, "empty body")
	}
	if trimmed[0] != '[' {
		return [][]byte{trimmed}, nil
	}
	dec := json.NewDecoder(bytes.NewReader(trimmed))
	if _, err := dec.Token(); err != nil {
		return nil, errf(http.StatusBadRequest, envelope.CodeInvalidJSON, "%v", err)
	}
	var out [][]byte
	for dec.More() {
		if len(out) == max {
			return nil, tooMany()
		}
		var raw json.RawMessage
		if err := dec.Decode(&raw); err != nil {
			return nil, errf(http.StatusBadRequest, envelope.CodeInvalidJSON, "array element %d: %v", len(out), err)
		}
		out = append(out, raw)
	}
	if _, err := dec.Token(); err != nil {
		return nil, errf(http.StatusBadRequest, envelope.CodeInvalidJSON, "%v", err)
	}
	if _, err := dec.Token(); !errors.Is(err, io.EOF) {
		return nil, errf(http.StatusBadRequest, envelope.CodeInvalidJSON, "trailing data after the JSON array")
	}
	if len(out) == 0 {
		return nil, errf(http.StatusBadRequest, CodeMalformedRequest, "empty array")
	}
	return out, nil
}

// signApproval sets the grant of ev, an APPROVAL_DECIDED, and returns
// its canonical form, which must still fit the event limit.
func (s *Server) signApproval(ev *envelope.Event) ([]byte, error) {
	if err := grant.SignEvent(s.secret, ev); err != nil {
		if errors.Is(err, grant.ErrUnbound) {
			return nil, errf(http.StatusBadRequest, envelope.CodeMissingField, "payload: %v", err)
		}
		return nil, errf(http.StatusBadRequest, envelope.CodeInvalidField, "payload: %v", err)
	}
	v, err := ev.AppendCanonical(nil, false)
	if err != nil {
		return nil, fmt.Errorf("ingest: encode %s/%d: %w", ev.Key(), ev.Seq, err)
	}
	if len(v) > s.env.MaxEventBytes {
		return nil, errf(http.StatusRequestEntityTooLarge, envelope.CodeTooLarge, "the signed APPROVAL_DECIDED would be %d bytes, limit is %d", len(v), s.env.MaxEventBytes)
	}
	return v, nil
}

// handleEvents is POST /v1/events. Validation is all or nothing: if any
// event is invalid or foreign, nothing is published and the response
// carries every event's result. Otherwise every event is published; the
// answer is 202 once Kafka acknowledged all of them. Later pipeline
// rejections (sequence rule) land on aegis.rejected.
func (s *Server) handleEvents(w http.ResponseWriter, r *http.Request, p Principal) {
	mt, body, err := s.readBody(w, r, mediaJSON, mediaNDJSON)
	if err != nil {
		writeError(w, err)
		return
	}
	raws, err := splitEvents(mt, body, s.cfg.MaxBatchEvents)
	if err != nil {
		writeError(w, err)
		return
	}
	resp := EventsResponse{Results: make([]EventResult, len(raws))}
	evs := make([]*envelope.Event, len(raws))
	assign := make([]bool, len(raws))
	status, tenants := 0, make(map[string]int)
	for i, raw := range raws {
		res := &resp.Results[i]
		res.Index = i
		ev, as, err := s.decodeClient(raw)
		if err == nil && p.Tenant != "" && ev.TenantID != p.Tenant {
			err = errf(http.StatusForbidden, CodeTenantMismatch, "credentials of tenant %q may not write tenant %q", p.Tenant, ev.TenantID)
		}
		if err == nil && !p.AllowsManifest(ev.Manifest) {
			err = p.manifestError(ev.Manifest)
		}
		if err == nil {
			err = s.checkClock(ev)
		}
		if err == nil && ev.Type == envelope.ApprovalDecided && !p.can(RoleOperator) {
			// An agent must not settle its own approvals: the decider
			// honours any APPROVAL_DECIDED of the session.
			err = errf(http.StatusForbidden, CodeForbidden, "role %s may not record APPROVAL_DECIDED; an operator settles approvals (POST /v1/approvals/{token})", p.Role)
		}
		if err == nil && ev.Type == envelope.ApprovalDecided {
			// The operator's authority is what the gateway vouches for:
			// it signs the decision with its own grant, replacing any the
			// client sent, and publishes that canonical form.
			raws[i], err = s.signApproval(ev)
		}
		if err != nil {
			st, d := eventError(err)
			res.Status, res.Error = "rejected", &d
			if status == 0 {
				status, resp.Error = st, &d
			}
			continue
		}
		evs[i], assign[i] = ev, as
		res.TenantID, res.SessionID, res.Seq = ev.TenantID, ev.SessionID, ev.Seq
		if as {
			res.Seq = 0
		}
		tenants[ev.TenantID]++
	}
	if status != 0 {
		s.metrics.events.WithLabelValues("invalid").Add(float64(len(raws)))
		for i := range resp.Results {
			if resp.Results[i].Status == "" {
				resp.Results[i].Status = "not_published"
			}
		}
		writeJSON(w, status, resp)
		return
	}
	for t, n := range tenants {
		if err := s.admit(t, n); err != nil {
			writeError(w, err)
			return
		}
	}

	// Client-sequenced events go out together; events whose seq the
	// gateway assigns follow one by one, in request order.
	var keys, values [][]byte
	var idx []int
	for i, ev := range evs {
		if !assign[i] {
			keys, values, idx = append(keys, ev.Key()), append(values, raws[i]), append(idx, i)
		}
	}
	failed := false
	for j, err := range s.publishAll(r.Context(), keys, values) {
		res := &resp.Results[idx[j]]
		if err != nil {
			failed = true
			_, d := eventError(s.brokerError(err))
			res.Status, res.Error = "failed", &d
			continue
		}
		res.Status = "accepted"
		resp.Accepted++
	}
	// One wait for all of them: a stalled pipeline holds the request for
	// --proposal-timeout, not that long per event. Events whose turn comes
	// after it ran out are not published.
	wait, cancelWait := context.WithTimeout(r.Context(), s.cfg.ProposalTimeout)
	defer cancelWait()
	for i, ev := range evs {
		if !assign[i] {
			continue
		}
		res := &resp.Results[i]
		if wait.Err() != nil {
			failed = true
			res.Status = "not_published"
			res.Error = &ErrorDetail{Code: CodeDecisionTimeout, Message: "not published: the request's wait ran out before this event's turn"}
			continue
		}
		v, err := s.submit(wait, ev, true, "event")
		switch {
		case errors.Is(err, errWaitTimeout):
			failed = true
			res.Status, res.Seq = "failed", ev.Seq
			res.Error = &ErrorDetail{Code: CodeDecisionTimeout, Message: "published, but the pipeline did not confirm it in time"}
		case err != nil:
			failed = true
			st, d := eventError(err)
			res.Status, res.Error = "failed", &d
			if st < http.StatusInternalServerError {
				// Nothing was published and resending the same event
				// cannot help (TOO_LARGE once the assigned seq is
				// written): the client's to fix, like a rejection.
				res.Status = "rejected"
			}
		case v.Rejection != nil:
			failed = true
			res.Status, res.Error = "rejected", &rejectionError(v.Rejection).Error
		default:
			res.Status, res.Seq = "accepted", ev.Seq
			resp.Accepted++
		}
	}
	s.metrics.events.WithLabelValues("accepted").Add(float64(resp.Accepted))
	if failed {
		s.metrics.events.WithLabelValues("failed").Add(float64(len(raws) - resp.Accepted))
		// The status is the first failure's: a pipeline rejection is the
		// client's to fix (409 for the sequence rule, 400 otherwise) and
		// must not invite a retry of the same bytes; a timeout is 504; a
		// broker failure 503 with Retry-After.
		st := http.StatusServiceUnavailable
		for _, res := range resp.Results {
			if res.Error == nil {
				continue
			}
			e := *res.Error
			resp.Error = &e
			switch {
			case e.Code == CodeDecisionTimeout:
				st = http.StatusGatewayTimeout
			case res.Status == "rejected":
				st = rejectionStatus(e.Code)
			}
			break
		}
		if st == http.StatusServiceUnavailable {
			w.Header().Set("Retry-After", "1")
		}
		writeJSON(w, st, resp)
		return
	}
	writeJSON(w, http.StatusAccepted, resp)
}
