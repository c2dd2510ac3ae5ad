"""The dataset options of every command that reads a dataset with the readers (convert, train-anomaly): one set of
flags, one DatasetSource from them."""
from __future__ import annotations

import argparse
from pathlib import Path


def add_reader_options(p: argparse.ArgumentParser) -> None:
    from defect_vision.data.source import (
        FORMATS,  # a light module: --help imports no OpenCV
    )

    p.add_argument("--root", type=Path, default=Path("datasets/mvtec_ad"),
                   help="dataset root (coco, labelstudio, cvat: images; yolo: data.yaml's)")
    p.add_argument("--format", dest="layout", choices=FORMATS, default="mvtec",
                   help="dataset layout (see docs/formats.md); auto detects it and says which it found")
    p.add_argument("--annotations", type=Path, default=None,
                   help="coco: the instances json; labelstudio: the JSON export; cvat: annotations.xml (CVAT for images "
                        "1.1). coco without it finds Roboflow, CVAT and Label Studio COCO exports under --root")
    p.add_argument("--mask-threshold", type=int, default=0,
                   help="a mask pixel is defect when its value is > this (lossy JPEG or anti-aliased masks)")
    p.add_argument("--defect-name", default="defect",
                   help="class of every defect in layouts without defect-type names (mvtec_ad2, kolektor2)")
    p.add_argument("--names", type=Path, default=None,
                   help="YAML mapping class name -> prompt text (or a list: prompt first, then synonyms)")
    p.add_argument("--images", default=None, help="folder layout: glob of the images, relative to --root "
                                                  "(e.g. 'parts/**/*.png')")
    p.add_argument("--masks", default=None, help="folder layout: mask path template, {dir} = the image's folder, "
                                                 "{stem} = its name without suffix (e.g. '{dir}/../masks/{stem}_mask.png')")
    p.add_argument("--manifest", type=Path, default=None,
                   help="folder layout: CSV with columns image,mask[,label] (paths relative to --root; empty mask = good)")
    p.add_argument("--strict", action="store_true",
                   help="what a reader skips with one warning line is an error instead (visa: an image_anno.csv row "
                        "whose image is not on disk; coco, yolo, labelstudio, cvat: unknown classes, annotations of "
                        "missing images, shapes outside the image or with no pixel)")
    p.add_argument("--benchmark-split", action="store_true",
                   help="visa, kolektor2, coco (Roboflow), yolo, cvat: the dataset's own split (VisA: split_csv/1cls.csv, "
                        "whose train has only good images; KolektorSDD2: its train/ and test/; Roboflow: train/valid/"
                        "test; YOLO: data.yaml's train/val/test; CVAT: the images' subsets); a test shared with no val is "
                        "split between val and test by the --split ratios")
    p.add_argument("--min-area", type=int, default=10, help="drop mask components smaller than this (pixels)")


def source_of(a: argparse.Namespace):
    """The DatasetSource the reader options (and --category) name."""
    from defect_vision.data.source import DatasetSource

    return DatasetSource(a.root, a.category, a.min_area, a.layout, a.mask_threshold, a.defect_name, a.names, a.images,
                         a.masks, a.manifest, a.benchmark_split, a.strict, a.annotations)
