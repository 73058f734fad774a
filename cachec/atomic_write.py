"""Result files written whole or not at all: a temporary file next to the target, renamed over it.

Why: a full disk, an exception or a signal in the middle of a write must leave neither a 0-byte
PNG nor half a JSON file where a person or a later run expects a result, nor the temporary file.
Every file cachec writes for a user (sample grids, plots, ``bench --json``, ``calibrate --out``)
goes through :func:`atomic_path`. The temporary name carries the writer's pid
(``.NAME.tmp-PID``), so a leftover of a process killed with SIGKILL is recognisable as such.

A failed write is one :class:`~cachec.errors.CachecError` naming the file and the cause (``No
space left on device``), never an ``OSError`` traceback.
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Iterator
from pathlib import Path

from .errors import CachecError


def check_file_target(path: str | Path, what: str = "file") -> None:
    """Refuse, before any work, a target that cannot become a file: an existing folder, or a
    parent that is a file. An existing file is fine (it is replaced)."""
    path = Path(path)
    if path.is_dir():
        raise CachecError(f"cannot write {path}: it is a folder; name the {what} to write (e.g. {path / 'out.json'})")
    for parent in path.absolute().parents:
        if parent.exists():
            if not parent.is_dir():
                raise CachecError(f"cannot write {path}: {parent} is not a folder")
            if not os.access(parent, os.W_OK):
                raise CachecError(f"cannot write {path}: its folder {parent} is not writable")
            return


@contextlib.contextmanager
def atomic_path(path: str | Path) -> Iterator[Path]:
    """Yield a temporary path to write; on success it replaces ``path`` in one rename, on any
    failure (exception, Ctrl-C, SIGTERM raised as an exception) it is removed and ``path`` is
    left as it was."""
    path = Path(path)
    check_file_target(path)
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        yield tmp
        os.replace(tmp, path)
    except OSError as exc:
        raise CachecError(f"cannot write {path}: {exc.strerror or exc}; the file was not written") from exc
    finally:
        with contextlib.suppress(OSError):
            tmp.unlink()  # gone already after a successful replace


def write_text(path: str | Path, text: str) -> None:
    """Write ``text`` to ``path`` atomically (see :func:`atomic_path`)."""
    with atomic_path(path) as tmp:
        tmp.write_text(text)


def save_image(image, path: str | Path) -> None:
    """Save a PIL image atomically; the format comes from ``path``'s suffix (the temporary name
    has none PIL would recognise)."""
    from PIL import Image

    fmt = Image.registered_extensions().get(Path(path).suffix.lower(), "PNG")
    with atomic_path(path) as tmp:
        image.save(tmp, format=fmt)
