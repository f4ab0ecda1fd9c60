package session

import (
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"sort"
	"sync"

	"aegis.dev/aegis/schemas/canon"
	"aegis.dev/aegis/schemas/envelope"
)

// Bounds that keep a snapshot small however long a session runs. They are
// part of the snapshot contract: changing them changes snapshot hashes.
const (
	// MaxRecentTools is how many proposal tool names are kept: enough to
	// detect a back-to-back repetition of a sequence of length 7.
	MaxRecentTools = 13
	// MaxCallDigests bounds the identical-call table; once full, new
	// distinct calls are not tracked (identical repeats of tracked calls
	// still are). A manifest's max_tool_calls is at most this
	// (manifest.MaxMaxToolCalls), so the tool-call budget runs out before
	// an untracked call could be repeated.
	MaxCallDigests = 4096
	// MaxTaintSources bounds the list of taint sources kept for audit.
	MaxTaintSources = 32
	// MaxSanitizerKeys bounds the registered sanitizer keys.
	MaxSanitizerKeys = 1024
	// MaxApprovals bounds the approvals a session tracks. Once full, a new
	// require_approval forgets the approval requested earliest (a
	// forgotten approval is never honoured: that call needs a new one).
	MaxApprovals = 1024
	// MaxNameBytes bounds each identifier the snapshot keeps: tool_name,
	// call_id, key, sanitizer_key, from_agent and to_agent, measured in
	// canonical JSON (a control byte is written \u00XX, six bytes). With
	// the count bounds above it keeps a session's state record well below
	// the size of one Kafka record, whatever the events say.
	MaxNameBytes = 256
)

// Approval states.
const (
	ApprovalPending  = "pending"
	ApprovalApproved = "approved"
	ApprovalDenied   = "denied"
)

// Sequence errors returned by Apply. The sealer and ingest map them to
// rejection reasons.
var (
	ErrSeqGap       = errors.New("session: seq gap")
	ErrSeqDuplicate = errors.New("session: seq already applied")
	ErrWrongSession = errors.New("session: event belongs to another session")
	ErrNoDecision   = errors.New("session: proposal applied without a decision")
	// ErrPayload: a payload field the reducer reads has the wrong JSON
	// type (one that envelope validation does not check for this event
	// type, e.g. a string is_error on a model call), or is an identifier
	// longer than MaxNameBytes.
	ErrPayload = errors.New("session: payload field of the wrong type")
)

// New returns the snapshot of a session before its first event.
func New(tenantID, sessionID string) *Snapshot {
	return &Snapshot{TenantID: tenantID, SessionID: sessionID}
}

// Apply folds e into s. e must be the session's next event (seq LastSeq+1);
// a TOOL_CALL_PROPOSED must carry the decision it was given, since approvals
// and the sticky loop flag depend on it. Apply is deterministic: it reads
// nothing but s and e. On error s is unchanged.
func (s *Snapshot) Apply(e *envelope.Event) error {
	return s.apply(e, nil, "")
}

// ApplyProposal is Apply for a TOOL_CALL_PROPOSED event whose tool call
// the caller has already read: tc must be what e.ToolCall() returns and
// callDigest what CallDigest(tc.ToolName, tc.Args) returns. It spares the
// decider reading and hashing each proposal twice.
func (s *Snapshot) ApplyProposal(e *envelope.Event, tc envelope.ToolCall, callDigest string) error {
	if e.Type != envelope.ToolCallProposed {
		return s.Apply(e)
	}
	return s.apply(e, &tc, callDigest)
}

