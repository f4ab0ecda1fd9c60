package mcpproxy

import (
	"context"
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"aegis.dev/aegis/ingest"
	"aegis.dev/aegis/internal/pipeline"
	"aegis.dev/aegis/schemas/canon"
	"aegis.dev/aegis/schemas/envelope"
)

// MetaCallID is the key of the tools/call params._meta member that sets
// the Aegis call_id of a call. Without it the call_id is derived from the
// tool name and arguments ("mcp-" and 24 hex digits of their SHA-256), so
// the same call retried after an approval is the approved call.
const MetaCallID = "aegis.dev/call_id"

// session is one MCP session: one upstream session and one Aegis session
// (tenant, session id). Requests are handled concurrently; the events of
// the session are published one at a time (mu), so the gateway's seq
// allocation never races with itself.
type session struct {
	p        *Proxy
	tenant   string
	id       string // the Aegis session id
	up       upstream
	ids      idSource
	mu       sync.Mutex
	lastUsed atomic.Int64  // unix ms, for idle expiry
	active   atomic.Int64  // requests in progress; a session with any is not idle
	slots    chan struct{} // one per request in progress, maxSessionInFlight at most
	closed   sync.Once

	// flights are the client's requests in progress, by their id: a
	// notifications/cancelled names the client's id, which the server
	// never saw (forward gives each request an id of its own).
	flightMu sync.Mutex
	flights  map[string]*flight
}

// flight is one request in progress.
type flight struct {
	cancel context.CancelFunc
}

func (s *session) touch() { s.lastUsed.Store(s.p.now().UnixMilli()) }

func (s *session) close() {
	s.closed.Do(func() { _ = s.up.close() })
}

// handle answers one message from the client: the response to a request,
// or nil for a notification or a response.
func (s *session) handle(ctx context.Context, m *message) *message {
	s.touch()
	switch {
	case m.isNotification() && m.Method != "notifications/cancelled" && !clientNotifications[m.Method]:
		// A request without an id (or with id null) gets no answer, so it
		// could not be decided: a tools/call sent this way would reach the
		// server unrecorded. Only MCP's own client notifications pass;
		// one the proxy does not know could mean anything to the server.
		s.p.log.Warn("dropped a notification the proxy does not forward", "session", s.id, "method", clip(m.Method, 128))
		s.p.metrics.requests.WithLabelValues(methodLabel(m.Method), "dropped").Inc()
		return nil
	case m.Method == "notifications/cancelled":
		// Ends the named request here; its forward, if it is waiting
		// for the server, tells the server under the id it used.
		s.cancelFlight(m)
		s.p.metrics.requests.WithLabelValues(methodLabel(m.Method), "notification").Inc()
		return nil
	case m.isNotification():
		// Bounded: in stdio mode the client's next message waits for it.
		nctx, cancel := context.WithTimeout(ctx, min(s.p.cfg.UpstreamTimeout, notifyTimeout))
		defer cancel()
		// Without its params: a notification is neither decided nor
		// recorded, so it carries nothing of the agent's to the server.
		if err := s.up.send(nctx, &message{JSONRPC: "2.0", Method: m.Method}); err != nil {
			s.p.log.Warn("notification not delivered upstream", "session", s.id, "method", m.Method, "err", err)
		}
		s.p.metrics.requests.WithLabelValues(methodLabel(m.Method), "notification").Inc()
		return nil
	case m.isResponse():
		// The proxy relays no server requests, so no response is awaited.
		return nil
	case !requestMethods[m.Method]:
		// Deny by default: a method the proxy neither decides nor audits
		// (a vendor's, a later revision's such as tasks/result, tools/call
		// in another letter case) could run anything at the server and
		// bring anything back, past the decision and its limits.
		s.p.metrics.requests.WithLabelValues(methodLabel(m.Method), "error").Inc()
		return errorResponse(m.ID, CodeMethodNotFound, "aegis: method not forwarded: the proxy passes only the MCP methods it decides or audits", nil)
	}
	// A call may run longer than the idle timeout: the session is in use
	// until it ends, and idle from then on.
	s.active.Add(1)
	defer func() {
		s.touch()
		s.active.Add(-1)
	}()
	ctx, done := s.startFlight(ctx, m)
	defer done()
	var resp *message
	switch m.Method {
	case "tools/call":
		resp = s.callTool(ctx, m)
	case "tools/list":
		resp = s.listTools(ctx, m)
	default:
		resp = s.forwardAudited(ctx, m)
	}
	outcome := "ok"
	if resp.Error != nil {
		outcome = "error"
	}
	s.p.metrics.requests.WithLabelValues(methodLabel(m.Method), outcome).Inc()
	return resp
}

