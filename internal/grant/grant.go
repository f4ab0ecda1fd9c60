// Package grant computes and checks the grant of an APPROVAL_DECIDED
// event: the proof, carried in the payload's "grant" member, that the
// holder of the approval secret recorded this decision for this session.
//
// The grant is base64url (no padding) of
//
//	HMAC-SHA256(secret, canonical JSON of
//	    {"domain":"aegis.approval-grant.v1","payload":P,"session_id":S,"tenant_id":T})
//
// where P is the event's payload without its "grant" member, in RFC 8785
// canonical form, and the JSON as a whole is canonical too (schemas/canon).
// The domain member keeps a grant from ever equalling another MAC made with
// the same secret: the gateway's approval tokens MAC a 32-byte SHA-256
// digest, never a JSON document. Tenant and session are bound, so a grant
// copied to another session, or to another tenant's session of the same
// name, does not verify; every payload member is bound (call_id, decision,
// tool_name, args_digest, approver, reason, …), so none can be changed.
// The seq and timestamp are not bound: the gateway assigns the seq after
// signing, and resends at another seq when another writer took it.
//
// The gateway signs every APPROVAL_DECIDED it publishes; the decider, when
// it has the secret, rejects one without a valid grant
// (APPROVAL_UNAUTHENTICATED) before the sequence rule, so it never takes a
// seq, never reaches the session state and never reaches the sealed log.
package grant

import (
	"crypto/hmac"
	"crypto/sha256"
	"encoding/base64"
	"encoding/json"
	"errors"
	"fmt"
	"os"

	"aegis.dev/aegis/schemas/canon"
	"aegis.dev/aegis/schemas/chain"
	"aegis.dev/aegis/schemas/envelope"
)

// Member is the payload member that carries the grant.
const Member = "grant"

// Domain separates grants from every other MAC made with the secret.
const Domain = "aegis.approval-grant.v1"

// MinSecretBytes is the shortest approval secret accepted.
const MinSecretBytes = 32

// ErrMissing: the payload carries no grant (or a null one).
var ErrMissing = errors.New("APPROVAL_DECIDED carries no grant")

// ErrUnbound: the APPROVAL_DECIDED does not name the exact call it
// settles. A decision that names only a call_id would settle whatever is
// pending under it, arguments the approver never saw included (the agent
// may propose the call_id again with other arguments before the decision
// lands), so no such decision is signed or honoured.
var ErrUnbound = errors.New("APPROVAL_DECIDED must name the call it settles: call_id, tool_name and args_digest (the lowercase hex call digest)")

// ErrInvalid: the grant is not the secret's MAC of this event.
var ErrInvalid = errors.New("APPROVAL_DECIDED grant does not verify for this tenant, session and payload")

// LoadSecret reads an approval secret file: at least MinSecretBytes
// bytes, used as they are (a trailing newline is part of the secret).
// Errors name the file, never its content.
func LoadSecret(path string) ([]byte, error) {
	b, err := os.ReadFile(path)
	if err != nil {
		return nil, fmt.Errorf("approval secret: %w", err)
	}
	if len(b) < MinSecretBytes {
		return nil, fmt.Errorf("approval secret %s: %d bytes, need at least %d", path, len(b), MinSecretBytes)
	}
	return b, nil
}

// split returns the canonical payload without its grant member, and the
// grant member's raw canonical value (nil when absent).
func split(payload []byte) (bare []byte, raw json.RawMessage, err error) {
	if len(payload) == 0 || string(payload) == "null" {
		payload = []byte("{}")
	}
	c, err := canon.Append(nil, payload)
	if err != nil {
		return nil, nil, fmt.Errorf("grant: payload: %w", err)
	}
	var m map[string]json.RawMessage
	if err := json.Unmarshal(c, &m); err != nil || m == nil {
		return nil, nil, errors.New("grant: payload is not a JSON object")
	}
	raw, ok := m[Member]
	if !ok {
		return c, nil, nil
	}
	delete(m, Member)
	b, err := json.Marshal(m)
	if err != nil {
		return nil, nil, fmt.Errorf("grant: payload: %w", err)
	}
	if bare, err = canon.Append(nil, b); err != nil {
		return nil, nil, fmt.Errorf("grant: payload: %w", err)
	}
	return bare, raw, nil
}

