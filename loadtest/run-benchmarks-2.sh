#!/usr/bin/env bash
# The benchmarks of issues 3–6, each section measured side by side in one
# run, then printed as markdown (BENCHMARKS.md):
#
#   torchscript  TorchScript v4 vs ONNX v1, gateway vs in-process (issue 3)
#   challengers  champion latency with 0 vs 3 shadow challengers, open loop
#                at half of the measured capacity (issue 4)
#   feedback     label ingestion, single and batched posts, durable (issue 4)
#   swap         latency and failures around promote/rollback under load (issue 5)
#   drift        throughput with drift monitoring on vs off (issue 6)
#
#   loadtest/run-benchmarks-2.sh                    # every section, about 9 minutes
#   loadtest/run-benchmarks-2.sh swap drift         # only these sections
#   ROUNDS=5 DURATION=5 loadtest/run-benchmarks-2.sh drift
#   KEEP_DATA=1 ...   # keep the gateways' data directories (OUT/data-*) and OUT/bin
#
# Each section starts its own gateways (config files and fresh data
# directories under OUT, listening on 127.0.0.1 only) and stops them when it
# is done, so no section loads the machine of another. The load generator
# runs on the same cores as the gateways it measures: on a small machine they
# compete for CPU. Built with the `torchscript` feature (libtorch from
# scripts/setup-libtorch.sh); the binaries are copied to OUT/bin so that a
# concurrent build cannot swap them mid-run.
set -euo pipefail
cd "$(dirname "$0")/.."
ROOT=$(pwd)

ALL_SECTIONS=(torchscript challengers feedback swap drift)
if [ "$#" -gt 0 ]; then SECTIONS=("$@"); else SECTIONS=("${ALL_SECTIONS[@]}"); fi
for s in "${SECTIONS[@]}"; do
  case " ${ALL_SECTIONS[*]} " in
    *" $s "*) ;;
    *) echo "unknown section '$s' (sections: ${ALL_SECTIONS[*]})" >&2; exit 2 ;;
  esac
done

ROUNDS=${ROUNDS:-5}                    # interleaved repetitions (challengers, drift)
TS_ROUNDS=${TS_ROUNDS:-2}              # rounds of the torchscript section (16 runs each)
DURATION=${DURATION:-3}                # measured seconds per run
WARMUP=${WARMUP:-1}                    # unmeasured seconds before each run
LOAD=${LOAD:-0.5}                      # open-loop share of capacity (challengers, swap)
SWAP_DURATION=${SWAP_DURATION:-20}     # measured seconds of the swap run
SWAP_EVERY=${SWAP_EVERY:-2}            # seconds between swaps
SWAP_WINDOW_MS=${SWAP_WINDOW_MS:-250}  # swap window: the admin call ± this
FEEDBACK_LABELS=${FEEDBACK_LABELS:-800000}  # (id, row) pairs prepared for feedback
LOADGEN_THREADS=${LOADGEN_THREADS:-1}  # load generator tokio workers
PORT_A=${PORT_A:-18180}
PORT_B=${PORT_B:-18181}
OUT=${OUT:-target/loadtest/2-$(date +%Y%m%d-%H%M%S)}
HOLDOUT=models/_data/breast_cancer_holdout.json

cargo build --release --features torchscript -p contender -p contender-loadtest
mkdir -p "$OUT/bin"
OUT=$(cd "$OUT" && pwd)
cp target/release/contender target/release/contender-loadtest "$OUT/bin/"
GW=$OUT/bin/contender
LT=$OUT/bin/contender-loadtest

pids=()
stop_servers() {
  for pid in "${pids[@]}"; do
    kill "$pid" 2>/dev/null || true
  done
  for pid in "${pids[@]}"; do
    wait "$pid" 2>/dev/null || true
  done
  pids=()
}
watcher=""
cleanup() {
  if [ -n "$watcher" ]; then kill "$watcher" 2>/dev/null || true; fi
  stop_servers
  # The prediction logs hold a row per request and model (hundreds of MB),
  # and the copied binaries take 260 MB.
  if [ -z "${KEEP_DATA:-}" ]; then
    rm -rf "$OUT"/data-* "$OUT/bin"
  fi
}
trap cleanup EXIT
trap 'exit 130' INT TERM

