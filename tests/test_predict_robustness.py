"""Prediction robustness (issue 18): OpenVINO's first calls from several workers at once, line-scan strips (an extreme
aspect ratio), folders of symlinked images, WebP images and folders of other files, and `export` onto a full disk.

Tiny random-init checkpoints (YOLO-World at 64 px, SAM vit_tiny) as in test_onnx.py."""
from __future__ import annotations

import errno
import json
import subprocess
import sys
import textwrap
from pathlib import Path

import cv2
import numpy as np
import pytest
from PIL import Image
from test_onnx import make_run

from defect_vision.cli import main
from defect_vision.data.images import read_image
from defect_vision.errors import DatasetError
from defect_vision.inference.sources import resolve_source
from defect_vision.masks import decode_rle

NAMES = ["hole", "stain"]


@pytest.fixture(scope="module", autouse=True)
def one_torch_thread():
    """2 shared cores: one intra-op thread is several times faster for these tiny torch models."""
    from defect_vision.devices import intra_op_threads

    with intra_op_threads(1):
        yield


@pytest.fixture(scope="module")
def run(tmp_path_factory) -> Path:
    """A run whose random detector finds something on every image at --conf 0.01."""
    return make_run(tmp_path_factory.mktemp("runs") / "toy", NAMES, None)


@pytest.fixture(scope="module")
def exported(run) -> Path:
    pytest.importorskip("onnx", reason="onnx not installed (pip install 'defect-vision[export]')")
    pytest.importorskip("onnxruntime", reason="onnxruntime not installed (pip install 'defect-vision[export]')")
    assert main(["export", "--run", str(run)]) == 0
    return run / "onnx"


def noise(h: int, w: int, seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 256, (h, w, 3), dtype=np.uint8)


def predict(run: Path, source: Path | str, out: Path, *extra: str) -> tuple[list[dict], list[dict]]:
    """(predictions.json, image_ids.json) of a predict run that must succeed."""
    assert main(["predict", "--run", str(run), "--source", str(source), "--conf", "0.01", "--max-det", "3",
                 "--out", str(out), "--quiet", *extra]) == 0
    return json.loads((out / "predictions.json").read_text()), json.loads((out / "image_ids.json").read_text())


# ---------------------------------------------------------------- item 12: OpenVINO's first calls at once

FIRST_CALLS = textwrap.dedent("""
    import sys, threading
    import numpy as np
    from pathlib import Path
    from defect_vision.inference.openvino_runtime import openvino_session

    n = int(sys.argv[2])
    sess = openvino_session(Path(sys.argv[1]), 1, False, n)
    barrier = threading.Barrier(n)
    out = []

    def first_call():
        barrier.wait()
        out.append(sess.run(None, {"x": np.full((1, 3, 8, 8), -1.0, np.float32)})[0])

    threads = [threading.Thread(target=first_call) for _ in range(n)]
    [t.start() for t in threads]
    [t.join() for t in threads]
    assert len(out) == n and all(o.shape == (1, 3, 8, 8) and not o.any() for o in out)
    print("ok")
""")