// forward sends req upstream under a fresh id and returns the response
// with the client's id. A transport failure is a CodeInternalError
// response and the error.
func (s *session) forward(ctx context.Context, req *message) (*message, error) {
	if _, ok := ctx.Deadline(); !ok {
		var cancel context.CancelFunc
		ctx, cancel = context.WithTimeout(ctx, s.p.cfg.UpstreamTimeout)
		defer cancel()
	}
	if err := ctx.Err(); err != nil {
		// Cancelled (or out of time) before it was sent: the server
		// never sees it.
		return errorResponse(req.ID, CodeInternalError, "upstream MCP server: not sent: "+err.Error(), nil), err
	}
	up := *req
	up.ID = s.ids.next()
	resp, err := s.up.roundTrip(ctx, &up)
	if err != nil {
		if ctx.Err() != nil {
			// Cancelled by the client, or out of time: the server may
			// still be running the request. Tell it, under its id.
			s.cancelUpstream(up.ID, ctx.Err())
		}
		return errorResponse(req.ID, CodeInternalError, "upstream MCP server: "+err.Error(), nil), err
	}
	resp.ID = req.ID
	return resp, nil
}

// record publishes an event of the session and waits until the decider
// accepted it. The client's cancellation does not cut the audit short:
// the wait is bounded by the decision timeout only.
func (s *session) record(ctx context.Context, typ envelope.Type, payload any) error {
	raw, err := json.Marshal(payload)
	if err != nil {
		return fmt.Errorf("mcpproxy: encode %s: %w", typ, err)
	}
	s.mu.Lock()
	defer s.mu.Unlock()
	// The timeout starts once it is this record's turn: time spent queued
	// behind the session's other records does not count against it.
	rctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), s.p.cfg.DecisionTimeout)
	defer cancel()
	_, err = s.p.pipe.Record(rctx, &envelope.Event{TenantID: s.tenant, SessionID: s.id, Type: typ, Manifest: s.p.cfg.Manifest, Payload: raw})
	if err != nil {
		return fmt.Errorf("mcpproxy: record %s: %w", typ, err)
	}
	return nil
}

// auditFailed is the response when an audit record could not be written:
// the upstream's answer is withheld, since nothing may pass unrecorded.
func auditFailed(id json.RawMessage, err error) *message {
	return errorResponse(id, CodeInternalError, "aegis: the audit record could not be written; the response is withheld: "+err.Error(), nil)
}

// forwardAudited forwards a request other than tools/call and tools/list
// and records it (docs/mcp-proxy.md, "Audit"): resources/read and
// prompts/get bring outside content into the agent's context and are
// recorded as MEMORY_READ (which taints the session, as any unsanitized
// read does); ping is not recorded; every other method is recorded as
// CHECKPOINT_CREATED, a marker without effect on session state.
func (s *session) forwardAudited(ctx context.Context, req *message) *message {
	// What the agent sends the server is recorded with the answer, so it
	// must be recordable before it is sent.
	params, err := auditParams(req.Params)
	if err != nil {
		return errorResponse(req.ID, CodeInvalidParams, req.Method+": "+err.Error(), nil)
	}
	// The MEMORY_READ names what is read: the server must read the same.
	switch req.Method {
	case "resources/read":
		if _, err := strictParams(req.Method, req.Params, "uri", "_meta"); err != nil {
			return errorResponse(req.ID, CodeInvalidParams, err.Error(), nil)
		}
	case "prompts/get":
		if _, err := strictParams(req.Method, req.Params, "name", "arguments", "_meta"); err != nil {
			return errorResponse(req.ID, CodeInvalidParams, err.Error(), nil)
		}
	}
	if req.Method == "ping" {
		// Not recorded, so nothing of the agent's goes with it either.
		req.Params = nil
	}
	resp, _ := s.forward(ctx, req)
	if req.Method == "ping" {
		// Not recorded, so nothing the server wrote may reach the agent:
		// a ping's result is empty, and its error is the proxy's.
		if resp.Error != nil {
			return errorResponse(req.ID, CodeInternalError, "upstream MCP server: ping failed", nil)
		}
		resp.Result = json.RawMessage("{}")
		return resp
	}
	payload := map[string]any{"source": "mcp", "mcp_method": req.Method, "is_error": resp.Error != nil}
	if resp.Error != nil {
		payload["error_code"] = resp.Error.Code
	}
	params.addTo(payload)
	typ := envelope.CheckpointCreated
	var p struct {
		URI        string `json:"uri"`
		Name       string `json:"name"`
		ClientInfo any    `json:"clientInfo"`
		Protocol   string `json:"protocolVersion"`
	}
	_ = json.Unmarshal(req.Params, &p)
	switch req.Method {
	case "resources/read":
		typ, payload["key"] = envelope.MemoryRead, p.URI
	case "prompts/get":
		typ, payload["key"] = envelope.MemoryRead, "prompt:"+p.Name
	case "initialize":
		payload["checkpoint_id"] = "mcp:initialize"
		payload["client_info"], payload["protocol_version"] = p.ClientInfo, p.Protocol
	default:
		payload["checkpoint_id"] = "mcp:" + req.Method
	}
	if err := s.record(ctx, typ, payload); err != nil {
		return auditFailed(req.ID, err)
	}
	return resp
}

