package ingest

import (
	"context"
	"crypto/hmac"
	"crypto/rand"
	"crypto/sha256"
	"encoding/base64"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"net/http"
	"sort"
	"strings"
	"sync"
	"time"

	"aegis.dev/aegis/decider"
	"aegis.dev/aegis/decider/session"
	"aegis.dev/aegis/internal/grant"
	"aegis.dev/aegis/internal/pipeline"
	"aegis.dev/aegis/schemas/canon"
	"aegis.dev/aegis/schemas/envelope"
)

// Approval states as the API reports them.
const (
	ApprovalPending  = "pending"
	ApprovalApproved = "approved"
	ApprovalDenied   = "denied"
	ApprovalExpired  = "expired"
	// ApprovalSuperseded: the call_id was proposed again with another
	// tool or other arguments before this approval was decided; the
	// pipeline keeps one approval per call_id, the newer one.
	ApprovalSuperseded = "superseded"
)

// approverExpiry is the approver recorded when an approval expires unanswered.
const approverExpiry = "aegis:expiry"

// Claims are what an approval token binds: the exact proposal (tenant,
// session, call, tool, argument digest) and the expiry. The token is
// "apv1.<base64url(canonical JSON of Claims)>.<base64url(HMAC-SHA256(secret,
// SHA-256(canonical JSON of Claims)))>", so it cannot be altered or minted
// without the server secret.
type Claims struct {
	ID         string `json:"id"`
	TenantID   string `json:"tenant_id"`
	SessionID  string `json:"session_id"`
	CallID     string `json:"call_id"`
	ToolName   string `json:"tool_name"`
	ArgsDigest string `json:"args_digest"`
	// ExpiresMs is the expiry in ms since the Unix epoch.
	ExpiresMs int64 `json:"expires_ms"`
}

// Approval is an approval request as GET /v1/approvals lists it.
type Approval struct {
	Token        string `json:"token"`
	ID           string `json:"id"`
	TenantID     string `json:"tenant_id"`
	SessionID    string `json:"session_id"`
	CallID       string `json:"call_id"`
	ToolName     string `json:"tool_name"`
	ArgsDigest   string `json:"args_digest"`
	RequestedSeq uint64 `json:"requested_seq"`
	ExpiresMs    int64  `json:"expires_ms"`
	State        string `json:"state"`
	Approver     string `json:"approver,omitempty"`
	Reason       string `json:"reason,omitempty"`
	// DecidedSeq is the seq of the APPROVAL_DECIDED event, once recorded.
	DecidedSeq uint64 `json:"decided_seq,omitempty"`
}

type approvalEntry struct {
	Approval
	busy bool          // an APPROVAL_DECIDED is being recorded
	done chan struct{} // closed once decided
}

// callKey is what one open approval is for: a call, with its arguments.
type callKey struct {
	tenant, session, callID, tool, argsDigest string
}

func (e *approvalEntry) key() callKey {
	return callKey{e.TenantID, e.SessionID, e.CallID, e.ToolName, e.ArgsDigest}
}

func (e *approvalEntry) call() [3]string { return [3]string{e.TenantID, e.SessionID, e.CallID} }

// approvals is the gateway's registry of approval requests. Tokens are
// verified by HMAC; single use is enforced here (a token leaves the
// pending state exactly once) and again by the pipeline, whose reducer
// settles an approval only once.
type approvals struct {
	secret []byte
	// maxPending is Config.MaxPendingApprovals.
	maxPending int
	mu         sync.Mutex
	byID       map[string]*approvalEntry
	pending    map[callKey]*approvalEntry
	// byCall is the pending approval of each (tenant, session, call_id).
	byCall map[[3]string]*approvalEntry
	// latest is the approval last opened for each call and arguments,
	// pending or decided, while it is listed: an exact retry of the
	// proposal that asked for it gets it, not a new one.
	latest map[callKey]*approvalEntry
	// pendingBy counts pending approvals per tenant.
	pendingBy map[string]int
	// decidedBy lists each tenant's decided approvals in the order they
	// left the pending state; at most maxPending are kept (the oldest are
	// forgotten first), so that an agent re-proposing one call with ever
	// new arguments cannot grow the registry without end. expireApprovals
	// drops the ones it forgets.
	decidedBy map[string][]*approvalEntry
}

