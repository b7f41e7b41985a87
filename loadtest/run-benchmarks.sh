#!/usr/bin/env bash
# Runs the gateway, the in-process baseline and the HTTP + JSON floor side by
# side on this machine, then prints the markdown comparison (BENCHMARKS.md).
#
#   loadtest/run-benchmarks.sh            # about 3.5 minutes
#   ROUNDS=5 DURATION=5 loadtest/run-benchmarks.sh
#   KEEP_DATA=1 ...   # keep the gateways' prediction logs (OUT/*-data)
#
# For 1-row and 32-row requests, each path is loaded closed-loop at
# concurrency 32 (throughput) and 1 (low-load latency). The gateway serves
# loadtest/benchmark.toml: the breast_cancer v1 champion alone, defaults
# otherwise (prediction log and drift monitoring on). For 1-row requests two
# variants run beside it: the same with CONTENDER_RUNTIME__EXECUTION=pool
# (worker pool instead of inline execution), and with one shadow challenger
# (loadtest/benchmark-shadow.toml). Every measurement is repeated in ROUNDS
# interleaved rounds, because on a small shared VM the numbers drift from one
# minute to the next; the table gives medians, ranges and per-round (paired)
# ratios. The load generator runs on the same cores as the server it
# measures: on a small machine they compete for CPU.
set -euo pipefail
cd "$(dirname "$0")/.."

ROUNDS=${ROUNDS:-3}                    # interleaved repetitions
DURATION=${DURATION:-3}                # measured seconds per run
WARMUP=${WARMUP:-1}                    # unmeasured seconds before each run
LOADGEN_THREADS=${LOADGEN_THREADS:-1}  # load generator tokio workers
FLOOR_PORT=${FLOOR_PORT:-18081}
GATEWAY_PORT=${GATEWAY_PORT:-18082}
POOL_PORT=${POOL_PORT:-18083}
SHADOW_PORT=${SHADOW_PORT:-18084}
OUT=${OUT:-target/loadtest/$(date +%Y%m%d-%H%M%S)}
MODEL=models/breast_cancer/1/model.onnx  # the champion benchmark.toml deploys
HOLDOUT=models/_data/breast_cancer_holdout.json

cargo build --release -p contender -p contender-loadtest
mkdir -p "$OUT/bin"
OUT=$(cd "$OUT" && pwd)
# Run copies, so that a concurrent build cannot swap the binaries mid-run.
cp target/release/contender target/release/contender-loadtest "$OUT/bin/"
LT=$OUT/bin/contender-loadtest
GW=$OUT/bin/contender

pids=()
cleanup() {
  for pid in "${pids[@]}"; do
    kill "$pid" 2>/dev/null || true
  done
  for pid in "${pids[@]}"; do
    wait "$pid" 2>/dev/null || true
  done
  rm -rf "$OUT/bin"
  # The prediction logs hold one row per request (hundreds of MB): drop them.
  if [ -z "${KEEP_DATA:-}" ]; then
    rm -rf "$OUT/gateway-data" "$OUT/gateway-pool-data" "$OUT/gateway-shadow-data"
  fi
}
trap cleanup EXIT
trap 'exit 130' INT TERM

