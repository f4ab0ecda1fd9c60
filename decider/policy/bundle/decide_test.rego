# Unit tests of the default decision policy. Run them with
#   aegisctl policy test decider/policy/bundle
# (or `opa test -v decider/policy/bundle`).
package aegis.decide_test

import data.aegis.decide
import data.aegis.manifest as mf

fixture_manifest := {
	"schema": "aegis.dev/manifest/v0.1",
	"name": "unit",
	"version": "1.0.0",
	"publisher": "acme",
	"permissions": {
		"tools": ["search", "http_get", "exec", "EXEC", "Write_File", "send_email", "deploy"],
		"net": {"domains": ["api.example.com", "*.example.org"]},
		"exec": {"allowed_bins": ["ls"]},
		"approval_required": ["Send_Email"],
		"budgets": {"max_tool_calls": 5, "timeout_ms": 1000},
	},
	"sandbox": {"required": false},
	"integrity": {},
}

base_snapshot := {
	"tenant_id": "t", "session_id": "s", "last_seq": 2,
	"first_ts_ms": 1000, "last_ts_ms": 1500,
	"events": 2, "steps": 1, "model_calls": 1, "tool_calls": 0,
	"tainted": false, "handoff": {}, "consecutive_errors": 0,
	"loop": {"detected": false}, "terminated": false,
}

proposal(tool, args) := {
	"v": 1, "tenant_id": "t", "session_id": "s", "seq": 3, "ts_unix_ms": 2000,
	"event_type": "TOOL_CALL_PROPOSED",
	"payload": {"tool_name": tool, "call_id": "c1", "args": args},
}

# with_snapshot returns the input for a proposal of tool with args, the
# snapshot patched with the fields of patch.
with_snapshot(tool, args, patch) := {
	"event": proposal(tool, args),
	"snapshot": object.union(base_snapshot, patch),
	"manifest": fixture_manifest,
	"call_digest": "d1",
}

input_for(tool, args) := with_snapshot(tool, args, {})

decision_for(inp) := d if {
	d := decide.decision with input as inp
}

reason_for(inp) := decision_for(inp).reason

test_allow_with_constraints if {
	decision_for(input_for("search", {"q": "x"})) == {
		"outcome": "allow", "reason": "OK",
		"constraints": {"max_output_bytes": 1048576, "timeout_ms": 1000},
	}
}

test_manifest_null if {
	reason_for(object.union(input_for("search", {}), {"manifest": null})) == "MANIFEST_UNKNOWN"
}

test_manifest_missing if {
	reason_for(object.remove(input_for("search", {}), ["manifest"])) == "MANIFEST_UNKNOWN"
}

test_non_proposal_allowed if {
	inp := object.union(input_for("search", {}), {"event": {"event_type": "MODEL_CALL_STARTED", "ts_unix_ms": 2000, "payload": {}}})
	decision_for(inp).outcome == "allow"
}

test_terminated_session_decides_nothing if {
	reason_for(with_snapshot("search", {"q": "x"}, {"terminated": true})) == "SESSION_TERMINATED"
	reason_for(with_snapshot("exec", {"bin": "ls"}, {"terminated": true, "tainted": false})) == "SESSION_TERMINATED"
	reason_for(with_snapshot("undeclared", {}, {"terminated": true})) == "SESSION_TERMINATED"
}

test_wall_time_not_reset_by_a_backdated_proposal if {
	# base fixture: first_ts_ms 1000; the default wall-time budget is 120000 ms.
	reason_for(with_snapshot("search", {"q": "x"}, {"last_ts_ms": 121000})) == "BUDGET_EXCEEDED"
	reason_for(with_snapshot("search", {"q": "x"}, {"last_ts_ms": 120999})) == "OK"
}

test_invalid_proposal if {
	reason_for(input_for(7, {})) == "INVALID_PROPOSAL"
	reason_for(input_for("", {})) == "INVALID_PROPOSAL"
}

