"""Evaluation metrics on hand-built cases with known answers (mask IoU, COCO AP, pixel metrics, calibration)."""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from sklearn.metrics import roc_auc_score

from defect_vision.coco import load_coco, load_results
from defect_vision.detections import Detections, ImageInfo
from defect_vision.errors import DatasetError
from defect_vision.evaluation import (
    EvalConfig,
    calibrate,
    evaluate,
    image_types,
    mask_iou,
)
from defect_vision.evaluation.coco_metrics import coco_metrics
from defect_vision.evaluation.metrics import iou_figures
from defect_vision.evaluation.pixel_metrics import (
    PixelAccumulator,
    aupro_from_curve,
    pixel_metrics,
    region_thresholds,
)
from defect_vision.evaluation.thresholds import (
    ClassCalibration,
    Thresholds,
    apply_thresholds,
)
from defect_vision.masks import encode_rle

H = W = 64
CATEGORIES = [{"id": 1, "name": "hole", "prompt": "hole", "supercategory": "toy"},
              {"id": 2, "name": "scratch", "prompt": "scratch", "supercategory": "toy"}]


def rect(y0: int, x0: int, h: int, w: int, height: int = H, width: int = W) -> np.ndarray:
    m = np.zeros((height, width), bool)
    m[y0:y0 + h, x0:x0 + w] = True
    return m


def bbox(m: np.ndarray) -> list[float]:
    ys, xs = np.nonzero(m)
    return [float(xs.min()), float(ys.min()), float(xs.max() - xs.min() + 1), float(ys.max() - ys.min() + 1)]


# the hand-built split: image 1 a 20x20 hole, image 2 a 10x40 scratch, image 3 good
GT_MASKS = {1: [(1, rect(10, 10, 20, 20))], 2: [(2, rect(40, 5, 10, 40))], 3: []}


def make_gt(path: Path, masks: dict = GT_MASKS, polygons: bool = True, image_root: str | None = None) -> Path:
    images, anns = [], []
    for image_id, insts in masks.items():
        good = not insts
        kind = "good" if good else CATEGORIES[insts[0][0] - 1]["name"]  # as the converters write it
        images.append({"id": image_id, "file_name": f"test/{'good' if good else 'defect'}/{image_id:03d}.png",
                       "height": H, "width": W, "defect_type": kind, "is_good": good})
        for cid, m in insts:
            x, y, w, h = bbox(m)
            # a rectangle as a polygon on pixel edges rasterises to exactly its pixels
            seg = [[x, y, x + w, y, x + w, y + h, x, y + h]] if polygons else encode_rle(m)
            anns.append({"id": len(anns) + 1, "image_id": image_id, "category_id": cid, "bbox": [x, y, w, h],
                         "area": int(m.sum()), "iscrowd": 0, "segmentation": seg})
    info = {"source": "test", "category": "toy", "split": "test", "seed": 0}
    if image_root:
        info["image_root"] = image_root
    path.write_text(json.dumps({"info": info, "images": images, "annotations": anns, "categories": CATEGORIES}))
    return path


def pred(image_id: int, cid: int, m: np.ndarray, score: float) -> dict:
    return {"image_id": image_id, "category_id": cid, "bbox": bbox(m), "score": score, "segmentation": encode_rle(m)}


def perfect_preds() -> list[dict]:
    return [pred(i, cid, m, 0.9) for i, insts in GT_MASKS.items() for cid, m in insts]


def shifted_preds() -> list[dict]:
    # hole shifted 3 px right: 20x17 overlap, 20x23 union -> 17/23; scratch 2 px down: 8x40 / 12x40 -> 2/3
    return [pred(1, 1, rect(10, 13, 20, 20), 0.8), pred(2, 2, rect(42, 5, 10, 40), 0.7)]


