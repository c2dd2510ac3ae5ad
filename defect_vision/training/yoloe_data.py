"""What a YOLOE -seg fine-tune needs from the YOLO export: polygon labels (its mask head trains on them)."""
from __future__ import annotations

from pathlib import Path

from defect_vision.errors import DatasetError
from defect_vision.training.detector_data import label_files, split_images


def check_polygon_labels(data_yaml: Path, data: dict, model: str) -> None:
    """DatasetError naming data.yaml when its train labels are boxes (5 numbers a line), not polygons."""
    _, images = split_images(data_yaml, data, "train")
    for path in label_files(images):
        lines = [line.split() for line in path.read_text().splitlines() if line.strip()] if path.is_file() else []
        if lines:
            if any(len(values) == 5 for values in lines):
                raise DatasetError(f"{data_yaml}: box labels ({path.name}); {model} is a YOLOE -seg model and trains "
                                   "on polygons: convert the category with --task segment, or start from a "
                                   "detect-only YOLOE model")
            return
