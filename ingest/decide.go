package ingest

import (
	"bytes"
	"encoding/json"
	"errors"
	"net/http"

	"aegis.dev/aegis/internal/ctl"
	"aegis.dev/aegis/schemas/canon"
	"aegis.dev/aegis/schemas/envelope"
)

// handleDecide is POST /v1/policy/decide: the stateless request
// {event, snapshot, manifest} → decision, answered exactly as
// `aegisctl decide` answers it (ctl.DecideOne), with the server's policy.
//
// Outside dev mode the server's manifest registry is authoritative: a
// request carrying its own manifest is refused (403 MANIFEST_NOT_ALLOWED)
// unless the caller is an operator, the role allowed to test policies. The
// event must belong to the caller's tenant.
//
// Envelope fields a stateless question does not need may be left out and
// are filled in: tenant_id (the caller's tenant), session_id ("stateless"),
// seq (the snapshot's last_seq + 1) and ts_unix_ms (server time); the
// decision's input_digest covers the filled-in values. A snapshot in the
// reference implementation's shape (steps_consumed, tool_calls_consumed,
// wall_time_ms) is translated into a session snapshot with those counts.
func (s *Server) handleDecide(w http.ResponseWriter, r *http.Request, p Principal) {
	_, body, err := s.readBody(w, r, mediaJSON)
	if err != nil {
		writeError(w, err)
		return
	}
	tenant, err := tenantOf(r, p)
	if err != nil {
		writeError(w, err)
		return
	}
	var req map[string]json.RawMessage
	if err := strictObject(body, &req); err != nil {
		writeError(w, err)
		return
	}
	if m, ok := req["manifest"]; ok && string(m) != "null" && !s.env.Dev && p.Role != RoleOperator {
		writeError(w, errf(http.StatusForbidden, CodeManifestNotAllowed, "only operators (or --dev) may decide under their own manifest; the server's registry is authoritative"))
		return
	}
	if err := s.completeDecideRequest(req, tenant, p); err != nil {
		st, detail := eventError(err)
		writeJSON(w, st, ErrorBody{Error: detail})
		return
	}
	if err := p.allowsSnapshotManifest(req["snapshot"]); err != nil {
		writeError(w, err)
		return
	}
	body, _ = json.Marshal(req)
	if err := s.admit(tenant, 1); err != nil {
		writeError(w, err)
		return
	}
	d, err := ctl.DecideOne(r.Context(), s.env.Engine, body, true)
	if err != nil {
		st, detail := eventError(err)
		if detail.Code == envelope.CodeInvalidJSON && !isEnvelopeError(err) {
			detail.Code = CodeMalformedRequest
		}
		writeJSON(w, st, ErrorBody{Error: detail})
		return
	}
	writeJSON(w, http.StatusOK, d)
}

// strictObject decodes a JSON object after the strict canonical gate (no
// duplicate keys, invalid UTF-8, unsafe numbers or trailing data).
func strictObject(body []byte, v *map[string]json.RawMessage) error {
	if _, err := canon.Append(nil, body); err != nil {
		return errf(http.StatusBadRequest, CodeMalformedRequest, "%v", err)
	}
	dec := json.NewDecoder(bytes.NewReader(body))
	if err := dec.Decode(v); err != nil || *v == nil {
		return errf(http.StatusBadRequest, CodeMalformedRequest, "the body must be a JSON object")
	}
	if dec.More() {
		return errf(http.StatusBadRequest, CodeMalformedRequest, "trailing data after the JSON object")
	}
	if _, err := dec.Token(); err == nil {
		return errf(http.StatusBadRequest, CodeMalformedRequest, "trailing data after the JSON object")
	}
	return nil
}

// legacySnapshot is the reference implementation's snapshot shape.
type legacySnapshot struct {
	StepsConsumed     *int64 `json:"steps_consumed"`
	ToolCallsConsumed *int64 `json:"tool_calls_consumed"`
	WallTimeMs        *int64 `json:"wall_time_ms"`
}

