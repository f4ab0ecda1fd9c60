# Package aegis.manifest derives, from a capability manifest, the lookup
# structures the decision rules need: the declared tools with their
# classification, normalised domain patterns, the allowed binaries, budgets
# with their defaults applied and the constraints of an allow. The index is
# plain JSON (objects keyed by name instead of sets), so it can be passed in
# any input encoding.
#
# The engine evaluates data.aegis.manifest.index once per manifest, caches
# the value and passes it to every decision as input.manifest_index. The
# decision rules fall back to build(input.manifest) when that field is
# absent (opa eval, unit tests), so both paths run the same Rego.
package aegis.manifest

import data.aegis.tools

# budget_defaults: a budget that is absent or 0 in the manifest takes these.
budget_defaults := {
	"max_steps": 24,
	"max_tool_calls": 12,
	"max_wall_time_ms": 120000,
	"max_output_bytes": 1048576,
	"timeout_ms": 30000,
	"max_identical_calls": 2,
}

index := build(input.manifest)

build(m) := {
	"tools": {t: classify(t, approval) |
		some t in strings_at(m, ["permissions", "tools"])
		t != ""
	},
	"domains": {normalize_pattern(d): true |
		some d in strings_at(m, ["permissions", "net", "domains"])
		not startswith(d, "*.")
	},
	"suffixes": [concat("", [".", normalize_pattern(substring(d, 2, -1))]) |
		some d in strings_at(m, ["permissions", "net", "domains"])
		startswith(d, "*.")
	],
	"bins": {b: true | some b in strings_at(m, ["permissions", "exec", "allowed_bins"])},
	"budgets": budgets,
	"constraints": constraints,
	"allow": {"outcome": "allow", "reason": "OK", "constraints": constraints},
	"identical_calls_exhausted": budgets.max_identical_calls <= 0,
	"loops": {
		"max_consecutive_errors": tools.max_consecutive_errors,
		"sequence_lengths": tools.sequence_lengths,
	},
} if {
	approval := {lower(t) | some t in strings_at(m, ["permissions", "approval_required"])}
	budgets := {k: budget(m, k, d) | some k, d in budget_defaults}
	constraints := {
		"max_output_bytes": budgets.max_output_bytes,
		"timeout_ms": budgets.timeout_ms,
	}
}

# classify returns the classes of a declared tool; approval is the
# lower-cased approval_required set.
classify(t, approval) := {
	"network": tools.network(t),
	"exec": tools.exec(t),
	"high_risk": tools.high_risk(t),
	"approval": lower(t) in approval,
}

# strings_at returns the string elements of the array at path in m, or an
# empty array when there is none.
strings_at(m, path) := [s | some s in array_or_empty(object.get(m, path, [])); is_string(s)]

array_or_empty(x) := x if is_array(x)

else := []

# budget returns the manifest's value for budget k, or d when it is absent
# or 0. A negative value is kept, so that every check against it fails
# closed.
budget(m, k, d) := v if {
	v := object.get(m, ["permissions", "budgets", k], 0)
	is_number(v)
	v != 0
} else := d

# normalize_pattern lower-cases a domain pattern and drops one trailing dot.
normalize_pattern(d) := trim_suffix(lower(d), ".")
