"""Outputs never destroy inputs (issue 18, section 2): each case as a user meets it, on the CLI or the library --
the inputs stay byte-identical and the error is one line naming the output and the input; outputs through a
symlink; experiments interrupted mid-run keep the previous result; readers of an export complete (or refuse) a
commit left pending by an interrupted convert, so no moment mixes splits."""
from __future__ import annotations

import json
import os
import shutil
from functools import partial
from pathlib import Path

import pytest

from defect_vision.cli.convert import main as convert_main
from defect_vision.data.synthetic import make_category

to_all = partial(convert_main, prog="defect-vision convert")
to_coco = partial(convert_main, prog="mvtec_to_coco.py", fmt="coco")


def snapshot(*folders: Path) -> dict[str, bytes]:
    """Every file under the folders (links followed), by path: what must not change."""
    return {str(p): p.read_bytes() for f in folders for p in sorted(Path(f).rglob("*")) if p.is_file()}


def last_error(capsys) -> str:
    return capsys.readouterr().err.strip().splitlines()[-1]


@pytest.fixture
def tiny(tmp_path) -> Path:
    """An MVTec-layout category `tiny` under tmp_path/mvtec (2 defect types, small images)."""
    root = tmp_path / "mvtec"
    make_category(root, "tiny", size=64, defects=("hole", "stain"), per_defect=3, good_test=2, good_train=1,
                  combined=0, gray_every=0, seed=5)
    return root


@pytest.fixture
def parts(tiny, tmp_path) -> Path:
    """The same images as a folder-layout dataset: data/parts/<class>/<n>.png with <n>_mask.png beside it."""
    data = tmp_path / "data"
    for d in ("good", "hole", "stain"):
        for img in sorted((tiny / "tiny" / "test" / d).glob("*.png")):
            (data / "parts" / d).mkdir(parents=True, exist_ok=True)
            shutil.copy(img, data / "parts" / d / img.name)
            mask = tiny / "tiny" / "ground_truth" / d / f"{img.stem}_mask.png"
            if mask.is_file():
                shutil.copy(mask, data / "parts" / d / mask.name)
    return data


FOLDER = ["--images", "parts/*/*.png", "--masks", "{dir}/{stem}_mask.png"]


# ---------------------------------------------------------------- item 1: --format auto resolves to folder
@pytest.mark.parametrize("held", ["parts/hole", "parts"])
def test_auto_folder_layout_never_replaces_the_image_folder(parts, tmp_path, capsys, held):
    before = snapshot(parts)
    out = parts / held
    argv = ["--category", "p", "--root", str(parts), "--format", "auto", *FOLDER, "--out", str(out),
            "--splits", str(tmp_path / "s.json"), "--no-progress", "--force"]
    assert to_coco(argv) == 2
    err = last_error(capsys)
    assert err.startswith(f"error: {out}: output folder ") and "choose another output folder" in err
    assert snapshot(parts) == before


# ---------------------------------------------------------------- item 2: every file a converter reads
def test_manifest_and_names_files_are_inputs(parts, tmp_path, capsys):
    lists, cfg = tmp_path / "lists", tmp_path / "cfg"
    lists.mkdir()
    cfg.mkdir()
    images = [p.relative_to(parts) for p in sorted(parts.glob("parts/*/*.png")) if not p.stem.endswith("_mask")]
    rows = ["image,mask,label"] + [
        f"{p.as_posix()},{'' if p.parent.name == 'good' else (p.parent / f'{p.stem}_mask.png').as_posix()},{p.parent.name}"
        for p in images]
    manifest = lists / "manifest.csv"
    manifest.write_text("\n".join(rows) + "\n")
    names = cfg / "names.yaml"
    names.write_text("hole: a hole\nstain: a stain\n")
    base = ["--category", "p", "--root", str(parts), "--format", "folder", "--manifest", str(manifest),
            "--names", str(names), "--splits", str(tmp_path / "s.json"), "--no-progress", "--force"]
    before = snapshot(lists, cfg, parts)
    for out, held in ((lists, manifest), (cfg, names)):
        assert to_coco([*base, "--out", str(out)]) == 2
        assert last_error(capsys) == (f"error: {out}: output folder holds the input {held}; choose another output "
                                      "folder (it would be replaced as a whole)")
        assert snapshot(lists, cfg, parts) == before
    assert to_coco([*base, "--out", str(tmp_path / "coco")]) == 0  # elsewhere: written
    assert json.loads((tmp_path / "coco" / "instances_train.json").read_text())["images"]


