"""Give what cachec writes the permissions the user's umask asks for.

Why: artifacts and example pipelines are written into a private temporary folder and renamed
into place (never half-written), and ``tempfile.mkdtemp`` makes that folder ``drwx------``; some
writers (AOTInductor's packaging, ``tempfile.mkstemp``) make files ``-rw-------`` too. Renamed
as they are, another account (a service user that serves the artifact) could not read them. So
before the rename every folder and file gets the mode a plain ``mkdir``/``open`` would have given
it under the current umask.
"""

from __future__ import annotations

import os
from pathlib import Path


def current_umask() -> int:
    """The process's umask, read without changing it where /proc allows (os.umask both sets and gets)."""
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("Umask:"):
                return int(line.split()[1], 8)
    except (OSError, ValueError):
        pass
    mask = os.umask(0o022)
    os.umask(mask)
    return mask


def follow_umask(root: str | Path) -> None:
    """chmod ``root`` and everything below it: folders (and executable files) ``0o777 & ~umask``,
    other files ``0o666 & ~umask``. Links are left alone."""
    mask = current_umask()
    root = Path(root)
    paths = [root, *root.rglob("*")]
    for p in paths:
        if p.is_symlink():
            continue
        executable = p.is_dir() or p.stat().st_mode & 0o111
        os.chmod(p, (0o777 if executable else 0o666) & ~mask)
