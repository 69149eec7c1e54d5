#!/usr/bin/env bash
# Refresh the lock files from pyproject.toml's ranges (a decision: run
# scripts/check-latest.sh first to see what the newest releases break).
#   requirements.lock       what `serve` needs (scripts/run.sh, the Dockerfile)
#   requirements-test.lock  that plus the test and bench tools (scripts/test.sh, CI)
# Both are universal (every platform and Python >= 3.11) and carry hashes, made by uv.
# As it is, a pin moves only when pyproject's ranges exclude it;
#   bash scripts/lock.sh --upgrade                  takes the newest release of everything,
#   bash scripts/lock.sh --upgrade-package redis    of one package.
set -euo pipefail
cd "$(dirname "$0")/.."
command -v uv >/dev/null || python3 -m pip install --quiet uv
compile() {
  uv pip compile pyproject.toml --universal --python-version 3.11 --generate-hashes \
    --quiet --custom-compile-command "bash scripts/lock.sh" "$@"
}
compile "$@" -o requirements.lock
compile "$@" --extra test --extra bench -o requirements-test.lock