listening() { (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null; }
for port in "$FLOOR_PORT" "$GATEWAY_PORT" "$POOL_PORT" "$SHADOW_PORT"; do
  if listening "$port"; then
    echo "port $port is already in use: stop what listens there or set FLOOR_PORT, GATEWAY_PORT, POOL_PORT, SHADOW_PORT" >&2
    exit 1
  fi
done

# Other work on the machine skews every number: record how busy it was.
idle_before=$(vmstat 1 2 | awk 'END { print $15 }')
if [ "$idle_before" -lt 80 ]; then
  echo "warning: the CPU was only ${idle_before}% idle before the run: other work will skew the numbers" >&2
fi
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
# Each gateway logs predictions to its own fresh store, not the repository's data/.
start_gateway() { # name port config [NAME=value ...]
  local name=$1 port=$2 config=$3
  shift 3
  start_server "$name" "$port" env CONTENDER_STORE__DATA_DIR="$OUT/$name-data" "$@" \
    "$GW" serve --config "$config" --http-addr "127.0.0.1:$port"
}
start_gateway gateway "$GATEWAY_PORT" loadtest/benchmark.toml
start_gateway gateway-pool "$POOL_PORT" loadtest/benchmark.toml CONTENDER_RUNTIME__EXECUTION=pool
start_gateway gateway-shadow "$SHADOW_PORT" loadtest/benchmark-shadow.toml

failed=0
# The infer URL of breast_cancer on a local port: the deployment, or with a
# suffix such as /versions/1 the repository model itself.
uri() { echo "http://127.0.0.1:$1/v2/models/breast_cancer${2:-}/infer"; }
http_run() { # name port rows concurrency round
  local name=$1 port=$2 rows=$3 conc=$4 round=$5
  echo "== round $round: $name, $rows row(s)/request, concurrency $conc"
  "$LT" http --url "$(uri "$port")" \
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

# Low-load latency on one vCPU: on a VM, a wake-up that crosses vCPUs goes
# through the hypervisor and can add tens of microseconds to a round trip
# (the floor alone: ~35 µs on one vCPU, ~80 µs across two). So the 1-row,
# concurrency-1 runs are repeated with the load generator and the server
# under test pinned to the same vCPU (`taskset`), which measures what the
# paths themselves cost; the unpinned runs stay in the table beside them.
ALL_CPUS="0-$(($(nproc) - 1))"
PIN_CPU=${PIN_CPU:-0}
can_pin=$(command -v taskset >/dev/null && echo 1 || echo "")
pinned_run() { # name port pid round: 1 row, concurrency 1, all on PIN_CPU
  local name=$1 port=$2 pid=$3 round=$4
  echo "== round $round: $name-1cpu, 1 row/request, concurrency 1, one vCPU"
  taskset -a -p -c "$PIN_CPU" "$pid" >/dev/null
  taskset -c "$PIN_CPU" "$LT" http --url "$(uri "$port")" \
    --body "$OUT/body-1.json" --rows 1 --concurrency 1 \
    --duration "$DURATION" --warmup "$WARMUP" --threads "$LOADGEN_THREADS" \
    --json "$OUT/$name-1cpu-b1-c1-r$round.json" || failed=1
  taskset -a -p -c "$ALL_CPUS" "$pid" >/dev/null
}

for round in $(seq 1 "$ROUNDS"); do
  for rows in 1 32; do
    for conc in 32 1; do
      http_run gateway "$GATEWAY_PORT" "$rows" "$conc" "$round"
      if [ "$rows" = 1 ]; then
        http_run gateway-pool "$POOL_PORT" "$rows" "$conc" "$round"
        http_run gateway-shadow "$SHADOW_PORT" "$rows" "$conc" "$round"
      fi
      inprocess_run "$rows" "$conc" "$round"
      http_run floor "$FLOOR_PORT" "$rows" "$conc" "$round"
    done
  done
  if [ -n "$can_pin" ]; then
    pinned_run gateway "$GATEWAY_PORT" "${pids[1]}" "$round"
    echo "== round $round: in-process-1cpu, 1 row/call, 1 thread, one vCPU"
    taskset -c "$PIN_CPU" "$LT" inprocess --model "$MODEL" --body "$OUT/body-1.json" --threads 1 \
      --duration "$DURATION" --warmup "$WARMUP" \
      --json "$OUT/inprocess-1cpu-b1-c1-r$round.json" || failed=1
    pinned_run floor "$FLOOR_PORT" "${pids[0]}" "$round"
  fi
done
[ -n "$can_pin" ] || echo "taskset not found: the one-vCPU latency runs were skipped" >&2

# CPU per request at concurrency 32, 1 row: what each server process spends
# (every thread, from /proc) per answered request over the measured window,
# beside the floor. Throughput on a shared VM moves with the host's phase;
# this cost moves far less, so it shows where the gateway stands between runs.
# "gateway-model" is the same gateway process asked for the repository model
# itself (/v2/models/breast_cancer/versions/1/infer): the serving core without
# what a deployment adds per request (routing, the durable prediction log,
# drift sampling).
"$LT" compare --path "floor=$(uri "$FLOOR_PORT")" --pid "floor=${pids[0]}" \
  --path "gateway=$(uri "$GATEWAY_PORT")" --pid "gateway=${pids[1]}" \
  --path "gateway-model=$(uri "$GATEWAY_PORT" /versions/1)" \
  --pid "gateway-model=${pids[1]}" \
  --path "gateway-pool=$(uri "$POOL_PORT")" --pid "gateway-pool=${pids[2]}" \
  --path "gateway-shadow=$(uri "$SHADOW_PORT")" --pid "gateway-shadow=${pids[3]}" \
  --body "$OUT/body-1.json" --rows 1 --concurrency 32 --rounds "$ROUNDS" \
  --duration "$DURATION" --warmup "$WARMUP" --threads "$LOADGEN_THREADS" \
  --json "$OUT/cpu.json" --markdown "$OUT/cpu.md" >"$OUT/cpu.log" || failed=1

# Whether the gateways kept up with their prediction logs (a full queue drops records).
if command -v curl >/dev/null; then
  for port in "$GATEWAY_PORT" "$POOL_PORT" "$SHADOW_PORT"; do
    curl -s "http://127.0.0.1:$port/metrics" >"$OUT/metrics-$port.txt" || true
    echo "gateway :$port $(grep -E '^contender_prediction_log_dropped_total' "$OUT/metrics-$port.txt" || echo 'prediction log: nothing dropped')"
  done
fi

{
  echo "Machine: $(nproc) cores ($(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2- | sed 's/^ //')), load generator on the same cores"
  echo "Commit: $(git rev-parse --short HEAD)$(git diff --quiet HEAD -- src Cargo.toml || echo ' (src modified)'); $ROUNDS rounds, each run $DURATION s measured after $WARMUP s warm-up; load generator threads: $LOADGEN_THREADS"
  echo "CPU idle just before the run: ${idle_before}%; load average at the end: $(cut -d' ' -f1-3 /proc/loadavg)"
  echo
  "$LT" table --dir "$OUT"
  echo
  echo "CPU per request, 1 row, concurrency 32 (\`contender-loadtest compare --pid\`; the floor is the baseline):"
  echo
  cat "$OUT/cpu.md"
} | tee "$OUT/table.md"
echo "results: $OUT"
if [ "$failed" -ne 0 ]; then
  echo "some runs had failed requests: see the errors above" >&2
  exit 1
fi