// listTools forwards tools/list and keeps only the tools the session's
// manifest declares (permissions.tools, exact match). Without a resolvable
// manifest no tool is listed: deny by default. The listing is recorded
// like any other method (CHECKPOINT_CREATED), with the names it hid.
func (s *session) listTools(ctx context.Context, req *message) *message {
	params, err := auditParams(req.Params)
	if err != nil {
		return errorResponse(req.ID, CodeInvalidParams, req.Method+": "+err.Error(), nil)
	}
	resp, _ := s.forward(ctx, req)
	var result map[string]json.RawMessage
	var tools []json.RawMessage
	if resp.Error == nil {
		// A listing the proxy cannot read is a failed one, and recorded
		// as such: the server was asked all the same.
		if err := json.Unmarshal(resp.Result, &result); err != nil || result == nil {
			resp = errorResponse(req.ID, CodeInternalError, "upstream tools/list result is not an object", nil)
		} else if err := json.Unmarshal(result["tools"], &tools); err != nil && len(result["tools"]) > 0 {
			resp = errorResponse(req.ID, CodeInternalError, "upstream tools/list result has no tools array", nil)
		}
	}
	if resp.Error != nil {
		failed := map[string]any{"source": "mcp", "mcp_method": req.Method, "checkpoint_id": "mcp:tools/list", "is_error": true,
			"error_code": resp.Error.Code}
		params.addTo(failed)
		if err := s.record(ctx, envelope.CheckpointCreated, failed); err != nil {
			return auditFailed(req.ID, err)
		}
		return resp
	}
	declared := s.p.declared(s.tenant)
	kept, hidden := make([]json.RawMessage, 0, len(tools)), []string{}
	for _, t := range tools {
		name, ok := toolName(t)
		if ok && declared[name] {
			kept = append(kept, t)
		} else {
			hidden = append(hidden, name)
		}
	}
	result["tools"], _ = json.Marshal(kept)
	resp.Result, _ = json.Marshal(result)
	listed := map[string]any{"source": "mcp", "mcp_method": req.Method,
		"checkpoint_id": "mcp:tools/list", "is_error": false, "listed": len(kept), "hidden": hidden}
	params.addTo(listed)
	if err := s.record(ctx, envelope.CheckpointCreated, listed); err != nil {
		return auditFailed(req.ID, err)
	}
	return resp
}

// maxAuditParams is the largest canonical params an audit record carries
// verbatim; larger ones are recorded by digest and size.
const maxAuditParams = 16 << 10

// recordedParams is a request's params as its audit record carries them.
type recordedParams struct {
	canonical []byte // nil: the request had no params
	sum       [32]byte
}