// bound checks that bare names the call it settles: a call_id, a
// tool_name and an args_digest of the call digest's form.
func bound(bare []byte) error {
	var p struct {
		CallID     *string `json:"call_id"`
		ToolName   *string `json:"tool_name"`
		ArgsDigest *string `json:"args_digest"`
	}
	if err := json.Unmarshal(bare, &p); err != nil || p.CallID == nil || *p.CallID == "" ||
		p.ToolName == nil || *p.ToolName == "" || p.ArgsDigest == nil || !chain.IsHash(*p.ArgsDigest) {
		return ErrUnbound
	}
	return nil
}

// mac is the grant of bare (a canonical payload without grant).
func mac(secret []byte, tenant, session string, bare []byte) ([]byte, error) {
	msg, err := json.Marshal(struct {
		Domain    string          `json:"domain"`
		Payload   json.RawMessage `json:"payload"`
		SessionID string          `json:"session_id"`
		TenantID  string          `json:"tenant_id"`
	}{Domain, bare, session, tenant})
	if err != nil {
		return nil, fmt.Errorf("grant: %w", err)
	}
	if msg, err = canon.Append(nil, msg); err != nil {
		return nil, fmt.Errorf("grant: %w", err)
	}
	h := hmac.New(sha256.New, secret)
	h.Write(msg)
	return h.Sum(nil), nil
}

// Compute returns the grant of an APPROVAL_DECIDED payload of the
// session tenant/session; a grant member already in payload is ignored.
func Compute(secret []byte, tenant, session string, payload []byte) (string, error) {
	bare, _, err := split(payload)
	if err != nil {
		return "", err
	}
	sum, err := mac(secret, tenant, session, bare)
	if err != nil {
		return "", err
	}
	return base64.RawURLEncoding.EncodeToString(sum), nil
}

// Sign returns payload in canonical form with its grant member set to
// the grant of tenant/session, replacing any grant it carried. A payload
// that does not name the call it settles is refused (ErrUnbound).
func Sign(secret []byte, tenant, session string, payload []byte) ([]byte, error) {
	bare, _, err := split(payload)
	if err != nil {
		return nil, err
	}
	if err := bound(bare); err != nil {
		return nil, err
	}
	sum, err := mac(secret, tenant, session, bare)
	if err != nil {
		return nil, err
	}
	var m map[string]json.RawMessage
	if err := json.Unmarshal(bare, &m); err != nil {
		return nil, fmt.Errorf("grant: payload: %w", err)
	}
	m[Member], _ = json.Marshal(base64.RawURLEncoding.EncodeToString(sum))
	b, err := json.Marshal(m)
	if err != nil {
		return nil, fmt.Errorf("grant: payload: %w", err)
	}
	return canon.Append(nil, b)
}

// SignEvent sets the grant of ev, an APPROVAL_DECIDED, in its payload
// (which becomes canonical). Other event types are left alone.
func SignEvent(secret []byte, ev *envelope.Event) error {
	if ev.Type != envelope.ApprovalDecided {
		return nil
	}
	p, err := Sign(secret, ev.TenantID, ev.SessionID, ev.Payload)
	if err != nil {
		return err
	}
	ev.Payload = p
	return nil
}

// Verify checks the grant of an APPROVAL_DECIDED payload of the session
// tenant/session: nil when it is the secret's, ErrMissing when the
// payload has none, ErrUnbound when the payload does not name the call
// it settles (whatever its grant), ErrInvalid (possibly wrapped)
// otherwise.
func Verify(secret []byte, tenant, session string, payload []byte) error {
	bare, raw, err := split(payload)
	if err != nil {
		return fmt.Errorf("%w: %w", ErrInvalid, err)
	}
	if raw == nil || string(raw) == "null" {
		return ErrMissing
	}
	if err := bound(bare); err != nil {
		return err
	}
	var s string
	if err := json.Unmarshal(raw, &s); err != nil {
		return fmt.Errorf("%w: not a string", ErrInvalid)
	}
	got, err := base64.RawURLEncoding.Strict().DecodeString(s)
	if err != nil || len(got) != sha256.Size {
		return fmt.Errorf("%w: not base64url of %d bytes", ErrInvalid, sha256.Size)
	}
	want, err := mac(secret, tenant, session, bare)
	if err != nil {
		return err
	}
	if !hmac.Equal(got, want) {
		return ErrInvalid
	}
	return nil
}

// VerifyEvent checks the grant of ev; events other than APPROVAL_DECIDED
// need none.
func VerifyEvent(secret []byte, ev *envelope.Event) error {
	if ev.Type != envelope.ApprovalDecided {
		return nil
	}
	return Verify(secret, ev.TenantID, ev.SessionID, ev.Payload)
}
