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


def test_convert_help_imports_no_opencv_or_numpy(tmp_path):
    for argv in (["convert", "--help"], ["convert", "--formats", "nope"]):  # --help, and a flag error
        r, modules = run_fresh(tmp_path, *argv)
        assert r.returncode in (0, 2) and "--formats" in r.stdout + r.stderr
        assert {"cv2", "numpy", "PIL", "tqdm"}.isdisjoint(modules), f"{argv} imported {modules & {'cv2', 'numpy'}}"


def test_a_coco_conversion_imports_only_what_it_uses(tmp_path, synthetic_root):
    """No progress bars, PNG images and plain class names: no tqdm (nor its multiprocessing lock), PIL, yaml, nor
    the other formats' writers."""
    out = tmp_path / "datasets"
    r, modules = run_fresh(tmp_path, "convert", "--category", "toy_wood", "--root", str(synthetic_root),
                           "--out", str(out), "--formats", "coco", "--no-progress")
    assert r.returncode == 0, r.stderr
    assert (out / "coco" / "toy_wood" / "prompts.yaml").read_text().count("\n- ") >= 4
    assert {"tqdm", "multiprocessing", "PIL", "yaml", "ultralytics", "torch"}.isdisjoint(modules), \
        sorted({"tqdm", "multiprocessing", "PIL", "yaml"} & modules)
    listing = json.loads((tmp_path / "modules.json").read_text())
    assert not {"defect_vision.formats.yolo", "defect_vision.formats.voc", "defect_vision.formats.sam_prompts"} & set(listing)


def test_shapely_is_imported_only_for_a_component_with_holes(tmp_path):
    code = ("import sys\n"
            "import numpy as np\n"
            "from defect_vision.masks import component_polygons\n"
            "m = np.zeros((12, 12), bool); m[2:9, 2:10] = True\n"
            "assert component_polygons(m) == [[2.0, 2.0, 2.0, 9.0, 10.0, 9.0, 10.0, 2.0]], component_polygons(m)\n"
            "assert 'shapely' not in sys.modules\n"
            "m[4:6, 5:7] = False\n"
            "assert len(component_polygons(m)) == 2 and 'shapely' in sys.modules\n"
            "print('ok')\n")
    r = subprocess.run([sys.executable, "-c", code], cwd=tmp_path, capture_output=True, text=True, timeout=300,
                       env={"PATH": "/usr/bin:/bin", "PYTHONPATH": str(REPO)})
    assert r.returncode == 0 and r.stdout.strip() == "ok", r.stderr


def _png_chunk(cid: bytes, body: bytes) -> bytes:
    import struct
    import zlib

    return struct.pack(">I", len(body)) + cid + body + struct.pack(">I", zlib.crc32(body, zlib.crc32(cid)))


def _png_variants(tmp_path: Path) -> dict[str, Path]:
    """PNG files the header reader meets: plain ones (OpenCV's, with the usual ancillary chunks) and ones PIL must
    read (EXIF orientation, unusual chunks) or refuse (bad checksum, cut short, a JPEG named .png)."""
    import cv2
    import numpy as np

    rng = np.random.default_rng(0)
    base = {"gray": rng.integers(0, 255, (30, 50), np.uint8), "color": rng.integers(0, 255, (40, 20, 3), np.uint8),
            "deep": rng.integers(0, 65535, (7, 9), np.uint16)}
    exif_turned = (b"MM\x00*\x00\x00\x00\x08\x00\x01\x01\x12\x00\x03\x00\x00\x00\x01\x00\x06\x00\x00"
                   b"\x00\x00\x00\x00")  # big-endian TIFF header, one IFD entry: Orientation = 6 (90 degrees)
    files = {}
    for name, img in base.items():
        data = cv2.imencode(".png", img)[1].tobytes()
        head, rest = data[:33], data[33:]  # signature + IHDR, then the rest
        variants = {
            "": data,
            "_gama_phys_text": head + _png_chunk(b"gAMA", b"\x00\x00\xb1\x8f") + _png_chunk(b"pHYs", bytes(9))
            + _png_chunk(b"tEXt", b"Comment\x00made by a test") + rest,
            "_exif_chunk": head + _png_chunk(b"eXIf", exif_turned) + rest,
            "_exif_text": head + _png_chunk(b"tEXt", b"exif\x00" + exif_turned) + rest,
            "_short_gama": head + _png_chunk(b"gAMA", b"\x00") + rest,
            "_unknown_chunk": head + _png_chunk(b"zzZz", b"private") + rest,
            "_bad_crc": data[:29] + b"\x00\x00\x00\x00" + rest,
            "_no_iend": data[:-12],
            "_cut_in_header": data[:20],
            "_bad_filter": head[:28] + b"\x01" + head[29:] + rest,
        }
        for suffix, content in variants.items():
            files[name + suffix] = tmp_path / f"{name}{suffix}.png"
            files[name + suffix].write_bytes(content)
    files["jpeg_named_png"] = tmp_path / "jpeg_named_png.png"
    files["jpeg_named_png"].write_bytes(cv2.imencode(".jpg", base["color"])[1].tobytes())
    return files


