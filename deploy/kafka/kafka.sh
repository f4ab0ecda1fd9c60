#!/usr/bin/env bash
# kafka.sh — run a real single-node Apache Kafka 4.x broker (KRaft combined
# mode: one process is both broker and controller) on 127.0.0.1 for
# integration and fault tests.
#
# Usage: deploy/kafka/kafka.sh start|stop|status|wait|restart|topics|acls [args...]
#
#   start    fetch the broker jars with Maven if needed, format storage on the
#            first run, launch the broker in the background. Returns once the
#            process is launched; run `wait` to block until it serves. If a
#            broker already answers on the port it is reused and nothing is
#            started.
#   wait     block until the broker accepts TCP connections and answers a
#            metadata request (TopicCommand --list). Fails after
#            KAFKA_WAIT_TIMEOUT seconds (default 120) with the tail of the log.
#   status   print whether the broker runs; exit 0 if it answers on the port,
#            3 if not.
#   stop     SIGTERM the broker started by this script and wait for a clean
#            shutdown (SIGKILL after KAFKA_STOP_TIMEOUT seconds, default 60).
#            Data is kept.
#   restart  stop, start with the same data, wait. For broker-restart tests.
#   topics   run org.apache.kafka.tools.TopicCommand against the broker with
#            the remaining arguments, e.g. `topics --list`.
#   acls     run org.apache.kafka.tools.AclCommand against the broker (as a
#            super user) with the remaining arguments, e.g. `acls --list`.
#
# Environment:
#   KAFKA_PORT             broker (client) port, default 19092
#   KAFKA_CONTROLLER_PORT  KRaft controller port, default 19093
#   KAFKA_SECURE_PORT      SASL_SSL listener port, default 19094: TLS with a
#                          self-signed certificate for 127.0.0.1 and SCRAM-SHA-512
#                          users "aegis" and "fleet"; what a client needs is
#                          written to .cache/kafka/client/ (ca.pem, sasl-password,
#                          fleet-password). The broker runs Kafka's
#                          StandardAuthorizer: plaintext clients are super users,
#                          and a resource without ACLs is open to everyone, so only
#                          resources given ACLs (`acls`) are restricted.
#   KAFKA_HEAP_OPTS        JVM heap flags, default "-Xms1g -Xmx1g -XX:+AlwaysPreTouch"
#                          (Kafka's own default heap, committed and touched at start)
#   KAFKA_GC_OPTS          JVM garbage collector flags, default G1 with the
#                          pause goal of Kafka's own start scripts
#   KAFKA_WAIT_TIMEOUT     seconds `wait` allows, default 120
#   KAFKA_STOP_TIMEOUT     seconds `stop` allows before SIGKILL, default 60
#   KAFKA_EXTRA_PROPERTIES extra server.properties lines (newline-separated),
#                          appended last so they override the defaults, e.g.
#                          "add.partitions.to.txn.retry.backoff.ms=20"
#
# Everything it writes lives under <repo>/.cache/kafka/: libs/ (class path),
# data/ (log.dirs and KRaft metadata), server.properties, kafka.log, kafka.pid,
# tls/ (the broker's key store) and client/ (the secure listener's CA and SASL
# password).
# Delete that directory for a fresh cluster.
set -euo pipefail

script_dir="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
repo_root="$(cd "${script_dir}/../.." && pwd)"
cache_dir="${repo_root}/.cache/kafka"
libs_dir="${cache_dir}/libs"
data_dir="${cache_dir}/data"
config_file="${cache_dir}/server.properties"
log_file="${cache_dir}/kafka.log"
pid_file="${cache_dir}/kafka.pid"

