#!/usr/bin/env bash
# The whole pipeline on one MVTec AD category, one stage after the other:
# convert (COCO, YOLO, VOC, SAM prompts) -> fine-tune YOLO-World -> fine-tune SAM -> predict (val, test, test on
# GT boxes) -> calibrate thresholds -> evaluate -> HTML report in <runs>/<category>/report/index.html.
set -euo pipefail

usage() {
  cat <<'EOF'
usage: scripts/run_pipeline.sh --category C [options]

Runs every stage on one category and writes runs/<C>/{yolo_world, sam, predict_val, predict, predict_gt_boxes,
eval, eval_gt_boxes, report}, plus runs/<C>/pipeline.json (settings, weights, stage times) and pipeline.log.
Real runs need the official weights in weights/ (scripts/download_weights.sh); --from-scratch makes a smoke
run with small random-init models instead (the report says so; its numbers are not model quality).

options (defaults in brackets):
  --category C           MVTec category folder, e.g. wood (required)
  --root DIR             MVTec AD root [datasets/mvtec_ad]
  --datasets DIR         where the converted datasets go: DIR/{coco,yolo,voc,sam}/<C>, DIR/splits/<C>.json [datasets]
  --runs DIR             where the run goes: DIR/<C>/... [runs]
  --weights DIR          folder of the official weights [weights]
  --yolo-model PT        YOLO-World weights [<weights>/yolov8s-worldv2.pt]
  --clip PT              CLIP ViT-B/32 text encoder [<weights>/clip/ViT-B-32.pt]
  --sam-model-type T     vit_b | vit_l | vit_h [vit_b] (ignored with --from-scratch, which always builds vit_tiny)
  --sam-checkpoint PTH   SAM weights [<weights>/sam_<type>_*.pth, the official file name]
  --from-scratch         smoke run: YOLO-World from --yolo-cfg with a random text encoder and SAM vit_tiny,
                         both random-init (no weights needed)
  --yolo-cfg YAML        model config of --from-scratch, e.g. yolov8n-worldv2.yaml [yolov8s-worldv2.yaml]
  --yolo-epochs N        YOLO-World fine-tune epochs [80]
  --sam-epochs N         SAM fine-tune epochs [20]
  --imgsz N              YOLO-World image size [640]
  --batch N              YOLO-World batch size [16]
  --conf X               lowest detector confidence kept at inference; low, because AP and calibration need the
                         low-score detections (runs/<C>/thresholds.json has the calibrated ones) [0.01]
  --device D             auto | cpu | cuda:N [auto]
  --seed N               seed of the split, training and sampling [0]
  --no-zero-shot         skip the zero-shot evaluation of the detector before fine-tuning
  --no-calibrate         skip predicting on val and calibrating per-class thresholds (runs/<C>/thresholds.json)
  --resplit              make a new train/val/test split even if datasets/splits/<C>.json exists
  -h, --help             this help
EOF
}

