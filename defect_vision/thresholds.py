"""The per-class thresholds file (`defect-vision calibrate` writes it; predict, export and the report read it):
{"thresholds": {"<class name>": t, ...}, "default": t, "stats": {"<class name>": {..., "calibrated": bool}}}.

One reader and one writer for every stage, and the one rule for which thresholds a prediction uses:
1. a thresholds file the user names (`--thresholds`) applies: its classes their value, the others its default;
2. else an explicit `--conf` applies to every class (a run's or an export's thresholds file is not used);
3. else the run's (or export's) thresholds file, when it calibrated at least one class;
4. else 0.25 for every class.
"""
from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from defect_vision.errors import DatasetError, OutputError
from defect_vision.io import atomic_write_text, read_json

DEFAULT_CONF = 0.25  # the detector's confidence when nothing else is given
SHAPE = '{"thresholds": {"<class name>": 0.3, ...}, "default": 0.25}'


def _threshold(path: Path, name: str, value) -> float:
    if not isinstance(value, (int, float)) or isinstance(value, bool) or not 0.0 <= value <= 1.0:
        raise DatasetError(f"{path}: threshold of '{name}' must be a number in [0, 1], got {value!r}")
    return float(value)


@dataclass(frozen=True)
class ThresholdsFile:
    """A thresholds file as read: class name -> threshold, the default for the others, and whether any class was
    calibrated (a file whose stats say no class was is the default for every class)."""

    by_name: dict[str, float]
    default: float | None  # None: the file names none (the caller's conf applies)
    calibrated: bool = True
    path: Path | None = None

    @classmethod
    def load(cls, path: Path) -> ThresholdsFile:
        """The file at `path`; DatasetError naming it when missing or not of the calibrate shape."""
        path = Path(path)
        data = read_json(path, "thresholds")
        if not isinstance(data, dict) or not isinstance(data.get("thresholds"), dict):
            raise DatasetError(f"{path}: expected {SHAPE}")
        default = _threshold(path, "default", data["default"]) if data.get("default") is not None else None
        by_name = {str(k): _threshold(path, str(k), v) for k, v in data["thresholds"].items()}
        stats = data.get("stats")
        calibrated = True
        if isinstance(stats, dict) and stats and all(isinstance(s, dict) and "calibrated" in s for s in stats.values()):
            calibrated = any(bool(s["calibrated"]) for s in stats.values())
        return cls(by_name, default, calibrated, path)

    def save(self, path: Path, stats: dict | None = None, inputs=()) -> None:
        """Write the file atomically; refused when `path` is a folder or one of `inputs`."""
        path = Path(path)
        if path.is_dir():
            raise OutputError(f"{path}: is a folder, not a file (the thresholds json goes there)")
        if any(Path(p).resolve() == path.resolve() for p in inputs):
            raise OutputError(f"{path}: is an input of this command; choose another output file")
        doc = {"thresholds": self.by_name, "default": self.default, **({"stats": stats} if stats is not None else {})}
        atomic_write_text(path, json.dumps(doc, indent=2) + "\n")


@dataclass
class ClassThresholds:
    """The thresholds a prediction applies after NMS, by class index."""

    by_class: dict[int, float]  # class index -> threshold
    default: float  # for classes not listed
    warnings: list[str] = field(default_factory=list)
    source: str = "conf"  # where they come from: conf | thresholds (a file the user named) | run (the run's/export's file)

    @property
    def nms_conf(self) -> float:
        """The confidence NMS must keep: the lowest threshold in use."""
        return min([self.default, *self.by_class.values()])

    def describe(self, class_names: list[str]) -> dict:
        """What summary.json says of them: where they come from, the default and each listed class's value."""
        return {"source": self.source, "default": self.default,
                "per_class": {class_names[k]: t for k, t in sorted(self.by_class.items()) if k < len(class_names)}}

    def apply(self, det):
        """Keep the detections whose score reaches their class's threshold."""
        if not self.by_class or len(det) == 0:
            return det
        need = np.array([self.by_class.get(int(c), self.default) for c in det.class_id], np.float32)
        return det[det.score.astype(np.float32) >= need]  # float32, as the detector scores them


def for_classes(file: ThresholdsFile, class_names: list[str], source: str, conf: float | None = None) -> ClassThresholds:
    """A file's thresholds by class index of `class_names` (classes not listed: its default, else `conf`, else
    DEFAULT_CONF); a class the model does not know is a warning."""
    index = {name: k for k, name in enumerate(class_names)}
    by_class = {index[n]: t for n, t in file.by_name.items() if n in index}
    warnings = [f"{file.path}: threshold for unknown class '{n}' ignored (classes: {', '.join(index)})"
                for n in file.by_name if n not in index]
    default = file.default if file.default is not None else (conf if conf is not None else DEFAULT_CONF)
    return ClassThresholds(by_class, default, warnings, source)


def choose(class_names: list[str], conf: float | None, named: Path | None, implied: Path | None) -> ClassThresholds:
    """The module docstring's rule: `named` (the user's --thresholds) > an explicit `conf` > `implied` (the run's or
    export's file, when it calibrated a class) > DEFAULT_CONF."""
    if named is not None:
        return for_classes(ThresholdsFile.load(named), class_names, "thresholds", conf)
    if conf is not None:
        return ClassThresholds({}, conf, source="conf")
    if implied is not None:
        file = ThresholdsFile.load(implied)
        if file.calibrated:
            return for_classes(file, class_names, "run")
    return ClassThresholds({}, DEFAULT_CONF, source="conf")
