# The conformance rules: with the default bundle, the policy that a target
# runs for the cases marked `requires: [conformance-policy]`
# (`aegisctl conformance policy --out DIR`, then `aegisd --policy DIR`).
# A proposal of one of the tools below makes the evaluation fail in the way
# its name says; every other decision is the default bundle's, unchanged.
# docs/conformance.md and docs/policy.md#the-answer say what a failing
# policy must decide: deny POLICY_ERROR.
package aegis.decide

# A builtin error: to_number of a string that is no number. Builtin errors
# are raised, not turned into undefined.
violations contains 1 if {
	input.event.payload.tool_name == "conformance.builtin_error"
	to_number("not a number")
}

# Conflicting values of a complete rule: this definition of decision allows
# the call, while the default bundle's denies or allows it with other
# constraints. The evaluation fails; it must not allow.
decision := {"outcome": "allow", "reason": "OK", "constraints": {"max_output_bytes": 1, "timeout_ms": 1}} if {
	input.event.payload.tool_name == "conformance.conflict"
}