// auditParams reads the params of an audited request, in canonical form
// (RFC 8785, as every recorded payload). Params that have no canonical
// form (an integer beyond 2^53, invalid UTF-8) cannot be recorded as the
// server reads them, so the request is refused.
func auditParams(raw json.RawMessage) (recordedParams, error) {
	if len(raw) == 0 || string(raw) == "null" {
		return recordedParams{}, nil
	}
	c, err := canon.Append(nil, raw)
	if err != nil {
		return recordedParams{}, fmt.Errorf("params cannot be recorded: %w", err)
	}
	return recordedParams{canonical: c, sum: sha256.Sum256(c)}, nil
}

// addTo sets payload's params members: params_sha256 (hex SHA-256 of the
// canonical params) and params_bytes always, and params itself when it is
// at most maxAuditParams bytes.
func (p recordedParams) addTo(payload map[string]any) {
	if p.canonical == nil {
		return
	}
	payload["params_sha256"] = hex.EncodeToString(p.sum[:])
	payload["params_bytes"] = len(p.canonical)
	if len(p.canonical) <= maxAuditParams {
		payload["params"] = json.RawMessage(p.canonical)
	}
}

// toolName reads a listed tool's "name" as the agent's client does, with
// case-sensitive keys (Go's decoder would match "Name" too, and take the
// last of the two). ok is false when the tool is not an object with a
// string name, or has a member that differs from "name" only in case: it
// could then be listed under a declared name and read by the agent as
// another tool.
func toolName(raw json.RawMessage) (name string, ok bool) {
	var m map[string]json.RawMessage
	if json.Unmarshal(raw, &m) != nil {
		return "", false
	}
	if json.Unmarshal(m["name"], &name) != nil {
		return "", false
	}
	for k := range m {
		if k != "name" && strings.EqualFold(k, "name") {
			return name, false
		}
	}
	return name, true
}

// resultIsError reports whether a tools/call result is an error as an
// agent's client may read it: an "isError" member other than false or
// null (a client reads "true" or 1 as true, where Go's decoder fails), or
// a member that differs from "isError" only in case (Go's decoder matches
// it too, and the last of the two wins; a client reads the exact key).
func resultIsError(raw json.RawMessage) bool {
	var m map[string]json.RawMessage
	if json.Unmarshal(raw, &m) != nil {
		return false
	}
	for k, v := range m {
		if k == "isError" && string(v) != "false" && string(v) != "null" {
			return true
		}
		if k != "isError" && strings.EqualFold(k, "isError") {
			return true
		}
	}
	return false
}

// callParams reads tools/call params exactly as a server reading them with
// case-sensitive keys would: duplicate keys, and keys that differ from
// name, arguments or _meta only in case, are refused, since Go's decoder
// and the server could otherwise read different calls out of one message.
func callParams(raw json.RawMessage) (name string, args json.RawMessage, meta map[string]json.RawMessage, err error) {
	m, err := strictParams("tools/call", raw, "name", "arguments", "_meta")
	if err != nil {
		return "", nil, nil, err
	}
	for k := range m {
		if strings.EqualFold(k, "task") {
			// A task-augmented call (MCP 2025-11-25) is answered at once
			// and runs on at the server, past the decision's timeout_ms;
			// its result would come back through tasks/result, past
			// max_output_bytes and without a TOOL_RESULT.
			return "", nil, nil, errors.New("tools/call params.task: task-augmented calls are not supported by the Aegis proxy")
		}
	}
	if err := json.Unmarshal(m["name"], &name); err != nil || name == "" {
		return "", nil, nil, errors.New("tools/call needs params.name")
	}
	if raw, ok := m["_meta"]; ok && string(raw) != "null" {
		if err := json.Unmarshal(raw, &meta); err != nil || meta == nil {
			return "", nil, nil, errors.New("tools/call params._meta must be an object")
		}
	}
	return name, m["arguments"], meta, nil
}

// strictParams decodes the params of method as an object that a server
// reading keys case-sensitively and Go's decoder (case-insensitive, last
// duplicate wins) read alike: it refuses duplicate keys (and anything
// else that is not canonical JSON's input) and keys that differ from a
// known one only in letter case.
func strictParams(method string, raw json.RawMessage, known ...string) (map[string]json.RawMessage, error) {
	if _, err := canon.Append(nil, raw); err != nil {
		return nil, fmt.Errorf("%s params: %w", method, err)
	}
	var m map[string]json.RawMessage
	if err := json.Unmarshal(raw, &m); err != nil || m == nil {
		return nil, fmt.Errorf("%s params must be an object", method)
	}
	for k := range m {
		for _, kn := range known {
			if k != kn && strings.EqualFold(k, kn) {
				return nil, fmt.Errorf("%s params: %q is not %q", method, k, kn)
			}
		}
	}
	return m, nil
}

