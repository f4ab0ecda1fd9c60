#!/usr/bin/env bash
# clickhouse.sh — run a real single-node ClickHouse server on 127.0.0.1 for
# integration and fault tests, from Debian's clickhouse-server package.
#
# Usage: deploy/clickhouse/clickhouse.sh start|stop|status|wait|restart|client [args...]
#
#   start    install clickhouse-server and clickhouse-client with apt-get if
#            missing, then launch the server in the background with
#            deploy/clickhouse/config.xml and users.xml. Returns once the
#            process is launched; run `wait` to block until it serves. If a
#            server already answers on the HTTP port it is reused.
#   wait     block until `SELECT 1` answers over HTTP. Fails after
#            CLICKHOUSE_WAIT_TIMEOUT seconds (default 120) with the tail of
#            the logs.
#   status   print whether the server runs; exit 0 if it answers `SELECT 1`,
#            3 if not.
#   stop     SIGTERM the server started by this script and wait for it to
#            exit (SIGKILL after CLICKHOUSE_STOP_TIMEOUT seconds, default
#            60). Data is kept.
#   restart  stop, start with the same data, wait. For fault tests.
#   client   run clickhouse-client against the server with the remaining
#            arguments, e.g. `client --query 'SELECT version()'`.
#
# Environment:
#   CLICKHOUSE_PORT          native protocol port, default 19000
#   CLICKHOUSE_HTTP_PORT     HTTP port, default 18123
#   CLICKHOUSE_WAIT_TIMEOUT  seconds `wait` allows, default 120
#   CLICKHOUSE_STOP_TIMEOUT  seconds `stop` allows before SIGKILL, default 60
#
# Everything it writes lives under <repo>/.cache/clickhouse/: data/ (tables,
# metadata, preprocessed configs), tmp/, log/, clickhouse.pid. Delete that
# directory for an empty server. The user `default` has no password and is
# accepted from loopback addresses only.
set -euo pipefail

script_dir="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
repo_root="$(cd "${script_dir}/../.." && pwd)"
cache_dir="${repo_root}/.cache/clickhouse"
data_dir="${cache_dir}/data"
tmp_dir="${cache_dir}/tmp"
log_dir="${cache_dir}/log"
pid_file="${cache_dir}/clickhouse.pid"
stdout_log="${log_dir}/stdout.log"
server_log="${log_dir}/clickhouse-server.log"
error_log="${log_dir}/clickhouse-server.err.log"

tcp_port="${CLICKHOUSE_PORT:-19000}"
http_port="${CLICKHOUSE_HTTP_PORT:-18123}"
wait_timeout="${CLICKHOUSE_WAIT_TIMEOUT:-120}"
stop_timeout="${CLICKHOUSE_STOP_TIMEOUT:-60}"

log() { printf 'clickhouse.sh: %s\n' "$*" >&2; }
die() { printf 'clickhouse.sh: error: %s\n' "$*" >&2; exit 1; }

