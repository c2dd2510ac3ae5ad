#!/usr/bin/env bash
# Create or reuse .venv/ in the repo root and install the project into it (editable, with the test, export, openvino,
# distributed and labelling extras, and the labelling tools' libraries the tests compare against).
# Re-installs only when pyproject.toml changed since the last install.
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python3}
if [ ! -x .venv/bin/python ]; then
  echo "setup: creating .venv with $($PY --version)" >&2
  "$PY" -m venv .venv
fi
stamp=.venv/.defect-vision-installed
want=$(sha256sum pyproject.toml | cut -d' ' -f1)
if [ ! -f "$stamp" ] || [ "$(cat "$stamp")" != "$want" ]; then
  echo "setup: installing defect-vision and its dependencies into .venv (first time: a few minutes, ~6 GB for torch)" >&2
  .venv/bin/python -m pip install --quiet --upgrade pip
  # sam2 (a test extra: the SAM 2.1 reference predictor) would compile CUDA kernels on a GPU machine: not needed
  SAM2_BUILD_CUDA=0 .venv/bin/python -m pip install --quiet -e ".[dev,export,openvino,distributed,labelling]"
  # The labelling tools' own libraries, as references for the tests only: datumaro (CVAT's importers/exporters) and
  # label-studio-sdk (its LabelInterface) declare opencv-python-headless (a second cv2 beside opencv-python) and older
  # numpy pins, so their code goes in without dependencies, then the pure-Python modules they import.
  .venv/bin/python -m pip install --quiet --no-deps "datumaro==1.13.12" "label-studio-sdk==2.1.2"
  .venv/bin/python -m pip install --quiet -c scripts/test-constraints.txt imagesize json-stream json-stream-rs-tokenizer \
    ruamel.yaml cachetools ujson lxml nltk "pyjwt>=2.13,<2.14" pydantic typer xmljson appdirs jsf
  # anomalib (train-anomaly, predict --anomaly; the anomaly extra of pyproject.toml names the rest) also requires
  # opencv-python-headless: its code without dependencies, the modules it imports come with the extra
  .venv/bin/python -m pip install --quiet --no-deps "anomalib==2.7.0"
  .venv/bin/python -m pip install --quiet -c scripts/test-constraints.txt -e ".[anomaly]"
  echo "$want" > "$stamp"
fi
