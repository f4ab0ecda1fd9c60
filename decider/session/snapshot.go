// Package session holds the per-session state the decider keeps: the
// Snapshot, and the reducer that folds events into it. The snapshot is a pure
// function of the session's events; time comes from event timestamps only.
package session

// Snapshot is the state of one session after some prefix of its events. Its
// JSON form is part of the policy input and of the snapshot hash, so field
// names and encodings are a contract (docs/decisions.md).
type Snapshot struct {
	TenantID  string `json:"tenant_id"`
	SessionID string `json:"session_id"`
	// Manifest is the manifest reference named by the session's first event.
	Manifest string `json:"manifest,omitempty"`
	LastSeq  uint64 `json:"last_seq"`
	// FirstTsMs and LastTsMs are the timestamps of the first and last events.
	FirstTsMs int64 `json:"first_ts_ms"`
	LastTsMs  int64 `json:"last_ts_ms"`
	// Events counts every event applied.
	Events int64 `json:"events"`
	// Steps counts agent steps: MODEL_CALL_STARTED and TOOL_CALL_PROPOSED.
	Steps      int64 `json:"steps"`
	ModelCalls int64 `json:"model_calls"`
	// ToolCalls counts TOOL_CALL_PROPOSED events, whatever their outcome.
	ToolCalls int64 `json:"tool_calls"`
	// Tainted is set when untrusted content entered the context (TOOL_RESULT
	// or MEMORY_READ without a registered sanitizer key) and cleared by
	// TERMINATION.
	Tainted      bool     `json:"tainted"`
	TaintSources []string `json:"taint_sources,omitempty"`
	// SanitizerKeys are the keys registered by SANITIZED_TEXT events, sorted.
	SanitizerKeys []string `json:"sanitizer_keys,omitempty"`
	Handoff       Handoff  `json:"handoff"`
	// Approvals are keyed by call_id.
	Approvals map[string]Approval `json:"approvals,omitempty"`
	// Calls counts earlier proposals per call digest (tool name + canonical
	// args), for the identical-call loop detector.
	Calls map[string]int64 `json:"calls,omitempty"`
	// RecentTools holds the tool names of the most recent proposals, oldest
	// first, for the sequence-repetition loop detector.
	RecentTools []string `json:"recent_tools,omitempty"`
	// ConsecutiveErrors counts TOOL_RESULT events with is_error=true since the
	// last successful result, for the no-progress loop detector.
	ConsecutiveErrors int64 `json:"consecutive_errors"`
	Loop              Loop  `json:"loop"`
	Terminated        bool  `json:"terminated"`
}

// Handoff tracks a handoff between agents.
type Handoff struct {
	// State is "", "requested" or "completed".
	State string `json:"state,omitempty"`
	From  string `json:"from,omitempty"`
	To    string `json:"to,omitempty"`
}

// Approval is an approval request opened by a require_approval decision.
type Approval struct {
	ToolName   string `json:"tool_name"`
	ArgsDigest string `json:"args_digest"`
	// State is "pending", "approved" or "denied".
	State         string `json:"state"`
	RequestedSeq  uint64 `json:"requested_seq"`
	RequestedTsMs int64  `json:"requested_ts_ms"`
}

// Loop records that a loop detector fired; once set, it stays set.
type Loop struct {
	Detected bool   `json:"detected"`
	Seq      uint64 `json:"seq,omitempty"`
}
