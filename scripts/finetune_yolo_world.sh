#!/usr/bin/env bash
# Fine-tune YOLO-World on a converted category, offline: scripts/finetune_yolo_world.sh --category wood [options] [key=value ...]
# The same as `defect-vision train-detector` (python -m defect_vision train-detector); --help lists every option.
# Paths (and the defaults datasets/..., weights/..., runs/...) are relative to the current folder, as with the
# converters; PYTHON overrides the interpreter (default: the repo's .venv, where the package is installed).
set -euo pipefail
REPO=$(cd "$(dirname "$0")/.." && pwd)
PY=${PYTHON:-$REPO/.venv/bin/python}
[ -x "$PY" ] || PY=python3
export YOLO_OFFLINE=1 YOLO_AUTOINSTALL=false MPLBACKEND=${MPLBACKEND:-Agg}
exec "$PY" -m defect_vision train-detector "$@"
