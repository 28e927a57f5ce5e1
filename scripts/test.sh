#!/usr/bin/env bash
# Runs the whole test suite on a fresh Debian machine: installs what the tests need, checks
# docker-compose.yml, then `cargo test` over the workspace, then each fuzz target for a few
# seconds. Tests start their own private services (redis-server and an S3 server on free ports)
# and stop them; on the machine's PostgreSQL they create a database per test and drop it.
set -euo pipefail
cd "$(dirname "$0")/.."

need_apt=()
command -v sqlite3 >/dev/null 2>&1 || need_apt+=(sqlite3)
command -v mold >/dev/null 2>&1 || need_apt+=(mold)
command -v pdftotext >/dev/null 2>&1 || need_apt+=(poppler-utils)   # reading reports back
command -v redis-server >/dev/null 2>&1 || need_apt+=(redis-server) # private servers per test run
command -v openssl >/dev/null 2>&1 || need_apt+=(openssl)             # certificates for the TLS tests
command -v curl >/dev/null 2>&1 || need_apt+=(curl)                 # talking to Flower
command -v docker-compose >/dev/null 2>&1 || need_apt+=(docker-compose) # validating docker-compose.yml
command -v pg_isready >/dev/null 2>&1 || need_apt+=(postgresql)     # the PostgreSQL store's tests
command -v chromium >/dev/null 2>&1 || need_apt+=(chromium)         # the web app's browser tests
command -v python3 >/dev/null 2>&1 || need_apt+=(python3)           # Celery, Flower, moto, Playwright
python3 -c 'import ensurepip' >/dev/null 2>&1 || need_apt+=(python3-venv)  # their venv, with pip
command -v c++ >/dev/null 2>&1 || need_apt+=(g++)                   # the fuzz targets' libFuzzer
[ -f /usr/share/fonts/truetype/droid/DroidSansFallbackFull.ttf ] \
  || need_apt+=(fonts-droid-fallback)                              # reports in Chinese and Japanese
if [ ${#need_apt[@]} -gt 0 ] && command -v apt-get >/dev/null 2>&1; then
  echo "== installing: ${need_apt[*]}"
  (apt-get install -y --no-install-recommends "${need_apt[@]}" >/dev/null 2>&1 \
    || (apt-get update >/dev/null 2>&1 && apt-get install -y --no-install-recommends "${need_apt[@]}" >/dev/null)) \
    || echo "warning: could not install ${need_apt[*]} (continuing)"
fi

# PostgreSQL on 127.0.0.1:5432 with trust auth for `postgres` (tests create and drop their own
# databases; AFTERVIEW_TEST_POSTGRES names another server). Started here if it is not running.
pg="${AFTERVIEW_TEST_POSTGRES:-postgres://postgres@127.0.0.1:5432}"
if ! pg_isready -d "$pg/postgres" -q 2>/dev/null; then
  echo "== starting PostgreSQL"
  (service postgresql start >/dev/null 2>&1 || pg_ctlcluster --skip-systemctl-redirect "$(ls /etc/postgresql | sort -V | tail -n1)" main start) || true
  for _ in $(seq 1 30); do pg_isready -d "$pg/postgres" -q 2>/dev/null && break; sleep 1; done
fi
# Debian's own cluster asks for a password on 127.0.0.1 (scram-sha-256); on a test machine
# where this script may administer it, trust loopback connections instead.
if ! psql "$pg/postgres" -qtAc 'SELECT 1' >/dev/null 2>&1 && [ -z "${AFTERVIEW_TEST_POSTGRES:-}" ] \
  && [ "$(id -u)" = 0 ]; then
  hba="$(ls /etc/postgresql/*/main/pg_hba.conf 2>/dev/null | sort -V | tail -n1)"
  if [ -n "$hba" ] && ! grep -q "afterview tests" "$hba"; then
    echo "== PostgreSQL: trusting loopback connections for the tests ($hba)"
    { echo "host all all 127.0.0.1/32 trust # afterview tests"; echo "host all all ::1/128 trust # afterview tests"; cat "$hba"; } > "$hba.new"
    mv "$hba.new" "$hba"
    (service postgresql reload >/dev/null 2>&1 || pg_ctlcluster --skip-systemctl-redirect "$(ls /etc/postgresql | sort -V | tail -n1)" main reload) || true
    sleep 1
  fi
fi
psql "$pg/postgres" -qtAc 'SELECT 1' >/dev/null \
  || { echo "error: PostgreSQL at $pg does not accept the test user (trust auth on 127.0.0.1 needed)" >&2; exit 1; }

echo "== docker-compose.yml"
./scripts/check-compose.sh

# Pinned Python Celery, kombu, redis-py, Flower, Schemathesis and moto (the S3 server) for the
# interop, API-schema and S3 tests (reused when present).
echo "== python venv for Celery interop, Schemathesis and S3"
AFTERVIEW_PYENV="$(./scripts/python-env.sh | tail -n 1)"
export AFTERVIEW_PYENV

. ./.envrc.sh
echo "== cargo test (target dir: $CARGO_TARGET_DIR)"
cargo test --workspace --locked "$@"

# Every fuzz target for a few seconds (scripts/fuzz.sh N runs them longer by hand).
echo "== fuzz"
./scripts/fuzz.sh "${AFTERVIEW_FUZZ_SECONDS:-5}"
