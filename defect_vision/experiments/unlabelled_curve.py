"""Does self-training on unlabelled images help? (`defect-vision curve --unlabelled-rest --pseudo-rules adaptive
fixed`): the few-shot curve's k labelled defect images per class alone vs the same k labels + the rest of the
training split as unlabelled images, with fixed vs class-adaptive pseudo-label thresholds, over seeds.

Per (k, seed) of curve.runs_of (k = "all" has no unlabelled rest and is skipped): curve.Bench.train fine-tunes the
detector and SAM on the k labels (the baseline, "labels"); then per rule, experiments.self_training.self_train
pseudo-labels the rest of train (its labels hidden) with that baseline detector as round 0 and fine-tunes again from
the start weights; each detector is measured with the baseline's SAM (the SAM stage is the same for all: this
measures the detector) by curve.Bench.measure on the test split. Writes <out>/results.json, unlabelled_curve.png,
data/, models/<k>_s<seed>/{yolo_world, sam, self_<rule>}."""
from __future__ import annotations

import os
import time
from dataclasses import dataclass, replace
from pathlib import Path

from defect_vision.errors import DatasetError
from defect_vision.experiments import common
from defect_vision.experiments.curve import (
    ALL,
    Bench,
    CurveConfig,
    runs_of,
    start_of,
    summarize,
)
from defect_vision.experiments.self_training import self_train
from defect_vision.experiments.subsets import few_shot, flat
from defect_vision.training.self_training import RULES, SelfTrainConfig

KIND = "curve_unlabelled"
BASELINE = "labels"


@dataclass(frozen=True)
class UnlabelledCurveConfig:
    """The curve (its export, templates, shots, seeds, out) and the self-training every variant runs."""

    curve: CurveConfig
    rules: tuple[str, ...] = RULES
    rounds: int = 1
    conf: float = 0.5
    floor: float = 0.05

    def __post_init__(self):
        unknown = [r for r in self.rules if r not in RULES]
        if unknown or not self.rules:
            raise DatasetError(f"--pseudo-rules {' '.join(unknown) or '(none)'}: expected {' and/or '.join(RULES)}")
        SelfTrainConfig(Path("."), self.rounds, self.rules[0], self.conf, self.floor)  # the same checks

    def variants(self) -> list[str]:
        return [BASELINE, *self.rules]


def unlabelled_folder(export_yolo: Path, images: list[str], out: Path) -> Path:
    """A folder of links to the YOLO export's train images `images` (the rest of train: their labels unused)."""
    out.mkdir(parents=True)
    for f in images:
        os.symlink((export_yolo / "images" / "train" / flat(f)).resolve(), out / flat(f))
    return out


def run_unlabelled_curve(config: UnlabelledCurveConfig) -> dict:
    """The whole experiment into config.curve.out (replaced only when it completes); returns results.json."""
    t0 = time.time()
    c = config.curve
    train = c.train
    shots = [k for k in c.shots if k != ALL]
    if not shots:
        raise DatasetError("--shots: self-training needs k < all (k labels + the rest of train as unlabelled)")
    st = start_of(c)
    classes, encode, encoder_name, detector, inputs = st.classes, st.encode, st.encoder_name, st.detector, st.inputs
    with common.output_folder(c.out, KIND, inputs, c.force) as out:
        bench = Bench.of(c, out, classes, encode)
        first, weights = bench.zero_shot(encoder_name)
        runs = [{**first, "variant": v} for v in config.variants()]
        runs += _runs(config, bench, replace(c, shots=shots))
        summary = {v: summarize([r for r in runs if r["variant"] == v], shots, c.target)[0] for v in config.variants()}
        results = {
            "category": c.category, "experiment": KIND, "detector": detector, "text_encoder": encoder_name,
            "weights": weights, "variants": config.variants(), "shots": shots, "seeds": c.seeds,
            "repeat_up_to": c.repeat_up_to,
            "protocol": "per (k, seed): k labelled defect images per class (+ every good image) = 'labels'; per "
                        "rule, the same labels + the rest of train as unlabelled images, self-trained "
                        f"({config.rounds} round(s), from the start weights each round, round 0 = 'labels'); "
                        "all measured on test with 'labels' SAM",
            "self_training": {"rounds": config.rounds, "conf": config.conf, "floor": config.floor},
            "settings": {"epochs": train.epochs, "sam_epochs": c.sam.epochs, "imgsz": train.imgsz,
                         "sam_model_type": c.sam.model_type, "conf": c.conf, "score_threshold": c.score_threshold},
            "runs": runs, "summary": summary, "seconds": round(time.time() - t0, 1),
        }
        common.write_results(out, results)
        from defect_vision.evaluation.report_self_training import unlabelled_curve_plot

        unlabelled_curve_plot(results, out / "unlabelled_curve.png")
    return results


def _runs(config: UnlabelledCurveConfig, bench: Bench, c: CurveConfig) -> list[dict]:
    runs = []
    for k, seed in runs_of(c):
        t1 = time.time()
        name = f"k{k}_s{seed}"
        chosen = few_shot(bench.images, bench.classes, k, seed)
        detector, sam, counts = bench.train(name, chosen, seed, {"k": k})
        common_fields = {"k": k, "seed": seed, "train_images": chosen, "labelled_per_class": counts}
        runs.append({"variant": BASELINE, **common_fields, **bench.measure(detector, sam),
                     "seconds": round(time.time() - t1, 1)})
        taken = set(chosen)
        rest = [f for f in bench.images if f not in taken]
        if not rest:
            continue
        pool = unlabelled_folder(c.export.yolo, rest, bench.out / "data" / name / "unlabelled")
        data = bench.out / "data" / name
        prompts = data / "coco" / "prompts.yaml"
        student = replace(c.train, data=data / "yolo" / "data.yaml", coco=data / "coco",
                          prompts=prompts if prompts.is_file() else None, seed=seed, eval_zero_shot=False,
                          resume=False, force=True)
        for rule in config.rules:
            t1 = time.time()
            st = SelfTrainConfig(pool, config.rounds, rule, config.conf, config.floor)
            meta = self_train(replace(student, out=bench.out / "models" / name / f"self_{rule}"), st,
                              round0=detector.parent, progress=False)
            last = meta["self_training"]["rounds"][-1]
            runs.append({"variant": rule, **common_fields, "unlabelled_images": len(rest),
                         "pseudo_per_class": last["pseudo_per_class"], "thresholds": last["thresholds"],
                         "pseudo_images": last["images_used"],
                         **bench.measure(bench.out / "models" / name / f"self_{rule}" / "best.pt", sam),
                         "seconds": round(time.time() - t1, 1)})
    return runs


def summary_line(results: dict, out: Path) -> str:
    parts = []
    for v, metrics in results["summary"].items():
        pts = [p for p in metrics["detector_box_ap50"] if p["k"] != 0]
        parts.append(f"{v} " + ", ".join(f"k={p['k']}: {p['mean']}" for p in pts))
    return (f"unlabelled curve: {out / 'results.json'}: detector box AP50 (mean over seeds) {'; '.join(parts)}; "
            f"{results['seconds']:.0f} s")
