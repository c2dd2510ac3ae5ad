#!/usr/bin/env bash
# The built-in demo: set up .venv, generate the synthetic category toy_wood, run the whole pipeline on it
# (scripts/run_pipeline.sh) and write runs/toy_wood/report/index.html. With --root, the same on a real MVTec AD
# category (--category, default wood) instead of the synthetic one.
# Official weights in weights/ are used when all are there; otherwise small random-init models are built from
# config (the log and the report say so: a smoke run's numbers are not model quality).
set -euo pipefail

usage() {
  cat <<'EOF'
usage: scripts/demo.sh [--fast] [--root DIR [--category C] [--format F]] [--work DIR] [--device auto|cpu|cuda:N] [--seed N]
                       [--anomaly|--no-anomaly] [--classify|--no-classify]

  --fast       the smallest settings (what CI runs, ~1-2 min on 2 CPU cores); same as DEMO_FAST=1
  --root DIR   a real MVTec AD copy: run on its category --category instead of the synthetic toy_wood
  --category C the category under --root [wood]
  --format F   its layout: mvtec (default), mvtec_ad2, mvtec_loco, mvtec_3d, visa, kolektor2 or auto
  --work DIR   put datasets/ and runs/ under DIR instead of the repo root (same as DEMO_WORK=DIR)
  --device D   training/inference device [auto]
  --seed N     seed of the synthetic data, split and training [0]
  --anomaly    also the good-only anomaly model (weight-free DRAEM, 64 px, ~30 s on toy_wood) and its heat maps
               [on: it fits the demo's time budget; --no-anomaly or DEMO_ANOMALY=0 turns it off]
  --classify   also the course reports' image classifier baseline (3 epochs) [off: random-init at 512 px adds
               more than the demo's budget; DEMO_CLASSIFY=1 turns it on]

Default settings: ~3-6 min on 2 CPU cores on toy_wood (both random-init models visibly learn: detector val
mAP50 ~0.5, SAM val IoU ~0.2); a real category has more and larger images and takes longer.
Result: <work>/runs/<category>/report/index.html.
EOF
}

REPO=$(cd "$(dirname "$0")/.." && pwd)
fast=${DEMO_FAST:-0} work=${DEMO_WORK:-$REPO} device=auto seed=0 root="" category="" layout=mvtec
anomaly=${DEMO_ANOMALY:-1} classify=${DEMO_CLASSIFY:-0}
while [ $# -gt 0 ]; do
  case "$1" in
    --fast) fast=1 ;;
    --anomaly) anomaly=1 ;;
    --no-anomaly) anomaly=0 ;;
    --classify) classify=1 ;;
    --no-classify) classify=0 ;;
    --work) [ $# -ge 2 ] || { echo "error: --work: missing value" >&2; exit 2; }; work=$2; shift ;;
    --device) [ $# -ge 2 ] || { echo "error: --device: missing value" >&2; exit 2; }; device=$2; shift ;;
    --seed) [ $# -ge 2 ] || { echo "error: --seed: missing value" >&2; exit 2; }; seed=$2; shift ;;
    --root) [ $# -ge 2 ] || { echo "error: --root: missing value" >&2; exit 2; }; root=$2; shift ;;
    --category) [ $# -ge 2 ] || { echo "error: --category: missing value" >&2; exit 2; }; category=$2; shift ;;
    --format) [ $# -ge 2 ] || { echo "error: --format: missing value" >&2; exit 2; }; layout=$2; shift ;;
    -h|--help) usage; exit 0 ;;
    *) echo "error: $1: unknown option (see --help)" >&2; exit 2 ;;
  esac
  shift
done
[[ "$seed" =~ ^[0-9]+$ ]] || { echo "error: $seed: --seed must be a non-negative integer" >&2; exit 2; }
case "$work" in /*) ;; *) work="$PWD/$work" ;; esac
if [ -n "$root" ]; then
  case "$root" in /*) ;; *) root="$PWD/$root" ;; esac
  category=${category:-wood}
  if [ "$layout" = mvtec ]; then
    [ -d "$root/$category/test" ] || { echo "error: $root/$category: no MVTec category here (expected $root/$category/test/; other layouts: --format)" >&2; exit 2; }
  else
    [ -d "$root/$category" ] || { echo "error: $root/$category: no such folder" >&2; exit 2; }
  fi
elif [ -n "$category" ]; then
  echo "error: --category $category: needs --root (without it the demo runs on the synthetic toy_wood)" >&2; exit 2
fi
cd "$REPO"
"$REPO/scripts/setup_env.sh"
PY=$REPO/.venv/bin/python
export YOLO_OFFLINE=1 MPLBACKEND=Agg
t0=$SECONDS

if [ "$fast" = 1 ]; then
  synth=(--size 128 --per-defect 4)
  settings=(--yolo-epochs 2 --sam-epochs 1 --imgsz 128 --batch 8 --conf 0.01)
else
  synth=()
  settings=(--yolo-epochs 50 --sam-epochs 30 --imgsz 256 --batch 8 --conf 0.01)
fi
if [ -z "$root" ]; then
  category=toy_wood root=$work/datasets/synthetic
  echo "demo: generating the synthetic category $category in $root"
  "$PY" -m defect_vision.data.synthetic --out "$root" --category "$category" --seed "$seed" "${synth[@]}"
else
  echo "demo: real $layout category $category from $root"
fi

missing=()
for f in weights/yolov8s-worldv2.pt weights/clip/ViT-B-32.pt weights/sam_vit_b_01ec64.pth; do
  [ -s "$f" ] || missing+=("$f")
done
if [ ${#missing[@]} = 0 ]; then
  echo "demo: official weights found in weights/: fine-tuning yolov8s-worldv2.pt and SAM vit_b"
  weights=()
else
  echo "demo: official weights NOT found in weights/ (missing: ${missing[*]}; scripts/download_weights.sh fetches them):" \
       "building small random-init models from config (YOLO-World --from-scratch --model-cfg yolov8n-worldv2.yaml" \
       "--text-encoder random, SAM --model-type vit_tiny --from-scratch). This is a smoke run: its numbers are not" \
       "model quality."
  weights=(--from-scratch --yolo-cfg yolov8n-worldv2.yaml)
fi

extra=()
[ "$anomaly" = 1 ] && extra+=(--anomaly --anomaly-method draem --anomaly-image-size 64 --anomaly-base-width 8 --anomaly-epochs 10)
[ "$classify" = 1 ] && extra+=(--classify --classify-epochs 3)
"$REPO/scripts/run_pipeline.sh" --category "$category" --root "$root" \
  --datasets "$work/datasets" --runs "$work/runs" --device "$device" --seed "$seed" --resplit --format "$layout" \
  "${weights[@]}" "${settings[@]}" "${extra[@]}"
echo "demo: finished in $((SECONDS - t0)) s; open $work/runs/$category/report/index.html"
