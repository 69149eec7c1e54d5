#!/usr/bin/env bash
# Install and start telephony-edge on its embedded defaults (in-memory
# coordination, built-in demo agent core). Extra arguments go to `serve`.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
exec .venv/bin/telephony-edge serve "$@"