func newApprovals(secret []byte, maxPending int) *approvals {
	return &approvals{secret: secret, maxPending: maxPending, byID: make(map[string]*approvalEntry), pending: make(map[callKey]*approvalEntry),
		byCall: make(map[[3]string]*approvalEntry), latest: make(map[callKey]*approvalEntry), pendingBy: make(map[string]int),
		decidedBy: make(map[string][]*approvalEntry)}
}

// retain keeps decided approval e listed, forgetting the tenant's oldest
// decided ones beyond maxPending. The caller holds a.mu.
func (a *approvals) retain(e *approvalEntry) {
	q := append(a.decidedBy[e.TenantID], e)
	for len(q) > a.maxPending {
		if old := q[0]; a.byID[old.ID] == old {
			a.forget(old)
		}
		q[0] = nil
		q = q[1:]
	}
	a.decidedBy[e.TenantID] = q
}

// decided moves e out of the pending state. The caller holds a.mu.
func (a *approvals) decided(e *approvalEntry, state, approver, reason string, seq uint64) {
	delete(a.pending, e.key())
	if ck := e.call(); a.byCall[ck] == e {
		delete(a.byCall, ck)
	}
	if a.pendingBy[e.TenantID]--; a.pendingBy[e.TenantID] <= 0 {
		delete(a.pendingBy, e.TenantID)
	}
	e.State, e.Approver, e.Reason, e.DecidedSeq = state, approver, reason, seq
	close(e.done)
	a.retain(e)
}

// forget drops e from the registry. The caller holds a.mu.
func (a *approvals) forget(e *approvalEntry) {
	delete(a.byID, e.ID)
	if k := e.key(); a.latest[k] == e {
		delete(a.latest, k)
	}
}

func (a *approvals) sign(c Claims) string {
	b, _ := json.Marshal(c)
	b, _ = canon.Append(nil, b)
	digest := sha256.Sum256(b)
	mac := hmac.New(sha256.New, a.secret)
	mac.Write(digest[:])
	return "apv1." + base64.RawURLEncoding.EncodeToString(b) + "." + base64.RawURLEncoding.EncodeToString(mac.Sum(nil))
}

// verify returns the claims of a token this server signed.
func (a *approvals) verify(token string) (Claims, bool) {
	parts := strings.Split(token, ".")
	if len(parts) != 3 || parts[0] != "apv1" {
		return Claims{}, false
	}
	body, err1 := base64.RawURLEncoding.DecodeString(parts[1])
	sig, err2 := base64.RawURLEncoding.DecodeString(parts[2])
	if err1 != nil || err2 != nil {
		return Claims{}, false
	}
	digest := sha256.Sum256(body)
	mac := hmac.New(sha256.New, a.secret)
	mac.Write(digest[:])
	if !hmac.Equal(sig, mac.Sum(nil)) {
		return Claims{}, false
	}
	var c Claims
	if json.Unmarshal(body, &c) != nil {
		return Claims{}, false
	}
	return c, true
}

