"""Active-learning curve (`defect-vision curve --strategy select random`): does `select` pick better labels than
chance?

Per seed: start from `start` labelled defect images per class (subsets.few_shot, good images always kept), fine-tune
the detector and SAM (curve.Bench.train) and measure them on the test split (curve.Bench.measure). Then, for each
strategy, `rounds` times: add `step` more labelled images from the rest of the training split (the unlabelled
pool) and fine-tune again from the start models on all labels so far. `select` ranks the pool with the last
round's models through `defect-vision select`'s own code (the prediction spine, thresholds calibrated on val,
rarity from the labels so far); `random` draws them from a seeded generator. Metric vs labelled defect images,
mean and spread over seeds, per strategy. Writes <out>/results.json, selection_curve.png, data/, models/, select/."""
from __future__ import annotations

import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from defect_vision.errors import DatasetError
from defect_vision.experiments import common
from defect_vision.experiments.curve import METRICS, Bench, CurveConfig, start_of
from defect_vision.experiments.subsets import few_shot, labelled_counts

KIND = "selection_curve"
STRATEGIES = ("select", "random")


@dataclass(frozen=True)
class SelectionCurveConfig:
    """One active-learning curve over the fine-tunes of `curve` (its train/SAM templates, seeds, export, out)."""

    curve: CurveConfig
    strategies: tuple[str, ...] = STRATEGIES
    start: int = 1  # labelled defect images per class before the first round
    step: int = 4  # labelled images added per round
    rounds: int = 2
    weights: tuple[float, float, float] = (1.0, 1.0, 1.0)  # select's uncertainty, disagreement, rarity

    def __post_init__(self):
        unknown = [s for s in self.strategies if s not in STRATEGIES]
        if unknown or not self.strategies:
            raise DatasetError(f"--strategy {' '.join(unknown) or '(none)'}: expected {' and/or '.join(STRATEGIES)}")
        for name in ("start", "step", "rounds"):
            if getattr(self, name) < 1:
                raise DatasetError(f"--{name} {getattr(self, name)}: must be >= 1")


@dataclass
class Pool:
    """The training split's images, labelled so far and not yet (the unlabelled pool: defect images only; good
    images need no label and are always in)."""

    labelled: list[str]
    images: dict[str, set[str]]
    paths: dict[str, Path] = field(default_factory=dict)  # file_name -> image file

    @property
    def unlabelled(self) -> list[str]:
        taken = set(self.labelled)
        return [f for f, cls in self.images.items() if cls and f not in taken]

    def defects(self) -> int:
        return sum(bool(self.images[f]) for f in self.labelled)


def train_paths(config: CurveConfig) -> dict[str, Path]:
    """file_name -> image file of the training split (the COCO json's image root)."""
    from defect_vision.coco import load_coco

    coco = load_coco(config.export.coco / "instances_train.json", masks=False)
    return {im.file_name: Path(im.path) for im in coco.images}


def calibrated(bench: Bench, detector: Path, class_names: list[str]):
    """Per-class thresholds of `detector`, calibrated on val as `defect-vision calibrate` does (F1-max per class)."""
    from defect_vision.coco import load_coco
    from defect_vision.evaluation.thresholds import calibrate
    from defect_vision.experiments.measure import Vocabulary, detect
    from defect_vision.thresholds import ThresholdsFile, for_classes

    c = bench.config
    val = load_coco(c.export.coco / "instances_val.json", masks=False)
    found = detect(detector, val, Vocabulary.of(val), bench.encode, c.conf, c.train.imgsz, c.train.device)
    table = calibrate(val, found)
    return for_classes(ThresholdsFile(table.by_name, table.default), class_names, "run"), table.by_name


def pick_select(bench: Bench, pool: Pool, detector: Path, sam: Path, step: int, out: Path, weights, seed: int) -> list[str]:
    """`step` pool images ranked by `select` (inference.selection_run) with these models; writes its folder `out`."""
    import csv

    from defect_vision.inference.config import PredictConfig
    from defect_vision.inference.predictor import DefectPredictor
    from defect_vision.inference.run import RunOptions
    from defect_vision.inference.selection import SelectConfig, default_floor
    from defect_vision.inference.selection_run import SelectOptions, select_images

    unlabelled = pool.unlabelled
    manifest = out.parent / f"{out.name}_pool.csv"
    manifest.parent.mkdir(parents=True, exist_ok=True)
    with open(manifest, "w", newline="") as f:
        csv.writer(f).writerows([["image"], *([str(pool.paths[u])] for u in unlabelled)])
    c = bench.config
    thresholds, by_name = calibrated(bench, detector, bench.classes)  # the subset's classes = the detector's
    predictor = DefectPredictor(detector, sam, PredictConfig(conf=default_floor([*by_name.values(), thresholds.default]),
                                                             device=c.train.device, seed=seed, workers=1))
    counts = labelled_counts(pool.images, pool.labelled, bench.classes)
    summary = select_images(predictor, manifest, out, SelectConfig(step, tuple(weights), seed=seed), thresholds, counts,
                            RunOptions(progress=False), SelectOptions(annotations=(), force=True))
    by_path = {str(p.resolve()): f for f, p in pool.paths.items()}
    return [by_path[str(Path(im["path"]).resolve())] for im in summary["images"]]