// apply is Apply; known, when not nil, is the tool call of a proposal e
// and callDigest its digest.
func (s *Snapshot) apply(e *envelope.Event, known *envelope.ToolCall, callDigest string) error {
	if e.TenantID != s.TenantID || e.SessionID != s.SessionID {
		return fmt.Errorf("%w: %s/%s is not %s/%s", ErrWrongSession, e.TenantID, e.SessionID, s.TenantID, s.SessionID)
	}
	switch {
	case e.Seq <= s.LastSeq:
		return fmt.Errorf("%w: %s/%s seq %d, last applied %d", ErrSeqDuplicate, s.TenantID, s.SessionID, e.Seq, s.LastSeq)
	case e.Seq != s.LastSeq+1:
		return fmt.Errorf("%w: %s/%s seq %d, expected %d", ErrSeqGap, s.TenantID, s.SessionID, e.Seq, s.LastSeq+1)
	}
	var tc envelope.ToolCall
	if e.Type == envelope.ToolCallProposed {
		if e.Decision == nil {
			return fmt.Errorf("%w: %s/%s seq %d", ErrNoDecision, s.TenantID, s.SessionID, e.Seq)
		}
		if known != nil {
			tc = *known
		} else {
			var err error
			if tc, err = e.ToolCall(); err != nil {
				return err
			}
			if callDigest, err = CallDigest(tc.ToolName, tc.Args); err != nil {
				return fmt.Errorf("session: %s/%s seq %d: %w", s.TenantID, s.SessionID, e.Seq, err)
			}
		}
	}
	var p payload
	if len(e.Payload) > 0 && e.Type != envelope.ToolCallProposed {
		var err error
		if p, err = decodePayload(e.Payload); err != nil {
			return fmt.Errorf("%w: %s/%s seq %d: %w", ErrPayload, s.TenantID, s.SessionID, e.Seq, err)
		}
	}
	for _, f := range [...]struct{ name, v string }{{"tool_name", tc.ToolName}, {"call_id", tc.CallID}, {"tool_name", p.ToolName},
		{"call_id", p.CallID}, {"sanitizer_key", p.SanitizerKey}, {"key", p.Key}, {"from_agent", p.FromAgent}, {"to_agent", p.ToAgent}} {
		if n := canonicalLen(f.v); n > MaxNameBytes {
			return fmt.Errorf("%w: %s/%s seq %d: payload.%s is %d bytes in canonical JSON, at most %d", ErrPayload, s.TenantID, s.SessionID, e.Seq, f.name, n, MaxNameBytes)
		}
	}

	// From here on nothing fails: s is updated in place.
	if s.Events == 0 {
		s.FirstTsMs = e.TsUnixMs
		s.Manifest = e.Manifest
	}
	s.Events++
	s.LastSeq = e.Seq
	if e.TsUnixMs > s.LastTsMs {
		s.LastTsMs = e.TsUnixMs
	}
	switch e.Type {
	case envelope.ModelCallStarted:
		s.Steps++
		s.ModelCalls++
	case envelope.ToolCallProposed:
		s.applyProposal(e, tc, callDigest)
	case envelope.ToolResult:
		if p.IsError {
			s.ConsecutiveErrors++
		} else {
			s.ConsecutiveErrors = 0
		}
		s.taint(p.SanitizerKey, source(envelope.ToolResult, p.ToolName))
	case envelope.MemoryRead:
		s.taint(p.SanitizerKey, source(envelope.MemoryRead, p.Key))
	case envelope.SanitizedText:
		s.SanitizerKeys = insertSorted(s.SanitizerKeys, p.Key, MaxSanitizerKeys)
	case envelope.ApprovalDecided:
		// A decision names the call it settles by call_id and, from the
		// gateway always, by tool and args digest: one that names
		// another tool or other arguments than the pending approval
		// (the call_id was proposed again with other arguments since)
		// settles nothing.
		if a, ok := s.Approvals[p.CallID]; ok && a.State == ApprovalPending &&
			(p.ToolName == "" || p.ToolName == a.ToolName) && (p.ArgsDigest == "" || p.ArgsDigest == a.ArgsDigest) {
			a.State = ApprovalDenied
			if p.Decision == "allow" {
				a.State = ApprovalApproved
			}
			s.Approvals[p.CallID] = a
		}
	case envelope.HandoffRequested:
		s.Handoff = Handoff{State: "requested", From: p.FromAgent, To: p.ToAgent}
	case envelope.HandoffCompleted:
		s.Handoff.State = "completed"
		if p.FromAgent != "" {
			s.Handoff.From = p.FromAgent
		}
		if p.ToAgent != "" {
			s.Handoff.To = p.ToAgent
		}
	case envelope.Termination:
		s.Tainted = false
		s.TaintSources = nil
		s.Terminated = true
	}
	return nil
}