func (s *Server) completeDecideRequest(req map[string]json.RawMessage, tenant string, p Principal) error {
	raw, ok := req["event"]
	if !ok {
		return errf(http.StatusBadRequest, CodeMalformedRequest, "event is required")
	}
	var snap map[string]json.RawMessage
	if sr, ok := req["snapshot"]; ok && string(sr) != "null" {
		if err := json.Unmarshal(sr, &snap); err != nil {
			return errf(http.StatusBadRequest, CodeMalformedRequest, "snapshot: %v", err)
		}
	}
	var lastSeq uint64
	if v, ok := snap["last_seq"]; ok {
		_ = json.Unmarshal(v, &lastSeq)
	}
	now := s.now().UnixMilli()
	fixed, err := s.normalize(raw, func(m map[string]json.RawMessage) error {
		if _, ok := given(m, "tenant_id"); !ok {
			m["tenant_id"], _ = json.Marshal(tenant)
		}
		if _, ok := given(m, "session_id"); !ok {
			m["session_id"] = json.RawMessage(`"stateless"`)
		}
		if _, ok := given(m, "seq"); !ok {
			m["seq"], _ = json.Marshal(lastSeq + 1)
		}
		if _, ok := given(m, "ts_unix_ms"); !ok {
			m["ts_unix_ms"], _ = json.Marshal(now)
		}
		return nil
	})
	if err != nil {
		return err
	}
	ev, err := s.dec.Decode(fixed)
	if err != nil {
		return err
	}
	if p.Tenant != "" && ev.TenantID != p.Tenant {
		return errf(http.StatusForbidden, CodeTenantMismatch, "credentials of tenant %q may not decide for tenant %q", p.Tenant, ev.TenantID)
	}
	if !p.AllowsManifest(ev.Manifest) {
		// A key bound to manifests asks only under them, as it publishes.
		return p.manifestError(ev.Manifest)
	}
	req["event"] = fixed
	if snap == nil {
		return nil
	}
	_, a := snap["steps_consumed"]
	_, b := snap["tool_calls_consumed"]
	_, c := snap["wall_time_ms"]
	if !a && !b && !c {
		return nil
	}
	var legacy legacySnapshot
	dec := json.NewDecoder(bytes.NewReader(req["snapshot"]))
	dec.DisallowUnknownFields()
	if err := dec.Decode(&legacy); err != nil {
		return errf(http.StatusBadRequest, CodeMalformedRequest, "snapshot: %v (mixes reference fields with others)", err)
	}
	translated := map[string]any{"tenant_id": ev.TenantID, "session_id": ev.SessionID}
	var steps, calls, wall int64
	if legacy.StepsConsumed != nil {
		steps = *legacy.StepsConsumed
	}
	if legacy.ToolCallsConsumed != nil {
		calls = *legacy.ToolCallsConsumed
	}
	if legacy.WallTimeMs != nil {
		wall = *legacy.WallTimeMs
	}
	if steps < 0 || calls < 0 || wall < 0 {
		return errf(http.StatusBadRequest, CodeMalformedRequest, "snapshot: counts must be >= 0")
	}
	events := max(steps, calls)
	if wall > 0 && events == 0 {
		events = 1
	}
	translated["steps"], translated["tool_calls"], translated["events"] = steps, calls, events
	if events > 0 {
		// The event time as decoded: the client may spell it 1.7e12.
		translated["first_ts_ms"], translated["last_ts_ms"] = ev.TsUnixMs-wall, ev.TsUnixMs
		translated["last_seq"] = ev.Seq - 1
	}
	req["snapshot"], _ = json.Marshal(translated)
	return nil
}

// allowsSnapshotManifest checks, for a key bound to manifests, the
// manifest a stateless decision is made under when the snapshot has
// events: the snapshot's, named by its session's first event, or the
// tenant's default when it names none (decider.Engine.Resolve), not the
// event's. A snapshot that does not decode is left to the decision.
func (p Principal) allowsSnapshotManifest(raw json.RawMessage) error {
	if len(p.Manifests) == 0 || len(raw) == 0 {
		return nil
	}
	var snap struct {
		Manifest string `json:"manifest"`
		Events   int64  `json:"events"`
	}
	if json.Unmarshal(raw, &snap) == nil && snap.Events != 0 && !p.AllowsManifest(snap.Manifest) {
		return p.manifestError(snap.Manifest)
	}
	return nil
}

func isEnvelopeError(err error) bool {
	var e *envelope.Error
	return errors.As(err, &e)
}