def test_visa_benchmark_split_csv_is_an_input(tmp_path, capsys):
    from fixtures.synthetic_other_layouts import make_visa

    root = tmp_path / "visa"
    make_visa(root)
    before = snapshot(root)
    out = root / "split_csv"
    assert to_coco(["--category", "candle", "--root", str(root), "--format", "visa", "--benchmark-split",
                    "--out", str(out), "--splits", str(tmp_path / "s.json"), "--no-progress", "--force"]) == 2
    assert last_error(capsys) == (f"error: {out}: output folder holds the input {root / 'split_csv' / '1cls.csv'}; "
                                  "choose another output folder (it would be replaced as a whole)")
    assert snapshot(root) == before


# ---------------------------------------------------------------- item 3: symlinked images and masks
def test_symlinked_images_guard_the_folder_they_point_to(tiny, tmp_path, capsys):
    """The images and masks are links (as in the project's own YOLO export) into the category: --out the folder
    they point to is refused, --force or not."""
    links = tmp_path / "links"
    for d in ("hole", "stain"):
        for img in sorted((tiny / "tiny" / "test" / d).glob("*.png")):
            (links / "parts" / d).mkdir(parents=True, exist_ok=True)
            (links / "parts" / d / img.name).symlink_to(img)
            (links / "parts" / d / f"{img.stem}_mask.png").symlink_to(
                tiny / "tiny" / "ground_truth" / d / f"{img.stem}_mask.png")
    before = snapshot(tiny)
    for out in (tiny / "tiny" / "test" / "hole", tiny / "tiny" / "ground_truth", tiny / "tiny" / "test"):
        assert to_coco(["--category", "p", "--root", str(links), *FOLDER, "--format", "folder", "--out", str(out),
                        "--splits", str(tmp_path / "s.json"), "--no-progress", "--force"]) == 2
        err = last_error(capsys)
        assert err.startswith(f"error: {out}: output folder ") and "(it would be replaced as a whole)" in err
        assert snapshot(tiny) == before


def test_check_output_dir_compares_inputs_as_given_and_resolved(tmp_path):
    from defect_vision.errors import OutputError
    from defect_vision.io import check_output_dir

    real = tmp_path / "real"
    (real / "img").mkdir(parents=True)
    (tmp_path / "link").symlink_to(real)
    with pytest.raises(OutputError, match="output folder holds the input"):  # the input through a link
        check_output_dir(real, "k", inputs=[tmp_path / "link" / "img"], force=True)
    with pytest.raises(OutputError, match="output folder is the input"):  # the output through a link
        check_output_dir(tmp_path / "link", "k", inputs=[real], force=True)
    check_output_dir(tmp_path / "elsewhere", "k", inputs=[tmp_path / "link" / "img"])


# ---------------------------------------------------------------- item 17: --out a symlink to a folder
def test_out_symlink_to_a_folder_is_written_through_the_link(tiny, tmp_path, capsys):
    big = tmp_path / "big_disk" / "coco_tiny"
    big.mkdir(parents=True)
    out = tmp_path / "coco_link"
    out.symlink_to(big, target_is_directory=True)
    common = ["--category", "tiny", "--root", str(tiny), "--splits", str(tmp_path / "s.json"), "--no-progress"]
    argv = [*common, "--out", str(out)]
    assert to_coco(argv) == 0  # an empty folder behind the link
    assert out.is_symlink() and Path(os.readlink(out)) == big
    first = json.loads((big / "instances_test.json").read_text())
    assert first["images"] and (big / ".defect-vision.json").is_file()
    assert to_coco(argv) == 0  # a previous output of the kind behind the link: replaced, link kept
    assert out.is_symlink() and json.loads((big / "instances_test.json").read_text()) == first
    (big / ".defect-vision.json").unlink()
    assert to_coco(argv) == 2  # not a previous output: --force needed, as for a folder
    assert "pass --force to replace it" in last_error(capsys)
    assert to_coco([*argv, "--force"]) == 0 and out.is_symlink()
    assert not [p for p in big.parent.iterdir() if p.name.startswith(".")]  # no temporary or old folder left
    a_file = tmp_path / "file.txt"
    a_file.write_text("keep")
    link_to_file = tmp_path / "file_link"
    link_to_file.symlink_to(a_file)
    assert to_coco([*common, "--out", str(link_to_file), "--force"]) == 2
    assert last_error(capsys) == f"error: {link_to_file}: exists and is not a folder; choose another output folder"
    assert a_file.read_text() == "keep"


