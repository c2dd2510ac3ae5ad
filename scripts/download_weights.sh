#!/usr/bin/env bash
# Download the official pretrained weights into weights/ and verify their SHA-256 (see weights/README.md).
set -euo pipefail

# name | file under weights/ | official URL | SHA-256 ("unknown" where no published value was found)
# No upstream (Meta, OpenAI, MobileSAM's authors, Ultralytics) ships a checksum file next to these downloads; each value
# below is one found stated for that exact file (same URL / release) in public sources, cited per group. "unknown":
# none found; the script then prints the computed SHA-256 and marks the file UNVERIFIED (never trusted silently).
# SAM (ViT-B/L/H): the values in micro-sam's model registry (computational-cell-analytics/micro-sam,
#   micro_sam/util.py) and many checksum-pinning projects for Meta's files.
# CLIP: the hash OpenAI embeds in the URL (open_clip and clip verify it).
# yolov8s-worldv2: the value pinned by several projects for the Ultralytics release asset (v8.2.0 = v8.3.0 = v8.4.0
#   file). yolov8m/l-worldv2: no published SHA-256 found (UNVERIFIED).
# MobileSAM (mobile_sam.pt, 40,728,226 bytes): we use the authors' file in github.com/ChaoningZhang/MobileSAM
#   (weights/mobile_sam.pt, unchanged since 2023-06-29). SHA-256 from micro-sam's registry, key "vit_t"
#   (micro_sam/util.py at commit 4276f5a40e75e20490a14a69768c6567d2200bf6), also pinned by projects that fetch it
#   from the MobileSAM repo; projects pinning Ultralytics' release asset v8.4.0/mobile_sam.pt state the same size and
#   hash, so that asset is the same file (usable with --mirror https://github.com/ultralytics/assets/releases/download/v8.4.0).
# SAM 2.1 (Meta, 092824) and SAM 2 (Meta, 072824): micro-sam, micro_sam/v2/util.py, HASHES["sam2.1"] and
#   HASHES["sam2.0"] for exactly these URLs (commit 935625220b4723396593a3a4abb4d8f9dfa99874; "sam2.1" still in
#   current versions); SAM 2.1 tiny/small/base_plus/large and SAM 2 tiny/small/large are pinned identically by other
#   projects too (sizes 156,008,466 / 184,416,285 / 323,606,802 / 898,083,611 bytes for SAM 2.1).
# Ultralytics sam2.1_t/s/b/l.pt and sam2_t/s/b/l.pt (release v8.4.0, the release ultralytics 8.4.x downloads from):
#   the GitHub release-asset digests listed in OscarKing888/SuperBirdTools, bird_sharpness/model_catalog.py (with
#   sizes) and in BayJoi/spectra-segment, backend/utils/model_integrity.py (PUBLISHED_DIGESTS); identical in both.
# YOLOE-11 s/m/l and YOLOE-26 n/s/m/l/x (release v8.4.0): BayJoi/spectra-segment, backend/utils/model_integrity.py
#   (11s/m/l, 26n/s/m/l) and peter119lee/ComfyUI-YOLOE26, nodes.py (26n/s/m/l/x, "verified against the GitHub
#   release-asset digests"); yoloe-11s/11l have the same hash pinned for release v8.3.0 elsewhere (same file).
#   yoloe-v8s/m/l-seg.pt: no published SHA-256 found for Ultralytics' asset (UNVERIFIED).
# YOLOE text models, the TorchScript MobileCLIP encoders ultralytics 8.4 loads (ultralytics/nn/text_model.py:
#   "mobileclip:blt" -> mobileclip_blt.ts for YOLOE-v8/11, "mobileclip2:b" -> mobileclip2_b.ts for YOLOE-26; read here
#   from weights/<file>): BayJoi/spectra-segment, backend/utils/model_integrity.py, pinned identically by several
#   download scripts for the same v8.4.0 URLs (599,764,649 and 253,794,476 bytes).
# Ultralytics has replaced assets of a release tag in place before: a mismatch on an Ultralytics file is reported and
# the file deleted, as for any other; compare with a trusted copy before changing a value here.
MODELS='
yolov8s-worldv2|yolov8s-worldv2.pt|https://github.com/ultralytics/assets/releases/download/v8.4.0/yolov8s-worldv2.pt|9b2c17ab6124a913e9b3a5c170617920d91b0f01111a8479da69f00e2cf27792
yolov8m-worldv2|yolov8m-worldv2.pt|https://github.com/ultralytics/assets/releases/download/v8.4.0/yolov8m-worldv2.pt|unknown
yolov8l-worldv2|yolov8l-worldv2.pt|https://github.com/ultralytics/assets/releases/download/v8.4.0/yolov8l-worldv2.pt|unknown
sam_vit_b|sam_vit_b_01ec64.pth|https://dl.fbaipublicfiles.com/segment_anything/sam_vit_b_01ec64.pth|ec2df62732614e57411cdcf32a23ffdf28910380d03139ee0f4fcbe91eb8c912
sam_vit_l|sam_vit_l_0b3195.pth|https://dl.fbaipublicfiles.com/segment_anything/sam_vit_l_0b3195.pth|3adcc4315b642a4d2101128f611684e8734c41232a17c648ed1693702a49a622
sam_vit_h|sam_vit_h_4b8939.pth|https://dl.fbaipublicfiles.com/segment_anything/sam_vit_h_4b8939.pth|a7bf3b02f3ebf1267aba913ff637d9a2d5c33d3173bb679e46d9f338c26f262e
clip_vit_b32|clip/ViT-B-32.pt|https://openaipublic.azureedge.net/clip/models/40d365715913c9da98579312b702a82c18be219cc2a73407c4526f58eba950af/ViT-B-32.pt|40d365715913c9da98579312b702a82c18be219cc2a73407c4526f58eba950af
mobile_sam|mobile_sam.pt|https://github.com/ChaoningZhang/MobileSAM/raw/master/weights/mobile_sam.pt|6dbb90523a35330fedd7f1d3dfc66f995213d81b29a5ca8108dbcdd4e37d6c2f
sam2.1_hiera_tiny|sam2.1_hiera_tiny.pt|https://dl.fbaipublicfiles.com/segment_anything_2/092824/sam2.1_hiera_tiny.pt|7402e0d864fa82708a20fbd15bc84245c2f26dff0eb43a4b5b93452deb34be69
sam2.1_hiera_small|sam2.1_hiera_small.pt|https://dl.fbaipublicfiles.com/segment_anything_2/092824/sam2.1_hiera_small.pt|6d1aa6f30de5c92224f8172114de081d104bbd23dd9dc5c58996f0cad5dc4d38
sam2.1_hiera_base_plus|sam2.1_hiera_base_plus.pt|https://dl.fbaipublicfiles.com/segment_anything_2/092824/sam2.1_hiera_base_plus.pt|a2345aede8715ab1d5d31b4a509fb160c5a4af1970f199d9054ccfb746c004c5
sam2.1_hiera_large|sam2.1_hiera_large.pt|https://dl.fbaipublicfiles.com/segment_anything_2/092824/sam2.1_hiera_large.pt|2647878d5dfa5098f2f8649825738a9345572bae2d4350a2468587ece47dd318
sam2_hiera_tiny|sam2_hiera_tiny.pt|https://dl.fbaipublicfiles.com/segment_anything_2/072824/sam2_hiera_tiny.pt|65b50056e05bcb13694174f51bb6da89c894b57b75ccdf0ba6352c597c5d1125
sam2_hiera_small|sam2_hiera_small.pt|https://dl.fbaipublicfiles.com/segment_anything_2/072824/sam2_hiera_small.pt|95949964d4e548409021d47b22712d5f1abf2564cc0c3c765ba599a24ac7dce3
sam2_hiera_base_plus|sam2_hiera_base_plus.pt|https://dl.fbaipublicfiles.com/segment_anything_2/072824/sam2_hiera_base_plus.pt|d0bb7f236400a49669ffdd1be617959a8b1d1065081789d7bbff88eded3a8071
sam2_hiera_large|sam2_hiera_large.pt|https://dl.fbaipublicfiles.com/segment_anything_2/072824/sam2_hiera_large.pt|7442e4e9b732a508f80e141e7c2913437a3610ee0c77381a66658c3a445df87b
sam2.1_t|sam2.1_t.pt|https://github.com/ultralytics/assets/releases/download/v8.4.0/sam2.1_t.pt|3c1e81ca9b037dd39d70a014ddb9a813d6c4c4e12555420db7eaff31689bd4e3
sam2.1_s|sam2.1_s.pt|https://github.com/ultralytics/assets/releases/download/v8.4.0/sam2.1_s.pt|60f9e43f1307be192eef341437e02c40f32cd61cf36a97a203a0998a2952873a
sam2.1_b|sam2.1_b.pt|https://github.com/ultralytics/assets/releases/download/v8.4.0/sam2.1_b.pt|f1a9cf2dd69d84bb463b5ad98246d03e2d47a130a9295db0ec967e6cd95e2e47
sam2.1_l|sam2.1_l.pt|https://github.com/ultralytics/assets/releases/download/v8.4.0/sam2.1_l.pt|ab7e1ac9cb9f6eb3bcf197ece044f06a707ec49129361a2b47e93e1db6989efd
sam2_t|sam2_t.pt|https://github.com/ultralytics/assets/releases/download/v8.4.0/sam2_t.pt|94375f988270836169320bd901960c67b5770e8bef3867d70102f01a8b5ca501
sam2_s|sam2_s.pt|https://github.com/ultralytics/assets/releases/download/v8.4.0/sam2_s.pt|6ba91d739a6adfc1dcaf76336b2f380f3eae8d24a88f56c62798907f7fd62dad
sam2_b|sam2_b.pt|https://github.com/ultralytics/assets/releases/download/v8.4.0/sam2_b.pt|39722bb0ce2a086058cf64e50dffd6f9e9931b5fcbee79e33b30441c6c40264d
sam2_l|sam2_l.pt|https://github.com/ultralytics/assets/releases/download/v8.4.0/sam2_l.pt|fd618bcfc7b84c8f2e0a6997548e197b907098196dd075387d01f64d9cf8a93b
yoloe-11s-seg|yoloe-11s-seg.pt|https://github.com/ultralytics/assets/releases/download/v8.4.0/yoloe-11s-seg.pt|8e439445c87338b79d9ce21dec109f4621e26df67e94d26ea1a98c1e64dce3e3
yoloe-11m-seg|yoloe-11m-seg.pt|https://github.com/ultralytics/assets/releases/download/v8.4.0/yoloe-11m-seg.pt|785199b7cc75a5f4041dec15782a4b8a4105e5a34d7ffb287a0a10781724c5bd
yoloe-11l-seg|yoloe-11l-seg.pt|https://github.com/ultralytics/assets/releases/download/v8.4.0/yoloe-11l-seg.pt|a993fb0fc7c8830939ae14e6434a925dd1179428158c2761482eb8a8d8a3699f
yoloe-v8s-seg|yoloe-v8s-seg.pt|https://github.com/ultralytics/assets/releases/download/v8.4.0/yoloe-v8s-seg.pt|unknown
yoloe-v8m-seg|yoloe-v8m-seg.pt|https://github.com/ultralytics/assets/releases/download/v8.4.0/yoloe-v8m-seg.pt|unknown
yoloe-v8l-seg|yoloe-v8l-seg.pt|https://github.com/ultralytics/assets/releases/download/v8.4.0/yoloe-v8l-seg.pt|unknown
yoloe-26n-seg|yoloe-26n-seg.pt|https://github.com/ultralytics/assets/releases/download/v8.4.0/yoloe-26n-seg.pt|1741c1f8da3cea47e2c01829c334a50dc0b9bbd05e685b90a3ce84fae32c8c1b
yoloe-26s-seg|yoloe-26s-seg.pt|https://github.com/ultralytics/assets/releases/download/v8.4.0/yoloe-26s-seg.pt|48f24206bc8680d60cbbfa296b0140da849669b9515058b72f5a945142df0654
yoloe-26m-seg|yoloe-26m-seg.pt|https://github.com/ultralytics/assets/releases/download/v8.4.0/yoloe-26m-seg.pt|585f5ec9028fd358035da8d860c27c56be285a795cba2076fba536a4391c2c83
yoloe-26l-seg|yoloe-26l-seg.pt|https://github.com/ultralytics/assets/releases/download/v8.4.0/yoloe-26l-seg.pt|a612d2d505f24e14d87ec82d688b823b6cb600646664f16125ce6c84ce360da9
yoloe-26x-seg|yoloe-26x-seg.pt|https://github.com/ultralytics/assets/releases/download/v8.4.0/yoloe-26x-seg.pt|d08d390a08f98195f7c87807839fe4ff93a5491645fef1bc3bf0700efafdd639
mobileclip_blt|mobileclip_blt.ts|https://github.com/ultralytics/assets/releases/download/v8.4.0/mobileclip_blt.ts|a67804d1b0f07b8b9a20c1761ec0847f34660f5fa338ec70e8f3fce68ed95e54
mobileclip2_b|mobileclip2_b.ts|https://github.com/ultralytics/assets/releases/download/v8.4.0/mobileclip2_b.ts|35d7f213e4d75f38514e4656ad3cb91158bd33e3805d8ac349f23b186f66982f
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
  NAME           one of (see weights/README.md):
$(echo "$MODELS" | cut -d'|' -f1 | xargs | fold -s -w 96 | sed 's/^/                   /')
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
  line=$(echo "$MODELS" | awk -F'|' -v n="$name" '$1 == n' )  # exact name (names contain "." and "-")
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
