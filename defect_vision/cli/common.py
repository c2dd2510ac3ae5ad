"""What every `defect-vision` command shares: one help formatter, the default paths of a category, and one
wrapper that turns bad input into `error: <file>: <problem>` (exit 2) and Ctrl-C into one line (exit 130)."""
from __future__ import annotations

import argparse
import errno
import sys
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

EXIT_OK, EXIT_BAD_INPUT, EXIT_INTERRUPTED = 0, 2, 130


class HelpFormatter(argparse.ArgumentDefaultsHelpFormatter):
    """Show defaults, except empty ones (None, False) and required options: their help says what happens."""

    def _get_help_string(self, action: argparse.Action) -> str:
        if action.default is None or action.default is False or action.required or action.default == argparse.SUPPRESS:
            return action.help or ""
        return super()._get_help_string(action)


def parser(prog: str, description: str, epilog: str | None = None) -> argparse.ArgumentParser:
    return argparse.ArgumentParser(prog=prog, description=description, epilog=epilog, formatter_class=HelpFormatter)


@dataclass(frozen=True)
class CategoryPaths:
    """The default places of one category's data and run (every command's defaults derive from these)."""

    category: str
    datasets: Path = Path("datasets")
    runs: Path = Path("runs")

    def format_dir(self, fmt: str) -> Path:
        """datasets/<fmt>/<category> for fmt in coco, yolo, voc, sam."""
        return self.datasets / fmt / self.category

    @property
    def splits(self) -> Path:
        return self.datasets / "splits" / f"{self.category}.json"

    @property
    def data_yaml(self) -> Path:
        return self.format_dir("yolo") / "data.yaml"

    @property
    def run(self) -> Path:
        return self.runs / self.category

    @property
    def run_folder(self):
        """The places inside runs/<category> (defect_vision.run_folder: the one layout of a run)."""
        from defect_vision.run_folder import RunFolder

        return RunFolder(self.run)

    @property
    def detector_run(self) -> Path:
        return self.run_folder.detector_dir

    @property
    def sam_run(self) -> Path:
        return self.run_folder.sam_dir


def add_force(p: argparse.ArgumentParser) -> None:
    p.add_argument("--force", action="store_true",
                   help="replace the output folder even if it is not a previous output of this command (never one "
                        "that holds the input)")


def run_command(body: Callable[[], int | None], out: Path | None = None) -> int:
    """Run a command body; DatasetError, DeviceError, CheckpointError and OSError -> one `error:` line and exit 2,
    Ctrl-C -> `interrupted` and exit 130 (temporary files are removed on the way out)."""
    from defect_vision.errors import (  # DeviceError is a DatasetError (devices.py is not imported for it)
        ConfigError,
        DatasetError,
    )

    try:
        rc = body()
    except KeyboardInterrupt:
        print("\ninterrupted (nothing half-written was kept)", file=sys.stderr)
        return EXIT_INTERRUPTED
    except DatasetError as exc:  # a ConfigError names the flags that set its fields
        print(f"error: {exc.flag_message() if isinstance(exc, ConfigError) else exc}", file=sys.stderr)
        return EXIT_BAD_INPUT
    except OSError as exc:  # a missing checkpoint, an unwritable output, a full disk: name the file and the reason
        name = exc.filename or out or ""
        reason = exc.strerror or str(exc)
        if exc.errno in (errno.EEXIST, errno.ENOTDIR) and name and Path(name).is_file():
            reason = "a file is in the way of an output folder"
        code = f" [errno {exc.errno}]" if exc.errno else ""
        msg = str(exc) if exc.filename is None and exc.strerror is None else f"{name}: {reason}{code}"
        print(f"error: {msg}", file=sys.stderr)
        return EXIT_BAD_INPUT
    return EXIT_OK if rc is None else rc
