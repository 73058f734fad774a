"""The output folder of ``cachec compile``: what ``--force`` may replace, one writer at a time, no leftovers.

* :func:`check_replaceable` — ``--force`` replaces only a folder that is a cachec artifact (its
  ``manifest.json`` says so) or is empty; never the model being compiled, the current directory
  or a folder above it. Checked before the export, so nobody waits minutes for a refusal.
* :class:`OutputLock` — one compile per output folder: a second one fails at once, naming the
  pid that holds the folder. ``flock`` is released by the kernel when its holder dies (even by
  SIGKILL), so a lock is never stale; its file is removed when the holder finishes.
* :func:`temp_dir` / :func:`clean_stale` — an artifact is written into ``.NAME.tmp-PID@HOST-XXXX``
  next to the target and renamed into place (:func:`move_into_place`). The pid and host in the
  name let the next compile into that folder remove what a killed compile left (a folder as large
  as the weights) without touching a live one.
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import shutil
import socket
import tempfile
from collections.abc import Iterable
from pathlib import Path

from .errors import ArtifactError, CachecError

try:
    import fcntl
except ImportError:  # Windows: no flock; compiles into one --out are then not kept apart
    fcntl = None

ARTIFACT_FORMAT = "cachec-artifact"  # the "format" field of an artifact's manifest.json (cachec.artifact.FORMAT)
LOCK_SUFFIX = ".cachec-lock"  # distinctive: cleaning never touches another program's lock files
_HOST = re.sub(r"[^A-Za-z0-9_.]", "_", socket.gethostname()) or "host"
# .NAME.tmp-PID@HOST-XXXXXXXX (mkdtemp's suffix) and .NAME.old-PID@HOST (the artifact a --force replaces)
_LEFTOVER = re.compile(r"^\.(?P<name>.+)\.(?P<kind>tmp|old)-(?P<pid>\d+)@(?P<host>[A-Za-z0-9_.]+)(-[A-Za-z0-9_]{8})?$")


def _absolute(out: str | Path) -> Path:
    return Path(os.path.abspath(out))  # "." becomes the folder's own name; symlinks are kept as they are


def is_artifact(folder: Path) -> bool:
    """Whether ``folder`` holds a cachec manifest (its files are not verified: that is loading's job)."""
    try:
        manifest = json.loads((folder / "manifest.json").read_bytes())
    except (OSError, ValueError, RecursionError):
        return False
    return isinstance(manifest, dict) and manifest.get("format") == ARTIFACT_FORMAT


def is_pipeline(folder: Path) -> bool:
    """Whether ``folder`` is a saved diffusers pipeline (what ``cachec example-pipeline`` writes)."""
    return (folder / "model_index.json").is_file()


def check_replaceable(out: str | Path, force: bool, protected: Iterable[str | Path] = (),
                      replaceable=is_artifact, what: str = "a cachec artifact (no cachec manifest.json)") -> None:
    """Refuse an output that exists unless ``force`` may replace it (see the module docstring).

    ``protected`` are paths the compile reads (the model folder, an ``--inputs`` file): a folder
    holding one of them is never replaced. ``replaceable`` says which non-empty folders the
    command itself writes (default: artifacts; ``example-pipeline`` passes :func:`is_pipeline`),
    and ``what`` names them in the refusal.
    """
    target = _absolute(out)
    if not target.exists() and not target.is_symlink():
        return
    if not force:
        raise ArtifactError(f"{out} already exists; choose another --out or pass --force to replace it")
    refuse = f"--force refuses to replace {target}:"
    if target.is_symlink() or not target.is_dir():
        raise ArtifactError(f"{refuse} it is not a folder (a link or a file); remove it yourself or choose another --out")
    real = target.resolve()
    cwd = Path.cwd().resolve()
    if real == cwd or real in cwd.parents:
        raise ArtifactError(f"{refuse} it is the current directory or a folder above it; choose another --out")
    for path in protected:
        p = Path(path).resolve()
        if real == p or real in p.parents:
            raise ArtifactError(f"{refuse} it holds {path}, which this compile reads; choose another --out")
    if not replaceable(real) and any(real.iterdir()):
        raise ArtifactError(f"{refuse} it is neither {what} nor empty, so it may "
                            "hold other files; remove it yourself or choose another --out")


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True  # another user's process
    return True


def clean_stale(out: str | Path) -> list[Path]:
    """Remove what killed compiles on this host left next to ``out`` (temporary artifacts, lock
    files nobody holds); an old artifact a killed ``--force`` had moved aside is put back when
    nothing took its place. Returns the paths removed or restored."""
    parent = _absolute(out).parent
    done: list[Path] = []
    try:
        entries = list(parent.iterdir())
    except OSError:
        return done
    for entry in entries:
        m = _LEFTOVER.match(entry.name)
        if m and m["host"] == _HOST and not _alive(int(m["pid"])) and entry.is_dir() and not entry.is_symlink():
            original = parent / m["name"]
            if m["kind"] == "old" and not original.exists():
                with contextlib.suppress(OSError):
                    os.rename(entry, original)  # killed between the two renames of a --force swap
                    done.append(original)
                    continue
            shutil.rmtree(entry, ignore_errors=True)
            done.append(entry)
        elif entry.name.startswith(".") and entry.name.endswith(LOCK_SUFFIX) and entry.is_file():
            if _remove_unheld_lock(entry):
                done.append(entry)
    return done


def _remove_unheld_lock(path: Path) -> bool:
    if fcntl is None:
        return False
    try:
        fd = os.open(path, os.O_RDWR)
    except OSError:
        return False
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except OSError:
        os.close(fd)
        return False  # held: a compile is running
    try:
        if _content(fd).isdigit():  # one of ours (a pid), not some other program's lock file
            path.unlink()
            return True
        return False
    except OSError:
        return False
    finally:
        os.close(fd)


def _content(fd: int) -> str:
    os.lseek(fd, 0, os.SEEK_SET)
    return os.read(fd, 64).decode(errors="replace").strip()


def temp_dir(out: str | Path) -> Path:
    """A fresh temporary folder next to ``out`` whose name says which process on which host owns it."""
    target = _absolute(out)
    target.parent.mkdir(parents=True, exist_ok=True)
    return Path(tempfile.mkdtemp(prefix=f".{target.name}.tmp-{os.getpid()}@{_HOST}-", dir=target.parent))


def move_into_place(tmp: Path, out: str | Path) -> None:
    """Rename the finished ``tmp`` to ``out``; an existing ``out`` (checked by
    :func:`check_replaceable`) is moved aside first and removed only once the new one is in place."""
    target = _absolute(out)
    if not (target.exists() or target.is_symlink()):
        os.rename(tmp, target)
        return
    old = target.with_name(f".{target.name}.old-{os.getpid()}@{_HOST}")
    os.rename(target, old)
    try:
        os.rename(tmp, target)
    except BaseException:
        os.rename(old, target)  # --force must not lose the old artifact when the swap fails
        raise
    shutil.rmtree(old, ignore_errors=True)


class OutputLock:
    """Hold ``.NAME.cachec-lock`` next to ``out`` for the whole compile (``with OutputLock(out): ...``).

    A second holder gets a :class:`~cachec.errors.CachecError` at once naming the pid that has it.
    The lock is ``flock``: the kernel releases it when its process ends however it ends, so a lock
    file left by a killed compile is simply taken over. On release the file is removed; a waiter
    that opened the removed file notices (its inode is no longer the path's) and opens it anew.
    """

    def __init__(self, out: str | Path):
        self.out = out
        target = _absolute(out)
        self.path = target.with_name(f".{target.name}{LOCK_SUFFIX}")
        self._fd: int | None = None
        self._made_parent = False

    def __enter__(self) -> OutputLock:
        if fcntl is None:
            return self
        parent = self.path.parent
        if not parent.exists():
            parent.mkdir(parents=True)
            self._made_parent = True
        while True:
            fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o644)
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except OSError:
                holder = _content(fd) or "unknown"
                os.close(fd)
                self._undo_parent()
                raise CachecError(f"{self.out} is being written by another cachec compile (pid {holder}); wait "
                                  "for it to finish, or choose another --out") from None
            try:
                current = os.stat(self.path).st_ino
            except FileNotFoundError:
                current = None
            if current == os.fstat(fd).st_ino:
                break
            os.close(fd)  # the holder finished and removed this file meanwhile: lock the new one
        os.ftruncate(fd, 0)
        os.write(fd, str(os.getpid()).encode())
        self._fd = fd
        return self

    def __exit__(self, *exc) -> None:
        if self._fd is None:
            return
        with contextlib.suppress(OSError):
            self.path.unlink()
        os.close(self._fd)
        self._fd = None
        self._undo_parent()

    def _undo_parent(self) -> None:
        if self._made_parent:
            with contextlib.suppress(OSError):
                self.path.parent.rmdir()  # only if empty: a failed compile leaves no new folder
            self._made_parent = False