def load(tmp_path: Path, preds: list[dict], masks: dict = GT_MASKS, polygons: bool = True):
    """(CocoDataset, {image id: Detections}) of a hand-built GT and predictions, through defect_vision.coco."""
    gt = load_coco(make_gt(tmp_path / "gt.json", masks, polygons))
    (tmp_path / "pred.json").write_text(json.dumps(preds))
    return gt, load_results(tmp_path / "pred.json", gt)


def iou_summary(gt, preds) -> dict:
    images, instances, per_class = iou_figures(gt, preds)
    return mask_iou.summarize(images, instances, per_class, gt.class_names)


@pytest.mark.parametrize("polygons", [True, False])
def test_perfect_prediction_gives_iou_1_and_ap_1(tmp_path, polygons):
    gt, preds = load(tmp_path, perfect_preds(), polygons=polygons)
    s = iou_summary(gt, preds)
    assert s["mean_instance"] == pytest.approx(1.0) and s["mean_image"] == pytest.approx(1.0)
    assert s["per_class"]["hole"]["mean_instance"] == pytest.approx(1.0)
    assert (s["good_images"], s["good_fp_images"], s["mean_good"]) == (1, 0, 1.0)
    coco = coco_metrics(gt, preds)
    for t in ("bbox", "segm"):
        assert coco[t].summary["AP"] == pytest.approx(1.0)
        assert coco[t].summary["per_class"]["scratch"]["AP50"] == pytest.approx(1.0)


def test_shifted_prediction_gives_the_known_iou(tmp_path):
    gt, preds = load(tmp_path, shifted_preds())
    s = iou_summary(gt, preds)
    assert s["per_class"]["hole"]["mean_instance"] == pytest.approx(17 / 23)
    assert s["per_class"]["scratch"]["mean_instance"] == pytest.approx(2 / 3)
    assert s["mean_instance"] == pytest.approx((17 / 23 + 2 / 3) / 2)
    assert s["mean_image"] == pytest.approx((17 / 23 + 2 / 3) / 2)
    segm = coco_metrics(gt, preds)["segm"].summary
    # one TP per class, matched at the IoU thresholds (0.50:0.95:0.05) up to its IoU
    assert segm["AP50"] == pytest.approx(1.0) and segm["AP75"] == pytest.approx(0.0)
    assert segm["per_class"]["hole"]["AP"] == pytest.approx(0.5)  # 0.739: 0.50 .. 0.70
    assert segm["per_class"]["scratch"]["AP"] == pytest.approx(0.4)  # 0.667: 0.50 .. 0.65
    assert segm["AP"] == pytest.approx(0.45)


def test_empty_prediction_gives_zero(tmp_path):
    gt, preds = load(tmp_path, [])
    s = iou_summary(gt, preds)
    assert s["mean_instance"] == 0.0 and s["mean_image"] == 0.0 and s["good_fp_images"] == 0
    assert coco_metrics(gt, preds)["segm"].summary["AP"] == 0.0


def test_good_image_false_positives_are_counted(tmp_path):
    fp = rect(0, 0, 4, 5)
    gt, preds = load(tmp_path, perfect_preds() + [pred(3, 1, fp, 0.95)])
    s = iou_summary(gt, preds)
    assert (s["good_fp_images"], s["good_fp_predictions"], s["mean_good"]) == (1, 1, 0.0)
    assert s["good_fp_pixel_fraction"] == pytest.approx(20 / (H * W))
    assert s["mean_instance"] == pytest.approx(1.0)
    # the false positive outranks both true positives: box AP drops below 1
    assert coco_metrics(gt, preds)["bbox"].summary["per_class"]["hole"]["AP"] < 1.0


def test_instances_are_matched_one_to_one():
    a, b = rect(0, 0, 10, 10), rect(0, 30, 10, 10)
    im = ImageInfo(1, "x.png", H, W, is_good=False)
    gt = Detections([[0, 0, 10, 10], [30, 0, 40, 10]], [0, 0], [1, 1], mask=np.stack([a, b]), image=im,
                    data={"annotation_id": np.array([1, 2])}, class_names=["hole"])
    one = Detections([[0, 0, 40, 10]], [0], [0.5], mask=(a | b)[None], image=im, class_names=["hole"])  # one mask over both
    s, inst = mask_iou.image_ious(gt, one)
    assert sorted(i.iou for i in inst) == [0.0, pytest.approx(0.5)]
    assert s.iou == pytest.approx(1.0) and s.unmatched_predictions == 0
    assert [(i.annotation_id, i.class_id) for i in inst] == [(1, 0), (2, 0)]


