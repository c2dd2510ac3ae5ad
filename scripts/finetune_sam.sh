#!/usr/bin/env bash
# SAM fine-tuning stage: scripts/finetune_sam.sh --category wood [--model-type vit_b] [...]  (== python -m finetune.sam)
# NPROC=N runs N processes under torchrun (DDP: nccl on GPUs, gloo on CPU). PYTHON overrides the interpreter.
set -euo pipefail
REPO=$(cd "$(dirname "$0")/.." && pwd)
PY=${PYTHON:-$REPO/.venv/bin/python}
[ -x "$PY" ] || PY=python3
export PYTHONPATH="$REPO${PYTHONPATH:+:$PYTHONPATH}"
if [ "${NPROC:-1}" -gt 1 ]; then
  exec "$PY" -m torch.distributed.run --standalone --nproc_per_node "$NPROC" -m finetune.sam "$@"
fi
exec "$PY" -m finetune.sam "$@"
