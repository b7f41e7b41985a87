#!/usr/bin/env bash
# Interleaved A/B of two contender binaries (e.g. the release build of two
# commits): both serve loadtest/benchmark.toml (champion only) and
# loadtest/benchmark-shadow.toml (one shadow), and `contender-loadtest
# compare --pid` measures throughput, latency and server CPU per request at
# concurrency 32, the first binary's deployment path as the baseline.
#
#   loadtest/compare-binaries.sh OLD_BINARY NEW_BINARY
#   ROUNDS=6 DURATION=3 loadtest/compare-binaries.sh /tmp/contender-old target/release/contender
#
# Build each binary with `cargo build --release -p contender` at its commit
# and copy it aside. The load generator is this checkout's.
set -euo pipefail
cd "$(dirname "$0")/.."
if [ $# -ne 2 ]; then
  echo "usage: $0 OLD_BINARY NEW_BINARY" >&2
  exit 2
fi
OLD=$(realpath "$1")
NEW=$(realpath "$2")
ROUNDS=${ROUNDS:-6}
DURATION=${DURATION:-3}
WARMUP=${WARMUP:-1}
PORT=${PORT:-18091} # uses PORT .. PORT+3
OUT=${OUT:-target/loadtest/ab-$(date +%Y%m%d-%H%M%S)}

cargo build --release -p contender-loadtest
mkdir -p "$OUT"
OUT=$(cd "$OUT" && pwd)
LT=target/release/contender-loadtest

pids=()
cleanup() {
  for pid in "${pids[@]}"; do kill "$pid" 2>/dev/null || true; done
  for pid in "${pids[@]}"; do wait "$pid" 2>/dev/null || true; done
  # The prediction logs hold one row per request: drop them.
  rm -rf "$OUT"/*-data
}
trap cleanup EXIT
trap 'exit 130' INT TERM

"$LT" body --holdout models/_data/breast_cancer_holdout.json --rows 1 --out "$OUT/body-1.json"
start() { # name port binary config
  CONTENDER_STORE__DATA_DIR="$OUT/$1-data" "$3" serve --config "$4" \
    --http-addr "127.0.0.1:$2" >"$OUT/$1.log" 2>&1 &
  pids+=("$!")
}
start old "$PORT" "$OLD" loadtest/benchmark.toml
start new $((PORT + 1)) "$NEW" loadtest/benchmark.toml
start old-shadow $((PORT + 2)) "$OLD" loadtest/benchmark-shadow.toml
start new-shadow $((PORT + 3)) "$NEW" loadtest/benchmark-shadow.toml
for port in "$PORT" $((PORT + 1)) $((PORT + 2)) $((PORT + 3)); do
  "$LT" wait --url "http://127.0.0.1:$port/v2/health/ready" --timeout 120
done
uri() { echo "http://127.0.0.1:$1/v2/models/breast_cancer/infer"; }
"$LT" compare \
  --path "old=$(uri "$PORT")" --pid "old=${pids[0]}" \
  --path "new=$(uri $((PORT + 1)))" --pid "new=${pids[1]}" \
  --path "old-shadow=$(uri $((PORT + 2)))" --pid "old-shadow=${pids[2]}" \
  --path "new-shadow=$(uri $((PORT + 3)))" --pid "new-shadow=${pids[3]}" \
  --body "$OUT/body-1.json" --rows 1 --concurrency 32 --rounds "$ROUNDS" \
  --duration "$DURATION" --warmup "$WARMUP" \
  --json "$OUT/cpu.json" --markdown "$OUT/cpu.md" >"$OUT/cpu.log"
cat "$OUT/cpu.md"
echo "results: $OUT"
