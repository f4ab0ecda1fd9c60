# Package aegis.decide is the default Aegis decision policy. The engine
# queries data.aegis.decide.decision for every event; the input contract,
# the rule order and every reason code are described in docs/policy.md.
#
# Shape: cheap guards first (manifest, event type, proposal shape), then the
# set of violated rules, of which the lowest-numbered one decides. Whatever
# depends on the manifest alone (declared tools and their classes, domain
# patterns, budgets) comes precomputed in the per-manifest index, so a
# decision is a handful of lookups and comparisons.
package aegis.decide

import data.aegis.manifest
import data.aegis.tools

# decision is the only rule the engine queries. The engine passes the
# per-manifest index as input.manifest_index; without it (opa eval, unit
# tests) the index is derived here from input.manifest, so the rules below
# can read input.manifest_index directly.
decision := {"outcome": "deny", "reason": "MANIFEST_UNKNOWN"} if {
	not manifest_present
} else := d if {
	# A reference, not is_object(): a builtin call would copy the whole
	# index into its argument on every evaluation.
	input.manifest_index.budgets
	d := checked
} else := d if {
	d := checked with input.manifest_index as manifest.build(input.manifest)
}

# checked is the decision for an event under a known manifest, in rule
# order; the first match wins.
checked := {"outcome": "allow", "reason": "OK", "constraints": input.manifest_index.constraints} if {
	input.event.event_type != "TOOL_CALL_PROPOSED"
} else := {"outcome": "deny", "reason": "INVALID_PROPOSAL"} if {
	not valid_proposal
} else := {"outcome": "deny", "reason": "POLICY_ERROR"} if {
	not complete_state
} else := {"outcome": "deny", "reason": reasons[min(violations)]} if {
	count(violations) > 0
} else := {"outcome": "require_approval", "reason": "APPROVAL_REQUIRED"} if {
	cls.approval
	not approved
} else := {"outcome": "allow", "reason": "OK", "constraints": input.manifest_index.constraints}

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

# Each violation rule reads the input and the index directly: no helper
# rule stands between a check and the data it compares, which keeps the
# number of rule evaluations per decision small.

# 1. The tool is not declared. (cls is undefined then.)
violations contains 1 if not cls

# 2. A destination the manifest does not allow, or a network tool without
# a destination.
violations contains 2 if {
	some h in destinations
	not domain_allowed(h)
}

violations contains 2 if {
	cls.network
	count(destinations) == 0
}

# 3. A budget is used up: steps, tool calls, or wall time since the
# session's first event (once there is one). The three comparisons share
# one rule body: each yields a boolean, and any true one is a violation.
violations contains 3 if {
	s := input.snapshot
	b := input.manifest_index.budgets
	true in [
		s.steps >= b.max_steps,
		s.tool_calls >= b.max_tool_calls,
		[s.events > 0, input.event.ts_unix_ms - s.first_ts_ms >= b.max_wall_time_ms] == [true, true],
	]
}

# 4. A loop: the sticky flag; the (max_identical_calls+1)-th identical call;
# no progress (too many failed results in a row); a repeated tool-name
# sequence.
violations contains 4 if {
	s := input.snapshot
	true in [
		s.loop.detected == true,
		object.get(s, ["calls", input.call_digest], 0) >= input.manifest_index.budgets.max_identical_calls,
		s.consecutive_errors >= tools.max_consecutive_errors,
	]
}

violations contains 4 if repeated_sequence

# 5. Untrusted content in the context and a high-risk tool.
violations contains 5 if {
	input.snapshot.tainted == true
	cls.high_risk
}

# 6. An exec-like tool whose binary is not listed verbatim in
# permissions.exec.allowed_bins (no basename or case folding: "/tmp/ls"
# does not pass for "ls").
violations contains 6 if {
	cls.exec
	not bin_allowed
}

# Negated checks go through helper rules ("not bin_allowed" rather than
# "not input.manifest_index.bins[input.event.payload.args.bin]"): a negated expression over
# an undefined argument would make the whole body undefined instead of true.