test_undeclared if {
	reason_for(input_for("rm", {})) == "PERMISSION_UNDECLARED"
	reason_for(input_for("Search", {})) == "PERMISSION_UNDECLARED"
}

test_egress_allowed if {
	reason_for(input_for("http_get", {"domain": "API.example.com."})) == "OK"
	reason_for(input_for("http_get", {"url": "https://a.b.example.org/x"})) == "OK"
}

test_egress_denied if {
	every args in [
		{"domain": "example.org"},
		{"domain": "example.org.evil.com"},
		{"domain": "badexample.org"},
		{"url": "https://api.example.com@evil.com/"},
		{"url": "https://evil.com\\@api.example.com/"},
		{"url": "api.example.com"},
		{"domain": ["api.example.com"]},
		{},
		{"domain": "api.example.com", "URL": "https://evil.com/"},
		{"url": "https://api.example.com/", "Domain": "evil.com"},
	] {
		reason_for(input_for("http_get", args)) == "EGRESS_DENY"
	}
	reason_for(input_for("search", {"Url": "https://a.example.org/"})) == "EGRESS_DENY"
}

test_budget_boundary if {
	reason_for(with_snapshot("search", {}, {"tool_calls": 4})) == "OK"
	reason_for(with_snapshot("search", {}, {"tool_calls": 5})) == "BUDGET_EXCEEDED"
	reason_for(with_snapshot("search", {}, {"steps": 24})) == "BUDGET_EXCEEDED"
	reason_for(with_snapshot("search", {}, {"first_ts_ms": 2000 - 119999})) == "OK"
	reason_for(with_snapshot("search", {}, {"first_ts_ms": 2000 - 120000})) == "BUDGET_EXCEEDED"
}

test_loop_sticky if {
	reason_for(with_snapshot("search", {}, {"loop": {"detected": true, "seq": 1}})) == "LOOP_DETECTED"
}

test_loop_identical_calls if {
	reason_for(with_snapshot("search", {}, {"calls": {"d1": 1}})) == "OK"
	reason_for(with_snapshot("search", {}, {"calls": {"d1": 2}})) == "LOOP_DETECTED"
}

test_loop_sequence if {
	reason_for(with_snapshot("search", {}, {"recent_tools": ["a", "b", "search", "a", "b"]})) == "LOOP_DETECTED"
	reason_for(with_snapshot("search", {}, {"recent_tools": ["a", "b", "search", "a", "c"]})) == "OK"
}

test_loop_no_progress if {
	reason_for(with_snapshot("search", {}, {"consecutive_errors": 2})) == "OK"
	reason_for(with_snapshot("search", {}, {"consecutive_errors": 3})) == "LOOP_DETECTED"
}

test_taint_letter_case if {
	reason_for(with_snapshot("Write_File", {}, {"tainted": true})) == "TAINTED_TO_HIGH_RISK"
	reason_for(with_snapshot("EXEC", {"bin": "ls"}, {"tainted": true})) == "TAINTED_TO_HIGH_RISK"
	reason_for(with_snapshot("search", {}, {"tainted": true})) == "OK"
}

test_exec if {
	reason_for(input_for("exec", {"bin": "ls"})) == "OK"
	reason_for(input_for("EXEC", {"bin": "rm"})) == "EXEC_DENY"
	reason_for(input_for("exec", {"bin": "/bin/ls"})) == "EXEC_DENY"
	reason_for(input_for("exec", {})) == "EXEC_DENY"
}

test_approval if {
	decision_for(input_for("send_email", {})).outcome == "require_approval"
	approved := {"approvals": {"c1": {"tool_name": "send_email", "args_digest": "d1", "state": "approved"}}}
	reason_for(with_snapshot("send_email", {}, approved)) == "OK"
	pending := {"approvals": {"c1": {"tool_name": "send_email", "args_digest": "d1", "state": "pending"}}}
	reason_for(with_snapshot("send_email", {}, pending)) == "APPROVAL_REQUIRED"
	other := {"approvals": {"c1": {"tool_name": "send_email", "args_digest": "d2", "state": "approved"}}}
	reason_for(with_snapshot("send_email", {}, other)) == "APPROVAL_REQUIRED"
}

