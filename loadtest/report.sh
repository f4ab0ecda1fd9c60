#!/usr/bin/env bash
# Runs the load-test sequence that docs/benchmarks.md ("Load test") reports,
# in one go so that the floors and the runs share the machine's state:
#
#   1. floors: raw produce → consume on the same brokers (franz-go, kfake and
#      real Kafka), SHA-256 of 300 bytes, one bare OPA evaluation;
#   2. the embedded stack (what `make loadtest` runs), and at 5,000 events/s
#      with and without the projector;
#   3. real Kafka, decider + sealer only: the decision path at 5,000 events/s
#      (three runs with 6 partitions, then three pairs with 2 and 1,
#      alternating; latencies after a 5 s warm-up);
#   4. real Kafka + ClickHouse, one process per stage: throughput at rising
#      rates (RATES, default "10000 15000 20000");
#   5. real Kafka + ClickHouse at SUSTAIN_RATE (default 20000) for
#      SUSTAIN_DURATION (default 5m): whether the store keeps up;
#   6. real Kafka + ClickHouse at 5,000 events/s for MEMORY_DURATION (default
#      10m): the memory of each stage over a long run, with Go's default
#      garbage-collector settings (STAGE_GC=default), so that resident memory
#      follows the live heap instead of filling up to a memory limit.
#
# Needs `make services` (Kafka on $AEGIS_TEST_KAFKA, ClickHouse on
# $AEGIS_TEST_CLICKHOUSE). Reports go to OUT (default loadtest-results/):
# one JSON report and RSS series per run, and summary.txt.
#
#   make services && loadtest/report.sh
set -euo pipefail
cd "$(dirname "$0")/.."
OUT=${OUT:-loadtest-results}
KAFKA=${AEGIS_TEST_KAFKA:-127.0.0.1:19092}
CH=${AEGIS_TEST_CLICKHOUSE:-clickhouse://127.0.0.1:19000/aegis_test}
RATES=${RATES:-10000 15000 20000}
MEMORY_DURATION=${MEMORY_DURATION:-10m}
SUSTAIN_RATE=${SUSTAIN_RATE:-20000}
SUSTAIN_DURATION=${SUSTAIN_DURATION:-5m}
mkdir -p "$OUT"
summary="$OUT/summary.txt"
: >"$summary"
note() { printf '%s\n' "$*" | tee -a "$summary"; }

make build >/dev/null
# The runs use a copy of run-stack.sh: bash reads a script while it runs it,
# so editing the checkout mid-sequence must not change a running step.
mkdir -p .cache
stack=$(mktemp "$PWD/.cache/run-stack.XXXXXX") # run-stack.sh cds to its parent directory
trap 'rm -f "$stack"' EXIT
cp loadtest/run-stack.sh "$stack"

step() { # name, env..., -- extra loadtest flags
  local name=$1
  shift
  local envs=()
  while [[ $# -gt 0 && "$1" != -- ]]; do envs+=("$1"); shift; done
  [[ "${1:-}" == -- ]] && shift
  note "== $name ($(date -u +%H:%M:%S), load average $(cut -d' ' -f1-3 /proc/loadavg))"
  env "${envs[@]}" REPORT="$OUT/$name.json" bash "$stack" "$@" >"$OUT/$name.log" 2>&1 || note "exit code $?"
  grep -E '^  (published|throughput|latency|proposal_decision|publish_|result)|RSS|CPU' "$OUT/$name.log" | tee -a "$summary"
}

note "== floors ($(date -u +%H:%M:%S), load average $(cut -d' ' -f1-3 /proc/loadavg))"
AEGIS_TEST_KAFKA=$KAFKA go test -run '^$' -bench 'PipelineThroughput/.*/floor' -benchtime 100000x ./internal/daemon | grep -E '^Benchmark' | tee -a "$summary"
go test -run '^$' -bench 'SHA256Only300B' -count 3 ./schemas/canon | grep -E '^Benchmark' | tee -a "$summary"
go test -run '^$' -bench 'EvalFast$' -count 3 ./decider/policy | grep -E '^Benchmark' | tee -a "$summary"

step embedded-3000 RATE=3000 DURATION=30s SESSIONS=500
step embedded-5000 RATE=5000 DURATION=60s SESSIONS=500
step embedded-decision-5000 STAGES=decider,sealer STORE=none RATE=5000 DURATION=60s SESSIONS=500 -- --warmup 5s
# The decision latency on real Kafka varies most from run to run: three runs
# with the default 6 partitions, then 2 and 1 partitions alternately (one
# instance per stage on two cores; every partition a transaction writes
# costs the broker a marker and an add-partition check). The first 5 s are
# left out of the latencies: each run creates its topics, whose first writes
# take a few hundred milliseconds once.
for i in 1 2 3; do
  step "kafka-decision-5000-$i" BROKERS="$KAFKA" SPLIT=1 STORE=none RATE=5000 DURATION=60s SESSIONS=500 -- --warmup 5s
done
for i in 1 2 3; do
  step "kafka-decision-5000-p2-$i" BROKERS="$KAFKA" SPLIT=1 STORE=none RATE=5000 DURATION=60s SESSIONS=500 AEGISD_FLAGS="--partitions 2" -- --warmup 5s
  step "kafka-decision-5000-p1-$i" BROKERS="$KAFKA" SPLIT=1 STORE=none RATE=5000 DURATION=60s SESSIONS=500 AEGISD_FLAGS="--partitions 1" -- --warmup 5s
done
# Each ClickHouse run writes a database of its own, dropped first on the
# local test server, so that no run pays for merging the previous run's parts.
fresh_db() {
  deploy/clickhouse/clickhouse.sh client --query "DROP DATABASE IF EXISTS ${CH##*/}_$1" >/dev/null 2>&1 || true
  printf '%s_%s' "$CH" "$1"
}
for rate in $RATES; do
  step "kafka-clickhouse-$rate" BROKERS="$KAFKA" SPLIT=1 STORE="$(fresh_db "loadtest_$rate")" RATE="$rate" DURATION=60s SESSIONS=$((rate / 10))
done
# Sixty seconds show the rate; whether the store keeps up shows over longer:
# SUSTAIN_RATE (default 20000) for SUSTAIN_DURATION (default 5m).
step "kafka-clickhouse-sustained" BROKERS="$KAFKA" SPLIT=1 STORE="$(fresh_db loadtest_sustained)" RATE="$SUSTAIN_RATE" DURATION="$SUSTAIN_DURATION" SESSIONS=$((SUSTAIN_RATE / 10))
step "kafka-clickhouse-memory" BROKERS="$KAFKA" SPLIT=1 STAGE_GC=default STORE="$(fresh_db loadtest_memory)" RATE=5000 DURATION="$MEMORY_DURATION" SESSIONS=500
note "done $(date -u +%H:%M:%S)"