die() { echo "error: $*" >&2; exit 2; }
abspath() { case "$1" in /*) printf '%s\n' "$1" ;; *) printf '%s\n' "$PWD/$1" ;; esac; }

REPO=$(cd "$(dirname "$0")/.." && pwd)
PY=${PYTHON_BIN:-$REPO/.venv/bin/python}
category="" root="$REPO/datasets/mvtec_ad" datasets="$REPO/datasets" runs="$REPO/runs" weights="$REPO/weights"
yolo_model="" yolo_cfg=yolov8s-worldv2.yaml clip="" sam_type=vit_b sam_ckpt="" from_scratch=0
yolo_epochs=80 sam_epochs=20 imgsz=640 batch=16 conf=0.01 device=auto seed=0
zero_shot=1 calibrate=1 resplit=()

need() { [ $# -ge 2 ] && [ -n "$2" ] || die "$1: missing value (see --help)"; }
while [ $# -gt 0 ]; do
  case "$1" in
    --category) need "$@"; category=$2; shift ;;
    --root) need "$@"; root=$(abspath "$2"); shift ;;
    --datasets) need "$@"; datasets=$(abspath "$2"); shift ;;
    --runs) need "$@"; runs=$(abspath "$2"); shift ;;
    --weights) need "$@"; weights=$(abspath "$2"); shift ;;
    --yolo-model) need "$@"; yolo_model=$(abspath "$2"); shift ;;
    --clip) need "$@"; clip=$(abspath "$2"); shift ;;
    --yolo-cfg) need "$@"; yolo_cfg=$2; shift ;;
    --sam-model-type) need "$@"; sam_type=$2; shift ;;
    --sam-checkpoint) need "$@"; sam_ckpt=$(abspath "$2"); shift ;;
    --from-scratch) from_scratch=1 ;;
    --yolo-epochs) need "$@"; yolo_epochs=$2; shift ;;
    --sam-epochs) need "$@"; sam_epochs=$2; shift ;;
    --imgsz) need "$@"; imgsz=$2; shift ;;
    --batch) need "$@"; batch=$2; shift ;;
    --conf) need "$@"; conf=$2; shift ;;
    --device) need "$@"; device=$2; shift ;;
    --seed) need "$@"; seed=$2; shift ;;
    --no-zero-shot) zero_shot=0 ;;
    --no-calibrate) calibrate=0 ;;
    --resplit) resplit=(--resplit) ;;
    -h|--help) usage; exit 0 ;;
    *) die "$1: unknown option (see --help)" ;;
  esac
  shift
done
[ -n "$category" ] || die "--category is required (see --help)"
for n in "$yolo_epochs" "$sam_epochs" "$imgsz" "$batch" "$seed"; do
  [[ "$n" =~ ^[0-9]+$ ]] || die "$n: not a non-negative integer (see --help)"
done
[[ "$conf" =~ ^[0-9]*\.?[0-9]+$ ]] && awk -v c="$conf" 'BEGIN { exit !(c <= 1) }' \
  || die "$conf: --conf must be a number in [0, 1]"
[ -d "$root/$category/test" ] || die "$root/$category: no MVTec category here (expected $root/$category/test/)"
[ -x "$PY" ] || die "$PY: no Python environment (run scripts/setup_env.sh)"
cd "$REPO"
export YOLO_OFFLINE=1 MPLBACKEND=Agg

# --- weights: official files, or a loudly labelled random-init smoke run -------------------------------------
case "$sam_type" in
  vit_b) sam_file=sam_vit_b_01ec64.pth ;; vit_l) sam_file=sam_vit_l_0b3195.pth ;; vit_h) sam_file=sam_vit_h_4b8939.pth ;;
  *) die "$sam_type: unknown SAM model type (vit_b | vit_l | vit_h; --from-scratch uses vit_tiny)" ;;
esac
yolo_model=${yolo_model:-$weights/yolov8s-worldv2.pt}
clip=${clip:-$weights/clip/ViT-B-32.pt}
sam_ckpt=${sam_ckpt:-$weights/$sam_file}
if [ "$from_scratch" = 1 ]; then
  weights_mode=random-init
  yolo_args=(--from-scratch --model-cfg "$yolo_cfg" --text-encoder random)
  sam_type=vit_tiny
  # a random prompt encoder gives random box embeddings: from scratch it must learn too (measured on toy_wood:
  # frozen, val mask IoU stays at 0; trained at lr 1e-3, 0.2 after 10 epochs)
  sam_args=(--model-type vit_tiny --from-scratch --train-prompt-encoder --lr 1e-3 --batch-images 2)
  zero_shot=0  # a random-init detector has no zero-shot ability to measure
else
  weights_mode=official
  for f in "$yolo_model" "$clip" "$sam_ckpt"; do
    [ -s "$f" ] || die "$f: official weights missing (run scripts/download_weights.sh, or pass --from-scratch for a smoke run with random-init models)"
  done
  yolo_args=(--model "$yolo_model" --text-encoder clip --clip "$clip")
  sam_args=(--model-type "$sam_type")
  sam_args+=(--checkpoint "$sam_ckpt")
fi
[ "$zero_shot" = 1 ] && yolo_args+=(--eval-zero-shot)

run="$runs/$category"
coco="$datasets/coco/$category"
mkdir -p "$run"
: > "$run/pipeline.log"
exec > >(tee -a "$run/pipeline.log") 2> >(tee -a "$run/pipeline.log" >&2)
if [ "$weights_mode" = official ]; then
  echo "pipeline: $category from $root with OFFICIAL weights ($yolo_model, $sam_ckpt)"
else
  echo "pipeline: $category from $root with RANDOM-INIT models (--from-scratch: YOLO-World from $yolo_cfg," \
       "random text encoder; SAM vit_tiny). SMOKE RUN: the numbers test the plumbing, not model quality."
fi

declare -A seconds
order=()
step() {  # step NAME command...: run one stage, stop the pipeline on failure
  local name=$1; shift
  echo "== [$name] $*"
  local t0=$SECONDS
  if ! "$@"; then echo "error: pipeline stage '$name' failed (see the messages above; log: $run/pipeline.log)" >&2; exit 1; fi
  seconds[$name]=$((SECONDS - t0))
  order+=("$name")
  echo "== [$name] done in ${seconds[$name]} s"
}

step convert "$PY" converters/mvtec_to_all.py --category "$category" --root "$root" --out "$datasets" \
  --splits "$datasets/splits/$category.json" --seed "$seed" "${resplit[@]}"
for f in "$coco/instances_val.json" "$coco/instances_test.json" "$datasets/yolo/$category/data.yaml"; do
  [ -s "$f" ] || die "$f: the converters did not write it"
done

step yolo_world "$PY" -m finetune.yolo_world --category "$category" --data "$datasets/yolo/$category/data.yaml" \
  --coco "$coco" --out "$run/yolo_world" --epochs "$yolo_epochs" --imgsz "$imgsz" --batch "$batch" \
  --device "$device" --seed "$seed" "${yolo_args[@]}"

step sam "$PY" -m finetune.sam --category "$category" --prompts "$datasets/sam/$category" --out "$run/sam" \
  --cache-dir "$run/sam/embeddings" --epochs "$sam_epochs" --device "$device" --seed "$seed" "${sam_args[@]}"

# val and test are predicted at a low --conf: the COCO AP and pixel metrics need the low-score detections, and
# evaluation calibrates per-class thresholds on val and also reports test at them (metrics.json "calibrated").
predict=("$PY" -m inference.predict --detector "$run/yolo_world/best.pt" --sam "$run/sam/best.pth"
         --model-type "$sam_type" --conf "$conf" --device "$device")
val_eval=()
# a previous run's thresholds must not outlive it: the report draws its thumbnails at runs/<C>/thresholds.json
[ "$calibrate" = 1 ] || rm -rf "$run/thresholds.json" "$run/predict_val"
if [ "$calibrate" = 1 ]; then
  step predict_val "${predict[@]}" --source "$coco/instances_val.json" --out "$run/predict_val"
  step calibrate "$PY" -m evaluation.calibrate --gt "$coco/instances_val.json" \
    --pred "$run/predict_val/predictions.json" --out "$run/thresholds.json"
  val_eval=(--val-gt "$coco/instances_val.json" --val-pred "$run/predict_val/predictions.json")
fi
step predict "${predict[@]}" --source "$coco/instances_test.json" --out "$run/predict" --save-overlays
step predict_gt_boxes "${predict[@]}" --source "$coco/instances_test.json" --gt-boxes "$coco/instances_test.json" \
  --out "$run/predict_gt_boxes"
step evaluate "$PY" -m evaluation.evaluate --gt "$coco/instances_test.json" --pred "$run/predict/predictions.json" \
  --out "$run/eval" "${val_eval[@]}"
step evaluate_gt_boxes "$PY" -m evaluation.evaluate --gt "$coco/instances_test.json" \
  --pred "$run/predict_gt_boxes/predictions.json" --out "$run/eval_gt_boxes"

times=()
for k in "${order[@]}"; do times+=("$k=${seconds[$k]}"); done
if [ "$weights_mode" = official ]; then yolo_desc=$yolo_model sam_desc=$sam_ckpt; else yolo_desc=$yolo_cfg sam_desc=""; fi
"$PY" - "$run/pipeline.json" "$category" "$root" "$datasets" "$run" "$coco" "$weights_mode" "$yolo_desc" \
  "$sam_type" "$sam_desc" "$yolo_epochs" "$sam_epochs" "$imgsz" "$batch" "$conf" "$device" "$seed" "$calibrate" \
  "${times[@]}" <<'EOF'
import json, sys
from pathlib import Path
from converters.io import atomic_write_text
(out, category, root, datasets, run, coco, weights, yolo, sam_type, sam_ckpt,
 yolo_epochs, sam_epochs, imgsz, batch, conf, device, seed, calibrate, *times) = sys.argv[1:]
atomic_write_text(Path(out), json.dumps({
    "category": category, "root": root, "datasets": datasets, "run": run,
    "gt_val": f"{coco}/instances_val.json", "gt_test": f"{coco}/instances_test.json",
    "weights": weights, "yolo_model": yolo, "sam_model_type": sam_type, "sam_checkpoint": sam_ckpt or None,
    "settings": {"yolo_epochs": int(yolo_epochs), "sam_epochs": int(sam_epochs), "imgsz": int(imgsz),
                 "batch": int(batch), "conf": float(conf), "device": device, "seed": int(seed),
                 "calibrate": calibrate == "1"},
    "seconds": {k: int(v) for k, v in (t.split("=") for t in times)},
}, indent=2) + "\n")
EOF
step report "$PY" -m evaluation.html_report --run "$run"
total=0; for k in "${!seconds[@]}"; do total=$((total + seconds[$k])); done
echo "pipeline: $category done in ${total} s ($weights_mode weights); report: $run/report/index.html"
