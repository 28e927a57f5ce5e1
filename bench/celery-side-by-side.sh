#!/usr/bin/env bash
# Celery and Afterview, side by side, in one sitting, on the same Redis setup, with the Celery
# harness in ../shared/bench/celery (its README: "Comparing another implementation").
#
#   bench/celery-side-by-side.sh                   # reps 2 (about 40 min on 2 cores)
#   BENCH_ARGS="--reps 1 --only drain,latency" bench/celery-side-by-side.sh
#   RUNS="celery afterview+rs-producer" bench/celery-side-by-side.sh   # a subset of the runs
#
# Three runs of the harness, each on a fresh private redis-server (port $PORT, default 6393):
#   1. celery:               Python producer -> Celery worker (the baseline)
#   2. afterview:            Python producer -> `afterview worker` (TASKSET=afterview)
#   3. afterview+rs-producer: `afterview-bench celery-producer` -> `afterview worker`
# then bench/celery_compare.py prints the ratios. Worker {pool}/{conc} map to `-c {conc}`.
set -euo pipefail
cd "$(dirname "$0")/.."
ROOT="$PWD"
# Not CELERY_BENCH: Celery reads that variable itself and, set, swaps its worker's bookkeeping for
# a benchmark's (Celery 5.7's then fails every task callback).
HARNESS="${AFTERVIEW_CELERY_HARNESS:-$ROOT/../shared/bench/celery}"
unset CELERY_BENCH
OUT="${OUT:-/var/tmp/afterview-bench-celery}"
PORT="${PORT:-6393}"
ARGS="${BENCH_ARGS:---reps 2}"
# Which runs, in order (the first is the baseline of the ratios).
RUNS="${RUNS:-celery afterview afterview+rs-producer}"
export VENV="${VENV:-/var/tmp/afterview-celery-bench-venv}"   # the harness's pinned venv, kept out of ../shared
[ -x "$HARNESS/run.sh" ] || { echo "Celery harness not found at $HARNESS (set AFTERVIEW_CELERY_HARNESS)" >&2; exit 2; }

. ./.envrc.sh
cargo build --release -p afterview -p afterview-bench
BIN="$CARGO_TARGET_DIR/release"
mkdir -p "$OUT"
rm -rf "$OUT/data"

WORKER="sh -c 'exec $BIN/afterview --log warn --data-dir $OUT/data worker \
 --broker redis://127.0.0.1:{port}/0 --result-backend redis://127.0.0.1:{port}/1 \
 -Q celery -c {conc} -n {name}@%h --prefetch-multiplier 4 --ready-file \"\$READY_FILE\"'"

run() {  # label, extra env...
  local label="$1"; shift
  echo "== $label" >&2
  rm -rf "$OUT/$label"
  env OUT="$OUT/$label" BENCH_LABEL="$label" BENCH_ARGS="$ARGS" "$@" "$HARNESS/run.sh" "$PORT"
}

results=()
for label in $RUNS; do
  case "$label" in
    celery) run celery ;;
    afterview) run afterview WORKER_CMD="$WORKER" TASKSET=afterview ;;
    afterview+rs-producer) run afterview+rs-producer WORKER_CMD="$WORKER" TASKSET=afterview \
      PRODUCER_CMD="$BIN/afterview-bench celery-producer" ;;
    *) echo "unknown run '$label' in RUNS" >&2; exit 2 ;;
  esac
  results+=("$OUT/$label/results.json")
done

[ "${#results[@]}" -ge 2 ] && python3 bench/celery_compare.py "${results[@]}" | tee "$OUT/compare.md"