// open registers the approval a require_approval reply asks for, or
// returns the one already open for the same call and arguments.
func (a *approvals) open(rep *decider.Reply, args json.RawMessage, expires time.Time) (*approvalEntry, error) {
	digest, err := session.CallDigest(rep.ToolName, args)
	if err != nil {
		return nil, err
	}
	a.mu.Lock()
	defer a.mu.Unlock()
	k := callKey{rep.TenantID, rep.SessionID, rep.CallID, rep.ToolName, digest}
	if e := a.pending[k]; e != nil {
		// The decider's approval is now the one requested at the later
		// seq: the reply of other arguments proposed before it, but
		// handled after it, must not supersede it.
		e.RequestedSeq = max(e.RequestedSeq, rep.Seq)
		return e, nil
	}
	if e := a.latest[k]; e != nil && rep.Seq <= e.RequestedSeq {
		// A retry of a proposal whose approval was decided since (the
		// client lost the answer): the decider waits for no approval of
		// it, so a new one would settle nothing.
		return e, nil
	}
	// The decider now waits for an approval of this call, not of the
	// earlier arguments: a decision on the earlier token would settle
	// nothing, so it is refused (409) rather than reported as approved.
	// Two replies may reach their handlers out of order: the later seq
	// wins.
	old := a.byCall[[3]string{rep.TenantID, rep.SessionID, rep.CallID}]
	stale := old != nil && old.RequestedSeq > rep.Seq
	if old != nil && !stale && !old.busy {
		a.decided(old, ApprovalSuperseded, "", fmt.Sprintf("superseded by the proposal at seq %d (another tool or other arguments)", rep.Seq), 0)
	}
	if a.pendingBy[rep.TenantID] >= a.maxPending {
		return nil, &apiError{Status: http.StatusTooManyRequests, Code: CodeTooManyApprovals, RetryAfter: time.Minute,
			Message: fmt.Sprintf("tenant %s has %d approvals pending on this gateway; decide some first (the require_approval decision is recorded)", rep.TenantID, a.maxPending)}
	}
	var id [16]byte
	_, _ = rand.Read(id[:])
	c := Claims{ID: hex.EncodeToString(id[:]), TenantID: rep.TenantID, SessionID: rep.SessionID, CallID: rep.CallID,
		ToolName: rep.ToolName, ArgsDigest: digest, ExpiresMs: expires.UnixMilli()}
	e := &approvalEntry{Approval: Approval{Token: a.sign(c), ID: c.ID, TenantID: c.TenantID, SessionID: c.SessionID, CallID: c.CallID,
		ToolName: c.ToolName, ArgsDigest: digest, RequestedSeq: rep.Seq, ExpiresMs: c.ExpiresMs, State: ApprovalPending},
		done: make(chan struct{})}
	a.byID[c.ID] = e
	if stale {
		e.State, e.Reason = ApprovalSuperseded, fmt.Sprintf("superseded by the proposal at seq %d (another tool or other arguments)", old.RequestedSeq)
		close(e.done)
		a.retain(e)
		return e, nil
	}
	a.pending[k] = e
	a.byCall[e.call()] = e
	a.latest[k] = e
	a.pendingBy[rep.TenantID]++
	return e, nil
}

// list returns the approvals of tenant ("" = all) in state ("" = all),
// oldest request first.
func (a *approvals) list(tenant, state string) []Approval {
	a.mu.Lock()
	defer a.mu.Unlock()
	out := []Approval{}
	for _, e := range a.byID {
		if (tenant == "" || e.TenantID == tenant) && (state == "" || e.State == state) {
			out = append(out, e.Approval)
		}
	}
	sort.Slice(out, func(i, j int) bool {
		if out[i].ExpiresMs != out[j].ExpiresMs {
			return out[i].ExpiresMs < out[j].ExpiresMs
		}
		return out[i].ID < out[j].ID
	})
	return out
}

// ApprovalDecision is the body of POST /v1/approvals/{token}. ToolName and
// Args, when given, must match what the token is bound to (a guard for
// approvers who approve a call they were shown).
type ApprovalDecision struct {
	Decision string          `json:"decision"` // "allow" or "deny"
	Reason   string          `json:"reason,omitempty"`
	ToolName string          `json:"tool_name,omitempty"`
	Args     json.RawMessage `json:"args,omitempty"`
}

