# Package aegis.decide is the default Aegis decision policy. The engine
# queries data.aegis.decide.decision for every event; the input contract,
# the rule order and every reason code are described in docs/policy.md.
#
# Shape: cheap guards first (manifest, event type, proposal shape), then the
# set of violated rules, of which the lowest-numbered one decides. Whatever
# depends on the manifest alone (declared tools and their classes, domain
# patterns, budgets, the allow decision) comes precomputed in the
# per-manifest index, so a decision is a handful of lookups and comparisons.
package aegis.decide

import data.aegis.manifest
import data.aegis.tools

# decision is the only rule the engine queries. The engine passes the
# per-manifest index as input.manifest_index; without it (opa eval, unit
# tests) the index is derived here from input.manifest, so the rules below
# can read input.manifest_index directly.
#
# A manifest is an object with permissions. The guards reference fields
# rather than calling is_object(): a builtin call would copy the whole
# manifest or index into its argument on every evaluation.
decision := {"outcome": "deny", "reason": "MANIFEST_UNKNOWN"} if {
	not input.manifest.permissions
} else := d if {
	input.manifest_index.budgets
	d := checked
} else := d if {
	d := checked with input.manifest_index as manifest.build(input.manifest)
}

# checked is the decision for an event under a known manifest, in rule
# order; the first match wins. A declared tool (cls defined) is a non-empty
# string, so the proposal-shape check runs only for undeclared ones. The
# allow decision, constraints included, is part of the index.
checked := input.manifest_index.allow if {
	input.event.event_type != "TOOL_CALL_PROPOSED"
} else := {"outcome": "deny", "reason": "INVALID_PROPOSAL"} if {
	not cls
	not valid_proposal
} else := {"outcome": "deny", "reason": "POLICY_ERROR"} if {
	not complete_state
} else := {"outcome": "deny", "reason": "SESSION_TERMINATED"} if {
	# A session that recorded TERMINATION runs no more tools (the
	# termination also cleared its taint, so deciding on would let a
	# tainted agent wash its taint away).
	input.snapshot.terminated == true
} else := {"outcome": "deny", "reason": r} if {
	# A violation reasons does not name (a bundle's own member, e.g. 0
	# or 9) still denies: it must never fall through to allow.
	r := object.get(reasons, min(violations), "POLICY_ERROR")
} else := {"outcome": "require_approval", "reason": "APPROVAL_REQUIRED"} if {
	cls.approval
	not approved
} else := input.manifest_index.allow

# reasons maps a rule's priority to its reason code; the lowest violated
# priority wins (min of the empty set is undefined). Another file of the
# bundle can add its own members to violations, e.g.
# `violations contains 1 if input.event.payload.tool_name == "search"`;
# when the lowest member has no reason here, the decision is deny
# POLICY_ERROR.
reasons := {
	1: "PERMISSION_UNDECLARED",
	2: "EGRESS_DENY",
	3: "BUDGET_EXCEEDED",
	4: "LOOP_DETECTED",
	5: "TAINTED_TO_HIGH_RISK",
	6: "EXEC_DENY",
}

# The violation rules are written for OPA's evaluator: each reads the input
# and the index directly (a helper rule costs an evaluation of its own),
# puts its cheapest and most selective expression first, and bodies that
# compare an input field with a constant (`input.snapshot.tainted == true`)
# are skipped by OPA's rule index without being evaluated.

# 1. The tool is not declared. (cls is undefined then.)
violations contains 1 if not cls

