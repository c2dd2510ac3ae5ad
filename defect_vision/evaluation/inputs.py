"""The evaluation's inputs: a COCO ground truth and a prediction run's COCO results (defect_vision.coco), with the
run's image ids matched to the ground truth's by image path when it was made on a folder (image_ids.json)."""
from __future__ import annotations

from pathlib import Path

from defect_vision.coco import CocoDataset, load_coco, load_results
from defect_vision.detections import Detections
from defect_vision.errors import DatasetError
from defect_vision.io import read_json

Predictions = dict[int, Detections]  # GT image id -> that image's predictions (images without any are absent)


def image_ids_listing(pred_path: Path) -> Path:
    """inference's image_ids.json beside predictions.json."""
    return Path(pred_path).with_name("image_ids.json")


def image_id_map(pred_path: Path, gt: CocoDataset, entries: list | None = None,
                 listing: Path | None = None) -> dict[int, int] | None:
    """Prediction image id -> GT image id from inference's image_ids.json beside predictions.json, matched by the
    image's resolved path (GT: info.image_root + file_name; by file_name only when the GT has no image_root); None
    when there is no such file or it changes no id (predictions made on the GT json keep its ids). `entries`: the
    listing's entries given directly (a shard's, read from `listing`) instead of image_ids.json."""
    listing = Path(listing) if listing is not None else image_ids_listing(pred_path)
    if entries is None:
        if not listing.is_file():
            return None
        entries = read_json(listing, "image id listing")
    if not isinstance(entries, list):
        raise DatasetError(f"{listing}: expected a list of {{id, file_name, path}}")
    by_id = {im.id: im for im in gt.images}
    by_name = {im.file_name: im.id for im in gt.images}
    root = gt.image_root
    by_path = {(root / im.file_name).resolve(): im.id for im in gt.images} if root else {}
    mapping = {}
    for e in entries:
        if not isinstance(e, dict) or not isinstance(e.get("id"), int) or isinstance(e.get("id"), bool):
            raise DatasetError(f"{listing}: entry {e!r:.80} has no integer 'id'")
        if by_path:
            found = by_path.get(Path(e["path"]).resolve()) if e.get("path") else None
        else:
            found = by_name.get(e.get("file_name"))
        if found is not None:
            mapping[e["id"]] = found
    same_ids = all(e["id"] in by_id and by_id[e["id"]].file_name == e.get("file_name") for e in entries)
    if not mapping and same_ids:
        return None  # predicted on this GT json, images since moved: its ids stand
    if not mapping:
        raise DatasetError(f"{listing}: none of its {len(entries)} images is in {gt.path} (matched by path under "
                           f"info.image_root, else by file_name): predictions and ground truth come from different datasets")
    return None if all(k == v for k, v in mapping.items()) and len(mapping) == len(entries) else mapping


def load_gt(gt: CocoDataset | Path) -> CocoDataset:
    return gt if isinstance(gt, CocoDataset) else load_coco(Path(gt))


def load_predictions(path: Path, gt: CocoDataset) -> tuple[Predictions, bool]:
    """(predictions by GT image id, whether ids were matched by path through image_ids.json)."""
    ids = image_id_map(path, gt)
    return load_results(Path(path), gt, ids), ids is not None


def resolve(predictions: Predictions | Path, gt: CocoDataset) -> tuple[Predictions, Path | None, bool]:
    """(predictions, their file or None, ids matched by path) from a results file or from detections in memory."""
    if isinstance(predictions, dict):
        unknown = sorted(set(predictions) - set(gt.detections))
        if unknown:
            raise DatasetError(f"predictions: image id(s) {unknown[:5]} not in {gt.path or 'the ground truth'}")
        return predictions, None, False
    found, matched = load_predictions(Path(predictions), gt)
    return found, Path(predictions), matched


def of_image(predictions: Predictions, gt: CocoDataset, image_id: int) -> Detections:
    """The predictions of one image (empty Detections of its size when it has none)."""
    found = predictions.get(image_id)
    if found is not None:
        return found
    im = gt.image(image_id)
    return Detections.empty(im.height, im.width, image=im, class_names=gt.class_names, category_ids=gt.category_ids)


def has_mask(det: Detections) -> list[bool]:
    """Per detection: it came with a mask (False for a box-only result, whose box stands in as its mask)."""
    flags = det.data.get("has_mask")
    return [True] * len(det) if flags is None else [bool(f) for f in flags]


def mask_source(predictions: Predictions) -> str | None:
    """Where the mask figures come from: "masks" (every prediction has one), "boxes" (box-only results: each box
    is taken as its mask), "masks+boxes" (some are box-only), None (no predictions)."""
    flags = [f for det in predictions.values() for f in has_mask(det)]
    if not flags:
        return None
    return "masks" if all(flags) else "boxes" if not any(flags) else "masks+boxes"
