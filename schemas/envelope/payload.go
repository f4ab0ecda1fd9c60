package envelope

import (
	"bytes"
	"encoding/json"
	"fmt"
)

// payloadRules lists, per event type, the payload fields whose presence or
// type is checked. Fields not listed are free-form: the payload is any JSON
// object and agents may carry whatever else they need.
var payloadRules = map[Type][]fieldRule{
	ToolCallProposed:  {{"tool_name", kString, true}, {"call_id", kString, true}, {"args", kObject, false}},
	ToolCallAllowed:   {{"tool_name", kString, false}, {"call_id", kString, true}},
	ToolCallDenied:    {{"tool_name", kString, false}, {"call_id", kString, true}, {"reason", kString, false}},
	ToolCallExecuted:  {{"tool_name", kString, false}, {"call_id", kString, true}},
	ToolResult:        {{"tool_name", kString, false}, {"call_id", kString, false}, {"is_error", kBool, false}, {"sanitizer_key", kString, false}, {"output_bytes", kNumber, false}},
	PolicyDecision:    {{"call_id", kString, false}, {"outcome", kString, false}, {"reason", kString, false}},
	ApprovalRequested: {{"call_id", kString, true}, {"tool_name", kString, false}},
	ApprovalDecided:   {{"call_id", kString, true}, {"decision", kString, true}, {"approver", kString, false}, {"reason", kString, false}, {"grant", kString, false}},
	MemoryRead:        {{"key", kString, false}, {"sanitizer_key", kString, false}},
	MemoryWrite:       {{"key", kString, false}},
	HandoffRequested:  {{"from_agent", kString, false}, {"to_agent", kString, false}},
	HandoffCompleted:  {{"from_agent", kString, false}, {"to_agent", kString, false}},
	SanitizedText:     {{"key", kString, true}},
	ModelCallStarted:  {{"model", kString, false}, {"call_id", kString, false}},
	ModelCallFinished: {{"model", kString, false}, {"call_id", kString, false}},
	CheckpointCreated: {{"checkpoint_id", kString, false}},
	Termination:       {{"reason", kString, false}},
	ErrorRaised:       {{"message", kString, false}, {"code", kString, false}},
}

type kind uint8

const (
	kString kind = iota + 1
	kBool
	kNumber
	kObject
)

func (k kind) String() string {
	switch k {
	case kString:
		return "a string"
	case kBool:
		return "a boolean"
	case kNumber:
		return "a number"
	default:
		return "an object"
	}
}

type fieldRule struct {
	name     string
	kind     kind
	required bool
}

// foldedNames are the payload members the pipeline reads through
// encoding/json (ToolCall, the session reducer, the projector's columns),
// on events of any type. encoding/json takes a member whose name equals
// one of them only case-insensitively, with Unicode folding ("ſ" is "s",
// "K" is "k"), and the last match wins; the decoder's rules and the policy
// read the exact name. A client event with such a member is rejected, so
// that every reader sees the same value.
var foldedNames = []string{"tool_name", "call_id", "args", "is_error", "sanitizer_key", "key", "decision", "from_agent", "to_agent", "args_digest"}