def test_atomic_dir_through_a_symlink_keeps_the_link(tmp_path):
    from defect_vision.io import atomic_dir

    target = tmp_path / "target"
    target.mkdir()
    link = tmp_path / "out"
    link.symlink_to(target)
    with atomic_dir(link, "k") as tmp:
        (tmp / "a.txt").write_text("1")
    with atomic_dir(link, "k") as tmp:
        (tmp / "b.txt").write_text("2")
    assert link.is_symlink() and sorted(p.name for p in target.iterdir()) == [".defect-vision.json", "b.txt"]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out", "target"]


# ---------------------------------------------------------------- item 21: readers complete a pending commit
def _split_of_each_format(out: Path, category: str) -> dict[str, dict[str, list[str]]]:
    got: dict[str, dict[str, list[str]]] = {"coco": {}, "yolo": {}}
    for s in ("train", "val", "test"):
        got["coco"][s] = sorted(im["file_name"] for im in json.loads(
            (out / "coco" / category / f"instances_{s}.json").read_text())["images"])
        got["yolo"][s] = sorted(p.name.replace("_", "/", 2) for p in (out / "yolo" / category / "images" / s).iterdir())
    got["splits.json"] = {s: sorted(v) for s, v in
                          json.loads((out / "splits" / f"{category}.json").read_text())["splits"].items()}
    return got


def _fail_at(monkeypatch, target_part: str) -> None:
    """os.replace raises (an I/O fault) when it renames onto a path containing `target_part`."""
    real = os.replace

    def replace(a, b):
        if target_part in str(b) and not str(b).endswith(".json"):
            raise OSError(5, "Input/output error", str(b))
        return real(a, b)

    monkeypatch.setattr(os, "replace", replace)


@pytest.mark.parametrize("reader", ["load_coco", "experiments"])
def test_a_fault_in_the_commit_is_completed_by_a_reader(tiny, tmp_path, monkeypatch, capsys, reader):
    """A re-export with a new split fails at the YOLO step of its commit: COCO is on the new split, YOLO and
    splits.json on the old one. load_coco (evaluate, predict --coco) and the experiments (openvocab, curve: before
    they read the exports) complete the commit first, so what they read agrees with every other format."""
    from defect_vision.coco import load_coco
    from defect_vision.experiments.common import settle
    from defect_vision.experiments.subsets import Export

    out = tmp_path / "datasets"
    base = ["--category", "tiny", "--root", str(tiny), "--out", str(out), "--formats", "coco", "yolo",
            "--no-progress"]
    assert to_all(base) == 0
    old = _split_of_each_format(out, "tiny")
    with monkeypatch.context() as m:
        _fail_at(m, str(out / "yolo"))
        assert to_all([*base, "--seed", "3", "--resplit"]) == 2
    assert "Input/output error" in last_error(capsys)
    assert (out / "coco" / ".tiny.commit.json").is_file()  # the journal beside each target: findable by a reader
    if reader == "experiments":
        settle(Export(out / "coco" / "tiny", out / "yolo" / "tiny", out / "sam" / "tiny"))
        assert not (out / "coco" / ".tiny.commit.json").exists()
    gt = load_coco(out / "coco" / "tiny" / "instances_test.json")
    new = _split_of_each_format(out, "tiny")
    assert new["coco"] == new["yolo"] == new["splits.json"] != old["splits.json"]
    assert sorted(im.file_name for im in gt.images) == new["splits.json"]["test"]
    assert not [p for p in out.rglob(".*") if p.name != ".defect-vision.json"]


