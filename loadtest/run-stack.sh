#!/usr/bin/env bash
# Runs aegis-loadtest against aegisd processes this script starts and stops:
# embedded by default (one aegisd with the in-process broker and a SQLite
# store under a temp data dir), or on real Kafka with BROKERS=host:port (a
# unique topic prefix per run). With SPLIT=1 (real Kafka only) each stage
# runs in its own aegisd (--target decider, sealer, projector), so that each
# stage's memory is measured on its own. STORE=clickhouse://HOST:PORT/DB
# points the projector (and the loadtest's queryable probe) at ClickHouse
# instead of SQLite; STORE=none runs no projector at all (SPLIT=1) and skips
# the queryable probe, to measure the decision path alone. STAGES lists the
# aegisd processes to start by their --target values, overriding SPLIT
# (e.g. STAGES="decider sealer" for two processes, STAGES=decider,sealer for
# one with both stages); AEGISD_FLAGS adds flags to
# every aegisd (e.g. "--kafka-compression none"); LOGS=DIR keeps each
# aegisd's log there after the run; on deploy/kafka/kafka.sh's broker the
# run's topics are deleted afterwards unless KEEP_TOPICS=1. It samples each aegisd's
# resident memory every second
# and prints, after the report, the samples at 0/25/50/75/100 % of the run,
# and the CPU each process (aegisd, the broker and ClickHouse if local, the
# load tester itself) used during the run.
#
# A stage in a process of its own (decider, sealer, projector) runs with Go's
# garbage collector paced by a soft memory limit instead of by heap growth:
# GOGC=off and GOMEMLIMIT 512MiB (decider, sealer) or 1GiB (projector), the
# settings docs/pipeline.md ("Go runtime settings") recommends for such
# processes. STAGE_GC=default runs them with Go's defaults instead, and GOGC
# or GOMEMLIMIT set in the environment apply as given.
# Every aegisd and the load tester share one approval secret the script
# writes under the temp data dir.
# Used by `make loadtest` and `make loadtest-smoke`.
#
#   RATE=3000 DURATION=30s SESSIONS=500 loadtest/run-stack.sh [extra aegis-loadtest flags]
#   BROKERS=127.0.0.1:19092 SPLIT=1 STORE=clickhouse://127.0.0.1:19000/lt RATE=5000 DURATION=10m loadtest/run-stack.sh
set -euo pipefail
cd "$(dirname "$0")/.."
# Run directly on a fresh checkout, the binaries may not be built yet.
[[ -x bin/aegisd && -x bin/aegis-loadtest ]] || make build >&2
RATE=${RATE:-3000} DURATION=${DURATION:-30s} SESSIONS=${SESSIONS:-500}
REPORT=${REPORT:-loadtest-report.json}
KAFKA_ADDR=${KAFKA_ADDR:-127.0.0.1:19392} HTTP_PORT=${HTTP_PORT:-18380}
data=$(mktemp -d)
prefix="lt$(date +%s)."
STORE=${STORE:-sqlite:$data/audit.db}
# One approval secret for every aegisd and the load tester, which signs
# the mix's APPROVAL_DECIDED events published straight to Kafka (the
# decider refuses unsigned ones: docs/api.md#approvals).
secret="$data/approval.secret"
(umask 077 && od -An -tx1 -N32 /dev/urandom | tr -d ' \n' >"$secret")
base=(--dev --data-dir "$data" --manifests deploy/manifests --topic-prefix "$prefix" --pprof --approval-secret-file "$secret")
read -ra extra <<<"${AEGISD_FLAGS:-}"
base+=("${extra[@]}")
probe=()
if [[ "$STORE" != none ]]; then
  base+=(--store "$STORE")
  probe=(--store "$STORE")
fi
real_kafka=
if [[ -n "${BROKERS:-}" ]]; then
  real_kafka=1
  base+=(--brokers "$BROKERS")
else
  [[ -n "${SPLIT:-}" ]] && { echo "SPLIT=1 needs BROKERS (the embedded broker lives in one process)" >&2; exit 2; }
  BROKERS=$KAFKA_ADDR
  base+=(--kafka-addr "$KAFKA_ADDR")
fi
if [[ -n "${STAGES:-}" ]]; then
  read -ra stages <<<"$STAGES"
elif [[ -n "${SPLIT:-}" && "$STORE" == none ]]; then
  stages=(decider sealer)
elif [[ -n "${SPLIT:-}" ]]; then
  stages=(decider sealer projector)
else
  stages=(all)
fi

# ready reports whether aegisd on 127.0.0.1:$1 answers /readyz with 200 (plain
# HTTP over bash's /dev/tcp: no curl needed).
ready() {
  local reply
  reply="$(timeout 3 bash -c '
    exec 3<>"/dev/tcp/127.0.0.1/$1" || exit 1
    printf "GET /readyz HTTP/1.0\r\nHost: 127.0.0.1\r\n\r\n" >&3
    head -c 12 <&3
  ' _ "$1" 2>/dev/null)" || return 1
  [[ "$reply" == "HTTP/1."?" 200" ]]
}

