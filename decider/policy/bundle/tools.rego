# Package aegis.tools classifies tools by name. Names are lower-cased before
# they are classified, so letter case cannot evade a class. Every list is
# data: edit this file in your own bundle to change a classification
# (docs/policy.md).
#
# The classification of every tool a manifest declares is computed once per
# manifest (data.aegis.manifest.index), not once per decision.
package aegis.tools

# network_prefixes: a tool whose lower-cased name starts with one of these is
# a network tool; it must name a destination (args.domain or args.url) that
# the manifest allows, and without one it is denied with EGRESS_DENY.
network_prefixes := ["http", "fetch", "web_", "net.", "curl", "wget"]

# exec_names: exact lower-cased names of exec-like tools. A tool whose
# lower-cased name starts with exec_prefix is exec-like too.
exec_names := {
	"exec", "shell", "bash", "sh", "run_command", "subprocess",
	"zsh", "fish", "dash", "ksh", "csh", "tcsh", "powershell", "pwsh", "cmd",
	"run_shell_command", "run_terminal_cmd", "shell_exec", "execute_command", "terminal",
}

exec_prefix := "exec"

# high_risk_names: lower-cased names of tools that a tainted session may not
# call (TAINTED_TO_HIGH_RISK). Exec-like tools are high-risk as well.
high_risk_names := {
	"exec", "shell", "bash", "sh", "run_command", "subprocess",
	"write_file", "fs.write", "delete_file", "fs.delete", "move_file",
	"send_email", "email.send", "http_post", "http_put", "http_delete",
	"git_push", "git.push", "db_write", "db.write", "sql_exec",
	"deploy", "transfer_funds",
	"edit_file", "fs.edit", "apply_patch", "create_file",
	"python", "run_python", "run_code", "code_interpreter", "eval",
}

# max_consecutive_errors: the no-progress loop detector fires once the
# session has seen this many failed tool results in a row.
max_consecutive_errors := 3

# sequence_lengths: lengths of the tool-name sequences whose immediate
# repetition counts as a loop.
sequence_lengths := [3, 4, 5, 6, 7]

# network(name) is true when name is a network tool, false otherwise.
network(name) := true if {
	some p in network_prefixes
	startswith(lower(name), p)
} else := false

# exec(name) is true when name is an exec-like tool, false otherwise.
exec(name) := true if {
	exec_names[lower(name)]
} else := true if {
	startswith(lower(name), exec_prefix)
} else := false

# high_risk(name) is true when name is a high-risk tool, false otherwise.
high_risk(name) := true if {
	high_risk_names[lower(name)]
} else := exec(name)