// checkPayload validates the typed fields of a canonical payload. Every
// event type's payload must be a JSON object. With client set, members
// whose names differ from one of foldedNames only in letter case are
// rejected too; sealed records are read as they were sealed.
func checkPayload(t Type, payload json.RawMessage, client bool) error {
	if payload[0] != '{' {
		return &Error{Code: CodeInvalidField, Field: "payload", Msg: "must be a JSON object"}
	}
	rules := payloadRules[t]
	if len(rules) == 0 && !client {
		return nil
	}
	var found [8][]byte // raw values of rules[i]; no event type has more rules
	err := members(payload, func(key, val []byte) error {
		if client {
			for _, name := range foldedNames {
				if string(key) != name && bytes.EqualFold(key, []byte(name)) {
					return &Error{Code: CodeInvalidField, Field: "payload." + name, Msg: fmt.Sprintf("member %q differs from %q only in letter case", key, name)}
				}
			}
		}
		for i := range rules {
			if rules[i].name == string(key) {
				found[i] = val
				return nil
			}
		}
		return nil
	})
	if err != nil {
		return scanError(err)
	}
	for i, r := range rules {
		raw := found[i]
		if raw == nil || string(raw) == "null" {
			if r.required {
				return missing("payload." + r.name)
			}
			continue
		}
		if !r.kind.matches(raw) {
			return &Error{Code: CodeInvalidField, Field: "payload." + r.name, Msg: "must be " + r.kind.String()}
		}
		if r.kind == kString && r.required && string(raw) == `""` {
			return &Error{Code: CodeInvalidField, Field: "payload." + r.name, Msg: "must not be empty"}
		}
		if t == ApprovalDecided && r.name == "decision" {
			if d := string(raw); d != `"allow"` && d != `"deny"` {
				return &Error{Code: CodeInvalidField, Field: "payload.decision", Msg: fmt.Sprintf(`must be "allow" or "deny", got %s`, d)}
			}
		}
		if t == ApprovalDecided && r.name == "grant" && !grantShape(raw) {
			return &Error{Code: CodeInvalidField, Field: "payload.grant", Msg: "must be the unpadded base64url of 32 bytes (43 characters)"}
		}
	}
	return nil
}

// GrantPattern is the shape of an APPROVAL_DECIDED payload's "grant":
// the unpadded base64url of a 32-byte HMAC-SHA256 (internal/grant), in its
// only encoding (the last character's two spare bits are zero). The
// decoder checks the shape; the decider checks the MAC.
const GrantPattern = "^[A-Za-z0-9_-]{42}[AEIMQUYcgkosw048]$"

// grantShape reports whether raw, a canonical JSON string, matches
// GrantPattern. Base64url characters need no escaping, so the canonical
// string is the quoted characters themselves.
func grantShape(raw []byte) bool {
	if len(raw) != 45 || raw[0] != '"' || raw[44] != '"' {
		return false
	}
	for _, c := range raw[1:43] {
		if !('A' <= c && c <= 'Z' || 'a' <= c && c <= 'z' || '0' <= c && c <= '9' || c == '-' || c == '_') {
			return false
		}
	}
	return bytes.IndexByte([]byte("AEIMQUYcgkosw048"), raw[43]) >= 0
}

func (k kind) matches(raw json.RawMessage) bool {
	switch c := raw[0]; k {
	case kString:
		return c == '"'
	case kBool:
		return c == 't' || c == 'f'
	case kNumber:
		return c == '-' || ('0' <= c && c <= '9')
	default:
		return c == '{'
	}
}

// ToolCall decodes the payload of a TOOL_CALL_* event. The payload of a
// decoded event has already been validated, so this only fails on events
// built by hand.
func (e *Event) ToolCall() (ToolCall, error) {
	if tc, ok := flatToolCall(e.Payload); ok {
		return tc, nil
	}
	var tc ToolCall
	if err := json.Unmarshal(e.Payload, &tc); err != nil {
		return tc, fmt.Errorf("event %s/%s/%d: tool call payload: %w", e.TenantID, e.SessionID, e.Seq, err)
	}
	return tc, nil
}

var toolCallNames = []string{"tool_name", "call_id", "args"}

// flatToolCall reads a tool call payload without reflection when that gives
// exactly what json.Unmarshal would (see FlatMembers): it is read once or
// more per decided proposal.
func flatToolCall(payload []byte) (ToolCall, bool) {
	var vals [3][]byte
	var tc ToolCall
	if !FlatMembers(payload, toolCallNames, vals[:]) {
		return tc, false
	}
	var ok bool
	if vals[0] != nil {
		if tc.ToolName, ok = FlatString(vals[0]); !ok {
			return tc, false
		}
	}
	if vals[1] != nil {
		if tc.CallID, ok = FlatString(vals[1]); !ok {
			return tc, false
		}
	}
	if v := vals[2]; v != nil {
		// Only an object or array is certain to end where the member
		// scanner says (a number could carry trailing white space).
		if v[0] != '{' && v[0] != '[' {
			return tc, false
		}
		tc.Args = append(json.RawMessage(nil), v...)
	}
	return tc, true
}

func init() {
	for t, rules := range payloadRules {
		if len(rules) > 8 {
			panic("envelope: too many payload rules for " + string(t))
		}
	}
}
