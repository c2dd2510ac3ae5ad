"""What a prediction run reports: the one-line summary and summary.json, the same for the local and the Ray engine."""
from __future__ import annotations

from collections import Counter
from dataclasses import asdict, dataclass, field
from pathlib import Path

from defect_vision.devices import Timings

COUNTERS = ("detector_calls", "sam_encoder_calls", "sam_encoder_batches", "sam_decoder_calls")


@dataclass
class Summary:
    images: int = 0  # images predicted
    skipped: list[str] = field(default_factory=list)  # one message per unreadable image
    detections: Counter = field(default_factory=Counter)  # class name -> count
    images_with_detections: int = 0
    sam_encoder_calls: int = 0  # images through SAM's image encoder
    sam_encoder_batches: int = 0  # image-encoder forwards
    sam_decoder_calls: int = 0
    detector_calls: int = 0
    parallel: dict = field(default_factory=dict)  # batch, model workers, torch threads per worker
    timings: Timings = field(default_factory=Timings)
    warnings: list[str] = field(default_factory=list)

    @property
    def images_per_s(self) -> float:
        return self.images / self.timings.wall if self.timings.wall > 0 else 0.0

    def set_counters(self, counters: dict) -> None:
        for k in COUNTERS:
            setattr(self, k, int(counters.get(k, 0)))

    def count(self, names: list[str]) -> None:
        """One predicted image with the class names of its detections."""
        self.images += 1
        self.images_with_detections += int(len(names) > 0)
        self.detections.update(names)

    def detections_text(self) -> str:
        per_class = ", ".join(f"{k} {v}" for k, v in sorted(self.detections.items())) or "none"
        return f"{sum(self.detections.values())} detections ({per_class})"

    def skipped_text(self) -> str:
        return f" ({len(self.skipped)} unreadable skipped)" if self.skipped else ""

    def line(self, out: Path) -> str:
        return (f"predicted {self.images} images{self.skipped_text()} in {self.timings.wall:.1f} s ({self.images_per_s:.2f} "
                f"img/s): {self.detections_text()}; SAM encoder ran on {self.sam_encoder_calls} images -> {out}")


@dataclass(frozen=True)
class RunFacts:
    """What summary.json says beside the counts: the models' classes, device and the run's settings."""

    names: list[str]  # class names (the detector's, or the ground truth's)
    category_ids: list[int] | None  # None: 1..N
    device: str | None
    autocast: str | None
    source: dict  # {"kind", "origin"}
    mode: str  # detector+sam | detector_masks | box_only | gt_boxes (run.run_mode)
    config: object  # PredictConfig
    options: object  # RunOptions
    thresholds: dict | None = None  # ClassThresholds.describe: which confidence thresholds applied


def jsonable(d: dict) -> dict:
    """Paths as text, callables (a stand-in text encoder) as "custom"."""
    return {k: (str(v) if isinstance(v, Path) else "custom" if callable(v) else v) for k, v in d.items()}


def summary_dict(s: Summary, facts: RunFacts, parallel: bool = True) -> dict:
    """summary.json of a run (the Ray engine adds its "engine" section)."""
    ids = facts.category_ids or list(range(1, len(facts.names) + 1))
    doc = {
        "images": s.images, "skipped": s.skipped, "images_with_detections": s.images_with_detections,
        "detections": sum(s.detections.values()), "detections_per_class": dict(sorted(s.detections.items())),
        "categories": {str(k): v for k, v in zip(ids, facts.names)},
        "sam_encoder_calls": s.sam_encoder_calls, "sam_encoder_batches": s.sam_encoder_batches,
        "sam_decoder_calls": s.sam_decoder_calls,
        "detector_calls": s.detector_calls, "images_per_s": round(s.images_per_s, 4),
        **({"parallel": s.parallel} if parallel else {}),
        "timings_s": s.timings.as_dict(), "device": facts.device, "autocast": facts.autocast,
        "source": facts.source, "mode": facts.mode, "thresholds": facts.thresholds,
        "config": jsonable(asdict(facts.config)),
        "options": jsonable(asdict(facts.options)), "warnings": s.warnings,
    }
    return doc