// settle records the decision on an approval: it publishes APPROVAL_DECIDED
// (payload call_id, decision, approver, reason, tool_name, args_digest,
// approval_id, expires_ms) with a gateway-assigned seq, and waits until the
// decider accepted it. An approval past its expiry is recorded as a deny
// with reason APPROVAL_EXPIRED whatever was asked.
func (s *Server) settle(ctx context.Context, e *approvalEntry, allow bool, approver, reason string) (Approval, error) {
	a := s.appr
	a.mu.Lock()
	if e.State != ApprovalPending || e.busy {
		a.mu.Unlock()
		return Approval{}, errf(http.StatusConflict, CodeApprovalNotPending, "approval %s is %s", e.ID, e.State)
	}
	e.busy = true
	requested := e.RequestedSeq // a re-proposal of the call may raise it
	a.mu.Unlock()

	now := s.now()
	state := ApprovalDenied
	if allow {
		state = ApprovalApproved
	}
	if now.UnixMilli() >= e.ExpiresMs {
		state, allow, reason = ApprovalExpired, false, envelope.ReasonApprovalExpired
	}
	decision := "deny"
	if allow {
		decision = "allow"
	}
	payload, _ := json.Marshal(map[string]any{"call_id": e.CallID, "decision": decision, "approver": approver, "reason": reason,
		"tool_name": e.ToolName, "args_digest": e.ArgsDigest, "approval_id": e.ID, "expires_ms": e.ExpiresMs})
	// Signed: a decider with the approval secret honours no
	// APPROVAL_DECIDED without the grant (internal/grant).
	payload, err := grant.Sign(a.secret, e.TenantID, e.SessionID, payload)
	if err != nil {
		a.mu.Lock()
		e.busy = false
		a.mu.Unlock()
		return Approval{}, fmt.Errorf("ingest: sign APPROVAL_DECIDED: %w", err)
	}
	ev := &envelope.Event{V: envelope.Version, TenantID: e.TenantID, SessionID: e.SessionID, TsUnixMs: now.UnixMilli(),
		Type: envelope.ApprovalDecided, Payload: payload}
	s.setHint(string(ev.Key()), requested)

	// The record is published and confirmed apart from the caller: once
	// APPROVAL_DECIDED may be in the log, the entry stays busy until the
	// pipeline answers, so that neither a second decision nor the expiry
	// sweep publishes a contradictory one when the caller gives up or its
	// wait times out.
	type result struct {
		a   Approval
		err error
	}
	res := make(chan result, 1)
	s.bgMu.Lock()
	if s.life.Err() != nil {
		s.bgMu.Unlock()
		a.mu.Lock()
		e.busy = false
		a.mu.Unlock()
		return Approval{}, errf(http.StatusServiceUnavailable, CodeCanceled, "the gateway is shutting down; nothing was recorded")
	}
	s.bg.Add(1)
	s.bgMu.Unlock()
	go func() {
		defer s.bg.Done()
		bctx, cancel := context.WithTimeout(s.life, max(s.cfg.ApprovalTTL, s.cfg.ProposalTimeout))
		defer cancel()
		v, err := s.submit(bctx, ev, true, "approval")
		if err == nil && v.Rejection != nil {
			if v.Rejection.Reason == pipeline.ReasonApprovalUnauthenticated {
				s.log.Error("the decider refused this gateway's signed APPROVAL_DECIDED: it checks grants with another approval secret; give every aegisd the same --approval-secret-file",
					"approval", e.ID)
			}
			err = errf(rejectionStatus(v.Rejection.Reason), v.Rejection.Reason, "APPROVAL_DECIDED rejected: %s", v.Rejection.Detail)
		}
		a.mu.Lock()
		defer a.mu.Unlock()
		if errors.Is(err, errWaitTimeout) {
			// Published, and no verdict for as long as an approval
			// lives: the first APPROVAL_DECIDED the pipeline seals is the
			// one the session keeps, so this one stands.
			s.log.Warn("APPROVAL_DECIDED published but not confirmed; recording it as decided", "approval", e.ID, "seq", ev.Seq)
			err = nil
		}
		e.busy = false
		if err != nil {
			// Not published, or rejected: the approval is still pending.
			res <- result{err: err}
			return
		}
		a.decided(e, state, approver, reason, ev.Seq)
		res <- result{a: e.Approval}
	}()
	wait := time.NewTimer(s.cfg.ProposalTimeout)
	defer wait.Stop()
	select {
	case r := <-res:
		return r.a, r.err
	case <-wait.C:
	case <-ctx.Done():
	}
	return Approval{}, errf(http.StatusGatewayTimeout, CodeDecisionTimeout,
		"APPROVAL_DECIDED is being recorded, not yet confirmed by the pipeline; GET /v1/approvals?state=all shows the outcome")
}

// expireApprovals denies every pending approval past its expiry, and
// forgets decided ones an expiry period after they expired.
func (s *Server) expireApprovals(ctx context.Context) {
	now := s.now().UnixMilli()
	ttl := s.cfg.ApprovalTTL.Milliseconds()
	a := s.appr
	a.mu.Lock()
	var due []*approvalEntry
	forgot := false
	for _, e := range a.byID {
		switch {
		case e.State == ApprovalPending && !e.busy && now >= e.ExpiresMs:
			due = append(due, e)
		case e.State != ApprovalPending && now >= e.ExpiresMs+ttl:
			a.forget(e)
			forgot = true
		}
	}
	if forgot {
		for tenant, q := range a.decidedBy {
			kept := q[:0]
			for _, e := range q {
				if a.byID[e.ID] == e {
					kept = append(kept, e)
				}
			}
			clear(q[len(kept):])
			if len(kept) == 0 {
				delete(a.decidedBy, tenant)
			} else {
				a.decidedBy[tenant] = kept
			}
		}
	}
	a.mu.Unlock()
	for _, e := range due {
		if _, err := s.settle(ctx, e, false, approverExpiry, envelope.ReasonApprovalExpired); err != nil && ctx.Err() == nil {
			s.log.Warn("approval expiry not recorded yet; retrying", "approval", e.ID, "err", err)
		}
	}
}