def test_openvino_first_calls_from_many_workers_at_once_do_not_deadlock(tmp_path):
    """8 threads make their first infer at one moment, in fresh processes (the deadlock is in a one-time set-up of
    OpenVINO's Python module: 11 of 30 processes hung before the fix); a hung process is killed by the timeout."""
    pytest.importorskip("openvino", reason="openvino not installed (pip install 'defect-vision[openvino]')")
    onnx = pytest.importorskip("onnx", reason="onnx not installed (pip install 'defect-vision[export]')")
    from onnx import TensorProto, helper

    x = helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 3, 8, 8])
    y = helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 3, 8, 8])
    model = helper.make_model(helper.make_graph([helper.make_node("Relu", ["x"], ["y"])], "relu", [x], [y]),
                              opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    onnx.save(model, str(tmp_path / "relu.onnx"))
    script = tmp_path / "first_calls.py"
    script.write_text(FIRST_CALLS)
    hung, failed = 0, []
    for _ in range(12):
        try:
            res = subprocess.run([sys.executable, str(script), str(tmp_path / "relu.onnx"), "8"], capture_output=True,
                                 text=True, timeout=60, check=False)
        except subprocess.TimeoutExpired:
            hung += 1
            continue
        if res.returncode != 0 or res.stdout.strip() != "ok":
            failed.append(res.stderr[-500:])
    assert hung == 0 and not failed, (hung, failed)


# ---------------------------------------------------------------- item 13: line-scan strips

def test_sam_resize_never_gives_a_zero_pixel_side():
    from segment_anything.utils.transforms import ResizeLongestSide as Official

    from defect_vision.models.sam import ResizeLongestSide

    assert Official.get_preprocess_shape(1, 5000, 1024) == (0, 1024)  # why a strip failed
    assert ResizeLongestSide.get_preprocess_shape(1, 5000, 1024) == (1, 1024)
    assert ResizeLongestSide.get_preprocess_shape(5000, 1, 256) == (256, 1)
    for h, w in [(900, 900), (1, 1), (480, 640), (3, 4000), (7, 2000), (1024, 3)]:  # unchanged wherever SAM's is > 0
        official = Official.get_preprocess_shape(h, w, 1024)
        if min(official) > 0:
            assert ResizeLongestSide.get_preprocess_shape(h, w, 1024) == official
    strip = ResizeLongestSide(256).apply_image(noise(1, 5000))
    assert strip.shape == (1, 256, 3)


@pytest.fixture(scope="module")
def strips(tmp_path_factory) -> Path:
    """A folder with an ordinary image and two line-scan strips (5000x1 and 1x5000)."""
    d = tmp_path_factory.mktemp("strips")
    cv2.imwrite(str(d / "a_ok.png"), noise(96, 120))
    cv2.imwrite(str(d / "b_wide.png"), noise(1, 5000, 1))
    cv2.imwrite(str(d / "c_tall.png"), noise(5000, 1, 2))
    return d


def check_strips(preds: list[dict], ids: list[dict], out: Path) -> None:
    sizes = {1: (96, 120), 2: (1, 5000), 3: (5000, 1)}
    assert [(i["id"], i["file_name"], (i["height"], i["width"])) for i in ids] == [
        (1, "a_ok.png", sizes[1]), (2, "b_wide.png", sizes[2]), (3, "c_tall.png", sizes[3])]
    assert {p["image_id"] for p in preds} == {1, 2, 3}  # every image predicted: the strips too
    for p in preds:
        assert tuple(p["segmentation"]["size"]) == sizes[p["image_id"]]
        assert decode_rle(p["segmentation"]).shape == sizes[p["image_id"]]
    for name, image_id in (("a_ok", 1), ("b_wide", 2), ("c_tall", 3)):
        assert cv2.imread(str(out / "masks" / f"{name}.png"), cv2.IMREAD_UNCHANGED).shape[:2] == sizes[image_id]
        assert cv2.imread(str(out / "overlays" / f"{name}.png")).shape[:2] == sizes[image_id]


def test_line_scan_strips_are_predicted_by_torch(run, strips, tmp_path):
    preds, ids = predict(run, strips, tmp_path / "out", "--save-overlays")
    check_strips(preds, ids, tmp_path / "out")


@pytest.mark.parametrize("backend", ["onnxruntime", "openvino"])
def test_line_scan_strips_are_predicted_by_the_exported_backends(exported, run, strips, tmp_path, backend):
    pytest.importorskip(backend)
    preds, ids = predict(run, strips, tmp_path / "out", "--save-overlays", "--backend", backend, "--onnx", str(exported))
    check_strips(preds, ids, tmp_path / "out")


# ---------------------------------------------------------------- item 14: symlinked images

@pytest.fixture
def linked(tmp_path) -> tuple[Path, Path]:
    """(category folder with the real images, a YOLO-export-like folder of links to them under other names)."""
    category = tmp_path / "category" / "test"
    (category / "hole").mkdir(parents=True)
    cv2.imwrite(str(category / "hole" / "000.png"), noise(64, 80))
    cv2.imwrite(str(category / "good.png"), noise(64, 80, 1))
    links = tmp_path / "export" / "images"
    (links / "test").mkdir(parents=True)
    (links / "test" / "test_hole_000.png").symlink_to(category / "hole" / "000.png")
    (links / "z_good.png").symlink_to(category / "good.png")
    return category, links


def test_a_folder_of_symlinked_images_is_named_by_the_links(linked):
    category, links = linked
    src = resolve_source(links)
    assert [(i.id, i.file_name, i.path) for i in src.images] == [
        (1, "test/test_hole_000.png", (category / "hole" / "000.png").resolve()),
        (2, "z_good.png", (category / "good.png").resolve())]
    assert src.names == {1: "test_test_hole_000", 2: "z_good"}
    # the files the links point to are inputs too: an output folder holding them is refused
    assert set(src.inputs()) == {links, (category / "hole" / "000.png").resolve(), (category / "good.png").resolve()}
    glob_src = resolve_source(str(links / "**" / "*.png"))
    assert [(i.file_name, i.path) for i in glob_src.images] == [(i.file_name, i.path) for i in src.images]
    one = resolve_source(links / "z_good.png")
    assert [(i.file_name, i.path) for i in one.images] == [("z_good.png", (category / "good.png").resolve())]


def test_predict_on_a_folder_of_symlinked_images(run, linked, tmp_path, capsys):
    category, links = linked
    preds, ids = predict(run, links, tmp_path / "out")
    assert [(i["id"], i["file_name"], i["path"]) for i in ids] == [
        (1, "test/test_hole_000.png", str((category / "hole" / "000.png").resolve())),
        (2, "z_good.png", str((category / "good.png").resolve()))]
    assert sorted(p.name for p in (tmp_path / "out" / "masks").iterdir()) == ["test_test_hole_000.png", "z_good.png"]
    assert {p["image_id"] for p in preds} == {1, 2}
    # --out onto the folder the links point to is refused, --force or not: the images stay
    before = sorted(p.relative_to(category) for p in category.rglob("*"))
    assert main(["predict", "--run", str(run), "--source", str(links), "--out", str(category.parent), "--force"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert err[-1].startswith(f"error: {category.parent}: output folder holds the input ")
    assert sorted(p.relative_to(category) for p in category.rglob("*")) == before


# ---------------------------------------------------------------- item 16: WebP, and folders without images

def test_webp_images_are_read_predicted_and_written(run, tmp_path):
    d = tmp_path / "webp"
    d.mkdir()
    pixels = noise(48, 72, 3)
    Image.fromarray(pixels).save(d / "a.webp", lossless=True)
    cv2.imwrite(str(d / "b.png"), noise(48, 72, 4))
    assert np.array_equal(read_image(d / "a.webp"), pixels)
    assert [i.file_name for i in resolve_source(d).images] == ["a.webp", "b.png"]
    assert [i.file_name for i in resolve_source(str(d / "*.webp")).images] == ["a.webp"]
    assert [i.file_name for i in resolve_source(d / "a.webp").images] == ["a.webp"]
    preds, ids = predict(run, d, tmp_path / "out", "--save-overlays")
    assert [(i["file_name"], i["height"], i["width"]) for i in ids] == [("a.webp", 48, 72), ("b.png", 48, 72)]
    assert {p["image_id"] for p in preds} == {1, 2}
    for sub in ("masks", "overlays"):
        assert sorted(p.name for p in (tmp_path / "out" / sub).iterdir()) == ["a.png", "b.png"]
    assert cv2.imread(str(tmp_path / "out" / "overlays" / "a.png")).shape == (48, 72, 3)


def test_a_folder_without_images_says_which_suffixes_it_holds(tmp_path):
    d = tmp_path / "other"
    (d / "sub").mkdir(parents=True)
    Image.fromarray(noise(8, 8)).save(d / "a.gif")
    (d / "sub" / "b.GIF").write_bytes((d / "a.gif").read_bytes())
    (d / "notes.txt").write_text("x")
    (d / "README").write_text("x")
    known = ".bmp, .jpeg, .jpg, .png, .tif, .tiff, .webp"
    with pytest.raises(DatasetError) as err:
        resolve_source(d)
    assert str(err.value) == (f"{d}: no images ({known}) in this folder; found 4 file(s) of other kinds "
                              "(.gif, .txt, no suffix)")
    with pytest.raises(DatasetError) as err:
        resolve_source(str(d / "*"))
    assert str(err.value) == (f"{d / '*'}: no images match this pattern ({known}); found 3 file(s) of other kinds "
                              "(.gif, .txt, no suffix)")
    (tmp_path / "empty").mkdir()
    with pytest.raises(DatasetError) as err:
        resolve_source(tmp_path / "empty")
    assert str(err.value) == f"{tmp_path / 'empty'}: no images ({known}) in this folder"


# ---------------------------------------------------------------- item 18: export onto a full disk

class FullDisk:
    """A file opened for writing on a full disk: part of the bytes land, then ENOSPC."""

    def __init__(self, path):
        self.f = open(path, "wb")  # noqa: SIM115 - closed by __exit__, as the real file would be

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.f.close()
        return False

    def write(self, data):
        self.f.write(bytes(data[: len(data) // 2]))
        raise OSError(errno.ENOSPC, "No space left on device")


@pytest.mark.parametrize("nth", [1, 2, 3])  # the detector, SAM's encoder, SAM's decoder
def test_export_onto_a_full_disk_names_the_output_and_keeps_nothing(run, exported, tmp_path, monkeypatch, capsys, nth):
    import torch.serialization

    real, writes = torch.serialization._open_file_like, []

    def open_file_like(f, mode):  # the ONNX writers (torch.onnx.export, also under ultralytics' exporter) open here
        if "w" in mode:
            writes.append(f)
            if len(writes) >= nth:
                return FullDisk(f)
        return real(f, mode)

    monkeypatch.setattr(torch.serialization, "_open_file_like", open_file_like)
    out = tmp_path / "onnx"
    assert main(["export", "--run", str(run), "--out", str(out)]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert err[-1] == (f"error: {out}: cannot write the ONNX export (No space left on device [errno 28]); "
                       "nothing was written"), err
    assert "best.pt" not in "\n".join(err) and "best.pth" not in "\n".join(err) and len(err) == 1, err
    assert len(writes) == nth and list(tmp_path.iterdir()) == []  # no temporary folder left behind
    # a previous export in that place stays as it was
    before = {p.name: p.read_bytes() for p in exported.iterdir()}
    writes.clear()
    assert main(["export", "--run", str(run), "--out", str(exported)]) == 2
    assert {p.name: p.read_bytes() for p in exported.iterdir()} == before
    assert [p.name for p in exported.parent.iterdir() if p.name.startswith(".onnx.")] == []
