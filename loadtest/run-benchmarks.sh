#!/usr/bin/env bash
# Runs the gateway, the in-process baseline and the HTTP + JSON floor side by
# side on this machine, then prints the markdown comparison (BENCHMARKS.md).
#
#   loadtest/run-benchmarks.sh            # about 3 minutes
#   ROUNDS=5 DURATION=5 loadtest/run-benchmarks.sh
#
# For 1-row and 32-row requests, each path is loaded closed-loop at
# concurrency 32 (throughput) and 1 (low-load latency). A second gateway runs
# with CONTENDER_RUNTIME__EXECUTION=pool to compare the worker pool with the
# default inline execution (1-row requests). Every measurement is repeated in
# ROUNDS interleaved rounds, because on a small shared VM the numbers drift
# from one minute to the next; the table gives medians, ranges and per-round
# (paired) ratios. The load generator runs on the same cores as the server it
# measures: on a small machine they compete for CPU.
set -euo pipefail
cd "$(dirname "$0")/.."

ROUNDS=${ROUNDS:-3}                    # interleaved repetitions
DURATION=${DURATION:-3}                # measured seconds per run
WARMUP=${WARMUP:-1}                    # unmeasured seconds before each run
LOADGEN_THREADS=${LOADGEN_THREADS:-1}  # load generator tokio workers
GATEWAY_PORT=${GATEWAY_PORT:-18080}
POOL_PORT=${POOL_PORT:-18082}
FLOOR_PORT=${FLOOR_PORT:-18081}
OUT=${OUT:-target/loadtest/$(date +%Y%m%d-%H%M%S)}
MODEL=models/breast_cancer/1/model.onnx  # the champion contender.toml deploys
HOLDOUT=models/_data/breast_cancer_holdout.json
LT=target/release/contender-loadtest
GW=target/release/contender

cargo build --release -p contender -p contender-loadtest
mkdir -p "$OUT"

pids=()
cleanup() {
  for pid in "${pids[@]}"; do
    kill "$pid" 2>/dev/null || true
  done
  for pid in "${pids[@]}"; do
    wait "$pid" 2>/dev/null || true
  done
}
trap cleanup EXIT
trap 'exit 130' INT TERM

listening() { (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null; }
for port in "$GATEWAY_PORT" "$POOL_PORT" "$FLOOR_PORT"; do
  if listening "$port"; then
    echo "port $port is already in use: stop what listens there or set GATEWAY_PORT/POOL_PORT/FLOOR_PORT" >&2
    exit 1
  fi
done

"$LT" body --holdout "$HOLDOUT" --rows 1 --out "$OUT/body-1.json"
"$LT" body --holdout "$HOLDOUT" --rows 32 --out "$OUT/body-32.json"

start_server() { # name port command... (waits until ready)
  local name=$1 port=$2
  shift 2
  "$@" >"$OUT/$name.log" 2>&1 &
  pids+=("$!")
  "$LT" wait --url "http://127.0.0.1:$port/v2/health/ready" --timeout 60
}
# The floor stops by itself after 15 minutes should this script be killed hard.
start_server floor "$FLOOR_PORT" "$LT" floor --addr "127.0.0.1:$FLOOR_PORT" --exit-after 900
start_server gateway "$GATEWAY_PORT" "$GW" serve --http-addr "127.0.0.1:$GATEWAY_PORT"
start_server gateway-pool "$POOL_PORT" \
  env CONTENDER_RUNTIME__EXECUTION=pool "$GW" serve --http-addr "127.0.0.1:$POOL_PORT"

failed=0
http_run() { # name port rows concurrency round
  local name=$1 port=$2 rows=$3 conc=$4 round=$5
  echo "== round $round: $name, $rows row(s)/request, concurrency $conc"
  "$LT" http --url "http://127.0.0.1:$port/v2/models/breast_cancer/infer" \
    --body "$OUT/body-$rows.json" --rows "$rows" --concurrency "$conc" \
    --duration "$DURATION" --warmup "$WARMUP" --threads "$LOADGEN_THREADS" \
    --json "$OUT/$name-b$rows-c$conc-r$round.json" || failed=1
}
inprocess_run() { # rows threads round
  local rows=$1 threads=$2 round=$3
  echo "== round $round: in-process, $rows row(s)/call, $threads thread(s)"
  "$LT" inprocess --model "$MODEL" --body "$OUT/body-$rows.json" --threads "$threads" \
    --duration "$DURATION" --warmup "$WARMUP" \
    --json "$OUT/inprocess-b$rows-c$threads-r$round.json" || failed=1
}

for round in $(seq 1 "$ROUNDS"); do
  for rows in 1 32; do
    for conc in 32 1; do
      http_run gateway "$GATEWAY_PORT" "$rows" "$conc" "$round"
      if [ "$rows" = 1 ]; then
        http_run gateway-pool "$POOL_PORT" "$rows" "$conc" "$round"
      fi
      inprocess_run "$rows" "$conc" "$round"
      http_run floor "$FLOOR_PORT" "$rows" "$conc" "$round"
    done
  done
done

{
  echo "Machine: $(nproc) cores ($(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2- | sed 's/^ //')), load generator on the same cores"
  echo "Commit: $(git rev-parse --short HEAD)$(git diff --quiet HEAD -- src Cargo.toml || echo ' (src modified)'); $ROUNDS rounds, each run $DURATION s measured after $WARMUP s warm-up; load generator threads: $LOADGEN_THREADS"
  echo
  "$LT" table --dir "$OUT"
} | tee "$OUT/table.md"
echo "results: $OUT"
if [ "$failed" -ne 0 ]; then
  echo "some runs had failed requests: see the errors above" >&2
  exit 1
fi