// callTool is the guarded path: propose, and forward only on allow.
func (s *session) callTool(ctx context.Context, req *message) *message {
	name, args, meta, err := callParams(req.Params)
	if err != nil {
		return errorResponse(req.ID, CodeInvalidParams, err.Error(), nil)
	}
	if len(args) == 0 || string(args) == "null" {
		args = json.RawMessage("{}")
	}
	if args[0] != '{' {
		return errorResponse(req.ID, CodeInvalidParams, "tools/call params.arguments must be an object", nil)
	}
	callID, err := callIDOf(name, args, meta)
	if err != nil {
		return errorResponse(req.ID, CodeInvalidParams, err.Error(), nil)
	}
	payload, err := json.Marshal(map[string]any{"tool_name": name, "call_id": callID, "args": args, "source": "mcp"})
	if err != nil {
		return errorResponse(req.ID, CodeInvalidParams, "tools/call arguments: "+err.Error(), nil)
	}
	dec, err := s.propose(ctx, payload)
	data := map[string]any{"tenant_id": s.tenant, "session_id": s.id, "call_id": callID, "tool_name": name}
	switch {
	case errors.Is(err, ingest.ErrDecisionTimeout):
		s.p.metrics.calls.WithLabelValues("timeout").Inc()
		data["outcome"], data["reason"] = "deny", ingest.CodeDecisionTimeout
		return errorResponse(req.ID, CodeDenied, "aegis: no decision in time (DECISION_TIMEOUT); the call was not forwarded", data)
	case err != nil:
		s.p.metrics.calls.WithLabelValues("error").Inc()
		return errorResponse(req.ID, CodeInternalError, "aegis: the proposal could not be recorded; the call was not forwarded: "+err.Error(), nil)
	}
	s.p.metrics.calls.WithLabelValues(string(dec.Outcome)).Inc()
	data["seq"], data["outcome"], data["reason"] = dec.Seq, dec.Outcome, dec.Reason
	data["policy_revision"], data["manifest_digest"] = dec.PolicyRevision, dec.ManifestDigest
	switch dec.Outcome {
	case envelope.Allow:
	case envelope.RequireApproval:
		if a := dec.Approval; a != nil {
			data["approval"] = map[string]any{"token": a.Token, "id": a.ID, "expires_ms": a.ExpiresMs, "state": a.State}
		}
		return errorResponse(req.ID, CodeApprovalRequired, "aegis: approval required ("+dec.Reason+"); settle the approval token, then call again", data)
	default:
		return errorResponse(req.ID, CodeDenied, "aegis: tool call denied: "+dec.Reason, data)
	}

	// TOOL_CALL_EXECUTED is written before the call is sent: the server
	// never runs a call the log does not show as executed. It says that
	// the call was handed to the server; the TOOL_RESULT after it says how
	// it ended (UPSTREAM_UNAVAILABLE: whether the server ran it is unknown).
	ref := map[string]any{"tool_name": name, "call_id": callID, "source": "mcp"}
	if err := s.record(ctx, envelope.ToolCallExecuted, ref); err != nil {
		return errorResponse(req.ID, CodeInternalError, "aegis: the audit record could not be written; the call was not forwarded: "+err.Error(), nil)
	}
	fctx := ctx
	if ms := dec.Constraints.TimeoutMs; ms > 0 {
		var cancel context.CancelFunc
		fctx, cancel = context.WithTimeout(ctx, time.Duration(ms)*time.Millisecond)
		defer cancel()
	}
	// The server gets the call that was decided: the tool name and the
	// arguments, as proposed. _meta and any other member of the params
	// are not part of the proposal, so whatever the agent put there would
	// reach the server undecided (a progressToken is of no use either: the
	// proxy drops the server's notifications).
	call := *req
	call.Params = json.RawMessage(`{"name":` + strconvQuote(name) + `,"arguments":` + string(args) + `}`)
	resp, ferr := s.forward(fctx, &call)
	if ferr != nil || resp.Error != nil {
		// The agent gets the server's error message and data (or, when
		// the server did not answer properly, a message that may quote
		// its reply): outside content, recorded as a failed TOOL_RESULT
		// so that it taints the session like any result.
		raised := map[string]any{"tool_name": name, "call_id": callID, "source": "mcp", "is_error": true}
		// The decision's max_output_bytes bounds what the server may put
		// in the agent's context, its error's message and data included.
		size, limit := 0, dec.Constraints.MaxOutputBytes
		if se := (*statusError)(nil); errors.As(ferr, &se) && limit > 0 && int64(len(se.body)) > limit {
			// The body an HTTP server sent with its error status is its
			// output: past the limit it is withheld, its size recorded.
			cut := *se
			cut.body = nil
			msg := fmt.Sprintf("%s (its %d-byte body is over the decision's max_output_bytes %d; withheld)", cut.Error(), len(se.body), limit)
			raised["code"], raised["message"], raised["output_bytes"] = "UPSTREAM_UNAVAILABLE", msg, len(se.body)
			resp = errorResponse(req.ID, CodeInternalError, "upstream MCP server: "+msg, nil)
		} else if ferr != nil {
			raised["code"], raised["message"] = "UPSTREAM_UNAVAILABLE", ferr.Error()
		} else {
			size = len(resp.Error.Message) + len(resp.Error.Data)
			msg := resp.Error.Message
			if limit > 0 && int64(len(msg)) > limit {
				msg = string(pipeline.TrimPartialRune([]byte(msg[:limit])))
			}
			raised["code"], raised["message"], raised["rpc_code"], raised["output_bytes"] = "UPSTREAM_ERROR", msg, resp.Error.Code, size
		}
		if err := s.record(ctx, envelope.ToolResult, raised); err != nil {
			return auditFailed(req.ID, err)
		}
		if limit > 0 && int64(size) > limit {
			s.p.metrics.calls.WithLabelValues("output_too_large").Inc()
			data["output_bytes"], data["max_output_bytes"] = size, limit
			return errorResponse(req.ID, CodeInternalError, fmt.Sprintf("aegis: the tool's error is %d bytes, over the decision's max_output_bytes %d; it is withheld",
				size, limit), data)
		}
		return resp
	}
	limit := dec.Constraints.MaxOutputBytes
	over := limit > 0 && int64(len(resp.Result)) > limit
	if err := s.record(ctx, envelope.ToolResult, map[string]any{"tool_name": name, "call_id": callID, "source": "mcp",
		"is_error": resultIsError(resp.Result) || over, "output_bytes": len(resp.Result)}); err != nil {
		return auditFailed(req.ID, err)
	}
	if over {
		// The decision allowed at most max_output_bytes: the result is
		// withheld from the agent (its size is recorded).
		s.p.metrics.calls.WithLabelValues("output_too_large").Inc()
		data["output_bytes"], data["max_output_bytes"] = len(resp.Result), limit
		return errorResponse(req.ID, CodeInternalError, fmt.Sprintf("aegis: the tool's result is %d bytes, over the decision's max_output_bytes %d; it is withheld",
			len(resp.Result), limit), data)
	}
	return resp
}