# A manifest is an object with permissions. Referencing the field, rather
# than calling is_object(input.manifest), avoids handing the whole manifest
# to a builtin (which copies it) on every evaluation.
manifest_present if input.manifest.permissions

tool := input.event.payload.tool_name

valid_proposal if {
	is_string(tool)
	tool != ""
}

# complete_state: the event and snapshot carry every field the violation
# rules compare. The engine always supplies them; a hand-made input that
# lacks one is denied rather than letting a check pass for want of data.
complete_state if {
	is_number(input.event.ts_unix_ms)
	s := input.snapshot
	is_number(s.events)
	is_number(s.steps)
	is_number(s.tool_calls)
	is_number(s.first_ts_ms)
	is_number(s.consecutive_errors)
	is_boolean(s.tainted)
	is_boolean(s.loop.detected)
}

# cls is the classification of the proposed tool (network, exec, high_risk,
# approval); undefined when the tool is not declared.
cls := input.manifest_index.tools[tool]

bin_allowed if input.manifest_index.bins[input.event.payload.args.bin]

# --- 2. egress -------------------------------------------------------------

# destinations holds the normalised host of every destination the call
# names. A present but unusable value (not a string, not a host name, a URL
# without a parsable authority) contributes "", which no pattern matches.
destinations contains domain_host(input.event.payload.args.domain)

destinations contains url_host(input.event.payload.args.url)

domain_allowed(h) if input.manifest_index.domains[h]

# A suffix entry ".example.com" (from "*.example.com") matches strict
# sub-domains only: hosts never have an empty label, so a host ending in
# ".example.com" has at least one label before it.
domain_allowed(h) if {
	h != ""
	some s in input.manifest_index.suffixes
	endswith(h, s)
}

# A host is a DNS-style name: non-empty dot-separated labels of ASCII
# letters, digits, "-" and "_", with one optional trailing dot. The check
# runs before lower-casing, so no Unicode case mapping (the Kelvin sign
# lower-cases to "k") can turn a non-ASCII name into an allowed one. These
# are the semantics of manifest.Net.Allows (docs/manifest.md). The same
# host expression appears in both patterns below.

# domain_host returns the normalised form of an args.domain value (lower
# case, one trailing dot dropped), or "" when it is not a host.
domain_host(d) := trim_suffix(lower(d), ".") if {
	is_string(d)
	regex.match(`^(?:[A-Za-z0-9_-]+\.)*[A-Za-z0-9_-]+\.?$`, d)
} else := ""

# url_host returns the normalised host of an absolute URL with an authority
# ("scheme://[userinfo@]host[:port][/?#...]"), or "" for anything else. The
# authority ends at the first "/", "?", "#" or "\", so that parsers which
# treat "\" as a path separator agree on the host.
url_host(u) := trim_suffix(lower(m[0][1]), ".") if {
	is_string(u)
	m := regex.find_all_string_submatch_n(
		`^[A-Za-z][A-Za-z0-9+.-]*://(?:[^/?#\\@]*@)?((?:[A-Za-z0-9_-]+\.)*[A-Za-z0-9_-]+\.?)(?::[0-9]*)?(?:[/?#].*)?$`,
		u, 1,
	)
	count(m) == 1
} else := ""

# --- 4. loops --------------------------------------------------------------

# repeated_sequence: with this proposal appended, the session's recent tool
# names end in two identical back-to-back runs of length L (3..7).
repeated_sequence if {
	recent := input.snapshot.recent_tools
	n := count(recent) + 1
	n >= 6
	s := array.concat(recent, [tool])
	some l in tools.sequence_lengths
	n >= 2 * l
	s[n - 1 - l] == tool
	array.slice(s, n - 2 * l, n - l) == array.slice(s, n - l, n)
}

# --- 7. approvals ----------------------------------------------------------

# approved: an approval for this call_id was granted for the same tool and
# the same canonical arguments.
approved if {
	input.call_digest != ""
	a := input.snapshot.approvals[input.event.payload.call_id]
	a.state == "approved"
	a.tool_name == tool
	a.args_digest == input.call_digest
}
