#!/usr/bin/env bash
# Runs aegis-loadtest against an aegisd this script starts and stops:
# embedded by default (in-process broker, SQLite store under a temp data
# dir), or on real Kafka with BROKERS=host:port (a unique topic prefix per
# run). It samples aegisd's resident memory every second and prints the
# first and last sample after the report. Used by `make loadtest`.
#
#   RATE=3000 DURATION=30s SESSIONS=500 loadtest/run-stack.sh [extra aegis-loadtest flags]
set -euo pipefail
cd "$(dirname "$0")/.."
RATE=${RATE:-3000} DURATION=${DURATION:-30s} SESSIONS=${SESSIONS:-500}
REPORT=${REPORT:-loadtest-report.json}
KAFKA_ADDR=${KAFKA_ADDR:-127.0.0.1:19392} HTTP_ADDR=${HTTP_ADDR:-127.0.0.1:18380}
data=$(mktemp -d)
prefix="lt$(date +%s)."
args=(--dev --data-dir "$data" --manifests deploy/manifests --http-addr "$HTTP_ADDR" --topic-prefix "$prefix" --instance loadtest)
if [[ -n "${BROKERS:-}" ]]; then
  args+=(--brokers "$BROKERS")
else
  BROKERS=$KAFKA_ADDR
  args+=(--kafka-addr "$KAFKA_ADDR")
fi
bin/aegisd "${args[@]}" >"$data/aegisd.log" 2>&1 &
pid=$!
sampler=
cleanup() {
  [[ -n "$sampler" ]] && kill "$sampler" 2>/dev/null || true
  kill "$pid" 2>/dev/null && wait "$pid" 2>/dev/null || true
  rm -rf "$data"
}
trap cleanup EXIT
for _ in $(seq 100); do
  curl -fs "http://$HTTP_ADDR/readyz" >/dev/null 2>&1 && break
  kill -0 "$pid" 2>/dev/null || { cat "$data/aegisd.log"; exit 3; }
  sleep 0.2
done
( while kill -0 "$pid" 2>/dev/null; do awk '/VmRSS/ {print $2}' "/proc/$pid/status" >>"$data/rss"; sleep 1; done ) &
sampler=$!
code=0
bin/aegis-loadtest --brokers "$BROKERS" --topic-prefix "$prefix" --rate "$RATE" --duration "$DURATION" \
  --sessions "$SESSIONS" --store "sqlite:$data/audit.db" --report "$REPORT" "$@" || code=$?
if [[ -s "$data/rss" ]]; then
  n=$(wc -l <"$data/rss")
  at() { sed -n "$(( ($1 * (n - 1)) / 4 + 1 ))p" "$data/rss"; }
  echo "aegisd RSS (kB) at 0/25/50/75/100 % of the run: $(at 0) $(at 1) $(at 2) $(at 3) $(at 4); max $(sort -n "$data/rss" | tail -1); $n samples"
fi
echo "JSON report: $REPORT"
exit $code
