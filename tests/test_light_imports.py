"""The light commands import no deep-learning stack: `convert` (a real conversion), `evaluate`, `calibrate`, `report`
and every command's `--help` run in a fresh interpreter without torch or ultralytics (torch alone is ~1 s of
import, more than a whole conversion of a category)."""
from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from defect_vision.cli import COMMANDS

REPO = Path(__file__).resolve().parents[1]
HEAVY = ("torch", "torchvision", "ultralytics", "segment_anything", "open_clip", "onnxruntime", "openvino", "ray")

# runs one command in this fresh interpreter, then lists the modules it imported into argv[1]
DRIVER = """import json, sys
from defect_vision.cli import main
try:
    rc = main(sys.argv[2:])
except SystemExit as exc:  # argparse's --help
    rc = exc.code
with open(sys.argv[1], "w") as f:
    json.dump(sorted(sys.modules), f)
sys.exit(rc)
"""


def run_fresh(tmp_path: Path, *argv: str) -> tuple[subprocess.CompletedProcess, set[str]]:
    """(the finished process, the top-level packages it imported) of `defect-vision argv` in a fresh interpreter."""
    listing = tmp_path / "modules.json"
    r = subprocess.run([sys.executable, "-c", DRIVER, str(listing), *argv], cwd=tmp_path, capture_output=True,
                       text=True, timeout=300, env={"PATH": "/usr/bin:/bin", "YOLO_OFFLINE": "1", "MPLBACKEND": "Agg",
                                                    "HOME": str(tmp_path), "PYTHONPATH": str(REPO)})
    modules = set(json.loads(listing.read_text())) if listing.exists() else set()
    return r, {m.split(".")[0] for m in modules}


def heavy_in(modules: set[str]) -> list[str]:
    return sorted(set(HEAVY) & modules)


@pytest.mark.parametrize("command", sorted(COMMANDS))  # train-sam, curve: MODEL_TYPES from models/checkpoints.py
def test_help_of_every_command_imports_no_torch(tmp_path, command):
    r, modules = run_fresh(tmp_path, command, "--help")
    assert r.returncode == 0, r.stderr
    assert "--help" in r.stdout and r.stdout.startswith(f"usage: defect-vision {command}")
    assert heavy_in(modules) == [], f"{command} --help imported {heavy_in(modules)}"


def test_top_level_help_and_version_import_no_torch(tmp_path):
    for argv in (["--help"], ["--version"]):
        r, modules = run_fresh(tmp_path, *argv)
        assert r.returncode == 0 and r.stdout.strip(), r.stderr
        assert heavy_in(modules) == [] and "numpy" not in modules


def test_a_real_conversion_imports_no_torch(tmp_path, synthetic_root):
    out = tmp_path / "datasets"
    r, modules = run_fresh(tmp_path, "convert", "--category", "toy_wood", "--root", str(synthetic_root),
                           "--out", str(out), "--rle", "--no-progress")
    assert r.returncode == 0, r.stderr
    assert r.stdout.startswith("coco+yolo+voc+sam toy_wood: ")
    coco = json.loads((out / "coco" / "toy_wood" / "instances_test.json").read_text())
    assert coco["images"] and coco["annotations"]
    assert (out / "yolo" / "toy_wood" / "data.yaml").is_file() and (out / "voc" / "toy_wood").is_dir()
    assert heavy_in(modules) == [], f"convert imported {heavy_in(modules)}"
    assert "matplotlib" not in modules and "sklearn" not in modules


def _predictions_from(gt_path: Path, out: Path, score: float) -> Path:
    """The ground truth's own instances as COCO results (RLE masks), each at `score`."""
    gt = json.loads(gt_path.read_text())
    preds = [{"image_id": a["image_id"], "category_id": a["category_id"], "bbox": a["bbox"], "score": score,
              "segmentation": a["segmentation"]} for a in gt["annotations"]]
    out.write_text(json.dumps(preds))
    return out


def test_evaluate_and_calibrate_on_a_conversion_import_no_torch(tmp_path, synthetic_root):
    r, _ = run_fresh(tmp_path, "convert", "--category", "toy_wood", "--root", str(synthetic_root),
                     "--out", str(tmp_path / "datasets"), "--formats", "coco", "--rle", "--no-progress")
    assert r.returncode == 0, r.stderr
    coco = tmp_path / "datasets" / "coco" / "toy_wood"
    val_pred = _predictions_from(coco / "instances_val.json", tmp_path / "val_pred.json", 0.75)
    test_pred = _predictions_from(coco / "instances_test.json", tmp_path / "test_pred.json", 0.75)

    r, modules = run_fresh(tmp_path, "calibrate", "--gt", str(coco / "instances_val.json"), "--pred", str(val_pred),
                           "--out", str(tmp_path / "thresholds.json"))
    assert r.returncode == 0, r.stderr
    thresholds = json.loads((tmp_path / "thresholds.json").read_text())
    assert set(thresholds["thresholds"].values()) <= {0.75, 0.25}  # perfect at 0.75; classes absent from val: default
    assert heavy_in(modules) == [], f"calibrate imported {heavy_in(modules)}"
    assert {"matplotlib", "sklearn", "cv2"}.isdisjoint(modules), "calibrate imported a library it does not use"

    r, modules = run_fresh(tmp_path, "evaluate", "--gt", str(coco / "instances_test.json"), "--pred", str(test_pred),
                           "--out", str(tmp_path / "eval"), "--val-gt", str(coco / "instances_val.json"),
                           "--val-pred", str(val_pred))
    assert r.returncode == 0, r.stderr
    metrics = json.loads((tmp_path / "eval" / "metrics.json").read_text())
    assert metrics["mask_iou"]["mean_instance"] == pytest.approx(1.0)
    assert any((tmp_path / "eval").glob("*.png"))  # the plots were drawn (matplotlib is allowed here)
    assert heavy_in(modules) == [], f"evaluate imported {heavy_in(modules)}"


def test_report_imports_no_torch(tmp_path):
    from test_report_html import make_run

    run, gt_path = make_run(tmp_path)
    r, modules = run_fresh(tmp_path, "report", "--run", str(run), "--gt", str(gt_path), "--top-k", "1")
    assert r.returncode == 0, r.stderr
    page = (run / "report" / "index.html").read_text()
    assert "test/hole/000.png" in page
    assert heavy_in(modules) == [], f"report imported {heavy_in(modules)}"


def test_devices_imports_torch_only_when_a_device_is_asked_for(tmp_path):
    code = ("import sys\n"
            "from defect_vision.devices import COUNT, DeviceError, Timings, cpu_threads, timed\n"
            "t = Timings()\n"
            "with timed(t, 'write'):\n"
            "    pass\n"
            "assert 'torch' not in sys.modules and cpu_threads() >= 1 and t.as_dict()['write'] >= 0\n"
            "from defect_vision.devices import HALF, resolve_device\n"
            "assert str(HALF) == 'torch.float16' and str(resolve_device('cpu')) == 'cpu'\n"
            "print('ok')\n")
    r = subprocess.run([sys.executable, "-c", code], cwd=tmp_path, capture_output=True, text=True, timeout=300)
    assert r.returncode == 0 and r.stdout.strip() == "ok", r.stderr
