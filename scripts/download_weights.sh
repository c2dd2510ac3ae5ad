#!/usr/bin/env bash
# Download the official pretrained weights into weights/ and verify their SHA-256 (see weights/README.md).
set -euo pipefail

# name | file under weights/ | official URL | SHA-256 ("unknown" where no published value was found)
# SHA-256 sources: SAM — the values used by micro-sam's model registry and many checksum-pinning projects for
# Meta's files; CLIP — the hash OpenAI embeds in the URL (open_clip and clip verify it); yolov8s-worldv2 — the
# value pinned by several projects for the Ultralytics release asset (v8.2.0 = v8.3.0 = v8.4.0 file).
# yolov8m/l-worldv2: no published SHA-256 found; the script prints the computed hash and marks them UNVERIFIED.
MODELS='
yolov8s-worldv2|yolov8s-worldv2.pt|https://github.com/ultralytics/assets/releases/download/v8.4.0/yolov8s-worldv2.pt|9b2c17ab6124a913e9b3a5c170617920d91b0f01111a8479da69f00e2cf27792
yolov8m-worldv2|yolov8m-worldv2.pt|https://github.com/ultralytics/assets/releases/download/v8.4.0/yolov8m-worldv2.pt|unknown
yolov8l-worldv2|yolov8l-worldv2.pt|https://github.com/ultralytics/assets/releases/download/v8.4.0/yolov8l-worldv2.pt|unknown
sam_vit_b|sam_vit_b_01ec64.pth|https://dl.fbaipublicfiles.com/segment_anything/sam_vit_b_01ec64.pth|ec2df62732614e57411cdcf32a23ffdf28910380d03139ee0f4fcbe91eb8c912
sam_vit_l|sam_vit_l_0b3195.pth|https://dl.fbaipublicfiles.com/segment_anything/sam_vit_l_0b3195.pth|3adcc4315b642a4d2101128f611684e8734c41232a17c648ed1693702a49a622
sam_vit_h|sam_vit_h_4b8939.pth|https://dl.fbaipublicfiles.com/segment_anything/sam_vit_h_4b8939.pth|a7bf3b02f3ebf1267aba913ff637d9a2d5c33d3173bb679e46d9f338c26f262e
clip_vit_b32|clip/ViT-B-32.pt|https://openaipublic.azureedge.net/clip/models/40d365715913c9da98579312b702a82c18be219cc2a73407c4526f58eba950af/ViT-B-32.pt|40d365715913c9da98579312b702a82c18be219cc2a73407c4526f58eba950af
'
DEFAULT="yolov8s-worldv2 sam_vit_b clip_vit_b32"  # what scripts/run_pipeline.sh and scripts/demo.sh use

usage() {
  cat <<EOF
usage: scripts/download_weights.sh [--dest DIR] [--check] [--mirror URL|DIR] [--all | NAME ...]

Downloads the official weights and verifies their SHA-256; a file that does not match is deleted.
Files already present and matching are kept. Without names: $DEFAULT (what the pipeline needs).

  --dest DIR     target folder [weights]
  --all          every model below
  --check        only verify the files already in DIR (nothing is downloaded)
  --mirror X     fetch <X>/<file> instead of the official URL (a local folder or an http(s) mirror);
                 the checksums are still verified
  NAME           one of: $(echo "$MODELS" | cut -d'|' -f1 | tr '\n' ' ')
EOF
}

die() { echo "error: $*" >&2; exit 2; }
REPO=$(cd "$(dirname "$0")/.." && pwd)
dest="$REPO/weights" check=0 mirror="" names=()
while [ $# -gt 0 ]; do
  case "$1" in
    --dest) [ $# -ge 2 ] || die "--dest: missing value"; dest=$2; shift ;;
    --mirror) [ $# -ge 2 ] || die "--mirror: missing value"; mirror=${2%/}; shift ;;
    --check) check=1 ;;
    --all) names=($(echo "$MODELS" | cut -d'|' -f1)) ;;
    -h|--help) usage; exit 0 ;;
    -*) die "$1: unknown option (see --help)" ;;
    *) names+=("$1") ;;
  esac
  shift
done
[ ${#names[@]} -gt 0 ] || names=($DEFAULT)
command -v sha256sum >/dev/null || die "sha256sum: not found (coreutils)"

sha() { sha256sum "$1" | cut -d' ' -f1; }
fetch() {  # fetch SOURCE TARGET: download or copy one file; non-zero on failure
  case "$1" in
    http://*|https://*)
      if command -v curl >/dev/null; then
        curl -fL --retry 2 --connect-timeout 20 --progress-bar -o "$2" "$1"
      else
        wget -q --show-progress -O "$2" "$1"
      fi ;;
    *) cp "$1" "$2" 2>/dev/null ;;
  esac
}

ok=0 unverified=0 failed=0
for name in "${names[@]}"; do
  line=$(echo "$MODELS" | grep "^$name|" || true)
  [ -n "$line" ] || die "$name: unknown model (see --help for the names)"
  IFS='|' read -r _ file url want <<<"$line"
  target="$dest/$file"
  if [ -s "$target" ]; then
    got=$(sha "$target")
    if [ "$want" = unknown ]; then
      echo "UNVERIFIED $target: no published SHA-256 known for $file; its SHA-256 is $got"; unverified=$((unverified + 1)); continue
    elif [ "$got" = "$want" ]; then
      echo "ok         $target (sha256 verified)"; ok=$((ok + 1)); continue
    elif [ "$check" = 1 ]; then
      echo "error: $target: SHA-256 mismatch (got $got, expected $want)" >&2; failed=$((failed + 1)); continue
    fi
    echo "replacing  $target: SHA-256 mismatch (got $got, expected $want)"
  elif [ "$check" = 1 ]; then
    echo "error: $target: missing" >&2; failed=$((failed + 1)); continue
  fi
  source_url=$url
  [ -z "$mirror" ] || source_url="$mirror/$file"
  mkdir -p "$(dirname "$target")"
  part="$target.part"
  echo "fetching   $source_url"
  if ! fetch "$source_url" "$part" || [ ! -s "$part" ]; then
    rm -f "$part"
    case "$source_url" in
      http://*|https://*)
        echo "error: $source_url: download failed (no network? behind a proxy? Without internet, copy the files by hand" \
             "into $dest/ or use --mirror DIR; see weights/README.md)" >&2 ;;
      *) echo "error: $source_url: missing or unreadable in the --mirror folder" >&2 ;;
    esac
    failed=$((failed + 1)); continue
  fi
  got=$(sha "$part")
  if [ "$want" = unknown ]; then
    mv "$part" "$target"
    echo "UNVERIFIED $target: no published SHA-256 known for $file, cannot verify; its SHA-256 is $got" \
         "(compare with a trusted copy)"
    unverified=$((unverified + 1))
  elif [ "$got" != "$want" ]; then
    rm -f "$part"
    echo "error: $source_url: SHA-256 mismatch (got $got, expected $want); the file was deleted" >&2
    failed=$((failed + 1))
  else
    mv "$part" "$target"
    echo "ok         $target (sha256 verified)"
    ok=$((ok + 1))
  fi
done
echo "weights: $ok verified, $unverified unverified, $failed failed (in $dest)"
[ "$failed" = 0 ] || exit 1
