#!/usr/bin/env bash
# Fine-tune YOLO-World on a converted category, offline: scripts/finetune_yolo_world.sh --category wood [options] [key=value ...]
# Same as `python -m finetune.yolo_world`; run with --help for every option and its default.
set -euo pipefail
cd "$(dirname "$0")/.."
PY=.venv/bin/python
[ -x "$PY" ] || PY=python3
export YOLO_OFFLINE=1 YOLO_AUTOINSTALL=false MPLBACKEND=${MPLBACKEND:-Agg}
exec "$PY" -m finetune.yolo_world "$@"
