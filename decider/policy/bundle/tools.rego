# Package aegis.lists holds the tool-name lists the default decision policy
# classifies tools by. Every entry is lower case; tool names are lower-cased
# before they are looked up, so letter case cannot evade a list. Edit this
# file in your own bundle to change a classification (docs/policy.md).
package aegis.lists

# network_tool_prefixes: a tool whose lower-cased name starts with one of
# these must name a destination (args.domain or args.url) that the manifest
# allows; without one it is denied with EGRESS_DENY.
network_tool_prefixes := ["http", "fetch", "web_", "net.", "curl", "wget"]

# exec_tools: exact lower-cased names of exec-like tools. Any tool whose
# lower-cased name starts with exec_prefix is exec-like too.
exec_tools := {"exec", "shell", "bash", "sh", "run_command", "subprocess"}

exec_prefix := "exec"

# high_risk_tools: lower-cased names of tools that a tainted session may not
# call (TAINTED_TO_HIGH_RISK). Exec-like tools are high-risk as well.
high_risk_tools := {
	"exec", "shell", "bash", "sh", "run_command", "subprocess",
	"write_file", "fs.write", "delete_file", "fs.delete", "move_file",
	"send_email", "email.send", "http_post", "http_put", "http_delete",
	"git_push", "git.push", "db_write", "db.write", "sql_exec",
	"deploy", "transfer_funds",
}

# max_consecutive_errors: the no-progress loop detector fires once the session
# has seen this many failed tool results in a row.
max_consecutive_errors := 3

# sequence_lengths: lengths of the tool-name sequences whose immediate
# repetition counts as a loop.
sequence_lengths := numbers.range(3, 7)