func (s *Snapshot) applyProposal(e *envelope.Event, tc envelope.ToolCall, callDigest string) {
	s.Steps++
	s.ToolCalls++
	if s.Calls == nil {
		s.Calls = make(map[string]int64)
	}
	if _, ok := s.Calls[callDigest]; ok || len(s.Calls) < MaxCallDigests {
		s.Calls[callDigest]++
	}
	s.RecentTools = append(s.RecentTools, tc.ToolName)
	if n := len(s.RecentTools); n > MaxRecentTools {
		s.RecentTools = append(s.RecentTools[:0:0], s.RecentTools[n-MaxRecentTools:]...)
	}
	switch d := e.Decision; {
	case d.Reason == envelope.ReasonLoopDetected && !s.Loop.Detected:
		s.Loop = Loop{Detected: true, Seq: e.Seq}
	case d.Outcome == envelope.RequireApproval && tc.CallID != "":
		if s.Approvals == nil {
			s.Approvals = make(map[string]Approval)
		}
		a, ok := s.Approvals[tc.CallID]
		if !ok && len(s.Approvals) >= MaxApprovals {
			s.forgetEarliestApproval()
		}
		// An approval granted for this call_id stays unless the
		// call_id now names another tool or other arguments: then the
		// new call is what waits for approval (there is one approval
		// per call_id, and the earlier one would never match again).
		if !ok || a.State != ApprovalApproved || a.ToolName != tc.ToolName || a.ArgsDigest != callDigest {
			s.Approvals[tc.CallID] = Approval{ToolName: tc.ToolName, ArgsDigest: callDigest, State: ApprovalPending, RequestedSeq: e.Seq, RequestedTsMs: e.TsUnixMs}
		}
	}
}

// forgetEarliestApproval removes the approval with the lowest
// RequestedSeq (call_id breaks ties, so replays forget the same one).
func (s *Snapshot) forgetEarliestApproval() {
	victim, first := "", true
	var at uint64
	for id, a := range s.Approvals {
		if first || a.RequestedSeq < at || (a.RequestedSeq == at && id < victim) {
			victim, at, first = id, a.RequestedSeq, false
		}
	}
	delete(s.Approvals, victim)
}

// taint marks the session tainted by source unless the content carries a
// sanitizer key that a SANITIZED_TEXT event registered earlier.
func (s *Snapshot) taint(sanitizerKey, source string) {
	if sanitizerKey != "" {
		i := sort.SearchStrings(s.SanitizerKeys, sanitizerKey)
		if i < len(s.SanitizerKeys) && s.SanitizerKeys[i] == sanitizerKey {
			return
		}
	}
	s.Tainted = true
	s.TaintSources = insertSorted(s.TaintSources, source, MaxTaintSources)
}

// source names a taint source: the event type, and the tool or memory key
// when the payload names one.
func source(t envelope.Type, name string) string {
	if name == "" {
		return string(t)
	}
	return string(t) + ":" + name
}

// insertSorted adds v to the sorted set xs unless it is present or the set
// already holds max elements.
func insertSorted(xs []string, v string, max int) []string {
	i := sort.SearchStrings(xs, v)
	if i < len(xs) && xs[i] == v {
		return xs
	}
	if len(xs) >= max {
		return xs
	}
	xs = append(xs, "")
	copy(xs[i+1:], xs[i:])
	xs[i] = v
	return xs
}

// canonicalLen is the length of s's content in RFC 8785 JSON (without the
// quotes): control bytes are escaped, as \b \t \n \f \r or \u00XX, and
// " and \ take a backslash.
func canonicalLen(s string) int {
	n := len(s)
	for i := 0; i < len(s); i++ {
		switch c := s[i]; {
		case c == '\b' || c == '\t' || c == '\n' || c == '\f' || c == '\r' || c == '"' || c == '\\':
			n++
		case c < 0x20:
			n += 5
		}
	}
	return n
}

