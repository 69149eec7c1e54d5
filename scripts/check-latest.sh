#!/usr/bin/env bash
# Not part of CI's gate: what would the newest releases that pyproject's ranges allow
# break? In a throw-away venv it installs them (ignoring the lock files), then runs
# ruff, mypy and the fast tests (no real peers, no `serve` processes), and prints
# what broke. If all is well, `bash scripts/lock.sh --upgrade` moves the lock; if
# not, fix the code or narrow a range first: refreshing the lock is a decision.
#   bash scripts/check-latest.sh             the newest releases
#   bash scripts/check-latest.sh --lowest    the lowest versions the ranges state
set -uo pipefail
cd "$(dirname "$0")/.."
resolution=highest
[ "${1:-}" = "--lowest" ] && resolution=lowest-direct
command -v uv >/dev/null || python3 -m pip install --quiet uv
venv=$(mktemp -d)/venv
trap 'rm -rf "$(dirname "$venv")"' EXIT
uv venv --quiet --python "${PYTHON:-python3}" "$venv"
req=$(dirname "$venv")/req.txt
uv pip compile pyproject.toml --quiet --extra test --resolution "$resolution" \
  --python "$venv/bin/python" -o "$req" || { echo "BROKE: no resolution"; exit 1; }
uv pip install --quiet --python "$venv/bin/python" -r "$req" \
  && uv pip install --quiet --python "$venv/bin/python" --no-deps -e . \
  || { echo "BROKE: install"; exit 1; }
echo "== $resolution: what differs from requirements-test.lock"
diff <(grep -E '^[A-Za-z0-9_.-]+==' requirements-test.lock | sed 's/ .*//' | sort -u) \
     <(grep -E '^[A-Za-z0-9_.-]+==' "$req" | sed 's/ .*//' | sort -u) | grep -E '^[<>]'
broke=()
export PATH="$venv/bin:$PATH"
echo "== ruff"; ruff check . && ruff format --check . || broke+=(ruff)
echo "== mypy"; mypy || broke+=(mypy)
echo "== fast tests"
python -m pytest -q -p no:cacheprovider -x tests/audio tests/calls tests/agent tests/test_config.py \
  tests/test_api.py tests/sip/test_message.py tests/sip/test_sdp.py || broke+=(tests)
if [ ${#broke[@]} -gt 0 ]; then
  echo "BROKE with the $resolution versions: ${broke[*]}"
  exit 1
fi
echo "OK: the $resolution versions pass ruff, mypy and the fast tests"