def test_pixel_auroc_matches_sklearn_on_prediction_maps(tmp_path):
    preds = shifted_preds() + [pred(1, 1, rect(5, 40, 8, 8), 0.3), pred(3, 2, rect(50, 50, 6, 6), 0.45),
                               pred(2, 2, rect(38, 0, 6, 64), 0.6)]
    gt, loaded = load(tmp_path, preds)
    acc = PixelAccumulator(region_thresholds(np.concatenate([d.score for d in loaded.values()] + [[0.0]])))
    iou_figures(gt, loaded, pixel=acc)
    got = acc.result()
    labels, scores = [], []
    for im in gt.images:
        g = np.zeros((H, W), bool)
        for _, m in GT_MASKS[im.id]:
            g |= m
        s = np.zeros((H, W))
        det = loaded.get(im.id)
        for k in (np.argsort(det.score, kind="stable") if det is not None else []):
            s[det.masks[k]] = det.score[k]
        labels.append(g.ravel())
        scores.append(s.ravel())
    assert got["auroc"] == pytest.approx(roc_auc_score(np.concatenate(labels), np.concatenate(scores)), abs=1e-3)
    # the fast path (levels known) and np.unique on the maps agree exactly
    assert pixel_metrics([s.reshape(H, W) for s in scores], [g.reshape(H, W) for g in labels], [1, 1, 0]) == got
    assert got["image_auroc"] == pytest.approx(roc_auc_score([1, 1, 0], [0.8, 0.7, 0.45]), abs=1e-9)
    # max-F1 by brute force over the distinct thresholds
    lab, sc = np.concatenate(labels), np.concatenate(scores)
    best = max(2 * (lab & (sc >= t)).sum() / ((sc >= t).sum() + lab.sum()) for t in np.unique(sc))
    assert got["max_f1"] == pytest.approx(best)


def test_pixel_auroc_matches_sklearn_on_continuous_maps():
    rng = np.random.default_rng(1)
    gts = [rect(5, 5, 10, 12, 32, 32) | rect(20, 22, 6, 6, 32, 32), np.zeros((32, 32), bool), rect(0, 0, 3, 32, 32, 32)]
    maps = [rng.random((32, 32)).astype(np.float32) + 0.7 * g for g in gts]
    maps[1] = np.round(maps[1], 1)  # ties
    got = pixel_metrics(maps, gts)
    want = roc_auc_score(np.concatenate([g.ravel() for g in gts]), np.concatenate([m.ravel() for m in maps]))
    assert got["auroc"] == pytest.approx(want, abs=1e-3)


def test_aupro_on_a_hand_built_case():
    # 20x10 image: region A (10 px) all at 0.9, region B (10 px) half at 0.9, 18 of 180 normal pixels at 0.5
    g = np.zeros((10, 20), bool)
    g[0, 0:10] = True  # A
    g[9, 0:10] = True  # B
    s = np.zeros((10, 20), np.float32)
    s[0, 0:10] = 0.9
    s[9, 0:5] = 0.9
    s[3:5, 11:20] = 0.5  # 18 false-positive pixels: FPR 0.1
    # PRO curve (FPR, PRO): (0, 0.75) -> (0.1, 0.75) -> (1, 1); area to FPR 0.3, divided by 0.3
    y_03 = 0.75 + 0.25 * (0.3 - 0.1) / (1 - 0.1)
    expected = (0.1 * 0.75 + 0.2 * (0.75 + y_03) / 2) / 0.3
    got = pixel_metrics([s], [g])
    assert got["aupro"] == pytest.approx(expected, abs=1e-6)
    assert got["aupro"] == pytest.approx(0.768518, abs=1e-3)


