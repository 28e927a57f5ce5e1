#!/usr/bin/env bash
# Every figure of issue 15 in one sitting, written into BENCHMARKS.md as a table against the
# goals and a PNG chart (bench/results/issue15.png). About 15 minutes on 2 cores.
#
#   bench/figures.sh                        # one repetition of the Celery side by side
#   REPS=2 FAULT_TASKS=2000 bench/figures.sh
#
# 0. bench/machine.py: the machine's Redis round trip and CPU per request (again after step 4,
#    to see whether the machine drifted during the sitting).
# 1. bench/celery-side-by-side.sh, drain and latency: Celery 5.7 (the baseline), our worker with
#    the same Python producer, our worker with our Rust producer; each on a fresh private Redis.
# 2. bench/latency_trace.py: where a Python `send_task().get()` spends its time, for both workers,
#    with the stock Celery client and with one that reads its pub/sub backlog (--client-drains).
# 3. afterview-bench redis-cost (Redis round trips and CPU per task), bench/lua_cost.py (the
#    instructions Redis executes in the worker's scripts per task, under callgrind, with 16 and with
#    128 messages in flight, and one at a time), engine (the embedded SQLite
#    drain, NORMAL and FULL, against the in-memory backend), ws-fanout (10,000 followers).
# 4. The fault test with FAULT_TASKS tasks (SIGKILLs, a Redis AOF restart, a rolling SIGTERM).
# 5. bench/figures.py: the table and the chart.
# Each benchmark appends its figures as JSON lines to $OUT/figures.jsonl (BENCH_JSON).
set -euo pipefail
cd "$(dirname "$0")/.."
OUT="${OUT:-/var/tmp/afterview-figures}"
REPS="${REPS:-1}"
FAULT_TASKS="${FAULT_TASKS:-10000}"
rm -rf "$OUT"
mkdir -p "$OUT"
export BENCH_JSON="$OUT/figures.jsonl"

. ./.envrc.sh
PYENV="$(./scripts/python-env.sh | tail -n 1)"
export AFTERVIEW_PYENV="$PYENV"
FIGENV="${FIGENV:-/var/tmp/afterview-figures-venv}"
if [ ! -x "$FIGENV/bin/python" ] || ! "$FIGENV/bin/python" -c 'import matplotlib' 2>/dev/null; then
  python3 -m venv "$FIGENV"
  "$FIGENV/bin/pip" install -q matplotlib==3.10.8
fi

echo "== 0/5 the machine (redis-benchmark on a private Redis)" >&2
python3 bench/machine.py

echo "== 1/5 Celery side by side (drain, latency; reps $REPS)" >&2
OUT="$OUT/harness" BENCH_ARGS="--reps $REPS --only drain,latency" bench/celery-side-by-side.sh

BIN="$CARGO_TARGET_DIR/release"
echo "== 2/5 latency trace" >&2
"$PYENV/bin/python" bench/latency_trace.py celery --port 6394
"$PYENV/bin/python" bench/latency_trace.py afterview --port 6395 --bin "$BIN/afterview"
"$PYENV/bin/python" bench/latency_trace.py celery --port 6394 --client-drains
"$PYENV/bin/python" bench/latency_trace.py afterview --port 6395 --bin "$BIN/afterview" --client-drains

echo "== 3/5 redis-cost, embedded engine, WebSocket fan-out" >&2
"$BIN/afterview-bench" redis-cost --n 20000 --concurrency 32
"$PYENV/bin/python" bench/lua_cost.py
"$PYENV/bin/python" bench/lua_cost.py --batch 128 --n 1280
"$PYENV/bin/python" bench/lua_cost.py --one-by-one
"$BIN/afterview-bench" engine --n 20000 --concurrency 32
"$BIN/afterview-bench" ws-fanout --clients 10000 --every-ms 500 --seconds 10

echo "== 4/5 faults under load ($FAULT_TASKS tasks)" >&2
AFTERVIEW_FAULT_TASKS="$FAULT_TASKS" cargo test --locked -p afterview --test it faults -- --nocapture

python3 bench/machine.py

echo "== 5/5 table and chart" >&2
"$FIGENV/bin/python" bench/figures.py --harness "$OUT/harness" --json "$BENCH_JSON" \
  --benchmarks BENCHMARKS.md --png bench/results/issue15.png