def test_png_sizes_read_without_pil_match_pil(tmp_path):
    """image_size reads plain PNG headers itself (no PIL import) and leaves everything else to PIL: per file the
    same size, or the same error, as PIL's reading gives."""
    import warnings

    from defect_vision.data import images
    from defect_vision.errors import DatasetError

    def outcome(read):
        try:
            return read()
        except DatasetError as exc:
            return str(exc)
        except Exception as exc:  # noqa: BLE001 - what PIL raises beyond the errors image_size names
            return exc.__class__.__name__

    def by_pil(path: Path):
        def read():
            try:
                width, height, cut = images._pil_size(path)
            except (OSError, SyntaxError, ImportError) as exc:  # ImportError: PIL as ultralytics patches it
                raise DatasetError(f"{path}: not a readable image ({exc.__class__.__name__})") from None
            if cut:
                raise DatasetError(f"{path}: not a readable image (truncated PNG: no IEND chunk)")
            return height, width
        return read

    plain = set()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        for name, path in _png_variants(tmp_path).items():
            with open(path, "rb") as f:
                if images._plain_png_size(f) is not None:
                    plain.add(name)
            assert outcome(lambda: images.image_size(path)) == outcome(by_pil(path)), name
    # read here: the plain ones, and those cut short after their header (refused by the IEND check, as with PIL)
    assert plain == {f"{name}{suffix}" for name in ("gray", "color", "deep") for suffix in ("", "_gama_phys_text", "_no_iend")}
    assert images.image_size(tmp_path / "color_exif_chunk.png") == (20, 40)  # turned by its EXIF, through PIL
    assert images.image_size(tmp_path / "gray.png") == (30, 50)


def test_plain_prompts_yaml_is_what_yaml_writes():
    import random
    import string

    import yaml

    from defect_vision.formats.coco import plain_yaml

    rng = random.Random(0)
    letters = string.ascii_letters + string.digits + "_"
    tricky = ["yes", "No", "TRUE", "off", "On", "null", "NULL", "y", "n", "~", "", "1a", "_a", " a", "a ", "a  b",
              "x" * 61, "e1", "inf", ".nan", "a: b", "a #b", "-a", "é", "Yes please", "on_off", "metal contamination"]

    def word():
        if rng.random() < 0.2:
            return rng.choice(tricky)
        return " ".join("".join(rng.choice(letters) for _ in range(rng.randint(1, 10))) for _ in range(rng.randint(1, 5)))

    plain = 0
    for _ in range(3000):
        phrasings = {word(): [word() for _ in range(rng.randint(0, 3))] for _ in range(rng.randint(1, 4))}
        text = plain_yaml(phrasings)
        if text is not None:
            plain += 1
            assert text == yaml.safe_dump(phrasings, sort_keys=False, allow_unicode=True), phrasings
    assert plain > 200
    assert plain_yaml({"crack": ["crack"], "yes": ["yes"]}) is None
    assert plain_yaml({"metal_contamination": ["metal contamination", "metal bits"]}) == (
        "metal_contamination:\n- metal contamination\n- metal bits\n")