def _reference_aupro(maps, gts, limit=0.3):
    """Definition by brute force: for every threshold, PRO = mean region overlap, FPR over normal pixels."""
    import cv2
    regions = []
    for g in gts:
        n, lab = cv2.connectedComponents(g.astype(np.uint8), connectivity=8)
        regions += [(len(regions), lab == k, g) for k in range(1, n)]
    neg = sum((~g).sum() for g in gts)
    fprs, pros = [], []
    for t in np.unique(np.concatenate([m.ravel() for m in maps]))[::-1]:
        fprs.append(sum(((m >= t) & ~g).sum() for m, g in zip(maps, gts)) / neg)
        pro = []
        for m, g in zip(maps, gts):
            n, lab = cv2.connectedComponents(g.astype(np.uint8), connectivity=8)
            pro += [((m >= t) & (lab == k)).sum() / (lab == k).sum() for k in range(1, n)]
        pros.append(np.mean(pro))
    return aupro_from_curve(np.array(fprs), np.array(pros), limit)


def test_aupro_agrees_with_the_definition_on_random_maps():
    rng = np.random.default_rng(2)
    gts = [rect(2, 2, 6, 6, 24, 24) | rect(14, 10, 4, 9, 24, 24), rect(10, 0, 5, 24, 24, 24)]
    maps = [np.round(rng.random((24, 24)) * 0.8 + 0.3 * g, 2) for g in gts]
    assert pixel_metrics(maps, gts)["aupro"] == pytest.approx(_reference_aupro(maps, gts), abs=1e-9)


def test_region_max_f1_on_a_hand_built_case():
    g = rect(2, 2, 10, 10) | rect(30, 30, 10, 10)
    s = np.zeros((H, W), np.float32)
    s[2:12, 2:12] = 0.8  # region 1 exactly (IoU 1)
    s[30:40, 30:35] = 0.9  # half of region 2 (IoU 0.5 < 0.6)
    s[50:55, 50:55] = 0.3  # a false region
    # t=0.9: 1 predicted region, 0 hits -> F1 0; t=0.8: 2 regions, 1 hit -> P 1/2, R 1/2, F1 0.5; t=0.3: P 1/3 -> 0.4
    got = pixel_metrics([s], [g])
    assert got["region_max_f1"] == pytest.approx(0.5)
    assert got["region_max_f1_threshold"] == pytest.approx(0.8)


def test_calibration_picks_the_f1_maximising_threshold(tmp_path):
    masks = {1: [(1, rect(0, 0, 8, 8)), (1, rect(20, 20, 8, 8))], 2: [(1, rect(0, 0, 8, 8)), (1, rect(40, 40, 8, 8))],
             3: []}
    far = rect(56, 0, 6, 6)
    preds = [pred(1, 1, rect(0, 0, 8, 8), 0.9), pred(2, 1, rect(0, 0, 8, 8), 0.8), pred(3, 1, far, 0.7),
             pred(1, 1, rect(20, 20, 8, 8), 0.6), pred(3, 1, rect(10, 10, 5, 5), 0.5), pred(2, 1, far, 0.4),
             pred(1, 2, rect(0, 0, 8, 8), 0.95)]  # scratch: no GT of its class anywhere -> default
    gt, loaded = load(tmp_path, preds, masks)
    # hole F1 by threshold: .9 -> .4, .8 -> .667, .7 -> .571, .6 -> .75, .5 -> .667, .4 -> .6
    th = calibrate(gt, loaded)
    classes = {c.name: c for c in th.classes}
    assert classes["hole"].threshold == pytest.approx(0.6)
    assert (classes["hole"].f1, classes["hole"].precision, classes["hole"].recall) == pytest.approx((0.75, 0.75, 0.75))
    assert classes["scratch"].threshold is None
    doc = th.to_dict()
    assert doc["thresholds"] == {"hole": pytest.approx(0.6), "scratch": 0.25} and doc["default"] == 0.25
    assert doc["stats"]["scratch"] == {"f1": 0.0, "precision": 0.0, "recall": 0.0, "gt": 0, "predictions": 1,
                                       "calibrated": False}
    kept = apply_thresholds(loaded, th.by_name, th.default)
    assert sorted(np.concatenate([d.score for d in kept.values()]).tolist()) == [0.6, 0.7, 0.8, 0.9, 0.95]
    # the same thresholds from the files
    assert calibrate(tmp_path / "gt.json", tmp_path / "pred.json").to_dict() == doc