def pick_random(pool: Pool, step: int, seed: int, round_: int) -> list[str]:
    rng = np.random.default_rng([seed, round_])
    unlabelled = sorted(pool.unlabelled)
    return [str(f) for f in rng.choice(unlabelled, size=min(step, len(unlabelled)), replace=False)]


def summarize(runs: list[dict], strategies: tuple[str, ...]) -> dict:
    """{strategy: {metric: [{labels, mean, min, max, n}]}} over seeds, by labelled defect images (round 0 is shared)."""
    out = {}
    for strategy in strategies:
        rows = [r for r in runs if r["strategy"] in (strategy, "start")]
        out[strategy] = {}
        for metric in METRICS:
            points = []
            for rnd in sorted({r["round"] for r in rows}):
                at = [r for r in rows if r["round"] == rnd]
                vals = [r[metric] for r in at if r[metric] is not None]
                points.append({"round": rnd, "labels": round(float(np.mean([r["labels"] for r in at])), 1),
                               "mean": round(float(np.mean(vals)), 4) if vals else None,
                               "min": min(vals) if vals else None, "max": max(vals) if vals else None, "n": len(vals)})
            out[strategy][metric] = points
    return out


def run_selection_curve(config: SelectionCurveConfig) -> dict:
    """The whole experiment into config.curve.out (replaced only when it completes); returns results.json's content."""
    t0 = time.time()
    c = config.curve
    train = c.train
    st = start_of(c)
    classes, encode, encoder_name, detector, inputs = st.classes, st.encode, st.encoder_name, st.detector, st.inputs
    with common.output_folder(c.out, KIND, inputs, c.force) as out:
        bench = Bench.of(c, out, classes, encode)
        runs = _rounds(config, bench)
        results = {
            "category": c.category, "experiment": KIND, "detector": detector, "text_encoder": encoder_name,
            "weights": common.start_model(train).weights, "strategies": list(config.strategies),
            "seeds": c.seeds, "start": config.start, "step": config.step, "rounds": config.rounds,
            "select_weights": list(config.weights),
            "protocol": f"per seed: {config.start} labelled defect image(s) per class (+ every good image), then "
                        f"{config.rounds} round(s) of +{config.step} images from the rest of train, chosen by each "
                        "strategy; every round fine-tunes detector and SAM from the start models on all labels so far; "
                        "select uses the last round's models with thresholds calibrated on val",
            "settings": {"epochs": train.epochs, "sam_epochs": c.sam.epochs, "imgsz": train.imgsz,
                         "sam_model_type": c.sam.model_type, "conf": c.conf, "score_threshold": c.score_threshold},
            "runs": runs, "summary": summarize(runs, config.strategies), "seconds": round(time.time() - t0, 1),
        }
        common.write_results(out, results)
        from defect_vision.evaluation.report_selection import selection_plot

        selection_plot(results, out / "selection_curve.png")
    return results


def _rounds(config: SelectionCurveConfig, bench: Bench) -> list[dict]:
    c = config.curve
    paths = train_paths(c)
    runs = []

    def fit(name: str, pool: Pool, seed: int, strategy: str, rnd: int, added: list[str], t1: float) -> tuple[Path, Path]:
        detector, sam, counts = bench.train(name, pool.labelled, seed, {"strategy": strategy, "round": rnd})
        runs.append({"strategy": strategy, "seed": seed, "round": rnd, "labels": pool.defects(), "added": added,
                     "labelled_per_class": counts, **bench.measure(detector, sam), "seconds": round(time.time() - t1, 1)})
        return detector, sam

    for seed in c.seeds:
        t1 = time.time()
        first = Pool(few_shot(bench.images, bench.classes, config.start, seed), bench.images, paths)
        start_models = fit(f"start_s{seed}", first, seed, "start", 0, [], t1)
        for strategy in config.strategies:
            pool, models = first, start_models
            for rnd in range(1, config.rounds + 1):
                t1 = time.time()
                if not pool.unlabelled:
                    break
                name = f"{strategy}_r{rnd}_s{seed}"
                added = (pick_select(bench, pool, *models, config.step, bench.out / "select" / name, config.weights, seed)
                         if strategy == "select" else pick_random(pool, config.step, seed, rnd))
                pool = Pool([*pool.labelled, *added], pool.images, paths)
                models = fit(name, pool, seed, strategy, rnd, added, t1)
    return runs


def summary_line(results: dict, out: Path) -> str:
    parts = []
    for strategy, metrics in results["summary"].items():
        last = {m: pts[-1] for m, pts in metrics.items() if pts}
        parts.append(f"{strategy}: " + ", ".join(f"{m} {p['mean']}" for m, p in last.items() if m != "sam_gt_box_mask_iou"))
    return (f"selection curve: {out / 'results.json'}: {len(results['runs'])} fine-tunes over seeds {results['seeds']}; "
            f"at the last round: {'; '.join(parts)}; {results['seconds']:.0f} s")
