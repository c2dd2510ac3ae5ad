"""Records -> COCO instances json (one split): images, annotations (polygons or RLE), categories, info."""
from __future__ import annotations

import re
from pathlib import Path

from defect_vision.data.records import Category, ImageRecord
from defect_vision.data.splits import SPLITS, Split
from defect_vision.io import json_bytes


def image_ids(cat: Category) -> dict[str, int]:
    """file_name -> image id (1..N over the whole category, sorted by file_name)."""
    return {rec.file_name: i for i, rec in enumerate(cat.images, 1)}


def first_annotation_ids(cat: Category) -> dict[str, int]:
    """file_name -> id of its first annotation (ids 1..M over the category in image-id, component order)."""
    starts, next_id = {}, 1
    for rec in cat.images:
        starts[rec.file_name] = next_id
        next_id += len(rec.instances)
    return starts


def prompt_of(defect_type: str) -> str:
    """The text prompt of a defect type: underscores -> spaces."""
    return defect_type.replace("_", " ")


def categories(cat: Category) -> list[dict]:
    return [
        {"id": i, "name": name, "prompt": cat.prompts.get(name) or prompt_of(name), "supercategory": cat.name}
        for i, name in enumerate(cat.defect_types, 1)
    ]


def prompt_phrasings(cat: Category) -> dict[str, list[str]]:
    """Per class its phrasings (names.yaml's list, else the one prompt): what prompts.yaml holds."""
    return {name: list(cat.phrasings.get(name) or [cat.prompts.get(name) or prompt_of(name)]) for name in cat.defect_types}


# a name or phrasing YAML writes as is (a plain scalar read back as the same string), short enough not to be wrapped
PLAIN_WORDS = re.compile(r"[A-Za-z][A-Za-z0-9_]*(?: [A-Za-z0-9_]+)*")
YAML_WORDS = {"yes", "no", "true", "false", "on", "off", "null"}  # plain, these would be read back as bool or None


def plain_yaml(phrasings: dict[str, list[str]]) -> str | None:
    """`name:\n- phrasing\n...`, what yaml.safe_dump writes for names and phrasings that are all plain words (class
    names nearly always are), without importing yaml; None where one is not (yaml.safe_dump then writes it)."""
    words = [*phrasings, *(v for values in phrasings.values() for v in values)]
    if not all(phrasings.values()) or not all(
            isinstance(w, str) and len(w) <= 60 and PLAIN_WORDS.fullmatch(w) and w.lower() not in YAML_WORDS
            for w in words):
        return None
    return "".join(f"{name}:\n" + "".join(f"- {v}\n" for v in values) for name, values in phrasings.items())


def prompts_yaml(cat: Category) -> str:
    """prompts.yaml: class name -> [phrasing, ...]; train-detector embeds each class as the mean of its phrasings."""
    head = "# class name -> phrasings; the class embedding is the normalised mean of their CLIP embeddings\n"
    phrasings = prompt_phrasings(cat)
    text = plain_yaml(phrasings)
    if text is None:
        import yaml

        text = yaml.safe_dump(phrasings, sort_keys=False, allow_unicode=True)
    return head + text


def info(cat: Category, split: Split, split_name: str) -> dict:
    return {
        "source": "defect-vision converters",
        "category": cat.name,
        "image_root": str(cat.root),
        "split": split_name,
        "seed": split.config.seed,
    }


def image_entry(rec: ImageRecord, image_id: int) -> dict:
    return {
        "id": image_id, "file_name": rec.file_name, "height": rec.height, "width": rec.width,
        "defect_type": rec.defect_type, "is_good": rec.is_good,
    }


def annotations(rec: ImageRecord, image_id: int, first_id: int, cat: Category, rle: bool = False) -> list[dict]:
    """The image's annotations; a box-only instance has an empty segmentation (readers take its box)."""
    return [
        {
            "id": first_id + k, "image_id": image_id, "category_id": cat.category_id(inst.category),
            "bbox": list(inst.bbox), "area": inst.area, "iscrowd": 0,
            "segmentation": [] if inst.box_only else dict(inst.rle) if rle else inst.polygons,
        }
        for k, inst in enumerate(rec.instances)
    ]


def records_of_split(cat: Category, split: Split, split_name: str) -> list[ImageRecord]:
    """The split's image records, in image-id order."""
    names = set(split.files[split_name])
    return [rec for rec in cat.images if rec.file_name in names]


def to_coco(cat: Category, split: Split, split_name: str, rle: bool = False) -> dict:
    """The COCO instances dict of one split (see docs/formats.md)."""
    ids, starts = image_ids(cat), first_annotation_ids(cat)
    recs = records_of_split(cat, split, split_name)
    return {
        "info": info(cat, split, split_name),
        "images": [image_entry(r, ids[r.file_name]) for r in recs],
        "annotations": [a for r in recs for a in annotations(r, ids[r.file_name], starts[r.file_name], cat, rle)],
        "categories": categories(cat),
    }


def unlabelled_coco(cat: Category) -> dict:
    """The images without ground truth (e.g. MVTec AD 2's test_private) as a COCO json without annotations: what
    `defect-vision predict --source` takes. Ids continue after the labelled images."""
    first = len(cat.images) + 1
    return {"info": {"source": "defect-vision converters", "category": cat.name, "image_root": str(cat.root),
                     "split": "unlabelled"},
            "images": [image_entry(r, i) for i, r in enumerate(cat.unlabelled, first)],
            "annotations": [], "categories": categories(cat)}


def write_coco(job, folder: Path, final: Path, config) -> None:
    """instances_<split>.json for each split (polygons, or RLE with config.rle), instances_unlabelled.json
    when the dataset has images without ground truth, and prompts.yaml (each class's phrasings)."""
    for split in SPLITS:
        (folder / f"instances_{split}.json").write_bytes(json_bytes(to_coco(job.cat, job.split, split, config.rle)))
    if job.cat.unlabelled:
        (folder / "instances_unlabelled.json").write_bytes(json_bytes(unlabelled_coco(job.cat)))
    (folder / "prompts.yaml").write_text(prompts_yaml(job.cat))