// payload holds the payload fields the reducer reads from non-proposal
// events.
type payload struct {
	ToolName     string `json:"tool_name"`
	CallID       string `json:"call_id"`
	IsError      bool   `json:"is_error"`
	SanitizerKey string `json:"sanitizer_key"`
	Key          string `json:"key"`
	Decision     string `json:"decision"`
	FromAgent    string `json:"from_agent"`
	ToAgent      string `json:"to_agent"`
	ArgsDigest   string `json:"args_digest"`
}

var payloadNames = []string{"tool_name", "call_id", "is_error", "sanitizer_key", "key", "decision", "from_agent", "to_agent", "args_digest"}

// decodePayload reads a payload exactly as json.Unmarshal into a payload
// does, without reflection when the payload allows (envelope.FlatMembers):
// every non-proposal event is read here.
func decodePayload(data []byte) (payload, error) {
	var vals [9][]byte
	if envelope.FlatMembers(data, payloadNames, vals[:]) {
		var p payload
		strs := [...]*string{&p.ToolName, &p.CallID, nil, &p.SanitizerKey, &p.Key, &p.Decision, &p.FromAgent, &p.ToAgent, &p.ArgsDigest}
		ok := true
		for i, v := range vals {
			switch {
			case v == nil:
			case strs[i] != nil:
				*strs[i], ok = envelope.FlatString(v)
			case string(v) == "true":
				p.IsError = true
			case string(v) == "false":
			default:
				ok = false
			}
			if !ok {
				break
			}
		}
		if ok {
			return p, nil
		}
	}
	var p payload
	err := json.Unmarshal(data, &p)
	return p, err
}

// callDigestBufs recycles the buffers CallDigest hashes.
var callDigestBufs = sync.Pool{New: func() any { return new([]byte) }}

// CallDigest identifies a tool call by its name and canonical arguments:
// lowercase hex SHA-256 of the RFC 8785 form of {"args":ARGS,"tool_name":NAME}
// (ARGS is {} when absent).
func CallDigest(toolName string, args json.RawMessage) (string, error) {
	bp := callDigestBufs.Get().(*[]byte)
	defer func() {
		if cap(*bp) <= 64<<10 {
			callDigestBufs.Put(bp)
		}
	}()
	b := append((*bp)[:0], `{"args":`...)
	var err error
	if len(args) == 0 || string(args) == "null" {
		b = append(b, "{}"...)
	} else if b, err = canon.Append(b, args); err != nil {
		return "", fmt.Errorf("call digest: args: %w", err)
	}
	b = append(b, `,"tool_name":`...)
	if b, err = canon.AppendString(b, toolName); err != nil {
		return "", fmt.Errorf("call digest: tool_name: %w", err)
	}
	b = append(b, '}')
	*bp = b
	sum := sha256.Sum256(b)
	var h [2 * sha256.Size]byte
	hex.Encode(h[:], sum[:])
	return string(h[:]), nil
}

// Clone returns a deep copy of s.
func (s *Snapshot) Clone() *Snapshot {
	c := *s
	c.TaintSources = append([]string(nil), s.TaintSources...)
	c.SanitizerKeys = append([]string(nil), s.SanitizerKeys...)
	c.RecentTools = append([]string(nil), s.RecentTools...)
	if s.Approvals != nil {
		c.Approvals = make(map[string]Approval, len(s.Approvals))
		for k, v := range s.Approvals {
			c.Approvals[k] = v
		}
	}
	if s.Calls != nil {
		c.Calls = make(map[string]int64, len(s.Calls))
		for k, v := range s.Calls {
			c.Calls[k] = v
		}
	}
	return &c
}

// Canonical returns the RFC 8785 canonical JSON of s.
func (s *Snapshot) Canonical() ([]byte, error) {
	return s.AppendCanonical(nil)
}

// Hash returns "sha256:<hex>" of the snapshot's canonical JSON.
func (s *Snapshot) Hash() (string, error) {
	b, err := s.Canonical()
	if err != nil {
		return "", err
	}
	return HashCanonical(b), nil
}

// HashCanonical returns the snapshot hash of a snapshot's canonical JSON
// b: what Hash returns for the snapshot whose Canonical is b.
func HashCanonical(b []byte) string {
	sum := sha256.Sum256(b)
	return "sha256:" + hex.EncodeToString(sum[:])
}
