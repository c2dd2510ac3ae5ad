#!/usr/bin/env bash
# Fine-tune YOLO-World on a converted category, offline: scripts/finetune_yolo_world.sh --category wood [options] [key=value ...]
# Same as `python -m finetune.yolo_world`; run with --help for every option and its default.
# Paths (and the defaults datasets/..., weights/..., runs/...) are relative to the current folder, as with the
# converters; PYTHON overrides the interpreter (default: the repo's .venv).
set -euo pipefail
REPO=$(cd "$(dirname "$0")/.." && pwd)
PY=${PYTHON:-$REPO/.venv/bin/python}
[ -x "$PY" ] || PY=python3
export PYTHONPATH="$REPO${PYTHONPATH:+:$PYTHONPATH}"
export YOLO_OFFLINE=1 YOLO_AUTOINSTALL=false MPLBACKEND=${MPLBACKEND:-Agg}
exec "$PY" -m finetune.yolo_world "$@"
