#!/usr/bin/env bash
# The test suite: set up .venv if needed, then run pytest (extra arguments go to pytest).
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/setup_env.sh
export MPLBACKEND=Agg YOLO_OFFLINE=1
exec .venv/bin/python -m pytest "$@"