# port_open reports whether something accepts TCP connections on 127.0.0.1:$1.
port_open() {
	(exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null
}

# select_one reports whether the HTTP interface answers `SELECT 1` with 1.
# It speaks HTTP/1.0 over bash's /dev/tcp so that no curl is needed, and is
# bounded by `timeout` so a wedged server cannot hang the caller.
select_one() {
	local reply
	reply="$(timeout 5 bash -c '
		exec 3<>"/dev/tcp/127.0.0.1/$1" || exit 1
		printf "GET /?query=SELECT%%201 HTTP/1.0\r\nHost: 127.0.0.1\r\n\r\n" >&3
		cat <&3
	' _ "${http_port}" 2>/dev/null | tr -d '\r')" || return 1
	[[ "${reply}" == "HTTP/1."?" 200 "* && "${reply}" == *$'\n\n1' ]]
}

# our_pid prints the pid of the server this script started, if it still runs.
our_pid() {
	[[ -f "${pid_file}" ]] || return 1
	local pid
	pid="$(<"${pid_file}")"
	[[ "${pid}" =~ ^[0-9]+$ ]] || return 1
	kill -0 "${pid}" 2>/dev/null || return 1
	# Guard against pid reuse: the process must be our server.
	tr '\0' ' ' <"/proc/${pid}/cmdline" 2>/dev/null | grep -qF -- "--path=${data_dir}/" || return 1
	printf '%s\n' "${pid}"
}

# ensure_installed installs Debian's clickhouse-server and clickhouse-client
# non-interactively when either binary is missing. The package lists are
# refreshed only when apt does not know the package or the install fails
# (stale lists).
ensure_installed() {
	if command -v clickhouse-server >/dev/null 2>&1 && command -v clickhouse-client >/dev/null 2>&1; then
		return 0
	fi
	export DEBIAN_FRONTEND=noninteractive
	local pkgs=(clickhouse-server clickhouse-client)
	if ! apt-cache show "${pkgs[@]}" >/dev/null 2>&1; then
		log "package lists do not know ${pkgs[*]}; running apt-get update"
		apt-get update -q
	fi
	log "installing ${pkgs[*]} with apt-get"
	if ! apt-get install -y -q --no-install-recommends "${pkgs[@]}"; then
		log "install failed; refreshing package lists and retrying"
		apt-get update -q
		apt-get install -y -q --no-install-recommends "${pkgs[@]}"
	fi
	command -v clickhouse-server >/dev/null 2>&1 || die "clickhouse-server is not on PATH after installing ${pkgs[*]}"
}

cmd_start() {
	local pid
	if pid="$(our_pid)"; then
		log "already running (pid ${pid}) on http://127.0.0.1:${http_port} and 127.0.0.1:${tcp_port}"
		return 0
	fi
	if port_open "${http_port}"; then
		if select_one; then
			log "a ClickHouse server already answers on 127.0.0.1:${http_port}; reusing it"
			return 0
		fi
		die "127.0.0.1:${http_port} is taken by something that does not answer SELECT 1; set CLICKHOUSE_HTTP_PORT"
	fi
	if port_open "${tcp_port}"; then
		die "127.0.0.1:${tcp_port} is taken by another process; set CLICKHOUSE_PORT"
	fi
	ensure_installed
	mkdir -p "${data_dir}" "${tmp_dir}" "${log_dir}" "${cache_dir}/user_files" "${cache_dir}/format_schemas"
	printf '=== clickhouse.sh start %s\n' "$(date -u +%Y-%m-%dT%H:%M:%SZ)" >>"${stdout_log}"
	log "starting clickhouse-server on http://127.0.0.1:${http_port} and 127.0.0.1:${tcp_port}, logs in ${log_dir}"
	# Everything after `--` overrides config.xml. The server runs in the
	# foreground of its own session (setsid) so this script keeps its pid
	# and a CI step ending does not signal it. cwd is the cache directory
	# so that nothing relative lands in the caller's directory.
	(
		cd "${cache_dir}"
		exec setsid nohup clickhouse-server --config-file="${script_dir}/config.xml" -- \
			--path="${data_dir}/" \
			--tmp_path="${tmp_dir}/" \
			--user_files_path="${cache_dir}/user_files/" \
			--format_schema_path="${cache_dir}/format_schemas/" \
			--logger.log="${server_log}" \
			--logger.errorlog="${error_log}" \
			--http_port="${http_port}" \
			--tcp_port="${tcp_port}" \
			>>"${stdout_log}" 2>&1 </dev/null
	) &
	printf '%s\n' "$!" >"${pid_file}"
	log "started pid $!; run '$0 wait' to block until it serves"
}

cmd_wait() {
	local deadline=$((SECONDS + wait_timeout))
	log "waiting up to ${wait_timeout}s for SELECT 1 on http://127.0.0.1:${http_port}"
	until select_one; do
		# Only a process that is gone counts as exited: /proc/PID/cmdline
		# can read empty while the server starts.
		if [[ -f "${pid_file}" ]] && ! kill -0 "$(<"${pid_file}")" 2>/dev/null; then
			wait_failed "the server process exited"
		fi
		((SECONDS < deadline)) || wait_failed "no answer to SELECT 1 on 127.0.0.1:${http_port} after ${wait_timeout}s"
		sleep 0.5
	done
	log "server on http://127.0.0.1:${http_port} (native 127.0.0.1:${tcp_port}) is ready"
}

wait_failed() {
	log "error: $1"
	local f
	for f in "${stdout_log}" "${error_log}" "${server_log}"; do
		if [[ -s "${f}" ]]; then
			log "last 20 lines of ${f}:"
			tail -n 20 "${f}" >&2
		fi
	done
	exit 1
}

cmd_stop() {
	local pid
	if ! pid="$(our_pid)"; then
		rm -f "${pid_file}"
		if port_open "${http_port}"; then
			log "a server not started by this script answers on 127.0.0.1:${http_port}; leaving it alone"
		else
			log "not running"
		fi
		return 0
	fi
	log "stopping pid ${pid} (SIGTERM)"
	kill -TERM "${pid}"
	local deadline=$((SECONDS + stop_timeout))
	while kill -0 "${pid}" 2>/dev/null; do
		if ((SECONDS >= deadline)); then
			log "pid ${pid} still running after ${stop_timeout}s; sending SIGKILL"
			kill -KILL "${pid}" 2>/dev/null || true
			break
		fi
		sleep 0.2
	done
	while { port_open "${http_port}" || port_open "${tcp_port}"; } && ((SECONDS < deadline + 10)); do
		sleep 0.2
	done
	rm -f "${pid_file}"
	log "stopped"
}

cmd_status() {
	local pid
	if pid="$(our_pid)"; then
		if select_one; then
			log "running (pid ${pid}) and answering on http://127.0.0.1:${http_port} and 127.0.0.1:${tcp_port}"
			return 0
		fi
		log "process ${pid} runs but does not answer SELECT 1 yet"
		return 3
	fi
	if select_one; then
		log "a server not started by this script answers on 127.0.0.1:${http_port}"
		return 0
	fi
	log "not running"
	return 3
}

cmd_client() {
	ensure_installed
	exec clickhouse-client --host 127.0.0.1 --port "${tcp_port}" "$@"
}

main() {
	local cmd="${1:-}"
	[[ $# -gt 0 ]] && shift
	case "${cmd}" in
	start) cmd_start ;;
	stop) cmd_stop ;;
	status) cmd_status ;;
	wait) cmd_wait ;;
	restart)
		cmd_stop
		cmd_start
		cmd_wait
		;;
	client) cmd_client "$@" ;;
	*)
		printf 'usage: %s start|stop|status|wait|restart|client [clickhouse-client args...]\n' "$0" >&2
		exit 2
		;;
	esac
}

main "$@"
