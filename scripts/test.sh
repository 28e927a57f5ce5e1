#!/usr/bin/env bash
# Runs the whole test suite on a fresh Debian machine: installs what the tests need, then
# `cargo test` over the workspace, then each fuzz target for a few seconds. Tests start their own private services (redis-server on a
# free port, ...) and stop them; nothing shared is touched.
set -euo pipefail
cd "$(dirname "$0")/.."

need_apt=()
command -v sqlite3 >/dev/null 2>&1 || need_apt+=(sqlite3)
command -v mold >/dev/null 2>&1 || need_apt+=(mold)
command -v pdftotext >/dev/null 2>&1 || need_apt+=(poppler-utils)   # reading reports back
command -v redis-server >/dev/null 2>&1 || need_apt+=(redis-server) # private servers per test run
command -v curl >/dev/null 2>&1 || need_apt+=(curl)                 # talking to Flower
if [ ${#need_apt[@]} -gt 0 ] && command -v apt-get >/dev/null 2>&1; then
  echo "== installing: ${need_apt[*]}"
  (apt-get install -y --no-install-recommends "${need_apt[@]}" >/dev/null 2>&1 \
    || (apt-get update >/dev/null 2>&1 && apt-get install -y --no-install-recommends "${need_apt[@]}" >/dev/null)) \
    || echo "warning: could not install ${need_apt[*]} (continuing)"
fi

# Pinned Python Celery, kombu, redis-py and Flower for the interop tests (reused when present).
echo "== python venv for Celery interop"
AFTERVIEW_PYENV="$(./scripts/python-env.sh | tail -n 1)"
export AFTERVIEW_PYENV

. ./.envrc.sh
echo "== cargo test (target dir: $CARGO_TARGET_DIR)"
cargo test --workspace --locked "$@"

# Every fuzz target for a few seconds (scripts/fuzz.sh N runs them longer by hand).
echo "== fuzz"
./scripts/fuzz.sh "${AFTERVIEW_FUZZ_SECONDS:-5}"
