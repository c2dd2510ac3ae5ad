"""Data flows one way, and so do imports: a stage may use code of an earlier stage, never of a later one."""
from __future__ import annotations

import ast
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
# stage -> the project packages it may import
ALLOWED = {
    "converters": set(),
    "finetune": {"converters"},
    "inference": {"converters", "finetune"},
    "evaluation": {"converters"},
}


def imported_packages(path: Path) -> set[str]:
    tree = ast.parse(path.read_text(), filename=str(path))
    names = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            names |= {a.name.split(".")[0] for a in node.names}
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            names.add(node.module.split(".")[0])
    return names & set(ALLOWED)


def test_imports_never_reach_back_upstream():
    bad = []
    for stage, allowed in ALLOWED.items():
        for path in sorted((REPO / stage).rglob("*.py")):
            for pkg in imported_packages(path) - allowed - {stage}:
                bad.append(f"{path.relative_to(REPO)} imports {pkg}")
    assert not bad, "imports against the data flow:\n" + "\n".join(bad)


def test_checker_sees_a_violation(tmp_path):
    f = tmp_path / "x.py"
    f.write_text("import os\nfrom inference.predict import main\nimport finetune.sam as s\n")
    assert imported_packages(f) == {"inference", "finetune"}
