#!/usr/bin/env bash
# Create .venv (once) and install telephony-edge into it from the lock file, so a
# fresh machine gets exactly what CI tested; "test" also installs the test tools.
# Refresh the locks with scripts/lock.sh.
set -euo pipefail
cd "$(dirname "$0")/.."
PYTHON=${PYTHON:-python3}
if [ ! -x .venv/bin/python ]; then
  "$PYTHON" -m venv .venv
fi
lock=requirements.lock
[ "${1:-}" = "test" ] && lock=requirements-test.lock
.venv/bin/python -m pip install --quiet --require-hashes -r "$lock"
.venv/bin/python -m pip install --quiet --no-deps -e .