// propose publishes the proposal and waits for its decision.
func (s *session) propose(ctx context.Context, payload json.RawMessage) (*ingest.ProposalResponse, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	if err := ctx.Err(); err != nil {
		return nil, err
	}
	// As in record: the decision timeout starts once it is this
	// proposal's turn.
	pctx, cancel := context.WithTimeout(ctx, s.p.cfg.DecisionTimeout)
	defer cancel()
	return s.p.pipe.Propose(pctx, &envelope.Event{TenantID: s.tenant, SessionID: s.id, Type: envelope.ToolCallProposed,
		Manifest: s.p.cfg.Manifest, Payload: payload})
}

// callIDOf returns the call's Aegis call_id: params._meta[MetaCallID] when
// set, else derived from the tool name and canonical arguments.
func callIDOf(tool string, args json.RawMessage, meta map[string]json.RawMessage) (string, error) {
	if raw, ok := meta[MetaCallID]; ok {
		var id string
		if err := json.Unmarshal(raw, &id); err != nil || id == "" {
			return "", fmt.Errorf("tools/call params._meta[%q] must be a non-empty string", MetaCallID)
		}
		return id, nil
	}
	b, err := json.Marshal(map[string]json.RawMessage{"tool_name": json.RawMessage(strconvQuote(tool)), "args": args})
	if err != nil {
		return "", fmt.Errorf("tools/call arguments: %w", err)
	}
	c, err := canon.Append(nil, b)
	if err != nil {
		return "", fmt.Errorf("tools/call arguments: %w", err)
	}
	sum := sha256.Sum256(c)
	return "mcp-" + hex.EncodeToString(sum[:12]), nil
}

