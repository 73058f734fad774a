"""A readers-writer lock between pytest-xdist worker processes, on two files (``fcntl.flock``).

Ordinary test modules hold it shared, modules marked ``serial`` hold it exclusively (see
``conftest._serial_modules_run_alone``). A turnstile file makes a waiting exclusive holder block new
shared holders: without it, the other worker would keep re-taking the shared lock module after
module and the serial module would only run once everything else had finished.
"""
from __future__ import annotations

import contextlib
import fcntl
from pathlib import Path


@contextlib.contextmanager
def module_lock(folder: Path, exclusive: bool):
    """Hold the lock in ``folder`` (shared by all workers of one run) for the ``with`` body."""
    with open(Path(folder) / "serial.turnstile", "a") as turnstile, open(Path(folder) / "serial.lock", "a") as lock:
        fcntl.flock(turnstile, fcntl.LOCK_EX)
        try:
            fcntl.flock(lock, fcntl.LOCK_EX if exclusive else fcntl.LOCK_SH)
        finally:
            fcntl.flock(turnstile, fcntl.LOCK_UN)
        try:
            yield
        finally:
            fcntl.flock(lock, fcntl.LOCK_UN)
