#!/usr/bin/env bash
# The whole pipeline on one MVTec AD category (= `defect-vision pipeline`; --help lists every option):
# convert -> fine-tune YOLO-World -> fine-tune SAM -> predict (val, test, test on GT boxes) -> calibrate -> evaluate
# -> HTML report in <runs>/<category>/report/index.html. Paths are relative to the current folder.
# PYTHON_BIN overrides the interpreter (default: the repo's .venv, made by scripts/setup_env.sh).
set -euo pipefail
REPO=$(cd "$(dirname "$0")/.." && pwd)
PY=${PYTHON_BIN:-$REPO/.venv/bin/python}
[ -x "$PY" ] || { echo "error: $PY: no Python environment (run scripts/setup_env.sh)" >&2; exit 2; }
export YOLO_OFFLINE=1 MPLBACKEND=${MPLBACKEND:-Agg}
exec "$PY" -m defect_vision pipeline "$@"