port="${KAFKA_PORT:-19092}"
controller_port="${KAFKA_CONTROLLER_PORT:-19093}"
secure_port="${KAFKA_SECURE_PORT:-19094}"
tls_dir="${cache_dir}/tls"
client_dir="${cache_dir}/client"
sasl_user="aegis"
fleet_user="fleet"
heap_opts="${KAFKA_HEAP_OPTS:--Xms1g -Xmx1g -XX:+AlwaysPreTouch}"
gc_opts="${KAFKA_GC_OPTS:--XX:+UseG1GC -XX:MaxGCPauseMillis=20 -XX:InitiatingHeapOccupancyPercent=35 -XX:+ExplicitGCInvokesConcurrent}"
wait_timeout="${KAFKA_WAIT_TIMEOUT:-120}"
stop_timeout="${KAFKA_STOP_TIMEOUT:-60}"
bootstrap="127.0.0.1:${port}"

log() { printf 'kafka.sh: %s\n' "$*" >&2; }
die() { printf 'kafka.sh: error: %s\n' "$*" >&2; exit 1; }

# port_open reports whether something accepts TCP connections on 127.0.0.1:$1.
port_open() {
	(exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null
}

# our_pid prints the pid of the broker this script started, if it still runs.
our_pid() {
	[[ -f "${pid_file}" ]] || return 1
	local pid
	pid="$(<"${pid_file}")"
	[[ "${pid}" =~ ^[0-9]+$ ]] || return 1
	kill -0 "${pid}" 2>/dev/null || return 1
	# Guard against pid reuse: the process must be our broker.
	tr '\0' ' ' <"/proc/${pid}/cmdline" 2>/dev/null | grep -q 'kafka\.Kafka' || return 1
	printf '%s\n' "${pid}"
}

# apt_install installs Debian packages non-interactively, refreshing the
# package lists only when a package is not known yet.
apt_install() {
	export DEBIAN_FRONTEND=noninteractive
	if ! apt-get install -y -q --no-install-recommends "$@"; then
		log "refreshing package lists"
		apt-get update -q
		apt-get install -y -q --no-install-recommends "$@"
	fi
}

# ensure_tools makes sure a Java 17+ runtime and Maven are present.
ensure_tools() {
	if ! command -v java >/dev/null 2>&1; then
		log "java not found; installing default-jre-headless"
		apt_install default-jre-headless
	fi
	if ! command -v mvn >/dev/null 2>&1; then
		log "mvn not found; installing maven"
		apt_install maven
	fi
	local major
	major="$(java -XshowSettings:properties -version 2>&1 | sed -n 's/^ *java\.specification\.version = \([0-9]*\).*/\1/p')"
	if [[ -z "${major}" || "${major}" -lt 17 ]]; then
		die "Kafka 4.x brokers need Java 17 or newer; found java.specification.version=${major:-unknown}"
	fi
}

# fetch_libs copies the broker and its runtime dependencies into libs/ with
# Maven. The copy is keyed by a hash of pom.xml, so editing the pom (e.g. a
# version bump) refetches and an unchanged pom costs nothing.
fetch_libs() {
	local stamp want
	stamp="${libs_dir}/.pom.sha256"
	want="$(sha256sum "${script_dir}/pom.xml" | cut -d' ' -f1)"
	if [[ -f "${stamp}" && "$(<"${stamp}")" == "${want}" ]]; then
		return 0
	fi
	ensure_tools
	log "fetching broker jars with Maven into ${libs_dir}"
	local tmp="${libs_dir}.tmp"
	rm -rf "${tmp}"
	# Debian's Maven 3.8 emits colour resets even in batch mode; strip them.
	mvn -q -B -Dstyle.color=never -f "${script_dir}/pom.xml" dependency:copy-dependencies \
		-DincludeScope=runtime -DoutputDirectory="${tmp}" 2>&1 | sed 's/\x1b\[[0-9;]*m//g' >&2
	printf '%s\n' "${want}" >"${tmp}/.pom.sha256"
	rm -rf "${libs_dir}"
	mv "${tmp}" "${libs_dir}"
	log "fetched $(find "${libs_dir}" -name '*.jar' | wc -l) jars"
}

# run_class runs a Java main class on the broker's class path.
run_class() {
	local main="$1"
	shift
	java -Xmx256m -XX:TieredStopAtLevel=1 -cp "${libs_dir}/*" "${main}" "$@"
}

# ensure_secrets makes, once, what the SASL_SSL listener needs: a PKCS12 key
# store with a self-signed certificate for 127.0.0.1 (its PEM copy is the
# clients' CA) and the SASL password of user ${sasl_user}.
ensure_secrets() {
	mkdir -p "${tls_dir}" "${client_dir}"
	chmod 700 "${tls_dir}" "${client_dir}"
	if [[ ! -s "${tls_dir}/store-password" ]]; then
		(umask 077 && od -An -tx1 -N24 /dev/urandom | tr -d ' \n' >"${tls_dir}/store-password")
	fi
	local f
	for f in sasl-password fleet-password; do
		if [[ ! -s "${client_dir}/${f}" ]]; then
			(umask 077 && od -An -tx1 -N24 /dev/urandom | tr -d ' \n' >"${client_dir}/${f}")
		fi
	done
	if [[ ! -s "${tls_dir}/broker.p12" || ! -s "${client_dir}/ca.pem" ]]; then
		ensure_tools
		local pass
		pass="$(<"${tls_dir}/store-password")"
		rm -f "${tls_dir}/broker.p12" "${client_dir}/ca.pem"
		log "making the secure listener's certificate (${tls_dir}/broker.p12)"
		keytool -genkeypair -alias broker -keyalg EC -groupname secp256r1 -sigalg SHA256withECDSA \
			-dname "CN=aegis test broker" -ext "SAN=IP:127.0.0.1,DNS:localhost" -validity 3650 \
			-storetype PKCS12 -keystore "${tls_dir}/broker.p12" -storepass "${pass}" -keypass "${pass}" >&2
		keytool -exportcert -rfc -alias broker -keystore "${tls_dir}/broker.p12" -storepass "${pass}" \
			-file "${client_dir}/ca.pem" >&2
	fi
}

write_config() {
	mkdir -p "${cache_dir}" "${data_dir}"
	ensure_secrets
	local store_pass
	store_pass="$(<"${tls_dir}/store-password")"
	cat >"${config_file}.tmp" <<EOF
# Generated by deploy/kafka/kafka.sh; edits are overwritten on every start.
# Single node, KRaft combined mode, loopback only.
process.roles=broker,controller
node.id=1
controller.quorum.voters=1@127.0.0.1:${controller_port}
listeners=PLAINTEXT://127.0.0.1:${port},SASL_SSL://127.0.0.1:${secure_port},CONTROLLER://127.0.0.1:${controller_port}
advertised.listeners=PLAINTEXT://127.0.0.1:${port},SASL_SSL://127.0.0.1:${secure_port}
listener.security.protocol.map=PLAINTEXT:PLAINTEXT,SASL_SSL:SASL_SSL,CONTROLLER:PLAINTEXT
inter.broker.listener.name=PLAINTEXT
controller.listener.names=CONTROLLER
log.dirs=${data_dir}

# The secure listener: TLS (self-signed, tls/broker.p12) and SCRAM-SHA-512.
# ACLs restrict only the resources given some: plaintext clients (the
# tests, the controller) are super users.
authorizer.class.name=org.apache.kafka.metadata.authorizer.StandardAuthorizer
super.users=User:ANONYMOUS
allow.everyone.if.no.acl.found=true
sasl.enabled.mechanisms=SCRAM-SHA-512
listener.name.sasl_ssl.scram-sha-512.sasl.jaas.config=org.apache.kafka.common.security.scram.ScramLoginModule required;
listener.name.sasl_ssl.ssl.keystore.type=PKCS12
listener.name.sasl_ssl.ssl.keystore.location=${tls_dir}/broker.p12
listener.name.sasl_ssl.ssl.keystore.password=${store_pass}
listener.name.sasl_ssl.ssl.key.password=${store_pass}

# One replica of everything, including the internal topics.
num.partitions=1
default.replication.factor=1
min.insync.replicas=1
offsets.topic.replication.factor=1
transaction.state.log.replication.factor=1
transaction.state.log.min.isr=1
# Each partition of the internal topics is one coordinator shard that
# handles its groups' offset commits and heartbeats (or its transactional
# IDs) one request at a time. With one partition the decider's and the
# sealer's commits queue behind each other (docs/pipeline.md#broker-settings);
# Kafka's defaults are 50. Takes effect when the topics are first created.
offsets.topic.num.partitions=8
transaction.state.log.num.partitions=8
share.coordinator.state.topic.replication.factor=1
share.coordinator.state.topic.min.isr=1

# Tests create their topics explicitly and must not wait for rebalances.
auto.create.topics.enable=false
group.initial.rebalance.delay.ms=0

# Transactions v2 (Kafka 4): a transaction's first produce to a partition
# adds the partition on the broker, which answers CONCURRENT_TRANSACTIONS
# internally while the previous transaction's markers are still being
# written and retries after this backoff. The default (20 ms) is paid by
# nearly every transaction of a stage that commits back to back; on one
# broker the markers take about a millisecond (docs/pipeline.md#broker-settings).
add.partitions.to.txn.retry.backoff.ms=2

# The log cleaner's dedupe buffer lives on the heap (default 128 MiB). With
# it the broker's live heap sits near G1's marking threshold, so it runs a
# concurrent cycle (and a remark pause) every few seconds. 32 MiB holds
# ~1.2 M keys per cleaning pass (24 bytes a key), far more than the state
# topics of a test broker have.
log.cleaner.dedupe.buffer.size=33554432
${KAFKA_EXTRA_PROPERTIES:-}
EOF
	mv "${config_file}.tmp" "${config_file}"
}

# format_storage formats log.dirs with a fresh cluster id the first time. Later
# starts find meta.properties and keep the existing data.
format_storage() {
	if [[ -f "${data_dir}/meta.properties" ]]; then
		return 0
	fi
	local cluster_id
	cluster_id="$(run_class kafka.tools.StorageTool random-uuid 2>/dev/null | tail -n1)"
	[[ -n "${cluster_id}" ]] || die "kafka.tools.StorageTool random-uuid printed no cluster id"
	log "formatting ${data_dir} with cluster id ${cluster_id}"
	run_class kafka.tools.StorageTool format -t "${cluster_id}" -c "${config_file}" >&2
}

cmd_start() {
	local pid
	if pid="$(our_pid)"; then
		log "already running (pid ${pid}) on ${bootstrap}"
		return 0
	fi
	if port_open "${port}"; then
		log "a broker already answers on ${bootstrap}; reusing it"
		return 0
	fi
	if port_open "${controller_port}"; then
		die "controller port 127.0.0.1:${controller_port} is taken by another process; set KAFKA_CONTROLLER_PORT"
	fi
	if port_open "${secure_port}"; then
		die "secure listener port 127.0.0.1:${secure_port} is taken by another process; set KAFKA_SECURE_PORT"
	fi
	fetch_libs
	ensure_tools
	write_config
	format_storage
	printf '=== kafka.sh start %s\n' "$(date -u +%Y-%m-%dT%H:%M:%SZ)" >>"${log_file}"
	log "starting broker on ${bootstrap} (controller 127.0.0.1:${controller_port}), log ${log_file}"
	# setsid detaches the broker from the caller's process group so that a
	# CI step ending does not take it down with a stray signal.
	# shellcheck disable=SC2086 # heap_opts and gc_opts are lists of JVM flags.
	setsid nohup java ${heap_opts} ${gc_opts} -Djava.awt.headless=true \
		-Dlog4j2.configurationFile="${script_dir}/log4j2.xml" \
		-cp "${libs_dir}/*" kafka.Kafka "${config_file}" \
		>>"${log_file}" 2>&1 </dev/null &
	printf '%s\n' "$!" >"${pid_file}"
	log "started pid $!; run '$0 wait' to block until it serves"
}

cmd_wait() {
	local deadline=$((SECONDS + wait_timeout))
	log "waiting up to ${wait_timeout}s for ${bootstrap}"
	until port_open "${port}"; do
		# Only a process that is gone counts as exited: while the JVM starts,
		# /proc/PID/cmdline can briefly read empty, which our_pid's check
		# would mistake for a foreign process.
		if [[ -f "${pid_file}" ]] && ! kill -0 "$(<"${pid_file}")" 2>/dev/null; then
			wait_failed "the broker process exited"
		fi
		((SECONDS < deadline)) || wait_failed "nothing accepts connections on ${bootstrap} after ${wait_timeout}s"
		sleep 0.5
	done
	# A listening socket is not enough: metadata must be served, which also
	# proves the controller quorum has a leader. The check runs on the
	# broker's class path, which a checkout reusing a broker that another
	# one started has not fetched yet.
	fetch_libs
	until run_class org.apache.kafka.tools.TopicCommand --bootstrap-server "${bootstrap}" \
		--list >/dev/null 2>&1; do
		((SECONDS < deadline)) || wait_failed "${bootstrap} accepts connections but no metadata request succeeded after ${wait_timeout}s"
		sleep 1
	done
	# The secure listener's SCRAM users (kept in the cluster metadata;
	# setting them again is harmless). A broker this checkout did not start
	# (reused by `start`) has its passwords in another checkout.
	if [[ ! -s "${client_dir}/sasl-password" || ! -s "${client_dir}/fleet-password" ]]; then
		log "broker on ${bootstrap} is ready; ${client_dir} has no SASL passwords (the broker was started from elsewhere), so its secure listener's users are not set from here"
		return 0
	fi
	local user file
	for user in "${sasl_user}:sasl-password" "${fleet_user}:fleet-password"; do
		file="${user#*:}"
		user="${user%%:*}"
		until run_class org.apache.kafka.tools.ConfigCommand --bootstrap-server "${bootstrap}" --alter \
			--entity-type users --entity-name "${user}" \
			--add-config "SCRAM-SHA-512=[password=$(<"${client_dir}/${file}")]" >/dev/null 2>&1; do
			((SECONDS < deadline)) || wait_failed "the SCRAM user ${user} could not be set after ${wait_timeout}s"
			sleep 1
		done
	done
	log "broker on ${bootstrap} is ready (SASL_SSL on 127.0.0.1:${secure_port}: users ${sasl_user}, ${fleet_user}; ${client_dir}/ca.pem, sasl-password, fleet-password)"
}

wait_failed() {
	log "error: $1"
	if [[ -f "${log_file}" ]]; then
		log "last 40 lines of ${log_file}:"
		tail -n 40 "${log_file}" >&2
	fi
	exit 1
}

cmd_stop() {
	local pid
	if ! pid="$(our_pid)"; then
		rm -f "${pid_file}"
		if port_open "${port}"; then
			log "a broker not started by this script answers on ${bootstrap}; leaving it alone"
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
		sleep 0.5
	done
	# The listening sockets close with the process; wait for the port to free
	# so an immediate start does not mistake a dying broker for a live one.
	while port_open "${port}" && ((SECONDS < deadline + 10)); do
		sleep 0.2
	done
	rm -f "${pid_file}"
	log "stopped"
}

cmd_status() {
	local pid
	if pid="$(our_pid)"; then
		if port_open "${port}"; then
			log "running (pid ${pid}) and answering on ${bootstrap}"
			return 0
		fi
		log "process ${pid} runs but ${bootstrap} does not answer yet"
		return 3
	fi
	if port_open "${port}"; then
		log "a broker not started by this script answers on ${bootstrap}"
		return 0
	fi
	log "not running"
	return 3
}

cmd_acls() {
	fetch_libs
	run_class org.apache.kafka.tools.AclCommand --bootstrap-server "${bootstrap}" "$@"
}

cmd_topics() {
	fetch_libs
	run_class org.apache.kafka.tools.TopicCommand --bootstrap-server "${bootstrap}" "$@"
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
	topics) cmd_topics "$@" ;;
	acls) cmd_acls "$@" ;;
	*)
		printf 'usage: %s start|stop|status|wait|restart|topics [TopicCommand args...]|acls [AclCommand args...]\n' "$0" >&2
		exit 2
		;;
	esac
}

main "$@"
