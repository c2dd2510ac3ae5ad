"""Label Studio's JSON export (`--format labelstudio --root IMAGE_DIR --annotations EXPORT.json`): a list of tasks,
`data.image` an upload or local-files URL (/data/upload/3/1a2b3c4d-x.png, /data/local-files/?d=a/x.png) found under
--root by its path or base name, `annotations[].result[]` with `polygonlabels` (points in percent of
original_width/height), `brushlabels` (Label Studio's brush RLE, decoded by label-studio-converter) and `rectanglelabels`
(percent x, y, width, height, rotation in degrees about the top-left corner: box-only). A task's first annotation
not cancelled is read; a task with none, its first prediction (pre-annotations), said in one warning line."""
from __future__ import annotations

import math
from pathlib import Path

from defect_vision.data.images import IMAGE_SUFFIXES
from defect_vision.data.labelled import ImageFinder, Notes, labelled_sample
from defect_vision.data.samples import Samples, normalise_label, note_lines
from defect_vision.data.shapes import Shape
from defect_vision.errors import DatasetError
from defect_vision.io import read_json

LAYOUT = "--annotations EXPORT.json (Label Studio JSON: a list of tasks)"
LABEL_KEYS = {"polygonlabels": "polygon", "brushlabels": "brush", "rectanglelabels": "box", "labels": None}


def looks_like(root: Path) -> bool:
    """Never detected from a folder alone (Label Studio's JSON export has no fixed name): --annotations says it."""
    return False


def image_name(task: dict, where: str) -> str:
    """The task's image: data['image'], else its one value naming an image file or URL."""
    data = task.get("data") or {}
    if isinstance(data.get("image"), str):
        return data["image"]
    found = [v for v in data.values() if isinstance(v, str) and Path(v.split("?")[0]).suffix.lower() in IMAGE_SUFFIXES
             or isinstance(v, str) and "local-files" in v]
    if len(found) != 1:
        raise DatasetError(f"{where}: no data.image (and {len(found)} other image-like values in data)")
    return found[0]


def rectangle_box(v: dict, width: int, height: int) -> tuple[float, float, float, float]:
    """The pixel box (x, y, w, h) around a percent rectangle turned by `rotation` degrees about its top-left corner."""
    x, y = v["x"] * width / 100, v["y"] * height / 100
    w, h = v["width"] * width / 100, v["height"] * height / 100
    a = math.radians(float(v.get("rotation", 0) or 0))
    xs = [x + dx * math.cos(a) - dy * math.sin(a) for dx, dy in ((0, 0), (w, 0), (w, h), (0, h))]
    ys = [y + dx * math.sin(a) + dy * math.cos(a) for dx, dy in ((0, 0), (w, 0), (w, h), (0, h))]
    return min(xs), min(ys), max(xs) - min(xs), max(ys) - min(ys)


def result_shape(r: dict, where: str, notes: Notes) -> tuple[Shape | None, tuple[int, int] | None]:
    """(shape, (height, width)) of one result; (None, None) for results that are not labelled regions."""
    v = r.get("value") or {}
    key = next((k for k in LABEL_KEYS if k in v), None)
    if key is None:
        if r.get("type", "").lower() in ("polygon", "brush", "rectangle", "keypointlabels", "ellipselabels"):
            notes.add("regions without a label or of a kind not read (keypoints, ellipses; skipped)", where)
        return None, None
    labels = v[key]
    if not labels:
        notes.add("regions without a label (skipped)", where)
        return None, None
    if len(labels) > 1:
        notes.add("regions with several labels (the first kept)", where)
    width, height = int(r["original_width"]), int(r["original_height"])
    kind = LABEL_KEYS[key] or ("polygon" if "points" in v else "brush" if "rle" in v else
                               "box" if all(k in v for k in ("x", "y", "width", "height")) else None)
    category = normalise_label(labels[0])
    if kind == "polygon":
        ring = [c for x, y in v["points"] for c in (x * width / 100, y * height / 100)]
        return Shape(category, "polygon", [ring], where), (height, width)
    if kind == "brush":
        if v.get("format", "rle") != "rle":
            raise DatasetError(f"{where}: brush format {v.get('format')!r} (only rle is read)")
        return Shape(category, "brush", v["rle"], where), (height, width)
    if kind == "box":
        return Shape(category, "box", rectangle_box(v, width, height), where), (height, width)
    notes.add("regions of a kind not read (skipped)", where)
    return None, None


def chosen_results(task: dict, where: str, notes: Notes) -> list[dict]:
    """The results of the task's first annotation not cancelled; without one, of its first prediction."""
    done = [a for a in task.get("annotations") or [] if not a.get("was_cancelled")]
    if len(done) > 1:
        notes.add("tasks with several annotations (the first kept)", where)
    if done:
        return done[0].get("result") or []
    predictions = task.get("predictions") or []
    if predictions:
        notes.add("tasks labelled only by a model's predictions (read as labels)", where)
        return predictions[0].get("result") or []
    return []


def samples(source) -> Samples:
    root = Path(source.root)
    if not root.is_dir():
        raise DatasetError(f"{root}: no such folder (the image folder, --root)")
    if not source.annotations:
        raise DatasetError("--format labelstudio: needs --annotations EXPORT.json (Label Studio's JSON export)")
    path = Path(source.annotations)
    tasks = read_json(path, "Label Studio JSON export")
    if not isinstance(tasks, list):
        raise DatasetError(f"{path}: not a Label Studio JSON export (expected a list of tasks; the JSON-MIN and COCO "
                           "exports are other formats: COCO reads with --format coco)")
    finder, notes, out = ImageFinder(root), Notes(source.strict), []
    for i, task in enumerate(tasks):
        where = f"{path.name} task {task.get('id', i) if isinstance(task, dict) else i}"
        try:
            shapes, sizes = [], set()
            for k, r in enumerate(chosen_results(task, where, notes)):
                shape, size = result_shape(r, f"{where} result {r.get('id', k)}", notes)
                if shape is not None:
                    shapes.append(shape)
                    sizes.add(size)
            if len(sizes) > 1:
                raise DatasetError(f"{where}: results disagree on the image size ({sorted(sizes)})")
            out.append(labelled_sample(finder, image_name(task, where), shapes, path, next(iter(sizes), None)))
        except (KeyError, TypeError, ValueError, AttributeError) as exc:
            raise DatasetError(f"{where}: not a Label Studio task (missing or bad field {exc})") from None
    return Samples(out, note_lines(notes))
