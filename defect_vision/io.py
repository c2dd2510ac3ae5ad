"""File I/O every stage shares: JSON read with errors that name the file, and outputs that never lose data.

Every output is written to a temporary path beside its target and renamed at the end, so readers never see a
half-written file. A folder output carries a marker file (`.defect-vision.json`, naming the command that wrote
it); an existing folder is only ever replaced when it carries the marker of the same kind, or is empty, or with
`force` -- and never when it holds (or lies inside) one of the command's inputs. Several outputs that belong
together (the formats of one export and its split) are replaced as one commit through a journal, linked beside
every target: an interrupted commit is completed by the next run or by the next reader (`complete_pending`).
Temporary files of killed runs are removed by the next run.
"""
from __future__ import annotations

import json
import os
import shutil
import tempfile
import time
from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from pathlib import Path

from defect_vision.errors import DatasetError, OutputError

MARKER = ".defect-vision.json"
_TMP = ".tmp"


def read_json(path: Path, what: str = "") -> object:
    """Parsed JSON; DatasetError naming the file (and what it should be, e.g. "COCO json") when missing or malformed."""
    path = Path(path)
    if not path.exists():
        raise DatasetError(f"{path}: missing (no such {what + ' ' if what else ''}file)")
    if not path.is_file():
        raise DatasetError(f"{path}: is a folder, not a {what + ' ' if what else ''}file")
    try:
        return json.loads(path.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise DatasetError(f"{path}: not valid JSON ({exc})") from None


def json_bytes(obj: object, indent: bool = False) -> bytes:
    """JSON text of `obj` as bytes, by orjson (about 10x the standard library on the exports' polygon lists)."""
    import orjson

    return orjson.dumps(obj, option=orjson.OPT_INDENT_2 if indent else 0)


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def _temp_prefix(path: Path) -> str:
    """`.<name>.<pid>.`: the pid tells a live run's temporary files from a killed run's."""
    return f".{path.name}.{os.getpid()}."


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def remove_stale_temps(folder: Path, name: str | None = None) -> list[Path]:
    """Remove `.<name>.<pid>.*.tmp` files and folders in `folder` left by runs that are no longer alive (all names
    when `name` is None); returns what was removed."""
    folder = Path(folder)
    removed = []
    if not folder.is_dir():
        return removed
    for p in folder.iterdir():
        if not (p.name.startswith(".") and p.name.endswith(_TMP)):
            continue
        parts = p.name[1:].split(".")
        pid = next((int(s) for s in reversed(parts[:-2]) if s.isdigit()), None) if len(parts) >= 4 else None
        if pid is None or pid == os.getpid() or _pid_alive(pid):
            continue
        if name is not None and not p.name.startswith(f".{name}.{pid}."):
            continue
        if p.is_dir() and not p.is_symlink():
            shutil.rmtree(p, ignore_errors=True)
        else:
            p.unlink(missing_ok=True)
        removed.append(p)
    return removed


def temp_name(path: Path) -> Path:
    """A fresh temporary name beside `path`, `.<name>.<pid>.<random>.tmp` (nothing is created): for writers that
    must be handed a path (ultralytics' checkpoint saves); remove_stale_temps cleans it once this process is dead."""
    path = Path(path)
    return path.with_name(f"{_temp_prefix(path)}{os.urandom(4).hex()}{_TMP}")


def replace_durably(tmp: Path, target: Path) -> None:
    """fsync `tmp`, then rename it over `target`: a reader (or a power cut) sees the old file or the new one."""
    fd = os.open(tmp, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)
    os.replace(tmp, target)


@contextmanager
def atomic_path(path: Path, durable: bool = False) -> Iterator[Path]:
    """Yield a temporary path beside `path` to write; on success it becomes `path` (with the mode open() would
    give it), on error it is removed. Readers never see a half-written file; with `durable` the data is also on
    disk (fsync) before the rename, so not even a power cut leaves a truncated file (checkpoints)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=_temp_prefix(path), suffix=_TMP, dir=path.parent)
    os.close(fd)
    try:
        yield Path(tmp)
        os.chmod(tmp, 0o666 & ~_umask())  # mkstemp makes 0600
        (replace_durably if durable else os.replace)(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def atomic_write_text(path: Path, text: str) -> None:
    with atomic_path(path) as tmp:
        tmp.write_text(text)


def torch_save(obj: object, path: Path, durable: bool = False) -> None:
    """torch.save through a temporary file (atomic_path): a kill never leaves a truncated checkpoint."""
    import torch

    with atomic_path(Path(path), durable) as tmp:
        torch.save(obj, tmp)


# ---------------------------------------------------------------- output folders
def _overlaps(a: Path, b: Path) -> bool:
    """True when a is b, or one lies inside the other (resolved paths)."""
    return a == b or a in b.parents or b in a.parents


def _forms(path: Path) -> set[Path]:
    """A path as given (absolute, not resolved) and its real path: a link and what it points to."""
    return {Path(os.path.abspath(path)), Path(os.path.realpath(path))}


def marker_kind(folder: Path) -> str | None:
    """The command kind recorded in a folder's marker file, or None."""
    try:
        data = json.loads((Path(folder) / MARKER).read_text())
    except (OSError, ValueError):
        return None
    return data.get("kind") if isinstance(data, dict) else None


def output_place(path: Path) -> Path:
    """Where an output folder is written: `path`, or the folder a symlink `path` points to (the link is kept)."""
    path = Path(path)
    return Path(os.path.realpath(path)) if path.is_symlink() and path.is_dir() else path


def check_output_dir(path: Path, kind: str, inputs: Iterable[Path] = (), force: bool = False) -> None:
    """OutputError unless `path` may become a fresh `kind` output folder: absent, empty, or a previous `kind`
    output (its marker says so); `force` replaces any folder, but a file is never replaced by a folder and a
    folder that holds (or lies inside) an input never is. Inputs and `path` are compared both as given and
    resolved (a symlinked input guards its link and its target; a symlink `path` to a folder stands for it)."""
    path = Path(path)
    targets = _forms(path)
    for inp in inputs:
        for src in _forms(Path(inp)):
            target = next((t for t in targets if _overlaps(t, src)), None)
            if target is not None:
                where = "is" if target == src else ("holds" if target in src.parents else "lies inside")
                raise OutputError(f"{path}: output folder {where} the input {inp}; choose another output folder "
                                  "(it would be replaced as a whole)")
    if not path.exists() and not path.is_symlink():
        return
    if not path.is_dir():
        what = "a symlink to nothing" if path.is_symlink() and not path.exists() else "not a folder"
        raise OutputError(f"{path}: exists and is {what}; choose another output folder")
    if force or not any(path.iterdir()):
        return
    found = marker_kind(path)
    if found == kind:
        return
    what = f"a {found} output, not a {kind} one" if found else f"not a previous {kind} output (no {MARKER} in it)"
    raise OutputError(f"{path}: folder exists and is {what}; pass --force to replace it, or choose another folder")


def _write_marker(folder: Path, kind: str) -> None:
    (folder / MARKER).write_text(json.dumps({"kind": kind, "written": time.strftime("%Y-%m-%dT%H:%M:%S")}) + "\n")


def _make_temp_dir(path: Path) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    remove_stale_temps(path.parent, path.name)
    tmp = Path(tempfile.mkdtemp(prefix=_temp_prefix(path), suffix=_TMP, dir=path.parent))
    os.chmod(tmp, 0o777 & ~_umask())  # mkdtemp makes 0700: give the folder the mode mkdir would
    return tmp


def journal_beside(target: Path) -> Path:
    """`.<name>.commit.json` beside `target`: where a reader of `target` looks for a pending commit."""
    target = Path(target)
    return target.with_name(f".{target.name}.commit.json")


class Commit:
    """Folders and files replaced together: each is written to a temporary path beside its target; `commit()`
    writes a journal (the list of renames), performs the renames and removes the journal. A run killed before the
    journal leaves only temporary files (removed by the next run); one killed after it is completed by the next
    `Commit` on the same journal (`recover`), or by a reader of any target (`complete_pending`: the journal is
    also linked beside every target), so either every target changes or none does."""

    def __init__(self, journal: Path):
        self.journal = Path(journal)
        self.moves: list[tuple[Path, Path]] = []  # (temporary, target)

    def folder(self, target: Path, kind: str, inputs: Iterable[Path] = (), force: bool = False) -> Path:
        """A fresh temporary folder that becomes `target` at commit (checked by check_output_dir first); a
        symlink `target` to a folder keeps its link and the folder it points to is replaced."""
        target = Path(target)
        complete_pending(target)
        check_output_dir(target, kind, inputs, force)
        place = output_place(target)
        tmp = _make_temp_dir(place)
        self.moves.append((tmp, place))  # registered first: a failed marker write is cleaned up by abort()
        _write_marker(tmp, kind)
        return tmp

    def file(self, target: Path) -> Path:
        """A temporary path that becomes the file `target` at commit."""
        target = Path(target)
        if target.is_dir():
            raise OutputError(f"{target}: is a folder, not a file")
        complete_pending(target)
        target.parent.mkdir(parents=True, exist_ok=True)
        remove_stale_temps(target.parent, target.name)
        fd, tmp = tempfile.mkstemp(prefix=_temp_prefix(target), suffix=_TMP, dir=target.parent)
        os.close(fd)
        os.chmod(tmp, 0o666 & ~_umask())
        self.moves.append((Path(tmp), target))
        return Path(tmp)

    def commit(self) -> None:
        entries = [{"tmp": str(t.absolute()), "target": str(d.absolute())} for t, d in self.moves]
        main = self.journal.absolute()
        mirrors = list(dict.fromkeys(journal_beside(d.absolute()) for _, d in self.moves if
                                     journal_beside(d.absolute()) != main))
        body = {"pid": os.getpid(), "moves": entries, "journals": [str(j) for j in [*mirrors, main]]}
        atomic_write_text(self.journal, json.dumps(body, indent=1))
        for mirror in mirrors:  # the same journal beside every target, so that a reader of any one finds it
            _link_or_copy(self.journal, mirror)
        _roll_forward(self.journal)
        self.moves = []

    def abort(self) -> None:
        for tmp, _ in self.moves:
            if tmp.is_dir() and not tmp.is_symlink():
                shutil.rmtree(tmp, ignore_errors=True)
            else:
                tmp.unlink(missing_ok=True)
        self.moves = []

    def __enter__(self) -> Commit:
        recover(self.journal)
        return self

    def __exit__(self, exc_type, exc, tb) -> None:
        if exc_type is not None:
            self.abort()
            return
        try:
            self.commit()
        except BaseException:
            if not self.journal.exists():  # the journal was never written: no rename happened, nothing to complete
                self.abort()
            raise


def _link_or_copy(journal: Path, mirror: Path) -> None:
    """`mirror` becomes the journal: a hard link (one atomic step), or a copy on another file system."""
    mirror.unlink(missing_ok=True)
    try:
        os.link(journal, mirror)
    except OSError:
        atomic_write_text(mirror, journal.read_text())


def _old_name(target: Path) -> Path:
    return target.with_name(f".{target.name}.old")


def _roll_forward(journal: Path) -> None:
    """Perform (or finish) the renames a journal lists; every step can be repeated after a crash."""
    data = json.loads(journal.read_text())
    moves = [(Path(m["tmp"]), Path(m["target"])) for m in data["moves"]]
    for tmp, target in moves:
        if not tmp.exists():
            continue  # already renamed
        old = _old_name(target)
        if target.is_dir() and not target.is_symlink():
            if old.exists():
                shutil.rmtree(old, ignore_errors=True)
            target.rename(old)  # a folder cannot be renamed over a non-empty one
        os.replace(tmp, target)
    for _, target in moves:
        old = _old_name(target)
        if old.exists():
            shutil.rmtree(old, ignore_errors=True)
    read = os.path.abspath(journal)
    for copy in [Path(j) for j in data.get("journals", []) if os.path.abspath(j) != read] + [journal]:
        copy.unlink(missing_ok=True)  # the copy we read goes last


def recover(journal: Path) -> bool:
    """Complete a commit that a killed run left behind; True when there was one."""
    journal = Path(journal)
    if not journal.is_file():
        return False
    try:
        _roll_forward(journal)
    except (ValueError, KeyError, TypeError):  # a journal is written atomically: unreadable means not ours
        raise OutputError(f"{journal}: unreadable commit journal; remove it by hand") from None
    return True


def _journal_pid(journal: Path) -> int | None:
    try:
        pid = json.loads(journal.read_text()).get("pid")
    except (OSError, ValueError, AttributeError):
        return None
    return pid if isinstance(pid, int) else None


def complete_pending(path: Path, wait_s: float = 10.0) -> None:
    """Before reading `path` (an export's file or folder): complete the commit pending on it or on a folder above
    it (a journal `.<name>.commit.json` beside it), so that a reader never sees a target missing or the formats
    of one export on different splits. A commit still running in another process is waited for (`wait_s`);
    DatasetError naming the journal when it does not end, or cannot be completed."""
    here = Path(os.path.abspath(path))
    for p in [here, *here.parents]:
        if not p.name:
            continue
        journal = journal_beside(p)
        if not journal.is_file():
            continue
        deadline = time.monotonic() + wait_s
        while journal.is_file() and (pid := _journal_pid(journal)) not in (None, os.getpid()) and _pid_alive(pid):
            if time.monotonic() > deadline:
                raise DatasetError(f"{journal}: a commit by process {pid} is still running on {p}; "
                                   "read it when that process has ended")
            time.sleep(0.05)
        try:
            recover(journal)
        except OSError as exc:
            raise DatasetError(f"{journal}: an interrupted commit of {p} could not be completed "
                               f"({exc.strerror or exc}); run the command that wrote it again") from None


@contextmanager
def atomic_dir(path: Path, kind: str, inputs: Iterable[Path] = (), force: bool = False) -> Iterator[Path]:
    """Yield a fresh temporary folder beside `path` (checked by check_output_dir); on success it replaces `path`
    (with a marker naming `kind`), on error it is removed and `path` is untouched."""
    path = Path(path)
    with Commit(journal_beside(output_place(path))) as commit:
        yield commit.folder(path, kind, inputs, force)
