"""CVAT for images 1.1 XML (`--format cvat --root IMAGE_DIR --annotations annotations.xml`): per `<image name width
height>` its `<polygon points="x,y;...">`, `<mask rle left top width height>` (CVAT's RLE), `<ellipse>` and
`<box xtl ytl xbr ybr rotation>` (box-only) shapes, each one instance; labels from `<meta>`'s label list (a shape of
another label is skipped with a warning). Polylines, points, cuboids, skeletons, tags and `<track>`s (video) are
not regions: skipped with one warning line. Streams the XML (iterparse). --benchmark-split: the images' `subset`
(Train / Validation / Test)."""
from __future__ import annotations

import math
import xml.etree.ElementTree as ET
from pathlib import Path

import numpy as np

from defect_vision.data.labelled import ImageFinder, Notes, labelled_sample
from defect_vision.data.samples import Samples, normalise_label, note_lines
from defect_vision.data.shapes import Shape
from defect_vision.errors import DatasetError

LAYOUT = "--annotations annotations.xml (CVAT for images 1.1), or <root>/annotations.xml"
NOT_REGIONS = ("polyline", "points", "cuboid", "skeleton", "tag")
SUBSETS = {"train": "train", "training": "train", "validation": "val", "valid": "val", "val": "val", "test": "test"}


def looks_like(root: Path) -> bool:
    return (root / "annotations.xml").is_file()


def _pairs(points: str) -> list[float]:
    return [float(c) for pt in points.split(";") if pt.strip() for c in pt.split(",")]


def rotated_bounds(cx: float, cy: float, corners: list[tuple[float, float]], degrees: float) -> tuple:
    """The box (x, y, w, h) around corners (relative to the centre) turned by `degrees` about (cx, cy)."""
    a = math.radians(degrees)
    xs = [cx + dx * math.cos(a) - dy * math.sin(a) for dx, dy in corners]
    ys = [cy + dx * math.sin(a) + dy * math.cos(a) for dx, dy in corners]
    return min(xs), min(ys), max(xs) - min(xs), max(ys) - min(ys)


def element_shape(el: ET.Element, category: str, where: str) -> Shape | None:
    """The shape of one element of an <image>; None for elements that are not regions."""
    a = el.attrib
    if el.tag == "polygon":
        return Shape(category, "polygon", [_pairs(a["points"])], where)
    if el.tag == "box":
        x0, y0, x1, y1 = (float(a[k]) for k in ("xtl", "ytl", "xbr", "ybr"))
        w, h = x1 - x0, y1 - y0
        corners = [(-w / 2, -h / 2), (w / 2, -h / 2), (w / 2, h / 2), (-w / 2, h / 2)]
        return Shape(category, "box", rotated_bounds(x0 + w / 2, y0 + h / 2, corners, float(a.get("rotation", 0))), where)
    if el.tag == "mask":
        counts = [int(v) for v in a["rle"].split(",")]
        return Shape(category, "cvat_mask", (counts, *(int(float(a[k])) for k in ("left", "top", "width", "height"))),
                     where)
    if el.tag == "ellipse":
        cx, cy, rx, ry = (float(a[k]) for k in ("cx", "cy", "rx", "ry"))
        t = np.linspace(0, 2 * np.pi, 64, endpoint=False)
        r = math.radians(float(a.get("rotation", 0)))
        x, y = rx * np.cos(t), ry * np.sin(t)
        ring = np.stack([cx + x * math.cos(r) - y * math.sin(r), cy + x * math.sin(r) + y * math.cos(r)], 1)
        return Shape(category, "polygon", [ring.ravel().tolist()], where)
    return None


def samples(source) -> Samples:
    root = Path(source.root)
    if not root.is_dir():
        raise DatasetError(f"{root}: no such folder (the image folder, --root)")
    path = Path(source.annotations) if source.annotations else root / "annotations.xml"
    if not path.is_file():
        raise DatasetError(f"{path}: no such CVAT XML (pass --annotations annotations.xml)")
    finder, notes, out, labels = ImageFinder(root), Notes(source.strict), [], None
    try:
        for _, el in ET.iterparse(path, events=("end",)):
            if el.tag == "labels" and labels is None:
                labels = {normalise_label(lab.findtext("name")) for lab in el.findall("label")
                          if lab.findtext("name")} or None
            elif el.tag == "track":
                notes.add("tracks (video annotations; skipped)", f"{path.name} track {el.get('id')}")
                el.clear()
            elif el.tag == "image":
                name, where = el.attrib["name"], f"{path.name} image {el.get('id')}"
                shapes = []
                for k, child in enumerate(el):
                    at = f"{where} {child.tag} {k}"
                    if child.tag in NOT_REGIONS:
                        notes.add("shapes that are not regions (polylines, points, cuboids, skeletons, tags; "
                                  "skipped)", at)
                        continue
                    category = normalise_label(child.get("label", ""))
                    if labels is not None and category not in labels:
                        notes.add("shapes of a label the XML's meta does not list (skipped)", at)
                        continue
                    shape = element_shape(child, category, at)
                    if shape is not None:
                        shapes.append(shape)
                split = SUBSETS.get((el.get("subset") or "").lower()) if source.benchmark_split else None
                size = (int(el.attrib["height"]), int(el.attrib["width"])) if "height" in el.attrib else None
                out.append(labelled_sample(finder, name, shapes, path, size, split))
                el.clear()
    except ET.ParseError as exc:
        raise DatasetError(f"{path}: not valid XML ({exc})") from None
    except (KeyError, ValueError) as exc:
        raise DatasetError(f"{path}: not a CVAT for images XML (missing or bad attribute {exc})") from None
    if not out:
        raise DatasetError(f"{path}: no <image> elements (CVAT for images 1.1 XML; video exports use tracks)")
    return Samples(out, note_lines(notes))