listening() { (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null; }
for port in "$PORT_A" "$PORT_B"; do
  if listening "$port"; then
    echo "port $port is already in use: stop what listens there or set PORT_A/PORT_B" >&2
    exit 1
  fi
done

"$LT" body --holdout "$HOLDOUT" --rows 1 --out "$OUT/body-1.json"
"$LT" body --holdout "$HOLDOUT" --rows 32 --out "$OUT/body-32.json"

# gateway_config NAME PORT PRELOAD [TOML...]: OUT/NAME.toml, a deployment
# `breast_cancer` with champion breast_cancer v1, the extra TOML appended, and
# a fresh data directory OUT/data-NAME.
gateway_config() {
  local name=$1 port=$2 preload=$3
  shift 3
  rm -rf "$OUT/data-$name"
  {
    cat <<EOF
[server]
http_addr = "127.0.0.1:$port"

[repository]
path = "$ROOT/models"
preload = "$preload"

[store]
data_dir = "$OUT/data-$name"

[deployments.breast_cancer.champion]
model = "breast_cancer"
version = 1
EOF
    for extra in "$@"; do printf '\n%s\n' "$extra"; done
  } >"$OUT/$name.toml"
}

# start_gateway NAME PORT: serves OUT/NAME.toml, waits until ready.
start_gateway() {
  local name=$1 port=$2
  "$GW" serve --config "$OUT/$name.toml" >"$OUT/$name.log" 2>&1 &
  pids+=("$!")
  "$LT" wait --url "http://127.0.0.1:$port/v2/health/ready" --timeout 120
}

shadow() { # model version: a shadow challenger of breast_cancer
  printf '[[deployments.breast_cancer.challengers]]\nmodel = "%s"\nversion = %s\nmode = "shadow"\n' "$1" "$2"
}
drift() { # enabled
  printf '[deployments.breast_cancer.drift]\nenabled = %s\nsample_rate = 1.0\n' "$1"
}
infer_url() { echo "http://127.0.0.1:$1/v2/models/breast_cancer/infer"; }
admin_url() { echo "http://127.0.0.1:$1/admin/deployments/breast_cancer"; }

failed=0
reproduce() { # section VAR...: the command that reruns it, with its settings
  local section=$1 vars="" v
  shift
  for v in "$@" LOADGEN_THREADS; do vars+="$v=${!v} "; done
  echo "Reproduce: \`${vars}loadtest/run-benchmarks-2.sh $section\`"
}

section_torchscript() {
  local dir=$OUT/torchscript
  mkdir -p "$dir"
  gateway_config torchscript "$PORT_A" all
  start_gateway torchscript "$PORT_A"
  local base="http://127.0.0.1:$PORT_A/v2/models/breast_cancer/versions"
  http_run() { # name version rows concurrency round
    echo "== round $5: $1 (v$2), $3 row(s)/request, concurrency $4"
    "$LT" http --url "$base/$2/infer" --body "$OUT/body-$3.json" --rows "$3" \
      --concurrency "$4" --duration "$DURATION" --warmup "$WARMUP" --threads "$LOADGEN_THREADS" \
      --json "$dir/$1-b$3-c$4-r$5.json" || failed=1
  }
  inprocess_run() { # name model rows threads round
    echo "== round $5: $1 ($2), $3 row(s)/call, $4 thread(s)"
    "$LT" inprocess --model "$2" --body "$OUT/body-$3.json" --threads "$4" \
      --duration "$DURATION" --warmup "$WARMUP" --json "$dir/$1-b$3-c$4-r$5.json" || failed=1
  }
  for round in $(seq 1 "$TS_ROUNDS"); do
    for rows in 1 32; do
      for conc in 32 1; do
        http_run gateway 1 "$rows" "$conc" "$round"
        http_run gateway-ts 4 "$rows" "$conc" "$round"
        inprocess_run inprocess models/breast_cancer/1/model.onnx "$rows" "$conc" "$round"
        inprocess_run inprocess-ts models/breast_cancer/4/model.pt "$rows" "$conc" "$round"
      done
    done
  done
  stop_servers
  {
    echo "### TorchScript next to ONNX (issue 3)"
    echo
    echo "breast_cancer v1 (ONNX logistic regression) and v4 (TorchScript MLP) on one gateway, each through \`POST /v2/models/breast_cancer/versions/{1,4}/infer\` (the model directly: no deployment, prediction log or drift sampling), and in-process (the engine called from OS threads, one instance per thread, no HTTP). Closed loop; $TS_ROUNDS interleaved rounds, each run $DURATION s after $WARMUP s warm-up; medians over rounds (range)."
    echo
    "$LT" table --dir "$dir"
    echo
    reproduce torchscript TS_ROUNDS DURATION WARMUP
  } >"$OUT/torchscript.md"
}

section_challengers() {
  gateway_config plain "$PORT_A" deployed
  gateway_config shadows "$PORT_B" deployed \
    "$(shadow breast_cancer 2)" "$(shadow breast_cancer 3)" "$(shadow breast_cancer 4)"
  start_gateway plain "$PORT_A"
  local pid_a=${pids[${#pids[@]}-1]}
  start_gateway shadows "$PORT_B"
  local pid_b=${pids[${#pids[@]}-1]}
  local plain="no challengers" shadows="3 shadows (v2, v3, v4)"
  # Reference: the champion-only gateway with one idle-priority busy thread
  # per CPU beside it (in the load generator): what idle-priority work costs
  # the request path on this machine, whoever does it.
  local cpus idle
  cpus=$(nproc)
  idle="no challengers + $cpus idle-priority busy threads"
  # As the issue asks: half of the champion-only capacity; then, for
  # context, half of the capacity with the shadows.
  local of title
  : >"$OUT/challengers.md"
  for of in "$plain" "$shadows"; do
    if [ "$of" = "$plain" ]; then
      title="### Champion latency with 0 and 3 shadow challengers (issue 4)"
    else
      title="#### The same at half of the capacity with the shadows"
    fi
    "$LT" compare \
      --path "$plain=$(infer_url "$PORT_A")" --path "$shadows=$(infer_url "$PORT_B")" \
      --path "$idle=$(infer_url "$PORT_A")" --idle-load "$idle=$cpus" \
      --admin "$plain=$(admin_url "$PORT_A")" --admin "$shadows=$(admin_url "$PORT_B")" \
      --pid "$plain=$pid_a" --pid "$shadows=$pid_b" --pid "$idle=$pid_a" \
      --holdout "$HOLDOUT" --load "$LOAD" --capacity-of "$of" --capacity-concurrency 32 \
      --max-in-flight 1024 --rounds "$ROUNDS" --duration "$DURATION" --warmup "$WARMUP" \
      --threads "$LOADGEN_THREADS" --max-p99-ratio 1.15 --title "$title" \
      --json "$OUT/challengers-$([ "$of" = "$plain" ] && echo plain || echo shadows).json" \
      --markdown "$OUT/challengers-part.md" || failed=1
    { cat "$OUT/challengers-part.md"; echo; } >>"$OUT/challengers.md"
  done
  stop_servers
  {
    echo "Deployment: champion breast_cancer v1 (ONNX logistic regression); the shadows are v2 (ONNX gradient-boosted trees), v3 (ONNX logistic regression) and v4 (TorchScript MLP), each mirrored every request (fraction 1.0) onto its own single worker with a 64-deep queue (the defaults). Drift monitoring and the prediction log are on (defaults) in both gateways. The reference path loads the champion-only gateway while $cpus threads spin at idle priority (\`SCHED_IDLE\`) in the load generator, doing nothing else: how much of the shadows' cost is the machine's, for any idle-priority work. Server CPU per request is every thread of the gateway process (\`/proc\`), shadows' workers included."
    reproduce challengers ROUNDS DURATION WARMUP LOAD
  } >>"$OUT/challengers.md"
}

section_feedback() {
  gateway_config feedback "$PORT_A" deployed
  start_gateway feedback "$PORT_A"
  "$LT" feedback --infer-url "$(infer_url "$PORT_A")" \
    --feedback-url "http://127.0.0.1:$PORT_A/v2/models/breast_cancer/feedback" \
    --admin "$(admin_url "$PORT_A")" --holdout "$HOLDOUT" \
    --labels "$FEEDBACK_LABELS" --prepare-rows 20 --prepare-concurrency 8 \
    --batch 1 --batch 100 --batch 1000 --concurrency 32 --batch-concurrency 4 \
    --duration "$DURATION" --warmup 0.5 --threads "$LOADGEN_THREADS" \
    --title "### Feedback ingestion, durable (issue 4)" \
    --json "$OUT/feedback.json" --markdown "$OUT/feedback.md" || failed=1
  stop_servers
  {
    echo
    echo "Deployment: champion breast_cancer v1, no challengers; data directory on $(df -T "$OUT" | awk 'NR==2 {print $2}') ($(df "$OUT" | awk 'NR==2 {print $1}'))."
    reproduce feedback FEEDBACK_LABELS DURATION
  } >>"$OUT/feedback.md"
}

section_swap() {
  gateway_config swap "$PORT_A" deployed "$(shadow breast_cancer 2)"
  start_gateway swap "$PORT_A"
  "$LT" swap --url "$(infer_url "$PORT_A")" --admin "$(admin_url "$PORT_A")" \
    --promote breast_cancer@2 --holdout "$HOLDOUT" --rows 1 \
    --load "$LOAD" --capacity-concurrency 32 --capacity-duration "$DURATION" \
    --every "$SWAP_EVERY" --window-ms "$SWAP_WINDOW_MS" \
    --duration "$SWAP_DURATION" --warmup 2 --threads "$LOADGEN_THREADS" \
    --title "### Latency during a swap under load (issue 5)" \
    --json "$OUT/swap.json" --markdown "$OUT/swap.md" || failed=1
  stop_servers
  {
    echo
    echo "Deployment: champion breast_cancer v1 with v2 as a shadow challenger (promotion mode manual); a promotion makes v2 the champion and v1 its shadow, a rollback the reverse. 1-row requests rotating through the held-out rows."
    reproduce swap LOAD DURATION SWAP_DURATION SWAP_EVERY SWAP_WINDOW_MS
  } >>"$OUT/swap.md"
}

section_drift() {
  gateway_config drift-off "$PORT_A" deployed "$(drift false)"
  gateway_config drift-on "$PORT_B" deployed "$(drift true)"
  start_gateway drift-off "$PORT_A"
  start_gateway drift-on "$PORT_B"
  "$LT" compare \
    --path "drift off=$(infer_url "$PORT_A")" \
    --path "drift on (sample_rate 1.0)=$(infer_url "$PORT_B")" \
    --holdout "$HOLDOUT" --concurrency 32 \
    --rounds "$ROUNDS" --duration "$DURATION" --warmup "$WARMUP" --threads "$LOADGEN_THREADS" \
    --min-throughput-ratio 0.95 \
    --title "### Inference throughput with drift monitoring on and off (issue 6)" \
    --json "$OUT/drift.json" --markdown "$OUT/drift.md" || failed=1
  stop_servers
  {
    echo
    echo "Deployment: champion breast_cancer v1 alone; drift window 500 rows, scored every 50 new rows at most 4 times a second (defaults); prediction log on in both."
    reproduce drift ROUNDS DURATION WARMUP
  } >>"$OUT/drift.md"
}

# Other gateways, load generators, builds or tests on the machine skew every
# number. Before a section: wait (bounded) until none runs. During it: look
# once a second; a section during which other work ran is repeated (up to
# RETRIES times), and if it never ran alone its markdown says so.
QUIET_WAIT=${QUIET_WAIT:-600}  # most seconds to wait for a quiet machine
RETRIES=${RETRIES:-2}          # repetitions of a section disturbed by other work
others() { pgrep -fa 'release/contender|bin/contender|cargo |rustc ' | grep -v "$OUT/bin/" || true; }
wait_quiet() {
  local waited=0
  while [ -n "$(others)" ] && [ "$waited" -lt "$QUIET_WAIT" ]; do
    if [ "$waited" = 0 ]; then
      echo "waiting for other work to finish:"
      others | cut -c1-120
    fi
    sleep 5
    waited=$((waited + 5))
  done
}
watch_others() { # FILE: appends what else runs, once a second
  while :; do
    others | cut -c1-160 | sed "s/^/$(date +%s) /" >>"$1"
    sleep 1
  done
}
run_section() {
  local s=$1 try failed_before=$failed
  for try in $(seq 0 "$RETRIES"); do
    [ "$try" -gt 0 ] && echo "======== $s again (try $((try + 1)))"
    failed=$failed_before
    wait_quiet
    : >"$OUT/$s.busy"
    watch_others "$OUT/$s.busy" &
    watcher=$!
    "section_$s"
    kill "$watcher" 2>/dev/null || true
    wait "$watcher" 2>/dev/null || true
    watcher=""
    if [ ! -s "$OUT/$s.busy" ]; then
      return
    fi
    echo "other work ran during section $s:"
    awk '{ $1 = $2 = ""; print }' "$OUT/$s.busy" | cut -c1-100 | sort | uniq -c | sort -rn | head -5
  done
  printf '\n**Caution:** other work (builds, tests or benchmarks of other sessions) ran on the machine during %s s of this section (of %s tries): its numbers are skewed.\n' \
    "$(awk '{ print $1 }' "$OUT/$s.busy" | sort -u | wc -l)" "$((RETRIES + 1))" >>"$OUT/$s.md"
}
for s in "${SECTIONS[@]}"; do
  echo "======== $s"
  run_section "$s"
done

{
  echo "Machine: $(nproc) cores ($(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2- | sed 's/^ //')), load generator on the same cores"
  echo "Commit: $(git rev-parse --short HEAD)$(git diff --quiet HEAD -- src Cargo.toml || echo ' (src modified)'); release build with --features torchscript; load generator threads: $LOADGEN_THREADS"
  for s in "${SECTIONS[@]}"; do
    echo
    cat "$OUT/$s.md"
  done
} | tee "$OUT/report.md"
echo "results: $OUT"
if [ "$failed" -ne 0 ]; then
  echo "some runs had failed requests or missed labels: see the errors above" >&2
  exit 1
fi