func strconvQuote(s string) string {
	b, _ := json.Marshal(s)
	return string(b)
}

// startFlight registers request m under its client id until done is
// called, with a context that notifications/cancelled can end.
func (s *session) startFlight(ctx context.Context, m *message) (context.Context, func()) {
	ctx, cancel := context.WithCancel(ctx)
	key := string(m.ID)
	f := &flight{cancel: cancel}
	s.flightMu.Lock()
	if s.flights == nil {
		s.flights = make(map[string]*flight)
	}
	if _, dup := s.flights[key]; dup {
		// Two requests in flight under one id: a cancellation could
		// not tell them apart, so this one cannot be cancelled.
		f = nil
	} else {
		s.flights[key] = f
	}
	s.flightMu.Unlock()
	return ctx, func() {
		cancel()
		if f != nil {
			s.flightMu.Lock()
			delete(s.flights, key)
			s.flightMu.Unlock()
		}
	}
}

// cancelFlight ends the request a notifications/cancelled names, if it is
// in progress; one that is not is ignored, as MCP asks.
func (s *session) cancelFlight(m *message) {
	var p struct {
		RequestID json.RawMessage `json:"requestId"`
	}
	if json.Unmarshal(m.Params, &p) != nil || len(p.RequestID) == 0 {
		return
	}
	s.flightMu.Lock()
	f := s.flights[string(p.RequestID)]
	s.flightMu.Unlock()
	if f != nil {
		f.cancel()
	}
}

// cancelUpstream tells the server that the request it knows as id is no
// longer wanted (best effort, bounded by a few seconds).
func (s *session) cancelUpstream(id json.RawMessage, cause error) {
	params, _ := json.Marshal(map[string]any{"requestId": id, "reason": cause.Error()})
	ctx, cancel := context.WithTimeout(context.Background(), cancelNotifyTimeout)
	defer cancel()
	if err := s.up.send(ctx, &message{JSONRPC: "2.0", Method: "notifications/cancelled", Params: params}); err != nil {
		s.p.log.Warn("cancellation not delivered upstream", "session", s.id, "err", err)
	}
}

// cancelNotifyTimeout bounds the notification that cancels a request upstream.
const cancelNotifyTimeout = 5 * time.Second

// notifyTimeout bounds a client's notification passed upstream.
const notifyTimeout = 30 * time.Second

// requestMethods are the client requests the proxy forwards: tools/call
// is decided, the others audited (docs/mcp-proxy.md). Any other request is
// answered CodeMethodNotFound and never reaches the server.
var requestMethods = map[string]bool{
	"initialize": true, "ping": true, "tools/list": true, "tools/call": true,
	"resources/list": true, "resources/read": true, "resources/templates/list": true,
	"resources/subscribe": true, "resources/unsubscribe": true,
	"prompts/list": true, "prompts/get": true, "completion/complete": true, "logging/setLevel": true,
}

// clientNotifications are the client notifications the proxy forwards,
// without their params (notifications/cancelled is handled in the proxy);
// others are dropped. A client's notifications/progress reports on a
// server request, which the proxy never relays: it is dropped too.
var clientNotifications = map[string]bool{
	"notifications/initialized": true, "notifications/roots/list_changed": true,
}

// methodLabel is the metric label of method: the method itself when the
// proxy knows it, else "other", so that clients cannot add series to
// /metrics.
func methodLabel(method string) string {
	if requestMethods[method] || clientNotifications[method] || method == "notifications/cancelled" {
		return method
	}
	return "other"
}

// clip shortens a client-sent string for a log line: at most n bytes of
// it, and its length when it was longer.
func clip(s string, n int) string {
	if len(s) <= n {
		return s
	}
	return fmt.Sprintf("%s… (%d bytes)", strings.ToValidUTF8(s[:n], ""), len(s))
}