test_priority_order if {
	# undeclared beats egress; budget beats loop; taint beats exec
	reason_for(input_for("curl", {"url": "https://evil.com"})) == "PERMISSION_UNDECLARED"
	reason_for(with_snapshot("http_get", {"domain": "evil.com"}, {"tool_calls": 9})) == "EGRESS_DENY"
	reason_for(with_snapshot("search", {}, {"tool_calls": 9, "consecutive_errors": 5})) == "BUDGET_EXCEEDED"
	reason_for(with_snapshot("exec", {"bin": "rm"}, {"tainted": true})) == "TAINTED_TO_HIGH_RISK"
}

# The engine passes the cached index as input.manifest_index; decisions must
# not depend on whether it is present.
test_index_is_build if {
	idx := mf.index with input as {"manifest": fixture_manifest}
	idx == mf.build(fixture_manifest)
	idx.suffixes == [".example.org"]
	idx.tools.send_email.approval
	not idx.tools.search.approval
	idx.tools.EXEC.exec
	idx.tools.EXEC.high_risk
	idx.tools.http_get.network
	idx.budgets.max_tool_calls == 5
	idx.budgets.max_steps == 24
	every tool in ["search", "http_get", "exec", "send_email", "rm"] {
		inp := input_for(tool, {"domain": "api.example.com", "bin": "ls"})
		decision_for(inp) == decision_for(object.union(inp, {"manifest_index": idx}))
	}
}

# The smallest input the default bundle decides: the example of
# docs/policy.md (no index, a manifest with tools only, a bare snapshot).
test_minimal_input if {
	d := decide.decision with input as {
		"event": {"event_type": "TOOL_CALL_PROPOSED", "ts_unix_ms": 2000,
		          "payload": {"tool_name": "rm", "call_id": "c1", "args": {}}},
		"snapshot": {"events": 0, "steps": 0, "tool_calls": 0, "first_ts_ms": 0, "last_ts_ms": 0,
		             "tainted": false, "consecutive_errors": 0, "loop": {"detected": false}, "terminated": false},
		"manifest": {"permissions": {"tools": ["search"]}},
		"call_digest": "d1",
	}
	d.reason == "PERMISSION_UNDECLARED"
	s := decide.decision with input as {
		"event": {"event_type": "TOOL_CALL_PROPOSED", "ts_unix_ms": 2000,
		          "payload": {"tool_name": "search", "call_id": "c1", "args": {}}},
		"snapshot": {"events": 0, "steps": 0, "tool_calls": 0, "first_ts_ms": 0, "last_ts_ms": 0,
		             "tainted": false, "consecutive_errors": 0, "loop": {"detected": false}, "terminated": false},
		"manifest": {"permissions": {"tools": ["search"]}},
		"call_digest": "d1",
	}
	s.outcome == "allow"
}

# A snapshot without a field the rules compare fails closed. (object.union
# merges nested objects, so the snapshot is removed before it is replaced.)
test_incomplete_snapshot_denied if {
	every field in ["events", "steps", "tool_calls", "first_ts_ms", "last_ts_ms", "consecutive_errors", "tainted", "loop", "terminated"] {
		inp := input_for("search", {})
		partial := object.remove(inp.snapshot, [field])
		reason_for(object.union(object.remove(inp, ["snapshot"]), {"snapshot": partial})) == "POLICY_ERROR"
	}
	reason_for(object.remove(input_for("search", {}), ["snapshot"])) == "POLICY_ERROR"
}

# Without call_digest the loop checks could not count identical calls: a
# hand-made input that lacks it (or has a non-string one) fails closed.
test_missing_call_digest_denied if {
	reason_for(object.remove(input_for("search", {}), ["call_digest"])) == "POLICY_ERROR"
	reason_for(object.union(input_for("search", {}), {"call_digest": 7})) == "POLICY_ERROR"
}