pids=() samplers=()
cleanup() {
  for s in "${samplers[@]}"; do kill "$s" 2>/dev/null || true; done
  for p in "${pids[@]}"; do kill "$p" 2>/dev/null && wait "$p" 2>/dev/null || true; done
  if [[ -n "${LOGS:-}" ]]; then mkdir -p "$LOGS" && cp "$data"/aegisd-*.log "$LOGS"/ 2>/dev/null || true; fi
  rm -rf "$data"
  # Each run creates its own topics (a fresh prefix); on the broker of
  # deploy/kafka/kafka.sh they are deleted afterwards, or a day of load
  # tests fills the disk (20,000 events/s leave ~5 GB a minute).
  # KEEP_TOPICS=1 keeps them.
  if [[ -n "$real_kafka" && -z "${KEEP_TOPICS:-}" && "$BROKERS" == 127.0.0.1:* && -d .cache/kafka/libs ]]; then
    KAFKA_PORT=${BROKERS##*:} deploy/kafka/kafka.sh topics --delete --topic "${prefix//./\\.}.*" >/dev/null 2>&1 || true
  fi
}
trap cleanup EXIT
declare -A memlimit=([decider]=512MiB [sealer]=512MiB [projector]=1GiB)
port=$HTTP_PORT
for s in "${stages[@]}"; do
  gc=()
  if [[ "${STAGE_GC:-}" != default && -z "${GOGC:-}${GOMEMLIMIT:-}" && -n "${memlimit[$s]:-}" ]]; then
    gc=(GOGC=off "GOMEMLIMIT=${memlimit[$s]}")
  fi
  env "${gc[@]}" bin/aegisd "${base[@]}" --target "$s" --instance "loadtest-$s" --http-addr "127.0.0.1:$port" >"$data/aegisd-$s.log" 2>&1 &
  pids+=($!)
  ok=
  for _ in $(seq 150); do
    ready "$port" && { ok=1; break; }
    kill -0 "${pids[-1]}" 2>/dev/null || break
    sleep 0.2
  done
  [[ -n "$ok" ]] || { echo "aegisd --target $s did not become ready:" >&2; cat "$data/aegisd-$s.log" >&2; exit 3; }
  pid=${pids[-1]}
  ( while kill -0 "$pid" 2>/dev/null; do awk '/VmRSS/ {print $2}' "/proc/$pid/status" >>"$data/rss-$s"; sleep 1; done ) &
  samplers+=($!)
  port=$((port + 1))
done

# cpu_ticks prints the CPU time (user + system, in clock ticks) of pid.
cpu_ticks() { awk '{print $14 + $15}' "/proc/$1/stat" 2>/dev/null || echo 0; }
# The processes whose CPU time the run reports: each aegisd, and the
# brokers and ClickHouse when they run on this machine.
cpu_names=() cpu_pids=()
for i in "${!stages[@]}"; do cpu_names+=("aegisd:${stages[$i]}"); cpu_pids+=("${pids[$i]}"); done
for pat in kafka.Kafka clickhouse-server; do
  for p in $(pgrep -f "$pat" || true); do cpu_names+=("$pat"); cpu_pids+=("$p"); done
done
cpu_before=()
for p in "${cpu_pids[@]}"; do cpu_before+=("$(cpu_ticks "$p")"); done

code=0
start=$(date +%s.%N)
TIMEFORMAT='aegis-loadtest CPU: %U s user + %S s system over %R s'
time bin/aegis-loadtest --brokers "$BROKERS" --topic-prefix "$prefix" --approval-secret-file "$secret" --rate "$RATE" --duration "$DURATION" \
  --sessions "$SESSIONS" "${probe[@]}" --report "$REPORT" "$@" || code=$?
elapsed=$(awk -v a="$start" -v b="$(date +%s.%N)" 'BEGIN {print b - a}')
hz=$(getconf CLK_TCK)
line="CPU during the run (cores used on average over ${elapsed%.*} s):"
for i in "${!cpu_pids[@]}"; do
  d=$(( $(cpu_ticks "${cpu_pids[$i]}") - ${cpu_before[$i]} ))
  line+=" ${cpu_names[$i]} $(awk -v d="$d" -v hz="$hz" -v t="$elapsed" 'BEGIN {printf "%.2f", d / hz / t}')"
done
echo "$line"
for s in "${stages[@]}"; do
  f="$data/rss-$s"
  [[ -s "$f" ]] || continue
  n=$(wc -l <"$f")
  at() { sed -n "$(( ($1 * (n - 1)) / 4 + 1 ))p" "$f"; }
  echo "aegisd --target $s RSS (kB) at 0/25/50/75/100 % of the run: $(at 0) $(at 1) $(at 2) $(at 3) $(at 4); max $(sort -n "$f" | tail -1); $n samples"
  cp "$f" "$REPORT.rss-$s"
done
echo "RSS samples (kB, one a second): $REPORT.rss-*"
echo "JSON report: $REPORT"
exit $code
