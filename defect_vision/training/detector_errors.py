"""ultralytics' dataset errors relayed as the project's one-line DatasetError, without its terminal colour codes."""
from __future__ import annotations

import re
from collections.abc import Iterator
from contextlib import contextmanager

from defect_vision.errors import DatasetError

ANSI = re.compile(r"\x1b\[[0-9;?]*[ -/]*[@-~]")  # CSI sequences, what ultralytics' colorstr writes
MAX_CHARS = 400


def plain_line(text: str) -> str:
    """`text` without ANSI escape codes, its lines joined into one (cut at MAX_CHARS)."""
    line = " ".join(part.strip() for part in ANSI.sub("", text).splitlines() if part.strip())
    return line if len(line) <= MAX_CHARS else line[:MAX_CHARS - 3] + "..."


@contextmanager
def relayed(what: str) -> Iterator[None]:
    """Turn the errors ultralytics raises on a dataset it cannot use (FileNotFoundError, RuntimeError, both with
    colour codes) into DatasetError('<what>: <its message as one plain line>')."""
    try:
        yield
    except DatasetError:
        raise
    except (FileNotFoundError, RuntimeError) as exc:
        raise DatasetError(f"{what}: {plain_line(str(exc))}") from exc
