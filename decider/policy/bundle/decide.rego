# Package aegis.decide is the default Aegis decision policy. The engine
# queries data.aegis.decide.decision for every event; the input contract,
# the rule order and every reason code are described in docs/policy.md.
#
# Shape: cheap guards first (manifest, event type, proposal shape), then the
# set of violated rules, of which the lowest-numbered one decides. Every
# violation rule reads only the input and the per-manifest index, so the
# whole evaluation is a handful of set lookups and comparisons.
package aegis.decide

import data.aegis.lists
import data.aegis.manifest

# decision is the only rule the engine queries.
decision := {"outcome": "deny", "reason": "MANIFEST_UNKNOWN"} if {
	not manifest_present
} else := {"outcome": "allow", "reason": "OK", "constraints": constraints} if {
	input.event.event_type != "TOOL_CALL_PROPOSED"
} else := {"outcome": "deny", "reason": "INVALID_PROPOSAL"} if {
	not valid_proposal
} else := {"outcome": "deny", "reason": reasons[min(violations)]} if {
	count(violations) > 0
} else := {"outcome": "require_approval", "reason": "APPROVAL_REQUIRED"} if {
	approval_needed
} else := {"outcome": "allow", "reason": "OK", "constraints": constraints}

# reasons maps a rule's priority to its reason code; the lowest violated
# priority wins.
reasons := {
	1: "PERMISSION_UNDECLARED",
	2: "EGRESS_DENY",
	3: "BUDGET_EXCEEDED",
	4: "LOOP_DETECTED",
	5: "TAINTED_TO_HIGH_RISK",
	6: "EXEC_DENY",
}

violations contains 1 if not declared

violations contains 2 if egress_denied

violations contains 3 if budget_exceeded

violations contains 4 if loop_detected

violations contains 5 if tainted_to_high_risk

violations contains 6 if exec_denied

# --- input accessors -------------------------------------------------------

# idx is the per-manifest index (package aegis.manifest): supplied by the
# engine, derived here when absent.
idx := input.manifest_index if {
	is_object(input.manifest_index)
} else := manifest.build(input.manifest)

tool := input.event.payload.tool_name

ltool := lower(tool)

# Rules test membership through helper rules ("not declared" rather than
# "not idx.tools[tool]"): a negated expression over an undefined argument
# would make the whole rule body undefined instead of true.
declared if idx.tools[tool]

manifest_present if is_object(input.manifest)

valid_proposal if {
	is_string(tool)
	tool != ""
}

# args is the proposal's argument object, {} when absent or not an object.
args := a if {
	a := input.event.payload.args
	is_object(a)
} else := {}

snapshot := s if {
	s := input.snapshot
	is_object(s)
} else := {}

budgets := idx.budgets

constraints := {
	"max_output_bytes": budgets.max_output_bytes,
	"timeout_ms": budgets.timeout_ms,
}

# --- 2. egress -------------------------------------------------------------

# destinations holds the normalised host of every destination the call
# names. A present but unusable value (not a string, not a host name, a URL
# without a parsable authority) contributes "", which no pattern matches.
destinations contains normalize_host(args.domain)

destinations contains url_host(args.url)

egress_denied if {
	some h in destinations
	not domain_allowed(h)
}

egress_denied if {
	network_tool
	count(destinations) == 0
}

network_tool if {
	some p in lists.network_tool_prefixes
	startswith(ltool, p)
}

domain_allowed(h) if idx.domains[h]

# A suffix entry ".example.com" (from "*.example.com") matches strict
# sub-domains only: normalize_host never yields an empty label, so a host
# ending in ".example.com" has at least one label before it.
domain_allowed(h) if {
	h != ""
	some s in idx.suffixes
	endswith(h, s)
}

# normalize_host lower-cases h, drops one trailing dot and returns the result
# when it is a DNS-style host name (letters, digits, "-", "_", non-empty
# dot-separated labels) or a bracketed IP literal; otherwise "".
normalize_host(h) := n if {
	is_string(h)
	n := trim_suffix(lower(h), ".")
	regex.match(`^(?:[a-z0-9_-]+(?:\.[a-z0-9_-]+)*|\[[0-9a-f:.]+\])$`, n)
} else := ""

# url_host returns the normalised host of an absolute URL with an authority
# ("scheme://[userinfo@]host[:port][/?#...]"), or "" for anything else. The
# authority ends at the first "/", "?", "#" or "\", so that parsers which
# treat "\" as a path separator agree on the host.
url_host(u) := normalize_host(m[0][1]) if {
	is_string(u)
	m := regex.find_all_string_submatch_n(
		`^[A-Za-z][A-Za-z0-9+.-]*://(?:[^/?#\\@]*@)?(\[[^\]/?#\\@]*\]|[^/?#\\@:\[\]]*)(?::[0-9]*)?(?:[/?#].*)?$`,
		u, 1,
	)
	count(m) == 1
} else := ""

# --- 3. budgets ------------------------------------------------------------

budget_exceeded if snapshot.steps >= budgets.max_steps

budget_exceeded if snapshot.tool_calls >= budgets.max_tool_calls

budget_exceeded if {
	snapshot.events > 0
	input.event.ts_unix_ms - snapshot.first_ts_ms >= budgets.max_wall_time_ms
}

# --- 4. loops --------------------------------------------------------------

# A loop, once detected, stays detected for the rest of the session.
loop_detected if snapshot.loop.detected == true

# The (max_identical_calls+1)-th proposal of the same tool with the same
# canonical arguments.
loop_detected if snapshot.calls[input.call_digest] >= budgets.max_identical_calls

loop_detected if repeated_sequence

# No progress: too many failed tool results in a row.
loop_detected if snapshot.consecutive_errors >= lists.max_consecutive_errors

# repeated_sequence: with this proposal appended, the session's recent tool
# names end in two identical back-to-back runs of length L (3..7).
repeated_sequence if {
	recent := snapshot.recent_tools
	is_array(recent)
	n := count(recent) + 1
	n >= 6
	s := array.concat(recent, [tool])
	some l in lists.sequence_lengths
	n >= 2 * l
	s[n - 1 - l] == tool
	array.slice(s, n - 2 * l, n - l) == array.slice(s, n - l, n)
}

# --- 5. taint --------------------------------------------------------------

tainted_to_high_risk if {
	snapshot.tainted == true
	high_risk
}

high_risk if lists.high_risk_tools[ltool]

high_risk if exec_like

# --- 6. exec ---------------------------------------------------------------

exec_like if lists.exec_tools[ltool]

exec_like if startswith(ltool, lists.exec_prefix)

# The binary must be listed verbatim in permissions.exec.allowed_bins: no
# basename or case folding, so "/tmp/ls" does not pass for "ls".
exec_denied if {
	exec_like
	not bin_allowed
}

bin_allowed if idx.bins[args.bin]

# --- 7. approvals ----------------------------------------------------------

approval_needed if {
	idx.approval_required[ltool]
	not approved
}

# approved: an approval for this call_id was granted for the same tool and
# the same canonical arguments.
approved if {
	input.call_digest != ""
	a := snapshot.approvals[input.event.payload.call_id]
	a.state == "approved"
	a.tool_name == tool
	a.args_digest == input.call_digest
}