def test_an_interrupted_commit_leaves_no_missing_coco_for_evaluate(tiny, tmp_path):
    """kill -9 after the COCO folder was moved aside: `evaluate` (through load_coco) completes the commit instead
    of saying instances_test.json is missing."""
    import signal
    import subprocess
    import sys

    from defect_vision.coco import load_coco

    out = tmp_path / "datasets"
    base = ["--category", "tiny", "--root", str(tiny), "--out", str(out), "--formats", "coco", "yolo", "--no-progress"]
    assert to_all(base) == 0
    killer = (
        "import os, signal, sys\n"
        "real_rename = os.rename\n"
        "def rename(a, b):\n"
        "    real_rename(a, b)\n"
        "    if str(b).endswith('.tiny.old'): os.kill(os.getpid(), signal.SIGKILL)\n"
        "os.rename = rename\n"
        "from defect_vision.cli.convert import main\n"
        "sys.exit(main(sys.argv[1:]))\n")
    res = subprocess.run([sys.executable, "-c", killer, *base, "--seed", "2", "--resplit"], capture_output=True,
                         text=True)
    assert res.returncode == -signal.SIGKILL, res.stderr
    assert not (out / "coco" / "tiny").exists() and (out / "coco" / ".tiny.old").is_dir()
    gt = load_coco(out / "coco" / "tiny" / "instances_test.json")
    new = _split_of_each_format(out, "tiny")
    assert new["coco"] == new["yolo"] == new["splits.json"]
    assert sorted(im.file_name for im in gt.images) == new["splits.json"]["test"]


def test_a_commit_of_a_live_process_is_refused_after_waiting(tmp_path):
    import subprocess
    import sys

    from defect_vision.errors import DatasetError
    from defect_vision.io import complete_pending, journal_beside

    target = tmp_path / "coco" / "c"
    target.mkdir(parents=True)
    other = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(30)"])
    try:
        journal_beside(target).write_text(json.dumps({"pid": other.pid, "moves": []}))
        with pytest.raises(DatasetError, match=f"a commit by process {other.pid} is still running"):
            complete_pending(target / "instances_test.json", wait_s=0.2)
    finally:
        other.kill()
        other.wait()
    complete_pending(target / "instances_test.json")  # the process is gone: completed (nothing to rename)
    assert not journal_beside(target).exists()


# ---------------------------------------------------------------- items 4, 5: the experiments
@pytest.fixture
def export(tiny, tmp_path) -> Path:
    """tiny converted into <datasets>/{coco,yolo,sam}/tiny."""
    ds = tmp_path / "datasets"
    assert to_all(["--category", "tiny", "--root", str(tiny), "--out", str(ds), "--formats", "coco", "yolo", "sam",
                   "--no-progress"]) == 0
    return ds


def _tiny_sam(path: Path) -> Path:
    import torch

    from defect_vision.models.sam import build_random_sam

    path.parent.mkdir(parents=True, exist_ok=True)
    torch.save(build_random_sam("vit_tiny", 0).state_dict(), path)
    return path


def test_openvocab_never_replaces_the_folder_of_its_sam_checkpoint(export, tmp_path, capsys):
    from defect_vision.cli import main

    run = tmp_path / "runs" / "tiny"
    sam = _tiny_sam(run / "sam" / "best.pth")
    before = snapshot(run)
    assert main(["openvocab", "--category", "tiny", "--datasets", str(export), "--fast", "--sam", str(sam),
                 "--sam-model-type", "vit_tiny", "--out", str(run), "--force"]) == 2
    assert last_error(capsys) == (f"error: {run}: output folder holds the input {sam}; choose another output folder "
                                  "(it would be replaced as a whole)")
    assert snapshot(run) == before


def test_curve_never_replaces_the_folder_of_its_sam_checkpoint(export, tmp_path, capsys):
    from defect_vision.cli import main

    run = tmp_path / "runs" / "tiny"
    sam = run / "weights" / "sam.pth"
    sam.parent.mkdir(parents=True)
    sam.write_bytes(b"checked before it is read")
    before = snapshot(run)
    assert main(["curve", "--category", "tiny", "--datasets", str(export), "--fast", "--sam-checkpoint", str(sam),
                 "--out", str(run), "--force"]) == 2
    assert last_error(capsys) == (f"error: {run}: output folder holds the input {sam}; choose another output folder "
                                  "(it would be replaced as a whole)")
    assert snapshot(run) == before


def test_experiments_never_replace_the_images_of_the_export(export, tiny, capsys):
    from defect_vision.cli import main

    before = snapshot(tiny)
    out = tiny / "tiny"
    assert main(["curve", "--category", "tiny", "--datasets", str(export), "--fast", "--out", str(out), "--force"]) == 2
    assert last_error(capsys).startswith(f"error: {out}: output folder is the input ")
    assert snapshot(tiny) == before


