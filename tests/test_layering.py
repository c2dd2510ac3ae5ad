"""Data flows one way, and so do imports: readers -> record -> formats -> models -> training -> inference ->
evaluation. A part of `defect_vision` may use an earlier part, never a later one; the CLI sits on top of all."""
from __future__ import annotations

import ast
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
PKG = REPO / "defect_vision"
CORE = {"errors", "io", "masks", "detections", "coco", "devices", "offline", "thresholds", "run_folder", "lazy"}  # shared by every stage
# part -> the parts it may import (besides itself and the core modules)
ALLOWED = {
    "core": set(),
    "data": set(),
    "formats": {"data"},
    "models": set(),
    "training": {"data", "formats", "models"},
    "inference": {"data", "formats", "models"},
    "evaluation": {"data", "formats"},
    # orchestration over several stages: Ray batch inference, open-vocabulary and label-count experiments
    "distributed": {"data", "formats", "models", "inference", "evaluation"},
    "experiments": {"data", "formats", "models", "training", "inference", "evaluation"},
    "cli": {"data", "formats", "models", "training", "inference", "evaluation", "distributed", "experiments"},
}


def part_of(module: str) -> str | None:
    """'defect_vision.inference.run' -> 'inference'; core modules -> 'core'; anything else -> None."""
    parts = module.split(".")
    if parts[0] != "defect_vision" or len(parts) < 2:
        return None
    return "core" if parts[1] in CORE else parts[1]


def imported_parts(path: Path) -> set[str]:
    tree = ast.parse(path.read_text(), filename=str(path))
    names = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            names |= {a.name for a in node.names}
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            names.add(node.module)
            names |= {f"{node.module}.{a.name}" for a in node.names if node.module == "defect_vision"}
    return {p for p in map(part_of, names) if p is not None}


def test_imports_never_reach_back_upstream():
    bad = []
    for path in sorted(PKG.rglob("*.py")):
        rel = path.relative_to(PKG)
        if len(rel.parts) == 1:
            if rel.stem not in CORE:
                continue  # __init__ / __main__: the API surface and entry point
            part = "core"
        else:
            part = rel.parts[0]
        assert part in ALLOWED, f"{rel}: unknown part {part} (add it to ALLOWED)"
        for other in imported_parts(path) - ALLOWED[part] - {part, "core"}:
            bad.append(f"defect_vision/{rel} ({part}) imports {other}")
    assert not bad, "imports against the data flow:\n" + "\n".join(bad)


def test_no_top_level_package_but_defect_vision():
    """converters/ and finetune/ hold scripts run by path, not packages (pip install puts only defect_vision)."""
    for folder in ("converters", "finetune"):
        assert not (REPO / folder / "__init__.py").exists()
    for gone in ("inference", "evaluation"):
        assert not (REPO / gone).exists()


def test_checker_sees_a_violation(tmp_path):
    f = tmp_path / "x.py"
    f.write_text("import os\nfrom defect_vision.inference.run import predict_run\nimport defect_vision.training.sam as s\n"
                 "from defect_vision import coco\n")
    assert imported_parts(f) == {"inference", "training", "core"}