# The sequence rule looks at every earlier position holding the proposed
# name, not only the first one it finds.
test_loop_sequence_several_candidates if {
	# with "search" appended: [search, search, a, search] [search, a, search]... L = 3
	reason_for(with_snapshot("search", {}, {"recent_tools": ["search", "search", "a", "search", "search", "a"]})) == "LOOP_DETECTED"
	reason_for(with_snapshot("search", {}, {"recent_tools": ["search", "search", "a", "search", "b", "a"]})) == "OK"
}

# A negative max_identical_calls is kept (not replaced by the default), so
# even a call never seen before is a loop.
test_loop_negative_identical_calls if {
	m := object.union(fixture_manifest, {"permissions": {"budgets": {"max_identical_calls": -1}}})
	inp := object.union(input_for("search", {}), {"manifest": m})
	reason_for(inp) == "LOOP_DETECTED"
	reason_for(object.union(inp, {"snapshot": {"calls": {"other": 1}}})) == "LOOP_DETECTED"
}

# A tool named "" is never a proposal, even when the manifest declares it.
test_empty_tool_declared_is_invalid if {
	m := object.union(fixture_manifest, {"permissions": {"tools": ["", "search"]}})
	reason_for(object.union(input_for("", {}), {"manifest": m})) == "INVALID_PROPOSAL"
}

# An unusable destination is the host "": denied, unless the manifest lists
# "" or "." as an exact entry. A network tool needs a destination either way.
empty_host_manifest := object.union(fixture_manifest, {"permissions": {"net": {"domains": ["."]}}})

empty_host_input(args) := object.union(input_for("http_get", args), {"manifest": empty_host_manifest})

test_egress_empty_host if {
	reason_for(empty_host_input({"url": 5})) == "OK"
	reason_for(empty_host_input({"domain": false})) == "OK"
	reason_for(empty_host_input({"url": "api.example.com"})) == "OK"
	reason_for(empty_host_input({})) == "EGRESS_DENY"
	reason_for(input_for("http_get", {"url": 5})) == "EGRESS_DENY"
	reason_for(input_for("http_get", {"domain": false})) == "EGRESS_DENY"
}

# A URL host with its one trailing dot, in upper case, through userinfo and
# a port.
test_egress_url_host_forms if {
	reason_for(input_for("http_get", {"url": "HTTPS://user@API.EXAMPLE.COM.:8443/x"})) == "OK"
	reason_for(input_for("http_get", {"url": "https://api.example.com../"})) == "EGRESS_DENY"
	reason_for(input_for("http_get", {"url": "https://api.example.com\nx"})) == "EGRESS_DENY"
}

# The proposal that asked for an approval is not counted against
# max_identical_calls when the approved call is proposed: with 1, the
# approved call runs once (it used to be its own second identical call, a
# sticky loop), and a second run of it is a loop.
test_approved_call_not_counted_against_its_request if {
	m := object.union(fixture_manifest, {"permissions": {"budgets": {"max_identical_calls": 1}}})
	approved := {"c1": {"tool_name": "send_email", "args_digest": "d1", "state": "approved"}}
	inp := object.union(with_snapshot("send_email", {}, {"calls": {"d1": 1}, "approvals": approved}), {"manifest": m})
	reason_for(inp) == "OK"
	reason_for(object.union(inp, {"snapshot": {"calls": {"d1": 2}}})) == "LOOP_DETECTED"
	pending := {"c1": {"tool_name": "send_email", "args_digest": "d1", "state": "pending"}}
	reason_for(object.union(inp, {"snapshot": {"approvals": pending}})) == "LOOP_DETECTED"
	reason_for(object.union(with_snapshot("search", {}, {"calls": {"d1": 1}}), {"manifest": m})) == "LOOP_DETECTED"
}