@pytest.mark.parametrize("command", ["openvocab", "curve"])
def test_ctrl_c_during_a_rerun_keeps_the_previous_result(export, tmp_path, monkeypatch, capsys, command):
    from defect_vision.cli import main
    from defect_vision.experiments import common

    out = tmp_path / "runs" / "tiny" / command
    out.mkdir(parents=True)
    (out / ".defect-vision.json").write_text(json.dumps({"kind": command}) + "\n")
    (out / "results.json").write_text('{"previous": "complete"}\n')
    before = snapshot(out)
    calls = []

    def interrupted(path, *args, **kwargs):
        calls.append(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(b"half")  # something written, then Ctrl-C
        raise KeyboardInterrupt

    monkeypatch.setattr(common, "zero_shot_model", interrupted)
    assert main([command, "--category", "tiny", "--datasets", str(export), "--fast", "--out", str(out)]) == 130
    assert last_error(capsys) == "interrupted (nothing half-written was kept)"
    assert calls and out not in calls[0].parents  # it wrote elsewhere (a temporary folder) ...
    assert snapshot(out) == before  # ... and the previous complete result is as it was
    assert sorted(p.name for p in out.parent.iterdir()) == [command]  # no half folder beside it


def test_openvocab_result_is_complete_and_names_its_final_folder(export, tmp_path, capsys):
    """A whole (fast) run through the temporary folder: the derived training set's data.yaml names the final
    folder, not the temporary one."""
    import yaml

    from defect_vision.cli import main

    out = tmp_path / "runs" / "tiny" / "openvocab"
    assert main(["openvocab", "--category", "tiny", "--datasets", str(export), "--fast", "--epochs", "1",
                 "--no-seen", "--classes", "hole", "--out", str(out)]) == 0
    results = json.loads((out / "results.json").read_text())
    assert [r["class"] for r in results["rows"]] == ["hole"] and results["seconds"] >= 0
    assert results["mask_source"].startswith("boxes")
    data = yaml.safe_load((out / "data" / "without_hole" / "yolo" / "data.yaml").read_text())
    assert Path(data["path"]) == (out / "data" / "without_hole" / "yolo").resolve()
    assert (Path(data["path"]) / "images" / "train").is_dir()
    assert sorted(p.name for p in out.parent.iterdir()) == ["openvocab"]


# ---------------------------------------------------------------- item 19: prompts.yaml naming a class the data lacks
@pytest.mark.parametrize("command", ["openvocab", "curve"])
def test_experiments_refuse_prompts_naming_a_class_the_data_lacks(export, tmp_path, capsys, command):
    """As train-detector does: a typo in prompts.yaml ("scratchh") would otherwise silently keep the default prompt."""
    from defect_vision.cli import main

    prompts = export / "coco" / "tiny" / "prompts.yaml"
    prompts.write_text("scratchh: [a long thin scratch]\n")
    out = tmp_path / "experiment"
    assert main([command, "--category", "tiny", "--datasets", str(export), "--fast", "--out", str(out)]) == 2
    err = last_error(capsys)
    assert err.startswith(f"error: {prompts}: classes scratchh are not in the training data (its classes: ") and "\n" not in err
    assert not out.exists()


@pytest.mark.parametrize("fail_at", ["_write_marker", "atomic_write_text"])
def test_a_full_disk_at_the_marker_or_journal_leaves_nothing_beside_the_output(tmp_path, monkeypatch, fail_at):
    """ENOSPC while writing the marker (Commit.folder) or the journal (Commit.commit): the temporary folder is
    removed, the previous output stays as it was (issue 18, item 18's "nothing was written")."""
    import errno

    import defect_vision.io as io_mod

    out = tmp_path / "out"
    with io_mod.atomic_dir(out, "predict") as tmp:
        (tmp / "old.txt").write_text("previous run")
    before = snapshot(tmp_path)

    def full(*a, **k):
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(io_mod, fail_at, full)
    with pytest.raises(OSError, match="No space left"):
        with io_mod.atomic_dir(out, "predict") as tmp:
            (tmp / "new.txt").write_text("this run")
    assert snapshot(tmp_path) == before and sorted(p.name for p in tmp_path.iterdir()) == ["out"]