def test_unknown_image_ids_are_rejected(tmp_path):
    with pytest.raises(DatasetError, match=r"pred\.json: 1 image id\(s\) not in .*different datasets"):
        load(tmp_path, perfect_preds() + [pred(99, 1, rect(0, 0, 3, 3), 0.5)])


def test_malformed_inputs_are_rejected(tmp_path):
    gt_path = make_gt(tmp_path / "gt.json")
    (tmp_path / "bad.json").write_text('[{"image_id": 1, ')
    with pytest.raises(DatasetError, match=r"bad\.json: not valid JSON"):
        load_results(tmp_path / "bad.json", load_coco(gt_path))
    with pytest.raises(DatasetError, match=r"bad\.json: not valid JSON"):
        load_coco(tmp_path / "bad.json")
    with pytest.raises(DatasetError, match=r"nope\.json: missing \(no such COCO json file\)"):
        load_coco(tmp_path / "nope.json")
    small = pred(1, 1, rect(0, 0, 3, 3, 32, 32), 0.5)
    (tmp_path / "p.json").write_text(json.dumps([small]))
    with pytest.raises(DatasetError, match=r"p\.json: entry 0 \(image id 1\): mask is 32x32 but the image is 64x64"):
        load_results(tmp_path / "p.json", load_coco(gt_path))
    (tmp_path / "p.json").write_text(json.dumps([{**small, "category_id": 7}]))
    with pytest.raises(DatasetError, match=r"category id 7"):
        load_results(tmp_path / "p.json", load_coco(gt_path))


def _corrupt_counts(rle: dict) -> dict:
    return {**rle, "counts": rle["counts"] + "1"}  # valid string, one run too many


@pytest.mark.parametrize("field, value, message", [
    ("image_id", [1], r"entry 0 has image_id \[1\] \(expected an integer\)"),
    ("bbox", [1, 2, 3], r"entry 0 has bbox \[1, 2, 3\] \(expected \[x, y, w, h\]\)"),
    ("counts", "!!garbage", r"entry 0 \(image id 1\): RLE counts string has a character outside the COCO alphabet"),
    ("counts", "corrupt", r"entry 0 \(image id 1\): RLE counts do not describe a 64x64 mask"),
    ("counts", [10, 5], r"entry 0 \(image id 1\): RLE counts do not describe a 64x64 mask"),
])
def test_malformed_prediction_fields_are_one_line_errors(tmp_path, field, value, message):
    """Bad ids/boxes raise DatasetError, and a corrupt RLE is caught before pycocotools (which loops or crashes on it)."""
    gt = load_coco(make_gt(tmp_path / "gt.json"))
    entry = pred(1, 1, rect(10, 10, 20, 20), 0.9)
    if field == "counts":
        value = _corrupt_counts(entry["segmentation"])["counts"] if value == "corrupt" else value
        entry["segmentation"] = {**entry["segmentation"], "counts": value}
    else:
        entry[field] = value
    (tmp_path / "p.json").write_text(json.dumps([entry]))
    with pytest.raises(DatasetError, match=rf"p\.json: {message}"):
        load_results(tmp_path / "p.json", gt)