// handleListApprovals is GET /v1/approvals?state=pending|approved|denied|expired|all
// (default pending): the caller's tenant's approvals known to this gateway.
func (s *Server) handleListApprovals(w http.ResponseWriter, r *http.Request, p Principal) {
	state := r.URL.Query().Get("state")
	switch state {
	case "":
		state = ApprovalPending
	case "all":
		state = ""
	case ApprovalPending, ApprovalApproved, ApprovalDenied, ApprovalExpired, ApprovalSuperseded:
	default:
		writeError(w, errf(http.StatusBadRequest, CodeMalformedRequest, "state %q: want pending, approved, denied, expired, superseded or all", state))
		return
	}
	tenant := p.Tenant
	if tenant == "" {
		tenant = r.URL.Query().Get("tenant_id")
	} else if _, err := tenantOf(r, p); err != nil {
		writeError(w, err)
		return
	}
	writeJSON(w, http.StatusOK, map[string]any{"approvals": s.appr.list(tenant, state)})
}

// handleDecideApproval is POST /v1/approvals/{token}.
func (s *Server) handleDecideApproval(w http.ResponseWriter, r *http.Request, p Principal) {
	_, body, err := s.readBody(w, r, mediaJSON)
	if err != nil {
		writeError(w, err)
		return
	}
	var req ApprovalDecision
	if err := decodeStrict(body, &req); err != nil || (req.Decision != "allow" && req.Decision != "deny") {
		writeError(w, errf(http.StatusBadRequest, CodeMalformedRequest, `body must be {"decision":"allow"|"deny","reason":…}`))
		return
	}
	claims, ok := s.appr.verify(r.PathValue("token"))
	if !ok {
		writeError(w, errf(http.StatusNotFound, CodeApprovalInvalid, "not an approval token of this server"))
		return
	}
	if p.Tenant != "" && claims.TenantID != p.Tenant {
		writeError(w, errf(http.StatusForbidden, CodeTenantMismatch, "the approval belongs to another tenant"))
		return
	}
	if req.ToolName != "" && req.ToolName != claims.ToolName {
		writeError(w, errf(http.StatusConflict, CodeApprovalMismatch, "the token is bound to tool %q", claims.ToolName))
		return
	}
	if len(req.Args) > 0 {
		d, err := session.CallDigest(claims.ToolName, req.Args)
		if err != nil || d != claims.ArgsDigest {
			writeError(w, errf(http.StatusConflict, CodeApprovalMismatch, "the token is bound to other arguments"))
			return
		}
	}
	s.appr.mu.Lock()
	e := s.appr.byID[claims.ID]
	s.appr.mu.Unlock()
	if e == nil || e.ArgsDigest != claims.ArgsDigest {
		writeError(w, errf(http.StatusConflict, CodeApprovalNotPending, "the approval is not pending on this gateway"))
		return
	}
	got, err := s.settle(r.Context(), e, req.Decision == "allow", p.ID, req.Reason)
	if err != nil {
		writeError(w, err)
		return
	}
	if got.State == ApprovalExpired {
		writeJSON(w, http.StatusGone, struct {
			ErrorBody
			Approval Approval `json:"approval"`
		}{ErrorBody{ErrorDetail{Code: CodeApprovalExpired, Message: "the approval expired and was denied"}}, got})
		return
	}
	writeJSON(w, http.StatusOK, map[string]any{"approval": got})
}

func decodeStrict(body []byte, v any) error {
	if _, err := canon.Append(nil, body); err != nil {
		return err
	}
	dec := json.NewDecoder(strings.NewReader(string(body)))
	dec.DisallowUnknownFields()
	return dec.Decode(v)
}
