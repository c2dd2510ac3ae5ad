"""scripts/bench_models.py on its smallest settings (--smoke: vit_tiny and mobile_sam_test, 1 image of 256 px,
1 repeat, torch and onnxruntime): every family and backend has its row, every number is measured (> 0)."""
from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


def tables(text: str) -> dict[str, list[dict[str, str]]]:
    """The markdown tables of the output, by the first column's header: rows as {header: cell}."""
    found, lines = {}, text.splitlines()
    for i, line in enumerate(lines):
        if line.startswith("| ") and i + 1 < len(lines) and lines[i + 1].startswith("|---"):
            heads = [c.strip() for c in line.strip("|").split("|")]
            rows = []
            for row in lines[i + 2:]:
                if not row.startswith("|"):
                    break
                rows.append(dict(zip(heads, (c.strip() for c in row.strip("|").split("|")))))
            found[heads[0]] = rows
    return found


@pytest.fixture(scope="module")
def smoke(tmp_path_factory) -> str:
    pytest.importorskip("onnxruntime")
    work = tmp_path_factory.mktemp("bench_models")
    r = subprocess.run([sys.executable, str(ROOT / "scripts" / "bench_models.py"), "--smoke", "--work", str(work)],
                       check=False, capture_output=True, text=True, timeout=600, cwd=ROOT,
                       env={**os.environ, "YOLO_OFFLINE": "1", "MPLBACKEND": "Agg"})
    assert r.returncode == 0, r.stderr[-3000:]
    return r.stdout


def test_segmenter_rows_per_family_and_backend_with_measured_numbers(smoke):
    rows = tables(smoke)["segmenter"]
    assert [(r["segmenter"], r["backend"]) for r in rows] == [
        ("vit_tiny", "torch"), ("vit_tiny", "onnxruntime"), ("mobile_sam_test", "torch"), ("mobile_sam_test", "onnxruntime")]
    assert list(rows[0]) == ["segmenter", "params (M)", "backend", "encoder ms / image", "decoder ms / box", "path",
                             "end-to-end img/s (process, loading counted)", "img/s in the run"]
    for r in rows:
        numbers = [float(r[k]) for k in ("params (M)", "encoder ms / image", "decoder ms / box",
                                         "end-to-end img/s (process, loading counted)", "img/s in the run")]
        assert all(n > 0 for n in numbers), r
        # the in-run rate leaves out interpreter start and model loading, which the process rate counts
        assert float(r["img/s in the run"]) > float(r["end-to-end img/s (process, loading counted)"])
    assert {r["path"] for r in rows} == {"vit_tiny + yolov8n-worldv2", "mobile_sam_test + yoloe-11n-seg"}
    params = {r["segmenter"]: float(r["params (M)"]) for r in rows}
    assert params == pytest.approx({"vit_tiny": 4.9, "mobile_sam_test": 6.5}, abs=0.1)


def test_detector_rows_and_the_device_is_named(smoke):
    rows = tables(smoke)["detector"]
    assert [(r["detector"], r["backend"]) for r in rows] == [
        ("yolov8n-worldv2", "torch"), ("yolov8n-worldv2", "onnxruntime"), ("yoloe-11n-seg", "torch"),
        ("yoloe-11n-seg", "onnxruntime")]
    assert all(float(r["params (M)"]) > 1 and float(r["ms / image @ 320"]) > 0 for r in rows)
    assert "## Models on CPU " in smoke and "1 images of 256 px, 5 boxes each" in smoke


def test_ratio_rows_against_the_vit_path_with_their_target(smoke):
    rows = tables(smoke)["ratio (end-to-end img/s)"]
    assert [r["ratio (end-to-end img/s)"] for r in rows] == [
        "light exported vs ViT-B path (process, loading counted)", "light exported vs ViT-B path (in the run)"]
    for r in rows:
        assert r["light path"] == "mobile_sam_test + yoloe-11n-seg, onnxruntime" and r["target"] == "5x"
        assert float(r["value"].rstrip("x")) > 0 and r["met"] in ("yes", "NO")