@pytest.mark.parametrize("change, message", [
    (lambda d: d["images"][0].update(height="abc"), r"images\[0\] has height/width 'abc'/64"),
    (lambda d: d["images"].__setitem__(0, "x"), r"images\[0\] is not an object"),
    (lambda d: d["annotations"][0].update(bbox=[1, 2]), r"annotation 1 has bbox \[1, 2\]"),
    (lambda d: d["categories"][0].update(id=[1]), r"categories\[0\] has id \[1\]"),
])
def test_malformed_ground_truth_fields_are_one_line_errors(tmp_path, change, message):
    path = make_gt(tmp_path / "gt.json", polygons=False)
    data = json.loads(path.read_text())
    change(data)
    path.write_text(json.dumps(data))
    with pytest.raises(DatasetError, match=rf"gt\.json: {message}"):
        load_coco(path)


def test_rle_string_counts_round_trip():
    from defect_vision.coco import rle_string_counts

    m = rect(3, 5, 7, 9) | rect(30, 40, 2, 20)
    counts = rle_string_counts(encode_rle(m)["counts"].encode())
    assert sum(counts) == H * W and sum(counts[1::2]) == m.sum()  # column-major runs, starting with background


def test_evaluate_api_takes_files_or_records_and_gives_the_same_figures(tmp_path):
    gt, loaded = load(tmp_path, shifted_preds())
    from_records = evaluate(gt, loaded, EvalConfig())
    from_files = evaluate(tmp_path / "gt.json", tmp_path / "pred.json")
    a, b = from_records.to_dict(), from_files.to_dict()
    assert a.pop("inputs")["pred"] is None and b.pop("inputs")["pred"] == str(tmp_path / "pred.json")
    assert a == b
    assert list(from_files.to_dict()) == ["inputs", "counts", "mask_iou", "coco", "pixel", "image_auroc",
                                          "image_classification", "calibrated", "plots"]
    assert from_files.mask_ap == pytest.approx(0.45) and from_files.box_ap50 == pytest.approx(1.0)
    assert from_files.mean_instance_iou == pytest.approx((17 / 23 + 2 / 3) / 2)
    assert from_files.inputs["mask_source"] == "masks" and from_files.plots == [] and from_files.calibrated is None
    assert [im.iou for im in from_files.per_image] == [pytest.approx(17 / 23), pytest.approx(2 / 3), None]
    assert from_files.summary_line().startswith("evaluated 3 images (2 defect, 1 good), 2 predictions: mask IoU 0.703 "
                                                "(instance) / 0.703 (image), mask AP 0.450, box AP50 1.000")
    assert from_files.summary_line().endswith(", good FP images 0/1, image type accuracy 1.000 at score >= 0.25 "
                                              "(--default-threshold; no val calibration)")
    # score_threshold drops predictions from the mask IoU only
    high = evaluate(gt, loaded, EvalConfig(score_threshold=0.75))
    assert high.mask_iou["per_class"]["scratch"]["mean_instance"] == 0.0 and high.mask_ap == pytest.approx(0.45)
    with pytest.raises(DatasetError, match=r"predictions: image id\(s\) \[9\] not in .*gt\.json"):
        evaluate(gt, {**loaded, 9: loaded[1]})


def test_box_only_results_evaluate_with_their_boxes_as_masks(tmp_path):
    """Standard COCO bbox results (no segmentation) give box AP; the mask figures use each box as its mask (said so)."""
    boxes_only = [{k: v for k, v in p.items() if k != "segmentation"} for p in shifted_preds()]
    gt, loaded = load(tmp_path, boxes_only)
    m = evaluate(gt, loaded)
    # the GT defects are rectangles: a box mask is the same rectangle, so mask and box figures agree
    assert m.box_ap == pytest.approx(0.45) and m.mask_ap == pytest.approx(0.45)
    assert m.mask_iou["per_class"]["hole"]["mean_instance"] == pytest.approx(17 / 23)
    assert (m.inputs["mask_source"], m.counts["predictions_without_mask"]) == ("boxes", 2)
    assert m.summary_line().endswith("; mask figures from boxes: 2/2 predictions are box-only (no segmentation), "
                                     "each box taken as its mask")
    mixed = evaluate(gt, load(tmp_path, boxes_only[:1] + shifted_preds()[1:])[1])
    assert (mixed.inputs["mask_source"], mixed.counts["predictions_without_mask"]) == ("masks+boxes", 1)
    assert evaluate(gt, {}).inputs["mask_source"] is None


