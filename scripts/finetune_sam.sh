#!/usr/bin/env bash
# SAM fine-tuning stage: scripts/finetune_sam.sh --category wood [--model-type vit_b] [...]  (== defect-vision train-sam)
# NPROC=N runs N processes under torchrun (DDP: nccl on GPUs, gloo on CPU). Paths are relative to the current folder.
# PYTHON overrides the interpreter (default: the repo's .venv, which has the project installed).
set -euo pipefail
REPO=$(cd "$(dirname "$0")/.." && pwd)
PY=${PYTHON:-$REPO/.venv/bin/python}
if [ ! -x "$PY" ]; then
  echo "error: $PY: no Python interpreter there (run scripts/setup_env.sh to create .venv, or set PYTHON)" >&2
  exit 2
fi
NPROC=${NPROC:-1}
case "$NPROC" in
  '' | *[!0-9]* | 0) echo "error: NPROC=$NPROC: expected a number of processes >= 1" >&2; exit 2 ;;
esac
if [ "$NPROC" -gt 1 ]; then
  exec "$PY" -m torch.distributed.run --standalone --nproc_per_node "$NPROC" -m defect_vision train-sam "$@"
fi
exec "$PY" -m defect_vision train-sam "$@"
