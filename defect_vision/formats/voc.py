"""Records -> a Pascal VOC folder that standard readers load as is: JPEGImages/<stem>.<ext> (symlinks to the
images, or copies), Annotations/<stem>.xml with the same stems, ImageSets/Main/{train,val,test}.txt."""
from __future__ import annotations

import xml.etree.ElementTree as ET
from pathlib import Path

from defect_vision.data.records import Category, ImageRecord
from defect_vision.data.splits import SPLITS
from defect_vision.formats.yolo import flat_name, place_image


def voc_stem(rec: ImageRecord) -> str:
    """The stem of the image and its annotation: the category-relative path without suffix, '/' -> '_'
    (test_hole_003): MVTec stems repeat across defect folders."""
    return Path(flat_name(rec)).stem


def _sub(parent: ET.Element, tag: str, text: object | None = None) -> ET.Element:
    el = ET.SubElement(parent, tag)
    if text is not None:
        el.text = str(text)
    return el


def to_voc_xml(rec: ImageRecord, cat: Category) -> str:
    """VOC annotation of one image; boxes are 1-based inclusive (xmin = x + 1, xmax = x + w), as in VOC."""
    root = ET.Element("annotation")
    _sub(root, "folder", "JPEGImages")
    _sub(root, "filename", flat_name(rec))
    _sub(root, "path", str(rec.path))
    source = _sub(root, "source")
    _sub(source, "database", "MVTec AD")
    size = _sub(root, "size")
    _sub(size, "width", rec.width)
    _sub(size, "height", rec.height)
    _sub(size, "depth", 3)
    _sub(root, "segmented", 0)
    for inst in rec.instances:
        x, y, w, h = inst.bbox
        obj = _sub(root, "object")
        _sub(obj, "name", inst.category)
        _sub(obj, "pose", "Unspecified")
        _sub(obj, "truncated", 0)
        _sub(obj, "difficult", 0)
        box = _sub(obj, "bndbox")
        for tag, v in (("xmin", x + 1), ("ymin", y + 1), ("xmax", x + w), ("ymax", y + h)):
            _sub(box, tag, v)
    ET.indent(root)
    return ET.tostring(root, encoding="unicode") + "\n"


def parse_voc_boxes(xml_text: str) -> list[tuple[str, tuple[int, int, int, int]]]:
    """(name, COCO xywh box) of every object of a VOC XML: the inverse of to_voc_xml's box convention."""
    out = []
    for obj in ET.fromstring(xml_text).iter("object"):
        b = obj.find("bndbox")
        x0, y0, x1, y1 = (int(float(b.find(t).text)) for t in ("xmin", "ymin", "xmax", "ymax"))
        out.append((obj.find("name").text, (x0 - 1, y0 - 1, x1 - x0 + 1, y1 - y0 + 1)))
    return out


def write_voc(job, folder: Path, final: Path, config) -> None:
    """JPEGImages/, Annotations/ and ImageSets/Main/<split>.txt (the stems of each split)."""
    from defect_vision.formats.coco import records_of_split

    for sub in ("JPEGImages", "Annotations", "ImageSets/Main"):
        (folder / sub).mkdir(parents=True)
    for split in SPLITS:
        stems = []
        for rec in job.bar(records_of_split(job.cat, job.split, split), f"voc {split}"):
            stems.append(voc_stem(rec))
            place_image(rec.path, folder / "JPEGImages" / flat_name(rec), config.copy)
            (folder / "Annotations" / f"{stems[-1]}.xml").write_text(to_voc_xml(rec, job.cat))
        (folder / "ImageSets" / "Main" / f"{split}.txt").write_text("".join(f"{s}\n" for s in stems))