def test_evaluation_imports_no_later_stage():
    """Data flows data -> formats -> models -> training -> inference -> evaluation; evaluation imports no later
    stage, nor training/inference/models (it reads their files), nor the CLI."""
    import ast

    root = Path(__file__).resolve().parents[1] / "defect_vision" / "evaluation"
    bad = []
    for path in sorted(root.glob("*.py")):
        for node in ast.walk(ast.parse(path.read_text())):
            names = [a.name for a in node.names] if isinstance(node, ast.Import) else \
                [node.module] if isinstance(node, ast.ImportFrom) and node.module else []
            bad += [f"{path.name}: {n}" for n in names
                    if n.split(".")[:2] in (["defect_vision", s] for s in ("training", "inference", "models", "cli"))]
    assert not bad


def test_region_max_f1_is_0_not_null_when_nothing_is_predicted(tmp_path):
    """With no prediction (or only scores 0) no region is ever found: recall 0, so region max-F1 is 0.0 when there
    is ground truth (it was null while pixel max-F1 was defined); it stays null without any GT region."""
    gt, _ = load(tmp_path, [])
    zero = {1: Detections([[0, 0, 64, 64]], [0], [0.0], mask=np.ones((1, H, W), bool), image=gt.image(1),
                          class_names=gt.class_names, category_ids=gt.category_ids)}
    for predictions in ({}, zero):
        px = evaluate(gt, predictions).pixel
        # every pixel at the one level 0: pixel F1 = 2 * 800 GT px / (3 * 64 * 64 + 800)
        assert px["max_f1"] == pytest.approx(1600 / 13088) and px["max_f1_threshold"] == 0.0
        assert (px["region_max_f1"], px["region_max_f1_threshold"]) == (0.0, None)
    all_good = load_coco(make_gt(tmp_path / "good.json", {3: []}))
    assert evaluate(all_good, {}).pixel["region_max_f1"] is None


# image-level defect type: 7 images, predictions (class, score); threshold 0.25 unless said
TYPE_CASE = {
    1: ("hole", [("hole", 0.9), ("scratch", 0.6)]),  # the highest score wins: hole
    2: ("scratch", [("hole", 0.5), ("scratch", 0.8)]),  # ... whichever class is listed first: scratch
    3: ("scratch", [("hole", 0.7)]),  # wrong class: hole
    4: ("hole", []),  # no detection: good
    5: ("good", [("scratch", 0.1)]),  # below the threshold: good
    6: ("good", [("hole", 0.4)]),  # a false positive: hole
    7: ("hole", [("hole", 0.2), ("scratch", 0.3)]),  # the threshold drops the hole: scratch
}


def type_case(tmp_path):
    masks = {i: ([] if t == "good" else [(1 if t == "hole" else 2, rect(10, 10, 8, 8))]) for i, (t, _) in TYPE_CASE.items()}
    preds = [pred(i, 1 if c == "hole" else 2, rect(30, 30, 6, 6), s) for i, (_, ps) in TYPE_CASE.items() for c, s in ps]
    return load(tmp_path, preds, masks)