# 2. A destination the manifest does not allow, or a network tool without
# a destination. The host of args.domain or args.url is normalised (lower
# case, one trailing dot dropped); an exact entry is one lookup, suffix
# patterns are tried only when it misses. A present but unusable value (not
# a string, not a host name, a URL without a parsable authority) is the
# host "", which no suffix matches and no exact entry either unless the
# manifest lists "" or ".".
#
# A host is a DNS-style name: non-empty dot-separated labels of ASCII
# letters, digits, "-" and "_", with one optional trailing dot. The check
# runs before lower-casing, so no Unicode case mapping (the Kelvin sign
# lower-cases to "k") can turn a non-ASCII name into an allowed one. These
# are the semantics of manifest.Net.Allows (docs/manifest.md). The same
# host expression appears in both patterns below.
violations contains 2 if {
	d := input.event.payload.args.domain
	is_string(d)
	regex.match(`^(?:[A-Za-z0-9_-]+\.)*[A-Za-z0-9_-]+\.?$`, d)
	h := trim_suffix(lower(d), ".")
	not input.manifest_index.domains[h]
	not suffix_allowed(h)
}

violations contains 2 if {
	d := input.event.payload.args.domain
	not domain_usable(d)
	not input.manifest_index.domains[""]
}

# args.url must be an absolute URL with an authority
# ("scheme://[userinfo@]host[:port][/?#...]"). The authority ends at the
# first "/", "?", "#" or "\", so that parsers which treat "\" as a path
# separator agree on the host. A string that is not such a URL matches the
# second alternative, which captures nothing: its host is "".
violations contains 2 if {
	u := input.event.payload.args.url
	is_string(u)
	m := regex.find_all_string_submatch_n(
		`^(?:[A-Za-z][A-Za-z0-9+.-]*://(?:[^/?#\\@]*@)?((?:[A-Za-z0-9_-]+\.)*[A-Za-z0-9_-]+)\.?(?::[0-9]*)?(?:[/?#].*)?|[\s\S]*)$`,
		u, 1,
	)
	h := lower(m[0][1])
	not input.manifest_index.domains[h]
	not suffix_allowed(h)
}

violations contains 2 if {
	u := input.event.payload.args.url
	not is_string(u)
	not input.manifest_index.domains[""]
}

# A destination key spelled in another letter case ("URL", "Domain"): a
# server that decodes keys case-insensitively, as Go's encoding/json does
# into a struct, reads it as its url or domain, which the rules above never
# see (they read args.url and args.domain exactly). Such a key is a
# destination that matches nothing. (?i) folds as strings.EqualFold does;
# no non-ASCII rune folds to a letter of "url" or "domain".
violations contains 2 if {
	some k, _ in input.event.payload.args
	is_string(k)
	regex.match(`^(?i:url|domain)$`, k)
	not destination_key[k]
}

destination_key := {"url", "domain"}

# A network tool without args.domain and args.url. A present but false
# value is a destination too, but one that only an exact "" entry allows:
# without such an entry the rules above deny it anyway, so the common case
# can test the values themselves instead of their presence.
violations contains 2 if {
	cls.network
	not input.event.payload.args.domain
	not input.event.payload.args.url
	not input.manifest_index.domains[""]
}

violations contains 2 if {
	cls.network
	input.manifest_index.domains[""]
	not has_destination
}

# 3. A budget is used up: steps, tool calls, or wall time since the
# session's first event (once there is one).
violations contains 3 if input.snapshot.steps >= input.manifest_index.budgets.max_steps

violations contains 3 if input.snapshot.tool_calls >= input.manifest_index.budgets.max_tool_calls

violations contains 3 if {
	input.snapshot.events > 0
	input.event.ts_unix_ms - input.snapshot.first_ts_ms >= input.manifest_index.budgets.max_wall_time_ms
}

# The latest time the session has seen counts too (last_ts_ms is the
# highest event timestamp), so a proposal stamped earlier than the events
# before it does not get under the budget again.
violations contains 3 if {
	input.snapshot.events > 0
	input.snapshot.last_ts_ms - input.snapshot.first_ts_ms >= input.manifest_index.budgets.max_wall_time_ms
}

# 4. A loop: the sticky flag; the (max_identical_calls+1)-th identical call
# (for an approved call, not counting the proposal that asked for the
# approval); no progress (too many failed results in a row); a repeated
# tool-name sequence. The first three read input.call_digest (an input
# without it is denied POLICY_ERROR by complete_state before they count).
violations contains 4 if {
	input.snapshot.loop.detected == true
	_ = input.call_digest
}

