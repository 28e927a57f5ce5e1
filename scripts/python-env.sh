#!/usr/bin/env bash
# Prepares (idempotently) a Python virtualenv holding the pinned Python tools the tests use:
# Celery + kombu (the reference client/worker), the redis client, Flower (the monitoring
# UI/API), Schemathesis (property-based checks of the API against its OpenAPI document) and
# moto's server (a real S3 wire-protocol endpoint for the S3 blob-store and deployment tests) and
# Playwright (drives Debian's chromium through the web app; its own browsers are not downloaded).
#
#   VENV=$(scripts/python-env.sh)          # prints the venv's absolute path as the LAST stdout line
#   "$VENV/bin/celery" --version
#
# Location: ${AFTERVIEW_PYENV:-/var/tmp/afterview-pyenv}; it persists across runs and is reused
# as-is when it already has the pinned versions (that check takes well under a second).
# Interpreter used to create it: ${AFTERVIEW_PYTHON:-python3} (3.8+; Celery 5.7 needs >= 3.9).
# All progress/diagnostics go to stderr; stdout carries only the path. Exits non-zero with a
# message on stderr if the venv cannot be created or the packages cannot be installed.
#
# Pins (all exact versions were checked to exist on PyPI with `pip index versions`):
#   celery[redis]==5.7.0  kombu==5.7.0  redis==8.1.0  flower==2.2.0  schemathesis==4.32.5
#   moto[server]==5.1.17  playwright==1.65.2
set -euo pipefail

exec 3>&1 1>&2   # keep stdout clean: everything goes to stderr, the path goes to fd 3 at the end

CELERY_VERSION=5.7.0
KOMBU_VERSION=5.7.0
REDIS_PY_VERSION=8.1.0
FLOWER_VERSION=2.2.0
SCHEMATHESIS_VERSION=4.32.5
MOTO_VERSION=5.1.17
PLAYWRIGHT_VERSION=1.65.2

VENV="${AFTERVIEW_PYENV:-/var/tmp/afterview-pyenv}"
PYTHON="${AFTERVIEW_PYTHON:-python3}"

die() { echo "python-env.sh: error: $*" >&2; exit 1; }

mkdir -p "$(dirname "$VENV")" || die "cannot create parent directory of $VENV"
VENV="$(cd "$(dirname "$VENV")" && pwd -P)/$(basename "$VENV")"   # absolute

# Exit status 0 iff the venv imports everything and has exactly the pinned versions.
venv_ok() {
  [ -x "$VENV/bin/python" ] || return 1
  "$VENV/bin/python" - "$CELERY_VERSION" "$KOMBU_VERSION" "$REDIS_PY_VERSION" "$FLOWER_VERSION" \
    "$SCHEMATHESIS_VERSION" "$MOTO_VERSION" "$PLAYWRIGHT_VERSION" >/dev/null 2>&1 <<'PY'
import sys
import celery, flower, kombu, redis, schemathesis, moto.server, playwright.sync_api  # noqa: F401
from importlib.metadata import version
want = dict(zip(("celery", "kombu", "redis", "flower", "schemathesis", "moto", "playwright"), sys.argv[1:]))
bad = {k: version(k) for k, v in want.items() if version(k) != v}
sys.exit(1 if bad else 0)
PY
}

if venv_ok; then
  echo "python-env: reusing $VENV" >&2
  echo "$VENV" >&3
  exit 0
fi

# Serialize concurrent first runs (two test processes preparing the same venv at once).
if command -v flock >/dev/null 2>&1; then
  exec 9>"$VENV.lock"
  flock -w 600 9 || die "timed out waiting for lock $VENV.lock"
  if venv_ok; then   # another run finished it while we waited
    echo "python-env: reusing $VENV" >&2
    echo "$VENV" >&3
    exit 0
  fi
fi

command -v "$PYTHON" >/dev/null 2>&1 || die "'$PYTHON' not found (set AFTERVIEW_PYTHON to a Python >= 3.9)"

# (Re)create the venv if it is missing or its interpreter (or its pip) no longer runs (e.g. the base Python
# it was made from was removed/upgraded). An existing working venv is upgraded in place.
# A venv made without pip (Debian's python3 without python3-venv stops half-way) is made anew too.
if ! { [ -x "$VENV/bin/python" ] && "$VENV/bin/python" -m pip --version >/dev/null 2>&1; }; then
  echo "python-env: creating venv at $VENV with $("$PYTHON" --version 2>&1)" >&2
  rm -rf "$VENV"
  "$PYTHON" -m venv "$VENV" || die "'$PYTHON -m venv $VENV' failed (Debian: apt-get install python3-venv)"
fi

echo "python-env: installing celery[redis]==$CELERY_VERSION kombu==$KOMBU_VERSION" \
     "redis==$REDIS_PY_VERSION flower==$FLOWER_VERSION schemathesis==$SCHEMATHESIS_VERSION" \
     "moto[server]==$MOTO_VERSION playwright==$PLAYWRIGHT_VERSION" >&2
if ! "$VENV/bin/python" -m pip install --disable-pip-version-check -q \
      "celery[redis]==$CELERY_VERSION" \
      "kombu==$KOMBU_VERSION" \
      "redis==$REDIS_PY_VERSION" \
      "flower==$FLOWER_VERSION" \
      "schemathesis==$SCHEMATHESIS_VERSION" \
      "moto[server]==$MOTO_VERSION" \
      "playwright==$PLAYWRIGHT_VERSION"; then
  die "pip install into $VENV failed (network/PyPI unreachable or conflicting pins?); see pip output above"
fi

if ! venv_ok; then
  "$VENV/bin/python" -m pip list --disable-pip-version-check 2>/dev/null \
    | grep -Ei '^(celery|kombu|redis|flower|schemathesis|moto|playwright) ' >&2 || true
  die "venv $VENV still lacks the pinned versions after install"
fi

echo "python-env: ready: $VENV" >&2
echo "$VENV" >&3