def test_image_type_accuracy_recall_and_confusion_matrix(tmp_path):
    gt, preds = type_case(tmp_path)
    ic = evaluate(gt, preds).image_classification
    assert ic["confusion_matrix"]["labels"] == ["good", "hole", "scratch"]
    # rows true (good, hole, scratch), columns predicted: 5 good, 6 hole | 4 good, 1 hole, 7 scratch | 3 hole, 2 scratch
    assert ic["confusion_matrix"]["counts"] == [[1, 1, 0], [1, 1, 1], [0, 1, 1]]
    assert (ic["accuracy"], ic["correct"], ic["images"]) == (pytest.approx(3 / 7), 3, 7)
    assert {k: v["recall"] for k, v in ic["per_class"].items()} == {"good": 0.5, "hole": pytest.approx(1 / 3),
                                                                    "scratch": 0.5}
    assert ic["per_class"]["hole"] == {"images": 3, "correct": 1, "recall": pytest.approx(1 / 3)}
    assert ic["thresholds"] == {"source": "default_threshold", "value": 0.25,
                                "per_class": {"hole": 0.25, "scratch": 0.25}, "default": 0.25}
    assert ic["true_type_from"] == {"defect_type": 7, "annotations": 0, "none": 0}
    # --score-threshold, when set, is the threshold: 6 (hole 0.4) and 7 (both) drop to good
    ic = evaluate(gt, preds, EvalConfig(score_threshold=0.5)).image_classification
    assert ic["confusion_matrix"]["counts"] == [[2, 0, 0], [2, 1, 0], [0, 1, 1]] and ic["accuracy"] == pytest.approx(4 / 7)
    assert (ic["thresholds"]["source"], ic["thresholds"]["value"]) == ("score_threshold", 0.5)
    assert ic["thresholds_used"] == "at score >= 0.5 (--score-threshold)"


def test_image_type_uses_the_calibrated_per_class_thresholds(tmp_path):
    gt, preds = type_case(tmp_path)
    calibrated = Thresholds([ClassCalibration("hole", 0.45, 1, 1, 1, 1, 1), ClassCalibration("scratch", 0.05, 1, 1, 1, 1, 1)])
    ic = image_types.classify(gt, preds, image_types.choose_thresholds(gt.class_names, calibrated, 0.5, 0.25))
    # hole needs 0.45: image 6 (0.4) becomes good; scratch needs 0.05: image 5 (0.1) becomes scratch
    assert ic["confusion_matrix"]["counts"] == [[1, 0, 1], [1, 1, 1], [0, 1, 1]]
    assert ic["thresholds"] == {"source": "calibrated", "value": None, "per_class": {"hole": 0.45, "scratch": 0.05},
                                "default": 0.25}
    assert ic["thresholds_used"] == "at the per-class thresholds calibrated on val"


def test_true_image_type_rule(tmp_path):
    """defect_type when the image entry has it (MVTec's combined is a type of its own), else the most frequent class
    of its annotations (ties: the lowest category id, not the name or the order), good without annotations."""
    box = [2.0, 2.0, 4.0, 4.0]
    images = [{"id": i, "file_name": f"{i}.png", "height": 16, "width": 16} for i in range(1, 5)]
    images[0]["defect_type"] = "combined"
    anns = [(1, 3), (2, 7), (2, 3), (3, 7), (3, 3), (3, 7)]  # (image, category id)
    doc = {"images": images, "categories": [{"id": 7, "name": "alpha"}, {"id": 3, "name": "zeta"}],
           "annotations": [{"id": k, "image_id": i, "category_id": c, "bbox": box} for k, (i, c) in enumerate(anns, 1)]}
    (tmp_path / "gt.json").write_text(json.dumps(doc))
    gt = load_coco(tmp_path / "gt.json")
    assert [image_types.true_type(im, gt.detections[im.id]) for im in gt.images] == [
        ("combined", "defect_type"), ("zeta", "annotations"), ("alpha", "annotations"), ("good", "none")]
    ic = evaluate(gt, {}).image_classification
    assert ic["confusion_matrix"]["labels"] == ["good", "zeta", "alpha", "combined"]  # good, classes by id, others
    assert ic["confusion_matrix"]["counts"] == [[1, 0, 0, 0], [1, 0, 0, 0], [1, 0, 0, 0], [1, 0, 0, 0]]
    assert ic["true_type_from"] == {"defect_type": 1, "annotations": 2, "none": 1}
    assert ic["per_class"]["combined"]["recall"] == 0.0 and ic["accuracy"] == 0.25
