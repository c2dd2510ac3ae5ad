"""Per-class confidence thresholds (defect_vision.evaluation.calibrate's file) applied to detections after NMS."""
from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from defect_vision.errors import DatasetError
from defect_vision.io import read_json


@dataclass
class ClassThresholds:
    by_class: dict[int, float]  # class index -> threshold
    default: float  # for classes not listed
    warnings: list[str] = field(default_factory=list)

    @property
    def nms_conf(self) -> float:
        """The confidence NMS must keep: the lowest threshold in use."""
        return min([self.default, *self.by_class.values()])

    def apply(self, det):
        """Keep the detections whose score reaches their class's threshold."""
        if not self.by_class or len(det) == 0:
            return det
        need = np.array([self.by_class.get(int(c), self.default) for c in det.class_id], np.float32)
        return det[det.score.astype(np.float32) >= need]  # float32, as the detector scores them


def load_thresholds(path: Path, class_names: list[str], conf: float) -> ClassThresholds:
    """{"thresholds": {"<class name>": t, ...}, "default": t}; classes not listed use 'default', else `conf`."""
    data = read_json(path, "thresholds")
    if not isinstance(data, dict) or not isinstance(data.get("thresholds"), dict):
        raise DatasetError(f"{path}: expected {{\"thresholds\": {{\"<class name>\": 0.3, ...}}, \"default\": 0.25}}")
    default = data.get("default", conf)
    index = {name: k for k, name in enumerate(class_names)}
    by_class, warnings = {}, []
    for name, value in [("default", default), *data["thresholds"].items()]:
        if not isinstance(value, (int, float)) or isinstance(value, bool) or not 0.0 <= value <= 1.0:
            raise DatasetError(f"{path}: threshold of '{name}' must be a number in [0, 1], got {value!r}")
    for name, value in data["thresholds"].items():
        if name in index:
            by_class[index[name]] = float(value)
        else:
            warnings.append(f"{path}: threshold for unknown class '{name}' ignored (classes: {', '.join(index)})")
    return ClassThresholds(by_class, float(default), warnings)
