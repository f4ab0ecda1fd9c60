// Package envelope defines the Aegis event envelope: the wire contract that
// agents publish, that the decider annotates with a decision and that the
// sealer chains. docs/envelope.md and schemas/event.schema.json describe the
// same contract for other languages.
package envelope

import "encoding/json"

// Version is the envelope schema version written in the "v" field. Events
// that omit "v" are read as Version; any other value is rejected.
const Version = 1

// Type is an event type. The set is closed: an unknown type is rejected.
type Type string

// The event types of the envelope contract.
const (
	ModelCallStarted  Type = "MODEL_CALL_STARTED"
	ModelCallFinished Type = "MODEL_CALL_FINISHED"
	ToolCallProposed  Type = "TOOL_CALL_PROPOSED"
	ToolCallAllowed   Type = "TOOL_CALL_ALLOWED"
	ToolCallDenied    Type = "TOOL_CALL_DENIED"
	ToolCallExecuted  Type = "TOOL_CALL_EXECUTED"
	ToolResult        Type = "TOOL_RESULT"
	PolicyDecision    Type = "POLICY_DECISION"
	ApprovalRequested Type = "APPROVAL_REQUESTED"
	ApprovalDecided   Type = "APPROVAL_DECIDED"
	MemoryRead        Type = "MEMORY_READ"
	MemoryWrite       Type = "MEMORY_WRITE"
	HandoffRequested  Type = "HANDOFF_REQUESTED"
	HandoffCompleted  Type = "HANDOFF_COMPLETED"
	CheckpointCreated Type = "CHECKPOINT_CREATED"
	SanitizedText     Type = "SANITIZED_TEXT"
	Termination       Type = "TERMINATION"
	ErrorRaised       Type = "ERROR_RAISED"
)

// Types lists every event type in documentation order.
var Types = []Type{
	ModelCallStarted, ModelCallFinished, ToolCallProposed, ToolCallAllowed,
	ToolCallDenied, ToolCallExecuted, ToolResult, PolicyDecision,
	ApprovalRequested, ApprovalDecided, MemoryRead, MemoryWrite,
	HandoffRequested, HandoffCompleted, CheckpointCreated, SanitizedText,
	Termination, ErrorRaised,
}

// Known reports whether t is one of Types.
func (t Type) Known() bool {
	for _, k := range Types {
		if k == t {
			return true
		}
	}
	return false
}

// Event is one agent action. The first block of fields is what a client
// publishes; Decision is added by the decider to TOOL_CALL_PROPOSED events;
// PrevHash and Hash are added by the sealer.
type Event struct {
	V         int    `json:"v"`
	TenantID  string `json:"tenant_id"`
	SessionID string `json:"session_id"`
	// Seq is the client sequence number: dense per session, starting at 1.
	Seq      uint64 `json:"seq"`
	TsUnixMs int64  `json:"ts_unix_ms"`
	Type     Type   `json:"event_type"`
	// Manifest names the capability manifest ("name" or "name@version");
	// honoured on a session's first event only.
	Manifest string `json:"manifest,omitempty"`
	// Payload is any JSON value; for the typed payloads see docs/envelope.md.
	Payload json.RawMessage `json:"payload"`

	Decision *Decision `json:"decision,omitempty"`

	PrevHash string `json:"prev_hash,omitempty"`
	Hash     string `json:"hash,omitempty"`
}

// Outcome is a policy outcome.
type Outcome string

// Outcomes of a decision.
const (
	Allow           Outcome = "allow"
	Deny            Outcome = "deny"
	RequireApproval Outcome = "require_approval"
)

// Reason codes carried by decisions. They are stable: dashboards, audits and
// CI scripts match on them. docs/policy.md lists what each one means.
const (
	ReasonOK                   = "OK"
	ReasonPermissionUndeclared = "PERMISSION_UNDECLARED"
	ReasonEgressDeny           = "EGRESS_DENY"
	ReasonBudgetExceeded       = "BUDGET_EXCEEDED"
	ReasonLoopDetected         = "LOOP_DETECTED"
	ReasonTaintedToHighRisk    = "TAINTED_TO_HIGH_RISK"
	ReasonExecDeny             = "EXEC_DENY"
	ReasonApprovalRequired     = "APPROVAL_REQUIRED"
	ReasonManifestUnknown      = "MANIFEST_UNKNOWN"
	ReasonPolicyError          = "POLICY_ERROR"
	ReasonApprovalDenied       = "APPROVAL_DENIED"
	ReasonApprovalExpired      = "APPROVAL_EXPIRED"
	ReasonInvalidProposal      = "INVALID_PROPOSAL"
	ReasonSessionTerminated    = "SESSION_TERMINATED"
)

// Constraints bound an allowed tool call. Zero fields are omitted (a deny
// carries no constraints).
type Constraints struct {
	MaxOutputBytes int64 `json:"max_output_bytes,omitempty"`
	TimeoutMs      int64 `json:"timeout_ms,omitempty"`
}

// Decision is the decider's verdict on a TOOL_CALL_PROPOSED event, with what
// is needed to re-derive it offline.
type Decision struct {
	Outcome     Outcome     `json:"outcome"`
	Reason      string      `json:"reason"`
	Constraints Constraints `json:"constraints"`
	// PolicyRevision is the digest of the policy bundle ("sha256:<hex>").
	PolicyRevision string `json:"policy_revision"`
	// ManifestDigest is the digest of the manifest the session runs under
	// ("sha256:<hex>"), empty when no manifest resolved.
	ManifestDigest string `json:"manifest_digest"`
	// InputDigest is the digest of the canonical policy input.
	InputDigest string `json:"input_digest"`
}

// ToolCall is the payload of TOOL_CALL_PROPOSED (and of the other TOOL_CALL_*
// events, which echo tool_name and call_id).
type ToolCall struct {
	ToolName string          `json:"tool_name"`
	CallID   string          `json:"call_id"`
	Args     json.RawMessage `json:"args,omitempty"`
}
