#!/usr/bin/env bash
# Runs every cargo-fuzz target for a few seconds each (default 5; CI), or as long as you like:
#   scripts/fuzz.sh               # 5 s per target; new inputs go to a temporary directory
#   scripts/fuzz.sh 600 --grow    # 10 min per target, by hand, growing fuzz/corpus
# Targets (fuzz/fuzz_targets): envelope (task messages from the broker), control (pidbox
# commands), intake (uploaded files), requests (task-creating JSON bodies). The corpora in
# fuzz/corpus grow as they run; crashes land in fuzz/artifacts and fail the run.
# cargo-fuzz needs nightly-only flags: RUSTC_BOOTSTRAP=1 lets the stable toolchain accept them.
set -euo pipefail
cd "$(dirname "$0")/.."
SECS="${1:-5}"
GROW="${2:-}"
command -v cargo-fuzz >/dev/null 2>&1 || cargo install cargo-fuzz --locked --version 0.13.2
export RUSTC_BOOTSTRAP=1
TARGET_DIR="${AFTERVIEW_FUZZ_TARGET:-/var/tmp/afterview-fuzz-target}"
cd fuzz
cargo fuzz build -O --target-dir "$TARGET_DIR"
for t in envelope control intake requests; do
  echo "== fuzz $t (${SECS}s)"
  # libFuzzer writes new inputs to the first corpus directory: a scratch one unless --grow.
  if [ "$GROW" = "--grow" ]; then corpus=(corpus/"$t"); else corpus=("$(mktemp -d)" corpus/"$t"); fi
  cargo fuzz run "$t" -O --target-dir "$TARGET_DIR" "${corpus[@]}" -- \
    -max_total_time="$SECS" -rss_limit_mb=1024 -print_final_stats=0 2>&1 | grep -E "Done|ERROR|SUMMARY" || true
  if [ -n "$(ls -A "artifacts/$t" 2>/dev/null)" ]; then
    echo "fuzz: $t found a crash: $(ls "artifacts/$t")" >&2
    exit 1
  fi
done