violations contains 4 if {
	input.snapshot.calls[input.call_digest] >= input.manifest_index.budgets.max_identical_calls
	not approved
}

# An approved call (rule 7) was proposed once before, to ask for the
# approval; that proposal is not counted against it, or with
# max_identical_calls 1 an approved call could never run.
violations contains 4 if {
	input.snapshot.calls[input.call_digest] > input.manifest_index.budgets.max_identical_calls
}

# A call not counted yet has been seen 0 times: a loop only when
# max_identical_calls is negative (the index marks that case).
violations contains 4 if {
	input.manifest_index.identical_calls_exhausted == true
	d := input.call_digest
	not call_counted(d)
}

violations contains 4 if {
	input.snapshot.consecutive_errors >= input.manifest_index.loops.max_consecutive_errors
	_ = input.call_digest
}

# Repeated sequence: with this proposal appended, the session's recent tool
# names end in two identical back-to-back runs of length L, for some L in
# tools.sequence_lengths. Rather than trying every L, the rule visits the
# positions i that hold the proposed tool name (the last name of the first
# run, L = n - 1 - i) and compares the runs for those only.
violations contains 4 if {
	recent := input.snapshot.recent_tools
	n := count(recent) + 1
	n >= 6
	t := input.event.payload.tool_name
	s := array.concat(recent, [t])
	some i
	s[i] == t
	l := (n - 1) - i
	l in input.manifest_index.loops.sequence_lengths
	n >= 2 * l
	array.slice(s, n - 2 * l, n - l) == array.slice(s, n - l, n)
}

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

# Negated checks over a nested reference go through helper rules ("not
# bin_allowed" rather than "not input.manifest_index.bins[input.event.payload.args.bin]"):
# the inner reference is evaluated outside the negation, so an undefined
# argument would make the whole body undefined instead of true.

valid_proposal if {
	t := input.event.payload.tool_name
	is_string(t)
	t != ""
}

# complete_state: the input carries every field the violation rules
# compare, call_digest included (the identical-call, sticky-loop and
# no-progress checks read it). The engine always supplies them; a hand-made
# input that lacks one is denied rather than letting a check pass for want
# of data.
complete_state if {
	is_string(input.call_digest)
	is_number(input.event.ts_unix_ms)
	s := input.snapshot
	is_number(s.events)
	is_number(s.steps)
	is_number(s.tool_calls)
	is_number(s.first_ts_ms)
	is_number(s.last_ts_ms)
	is_number(s.consecutive_errors)
	is_boolean(s.tainted)
	is_boolean(s.loop.detected)
	is_boolean(s.terminated)
}

# cls is the classification of the proposed tool (network, exec, high_risk,
# approval); undefined when the tool is not declared.
cls := input.manifest_index.tools[input.event.payload.tool_name]

bin_allowed if input.manifest_index.bins[input.event.payload.args.bin]

call_counted(d) if _ = input.snapshot.calls[d]

has_destination if _ = input.event.payload.args.domain

has_destination if _ = input.event.payload.args.url

domain_usable(d) if {
	is_string(d)
	regex.match(`^(?:[A-Za-z0-9_-]+\.)*[A-Za-z0-9_-]+\.?$`, d)
}

# A suffix entry ".example.com" (from "*.example.com") matches strict
# sub-domains only: hosts never have an empty label, so a host ending in
# ".example.com" has at least one label before it.
suffix_allowed(h) if {
	h != ""
	some s in input.manifest_index.suffixes
	endswith(h, s)
}

# --- 7. approvals ----------------------------------------------------------

# approved: an approval for this call_id was granted for the same tool and
# the same canonical arguments.
approved if {
	input.call_digest != ""
	a := input.snapshot.approvals[input.event.payload.call_id]
	a.state == "approved"
	a.tool_name == input.event.payload.tool_name
	a.args_digest == input.call_digest
}
